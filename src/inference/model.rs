//! A model as the inference threads serve it: the serving plan (which kernel each linear layer
//! runs on), loading the stored artifact by that plan, the warm-up pass, and output
//! post-processing (probabilities, top-k). Pure and blocking; runs on the inference threads
//! (and in `spawn_blocking` for the plan of `GET …/predict/info`).
//!
//! # Kernel choice (measured, see `docs/benchmarks.md`)
//! - Float tensors (f32, f16, bf16, f64) run as f32: f16 matmul is no faster than f32 on CPU and
//!   bf16 is 3–6× slower. Small chains of linear/ReLU layers take the engine's plain-Rust
//!   small-batch path (batch ≤ 2) and candle's gemm above.
//! - GGML block types (`q4_k`, `q8_0`, …) on linear weights with at least
//!   [`QUANT_KERNEL_MIN_WEIGHTS`] weights run on candle's `QMatMul` directly from the stored
//!   blocks. Its repacked x86 fast path needs the inner dimension to be a multiple of 256 (and
//!   `n` a multiple of the tile width); it covers Q4_K on AVX2 and Q8_0 only with AVX-512 VNNI /
//!   AVX-VNNI. Other shapes and types take candle's generic per-row path.
//! - int8 linear weights of that size (symmetric or not, per channel or per tensor, any width up
//!   to [`kernels::int8::MAX_K`]) run on our own int8 GEMM, [`kernels::Int8Linear`]: the stored
//!   codes are packed once here, activations are quantized per row on the fly (ONNX Runtime's
//!   `quantize_dynamic` method), AVX-512 VNNI / AVX2 / scalar chosen at run time. No f32 twin:
//!   the kernel is fast at every batch size (measured in `docs/benchmarks.md`).
//! - int4 linear weights of that size are re-blocked without re-quantizing
//!   (int4 → Q4_0 / Q4_1, see `compress::quant::tensor`) so they run on candle's kernels at an
//!   eighth of the f32 memory traffic: the artifact is never dequantized per request.
//! - Smaller quantized layers (below 2²⁰ weights, e.g. all of the digits MLPs) are dequantized once at load
//!   (exactly the stored values) and run as f32: at that size candle's per-op overhead
//!   dominates and the f32 small-batch path is several times faster than `QMatMul`.
//! - No padding: a GGML type is only stored when its block divides the row, and the quantize job
//!   already chooses the fallback type for rows that do not; zero-padding hidden widths of an
//!   int8 layer to 256 would only pay off where candle has a Q8_0 fast path (VNNI), which the
//!   machines measured here lack.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::artifact::{self, ArtifactError, LoadMode};
use crate::compress::quant::{QuantData, Scheme};
use crate::kernels::{self, Int8Linear};
use crate::nn::spec::OutputKind;
use crate::nn::{ModelSpec, Network, NnError, Param, ParamKind};
use crate::tensorfile::{Header, Tensorfile};

/// Quantized linear weights with at least this many weights run on a quantized kernel; smaller
/// ones are dequantized at load (see the module doc).
pub const QUANT_KERNEL_MIN_WEIGHTS: usize = 1 << 20;

/// Batches of more rows than this run on the f32 twin of layers whose quantized kernel has no
/// fast path (candle's generic quantized matmul costs about one full gemv per row: measured on
/// 4096² with AVX2, Q8_0 beats f32 up to 8 rows and is 4× slower at 64).
pub const LARGE_BATCH_ROWS: usize = 8;

/// How one linear weight is stored and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LayerKernel {
    /// The weight tensor (`fc1.weight`).
    pub tensor: String,
    /// `[out_features, in_features]`.
    pub shape: Vec<usize>,
    /// The stored representation: a quantization scheme (`int8`, `q4_k`, …) or a dtype (`F32`).
    pub stored: String,
    /// What the forward pass uses: `f32`, `int8` (the own int8 GEMM), or a ggml block type
    /// (`q4_k`, `q8_0`, …).
    pub runs_as: String,
    /// The kernel, in words.
    pub kernel: String,
    /// What batches of more than [`LARGE_BATCH_ROWS`] rows use instead, when it differs
    /// (`f32`: the exact dequantized weights, held as a second copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub large_batch_runs_as: Option<String>,
}

