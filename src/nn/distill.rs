//! Knowledge distillation, the pure parts: Hinton's loss on candle tensors (differentiable with
//! respect to the student's output) and student architectures derived from a teacher's spec.
//!
//! Called by the `distill` job (`crate::jobs::distill`) on its worker thread, from inside the
//! training loop's [`crate::nn::TrainHooks::loss`]; no I/O, no threads of its own.
//!
//! # The loss
//! `loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(y, s)` (Hinton, Vinyals and
//! Dean 2015), with the KL divergence averaged over the batch (PyTorch's `batchmean`). The T²
//! factor keeps the soft term's gradient, `α · T · (softmax(s/T) − softmax(t/T)) / B`, on the same
//! scale as the hard term's when T changes. Without labels the loss is the soft term alone
//! (`T² · KL`, α is not applied). The teacher's side ([`SoftTargets`]) is computed once per sample
//! and indexed per batch, so the teacher never enters the graph. A network whose output kind is
//! `probabilities` enters through `log p`, which is a valid logit vector (softmax(log p) = p).
//!
//! # Student templates
//! [`derive_student`] rewrites a teacher spec:
//! - `width`: every hidden linear/conv width is multiplied by `width` (rounded, at least 1); the
//!   layer producing the output keeps `classes`, and every `in_*`/`num_features`/
//!   `normalized_shape` is re-derived from the rewritten shapes.
//! - `depthwise_separable`: every standard convolution (groups 1) with a kernel larger than 1×1,
//!   except the stem (the first convolution, which reads the raw image and is cheap), becomes a
//!   `sequential` block carrying the conv's name: depthwise k×k (groups = channels), the teacher's
//!   batch norm and activation if the conv was followed by them, then a pointwise 1×1 conv to the
//!   output width (MobileNet v1).
//! - `depth`: in every run of consecutive shape-preserving blocks (a hidden layer whose input and
//!   output shapes are equal, with the norms/activations/dropout following it; an identity
//!   residual block; a shape-preserving `sequential`), keep only the first `depth` (0 removes them
//!   all). The output layer is never removed. `sequential` blocks are rewritten recursively.
//!
//! Depth is applied first (on the teacher's shapes), then width and depthwise rewriting. The
//! derived spec is validated before it is returned.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::eval::log_probs;
use super::model::Network;
use super::spec::{
    layer_output_shape, BatchNormSpec, Conv2dSpec, Layer, LinearSpec, ModelSpec, OutputKind, Pair, SequentialSpec,
};
use super::train::{Batch, TrainHooks};
use super::NnError;

// ---------------------------------------------------------------------------------------------
// Loss

/// Temperature and weight of Hinton's loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KdConfig {
    /// Softening temperature T (> 0).
    pub temperature: f64,
    /// Weight α of the soft (teacher) term, in [0, 1]; the hard term gets 1 − α.
    pub alpha: f64,
}

impl KdConfig {
    /// The formula, as reported to users.
    pub fn describe(&self, labelled: bool) -> String {
        let (t, a) = (self.temperature, self.alpha);
        if labelled {
            format!("{a} * {t}^2 * KL(softmax(t/{t}) || softmax(s/{t})) + {} * CE(y, s)", 1.0 - a)
        } else {
            format!("{t}^2 * KL(softmax(t/{t}) || softmax(s/{t})) (unlabelled data: soft term only)")
        }
    }
}

/// The teacher's softened distribution for a set of samples: `softmax(t/T)` and its log, `[N, C]`
/// f32, detached. Build it once for the whole training split and [`SoftTargets::select`] per batch.
#[derive(Debug, Clone)]
pub struct SoftTargets {
    /// `softmax(t/T)`.
    pub probs: Tensor,
    /// `log_softmax(t/T)`.
    pub log_probs: Tensor,
}

impl SoftTargets {
    /// From the teacher's raw outputs `[N, C]` (logits or probabilities, per `kind`).
    pub fn new(teacher_out: &Tensor, kind: OutputKind, temperature: f64) -> Result<SoftTargets, NnError> {
        check_temperature(temperature)?;
        let log_probs = soft_log_probs(&teacher_out.detach(), kind, temperature)?;
        let probs = log_probs.exp()?;
        Ok(SoftTargets { probs, log_probs })
    }

