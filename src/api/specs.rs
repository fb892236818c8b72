//! Architecture specs attached to models: checked against the weights at upload (multipart part
//! `spec`) and on `PUT /v1/models/{id}/spec`; and the model/dataset compatibility checks run
//! before a job that executes the model is queued.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath};
use super::models::{load_model, Model};
use super::AppState;
use crate::auth::Caller;
use crate::datasets::DatasetInfo;
use crate::error::{ApiError, ApiResult, ErrorCode, Problem};
use crate::nn::{ModelSpec, SpecCheck};
use crate::tensorfile::Header;

/// Parses a spec and checks it against the weights; returns the spec and the check.
pub fn check_spec(text: &[u8], header: &Header) -> Result<(ModelSpec, SpecCheck), ApiError> {
    let spec = ModelSpec::from_json(text).map_err(|e| ApiError::new(ErrorCode::InvalidSpec, e.to_string()))?;
    let check = spec.check_weights(&crate::artifact::logical_tensors(header)).map_err(|m| {
        ApiError::new(
            ErrorCode::InvalidSpec,
            format!("the spec does not fit the weights ({} problems)", m.problems.len()),
        )
        .with_errors(m.problems)
    })?;
    Ok((spec, check))
}

/// Checks a spec sent with an upload and returns the text to store.
pub fn check_spec_for_upload(text: &str, header: &Header) -> Result<String, ApiError> {
    let (spec, check) = check_spec(text.as_bytes(), header)?;
    if !check.unused.is_empty() {
        tracing::info!(unused = ?check.unused, "spec leaves tensors unused");
    }
    Ok(spec.to_json())
}

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
    let path = st.store.model_path(&row.id);
    let header =
        tokio::task::spawn_blocking(move || crate::tensorfile::Tensorfile::open_trusted(&path).map(|f| f.header))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
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

/// Checks that a model with `spec` can consume `split` of a dataset: the split exists, its
/// sample shape is the spec's input shape, labels exist when needed and fit the classes.
pub fn check_model_dataset(
    spec: &ModelSpec,
    ds_id: &str,
    info: &DatasetInfo,
    split: Option<&str>,
    needs_labels: bool,
    field: &str,
) -> Result<(), ApiError> {
    let names: Vec<&str> = info.splits.iter().map(|s| s.name.as_str()).collect();
    let s = match split {
        Some(name) => info.split(name).ok_or_else(|| {
            ApiError::validation(
                field,
                format!("dataset '{ds_id}' has no '{name}' split (it has {})", names.join(", ")),
            )
        })?,
        None => info.splits.first().ok_or_else(|| ApiError::validation(field, "dataset has no splits"))?,
    };
    if s.sample_shape != spec.input.shape {
        return Err(ApiError::validation(
            field,
            format!(
                "dataset samples have shape {:?} but the model expects input shape {:?}",
                s.sample_shape, spec.input.shape
            ),
        ));
    }
    if needs_labels && !s.labelled {
        return Err(ApiError::validation(field, format!("split '{}' has no labels", s.name)));
    }
    if let Some(c) = s.classes {
        if c as usize > spec.output.classes {
            return Err(ApiError::validation(
                field,
                format!("dataset labels use {c} classes but the model outputs {} classes", spec.output.classes),
            ));
        }
    }
    Ok(())
}

/// The stored spec of a model, or 422 naming `field`.
pub fn stored_spec(spec: Option<&str>, model_id: &str, field: &str) -> Result<ModelSpec, ApiError> {
    let text = spec.ok_or_else(|| {
        ApiError::validation(
            field,
            format!("model '{model_id}' has no architecture spec; PUT /v1/models/{model_id}/spec first"),
        )
    })?;
    ModelSpec::from_json(text.as_bytes()).map_err(|e| ApiError::new(ErrorCode::InvalidSpec, e.to_string()))
}
