//! All SQL lives here. Handlers, the dispatcher and the reporter call these functions; workers
//! never do (they have no pool).
//!
//! SQLite runs in WAL mode with a busy timeout and foreign keys on; migrations in
//! `migrations/` are applied at start-up.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

use crate::job_status::JobStatus;
use crate::tenant::Tenant;
use crate::time::now_rfc3339;

pub mod keys;
pub mod webhooks;

pub type Db = SqlitePool;

/// Opens (creating if missing) `<data_dir>/modelpress.db` and applies migrations.
pub async fn connect(data_dir: &Path) -> Result<Db, sqlx::Error> {
    let path = data_dir.join("modelpress.db");
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let p = data_dir.join(format!("modelpress.db{suffix}"));
            if p.exists() {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    Ok(pool)
}

// ---------------------------------------------------------------- models

#[derive(Debug, Clone, FromRow)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub tensor_count: i64,
    pub parameter_count: i64,
    pub dtype_bytes: String,
    pub metadata: String,
    pub spec: Option<String>,
    pub parent_model_id: Option<String>,
    pub job_id: Option<String>,
    pub tenant_id: Option<String>,
}

const MODEL_COLS: &str = "id, name, created_at, size_bytes, sha256, tensor_count, parameter_count, dtype_bytes, metadata, spec, parent_model_id, job_id, tenant_id";

pub async fn insert_model<'e, E: sqlx::SqliteExecutor<'e>>(e: E, m: &ModelRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO models ({MODEL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"))
        .bind(&m.id)
        .bind(&m.name)
        .bind(&m.created_at)
        .bind(m.size_bytes)
        .bind(&m.sha256)
        .bind(m.tensor_count)
        .bind(m.parameter_count)
        .bind(&m.dtype_bytes)
        .bind(&m.metadata)
        .bind(&m.spec)
        .bind(&m.parent_model_id)
        .bind(&m.job_id)
        .bind(&m.tenant_id)
        .execute(e)
        .await?;
    Ok(())
}

/// Any tenant's model (workers, the dispatcher). Handlers use [`get_model_of`].
pub async fn get_model(db: &Db, id: &str) -> Result<Option<ModelRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {MODEL_COLS} FROM models WHERE id = ?")).bind(id).fetch_optional(db).await
}

/// The model if it belongs to `tenant` (another tenant's model does not exist for the caller).
pub async fn get_model_of(db: &Db, tenant: &Tenant, id: &str) -> Result<Option<ModelRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {MODEL_COLS} FROM models WHERE id = ? AND tenant_id IS ?"))
        .bind(id)
        .bind(tenant.id())
        .fetch_optional(db)
        .await
}

/// The tenant's models, newest first; `before` is the cursor (an id from the previous page).
pub async fn list_models(
    db: &Db,
    tenant: &Tenant,
    name: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<ModelRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MODEL_COLS} FROM models
         WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR id < ?2) AND tenant_id IS ?4
         ORDER BY id DESC LIMIT ?3"
    ))
    .bind(name)
    .bind(before)
    .bind(limit)
    .bind(tenant.id())
    .fetch_all(db)
    .await
}

pub async fn set_model_spec(db: &Db, tenant: &Tenant, id: &str, spec: Option<&str>) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE models SET spec = ? WHERE id = ? AND tenant_id IS ?")
        .bind(spec)
        .bind(id)
        .bind(tenant.id())
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Outcome of a delete that must not remove what a live job needs.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    InUse(String),
}

async fn delete_unused(db: &Db, table: &str, tenant: &Tenant, id: &str) -> Result<DeleteOutcome, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The DELETE takes the write lock first, so no job can be queued against this id between
    // the check and the delete.
    let deleted = sqlx::query(&format!("DELETE FROM {table} WHERE id = ? AND tenant_id IS ?"))
        .bind(id)
        .bind(tenant.id())
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(DeleteOutcome::NotFound);
    }
    let busy: Option<(String,)> = sqlx::query_as(
        "SELECT j.id FROM job_inputs ji JOIN jobs j ON j.id = ji.job_id
         WHERE ji.resource_id = ? AND j.status IN ('queued', 'running') LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((job,)) = busy {
        tx.rollback().await?;
        return Ok(DeleteOutcome::InUse(job));
    }
    tx.commit().await?;
    Ok(DeleteOutcome::Deleted)
}

pub async fn delete_model(db: &Db, tenant: &Tenant, id: &str) -> Result<DeleteOutcome, sqlx::Error> {
    delete_unused(db, "models", tenant, id).await
}

pub async fn all_ids(db: &Db, table: &str) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT id FROM {table}")).fetch_all(db).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