    /// The rows of `idx` (U32 indices).
    pub fn select(&self, idx: &Tensor) -> Result<SoftTargets, NnError> {
        Ok(SoftTargets { probs: self.probs.index_select(idx, 0)?, log_probs: self.log_probs.index_select(idx, 0)? })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.probs.dims().first().copied().unwrap_or(0)
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (both tensors), for memory budgeting.
    pub fn bytes(&self) -> usize {
        2 * self.probs.elem_count() * self.probs.dtype().size_in_bytes()
    }
}

fn check_temperature(t: f64) -> Result<(), NnError> {
    if !(t.is_finite() && t > 0.0) {
        return Err(NnError::Train(format!("temperature must be positive, got {t}")));
    }
    Ok(())
}

/// `log_softmax(z / T)` where z are the logits (or `log p` for probability outputs).
fn soft_log_probs(out: &Tensor, kind: OutputKind, temperature: f64) -> Result<Tensor, NnError> {
    let z = match kind {
        OutputKind::Logits => out.clone(),
        OutputKind::Probabilities => log_probs(out, kind)?,
    };
    let z = if temperature == 1.0 { z } else { z.affine(1.0 / temperature, 0.0)? };
    Ok(candle_nn::ops::log_softmax(&z, D::Minus1)?)
}

/// `T² · KL(targets ‖ softmax(s/T))`, averaged over the batch; differentiable in `student_out`.
pub fn soft_term(
    student_out: &Tensor,
    kind: OutputKind,
    targets: &SoftTargets,
    temperature: f64,
) -> Result<Tensor, NnError> {
    check_temperature(temperature)?;
    let b = student_out.dim(0)?;
    if targets.probs.dims() != student_out.dims() {
        return Err(NnError::Train(format!(
            "teacher targets have shape {:?} but the student output has shape {:?}",
            targets.probs.dims(),
            student_out.dims()
        )));
    }
    let ls = soft_log_probs(student_out, kind, temperature)?;
    let kl = (&targets.log_probs - ls)?.mul(&targets.probs)?.sum_all()?;
    Ok(kl.affine(temperature * temperature / b.max(1) as f64, 0.0)?)
}

/// One batch's loss and its parts.
#[derive(Debug, Clone)]
pub struct KdLoss {
    /// The loss to backpropagate (scalar).
    pub total: Tensor,
    /// Value of the soft term `T² · KL` (before α).
    pub kd: f64,
    /// Value of the cross-entropy against the labels (None without labels).
    pub ce: Option<f64>,
}

/// Hinton's loss for one batch. With `alpha == 0` the loss tensor is exactly the plain
/// cross-entropy [`crate::nn::cross_entropy`] (so training matches plain training bit for bit);
/// with `alpha == 1`, or without labels, it is exactly the soft term. The other part is still
/// computed (detached) for reporting.
pub fn hinton_loss(
    student_out: &Tensor,
    kind: OutputKind,
    targets: &SoftTargets,
    labels: Option<&Tensor>,
    cfg: &KdConfig,
) -> Result<KdLoss, NnError> {
    if !(0.0..=1.0).contains(&cfg.alpha) {
        return Err(NnError::Train(format!("alpha must be in [0, 1], got {}", cfg.alpha)));
    }
    let t = cfg.temperature;
    let Some(labels) = labels else {
        let kd = soft_term(student_out, kind, targets, t)?;
        let v = scalar(&kd)?;
        return Ok(KdLoss { total: kd, kd: v, ce: None });
    };
    if cfg.alpha == 0.0 {
        let ce = super::cross_entropy(student_out, labels, kind)?;
        let kd = scalar(&soft_term(&student_out.detach(), kind, targets, t)?)?;
        let v = scalar(&ce)?;
        return Ok(KdLoss { total: ce, kd, ce: Some(v) });
    }
    if cfg.alpha == 1.0 {
        let kd = soft_term(student_out, kind, targets, t)?;
        let ce = scalar(&super::cross_entropy(&student_out.detach(), labels, kind)?)?;
        let v = scalar(&kd)?;
        return Ok(KdLoss { total: kd, kd: v, ce: Some(ce) });
    }
    let kd = soft_term(student_out, kind, targets, t)?;
    let ce = super::cross_entropy(student_out, labels, kind)?;
    let (kd_v, ce_v) = (scalar(&kd)?, scalar(&ce)?);
    let total = (kd.affine(cfg.alpha, 0.0)? + ce.affine(1.0 - cfg.alpha, 0.0)?)?;
    Ok(KdLoss { total, kd: kd_v, ce: Some(ce_v) })
}

fn scalar(t: &Tensor) -> Result<f64, NnError> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// Where the teacher's targets come from during training.
pub enum TeacherTargets<'a> {
    /// Precomputed for every sample of the training split (indexed by [`Batch::idx`]).
    Cached(SoftTargets),
    /// Run the teacher on each batch's raw inputs (`x` is the raw training split), for splits
    /// whose cached targets would not fit the memory budget.
    PerBatch {
        /// The teacher.
        teacher: &'a Network,
        /// Raw inputs of the whole training split, as passed to [`crate::nn::train`].
        x: &'a Tensor,
    },
}

impl<'a> TeacherTargets<'a> {
    /// Bytes the cached targets of `samples × classes` take (f32 probabilities and logs).
    pub fn cache_bytes(samples: usize, classes: usize) -> u64 {
        2 * 4 * samples as u64 * classes as u64
    }

    /// Caches the teacher's targets when they fit `budget_bytes`, else runs it per batch.
    pub fn new(
        teacher: &'a Network,
        x: &'a Tensor,
        temperature: f64,
        budget_bytes: u64,
        batch_size: usize,
    ) -> Result<TeacherTargets<'a>, NnError> {
        let n = x.dim(0)?;
        if Self::cache_bytes(n, teacher.classes()) <= budget_bytes {
            let out = teacher.predict_batches(x, batch_size.max(1))?;
            Ok(TeacherTargets::Cached(SoftTargets::new(&out, teacher.output_kind(), temperature)?))
        } else {
            check_temperature(temperature)?;
            Ok(TeacherTargets::PerBatch { teacher, x })
        }
    }

    /// Whether the targets are cached.
    pub fn is_cached(&self) -> bool {
        matches!(self, TeacherTargets::Cached(_))
    }

    fn for_batch(&self, idx: &[usize], temperature: f64) -> Result<SoftTargets, NnError> {
        let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(v, idx.len(), &candle_core::Device::Cpu)?;
        match self {
            TeacherTargets::Cached(t) => t.select(&idx),
            TeacherTargets::PerBatch { teacher, x } => {
                let out = teacher.forward(&x.index_select(&idx, 0)?)?;
                SoftTargets::new(&out, teacher.output_kind(), temperature)
            }
        }
    }
}

/// Mean loss parts over the batches of one epoch (weighted by batch size).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossParts {
    /// The soft term `T² · KL` (before α).
    pub kd_loss: f64,
    /// Cross-entropy against the labels (None without labels).
    pub ce_loss: Option<f64>,
}

/// Training hooks computing Hinton's loss; usable directly with [`crate::nn::train`] or
/// wrapped by a caller that adds progress, checkpoints and cancellation.
pub struct Distiller<'a> {
    targets: TeacherTargets<'a>,
    cfg: KdConfig,
    kd_sum: f64,
    ce_sum: f64,
    samples: usize,
    labelled: bool,
}

impl<'a> Distiller<'a> {
    /// Hooks for `cfg` with the teacher's `targets`.
    pub fn new(targets: TeacherTargets<'a>, cfg: KdConfig) -> Result<Distiller<'a>, NnError> {
        check_temperature(cfg.temperature)?;
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return Err(NnError::Train(format!("alpha must be in [0, 1], got {}", cfg.alpha)));
        }
        Ok(Distiller { targets, cfg, kd_sum: 0.0, ce_sum: 0.0, samples: 0, labelled: false })
    }

