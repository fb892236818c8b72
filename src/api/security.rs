//! The contract side of keys and limits: the `bearer` security scheme and the responses every
//! `/v1` operation can give because of the middleware (401, 429, 503), added to the OpenAPI
//! document in one place so a new route cannot forget them; and the CORS layer.

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::Modify;

/// Adds the `bearer` scheme, marks every `/v1` operation with it, and documents the
/// middleware's answers where the handler does not already.
pub struct SecurityDoc;

fn problem_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("Problem"))).build(),
        )
        .build()
        .into()
}

fn add_default(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| problem_response(description));
}

impl Modify for SecurityDoc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <key>`: the admin key (--admin-key) or a tenant key from POST /v1/keys. \
                         Required on every /v1 route when the server has an admin key; a server without one \
                         (open single-user mode on loopback) ignores it.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !super::auth::is_protected(path) {
                continue;
            }
            let ops = [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
                (Method::OPTIONS, &mut item.options),
                (Method::HEAD, &mut item.head),
                (Method::PATCH, &mut item.patch),
                (Method::TRACE, &mut item.trace),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                add_default(op, "401", "Missing, unknown or revoked API key (`WWW-Authenticate: Bearer`)");
                add_default(op, "429", "Rate limited (--rate-limit-rps); retry after `Retry-After` seconds");
                if !crate::limits::is_streaming_route(&method, path) {
                    add_default(op, "503", "The request took longer than --request-timeout-secs");
                }
            }
        }
    }
}

/// CORS for dashboards on other origins: `origins` is empty (no CORS headers), `["*"]`, or a
/// list of exact origins. Keys travel in `Authorization`, never cookies, so credentials stay off.
pub fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<&str> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o.trim_end_matches('/')) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring an invalid --cors-origins entry");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_RANGE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            header::CONTENT_DISPOSITION,
            header::CONTENT_RANGE,
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}
