//! Shared leaves of the job kinds, each written once: what a job needs from stored inputs
//! ([`Needs`]), the inputs as seen at submission ([`Stored`]) and the generic checks on them,
//! the scheme request of `quantize`/`sensitivity` ([`SchemeRequest`]), training settings
//! ([`TrainSettings`], typed, one limit set backed by [`crate::nn::TrainConfig`]'s own check),
//! the fine-tuning block ([`FinetuneSettings`]), split names, dataset lookup on the worker, and
//! the one latency method every report uses ([`measure_latency`]).
//!
//! Parsing and checks run on the runtime at submission (short, in-memory); the lookups and
//! the latency measurement run on worker threads.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{InputDataset, JobContext, JobError};
use crate::compress::quant::{Granularity, Scheme, INT4_GROUP_SIZES};
use crate::datasets::DatasetInfo;
use crate::error::DomainError;
use crate::nn::{ModelSpec, Network};
use crate::tensorfile::Header;

// ---------------------------------------------------------------------------------------------
// What a kind needs, and the stored inputs it is checked against
// ---------------------------------------------------------------------------------------------

/// A dataset a job reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DataNeed {
    pub id: String,
    /// The request field naming it (`params.eval_dataset_id`), for errors.
    pub field: String,
    /// The split asked for (`None`: the kind's default).
    pub split: Option<String>,
    /// Labels are required.
    pub labels: bool,
}

impl DataNeed {
    pub fn new(id: &str, field: &str, split: Option<&str>, labels: bool) -> DataNeed {
        DataNeed { id: id.to_string(), field: field.to_string(), split: split.map(str::to_string), labels }
    }
}

/// What a job needs from stored inputs, declared by each kind and checked before it is queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Needs {
    /// The job reads `model_id` (false: it must not be given).
    pub model: bool,
    /// The model must carry an architecture spec.
    pub spec: bool,
    /// Datasets the job reads.
    pub data: Vec<DataNeed>,
    /// Other models the job reads: (id, request field).
    pub models: Vec<(String, String)>,
}

impl Default for Needs {
    fn default() -> Self {
        Needs { model: true, spec: false, data: Vec::new(), models: Vec::new() }
    }
}

impl Needs {
    pub fn dataset_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for d in &self.data {
            if !ids.contains(&d.id) {
                ids.push(d.id.clone());
            }
        }
        ids
    }
}

/// A stored model as the submission checks see it.
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub id: String,
    /// Its stored spec text, if any.
    pub spec: Option<String>,
    /// Its safetensors header (shapes, dtypes, metadata), read from the stored file.
    pub header: Header,
}

/// The stored inputs of a job at submission: looked up by the API (as the caller's), then
/// checked by the kind.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// `model_id`.
    pub model: Option<StoredModel>,
    /// `model_id`'s parsed spec, when the kind needs one.
    pub spec: Option<ModelSpec>,
    /// Other models by id.
    pub models: HashMap<String, StoredModel>,
    /// Datasets by id.
    pub datasets: HashMap<String, DatasetInfo>,
}

