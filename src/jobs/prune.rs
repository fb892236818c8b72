//! `prune` jobs (run on a worker thread): magnitude pruning (one global threshold or per layer),
//! N:M semi-structured pruning, structured pruning that rewrites the model smaller, fine-tuning
//! with the masks held (optionally with a TFMOT-style gradual schedule), and the sparse-bitmask
//! artifact encoding.
//!
//! The numeric kernels live in [`crate::compress::prune`] (exact O(n) thresholds, N:M, sparse
//! encode/decode) and the structural rewrite in [`crate::nn::structured`]; this module is the
//! glue: parameters, tensor selection by globs, the fine-tuning hooks, measurements (accuracy,
//! forward latency, file sizes) and the output file.
//!
//! The whole model is held in memory as f32 while the job runs (pruning needs every selected
//! weight at once for the global threshold; fine-tuning needs the network anyway).
//!
//! Other readers of stored models use [`sparse_config`] / [`sparse_tensors`] to see through the
//! sparse encoding (`docs/formats.md`, "Sparse bitmask").

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::common::{check_globs, check_split, measure_latency, DataNeed, FinetuneSettings, Needs, Stored};
use super::engine::{load_split, spec_of, stop_reason, JobHooks};
use super::kind::Kind;
use super::{InputDataset, JobContext, JobError, JobOutput, OutputModel};
use crate::compress::prune::sparse::{base_name, PartView};
use crate::compress::prune::{
    apply_cut, check_n_m, decode_f32, encode, encode_bf16, encode_f16, global_cut, per_layer_cuts, prune_n_m,
    select_keep, Mask, NmPattern, Norm, Parallelism, PolynomialDecay, PruneError, SparsePart, SparseView, TensorRef,
    ValueDType,
};
use crate::error::DomainError;
use crate::glob::matches as glob_match;
use crate::nn::structured::{self, HostTensor};
use crate::nn::{evaluate, EpochStats, ModelSpec, Network, NnError, ParamStore, Split, TrainHooks};
use crate::tensorfile::{Dtype, Header, TensorPlan, TensorWriter, Tensorfile};

/// Metadata key holding the [`SparsityConfig`] of a sparse artifact.
pub const SPARSITY_METADATA_KEY: &str = "sparsity_config";
/// Metadata key summarising how a model was pruned (dense and sparse outputs).
pub const PRUNING_METADATA_KEY: &str = "modelpress.pruning";

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Threshold scope of magnitude pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One threshold over all selected tensors.
    Global,
    /// Each tensor to its own target.
    PerLayer,
}

/// Layout of the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Ordinary dense safetensors (pruned weights are stored zeros).
    Dense,
    /// Pruned tensors in the sparse-bitmask layout (`docs/formats.md`).
    Sparse,
}

/// How structured pruning ranks units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitScore {
    L1,
    L2,
    /// Mean absolute activation on sample data (needs a dataset).
    Activation,
}

/// `params.structured`.
#[derive(Debug, Clone, Serialize)]
pub struct StructuredParams {
    /// Fraction of the units removed from every selected prunable layer.
    pub amount: f64,
    pub norm: UnitScore,
    /// Per-layer fractions (layer prefix or glob → fraction), overriding `amount`.
    pub layers: BTreeMap<String, f64>,
    /// Samples used for `norm: "activation"`.
    pub calibration_samples: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStructured {
    #[serde(default)]
    amount: Option<f64>,
    #[serde(default)]
    norm: Option<String>,
    #[serde(default)]
    layers: BTreeMap<String, f64>,
    #[serde(default)]
    calibration_samples: Option<usize>,
}

/// `params.schedule`: TFMOT `PolynomialDecay`, stepped once per optimizer step of the fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleParams {
    /// Always `polynomial`.
    pub kind: String,
    /// Sparsity at `begin_step` (default 0).
    #[serde(default)]
    pub start_sparsity: f64,
    /// Final sparsity (default: `params.sparsity`).
    #[serde(default)]
    pub end_sparsity: Option<f64>,
    /// Optimizer steps from `begin_step` to the final sparsity (default: two thirds of the
    /// fine-tuning's steps).
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default)]
    pub begin_step: u64,
    /// Steps between mask updates (default: `steps / 10`, at least 1).
    #[serde(default)]
    pub frequency: Option<u64>,
    /// Exponent of the decay (default 3).
    #[serde(default = "d_power")]
    pub power: f64,
}

fn d_power() -> f64 {
    3.0
}

/// `kind: "prune"` as sent: exactly one of `sparsity` (magnitude, optionally with `schedule`),
/// `pattern` (N:M) or `structured`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PruneParams)]
pub struct RawParams {
    /// Magnitude pruning target, a fraction in [0, 1).
    #[serde(default)]
    sparsity: Option<f64>,
    /// `global` (default) or `per_layer`.
    #[serde(default)]
    scope: Option<String>,
    /// `per_layer` targets by tensor name or glob.
    #[serde(default)]
    targets: BTreeMap<String, f64>,
    /// N:M pattern, e.g. `2:4`.
    #[serde(default)]
    pattern: Option<String>,
    /// Structured pruning: `{amount, norm: l1|l2|activation, layers, calibration_samples}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    structured: Option<Value>,
    /// Tensor-name globs selecting what is pruned.
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    /// Fine-tuning with the masks held: a dataset and training settings (defaults as `train`).
    #[serde(default)]
    #[schema(value_type = Option<FinetuneSettings>)]
    finetune: Option<Value>,
    /// Gradual (polynomial) schedule during fine-tuning.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schedule: Option<Value>,
    /// `dense` (default) or `sparse`.
    #[serde(default)]
    format: Option<String>,
    /// Dataset for accuracy (default: the fine-tuning dataset).
    #[serde(default)]
    eval_dataset_id: Option<String>,
    #[serde(default)]
    eval_split: Option<String>,
}

/// What kind of pruning a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Magnitude,
    NM,
    Structured,
}

/// Parameters of a `prune` job (see the README's job-kinds table).
#[derive(Debug, Clone, Serialize)]
pub struct PruneParams {
    /// Magnitude pruning target (fraction of the selected weights set to zero).
    pub sparsity: Option<f64>,
    pub scope: Scope,
    /// `per_layer` targets by tensor name or glob; the rest get `sparsity`.
    pub targets: BTreeMap<String, f64>,
    /// N:M pattern, e.g. `2:4`.
    pub pattern: Option<String>,
    pub structured: Option<StructuredParams>,
    /// Tensor-name globs (`*`, `?`) selecting what is pruned; default: float tensors of rank ≥ 2
    /// that are not norm weights.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub finetune: Option<FinetuneSettings>,
    pub schedule: Option<ScheduleParams>,
    pub format: Format,
    /// Dataset for accuracy (default: the fine-tuning dataset).
    pub eval_dataset_id: Option<String>,
    pub eval_split: Option<String>,
}

fn bad(field: &str, detail: impl Into<String>) -> DomainError {
    DomainError::validation(field, detail)
}

fn from_value<T: serde::de::DeserializeOwned>(field: &str, v: Value) -> Result<T, DomainError> {
    super::common::typed(field, v)
}

fn check_fraction(field: &str, v: f64, what: &str) -> Result<(), DomainError> {
    if !(0.0..1.0).contains(&v) {
        return Err(bad(field, format!("{what} must be in [0, 1) (a fraction, e.g. 0.9 for 90 %); got {v}")));
    }
    Ok(())
}

