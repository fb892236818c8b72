//! Architecture spec + stored weights → ONNX model (opset 17, IR 8).
//!
//! Weights keep their safetensors names as initializer names. Float weights are plain
//! initializers; f16 weights stay FLOAT16 followed by a `Cast` to float (ONNX Runtime folds it at
//! load, so it computes in f32 like modelpress); int8 weights stay INT8 behind a per-channel
//! `DequantizeLinear` (axis 0, the layout the quantize job wrote, zero points explicit) — QDQ
//! form, which ONNX Runtime's graph optimiser recognises, and exact: it computes the same `q·s`
//! values modelpress runs. int4 and GGML block types are dequantized to f32 (ONNX has no GGML
//! blocks); sparse-encoded tensors are written dense.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use super::proto::{
    data_type, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, ValueInfoProto,
};
use super::OnnxError;
use crate::compress::quant::{HalfData, Int8Data, QuantData};
use crate::nn::spec::{layer_prefix, InputDType, Layer, ModelSpec, Slot};
use crate::tensorfile::{Dtype, Tensorfile};

/// Opset of exported models.
pub const EXPORT_OPSET: i64 = 17;
/// IR version of exported models (ONNX 1.13+, every ONNX Runtime since 1.14 reads it).
pub const EXPORT_IR_VERSION: i64 = 8;

/// One weight as it will be stored.
#[derive(Debug, Clone)]
pub enum Weight {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Int8(Int8Data),
}

/// Weights by stored name: shape and data.
pub type Weights = HashMap<String, (Vec<usize>, Weight)>;

/// Loads every logical tensor of a stored model file in its exportable form, and the scheme label.
pub fn load_weights(path: &Path) -> Result<(Weights, String), OnnxError> {
    let tf = Tensorfile::open_trusted(path)?;
    let mut out = HashMap::new();
    let cfg = crate::artifact::quant_config(&tf.header);
    let scheme = cfg.as_ref().map(|c| c.scheme.label()).unwrap_or_else(|| "f32".into());
    let bad = |e: crate::artifact::ArtifactError| OnnxError::Invalid(format!("reading the stored model: {e}"));
    for q in crate::artifact::quantized_tensors(&tf).map_err(bad)? {
        let shape = q.shape().to_vec();
        let w = match q.data {
            QuantData::Int8(d) => Weight::Int8(d),
            QuantData::Half(HalfData::F16 { values, .. }) => Weight::F16(values),
            _ => Weight::F32(q.dequantize().map_err(|e| OnnxError::Invalid(e.to_string()))?),
        };
        out.insert(q.name.clone(), (shape, w));
    }
    let sparse = crate::jobs::prune::sparse_config(&tf.header);
    for s in crate::jobs::prune::sparse_tensors(&tf).map_err(|e| OnnxError::Invalid(e.to_string()))? {
        out.insert(s.name.clone(), (s.shape, Weight::F32(s.data)));
    }
    let logical = crate::artifact::logical_tensors(&tf.header);
    for t in &tf.header.tensors {
        let part = sparse.as_ref().is_some_and(|c| c.is_part(&t.name));
        if out.contains_key(&t.name) || !logical.contains_key(&t.name) || part || !t.dtype.is_float() {
            continue;
        }
        let w = if t.dtype == Dtype::F16 {
            let b = tf.bytes(t);
            Weight::F16(b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect())
        } else {
            Weight::F32(tf.to_f32(t)?)
        };
        out.insert(t.name.clone(), (t.shape.clone(), w));
    }
    let scheme = if sparse.is_some() { format!("{scheme}+sparse") } else { scheme };
    Ok((out, scheme))
}

/// Who made the model, for `metadata_props`.
#[derive(Debug, Clone, Default)]
pub struct ExportInfo {
    pub model_id: String,
    pub model_name: String,
    /// The model this one was derived from.
    pub source_model: Option<String>,
    pub job: Option<String>,
}

