//! Extractors whose rejections come out as problem+json like every other error.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};
use crate::limits::{json_depth_ok, JsonLimits};

/// A JSON body with problem+json rejections and limits: the size limit of the route
/// (`DefaultBodyLimit`, `--max-json-bytes`) and a nesting depth limit (`--max-json-depth`,
/// from the [`JsonLimits`] request extension), checked before anything is parsed.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected a request body with `Content-Type: application/json`",
            ));
        }
        let limits = req.extensions().get::<JsonLimits>().copied().unwrap_or_default();
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let code = if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::PayloadTooLarge
            } else {
                ErrorCode::BadRequest
            };
            ApiError::new(code, r.body_text())
        })?;
        if !json_depth_ok(&bytes, limits.max_depth) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("JSON nested deeper than {} levels (--max-json-depth)", limits.max_depth),
            ));
        }
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::new(ErrorCode::Validation, format!("invalid request body: {e}")),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}"))
                }
            }
        })
    }
}

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Whether `s` is a UUID in the hyphenated form this API issues (the form its OpenAPI
/// pattern describes).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// Checks that a path id looks like one we issue (a UUID), so junk never reaches SQL or paths.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(what, id))
    }
}

/// Checks a pagination cursor (an id from a previous page).
pub fn check_cursor(cursor: Option<&str>) -> Result<(), ApiError> {
    match cursor {
        Some(c) if !is_uuid(c) => Err(ApiError::validation(
            "cursor",
            "not a cursor returned by this API (use next_cursor from the previous page)",
        )),
        _ => Ok(()),
    }
}

/// Checks a page size.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=200).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::validation("limit", "must be between 1 and 200")),
    }
}
