//! ONNX graph → architecture spec + named weights.
//!
//! The walk: constants (initializers, `Constant` nodes and nodes computing only on constants)
//! are folded first; then the dynamic graph is followed from its single input. A value with one
//! consumer continues the current layer sequence; a value with two consumers opens a residual
//! block whose join is the first node both branches reach (it must be an `Add`); a branch that
//! is the join itself is the identity shortcut. `Add`/`Mul` with a constant operand fold into the
//! linear/conv/batch-norm layer right before them (bias, scale) or, at the very start, into the
//! input preprocessing. Weights keep their ONNX names (see [`name_layers`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use super::proto::{data_type, DimValue, GraphProto, ModelProto, NodeProto, TensorProto};
use super::{OnnxError, MAX_OPSET, MIN_OPSET, SUPPORTED_OPS};
use crate::nn::spec::{
    layer_output_shape, BatchNormSpec, Conv2dSpec, DropoutSpec, InputDType, InputSpec, Layer, LinearSpec, ModelSpec,
    OutputKind, OutputSpec, Pair, ParamKind, Plain, PoolSpec, Preprocess, ReshapeSpec, ResidualSpec, SoftmaxSpec,
};

/// A weight ready to be written.
#[derive(Debug, Clone)]
pub enum TensorData {
    /// Little-endian f32 bytes, straight from the ONNX file (no copy).
    RawF32(Bytes),
    /// Computed values (converted, transposed or folded).
    F32(Vec<f32>),
}

impl TensorData {
    /// The values as f32.
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            TensorData::RawF32(b) => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            TensorData::F32(v) => v.clone(),
        }
    }
}

/// One output tensor: its name in the safetensors file, shape, data and ONNX origin.
#[derive(Debug, Clone)]
pub struct ImportedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The ONNX initializer it came from.
    pub onnx_name: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub spec: ModelSpec,
    pub tensors: Vec<ImportedTensor>,
    /// `modelpress.onnx.*` metadata for the safetensors file.
    pub metadata: BTreeMap<String, String>,
}

/// A folded constant.
#[derive(Debug, Clone)]
struct Const {
    dims: Vec<usize>,
    val: ConstVal,
    /// Initializer name it came from (for tensor naming).
    origin: String,
}

#[derive(Debug, Clone)]
enum ConstVal {
    F32(TensorData),
    I64(Vec<i64>),
    /// Some dtype modelpress does not compute with (kept to name it in errors).
    Other(i32),
}

impl Const {
    fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    fn f32(&self, what: &str) -> Result<Vec<f32>, String> {
        match &self.val {
            ConstVal::F32(d) => Ok(d.to_vec()),
            ConstVal::I64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            ConstVal::Other(t) => Err(format!("{what} has ONNX data type {t}, expected a float tensor")),
        }
    }
    fn i64s(&self, what: &str) -> Result<Vec<i64>, String> {
        match &self.val {
            ConstVal::I64(v) => Ok(v.clone()),
            _ => Err(format!("{what} must be an int64 tensor")),
        }
    }
    fn data(&self, what: &str) -> Result<TensorData, String> {
        match &self.val {
            ConstVal::F32(d) => Ok(d.clone()),
            _ => Ok(TensorData::F32(self.f32(what)?)),
        }
    }
}

fn tensor_const(t: &TensorProto) -> Result<Const, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{}' has a negative dim {d}", t.name)))
        .collect::<Result<_, _>>()?;
    let n: usize = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("tensor size overflows")?;
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(format!(
            "tensor '{}' keeps its data in an external file; save the model with all tensors inside the .onnx file \
             (onnx.save_model(m, path, save_as_external_data=False))",
            t.name
        ));
    }
    let bad_len = |got: usize| format!("tensor '{}' holds {got} values but its dims {dims:?} need {n}", t.name);
    let raw = &t.raw_data;
    let val = match t.data_type {
        data_type::FLOAT => {
            if !raw.is_empty() {
                if raw.len() != n * 4 {
                    return Err(bad_len(raw.len() / 4));
                }
                ConstVal::F32(TensorData::RawF32(raw.clone()))
            } else {
                if t.float_data.len() != n {
                    return Err(bad_len(t.float_data.len()));
                }
                ConstVal::F32(TensorData::F32(t.float_data.clone()))
            }
        }
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let bits: Vec<u16> = if !raw.is_empty() {
                raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
            } else {
                t.int32_data.iter().map(|&v| v as u16).collect()
            };
            if bits.len() != n {
                return Err(bad_len(bits.len()));
            }
            let v = if t.data_type == data_type::FLOAT16 {
                bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()
            } else {
                bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()
            };
            ConstVal::F32(TensorData::F32(v))
        }
        data_type::DOUBLE => {
            let v: Vec<f32> = if !raw.is_empty() {
                raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32).collect()
            } else {
                t.double_data.iter().map(|&v| v as f32).collect()
            };
            if v.len() != n {
                return Err(bad_len(v.len()));
            }
            ConstVal::F32(TensorData::F32(v))
        }
        data_type::INT8 | data_type::UINT8 => {
            let v: Vec<i64> = if !raw.is_empty() {
                if t.data_type == data_type::INT8 {
                    raw.iter().map(|&b| b as i8 as i64).collect()
                } else {
                    raw.iter().map(|&b| b as i64).collect()
                }
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            };
            if v.len() != n {
                return Err(bad_len(v.len()));
            }
            ConstVal::I64(v)
        }
        data_type::INT64 | data_type::INT32 => {
            let v: Vec<i64> = if !raw.is_empty() {
                if t.data_type == data_type::INT64 {
                    raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect()
                } else {
                    raw.chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4-byte chunk")) as i64)
                        .collect()
                }
            } else if t.data_type == data_type::INT64 {
                t.int64_data.clone()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            };
            if v.len() != n {
                return Err(bad_len(v.len()));
            }
            ConstVal::I64(v)
        }
        other => ConstVal::Other(other),
    };
    Ok(Const { dims, val, origin: t.name.clone() })
}

/// Attribute access with ONNX defaults.
struct Attrs<'a>(&'a NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&super::proto::AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

/// `"OpType 'name'"` for messages.
fn label(n: &NodeProto) -> String {
    if n.name.is_empty() {
        format!("{} (unnamed, output '{}')", n.op_type, n.output.first().map(String::as_str).unwrap_or(""))
    } else {
        format!("{} '{}'", n.op_type, n.name)
    }
}

