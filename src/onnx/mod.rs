//! ONNX in and out: importing an `.onnx` graph as an architecture spec plus safetensors weights,
//! and exporting a stored model (float, f16, int8, int4/GGML, pruned) as an `.onnx` file.
//!
//! Pure and synchronous (no tokio, sqlx or axum): the upload handler calls [`import_file`] and the
//! download handler calls [`export::write_onnx`] on a blocking thread (`spawn_blocking`; both are
//! bounded by the upload size limit and take well under the request timeout, see
//! docs/benchmarks.md). The protobuf types are in [`proto`]; [`import`] walks a graph into the
//! spec; [`export`] builds a graph from the spec.
//!
//! Memory: the ONNX file is memory-mapped and decoded into `Bytes` that point into the map, so
//! float initializers are written to the safetensors file without an in-memory copy (except the
//! ones the import must transpose or fold).

pub mod export;
pub mod import;
pub mod proto;

use std::collections::BTreeMap;
use std::path::Path;

use crate::tensorfile::{Dtype, TensorPlan, TensorWriter, TensorfileError};

pub use import::{import, Imported, ImportedTensor, TensorData};

/// Oldest default-domain opset imported.
pub const MIN_OPSET: i64 = 11;
/// Newest default-domain opset imported.
pub const MAX_OPSET: i64 = 21;

/// Operators the importer maps onto the spec (default domain). `Constant` nodes are folded.
pub const SUPPORTED_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Constant",
    "Cast",
    "DequantizeLinear",
    "Transpose",
];

/// Of [`SUPPORTED_OPS`], those accepted only on constants (folded) or, for `Cast`, on the input;
/// listed separately in error messages.
pub const CONSTANT_ONLY_OPS: &[&str] = &["Constant", "Cast", "DequantizeLinear", "Transpose"];

/// Why an ONNX file cannot be imported or a model exported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Not a protobuf-encoded ONNX model.
    #[error("not a valid ONNX file: {0}")]
    Decode(String),
    /// Nodes modelpress cannot run; every one is listed (`"OpType 'name'"`, with a reason when
    /// the operator is supported but an attribute is not).
    #[error("the graph has {} unsupported node(s): {}", .0.len(), .0.join("; "))]
    Unsupported(Vec<String>),
    /// A supported graph shape could not be mapped (structure, shapes, constants).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    File(#[from] TensorfileError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads `src` (memory-mapped), converts it and writes the weights as safetensors to `dst`.
/// Nothing is written when the graph is refused.
pub fn import_file(src: &Path, dst: &Path) -> Result<Imported, OnnxError> {
    let file = std::fs::File::open(src)?;
    // SAFETY: the upload temp file is private to this request and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let imported = import(bytes::Bytes::from_owner(map))?;
    write_safetensors(&imported, dst)?;
    Ok(imported)
}

/// Writes the imported tensors (F32) with the import metadata.
pub fn write_safetensors(imported: &Imported, dst: &Path) -> Result<(), OnnxError> {
    let plans: Vec<TensorPlan> =
        imported.tensors.iter().map(|t| TensorPlan::new(t.name.clone(), Dtype::F32, t.shape.clone())).collect();
    let meta: BTreeMap<String, String> = imported.metadata.clone();
    let mut w = TensorWriter::create(dst, plans, &meta)?;
    for t in &imported.tensors {
        match &t.data {
            TensorData::RawF32(b) => w.write(b)?,
            TensorData::F32(v) => w.write_f32_as(v)?,
        }
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests;
