//! Stored model artifacts as the engine sees them: which tensors are quantized (from the
//! `quantization_config` metadata written by the quantize job), their logical (dequantized)
//! shapes, and loading them as engine parameters. Pure and blocking; used by job workers and
//! the inference threads.
//!
//! Loading policy: GGUF block types (`q8_0`, `q4_k`, …) load as candle `QTensor`s so linear
//! layers run candle's quantized matmul, exactly as they are served; int8 / int4 / f16 tensors
//! load as the f32 values they encode (`q · scale`), which is exact, so evaluating an artifact
//! measures what is stored, not a simulation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::compress::quant::{EntryView, QuantData, QuantizationConfig, QuantizedTensor, METADATA_KEY};
use crate::nn::{Param, TensorMeta};
use crate::tensorfile::{Header, Tensorfile, TensorfileError};

/// Errors reading an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    File(#[from] TensorfileError),
    #[error("quantized tensor: {0}")]
    Quant(#[from] crate::compress::quant::QuantError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The quantization config of a file, if it is a quantized artifact.
pub fn quant_config(header: &Header) -> Option<QuantizationConfig> {
    header.metadata.get(METADATA_KEY).and_then(|s| QuantizationConfig::from_json(s).ok())
}

/// True when `entry` is one of the stored parts of quantized tensor `name`.
fn is_part_of(entry: &str, name: &str) -> bool {
    entry == name || entry.strip_prefix(name).is_some_and(|rest| rest.starts_with('_'))
}

/// The tensors as the network sees them: quantized tensors as F32 with their logical shape,
/// their stored parts hidden.
pub fn logical_tensors(header: &Header) -> BTreeMap<String, TensorMeta> {
    let cfg = quant_config(header);
    let mut out = BTreeMap::new();
    if let Some(cfg) = &cfg {
        for (name, rec) in &cfg.tensors {
            out.insert(name.clone(), TensorMeta { dtype: "F32".into(), shape: rec.shape.clone() });
        }
    }
    for t in &header.tensors {
        let hidden = cfg.as_ref().is_some_and(|c| c.tensors.keys().any(|n| is_part_of(&t.name, n)));
        if !hidden {
            out.insert(t.name.clone(), TensorMeta { dtype: t.dtype.as_str().into(), shape: t.shape.clone() });
        }
    }
    out
}

/// Rebuilds every quantized tensor of an open file.
pub fn quantized_tensors(tf: &Tensorfile) -> Result<Vec<QuantizedTensor>, ArtifactError> {
    let Some(cfg) = quant_config(&tf.header) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(cfg.tensors.len());
    for (name, rec) in &cfg.tensors {
        let get = |n: &str| {
            tf.header.get(n).map(|e| EntryView { dtype: e.dtype.as_str(), shape: &e.shape, bytes: tf.bytes(e) })
        };
        out.push(QuantizedTensor::from_entries(name, rec, get)?);
    }
    Ok(out)
}

/// How quantized tensors are handed to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// GGUF block types as `QTensor` (quantized matmul), everything else as exact f32.
    Native,
    /// Everything as f32 (training, dequantized downloads).
    Dequantized,
}

/// Loads all tensors of a stored model as engine parameters.
pub fn load_params(path: &Path, mode: LoadMode) -> Result<HashMap<String, Param>, ArtifactError> {
    let tf = Tensorfile::open_trusted(path)?;
    let mut out = HashMap::new();
    for q in quantized_tensors(&tf)? {
        let shape = q.shape().to_vec();
        let param = match (&q.data, mode) {
            (QuantData::Ggml { .. }, LoadMode::Native) => Param::Quantized(Arc::new(q.to_qtensor()?)),
            _ => Param::Float(Tensor::from_vec(q.dequantize()?, shape, &Device::Cpu)?),
        };
        out.insert(q.name.clone(), param);
    }
    let logical = logical_tensors(&tf.header);
    for t in &tf.header.tensors {
        if t.dtype.is_float() && logical.contains_key(&t.name) && !out.contains_key(&t.name) {
            out.insert(t.name.clone(), Param::Float(Tensor::from_vec(tf.to_f32(t)?, t.shape.clone(), &Device::Cpu)?));
        }
    }
    Ok(out)
}
