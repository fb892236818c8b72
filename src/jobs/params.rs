//! Job kinds and their parameters, validated before a job is queued so that a bad request is
//! a 422 naming the field, not a failed job later.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// The kinds of job this build knows.
pub const KINDS: &[&str] = &["quantize", "evaluate", "train", "prune", "distill", "sensitivity"];

/// Limits and switches that shape validation.
#[derive(Debug, Clone, Default)]
pub struct ParamRules {
    pub enable_test_jobs: bool,
}

/// Parameters of a job, by kind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum JobParams {
    Quantize(QuantizeParams),
    Evaluate(EvaluateParams),
    Train(TrainParams),
    Prune(super::prune::PruneParams),
    Distill(super::distill::DistillParams),
    Sensitivity(super::sensitivity::SensitivityParams),
    DebugSleep(SleepParams),
}

/// What a job needs from its model and dataset, checked before it is queued.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// The model must have an architecture spec.
    pub spec: bool,
    /// (dataset id, split, labels required) pairs the model must be able to consume.
    pub data: Vec<(String, Option<String>, bool)>,
}

impl JobParams {
    pub fn kind(&self) -> &'static str {
        match self {
            JobParams::Quantize(_) => "quantize",
            JobParams::Evaluate(_) => "evaluate",
            JobParams::Train(_) => "train",
            JobParams::Prune(_) => "prune",
            JobParams::Distill(_) => "distill",
            JobParams::Sensitivity(_) => "sensitivity",
            JobParams::DebugSleep(_) => "debug_sleep",
        }
    }

    /// Whether the job reads `model_id`.
    pub fn needs_model(&self) -> bool {
        !matches!(self, JobParams::DebugSleep(_))
    }

    /// Datasets the job reads (ids).
    pub fn dataset_ids(&self) -> Vec<String> {
        self.needs().data.into_iter().map(|(id, _, _)| id).collect()
    }

    /// What must hold of the model and datasets for this job to make sense.
    pub fn needs(&self) -> Needs {
        match self {
            JobParams::Evaluate(p) => Needs { spec: true, data: vec![(p.dataset_id.clone(), p.split.clone(), true)] },
            JobParams::Train(p) => Needs { spec: true, data: vec![(p.dataset_id.clone(), p.split.clone(), true)] },
            JobParams::Prune(p) => p.needs(),
            JobParams::Distill(p) => p.needs(),
            JobParams::Sensitivity(p) => p.needs(),
            JobParams::Quantize(p) => {
                let mut n = Needs::default();
                if let Some(d) = &p.eval_dataset_id {
                    n = Needs { spec: true, data: vec![(d.clone(), p.eval_split.clone(), true)] };
                }
                if let Some(f) = &p.finetune {
                    n.spec = true;
                    n.data.push((f.dataset_id.clone(), f.split.clone(), true));
                }
                n
            }
            JobParams::DebugSleep(_) => Needs::default(),
        }
    }

    /// Other models the job reads (ids), besides `model_id`.
    pub fn model_ids(&self) -> Vec<String> {
        match self {
            JobParams::Prune(p) => p.model_ids(),
            JobParams::Distill(p) => p.model_ids(),
            _ => Vec::new(),
        }
    }
}

fn typed<T: DeserializeOwned>(params: &Value) -> Result<T, ApiError> {
    let params = if params.is_null() { Value::Object(Default::default()) } else { params.clone() };
    serde_json::from_value(params).map_err(|e| ApiError::validation("params", e.to_string()))
}

