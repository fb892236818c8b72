//! The training loop: a differentiable graph built from a [`ModelSpec`], own optimizers (AdamW,
//! SGD with momentum/Nesterov) whose state can be checkpointed, learning-rate schedules, gradient
//! clipping, a seeded validation split with early stopping, and [`TrainHooks`] through which
//! distillation, pruning and quantization-aware training plug in without changing the loop.
//!
//! Runs synchronously on a job worker thread; candle parallelises the kernels on its own pool.
//!
//! Determinism: every random number comes from a `StdRng` seeded from `(seed, purpose, epoch)`
//! (initialisation, validation split, each epoch's shuffle, each epoch's dropout masks), and all
//! parameter iteration uses ordered maps. A run resumed from the checkpoint taken after epoch k
//! therefore retraces the uninterrupted run exactly.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::Split;
use super::eval::log_probs;
use super::model::layer_norm;
use super::ops;
use super::spec::{layer_prefix, Layer, ModelSpec, OutputKind, ParamKind, Slot, TensorMeta};
use super::NnError;

/// Optimizer and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay (PyTorch `AdamW`).
    AdamW {
        /// Base learning rate.
        lr: f64,
        /// First-moment decay.
        #[serde(default = "beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "beta2")]
        beta2: f64,
        /// Denominator epsilon.
        #[serde(default = "adam_eps")]
        eps: f64,
        /// Decoupled weight decay (applied to every trainable tensor).
        #[serde(default = "adamw_wd")]
        weight_decay: f64,
    },
    /// SGD with optional momentum and Nesterov (PyTorch `SGD`, dampening 0).
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum factor (0 = plain SGD).
        #[serde(default)]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn adamw_wd() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::AdamW { lr, .. } | Self::Sgd { lr, .. } => *lr,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::AdamW { .. } => "adamw",
            Self::Sgd { .. } => "sgd",
        }
    }
}

/// Learning-rate schedule, evaluated at every optimizer step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up over `warmup_epochs`, then cosine decay to `min_lr` at the last step.
    Cosine {
        /// Epochs of linear warm-up (0 = none).
        #[serde(default)]
        warmup_epochs: usize,
        /// Final learning rate.
        #[serde(default)]
        min_lr: f64,
    },
    /// Multiply by `gamma` every `step_size` epochs.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
}

impl LrSchedule {
    /// Learning rate at optimizer step `step` (0-based) of `total_steps`, in epoch `epoch`
    /// (0-based) with `steps_per_epoch` steps each.
    pub fn lr_at(&self, base: f64, epoch: usize, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
        match self {
            Self::Constant => base,
            Self::Step { step_size, gamma } => base * gamma.powi((epoch / (*step_size).max(1)) as i32),
            Self::Cosine { warmup_epochs, min_lr } => {
                let warm = warmup_epochs * steps_per_epoch;
                if step < warm {
                    return base * (step + 1) as f64 / warm as f64;
                }
                let span = total_steps.saturating_sub(warm).max(1);
                let progress = ((step - warm) as f64 / span as f64).min(1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs to run (a resumed run continues up to this total).
    pub epochs: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Seed of every random choice (init, split, shuffles, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Clip gradients to this global L2 norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Fraction of the training samples held out for validation (seeded), in [0, 0.9].
    #[serde(default)]
    pub validation_split: f64,
    /// Stop after this many epochs without a better validation accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<usize>,
    /// With validation: return the weights of the best validation epoch (default true).
    #[serde(default = "yes")]
    pub restore_best: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            seed: 0,
            optimizer: OptimizerConfig::AdamW {
                lr: 1e-3,
                beta1: beta1(),
                beta2: beta2(),
                eps: adam_eps(),
                weight_decay: adamw_wd(),
            },
            schedule: LrSchedule::Constant,
            clip_grad_norm: None,
            validation_split: 0.0,
            early_stopping_patience: None,
            restore_best: true,
        }
    }
}

impl TrainConfig {
    /// Refuses a configuration the training loop cannot run (also used at job submission).
    pub fn validate(&self) -> Result<(), NnError> {
        let bad = |m: String| Err(NnError::Train(m));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad(format!("epochs must be 1 to 100000, got {}", self.epochs));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return bad(format!("batch_size must be 1 to 1048576, got {}", self.batch_size));
        }
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("learning rate must be positive, got {lr}"));
        }
        match &self.optimizer {
            OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                if !(0.0..1.0).contains(beta1) || !(0.0..1.0).contains(beta2) {
                    return bad("beta1 and beta2 must be in [0, 1)".into());
                }
                if !(eps.is_finite() && *eps > 0.0 && weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return bad("eps must be positive and weight_decay non-negative".into());
                }
            }
            OptimizerConfig::Sgd { momentum, weight_decay, nesterov, .. } => {
                if !((0.0..1.0).contains(momentum) && weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return bad("momentum must be in [0, 1) and weight_decay non-negative".into());
                }
                if *nesterov && *momentum == 0.0 {
                    return bad("nesterov needs a positive momentum".into());
                }
            }
        }
        match &self.schedule {
            LrSchedule::Constant => {}
            LrSchedule::Cosine { warmup_epochs, min_lr } => {
                if *warmup_epochs >= self.epochs {
                    return bad("warmup_epochs must be smaller than epochs".into());
                }
                if !(min_lr.is_finite() && *min_lr >= 0.0 && *min_lr <= lr) {
                    return bad("min_lr must be in [0, lr]".into());
                }
            }
            LrSchedule::Step { step_size, gamma } => {
                if *step_size == 0 || !(gamma.is_finite() && *gamma > 0.0) {
                    return bad("step schedule needs step_size >= 1 and gamma > 0".into());
                }
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("clip_grad_norm must be positive".into());
            }
        }
        if !(0.0..=0.9).contains(&self.validation_split) {
            return bad("validation_split must be in [0, 0.9]".into());
        }
        Ok(())
    }
}

/// Trainable tensors (as candle `Var`s, updated in place) and batch-norm buffers, by state_dict
/// name, in name order.
#[derive(Debug)]
pub struct ParamStore {
    trainable: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
}

impl ParamStore {
    /// A trainable tensor.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.trainable.get(name)
    }

    /// A buffer (batch-norm running stats).
    pub fn buffer(&self, name: &str) -> Option<&Var> {
        self.buffers.get(name)
    }

    /// Trainable tensors in name order.
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.trainable.iter()
    }

    /// Buffers in name order.
    pub fn buffers(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.buffers.iter()
    }

    /// Deep copies of every tensor (trainable and buffers), detached from the graph.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>, NnError> {
        let mut out = HashMap::new();
        for (k, v) in self.trainable.iter().chain(&self.buffers) {
            out.insert(k.clone(), v.as_tensor().detach().copy()?);
        }
        Ok(out)
    }

    fn tensor(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.trainable
            .get(name)
            .or_else(|| self.buffers.get(name))
            .map(|v| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("parameter {name} is not in the store")))
    }
}

/// What the loss hook sees for one batch.
pub struct Batch<'a> {
    /// Network output `[B, classes]` (logits unless the spec's output kind says probabilities).
    pub logits: &'a Tensor,
    /// Indices of the batch's samples in the training split passed to [`train`].
    pub idx: &'a [usize],
    /// Labels `[B]` (U32), when the training split has them.
    pub labels: Option<&'a Tensor>,
    /// The preprocessed f32 inputs of the batch.
    pub inputs: &'a Tensor,
    /// Output kind of the spec.
    pub output_kind: OutputKind,
    /// 0-based epoch.
    pub epoch: usize,
}

impl Batch<'_> {
    /// Mean cross-entropy against the labels (errors when the split is unlabelled).
    pub fn cross_entropy(&self) -> Result<Tensor, NnError> {
        let labels = self.labels.ok_or_else(|| {
            NnError::Train("the training data has no labels; a loss hook must provide the loss".into())
        })?;
        cross_entropy(self.logits, labels, self.output_kind)
    }
}

/// Mean cross-entropy of a network output against U32 labels.
pub fn cross_entropy(out: &Tensor, labels: &Tensor, kind: OutputKind) -> Result<Tensor, NnError> {
    let lp = log_probs(out, kind)?;
    Ok(candle_nn::loss::nll(&lp, labels)?)
}

