//! The axum side of authentication (runs on the runtime, per request): [`authenticate`] runs on every request (as a router layer),
//! decides who the caller is for `/v1` routes, applies the per-key rate limit, and stores the
//! [`Caller`] as a request extension; handlers take it with the [`Caller`] extractor.
//!
//! Everything outside `/v1` (health, metrics, the OpenAPI document, the dashboard's static
//! files) is public. The `Authorization` header is never logged: the trace span records only
//! method, route and path, and the header is marked sensitive.

use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use super::error::{ApiError, ErrorCode};
use crate::auth::{constant_time_eq, hash_key, is_admin_key, Caller, Role, Secret, Tenant};
use crate::db::Db;
use crate::limits::Limits;
use crate::telemetry::Metrics;

/// What the authentication layer needs, and nothing more: the admin key, the key table, the
/// rate limiter and the rejection counter.
#[derive(Clone)]
pub struct AuthState {
    pub admin_key: Option<Secret>,
    pub db: Db,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
}

/// Whether a path needs a key when keys are configured.
pub fn is_protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 with `WWW-Authenticate: Bearer`.
pub fn unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::new(ErrorCode::Unauthorized, detail).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"modelpress\""));
    resp
}

/// Who is calling, or the response that refuses the request.
async fn identify(st: &AuthState, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(admin) = &st.admin_key else {
        return Ok(Caller::open());
    };
    let Some(token) = bearer(headers) else {
        return Err(unauthorized("send an API key: `Authorization: Bearer <key>`"));
    };
    if is_admin_key(token, admin) {
        return Ok(Caller::admin());
    }
    let hash = hash_key(token);
    match crate::db::keys::find_active_key(&st.db, &hash).await {
        // The lookup is by hash; the compare is repeated in constant time so the answer never
        // depends on how much of a guessed hash matched.
        Ok(Some(row)) if constant_time_eq(row.key_hash.as_bytes(), hash.as_bytes()) => {
            Ok(Caller { role: Role::Tenant, tenant: Tenant::Named(row.tenant_id), key_id: row.id })
        }
        Ok(_) => {
            st.metrics.inc("modelpress_rejections_total", vec![("reason", "bad_key".into())], 1.0);
            Err(unauthorized("the API key is not valid (unknown or revoked)"))
        }
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// Middleware: authenticates `/v1` requests and applies the per-key rate limit.
pub async fn authenticate(State(st): State<AuthState>, mut req: Request, next: Next) -> Response {
    if !is_protected(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = match identify(&st, req.headers()).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if caller.role != Role::Open {
        if let Err(retry) = st.limits.rate.check(&caller.key_id, Instant::now()) {
            st.metrics.inc("modelpress_rejections_total", vec![("reason", "rate_limited".into())], 1.0);
            return ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests per second (burst {}) with this key (--rate-limit-rps); retry after {retry} s",
                    st.limits.config.rate_limit_rps, st.limits.config.rate_limit_burst
                ),
            )
            .with_retry_after(retry)
            .into_response();
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Fail closed: a /v1 handler reached without the middleware is a wiring bug.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("no caller on the request: the authenticate layer is missing"))
    }
}

impl Caller {
    /// 403 unless the caller may manage keys (the admin).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Tenant => Err(ApiError::new(ErrorCode::Forbidden, "only the admin key can manage API keys")),
            Role::Open => Err(ApiError::new(
                ErrorCode::Forbidden,
                "API keys are off: start the server with --admin-key to manage tenant keys",
            )),
        }
    }
}
