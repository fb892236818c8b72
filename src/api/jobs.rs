//! `/v1/jobs`: submit (202 + Location), list, get, cancel, and live events over SSE.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::extract::{check_cursor, check_id, page_limit, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::auth::{Caller, Role};
use crate::db::{self, CancelOutcome, InsertJob, JobFilter, NewJob};
use crate::error::{ApiError, ApiResult, ErrorCode, Problem};
use crate::jobs::params::{self, JobParams};
use crate::jobs::view::Job;
use crate::jobs::{is_terminal, JobUpdate};

/// A job submission.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Job kind, e.g. `quantize`.
    pub kind: String,
    /// The model the job works on.
    pub model_id: Option<String>,
    /// Kind-specific parameters (see the README and docs for each kind).
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Run even though the selected tensors of the model hold NaN or infinite values (refused
    /// with 422 otherwise; see the model's `non_finite`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_finite: bool,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<Job>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[param(pattern = "^(queued|running|succeeded|failed|cancelled)$")]
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Jobs reading or producing this model.
    pub model_id: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Checks what can be checked against stored models before a job is queued. Every model and
/// dataset is looked up as the caller's: another tenant's id is answered exactly like a
/// missing one.
async fn precheck(
    st: &AppState,
    caller: &Caller,
    params: &JobParams,
    model_id: Option<&str>,
) -> ApiResult<Vec<String>> {
    let tenant = &caller.tenant;
    let mut inputs = Vec::new();
    if params.needs_model() {
        let id = model_id
            .ok_or_else(|| ApiError::validation("model_id", format!("required for kind '{}'", params.kind())))?;
        if uuid::Uuid::parse_str(id).is_err() || db::get_model_of(&st.db, tenant, id).await?.is_none() {
            return Err(ApiError::validation("model_id", format!("model '{id}' does not exist")));
        }
        inputs.push(id.to_string());
    }
    for id in params.model_ids() {
        if uuid::Uuid::parse_str(&id).is_err() || db::get_model_of(&st.db, tenant, &id).await?.is_none() {
            return Err(ApiError::validation("params", format!("model '{id}' does not exist")));
        }
        inputs.push(id);
    }
    let needs = params.needs();
    let spec = if needs.spec {
        let id = model_id.unwrap_or_default();
        let row = db::get_model_of(&st.db, tenant, id)
            .await?
            .ok_or_else(|| ApiError::validation("model_id", format!("model '{id}' does not exist")))?;
        Some(super::specs::stored_spec(row.spec.as_deref(), id, "model_id")?)
    } else {
        None
    };
    if let (JobParams::Distill(d), Some(teacher)) = (params, &spec) {
        // Teacher and student must fit each other: refused here, before anything is queued.
        let stored = match d.student_model_id() {
            Some(id) => db::get_model_of(&st.db, tenant, id).await?.and_then(|m| m.spec),
            None => None,
        };
        d.check_models(teacher, stored.as_deref())?;
    }
    for (id, split, labels) in &needs.data {
        let field = "params.dataset_id";
        let row = match uuid::Uuid::parse_str(id) {
            Ok(_) => db::get_dataset_of(&st.db, tenant, id).await?,
            Err(_) => None,
        };
        let row = row.ok_or_else(|| ApiError::validation(field, format!("dataset '{id}' does not exist")))?;
        if let Some(spec) = &spec {
            let info: crate::datasets::DatasetInfo = serde_json::from_str(&row.info).map_err(ApiError::internal)?;
            super::specs::check_model_dataset(spec, id, &info, split.as_deref(), *labels, field)?;
        }
        if !inputs.contains(id) {
            inputs.push(id.clone());
        }
    }
    Ok(inputs)
}

/// Submit a job. Answers 202 with the queued job and its `Location`; send an
/// `Idempotency-Key` header to make retries safe (same key and body → same job).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry key: the same key and body return the same job")),
    responses(
        (status = 202, description = "Queued (or the earlier job for a repeated Idempotency-Key)", body = Job,
            headers(("Location" = String, description = "URL of the job"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with a different body", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind, missing model, bad params (the field is named)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Queue full (--max-queued-jobs), tenant quota reached (--max-jobs-per-tenant) or rate limited; retry after Retry-After seconds", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_job(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateJob>,
) -> ApiResult<Response> {
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v.to_str().map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?;
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::validation("Idempotency-Key", "must be 1-200 characters"));
            }
            Some(k.to_string())
        }
        None => None,
    };
    let raw_params = body.params.clone().unwrap_or(Value::Object(Default::default()));
    let parsed = params::parse(&body.kind, &raw_params, &st.param_rules())?;
    if !parsed.needs_model() && body.model_id.is_some() {
        return Err(ApiError::validation("model_id", format!("kind '{}' takes no model_id", body.kind)));
    }
    let inputs = precheck(&st, &caller, &parsed, body.model_id.as_deref()).await?;
    if let (true, Some(model_id)) = (parsed.needs_model(), body.model_id.as_deref()) {
        super::models::refuse_non_finite(&st, model_id, &raw_params, body.allow_non_finite).await?;
    }
    let request_hash = hex::encode(Sha256::digest(serde_json::to_vec(&body).map_err(ApiError::internal)?));
    let new = NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        kind: body.kind.clone(),
        model_id: if parsed.needs_model() { body.model_id.clone() } else { None },
        params: raw_params.to_string(),
        idempotency_key: key,
        request_hash,
        tenant_id: caller.tenant.id().map(str::to_string),
        inputs,
    };
    let quota = match (caller.role, st.config.limits.max_jobs_per_tenant) {
        (Role::Tenant, n) if n > 0 => Some(n),
        _ => None,
    };
    let (row, replayed) = match db::insert_job(&st.db, &new, st.config.max_queued_jobs, quota).await? {
        InsertJob::Inserted(r) => (r, false),
        InsertJob::Replayed(r) => (r, true),
        InsertJob::KeyConflict => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this Idempotency-Key was already used with a different request body",
            ))
        }
        InsertJob::QueueFull => {
            st.metrics.inc("modelpress_rejections_total", vec![("reason", "queue_full".into())], 1.0);
            return Err(ApiError::new(
                ErrorCode::QueueFull,
                format!("{} jobs are already queued (--max-queued-jobs); retry later", st.config.max_queued_jobs),
            )
            .with_retry_after(5));
        }
        InsertJob::QuotaExceeded => {
            st.metrics.inc("modelpress_rejections_total", vec![("reason", "tenant_quota".into())], 1.0);
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this tenant already has {} jobs queued or running (--max-jobs-per-tenant); retry when one finishes",
                    st.config.limits.max_jobs_per_tenant
                ),
            )
            .with_retry_after(5));
        }
        InsertJob::MissingInput(id) => return Err(ApiError::validation("model_id", format!("'{id}' was deleted"))),
    };
    let job = Job::from(row);
    if !replayed {
        // Committed; now wake the dispatcher.
        crate::fault::point("queued");
        st.jobs.wake();
        st.jobs.publish_state(&job);
    }
    let mut resp = (StatusCode::ACCEPTED, Json(&job)).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)).map_err(ApiError::internal)?);
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter, cursor or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_jobs(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<JobListQuery>,
) -> ApiResult<Json<JobList>> {
    check_cursor(q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    if let Some(s) = &q.status {
        if !["queued", "running", "succeeded", "failed", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::validation("status", "one of queued, running, succeeded, failed, cancelled"));
        }
    }
    let f = JobFilter {
        status: q.status.as_deref(),
        kind: q.kind.as_deref(),
        model_id: q.model_id.as_deref(),
        before: q.cursor.as_deref(),
        limit,
    };
    let rows = db::list_jobs(&st.db, &caller.tenant, &f).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|r| r.id.clone()) } else { None };
    Ok(Json(JobList { items: rows.into_iter().map(Job::from).collect(), next_cursor }))
}