impl PruneParams {
    fn parse_params(params: &Value) -> Result<PruneParams, DomainError> {
        let raw: RawParams = from_value("params", params.clone())?;
        if let Some(s) = raw.sparsity {
            check_fraction("params.sparsity", s, "sparsity")?;
        }
        let pattern = match &raw.pattern {
            Some(p) => Some(p.parse::<NmPattern>().map_err(|e| bad("params.pattern", e.to_string()))?),
            None => None,
        };
        let structured = match raw.structured {
            Some(v) => {
                let r: RawStructured = from_value("params.structured", v)?;
                let amount = r.amount.unwrap_or(0.5);
                check_fraction("params.structured.amount", amount, "amount")?;
                for (k, v) in &r.layers {
                    check_fraction(&format!("params.structured.layers.{k}"), *v, "a layer's amount")?;
                }
                let norm = match r.norm.as_deref().unwrap_or("l1") {
                    "l1" => UnitScore::L1,
                    "l2" => UnitScore::L2,
                    "activation" => UnitScore::Activation,
                    other => {
                        return Err(bad(
                            "params.structured.norm",
                            format!("unknown norm '{other}'; use l1, l2 or activation"),
                        ))
                    }
                };
                let calibration_samples = r.calibration_samples.unwrap_or(512);
                if !(1..=65_536).contains(&calibration_samples) {
                    return Err(bad("params.structured.calibration_samples", "must be between 1 and 65536"));
                }
                Some(StructuredParams { amount, norm, layers: r.layers, calibration_samples })
            }
            None => None,
        };
        let finetune = match &raw.finetune {
            Some(v) => Some(FinetuneSettings::parse("params.finetune", v, &[])?),
            None => None,
        };
        let schedule = match raw.schedule {
            Some(v) => Some(from_value::<ScheduleParams>("params.schedule", v)?),
            None => None,
        };

        let magnitude = raw.sparsity.is_some() || schedule.is_some();
        let methods = usize::from(magnitude) + usize::from(pattern.is_some()) + usize::from(structured.is_some());
        if methods == 0 {
            return Err(bad(
                "params",
                "say what to prune: sparsity (magnitude pruning, e.g. 0.9), pattern (N:M, e.g. \"2:4\") \
                 or structured (e.g. {\"amount\": 0.5})",
            ));
        }
        if methods > 1 {
            return Err(bad("params", "sparsity (or schedule), pattern and structured are alternatives; give one"));
        }
        let scope = match raw.scope.as_deref() {
            None | Some("global") => Scope::Global,
            Some("per_layer") => Scope::PerLayer,
            Some(other) => {
                return Err(bad("params.scope", format!("unknown scope '{other}'; use global or per_layer")))
            }
        };
        if !magnitude && (raw.scope.is_some() || !raw.targets.is_empty()) {
            return Err(bad("params.scope", "scope and targets apply to magnitude pruning (params.sparsity)"));
        }
        if !raw.targets.is_empty() && scope != Scope::PerLayer {
            return Err(bad("params.targets", "per-tensor targets need scope \"per_layer\""));
        }
        for (k, v) in &raw.targets {
            check_fraction(&format!("params.targets.{k}"), *v, "a tensor's sparsity")?;
        }
        check_globs("params.include", &raw.include)?;
        check_globs("params.exclude", &raw.exclude)?;
        check_globs("params.targets", &raw.targets.keys().cloned().collect::<Vec<_>>())?;

        let mut sparsity = raw.sparsity;
        if let Some(s) = &schedule {
            if s.kind != "polynomial" {
                return Err(bad("params.schedule.kind", format!("unknown schedule '{}'; use polynomial", s.kind)));
            }
            if finetune.is_none() {
                return Err(bad(
                    "params.schedule",
                    "gradual pruning raises the sparsity during fine-tuning; add params.finetune",
                ));
            }
            let end = match (s.end_sparsity, sparsity) {
                (Some(e), Some(t)) if (e - t).abs() > 1e-12 => {
                    return Err(bad(
                        "params.schedule.end_sparsity",
                        format!("end_sparsity {e} differs from sparsity {t}; give one of them"),
                    ))
                }
                (Some(e), _) => e,
                (None, Some(t)) => t,
                (None, None) => {
                    return Err(bad("params.schedule.end_sparsity", "give the final sparsity (or params.sparsity)"))
                }
            };
            check_fraction("params.schedule.end_sparsity", end, "end_sparsity")?;
            check_fraction("params.schedule.start_sparsity", s.start_sparsity, "start_sparsity")?;
            if s.start_sparsity > end {
                return Err(bad("params.schedule.start_sparsity", "must not exceed end_sparsity"));
            }
            if s.steps == Some(0) {
                return Err(bad("params.schedule.steps", "must be at least 1"));
            }
            if s.frequency == Some(0) {
                return Err(bad("params.schedule.frequency", "must be at least 1"));
            }
            if !(s.power.is_finite() && s.power > 0.0 && s.power <= 100.0) {
                return Err(bad("params.schedule.power", "must be in (0, 100]"));
            }
            sparsity = Some(end);
        }
        let format = match raw.format.as_deref() {
            None | Some("dense") => Format::Dense,
            Some("sparse") => Format::Sparse,
            Some(other) => return Err(bad("params.format", format!("unknown format '{other}'; use dense or sparse"))),
        };
        if format == Format::Sparse && structured.is_some() {
            return Err(bad(
                "params.format",
                "structured pruning already writes a smaller dense model; format sparse applies to \
                 magnitude and N:M pruning",
            ));
        }
        if let Some(st) = &structured {
            if st.norm == UnitScore::Activation && finetune.is_none() && raw.eval_dataset_id.is_none() {
                return Err(bad(
                    "params.structured.norm",
                    "activation scores need sample data: add params.finetune or params.eval_dataset_id",
                ));
            }
        }
        check_split("params.eval_split", raw.eval_split.as_deref())?;
        if raw.eval_split.is_some() && raw.eval_dataset_id.is_none() && finetune.is_none() {
            return Err(bad("params.eval_split", "needs params.eval_dataset_id (or params.finetune)"));
        }
        Ok(PruneParams {
            sparsity,
            scope,
            targets: raw.targets,
            pattern: pattern.map(|p| p.to_string()),
            structured,
            include: raw.include,
            exclude: raw.exclude,
            finetune,
            schedule,
            format,
            eval_dataset_id: raw.eval_dataset_id,
            eval_split: raw.eval_split,
        })
    }

    pub fn method(&self) -> Method {
        if self.structured.is_some() {
            Method::Structured
        } else if self.pattern.is_some() {
            Method::NM
        } else {
            Method::Magnitude
        }
    }

    fn nm(&self) -> Option<NmPattern> {
        self.pattern.as_deref().and_then(|p| p.parse().ok())
    }

    fn eval_dataset(&self) -> Option<(&str, Option<&str>)> {
        match (&self.eval_dataset_id, &self.finetune) {
            (Some(id), _) => Some((id.as_str(), self.eval_split.as_deref())),
            (None, Some(f)) => Some((f.dataset_id.as_str(), self.eval_split.as_deref())),
            (None, None) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Globs
// ---------------------------------------------------------------------------------------------

/// The value of the most specific matching key: an exact name first, then the longest matching
/// glob (ties: the alphabetically first key).
fn lookup<'a, V>(map: &'a BTreeMap<String, V>, names: &[&str]) -> Option<&'a V> {
    for n in names {
        if let Some(v) = map.get(*n) {
            return Some(v);
        }
    }
    map.iter()
        .filter(|(k, _)| names.iter().any(|n| glob_match(k, n)))
        .max_by(|a, b| a.0.len().cmp(&b.0.len()).then(b.0.cmp(a.0)))
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------------------------------------
// Sparse artifacts
// ---------------------------------------------------------------------------------------------

/// `__metadata__["sparsity_config"]` of a sparse artifact (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityConfig {
    /// Always `sparse-bitmask`.
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// `unstructured` or the N:M pattern (`2:4`).
    pub sparsity_structure: String,
    /// Zeros over all sparse-encoded elements.
    pub global_sparsity: f64,
    /// Every sparse-encoded tensor by name: its four entries are `NAME.compressed`,
    /// `NAME.bitmask`, `NAME.shape`, `NAME.row_offsets`.
    pub tensors: BTreeMap<String, SparseRecord>,
}

/// One sparse-encoded tensor in [`SparsityConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseRecord {
    /// Dense shape.
    pub shape: Vec<usize>,
    /// Value dtype (`F32`, `F16`, `BF16`).
    pub dtype: String,
    /// Stored (non-zero) values.
    pub nnz: u64,
}