// ---------------------------------------------------------------- datasets

#[derive(Debug, Clone, FromRow)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub format: String,
    pub info: String,
    pub tenant_id: Option<String>,
}

const DATASET_COLS: &str = "id, name, created_at, size_bytes, sha256, format, info, tenant_id";

pub async fn insert_dataset(db: &Db, d: &DatasetRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO datasets ({DATASET_COLS}) VALUES (?,?,?,?,?,?,?,?)"))
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.created_at)
        .bind(d.size_bytes)
        .bind(&d.sha256)
        .bind(&d.format)
        .bind(&d.info)
        .bind(&d.tenant_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Any tenant's dataset (workers, the dispatcher). Handlers use [`get_dataset_of`].
pub async fn get_dataset(db: &Db, id: &str) -> Result<Option<DatasetRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {DATASET_COLS} FROM datasets WHERE id = ?")).bind(id).fetch_optional(db).await
}

/// The dataset if it belongs to `tenant`.
pub async fn get_dataset_of(db: &Db, tenant: &Tenant, id: &str) -> Result<Option<DatasetRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {DATASET_COLS} FROM datasets WHERE id = ? AND tenant_id IS ?"))
        .bind(id)
        .bind(tenant.id())
        .fetch_optional(db)
        .await
}

pub async fn list_datasets(
    db: &Db,
    tenant: &Tenant,
    name: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<DatasetRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DATASET_COLS} FROM datasets
         WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR id < ?2) AND tenant_id IS ?4
         ORDER BY id DESC LIMIT ?3"
    ))
    .bind(name)
    .bind(before)
    .bind(limit)
    .bind(tenant.id())
    .fetch_all(db)
    .await
}

pub async fn delete_dataset(db: &Db, tenant: &Tenant, id: &str) -> Result<DeleteOutcome, sqlx::Error> {
    delete_unused(db, "datasets", tenant, id).await
}

// ---------------------------------------------------------------- jobs

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: JobStatus,
    pub model_id: Option<String>,
    pub params: String,
    pub progress: f64,
    pub stage: Option<String>,
    pub output_model_id: Option<String>,
    pub report: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub cancel_requested: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub heartbeat_at: Option<String>,
    pub tenant_id: Option<String>,
}

const JOB_COLS: &str = "id, kind, status, model_id, params, progress, stage, output_model_id, report, error, attempts, cancel_requested, created_at, started_at, finished_at, heartbeat_at, tenant_id";

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    pub model_id: Option<String>,
    pub params: String,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub tenant_id: Option<String>,
    /// Models and datasets the job reads (`model_id` included).
    pub inputs: Vec<String>,
}

#[derive(Debug)]
pub enum InsertJob {
    Inserted(JobRow),
    /// Same idempotency key and same request: the earlier job.
    Replayed(JobRow),
    /// Same idempotency key, different request.
    KeyConflict,
    QueueFull,
    /// The tenant already has `max_per_tenant` jobs queued or running.
    QuotaExceeded,
    /// A referenced model or dataset does not exist (any more).
    MissingInput(String),
}

