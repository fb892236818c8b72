//! The HTTP API: one module per resource, all routes registered through utoipa-axum so a route
//! cannot exist without its OpenAPI entry. Handlers run on the tokio runtime and only do
//! short, bounded work; compute goes to the job workers.

pub mod dashboard;
pub mod datasets;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod onnx;
pub mod predict;
pub mod security;
pub mod specs;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::db::Db;
use crate::jobs::params::ParamRules;
use crate::jobs::JobsHandle;
use crate::storage::ArtifactStore;
use crate::telemetry::Metrics;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub store: ArtifactStore,
    pub config: Arc<Config>,
    pub jobs: JobsHandle,
    pub metrics: Arc<Metrics>,
    pub inference: crate::inference::InferenceHandle,
    /// Rate limiter, SSE slots, limit settings.
    pub limits: Arc<crate::limits::Limits>,
}

impl AppState {
    pub fn param_rules(&self) -> ParamRules {
        ParamRules { enable_test_jobs: self.config.enable_test_jobs }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "modelpress", description = "Self-hostable model-compression service: upload models and datasets, run prune / quantize / distill jobs, download compressed artifacts.", license(name = "Apache-2.0")),
    tags(
        (name = "models", description = "Uploaded and derived models"),
        (name = "datasets", description = "Uploaded datasets"),
        (name = "jobs", description = "Compression and training jobs"),
        (name = "keys", description = "Tenant API keys (admin only)"),
        (name = "dashboard", description = "The web dashboard"),
        (name = "operations", description = "Health, metrics, contract"),
    ),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    // Upload routes stream with their own limit (--max-upload-bytes); every other body keeps
    // axum's default 2 MiB limit.
    let uploads = OpenApiRouter::new()
        .routes(routes!(models::create_model, models::list_models))
        .routes(routes!(datasets::create_dataset, datasets::list_datasets))
        .layer(DefaultBodyLimit::disable());
    // Predictions read their body with a limit sized by the model (--max-predict-rows).
    let predictions = OpenApiRouter::new().routes(routes!(predict::predict)).layer(DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(uploads)
        .merge(predictions)
        .routes(routes!(predict::predict_info))
        .routes(routes!(models::get_model, models::delete_model))
        .routes(routes!(models::download_model))
        .routes(routes!(specs::put_spec))
        .routes(routes!(datasets::get_dataset, datasets::delete_dataset))
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(jobs::job_events))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::app_js))
        .routes(routes!(dashboard::style_css))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_yaml))
        .routes(routes!(health::openapi_json))
}

/// The OpenAPI document generated from the code (`openapi.yaml` must equal it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().into_openapi();
    // After the routes are in: it walks every /v1 operation.
    utoipa::Modify::modify(&security::SecurityDoc, &mut doc);
    doc
}

/// Counts requests by matched route and status, and times them.
async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics.inc(
        "modelpress_http_requests_total",
        vec![("route", route.clone()), ("method", method), ("status", status)],
        1.0,
    );
    metrics.observe("modelpress_http_request_duration_seconds", vec![("route", route)], start.elapsed().as_secs_f64());
    resp
}

/// The full router with middleware.
pub fn router(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    let metrics = state.metrics.clone();
    let limits = state.limits.clone();
    let cors = security::cors(&state.config.auth.cors_origins);
    let state_for_auth = state.clone();
    router
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(limits.clone(), crate::limits::timeout))
        .layer(axum::middleware::from_fn_with_state(state_for_auth, crate::auth::middleware::authenticate))
        .layer(axum::Extension(limits.json()))
        .layer(DefaultBodyLimit::max(limits.config.max_json_bytes))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), route = %route, uri = %req.uri().path())
        }))
        // Outermost: any Debug print of the request shows the key as "Sensitive"; CORS answers
        // preflights before authentication (they carry no key).
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([axum::http::header::AUTHORIZATION]))
        .layer(cors)
}