/// Parses and checks `params` for `kind`.
pub fn parse(kind: &str, params: &Value, rules: &ParamRules) -> Result<JobParams, ApiError> {
    if !(params.is_object() || params.is_null()) {
        return Err(ApiError::validation("params", "must be a JSON object"));
    }
    match kind {
        "quantize" => {
            let p: QuantizeParams = typed(params)?;
            p.check()?;
            Ok(JobParams::Quantize(p))
        }
        "evaluate" => {
            let p: EvaluateParams = typed(params)?;
            check_batch(p.batch_size)?;
            check_split("params.split", p.split.as_deref())?;
            Ok(JobParams::Evaluate(p))
        }
        "train" => {
            let p = TrainParams::parse(params)?;
            p.check()?;
            Ok(JobParams::Train(p))
        }
        "prune" => Ok(JobParams::Prune(super::prune::PruneParams::parse(params)?)),
        "distill" => Ok(JobParams::Distill(super::distill::DistillParams::parse(params)?)),
        "sensitivity" => Ok(JobParams::Sensitivity(super::sensitivity::SensitivityParams::parse(params)?)),
        "debug_sleep" if rules.enable_test_jobs => {
            let p: SleepParams = typed(params)?;
            if p.steps > 100_000 || p.step_ms > 60_000 {
                return Err(ApiError::validation("params.steps", "steps ≤ 100000 and step_ms ≤ 60000"));
            }
            Ok(JobParams::DebugSleep(p))
        }
        other => {
            Err(ApiError::validation("kind", format!("unknown job kind '{other}'; supported: {}", KINDS.join(", "))))
        }
    }
}

/// `kind: "quantize"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// `f16`, `bf16`, `int8`, `int4`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k`, `q3_k`, `q4_k`,
    /// `q5_k`, `q6_k`, or a full label such as `int8_asym_per_tensor` / `int4_g128`.
    pub scheme: String,
    /// int8/int4: symmetric (default) or asymmetric with zero points.
    #[serde(default)]
    pub symmetric: Option<bool>,
    /// int8: `per_channel` (default, one scale per output row) or `per_tensor`.
    #[serde(default)]
    pub granularity: Option<String>,
    /// int4: weights per scale, 32 (default), 64, 128 or 256.
    #[serde(default)]
    pub group_size: Option<usize>,
    /// Only tensors whose name matches one of these globs (`*`, `?`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these tensors.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Per-tensor schemes by glob (`{"fc3.weight": "int8", "embeddings.*": "f16"}`); `float`
    /// keeps a tensor in its stored precision.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, String>,
    /// Integer schemes: tensors with fewer elements stay float (default 1024).
    #[serde(default = "d_min_elements")]
    pub min_elements: usize,
    /// Measure accuracy of the stored artifact against the float model on this dataset.
    #[serde(default)]
    pub eval_dataset_id: Option<String>,
    /// Split for the accuracy check (default `test`).
    #[serde(default)]
    pub eval_split: Option<String>,
    /// Quantization-aware fine-tuning before the final quantization: trains with the selected
    /// weights fake-quantized in the forward pass (straight-through estimator).
    #[serde(default)]
    pub finetune: Option<FinetuneSettings>,
}

/// `finetune` block of quantize: a dataset plus training settings (defaults as `train`, but
/// 3 epochs and lr 1e-4).
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSettings {
    pub dataset_id: String,
    pub split: Option<String>,
    pub settings: TrainSettings,
}

impl<'de> Deserialize<'de> for FinetuneSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let (head, mut rest) = split_keys(&v, &["dataset_id", "split"]);
        let dataset_id = head
            .get("dataset_id")
            .and_then(|x| x.as_str())
            .ok_or_else(|| serde::de::Error::custom("finetune.dataset_id is required"))?
            .to_string();
        let split = head.get("split").and_then(|x| x.as_str()).map(str::to_string);
        if let Some(o) = rest.as_object_mut() {
            o.entry("epochs").or_insert(Value::from(3));
            o.entry("lr").or_insert(Value::from(1e-4));
        }
        let settings: TrainSettings = serde_json::from_value(rest).map_err(serde::de::Error::custom)?;
        Ok(FinetuneSettings { dataset_id, split, settings })
    }
}

fn d_min_elements() -> usize {
    1024
}

