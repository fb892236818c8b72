//! Import/export tests on small graphs built with the protobuf types (no Python).

use std::collections::HashMap;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use prost::Message;

use super::export::{build_model, ExportInfo, Weight};
use super::proto::*;
use super::*;
use crate::compress::quant::{quantize_int8, Granularity};
use crate::nn::{Layer, Network, Param};

/// A seeded pseudo-random vector in [-0.5, 0.5).
pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// Graph under construction.
#[derive(Default)]
pub(crate) struct G {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub seed: u64,
}

impl G {
    pub fn init(&mut self, name: &str, dims: &[usize]) -> String {
        self.seed += 1;
        let v = rand_vec(dims.iter().product(), self.seed);
        self.inits.push(TensorProto::f32(name, dims, &v));
        name.to_string()
    }
    /// Like `init` but with `float_data` instead of raw bytes (what `helper.make_tensor` writes).
    pub fn init_floats(&mut self, name: &str, dims: &[usize]) -> String {
        self.seed += 1;
        let v = rand_vec(dims.iter().product(), self.seed);
        self.inits.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            float_data: v,
            ..Default::default()
        });
        name.to_string()
    }
    pub fn positive(&mut self, name: &str, n: usize) -> String {
        self.seed += 1;
        let v: Vec<f32> = rand_vec(n, self.seed).iter().map(|x| x + 1.0).collect();
        self.inits.push(TensorProto::f32(name, &[n], &v));
        name.to_string()
    }
    pub fn op(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("{name}_out");
        let mut n = NodeProto::new(op, name, inputs, &[&out]);
        n.attribute = attrs;
        self.nodes.push(n);
        out
    }
    pub fn model(self, input_shape: &[usize], output: &str, classes: usize, opset: i64) -> Vec<u8> {
        let mut nodes = self.nodes;
        nodes.push(NodeProto::new("Identity", "out", &[output], &["logits"]));
        let m = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            producer_name: "modelpress-tests".into(),
            graph: Some(GraphProto {
                node: nodes,
                name: "g".into(),
                initializer: self.inits,
                input: vec![ValueInfoProto::batched("x", data_type::FLOAT, input_shape)],
                output: vec![ValueInfoProto::batched("logits", data_type::FLOAT, &[classes])],
                ..Default::default()
            }),
            ..Default::default()
        };
        m.encode_to_vec()
    }
}

pub(crate) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto::ints(name, v)
}

/// 8 → 16 → 4 MLP, PyTorch style (Gemm transB=1, `fc1.weight`).
pub(crate) fn mlp() -> Vec<u8> {
    let mut g = G::default();
    let (w1, b1) = (g.init("fc1.weight", &[16, 8]), g.init("fc1.bias", &[16]));
    let (w2, b2) = (g.init("fc2.weight", &[4, 16]), g.init_floats("fc2.bias", &[4]));
    let h = g.op("Gemm", "fc1", &["x", &w1, &b1], vec![AttributeProto::int("transB", 1)]);
    let h = g.op("Relu", "relu1", &[&h], vec![]);
    let y = g.op("Gemm", "fc2", &[&h, &w2, &b2], vec![AttributeProto::int("transB", 1)]);
    g.model(&[8], &y, 4, 17)
}