/// The caller's job, or 404.
async fn load_job(st: &AppState, caller: &Caller, id: &str) -> ApiResult<Job> {
    check_id("job", id)?;
    Ok(Job::from(db::get_job_of(&st.db, &caller.tenant, id).await?.ok_or_else(|| ApiError::not_found("job", id))?))
}

/// Get one job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job(State(st): State<AppState>, caller: Caller, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Job>> {
    Ok(Json(load_job(&st, &caller, &id).await?))
}

/// Cancel a job: a queued job is cancelled at once, a running one at its next check point.
/// Cancelling a finished job changes nothing and answers its current state.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "Cancelled or cancellation requested; the job's current state", body = Job),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_job(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    check_id("job", &id)?;
    match db::cancel_job(&st.db, &caller.tenant, &id).await? {
        CancelOutcome::NotFound => return Err(ApiError::not_found("job", &id)),
        CancelOutcome::Requested => st.jobs.request_cancel(&id),
        CancelOutcome::Cancelled | CancelOutcome::AlreadyFinished => {}
    }
    let job = load_job(&st, &caller, &id).await?;
    st.jobs.publish_state(&job);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

fn sse_event(u: &JobUpdate) -> Event {
    Event::default().event(u.event.clone()).data(u.data.to_string())
}

/// Live job events (Server-Sent Events): `state` (the whole job, first and on every status
/// change), `progress` (`{id, status, progress, stage}`), and kind-specific events such as
/// `epoch`. The stream ends after the job's terminal `state`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "An SSE stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many open streams (--max-sse-connections) or rate limited", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn job_events(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check_id("job", &id)?;
    // Subscribe before reading the state so nothing falls between the two.
    let rx = st.jobs.subscribe();
    let job = load_job(&st, &caller, &id).await?;
    // Held by the stream: the slot frees when the client goes away or the job ends.
    let permit = st.limits.sse_permit()?;
    let first = JobUpdate {
        job_id: id.clone(),
        event: "state".into(),
        terminal: is_terminal(&job.status),
        data: serde_json::to_value(&job).map_err(ApiError::internal)?,
    };
    struct S {
        st: AppState,
        id: String,
        rx: tokio::sync::broadcast::Receiver<JobUpdate>,
        pending: Option<JobUpdate>,
        done: bool,
        stop: tokio::sync::watch::Receiver<bool>,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let stop = st.jobs.stopping();
    let state = S { st: st.clone(), id, rx, pending: Some(first), done: false, stop, _permit: permit };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(u) = s.pending.take() {
            s.done = u.terminal;
            return Some((Ok(sse_event(&u)), s));
        }
        loop {
            tokio::select! {
                r = s.rx.recv() => match r {
                    Ok(u) if u.job_id == s.id => {
                        s.done = u.terminal;
                        return Some((Ok(sse_event(&u)), s));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {
                        // Missed updates: resend the current state from the database.
                        let job = db::get_job(&s.st.db, &s.id).await.ok().flatten().map(Job::from)?;
                        let u = JobUpdate { job_id: s.id.clone(), event: "state".into(), terminal: is_terminal(&job.status), data: serde_json::to_value(&job).ok()? };
                        s.done = u.terminal;
                        return Some((Ok(sse_event(&u)), s));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = s.stop.changed() => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
