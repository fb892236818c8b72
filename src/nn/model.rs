//! [`Network`]: an eval-mode network built from a [`ModelSpec`] and its weights, ready for
//! inference.
//!
//! Built by the inference threads when a model is loaded and by compression jobs to measure
//! accuracy; `forward` is `&self`, and a `Network` is `Send + Sync`, so threads share one.
//! At load, float weights of any float dtype become f32 (bf16 matmul is slow on CPU), batch norm
//! is folded into a per-channel scale and shift, linear weights are stored transposed and
//! contiguous. Quantized linear weights run through candle's `QMatMul`; quantized weights of any
//! other layer are dequantized to f32 at load (documented in `docs/spec.md`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::ops::{self, Preprocessor};
use super::spec::{layer_prefix, Layer, ModelSpec, OutputKind, Slot, TensorMeta};
use super::NnError;

/// One parameter tensor handed to [`Network::new`].
#[derive(Debug, Clone)]
pub enum Param {
    /// A float tensor (F32/F16/BF16/F64; converted to f32 at load).
    Float(Tensor),
    /// A quantized tensor (ggml block format); its logical shape is the float shape.
    Quantized(Arc<QTensor>),
}

impl Param {
    /// dtype and shape as the network sees them (quantized tensors count as F32).
    pub fn logical_meta(&self) -> TensorMeta {
        match self {
            Param::Float(t) => TensorMeta {
                dtype: dtype_name(t.dtype()).to_string(),
                shape: t.dims().to_vec(),
            },
            Param::Quantized(q) => TensorMeta {
                dtype: "F32".to_string(),
                shape: q.shape().dims().to_vec(),
            },
        }
    }

    fn to_f32(&self, name: &str) -> Result<Tensor, NnError> {
        let t = match self {
            Param::Float(t) => t.to_dtype(DType::F32)?,
            Param::Quantized(q) => q.dequantize(&Device::Cpu)?,
        };
        check_finite(name, &t)?;
        Ok(t)
    }
}

/// safetensors spelling of a candle dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        _ => "unsupported",
    }
}

/// Rejects NaN/inf weights with the index of the first bad value.
fn check_finite(name: &str, t: &Tensor) -> Result<(), NnError> {
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(NnError::Param {
            name: name.to_string(),
            reason: format!("contains {} at index {i}", values[i]),
        });
    }
    Ok(())
}

enum LinearWeight {
    /// `W^T`, contiguous `[in, out]`.
    Float(Tensor),
    Quantized(QMatMul),
}

enum Node {
    Linear {
        w: LinearWeight,
        b: Option<Tensor>,
        out: usize,
    },
    Conv {
        w: Tensor,
        /// Shaped `[C, 1, 1]` to broadcast over `[N, C, H, W]`.
        b: Option<Tensor>,
        stride: usize,
        padding: (usize, usize),
        dilation: usize,
        groups: usize,
    },
    /// Folded batch norm: `x * scale + shift`, both shaped `[C, 1, ...]`.
    ChannelAffine { scale: Tensor, shift: Tensor },
    LayerNorm {
        dims: usize,
        eps: f64,
        affine: Option<(Tensor, Tensor)>,
    },
    /// Activations and pooling, evaluated by [`ops`].
    Stateless(Layer),
    Softmax(usize),
    GlobalAvgPool,
    Reshape(Vec<usize>),
    Identity,
    Residual {
        body: Vec<Node>,
        shortcut: Option<Vec<Node>>,
    },
    Seq(Vec<Node>),
}

/// An eval-mode network: preprocessing, layers, `[N, classes]` f32 output.
pub struct Network {
    spec: ModelSpec,
    pre: Preprocessor,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("input", &self.spec.input.shape)
            .field("classes", &self.spec.output.classes)
            .field("layers", &self.spec.layers.len())
            .finish()
    }
}

impl Network {
    /// Builds the network. Checks every needed tensor (all problems listed), converts floats to
    /// f32, rejects NaN/inf weights. Tensors not used by the spec are ignored.
    pub fn new(spec: &ModelSpec, params: HashMap<String, Param>) -> Result<Network, NnError> {
        let logical: BTreeMap<String, TensorMeta> = params
            .iter()
            .map(|(k, v)| (k.clone(), v.logical_meta()))
            .collect();
        spec.check_weights(&logical)?;
        let mut builder = Builder { params: &params };
        let nodes = builder.build(&spec.layers, "", Slot::Top, &spec.input.shape)?;
        Ok(Network {
            spec: spec.clone(),
            pre: Preprocessor::new(&spec.input)?,
            nodes,
        })
    }

    /// Builds the network from f32 (or other float) tensors, e.g. a training outcome.
    pub fn from_tensors(spec: &ModelSpec, params: &HashMap<String, Tensor>) -> Result<Network, NnError> {
        let params = params
            .iter()
            .map(|(k, v)| (k.clone(), Param::Float(v.clone())))
            .collect();
        Self::new(spec, params)
    }

