//! Structured pruning as a model rewrite: whole output units (neurons of `linear` layers,
//! filters of `conv2d` layers) are removed, and the spec and tensors are rewritten so that the
//! result is a smaller *dense* model — fewer parameters, a smaller file and a faster forward
//! pass, unlike unstructured zeros.
//!
//! Called by the `prune` job (`jobs::prune`) on its worker thread; pure and synchronous (the
//! data-driven scores run the network on candle's current pool).
//!
//! # Which layers can lose units
//! The spec is read as *streams*: the top-level layer list with `sequential` blocks inlined, and
//! every residual `body` / `shortcut` as a stream of its own (a `residual` block is opaque in
//! its parent stream). A `linear` or `conv2d` (groups = 1) layer is prunable when, in its own
//! stream, its output reaches another `linear` / `conv2d` (groups = 1) layer — the *consumer*,
//! whose inputs shrink with it — through nothing but layers that act per unit: activations,
//! dropout, `batch_norm` (resized with it), pooling, `global_avg_pool`, `flatten` (a conv
//! channel becomes `H·W` consecutive features of the consumer) and depthwise convolutions
//! (groups = in = out channels, resized with it). Anything else (softmax, layer norm, reshape,
//! the end of the network, the end of a residual body) stops the chain, so the network output
//! and every residual block's output width stay unchanged: only widths *inside* residual
//! bodies shrink and the addition still lines up with the shortcut.
//!
//! Units are ranked by the L1 / L2 norm of their weights ([`crate::compress::prune::unit_scores`])
//! or by their mean absolute activation on sample data ([`activation_scores`]); the caller picks
//! the units to keep and [`apply`] rewrites spec and tensors.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::spec::{layer_output_shape, layer_prefix, Layer, ModelSpec, OutputKind, OutputSpec, Plain, Slot};
use super::{Network, NnError};
use crate::compress::prune::{take_along_dim, unit_scores, Norm};

/// A float tensor in host memory (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// One step of the path from `spec.layers` to a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Index into a `layers` list (top level or a `sequential` block).
    Layers(usize),
    /// Index into a residual `body`.
    Body(usize),
    /// Index into a residual `shortcut`.
    Shortcut(usize),
}

impl Step {
    fn index(self) -> usize {
        match self {
            Step::Layers(i) | Step::Body(i) | Step::Shortcut(i) => i,
        }
    }
}

/// A layer as seen in a stream.
#[derive(Debug, Clone)]
struct Item {
    path: Vec<Step>,
    prefix: String,
    layer: Layer,
    in_shape: Vec<usize>,
}

/// How a producer's units are laid out in the activation at some point of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A 1-D activation where unit `u` owns the `spread` features `[u·spread, (u+1)·spread)`.
    Vector { spread: usize },
    /// Units on dim 0 of a rank ≥ 2 activation (`[C, H, W]`).
    Channels,
    /// Units on the last dim of a rank ≥ 2 activation (`[L, out]` from a linear layer).
    LastDim,
}

/// A layer resized together with a producer.
#[derive(Debug, Clone)]
enum Through {
    /// Batch norm; its features are the producer's units times `spread`.
    BatchNorm { path: Vec<Step>, prefix: String, spread: usize },
    /// Depthwise convolution (one filter per channel).
    Depthwise { path: Vec<Step>, prefix: String },
}

/// Where the pruned units end.
#[derive(Debug, Clone)]
struct Consumer {
    path: Vec<Step>,
    prefix: String,
    /// Input features per producer unit (linear after `flatten` of `[C, H, W]`: `H·W`).
    spread: usize,
    /// Input dimension of the consumer's weight: 1 for both linear `[out, in]` and conv
    /// `[out, in, kh, kw]`.
    dim: usize,
}

/// A prunable producer with everything that changes with it.
#[derive(Debug, Clone)]
struct Group {
    producer: Item,
    units: usize,
    through: Vec<Through>,
    consumer: Consumer,
    /// Last layer before the consumer (where activations are measured) and its layout there.
    last: Item,
    last_layout: Layout,
}