/// The generic checks every kind gets from its [`Needs`]: the spec parses, every dataset has
/// the split asked for, and (with a spec) its samples fit the model.
pub fn check_needs(needs: &Needs, stored: &Stored) -> Result<(), DomainError> {
    for d in &needs.data {
        let info = stored
            .datasets
            .get(&d.id)
            .ok_or_else(|| DomainError::validation(d.field.clone(), format!("dataset '{}' does not exist", d.id)))?;
        if let Some(name) = &d.split {
            if info.split(name).is_none() {
                let names: Vec<&str> = info.splits.iter().map(|s| s.name.as_str()).collect();
                // Named by the dataset's field, as the spec check always did.
                return Err(DomainError::validation(
                    d.field.clone(),
                    format!("dataset '{}' has no '{name}' split (it has {})", d.id, names.join(", ")),
                ));
            }
        }
        if let Some(spec) = &stored.spec {
            crate::checks::check_model_dataset(spec, &d.id, info, d.split.as_deref(), d.labels, &d.field)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------------------------

/// Deserializes `v` (null → `{}`) into `T`; a mismatch is a 422 naming `field`.
pub fn typed<T: DeserializeOwned>(field: &str, v: Value) -> Result<T, DomainError> {
    let v = if v.is_null() { Value::Object(Default::default()) } else { v };
    if !v.is_object() {
        return Err(DomainError::validation(field, "must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| DomainError::validation(field, e.to_string()))
}

/// Splits an object into the named keys and the rest (serde cannot combine `flatten` with
/// `deny_unknown_fields`, and unknown keys must be refused).
pub fn split_keys(params: &Value, keys: &[&str]) -> (serde_json::Map<String, Value>, Value) {
    let mut rest = params.as_object().cloned().unwrap_or_default();
    let mut taken = serde_json::Map::new();
    for k in keys {
        if let Some(v) = rest.remove(*k) {
            taken.insert(k.to_string(), v);
        }
    }
    (taken, Value::Object(rest))
}

/// A split name: `train`, `test` or `all`.
pub fn check_split(field: &str, split: Option<&str>) -> Result<(), DomainError> {
    match split {
        None | Some("train") | Some("test") | Some("all") => Ok(()),
        Some(other) => Err(DomainError::validation(field, format!("unknown split '{other}'; use train, test or all"))),
    }
}

/// Tensor-name globs: a bounded list of bounded patterns.
pub fn check_globs(field: &str, globs: &[String]) -> Result<(), DomainError> {
    if globs.len() > 1000 {
        return Err(DomainError::validation(field, "at most 1000 patterns"));
    }
    if let Some(g) = globs.iter().find(|g| g.is_empty() || g.len() > 500) {
        return Err(DomainError::validation(field, format!("pattern {g:?} must be 1-500 characters")));
    }
    Ok(())
}

/// A string-valued choice, refused with its own field name before serde (whose message would
/// name only the object).
pub fn check_choice(obj: &Value, key: &str, allowed: &[&str], field: &str) -> Result<(), DomainError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(DomainError::validation(field, allowed.join(" or "))),
    }
}

pub fn check_batch(field: &str, b: usize) -> Result<(), DomainError> {
    if !(1..=65_536).contains(&b) {
        return Err(DomainError::validation(field, "must be between 1 and 65536"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scheme request (quantize, sensitivity)
// ---------------------------------------------------------------------------------------------

/// int8 scale granularity as requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GranularityRequest {
    PerChannel,
    PerTensor,
}

/// The scheme fields shared by `quantize` and `sensitivity`, turned into a [`Scheme`] directly.
/// (No `deny_unknown_fields`: it is parsed from its own keys only, and the contract composes it
/// with `allOf`, where `additionalProperties: false` would refuse the other kind's fields.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SchemeRequest {
    /// `f16`, `bf16`, `int8`, `int4`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k`, `q3_k`,
    /// `q4_k`, `q5_k`, `q6_k`, or a full label such as `int8_asym_per_tensor` / `int4_g128`.
    pub scheme: String,
    /// int8/int4: symmetric (default) or asymmetric with zero points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// int8: `per_channel` (default, one scale per output row) or `per_tensor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<GranularityRequest>,
    /// int4: weights per scale, 32 (default), 64, 128 or 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
}

impl SchemeRequest {
    pub const KEYS: [&'static str; 4] = ["scheme", "symmetric", "granularity", "group_size"];

    /// Parses the scheme keys of a params object.
    pub fn parse(params: &Value) -> Result<SchemeRequest, DomainError> {
        let (head, _) = split_keys(params, &Self::KEYS);
        if !head.contains_key("scheme") {
            return Err(DomainError::validation("params.scheme", "required, e.g. \"int8\""));
        }
        let head = Value::Object(head);
        check_choice(&head, "granularity", &["per_channel", "per_tensor"], "params.granularity")?;
        let r: SchemeRequest = typed("params", head)?;
        if let Some(g) = r.group_size {
            if !INT4_GROUP_SIZES.contains(&g) {
                return Err(DomainError::validation("params.group_size", "one of 32, 64, 128, 256"));
            }
        }
        r.scheme()?;
        Ok(r)
    }

    /// The scheme asked for: `int8` / `int4` refined by the other fields, else the label.
    pub fn scheme(&self) -> Result<Scheme, DomainError> {
        let symmetric = self.symmetric.unwrap_or(true);
        match self.scheme.trim().to_ascii_lowercase().as_str() {
            "int8" => {
                let granularity = match self.granularity {
                    Some(GranularityRequest::PerTensor) => Granularity::PerTensor,
                    _ => Granularity::PerChannel,
                };
                return Ok(Scheme::Int8 { symmetric, granularity });
            }
            "int4" => return Ok(Scheme::Int4 { group_size: self.group_size.unwrap_or(32), symmetric }),
            _ => {}
        }
        self.scheme.parse().map_err(|e: crate::compress::quant::QuantError| {
            DomainError::validation(
                "params.scheme",
                format!(
                    "unknown scheme '{}' ({e}); supported: f16, bf16, int8, int4, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k",
                    self.scheme
                ),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Training settings
// ---------------------------------------------------------------------------------------------

/// Upper bound on epochs of any training phase (train, fine-tuning, distillation): with
/// `batch_size` ≥ 1 and the dataset bounded by `--max-upload-bytes`, it keeps one request from
/// holding a worker for days. The engine's own bound ([`crate::nn::TrainConfig`]) is wider.
pub const MAX_EPOCHS: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Cosine,
    Step,
}

/// Training hyper-parameters shared by `train`, `distill` and the fine-tuning phases. Unknown
/// keys are refused by [`TrainSettings::parse`] (not by serde: the contract composes this
/// schema with `allOf`, where `additionalProperties: false` would refuse the kind's own keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrainSettings {
    #[serde(default = "d_epochs")]
    #[schema(default = 10)]
    pub epochs: usize,
    #[serde(default = "d_batch")]
    #[schema(default = 64)]
    pub batch_size: usize,
    /// `adamw` (default) or `sgd`.
    #[serde(default = "d_opt")]
    pub optimizer: Optimizer,
    #[serde(default = "d_lr")]
    #[schema(default = 0.001)]
    pub lr: f64,
    /// SGD momentum (default 0.9).
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// `constant` (default), `cosine` or `step`.
    #[serde(default = "d_schedule")]
    pub schedule: Schedule,
    /// `step` schedule: epochs between decays and the factor.
    #[serde(default = "d_step_size")]
    pub step_size: usize,
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// `cosine` schedule: warm-up epochs (fewer than `epochs`).
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default)]
    pub seed: u64,
    /// Fraction of the training split held out for validation / early stopping.
    #[serde(default)]
    pub validation_split: f64,
    /// Early stopping patience in epochs (needs a validation split).
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

fn d_epochs() -> usize {
    10
}
fn d_batch() -> usize {
    64
}
fn d_opt() -> Optimizer {
    Optimizer::Adamw
}
fn d_lr() -> f64 {
    1e-3
}
fn d_momentum() -> f64 {
    0.9
}
fn d_schedule() -> Schedule {
    Schedule::Constant
}
fn d_step_size() -> usize {
    10
}
fn d_gamma() -> f64 {
    0.1
}

impl TrainSettings {
    pub const KEYS: [&'static str; 14] = [
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "schedule",
        "step_size",
        "gamma",
        "warmup_epochs",
        "seed",
        "validation_split",
        "patience",
        "clip_grad_norm",
    ];

    /// Parses training settings from an object holding only their keys, then checks them.
    pub fn parse(prefix: &str, v: Value) -> Result<TrainSettings, DomainError> {
        if let Some(k) = v.as_object().and_then(|o| o.keys().find(|k| !Self::KEYS.contains(&k.as_str()))) {
            return Err(DomainError::validation(prefix, format!("unknown field `{k}`")));
        }
        check_choice(&v, "optimizer", &["adamw", "sgd"], &format!("{prefix}.optimizer"))?;
        check_choice(&v, "schedule", &["constant", "cosine", "step"], &format!("{prefix}.schedule"))?;
        let s: TrainSettings = typed(prefix, v)?;
        s.check(prefix)?;
        Ok(s)
    }

    /// Every limit, each naming its field; finally the engine's own check of the
    /// configuration, so nothing it would refuse gets queued.
    pub fn check(&self, prefix: &str) -> Result<(), DomainError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(DomainError::validation(f("epochs"), format!("must be between 1 and {MAX_EPOCHS}")));
        }
        check_batch(&f("batch_size"), self.batch_size)?;
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return Err(DomainError::validation(f("lr"), "must be in (0, 10]"));
        }
        if !(0.0..=0.9).contains(&self.validation_split) {
            return Err(DomainError::validation(f("validation_split"), "must be in [0, 0.9]"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(DomainError::validation(f("momentum"), "must be in [0, 1)"));
        }
        if let Some(wd) = self.weight_decay {
            if !(0.0..=1.0).contains(&wd) {
                return Err(DomainError::validation(f("weight_decay"), "must be in [0, 1]"));
            }
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) || self.step_size == 0 {
            return Err(DomainError::validation(f("gamma"), "gamma in (0, 1] and step_size ≥ 1"));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(DomainError::validation(f("clip_grad_norm"), "must be positive"));
            }
        }
        if self.patience.is_some() && self.validation_split == 0.0 {
            return Err(DomainError::validation(f("patience"), "early stopping needs validation_split > 0"));
        }
        if self.schedule == Schedule::Cosine && self.warmup_epochs >= self.epochs {
            return Err(DomainError::validation(
                f("warmup_epochs"),
                format!("must be smaller than epochs ({}); got {}", self.epochs, self.warmup_epochs),
            ));
        }
        self.to_config().validate().map_err(|e| DomainError::validation(prefix, e.to_string()))
    }

    /// The engine's training configuration.
    pub fn to_config(&self) -> crate::nn::TrainConfig {
        use crate::nn::{LrSchedule, OptimizerConfig};
        let optimizer = match self.optimizer {
            Optimizer::Sgd => OptimizerConfig::Sgd {
                lr: self.lr,
                momentum: self.momentum,
                nesterov: false,
                weight_decay: self.weight_decay.unwrap_or(0.0),
            },
            Optimizer::Adamw => OptimizerConfig::AdamW {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay.unwrap_or(0.01),
            },
        };
        let schedule = match self.schedule {
            Schedule::Cosine => LrSchedule::Cosine { warmup_epochs: self.warmup_epochs, min_lr: 0.0 },
            Schedule::Step => LrSchedule::Step { step_size: self.step_size, gamma: self.gamma },
            Schedule::Constant => LrSchedule::Constant,
        };
        crate::nn::TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            optimizer,
            schedule,
            clip_grad_norm: self.clip_grad_norm,
            validation_split: self.validation_split,
            early_stopping_patience: self.patience,
            restore_best: true,
        }
    }
}

/// A fine-tuning block (`quantize` and `prune`): a dataset, a split, and training settings
/// whose defaults the kind chooses (quantize: 3 epochs at lr 1e-4; prune: as `train`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FinetuneSettings {
    pub dataset_id: String,
    /// Split to train on (default `train` when present, else `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    #[serde(flatten)]
    pub settings: TrainSettings,
}

impl FinetuneSettings {
    /// Parses `params.finetune` (`field`), filling absent settings from `defaults`.
    pub fn parse(field: &str, v: &Value, defaults: &[(&str, Value)]) -> Result<FinetuneSettings, DomainError> {
        if !v.is_object() {
            return Err(DomainError::validation(field, "must be a JSON object with at least dataset_id"));
        }
        let (head, mut rest) = split_keys(v, &["dataset_id", "split"]);
        let dataset_id = match head.get("dataset_id") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(DomainError::validation(format!("{field}.dataset_id"), "must be a string")),
            None => return Err(DomainError::validation(format!("{field}.dataset_id"), "required")),
        };
        let split = match head.get("split") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(DomainError::validation(format!("{field}.split"), "must be a string")),
        };
        check_split(&format!("{field}.split"), split.as_deref())?;
        if let Some(o) = rest.as_object_mut() {
            for (k, d) in defaults {
                o.entry(k.to_string()).or_insert(d.clone());
            }
        }
        let settings = TrainSettings::parse(field, rest)?;
        Ok(FinetuneSettings { dataset_id, split, settings })
    }

    pub fn need(&self, field: &str) -> DataNeed {
        DataNeed::new(&self.dataset_id, &format!("{field}.dataset_id"), self.split.as_deref(), true)
    }
}

// ---------------------------------------------------------------------------------------------
// On the worker
// ---------------------------------------------------------------------------------------------

/// A dataset the dispatcher resolved for this job.
pub fn dataset<'a>(ctx: &'a JobContext, id: &str, field: &str) -> Result<&'a InputDataset, JobError> {
    ctx.datasets.get(id).ok_or_else(|| JobError::invalid(field, format!("dataset '{id}' is not available")))
}

/// Warm-up runs before every latency measurement.
pub const LATENCY_WARMUP: usize = 3;
/// Timed runs per batch size; the median is reported.
pub const LATENCY_RUNS: usize = 15;

/// Forward latency of a network, measured the same way for every report: [`LATENCY_WARMUP`]
/// warm-up passes, then the median of [`LATENCY_RUNS`] timed passes (outputs read back to the
/// host), at batch 1 and at the evaluation batch (the first rows of `x`, at most 64).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub batch_1_ms: f64,
    pub batch: usize,
    pub batch_ms: f64,
}