    /// The loss of one batch (accumulates its parts for [`Distiller::take_parts`]).
    pub fn batch_loss(&mut self, batch: &Batch<'_>) -> Result<Tensor, NnError> {
        let targets = self.targets.for_batch(batch.idx, self.cfg.temperature)?;
        let l = hinton_loss(batch.logits, batch.output_kind, &targets, batch.labels, &self.cfg)?;
        let n = batch.idx.len() as f64;
        self.kd_sum += l.kd * n;
        if let Some(ce) = l.ce {
            self.ce_sum += ce * n;
            self.labelled = true;
        }
        self.samples += batch.idx.len();
        Ok(l.total)
    }

    /// Mean parts since the last call, then resets (call once per epoch).
    pub fn take_parts(&mut self) -> LossParts {
        let n = self.samples.max(1) as f64;
        let parts = LossParts { kd_loss: self.kd_sum / n, ce_loss: self.labelled.then_some(self.ce_sum / n) };
        self.kd_sum = 0.0;
        self.ce_sum = 0.0;
        self.samples = 0;
        parts
    }

    /// Whether the teacher's targets are cached.
    pub fn is_cached(&self) -> bool {
        self.targets.is_cached()
    }
}

impl TrainHooks for Distiller<'_> {
    fn loss(&mut self, batch: &Batch<'_>) -> Result<Tensor, NnError> {
        self.batch_loss(batch)
    }
}

// ---------------------------------------------------------------------------------------------
// Student templates

/// How to derive a student from the teacher's spec (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentTemplate {
    /// Multiplier of hidden widths/channels, in (0, 4]. Default 1.
    #[serde(default = "one")]
    pub width: f64,
    /// Replace standard k×k convolutions (but the stem) by depthwise + pointwise. Default false.
    #[serde(default)]
    pub depthwise_separable: bool,
    /// Keep at most this many blocks of each run of shape-preserving blocks. Default: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
}

fn one() -> f64 {
    1.0
}

impl Default for StudentTemplate {
    fn default() -> Self {
        StudentTemplate { width: 1.0, depthwise_separable: false, depth: None }
    }
}

/// Why a template cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Largest accepted `width`.
pub const MAX_WIDTH: f64 = 4.0;

impl StudentTemplate {
    /// Checks the numbers (not the teacher).
    pub fn check(&self) -> Result<(), TemplateError> {
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= MAX_WIDTH) {
            return Err(TemplateError(format!("width must be in (0, {MAX_WIDTH}], got {}", self.width)));
        }
        Ok(())
    }
}

/// Derives a student spec from `teacher` (see the module doc). The result is validated.
pub fn derive_student(teacher: &ModelSpec, t: &StudentTemplate) -> Result<ModelSpec, TemplateError> {
    t.check()?;
    teacher.validate().map_err(|e| TemplateError(format!("the teacher's spec is invalid: {e}")))?;
    let layers = match t.depth {
        Some(keep) => drop_depth(&teacher.layers, &teacher.input.shape, keep, true)?,
        None => teacher.layers.clone(),
    };
    let mut rw = Rewriter { t, seen_conv: false };
    let (layers, out) = rw.seq(&layers, &teacher.input.shape, Some(teacher.output.classes))?;
    let mut student = teacher.clone();
    student.layers = layers;
    if out != [teacher.output.classes] {
        return Err(TemplateError(format!(
            "the derived student produces per-sample shape {out:?}, not [{}]",
            teacher.output.classes
        )));
    }
    student.validate().map_err(|e| TemplateError(format!("the derived student spec is invalid: {e}")))?;
    Ok(student)
}

fn shape_err(e: String) -> TemplateError {
    TemplateError(format!("cannot follow the teacher's shapes: {e}"))
}

/// Layers that belong to the block before them (they keep its shape).
fn is_companion(l: &Layer) -> bool {
    matches!(
        l,
        Layer::BatchNorm(_)
            | Layer::LayerNorm(_)
            | Layer::Relu(_)
            | Layer::Relu6(_)
            | Layer::Gelu(_)
            | Layer::Sigmoid(_)
            | Layer::Tanh(_)
            | Layer::Dropout(_)
    )
}

/// Layers that carry a width (or contain layers that do).
fn is_block_head(l: &Layer) -> bool {
    match l {
        Layer::Linear(_) | Layer::Conv2d(_) => true,
        Layer::Residual(r) => r.body.iter().any(is_block_head),
        Layer::Sequential(s) => s.layers.iter().any(is_block_head),
        _ => false,
    }
}

struct Segment {
    start: usize,
    end: usize,
    input: Vec<usize>,
    repeatable: bool,
}

fn drop_depth(layers: &[Layer], shape: &[usize], keep: usize, protect_last: bool) -> Result<Vec<Layer>, TemplateError> {
    let mut segs: Vec<Segment> = Vec::new();
    let mut s = shape.to_vec();
    let mut i = 0;
    while i < layers.len() {
        let start = i;
        let input = s.clone();
        s = layer_output_shape(&layers[i], &s).map_err(shape_err)?;
        i += 1;
        let head = is_block_head(&layers[start]);
        if head {
            while i < layers.len() && is_companion(&layers[i]) {
                s = layer_output_shape(&layers[i], &s).map_err(shape_err)?;
                i += 1;
            }
        }
        segs.push(Segment { start, end: i, repeatable: head && s == input, input });
    }
    let last_head = segs.iter().rposition(|g| is_block_head(&layers[g.start]));
    if protect_last {
        if let Some(k) = last_head {
            segs[k].repeatable = false;
        }
    }
    let mut out = Vec::with_capacity(layers.len());
    let mut run = 0usize;
    for (k, g) in segs.iter().enumerate() {
        if g.repeatable {
            run += 1;
            if run > keep {
                continue;
            }
        } else {
            run = 0;
        }
        for (j, layer) in layers[g.start..g.end].iter().enumerate() {
            match layer {
                Layer::Sequential(q) if j == 0 => {
                    let inner = drop_depth(&q.layers, &g.input, keep, protect_last && Some(k) == last_head)?;
                    out.push(Layer::Sequential(SequentialSpec { name: q.name.clone(), layers: inner }));
                }
                other => out.push(other.clone()),
            }
        }
    }
    Ok(out)
}