/// A layer whose output units can be removed, as reported to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunableLayer {
    /// Parameter prefix of the layer (`fc1`, `layer1.0.conv1`).
    pub layer: String,
    /// `linear` or `conv2d`.
    pub layer_type: String,
    /// Output units (neurons or filters) it has now.
    pub units: usize,
    /// Prefix of the layer whose inputs shrink with it.
    pub consumer: String,
    /// Prefixes of batch norms and depthwise convolutions resized with it.
    pub resized: Vec<String>,
}

/// What [`apply`] did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerChange {
    /// Parameter prefix.
    pub layer: String,
    /// `linear` or `conv2d`.
    pub layer_type: String,
    /// Units before.
    pub units_before: usize,
    /// Units kept.
    pub units_after: usize,
    /// Kept unit indices (ascending, in the original numbering).
    pub kept: Vec<usize>,
    /// Layer whose inputs shrank.
    pub consumer: String,
    /// Batch norms / depthwise convolutions resized with it.
    pub resized: Vec<String>,
}

fn spec_err(message: String) -> NnError {
    NnError::Param { name: "structured pruning".into(), reason: message }
}

/// Every stream of the spec, each a list of items in execution order.
fn streams(spec: &ModelSpec) -> Result<Vec<Vec<Item>>, NnError> {
    spec.validate()?;
    let mut out = Vec::new();
    let mut top = Vec::new();
    walk(&spec.layers, &[], "", Slot::Top, spec.input.shape.clone(), &mut top, &mut out)?;
    out.push(top);
    Ok(out)
}

/// Appends the items of `layers` to `cur` (inlining `sequential` blocks) and starts a new
/// stream for each residual body / shortcut. Returns the output shape.
fn walk(
    layers: &[Layer],
    base: &[Step],
    parent: &str,
    slot: Slot,
    mut shape: Vec<usize>,
    cur: &mut Vec<Item>,
    out: &mut Vec<Vec<Item>>,
) -> Result<Vec<usize>, NnError> {
    for (i, layer) in layers.iter().enumerate() {
        let mut path = base.to_vec();
        path.push(match slot {
            Slot::Top | Slot::Seq => Step::Layers(i),
            Slot::Body => Step::Body(i),
            Slot::Shortcut => Step::Shortcut(i),
        });
        let prefix = layer_prefix(parent, slot, i, layer.name());
        match layer {
            Layer::Sequential(s) => {
                shape = walk(&s.layers, &path, &prefix, Slot::Seq, shape, cur, out)?;
            }
            Layer::Residual(r) => {
                let mut body = Vec::new();
                walk(&r.body, &path, &prefix, Slot::Body, shape.clone(), &mut body, out)?;
                out.push(body);
                if let Some(sc) = &r.shortcut {
                    let mut s = Vec::new();
                    walk(sc, &path, &prefix, Slot::Shortcut, shape.clone(), &mut s, out)?;
                    out.push(s);
                }
                let next = layer_output_shape(layer, &shape).map_err(spec_err)?;
                cur.push(Item { path, prefix, layer: layer.clone(), in_shape: shape });
                shape = next;
            }
            other => {
                let next = layer_output_shape(other, &shape).map_err(spec_err)?;
                cur.push(Item { path, prefix, layer: other.clone(), in_shape: shape });
                shape = next;
            }
        }
    }
    Ok(shape)
}

