-- modelpress schema v1. Never edit a migration once released: add a new one.

CREATE TABLE models (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    tensor_count     INTEGER NOT NULL,
    parameter_count  INTEGER NOT NULL,
    dtype_bytes      TEXT NOT NULL,          -- JSON object: dtype -> bytes
    metadata         TEXT NOT NULL DEFAULT '{}', -- JSON: safetensors __metadata__
    spec             TEXT,                   -- JSON architecture spec, as stored
    parent_model_id  TEXT,
    job_id           TEXT,
    tenant_id        TEXT
);
CREATE INDEX models_tenant_created ON models (tenant_id, created_at DESC, id DESC);
CREATE INDEX models_parent ON models (parent_model_id);

CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    format      TEXT NOT NULL CHECK (format IN ('safetensors', 'csv')),
    info        TEXT NOT NULL,               -- JSON: splits, sample counts, shapes, classes
    tenant_id   TEXT
);
CREATE INDEX datasets_tenant_created ON datasets (tenant_id, created_at DESC, id DESC);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    model_id         TEXT,
    params           TEXT NOT NULL,          -- JSON
    progress         REAL NOT NULL DEFAULT 0,
    stage            TEXT,
    output_model_id  TEXT,
    report           TEXT,                   -- JSON
    error            TEXT,                   -- JSON problem object
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    heartbeat_at     TEXT,
    tenant_id        TEXT
);
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(tenant_id, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Every model or dataset a job reads, so deletes can refuse while a job still needs it.
CREATE TABLE job_inputs (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    resource_id  TEXT NOT NULL,
    PRIMARY KEY (job_id, resource_id)
);
CREATE INDEX job_inputs_resource ON job_inputs (resource_id);