/// The serving plan of a stored model: one entry per linear weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServingPlan {
    /// The requested quantization scheme of the artifact (`null` for a float model).
    pub quantization: Option<String>,
    /// Whether some layer keeps an f32 twin for large batches.
    pub large_batch_twin: bool,
    pub layers: Vec<LayerKernel>,
}

/// What a quantized tensor becomes at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    F32,
    Ggml(GgmlDType),
    /// [`kernels::Int8Linear`].
    Int8,
}

fn ggml_name(d: GgmlDType) -> String {
    format!("{d:?}").to_ascii_lowercase().replace("k", "_k").replace("__", "_")
}

/// Which ggml type a stored quantized linear weight runs as, if any.
fn quantized_target(scheme: &Scheme, shape: &[usize]) -> Target {
    let numel: usize = shape.iter().product();
    let last = shape.last().copied().unwrap_or(0);
    if numel < QUANT_KERNEL_MIN_WEIGHTS || shape.len() != 2 {
        return Target::F32;
    }
    match *scheme {
        Scheme::Ggml(kind) => Target::Ggml(kind.dtype()),
        Scheme::Int8 { .. } if last <= kernels::int8::MAX_K => Target::Int8,
        Scheme::Int4 { symmetric, .. } if last % 32 == 0 => {
            Target::Ggml(if symmetric { GgmlDType::Q4_0 } else { GgmlDType::Q4_1 })
        }
        _ => Target::F32,
    }
}

/// Whether candle's repacked x86 kernel serves `d` for a `[n, k]` weight at batches above one
/// (mirrors `candle_core::quantized::repack_x86::select`).
fn has_fast_path(d: GgmlDType, shape: &[usize]) -> bool {
    let (n, k) = (shape[0], shape[1]);
    if k % 256 != 0 || n % 16 != 0 || !x86_avx2() {
        return false;
    }
    match d {
        GgmlDType::Q4K | GgmlDType::Q6K => true,
        GgmlDType::Q8_0 => x86_vnni(),
        _ => false,
    }
}

fn x86_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn x86_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn layer_kernel(name: &str, shape: &[usize], stored: String, target: Target) -> LayerKernel {
    let (runs_as, kernel, twin) = match target {
        Target::F32 => {
            ("f32".to_string(), "f32: engine small-batch path at ≤ 2 rows, candle gemm above".to_string(), None)
        }
        Target::Int8 => (
            "int8".to_string(),
            format!(
                "modelpress int8 GEMM ({}), activations quantized per row on the fly",
                kernels::Isa::detect().name()
            ),
            None,
        ),
        Target::Ggml(d) => {
            let name = ggml_name(d);
            if has_fast_path(d, shape) {
                (name.clone(), format!("candle QMatMul {name}, repacked x86 fast path"), None)
            } else {
                (
                    name.clone(),
                    format!("candle QMatMul {name}, generic path (no fast path for this type, shape or CPU)"),
                    Some("f32".to_string()),
                )
            }
        }
    };
    LayerKernel { tensor: name.to_string(), shape: shape.to_vec(), stored, runs_as, kernel, large_batch_runs_as: twin }
}

/// The plan for a file header and spec (no tensor data is read).
pub fn plan(header: &Header, spec: &ModelSpec) -> ServingPlan {
    let cfg = artifact::quant_config(header);
    let logical = artifact::logical_tensors(header);
    let mut layers = Vec::new();
    for p in spec.params() {
        if p.layer_type != "linear" || p.kind != ParamKind::Weight {
            continue;
        }
        let record = cfg.as_ref().and_then(|c| c.tensors.get(&p.name));
        let (stored, target) = match record {
            Some(r) => (r.scheme.label(), quantized_target(&r.scheme, &r.shape)),
            None => (logical.get(&p.name).map(|m| m.dtype.clone()).unwrap_or_else(|| "missing".into()), Target::F32),
        };
        layers.push(layer_kernel(&p.name, &p.shape, stored, target));
    }
    ServingPlan {
        quantization: cfg.map(|c| c.scheme.label()),
        large_batch_twin: layers.iter().any(|l| l.large_batch_runs_as.is_some()),
        layers,
    }
}