/// Node-local checks of attributes the spec cannot express; `None` when the node is fine.
fn local_problem(n: &NodeProto) -> Option<String> {
    let a = Attrs(n);
    let auto_pad = a.string("auto_pad").unwrap_or_default();
    let auto_pad_ok = auto_pad.is_empty() || auto_pad == "NOTSET" || auto_pad == "VALID";
    match n.op_type.as_str() {
        "Conv" | "MaxPool" | "AveragePool" => {
            if !auto_pad_ok {
                return Some(format!("auto_pad={auto_pad} is not supported (give explicit pads)"));
            }
            if let Some(p) = a.ints("pads") {
                if p.len() != 4 || p[0] != p[2] || p[1] != p[3] {
                    return Some(format!("pads {p:?} are not symmetric 2-D pads [t, l, t, l]"));
                }
            }
            if let Some(s) = a.ints("strides") {
                if n.op_type == "Conv" && (s.len() != 2 || s[0] != s[1]) {
                    return Some(format!("strides {s:?}: height and width strides must be equal"));
                }
            }
            if let Some(d) = a.ints("dilations") {
                let ok = d.len() == 2 && d[0] == d[1] && (n.op_type == "Conv" || d[0] == 1);
                if !ok {
                    return Some(format!("dilations {d:?} are not supported"));
                }
            }
            if n.op_type != "Conv" {
                if let Some(s) = a.ints("strides") {
                    if s.len() != 2 || s.iter().any(|&v| v < 1) {
                        return Some(format!("strides {s:?}: 2-D pooling needs two positive strides"));
                    }
                }
                if a.int("ceil_mode", 0) != 0 {
                    return Some("ceil_mode=1 is not supported".into());
                }
                if let Some(k) = a.ints("kernel_shape") {
                    if k.len() != 2 {
                        return Some(format!("kernel_shape {k:?}: only 2-D pooling is supported"));
                    }
                }
                if n.op_type == "MaxPool" && (a.int("storage_order", 0) != 0 || n.output.len() > 1) {
                    return Some("the Indices output / storage_order are not supported".into());
                }
                let padded = a.ints("pads").is_some_and(|p| p.iter().any(|&v| v != 0));
                if n.op_type == "AveragePool" && padded && a.int("count_include_pad", 0) == 0 {
                    return Some(
                        "padding with count_include_pad=0 is not supported (modelpress counts the padding)".into(),
                    );
                }
            }
            None
        }
        "Gemm" if a.int("transA", 0) != 0 => Some("transA=1 is not supported".into()),
        "BatchNormalization" if a.int("training_mode", 0) != 0 => Some("training_mode=1 is not supported".into()),
        "Flatten" if a.int("axis", 1) != 1 => Some("only axis=1 (keep the batch dim) is supported".into()),
        _ => None,
    }
}

/// Parses and converts a model.
pub fn import(bytes: Bytes) -> Result<Imported, OnnxError> {
    use prost::Message;
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| OnnxError::Invalid("the model imports no default-domain opset (not an ONNX model?)".into()))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxError::Invalid(format!(
            "opset {opset} is not supported; modelpress imports opsets {MIN_OPSET}-{MAX_OPSET} (convert with onnx.version_converter)"
        )));
    }
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Invalid("the model has no graph".into()))?;
    // Every unsupported node, listed at once.
    let mut unsupported = Vec::new();
    for n in &graph.node {
        let domain_ok = n.domain.is_empty() || n.domain == "ai.onnx";
        if !domain_ok || !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
            let what = if domain_ok { label(n) } else { format!("{} (domain '{}')", label(n), n.domain) };
            unsupported.push(what);
        } else if let Some(p) = local_problem(n) {
            unsupported.push(format!("{}: {p}", label(n)));
        }
    }
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported));
    }
    let mut cv = Converter::new(graph, opset)?;
    let (spec, tensors) = cv.convert().map_err(OnnxError::Invalid)?;
    let mut metadata = BTreeMap::new();
    let producer = format!("{} {}", model.producer_name, model.producer_version).trim().to_string();
    let source = serde_json::json!({
        "producer": producer, "ir_version": model.ir_version, "opset": opset, "graph": graph.name,
    });
    metadata.insert("modelpress.onnx.source".into(), source.to_string());
    let names: BTreeMap<&str, &str> = tensors.iter().map(|t| (t.name.as_str(), t.onnx_name.as_str())).collect();
    metadata.insert("modelpress.onnx.tensors".into(), serde_json::to_string(&names).unwrap_or_default());
    Ok(Imported { spec, tensors, metadata })
}

/// A parametrised layer's tensors while converting, keyed by its temporary name.
#[derive(Default)]
struct Pending {
    /// ONNX-derived stem for the final name.
    stem: String,
    tensors: HashMap<&'static str, (Vec<usize>, TensorData, String)>,
}

struct Converter<'g> {
    nodes: &'g [NodeProto],
    consts: HashMap<String, Const>,
    /// Dynamic value → indices of nodes consuming it.
    consumers: HashMap<String, Vec<usize>>,
    producer: HashMap<String, usize>,
    folded: HashSet<usize>,
    opset: i64,
    input: String,
    input_shape: Vec<usize>,
    input_dtype: InputDType,
    /// The input's batch dim when the file fixes it.
    input_batch: Option<i64>,
    output: String,
    pending: HashMap<String, Pending>,
    next_id: usize,
    preprocess: Option<(Vec<f32>, Vec<f32>)>,
}

/// State of a layer sequence being built: the last layer (if parametrised and producing the
/// current value directly) can absorb a following constant `Add`/`Mul`.
struct Seq {
    layers: Vec<Layer>,
    absorb: bool,
    /// True for the top-level sequence while nothing has been emitted (preprocessing folds).
    at_input: bool,
}