/// Extension points of the training loop. Every method has a default, so `struct NoHooks;
/// impl TrainHooks for NoHooks {}` trains with plain cross-entropy.
pub trait TrainHooks {
    /// The loss to minimise for one batch. Default: cross-entropy against the labels.
    fn loss(&mut self, batch: &Batch<'_>) -> Result<Tensor, NnError> {
        batch.cross_entropy()
    }

    /// Called after each optimizer step (`step` counts from 1), e.g. to re-apply pruning masks
    /// with `Var::set` so pruned weights stay exactly zero.
    fn after_step(&mut self, _params: &ParamStore, _step: usize) -> Result<(), NnError> {
        Ok(())
    }

    /// Transforms a trainable tensor before the forward pass uses it (called for every
    /// trainable tensor in training and validation; filter by name), e.g. fake quantization
    /// with a straight-through estimator: `w + (q(w) - w).detach()`. Default identity.
    fn transform_weight(&self, _name: &str, w: &Tensor) -> Result<Tensor, NnError> {
        Ok(w.clone())
    }

    /// Called after each epoch with its statistics.
    fn on_epoch(&mut self, _stats: &EpochStats) {}

    /// Whether to build a checkpoint after epoch `epoch` (1-based) and pass it to
    /// [`TrainHooks::on_checkpoint`]. Default: never (building one copies every tensor).
    fn wants_checkpoint(&self, _epoch: usize) -> bool {
        false
    }

    /// Receives the checkpoint requested by [`TrainHooks::wants_checkpoint`].
    fn on_checkpoint(&mut self, _state: &TrainState) -> Result<(), NnError> {
        Ok(())
    }

    /// Polled between batches; true stops training (job cancelled).
    fn should_stop(&self) -> bool {
        false
    }
}

/// Hooks that change nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// Statistics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy of the batches as seen during the epoch (None without labels).
    pub train_accuracy: Option<f64>,
    /// Validation cross-entropy (None without validation).
    pub val_loss: Option<f64>,
    /// Validation accuracy (None without validation).
    pub val_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (training and validation).
    pub elapsed_s: f64,
    /// Training samples per second of the epoch (validation excluded).
    pub samples_per_sec: f64,
    /// Optimizer steps taken so far.
    pub steps: usize,
}

/// Result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Trained weights and batch-norm running stats, f32, state_dict names.
    pub params: HashMap<String, Tensor>,
    /// Per-epoch statistics (including epochs before a resume).
    pub curve: Vec<EpochStats>,
    /// 1-based epoch whose weights are returned.
    pub best_epoch: usize,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// [`TrainHooks::should_stop`] ended the run.
    pub cancelled: bool,
}

/// How to initialise the parameters.
#[derive(Debug, Clone)]
pub enum Init {
    /// PyTorch defaults, seeded from the config seed: kaiming-uniform (a = √5) weights, uniform
    /// biases in ±1/√fan_in, norm weights 1 and biases 0, running mean 0 and variance 1.
    Random,
    /// Start from these tensors (every tensor of the spec must be present).
    Params(HashMap<String, Tensor>),
    /// Continue a checkpointed run.
    Resume(Box<TrainState>),
}

/// Weights of the best validation epoch.
#[derive(Debug, Clone)]
pub struct BestSnapshot {
    /// 1-based epoch.
    pub epoch: usize,
    /// Validation accuracy.
    pub score: f64,
    /// All tensors at that epoch.
    pub params: HashMap<String, Tensor>,
}

/// Optimizer state as named tensors plus a step counter.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    /// `adamw` or `sgd`.
    pub kind: String,
    /// Steps taken.
    pub step: u64,
    /// `m.<param>` / `v.<param>` (AdamW) or `momentum.<param>` (SGD).
    pub tensors: HashMap<String, Tensor>,
}

/// Everything needed to continue training exactly where it stopped (taken after an epoch).
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Seed of the run (a resume must use the same one).
    pub seed: u64,
    /// Current tensors (trainable and buffers).
    pub params: HashMap<String, Tensor>,
    /// Optimizer moments and step.
    pub optimizer: OptimizerState,
    /// Best validation snapshot so far.
    pub best: Option<BestSnapshot>,
    /// Epochs since the last validation improvement.
    pub epochs_without_improvement: usize,
    /// Statistics so far.
    pub curve: Vec<EpochStats>,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    format: String,
    epochs_done: usize,
    seed: u64,
    optimizer: String,
    optimizer_step: u64,
    best_epoch: Option<usize>,
    best_score: Option<f64>,
    epochs_without_improvement: usize,
    curve: Vec<EpochStats>,
}

const STATE_FORMAT: &str = "modelpress.train_state.v1";

impl TrainState {
    /// The tensors of the checkpoint: `param/<name>`, `opt/<name>`, `best/<name>`.
    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, v) in &self.params {
            out.insert(format!("param/{k}"), v.clone());
        }
        for (k, v) in &self.optimizer.tensors {
            out.insert(format!("opt/{k}"), v.clone());
        }
        if let Some(b) = &self.best {
            for (k, v) in &b.params {
                out.insert(format!("best/{k}"), v.clone());
            }
        }
        out
    }

    /// Everything else, as JSON (store it next to the tensors, e.g. as safetensors metadata).
    pub fn meta_json(&self) -> serde_json::Value {
        let meta = StateMeta {
            format: STATE_FORMAT.into(),
            epochs_done: self.epochs_done,
            seed: self.seed,
            optimizer: self.optimizer.kind.clone(),
            optimizer_step: self.optimizer.step,
            best_epoch: self.best.as_ref().map(|b| b.epoch),
            best_score: self.best.as_ref().map(|b| b.score),
            epochs_without_improvement: self.epochs_without_improvement,
            curve: self.curve.clone(),
        };
        serde_json::to_value(meta).expect("plain data serialises")
    }

    /// Rebuilds a state from [`TrainState::to_tensors`] and [`TrainState::meta_json`].
    pub fn from_parts(tensors: HashMap<String, Tensor>, meta: &serde_json::Value) -> Result<TrainState, NnError> {
        let meta: StateMeta = serde_json::from_value(meta.clone())
            .map_err(|e| NnError::Checkpoint(format!("invalid checkpoint metadata: {e}")))?;
        if meta.format != STATE_FORMAT {
            return Err(NnError::Checkpoint(format!("unknown checkpoint format {}", meta.format)));
        }
        let (mut params, mut opt, mut best) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("param/") {
                params.insert(n.to_string(), v);
            } else if let Some(n) = k.strip_prefix("opt/") {
                opt.insert(n.to_string(), v);
            } else if let Some(n) = k.strip_prefix("best/") {
                best.insert(n.to_string(), v);
            } else {
                return Err(NnError::Checkpoint(format!("unexpected tensor {k} in checkpoint")));
            }
        }
        let best = match (meta.best_epoch, meta.best_score) {
            (Some(epoch), Some(score)) => Some(BestSnapshot { epoch, score, params: best }),
            _ => None,
        };
        Ok(TrainState {
            epochs_done: meta.epochs_done,
            seed: meta.seed,
            params,
            optimizer: OptimizerState { kind: meta.optimizer, step: meta.optimizer_step, tensors: opt },
            best,
            epochs_without_improvement: meta.epochs_without_improvement,
            curve: meta.curve,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness

const STREAM_INIT: u64 = 1;
const STREAM_SPLIT: u64 = 2;
const STREAM_SHUFFLE: u64 = 3;
const STREAM_DROPOUT: u64 = 4;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, stream: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix(splitmix(splitmix(seed) ^ stream) ^ epoch))
}