/// A loaded, warmed-up model.
pub struct ServedModel {
    pub id: String,
    /// The spec text it was built from (a changed spec is a different model).
    pub spec_json: String,
    pub spec: Arc<ModelSpec>,
    /// The network as planned (quantized kernels where the plan says so).
    pub net: Network,
    /// The same network with f32 weights on the layers whose quantized kernel is slow at large
    /// batches (see [`LARGE_BATCH_ROWS`]); `None` when the plan needs no twin.
    pub large_batch_net: Option<Network>,
    pub plan: ServingPlan,
    /// Estimated resident bytes (weights as held in memory, twins and small-batch copies included).
    pub bytes: u64,
    /// Values per sample (product of the input shape).
    pub input_numel: usize,
}

impl ServedModel {
    /// The network that runs a batch of `rows` rows.
    pub fn network_for(&self, rows: usize) -> &Network {
        match &self.large_batch_net {
            Some(twin) if rows > LARGE_BATCH_ROWS => twin,
            _ => &self.net,
        }
    }
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel").field("id", &self.id).field("bytes", &self.bytes).finish()
    }
}

/// Why a model cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is gone (model deleted meanwhile).
    #[error("model file is missing")]
    Missing,
    /// The weights do not fit the spec, or contain non-finite values.
    #[error("{0}")]
    Unusable(String),
    /// An internal failure (I/O, candle).
    #[error("{0}")]
    Internal(String),
}

impl From<ArtifactError> for LoadError {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::File(crate::tensorfile::TensorfileError::Io(io))
                if io.kind() == std::io::ErrorKind::NotFound =>
            {
                LoadError::Missing
            }
            ArtifactError::Candle(c) => LoadError::Internal(format!("candle: {c}")),
            other => LoadError::Unusable(other.to_string()),
        }
    }
}

impl From<NnError> for LoadError {
    fn from(e: NnError) -> Self {
        match e {
            NnError::Candle(c) => LoadError::Internal(format!("candle: {c}")),
            other => LoadError::Unusable(other.to_string()),
        }
    }
}

fn candle_err(e: candle_core::Error) -> LoadError {
    LoadError::Internal(format!("candle: {e}"))
}