impl<'g> Converter<'g> {
    fn new(graph: &'g GraphProto, opset: i64) -> Result<Self, OnnxError> {
        let mut consts = HashMap::new();
        for t in &graph.initializer {
            consts.insert(t.name.clone(), tensor_const(t).map_err(OnnxError::Invalid)?);
        }
        let inputs: Vec<_> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
        if inputs.len() != 1 {
            return Err(OnnxError::Invalid(format!(
                "the graph must have exactly one (non-initializer) input, found {}",
                inputs.len()
            )));
        }
        if graph.output.len() != 1 {
            return Err(OnnxError::Invalid(format!(
                "the graph must have exactly one output, found {}",
                graph.output.len()
            )));
        }
        let inp = inputs[0];
        let tt = inp.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let tt = tt.ok_or_else(|| OnnxError::Invalid(format!("input '{}' is not a tensor", inp.name)))?;
        let input_dtype = match tt.elem_type {
            data_type::FLOAT => InputDType::F32,
            data_type::UINT8 => InputDType::U8,
            data_type::FLOAT16 => InputDType::F16,
            data_type::DOUBLE => InputDType::F64,
            data_type::INT32 => InputDType::I32,
            data_type::INT64 => InputDType::I64,
            other => {
                return Err(OnnxError::Invalid(format!(
                    "input '{}' has ONNX element type {other}; modelpress imports float, float16, double, uint8, int32 \
                     and int64 inputs",
                    inp.name
                )))
            }
        };
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        if dims.len() < 2 {
            return Err(OnnxError::Invalid(format!(
                "input '{}' must declare its shape [batch, ...] (rank >= 2), found rank {}",
                inp.name,
                dims.len()
            )));
        }
        let mut input_shape = Vec::new();
        for (i, d) in dims.iter().enumerate().skip(1) {
            match d.value {
                Some(DimValue::DimValue(v)) if v > 0 => input_shape.push(v as usize),
                _ => {
                    return Err(OnnxError::Invalid(format!(
                        "input '{}': dim {i} must be a fixed positive size (only the batch dim may be symbolic)",
                        inp.name
                    )))
                }
            }
        }
        let mut cv = Converter {
            nodes: &graph.node,
            consts,
            consumers: HashMap::new(),
            producer: HashMap::new(),
            folded: HashSet::new(),
            opset,
            input: inp.name.clone(),
            input_shape,
            input_dtype,
            input_batch: match dims[0].value {
                Some(DimValue::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            },
            output: graph.output[0].name.clone(),
            pending: HashMap::new(),
            next_id: 0,
            preprocess: None,
        };
        cv.fold().map_err(OnnxError::Invalid)?;
        for (i, n) in graph.node.iter().enumerate() {
            if cv.folded.contains(&i) {
                continue;
            }
            for inp in n.input.iter().filter(|s| !s.is_empty() && !cv.consts.contains_key(*s)) {
                let list = cv.consumers.entry(inp.clone()).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
            for o in n.output.iter().filter(|s| !s.is_empty()) {
                cv.producer.insert(o.clone(), i);
            }
        }
        Ok(cv)
    }

    /// Folds `Constant` nodes and nodes whose inputs are all constants.
    fn fold(&mut self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            let out = n.output.first().cloned().unwrap_or_default();
            if n.op_type == "Constant" {
                let a = Attrs(n);
                let c = if let Some(t) = a.get("value").and_then(|a| a.t.as_ref()) {
                    let mut c = tensor_const(t)?;
                    c.origin = out.clone();
                    c
                } else if let Some(at) = a.get("value_float") {
                    Const { dims: vec![], val: ConstVal::F32(TensorData::F32(vec![at.f])), origin: out.clone() }
                } else if let Some(at) = a.get("value_floats") {
                    let v = at.floats.clone();
                    Const { dims: vec![v.len()], val: ConstVal::F32(TensorData::F32(v)), origin: out.clone() }
                } else if let Some(at) = a.get("value_int") {
                    Const { dims: vec![], val: ConstVal::I64(vec![at.i]), origin: out.clone() }
                } else if let Some(at) = a.get("value_ints") {
                    Const { dims: vec![at.ints.len()], val: ConstVal::I64(at.ints.clone()), origin: out.clone() }
                } else {
                    return Err(format!("{}: only tensor, float(s) and int(s) values are supported", label(n)));
                };
                self.consts.insert(out, c);
                self.folded.insert(i);
                continue;
            }
            let ins: Vec<&String> = n.input.iter().filter(|s| !s.is_empty()).collect();
            if ins.is_empty() || !ins.iter().all(|s| self.consts.contains_key(*s)) {
                continue;
            }
            let c0 = self.consts[ins[0]].clone();
            let folded = match n.op_type.as_str() {
                "Identity" | "Dropout" => Some(c0),
                "Cast" => {
                    let to = Attrs(n).int("to", 0) as i32;
                    let val = match to {
                        data_type::FLOAT | data_type::FLOAT16 | data_type::DOUBLE | data_type::BFLOAT16 => {
                            ConstVal::F32(c0.data("Cast input")?)
                        }
                        data_type::INT64 | data_type::INT32 => {
                            ConstVal::I64(c0.f32("Cast input")?.iter().map(|&x| x as i64).collect())
                        }
                        _ => return Err(format!("{}: casting a constant to type {to} is not supported", label(n))),
                    };
                    Some(Const { val, ..c0 })
                }
                "DequantizeLinear" => {
                    let q = c0.f32("quantized input")?;
                    let scale = self.consts[ins[1]].f32("scale")?;
                    let zp = match ins.get(2) {
                        Some(z) => self.consts[*z].f32("zero point")?,
                        None => vec![0.0; scale.len()],
                    };
                    let axis = Attrs(n).int("axis", 1);
                    let rank = c0.dims.len() as i64;
                    let axis = if axis < 0 { axis + rank } else { axis };
                    let v = if scale.len() == 1 {
                        q.iter().map(|&x| (x - zp[0]) * scale[0]).collect()
                    } else {
                        let ax = usize::try_from(axis)
                            .ok()
                            .filter(|&a| a < c0.dims.len())
                            .ok_or_else(|| format!("{}: axis {axis} is out of range", label(n)))?;
                        let len = c0.dims[ax];
                        let inner: usize = c0.dims[ax + 1..].iter().product();
                        if scale.len() != len || zp.len() != len {
                            return Err(format!("{}: {} scales for an axis of {len}", label(n), scale.len()));
                        }
                        q.iter()
                            .enumerate()
                            .map(|(k, &x)| {
                                let ch = (k / inner.max(1)) % len;
                                (x - zp[ch]) * scale[ch]
                            })
                            .collect()
                    };
                    Some(Const { val: ConstVal::F32(TensorData::F32(v)), ..c0 })
                }
                "Transpose" if c0.dims.len() == 2 => {
                    let perm = Attrs(n).ints("perm").unwrap_or_else(|| vec![1, 0]);
                    if perm != [1, 0] {
                        None
                    } else {
                        let (r, c) = (c0.dims[0], c0.dims[1]);
                        let v = transpose(&c0.f32("Transpose input")?, r, c);
                        Some(Const {
                            dims: vec![c, r],
                            val: ConstVal::F32(TensorData::F32(v)),
                            origin: c0.origin.clone(),
                        })
                    }
                }
                "Add" | "Mul" | "Sub" | "Div" if ins.len() == 2 => {
                    let c1 = &self.consts[ins[1]];
                    let (a, b) = (c0.f32("operand")?, c1.f32("operand")?);
                    let f = |x: f32, y: f32| match n.op_type.as_str() {
                        "Add" => x + y,
                        "Sub" => x - y,
                        "Mul" => x * y,
                        _ => x / y,
                    };
                    let (dims, v) = if a.len() == b.len() && c0.dims == c1.dims {
                        (c0.dims.clone(), a.iter().zip(&b).map(|(x, y)| f(*x, *y)).collect())
                    } else if b.len() == 1 {
                        (c0.dims.clone(), a.iter().map(|x| f(*x, b[0])).collect())
                    } else if a.len() == 1 {
                        (c1.dims.clone(), b.iter().map(|y| f(a[0], *y)).collect())
                    } else {
                        return Err(format!(
                            "{}: folding constants of shapes {:?} and {:?} is not supported",
                            label(n),
                            c0.dims,
                            c1.dims
                        ));
                    };
                    Some(Const { dims, val: ConstVal::F32(TensorData::F32(v)), origin: c0.origin.clone() })
                }
                "Reshape" if ins.len() == 2 => {
                    let shape = self.consts[ins[1]].i64s("Reshape shape")?;
                    let total = c0.numel();
                    let known: i64 = shape.iter().filter(|&&d| d > 0).fold(1i64, |a, &d| a.saturating_mul(d));
                    let dims = shape
                        .iter()
                        .enumerate()
                        .map(|(j, &d)| match d {
                            -1 => Ok(total / known.max(1) as usize),
                            0 => c0.dims.get(j).copied().ok_or_else(|| "bad reshape".to_string()),
                            d => Ok(d as usize),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Some(Const { dims, ..c0 })
                }
                _ => None,
            };
            if let Some(c) = folded {
                self.consts.insert(out, c);
                self.folded.insert(i);
            }
        }
        Ok(())
    }

    fn konst(&self, n: &NodeProto, idx: usize, what: &str) -> Result<Option<&Const>, String> {
        match n.input.get(idx).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self
                .consts
                .get(name)
                .map(Some)
                .ok_or_else(|| format!("{}: {what} ('{name}') must be a constant (initializer)", label(n))),
        }
    }

    fn need_const(&self, n: &NodeProto, idx: usize, what: &str) -> Result<&Const, String> {
        self.konst(n, idx, what)?.ok_or_else(|| format!("{}: missing {what}", label(n)))
    }

    /// Registers a parametrised layer; returns its temporary name.
    fn new_layer(&mut self, stem_from: &str) -> String {
        let temp = format!("onnxtmp{}", self.next_id);
        self.next_id += 1;
        let stem = stem_from.strip_suffix(".weight").unwrap_or(stem_from).to_string();
        self.pending.insert(temp.clone(), Pending { stem, tensors: HashMap::new() });
        temp
    }

    fn put(&mut self, temp: &str, suffix: &'static str, shape: Vec<usize>, data: TensorData, onnx: &str) {
        let p = self.pending.get_mut(temp).expect("layer registered by new_layer");
        p.tensors.insert(suffix, (shape, data, onnx.to_string()));
    }

    fn convert(&mut self) -> Result<(ModelSpec, Vec<ImportedTensor>), String> {
        let mut shape = self.input_shape.clone();
        let (input, output) = (self.input.clone(), self.output.clone());
        let layers = self.seq(&input, None, &output, &mut shape, true)?;
        if shape.len() != 1 {
            return Err(format!(
                "the graph's output has per-sample shape {shape:?}; modelpress models end in a vector [classes]"
            ));
        }
        let kind = if matches!(layers.last(), Some(Layer::Softmax(_))) {
            OutputKind::Probabilities
        } else {
            OutputKind::Logits
        };
        let preprocess = self.preprocess.take().map(|(mul, add)| preprocess_of(&mul, &add)).transpose()?;
        let mut spec = ModelSpec {
            format: crate::nn::spec::FORMAT.to_string(),
            version: crate::nn::spec::VERSION,
            input: InputSpec { shape: self.input_shape.clone(), dtype: self.input_dtype, preprocess },
            output: OutputSpec { kind, classes: shape[0], labels: None },
            layers,
        };
        let tensors = self.name_tensors(&mut spec)?;
        spec.validate().map_err(|e| format!("the converted architecture is invalid: {e}"))?;
        Ok((spec, tensors))
    }

    /// Gives layers their final names and collects their tensors in spec order.
    fn name_tensors(&mut self, spec: &mut ModelSpec) -> Result<Vec<ImportedTensor>, String> {
        let before = spec.params();
        // Unique stems, in creation order (a shared or generic initializer name gets `_2`, ...).
        let mut temps: Vec<&String> = self.pending.keys().collect();
        temps.sort_by_key(|t| t.trim_start_matches("onnxtmp").parse::<usize>().unwrap_or(0));
        let mut used = HashSet::new();
        let mut stems = HashMap::new();
        for t in temps {
            let base = sanitize(&self.pending[t].stem);
            let mut stem = base.clone();
            let mut k = 2;
            while !used.insert(stem.clone()) {
                stem = format!("{base}_{k}");
                k += 1;
            }
            stems.insert(t.clone(), stem);
        }
        let mut named = spec.clone();
        name_layers(&mut named.layers, "", Slot::Top, &stems);
        let after = named.params();
        let unique: HashSet<&str> = after.iter().map(|p| p.name.as_str()).collect();
        if unique.len() == after.len() && named.validate().is_ok() {
            *spec = named;
        } else {
            strip_names(&mut spec.layers); // positional names are always valid and unique
        }
        let after = spec.params();
        let mut out = Vec::with_capacity(after.len());
        for (b, a) in before.iter().zip(&after) {
            let temp = b.layer.rsplit('.').next().unwrap_or(&b.layer);
            let suffix = match b.kind {
                ParamKind::Weight => "weight",
                ParamKind::Bias => "bias",
                ParamKind::RunningMean => "running_mean",
                ParamKind::RunningVar => "running_var",
            };
            let (shape, data, onnx) = self
                .pending
                .get_mut(temp)
                .and_then(|p| p.tensors.remove(suffix))
                .ok_or_else(|| format!("internal: no tensor for {}", b.name))?;
            if shape != a.shape {
                return Err(format!("tensor '{onnx}' has shape {shape:?}, the layer needs {:?}", a.shape));
            }
            out.push(ImportedTensor { name: a.name.clone(), shape, data, onnx_name: onnx });
        }
        Ok(out)
    }

    /// Converts the path from `v` to `stop`. `first` forces the first node (a branch of a
    /// residual fan-out).
    fn seq(
        &mut self,
        v: &str,
        mut first: Option<usize>,
        stop: &str,
        shape: &mut Vec<usize>,
        top: bool,
    ) -> Result<Vec<Layer>, String> {
        let mut s = Seq { layers: Vec::new(), absorb: false, at_input: top };
        let mut v = v.to_string();
        let mut guard = 0usize;
        while v != stop {
            guard += 1;
            if guard > self.nodes.len() + 1 {
                return Err("the graph has a cycle".into());
            }
            let node = if let Some(f) = first.take() {
                f
            } else {
                let cons = self.consumers.get(&v).cloned().unwrap_or_default();
                match cons.as_slice() {
                    [] => {
                        return Err(format!(
                            "value '{v}' is used by nothing; the graph does not reach its output '{stop}'"
                        ))
                    }
                    [one] => *one,
                    [a, b] => {
                        let (layer, out) = self.residual(&v, *a, *b, shape)?;
                        s.layers.push(layer);
                        s.absorb = false;
                        s.at_input = false;
                        v = out;
                        continue;
                    }
                    more => {
                        return Err(format!(
                            "value '{v}' feeds {} nodes; modelpress graphs branch in two at most (residual blocks)",
                            more.len()
                        ))
                    }
                }
            };
            v = self.node(node, &mut s, shape)?;
        }
        Ok(s.layers)
    }

    /// A residual block opening at `v` with branches starting at nodes `a` and `b`.
    fn residual(&mut self, v: &str, a: usize, b: usize, shape: &mut Vec<usize>) -> Result<(Layer, String), String> {
        let da = self.descendants(a);
        let db = self.descendants(b);
        let join = da
            .intersection(&db)
            .min()
            .copied()
            .ok_or_else(|| format!("value '{v}' branches into paths that never meet"))?;
        let nodes = self.nodes;
        let jn = &nodes[join];
        let dyn_inputs: Vec<&String> = jn.input.iter().filter(|s| !self.consts.contains_key(*s)).collect();
        if jn.op_type != "Add" || dyn_inputs.len() != 2 {
            return Err(format!(
                "the branches from '{v}' join at {}; only an Add of the two branches (a residual block) is supported",
                label(jn)
            ));
        }
        // Which join input each branch ends at.
        let ends = |start: usize, set: &HashSet<usize>| -> Option<String> {
            if start == join {
                return Some(v.to_string());
            }
            dyn_inputs.iter().find(|x| self.producer.get(**x).is_some_and(|p| set.contains(p))).map(|x| x.to_string())
        };
        let (ea, eb) = (ends(a, &da), ends(b, &db));
        let (Some(ea), Some(eb)) = (ea, eb) else {
            return Err(format!("cannot match the branches from '{v}' to the inputs of {}", label(jn)));
        };
        let mut sa = shape.clone();
        let la = if a == join { Vec::new() } else { self.seq(v, Some(a), &ea, &mut sa, false)? };
        let mut sb = shape.clone();
        let lb = if b == join { Vec::new() } else { self.seq(v, Some(b), &eb, &mut sb, false)? };
        if sa != sb {
            return Err(format!("{}: the branches produce shapes {sa:?} and {sb:?}", label(jn)));
        }
        let (body, shortcut) = match (la.is_empty(), lb.is_empty()) {
            (true, true) => return Err(format!("{}: adds a value to itself", label(jn))),
            (false, true) => (la, None),
            (true, false) => (lb, None),
            (false, false) if la.len() >= lb.len() => (la, Some(lb)),
            (false, false) => (lb, Some(la)),
        };
        *shape = sa;
        let out = jn.output.first().cloned().unwrap_or_default();
        Ok((Layer::Residual(ResidualSpec { name: None, body, shortcut }), out))
    }

    fn descendants(&self, start: usize) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            for o in &self.nodes[i].output {
                if let Some(c) = self.consumers.get(o) {
                    stack.extend(c.iter().copied());
                }
            }
        }
        seen
    }

