//! `/v1/webhooks` (a tenant's default webhooks: create with the secret shown once, list,
//! delete), the `webhook` field of a job submission, and `/v1/jobs/{id}/deliveries` (every
//! delivery of a job's end event and each attempt). Sending is [`crate::webhooks::sender`]'s.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{check_id, ApiJson, ApiPath};
use super::AppState;
use crate::auth::Caller;
use crate::db::webhooks::{self as wdb, WebhookRow};
use crate::webhooks::sign;

/// Most default webhooks a tenant may register.
pub const MAX_WEBHOOKS_PER_TENANT: usize = 20;

/// The `webhook` of a job submission: where to POST the job's end event.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobWebhook {
    /// http or https URL on a host the operator allows (`--webhook-allow`).
    pub url: String,
    /// Signing secret (16-200 characters) for `Modelpress-Signature`. Omit it to sign with a
    /// generated one, returned once in the `Modelpress-Webhook-Secret` header of the 202.
    #[serde(default)]
    pub secret: Option<String>,
}

impl JobWebhook {
    /// Checks the URL against the allow-list and the secret's length; returns the secret to
    /// store and whether it was generated (and must be shown to the client).
    pub fn validate(&self, st: &AppState) -> ApiResult<(String, bool)> {
        st.webhooks
            .allow_list()
            .check_url(&self.url)
            .map_err(|e| ApiError::validation("webhook.url", e.to_string()))?;
        match &self.secret {
            Some(s) if (sign::MIN_SECRET_LEN..=200).contains(&s.len()) && !s.chars().any(char::is_control) => {
                Ok((s.clone(), false))
            }
            Some(_) => Err(ApiError::validation(
                "webhook.secret",
                format!("must be {}-200 characters without control characters", sign::MIN_SECRET_LEN),
            )),
            None => Ok((sign::generate_secret(), true)),
        }
    }
}

/// A default webhook to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// http or https URL on a host the operator allows (`--webhook-allow`). Every job of the
    /// tenant that ends (succeeded, failed, cancelled) is POSTed to it.
    pub url: String,
}

/// A webhook as listed (never the secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub created_at: String,
}

/// A new webhook with its signing secret (shown only this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    pub id: String,
    pub url: String,
    /// HMAC-SHA256 key of `Modelpress-Signature: t=<unix seconds>,v1=<hex of HMAC(secret,
    /// "<t>.<body>")>`. It cannot be shown again.
    pub secret: String,
    pub created_at: String,
}

/// The tenant's webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
}

