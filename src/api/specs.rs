//! Architecture specs attached to models: accepted at upload (multipart part `spec`).

use crate::error::{ApiError, ErrorCode};
use crate::tensorfile::Header;

/// Checks a spec sent with an upload and returns the text to store.
pub fn check_spec_for_upload(text: &str, _header: &Header) -> Result<String, ApiError> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidSpec, format!("spec is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::new(ErrorCode::InvalidSpec, "spec must be a JSON object"));
    }
    Ok(v.to_string())
}
