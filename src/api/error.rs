//! The HTTP side of errors: [`ApiError`] renders a [`DomainError`] as
//! `application/problem+json` (with `Retry-After` when set) and turns extractor rejections,
//! database and I/O failures into problems. 5xx bodies never carry internals: the cause is
//! logged once and the client gets a generic detail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub use crate::error::{DomainError, ErrorCode, Problem, PROBLEM_JSON};

/// An error answered to an HTTP client: a [`DomainError`] on its way out.
#[derive(Debug)]
pub struct ApiError(pub DomainError);

impl std::ops::Deref for ApiError {
    type Target = DomainError;
    fn deref(&self) -> &DomainError {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut DomainError {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError(DomainError::new(code, detail))
    }
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError(DomainError::validation(field, detail))
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError(DomainError::not_found(what, id))
    }
    pub fn with_errors(self, errors: Vec<String>) -> Self {
        ApiError(self.0.with_errors(errors))
    }
    pub fn with_retry_after(self, secs: u64) -> Self {
        ApiError(self.0.with_retry_after(secs))
    }
    /// An internal failure: logs the cause, answers an opaque 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError(DomainError::internal(cause))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ApiError {}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of a code.
pub fn http_status(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl IntoResponse for DomainError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (http_status(self.code), body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = match r {
            JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(_) => ErrorCode::BadRequest,
            JsonRejection::BytesRejection(_) => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::Validation,
        };
        ApiError::new(code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(ErrorCode::BadRequest, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::BadRequest, r.body_text())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        if crate::fault::is_disk_full(&e) {
            tracing::error!(error = %e, "data disk full");
            return ApiError::new(ErrorCode::InsufficientStorage, crate::error::DISK_FULL);
        }
        ApiError::internal(format!("io: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
