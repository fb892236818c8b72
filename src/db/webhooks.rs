//! SQL of webhooks and their deliveries (migration 0005). Deliveries are queued by the
//! `jobs_enqueue_webhooks` trigger, claimed and recorded by [`crate::webhooks::sender`].

use sqlx::FromRow;

use super::Db;
use crate::auth::Tenant;
use crate::time::now_rfc3339;

#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub tenant_id: Option<String>,
    pub url: String,
    pub secret: String,
    pub created_at: String,
}

pub async fn insert_webhook(db: &Db, w: &WebhookRow) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO webhooks (id, tenant_id, url, secret, created_at) VALUES (?,?,?,?,?)")
        .bind(&w.id)
        .bind(&w.tenant_id)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(&w.created_at)
        .execute(db)
        .await?;
    Ok(())
}

/// The tenant's webhooks, newest first.
pub async fn list_webhooks(db: &Db, tenant: &Tenant) -> Result<Vec<WebhookRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, url, secret, created_at FROM webhooks WHERE tenant_id IS ? \
         ORDER BY created_at DESC, id DESC",
    )
    .bind(tenant.id())
    .fetch_all(db)
    .await
}

/// Deletes the tenant's webhook; its pending deliveries are given up. `false`: no such webhook.
pub async fn delete_webhook(db: &Db, tenant: &Tenant, id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("DELETE FROM webhooks WHERE id = ? AND tenant_id IS ?")
        .bind(id)
        .bind(tenant.id())
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 1 {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', finished_at = ?, last_error = 'the webhook was deleted' \
             WHERE webhook_id = ? AND status = 'pending'",
        )
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// Records the `webhook` of a job submission (before the job row exists; see migration 0005).
pub async fn insert_job_webhook(db: &Db, job_id: &str, url: &str, secret: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO job_webhooks (job_id, url, secret) VALUES (?,?,?)")
        .bind(job_id)
        .bind(url)
        .bind(secret)
        .execute(db)
        .await?;
    Ok(())
}

/// Removes a job webhook whose submission was refused or replayed.
pub async fn delete_job_webhook(db: &Db, job_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM job_webhooks WHERE job_id = ?").bind(job_id).execute(db).await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub job_id: String,
    pub webhook_id: Option<String>,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: String,
    pub created_ms: i64,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
}

const DELIVERY_COLS: &str =
    "id, job_id, webhook_id, url, secret, event, status, attempts, next_attempt_at, created_at, created_ms, finished_at, last_error";

/// Claims up to `limit` due pending deliveries by leasing them until `lease_until_ms`.
///
/// `next_attempt_at` carries the lease in its sign (no column for it in migration 0005): a
/// scheduled attempt is `+due_ms`, a lease is `-lease_until_ms`. Either is due when its
/// absolute value is ≤ now, i.e. when `-now ≤ next_attempt_at ≤ now` (one index range). A
/// process that dies mid-attempt leaves the lease, which [`release_leases`] clears at the next
/// start (and which expires by itself otherwise).
pub async fn claim_due(db: &Db, now_ms: i64, lease_until_ms: i64, limit: i64) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id IN (SELECT id FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt_at BETWEEN ? AND ? ORDER BY abs(next_attempt_at) LIMIT ?) \
         RETURNING {DELIVERY_COLS}"
    ))
    .bind(-lease_until_ms)
    .bind(-now_ms)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// At start-up: attempts that were in flight when the previous run stopped (or died) are due
/// now rather than at the end of their lease. One process owns the database, so every lease
/// found here is stale. Returns how many.
pub async fn release_leases(db: &Db, now_ms: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE status = 'pending' AND next_attempt_at < 0",
    )
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// When the next pending delivery is due (unix ms), if any.
pub async fn next_due_ms(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MIN(abs(next_attempt_at)) FROM webhook_deliveries WHERE status = 'pending'")
        .fetch_one(db)
        .await
}

/// What an attempt led to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at this unix-ms time.
    Retry(i64),
    /// Out of time (or refused for good): the delivery failed.
    GiveUp,
}

/// One attempt, as recorded.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub attempt: i64,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
    pub duration_ms: i64,
}

/// Records an attempt and moves the delivery on, in one transaction.
pub async fn record_attempt(
    db: &Db,
    delivery_id: &str,
    a: &Attempt<'_>,
    outcome: AttemptOutcome,
) -> Result<(), sqlx::Error> {
    let now = now_rfc3339();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) \
         VALUES (?,?,?,?,?,?)",
    )
    .bind(delivery_id)
    .bind(a.attempt)
    .bind(&now)
    .bind(a.status_code.map(i64::from))
    .bind(a.error)
    .bind(a.duration_ms)
    .execute(&mut *tx)
    .await?;
    // A finished delivery keeps a positive `next_attempt_at` (no lease left behind).
    let (status, next, finished) = match outcome {
        AttemptOutcome::Delivered => ("delivered", 0, Some(now.clone())),
        AttemptOutcome::Retry(at) => ("pending", at, None),
        AttemptOutcome::GiveUp => ("failed", 0, Some(now.clone())),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, \
         finished_at = ?, last_error = ? WHERE id = ? AND status = 'pending'",
    )
    .bind(status)
    .bind(a.attempt)
    .bind(next)
    .bind(finished)
    .bind(a.error)
    .bind(delivery_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i64,
    pub at: String,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A job's deliveries (oldest first) and all their attempts.
pub async fn list_deliveries(db: &Db, job_id: &str) -> Result<(Vec<DeliveryRow>, Vec<AttemptRow>), sqlx::Error> {
    let d: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE job_id = ? ORDER BY created_ms, id"
    ))
    .bind(job_id)
    .fetch_all(db)
    .await?;
    let a: Vec<AttemptRow> = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration_ms FROM webhook_attempts a \
         JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.job_id = ? ORDER BY a.delivery_id, a.attempt",
    )
    .bind(job_id)
    .fetch_all(db)
    .await?;
    Ok((d, a))
}