/// Register a default webhook for the caller's jobs. The signing secret is in the response and
/// nowhere else.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = CreatedWebhook,
            headers(("Location" = String, description = "URL of the webhook"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already this many webhooks", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad URL, or a host the operator does not allow (or webhooks are off)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_webhook(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> ApiResult<Response> {
    st.webhooks.allow_list().check_url(&body.url).map_err(|e| ApiError::validation("url", e.to_string()))?;
    if wdb::list_webhooks(&st.db, &caller.tenant).await?.len() >= MAX_WEBHOOKS_PER_TENANT {
        return Err(ApiError::new(
            crate::error::ErrorCode::Conflict,
            format!("a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks; delete one first"),
        ));
    }
    let row = WebhookRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: caller.tenant.id().map(str::to_string),
        url: body.url,
        secret: sign::generate_secret(),
        created_at: crate::time::now_rfc3339(),
    };
    wdb::insert_webhook(&st.db, &row).await?;
    tracing::info!(webhook_id = %row.id, url = %row.url, "webhook created");
    let location = format!("/v1/webhooks/{}", row.id);
    let created = CreatedWebhook { id: row.id, url: row.url, secret: row.secret, created_at: row.created_at };
    let mut resp = (StatusCode::CREATED, Json(created)).into_response();
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).map_err(ApiError::internal)?);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// List the caller's webhooks (secrets are never shown again).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The caller's webhooks, newest first", body = WebhookList)))]
pub async fn list_webhooks(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<WebhookList>> {
    let rows = wdb::list_webhooks(&st.db, &caller.tenant).await?;
    Ok(Json(WebhookList {
        items: rows.into_iter().map(|r| Webhook { id: r.id, url: r.url, created_at: r.created_at }).collect(),
    }))
}

/// Delete a webhook. Its deliveries still pending are given up.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_webhook(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    check_id("webhook", &id)?;
    if !wdb::delete_webhook(&st.db, &caller.tenant, &id).await? {
        return Err(ApiError::not_found("webhook", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub attempt: i64,
    pub at: String,
    /// The receiver's HTTP status; null when none came back (refused, timeout, no connection).
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// The delivery of a job's end event to one URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    /// The default webhook it goes to; null for the job's own `webhook`.
    pub webhook_id: Option<String>,
    pub url: String,
    /// `job.succeeded`, `job.failed` or `job.cancelled`.
    pub event: String,
    /// `pending` (retries left), `delivered` (a 2xx came back) or `failed` (gave up).
    pub status: String,
    pub created_at: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    pub attempts: Vec<DeliveryAttempt>,
}

/// A job's deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<Delivery>,
}

/// Webhook deliveries of a job's end event, with every attempt. Empty while the job runs or
/// when no webhook applies.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job's deliveries, oldest first", body = DeliveryList),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeliveryList>> {
    check_id("job", &id)?;
    if crate::db::get_job_of(&st.db, &caller.tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("job", &id));
    }
    let (deliveries, attempts) = wdb::list_deliveries(&st.db, &id).await?;
    let items = deliveries
        .into_iter()
        .map(|d| Delivery {
            attempts: attempts
                .iter()
                .filter(|a| a.delivery_id == d.id)
                .map(|a| DeliveryAttempt {
                    attempt: a.attempt,
                    at: a.at.clone(),
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
            next_attempt_at: (d.status == "pending").then(|| ms_rfc3339(d.next_attempt_at.abs())),
            id: d.id,
            webhook_id: d.webhook_id,
            url: d.url,
            event: d.event,
            status: d.status,
            created_at: d.created_at,
            finished_at: d.finished_at,
            last_error: d.last_error,
        })
        .collect();
    Ok(Json(DeliveryList { items }))
}

fn ms_rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A job's `webhook`, recorded just before the job row so the job cannot end without it.
pub struct StagedJobWebhook {
    job_id: String,
    /// The generated secret, when the client gave none.
    generated: Option<String>,
}

impl StagedJobWebhook {
    /// Validates and records the webhook of a submission (nothing when there is none).
    pub async fn stage(st: &AppState, hook: Option<&JobWebhook>, job_id: &str) -> ApiResult<Option<Self>> {
        let Some(hook) = hook else { return Ok(None) };
        let (secret, generated) = hook.validate(st)?;
        wdb::insert_job_webhook(&st.db, job_id, &hook.url, &secret).await?;
        Ok(Some(StagedJobWebhook { job_id: job_id.to_string(), generated: generated.then_some(secret) }))
    }

    /// Keeps the row when the job was inserted; removes it otherwise (refused or replayed).
    pub async fn settle(this: Option<Self>, st: &AppState, inserted: bool) -> ApiResult<Option<Self>> {
        match this {
            Some(h) if !inserted => {
                wdb::delete_job_webhook(&st.db, &h.job_id).await?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// Adds `Modelpress-Webhook-Secret` to the 202 when the secret was generated.
    pub fn show_secret(this: Option<Self>, resp: &mut Response) -> ApiResult<()> {
        if let Some(secret) = this.and_then(|h| h.generated) {
            resp.headers_mut()
                .insert("modelpress-webhook-secret", HeaderValue::from_str(&secret).map_err(ApiError::internal)?);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        Ok(())
    }
}