impl SparsityConfig {
    /// True when `entry` is one of the stored parts of a sparse-encoded tensor.
    pub fn is_part(&self, entry: &str) -> bool {
        base_name(entry).is_some_and(|b| self.tensors.contains_key(b))
    }
}

/// The sparsity config of a file, when it holds sparse-encoded tensors.
pub fn sparse_config(header: &Header) -> Option<SparsityConfig> {
    header.metadata.get(SPARSITY_METADATA_KEY).and_then(|s| serde_json::from_str::<SparsityConfig>(s).ok())
}

/// A sparse-encoded tensor decoded to dense f32.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor {
    pub name: String,
    /// The dtype the values were stored in (widening to f32 is exact).
    pub dtype: ValueDType,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Decodes every sparse-encoded tensor of an open file (empty for files without a
/// [`SparsityConfig`]). Every entry is validated; the dense shape must match the config.
pub fn sparse_tensors(tf: &Tensorfile) -> Result<Vec<SparseTensor>, PruneError> {
    let Some(cfg) = sparse_config(&tf.header) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(cfg.tensors.len());
    for (name, rec) in &cfg.tensors {
        let part = |suffix: &str| {
            let full = format!("{name}{suffix}");
            tf.header
                .get(&full)
                .map(|e| PartView { dtype: e.dtype.as_str(), shape: &e.shape, bytes: tf.bytes(e) })
                .ok_or_else(|| PruneError::SparseFormat {
                    tensor: name.clone(),
                    detail: format!("entry {full} is missing"),
                })
        };
        let view = SparseView {
            compressed: part(".compressed")?,
            bitmask: part(".bitmask")?,
            shape: part(".shape")?,
            row_offsets: part(".row_offsets")?,
        };
        let dtype = ValueDType::from_code(name, view.compressed.dtype)?;
        let (data, shape) = decode_f32(name, &view)?;
        if shape != rec.shape {
            return Err(PruneError::SparseFormat {
                tensor: name.clone(),
                detail: format!("decoded shape {shape:?} differs from the recorded shape {:?}", rec.shape),
            });
        }
        out.push(SparseTensor { name: name.clone(), dtype, shape, data });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The model in memory
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Content {
    Float(Vec<f32>),
    /// A non-float tensor, copied unchanged.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Entry {
    shape: Vec<usize>,
    /// dtype written to the output (floats keep F32/F16/BF16; F64 and decoded tensors → F32).
    dtype: Dtype,
    content: Content,
}

impl Entry {
    fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
    fn floats(&self) -> Option<&[f32]> {
        match &self.content {
            Content::Float(v) => Some(v),
            Content::Raw(_) => None,
        }
    }
}

type Model = BTreeMap<String, Entry>;

fn artifact_err(e: crate::artifact::ArtifactError) -> JobError {
    match e {
        crate::artifact::ArtifactError::Candle(e) => JobError::Internal(format!("candle: {e}")),
        other => JobError::input(other.to_string()),
    }
}

fn prune_err(field: &str, e: PruneError) -> JobError {
    JobError::invalid(field, e.to_string())
}

/// Every logical tensor of a stored model: quantized and sparse-encoded ones decoded to f32.
fn load_model(path: &std::path::Path) -> Result<Model, JobError> {
    let tf = Tensorfile::open_trusted(path)?;
    let mut out = Model::new();
    for q in crate::artifact::quantized_tensors(&tf).map_err(artifact_err)? {
        let shape = q.shape().to_vec();
        let data = q.dequantize().map_err(|e| JobError::input(format!("tensor {}: {e}", q.name)))?;
        out.insert(q.name.clone(), Entry { shape, dtype: Dtype::F32, content: Content::Float(data) });
    }
    let sparse = sparse_config(&tf.header);
    for s in sparse_tensors(&tf).map_err(|e| JobError::input(e.to_string()))? {
        let dtype = match s.dtype {
            ValueDType::F32 => Dtype::F32,
            ValueDType::F16 => Dtype::F16,
            ValueDType::BF16 => Dtype::Bf16,
        };
        out.insert(s.name, Entry { shape: s.shape, dtype, content: Content::Float(s.data) });
    }
    let logical = crate::artifact::logical_tensors(&tf.header);
    for t in &tf.header.tensors {
        let is_sparse_part = sparse.as_ref().is_some_and(|c| c.is_part(&t.name));
        if out.contains_key(&t.name) || !logical.contains_key(&t.name) || is_sparse_part {
            continue;
        }
        let entry = if t.dtype.is_float() {
            let dtype = if t.dtype == Dtype::F64 { Dtype::F32 } else { t.dtype };
            Entry { shape: t.shape.clone(), dtype, content: Content::Float(tf.to_f32(t)?) }
        } else {
            Entry { shape: t.shape.clone(), dtype: t.dtype, content: Content::Raw(tf.bytes(t).to_vec()) }
        };
        out.insert(t.name.clone(), entry);
    }
    Ok(out)
}

fn to_candle(model: &Model) -> Result<HashMap<String, Tensor>, JobError> {
    let mut out = HashMap::new();
    for (k, e) in model {
        if let Content::Float(v) = &e.content {
            out.insert(k.clone(), Tensor::from_slice(v, e.shape.as_slice(), &Device::Cpu)?);
        }
    }
    Ok(out)
}

fn host_tensors(model: &Model) -> BTreeMap<String, HostTensor> {
    model
        .iter()
        .filter_map(|(k, e)| e.floats().map(|v| (k.clone(), HostTensor { shape: e.shape.clone(), data: v.to_vec() })))
        .collect()
}

/// Copies trained tensors back into the model (only names the model has).
fn absorb(model: &mut Model, trained: &HashMap<String, Tensor>) -> Result<(), JobError> {
    for (k, t) in trained {
        if let Some(e) = model.get_mut(k) {
            let v: Vec<f32> = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
            e.shape = t.dims().to_vec();
            e.content = Content::Float(v);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

struct EvalData {
    dataset_id: String,
    split: String,
    x: Tensor,
    y: Vec<u32>,
}

fn dataset<'a>(ctx: &'a JobContext, id: &str, field: &str) -> Result<&'a InputDataset, JobError> {
    ctx.datasets.get(id).ok_or_else(|| JobError::invalid(field, format!("dataset '{id}' is not available")))
}

fn labelled(split: Split, name: &str, field: &str) -> Result<(Tensor, Vec<u32>), JobError> {
    let y = split.y.ok_or_else(|| JobError::invalid(field, format!("split '{name}' has no labels")))?;
    Ok((split.x, y))
}

fn accuracy(spec: &ModelSpec, model: &Model, eval: &EvalData) -> Result<f64, JobError> {
    let net = Network::from_tensors(spec, &to_candle(model)?)?;
    Ok(evaluate(&net, &eval.x, &eval.y, 256)?.accuracy)
}

/// Forward latency of the model as it stands ([`super::common::measure_latency`], the method
/// every report uses).
fn latency(spec: &ModelSpec, model: &Model, x: &Tensor) -> Result<super::common::Latency, JobError> {
    let net = Network::from_tensors(spec, &to_candle(model)?)?;
    measure_latency(&net, x)
}

// ---------------------------------------------------------------------------------------------
// Selection and one-shot pruning
// ---------------------------------------------------------------------------------------------

/// Norm weights of a spec: never pruned unless named by `include`.
fn norm_params(spec: Option<&ModelSpec>) -> Vec<String> {
    spec.map(|s| {
        s.params()
            .into_iter()
            .filter(|i| i.layer_type == "batch_norm" || i.layer_type == "layer_norm")
            .map(|i| i.name)
            .collect()
    })
    .unwrap_or_default()
}

/// The selection rule, over `(name, is float, shape)` in name order: used on the loaded model
/// by the job and on the stored header at submission. Errors are `(field, detail)`.
fn select_names<'a>(
    tensors: impl Iterator<Item = (&'a str, bool, &'a [usize])> + Clone,
    norms: &[String],
    p: &PruneParams,
) -> Result<Vec<String>, (String, String)> {
    let picked: Vec<String> = tensors
        .clone()
        .filter(|(_, float, _)| *float)
        .filter(|(name, _, shape)| {
            let included = if p.include.is_empty() {
                shape.len() >= 2 && !norms.iter().any(|n| n == name)
            } else {
                p.include.iter().any(|g| glob_match(g, name))
            };
            included && !p.exclude.iter().any(|g| glob_match(g, name))
        })
        .map(|(name, _, _)| name.to_string())
        .collect();
    if picked.is_empty() {
        let floats: Vec<&str> = tensors.filter(|(_, float, _)| *float).map(|(k, _, _)| k).collect();
        let field = if p.include.is_empty() { "params.exclude" } else { "params.include" };
        return Err((
            field.to_string(),
            format!("no tensor is selected for pruning; float tensors in the model: {}", floats.join(", ")),
        ));
    }
    Ok(picked)
}

/// Tensors to prune (unstructured / N:M), in name order.
fn select(model: &Model, spec: Option<&ModelSpec>, p: &PruneParams) -> Result<Vec<String>, JobError> {
    let norms = norm_params(spec);
    let tensors = model.iter().map(|(n, e)| (n.as_str(), matches!(e.content, Content::Float(_)), e.shape.as_slice()));
    select_names(tensors, &norms, p).map_err(|(field, detail)| JobError::invalid(&field, detail))
}

/// Per-tensor `targets` keys must each match a selected tensor.
fn check_targets(p: &PruneParams, selected: &[String]) -> Result<(), (String, String)> {
    match p.targets.keys().find(|k| !selected.iter().any(|n| glob_match(k, n))) {
        Some(k) => Err((
            format!("params.targets.{k}"),
            format!("matches no selected tensor; selected: {}", selected.join(", ")),
        )),
        None => Ok(()),
    }
}

impl Kind for PruneParams {
    fn parse(params: &Value) -> Result<Self, DomainError> {
        PruneParams::parse_params(params)
    }

    /// Structured pruning needs the spec; fine-tuning and accuracy need it and their datasets.
    fn needs(&self) -> Needs {
        let mut data = Vec::new();
        if let Some(f) = &self.finetune {
            data.push(f.need("params.finetune"));
        }
        if let Some(id) = &self.eval_dataset_id {
            data.push(DataNeed::new(id, "params.eval_dataset_id", self.eval_split.as_deref(), true));
        }
        Needs { spec: self.structured.is_some() || !data.is_empty(), data, ..Needs::default() }
    }

    /// On a plain float file (not a sparse or quantized artifact, which are decoded at run
    /// time), the selection, per-tensor targets and the N:M pattern are checked against the
    /// stored shapes: a pattern that does not divide a tensor's input width is a 422 here.
    fn check(&self, stored: &Stored) -> Result<(), DomainError> {
        let Some(model) = &stored.model else { return Ok(()) };
        let h = &model.header;
        if self.method() == Method::Structured
            || h.metadata.contains_key(SPARSITY_METADATA_KEY)
            || crate::artifact::quant_config(h).is_some()
        {
            return Ok(());
        }
        let norms = norm_params(stored.spec.as_ref());
        let tensors = h.tensors.iter().map(|t| (t.name.as_str(), t.dtype.is_float(), t.shape.as_slice()));
        let err = |(field, detail): (String, String)| DomainError::validation(field, detail);
        let selected = select_names(tensors, &norms, self).map_err(err)?;
        if self.method() == Method::Magnitude {
            check_targets(self, &selected).map_err(err)?;
        }
        if let Some(pattern) = self.nm() {
            for t in h.tensors.iter().filter(|t| selected.contains(&t.name)) {
                check_n_m(&t.name, &t.shape, pattern)
                    .map_err(|e| DomainError::validation("params.pattern", e.to_string()))?;
            }
        }
        Ok(())
    }

    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
        run(ctx, self)
    }
}

impl utoipa::PartialSchema for PruneParams {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <RawParams as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for PruneParams {
    fn name() -> std::borrow::Cow<'static, str> {
        "PruneParams".into()
    }
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <RawParams as utoipa::ToSchema>::schemas(schemas)
    }
}

/// Magnitude rule at a given overall sparsity.
#[derive(Debug, Clone)]
enum Rule {
    Global,
    /// Final per-tensor targets (parallel to the selected names).
    PerLayer(Vec<f64>),
}

/// Result of pruning one tensor.
#[derive(Debug, Clone)]
struct Pruned {
    mask: Mask,
    threshold: Option<f32>,
}

/// Magnitude-prunes the selected tensors of `model` in place to `sparsity` (global) or to
/// `targets · sparsity / end` (per layer).
fn magnitude(
    model: &mut Model,
    names: &[String],
    rule: &Rule,
    sparsity: f64,
    end: f64,
) -> Result<BTreeMap<String, Pruned>, JobError> {
    let refs: Vec<TensorRef<'_>> = names
        .iter()
        .map(|n| TensorRef { name: n.as_str(), data: model[n].floats().expect("selected tensors are floats") })
        .collect();
    let cuts = match rule {
        Rule::Global => {
            global_cut(&refs, sparsity, Parallelism::Rayon).map_err(|e| prune_err("params.sparsity", e))?.cuts
        }
        Rule::PerLayer(targets) => {
            let scale = if end > 0.0 { sparsity / end } else { 0.0 };
            let t: Vec<f64> = targets.iter().map(|t| (t * scale).min(t.max(0.0))).collect();
            per_layer_cuts(&refs, &t, Parallelism::Rayon).map_err(|e| prune_err("params.targets", e))?
        }
    };
    let mut out = BTreeMap::new();
    for (name, cut) in names.iter().zip(&cuts) {
        let Some(Entry { content: Content::Float(data), .. }) = model.get_mut(name) else { continue };
        let r = apply_cut(name, data, cut, Parallelism::Rayon);
        out.insert(name.clone(), Pruned { mask: r.mask, threshold: r.stats.threshold });
    }
    Ok(out)
}

fn nm_prune(model: &mut Model, names: &[String], pattern: NmPattern) -> Result<BTreeMap<String, Pruned>, JobError> {
    for n in names {
        check_n_m(n, &model[n].shape, pattern).map_err(|e| prune_err("params.pattern", e))?;
    }
    let mut out = BTreeMap::new();
    for n in names {
        let Some(Entry { content: Content::Float(data), shape, .. }) = model.get_mut(n) else { continue };
        let r = prune_n_m(n, data, shape, pattern, Parallelism::Rayon).map_err(|e| prune_err("params.pattern", e))?;
        out.insert(n.clone(), Pruned { mask: r.mask, threshold: None });
    }
    Ok(out)
}

fn per_layer_targets(p: &PruneParams, names: &[String], end: f64) -> Vec<f64> {
    names.iter().map(|n| *lookup(&p.targets, &[n.as_str()]).unwrap_or(&end)).collect()
}

// ---------------------------------------------------------------------------------------------
// Fine-tuning hooks
// ---------------------------------------------------------------------------------------------

struct Gradual {
    schedule: PolynomialDecay,
    end_step: u64,
    rule: Rule,
    names: Vec<String>,
    end: f64,
    /// (step, target sparsity) of every mask update.
    updates: Vec<(u64, f64)>,
    thresholds: BTreeMap<String, Option<f32>>,
}

/// Fine-tuning hooks: progress/cancellation as [`JobHooks`], masks re-applied after every
/// optimizer step so pruned weights stay exactly zero, and gradual mask updates.
struct PruneHooks<'a> {
    job: JobHooks<'a>,
    /// 1.0 kept / 0.0 pruned, shaped like the weight.
    masks: BTreeMap<String, Tensor>,
    gradual: Option<Gradual>,
}

