//! `PUT /v1/models/{id}/spec`: attaches an architecture spec after checking it against the
//! stored weights ([`crate::checks`]).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::extract::{ApiJson, ApiPath};
use super::models::{load_model, Model};
use super::AppState;
use crate::auth::Caller;
use crate::checks::check_spec;

/// Result of attaching a spec.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpecAttached {
    pub model: Model,
    /// Tensors in the file the spec does not use.
    pub unused_tensors: Vec<String>,
    /// Trainable parameters the spec uses.
    pub parameter_count: u64,
    /// Per-sample output shape.
    pub output_shape: Vec<usize>,
}

/// Attach (or replace) a model's architecture spec. The spec is checked against the stored
/// weights: every tensor it needs must exist with the right shape and a float dtype, and the
/// shapes must chain from the declared input to `[classes]`.
#[utoipa::path(put, path = "/v1/models/{id}/spec", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    request_body(content = Object, description = "Architecture spec (docs/spec.md)"),
    responses(
        (status = 200, description = "Attached", body = SpecAttached),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid spec or it does not fit the weights (`errors` lists each problem)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_spec(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<Value>,
) -> ApiResult<Json<SpecAttached>> {
    let row = load_model(&st, &caller, &id).await?;
    let text = serde_json::to_vec(&spec).map_err(ApiError::internal)?;
    if text.len() > st.config.max_spec_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("spec exceeds {} bytes", st.config.max_spec_bytes),
        ));
    }
    let header = super::jobs::stored_header(&st, &row.id).await?;
    let (spec, check) = check_spec(&text, &header)?;
    if !crate::db::set_model_spec(&st.db, &caller.tenant, &row.id, Some(&spec.to_json())).await? {
        return Err(ApiError::not_found("model", &id));
    }
    let row = load_model(&st, &caller, &id).await?;
    Ok(Json(SpecAttached {
        model: Model::from_row(row, true),
        unused_tensors: check.unused,
        parameter_count: check.parameter_count,
        output_shape: check.output_shape,
    }))
}