/// Loads `path` by its serving plan, builds the network(s) and runs the warm-up pass.
pub fn load(
    id: &str,
    path: &Path,
    spec: Arc<ModelSpec>,
    spec_json: String,
    warm_rows: &[usize],
) -> Result<ServedModel, LoadError> {
    if !path.exists() {
        return Err(LoadError::Missing);
    }
    let mut params = artifact::load_params(path, LoadMode::Native)?;
    let tf = Tensorfile::open_trusted(path).map_err(ArtifactError::from)?;
    let plan = plan(&tf.header, &spec);
    // int8 linear weights that run on the int8 kernel: pack the stored codes; int4 ones on a
    // ggml kernel: re-block the stored values (load_params handed both over as exact f32).
    let reblock: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| l.runs_as != "f32" && matches!(params.get(&l.tensor), Some(Param::Float(_))))
        .map(|l| l.tensor.as_str())
        .collect();
    let mut exact_f32: HashMap<String, Param> = HashMap::new();
    if !reblock.is_empty() {
        for q in artifact::quantized_tensors(&tf)? {
            if !reblock.contains(&q.name.as_str()) {
                continue;
            }
            if let QuantData::Int8(d) = &q.data {
                let (n, k) = match d.shape[..] {
                    [n, k] => (n, k),
                    _ => return Err(LoadError::Unusable(format!("{}: int8 weight of shape {:?}", q.name, d.shape))),
                };
                let w = Int8Linear::new(&d.values, n, k, &d.scales, d.zero_points.as_deref())
                    .map_err(|e| LoadError::Unusable(format!("{}: {e}", q.name)))?;
                params.insert(q.name.clone(), Param::Int8(Arc::new(w)));
            } else if matches!(q.data, QuantData::Int4(_)) {
                let qt = Param::Quantized(Arc::new(q.to_qtensor().map_err(ArtifactError::from)?));
                // The exact values stay for the f32 twin (re-blocking rounds scales to f16).
                if let Some(exact) = params.insert(q.name.clone(), qt) {
                    exact_f32.insert(q.name.clone(), exact);
                }
            }
        }
    }
    drop(tf);
    // Small GGML linear weights run as f32 (dequantized once, here).
    for l in plan.layers.iter().filter(|l| l.runs_as == "f32") {
        if let Some(Param::Quantized(q)) = params.get(&l.tensor) {
            let t = q.dequantize(&Device::Cpu).map_err(candle_err)?;
            params.insert(l.tensor.clone(), Param::Float(t));
        }
    }
    let mut twin_params = None;
    if plan.large_batch_twin {
        let mut p = params.clone();
        for l in plan.layers.iter().filter(|l| l.large_batch_runs_as.is_some()) {
            if let Some(exact) = exact_f32.remove(&l.tensor) {
                p.insert(l.tensor.clone(), exact);
            } else if let Some(Param::Quantized(q)) = p.get(&l.tensor) {
                let t = q.dequantize(&Device::Cpu).map_err(candle_err)?;
                p.insert(l.tensor.clone(), Param::Float(t));
            }
        }
        twin_params = Some(p);
    }
    let mut bytes = resident_bytes(&params);
    let net = Network::new(&spec, params)?;
    if net.has_small_batch_path() {
        bytes *= 2;
    }
    let large_batch_net = match twin_params {
        Some(p) => {
            // Only the dequantized layers are new memory; the rest is shared with `net`.
            bytes += plan
                .layers
                .iter()
                .filter(|l| l.large_batch_runs_as.is_some())
                .map(|l| 4 * l.shape.iter().product::<usize>() as u64)
                .sum::<u64>();
            Some(Network::new(&spec, p)?)
        }
        None => None,
    };
    let input_numel = spec.input.shape.iter().product();
    let model = ServedModel { id: id.to_string(), spec_json, spec, net, large_batch_net, plan, bytes, input_numel };
    warm_up(&model, warm_rows)?;
    Ok(model)
}

fn resident_bytes(params: &HashMap<String, Param>) -> u64 {
    params
        .values()
        .map(|p| match p {
            Param::Float(t) => 4 * t.elem_count() as u64,
            // Repacked tiles of the fast path take about as much again.
            Param::Quantized(q) => 2 * q.storage_size_in_bytes() as u64,
            Param::Int8(w) => w.resident_bytes() as u64,
        })
        .sum()
}

/// Runs zero batches through the network(s): candle repacks quantized weights on first use
/// (tens of ms on 4096² layers), which must not land on a client's request.
fn warm_up(model: &ServedModel, rows: &[usize]) -> Result<(), LoadError> {
    let mut rows = rows.to_vec();
    if model.large_batch_net.is_some() {
        rows.push(LARGE_BATCH_ROWS + 1);
    }
    for n in rows {
        let mut shape = vec![n];
        shape.extend_from_slice(&model.spec.input.shape);
        let x = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).map_err(candle_err)?;
        model.network_for(n).forward(&x)?;
    }
    Ok(())
}

/// What a caller wants back per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Raw scores; for a network ending in softmax, the log of its probabilities.
    Logits,
    /// Softmax of the logits (or the network's own probabilities).
    Probabilities,
    /// The `k` most probable classes, best first.
    TopK(usize),
}

impl OutputMode {
    /// Values per row in the answer.
    pub fn width(self, classes: usize) -> usize {
        match self {
            OutputMode::TopK(k) => k.min(classes),
            _ => classes,
        }
    }

    /// The name used in requests.
    pub fn name(self) -> &'static str {
        match self {
            OutputMode::Logits => "logits",
            OutputMode::Probabilities => "probabilities",
            OutputMode::TopK(_) => "top_k",
        }
    }
}

