//! Running models: specs, datasets, evaluate and train jobs, through the API.

use serde_json::{json, Value};

use crate::helpers::*;

pub fn digits_spec() -> Value {
    serde_json::from_slice(
        &std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits-mlp.spec.json")).unwrap(),
    )
    .unwrap()
}

pub async fn upload_dataset(app: &TestApp, file: &str, name: &str) -> Value {
    let r = app
        .client
        .post(app.url(&format!("/v1/datasets?name={name}")))
        .header("content-type", "application/octet-stream")
        .body(fixture(file))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// The digits teacher with its spec, and the digits dataset.
pub async fn teacher_and_digits(app: &TestApp) -> (String, String) {
    let r = app.upload_with_spec(fixture("teacher_digits.safetensors"), "teacher", &digits_spec().to_string()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let m: Value = r.json().await.unwrap();
    let d = upload_dataset(app, "digits.safetensors", "digits").await;
    (m["id"].as_str().unwrap().to_string(), d["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn evaluate_digits_teacher_exactly() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = app
        .submit(json!({"kind": "evaluate", "model_id": model, "params": {"dataset_id": data, "split": "test"}}))
        .await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 60).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["report"];
    assert_eq!(r["correct"], 351);
    assert_eq!(r["samples"], 360);
    assert!((r["accuracy"].as_f64().unwrap() - 0.975).abs() < 1e-12);
    assert!(r["top5_accuracy"].as_f64().unwrap() >= 0.975);
    assert_eq!(r["confusion"].as_array().unwrap().len(), 10);
    let diag: u64 = (0..10).map(|i| r["confusion"][i][i].as_u64().unwrap()).sum();
    assert_eq!(diag, 351);
    assert!(r["samples_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["mean_loss"].as_f64().unwrap() > 0.0);
    app.stop().await;
}

#[tokio::test]
async fn train_mlp_from_random_init_on_digits() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = app
        .submit(json!({"kind": "train", "model_id": model, "params": {"dataset_id": data, "init": "random", "epochs": 30, "batch_size": 32, "lr": 0.002, "seed": 7}}))
        .await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 300).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["report"];
    assert_eq!(r["curve"].as_array().unwrap().len(), 30);
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.96, "test accuracy {acc}");
    // The trained model is a new version with the spec, and evaluating it agrees.
    let out = job["output_model_id"].as_str().unwrap();
    let m = app.get_json(&format!("/v1/models/{out}")).await;
    assert_eq!(m["has_spec"], true);
    assert_eq!(m["parent_model_id"], model.as_str());
    let ev = app.submit(json!({"kind": "evaluate", "model_id": out, "params": {"dataset_id": data}})).await;
    let ev = app.wait_for_job(ev["id"].as_str().unwrap(), 60).await;
    assert_eq!(ev["report"]["accuracy"], r["accuracy"]);
    app.stop().await;
}

#[tokio::test]
async fn train_cnn_on_mnist5k() {
    let app = spawn_app().await;
    let spec: Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mnist-cnn.spec.json")).unwrap(),
    )
    .unwrap();
    // A model is weights + spec; for a from-scratch run, upload the initial weights the engine
    // would draw anyway: here any tensors of the right shapes (init=random ignores them).
    let spec_obj = modelpress::nn::ModelSpec::from_json(spec.to_string().as_bytes()).unwrap();
    let mut tensors = Vec::new();
    for p in spec_obj.params() {
        let n: usize = p.shape.iter().product();
        tensors.push((p.name.clone(), p.shape.clone(), f32_bytes(&vec![0.0; n])));
    }
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, b)| (n.as_str(), "F32", s.clone(), b.clone())).collect();
    let r = app.upload_with_spec(safetensors(&refs), "cnn", &spec.to_string()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let model: Value = r.json().await.unwrap();
    let data = upload_dataset(&app, "mnist5k.safetensors", "mnist5k").await;
    let job = app
        .submit(json!({"kind": "train", "model_id": model["id"], "params": {"dataset_id": data["id"], "init": "random", "epochs": 4, "batch_size": 32, "lr": 0.003, "seed": 1}}))
        .await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 600).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let acc = job["report"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "mnist5k test accuracy {acc}");
    app.stop().await;
}