    /// Converts one node onto `s`; returns the value it produces.
    fn node(&mut self, i: usize, s: &mut Seq, shape: &mut Vec<usize>) -> Result<String, String> {
        let nodes = self.nodes;
        let n = &nodes[i];
        let out = n.output.first().cloned().ok_or_else(|| format!("{} has no output", label(n)))?;
        let a = Attrs(n);
        let mut absorb = false;
        let mut layer: Option<Layer> = None;
        match n.op_type.as_str() {
            "Gemm" | "MatMul" => {
                let w = self.need_const(n, 1, "weight (input B)")?.clone();
                if w.dims.len() != 2 {
                    return Err(format!("{}: weight must be 2-D, got {:?}", label(n), w.dims));
                }
                let gemm = n.op_type == "Gemm";
                let trans_b = gemm && a.int("transB", 0) != 0;
                let (out_f, in_f) = if trans_b { (w.dims[0], w.dims[1]) } else { (w.dims[1], w.dims[0]) };
                if gemm && shape.len() != 1 {
                    return Err(format!(
                        "{}: Gemm needs a 2-D input [batch, features], got per-sample {shape:?}",
                        label(n)
                    ));
                }
                if shape.last() != Some(&in_f) {
                    return Err(format!("{}: weight {:?} does not fit the incoming shape {shape:?}", label(n), w.dims));
                }
                let alpha = if gemm { a.float("alpha", 1.0) } else { 1.0 };
                let mut data = if trans_b {
                    w.data("weight")?
                } else {
                    TensorData::F32(transpose(&w.f32("weight")?, in_f, out_f))
                };
                if alpha != 1.0 {
                    data = TensorData::F32(data.to_vec().iter().map(|x| x * alpha).collect());
                }
                let temp = self.new_layer(&w.origin);
                self.put(&temp, "weight", vec![out_f, in_f], data, &w.origin);
                let mut bias = false;
                if gemm {
                    if let Some(c) = self.konst(n, 2, "bias (input C)")?.cloned() {
                        let beta = a.float("beta", 1.0);
                        let v = broadcast_to(&c.f32("bias")?, out_f).ok_or_else(|| {
                            format!("{}: bias of shape {:?} does not broadcast to [{out_f}]", label(n), c.dims)
                        })?;
                        let data = if beta == 1.0 && c.numel() == out_f {
                            c.data("bias")?
                        } else {
                            TensorData::F32(v.iter().map(|x| x * beta).collect())
                        };
                        self.put(&temp, "bias", vec![out_f], data, &c.origin);
                        bias = true;
                    }
                }
                layer =
                    Some(Layer::Linear(LinearSpec { name: Some(temp), in_features: in_f, out_features: out_f, bias }));
                absorb = true;
            }
            "Conv" => {
                let w = self.need_const(n, 1, "weight")?.clone();
                if w.dims.len() != 4 {
                    return Err(format!(
                        "{}: only 2-D convolutions (4-D weights) are supported, got {:?}",
                        label(n),
                        w.dims
                    ));
                }
                let groups = a.int("group", 1).max(1) as usize;
                let pads = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
                let stride = a.ints("strides").map(|s| s[0]).unwrap_or(1).max(1) as usize;
                let dilation = a.ints("dilations").map(|d| d[0]).unwrap_or(1).max(1) as usize;
                let in_ch = *shape.first().unwrap_or(&0);
                if shape.len() != 3 || w.dims[1] * groups != in_ch {
                    return Err(format!(
                        "{}: weight {:?} with group={groups} does not fit the incoming shape {shape:?}",
                        label(n),
                        w.dims
                    ));
                }
                let temp = self.new_layer(&w.origin);
                let out_ch = w.dims[0];
                self.put(&temp, "weight", w.dims.clone(), w.data("weight")?, &w.origin);
                let mut bias = false;
                if let Some(c) = self.konst(n, 2, "bias")?.cloned() {
                    if c.numel() != out_ch {
                        return Err(format!("{}: bias has {} values for {out_ch} channels", label(n), c.numel()));
                    }
                    self.put(&temp, "bias", vec![out_ch], c.data("bias")?, &c.origin);
                    bias = true;
                }
                layer = Some(Layer::Conv2d(Conv2dSpec {
                    name: Some(temp),
                    in_channels: in_ch,
                    out_channels: out_ch,
                    kernel_size: Pair(w.dims[2], w.dims[3]),
                    stride,
                    padding: Pair(pads[0] as usize, pads[1] as usize),
                    dilation,
                    groups,
                    bias,
                }));
                absorb = true;
            }
            "BatchNormalization" => {
                let names = ["scale", "bias", "mean", "variance"];
                let mut cs = Vec::new();
                for (k, what) in names.iter().enumerate() {
                    cs.push(self.need_const(n, k + 1, what)?.clone());
                }
                let c = cs[0].numel();
                if shape.first() != Some(&c) || cs.iter().any(|x| x.numel() != c) {
                    return Err(format!(
                        "{}: parameters of {c} channels do not fit the incoming shape {shape:?}",
                        label(n)
                    ));
                }
                if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(format!("{}: the running-stat outputs are training-only and not supported", label(n)));
                }
                let temp = self.new_layer(&cs[0].origin);
                for (suffix, cst) in ["weight", "bias", "running_mean", "running_var"].into_iter().zip(&cs) {
                    self.put(&temp, suffix, vec![c], cst.data(suffix)?, &cst.origin);
                }
                layer = Some(Layer::BatchNorm(BatchNormSpec {
                    name: Some(temp),
                    num_features: c,
                    eps: a.float("epsilon", 1e-5) as f64,
                    momentum: (1.0 - a.float("momentum", 0.9) as f64).clamp(0.0, 1.0),
                    affine: true,
                }));
                absorb = true;
            }
            "Relu" => layer = Some(Layer::Relu(Plain::default())),
            "Sigmoid" => layer = Some(Layer::Sigmoid(Plain::default())),
            "Tanh" => layer = Some(Layer::Tanh(Plain::default())),
            "Clip" => {
                let lo = self.konst(n, 1, "min")?.map(|c| c.f32("min")).transpose()?;
                let hi = self.konst(n, 2, "max")?.map(|c| c.f32("max")).transpose()?;
                let lo = lo.and_then(|v| v.first().copied()).unwrap_or(f32::NEG_INFINITY);
                let hi = hi.and_then(|v| v.first().copied()).unwrap_or(f32::INFINITY);
                layer = Some(match (lo, hi) {
                    (l, h) if l == 0.0 && h == 6.0 => Layer::Relu6(Plain::default()),
                    (l, h) if l == 0.0 && h == f32::INFINITY => Layer::Relu(Plain::default()),
                    _ => {
                        return Err(format!(
                            "{}: only Clip(0, 6) (ReLU6) and Clip(0) (ReLU) are supported, got [{lo}, {hi}]",
                            label(n)
                        ))
                    }
                });
            }
            "Softmax" => {
                let rank = shape.len() as i64 + 1;
                let axis = a.int("axis", if self.opset < 13 { 1 } else { -1 });
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis <= 0 || axis >= rank || (self.opset < 13 && axis != rank - 1) {
                    return Err(format!(
                        "{}: softmax over axis {axis} of a rank-{rank} tensor is not supported",
                        label(n)
                    ));
                }
                let dim = if axis == rank - 1 { -1 } else { axis - 1 };
                layer = Some(Layer::Softmax(SoftmaxSpec { name: None, dim }));
            }
            "MaxPool" | "AveragePool" => {
                let k = a.ints("kernel_shape").ok_or_else(|| format!("{}: kernel_shape is required", label(n)))?;
                let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
                let pads = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
                let p = PoolSpec {
                    name: None,
                    kernel_size: Pair(k[0] as usize, k[1] as usize),
                    stride: Some(Pair(strides[0] as usize, *strides.get(1).unwrap_or(&strides[0]) as usize)),
                    padding: Pair(pads[0] as usize, pads[1] as usize),
                };
                layer = Some(if n.op_type == "MaxPool" { Layer::MaxPool2d(p) } else { Layer::AvgPool2d(p) });
            }
            "GlobalAveragePool" => {
                if shape.len() < 2 {
                    return Err(format!("{}: needs a [C, H, W] input, got {shape:?}", label(n)));
                }
                let c = shape[0];
                let spatial_rank = shape.len() - 1;
                s.layers.push(Layer::GlobalAvgPool(Plain::default()));
                s.absorb = false;
                s.at_input = false;
                *shape = vec![c];
                // ONNX keeps [C, 1, 1]; a following flatten is folded into the pool.
                let flat_next = self.consumers.get(&out).and_then(|c| match c.as_slice() {
                    [one] if self.is_flatten(*one) => Some(*one),
                    _ => None,
                });
                if let Some(f) = flat_next {
                    return nodes[f].output.first().cloned().ok_or_else(|| "flatten without output".into());
                }
                let mut full = vec![c];
                full.extend(std::iter::repeat_n(1, spatial_rank));
                layer =
                    Some(Layer::Reshape(ReshapeSpec { name: None, shape: full.iter().map(|&d| d as i64).collect() }));
            }
            "Flatten" => layer = Some(Layer::Flatten(Plain::default())),
            "Reshape" => {
                let target = self.need_const(n, 1, "shape")?.i64s("shape")?;
                let numel: usize = shape.iter().product();
                layer = Some(match target.as_slice() {
                    [0 | -1, d] if *d == -1 || *d as usize == numel => Layer::Flatten(Plain::default()),
                    [first, rest @ ..]
                        if (*first == 0 || *first == -1)
                            && !rest.is_empty()
                            && rest.iter().all(|&d| d > 0 || d == -1) =>
                    {
                        if *first == -1 && rest.contains(&-1) {
                            return Err(format!("{}: shape {target:?} has two -1 entries", label(n)));
                        }
                        Layer::Reshape(ReshapeSpec { name: None, shape: rest.to_vec() })
                    }
                    // A batch size fixed at export time (`x.view(1, -1)` traced with batch 1):
                    // accepted when the rest is exactly the per-sample shape's elements.
                    // `[b, -1]` only when b is the input's declared (fixed) batch size.
                    [b, d] if *b > 0 && (*d as usize == numel || (*d == -1 && Some(*b) == self.input_batch)) => {
                        Layer::Flatten(Plain::default())
                    }
                    [b, rest @ ..]
                        if *b > 0
                            && !rest.is_empty()
                            && rest.iter().all(|&d| d > 0)
                            && rest.iter().map(|&d| d as usize).product::<usize>() == numel =>
                    {
                        Layer::Reshape(ReshapeSpec { name: None, shape: rest.to_vec() })
                    }
                    _ => {
                        return Err(format!(
                            "{}: shape {target:?} is not supported; the batch dim must stay first (0 or -1)",
                            label(n)
                        ))
                    }
                });
            }
            "Identity" => {}
            "Cast" if s.at_input && s.layers.is_empty() => {
                // An integer/half input converted to float: the spec's input dtype does that.
                if Attrs(n).int("to", 0) as i32 != data_type::FLOAT {
                    return Err(format!("{}: only a Cast of the input to float is supported", label(n)));
                }
            }
            "Dropout" => {
                let p = self.konst(n, 1, "ratio")?.map(|c| c.f32("ratio")).transpose()?;
                let p = p.and_then(|v| v.first().copied()).unwrap_or_else(|| a.float("ratio", 0.5)) as f64;
                if n.output.iter().skip(1).any(|o| !o.is_empty() && self.consumers.contains_key(o)) {
                    return Err(format!("{}: the mask output is not supported", label(n)));
                }
                layer = Some(Layer::Dropout(DropoutSpec { name: None, p: p.clamp(0.0, 0.99) }));
            }
            "Add" | "Mul" | "Sub" | "Div" => {
                let (c, const_first) =
                    match (self.konst(n, 0, "x").ok().flatten(), self.konst(n, 1, "x").ok().flatten()) {
                        (None, Some(c)) => (c.clone(), false),
                        (Some(c), None) if matches!(n.op_type.as_str(), "Add" | "Mul") => (c.clone(), true),
                        _ => {
                            return Err(format!(
                                "{}: an {} of two computed values is only supported as the join of a residual block",
                                label(n),
                                n.op_type
                            ))
                        }
                    };
                let _ = const_first;
                let mut vals = c.f32("operand")?;
                // x - c = x + (-c); x / c = x * (1/c)
                match n.op_type.as_str() {
                    "Sub" => vals.iter_mut().for_each(|v| *v = -*v),
                    "Div" => vals.iter_mut().for_each(|v| *v = 1.0 / *v),
                    _ => {}
                }
                let is_add = matches!(n.op_type.as_str(), "Add" | "Sub");
                if s.absorb {
                    self.absorb(s, &c, &vals, is_add, n, shape.len().saturating_sub(1))?;
                } else if s.at_input {
                    let chans = self.input_shape[0];
                    let spatial = self.input_shape.len() - 1;
                    let per = per_channel(&c.dims, &vals, chans, spatial).ok_or_else(|| {
                        format!(
                            "{}: a constant of shape {:?} at the input must be a scalar or per-channel",
                            label(n),
                            c.dims
                        )
                    })?;
                    let (mul, add) = self.preprocess.get_or_insert_with(|| (vec![1.0; chans], vec![0.0; chans]));
                    for ch in 0..chans {
                        if is_add {
                            add[ch] += per[ch];
                        } else {
                            mul[ch] *= per[ch];
                            add[ch] *= per[ch];
                        }
                    }
                } else {
                    return Err(format!(
                        "{}: an {} by a constant is supported right after a Gemm/MatMul/Conv/BatchNormalization (folded \
                         into it) or at the input (preprocessing)",
                        label(n),
                        n.op_type
                    ));
                }
                return Ok(out);
            }
            other => return Err(format!("{}: operator {other} is not supported here", label(n))),
        }
        if let Some(l) = layer {
            *shape = layer_output_shape(&l, shape).map_err(|e| format!("{}: {e}", label(n)))?;
            s.layers.push(l);
            s.absorb = absorb;
            s.at_input = false;
        }
        Ok(out)
    }

    fn is_flatten(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        match n.op_type.as_str() {
            "Flatten" => Attrs(n).int("axis", 1) == 1,
            "Reshape" => self
                .consts
                .get(n.input.get(1).map(String::as_str).unwrap_or(""))
                .and_then(|c| c.i64s("shape").ok())
                .is_some_and(|t| matches!(t.as_slice(), [0 | -1, -1] | [0, _])),
            _ => false,
        }
    }

    /// Folds a constant `Add`/`Mul` into the layer that produced the current value.
    /// `spatial` is the rank of the current activation after its channel dim.
    fn absorb(
        &mut self,
        s: &mut Seq,
        c: &Const,
        vals: &[f32],
        is_add: bool,
        n: &NodeProto,
        spatial: usize,
    ) -> Result<(), String> {
        let last = s.layers.last_mut().expect("absorb is set only after a layer");
        let (temp, channels, is_linear) = match last {
            Layer::Linear(l) => (l.name.clone(), l.out_features, true),
            Layer::Conv2d(l) => (l.name.clone(), l.out_channels, false),
            Layer::BatchNorm(l) => (l.name.clone(), l.num_features, false),
            _ => unreachable!("absorb is set only after linear/conv/batch_norm"),
        };
        let temp = temp.expect("imported layers are named");
        let per = if is_linear {
            broadcast_to(vals, channels).filter(|_| c.dims.iter().rev().skip(1).all(|&d| d == 1))
        } else {
            per_channel(&c.dims, vals, channels, spatial)
        };
        let per = per.ok_or_else(|| {
            format!("{}: constant of shape {:?} is not per-channel for {channels} channels", label(n), c.dims)
        })?;
        let pend = self.pending.get_mut(&temp).expect("registered layer");
        if is_add {
            match pend.tensors.get_mut("bias") {
                Some((_, d, _)) => {
                    let v: Vec<f32> = d.to_vec().iter().zip(&per).map(|(b, x)| b + x).collect();
                    *d = TensorData::F32(v);
                }
                None => {
                    pend.tensors.insert("bias", (vec![channels], TensorData::F32(per.clone()), c.origin.clone()));
                    match last {
                        Layer::Linear(l) => l.bias = true,
                        Layer::Conv2d(l) => l.bias = true,
                        _ => {}
                    }
                }
            }
        } else {
            let (wshape, w, _) = pend.tensors.get_mut("weight").expect("weight registered");
            let per_row: usize = wshape.iter().skip(1).product();
            let v: Vec<f32> = w.to_vec().iter().enumerate().map(|(k, x)| x * per[k / per_row.max(1)]).collect();
            *w = TensorData::F32(v);
            if let Some((_, b, _)) = pend.tensors.get_mut("bias") {
                *b = TensorData::F32(b.to_vec().iter().zip(&per).map(|(x, m)| x * m).collect());
            }
        }
        Ok(())
    }
}

