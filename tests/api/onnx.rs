//! ONNX upload (`?format=onnx`, multipart `onnx` part) and download (`?format=onnx`), with graphs
//! built in Rust from the real digits teacher.

use std::path::Path;

use modelpress::onnx::proto::{
    data_type, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use modelpress::tensorfile::Tensorfile;
use prost::Message;
use serde_json::{json, Value};

use crate::helpers::{fixture, spawn_app, TestApp};

/// The digits teacher as a PyTorch-style ONNX graph (Gemm transB=1, `fc1.weight` names).
fn teacher_onnx(extra: Option<NodeProto>) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/teacher_digits.safetensors");
    let tf = Tensorfile::open_trusted(&path).unwrap();
    let mut inits = Vec::new();
    for t in &tf.header.tensors {
        inits.push(TensorProto::f32(t.name.clone(), &t.shape, &tf.to_f32(t).unwrap()));
    }
    let gemm = |i: usize, x: &str, y: &str| {
        NodeProto::new("Gemm", format!("fc{i}"), &[x, &format!("fc{i}.weight"), &format!("fc{i}.bias")], &[y])
            .with(AttributeProto::int("transB", 1))
    };
    let mut node = vec![
        gemm(1, "x", "h1"),
        NodeProto::new("Relu", "relu1", &["h1"], &["a1"]),
        gemm(2, "a1", "h2"),
        NodeProto::new("Relu", "relu2", &["h2"], &["a2"]),
        gemm(3, "a2", "logits"),
    ];
    if let Some(n) = extra {
        node.insert(1, n);
    }
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "tests".into(),
        graph: Some(GraphProto {
            node,
            name: "teacher".into(),
            initializer: inits,
            input: vec![ValueInfoProto::batched("x", data_type::FLOAT, &[64])],
            output: vec![ValueInfoProto::batched("logits", data_type::FLOAT, &[10])],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.encode_to_vec()
}

async fn upload_onnx(app: &TestApp, bytes: Vec<u8>, name: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/models?format=onnx&name={name}")))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn predict(app: &TestApp, id: &str, inputs: &Value) -> Vec<Vec<f32>> {
    let r = app
        .client
        .post(app.url(&format!("/v1/models/{id}/predict")))
        .json(&json!({"inputs": inputs}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    serde_json::from_value(v["outputs"].clone()).unwrap()
}

fn test_inputs(n: usize) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits.safetensors");
    let tf = Tensorfile::open_trusted(&path).unwrap();
    let x = tf.to_f32(tf.entry("test_x").unwrap()).unwrap();
    json!(x.chunks(64).take(n).collect::<Vec<_>>())
}

async fn download(app: &TestApp, id: &str) -> reqwest::Response {
    app.client.get(app.url(&format!("/v1/models/{id}/download?format=onnx"))).send().await.unwrap()
}

#[tokio::test]
async fn onnx_upload_predicts_like_the_safetensors_upload() {
    let app = spawn_app().await;
    let r = upload_onnx(&app, teacher_onnx(None), "teacher-onnx").await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["has_spec"], true);
    assert_eq!(m["parameter_count"], 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
    let layers: Vec<&str> =
        m["spec"]["layers"].as_array().unwrap().iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(layers, ["linear", "relu", "linear", "relu", "linear"]);
    assert_eq!(m["spec"]["layers"][0]["name"], "fc1");
    assert!(m["metadata"]["modelpress.onnx.source"].as_str().unwrap().contains("\"opset\":17"));

    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits-mlp.spec.json")).unwrap();
    let r = app.upload_with_spec(fixture("teacher_digits.safetensors"), "teacher", &spec).await;
    assert_eq!(r.status(), 201);
    let plain: Value = r.json().await.unwrap();
    let inputs = test_inputs(20);
    let a = predict(&app, m["id"].as_str().unwrap(), &inputs).await;
    let b = predict(&app, plain["id"].as_str().unwrap(), &inputs).await;
    assert_eq!(a, b, "same weights, same network, same outputs");

    // Multipart with an `onnx` part works too.
    let form = reqwest::multipart::Form::new()
        .part("onnx", reqwest::multipart::Part::bytes(teacher_onnx(None)).file_name("m.onnx"))
        .text("name", "via-multipart");
    let r = app.client.post(app.url("/v1/models")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn unsupported_graphs_get_a_422_listing_every_node_and_store_nothing() {
    let app = spawn_app().await;
    let lrelu = NodeProto::new("LeakyRelu", "leaky", &["h1"], &["h1b"]);
    let r = upload_onnx(&app, teacher_onnx(Some(lrelu)), "bad").await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "invalid_onnx");
    assert_eq!(p["errors"], json!(["LeakyRelu 'leaky'"]));
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("Gemm") && detail.contains("BatchNormalization"), "names the supported set: {detail}");

    let r = upload_onnx(&app, b"definitely not onnx".to_vec(), "garbage").await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "invalid_onnx");

    let list = app.get_json("/v1/models").await;
    assert_eq!(list["items"], json!([]), "nothing half-imported");
    let leftovers: Vec<_> = app.artifact_files().into_iter().collect();
    assert!(leftovers.is_empty(), "temp files removed: {leftovers:?}");
}

#[tokio::test]
async fn onnx_download_round_trips_and_int8_is_qdq() {
    let app = spawn_app().await;
    let r = upload_onnx(&app, teacher_onnx(None), "teacher").await;
    let m: Value = r.json().await.unwrap();
    let id = m["id"].as_str().unwrap().to_string();
    let r = download(&app, &id).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"].to_str().unwrap().ends_with(".onnx\""));
    let f32_bytes = r.bytes().await.unwrap();
    let model = ModelProto::decode(f32_bytes.clone()).unwrap();
    let props: Vec<(&str, &str)> = model.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert!(props.contains(&("modelpress.model_id", id.as_str())));
    assert!(props.contains(&("modelpress.scheme", "f32")));

    // Export → import gives back the same predictions.
    let r = upload_onnx(&app, f32_bytes.to_vec(), "again").await;
    assert_eq!(r.status(), 201);
    let again: Value = r.json().await.unwrap();
    let inputs = test_inputs(16);
    assert_eq!(predict(&app, &id, &inputs).await, predict(&app, again["id"].as_str().unwrap(), &inputs).await);

    // int8: QDQ with int8 initializers, at most 28 % of the f32 file.
    let job = app.submit(json!({"kind": "quantize", "model_id": id, "params": {"scheme": "int8"}})).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 60).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let q = job["output_model_id"].as_str().unwrap().to_string();
    let r = download(&app, &q).await;
    assert_eq!(r.status(), 200);
    let q_bytes = r.bytes().await.unwrap();
    let ratio = q_bytes.len() as f64 / f32_bytes.len() as f64;
    assert!(ratio <= 0.28, "int8 ONNX is {ratio:.3} of f32");
    let qm = ModelProto::decode(q_bytes.clone()).unwrap();
    let g = qm.graph.as_ref().unwrap();
    assert_eq!(g.node.iter().filter(|n| n.op_type == "DequantizeLinear").count(), 3);
    let w = g.initializer.iter().find(|t| t.name == "fc2.weight").unwrap();
    assert_eq!(w.data_type, data_type::INT8);
    let props: Vec<(&str, &str)> = qm.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert!(props.contains(&("modelpress.scheme", "int8")), "{props:?}");
    assert!(props.contains(&("modelpress.source_model", id.as_str())), "{props:?}");
    assert!(props.iter().any(|(k, v)| *k == "modelpress.job" && *v == job["id"].as_str().unwrap()));
    // The int8 export re-imports (DequantizeLinear folded) and predicts like the int8 artifact.
    let r = upload_onnx(&app, q_bytes.to_vec(), "int8-again").await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let back: Value = r.json().await.unwrap();
    let (a, b) = (predict(&app, &q, &inputs).await, predict(&app, back["id"].as_str().unwrap(), &inputs).await);
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

#[tokio::test]
async fn onnx_download_needs_a_spec() {
    let app = spawn_app().await;
    let m = app.upload_model(fixture("teacher_digits.safetensors"), "nospec").await;
    let r = download(&app, m["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("spec"), "{p}");
}
