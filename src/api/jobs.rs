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
use utoipa::openapi::schema::{
    AdditionalProperties, Discriminator, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::extract::{check_cursor, check_id, page_limit, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::auth::{Caller, Role};
use crate::db::{self, CancelOutcome, InsertJob, JobFilter, NewJob};
use crate::jobs::common::{Stored, StoredModel};
use crate::jobs::view::Job;
use crate::jobs::{JobKind, JobParams, JobStatus, JobUpdate};

/// A job submission. Its contract is one object per kind (see [`CreateJob`]'s schema):
/// `kind` names it and `params` is that kind's parameter type.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Job kind, e.g. `quantize` (parsed against the registry, so an unknown kind is a 422
    /// listing the known ones).
    pub kind: String,
    /// The model the job works on.
    pub model_id: Option<String>,
    /// Kind-specific parameters.
    pub params: Option<Value>,
    /// Where to POST a signed event when the job ends (besides the tenant's `/v1/webhooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<super::webhooks::JobWebhook>,
    /// Run even though the selected tensors of the model hold NaN or infinite values (refused
    /// with 422 otherwise; see the model's `non_finite`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_finite: bool,
}

fn create_job_variant(kind: &str) -> String {
    let camel: String = kind
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    format!("Create{camel}Job")
}

/// `oneOf` the per-kind submissions, discriminated by `kind`; each kind's parameter type is
/// its `params` schema. Built from the registry ([`crate::jobs::kinds::params_schemas`]), so
/// a new kind appears here without touching this file.
impl utoipa::PartialSchema for CreateJob {
    fn schema() -> RefOr<Schema> {
        let mut one_of =
            OneOfBuilder::new().description(Some("A job submission: `kind` selects the shape of `params`."));
        let mut discriminator = Discriminator::new("kind");
        for (kind, _, _, _) in crate::jobs::kinds::params_schemas() {
            let variant = create_job_variant(kind);
            discriminator.mapping.insert(kind.to_string(), format!("#/components/schemas/{variant}"));
            one_of = one_of.item(Ref::from_schema_name(variant));
        }
        one_of.discriminator(Some(discriminator)).into()
    }
}

impl ToSchema for CreateJob {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (kind, params_name, params_schema, deps) in crate::jobs::kinds::params_schemas() {
            let variant: Schema = ObjectBuilder::new()
                .description(Some(format!("Submit a `{kind}` job.")))
                .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind])))
                .required("kind")
                .property(
                    "model_id",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                        .description(Some("The model the job works on.")),
                )
                .property("params", Ref::from_schema_name(params_name.clone()))
                .property("webhook", Ref::from_schema_name("JobWebhook"))
                .property(
                    "allow_non_finite",
                    ObjectBuilder::new().schema_type(Type::Boolean).description(Some(
                        "Run even though the selected tensors hold NaN or infinite values (refused with 422 otherwise).",
                    )),
                )
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .into();
            schemas.push((create_job_variant(kind), RefOr::T(variant)));
            schemas.push((params_name, params_schema));
            schemas.extend(deps);
        }
        schemas.push((
            <super::webhooks::JobWebhook as utoipa::ToSchema>::name().into_owned(),
            <super::webhooks::JobWebhook as utoipa::PartialSchema>::schema(),
        ));
    }
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

/// Reads a stored model's header (on the blocking pool: it opens and maps the file).
async fn stored_model(st: &AppState, row: &db::ModelRow) -> ApiResult<StoredModel> {
    let header = stored_header(st, &row.id).await?;
    Ok(StoredModel { id: row.id.clone(), spec: row.spec.clone(), header })
}