#[tokio::test]
async fn spec_mismatches_are_listed_and_nothing_is_stored() {
    let app = spawn_app().await;
    let m = app.upload_model(fixture("teacher_digits.safetensors"), "teacher").await;
    let id = m["id"].as_str().unwrap();
    let put = |spec: Value| app.client.put(app.url(&format!("/v1/models/{id}/spec"))).json(&spec).send();
    // Two wrong layers: both are reported.
    let mut bad = digits_spec();
    bad["layers"][0]["out_features"] = json!(128);
    bad["layers"][2]["in_features"] = json!(128);
    bad["layers"][4]["out_features"] = json!(12);
    bad["output"]["classes"] = json!(12);
    bad["output"].as_object_mut().unwrap().remove("labels");
    let r = put(bad).await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "invalid_spec");
    let errors: Vec<String> = p["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    assert!(errors.iter().any(|e| e.contains("fc1.weight")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("fc3.weight")), "{errors:?}");
    // Malformed specs.
    let mut unknown = digits_spec();
    unknown["layers"][1] = json!({"type": "swish"});
    let mut negative = digits_spec();
    negative["layers"][0]["out_features"] = json!(-3);
    let mut absurd = digits_spec();
    absurd["layers"][0]["out_features"] = json!(1u64 << 40);
    absurd["layers"][2]["in_features"] = json!(1u64 << 40);
    let mut chain = digits_spec();
    chain["layers"][2]["in_features"] = json!(100);
    for (spec, want) in [(unknown, "swish"), (negative, "-3"), (absurd, "layers"), (chain, "layers[2]")] {
        let r = put(spec).await.unwrap();
        assert_eq!(r.status(), 422);
        let p: Value = r.json().await.unwrap();
        let text = format!("{} {}", p["detail"], p["errors"]);
        assert!(text.contains(want), "{want}: {p}");
    }
    assert_eq!(app.get_json(&format!("/v1/models/{id}")).await["has_spec"], false);
    // A good spec attaches.
    let r = put(digits_spec()).await.unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["model"]["has_spec"], true);
    assert_eq!(a["output_shape"], json!([10]));
    app.stop().await;
}

#[tokio::test]
async fn jobs_check_model_and_dataset_before_queuing() {
    let app = spawn_app().await;
    let (model, digits) = teacher_and_digits(&app).await;
    let bare = app.upload_model(fixture("teacher_digits.safetensors"), "bare").await;
    let mnist = upload_dataset(&app, "mnist5k.safetensors", "mnist").await;
    let cases = vec![
        (
            json!({"kind": "evaluate", "model_id": bare["id"], "params": {"dataset_id": digits}}),
            "model_id",
            "no architecture spec",
        ),
        (
            json!({"kind": "evaluate", "model_id": model, "params": {"dataset_id": mnist["id"]}}),
            "params.dataset_id",
            "[1, 28, 28]",
        ),
        (
            json!({"kind": "evaluate", "model_id": model, "params": {"dataset_id": digits, "split": "all"}}),
            "params.dataset_id",
            "no 'all' split",
        ),
        (
            json!({"kind": "train", "model_id": model, "params": {"dataset_id": digits, "epochs": 0}}),
            "params.epochs",
            "between",
        ),
        (json!({"kind": "train", "model_id": model, "params": {"dataset_id": digits, "lr": -1}}), "params.lr", ""),
        (
            json!({"kind": "train", "model_id": model, "params": {"dataset_id": digits, "optimiser": "adam"}}),
            "params",
            "optimiser",
        ),
    ];
    for (body, field, detail) in cases {
        let r = app.post_job(body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], field, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(detail), "{detail}: {p}");
    }
    assert!(app.get_json("/v1/jobs").await["items"].as_array().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn datasets_upload_list_get_delete() {
    let app = spawn_app().await;
    let d = upload_dataset(&app, "digits.safetensors", "digits").await;
    assert_eq!(d["splits"][0]["name"], "train");
    assert_eq!(d["splits"][0]["samples"], 1437);
    assert_eq!(d["splits"][0]["sample_shape"], json!([64]));
    assert_eq!(d["splits"][1]["class_counts"].as_array().unwrap().len(), 10);
    // CSV through multipart.
    let form = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(b"f1,f2,label\n0.5,1,1\n2,3,0\n".to_vec()).file_name("d.csv"))
        .text("format", "csv")
        .text("name", "tiny");
    let r = app.client.post(app.url("/v1/datasets")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["format"], "csv");
    assert_eq!(c["splits"][0]["samples"], 2);
    assert_eq!(app.get_json("/v1/datasets").await["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.get_json(&format!("/v1/datasets/{}", d["id"].as_str().unwrap())).await["name"], "digits");
    // Bad datasets leave nothing.
    let before = app.artifact_files().len();
    let bad_labels = safetensors(&[
        ("x", "F32", vec![2, 2], f32_bytes(&[0.0; 4])),
        ("y", "I64", vec![3], [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
    ]);
    let no_split = safetensors(&[("features", "F32", vec![2], f32_bytes(&[0.0; 2]))]);
    for (body, fmt, want) in [
        (bad_labels, "safetensors", "3 labels"),
        (no_split, "safetensors", "no split"),
        (b"a,label\n1,x\n".to_vec(), "csv", "not a number"),
    ] {
        let r = app
            .client
            .post(app.url(&format!("/v1/datasets?format={fmt}")))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains(want), "{want}: {p}");
    }
    assert_eq!(app.artifact_files().len(), before);
    let r = app.client.delete(app.url(&format!("/v1/datasets/{}", c["id"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.artifact_files().len(), before - 1);
    app.stop().await;
}