/// Post-processes one row of network output into `values` (and `indices` for top-k).
pub fn postprocess(row: &[f32], kind: OutputKind, mode: OutputMode, values: &mut Vec<f32>, indices: &mut Vec<u32>) {
    match (mode, kind) {
        (OutputMode::Logits, OutputKind::Logits) | (OutputMode::Probabilities, OutputKind::Probabilities) => {
            values.extend_from_slice(row)
        }
        (OutputMode::Logits, OutputKind::Probabilities) => values.extend(row.iter().map(|p| p.clamp(1e-12, 1.0).ln())),
        (OutputMode::Probabilities, OutputKind::Logits) => values.extend(softmax(row)),
        (OutputMode::TopK(k), _) => {
            let probs = match kind {
                OutputKind::Logits => softmax(row),
                OutputKind::Probabilities => row.to_vec(),
            };
            let mut order: Vec<u32> = (0..probs.len() as u32).collect();
            // Stable on ties: the lower class index first.
            order.sort_by(|a, b| probs[*b as usize].total_cmp(&probs[*a as usize]).then(a.cmp(b)));
            for &i in order.iter().take(k) {
                values.push(probs[i as usize]);
                indices.push(i);
            }
        }
    }
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocess_modes() {
        let row = [1.0f32, 3.0, 2.0];
        let (mut v, mut i) = (Vec::new(), Vec::new());
        postprocess(&row, OutputKind::Logits, OutputMode::Logits, &mut v, &mut i);
        assert_eq!(v, row);
        v.clear();
        postprocess(&row, OutputKind::Logits, OutputMode::Probabilities, &mut v, &mut i);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[2] && v[2] > v[0]);
        let probs = v.clone();
        v.clear();
        postprocess(&row, OutputKind::Logits, OutputMode::TopK(2), &mut v, &mut i);
        assert_eq!(i, vec![1, 2]);
        assert_eq!(v, vec![probs[1], probs[2]]);
        v.clear();
        i.clear();
        postprocess(&probs, OutputKind::Probabilities, OutputMode::Logits, &mut v, &mut i);
        // log-probabilities are logits up to a constant: softmax gives the probabilities back.
        let back = softmax(&v);
        assert!(back.iter().zip(&probs).all(|(a, b)| (a - b).abs() < 1e-6));
        // Ties keep the lower index first.
        v.clear();
        i.clear();
        postprocess(&[0.0, 0.0, 0.0], OutputKind::Logits, OutputMode::TopK(3), &mut v, &mut i);
        assert_eq!(i, vec![0, 1, 2]);
    }

    #[test]
    fn ggml_names() {
        assert_eq!(ggml_name(GgmlDType::Q4K), "q4_k");
        assert_eq!(ggml_name(GgmlDType::Q8_0), "q8_0");
        assert_eq!(ggml_name(GgmlDType::Q4_1), "q4_1");
        assert_eq!(ggml_name(GgmlDType::Q6K), "q6_k");
    }

    #[test]
    fn small_quantized_layers_run_as_f32() {
        let int8 = Scheme::Int8 { symmetric: true, granularity: crate::compress::quant::Granularity::PerChannel };
        assert_eq!(quantized_target(&int8, &[256, 64]), Target::F32);
        assert_eq!(quantized_target(&int8, &[4096, 4096]), Target::Int8);
        assert_eq!(quantized_target(&int8, &[4096, 784]), Target::Int8);
        let q4k = Scheme::Ggml(crate::compress::quant::GgmlKind::Q4K);
        assert_eq!(quantized_target(&q4k, &[4096, 4096]), Target::Ggml(GgmlDType::Q4K));
        let i4 = Scheme::Int4 { group_size: 128, symmetric: true };
        assert_eq!(quantized_target(&i4, &[4096, 4096]), Target::Ggml(GgmlDType::Q4_0));
        let asym = Scheme::Int8 { symmetric: false, granularity: crate::compress::quant::Granularity::PerChannel };
        assert_eq!(quantized_target(&asym, &[4096, 4096]), Target::Int8);
    }
}