/// A stored model's safetensors header, read on the blocking pool (it opens and maps the file).
pub(super) async fn stored_header(st: &AppState, model_id: &str) -> ApiResult<crate::tensorfile::Header> {
    let path = st.store.model_path(model_id);
    tokio::task::spawn_blocking(move || crate::tensorfile::Tensorfile::open_trusted(&path).map(|f| f.header))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Looks up everything the job reads, as the caller's (another tenant's id is answered exactly
/// like a missing one), then runs the kind's checks against it. Returns the input ids.
async fn precheck(
    st: &AppState,
    caller: &Caller,
    params: &JobParams,
    model_id: Option<&str>,
) -> ApiResult<Vec<String>> {
    let tenant = &caller.tenant;
    let needs = params.needs();
    let kind = params.kind();
    let mut inputs = Vec::new();
    let mut stored = Stored::default();
    if needs.model {
        let id = model_id.ok_or_else(|| ApiError::validation("model_id", format!("required for kind '{kind}'")))?;
        let row = match uuid::Uuid::parse_str(id) {
            Ok(_) => db::get_model_of(&st.db, tenant, id).await?,
            Err(_) => None,
        };
        let row = row.ok_or_else(|| ApiError::validation("model_id", format!("model '{id}' does not exist")))?;
        if needs.spec {
            stored.spec = Some(crate::checks::stored_spec(row.spec.as_deref(), id, "model_id")?);
        } else if let Some(text) = &row.spec {
            stored.spec = crate::nn::ModelSpec::from_json(text.as_bytes()).ok();
        }
        stored.model = Some(stored_model(st, &row).await?);
        inputs.push(id.to_string());
    } else if model_id.is_some() {
        return Err(ApiError::validation("model_id", format!("kind '{kind}' takes no model_id")));
    }
    for (id, field) in &needs.models {
        let row = match uuid::Uuid::parse_str(id) {
            Ok(_) => db::get_model_of(&st.db, tenant, id).await?,
            Err(_) => None,
        };
        let row = row.ok_or_else(|| ApiError::validation(field.clone(), format!("model '{id}' does not exist")))?;
        stored.models.insert(id.clone(), stored_model(st, &row).await?);
        inputs.push(id.clone());
    }
    for d in &needs.data {
        if stored.datasets.contains_key(&d.id) {
            continue;
        }
        let row = match uuid::Uuid::parse_str(&d.id) {
            Ok(_) => db::get_dataset_of(&st.db, tenant, &d.id).await?,
            Err(_) => None,
        };
        let row =
            row.ok_or_else(|| ApiError::validation(d.field.clone(), format!("dataset '{}' does not exist", d.id)))?;
        let info: crate::datasets::DatasetInfo = serde_json::from_str(&row.info).map_err(ApiError::internal)?;
        stored.datasets.insert(d.id.clone(), info);
        if !inputs.contains(&d.id) {
            inputs.push(d.id.clone());
        }
    }
    params.check(&stored)?;
    Ok(inputs)
}

/// Submit a job. Answers 202 with the queued job and its `Location`; send an
/// `Idempotency-Key` header to make retries safe (same key and body → same job).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry key: the same key and body return the same job")),
    responses(
        (status = 202, description = "Queued (or the earlier job for a repeated Idempotency-Key)", body = Job,
            headers(("Location" = String, description = "URL of the job"),
                ("Modelpress-Webhook-Secret" = String, description = "The generated signing secret of the job's `webhook` (only when it had none; shown only now)"))),
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
    let kind = JobKind::parse(&body.kind, &st.param_rules())?;
    let parsed = JobParams::parse(kind, &raw_params)?;
    let inputs = precheck(&st, &caller, &parsed, body.model_id.as_deref()).await?;
    if let (true, Some(model_id)) = (parsed.needs().model, body.model_id.as_deref()) {
        super::models::refuse_non_finite(&st, model_id, &raw_params, body.allow_non_finite).await?;
    }
    let request_hash = hex::encode(Sha256::digest(serde_json::to_vec(&body).map_err(ApiError::internal)?));
    let new = NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        kind: body.kind.clone(),
        model_id: if parsed.needs().model { body.model_id.clone() } else { None },
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
    let hook = super::webhooks::StagedJobWebhook::stage(&st, body.webhook.as_ref(), &new.id).await?;
    let inserted = db::insert_job(&st.db, &new, st.config.max_queued_jobs, quota).await?;
    let hook = super::webhooks::StagedJobWebhook::settle(hook, &st, matches!(inserted, InsertJob::Inserted(_))).await?;
    let (row, replayed) = match inserted {
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
    super::webhooks::StagedJobWebhook::show_secret(hook, &mut resp)?;
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
    let status = match &q.status {
        Some(s) => Some(s.parse::<JobStatus>()?),
        None => None,
    };
    let f = JobFilter {
        status,
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
        terminal: job.status.is_terminal(),
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
                        let u = JobUpdate { job_id: s.id.clone(), event: "state".into(), terminal: job.status.is_terminal(), data: serde_json::to_value(&job).ok()? };
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