fn median_ms(net: &Network, x: &Tensor) -> Result<f64, JobError> {
    for _ in 0..LATENCY_WARMUP {
        net.forward(x)?;
    }
    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for _ in 0..LATENCY_RUNS {
        let t = Instant::now();
        net.forward(x)?.flatten_all()?.to_vec1::<f32>()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// See [`Latency`].
pub fn measure_latency(net: &Network, x: &Tensor) -> Result<Latency, JobError> {
    let rows = x.dim(0)?;
    if rows == 0 {
        return Err(JobError::input("no samples to measure latency on"));
    }
    let batch = rows.min(64);
    let batch_1_ms = median_ms(net, &x.narrow(0, 0, 1)?)?;
    let batch_ms = median_ms(net, &x.narrow(0, 0, batch)?)?;
    Ok(Latency { batch_1_ms, batch, batch_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scheme_request_builds_the_scheme_directly() {
        let r =
            SchemeRequest::parse(&json!({"scheme": "int8", "symmetric": false, "granularity": "per_tensor"})).unwrap();
        assert_eq!(r.scheme().unwrap(), "int8_asym_per_tensor".parse().unwrap());
        let r = SchemeRequest::parse(&json!({"scheme": "int4", "group_size": 128})).unwrap();
        assert_eq!(r.scheme().unwrap(), "int4_g128".parse().unwrap());
        let e = SchemeRequest::parse(&json!({"scheme": "int3"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.scheme"));
        let e = SchemeRequest::parse(&json!({"scheme": "int4", "group_size": 48})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.group_size"));
        let e = SchemeRequest::parse(&json!({"scheme": "int8", "granularity": "per_row"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.granularity"));
    }

    #[test]
    fn unknown_training_keys_are_refused() {
        let e = TrainSettings::parse("params.finetune", json!({"epochs": 2, "lr_typo": 1})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.finetune"));
        assert!(e.detail.contains("lr_typo"), "{}", e.detail);
    }

    #[test]
    fn warmup_must_be_below_epochs() {
        let e =
            TrainSettings::parse("params", json!({"epochs": 2, "schedule": "cosine", "warmup_epochs": 2})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.warmup_epochs"));
        TrainSettings::parse("params", json!({"epochs": 3, "schedule": "cosine", "warmup_epochs": 2})).unwrap();
    }

    #[test]
    fn finetune_defaults_are_the_kinds() {
        let f = FinetuneSettings::parse(
            "params.finetune",
            &json!({"dataset_id": "d"}),
            &[("epochs", json!(3)), ("lr", json!(1e-4))],
        )
        .unwrap();
        assert_eq!((f.settings.epochs, f.settings.lr), (3, 1e-4));
        let e = FinetuneSettings::parse("params.finetune", &json!({"split": "x", "dataset_id": "d"}), &[]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.finetune.split"));
        let e = FinetuneSettings::parse("params.finetune", &json!({}), &[]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.finetune.dataset_id"));
    }
}