impl QuantizeParams {
    /// The full scheme label the request asks for.
    pub fn label(&self) -> String {
        let asym = self.symmetric == Some(false);
        match self.scheme.to_ascii_lowercase().as_str() {
            "int8" => {
                let mut s = String::from("int8");
                if asym {
                    s.push_str("_asym");
                }
                if self.granularity.as_deref() == Some("per_tensor") {
                    s.push_str("_per_tensor");
                }
                s
            }
            "int4" => format!("int4{}_g{}", if asym { "_asym" } else { "" }, self.group_size.unwrap_or(32)),
            other => other.to_string(),
        }
    }

    pub fn scheme(&self) -> Result<crate::compress::quant::Scheme, ApiError> {
        self.label().parse().map_err(|e: crate::compress::quant::QuantError| {
            ApiError::validation(
                "params.scheme",
                format!(
                    "unknown scheme '{}' ({e}); supported: f16, bf16, int8, int4, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k",
                    self.scheme
                ),
            )
        })
    }

    fn check(&self) -> Result<(), ApiError> {
        if let Some(g) = &self.granularity {
            if !["per_channel", "per_tensor"].contains(&g.as_str()) {
                return Err(ApiError::validation("params.granularity", "per_channel or per_tensor"));
            }
        }
        if let Some(g) = self.group_size {
            if !crate::compress::quant::INT4_GROUP_SIZES.contains(&g) {
                return Err(ApiError::validation("params.group_size", "one of 32, 64, 128, 256"));
            }
        }
        self.scheme()?;
        for (glob, scheme) in &self.overrides {
            if scheme != "float" {
                scheme.parse::<crate::compress::quant::Scheme>().map_err(|e| {
                    ApiError::validation(format!("params.overrides.{glob}"), format!("unknown scheme '{scheme}': {e}"))
                })?;
            }
        }
        check_split("params.eval_split", self.eval_split.as_deref())
    }
}

/// `kind: "debug_sleep"` (test builds only): sleeps `steps` × `step_ms` with a check point
/// per step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    #[serde(default = "default_steps")]
    pub steps: u32,
    #[serde(default = "default_step_ms")]
    pub step_ms: u64,
    /// Panic at the first step (tests the panic boundary).
    #[serde(default)]
    pub panic: bool,
}

fn default_steps() -> u32 {
    10
}
fn default_step_ms() -> u64 {
    100
}

/// Upper bound on epochs of any training phase (train, quantize fine-tuning, distillation):
/// with `batch_size` ≥ 1 and the dataset bounded by `--max-upload-bytes`, it keeps one request
/// from holding a worker for days.
pub const MAX_EPOCHS: usize = 1_000;

fn check_batch(b: usize) -> Result<(), ApiError> {
    if !(1..=65_536).contains(&b) {
        return Err(ApiError::validation("params.batch_size", "must be between 1 and 65536"));
    }
    Ok(())
}

fn check_split(field: &str, split: Option<&str>) -> Result<(), ApiError> {
    match split {
        None | Some("train") | Some("test") | Some("all") => Ok(()),
        Some(other) => Err(ApiError::validation(field, format!("unknown split '{other}'; use train, test or all"))),
    }
}

fn default_eval_batch() -> usize {
    256
}

/// `kind: "evaluate"`: accuracy, loss, confusion matrix and speed on a labelled split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    pub dataset_id: String,
    /// `test` (default when the dataset has it), `train` or `all`.
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

/// Training hyper-parameters shared by `train` and the fine-tuning phases of other kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// `adamw` (default) or `sgd`.
    #[serde(default = "d_opt")]
    pub optimizer: String,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// SGD momentum (default 0.9).
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// `constant` (default), `cosine` or `step`.
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// `step` schedule: epochs between decays and the factor.
    #[serde(default = "d_step_size")]
    pub step_size: usize,
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// `cosine` schedule: warm-up epochs.
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
fn d_opt() -> String {
    "adamw".into()
}
fn d_lr() -> f64 {
    1e-3
}
fn d_momentum() -> f64 {
    0.9
}
fn d_schedule() -> String {
    "constant".into()
}
fn d_step_size() -> usize {
    10
}
fn d_gamma() -> f64 {
    0.1
}

