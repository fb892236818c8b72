//! Checks of stored inputs against each other, shared by uploads, `PUT .../spec` and job
//! submission: a spec against a file's tensors, a model's stored spec, a model against a
//! dataset split. Plain functions returning [`DomainError`]s (422 naming the field); callers run
//! them on the runtime (they only read headers and JSON already in memory).

use crate::datasets::DatasetInfo;
use crate::error::{DomainError, ErrorCode};
use crate::nn::{ModelSpec, SpecCheck};
use crate::tensorfile::Header;

/// Parses a spec and checks it against the weights; returns the spec and the check.
pub fn check_spec(text: &[u8], header: &Header) -> Result<(ModelSpec, SpecCheck), DomainError> {
    let spec = ModelSpec::from_json(text).map_err(|e| DomainError::new(ErrorCode::InvalidSpec, e.to_string()))?;
    let check = spec.check_weights(&crate::artifact::logical_tensors(header)).map_err(|m| {
        DomainError::new(
            ErrorCode::InvalidSpec,
            format!("the spec does not fit the weights ({} problems)", m.problems.len()),
        )
        .with_errors(m.problems)
    })?;
    Ok((spec, check))
}

/// Checks a spec sent with an upload and returns the text to store.
pub fn check_spec_for_upload(text: &str, header: &Header) -> Result<String, DomainError> {
    let (spec, check) = check_spec(text.as_bytes(), header)?;
    if !check.unused.is_empty() {
        tracing::info!(unused = ?check.unused, "spec leaves tensors unused");
    }
    Ok(spec.to_json())
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
) -> Result<(), DomainError> {
    let names: Vec<&str> = info.splits.iter().map(|s| s.name.as_str()).collect();
    let s = match split {
        Some(name) => info.split(name).ok_or_else(|| {
            DomainError::validation(
                field,
                format!("dataset '{ds_id}' has no '{name}' split (it has {})", names.join(", ")),
            )
        })?,
        None => info.splits.first().ok_or_else(|| DomainError::validation(field, "dataset has no splits"))?,
    };
    if s.sample_shape != spec.input.shape {
        return Err(DomainError::validation(
            field,
            format!(
                "dataset samples have shape {:?} but the model expects input shape {:?}",
                s.sample_shape, spec.input.shape
            ),
        ));
    }
    if needs_labels && !s.labelled {
        return Err(DomainError::validation(field, format!("split '{}' has no labels", s.name)));
    }
    if let Some(c) = s.classes {
        if c as usize > spec.output.classes {
            return Err(DomainError::validation(
                field,
                format!("dataset labels use {c} classes but the model outputs {} classes", spec.output.classes),
            ));
        }
    }
    Ok(())
}

/// The stored spec of a model, or 422 naming `field`.
pub fn stored_spec(spec: Option<&str>, model_id: &str, field: &str) -> Result<ModelSpec, DomainError> {
    let text = spec.ok_or_else(|| {
        DomainError::validation(
            field,
            format!("model '{model_id}' has no architecture spec; PUT /v1/models/{model_id}/spec first"),
        )
    })?;
    ModelSpec::from_json(text.as_bytes()).map_err(|e| DomainError::new(ErrorCode::InvalidSpec, e.to_string()))
}
