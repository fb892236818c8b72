//! The HTTP side of ONNX import (`POST /v1/models?format=onnx`) and export
//! (`GET /v1/models/{id}/download?format=onnx`): error mapping and moving the work off the
//! runtime. The conversions themselves are in `crate::onnx` (pure, synchronous); they run on a
//! `spawn_blocking` thread because they are bounded by the upload size and fast (a 268 MB,
//! 67M-parameter MLP imports in well under 2 s, see docs/benchmarks.md).

use super::error::{ApiError, ApiResult, ErrorCode};
use super::AppState;
use crate::db::ModelRow;
use crate::onnx::{OnnxError, CONSTANT_ONLY_OPS, SUPPORTED_OPS};
use crate::storage::{ArtifactStore, TempFile, Upload};

/// Maps an import error to the API's 422 (or an opaque 500 for I/O).
pub(super) fn import_error(e: OnnxError) -> ApiError {
    let supported = || {
        let ops: Vec<&str> = SUPPORTED_OPS.iter().copied().filter(|o| !CONSTANT_ONLY_OPS.contains(o)).collect();
        format!("supported operators: {} (and {} on constants)", ops.join(", "), CONSTANT_ONLY_OPS.join(", "))
    };
    match e {
        OnnxError::Unsupported(nodes) => ApiError::new(
            ErrorCode::InvalidOnnx,
            format!("the graph has {} node(s) modelpress cannot run; nothing was stored. {}", nodes.len(), supported()),
        )
        .with_errors(nodes),
        OnnxError::Decode(m) => ApiError::new(ErrorCode::InvalidOnnx, format!("not a valid ONNX file: {m}")),
        OnnxError::Invalid(m) => ApiError::new(ErrorCode::InvalidOnnx, format!("{m}. {}", supported())),
        OnnxError::File(e) => ApiError::internal(e),
        OnnxError::Io(e) => ApiError::internal(e),
    }
}

/// Converts an uploaded `.onnx` temp file into a safetensors temp file; returns it with its size,
/// sha256 and the architecture spec (JSON). The ONNX temp file is removed when `upload` drops.
pub(super) async fn import_upload(st: &AppState, upload: Upload) -> ApiResult<(TempFile, u64, String, String)> {
    let out = st.store.temp_file("safetensors");
    let (src, dst) = (upload.file.path().to_path_buf(), out.path().to_path_buf());
    let r = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let imported = crate::onnx::import_file(&src, &dst)?;
        tracing::info!(
            import_ms = started.elapsed().as_millis() as u64,
            tensors = imported.tensors.len(),
            "ONNX graph imported"
        );
        let size = std::fs::metadata(&dst)?.len();
        let sha = ArtifactStore::sha256_file(&dst)?;
        Ok::<_, OnnxError>((size, sha, imported.spec.to_json()))
    })
    .await
    .map_err(ApiError::internal)?;
    drop(upload);
    let (size, sha, spec) = r.map_err(import_error)?;
    Ok((out, size, sha, spec))
}

/// The `onnx` download format: the stored model and its spec as an ONNX file.
pub(super) fn export_derive(src: &std::path::Path, dst: &std::path::Path, row: &ModelRow) -> Result<(), String> {
    let spec_text = row.spec.as_deref().ok_or("the model has no architecture spec")?;
    let spec = crate::nn::ModelSpec::from_json(spec_text.as_bytes()).map_err(|e| e.to_string())?;
    let info = crate::onnx::export::ExportInfo {
        model_id: row.id.clone(),
        model_name: row.name.clone(),
        source_model: row.parent_model_id.clone(),
        job: row.job_id.clone(),
    };
    crate::onnx::export::write_onnx(src, dst, &spec, &info).map_err(|e| e.to_string())
}