/// Which dimension the last width-carrying layer of a sequence writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WidthKind {
    /// `linear`: the last dimension.
    Last,
    /// `conv2d`: dimension 0 (channels).
    Channels,
}

fn last_width_index(layers: &[Layer]) -> Option<usize> {
    layers.iter().rposition(is_block_head)
}

fn last_width_kind(layers: &[Layer]) -> Option<WidthKind> {
    let i = last_width_index(layers)?;
    match &layers[i] {
        Layer::Linear(_) => Some(WidthKind::Last),
        Layer::Conv2d(_) => Some(WidthKind::Channels),
        Layer::Residual(r) => last_width_kind(&r.body),
        Layer::Sequential(s) => last_width_kind(&s.layers),
        _ => None,
    }
}

fn width_of(shape: &[usize], kind: WidthKind) -> usize {
    match kind {
        WidthKind::Last => shape.last().copied().unwrap_or(1),
        WidthKind::Channels => shape.first().copied().unwrap_or(1),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

struct Rewriter<'a> {
    t: &'a StudentTemplate,
    /// Whether a convolution was already rewritten (the first one is the stem).
    seen_conv: bool,
}

impl Rewriter<'_> {
    fn scale(&self, c: usize) -> usize {
        ((c as f64 * self.t.width).round() as usize).max(1)
    }

    /// Rewrites a sequence fed with `shape`; `force` fixes the output width of its last
    /// width-carrying layer. Returns the layers and the output shape.
    fn seq(
        &mut self,
        layers: &[Layer],
        shape: &[usize],
        force: Option<usize>,
    ) -> Result<(Vec<Layer>, Vec<usize>), TemplateError> {
        let target = if force.is_some() { last_width_index(layers) } else { None };
        let mut s = shape.to_vec();
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let f = if target == Some(i) { force } else { None };
            let nl = self.layer(layer, &layers[i + 1..], &s, f)?;
            s = layer_output_shape(&nl, &s).map_err(shape_err)?;
            out.push(nl);
        }
        Ok((out, s))
    }

    fn layer(
        &mut self,
        layer: &Layer,
        following: &[Layer],
        s: &[usize],
        force: Option<usize>,
    ) -> Result<Layer, TemplateError> {
        Ok(match layer {
            Layer::Linear(l) => Layer::Linear(LinearSpec {
                in_features: s.last().copied().unwrap_or(1),
                out_features: force.unwrap_or_else(|| self.scale(l.out_features)),
                ..l.clone()
            }),
            Layer::Conv2d(c) => self.conv(c, following, s.first().copied().unwrap_or(1), force)?,
            Layer::BatchNorm(b) => {
                Layer::BatchNorm(BatchNormSpec { num_features: s.first().copied().unwrap_or(1), ..b.clone() })
            }
            Layer::LayerNorm(n) => {
                let k = n.normalized_shape.len().min(s.len());
                let mut n = n.clone();
                n.normalized_shape = s[s.len() - k..].to_vec();
                Layer::LayerNorm(n)
            }
            Layer::Residual(r) => {
                let saved = self.seen_conv;
                let (mut body, bo) = self.seq(&r.body, s, force)?;
                let after_body = self.seen_conv;
                let shortcut = match &r.shortcut {
                    None => {
                        if bo != s {
                            // Identity shortcut: the body must give back the block's input width.
                            let kind = last_width_kind(&r.body).ok_or_else(|| {
                                TemplateError("a residual body changes the shape without any width layer".into())
                            })?;
                            self.seen_conv = saved;
                            body = self.seq(&r.body, s, Some(width_of(s, kind)))?.0;
                        }
                        None
                    }
                    Some(sc) => {
                        let (mut sc2, so) = self.seq(sc, s, force)?;
                        if so != bo {
                            let kind = last_width_kind(sc).ok_or_else(|| {
                                TemplateError("a residual shortcut cannot follow the body's width".into())
                            })?;
                            self.seen_conv = after_body;
                            sc2 = self.seq(sc, s, Some(width_of(&bo, kind)))?.0;
                        }
                        Some(sc2)
                    }
                };
                let mut r = r.clone();
                r.body = body;
                r.shortcut = shortcut;
                Layer::Residual(r)
            }
            Layer::Sequential(q) => {
                Layer::Sequential(SequentialSpec { name: q.name.clone(), layers: self.seq(&q.layers, s, force)?.0 })
            }
            other => other.clone(),
        })
    }

    fn conv(
        &mut self,
        c: &Conv2dSpec,
        following: &[Layer],
        inp: usize,
        force: Option<usize>,
    ) -> Result<Layer, TemplateError> {
        let stem = !self.seen_conv;
        self.seen_conv = true;
        let depthwise = c.groups > 1 && c.groups == c.in_channels && c.out_channels % c.in_channels == 0;
        if depthwise {
            let out = force.unwrap_or(inp * (c.out_channels / c.in_channels));
            if out % inp != 0 {
                return Err(TemplateError(format!(
                    "a depthwise convolution with {inp} channels cannot output {out} channels"
                )));
            }
            return Ok(Layer::Conv2d(Conv2dSpec { in_channels: inp, out_channels: out, groups: inp, ..c.clone() }));
        }
        let out = force.unwrap_or_else(|| self.scale(c.out_channels));
        if c.groups > 1 {
            let groups = gcd(gcd(inp, out), c.groups);
            return Ok(Layer::Conv2d(Conv2dSpec { in_channels: inp, out_channels: out, groups, ..c.clone() }));
        }
        let plain = Conv2dSpec { in_channels: inp, out_channels: out, ..c.clone() };
        if !self.t.depthwise_separable || stem || c.kernel_size == Pair::square(1) {
            return Ok(Layer::Conv2d(plain));
        }
        // What follows the teacher's conv decides the inner norm/activation (MobileNet: dw-BN-ReLU).
        let mut bn: Option<BatchNormSpec> = None;
        let mut act: Option<Layer> = None;
        for l in following {
            match l {
                Layer::BatchNorm(b) if bn.is_none() && act.is_none() => bn = Some(b.clone()),
                Layer::Relu(_) | Layer::Relu6(_) | Layer::Gelu(_) | Layer::Sigmoid(_) | Layer::Tanh(_) => {
                    act = Some(unnamed(l));
                    break;
                }
                Layer::Dropout(_) | Layer::LayerNorm(_) | Layer::BatchNorm(_) => {}
                _ => break,
            }
        }
        let mut inner = vec![Layer::Conv2d(Conv2dSpec {
            name: None,
            in_channels: inp,
            out_channels: inp,
            groups: inp,
            bias: bn.is_none(),
            ..c.clone()
        })];
        if let Some(b) = bn {
            inner.push(Layer::BatchNorm(BatchNormSpec { name: None, num_features: inp, ..b }));
        }
        if let Some(a) = act {
            inner.push(a);
        }
        inner.push(Layer::Conv2d(Conv2dSpec {
            name: None,
            in_channels: inp,
            out_channels: out,
            kernel_size: Pair::square(1),
            stride: 1,
            padding: Pair::square(0),
            dilation: 1,
            groups: 1,
            bias: c.bias,
        }));
        Ok(Layer::Sequential(SequentialSpec { name: c.name.clone(), layers: inner }))
    }
}