/// Inserts a queued job unless the queue holds `max_queued` jobs or (when `max_per_tenant` is
/// set) the job's tenant has that many queued or running. Every input must exist and belong to
/// the job's tenant.
///
/// Concurrent submissions with one `Idempotency-Key` race between the look-up and the insert:
/// the loser either hits the unique index (`jobs_idempotency`) or, having read before the
/// winner committed, cannot upgrade its WAL snapshot to a write (`SQLITE_BUSY_SNAPSHOT`, which
/// the busy timeout does not retry). Both mean "someone else just wrote": the attempt is rolled
/// back and repeated, and the repeat's look-up finds the winner's job (a replay or a 409).
pub async fn insert_job(
    db: &Db,
    j: &NewJob,
    max_queued: usize,
    max_per_tenant: Option<usize>,
) -> Result<InsertJob, sqlx::Error> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match insert_job_once(db, j, max_queued, max_per_tenant).await {
            Err(e) if attempt < ATTEMPTS && j.idempotency_key.is_some() && lost_write_race(&e) => {
                tracing::debug!(attempt, error = %e, "idempotent insert raced another request; re-reading");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A unique-index violation or a stale read snapshot that cannot become a write transaction.
fn lost_write_race(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    // SQLITE_BUSY (5) and its extended codes (SQLITE_BUSY_SNAPSHOT = 517, …): sqlx reports the
    // extended code, whose low byte is the primary one.
    db.is_unique_violation() || db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 5)
}

async fn insert_job_once(
    db: &Db,
    j: &NewJob,
    max_queued: usize,
    max_per_tenant: Option<usize>,
) -> Result<InsertJob, sqlx::Error> {
    // IMMEDIATE takes the write lock before the key look-up: concurrent submissions then queue
    // on busy_timeout instead of failing to upgrade a stale read snapshot (SQLITE_BUSY_SNAPSHOT),
    // which surfaced as a rare 500 under eight racing retries of one Idempotency-Key.
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    if let Some(key) = &j.idempotency_key {
        let prev: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT id, request_hash FROM jobs WHERE COALESCE(tenant_id, '') = COALESCE(?, '') AND idempotency_key = ?",
        )
        .bind(&j.tenant_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, hash)) = prev {
            tx.rollback().await?;
            if hash.as_deref() == Some(j.request_hash.as_str()) {
                let row = get_job(db, &id).await?.ok_or(sqlx::Error::RowNotFound)?;
                return Ok(InsertJob::Replayed(row));
            }
            return Ok(InsertJob::KeyConflict);
        }
    }
    let now = now_rfc3339();
    // The conditional insert takes SQLite's write lock, which serialises the queue-depth check
    // with every other writer.
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, kind, status, model_id, params, idempotency_key, request_hash, created_at, tenant_id)
         SELECT ?, ?, 'queued', ?, ?, ?, ?, ?, ?
         WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?
           AND (? IS NULL OR (SELECT COUNT(*) FROM jobs WHERE tenant_id IS ? AND status IN ('queued', 'running')) < ?)",
    )
    .bind(&j.id)
    .bind(&j.kind)
    .bind(&j.model_id)
    .bind(&j.params)
    .bind(&j.idempotency_key)
    .bind(&j.request_hash)
    .bind(&now)
    .bind(&j.tenant_id)
    .bind(max_queued as i64)
    .bind(max_per_tenant.map(|n| n as i64))
    .bind(&j.tenant_id)
    .bind(max_per_tenant.map(|n| n as i64))
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        if let Some(quota) = max_per_tenant {
            let (active,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE tenant_id IS ? AND status IN ('queued', 'running')")
                    .bind(&j.tenant_id)
                    .fetch_one(db)
                    .await?;
            if active >= quota as i64 {
                return Ok(InsertJob::QuotaExceeded);
            }
        }
        return Ok(InsertJob::QueueFull);
    }
    for input in &j.inputs {
        let exists: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM models WHERE id = ?1 AND tenant_id IS ?2
             UNION ALL SELECT 1 FROM datasets WHERE id = ?1 AND tenant_id IS ?2 LIMIT 1",
        )
        .bind(input)
        .bind(&j.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Ok(InsertJob::MissingInput(input.clone()));
        }
        sqlx::query("INSERT OR IGNORE INTO job_inputs (job_id, resource_id) VALUES (?, ?)")
            .bind(&j.id)
            .bind(input)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let row = get_job(db, &j.id).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(InsertJob::Inserted(row))
}

/// Records a model's non-finite counts (JSON, see `nonfinite`).
pub async fn set_model_non_finite(db: &Db, id: &str, counts: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE models SET non_finite = ? WHERE id = ?").bind(counts).bind(id).execute(db).await?;
    Ok(())
}

/// A model's non-finite counts (JSON); `None` when never counted.
pub async fn get_model_non_finite(db: &Db, id: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT non_finite FROM models WHERE id = ?").bind(id).fetch_optional(db).await?;
    Ok(row.and_then(|r| r.0))
}

/// Any tenant's job (dispatcher, reporter). Handlers use [`get_job_of`].
pub async fn get_job(db: &Db, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?")).bind(id).fetch_optional(db).await
}

/// The job if it belongs to `tenant`.
pub async fn get_job_of(db: &Db, tenant: &Tenant, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ? AND tenant_id IS ?"))
        .bind(id)
        .bind(tenant.id())
        .fetch_optional(db)
        .await
}

/// Filters for listing jobs.
#[derive(Debug, Default, Clone)]
pub struct JobFilter<'a> {
    pub status: Option<JobStatus>,
    pub kind: Option<&'a str>,
    pub model_id: Option<&'a str>,
    pub before: Option<&'a str>,
    pub limit: i64,
}

/// The tenant's jobs, newest first.
pub async fn list_jobs(db: &Db, tenant: &Tenant, f: &JobFilter<'_>) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR kind = ?2)
           AND (?3 IS NULL OR model_id = ?3 OR output_model_id = ?3) AND (?4 IS NULL OR id < ?4)
           AND tenant_id IS ?6
         ORDER BY id DESC LIMIT ?5"
    ))
    .bind(f.status)
    .bind(f.kind)
    .bind(f.model_id)
    .bind(f.before)
    .bind(f.limit)
    .bind(tenant.id())
    .fetch_all(db)
    .await
}