/// A small CNN: input scaling, conv+bn+relu, max pool, depthwise conv + relu6 (Clip), 1×1
/// conv, global average pool, flatten, dropout, MatMul+Add classifier.
pub(crate) fn cnn() -> Vec<u8> {
    let mut g = G::default();
    let s = g.op("Constant", "scale", &[], vec![AttributeProto::tensor("value", TensorProto::f32("s", &[], &[0.5]))]);
    let x = g.op("Mul", "pre", &["x", &s], vec![]);
    let w = g.init("conv1.weight", &[4, 1, 3, 3]);
    let x = g.op("Conv", "conv1", &[&x, &w], vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])]);
    let (bs, bb) = (g.positive("bn1.weight", 4), g.init("bn1.bias", &[4]));
    let (bm, bv) = (g.init("bn1.running_mean", &[4]), g.positive("bn1.running_var", 4));
    let x = g.op("BatchNormalization", "bn1", &[&x, &bs, &bb, &bm, &bv], vec![AttributeProto::float("epsilon", 1e-5)]);
    let x = g.op("Relu", "relu1", &[&x], vec![]);
    let x = g.op("MaxPool", "pool", &[&x], vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]);
    let (dw, db) = (g.init("dw.weight", &[4, 1, 3, 3]), g.init("dw.bias", &[4]));
    let x = g.op("Conv", "dw", &[&x, &dw, &db], vec![ints("pads", &[1, 1, 1, 1]), AttributeProto::int("group", 4)]);
    let (lo, hi) = (g.init("zero", &[]), g.init("six", &[]));
    g.inits.retain(|t| t.name != "zero" && t.name != "six");
    g.inits.push(TensorProto::f32(lo.clone(), &[], &[0.0]));
    g.inits.push(TensorProto::f32(hi.clone(), &[], &[6.0]));
    let x = g.op("Clip", "relu6", &[&x, &lo, &hi], vec![]);
    let pw = g.init("pw.weight", &[8, 4, 1, 1]);
    let x = g.op("Conv", "pw", &[&x, &pw], vec![]);
    let x = g.op("GlobalAveragePool", "gap", &[&x], vec![]);
    let x = g.op("Flatten", "flat", &[&x], vec![]);
    let x = g.op("Dropout", "drop", &[&x], vec![]);
    let (fw, fb) = (g.init("W_fc", &[8, 3]), g.init("b_fc", &[3]));
    let x = g.op("MatMul", "fc", &[&x, &fw], vec![]);
    let y = g.op("Add", "fc_bias", &[&x, &fb], vec![]);
    g.model(&[1, 8, 8], &y, 3, 13)
}

/// A residual net: stem conv, one identity block and one projection block, PyTorch names.
pub(crate) fn resnet() -> Vec<u8> {
    let mut g = G::default();
    let w = g.init("stem.weight", &[4, 2, 3, 3]);
    let x0 = g.op("Conv", "stem", &["x", &w], vec![ints("pads", &[1, 1, 1, 1])]);
    let x0 = g.op("Relu", "stem_relu", &[&x0], vec![]);
    // identity block
    let w1 = g.init("layer1.0.conv1.weight", &[4, 4, 3, 3]);
    let h = g.op("Conv", "l1c1", &[&x0, &w1], vec![ints("pads", &[1, 1, 1, 1])]);
    let (s, b) = (g.positive("layer1.0.bn1.weight", 4), g.init("layer1.0.bn1.bias", &[4]));
    let (m, v) = (g.init("layer1.0.bn1.running_mean", &[4]), g.positive("layer1.0.bn1.running_var", 4));
    let h = g.op("BatchNormalization", "l1bn1", &[&h, &s, &b, &m, &v], vec![]);
    let h = g.op("Relu", "l1r", &[&h], vec![]);
    let w2 = g.init("layer1.0.conv2.weight", &[4, 4, 3, 3]);
    let h = g.op("Conv", "l1c2", &[&h, &w2], vec![ints("pads", &[1, 1, 1, 1])]);
    let x1 = g.op("Add", "l1add", &[&h, &x0], vec![]);
    let x1 = g.op("Relu", "l1out", &[&x1], vec![]);
    // projection block (stride 2)
    let w3 = g.init("layer2.0.conv1.weight", &[8, 4, 3, 3]);
    let h = g.op("Conv", "l2c1", &[&x1, &w3], vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])]);
    let h = g.op("Relu", "l2r", &[&h], vec![]);
    let wd = g.init("layer2.0.downsample.0.weight", &[8, 4, 1, 1]);
    let sc = g.op("Conv", "l2down", &[&x1, &wd], vec![ints("strides", &[2, 2])]);
    let x2 = g.op("Add", "l2add", &[&sc, &h], vec![]);
    let x2 = g.op("Relu", "l2out", &[&x2], vec![]);
    let x = g.op("GlobalAveragePool", "gap", &[&x2], vec![]);
    let shape =
        g.op("Constant", "shape", &[], vec![AttributeProto::tensor("value", TensorProto::i64("s", &[2], &[0, -1]))]);
    let x = g.op("Reshape", "flat", &[&x, &shape], vec![]);
    let (fw, fb) = (g.init("fc.weight", &[5, 8]), g.init("fc.bias", &[5]));
    let y = g.op("Gemm", "fc", &[&x, &fw, &fb], vec![AttributeProto::int("transB", 1)]);
    let y = g.op("Softmax", "softmax", &[&y], vec![AttributeProto::int("axis", 1)]);
    g.model(&[2, 8, 8], &y, 5, 13)
}