/// A copy of an activation layer without its name (names would collide inside the new block).
fn unnamed(l: &Layer) -> Layer {
    let mut l = l.clone();
    match &mut l {
        Layer::Relu(p) | Layer::Relu6(p) | Layer::Sigmoid(p) | Layer::Tanh(p) => p.name = None,
        Layer::Gelu(g) => g.name = None,
        _ => {}
    }
    l
}

/// Trainable parameters (weights and biases, not batch-norm buffers) of a spec.
pub fn trainable_parameters(spec: &ModelSpec) -> u64 {
    spec.params().iter().filter(|p| p.trainable).map(|p| p.numel() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::tests::FIXTURES;
    use crate::nn::{evaluate, init_params, train, Dataset, Init, NoHooks, Split, TrainConfig};
    use candle_core::{DType, Device, Var};
    use std::collections::HashMap;

    fn t64(v: &[f64], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn softmax(v: &[f64], t: f64) -> Vec<f64> {
        let m = v.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = v.iter().map(|x| ((x - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// The loss in plain f64 arithmetic, straight from the formula.
    fn reference_loss(s: &[Vec<f64>], t: &[Vec<f64>], y: Option<&[u32]>, temp: f64, alpha: f64) -> f64 {
        let b = s.len() as f64;
        let mut kl = 0.0;
        let mut ce = 0.0;
        for (i, (sr, tr)) in s.iter().zip(t).enumerate() {
            let (ps, pt) = (softmax(sr, temp), softmax(tr, temp));
            kl += pt.iter().zip(&ps).map(|(p, q)| p * (p.ln() - q.ln())).sum::<f64>();
            if let Some(y) = y {
                ce -= softmax(sr, 1.0)[y[i] as usize].ln();
            }
        }
        let kd = temp * temp * kl / b;
        match y {
            Some(_) => alpha * kd + (1.0 - alpha) * ce / b,
            None => kd,
        }
    }

    const S: [[f64; 4]; 3] = [[0.3, -1.2, 2.0, 0.1], [1.5, 0.2, -0.7, 0.0], [-0.4, 0.9, 0.9, -2.1]];
    const T: [[f64; 4]; 3] = [[0.1, -0.5, 3.1, 0.4], [2.2, 1.0, -1.0, 0.3], [0.0, 2.5, 0.6, -1.1]];
    const Y: [u32; 3] = [2, 0, 1];

    fn rows(a: &[[f64; 4]; 3]) -> Vec<Vec<f64>> {
        a.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn loss_and_gradient_match_the_formula_and_finite_differences() {
        let flat = |a: &[[f64; 4]; 3]| a.iter().flatten().cloned().collect::<Vec<f64>>();
        let teacher = t64(&flat(&T), (3, 4));
        let labels = Tensor::new(&Y, &Device::Cpu).unwrap();
        for temp in [1.0, 2.5, 4.0] {
            for alpha in [0.0, 0.3, 0.9, 1.0] {
                for labelled in [true, false] {
                    let cfg = KdConfig { temperature: temp, alpha };
                    let targets = SoftTargets::new(&teacher, OutputKind::Logits, temp).unwrap();
                    let y = labelled.then_some(&labels);
                    let var = Var::from_tensor(&t64(&flat(&S), (3, 4))).unwrap();
                    let loss = hinton_loss(var.as_tensor(), OutputKind::Logits, &targets, y, &cfg).unwrap();
                    let value = loss.total.to_scalar::<f64>().unwrap();
                    let want = reference_loss(&rows(&S), &rows(&T), labelled.then_some(&Y[..]), temp, alpha);
                    assert!((value - want).abs() < 1e-12, "T={temp} a={alpha} {value} vs {want}");
                    // Reported parts.
                    let kd_only = reference_loss(&rows(&S), &rows(&T), None, temp, alpha);
                    assert!((loss.kd - kd_only).abs() < 1e-12);
                    assert_eq!(loss.ce.is_some(), labelled);
                    let grads = loss.total.backward().unwrap();
                    let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    for k in 0..12 {
                        let (mut a, mut b) = (rows(&S), rows(&S));
                        a[k / 4][k % 4] += 1e-5;
                        b[k / 4][k % 4] -= 1e-5;
                        let ys = labelled.then_some(&Y[..]);
                        let num = (reference_loss(&a, &rows(&T), ys, temp, alpha)
                            - reference_loss(&b, &rows(&T), ys, temp, alpha))
                            / 2e-5;
                        assert!((num - g[k]).abs() < 1e-7, "T={temp} a={alpha} k={k}: {num} vs {}", g[k]);
                    }
                    // Closed form of the gradient: α T (softmax(s/T) − softmax(t/T)) / B + (1 − α)(softmax(s) − 1_y) / B.
                    let i = 1;
                    let ps = softmax(&S[i], temp);
                    let pt = softmax(&T[i], temp);
                    let p1 = softmax(&S[i], 1.0);
                    for c in 0..4 {
                        let soft = temp * (ps[c] - pt[c]) / 3.0;
                        let hard = (p1[c] - if Y[i] as usize == c { 1.0 } else { 0.0 }) / 3.0;
                        let want = if labelled { alpha * soft + (1.0 - alpha) * hard } else { soft };
                        assert!((g[i * 4 + c] - want).abs() < 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn alpha_edges_are_exactly_the_single_terms() {
        let s = Tensor::new(&[[0.3f32, -1.2, 2.0], [1.5, 0.2, -0.7]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[0.1f32, -0.5, 3.1], [2.2, 1.0, -1.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[2u32, 1], &Device::Cpu).unwrap();
        let targets = SoftTargets::new(&t, OutputKind::Logits, 3.0).unwrap();
        let ce = crate::nn::cross_entropy(&s, &y, OutputKind::Logits).unwrap().to_scalar::<f32>().unwrap();
        let kd = soft_term(&s, OutputKind::Logits, &targets, 3.0).unwrap().to_scalar::<f32>().unwrap();
        let at = |alpha| {
            hinton_loss(&s, OutputKind::Logits, &targets, Some(&y), &KdConfig { temperature: 3.0, alpha }).unwrap()
        };
        assert_eq!(at(0.0).total.to_scalar::<f32>().unwrap(), ce);
        assert_eq!(at(1.0).total.to_scalar::<f32>().unwrap(), kd);
        let half = at(0.5);
        assert!((half.total.to_scalar::<f32>().unwrap() - 0.5 * (ce + kd)).abs() < 1e-6);
        assert!((half.kd - kd as f64).abs() < 1e-6 && (half.ce.unwrap() - ce as f64).abs() < 1e-6);
        // A student equal to the teacher has zero soft loss, whatever T.
        let same = soft_term(&t, OutputKind::Logits, &targets, 3.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6);
        // Bad settings are refused, not computed.
        assert!(hinton_loss(&s, OutputKind::Logits, &targets, Some(&y), &KdConfig { temperature: 3.0, alpha: 1.5 })
            .is_err());
        assert!(SoftTargets::new(&t, OutputKind::Logits, 0.0).is_err());
        let wrong = SoftTargets::new(&t.narrow(0, 0, 1).unwrap(), OutputKind::Logits, 3.0).unwrap();
        assert!(soft_term(&s, OutputKind::Logits, &wrong, 3.0).is_err());
    }

    #[test]
    fn probability_outputs_give_the_same_targets_as_their_logits() {
        let logits = Tensor::new(&[[0.1f32, -0.5, 3.1], [2.2, 1.0, -1.0]], &Device::Cpu).unwrap();
        let probs = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
        let a = SoftTargets::new(&logits, OutputKind::Logits, 2.0).unwrap();
        let b = SoftTargets::new(&probs, OutputKind::Probabilities, 2.0).unwrap();
        let d = (a.probs - b.probs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
        assert_eq!(a.log_probs.dtype(), DType::F32);
    }

    fn spec_file(name: &str) -> ModelSpec {
        let path = format!("{}/examples/{name}.spec.json", env!("CARGO_MANIFEST_DIR"));
        ModelSpec::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    fn doc_example(i: usize) -> ModelSpec {
        let doc = std::fs::read_to_string(format!("{}/docs/spec.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let examples = &doc[doc.find("## Examples").unwrap()..];
        let block = examples.split("```json").nth(i + 1).unwrap();
        ModelSpec::from_json(&block.as_bytes()[..block.find("```").unwrap()]).unwrap()
    }

    /// The spec runs: random weights build a network whose output is `[N, classes]`.
    fn runs(spec: &ModelSpec) {
        let params = init_params(spec, 0).unwrap();
        let net = Network::from_tensors(spec, &params).unwrap();
        let mut dims = vec![2];
        dims.extend_from_slice(&spec.input.shape);
        let x = Tensor::ones(dims, spec.input.dtype.to_dtype(), &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x).unwrap().dims(), &[2, spec.output.classes]);
    }

    fn shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        spec.params().into_iter().map(|p| (p.name, p.shape)).collect()
    }

    #[test]
    fn mlp_templates() {
        let teacher = spec_file("digits-mlp");
        let tpl = |width, depth| StudentTemplate { width, depthwise_separable: false, depth };
        // Width only: 64-64-64-10.
        let s = derive_student(&teacher, &tpl(0.25, None)).unwrap();
        assert_eq!(
            shapes(&s).iter().filter(|(n, _)| n.ends_with("weight")).map(|(_, s)| s.clone()).collect::<Vec<_>>(),
            vec![vec![64, 64], vec![64, 64], vec![10, 64]]
        );
        // Width and depth 0 give exactly the shipped 64-32-10 student's shapes.
        let s = derive_student(&teacher, &tpl(0.125, Some(0))).unwrap();
        let student = spec_file("digits-student");
        let want: Vec<Vec<usize>> = shapes(&student).into_iter().map(|(_, s)| s).collect();
        assert_eq!(shapes(&s).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), want);
        assert_eq!(trainable_parameters(&s), 64 * 32 + 32 + 32 * 10 + 10);
        assert_eq!(s.input, teacher.input);
        assert_eq!(s.output, teacher.output);
        // Depth 1 keeps the one hidden 256→256 block; width 1 and no depth is the teacher.
        assert_eq!(derive_student(&teacher, &tpl(1.0, Some(1))).unwrap(), teacher);
        assert_eq!(derive_student(&teacher, &StudentTemplate::default()).unwrap(), teacher);
        runs(&s);
        // Tiny widths stay at least 1; absurd ones are refused.
        let s = derive_student(&teacher, &tpl(0.001, None)).unwrap();
        assert_eq!(s.params()[0].shape, vec![1, 64]);
        for bad in [0.0, -1.0, 5.0, f64::NAN] {
            assert!(derive_student(&teacher, &tpl(bad, None)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cnn_templates() {
        let teacher = spec_file("mnist-cnn");
        let t = StudentTemplate { width: 0.5, depthwise_separable: true, depth: None };
        let s = derive_student(&teacher, &t).unwrap();
        let names = shapes(&s);
        let get = |n: &str| names.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
        // The stem stays a standard conv; the second conv becomes dw (+BN+ReLU) + pw.
        assert_eq!(get("features.0.weight"), Some(vec![4, 1, 3, 3]));
        assert_eq!(get("features.4.0.weight"), Some(vec![4, 1, 3, 3]));
        assert_eq!(get("features.4.1.running_mean"), Some(vec![4]));
        assert_eq!(get("features.4.3.weight"), Some(vec![8, 4, 1, 1]));
        assert_eq!(get("features.5.weight"), Some(vec![8]));
        assert_eq!(get("classifier.weight"), Some(vec![10, 8 * 7 * 7]));
        assert!(trainable_parameters(&s) * 2 < trainable_parameters(&teacher));
        runs(&s);
        // Without depthwise: plain width scaling.
        let plain = derive_student(&teacher, &StudentTemplate { depthwise_separable: false, ..t }).unwrap();
        let conv2 = plain.params().into_iter().find(|p| p.name == "features.4.weight").unwrap();
        assert_eq!(conv2.shape, vec![8, 4, 3, 3]);
        runs(&plain);
    }

    #[test]
    fn residual_templates() {
        let teacher = doc_example(2);
        for (width, dw, depth) in
            [(0.5, true, None), (0.25, false, Some(0)), (1.0, true, Some(1)), (0.3, true, Some(0))]
        {
            let t = StudentTemplate { width, depthwise_separable: dw, depth };
            let s = derive_student(&teacher, &t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
            runs(&s);
            assert!(trainable_parameters(&s) <= trainable_parameters(&teacher));
        }
        // Depth 0 drops the identity (inverted) residual block but keeps the downsampling one.
        let s = derive_student(&teacher, &StudentTemplate { depth: Some(0), ..Default::default() }).unwrap();
        let names: Vec<String> = s.params().into_iter().map(|p| p.name).collect();
        assert!(names.iter().any(|n| n.starts_with("layer1.0.")));
        assert!(!names.iter().any(|n| n.starts_with("ir.")));
        // The depthwise conv inside the inverted residual stays depthwise with the new width.
        let s = derive_student(&teacher, &StudentTemplate { width: 0.5, ..Default::default() }).unwrap();
        let ir = s.params().into_iter().find(|p| p.name == "ir.body.3.weight").unwrap();
        assert_eq!(ir.shape, vec![48, 1, 3, 3]);
        // The identity residual's body gives back its input width (16 after the stem at 0.5).
        let out = s.params().into_iter().find(|p| p.name == "ir.body.6.weight").unwrap();
        assert_eq!(out.shape, vec![16, 48, 1, 1]);
        // ResNet basic block with depthwise separable convs: conv1 and conv2 are split, the
        // 1×1 downsample is not.
        let s = derive_student(&teacher, &StudentTemplate { depthwise_separable: true, ..Default::default() }).unwrap();
        let names: Vec<String> = s.params().into_iter().map(|p| p.name).collect();
        for n in ["layer1.0.conv1.0.weight", "layer1.0.conv1.3.weight", "layer1.0.conv2.0.weight", "conv1.weight"] {
            assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
        }
        assert!(names.contains(&"layer1.0.downsample.0.weight".to_string()));
    }

    #[test]
    fn identity_residual_on_raw_input_keeps_its_width() {
        // The block's input is the raw 6-feature vector, which width scaling cannot change.
        let teacher = ModelSpec::from_json(
            br#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [6]}, "output": {"classes": 3},
                "layers": [
                  {"type": "residual", "name": "r", "body": [
                    {"type": "linear", "in_features": 6, "out_features": 40}, {"type": "relu"},
                    {"type": "linear", "in_features": 40, "out_features": 6}]},
                  {"type": "linear", "name": "a", "in_features": 6, "out_features": 20},
                  {"type": "relu"},
                  {"type": "linear", "name": "b", "in_features": 20, "out_features": 20},
                  {"type": "layer_norm", "normalized_shape": 20},
                  {"type": "relu"},
                  {"type": "linear", "name": "c", "in_features": 20, "out_features": 20},
                  {"type": "relu"},
                  {"type": "linear", "name": "out", "in_features": 20, "out_features": 3}]}"#,
        )
        .unwrap();
        let s =
            derive_student(&teacher, &StudentTemplate { width: 0.5, depth: Some(1), ..Default::default() }).unwrap();
        let shapes = shapes(&s);
        assert!(shapes.contains(&("r.body.0.weight".to_string(), vec![20, 6])));
        assert!(shapes.contains(&("r.body.2.weight".to_string(), vec![6, 20])));
        // Of the run b(+LN+ReLU), c(+ReLU) one block is kept, with its layer norm re-sized.
        assert!(shapes.contains(&("b.weight".to_string(), vec![10, 10])));
        assert!(shapes.contains(&("4.weight".to_string(), vec![10])));
        assert!(!shapes.iter().any(|(n, _)| n.starts_with("c.")));
        assert!(shapes.contains(&("out.weight".to_string(), vec![3, 10])));
        runs(&s);
    }

    fn digits() -> (Split, Split, Network) {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let teacher = Network::from_tensors(
            &spec_file("digits-mlp"),
            &crate::nn::model::tests::load("teacher_digits.safetensors"),
        )
        .unwrap();
        (ds.train.unwrap(), ds.test.unwrap(), teacher)
    }

    fn same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> bool {
        a.len() == b.len()
            && a.iter().all(|(k, v)| {
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
    }

    #[test]
    fn alpha_zero_is_plain_training_and_alpha_one_ignores_labels() {
        let (train_split, _, teacher) = digits();
        let data = train_split.head(400).unwrap();
        let student = spec_file("digits-student");
        let cfg = TrainConfig { epochs: 3, batch_size: 50, seed: 9, ..Default::default() };
        let kd = |alpha: f64, data: &Split| {
            let targets = TeacherTargets::new(&teacher, &data.x, 4.0, 1 << 20, 128).unwrap();
            let mut h = Distiller::new(targets, KdConfig { temperature: 4.0, alpha }).unwrap();
            let out = train(&student, data, &cfg, Init::Random, &mut h).unwrap();
            (out, h.take_parts())
        };
        let plain = train(&student, &data, &cfg, Init::Random, &mut NoHooks).unwrap();
        let (zero, parts) = kd(0.0, &data);
        assert!(same(&plain.params, &zero.params), "α = 0 must be plain cross-entropy training");
        assert_eq!(plain.curve[2].train_loss, zero.curve[2].train_loss);
        assert!(parts.kd_loss > 0.0 && parts.ce_loss.is_some());
        // α = 1: the labels change nothing (same as unlabelled data, which uses the soft term).
        let unlabelled = Split::new(data.x.clone(), None).unwrap();
        let (one, _) = kd(1.0, &data);
        let (nolabels, parts) = kd(1.0, &unlabelled);
        assert!(same(&one.params, &nolabels.params));
        assert!(parts.ce_loss.is_none());
        assert!(!same(&one.params, &zero.params));
        // The same run with the teacher evaluated per batch (budget 0) is identical to the cached one.
        let targets = TeacherTargets::new(&teacher, &data.x, 4.0, 0, 128).unwrap();
        assert!(!targets.is_cached());
        let mut h = Distiller::new(targets, KdConfig { temperature: 4.0, alpha: 1.0 }).unwrap();
        let per_batch = train(&student, &data, &cfg, Init::Random, &mut h).unwrap();
        assert!(same(&one.params, &per_batch.params));
    }

    #[test]
    fn distillation_pulls_the_student_towards_the_teacher() {
        let (train_split, test, teacher) = digits();
        let student = spec_file("digits-student");
        let cfg = TrainConfig { epochs: 20, batch_size: 32, seed: 0, ..Default::default() };
        let targets = TeacherTargets::new(&teacher, &train_split.x, 4.0, 1 << 20, 256).unwrap();
        let mut h = Distiller::new(targets, KdConfig { temperature: 4.0, alpha: 1.0 }).unwrap();
        // Unlabelled data: everything the student learns comes from the teacher.
        let unlabelled = Split::new(train_split.x.clone(), None).unwrap();
        let out = train(&student, &unlabelled, &cfg, Init::Random, &mut h).unwrap();
        let net = Network::from_tensors(&student, &out.params).unwrap();
        let acc = evaluate(&net, &test.x, test.y.as_ref().unwrap(), 360).unwrap().accuracy;
        assert!(acc > 0.9, "student taught without labels: {acc}");
        let agree = crate::nn::compare(&teacher, &net, &test.x, 360).unwrap();
        assert!(agree.top1_agreement > 0.9, "{agree:?}");
        assert!(out.curve[19].train_loss < out.curve[0].train_loss / 3.0);
    }

    #[test]
    #[ignore = "experiment"]
    fn mnist_experiment() {
        use crate::nn::{evaluate, train, Dataset, Init, LrSchedule, OptimizerConfig, TrainConfig};
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or(d.to_string());
        let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let ds = Dataset::load(std::path::Path::new(&format!("{fx}/mnist5k.safetensors"))).unwrap();
        let (tr, te) = (ds.train.unwrap(), ds.test.unwrap());
        let teacher_spec = ModelSpec::from_json(&std::fs::read(env("T_SPEC", "/tmp/kd/t1.json")).unwrap()).unwrap();
        let cache = env("T_CACHE", "/tmp/kd/t1.safetensors");
        let cfg = |epochs: usize, lr: f64, seed: u64, bs: usize| TrainConfig {
            epochs,
            batch_size: bs,
            seed,
            optimizer: OptimizerConfig::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 },
            schedule: LrSchedule::Cosine { warmup_epochs: 0, min_lr: lr / 30.0 },
            ..Default::default()
        };
        let tp = if std::path::Path::new(&cache).exists() {
            candle_core::safetensors::load(&cache, &candle_core::Device::Cpu).unwrap()
        } else {
            let t0 = std::time::Instant::now();
            let e: usize = env("T_EPOCHS", "6").parse().unwrap();
            let out = train(&teacher_spec, &tr, &cfg(e, 3e-3, 1, 64), Init::Random, &mut crate::nn::NoHooks).unwrap();
            eprintln!(
                "teacher trained in {:.1}s: {:?}",
                t0.elapsed().as_secs_f64(),
                out.curve.iter().map(|c| c.train_loss).collect::<Vec<_>>()
            );
            candle_core::safetensors::save(&out.params, &cache).unwrap();
            out.params
        };
        let teacher = Network::from_tensors(&teacher_spec, &tp).unwrap();
        let tacc = evaluate(&teacher, &te.x, te.y.as_ref().unwrap(), 250).unwrap().accuracy;
        eprintln!("teacher: {} params, test acc {tacc:.4}", trainable_parameters(&teacher_spec));
        let tpl: StudentTemplate =
            serde_json::from_str(&env("S_TPL", r#"{"width": 0.5, "depthwise_separable": true}"#)).unwrap();
        let student = derive_student(&teacher_spec, &tpl).unwrap();
        let sp = trainable_parameters(&student);
        eprintln!("student: {sp} params (1/{:.1})", trainable_parameters(&teacher_spec) as f64 / sp as f64);
        for run in env("S_RUNS", "10,0.003,4,0.9,32").split(';') {
            let v: Vec<f64> = run.split(',').map(|x| x.parse().unwrap()).collect();
            let (e, lr, temp, alpha, bs) = (v[0] as usize, v[1], v[2], v[3], v[4] as usize);
            let t0 = std::time::Instant::now();
            let targets = TeacherTargets::new(&teacher, &tr.x, temp, 1 << 30, 256).unwrap();
            let mut h = Distiller::new(targets, KdConfig { temperature: temp, alpha }).unwrap();
            let out = train(&student, &tr, &cfg(e, lr, 0, bs), Init::Random, &mut h).unwrap();
            let net = Network::from_tensors(&student, &out.params).unwrap();
            let acc = evaluate(&net, &te.x, te.y.as_ref().unwrap(), 250).unwrap().accuracy;
            eprintln!("{run}: student acc {acc:.4} ({:.1}s)", t0.elapsed().as_secs_f64());
        }
    }
}