fn nn_err(e: impl std::fmt::Display) -> NnError {
    NnError::Train(e.to_string())
}

impl PruneHooks<'_> {
    fn update_masks(&mut self, params: &ParamStore, step: u64) -> Result<(), NnError> {
        let Some(g) = self.gradual.as_mut() else { return Ok(()) };
        let target = g.schedule.sparsity_at(step);
        let mut tmp = Model::new();
        for n in &g.names {
            let var = params.get(n).ok_or_else(|| nn_err(format!("{n} is not trainable")))?;
            let data: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            tmp.insert(
                n.clone(),
                Entry { shape: var.dims().to_vec(), dtype: Dtype::F32, content: Content::Float(data) },
            );
        }
        let pruned = magnitude(&mut tmp, &g.names, &g.rule, target, g.end).map_err(nn_err)?;
        for (n, e) in &tmp {
            let var = params.get(n).expect("read above");
            let data = e.floats().expect("floats");
            var.set(&Tensor::from_slice(data, e.shape.as_slice(), &Device::Cpu)?)?;
            let pr = &pruned[n];
            self.masks.insert(n.clone(), Tensor::from_vec(pr.mask.to_f32(), e.shape.as_slice(), &Device::Cpu)?);
            g.thresholds.insert(n.clone(), pr.threshold);
        }
        g.updates.push((step, target));
        Ok(())
    }
}