fn network(imp: &Imported) -> Network {
    let params: HashMap<String, Param> = imp
        .tensors
        .iter()
        .map(|t| {
            (t.name.clone(), Param::Float(Tensor::from_vec(t.data.to_vec(), t.shape.clone(), &Device::Cpu).unwrap()))
        })
        .collect();
    Network::new(&imp.spec, params).unwrap()
}

fn forward(net: &Network, shape: &[usize], batch: usize, seed: u64) -> Vec<f32> {
    let mut dims = vec![batch];
    dims.extend(shape);
    let x = Tensor::from_vec(rand_vec(dims.iter().product(), seed), dims, &Device::Cpu).unwrap();
    net.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn tensor<'a>(imp: &'a Imported, name: &str) -> &'a ImportedTensor {
    imp.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name} in {:?}", names(imp)))
}

fn names(imp: &Imported) -> Vec<&str> {
    imp.tensors.iter().map(|t| t.name.as_str()).collect()
}

#[test]
fn mlp_keeps_pytorch_names_and_raw_weights() {
    let imp = import(Bytes::from(mlp())).unwrap();
    assert_eq!(names(&imp), ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    let types: Vec<&str> = imp.spec.layers.iter().map(Layer::type_name).collect();
    assert_eq!(types, ["linear", "relu", "linear"]);
    assert!(matches!(tensor(&imp, "fc1.weight").data, TensorData::RawF32(_)), "Gemm transB=1 weights are not copied");
    assert_eq!(tensor(&imp, "fc1.weight").data.to_vec(), rand_vec(128, 1));
    assert_eq!(tensor(&imp, "fc2.bias").data.to_vec(), rand_vec(4, 4), "float_data initializers are read");
    assert_eq!(imp.spec.output.classes, 4);
    assert_eq!(imp.tensors.iter().find(|t| t.name == "fc1.weight").unwrap().onnx_name, "fc1.weight");
}

#[test]
fn mlp_forward_matches_a_hand_computation() {
    let imp = import(Bytes::from(mlp())).unwrap();
    let net = network(&imp);
    let x = rand_vec(8, 99);
    let y = forward(&net, &[8], 1, 99);
    let (w1, b1, w2, b2) = (rand_vec(128, 1), rand_vec(16, 2), rand_vec(64, 3), rand_vec(4, 4));
    let h: Vec<f32> = (0..16).map(|o| (b1[o] + (0..8).map(|i| w1[o * 8 + i] * x[i]).sum::<f32>()).max(0.0)).collect();
    for o in 0..4 {
        let want = b2[o] + (0..16).map(|i| w2[o * 16 + i] * h[i]).sum::<f32>();
        assert!((y[o] - want).abs() < 1e-5, "{o}: {} vs {want}", y[o]);
    }
}

#[test]
fn cnn_maps_every_operator_and_folds_constants() {
    let imp = import(Bytes::from(cnn())).unwrap();
    let types: Vec<&str> = imp.spec.layers.iter().map(Layer::type_name).collect();
    assert_eq!(
        types,
        [
            "conv2d",
            "batch_norm",
            "relu",
            "max_pool2d",
            "conv2d",
            "relu6",
            "conv2d",
            "global_avg_pool",
            "dropout",
            "linear"
        ]
    );
    let pre = imp.spec.input.preprocess.as_ref().expect("the input Mul becomes preprocessing");
    assert_eq!(pre.scale, 0.5);
    assert_eq!(
        names(&imp),
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "dw.weight",
            "dw.bias",
            "pw.weight",
            "W_fc.weight",
            "W_fc.bias"
        ]
    );
    // MatMul weights [in, out] are stored transposed, PyTorch style.
    let w = tensor(&imp, "W_fc.weight");
    assert_eq!(w.shape, [3, 8]);
    let orig = rand_vec(24, 11);
    assert_eq!(w.data.to_vec()[1], orig[3]); // [0][1] = orig[1][0]
    assert_eq!(tensor(&imp, "W_fc.bias").onnx_name, "b_fc");
    let Layer::Conv2d(dw) = &imp.spec.layers[4] else { panic!() };
    assert_eq!((dw.groups, dw.padding.0), (4, 1));
    let net = network(&imp);
    assert_eq!(forward(&net, &[1, 8, 8], 2, 5).len(), 6);
}

