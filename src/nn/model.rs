//! [`Network`]: an eval-mode network built from a [`ModelSpec`] and its weights, ready for
//! inference.
//!
//! Built by the inference threads when a model is loaded and by compression jobs to measure
//! accuracy; `forward` is `&self`, and a `Network` is `Send + Sync`, so threads share one.
//! At load, float weights of any float dtype become f32 (bf16 matmul is slow on CPU), batch norm
//! is folded into a per-channel scale and shift, linear weights are stored transposed and
//! contiguous. Quantized linear weights run through candle's `QMatMul`, or, for int8 weights
//! handed over as [`Param::Int8`], through [`crate::kernels::Int8Linear`] (bias fused); quantized weights of any
//! other layer are dequantized to f32 at load (documented in `docs/spec.md`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::dense::{self, DenseChain, LinearWeights};
use super::ops::{self, Preprocessor};
use super::spec::{layer_prefix, Layer, ModelSpec, OutputKind, Slot, TensorMeta};
use super::NnError;
use crate::kernels::Int8Linear;

/// One parameter tensor handed to [`Network::new`].
#[derive(Debug, Clone)]
pub enum Param {
    /// A float tensor (F32/F16/BF16/F64; converted to f32 at load).
    Float(Tensor),
    /// A quantized tensor (ggml block format); its logical shape is the float shape.
    Quantized(Arc<QTensor>),
    /// An int8 linear weight packed for [`crate::kernels::Int8Linear`] (logical shape `[out, in]`).
    Int8(Arc<Int8Linear>),
}

impl Param {
    /// dtype and shape as the network sees them (quantized tensors count as F32).
    pub fn logical_meta(&self) -> TensorMeta {
        match self {
            Param::Float(t) => TensorMeta { dtype: dtype_name(t.dtype()).to_string(), shape: t.dims().to_vec() },
            Param::Quantized(q) => TensorMeta { dtype: "F32".to_string(), shape: q.shape().dims().to_vec() },
            Param::Int8(w) => TensorMeta { dtype: "F32".to_string(), shape: vec![w.out_features(), w.in_features()] },
        }
    }

    fn to_f32(&self, name: &str) -> Result<Tensor, NnError> {
        let t = match self {
            Param::Float(t) => t.to_dtype(DType::F32)?,
            Param::Quantized(q) => q.dequantize(&Device::Cpu)?,
            Param::Int8(w) => Tensor::from_vec(w.dequantize(), (w.out_features(), w.in_features()), &Device::Cpu)?,
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
        return Err(NnError::Param { name: name.to_string(), reason: format!("contains {} at index {i}", values[i]) });
    }
    Ok(())
}

enum LinearWeight {
    /// `W^T`, contiguous `[in, out]`.
    Float(Tensor),
    Quantized(QMatMul),
    /// Our int8 GEMM with the bias fused into its epilogue.
    Int8 {
        w: Arc<Int8Linear>,
        bias: Option<Vec<f32>>,
    },
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
    ChannelAffine {
        scale: Tensor,
        shift: Tensor,
    },
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
    /// Plain-Rust path for small batches of linear/ReLU chains (see [`super::dense`]).
    dense: Option<DenseChain>,
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
        let logical: BTreeMap<String, TensorMeta> = params.iter().map(|(k, v)| (k.clone(), v.logical_meta())).collect();
        spec.check_weights(&logical)?;
        let mut builder = Builder { params: &params };
        let nodes = builder.build(&spec.layers, "", Slot::Top, &spec.input.shape)?;
        let dense = DenseChain::compile(spec, |prefix| {
            let float = |name: &str| match params.get(name) {
                Some(Param::Float(t)) => t.to_dtype(DType::F32).ok(),
                _ => None,
            };
            let w = float(&format!("{prefix}.weight"))?;
            let wt = w.t().ok()?.flatten_all().ok()?.to_vec1::<f32>().ok()?;
            let bias = match float(&format!("{prefix}.bias")) {
                Some(b) => b.to_vec1::<f32>().ok()?,
                None => Vec::new(),
            };
            Some(LinearWeights { wt, bias })
        });
        Ok(Network { spec: spec.clone(), pre: Preprocessor::new(&spec.input)?, nodes, dense })
    }

    /// Builds the network from f32 (or other float) tensors, e.g. a training outcome.
    pub fn from_tensors(spec: &ModelSpec, params: &HashMap<String, Tensor>) -> Result<Network, NnError> {
        let params = params.iter().map(|(k, v)| (k.clone(), Param::Float(v.clone()))).collect();
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
        if dims[0] == 0 {
            return Err(NnError::Input("the batch is empty".into()));
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
        if let Some(dense) = &self.dense {
            self.check_input(x)?;
            if x.dim(0)? <= dense::MAX_BATCH {
                return Ok(dense.forward(x)?);
            }
        }
        self.forward_candle(x)
    }

    /// Forward through candle ops only (what batches above the small-batch path use).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let x = self.preprocess(x)?;
        self.forward_preprocessed(&x)
    }

