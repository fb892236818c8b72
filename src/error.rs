//! Domain errors, free of HTTP and SQL: [`ErrorCode`] (each code's status number, stable name
//! and title), the [`Problem`] object (RFC 9457 fields) and [`DomainError`], what any layer
//! returns when a request cannot be served as asked. Job parameter checks, stored-input checks
//! and limits build `DomainError`s; the HTTP edge (`api::error::ApiError`) renders them as
//! `application/problem+json`, and a failed job stores the same [`Problem`].
//!
//! Owned by no thread: plain values, used on the runtime and on worker threads alike.

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
    InsufficientStorage,
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
    /// The HTTP status number this code is answered with.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            Conflict => 409,
            PayloadTooLarge => 413,
            InsufficientStorage => 507,
            UnsupportedMediaType => 415,
            RangeNotSatisfiable => 416,
            Validation | InvalidSafetensors | InvalidSpec | InvalidOnnx => 422,
            QueueFull | RateLimited | QuotaExceeded => 429,
            // A cancelled job's error object; never an HTTP answer by itself.
            Cancelled => 409,
            Internal => 500,
            Unavailable | Timeout => 503,
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
            InsufficientStorage => "insufficient_storage",
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
            InsufficientStorage => "Insufficient storage",
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

/// Why a request cannot be served as asked: a code, a detail the caller can act on, the field
/// it is about and (for 429/503) when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainError {
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Vec<String>,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl DomainError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        DomainError { code, detail: detail.into(), errors: Vec::new(), field: None, retry_after: None }
    }
    /// A 422 naming the request field (`params.scheme`); the detail is prefixed with it.
    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = format!("{field}: {}", detail.into());
        DomainError { field: Some(field), ..DomainError::new(ErrorCode::Validation, detail) }
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        DomainError::new(ErrorCode::NotFound, format!("{what} '{id}' does not exist"))
    }
    pub fn with_errors(mut self, errors: Vec<String>) -> Self {
        self.errors = errors;
        self
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// An internal failure: logs the cause, says nothing about it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        DomainError::new(ErrorCode::Internal, "the server failed to handle this request; see its logs")
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:modelpress:problem:{}", self.code.as_str()),
            title: self.code.title().to_string(),
            status: self.code.status(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_string(),
            errors: self.errors.clone(),
            field: self.field.clone(),
        }
    }
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for DomainError {}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// What a client is told when the data directory's disk is full (uploads 507, jobs' error).
pub const DISK_FULL: &str = "the server's data disk is full; nothing was stored (retry once space was freed)";