#[test]
fn residual_blocks_keep_their_pytorch_prefix() {
    let imp = import(Bytes::from(resnet())).unwrap();
    let types: Vec<&str> = imp.spec.layers.iter().map(Layer::type_name).collect();
    assert_eq!(
        types,
        ["conv2d", "relu", "residual", "relu", "residual", "relu", "global_avg_pool", "linear", "softmax"]
    );
    let Layer::Residual(r) = &imp.spec.layers[2] else { panic!() };
    assert_eq!(r.name.as_deref(), Some("layer1.0"));
    assert!(r.shortcut.is_none());
    let Layer::Residual(r2) = &imp.spec.layers[4] else { panic!() };
    assert_eq!(r2.body.len(), 2);
    assert_eq!(r2.shortcut.as_ref().map(Vec::len), Some(1));
    let n = names(&imp);
    for want in ["layer1.0.conv1.weight", "layer1.0.bn1.running_var", "layer2.0.downsample.0.weight", "fc.bias"] {
        assert!(n.contains(&want), "{want} missing from {n:?}");
    }
    assert_eq!(imp.spec.output.kind, crate::nn::spec::OutputKind::Probabilities);
    let y = forward(&network(&imp), &[2, 8, 8], 3, 7);
    for row in y.chunks(5) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn every_unsupported_node_is_listed() {
    let mut g = G::default();
    let w = g.init("conv.weight", &[2, 1, 3, 3]);
    let x = g.op("Conv", "asym", &["x", &w], vec![ints("pads", &[0, 0, 1, 1])]);
    let x = g.op("LeakyRelu", "leaky", &[&x], vec![]);
    let x = g.op("Flatten", "flat", &[&x], vec![]);
    let mut n = NodeProto::new("FusedThing", "custom", &[&x], &["y"]);
    n.domain = "com.example".into();
    g.nodes.push(n);
    let err = import(Bytes::from(g.model(&[1, 4, 4], "y", 2, 13))).unwrap_err();
    let OnnxError::Unsupported(list) = err else { panic!("{err}") };
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list[0].starts_with("Conv 'asym': pads"), "{list:?}");
    assert_eq!(list[1], "LeakyRelu 'leaky'");
    assert!(list[2].contains("com.example"), "{list:?}");
}

#[test]
fn garbage_and_old_opsets_are_refused() {
    assert!(matches!(import(Bytes::from_static(b"\xff\xff\xff not protobuf")), Err(OnnxError::Decode(_))));
    let mut g = G::default();
    let w = g.init("w", &[2, 4]);
    let y = g.op("Gemm", "fc", &["x", &w], vec![AttributeProto::int("transB", 1)]);
    let err = import(Bytes::from(g.model(&[4], &y, 2, 9))).unwrap_err();
    assert!(err.to_string().contains("opset 9"), "{err}");
}

#[test]
fn structural_problems_are_explained() {
    // Mul of two activations (swish) is not a residual join.
    let mut g = G::default();
    let w = g.init("fc.weight", &[4, 4]);
    let h = g.op("Gemm", "fc", &["x", &w], vec![AttributeProto::int("transB", 1)]);
    let s = g.op("Sigmoid", "sig", &[&h], vec![]);
    let y = g.op("Mul", "swish", &[&h, &s], vec![]);
    let err = import(Bytes::from(g.model(&[4], &y, 4, 17))).unwrap_err();
    assert!(err.to_string().contains("Mul 'swish'"), "{err}");
}

fn weights_of(imp: &Imported) -> HashMap<String, (Vec<usize>, Weight)> {
    imp.tensors.iter().map(|t| (t.name.clone(), (t.shape.clone(), Weight::F32(t.data.to_vec())))).collect()
}

fn reimport(spec: &crate::nn::ModelSpec, w: &HashMap<String, (Vec<usize>, Weight)>) -> Imported {
    let info = ExportInfo {
        model_id: "m".into(),
        model_name: "n".into(),
        source_model: Some("src".into()),
        job: Some("j".into()),
    };
    let model = build_model(spec, w, "f32", &info).unwrap();
    let props: HashMap<&str, &str> = model.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(props["modelpress.source_model"], "src");
    assert_eq!(props["modelpress.job"], "j");
    import(Bytes::from(model.encode_to_vec())).unwrap()
}