/// Reads the stored model at `src` and writes it as ONNX to `dst`.
pub fn write_onnx(src: &Path, dst: &Path, spec: &ModelSpec, info: &ExportInfo) -> Result<(), OnnxError> {
    use prost::Message;
    let (weights, scheme) = load_weights(src)?;
    let model = build_model(spec, &weights, &scheme, info)?;
    let len = model.encoded_len();
    if len > i32::MAX as usize {
        return Err(OnnxError::Invalid(format!(
            "the ONNX file would be {len} bytes; single-file ONNX models are limited to 2 GiB"
        )));
    }
    let mut buf = Vec::with_capacity(len);
    model.encode(&mut buf).map_err(|e| OnnxError::Invalid(e.to_string()))?;
    let mut f = std::fs::File::create(dst)?;
    std::io::Write::write_all(&mut f, &buf)?;
    f.sync_all()?;
    Ok(())
}

struct Builder<'w> {
    weights: &'w Weights,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Weight name → the value holding it as f32 (after Cast / DequantizeLinear).
    done: HashMap<String, String>,
    next: usize,
}

impl Builder<'_> {
    fn val(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}:{}", self.next)
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.val(&format!("{name}/{op}"));
        let mut n = NodeProto::new(op, format!("{name}/{op}:{}", self.next), inputs, &[&out]);
        n.attribute = attrs;
        self.nodes.push(n);
        out
    }

    fn const_f32(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        let n = format!("{name}:{}", self.next);
        self.next += 1;
        self.inits.push(TensorProto::f32(n.clone(), dims, v));
        n
    }

    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        let n = format!("{name}:{}", self.next);
        self.next += 1;
        self.inits.push(TensorProto::i64(n.clone(), &[v.len()], v));
        n
    }

    /// The f32 value of weight `name`, adding its initializers (and Cast/DequantizeLinear).
    fn weight(&mut self, name: &str) -> Result<String, OnnxError> {
        if let Some(v) = self.done.get(name) {
            return Ok(v.clone());
        }
        let (shape, w) = self
            .weights
            .get(name)
            .ok_or_else(|| OnnxError::Invalid(format!("the stored model has no tensor '{name}'")))?;
        let value = match w {
            Weight::F32(v) => {
                self.inits.push(TensorProto::f32(name, shape, v));
                name.to_string()
            }
            Weight::F16(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.inits.push(TensorProto::raw(name, data_type::FLOAT16, shape, Bytes::from(bytes)));
                let out = format!("{name}_f32");
                self.nodes.push(
                    NodeProto::new("Cast", format!("{name}/Cast"), &[name], &[&out])
                        .with(AttributeProto::int("to", data_type::FLOAT as i64)),
                );
                out
            }
            Weight::Int8(d) => {
                let q: Vec<u8> = d.values.iter().map(|&x| x as u8).collect();
                self.inits.push(TensorProto::raw(name, data_type::INT8, shape, Bytes::from(q)));
                let per_channel = d.scales.len() > 1 || (shape.len() > 1 && d.scales.len() == shape[0]);
                let sdims: Vec<usize> = if per_channel { vec![d.scales.len()] } else { vec![] };
                let (sn, zn) = (format!("{name}_scale"), format!("{name}_zero_point"));
                self.inits.push(TensorProto::f32(sn.clone(), &sdims, &d.scales));
                let zp: Vec<u8> = match &d.zero_points {
                    Some(z) => z.iter().map(|&x| x as u8).collect(),
                    None => vec![0; d.scales.len()],
                };
                self.inits.push(TensorProto::raw(zn.clone(), data_type::INT8, &sdims, Bytes::from(zp)));
                let out = format!("{name}_dq");
                let mut n =
                    NodeProto::new("DequantizeLinear", format!("{name}/DequantizeLinear"), &[name, &sn, &zn], &[&out]);
                if per_channel {
                    n = n.with(AttributeProto::int("axis", 0));
                }
                self.nodes.push(n);
                out
            }
        };
        self.done.insert(name.to_string(), value.clone());
        Ok(value)
    }

    /// Appends `layers` to the graph starting from `x` (per-sample `shape`); returns the output.
    fn layers(
        &mut self,
        layers: &[Layer],
        parent: &str,
        slot: Slot,
        mut x: String,
        shape: &mut Vec<usize>,
    ) -> Result<String, OnnxError> {
        for (i, layer) in layers.iter().enumerate() {
            let p = layer_prefix(parent, slot, i, layer.name());
            let next_shape = crate::nn::spec::layer_output_shape(layer, shape)
                .map_err(|e| OnnxError::Invalid(format!("{p}: {e}")))?;
            x = self.layer(layer, &p, &x, shape)?;
            *shape = next_shape;
        }
        Ok(x)
    }

    fn layer(&mut self, layer: &Layer, p: &str, x: &str, shape: &[usize]) -> Result<String, OnnxError> {
        let ints = |n: &str, v: &[usize]| AttributeProto::ints(n, &v.iter().map(|&d| d as i64).collect::<Vec<_>>());
        Ok(match layer {
            Layer::Linear(l) => {
                let w = self.weight(&format!("{p}.weight"))?;
                let b = if l.bias { Some(self.weight(&format!("{p}.bias"))?) } else { None };
                if shape.len() == 1 {
                    let mut ins = vec![x, w.as_str()];
                    if let Some(b) = &b {
                        ins.push(b);
                    }
                    self.node("Gemm", p, &ins, vec![AttributeProto::int("transB", 1)])
                } else {
                    let wt = self.node("Transpose", p, &[&w], vec![AttributeProto::ints("perm", &[1, 0])]);
                    let y = self.node("MatMul", p, &[x, &wt], vec![]);
                    match &b {
                        Some(b) => self.node("Add", p, &[&y, b], vec![]),
                        None => y,
                    }
                }
            }
            Layer::Conv2d(c) => {
                let w = self.weight(&format!("{p}.weight"))?;
                let mut ins = vec![x.to_string(), w];
                if c.bias {
                    ins.push(self.weight(&format!("{p}.bias"))?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let (ph, pw) = (c.padding.0, c.padding.1);
                self.node(
                    "Conv",
                    p,
                    &ins,
                    vec![
                        ints("kernel_shape", &[c.kernel_size.0, c.kernel_size.1]),
                        ints("strides", &[c.stride, c.stride]),
                        ints("pads", &[ph, pw, ph, pw]),
                        ints("dilations", &[c.dilation, c.dilation]),
                        AttributeProto::int("group", c.groups as i64),
                    ],
                )
            }
            Layer::BatchNorm(b) => {
                let n = b.num_features;
                let (w, bias) = if b.affine {
                    (self.weight(&format!("{p}.weight"))?, self.weight(&format!("{p}.bias"))?)
                } else {
                    (
                        self.const_f32(&format!("{p}.ones"), &[n], &vec![1.0; n]),
                        self.const_f32(&format!("{p}.zeros"), &[n], &vec![0.0; n]),
                    )
                };
                let (m, v) = (self.weight(&format!("{p}.running_mean"))?, self.weight(&format!("{p}.running_var"))?);
                self.node(
                    "BatchNormalization",
                    p,
                    &[x, &w, &bias, &m, &v],
                    vec![
                        AttributeProto::float("epsilon", b.eps as f32),
                        AttributeProto::float("momentum", (1.0 - b.momentum) as f32),
                    ],
                )
            }
            Layer::LayerNorm(l) => {
                let k = l.normalized_shape.len() as i64;
                let n: usize = l.normalized_shape.iter().product();
                let (w, bias) = if l.elementwise_affine {
                    (self.weight(&format!("{p}.weight"))?, self.weight(&format!("{p}.bias"))?)
                } else {
                    (
                        self.const_f32(&format!("{p}.ones"), &l.normalized_shape, &vec![1.0; n]),
                        self.const_f32(&format!("{p}.zeros"), &l.normalized_shape, &vec![0.0; n]),
                    )
                };
                self.node(
                    "LayerNormalization",
                    p,
                    &[x, &w, &bias],
                    vec![AttributeProto::int("axis", -k), AttributeProto::float("epsilon", l.eps as f32)],
                )
            }
            Layer::Relu(_) => self.node("Relu", p, &[x], vec![]),
            Layer::Relu6(_) => {
                let lo = self.const_f32(&format!("{p}.min"), &[], &[0.0]);
                let hi = self.const_f32(&format!("{p}.max"), &[], &[6.0]);
                self.node("Clip", p, &[x, &lo, &hi], vec![])
            }
            Layer::Gelu(g) => {
                use crate::nn::spec::GeluApproximate;
                let half = self.const_f32(&format!("{p}.half"), &[], &[0.5]);
                let one = self.const_f32(&format!("{p}.one"), &[], &[1.0]);
                let inner = match g.approximate {
                    GeluApproximate::None => {
                        let r = self.const_f32(&format!("{p}.rsqrt2"), &[], &[std::f32::consts::FRAC_1_SQRT_2]);
                        let s = self.node("Mul", p, &[x, &r], vec![]);
                        self.node("Erf", p, &[&s], vec![])
                    }
                    GeluApproximate::Tanh => {
                        let c = self.const_f32(&format!("{p}.c"), &[], &[0.044715]);
                        let k = self.const_f32(&format!("{p}.k"), &[], &[(2.0f32 / std::f32::consts::PI).sqrt()]);
                        let x2 = self.node("Mul", p, &[x, x], vec![]);
                        let x3 = self.node("Mul", p, &[&x2, x], vec![]);
                        let cx3 = self.node("Mul", p, &[&x3, &c], vec![]);
                        let sum = self.node("Add", p, &[x, &cx3], vec![]);
                        let ks = self.node("Mul", p, &[&sum, &k], vec![]);
                        self.node("Tanh", p, &[&ks], vec![])
                    }
                };
                let one_plus = self.node("Add", p, &[&inner, &one], vec![]);
                let hx = self.node("Mul", p, &[x, &half], vec![]);
                self.node("Mul", p, &[&hx, &one_plus], vec![])
            }
            Layer::Sigmoid(_) => self.node("Sigmoid", p, &[x], vec![]),
            Layer::Tanh(_) => self.node("Tanh", p, &[x], vec![]),
            Layer::Softmax(s) => {
                let axis = if s.dim < 0 { s.dim } else { s.dim + 1 };
                self.node("Softmax", p, &[x], vec![AttributeProto::int("axis", axis)])
            }
            Layer::MaxPool2d(pl) | Layer::AvgPool2d(pl) => {
                let st = pl.stride();
                let mut attrs = vec![
                    ints("kernel_shape", &[pl.kernel_size.0, pl.kernel_size.1]),
                    ints("strides", &[st.0, st.1]),
                    ints("pads", &[pl.padding.0, pl.padding.1, pl.padding.0, pl.padding.1]),
                ];
                let op = if matches!(layer, Layer::MaxPool2d(_)) {
                    "MaxPool"
                } else {
                    attrs.push(AttributeProto::int("count_include_pad", 1));
                    "AveragePool"
                };
                self.node(op, p, &[x], attrs)
            }
            Layer::GlobalAvgPool(_) => {
                if shape.len() < 2 {
                    x.to_string()
                } else {
                    let g = self.node("GlobalAveragePool", p, &[x], vec![]);
                    self.node("Flatten", p, &[&g], vec![AttributeProto::int("axis", 1)])
                }
            }
            Layer::Flatten(_) => self.node("Flatten", p, &[x], vec![AttributeProto::int("axis", 1)]),
            Layer::Dropout(d) => {
                // Kept (an identity at inference) so a re-import gives back the same spec.
                let r = self.const_f32(&format!("{p}.ratio"), &[], &[d.p as f32]);
                self.node("Dropout", p, &[x, &r], vec![])
            }
            Layer::Reshape(r) => {
                let mut target = vec![0i64];
                target.extend(&r.shape);
                let t = self.const_i64(&format!("{p}.shape"), &target);
                self.node("Reshape", p, &[x, &t], vec![])
            }
            Layer::Residual(r) => {
                let mut s1 = shape.to_vec();
                let y = self.layers(&r.body, p, Slot::Body, x.to_string(), &mut s1)?;
                let sc = match &r.shortcut {
                    Some(s) => {
                        let mut s2 = shape.to_vec();
                        self.layers(s, p, Slot::Shortcut, x.to_string(), &mut s2)?
                    }
                    None => x.to_string(),
                };
                self.node("Add", p, &[&y, &sc], vec![])
            }
            Layer::Sequential(s) => {
                let mut s1 = shape.to_vec();
                self.layers(&s.layers, p, Slot::Seq, x.to_string(), &mut s1)?
            }
        })
    }
}

fn onnx_input_type(d: InputDType) -> i32 {
    match d {
        InputDType::F32 => data_type::FLOAT,
        InputDType::F16 => data_type::FLOAT16,
        InputDType::Bf16 => data_type::BFLOAT16,
        InputDType::F64 => data_type::DOUBLE,
        InputDType::U8 => data_type::UINT8,
        InputDType::U32 => 12,
        InputDType::I16 => 5,
        InputDType::I32 => data_type::INT32,
        InputDType::I64 => data_type::INT64,
    }
}

/// Builds the ONNX model for `spec` with `weights` (name → shape, data).
pub fn build_model(
    spec: &ModelSpec,
    weights: &Weights,
    scheme: &str,
    info: &ExportInfo,
) -> Result<ModelProto, OnnxError> {
    spec.validate().map_err(|e| OnnxError::Invalid(format!("invalid architecture spec: {e}")))?;
    let mut b = Builder { weights, nodes: Vec::new(), inits: Vec::new(), done: HashMap::new(), next: 0 };
    let input_type = onnx_input_type(spec.input.dtype);
    let mut x = "input".to_string();
    if input_type != data_type::FLOAT {
        x = b.node("Cast", "input", &[&x], vec![AttributeProto::int("to", data_type::FLOAT as i64)]);
    }
    if let Some(pre) = &spec.input.preprocess {
        let rank = spec.input.shape.len();
        let c = spec.input.shape[0];
        let per = |v: &[f64]| -> (Vec<usize>, Vec<f32>) {
            let vals: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            if vals.len() == 1 {
                (vec![], vals)
            } else {
                let mut dims = vec![c];
                dims.extend(std::iter::repeat_n(1, rank - 1));
                (dims, vals)
            }
        };
        if pre.scale != 1.0 {
            let s = b.const_f32("preprocess.scale", &[], &[pre.scale as f32]);
            x = b.node("Mul", "preprocess", &[&x, &s], vec![]);
        }
        if !pre.mean.is_empty() {
            let (d, v) = per(&pre.mean);
            let m = b.const_f32("preprocess.mean", &d, &v);
            x = b.node("Sub", "preprocess", &[&x, &m], vec![]);
        }
        if !pre.std.is_empty() {
            let (d, v) = per(&pre.std);
            let s = b.const_f32("preprocess.std", &d, &v);
            x = b.node("Div", "preprocess", &[&x, &s], vec![]);
        }
    }
    let mut shape = spec.input.shape.clone();
    let y = b.layers(&spec.layers, "", Slot::Top, x, &mut shape)?;
    b.nodes.push(NodeProto::new("Identity", "output/Identity", &[&y], &["output"]));
    let graph = GraphProto {
        node: b.nodes,
        name: info.model_name.clone(),
        initializer: b.inits,
        input: vec![ValueInfoProto::batched("input", input_type, &spec.input.shape)],
        output: vec![ValueInfoProto::batched("output", data_type::FLOAT, &[spec.output.classes])],
        ..Default::default()
    };
    let mut props = vec![
        ("modelpress.model_id", info.model_id.clone()),
        ("modelpress.model_name", info.model_name.clone()),
        ("modelpress.scheme", scheme.to_string()),
        ("modelpress.spec", serde_json::to_string(spec).unwrap_or_default()),
    ];
    if let Some(s) = &info.source_model {
        props.push(("modelpress.source_model", s.clone()));
    }
    if let Some(j) = &info.job {
        props.push(("modelpress.job", j.clone()));
    }
    Ok(ModelProto {
        ir_version: EXPORT_IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: EXPORT_OPSET }],
        producer_name: "modelpress".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v })
            .collect(),
        ..Default::default()
    })
}
