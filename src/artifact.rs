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

/// Writes `src` with every tensor as plain values: quantized tensors dequantized to F32, float
/// tensors as F32, integer tensors unchanged. The `quantization_config` metadata is dropped.
pub fn write_dequantized(src: &Path, dst: &Path) -> Result<(), ArtifactError> {
    use crate::tensorfile::{Dtype, TensorPlan, TensorWriter};
    let tf = Tensorfile::open_trusted(src)?;
    let quantized = quantized_tensors(&tf)?;
    let logical = logical_tensors(&tf.header);
    let mut plans = Vec::new();
    for (name, meta) in &logical {
        let dtype = if meta.dtype == "F32" || Dtype::parse(&meta.dtype).is_some_and(|d| d.is_float()) {
            Dtype::F32
        } else {
            Dtype::parse(&meta.dtype).unwrap_or(Dtype::U8)
        };
        plans.push(TensorPlan::new(name, dtype, meta.shape.clone()));
    }
    let mut meta: std::collections::BTreeMap<String, String> = tf.header.metadata.clone();
    meta.remove(METADATA_KEY);
    meta.insert("modelpress.dequantized".into(), "true".into());
    let mut w = TensorWriter::create(dst, plans.clone(), &meta)?;
    for plan in &plans {
        if let Some(q) = quantized.iter().find(|q| q.name == plan.name) {
            w.write_f32_as(&q.dequantize()?)?;
        } else {
            let e = tf.entry(&plan.name)?;
            if plan.dtype == Dtype::F32 && e.dtype.is_float() {
                w.write_f32_as(&tf.to_f32(e)?)?;
            } else {
                w.write(tf.bytes(e))?;
            }
        }
    }
    w.finish()?;
    Ok(())
}

/// Writes `src` as a GGUF file (GGUF v2, readable by the `gguf` Python package and llama.cpp
/// tooling): GGML-typed tensors as stored, int8 re-blocked to Q8_0, int4 to Q4_0/Q4_1 (see
/// docs/formats.md), float tensors as F32, integer tensors converted to F32.
pub fn write_gguf(src: &Path, dst: &Path, name: &str, source_model: &str) -> Result<(), ArtifactError> {
    use crate::compress::quant::{f32_qtensor, GgufMetadata, Scheme};
    let tf = Tensorfile::open_trusted(src)?;
    let cfg = quant_config(&tf.header);
    let mut tensors = Vec::new();
    for q in quantized_tensors(&tf)? {
        tensors.push((q.name.clone(), q.to_qtensor()?));
    }
    let logical = logical_tensors(&tf.header);
    for (n, meta) in &logical {
        if tensors.iter().any(|(t, _)| t == n) {
            continue;
        }
        let e = tf.entry(n)?;
        tensors.push((n.clone(), f32_qtensor(n, &tf.to_f32(e)?, &meta.shape)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let scheme = cfg.map(|c| c.scheme).unwrap_or(Scheme::F16);
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dst).map_err(TensorfileError::Io)?);
    crate::compress::quant::write_gguf(&mut f, &GgufMetadata { name, source_model, scheme }, &refs)?;
    use std::io::Write;
    f.flush().map_err(TensorfileError::Io)?;
    f.get_ref().sync_all().map_err(TensorfileError::Io)?;
    Ok(())
}