/// The group starting at `stream[p]`, if that layer is a prunable producer.
fn group_at(stream: &[Item], p: usize) -> Option<Group> {
    let producer = &stream[p];
    let (units, mut layout) = match &producer.layer {
        Layer::Linear(l) => {
            (l.out_features, if producer.in_shape.len() == 1 { Layout::Vector { spread: 1 } } else { Layout::LastDim })
        }
        Layer::Conv2d(c) if c.groups == 1 => (c.out_channels, Layout::Channels),
        _ => return None,
    };
    let mut through = Vec::new();
    let mut last = producer.clone();
    let mut last_layout = layout;
    for item in &stream[p + 1..] {
        match (&item.layer, layout) {
            (
                Layer::Relu(_)
                | Layer::Relu6(_)
                | Layer::Gelu(_)
                | Layer::Sigmoid(_)
                | Layer::Tanh(_)
                | Layer::Dropout(_),
                _,
            ) => {}
            (Layer::BatchNorm(_), Layout::Vector { spread }) => {
                through.push(Through::BatchNorm { path: item.path.clone(), prefix: item.prefix.clone(), spread })
            }
            (Layer::BatchNorm(_), Layout::Channels) => {
                through.push(Through::BatchNorm { path: item.path.clone(), prefix: item.prefix.clone(), spread: 1 })
            }
            (Layer::MaxPool2d(_) | Layer::AvgPool2d(_), Layout::Channels) => {}
            (Layer::GlobalAvgPool(_), Layout::Channels) => layout = Layout::Vector { spread: 1 },
            (Layer::Flatten(_), Layout::Vector { .. }) => {}
            (Layer::Flatten(_), Layout::Channels) => {
                layout = Layout::Vector { spread: item.in_shape[1..].iter().product() };
            }
            (Layer::Conv2d(c), Layout::Channels)
                if c.groups > 1 && c.groups == c.in_channels && c.in_channels == c.out_channels =>
            {
                through.push(Through::Depthwise { path: item.path.clone(), prefix: item.prefix.clone() })
            }
            (Layer::Conv2d(c), Layout::Channels) if c.groups == 1 => {
                let consumer = Consumer { path: item.path.clone(), prefix: item.prefix.clone(), spread: 1, dim: 1 };
                return Some(Group { producer: producer.clone(), units, through, consumer, last, last_layout });
            }
            (Layer::Linear(_), Layout::Vector { spread }) => {
                let consumer = Consumer { path: item.path.clone(), prefix: item.prefix.clone(), spread, dim: 1 };
                return Some(Group { producer: producer.clone(), units, through, consumer, last, last_layout });
            }
            (Layer::Linear(_), Layout::LastDim) => {
                let consumer = Consumer { path: item.path.clone(), prefix: item.prefix.clone(), spread: 1, dim: 1 };
                return Some(Group { producer: producer.clone(), units, through, consumer, last, last_layout });
            }
            _ => return None,
        }
        last = item.clone();
        last_layout = layout;
    }
    None
}

fn groups(spec: &ModelSpec) -> Result<Vec<Group>, NnError> {
    let mut out = Vec::new();
    for stream in streams(spec)? {
        for p in 0..stream.len() {
            if let Some(g) = group_at(&stream, p) {
                out.push(g);
            }
        }
    }
    Ok(out)
}

fn resized(g: &Group) -> Vec<String> {
    g.through
        .iter()
        .map(|t| match t {
            Through::BatchNorm { prefix, .. } | Through::Depthwise { prefix, .. } => prefix.clone(),
        })
        .collect()
}

/// Every layer of `spec` whose output units can be removed, in stream order (top level first
/// is not guaranteed: residual bodies come before the stream that holds them).
pub fn prunable_layers(spec: &ModelSpec) -> Result<Vec<PrunableLayer>, NnError> {
    Ok(groups(spec)?
        .iter()
        .map(|g| PrunableLayer {
            layer: g.producer.prefix.clone(),
            layer_type: g.producer.layer.type_name().to_string(),
            units: g.units,
            consumer: g.consumer.prefix.clone(),
            resized: resized(g),
        })
        .collect())
}

fn tensor<'a>(tensors: &'a BTreeMap<String, HostTensor>, name: &str) -> Result<&'a HostTensor, NnError> {
    tensors.get(name).ok_or_else(|| NnError::Param { name: name.into(), reason: "missing".into() })
}

/// One score per output unit of `layer` from the norm of its weights (higher = more
/// important).
pub fn norm_scores(tensors: &BTreeMap<String, HostTensor>, layer: &str, norm: Norm) -> Result<Vec<f32>, NnError> {
    let name = format!("{layer}.weight");
    let w = tensor(tensors, &name)?;
    unit_scores(&name, &w.data, &w.shape, norm).map_err(|e| NnError::Param { name, reason: e.to_string() })
}

