//! Operations routes: liveness, readiness, Prometheus metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::AppState;
use crate::db;

/// Health status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the database answers and the data directory is writable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "Database or data directory unusable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(State(st): State<AppState>) -> ApiResult<Json<Health>> {
    sqlx::query("SELECT 1").execute(&st.db).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: database");
        ApiError::new(ErrorCode::Unavailable, "database unavailable")
    })?;
    let probe = st.store.root().join("tmp").join(".ready");
    tokio::fs::write(&probe, b"ok").await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: data dir");
        ApiError::new(ErrorCode::Unavailable, "data directory not writable")
    })?;
    let _ = tokio::fs::remove_file(&probe).await;
    Ok(Json(Health { status: "ready".into() }))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String),
    (status = 500, description = "Metrics unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let counts = db::count_by_status(&st.db).await?;
    let jobs = counts.iter().map(|(s, n)| (vec![("status", s.as_str().to_string())], *n as f64)).collect();
    let queued = counts.iter().find(|(s, _)| *s == crate::jobs::JobStatus::Queued).map(|(_, n)| *n).unwrap_or(0) as f64;
    let text = st.metrics.render(&[
        ("modelpress_queue_depth", "Jobs waiting to run", vec![(vec![], queued)]),
        ("modelpress_jobs", "Jobs by status", jobs),
        (
            "modelpress_jobs_running_here",
            "Jobs running in this process",
            vec![(vec![], st.jobs.running_count() as f64)],
        ),
    ]);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The OpenAPI document (YAML).
#[utoipa::path(get, path = "/openapi.yaml", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/yaml", body = Object)))]
pub async fn openapi_yaml() -> Response {
    match super::openapi().to_yaml() {
        Ok(y) => ([(header::CONTENT_TYPE, "application/yaml")], y).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The OpenAPI document (JSON).
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    match super::openapi().to_json() {
        Ok(y) => ([(header::CONTENT_TYPE, "application/json")], y).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /openapi.yaml")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not accept that method; see /openapi.yaml")
}
