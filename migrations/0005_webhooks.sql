-- Webhooks (issue 22): tenant default webhooks, a job's own webhook, and the durable delivery
-- queue. The secret is stored as given because it signs every event (unlike API keys, which are
-- only compared).
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT,                      -- NULL = the default tenant (open mode / admin key)
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id);

-- The `webhook` of a job submission. No foreign key: the row is written just before the job,
-- so no job can end without it (an orphan from a refused submission is never matched).
CREATE TABLE job_webhooks (
    job_id  TEXT PRIMARY KEY,
    url     TEXT NOT NULL,
    secret  TEXT NOT NULL
);

-- One event to send to one URL. The event body is built from the (terminal, immutable) job
-- row at each attempt; url and secret are copied so deleting a webhook later changes nothing
-- already queued except through an explicit cancel.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL,
    tenant_id        TEXT,
    webhook_id       TEXT,                 -- NULL: the job's own webhook
    url              TEXT NOT NULL,
    secret           TEXT NOT NULL,
    event            TEXT NOT NULL,        -- job.succeeded | job.failed | job.cancelled
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,     -- unix milliseconds; also the claim lease
    created_at       TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,     -- unix milliseconds, for the retry deadline
    finished_at      TEXT,
    last_error       TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);

-- Every attempt, for GET /v1/jobs/{id}/deliveries.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    at           TEXT NOT NULL,
    status_code  INTEGER,                  -- NULL when no HTTP answer came back
    error        TEXT,
    duration_ms  INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The moment a job becomes terminal, in the same transaction as that change, one delivery per
-- target is queued: the event can neither be lost by a crash after the commit nor sent for a
-- state that was rolled back, and no job code path needs to remember to call us.
CREATE TRIGGER jobs_enqueue_webhooks
AFTER UPDATE OF status ON jobs
WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
 AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    INSERT INTO webhook_deliveries
        (id, job_id, tenant_id, webhook_id, url, secret, event, status, next_attempt_at, created_at, created_ms)
    SELECT lower(hex(randomblob(16))), NEW.id, NEW.tenant_id, w.id, w.url, w.secret, 'job.' || NEW.status,
           'pending', CAST(unixepoch('subsec') * 1000 AS INTEGER), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
           CAST(unixepoch('subsec') * 1000 AS INTEGER)
    FROM webhooks w WHERE w.tenant_id IS NEW.tenant_id;
    INSERT INTO webhook_deliveries
        (id, job_id, tenant_id, webhook_id, url, secret, event, status, next_attempt_at, created_at, created_ms)
    SELECT lower(hex(randomblob(16))), NEW.id, NEW.tenant_id, NULL, j.url, j.secret, 'job.' || NEW.status,
           'pending', CAST(unixepoch('subsec') * 1000 AS INTEGER), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
           CAST(unixepoch('subsec') * 1000 AS INTEGER)
    FROM job_webhooks j WHERE j.job_id = NEW.id;
END;