impl TrainSettings {
    pub fn check(&self, prefix: &str) -> Result<(), ApiError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(ApiError::validation(f("epochs"), format!("must be between 1 and {MAX_EPOCHS}")));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(ApiError::validation(f("batch_size"), "must be between 1 and 65536"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return Err(ApiError::validation(f("lr"), "must be in (0, 10]"));
        }
        if !["adamw", "sgd"].contains(&self.optimizer.as_str()) {
            return Err(ApiError::validation(f("optimizer"), "adamw or sgd"));
        }
        if !["constant", "cosine", "step"].contains(&self.schedule.as_str()) {
            return Err(ApiError::validation(f("schedule"), "constant, cosine or step"));
        }
        if !(0.0..=0.9).contains(&self.validation_split) {
            return Err(ApiError::validation(f("validation_split"), "must be in [0, 0.9]"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(ApiError::validation(f("momentum"), "must be in [0, 1)"));
        }
        if let Some(wd) = self.weight_decay {
            if !(0.0..=1.0).contains(&wd) {
                return Err(ApiError::validation(f("weight_decay"), "must be in [0, 1]"));
            }
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) || self.step_size == 0 {
            return Err(ApiError::validation(f("gamma"), "gamma in (0, 1] and step_size ≥ 1"));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(ApiError::validation(f("clip_grad_norm"), "must be positive"));
            }
        }
        if self.patience.is_some() && self.validation_split == 0.0 {
            return Err(ApiError::validation(f("patience"), "early stopping needs validation_split > 0"));
        }
        Ok(())
    }

    /// The engine's training configuration.
    pub fn to_config(&self) -> crate::nn::TrainConfig {
        use crate::nn::{LrSchedule, OptimizerConfig};
        let optimizer = match self.optimizer.as_str() {
            "sgd" => OptimizerConfig::Sgd {
                lr: self.lr,
                momentum: self.momentum,
                nesterov: false,
                weight_decay: self.weight_decay.unwrap_or(0.0),
            },
            _ => OptimizerConfig::AdamW {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay.unwrap_or(0.01),
            },
        };
        let schedule = match self.schedule.as_str() {
            "cosine" => LrSchedule::Cosine { warmup_epochs: self.warmup_epochs, min_lr: 0.0 },
            "step" => LrSchedule::Step { step_size: self.step_size, gamma: self.gamma },
            _ => LrSchedule::Constant,
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

/// `kind: "train"`: trains the model's weights (or a fresh init) on a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct TrainParams {
    pub dataset_id: String,
    /// Split to train on: `train` (default when present) or `all`.
    #[serde(default)]
    pub split: Option<String>,
    /// `weights` (start from the uploaded weights, default) or `random` (fresh init).
    #[serde(default = "d_init")]
    pub init: String,
    #[serde(flatten)]
    pub settings: TrainSettings,
}

fn d_init() -> String {
    "weights".into()
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainHead {
    dataset_id: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default = "d_init")]
    init: String,
}

impl TrainParams {
    pub fn parse(params: &Value) -> Result<TrainParams, ApiError> {
        let (head, rest) = split_keys(params, &["dataset_id", "split", "init"]);
        let head: TrainHead = typed(&Value::Object(head))?;
        let settings: TrainSettings = typed(&rest)?;
        Ok(TrainParams { dataset_id: head.dataset_id, split: head.split, init: head.init, settings })
    }

    fn check(&self) -> Result<(), ApiError> {
        check_split("params.split", self.split.as_deref())?;
        if !["weights", "random"].contains(&self.init.as_str()) {
            return Err(ApiError::validation("params.init", "weights or random"));
        }
        self.settings.check("params")
    }
}
