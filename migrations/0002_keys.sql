-- API keys of tenants. Only the SHA-256 of a key is stored; the admin key is configured, never
-- stored. Revoked keys keep their row (for the listing) with revoked_at set.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,            -- first characters, to recognise a key in the listing
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
