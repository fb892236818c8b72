//! Extractors whose rejections come out as problem+json like every other error.

use axum::extract::{FromRequest, FromRequestParts};

use crate::error::ApiError;

/// `axum::Json` with problem+json rejections.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Checks that a path id looks like one we issue (a UUID), so junk never reaches SQL or paths.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if uuid::Uuid::parse_str(id).is_ok() {
        Ok(())
    } else {
        Err(ApiError::not_found(what, id))
    }
}

/// Checks a pagination cursor (an id from a previous page).
pub fn check_cursor(cursor: Option<&str>) -> Result<(), ApiError> {
    match cursor {
        Some(c) if uuid::Uuid::parse_str(c).is_err() => Err(ApiError::validation(
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