#[test]
fn export_then_import_gives_the_same_network() {
    for (bytes, shape) in [(mlp(), vec![8]), (cnn(), vec![1, 8, 8]), (resnet(), vec![2, 8, 8])] {
        let imp = import(Bytes::from(bytes)).unwrap();
        let back = reimport(&imp.spec, &weights_of(&imp));
        assert_eq!(back.spec, imp.spec, "the spec survives the round trip");
        assert_eq!(names(&back), names(&imp));
        let (a, b) = (forward(&network(&imp), &shape, 3, 11), forward(&network(&back), &shape, 3, 11));
        assert_eq!(a, b);
    }
}

#[test]
fn int8_and_f16_weights_export_as_dequantize_and_cast() {
    let imp = import(Bytes::from(mlp())).unwrap();
    let mut w = weights_of(&imp);
    let fc1 = tensor(&imp, "fc1.weight").data.to_vec();
    let q = quantize_int8("fc1.weight", &fc1, &[16, 8], true, Granularity::PerChannel).unwrap();
    let deq = crate::compress::quant::dequantize_int8(&q);
    w.insert("fc1.weight".into(), (vec![16, 8], Weight::Int8(q)));
    let fc2 = tensor(&imp, "fc2.weight").data.to_vec();
    let h: Vec<half::f16> = fc2.iter().map(|&x| half::f16::from_f32(x)).collect();
    w.insert("fc2.weight".into(), (vec![4, 16], Weight::F16(h.clone())));
    let info = ExportInfo::default();
    let model = build_model(&imp.spec, &w, "int8", &info).unwrap();
    let g = model.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.contains(&"DequantizeLinear") && ops.contains(&"Cast"), "{ops:?}");
    let q_init = g.initializer.iter().find(|t| t.name == "fc1.weight").unwrap();
    assert_eq!((q_init.data_type, q_init.raw_data.len()), (data_type::INT8, 128));
    let back = import(Bytes::from(model.encode_to_vec())).unwrap();
    assert_eq!(tensor(&back, "fc1.weight").data.to_vec(), deq, "DequantizeLinear folds to q * scale");
    let want: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
    assert_eq!(tensor(&back, "fc2.weight").data.to_vec(), want);
}

#[test]
fn import_file_writes_safetensors_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("m.onnx"), dir.path().join("m.safetensors"));
    std::fs::write(&src, cnn()).unwrap();
    let imp = import_file(&src, &dst).unwrap();
    let tf = crate::tensorfile::Tensorfile::open_trusted(&dst).unwrap();
    assert_eq!(tf.header.tensors.len(), imp.tensors.len());
    let e = tf.entry("W_fc.weight").unwrap();
    assert_eq!(tf.to_f32(e).unwrap(), tensor(&imp, "W_fc.weight").data.to_vec());
    assert!(tf.header.metadata["modelpress.onnx.tensors"].contains("\"W_fc.bias\":\"b_fc\""));
    // A refused graph writes nothing.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&src, b"nope").unwrap();
    assert!(import_file(&src, &bad).is_err());
    assert!(!bad.exists());
}

#[test]
fn reshape_with_a_batch_fixed_at_export_is_a_flatten() {
    let mut g = G::default();
    let shape =
        g.op("Constant", "shape", &[], vec![AttributeProto::tensor("value", TensorProto::i64("s", &[2], &[1, 16]))]);
    let x = g.op("Reshape", "view", &["x", &shape], vec![]);
    let w = g.init("fc.weight", &[3, 16]);
    let y = g.op("Gemm", "fc", &[&x, &w], vec![AttributeProto::int("transB", 1)]);
    let imp = import(Bytes::from(g.model(&[1, 4, 4], &y, 3, 13))).unwrap();
    let types: Vec<&str> = imp.spec.layers.iter().map(Layer::type_name).collect();
    assert_eq!(types, ["flatten", "linear"]);
    // A reshape that moves the batch dim is refused with the reason.
    let mut g = G::default();
    let shape =
        g.op("Constant", "shape", &[], vec![AttributeProto::tensor("value", TensorProto::i64("s", &[2], &[4, -1]))]);
    let x = g.op("Reshape", "view", &["x", &shape], vec![]);
    let w = g.init("fc.weight", &[3, 4]);
    let y = g.op("Gemm", "fc", &[&x, &w], vec![AttributeProto::int("transB", 1)]);
    let err = import(Bytes::from(g.model(&[1, 4, 4], &y, 3, 13))).unwrap_err();
    assert!(err.to_string().contains("batch dim"), "{err}");
}