/// `[c, 1, 1]`, `[1, c, 1, 1]`, `[1]`, `[]` constants as one value per channel.
fn per_channel(dims: &[usize], vals: &[f32], channels: usize, spatial: usize) -> Option<Vec<f32>> {
    if vals.len() == 1 {
        return Some(vec![vals[0]; channels]);
    }
    if vals.len() != channels {
        return None;
    }
    // Strip leading 1s (batch), then the channel dim must be followed by exactly `spatial` 1s
    // (or fewer: broadcasting aligns on the right, so [C] only fits a rank-1 activation).
    let d: Vec<usize> = dims.iter().copied().skip_while(|&x| x == 1).collect();
    match d.as_slice() {
        [c, rest @ ..] if *c == channels && rest.iter().all(|&x| x == 1) && rest.len() == spatial => {
            Some(vals.to_vec())
        }
        _ => None,
    }
}

fn broadcast_to(v: &[f32], n: usize) -> Option<Vec<f32>> {
    match v.len() {
        1 => Some(vec![v[0]; n]),
        l if l == n => Some(v.to_vec()),
        _ => None,
    }
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// `x * mul + add` per channel as the spec's preprocessing.
fn preprocess_of(mul: &[f32], add: &[f32]) -> Result<Preprocess, String> {
    let uniform = mul.iter().all(|&m| m == mul[0]);
    if uniform {
        let s = mul[0] as f64;
        if s == 0.0 || !s.is_finite() {
            return Err("the input is multiplied by zero".into());
        }
        // x*s + a = (x*s - (-a)) / 1
        let mean = if add.iter().all(|&a| a == 0.0) { vec![] } else { add.iter().map(|&a| -(a as f64)).collect() };
        Ok(Preprocess { scale: s, mean, std: vec![] })
    } else {
        if mul.iter().any(|&m| m <= 0.0) {
            return Err("per-channel input scales must be positive".into());
        }
        // x*m + a = (x - (-a/m)) / (1/m)
        Ok(Preprocess {
            scale: 1.0,
            mean: mul.iter().zip(add).map(|(&m, &a)| -(a as f64) / m as f64).collect(),
            std: mul.iter().map(|&m| 1.0 / m as f64).collect(),
        })
    }
}

use crate::nn::spec::Slot;

/// Names layers after their ONNX weights: a layer's full prefix is its weight's initializer name
/// without `.weight` (sanitised to the spec's name alphabet). A residual block takes the longest
/// dotted prefix its layers share (PyTorch's `layer1.0`), so `layer1.0.conv1.weight` keeps its
/// name; when they share none the block is positional and its layers are named below it.
fn name_layers(layers: &mut [Layer], parent: &str, slot: Slot, stems: &HashMap<String, String>) {
    for (i, layer) in layers.iter_mut().enumerate() {
        match layer {
            Layer::Residual(r) => {
                let mut all = Vec::new();
                collect_stems(&r.body, stems, &mut all);
                if let Some(s) = &r.shortcut {
                    collect_stems(s, stems, &mut all);
                }
                let common = common_prefix(&all);
                let name = common.filter(|c| parent.is_empty() || c.starts_with(&format!("{parent}."))).map(|c| {
                    if parent.is_empty() {
                        c
                    } else {
                        c[parent.len() + 1..].to_string()
                    }
                });
                r.name = name;
                let prefix = crate::nn::spec::layer_prefix(parent, slot, i, r.name.as_deref());
                name_layers(&mut r.body, &prefix, Slot::Body, stems);
                if let Some(s) = &mut r.shortcut {
                    name_layers(s, &prefix, Slot::Shortcut, stems);
                }
            }
            Layer::Sequential(s) => {
                let prefix = crate::nn::spec::layer_prefix(parent, slot, i, s.name.as_deref());
                name_layers(&mut s.layers, &prefix, Slot::Seq, stems);
            }
            other => {
                let Some(temp) = other.name().map(str::to_string) else { continue };
                let Some(stem) = stems.get(&temp) else { continue };
                let stem = sanitize(stem);
                let rel = match stem.strip_prefix(&format!("{parent}.")) {
                    Some(r) if !parent.is_empty() => r.to_string(),
                    _ => stem,
                };
                set_name(other, rel);
            }
        }
    }
}

fn collect_stems(layers: &[Layer], stems: &HashMap<String, String>, out: &mut Vec<String>) {
    for l in layers {
        match l {
            Layer::Residual(r) => {
                collect_stems(&r.body, stems, out);
                if let Some(s) = &r.shortcut {
                    collect_stems(s, stems, out);
                }
            }
            Layer::Sequential(s) => collect_stems(&s.layers, stems, out),
            other => {
                if let Some(s) = other.name().and_then(|t| stems.get(t)) {
                    out.push(sanitize(s));
                }
            }
        }
    }
}

/// Longest dotted prefix shared by all stems and strictly shorter than each.
fn common_prefix(stems: &[String]) -> Option<String> {
    let first: Vec<&str> = stems.first()?.split('.').collect();
    let mut len = first.len().saturating_sub(1);
    for s in &stems[1..] {
        let parts: Vec<&str> = s.split('.').collect();
        let shared = first.iter().zip(&parts).take_while(|(a, b)| a == b).count();
        len = len.min(shared).min(parts.len().saturating_sub(1));
    }
    (len > 0).then(|| first[..len].join("."))
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' })
        .collect();
    let parts: Vec<&str> = s.split('.').filter(|p| !p.is_empty()).collect();
    let mut s = parts.join(".");
    s.truncate(150);
    let s = s.trim_end_matches('.').to_string();
    if s.is_empty() {
        "w".into()
    } else {
        s
    }
}

fn set_name(layer: &mut Layer, name: String) {
    match layer {
        Layer::Linear(l) => l.name = Some(name),
        Layer::Conv2d(l) => l.name = Some(name),
        Layer::BatchNorm(l) => l.name = Some(name),
        _ => {}
    }
}

fn strip_names(layers: &mut [Layer]) {
    for l in layers {
        match l {
            Layer::Linear(x) => x.name = None,
            Layer::Conv2d(x) => x.name = None,
            Layer::BatchNorm(x) => x.name = None,
            Layer::Residual(r) => {
                r.name = None;
                strip_names(&mut r.body);
                if let Some(s) = &mut r.shortcut {
                    strip_names(s);
                }
            }
            Layer::Sequential(s) => {
                s.name = None;
                strip_names(&mut s.layers);
            }
            _ => {}
        }
    }
}