fn shuffle(v: &mut [usize], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// PyTorch-default initial tensors for `spec`, seeded.
pub fn init_params(spec: &ModelSpec, seed: u64) -> Result<HashMap<String, Tensor>, NnError> {
    let mut rng = rng_for(seed, STREAM_INIT, 0);
    let infos = spec.params();
    let fan_in: HashMap<&str, usize> = infos
        .iter()
        .filter(|p| p.kind == ParamKind::Weight && matches!(p.layer_type.as_str(), "linear" | "conv2d"))
        .map(|p| (p.layer.as_str(), p.shape[1..].iter().product()))
        .collect();
    let mut out = HashMap::new();
    for p in &infos {
        let n = p.numel();
        let values: Vec<f32> = match (p.layer_type.as_str(), p.kind) {
            ("linear" | "conv2d", ParamKind::Weight | ParamKind::Bias) => {
                let fan = fan_in.get(p.layer.as_str()).copied().unwrap_or(1).max(1);
                let bound = 1.0 / (fan as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            }
            (_, ParamKind::Weight) | (_, ParamKind::RunningVar) => vec![1.0; n],
            (_, ParamKind::Bias) | (_, ParamKind::RunningMean) => vec![0.0; n],
        };
        out.insert(p.name.clone(), Tensor::from_vec(values, p.shape.as_slice(), &Device::Cpu)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Differentiable graph

enum TNode {
    Linear { w: String, b: Option<String> },
    Conv { w: String, b: Option<String>, stride: usize, padding: (usize, usize), dilation: usize, groups: usize },
    BatchNorm { affine: Option<(String, String)>, mean: String, var: String, eps: f64, momentum: f64 },
    LayerNorm { dims: usize, eps: f64, affine: Option<(String, String)> },
    Stateless(Layer),
    Softmax(usize),
    GlobalAvgPool,
    Reshape(Vec<usize>),
    Dropout(f64),
    Residual { body: Vec<TNode>, shortcut: Option<Vec<TNode>> },
    Seq(Vec<TNode>),
}

fn build_graph(layers: &[Layer], parent: &str, slot: Slot, shape: &[usize]) -> Result<Vec<TNode>, NnError> {
    let mut shape = shape.to_vec();
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let p = layer_prefix(parent, slot, i, layer.name());
        let n = |s: &str| format!("{p}.{s}");
        let node = match layer {
            Layer::Linear(l) => TNode::Linear { w: n("weight"), b: l.bias.then(|| n("bias")) },
            Layer::Conv2d(c) => TNode::Conv {
                w: n("weight"),
                b: c.bias.then(|| n("bias")),
                stride: c.stride,
                padding: (c.padding.0, c.padding.1),
                dilation: c.dilation,
                groups: c.groups,
            },
            Layer::BatchNorm(b) => TNode::BatchNorm {
                affine: b.affine.then(|| (n("weight"), n("bias"))),
                mean: n("running_mean"),
                var: n("running_var"),
                eps: b.eps,
                momentum: b.momentum,
            },
            Layer::LayerNorm(l) => TNode::LayerNorm {
                dims: l.normalized_shape.len(),
                eps: l.eps,
                affine: l.elementwise_affine.then(|| (n("weight"), n("bias"))),
            },
            Layer::Relu(_)
            | Layer::Relu6(_)
            | Layer::Gelu(_)
            | Layer::Sigmoid(_)
            | Layer::Tanh(_)
            | Layer::MaxPool2d(_)
            | Layer::AvgPool2d(_) => TNode::Stateless(layer.clone()),
            Layer::Softmax(s) => {
                TNode::Softmax(super::spec::resolve_dim(s.dim, shape.len()).map_err(NnError::Train)? + 1)
            }
            Layer::GlobalAvgPool(_) => TNode::GlobalAvgPool,
            Layer::Flatten(_) => TNode::Reshape(vec![shape.iter().product()]),
            Layer::Dropout(d) => TNode::Dropout(d.p),
            Layer::Reshape(r) => TNode::Reshape(super::spec::reshape_target(&r.shape, &shape).map_err(NnError::Train)?),
            Layer::Residual(r) => TNode::Residual {
                body: build_graph(&r.body, &p, Slot::Body, &shape)?,
                shortcut: match &r.shortcut {
                    Some(s) => Some(build_graph(s, &p, Slot::Shortcut, &shape)?),
                    None => None,
                },
            },
            Layer::Sequential(s) => TNode::Seq(build_graph(&s.layers, &p, Slot::Seq, &shape)?),
        };
        shape = super::spec::layer_output_shape(layer, &shape).map_err(NnError::Train)?;
        out.push(node);
    }
    Ok(out)
}

/// Per-forward context: where weights come from and whether we are training.
struct Ctx<'a> {
    store: &'a ParamStore,
    hooks: &'a dyn TrainHooks,
    /// Some(rng) in training mode (dropout masks, batch statistics); None in eval mode.
    rng: Option<&'a mut StdRng>,
}

impl Ctx<'_> {
    fn training(&self) -> bool {
        self.rng.is_some()
    }

    /// A trainable tensor after the hook's transform; detached in eval mode.
    fn weight(&self, name: &str) -> Result<Tensor, NnError> {
        let t = self.store.tensor(name)?;
        let t = if self.training() { t.clone() } else { t.detach() };
        self.hooks.transform_weight(name, &t)
    }
}

fn forward(nodes: &[TNode], x: &Tensor, ctx: &mut Ctx<'_>) -> Result<Tensor, NnError> {
    let mut x = x.clone();
    for node in nodes {
        x = forward_node(node, &x, ctx)?;
    }
    Ok(x)
}

fn forward_node(node: &TNode, x: &Tensor, ctx: &mut Ctx<'_>) -> Result<Tensor, NnError> {
    Ok(match node {
        TNode::Linear { w, b } => {
            let w = ctx.weight(w)?;
            let dims = x.dims().to_vec();
            let x2 = if dims.len() == 2 { x.clone() } else { x.reshape(((), dims[dims.len() - 1]))? };
            let mut y = x2.matmul(&w.t()?)?;
            if let Some(b) = b {
                y = y.broadcast_add(&ctx.weight(b)?)?;
            }
            if dims.len() == 2 {
                y
            } else {
                let mut od = dims;
                *od.last_mut().expect("rank >= 2") = w.dim(0)?;
                y.reshape(od)?
            }
        }
        TNode::Conv { w, b, stride, padding, dilation, groups } => {
            let w = ctx.weight(w)?;
            let y = ops::conv2d(x, &w, *padding, *stride, *dilation, *groups)?;
            match b {
                Some(b) => {
                    let b = ctx.weight(b)?;
                    let c = b.dim(0)?;
                    y.broadcast_add(&b.reshape((c, 1, 1))?)?
                }
                None => y,
            }
        }
        TNode::BatchNorm { affine, mean, var, eps, momentum } => {
            batch_norm(x, affine.as_ref(), mean, var, *eps, *momentum, ctx)?
        }
        TNode::LayerNorm { dims, eps, affine } => {
            let affine = match affine {
                Some((w, b)) => Some((ctx.weight(w)?, ctx.weight(b)?)),
                None => None,
            };
            layer_norm(x, *dims, *eps, affine.as_ref())?
        }
        TNode::Stateless(layer) => match layer {
            Layer::MaxPool2d(p) => ops::pool2d(x, p, true, ctx.training())?,
            Layer::AvgPool2d(p) => ops::pool2d(x, p, false, ctx.training())?,
            other => ops::activation(other, x).expect("only activations and pools are Stateless")?,
        },
        TNode::Softmax(d) => candle_nn::ops::softmax(x, *d)?,
        TNode::GlobalAvgPool => ops::global_avg_pool(x)?,
        TNode::Reshape(shape) => {
            let mut dims = vec![x.dim(0)?];
            dims.extend_from_slice(shape);
            x.reshape(dims)?
        }
        TNode::Dropout(p) => match ctx.rng.as_deref_mut() {
            Some(rng) if *p > 0.0 => {
                let keep = 1.0 - *p;
                let scale = (1.0 / keep) as f32;
                let mask: Vec<f32> =
                    (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
                let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
                (x * mask)?
            }
            _ => x.clone(),
        },
        TNode::Residual { body, shortcut } => {
            let b = forward(body, x, ctx)?;
            let s = match shortcut {
                Some(s) => forward(s, x, ctx)?,
                None => x.clone(),
            };
            (b + s)?
        }
        TNode::Seq(nodes) => forward(nodes, x, ctx)?,
    })
}

/// Batch norm over dim 1 of `[N, C, ...]`. Training: batch statistics, and the running stats
/// are updated like PyTorch (`(1 - m) * running + m * batch`, unbiased batch variance).
fn batch_norm(
    x: &Tensor,
    affine: Option<&(String, String)>,
    mean_name: &str,
    var_name: &str,
    eps: f64,
    momentum: f64,
    ctx: &mut Ctx<'_>,
) -> Result<Tensor, NnError> {
    let dims = x.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let l: usize = dims[2..].iter().product();
    let x3 = x.reshape((n, c, l))?;
    let (mean, var) = if ctx.training() {
        let count = (n * l) as f64;
        let mean = x3.sum_keepdim(2)?.sum_keepdim(0)?.affine(1.0 / count, 0.0)?;
        let centered = x3.broadcast_sub(&mean)?;
        let var = centered.sqr()?.sum_keepdim(2)?.sum_keepdim(0)?.affine(1.0 / count, 0.0)?;
        let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
        let rm = ctx.store.buffers.get(mean_name).ok_or_else(|| missing(mean_name))?;
        let rv = ctx.store.buffers.get(var_name).ok_or_else(|| missing(var_name))?;
        let new_m = ((rm.as_tensor() * (1.0 - momentum))? + (mean.detach().flatten_all()? * momentum)?)?;
        let new_v = ((rv.as_tensor() * (1.0 - momentum))? + (var.detach().flatten_all()? * (momentum * unbiased))?)?;
        rm.set(&new_m)?;
        rv.set(&new_v)?;
        (mean, var)
    } else {
        let rm = ctx.store.tensor(mean_name)?.detach().reshape((1, c, 1))?;
        let rv = ctx.store.tensor(var_name)?.detach().reshape((1, c, 1))?;
        (rm, rv)
    };
    let mut y = x3.broadcast_sub(&mean)?.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some((w, b)) = affine {
        let w = ctx.weight(w)?.reshape((1, c, 1))?;
        let b = ctx.weight(b)?.reshape((1, c, 1))?;
        y = y.broadcast_mul(&w)?.broadcast_add(&b)?;
    }
    Ok(y.reshape(dims)?)
}

fn missing(name: &str) -> NnError {
    NnError::Train(format!("buffer {name} is not in the store"))
}

// ---------------------------------------------------------------------------------------------
// Optimizers

struct Optimizer {
    cfg: OptimizerConfig,
    step: u64,
    /// AdamW: `m.<name>` and `v.<name>`; SGD: `momentum.<name>`.
    state: BTreeMap<String, Tensor>,
}

impl Optimizer {
    fn new(cfg: OptimizerConfig) -> Self {
        Optimizer { cfg, step: 0, state: BTreeMap::new() }
    }

    fn export(&self) -> Result<OptimizerState, NnError> {
        let mut tensors = HashMap::new();
        for (k, v) in &self.state {
            tensors.insert(k.clone(), v.copy()?);
        }
        Ok(OptimizerState { kind: self.cfg.kind().into(), step: self.step, tensors })
    }

    fn import(&mut self, s: &OptimizerState, store: &ParamStore) -> Result<(), NnError> {
        if s.kind != self.cfg.kind() {
            return Err(NnError::Checkpoint(format!(
                "checkpoint optimizer is {} but the config asks for {}",
                s.kind,
                self.cfg.kind()
            )));
        }
        self.step = s.step;
        self.state.clear();
        for (k, v) in &s.tensors {
            let param = k.split_once('.').map(|(_, p)| p).unwrap_or("");
            let target = store
                .get(param)
                .ok_or_else(|| NnError::Checkpoint(format!("optimizer state {k} names no trainable tensor")))?;
            if target.dims() != v.dims() {
                return Err(NnError::Checkpoint(format!("optimizer state {k} has the wrong shape {:?}", v.dims())));
            }
            self.state.insert(k.clone(), v.to_dtype(DType::F32)?);
        }
        Ok(())
    }

    /// One update of every trainable tensor that has a gradient, like PyTorch.
    fn apply(&mut self, store: &ParamStore, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<(), NnError> {
        self.step += 1;
        let t = self.step as i32;
        for (name, var) in store.trainable() {
            let Some(g) = grads.get(name) else { continue };
            let p = var.as_tensor().detach();
            match self.cfg {
                OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                    let (mk, vk) = (format!("m.{name}"), format!("v.{name}"));
                    let m = match self.state.get(&mk) {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let v = match self.state.get(&vk) {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let denom = ((v.affine(1.0 / bc2, 0.0)?.sqrt()?) + eps)?;
                    let update = (m.affine(1.0 / bc1, 0.0)? / denom)?;
                    let decayed = p.affine(1.0 - lr * weight_decay, 0.0)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.state.insert(mk, m);
                    self.state.insert(vk, v);
                }
                OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                    let g = if weight_decay > 0.0 { (g + (&p * weight_decay)?)? } else { g.clone() };
                    let d = if momentum > 0.0 {
                        let key = format!("momentum.{name}");
                        let buf = match self.state.get(&key) {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let d = if nesterov { (&g + (&buf * momentum)?)? } else { buf.clone() };
                        self.state.insert(key, buf);
                        d
                    } else {
                        g
                    };
                    var.set(&(p - (d * lr)?)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The f32 variables training updates, split into trainable tensors and buffers (batch-norm
/// running statistics). `params` must already have passed `spec.check_weights`.
fn param_store(spec: &ModelSpec, params: &HashMap<String, Tensor>) -> Result<ParamStore, NnError> {
    let mut store = ParamStore { trainable: BTreeMap::new(), buffers: BTreeMap::new() };
    for p in spec.params() {
        let t = params[&p.name].to_dtype(DType::F32)?;
        let var = Var::from_tensor(&t.contiguous()?)?;
        if p.trainable {
            store.trainable.insert(p.name, var);
        } else {
            store.buffers.insert(p.name, var);
        }
    }
    Ok(store)
}

fn collect_grads(
    store: &ParamStore,
    grads: &GradStore,
    clip: Option<f64>,
) -> Result<BTreeMap<String, Tensor>, NnError> {
    let mut out = BTreeMap::new();
    for (name, var) in store.trainable() {
        if let Some(g) = grads.get(var.as_tensor()) {
            // candle leaves a variable's gradient attached to the graph it came from (e.g. the
            // batch-norm affine grads hold the step's activations). The optimizer's moment
            // tensors are built from these, so without the detach every step's graph stayed
            // reachable through them: a CNN with batch norm grew ~7 MB per step until training
            // ended (mnist-cnn: 0.9 GB per epoch).
            out.insert(name.clone(), g.detach());
        }
    }
    if let Some(max_norm) = clip {
        let mut sq = 0f64;
        for g in out.values() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        if norm > max_norm {
            let factor = max_norm / (norm + 1e-6);
            for g in out.values_mut() {
                *g = g.affine(factor, 0.0)?;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The loop

/// Trains `spec` on `data` (raw inputs as the spec declares; labels optional when a hook
/// provides the loss). Returns the trained tensors (f32, state_dict names, running stats
/// included), the learning curve and how the run ended.
pub fn train(
    spec: &ModelSpec,
    data: &Split,
    cfg: &TrainConfig,
    init: Init,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutcome, NnError> {
    spec.validate()?;
    cfg.validate()?;
    data.check_for(spec)?;
    let n = data.len();
    if n == 0 {
        return Err(NnError::Data("the training split is empty".into()));
    }

    // Parameters.
    let (start_params, resume) = match init {
        Init::Random => (init_params(spec, cfg.seed)?, None),
        Init::Params(p) => (p, None),
        Init::Resume(state) => {
            if state.seed != cfg.seed {
                return Err(NnError::Checkpoint(format!(
                    "checkpoint was taken with seed {} but the config has seed {}",
                    state.seed, cfg.seed
                )));
            }
            (state.params.clone(), Some(*state))
        }
    };
    let logical: BTreeMap<String, TensorMeta> = start_params
        .iter()
        .map(|(k, v)| {
            (k.clone(), TensorMeta { dtype: super::model::dtype_name(v.dtype()).into(), shape: v.dims().to_vec() })
        })
        .collect();
    spec.check_weights(&logical)?;
    let store = param_store(spec, &start_params)?;
    drop(start_params);
    let graph = build_graph(&spec.layers, "", Slot::Top, &spec.input.shape)?;

    // Data: preprocess once, split, keep labels as a tensor for index_select.
    let x_all = data.preprocessed(&spec.input)?;
    let y_all = data.labels_tensor()?;
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut rng_for(cfg.seed, STREAM_SPLIT, 0));
    let n_val = if data.y.is_some() { ((n as f64) * cfg.validation_split).round() as usize } else { 0 };
    if n_val >= n {
        return Err(NnError::Train("validation_split leaves no training samples".into()));
    }
    let mut val_idx = order[..n_val].to_vec();
    val_idx.sort_unstable();
    let mut train_idx = order[n_val..].to_vec();
    train_idx.sort_unstable();
    let val = if n_val > 0 {
        let idx = index_tensor(&val_idx)?;
        let y = y_all.as_ref().expect("validation only with labels").index_select(&idx, 0)?;
        Some((x_all.index_select(&idx, 0)?, y))
    } else {
        None
    };

    let mut opt = Optimizer::new(cfg.optimizer.clone());
    let mut curve = Vec::new();
    let mut best: Option<BestSnapshot> = None;
    let mut bad_epochs = 0usize;
    let mut first_epoch = 0usize;
    if let Some(state) = resume {
        opt.import(&state.optimizer, &store)?;
        curve = state.curve;
        best = state.best;
        bad_epochs = state.epochs_without_improvement;
        first_epoch = state.epochs_done;
    }

    let steps_per_epoch = train_idx.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let base_lr = cfg.optimizer.lr();
    let (mut stopped_early, mut cancelled) = (false, false);

    for epoch in first_epoch..cfg.epochs {
        let t0 = Instant::now();
        let mut perm = train_idx.clone();
        shuffle(&mut perm, &mut rng_for(cfg.seed, STREAM_SHUFFLE, epoch as u64));
        let mut drop_rng = rng_for(cfg.seed, STREAM_DROPOUT, epoch as u64);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0u64, 0usize);
        let mut lr = base_lr;
        for (b, chunk) in perm.chunks(cfg.batch_size).enumerate() {
            if hooks.should_stop() {
                cancelled = true;
                break;
            }
            let step = epoch * steps_per_epoch + b;
            lr = cfg.schedule.lr_at(base_lr, epoch, step, steps_per_epoch, total_steps);
            let idx = index_tensor(chunk)?;
            let xb = x_all.index_select(&idx, 0)?;
            let yb = match &y_all {
                Some(y) => Some(y.index_select(&idx, 0)?),
                None => None,
            };
            let logits = {
                let mut ctx = Ctx { store: &store, hooks: &*hooks, rng: Some(&mut drop_rng) };
                forward(&graph, &xb, &mut ctx)?
            };
            let loss = hooks.loss(&Batch {
                logits: &logits,
                idx: chunk,
                labels: yb.as_ref(),
                inputs: &xb,
                output_kind: spec.output.kind,
                epoch,
            })?;
            let loss_value = loss
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()
                .map_err(|_| NnError::Train(format!("the loss must be a scalar, got shape {:?}", loss.dims())))?;
            if !loss_value.is_finite() {
                return Err(NnError::Train(format!(
                    "loss became {loss_value} at epoch {} step {}; lower the learning rate",
                    epoch + 1,
                    b + 1
                )));
            }
            let grads = loss.backward()?;
            let grads = collect_grads(&store, &grads, cfg.clip_grad_norm)?;
            opt.apply(&store, &grads, lr)?;
            hooks.after_step(&store, opt.step as usize)?;
            loss_sum += loss_value as f64 * chunk.len() as f64;
            seen += chunk.len();
            if let Some(yb) = &yb {
                let pred = logits.detach().argmax(D::Minus1)?;
                correct += pred.eq(yb)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as u64;
            }
        }
        if cancelled {
            break;
        }
        let train_s = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match &val {
            Some((vx, vy)) => {
                let (l, a) = validate(&graph, &store, &*hooks, vx, vy, spec.output.kind, cfg.batch_size.max(256))?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: y_all.as_ref().map(|_| correct as f64 / seen.max(1) as f64),
            val_loss,
            val_accuracy,
            lr,
            elapsed_s: t0.elapsed().as_secs_f64(),
            samples_per_sec: seen as f64 / train_s.max(1e-12),
            steps: opt.step as usize,
        };
        if let Some(acc) = val_accuracy {
            if best.as_ref().is_none_or(|b| acc > b.score) {
                best = Some(BestSnapshot { epoch: epoch + 1, score: acc, params: store.snapshot()? });
                bad_epochs = 0;
            } else {
                bad_epochs += 1;
            }
        }
        hooks.on_epoch(&stats);
        curve.push(stats);
        if hooks.wants_checkpoint(epoch + 1) {
            let state = TrainState {
                epochs_done: epoch + 1,
                seed: cfg.seed,
                params: store.snapshot()?,
                optimizer: opt.export()?,
                best: best.clone(),
                epochs_without_improvement: bad_epochs,
                curve: curve.clone(),
            };
            hooks.on_checkpoint(&state)?;
        }
        if let Some(patience) = cfg.early_stopping_patience {
            if val.is_some() && bad_epochs >= patience && epoch + 1 < cfg.epochs {
                stopped_early = true;
                break;
            }
        }
    }

    let last_epoch = curve.last().map(|s| s.epoch).unwrap_or(0);
    let (params, best_epoch) = match best {
        Some(b) if cfg.restore_best => (b.params, b.epoch),
        _ => (store.snapshot()?, last_epoch),
    };
    Ok(TrainOutcome { params, curve, best_epoch, stopped_early, cancelled })
}

fn index_tensor(idx: &[usize]) -> Result<Tensor, NnError> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(v, idx.len(), &Device::Cpu)?)
}

/// Eval-mode loss and accuracy on preprocessed inputs (weights transformed by the hooks).
fn validate(
    graph: &[TNode],
    store: &ParamStore,
    hooks: &dyn TrainHooks,
    x: &Tensor,
    y: &Tensor,
    kind: OutputKind,
    batch_size: usize,
) -> Result<(f64, f64), NnError> {
    let n = x.dim(0)?;
    let (mut loss_sum, mut correct) = (0f64, 0f64);
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let xb = x.narrow(0, start, len)?;
        let yb = y.narrow(0, start, len)?;
        let mut ctx = Ctx { store, hooks, rng: None };
        let out = forward(graph, &xb, &mut ctx)?.detach();
        loss_sum += cross_entropy(&out, &yb, kind)?.to_scalar::<f32>()? as f64 * len as f64;
        correct += out.argmax(D::Minus1)?.eq(&yb)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as f64;
        start += len;
    }
    Ok((loss_sum / n as f64, correct / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::data::Dataset;
    use crate::nn::eval::evaluate;
    use crate::nn::model::tests::{digits_spec, FIXTURES};
    use crate::nn::model::Network;
    use crate::nn::spec::{ParamInfo, PoolSpec};

    fn digits() -> (Split, Split) {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        (ds.train.unwrap(), ds.test.unwrap())
    }

    fn spec(json: &str) -> ModelSpec {
        ModelSpec::from_json(json.as_bytes()).unwrap()
    }

    fn adamw(lr: f64) -> OptimizerConfig {
        OptimizerConfig::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }

    fn test_accuracy(spec: &ModelSpec, params: &HashMap<String, Tensor>, test: &Split) -> f64 {
        let net = Network::from_tensors(spec, params).unwrap();
        evaluate(&net, &test.x, test.y.as_ref().unwrap(), 256).unwrap().accuracy
    }

    fn assert_same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
        assert_eq!(a.len(), b.len());
        for (k, v) in a {
            let x = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(x == y, "{k} differs");
        }
    }

    const DROPOUT_MLP: &str = r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [64]},
        "output": {"classes": 10}, "layers": [
          {"type": "linear", "name": "fc1", "in_features": 64, "out_features": 64},
          {"type": "batch_norm", "name": "bn", "num_features": 64},
          {"type": "relu"}, {"type": "dropout", "p": 0.2},
          {"type": "linear", "name": "fc2", "in_features": 64, "out_features": 10}]}"#;

    #[test]
    fn mlp_from_random_init_reaches_96_percent() {
        let (train_split, test) = digits();
        let spec = digits_spec();
        let cfg = TrainConfig { epochs: 15, batch_size: 64, seed: 3, optimizer: adamw(1e-3), ..Default::default() };
        let t0 = Instant::now();
        let out = train(&spec, &train_split, &cfg, Init::Random, &mut NoHooks).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let acc = test_accuracy(&spec, &out.params, &test);
        assert!(acc >= 0.96, "test accuracy {acc}");
        assert_eq!(out.curve.len(), 15);
        assert!(out.curve[14].train_loss < out.curve[0].train_loss / 4.0);
        assert!(out.curve[14].train_accuracy.unwrap() > 0.97);
        assert_eq!(out.best_epoch, 15);
        assert!(!out.stopped_early && !out.cancelled);
        // Wall time depends on machine load; the bench measures throughput properly.
        eprintln!("digits MLP: 15 epochs in {secs:.2} s");
    }

    #[test]
    fn same_seed_gives_identical_weights() {
        let (train_split, _) = digits();
        let spec = spec(DROPOUT_MLP);
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 100,
            seed: 11,
            optimizer: adamw(2e-3),
            validation_split: 0.2,
            ..Default::default()
        };
        let a = train(&spec, &train_split, &cfg, Init::Random, &mut NoHooks).unwrap();
        let b = train(&spec, &train_split, &cfg, Init::Random, &mut NoHooks).unwrap();
        assert_same(&a.params, &b.params);
        assert_eq!(a.curve[2].val_accuracy, b.curve[2].val_accuracy);
        let c = train(&spec, &train_split, &TrainConfig { seed: 12, ..cfg }, Init::Random, &mut NoHooks).unwrap();
        assert!(a.params["fc1.weight"].to_vec2::<f32>().unwrap() != c.params["fc1.weight"].to_vec2::<f32>().unwrap());
    }

    /// Keeps the checkpoint of one epoch.
    struct Checkpointer {
        at: usize,
        state: Option<TrainState>,
    }
    impl TrainHooks for Checkpointer {
        fn wants_checkpoint(&self, epoch: usize) -> bool {
            epoch == self.at
        }
        fn on_checkpoint(&mut self, state: &TrainState) -> Result<(), NnError> {
            self.state = Some(state.clone());
            Ok(())
        }
    }

    #[test]
    fn resume_from_checkpoint_equals_uninterrupted_run() {
        let (train_split, _) = digits();
        let spec = spec(DROPOUT_MLP);
        let data = train_split.head(600).unwrap();
        for optimizer in
            [adamw(2e-3), OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 1e-4 }]
        {
            let cfg = TrainConfig {
                epochs: 4,
                batch_size: 64,
                seed: 5,
                optimizer,
                schedule: LrSchedule::Cosine { warmup_epochs: 1, min_lr: 1e-4 },
                clip_grad_norm: Some(1.0),
                validation_split: 0.25,
                ..Default::default()
            };
            let mut hooks = Checkpointer { at: 2, state: None };
            let full = train(&spec, &data, &cfg, Init::Random, &mut hooks).unwrap();
            let state = hooks.state.unwrap();
            assert_eq!(state.epochs_done, 2);
            // Through the serialisable form, as a job would store it.
            let restored = TrainState::from_parts(state.to_tensors(), &state.meta_json()).unwrap();
            let resumed = train(&spec, &data, &cfg, Init::Resume(Box::new(restored)), &mut NoHooks).unwrap();
            assert_same(&full.params, &resumed.params);
            assert_eq!(full.curve.len(), resumed.curve.len());
            assert_eq!(full.curve[3].val_loss, resumed.curve[3].val_loss);
            assert_eq!(full.best_epoch, resumed.best_epoch);

            let other_seed = TrainConfig { seed: 6, ..cfg.clone() };
            let state = TrainState::from_parts(state.to_tensors(), &state.meta_json()).unwrap();
            assert!(train(&spec, &data, &other_seed, Init::Resume(Box::new(state)), &mut NoHooks).is_err());
        }
    }

    /// Prunes half of fc1 and keeps it pruned.
    struct Mask {
        mask: Tensor,
        steps: usize,
    }
    impl TrainHooks for Mask {
        fn after_step(&mut self, params: &ParamStore, step: usize) -> Result<(), NnError> {
            let w = params.get("fc1.weight").unwrap();
            w.set(&(w.as_tensor() * &self.mask)?)?;
            self.steps = step;
            Ok(())
        }
    }

    #[test]
    fn after_step_keeps_pruned_weights_at_zero() {
        let (train_split, test) = digits();
        let spec = digits_spec();
        // Scattered over rows and columns (a column pattern would drop whole input pixels).
        let mask: Vec<f32> = (0..256 * 64).map(|i| (((i * 7919) % 13) % 2) as f32).collect();
        let pruned = mask.iter().filter(|m| **m == 0.0).count();
        let mask = Tensor::from_vec(mask, (256, 64), &Device::Cpu).unwrap();
        let mut hooks = Mask { mask: mask.clone(), steps: 0 };
        let cfg = TrainConfig { epochs: 10, batch_size: 64, optimizer: adamw(2e-3), ..Default::default() };
        let out = train(&spec, &train_split, &cfg, Init::Random, &mut hooks).unwrap();
        assert_eq!(hooks.steps, 10 * 1437usize.div_ceil(64));
        let w = out.params["fc1.weight"].to_vec2::<f32>().unwrap();
        let m = mask.to_vec2::<f32>().unwrap();
        let mut zeros = 0;
        for (wr, mr) in w.iter().zip(&m) {
            for (wv, mv) in wr.iter().zip(mr) {
                if *mv == 0.0 {
                    assert_eq!(*wv, 0.0);
                    zeros += 1;
                } else {
                    assert_ne!(*wv, 0.0);
                }
            }
        }
        assert_eq!(zeros, pruned);
        assert!(pruned > 256 * 64 * 4 / 10);
        let acc = test_accuracy(&spec, &out.params, &test);
        assert!(acc > 0.93, "test accuracy {acc}");
    }

    /// A loss that only rewards class 3, on unlabelled data.
    struct AlwaysThree {
        calls: usize,
        seen: Vec<usize>,
    }
    impl TrainHooks for AlwaysThree {
        fn loss(&mut self, batch: &Batch<'_>) -> Result<Tensor, NnError> {
            assert!(batch.labels.is_none());
            self.calls += 1;
            self.seen.extend_from_slice(batch.idx);
            let lp = candle_nn::ops::log_softmax(batch.logits, D::Minus1)?;
            Ok(lp.narrow(1, 3, 1)?.mean_all()?.neg()?)
        }
    }

    #[test]
    fn custom_loss_drives_training_without_labels() {
        let (train_split, test) = digits();
        let unlabelled = Split::new(train_split.x.narrow(0, 0, 300).unwrap(), None).unwrap();
        let spec = crate::nn::model::tests::digits_spec();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 50,
            optimizer: adamw(1e-2),
            validation_split: 0.5,
            ..Default::default()
        };
        assert!(train(&spec, &unlabelled, &cfg, Init::Random, &mut NoHooks)
            .unwrap_err()
            .to_string()
            .contains("no labels"));
        let mut hooks = AlwaysThree { calls: 0, seen: vec![] };
        let out = train(&spec, &unlabelled, &cfg, Init::Random, &mut hooks).unwrap();
        assert_eq!(hooks.calls, 12);
        // Without labels nothing is held out, and each epoch visits every sample once.
        hooks.seen.sort_unstable();
        let expected: Vec<usize> = (0..300).flat_map(|i| [i, i]).collect();
        assert_eq!(hooks.seen, expected);
        assert!(out.curve[0].val_accuracy.is_none() && out.curve[0].train_accuracy.is_none());
        let net = Network::from_tensors(&spec, &out.params).unwrap();
        let preds = net.forward(&test.x).unwrap().argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        assert!(preds.iter().all(|&p| p == 3));
    }

    #[test]
    fn batch_norm_training_updates_running_stats() {
        let spec = spec(
            r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [3]}, "output": {"classes": 2},
                "layers": [{"type": "batch_norm", "name": "bn", "num_features": 3, "momentum": 0.25},
                           {"type": "linear", "name": "fc", "in_features": 3, "out_features": 2}]}"#,
        );
        let xs: Vec<f32> = (0..24).map(|i| ((i * 37) % 11) as f32 * 0.5 - 1.0 + (i % 3) as f32).collect();
        let x = Tensor::from_vec(xs.clone(), (8, 3), &Device::Cpu).unwrap();
        let data = Split::new(x, Some(vec![0, 1, 0, 1, 1, 0, 0, 1])).unwrap();
        let cfg = TrainConfig { epochs: 1, batch_size: 8, optimizer: adamw(1e-2), ..Default::default() };
        let out = train(&spec, &data, &cfg, Init::Random, &mut NoHooks).unwrap();
        let rm = out.params["bn.running_mean"].to_vec1::<f32>().unwrap();
        let rv = out.params["bn.running_var"].to_vec1::<f32>().unwrap();
        for c in 0..3 {
            let col: Vec<f64> = (0..8).map(|i| xs[i * 3 + c] as f64).collect();
            let mean = col.iter().sum::<f64>() / 8.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 7.0;
            assert!((rm[c] as f64 - 0.25 * mean).abs() < 1e-5, "{rm:?}");
            assert!((rv[c] as f64 - (0.75 + 0.25 * var)).abs() < 1e-5, "{rv:?}");
        }
        // Weight and bias of the norm are trained too.
        assert!(out.params["bn.weight"].to_vec1::<f32>().unwrap() != vec![1.0; 3]);
    }

    /// Regression test for the training memory leak: candle hands back gradients still attached
    /// to the step's graph, so an optimizer that keeps them (AdamW's moments) kept every step's
    /// activations alive (mnist-cnn grew 0.9 GB per epoch). Neither the gradients the optimizer
    /// sees nor any state it carries into the next step may track a graph.
    #[test]
    fn optimizer_state_holds_no_graph_across_steps() {
        let cnn = spec(
            r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [1, 6, 6]}, "output": {"classes": 3},
                "layers": [{"type": "conv2d", "name": "conv", "in_channels": 1, "out_channels": 4, "kernel_size": 3,
                            "padding": 1, "bias": false},
                           {"type": "batch_norm", "name": "bn", "num_features": 4}, {"type": "relu"},
                           {"type": "conv2d", "name": "conv2", "in_channels": 4, "out_channels": 4, "kernel_size": 3,
                            "padding": 1, "bias": false},
                           {"type": "batch_norm", "name": "bn2", "num_features": 4}, {"type": "relu"},
                           {"type": "flatten"},
                           {"type": "linear", "name": "fc", "in_features": 144, "out_features": 3}]}"#,
        );
        let sgd = OptimizerConfig::Sgd { lr: 1e-2, momentum: 0.9, nesterov: true, weight_decay: 1e-4 };

        // 1. The mechanism, on a variable multiplied by a graph-tracking tensor: its raw gradient
        //    tracks the graph (candle detaches intermediate nodes' gradients, not variables').
        let tiny = spec(
            r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [3]}, "output": {"classes": 3},
                "layers": [{"type": "linear", "name": "fc", "in_features": 3, "out_features": 3}]}"#,
        );
        let store = param_store(&tiny, &init_params(&tiny, 0).unwrap()).unwrap();
        let (w, b) = (store.get("fc.weight").unwrap(), store.get("fc.bias").unwrap());
        for opt_cfg in [adamw(1e-2), sgd.clone()] {
            let mut opt = Optimizer::new(opt_cfg);
            for _ in 0..3 {
                let loss = w.as_tensor().broadcast_mul(&b.as_tensor().exp().unwrap()).unwrap().sum_all().unwrap();
                let raw = loss.backward().unwrap();
                assert!(raw.get(w.as_tensor()).is_some_and(|g| g.track_op()), "premise: a graph-tracking gradient");
                let grads = collect_grads(&store, &raw, None).unwrap();
                assert!(grads.values().all(|g| !g.track_op()), "collect_grads returned graph-tracking gradients");
                opt.apply(&store, &grads, 1e-2).unwrap();
                for (k, t) in &opt.state {
                    assert!(!t.track_op(), "optimizer state {k} keeps a graph alive");
                }
            }
        }

        // 2. A batch-norm CNN trained a few steps the way `train` does, with clipping.
        let store = param_store(&cnn, &init_params(&cnn, 0).unwrap()).unwrap();
        let graph = build_graph(&cnn.layers, "", Slot::Top, &cnn.input.shape).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 1, 6, 6), &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 1, 0], &Device::Cpu).unwrap();
        let mut rng = rng_for(0, STREAM_DROPOUT, 0);
        for opt_cfg in [adamw(1e-2), sgd] {
            let mut opt = Optimizer::new(opt_cfg);
            for _ in 0..3 {
                let logits = {
                    let mut ctx = Ctx { store: &store, hooks: &NoHooks, rng: Some(&mut rng) };
                    forward(&graph, &x, &mut ctx).unwrap()
                };
                let loss = cross_entropy(&logits, &y, OutputKind::Logits).unwrap();
                let grads = collect_grads(&store, &loss.backward().unwrap(), Some(1.0)).unwrap();
                assert!(grads.values().all(|g| !g.track_op()), "collect_grads returned graph-tracking gradients");
                opt.apply(&store, &grads, 1e-2).unwrap();
                for (k, t) in &opt.state {
                    assert!(!t.track_op(), "optimizer state {k} keeps a graph alive");
                }
            }
            assert!(!opt.state.is_empty());
        }
    }

    #[test]
    fn optimizers_follow_pytorch_update_rules() {
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let store = ParamStore { trainable: BTreeMap::from([("w".to_string(), p.clone())]), buffers: BTreeMap::new() };
        let g = Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap();
        let grads = BTreeMap::from([("w".to_string(), g.clone())]);
        // AdamW step 1: p * (1 - lr * wd) - lr * g / (|g| + eps).
        let mut opt =
            Optimizer::new(OptimizerConfig::AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.5 });
        opt.apply(&store, &grads, 0.1).unwrap();
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6 && (v[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-6, "{v:?}");

        // SGD with Nesterov momentum, two steps with the same gradient.
        p.set(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt =
            Optimizer::new(OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.0 });
        opt.apply(&store, &grads, 0.1).unwrap();
        opt.apply(&store, &grads, 0.1).unwrap();
        // buf1 = g, d1 = g + 0.9 g; buf2 = 1.9 g, d2 = g + 0.9 * 1.9 g.
        let total = 0.1 * (1.9 + 1.0 + 0.9 * 1.9);
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - (1.0 - total * 0.5) as f32).abs() < 1e-6, "{v:?}");
        let state = opt.export().unwrap();
        assert_eq!(state.step, 2);
        assert!(state.tensors.contains_key("momentum.w"));
    }

    #[test]
    fn schedules() {
        let s = LrSchedule::Step { step_size: 2, gamma: 0.5 };
        assert_eq!(s.lr_at(1.0, 0, 0, 10, 100), 1.0);
        assert_eq!(s.lr_at(1.0, 3, 35, 10, 100), 0.5);
        assert_eq!(s.lr_at(1.0, 4, 45, 10, 100), 0.25);
        let c = LrSchedule::Cosine { warmup_epochs: 1, min_lr: 0.1 };
        assert!((c.lr_at(1.0, 0, 4, 10, 100) - 0.5).abs() < 1e-12);
        assert!((c.lr_at(1.0, 1, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(1.0, 5, 55, 10, 100) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(1.0, 9, 100, 10, 100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let (train_split, _) = digits();
        let cfg = TrainConfig {
            epochs: 10,
            batch_size: 256,
            optimizer: adamw(1e-9),
            validation_split: 0.2,
            early_stopping_patience: Some(2),
            ..Default::default()
        };
        // A learning rate this small cannot change the validation accuracy.
        let out = train(&digits_spec(), &train_split, &cfg, Init::Random, &mut NoHooks).unwrap();
        assert!(out.stopped_early);
        assert_eq!(out.curve.len(), 3);
        assert_eq!(out.best_epoch, 1);
        let val = out.curve[0].val_accuracy.unwrap();
        assert!(out.curve.iter().all(|s| s.val_accuracy == Some(val)));
    }

    struct CancelAfter(std::cell::Cell<usize>);
    impl TrainHooks for CancelAfter {
        fn should_stop(&self) -> bool {
            let n = self.0.get();
            self.0.set(n + 1);
            n >= 3
        }
    }

    #[test]
    fn cancellation_stops_between_batches() {
        let (train_split, _) = digits();
        let cfg = TrainConfig { epochs: 5, batch_size: 64, ..Default::default() };
        let mut hooks = CancelAfter(std::cell::Cell::new(0));
        let out = train(&digits_spec(), &train_split, &cfg, Init::Random, &mut hooks).unwrap();
        assert!(out.cancelled);
        assert!(out.curve.is_empty());
    }

    #[test]
    fn starts_from_given_params_and_rejects_bad_ones() {
        let (train_split, test) = digits();
        let spec = digits_spec();
        let teacher = crate::nn::model::tests::load("teacher_digits.safetensors");
        let cfg = TrainConfig { epochs: 1, batch_size: 128, optimizer: adamw(1e-5), ..Default::default() };
        let out = train(&spec, &train_split, &cfg, Init::Params(teacher.clone()), &mut NoHooks).unwrap();
        assert!(test_accuracy(&spec, &out.params, &test) >= 0.96);
        let mut broken = teacher;
        broken.remove("fc3.bias");
        let e = train(&spec, &train_split, &cfg, Init::Params(broken), &mut NoHooks).unwrap_err();
        assert!(e.to_string().contains("fc3.bias: missing"), "{e}");
        let bad_cfg = TrainConfig { batch_size: 0, ..cfg };
        assert!(train(&spec, &train_split, &bad_cfg, Init::Random, &mut NoHooks).is_err());
    }

    fn pool_spec(k: usize, s: usize, p: usize) -> PoolSpec {
        PoolSpec {
            name: None,
            kernel_size: crate::nn::spec::Pair::square(k),
            stride: Some(crate::nn::spec::Pair::square(s)),
            padding: crate::nn::spec::Pair::square(p),
        }
    }

    #[test]
    fn differentiable_pooling_matches_forward_and_finite_differences() {
        let vals: Vec<f64> = (0..2 * 7 * 7).map(|i| ((i * 7919 % 97) as f64) / 10.0 - 4.0).collect();
        let x = Tensor::from_vec(vals.clone(), (1, 2, 7, 7), &Device::Cpu).unwrap();
        for (k, s, p) in [(3, 2, 1), (2, 2, 0), (2, 1, 1), (3, 3, 1)] {
            for max in [true, false] {
                let spec = pool_spec(k, s, p);
                let fast = ops::pool2d(&x, &spec, max, false).unwrap();
                let var = Var::from_tensor(&x).unwrap();
                let slow = ops::pool2d(var.as_tensor(), &spec, max, true).unwrap();
                let diff = (&fast - &slow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(diff < 1e-12, "k{k} s{s} p{p} max={max}: {diff}");
                // d/dx of a weighted sum of the outputs, against central differences.
                let weights =
                    Tensor::arange(0f64, slow.elem_count() as f64, &Device::Cpu).unwrap().reshape(slow.dims()).unwrap();
                let grads = (&slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let f = |v: &[f64]| -> f64 {
                    let t = Tensor::from_vec(v.to_vec(), (1, 2, 7, 7), &Device::Cpu).unwrap();
                    let o = ops::pool2d(&t, &spec, max, false).unwrap();
                    (o * &weights).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                };
                for i in (0..vals.len()).step_by(5) {
                    let (mut a, mut b) = (vals.clone(), vals.clone());
                    a[i] += 0.01;
                    b[i] -= 0.01;
                    let num = (f(&a) - f(&b)) / 0.02;
                    assert!((num - g[i]).abs() < 1e-6, "k{k} s{s} p{p} max={max} i{i}: {num} vs {}", g[i]);
                }
            }
        }
    }

    #[test]
    fn documented_and_shipped_examples_are_valid_and_run() {
        let root = env!("CARGO_MANIFEST_DIR");
        let doc = std::fs::read_to_string(format!("{root}/docs/spec.md")).unwrap();
        let examples = &doc[doc.find("## Examples").unwrap()..];
        let mut specs: Vec<ModelSpec> =
            examples.split("```json").skip(1).map(|block| spec(&block[..block.find("```").unwrap()])).collect();
        assert_eq!(specs.len(), 3);
        for name in ["digits-mlp", "digits-student", "mnist-cnn", "mnist-cnn-wide", "mnist-cnn-gap", "mnist-cnn-deep"] {
            let json = std::fs::read(format!("{root}/examples/{name}.spec.json")).unwrap();
            specs.push(ModelSpec::from_json(&json).unwrap());
        }
        for s in &specs {
            let params = init_params(s, 0).unwrap();
            let net = Network::from_tensors(s, &params).unwrap();
            let mut dims = vec![2];
            dims.extend_from_slice(&s.input.shape);
            let x = Tensor::ones(dims, s.input.dtype.to_dtype(), &Device::Cpu).unwrap();
            assert_eq!(net.forward(&x).unwrap().dims(), &[2, s.output.classes]);
        }
        let resnet: Vec<ParamInfo> = specs[2].params();
        let find = |n: &str| resnet.iter().find(|p| p.name == n).map(|p| p.shape.clone());
        assert_eq!(find("layer1.0.conv1.weight"), Some(vec![32, 16, 3, 3]));
        assert_eq!(find("layer1.0.downsample.0.weight"), Some(vec![32, 16, 1, 1]));
        assert_eq!(find("layer1.0.bn1.running_mean"), Some(vec![32]));
        assert_eq!(find("ir.body.3.weight"), Some(vec![96, 1, 3, 3]));
        assert_eq!(find("ir.body.7.running_var"), Some(vec![32]));
        let mnist: Vec<String> = specs[1].params().into_iter().map(|p| p.name).collect();
        assert!(mnist.contains(&"features.4.weight".to_string()) && mnist.contains(&"classifier.bias".to_string()));
    }

    #[test]
    fn reference_cnn_trains() {
        // Every conv/pool variant of the reference CNN (depthwise, dilation, asymmetric padding,
        // overlapping pools) must backpropagate; memorising a few samples shows it does.
        let json = std::fs::read(format!("{FIXTURES}/reference/cnn.spec.json")).unwrap();
        let spec = ModelSpec::from_json(&json).unwrap();
        let x: Vec<u8> = (0..16 * 3 * 12 * 12).map(|i| ((i * 7919) % 256) as u8).collect();
        let x = Tensor::from_vec(x, (16, 3, 12, 12), &Device::Cpu).unwrap();
        let y: Vec<u32> = (0..16).map(|i| (i * 3 % 10) as u32).collect();
        let data = Split::new(x, Some(y)).unwrap();
        let cfg = TrainConfig { epochs: 30, batch_size: 16, optimizer: adamw(1e-2), ..Default::default() };
        let out = train(&spec, &data, &cfg, Init::Random, &mut NoHooks).unwrap();
        let first = out.curve[0].train_loss;
        let last = out.curve.last().unwrap().train_loss;
        assert!(last < first * 0.5, "loss {first} -> {last}");
        assert!(out.params["stem_bn.running_mean"].to_vec1::<f32>().unwrap().iter().any(|v| *v != 0.0));
    }
}

#[cfg(test)]
mod mnist_tests {
    use super::*;
    use crate::nn::data::Dataset;
    use crate::nn::eval::evaluate;
    use crate::nn::model::tests::FIXTURES;
    use crate::nn::model::Network;

    /// Takes minutes at opt-level 0 on a shared 2-core box; the same recipe is timed in
    /// `benches/nn.rs` (`mnist_cnn_full_run`). Run with `cargo test -- --ignored mnist`.
    #[test]
    #[ignore = "slow in the dev profile; measured in benches/nn.rs"]
    fn mnist_cnn_reaches_95_percent() {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/mnist5k.safetensors"))).unwrap();
        let (train_split, test) = (ds.train.unwrap(), ds.test.unwrap());
        let json = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mnist-cnn.spec.json")).unwrap();
        let spec = ModelSpec::from_json(&json).unwrap();
        let cfg = TrainConfig {
            epochs: 4,
            batch_size: 64,
            seed: 1,
            optimizer: OptimizerConfig::AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 },
            schedule: LrSchedule::Cosine { warmup_epochs: 0, min_lr: 1e-4 },
            ..Default::default()
        };
        let t0 = Instant::now();
        let out = train(&spec, &train_split, &cfg, Init::Random, &mut NoHooks).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let net = Network::from_tensors(&spec, &out.params).unwrap();
        let report = evaluate(&net, &test.x, test.y.as_ref().unwrap(), 250).unwrap();
        eprintln!("mnist cnn: {:.1} s, test accuracy {:.4}, curve {:?}", secs, report.accuracy, out.curve);
        assert!(report.accuracy >= 0.95, "test accuracy {}", report.accuracy);
    }
}