    /// The spec this network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        self.spec.output.classes
    }

    /// Whether the output is logits or probabilities.
    pub fn output_kind(&self) -> OutputKind {
        self.spec.output.kind
    }

    /// Checks that `x` is `[N, ...input.shape]` with a numeric dtype.
    pub fn check_input(&self, x: &Tensor) -> Result<(), NnError> {
        let dims = x.dims();
        if dims.len() != self.spec.input.shape.len() + 1 || dims[1..] != self.spec.input.shape[..] {
            return Err(NnError::Input(format!(
                "expected a batch of shape [N, {}], got {dims:?}",
                join(&self.spec.input.shape)
            )));
        }
        Ok(())
    }

    /// Converts a raw batch (declared dtype, or any numeric dtype) to preprocessed f32.
    pub fn preprocess(&self, x: &Tensor) -> Result<Tensor, NnError> {
        self.check_input(x)?;
        Ok(self.pre.apply(x)?)
    }

    /// Eval-mode forward: raw batch `[N, ...input.shape]` → `[N, classes]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let x = self.preprocess(x)?;
        self.forward_preprocessed(&x)
    }

    /// Forward of an already preprocessed f32 batch (skips conversion and preprocessing).
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<Tensor, NnError> {
        Ok(run(&self.nodes, x)?)
    }

    /// Forward in chunks of `batch_size` along dim 0, concatenated.
    pub fn predict_batches(&self, x: &Tensor, batch_size: usize) -> Result<Tensor, NnError> {
        self.check_input(x)?;
        let n = x.dim(0)?;
        let bs = batch_size.max(1);
        if n <= bs {
            return self.forward(x);
        }
        let mut outs = Vec::with_capacity(n.div_ceil(bs));
        let mut start = 0;
        while start < n {
            let len = bs.min(n - start);
            outs.push(self.forward(&x.narrow(0, start, len)?)?);
            start += len;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn run(nodes: &[Node], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut x = x.clone();
    for node in nodes {
        x = run_node(node, &x)?;
    }
    Ok(x)
}

fn run_node(node: &Node, x: &Tensor) -> candle_core::Result<Tensor> {
    match node {
        Node::Linear { w, b, out } => {
            let dims = x.dims().to_vec();
            let x2 = if dims.len() == 2 {
                x.clone()
            } else {
                x.reshape(((), dims[dims.len() - 1]))?
            };
            let y = match w {
                LinearWeight::Float(wt) => x2.matmul(wt)?,
                LinearWeight::Quantized(q) => q.forward(&x2.contiguous()?)?,
            };
            let y = match b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            if dims.len() == 2 {
                Ok(y)
            } else {
                let mut od = dims;
                *od.last_mut().expect("rank >= 2") = *out;
                y.reshape(od)
            }
        }
        Node::Conv {
            w,
            b,
            stride,
            padding,
            dilation,
            groups,
        } => {
            let y = if padding.0 == padding.1 {
                x.conv2d(w, padding.0, *stride, *dilation, *groups)?
            } else {
                ops::zero_pad_hw(x, padding.0, padding.1)?.conv2d(w, 0, *stride, *dilation, *groups)?
            };
            match b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        }
        Node::ChannelAffine { scale, shift } => x.broadcast_mul(scale)?.broadcast_add(shift),
        Node::LayerNorm { dims, eps, affine } => layer_norm(x, *dims, *eps, affine.as_ref()),
        Node::Stateless(layer) => match layer {
            Layer::MaxPool2d(p) => ops::pool2d(x, p, true, false),
            Layer::AvgPool2d(p) => ops::pool2d(x, p, false, false),
            other => ops::activation(other, x).expect("only activations and pools are Stateless"),
        },
        Node::Softmax(dim) => candle_nn::ops::softmax(x, *dim),
        Node::GlobalAvgPool => ops::global_avg_pool(x),
        Node::Reshape(shape) => {
            let mut dims = vec![x.dim(0)?];
            dims.extend_from_slice(shape);
            x.reshape(dims)
        }
        Node::Identity => Ok(x.clone()),
        Node::Residual { body, shortcut } => {
            let b = run(body, x)?;
            let s = match shortcut {
                Some(s) => run(s, x)?,
                None => x.clone(),
            };
            b + s
        }
        Node::Seq(nodes) => run(nodes, x),
    }
}

/// Layer norm over the last `dims` dims (shared with training, which passes its own weights).
pub(crate) fn layer_norm(
    x: &Tensor,
    dims: usize,
    eps: f64,
    affine: Option<&(Tensor, Tensor)>,
) -> candle_core::Result<Tensor> {
    let shape = x.dims().to_vec();
    let split = shape.len() - dims;
    let inner: usize = shape[split..].iter().product();
    let flat = x.reshape((shape[..split].iter().product::<usize>(), inner))?;
    let mean = flat.mean_keepdim(1)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(1)?;
    let y = centered.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(shape)?;
    match affine {
        Some((w, b)) => y.broadcast_mul(w)?.broadcast_add(b),
        None => Ok(y),
    }
}

struct Builder<'a> {
    params: &'a HashMap<String, Param>,
}

impl Builder<'_> {
    fn f32(&self, name: &str) -> Result<Tensor, NnError> {
        let p = self.params.get(name).ok_or_else(|| NnError::Param {
            name: name.to_string(),
            reason: "missing".into(),
        })?;
        p.to_f32(name)
    }

    fn build(&mut self, layers: &[Layer], parent: &str, slot: Slot, in_shape: &[usize]) -> Result<Vec<Node>, NnError> {
        let mut shape = in_shape.to_vec();
        let mut nodes = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let prefix = layer_prefix(parent, slot, i, layer.name());
            let (node, out_shape) = self.node(layer, &prefix, &shape)?;
            nodes.push(node);
            shape = out_shape;
        }
        Ok(nodes)
    }

    fn node(&mut self, layer: &Layer, prefix: &str, shape: &[usize]) -> Result<(Node, Vec<usize>), NnError> {
        let channel_shape = |c: usize| {
            let mut s = vec![1usize; shape.len()];
            s[0] = c;
            s
        };
        let node = match layer {
            Layer::Linear(l) => {
                let wname = format!("{prefix}.weight");
                let w = match self.params.get(&wname) {
                    Some(Param::Quantized(q)) => LinearWeight::Quantized(QMatMul::from_arc(q.clone())?),
                    _ => LinearWeight::Float(self.f32(&wname)?.t()?.contiguous()?),
                };
                let b = if l.bias {
                    Some(self.f32(&format!("{prefix}.bias"))?)
                } else {
                    None
                };
                Node::Linear {
                    w,
                    b,
                    out: l.out_features,
                }
            }
            Layer::Conv2d(c) => {
                let w = self.f32(&format!("{prefix}.weight"))?;
                let b = if c.bias {
                    Some(self.f32(&format!("{prefix}.bias"))?.reshape((c.out_channels, 1, 1))?)
                } else {
                    None
                };
                Node::Conv {
                    w,
                    b,
                    stride: c.stride,
                    padding: (c.padding.0, c.padding.1),
                    dilation: c.dilation,
                    groups: c.groups,
                }
            }
            Layer::BatchNorm(bn) => {
                let mean = self.f32(&format!("{prefix}.running_mean"))?;
                let var = self.f32(&format!("{prefix}.running_var"))?;
                if let Some(i) = var.to_vec1::<f32>()?.iter().position(|v| *v < 0.0) {
                    return Err(NnError::Param {
                        name: format!("{prefix}.running_var"),
                        reason: format!("negative variance at index {i}"),
                    });
                }
                let inv = (var + bn.eps)?.sqrt()?.recip()?;
                let (scale, shift) = if bn.affine {
                    let g = self.f32(&format!("{prefix}.weight"))?;
                    let b = self.f32(&format!("{prefix}.bias"))?;
                    let scale = (g * inv)?;
                    let shift = (b - (&mean * &scale)?)?;
                    (scale, shift)
                } else {
                    let shift = (mean.neg()? * &inv)?;
                    (inv, shift)
                };
                let cs = channel_shape(bn.num_features);
                Node::ChannelAffine {
                    scale: scale.reshape(cs.as_slice())?,
                    shift: shift.reshape(cs.as_slice())?,
                }
            }
            Layer::LayerNorm(ln) => {
                let affine = if ln.elementwise_affine {
                    Some((
                        self.f32(&format!("{prefix}.weight"))?,
                        self.f32(&format!("{prefix}.bias"))?,
                    ))
                } else {
                    None
                };
                Node::LayerNorm {
                    dims: ln.normalized_shape.len(),
                    eps: ln.eps,
                    affine,
                }
            }
            Layer::Relu(_)
            | Layer::Relu6(_)
            | Layer::Gelu(_)
            | Layer::Sigmoid(_)
            | Layer::Tanh(_)
            | Layer::MaxPool2d(_)
            | Layer::AvgPool2d(_) => Node::Stateless(layer.clone()),
            Layer::Softmax(s) => {
                let d = super::spec::resolve_dim(s.dim, shape.len()).map_err(NnError::Input)?;
                Node::Softmax(d + 1)
            }
            Layer::GlobalAvgPool(_) => Node::GlobalAvgPool,
            Layer::Flatten(_) => Node::Reshape(vec![shape.iter().product()]),
            Layer::Dropout(_) => Node::Identity,
            Layer::Reshape(r) => {
                Node::Reshape(super::spec::reshape_target(&r.shape, shape).map_err(NnError::Input)?)
            }
            Layer::Residual(r) => {
                let body = self.build(&r.body, prefix, Slot::Body, shape)?;
                let shortcut = match &r.shortcut {
                    Some(s) => Some(self.build(s, prefix, Slot::Shortcut, shape)?),
                    None => None,
                };
                Node::Residual { body, shortcut }
            }
            Layer::Sequential(s) => Node::Seq(self.build(&s.layers, prefix, Slot::Seq, shape)?),
        };
        let out = super::spec::layer_output_shape(layer, shape).map_err(NnError::Input)?;
        Ok((node, out))
    }
}