impl TrainHooks for PruneHooks<'_> {
    fn after_step(&mut self, params: &ParamStore, step: usize) -> Result<(), NnError> {
        // The optimizer moved the pruned weights too: zero them first, so that a mask update
        // ranks them as pruned (sparsity only grows, as in TFMOT).
        for (name, mask) in &self.masks {
            if let Some(var) = params.get(name) {
                var.set(&(var.as_tensor() * mask)?)?;
            }
        }
        let step = step as u64;
        if let Some(g) = &self.gradual {
            if step <= g.end_step && (g.schedule.should_prune(step) || step == g.end_step) {
                self.update_masks(params, step)?;
            }
        }
        Ok(())
    }

    fn on_epoch(&mut self, stats: &EpochStats) {
        self.job.on_epoch(stats);
    }

    fn should_stop(&self) -> bool {
        self.job.should_stop()
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Bytes of a safetensors file with these tensors and metadata, exactly as [`TensorWriter`]
/// lays it out (header JSON padded to 8 bytes).
fn file_size(plans: &[TensorPlan], meta: &BTreeMap<String, String>) -> u64 {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(meta).expect("string map serializes"));
    }
    let mut offset = 0u64;
    for p in plans {
        let n = p.nbytes();
        header.insert(
            p.name.clone(),
            json!({"dtype": p.dtype.as_str(), "shape": p.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let json_len = serde_json::to_vec(&header).expect("json value serializes").len() as u64;
    8 + json_len.div_ceil(8) * 8 + offset
}

/// One tensor of the output, as planned.
enum Out<'a> {
    Dense(&'a str, &'a Entry),
    Sparse(Vec<SparsePart>),
}

fn sparse_parts(name: &str, e: &Entry) -> Result<Vec<SparsePart>, JobError> {
    let data = e.floats().expect("sparse tensors are floats");
    let r = match e.dtype {
        Dtype::F16 => encode_f16(name, &data.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>(), &e.shape),
        Dtype::Bf16 => encode_bf16(name, &data.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>(), &e.shape),
        _ => encode(name, data, &e.shape),
    };
    r.map_err(|err| JobError::Internal(format!("sparse encoding: {err}")))
}

fn plans_of(outs: &[Out<'_>]) -> Vec<TensorPlan> {
    let mut plans = Vec::new();
    for o in outs {
        match o {
            Out::Dense(n, e) => plans.push(TensorPlan::new(*n, e.dtype, e.shape.clone())),
            Out::Sparse(parts) => {
                for p in parts {
                    let dtype = Dtype::parse(p.dtype).expect("sparse parts use safetensors dtype codes");
                    plans.push(TensorPlan::new(p.name.clone(), dtype, p.shape.clone()));
                }
            }
        }
    }
    plans
}

fn write_outs(path: &std::path::Path, outs: &[Out<'_>], meta: &BTreeMap<String, String>) -> Result<u64, JobError> {
    let mut w = TensorWriter::create(path, plans_of(outs), meta)?;
    for o in outs {
        match o {
            Out::Dense(_, e) => match &e.content {
                Content::Float(v) => w.write_f32_as(v)?,
                Content::Raw(b) => w.write(b)?,
            },
            Out::Sparse(parts) => {
                for p in parts {
                    w.write(&p.bytes)?;
                }
            }
        }
    }
    Ok(w.finish()?)
}

// ---------------------------------------------------------------------------------------------
// The job
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct TensorReport {
    name: String,
    shape: Vec<usize>,
    elements: u64,
    kept: u64,
    pruned: u64,
    sparsity: f64,
    threshold: Option<f32>,
}

fn run(ctx: &JobContext, p: &PruneParams) -> Result<JobOutput, JobError> {
    let started = Instant::now();
    let input = ctx.input_model()?;
    ctx.progress(0.01, "loading model");
    let mut model = load_model(&input.path)?;
    let spec = match &input.spec {
        Some(_) => Some(spec_of(input)?),
        None if p.needs().spec => Some(spec_of(input)?),
        None => None,
    };
    let parameters_before: u64 =
        model.values().filter(|e| matches!(e.content, Content::Float(_))).map(Entry::numel).sum();

    // Data: fine-tuning split and evaluation split.
    let train_split = match &p.finetune {
        Some(f) => {
            let ds = dataset(ctx, &f.dataset_id, "params.finetune.dataset_id")?;
            let (name, split) = load_split(ds, f.split.as_deref(), "train")?;
            if split.y.is_none() {
                return Err(JobError::invalid("params.finetune.split", format!("split '{name}' has no labels")));
            }
            Some((name, split))
        }
        None => None,
    };
    let eval = match (&spec, p.eval_dataset()) {
        (Some(_), Some((id, split))) => {
            let field =
                if p.eval_dataset_id.is_some() { "params.eval_dataset_id" } else { "params.finetune.dataset_id" };
            let ds = dataset(ctx, id, field)?;
            let (name, s) = load_split(ds, split, "test")?;
            let (x, y) = labelled(s, &name, "params.eval_split")?;
            Some(EvalData { dataset_id: id.to_string(), split: name, x, y })
        }
        _ => None,
    };
    let latency_x = match &spec {
        Some(s) => Some(match (&eval, &train_split) {
            (Some(e), _) => e.x.narrow(0, 0, e.x.dim(0)?.min(64))?,
            (None, Some((_, t))) => t.x.narrow(0, 0, t.len().min(64))?,
            (None, None) => {
                let mut dims = vec![64];
                dims.extend_from_slice(&s.input.shape);
                Tensor::zeros(dims, s.input.dtype.to_dtype(), &Device::Cpu)?
            }
        }),
        None => None,
    };
    ctx.checkpoint()?;
    ctx.progress(0.03, "measuring the original model");
    let accuracy_before = match (&spec, &eval) {
        (Some(s), Some(e)) => Some(accuracy(s, &model, e)?),
        _ => None,
    };
    let latency_before = match (&spec, &latency_x) {
        (Some(s), Some(x)) => Some(latency(s, &model, x)?),
        _ => None,
    };
    ctx.checkpoint()?;
    ctx.progress(0.08, "pruning");

    let method = p.method();
    let mut out_spec = spec.clone();
    let mut layer_changes = Vec::new();
    let mut selected: Vec<String> = Vec::new();
    let mut pruned: BTreeMap<String, Pruned> = BTreeMap::new();
    let mut accuracy_after_pruning = None;
    let mut gradual_report = Value::Null;
    let mut finetune_report = Value::Null;
    let mut accuracy_after_finetune = None;

    match method {
        Method::Structured => {
            let spec = spec.as_ref().expect("structured pruning needs a spec (checked at submission)");
            let st = p.structured.as_ref().expect("method is structured");
            let (new_spec, changes) = structured_rewrite(ctx, p, st, spec, &mut model, train_split.as_ref(), &eval)?;
            out_spec = Some(new_spec);
            layer_changes = changes;
        }
        Method::NM => {
            selected = select(&model, spec.as_ref(), p)?;
            let pattern = p.nm().expect("pattern was validated at submission");
            pruned = nm_prune(&mut model, &selected, pattern)?;
        }
        Method::Magnitude => {
            selected = select(&model, spec.as_ref(), p)?;
            check_targets(p, &selected).map_err(|(field, detail)| JobError::invalid(&field, detail))?;
            let end = p.sparsity.expect("magnitude pruning has a sparsity (checked at submission)");
            let rule = match p.scope {
                Scope::Global => Rule::Global,
                Scope::PerLayer => Rule::PerLayer(per_layer_targets(p, &selected, end)),
            };
            match &p.schedule {
                None => pruned = magnitude(&mut model, &selected, &rule, end, end)?,
                Some(s) => {
                    // What one-shot pruning to the final sparsity gives, for the report.
                    if let (Some(sp), Some(e)) = (&spec, &eval) {
                        let mut copy = model.clone();
                        magnitude(&mut copy, &selected, &rule, end, end)?;
                        accuracy_after_pruning = Some(accuracy(sp, &copy, e)?);
                    }
                    if s.begin_step == 0 && s.start_sparsity > 0.0 {
                        pruned = magnitude(&mut model, &selected, &rule, s.start_sparsity, end)?;
                    }
                }
            }
        }
    }
    ctx.checkpoint()?;

    let current_spec = out_spec.clone();
    if accuracy_after_pruning.is_none() {
        if let (Some(s), Some(e)) = (&current_spec, &eval) {
            if p.schedule.is_none() {
                ctx.progress(0.1, "measuring the pruned model");
                accuracy_after_pruning = Some(accuracy(s, &model, e)?);
            }
        }
    }

    // Fine-tuning (masks held; gradual schedule).
    if let (Some(f), Some((split_name, split))) = (&p.finetune, &train_split) {
        let spec = current_spec.as_ref().expect("fine-tuning needs a spec (checked at submission)");
        let mut cfg = f.settings.to_config();
        let n_val = ((split.len() as f64) * cfg.validation_split).round() as usize;
        let steps_per_epoch = split.len().saturating_sub(n_val).div_ceil(cfg.batch_size) as u64;
        let total_steps = steps_per_epoch * cfg.epochs as u64;
        let gradual = match &p.schedule {
            Some(s) => {
                let end = p.sparsity.expect("a schedule has a final sparsity");
                let steps = s.steps.unwrap_or_else(|| (total_steps * 2 / 3).max(1));
                let end_step = s.begin_step + steps;
                if end_step > total_steps {
                    return Err(JobError::invalid(
                        "params.schedule.steps",
                        format!(
                            "the schedule ends at optimizer step {end_step} but the fine-tuning runs {total_steps} \
                             steps ({} epochs × {steps_per_epoch} batches of {}); lower steps/begin_step or raise epochs",
                            cfg.epochs, cfg.batch_size
                        ),
                    ));
                }
                let frequency = s.frequency.unwrap_or((steps / 10).max(1));
                let schedule = PolynomialDecay {
                    initial_sparsity: s.start_sparsity,
                    final_sparsity: end,
                    begin_step: s.begin_step,
                    end_step,
                    power: s.power,
                    frequency,
                };
                schedule.validate().map_err(|e| prune_err("params.schedule", e))?;
                // The weights of an earlier epoch may be less sparse than the schedule's end.
                cfg.restore_best = false;
                let rule = match p.scope {
                    Scope::Global => Rule::Global,
                    Scope::PerLayer => Rule::PerLayer(per_layer_targets(p, &selected, end)),
                };
                let initial = !pruned.is_empty();
                Some(Gradual {
                    schedule,
                    end_step,
                    rule,
                    names: selected.clone(),
                    end,
                    updates: if initial { vec![(0, s.start_sparsity)] } else { Vec::new() },
                    thresholds: BTreeMap::new(),
                })
            }
            None => None,
        };
        let mut masks = BTreeMap::new();
        let trainable: Vec<String> = spec.params().into_iter().filter(|i| i.trainable).map(|i| i.name).collect();
        if let Some(g) = &gradual {
            if let Some(n) = g.names.iter().find(|n| !trainable.contains(n)) {
                return Err(JobError::invalid(
                    "params.include",
                    format!("gradual pruning needs trainable tensors, but {n} is not a weight of the spec"),
                ));
            }
        }
        for (name, pr) in &pruned {
            if trainable.contains(name) {
                let shape = model[name].shape.clone();
                masks.insert(name.clone(), Tensor::from_vec(pr.mask.to_f32(), shape, &Device::Cpu)?);
            }
        }
        let mut hooks = PruneHooks { job: JobHooks::new(ctx, cfg.epochs, (0.12, 0.9), "fine-tuning"), masks, gradual };
        ctx.progress(0.12, "fine-tuning");
        let init = crate::nn::Init::Params(to_candle(&model)?);
        let out = crate::nn::train(spec, split, &cfg, init, &mut hooks)?;
        if out.cancelled {
            return Err(stop_reason(ctx));
        }
        absorb(&mut model, &out.params)?;
        // Final masks, re-applied to whatever the trainer returned (a no-op when the masks held).
        if let Some(g) = &hooks.gradual {
            for (n, t) in &hooks.masks {
                let pr = Mask::from_nonzero(&t.flatten_all()?.to_vec1::<f32>()?);
                pruned.insert(n.clone(), Pruned { mask: pr, threshold: g.thresholds.get(n).copied().flatten() });
            }
            gradual_report = json!({
                "kind": "polynomial",
                "start_sparsity": g.schedule.initial_sparsity,
                "end_sparsity": g.schedule.final_sparsity,
                "begin_step": g.schedule.begin_step,
                "end_step": g.end_step,
                "frequency": g.schedule.frequency,
                "power": g.schedule.power,
                "updates": g.updates.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
            });
        }
        for (n, pr) in &pruned {
            if let Some(Entry { content: Content::Float(data), .. }) = model.get_mut(n) {
                pr.mask.apply(n, data).map_err(|e| JobError::Internal(e.to_string()))?;
            }
        }
        finetune_report = json!({
            "dataset_id": f.dataset_id,
            "split": split_name,
            "config": cfg,
            "steps": total_steps,
            "curve": out.curve,
            "best_epoch": out.best_epoch,
            "stopped_early": out.stopped_early,
        });
        if let Some(e) = &eval {
            ctx.progress(0.9, "measuring the fine-tuned model");
            accuracy_after_finetune = Some(accuracy(spec, &model, e)?);
        }
    }
    ctx.checkpoint()?;
    let latency_after = match (&current_spec, &latency_x) {
        (Some(s), Some(x)) => Some(latency(s, &model, x)?),
        _ => None,
    };

    // Per-tensor statistics on the final weights.
    let mut tensors = Vec::new();
    let (mut sel_elements, mut sel_zeros, mut sel_pruned) = (0u64, 0u64, 0u64);
    for n in &selected {
        let e = &model[n];
        let data = e.floats().expect("selected tensors are floats");
        let zeros = data.iter().filter(|v| **v == 0.0).count() as u64;
        let elements = data.len() as u64;
        let kept = pruned.get(n).map_or(elements, |pr| pr.mask.kept_count());
        sel_elements += elements;
        sel_zeros += zeros;
        sel_pruned += elements - kept;
        tensors.push(TensorReport {
            name: n.clone(),
            shape: e.shape.clone(),
            elements,
            kept,
            pruned: elements - kept,
            sparsity: if elements == 0 { 0.0 } else { zeros as f64 / elements as f64 },
            threshold: pruned.get(n).and_then(|pr| pr.threshold),
        });
    }
    let elements_after: u64 = model.values().filter(|e| matches!(e.content, Content::Float(_))).map(Entry::numel).sum();
    let parameters_after = elements_after - sel_pruned;
    let global_sparsity = if sel_elements == 0 { 0.0 } else { sel_zeros as f64 / sel_elements as f64 };

    // Output.
    ctx.progress(0.95, "writing the output");
    let structure = match method {
        Method::NM => p.pattern.clone().unwrap_or_default(),
        Method::Magnitude => "unstructured".to_string(),
        Method::Structured => "structured".to_string(),
    };
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    let src = Tensorfile::open_trusted(&input.path)?;
    for (k, v) in &src.header.metadata {
        if k != crate::compress::quant::METADATA_KEY && k != SPARSITY_METADATA_KEY && k != PRUNING_METADATA_KEY {
            meta.insert(k.clone(), v.clone());
        }
    }
    drop(src);
    meta.insert("modelpress.source_model".into(), input.id.clone());
    meta.insert("modelpress.job_id".into(), ctx.id.clone());
    meta.insert(
        PRUNING_METADATA_KEY.into(),
        json!({"method": method, "structure": structure, "global_sparsity": global_sparsity,
               "pruned_tensors": selected})
        .to_string(),
    );
    let dense_outs: Vec<Out<'_>> = model.iter().map(|(n, e)| Out::Dense(n, e)).collect();
    let bytes_dense = file_size(&plans_of(&dense_outs), &meta);
    let (outs, bytes_sparse, sparse_meta) = if method == Method::Structured {
        (dense_outs, None, None)
    } else {
        let mut outs = Vec::new();
        let mut records = BTreeMap::new();
        for (n, e) in &model {
            if selected.contains(n) {
                let parts = sparse_parts(n, e)?;
                let nnz = parts[0].shape[0] as u64;
                records.insert(n.clone(), SparseRecord { shape: e.shape.clone(), dtype: e.dtype.as_str().into(), nnz });
                outs.push(Out::Sparse(parts));
            } else {
                outs.push(Out::Dense(n, e));
            }
        }
        let cfg = SparsityConfig {
            format: "sparse-bitmask".into(),
            version: 1,
            sparsity_structure: structure.clone(),
            global_sparsity,
            tensors: records,
        };
        let mut smeta = meta.clone();
        smeta.insert(SPARSITY_METADATA_KEY.into(), serde_json::to_string(&cfg).expect("config serializes"));
        let size = file_size(&plans_of(&outs), &smeta);
        if p.format == Format::Sparse {
            (outs, Some(size), Some(smeta))
        } else {
            (dense_outs, Some(size), None)
        }
    };
    let final_meta = sparse_meta.as_ref().unwrap_or(&meta);
    let temp = ctx.store.temp_file("safetensors");
    let bytes_output = write_outs(temp.path(), &outs, final_meta)?;
    drop(outs);
    let name = match method {
        Method::Magnitude => format!("{}-pruned{}", input.name, (global_sparsity * 100.0).round() as u64),
        Method::NM => format!("{}-{}", input.name, structure.replace(':', "of")),
        Method::Structured => format!("{}-structured", input.name),
    };
    let out_model = OutputModel::from_file(temp, name, out_spec.as_ref().map(|s| s.to_json()))?;
    let bytes_input = std::fs::metadata(&input.path)?.len();

    let report = json!({
        "kind": "prune",
        "method": method,
        "scope": if method == Method::Magnitude { json!(p.scope) } else { Value::Null },
        "pattern": p.pattern,
        "format": p.format,
        "target_sparsity": p.sparsity,
        "global_sparsity": global_sparsity,
        "selected_elements": sel_elements,
        "pruned_elements": sel_pruned,
        "parameters_before": parameters_before,
        "parameters_after": parameters_after,
        "elements_after": elements_after,
        "bytes_input": bytes_input,
        "bytes_dense": bytes_dense,
        "bytes_sparse": bytes_sparse,
        "bytes_output": bytes_output,
        "size_ratio": bytes_output as f64 / bytes_input.max(1) as f64,
        "sparse_to_dense": bytes_sparse.map(|s| s as f64 / bytes_dense.max(1) as f64),
        "tensors": tensors,
        "layers": if method == Method::Structured { json!(layer_changes) } else { Value::Null },
        "eval": eval.as_ref().map(|e| json!({"dataset_id": e.dataset_id, "split": e.split, "samples": e.y.len()})),
        "accuracy_before": accuracy_before,
        "accuracy_after_pruning": accuracy_after_pruning,
        "accuracy_after_finetune": accuracy_after_finetune,
        "latency_batch": latency_before.map(|l| l.batch),
        "latency_before_ms": latency_before.map(|l| l.batch_ms),
        "latency_after_ms": latency_after.map(|l| l.batch_ms),
        "latency_before": latency_before,
        "latency_after": latency_after,
        "latency_speedup": match (latency_before, latency_after) {
            (Some(b), Some(a)) if a.batch_ms > 0.0 => Some(b.batch_ms / a.batch_ms),
            _ => None,
        },
        "schedule": gradual_report,
        "finetune": finetune_report,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    Ok(JobOutput { report, model: Some(out_model) })
}

/// Structured pruning: picks the units to keep in every selected prunable layer and rewrites
/// the spec and tensors.
fn structured_rewrite(
    ctx: &JobContext,
    p: &PruneParams,
    st: &StructuredParams,
    spec: &ModelSpec,
    model: &mut Model,
    train: Option<&(String, Split)>,
    eval: &Option<EvalData>,
) -> Result<(ModelSpec, Vec<structured::LayerChange>), JobError> {
    let prunable = structured::prunable_layers(spec)?;
    let names: Vec<String> = prunable.iter().map(|l| l.layer.clone()).collect();
    let matches = |g: &str, l: &str| glob_match(g, l) || glob_match(g, &format!("{l}.weight"));
    if let Some(k) = st.layers.keys().find(|k| !names.iter().any(|l| matches(k, l))) {
        return Err(JobError::invalid(
            &format!("params.structured.layers.{k}"),
            format!("matches no prunable layer; prunable layers: {}", names.join(", ")),
        ));
    }
    let mut plan: Vec<(String, usize, usize)> = Vec::new(); // (layer, units, keep)
    for l in &prunable {
        let included = p.include.is_empty() || p.include.iter().any(|g| matches(g, &l.layer));
        if !included || p.exclude.iter().any(|g| matches(g, &l.layer)) {
            continue;
        }
        let weight = format!("{}.weight", l.layer);
        let amount = *lookup(&st.layers, &[l.layer.as_str(), weight.as_str()]).unwrap_or(&st.amount);
        let remove = (amount * l.units as f64).round() as usize;
        let keep = l.units.saturating_sub(remove).max(1);
        if keep < l.units {
            plan.push((l.layer.clone(), l.units, keep));
        }
    }
    if plan.is_empty() {
        return Err(JobError::invalid(
            "params.structured",
            format!(
                "no unit would be removed: check amount/layers/include/exclude; prunable layers: {}",
                if names.is_empty() { "none in this spec".to_string() } else { names.join(", ") }
            ),
        ));
    }
    let mut host = host_tensors(model);
    let scores: BTreeMap<String, Vec<f32>> = match st.norm {
        UnitScore::L1 | UnitScore::L2 => {
            let norm = if st.norm == UnitScore::L1 { Norm::L1 } else { Norm::L2 };
            plan.iter()
                .map(|(l, _, _)| structured::norm_scores(&host, l, norm).map(|s| (l.clone(), s)))
                .collect::<Result<_, _>>()?
        }
        UnitScore::Activation => {
            ctx.progress(0.09, "measuring activations");
            let x = match (train, eval) {
                (Some((_, t)), _) => t.x.clone(),
                (None, Some(e)) => e.x.clone(),
                (None, None) => {
                    return Err(JobError::invalid("params.structured.norm", "activation scores need a dataset"))
                }
            };
            let n = x.dim(0)?.min(st.calibration_samples);
            let layers: Vec<String> = plan.iter().map(|(l, _, _)| l.clone()).collect();
            structured::activation_scores(spec, &host, &layers, &x.narrow(0, 0, n)?)?
        }
    };
    let mut keep = BTreeMap::new();
    for (l, _, k) in &plan {
        let idx = select_keep(l, &scores[l], *k).map_err(|e| JobError::Internal(e.to_string()))?;
        keep.insert(l.clone(), idx);
    }
    let (new_spec, changes) = structured::apply(spec, &mut host, &keep)?;
    for (k, t) in host {
        if let Some(e) = model.get_mut(&k) {
            e.shape = t.shape;
            e.content = Content::Float(t.data);
        }
    }
    Ok((new_spec, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<PruneParams, DomainError> {
        PruneParams::parse_params(&v)
    }

    fn field(v: Value) -> (String, String) {
        let e = parse(v).unwrap_err();
        (e.field.clone().unwrap_or_default(), e.detail.clone())
    }

    #[test]
    fn params_defaults_and_needs() {
        let p = parse(json!({"sparsity": 0.9})).unwrap();
        assert_eq!((p.scope, p.format, p.method()), (Scope::Global, Format::Dense, Method::Magnitude));
        let n = p.needs();
        assert!(!n.spec && n.data.is_empty());
        let p = parse(json!({"structured": {}})).unwrap();
        assert!(p.needs().spec, "structured pruning needs a spec");
        let st = p.structured.unwrap();
        assert_eq!((st.amount, st.norm), (0.5, UnitScore::L1));
        let p = parse(json!({"pattern": "2:4", "finetune": {"dataset_id": "d", "epochs": 3}, "eval_dataset_id": "e"}))
            .unwrap();
        let n = p.needs();
        assert!(n.spec);
        assert_eq!(n.data.len(), 2);
        assert_eq!(p.finetune.unwrap().settings.epochs, 3);
        let p =
            parse(json!({"schedule": {"kind": "polynomial", "end_sparsity": 0.8}, "finetune": {"dataset_id": "d"}}))
                .unwrap();
        assert_eq!(p.sparsity, Some(0.8));
    }

    #[test]
    fn invalid_params_name_the_field() {
        assert_eq!(field(json!({"sparsity": 1.0})).0, "params.sparsity");
        assert_eq!(field(json!({"sparsity": -0.1})).0, "params.sparsity");
        assert!(field(json!({"sparsity": 1.0})).1.contains("[0, 1)"));
        assert_eq!(field(json!({})).0, "params");
        assert_eq!(field(json!({"sparsity": 0.5, "pattern": "2:4"})).0, "params");
        assert_eq!(field(json!({"pattern": "4:2"})).0, "params.pattern");
        assert_eq!(field(json!({"pattern": "two"})).0, "params.pattern");
        assert_eq!(field(json!({"sparsity": 0.5, "scope": "layer"})).0, "params.scope");
        assert_eq!(field(json!({"sparsity": 0.5, "targets": {"a": 0.5}})).0, "params.targets");
        assert_eq!(field(json!({"sparsity": 0.5, "scope": "per_layer", "targets": {"a": 1.5}})).0, "params.targets.a");
        assert_eq!(field(json!({"sparsity": 0.5, "format": "csr"})).0, "params.format");
        assert_eq!(field(json!({"structured": {"amount": 0.5}, "format": "sparse"})).0, "params.format");
        assert_eq!(field(json!({"structured": {"amount": 1.0}})).0, "params.structured.amount");
        assert_eq!(field(json!({"structured": {"norm": "l3"}})).0, "params.structured.norm");
        assert_eq!(field(json!({"structured": {"norm": "activation"}})).0, "params.structured.norm");
        assert_eq!(field(json!({"structured": {"amont": 0.5}})).0, "params.structured");
        assert_eq!(field(json!({"sparsity": 0.5, "bogus": 1})).0, "params");
        assert!(field(json!({"sparsity": 0.5, "bogus": 1})).1.contains("bogus"));
        assert_eq!(field(json!({"sparsity": 0.5, "schedule": {"kind": "polynomial"}})).0, "params.schedule");
        assert_eq!(
            field(json!({"schedule": {"kind": "cubic", "end_sparsity": 0.5}, "finetune": {"dataset_id": "d"}})).0,
            "params.schedule.kind"
        );
        assert_eq!(
            field(json!({"sparsity": 0.5, "schedule": {"kind": "polynomial", "end_sparsity": 0.6}, "finetune": {"dataset_id": "d"}}))
                .0,
            "params.schedule.end_sparsity"
        );
        assert_eq!(
            field(json!({"sparsity": 0.5, "finetune": {"dataset_id": "d", "epochs": 0}})).0,
            "params.finetune.epochs"
        );
        assert_eq!(field(json!({"sparsity": 0.5, "finetune": {"dataset_id": "d", "lr_typo": 1}})).0, "params.finetune");
        assert_eq!(field(json!({"sparsity": 0.5, "finetune": {"epochs": 1}})).0, "params.finetune.dataset_id");
        assert_eq!(field(json!({"sparsity": 0.5, "include": [""]})).0, "params.include");
        assert_eq!(field(json!({"pattern": "2:4", "scope": "global"})).0, "params.scope");
        assert_eq!(field(json!({"sparsity": 0.5, "eval_split": "test"})).0, "params.eval_split");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "fc1.weight"));
        assert!(glob_match("fc*.weight", "fc1.weight"));
        assert!(glob_match("*.weight", "layer1.0.conv1.weight"));
        assert!(!glob_match("*.weight", "fc1.bias"));
        assert!(glob_match("fc?.weight", "fc2.weight"));
        assert!(!glob_match("fc?.weight", "fc10.weight"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("fc1.weight", "fc1.weight"));
        let m = BTreeMap::from([("*".to_string(), 1), ("fc*".to_string(), 2), ("fc1.weight".to_string(), 3)]);
        assert_eq!(lookup(&m, &["fc1.weight"]), Some(&3));
        assert_eq!(lookup(&m, &["fc2.weight"]), Some(&2));
        assert_eq!(lookup(&m, &["out.weight"]), Some(&1));
    }

    #[test]
    fn file_size_matches_the_writer_and_sparse_files_decode() {
        let dir = tempfile::tempdir().unwrap();
        let w: Vec<f32> = (0..40 * 24).map(|i| if i % 10 == 0 { (i as f32 * 0.1).sin() } else { 0.0 }).collect();
        let model: Model = BTreeMap::from([
            (
                "a.weight".to_string(),
                Entry { shape: vec![40, 24], dtype: Dtype::F32, content: Content::Float(w.clone()) },
            ),
            (
                "a.bias".to_string(),
                Entry { shape: vec![40], dtype: Dtype::F16, content: Content::Float(vec![0.5; 40]) },
            ),
            (
                "steps".to_string(),
                Entry { shape: vec![1], dtype: Dtype::I64, content: Content::Raw(7i64.to_le_bytes().to_vec()) },
            ),
        ]);
        let parts = sparse_parts("a.weight", &model["a.weight"]).unwrap();
        let cfg = SparsityConfig {
            format: "sparse-bitmask".into(),
            version: 1,
            sparsity_structure: "unstructured".into(),
            global_sparsity: 0.9,
            tensors: BTreeMap::from([(
                "a.weight".to_string(),
                SparseRecord { shape: vec![40, 24], dtype: "F32".into(), nnz: parts[0].shape[0] as u64 },
            )]),
        };
        let meta = BTreeMap::from([(SPARSITY_METADATA_KEY.to_string(), serde_json::to_string(&cfg).unwrap())]);
        let outs =
            vec![Out::Dense("a.bias", &model["a.bias"]), Out::Sparse(parts), Out::Dense("steps", &model["steps"])];
        let path = dir.path().join("s.safetensors");
        let written = write_outs(&path, &outs, &meta).unwrap();
        assert_eq!(written, file_size(&plans_of(&outs), &meta));
        assert_eq!(written, std::fs::metadata(&path).unwrap().len());
        let dense: Vec<Out<'_>> = model.iter().map(|(n, e)| Out::Dense(n, e)).collect();
        let dpath = dir.path().join("d.safetensors");
        assert_eq!(
            write_outs(&dpath, &dense, &BTreeMap::new()).unwrap(),
            file_size(&plans_of(&dense), &BTreeMap::new())
        );
        assert!(written < std::fs::metadata(&dpath).unwrap().len());

        // Read back: the sparse tensor decodes bit-exactly; the loader sees logical tensors.
        let tf = Tensorfile::open_trusted(&path).unwrap();
        let back = sparse_tensors(&tf).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].shape, vec![40, 24]);
        assert_eq!(
            back[0].data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(sparse_config(&tf.header).unwrap().is_part("a.weight.bitmask"));
        let loaded = load_model(&path).unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), vec!["a.bias", "a.weight", "steps"]);
        assert_eq!(loaded["a.weight"].floats().unwrap(), w.as_slice());
        assert!(matches!(loaded["steps"].content, Content::Raw(_)));
    }
}