    /// Whether small batches take the plain-Rust path (linear/ReLU chains on vectors).
    pub fn has_small_batch_path(&self) -> bool {
        self.dense.is_some()
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
            let x2 = if dims.len() == 2 { x.clone() } else { x.reshape(((), dims[dims.len() - 1]))? };
            let y = match w {
                LinearWeight::Float(wt) => x2.matmul(wt)?,
                LinearWeight::Quantized(q) => q.forward(&x2.contiguous()?)?,
                LinearWeight::Int8 { w, bias } => int8_forward(w, bias.as_deref(), &x2)?,
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
        Node::Conv { w, b, stride, padding, dilation, groups } => {
            let y = ops::conv2d(x, w, *padding, *stride, *dilation, *groups)?;
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

/// `[rows, in]` → `[rows, out]` through the int8 kernel (bias included).
fn int8_forward(w: &Int8Linear, bias: Option<&[f32]>, x: &Tensor) -> candle_core::Result<Tensor> {
    let rows = x.dim(0)?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; rows * w.out_features()];
    w.forward(&xs, rows, bias, &mut out).map_err(candle_core::Error::wrap)?;
    Tensor::from_vec(out, (rows, w.out_features()), x.device())
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
        let p =
            self.params.get(name).ok_or_else(|| NnError::Param { name: name.to_string(), reason: "missing".into() })?;
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
                let b = if l.bias { Some(self.f32(&format!("{prefix}.bias"))?) } else { None };
                let (w, b) = match self.params.get(&wname) {
                    Some(Param::Quantized(q)) => (LinearWeight::Quantized(QMatMul::from_arc(q.clone())?), b),
                    Some(Param::Int8(w)) => {
                        let bias = b.map(|b| b.to_vec1::<f32>()).transpose()?;
                        (LinearWeight::Int8 { w: w.clone(), bias }, None)
                    }
                    _ => (LinearWeight::Float(self.f32(&wname)?.t()?.contiguous()?), b),
                };
                Node::Linear { w, b, out: l.out_features }
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
                Node::ChannelAffine { scale: scale.reshape(cs.as_slice())?, shift: shift.reshape(cs.as_slice())? }
            }
            Layer::LayerNorm(ln) => {
                let affine = if ln.elementwise_affine {
                    Some((self.f32(&format!("{prefix}.weight"))?, self.f32(&format!("{prefix}.bias"))?))
                } else {
                    None
                };
                Node::LayerNorm { dims: ln.normalized_shape.len(), eps: ln.eps, affine }
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
            Layer::Reshape(r) => Node::Reshape(super::spec::reshape_target(&r.shape, shape).map_err(NnError::Input)?),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nn::data::Dataset;
    use crate::nn::eval::evaluate;
    use candle_core::quantized::GgmlDType;

    pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    pub(crate) fn load(rel: &str) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(format!("{FIXTURES}/{rel}"), &Device::Cpu).unwrap()
    }

    pub(crate) fn digits_spec() -> ModelSpec {
        let json = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/digits-mlp.spec.json")).unwrap();
        ModelSpec::from_json(&json).unwrap()
    }

    pub(crate) fn teacher() -> Network {
        Network::from_tensors(&digits_spec(), &load("teacher_digits.safetensors")).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn reference_case(name: &str) -> (Network, Tensor, Tensor) {
        let spec = std::fs::read(format!("{FIXTURES}/reference/{name}.spec.json")).unwrap();
        let spec = ModelSpec::from_json(&spec).unwrap();
        let mut tensors = load(&format!("reference/{name}.safetensors"));
        let input = tensors.remove("input").unwrap();
        let expected = tensors.remove("expected").unwrap();
        let params = tensors.into_iter().map(|(k, v)| (k, Param::Float(v))).collect();
        (Network::new(&spec, params).unwrap(), input, expected)
    }

    #[test]
    fn network_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Network>();
    }

    #[test]
    fn digits_teacher_matches_numpy_reference() {
        let r = load("reference/digits_teacher.safetensors");
        let out = teacher().forward(&r["x"]).unwrap();
        assert_eq!(out.dims(), &[32, 10]);
        let d = max_abs_diff(&out, &r["logits"]);
        assert!(d <= 1e-4, "max abs diff {d}");
    }

    #[test]
    fn cnn_matches_numpy_reference() {
        let (net, input, expected) = reference_case("cnn");
        assert_eq!(input.dtype(), DType::U8);
        let out = net.forward(&input).unwrap();
        assert_eq!(out.dims(), expected.dims());
        let d = max_abs_diff(&out, &expected);
        assert!(d <= 1e-4, "max abs diff {d}");
        // Batch splitting gives the same numbers.
        let chunked = net.predict_batches(&input, 2).unwrap();
        assert!(max_abs_diff(&out, &chunked) <= 1e-6);
    }

    #[test]
    fn mlp_with_norms_and_softmax_matches_numpy_reference() {
        let (net, input, expected) = reference_case("mlp");
        assert_eq!(net.output_kind(), OutputKind::Probabilities);
        let out = net.forward(&input).unwrap();
        let d = max_abs_diff(&out, &expected);
        assert!(d <= 1e-4, "max abs diff {d}");
    }

    #[test]
    fn digits_teacher_gets_351_of_360() {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let test = ds.test.unwrap();
        let report = evaluate(&teacher(), &test.x, test.y.as_ref().unwrap(), 64).unwrap();
        assert_eq!((report.correct, report.samples), (351, 360));
        assert!((report.accuracy - 0.975).abs() < 1e-12);
    }

    #[test]
    fn small_batch_path_matches_candle_path() {
        let net = teacher();
        assert!(net.has_small_batch_path());
        let r = load("reference/digits_teacher.safetensors");
        for n in [1, 3, dense::MAX_BATCH] {
            let x = r["x"].narrow(0, 0, n).unwrap();
            let fast = net.forward(&x).unwrap();
            let slow = net.forward_candle(&x).unwrap();
            assert_eq!(fast.dims(), &[n, 10]);
            assert!(max_abs_diff(&fast, &slow) <= 1e-4);
            assert!(max_abs_diff(&fast, &r["logits"].narrow(0, 0, n).unwrap()) <= 1e-4);
        }
        // Preprocessing, relu6, dropout and nested blocks are covered too; anything else is not.
        let spec = ModelSpec::from_json(
            br#"{"format": "modelpress.spec", "version": 1,
                "input": {"shape": [4], "dtype": "u8", "preprocess": {"scale": 0.1, "mean": [0.5, 0, 1, 2], "std": [2]}},
                "output": {"classes": 3},
                "layers": [{"type": "sequential", "layers": [
                              {"type": "linear", "in_features": 4, "out_features": 5, "bias": false},
                              {"type": "relu6"}, {"type": "dropout", "p": 0.5}]},
                           {"type": "linear", "in_features": 5, "out_features": 3}]}"#,
        )
        .unwrap();
        let params = crate::nn::train::init_params(&spec, 9).unwrap();
        let net = Network::from_tensors(&spec, &params).unwrap();
        assert!(net.has_small_batch_path());
        let x = Tensor::new(&[[3u8, 250, 7, 99], [0, 1, 2, 3]], &Device::Cpu).unwrap();
        assert!(max_abs_diff(&net.forward(&x).unwrap(), &net.forward_candle(&x).unwrap()) <= 1e-5);
        let (cnn, _, _) = reference_case("mlp");
        assert!(!cnn.has_small_batch_path());
    }

    #[test]
    fn half_precision_weights_are_converted() {
        let tensors = load("teacher_digits.safetensors");
        let half: HashMap<String, Param> =
            tensors.iter().map(|(k, v)| (k.clone(), Param::Float(v.to_dtype(DType::BF16).unwrap()))).collect();
        let net = Network::new(&digits_spec(), half).unwrap();
        let r = load("reference/digits_teacher.safetensors");
        let out = net.forward(&r["x"]).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        let d = max_abs_diff(&out, &r["logits"]);
        // bf16 keeps 8 bits of mantissa: close, but not reference-exact.
        assert!(d > 1e-6 && d < 0.5, "max abs diff {d}");
    }

    #[test]
    fn quantized_linear_weights_run_through_qmatmul() {
        let tensors = load("teacher_digits.safetensors");
        let mut params: HashMap<String, Param> = HashMap::new();
        for (k, v) in &tensors {
            let p = if k.ends_with(".weight") && k != "fc3.weight" {
                Param::Quantized(Arc::new(QTensor::quantize(v, GgmlDType::Q8_0).unwrap()))
            } else {
                Param::Float(v.clone())
            };
            params.insert(k.clone(), p);
        }
        let net = Network::new(&digits_spec(), params).unwrap();
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let test = ds.test.unwrap();
        let report = evaluate(&net, &test.x, test.y.as_ref().unwrap(), 64).unwrap();
        assert!(report.correct >= 348, "int8 accuracy dropped: {}", report.correct);
        let agreement = crate::nn::eval::compare(&teacher(), &net, &test.x, 100).unwrap();
        assert!(agreement.top1_agreement >= 0.98, "{agreement:?}");
        assert!(agreement.mean_kl > 0.0 && agreement.mean_kl < 0.01, "{agreement:?}");
    }

    #[test]
    fn bad_inputs_and_weights_are_reported() {
        let net = teacher();
        let e = net.forward(&Tensor::zeros((2, 63), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
        assert!(e.to_string().contains("expected a batch of shape [N, 64]"), "{e}");

        let mut tensors = load("teacher_digits.safetensors");
        let mut w = tensors["fc2.bias"].to_vec1::<f32>().unwrap();
        w[17] = f32::NAN;
        tensors.insert("fc2.bias".into(), Tensor::new(w, &Device::Cpu).unwrap());
        let e = Network::from_tensors(&digits_spec(), &tensors).unwrap_err().to_string();
        assert_eq!(e, "parameter fc2.bias: contains NaN at index 17");

        tensors.remove("fc1.weight");
        tensors.remove("fc2.bias");
        let e = Network::from_tensors(&digits_spec(), &tensors).unwrap_err();
        match e {
            NnError::Mismatch(m) => assert_eq!(m.problems.len(), 2, "{m}"),
            other => panic!("unexpected {other}"),
        }
    }
}
