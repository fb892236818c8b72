//! The HTTP API: one module per resource, all routes registered through utoipa-axum so a route
//! cannot exist without its OpenAPI entry. Handlers run on the tokio runtime and only do
//! short, bounded work; compute goes to the job workers.

pub mod auth;
pub mod dashboard;
pub mod datasets;
pub mod error;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod onnx;
pub mod predict;
pub mod security;
pub mod specs;
pub mod webhooks;

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
use crate::jobs::kinds::ParamRules;
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
    /// Webhook delivery task (and the allow-list submissions are checked against).
    pub webhooks: crate::webhooks::WebhookSender,
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
        (name = "webhooks", description = "Signed events when jobs end"),
        (name = "keys", description = "Tenant API keys (admin only)"),
        (name = "dashboard", description = "The web dashboard"),
        (name = "operations", description = "Health, metrics, contract"),
    ),
    components(schemas(super::error::Problem))
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
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::delete_webhook))
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
    declare_binary_bodies(&mut doc);
    doc
}

/// Raw bodies (`application/octet-stream`: model and dataset uploads, binary predict, and the
/// downloads and binary predictions answered) are files: declared as binary strings so
/// generated clients send and receive bytes.
fn declare_binary_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::RefOr;
    let binary = || {
        Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                .into(),
        )
    };
    const OCTETS: &str = "application/octet-stream";
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.put].into_iter().flatten() {
            if let Some(content) = op.request_body.as_mut().and_then(|b| b.content.get_mut(OCTETS)) {
                content.schema = binary();
            }
            for resp in op.responses.responses.values_mut() {
                if let RefOr::T(r) = resp {
                    if let Some(content) = r.content.get_mut(OCTETS) {
                        content.schema = binary();
                    }
                }
            }
        }
    }
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
    let auth_state = auth::AuthState {
        admin_key: state.config.auth.admin_key.clone(),
        db: state.db.clone(),
        limits: state.limits.clone(),
        metrics: state.metrics.clone(),
    };
    router
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(limits.clone(), crate::limits::timeout))
        .layer(axum::middleware::from_fn_with_state(auth_state, auth::authenticate))
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