/// Mean absolute activation of every unit of each prunable layer in `layers`, measured on `x`
/// (a raw batch as the spec's input declares) where the unit reaches its consumer (after its
/// batch norm, activation and pooling). Higher = more important. The network runs in eval mode
/// (batch norm with running statistics, no dropout).
pub fn activation_scores(
    spec: &ModelSpec,
    tensors: &BTreeMap<String, HostTensor>,
    layers: &[String],
    x: &Tensor,
) -> Result<BTreeMap<String, Vec<f32>>, NnError> {
    let all = groups(spec)?;
    let mut candle = HashMap::new();
    for (k, t) in tensors {
        candle.insert(k.clone(), Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu)?);
    }
    let mut out = BTreeMap::new();
    for layer in layers {
        let g = all
            .iter()
            .find(|g| &g.producer.prefix == layer)
            .ok_or_else(|| spec_err(format!("layer {layer} has no prunable output units")))?;
        let sub = truncated_spec(spec, &g.last.path)?;
        let net = Network::from_tensors(&sub, &candle)?;
        let a = net.predict_batches(x, 256)?.abs()?;
        let n = a.dim(0)?;
        let units = g.units;
        let scores = match g.last_layout {
            Layout::Vector { spread } => a.reshape((n, units, spread))?.mean(2)?.mean(0)?,
            Layout::Channels => {
                let rest = a.dim(1)? / units;
                a.reshape((n, units, rest))?.mean(2)?.mean(0)?
            }
            Layout::LastDim => {
                let rest = a.dim(1)? / units;
                a.reshape((n, rest, units))?.mean(1)?.mean(0)?
            }
        };
        out.insert(layer.clone(), scores.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// A spec computing the network up to and including the layer at `path`, flattened, as a
/// "classifier" with one output per activation element. Every layer keeps its parameter
/// prefix (set as an explicit name), so the original tensors load unchanged.
fn truncated_spec(spec: &ModelSpec, path: &[Step]) -> Result<ModelSpec, NnError> {
    fn descend(layers: &[Layer], parent: &str, slot: Slot, path: &[Step], out: &mut Vec<Layer>) -> Option<()> {
        let i = path.first()?.index();
        for (j, l) in layers.iter().enumerate().take(i + 1) {
            let prefix = layer_prefix(parent, slot, j, l.name());
            if j < i || path.len() == 1 {
                let mut l = l.clone();
                set_name(&mut l, prefix);
                out.push(l);
                continue;
            }
            match (l, path[1]) {
                (Layer::Sequential(s), Step::Layers(_)) => descend(&s.layers, &prefix, Slot::Seq, &path[1..], out)?,
                (Layer::Residual(r), Step::Body(_)) => descend(&r.body, &prefix, Slot::Body, &path[1..], out)?,
                (Layer::Residual(r), Step::Shortcut(_)) => {
                    descend(r.shortcut.as_deref()?, &prefix, Slot::Shortcut, &path[1..], out)?
                }
                _ => return None,
            }
        }
        Some(())
    }
    let mut layers = Vec::new();
    descend(&spec.layers, "", Slot::Top, path, &mut layers)
        .ok_or_else(|| spec_err("internal: a layer path does not match the spec".into()))?;
    let shape = layers.iter().try_fold(spec.input.shape.clone(), |s, l| layer_output_shape(l, &s)).map_err(spec_err)?;
    layers.push(Layer::Flatten(Plain::default()));
    let sub = ModelSpec {
        format: spec.format.clone(),
        version: spec.version,
        input: spec.input.clone(),
        output: OutputSpec { kind: OutputKind::Logits, classes: shape.iter().product(), labels: None },
        layers,
    };
    sub.validate()?;
    Ok(sub)
}

fn set_name(layer: &mut Layer, name: String) {
    let slot = match layer {
        Layer::Linear(l) => &mut l.name,
        Layer::Conv2d(l) => &mut l.name,
        Layer::BatchNorm(l) => &mut l.name,
        Layer::LayerNorm(l) => &mut l.name,
        Layer::Relu(l)
        | Layer::Relu6(l)
        | Layer::Sigmoid(l)
        | Layer::Tanh(l)
        | Layer::GlobalAvgPool(l)
        | Layer::Flatten(l) => &mut l.name,
        Layer::Gelu(l) => &mut l.name,
        Layer::Softmax(l) => &mut l.name,
        Layer::MaxPool2d(l) | Layer::AvgPool2d(l) => &mut l.name,
        Layer::Dropout(l) => &mut l.name,
        Layer::Reshape(l) => &mut l.name,
        Layer::Residual(l) => &mut l.name,
        Layer::Sequential(l) => &mut l.name,
    };
    *slot = Some(name);
}

fn layer_at<'a>(layers: &'a mut [Layer], path: &[Step]) -> Option<&'a mut Layer> {
    let (first, rest) = path.split_first()?;
    let mut cur = layers.get_mut(first.index())?;
    for step in rest {
        cur = match (cur, *step) {
            (Layer::Sequential(s), Step::Layers(i)) => s.layers.get_mut(i)?,
            (Layer::Residual(r), Step::Body(i)) => r.body.get_mut(i)?,
            (Layer::Residual(r), Step::Shortcut(i)) => r.shortcut.as_mut()?.get_mut(i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Gathers `idx` along `dim` of tensor `name` in place, if it exists (`required` = error when
/// it does not).
fn gather(
    tensors: &mut BTreeMap<String, HostTensor>,
    name: &str,
    dim: usize,
    idx: &[usize],
    required: bool,
) -> Result<(), NnError> {
    let Some(t) = tensors.get_mut(name) else {
        return if required { Err(NnError::Param { name: name.into(), reason: "missing".into() }) } else { Ok(()) };
    };
    let (data, shape) = take_along_dim(name, &t.data, &t.shape, dim, idx)
        .map_err(|e| NnError::Param { name: name.into(), reason: e.to_string() })?;
    *t = HostTensor { shape, data };
    Ok(())
}

fn spread(keep: &[usize], s: usize) -> Vec<usize> {
    keep.iter().flat_map(|&u| u * s..(u + 1) * s).collect()
}

/// Removes every unit not listed in `keep` (layer prefix → kept unit indices, ascending,
/// at least one) from each layer and everything resized with it. Returns the rewritten,
/// validated spec and what changed; `tensors` is rewritten in place and checked against the
/// new spec. Layers absent from `keep` are left as they are.
pub fn apply(
    spec: &ModelSpec,
    tensors: &mut BTreeMap<String, HostTensor>,
    keep: &BTreeMap<String, Vec<usize>>,
) -> Result<(ModelSpec, Vec<LayerChange>), NnError> {
    let all = groups(spec)?;
    for layer in keep.keys() {
        if !all.iter().any(|g| &g.producer.prefix == layer) {
            return Err(spec_err(format!(
                "layer {layer} cannot lose output units (it is not a linear/conv2d layer feeding another one \
                 in the same block; the network output and residual block outputs keep their width)"
            )));
        }
    }
    let mut new = spec.clone();
    let mut changes = Vec::new();
    for g in &all {
        let Some(k) = keep.get(&g.producer.prefix) else { continue };
        if k.is_empty() || k.windows(2).any(|w| w[0] >= w[1]) || k.last().is_some_and(|&u| u >= g.units) {
            return Err(spec_err(format!(
                "layer {}: kept units must be a non-empty ascending list of indices below {}",
                g.producer.prefix, g.units
            )));
        }
        let n = k.len();
        let p = &g.producer.prefix;
        gather(tensors, &format!("{p}.weight"), 0, k, true)?;
        gather(tensors, &format!("{p}.bias"), 0, k, false)?;
        let missing = || spec_err("internal: a layer path does not match the spec".into());
        match layer_at(&mut new.layers, &g.producer.path).ok_or_else(missing)? {
            Layer::Linear(l) => l.out_features = n,
            Layer::Conv2d(c) => c.out_channels = n,
            _ => return Err(missing()),
        }
        for t in &g.through {
            match t {
                Through::BatchNorm { path, prefix, spread: s } => {
                    let idx = spread(k, *s);
                    for suffix in ["weight", "bias", "running_mean", "running_var"] {
                        gather(tensors, &format!("{prefix}.{suffix}"), 0, &idx, false)?;
                    }
                    match layer_at(&mut new.layers, path).ok_or_else(missing)? {
                        Layer::BatchNorm(b) => b.num_features = idx.len(),
                        _ => return Err(missing()),
                    }
                }
                Through::Depthwise { path, prefix } => {
                    gather(tensors, &format!("{prefix}.weight"), 0, k, true)?;
                    gather(tensors, &format!("{prefix}.bias"), 0, k, false)?;
                    match layer_at(&mut new.layers, path).ok_or_else(missing)? {
                        Layer::Conv2d(c) => {
                            c.in_channels = n;
                            c.out_channels = n;
                            c.groups = n;
                        }
                        _ => return Err(missing()),
                    }
                }
            }
        }
        let c = &g.consumer;
        let idx = spread(k, c.spread);
        gather(tensors, &format!("{}.weight", c.prefix), c.dim, &idx, true)?;
        match layer_at(&mut new.layers, &c.path).ok_or_else(missing)? {
            Layer::Linear(l) => l.in_features = idx.len(),
            Layer::Conv2d(conv) => conv.in_channels = n,
            _ => return Err(missing()),
        }
        changes.push(LayerChange {
            layer: p.clone(),
            layer_type: g.producer.layer.type_name().to_string(),
            units_before: g.units,
            units_after: n,
            kept: k.clone(),
            consumer: c.prefix.clone(),
            resized: resized(g),
        });
    }
    new.validate()?;
    let logical = tensors
        .iter()
        .map(|(k, t)| (k.clone(), super::TensorMeta { dtype: "F32".into(), shape: t.shape.clone() }))
        .collect();
    new.check_weights(&logical)?;
    Ok((new, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::prune::select_keep;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn spec(json: &str) -> ModelSpec {
        ModelSpec::from_json(json.as_bytes()).unwrap()
    }

    /// Seeded random tensors for every parameter of `spec` (running_var positive).
    fn random_tensors(spec: &ModelSpec, seed: u64) -> BTreeMap<String, HostTensor> {
        let mut rng = StdRng::seed_from_u64(seed);
        spec.params()
            .into_iter()
            .map(|p| {
                let n = p.numel();
                let data = (0..n)
                    .map(|_| {
                        if p.name.ends_with("running_var") {
                            rng.random_range(0.5..1.5)
                        } else {
                            rng.random_range(-0.5..0.5)
                        }
                    })
                    .collect();
                (p.name, HostTensor { shape: p.shape, data })
            })
            .collect()
    }

    fn forward(spec: &ModelSpec, t: &BTreeMap<String, HostTensor>, x: &Tensor) -> Vec<Vec<f32>> {
        let m = t
            .iter()
            .map(|(k, v)| (k.clone(), Tensor::from_slice(&v.data, v.shape.as_slice(), &Device::Cpu).unwrap()))
            .collect();
        Network::from_tensors(spec, &m).unwrap().forward_candle(x).unwrap().to_vec2().unwrap()
    }

    /// Makes the units of `layer` not in `keep` dead: zero weights and bias, and (through batch
    /// norm `bn`) zero output, so removing them cannot change the network's output.
    fn kill(t: &mut BTreeMap<String, HostTensor>, layer: &str, bn: Option<&str>, keep: &[usize]) {
        let w = t.get_mut(&format!("{layer}.weight")).unwrap();
        let row = w.data.len() / w.shape[0];
        for u in 0..w.shape[0] {
            if !keep.contains(&u) {
                w.data[u * row..(u + 1) * row].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let units = w.shape[0];
        let mut zero = |name: String| {
            if let Some(b) = t.get_mut(&name) {
                for u in 0..units {
                    if !keep.contains(&u) {
                        b.data[u] = 0.0;
                    }
                }
            }
        };
        zero(format!("{layer}.bias"));
        if let Some(bn) = bn {
            zero(format!("{bn}.bias"));
            zero(format!("{bn}.running_mean"));
        }
    }

    fn close(a: &[Vec<f32>], b: &[Vec<f32>]) {
        assert_eq!(a.len(), b.len());
        for (r, s) in a.iter().zip(b) {
            assert_eq!(r.len(), s.len());
            for (x, y) in r.iter().zip(s) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }

    const MLP: &str = r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [6]},
        "output": {"classes": 3}, "layers": [
        {"type": "linear", "name": "fc1", "in_features": 6, "out_features": 8},
        {"type": "batch_norm", "name": "bn", "num_features": 8},
        {"type": "relu"},
        {"type": "dropout", "p": 0.1},
        {"type": "linear", "name": "fc2", "in_features": 8, "out_features": 5},
        {"type": "relu"},
        {"type": "linear", "name": "fc3", "in_features": 5, "out_features": 3}]}"#;

    #[test]
    fn mlp_groups_and_exact_rewrite_of_dead_units() {
        let s = spec(MLP);
        let layers = prunable_layers(&s).unwrap();
        let names: Vec<_> = layers.iter().map(|l| (l.layer.as_str(), l.consumer.as_str(), l.units)).collect();
        assert_eq!(names, vec![("fc1", "fc2", 8), ("fc2", "fc3", 5)]);
        assert_eq!(layers[0].resized, vec!["bn".to_string()]);

        let mut t = random_tensors(&s, 1);
        let k1 = vec![0, 2, 3, 7];
        let k2 = vec![1, 4];
        kill(&mut t, "fc1", Some("bn"), &k1);
        kill(&mut t, "fc2", None, &k2);
        let x = Tensor::from_vec((0..24).map(|i| (i as f32 * 0.37).sin()).collect(), (4, 6), &Device::Cpu).unwrap();
        let before = forward(&s, &t, &x);
        let keep = BTreeMap::from([("fc1".to_string(), k1.clone()), ("fc2".to_string(), k2.clone())]);
        let (new, changes) = apply(&s, &mut t, &keep).unwrap();
        assert_eq!(new.output_shape().unwrap(), vec![3]);
        assert_eq!(t["fc1.weight"].shape, vec![4, 6]);
        assert_eq!(t["bn.running_var"].shape, vec![4]);
        assert_eq!(t["fc2.weight"].shape, vec![2, 4]);
        assert_eq!(t["fc3.weight"].shape, vec![3, 2]);
        assert_eq!(changes[0].units_after, 4);
        close(&before, &forward(&new, &t, &x));
        // The pruned network has fewer parameters.
        let count = |s: &ModelSpec| s.params().iter().map(|p| p.numel()).sum::<usize>();
        assert!(count(&new) < count(&s));
    }

    #[test]
    fn output_layer_and_residual_outputs_are_not_prunable() {
        let s = spec(MLP);
        let mut t = random_tensors(&s, 2);
        let e = apply(&s, &mut t, &BTreeMap::from([("fc3".to_string(), vec![0, 1])])).unwrap_err();
        assert!(e.to_string().contains("layer fc3 cannot lose output units"), "{e}");
        let e = apply(&s, &mut t, &BTreeMap::from([("fc1".to_string(), vec![3, 1])])).unwrap_err();
        assert!(e.to_string().contains("ascending"), "{e}");
        let e = apply(&s, &mut t, &BTreeMap::from([("fc1".to_string(), vec![])])).unwrap_err();
        assert!(e.to_string().contains("non-empty"), "{e}");
    }

    const CNN: &str = r#"{"format": "modelpress.spec", "version": 1, "input": {"shape": [2, 8, 8]},
        "output": {"classes": 4}, "layers": [
        {"type": "sequential", "name": "features", "layers": [
          {"type": "conv2d", "in_channels": 2, "out_channels": 6, "kernel_size": 3, "padding": 1, "bias": false},
          {"type": "batch_norm", "num_features": 6},
          {"type": "relu"},
          {"type": "max_pool2d", "kernel_size": 2},
          {"type": "residual", "name": "res", "body": [
            {"type": "conv2d", "in_channels": 6, "out_channels": 10, "kernel_size": 1, "bias": false},
            {"type": "batch_norm", "num_features": 10},
            {"type": "relu6"},
            {"type": "conv2d", "in_channels": 10, "out_channels": 10, "kernel_size": 3, "padding": 1, "groups": 10},
            {"type": "batch_norm", "num_features": 10},
            {"type": "relu6"},
            {"type": "conv2d", "name": "project", "in_channels": 10, "out_channels": 6, "kernel_size": 1, "bias": false},
            {"type": "batch_norm", "name": "pbn", "num_features": 6}]},
          {"type": "conv2d", "in_channels": 6, "out_channels": 5, "kernel_size": 3, "padding": 1},
          {"type": "relu"}]},
        {"type": "flatten"},
        {"type": "linear", "name": "head", "in_features": 80, "out_features": 4}]}"#;

    #[test]
    fn cnn_with_residual_depthwise_and_flatten() {
        let s = spec(CNN);
        let layers = prunable_layers(&s).unwrap();
        let found: Vec<_> = layers.iter().map(|l| (l.layer.as_str(), l.consumer.as_str())).collect();
        // features.0 feeds a residual block (opaque): not prunable. Inside the body the first
        // 1x1 conv is prunable through its BN and the depthwise conv; the projection defines
        // the block output: not prunable. features.5 reaches the head through flatten.
        assert_eq!(found, vec![("features.res.body.0", "features.res.project"), ("features.5", "head")]);
        assert_eq!(layers[0].resized, vec!["features.res.body.1", "features.res.body.3", "features.res.body.4"]);

        let mut t = random_tensors(&s, 3);
        let k_body = vec![1, 2, 5, 6, 9];
        let k_last = vec![0, 3];
        // Dead units through the body's chain: zero 1x1 filter, BN shift zero, relu6(0) = 0,
        // the depthwise conv's bias and its BN shift zero too.
        kill(&mut t, "features.res.body.0", Some("features.res.body.1"), &k_body);
        kill(&mut t, "features.res.body.3", Some("features.res.body.4"), &k_body);
        kill(&mut t, "features.5", None, &k_last);
        let x = Tensor::from_vec((0..3 * 128).map(|i| (i as f32 * 0.11).cos()).collect(), (3, 2, 8, 8), &Device::Cpu)
            .unwrap();
        let before = forward(&s, &t, &x);
        let keep = BTreeMap::from([
            ("features.res.body.0".to_string(), k_body.clone()),
            ("features.5".to_string(), k_last.clone()),
        ]);
        let (new, _) = apply(&s, &mut t, &keep).unwrap();
        assert_eq!(t["features.res.body.3.weight"].shape, vec![5, 1, 3, 3]);
        assert_eq!(t["features.res.project.weight"].shape, vec![6, 5, 1, 1]);
        assert_eq!(t["head.weight"].shape, vec![4, 32]);
        close(&before, &forward(&new, &t, &x));
    }

    #[test]
    fn activation_scores_rank_dead_units_last() {
        let s = spec(MLP);
        let mut t = random_tensors(&s, 4);
        kill(&mut t, "fc1", Some("bn"), &[0, 1, 2, 3, 4, 5]);
        let x = Tensor::from_vec((0..60).map(|i| (i as f32 * 0.7).sin()).collect(), (10, 6), &Device::Cpu).unwrap();
        let scores = activation_scores(&s, &t, &["fc1".to_string(), "fc2".to_string()], &x).unwrap();
        assert_eq!(scores["fc1"].len(), 8);
        assert_eq!(scores["fc2"].len(), 5);
        assert_eq!(&scores["fc1"][6..], &[0.0, 0.0]);
        assert!(scores["fc1"][..6].iter().any(|&v| v > 0.0));
        assert_eq!(select_keep("fc1", &scores["fc1"], 6).unwrap().last(), Some(&5));

        // Conv inside a residual body: measured after its BN and relu6.
        let c = spec(CNN);
        let t = random_tensors(&c, 5);
        let x = Tensor::from_vec((0..2 * 128).map(|i| (i as f32 * 0.3).sin()).collect(), (2, 2, 8, 8), &Device::Cpu)
            .unwrap();
        let sc = activation_scores(&c, &t, &["features.res.body.0".to_string(), "features.5".to_string()], &x).unwrap();
        assert_eq!(sc["features.res.body.0"].len(), 10);
        assert_eq!(sc["features.5"].len(), 5);
        assert!(sc.values().flatten().all(|v| v.is_finite() && *v >= 0.0));
        let n = norm_scores(&t, "features.5", Norm::L1).unwrap();
        assert_eq!(n.len(), 5);
    }
}