pub async fn count_by_status(db: &Db) -> Result<Vec<(JobStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetch_all(db).await
}

/// Claims the oldest queued job: one statement, so two dispatchers could never take the same
/// job.
pub async fn claim_next_job(db: &Db) -> Result<Option<JobRow>, sqlx::Error> {
    let now = now_rfc3339();
    sqlx::query_as(&format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?1, heartbeat_at = ?1,
                stage = 'starting', progress = 0
         WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1)
         RETURNING {JOB_COLS}"
    ))
    .bind(&now)
    .fetch_optional(db)
    .await
}

pub async fn update_progress(db: &Db, id: &str, progress: f64, stage: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET progress = ?, stage = ?, heartbeat_at = ? WHERE id = ? AND status = 'running'")
        .bind(progress)
        .bind(stage)
        .bind(now_rfc3339())
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn heartbeat(db: &Db, ids: &[String]) -> Result<(), sqlx::Error> {
    let now = now_rfc3339();
    for id in ids {
        sqlx::query("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = 'running'")
            .bind(&now)
            .bind(id)
            .execute(db)
            .await?;
    }
    Ok(())
}

/// Marks a running job finished (`failed` or `cancelled`) with an error object.
pub async fn finish_job_without_output(
    db: &Db,
    id: &str,
    status: JobStatus,
    error: Option<&str>,
    report: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = ?, error = ?, report = COALESCE(?, report), finished_at = ?, heartbeat_at = NULL
         WHERE id = ? AND status = 'running'",
    )
    .bind(status)
    .bind(error)
    .bind(report)
    .bind(now_rfc3339())
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// In one transaction: the output model row (if any; it carries its parent and the job's
/// tenant, from the claimed row) and the job's `succeeded` state.
pub async fn finish_job_success(db: &Db, id: &str, output: Option<&ModelRow>, report: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Some(m) = output {
        insert_model(&mut *tx, m).await?;
    }
    sqlx::query(
        "UPDATE jobs SET status = 'succeeded', progress = 1, stage = 'done', output_model_id = ?, report = ?,
                finished_at = ?, heartbeat_at = NULL
         WHERE id = ?",
    )
    .bind(output.map(|m| m.id.as_str()))
    .bind(report)
    .bind(now_rfc3339())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    crate::fault::point("committing");
    tx.commit().await
}

/// Puts a job that was interrupted by our own shutdown back in the queue without counting
/// the attempt.
pub async fn requeue_after_shutdown(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), stage = 'requeued after shutdown',
                started_at = NULL, heartbeat_at = NULL
         WHERE id = ? AND status = 'running'",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// At start-up: jobs left `running` by a crash go back to the queue, or fail once they have
/// been tried `max_attempts` times. Returns (requeued, failed).
pub async fn recover_interrupted(db: &Db, max_attempts: i64, failed_error: &str) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = db.begin().await?;
    let failed = sqlx::query(
        "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, heartbeat_at = NULL
         WHERE status = 'running' AND attempts >= ?",
    )
    .bind(failed_error)
    .bind(now_rfc3339())
    .bind(max_attempts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let requeued = sqlx::query(
        "UPDATE jobs SET status = 'queued', stage = 'requeued after interruption', heartbeat_at = NULL
         WHERE status = 'running'",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok((requeued, failed))
}

#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Was queued: now cancelled.
    Cancelled,
    /// Running: flagged; the worker stops at its next check point.
    Requested,
    /// Already finished: nothing to do.
    AlreadyFinished,
    NotFound,
}

pub async fn cancel_job(db: &Db, tenant: &Tenant, id: &str) -> Result<CancelOutcome, sqlx::Error> {
    let now = now_rfc3339();
    let r = sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested = 1, stage = 'cancelled'
         WHERE id = ? AND status = 'queued' AND tenant_id IS ?",
    )
    .bind(&now)
    .bind(id)
    .bind(tenant.id())
    .execute(db)
    .await?;
    if r.rows_affected() == 1 {
        return Ok(CancelOutcome::Cancelled);
    }
    let r = sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running' AND tenant_id IS ?")
        .bind(id)
        .bind(tenant.id())
        .execute(db)
        .await?;
    if r.rows_affected() == 1 {
        return Ok(CancelOutcome::Requested);
    }
    Ok(match get_job_of(db, tenant, id).await? {
        Some(_) => CancelOutcome::AlreadyFinished,
        None => CancelOutcome::NotFound,
    })
}
