//! Errors at the HTTP edge: one [`ApiError`] rendered as `application/problem+json`
//! (RFC 9457) with a stable `code`. Failed jobs store the same [`Problem`] object.
//!
//! 5xx bodies never carry internals: the cause is logged once, here, and the client gets a
//! generic detail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error kind the API can answer with: its HTTP status, stable code and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    Validation,
    InvalidSafetensors,
    InvalidSpec,
    InvalidOnnx,
    QueueFull,
    RateLimited,
    QuotaExceeded,
    Cancelled,
    Internal,
    Unavailable,
    Timeout,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Validation | InvalidSafetensors | InvalidSpec | InvalidOnnx => StatusCode::UNPROCESSABLE_ENTITY,
            QueueFull | RateLimited | QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            // A cancelled job's error object; never an HTTP answer by itself.
            Cancelled => StatusCode::CONFLICT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable | Timeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict => "conflict",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RangeNotSatisfiable => "range_not_satisfiable",
            Validation => "validation_failed",
            InvalidSafetensors => "invalid_safetensors",
            InvalidSpec => "invalid_spec",
            InvalidOnnx => "invalid_onnx",
            QueueFull => "queue_full",
            RateLimited => "rate_limited",
            QuotaExceeded => "quota_exceeded",
            Cancelled => "cancelled",
            Internal => "internal_error",
            Unavailable => "unavailable",
            Timeout => "timeout",
        }
    }

    pub fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "Bad request",
            Unauthorized => "Missing or invalid API key",
            Forbidden => "Not allowed for this key",
            NotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            Conflict => "Conflict",
            PayloadTooLarge => "Payload too large",
            UnsupportedMediaType => "Unsupported media type",
            RangeNotSatisfiable => "Range not satisfiable",
            Validation => "Validation failed",
            InvalidSafetensors => "Invalid safetensors file",
            InvalidSpec => "Invalid architecture spec",
            InvalidOnnx => "ONNX model cannot be imported",
            QueueFull => "Job queue is full",
            RateLimited => "Too many requests",
            QuotaExceeded => "Job quota exceeded",
            Cancelled => "Job cancelled",
            Internal => "Internal server error",
            Unavailable => "Service unavailable",
            Timeout => "Request timed out",
        }
    }
}

/// The problem+json body. Also stored as a failed job's `error`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Problem {
    /// A URI naming the problem type: `urn:modelpress:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, in terms the caller can act on.
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_safetensors`.
    pub code: String,
    /// Each individual problem when there are several (e.g. every mismatching tensor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The request field the problem is about (`params.scheme`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Vec<String>,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError { code, detail: detail.into(), errors: Vec::new(), field: None, retry_after: None }
    }
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = format!("{field}: {}", detail.into());
        ApiError { field: Some(field), ..ApiError::new(ErrorCode::Validation, detail) }
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} '{id}' does not exist"))
    }
    pub fn with_errors(mut self, errors: Vec<String>) -> Self {
        self.errors = errors;
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// An internal failure: logs the cause, answers an opaque 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(ErrorCode::Internal, "the server failed to handle this request; see its logs")
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:modelpress:problem:{}", self.code.as_str()),
            title: self.code.title().to_string(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_string(),
            errors: self.errors.clone(),
            field: self.field.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for ApiError {}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.code.status(), body).into_response();
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
        ApiError::internal(format!("io: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
