//! `POST /v1/models/{id}/predict` and `GET …/predict/info`: predictions equal the `evaluate` job's
//! on the same data (float, quantized, pruned models), the binary form, dynamic batching returns
//! each caller its own rows, 429 under a full queue, malformed inputs, deleted models.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::engine::{digits_spec, teacher_and_digits};
use crate::helpers::*;

fn load(bytes: &[u8]) -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu).expect("safetensors")
}

fn digits_test() -> (Tensor, Vec<u32>) {
    let d = load(&fixture("digits.safetensors"));
    let y = d["test_y"].to_vec1::<i64>().unwrap().into_iter().map(|v| v as u32).collect();
    (d["test_x"].clone(), y)
}

/// A safetensors body with one tensor `inputs`.
fn inputs_body(x: &Tensor) -> Vec<u8> {
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    safetensors(&[("inputs", "F32", x.dims().to_vec(), f32_bytes(&v))])
}

async fn predict_json(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url(&format!("/v1/models/{id}/predict"))).json(&body).send().await.unwrap()
}

async fn predict_binary(app: &TestApp, id: &str, body: Vec<u8>, query: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/models/{id}/predict{query}")))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Logits of every test sample through the binary form.
async fn all_logits(app: &TestApp, id: &str, x: &Tensor) -> Vec<Vec<f32>> {
    let r = predict_binary(app, id, inputs_body(x), "").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let out = load(&r.bytes().await.unwrap());
    assert_eq!(out["outputs"].dims(), &[x.dim(0).unwrap(), 10]);
    out["outputs"].to_vec2::<f32>().unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

async fn run_job(app: &TestApp, body: Value) -> Value {
    let job = app.submit(body).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 180).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

async fn evaluate(app: &TestApp, model: &str, data: &str) -> Value {
    run_job(app, json!({"kind": "evaluate", "model_id": model, "params": {"dataset_id": data, "split": "test"}})).await
        ["report"]
        .clone()
}

/// Scores predicted logits like the evaluate job: correct count and confusion matrix.
fn score(logits: &[Vec<f32>], y: &[u32]) -> (u64, Vec<Vec<u64>>) {
    let mut confusion = vec![vec![0u64; 10]; 10];
    let mut correct = 0;
    for (row, &label) in logits.iter().zip(y) {
        let p = argmax(row);
        confusion[label as usize][p] += 1;
        correct += (p == label as usize) as u64;
    }
    (correct, confusion)
}

fn confusion_of(report: &Value) -> Vec<Vec<u64>> {
    serde_json::from_value(report["confusion"].clone()).unwrap()
}

#[tokio::test]
async fn float_model_predictions_equal_evaluate_and_the_reference() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let (x, y) = digits_test();
    let report = evaluate(&app, &model, &data).await;
    let logits = all_logits(&app, &model, &x).await;
    let (correct, confusion) = score(&logits, &y);
    assert_eq!(correct, report["correct"].as_u64().unwrap());
    assert_eq!(confusion, confusion_of(&report));

    // JSON form, nested rows, against the independent numpy reference.
    let r = load(&fixture("reference/digits_teacher.safetensors"));
    let rows = r["x"].narrow(0, 0, 8).unwrap().to_vec2::<f32>().unwrap();
    let resp = predict_json(&app, &model, json!({"inputs": rows})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_id"], model.as_str());
    assert_eq!(body["output"], "logits");
    let want = r["logits"].to_vec2::<f32>().unwrap();
    for (i, out) in body["outputs"].as_array().unwrap().iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(out.clone()).unwrap();
        let d = got.iter().zip(&want[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-4, "row {i}: max abs diff {d}");
        // The binary form gave the same numbers for the same sample.
        let b = logits[i].iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(b <= 1e-5, "row {i}: binary vs JSON {b}");
    }

    // top_k with labels, probabilities summing to one.
    let resp = predict_json(&app, &model, json!({"inputs": [rows[0]], "output": "top_k", "k": 3})).await;
    let body: Value = resp.json().await.unwrap();
    let top = body["outputs"][0].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["index"].as_u64().unwrap() as usize, argmax(&want[0]));
    assert_eq!(top[0]["label"], argmax(&want[0]).to_string());
    let resp = predict_json(&app, &model, json!({"inputs": [rows[0]], "output": "probabilities"})).await;
    let body: Value = resp.json().await.unwrap();
    let p: Vec<f32> = serde_json::from_value(body["outputs"][0].clone()).unwrap();
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!((top[0]["score"].as_f64().unwrap() as f32 - p[argmax(&want[0])]).abs() < 1e-6);

    // Binary top_k: scores and indices.
    let resp = predict_binary(&app, &model, inputs_body(&x.narrow(0, 0, 4).unwrap()), "?output=top_k&k=2").await;
    assert_eq!(resp.status(), 200);
    let out = load(&resp.bytes().await.unwrap());
    assert_eq!(out["outputs"].dims(), &[4, 2]);
    let idx = out["indices"].to_vec2::<i64>().unwrap();
    for (i, row) in idx.iter().enumerate() {
        assert_eq!(row[0] as usize, argmax(&logits[i]));
    }
    app.stop().await;
}

/// Quantized and pruned artifacts: the endpoint's predictions agree with the evaluate job on the
/// stored artifact. The quantized layers of the digits MLP are small, so the endpoint runs them
/// as f32 of the stored values (see `inference::model`), as `evaluate` does for int8/int4/f16;
/// for GGML types `evaluate` runs candle's QMatMul, which also rounds the activations to 8 bits,
/// so a near-tie may flip: at most one of 360 samples, and the logits stay within 0.1.
#[tokio::test]
async fn compressed_model_predictions_equal_evaluate() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let (x, y) = digits_test();
    let float_logits = all_logits(&app, &model, &x).await;
    let jobs = [
        ("f16", json!({"kind": "quantize", "model_id": model, "params": {"scheme": "f16"}})),
        ("int8", json!({"kind": "quantize", "model_id": model, "params": {"scheme": "int8"}})),
        ("int4", json!({"kind": "quantize", "model_id": model, "params": {"scheme": "int4"}})),
        ("q4_k", json!({"kind": "quantize", "model_id": model, "params": {"scheme": "q4_k"}})),
        ("q8_0", json!({"kind": "quantize", "model_id": model, "params": {"scheme": "q8_0"}})),
        ("pruned", json!({"kind": "prune", "model_id": model, "params": {"sparsity": 0.5}})),
    ];
    for (what, body) in jobs {
        let job = run_job(&app, body).await;
        let out = job["output_model_id"].as_str().unwrap().to_string();
        let report = evaluate(&app, &out, &data).await;
        let logits = all_logits(&app, &out, &x).await;
        let (correct, confusion) = score(&logits, &y);
        let evaluated = report["correct"].as_u64().unwrap();
        let ggml = what.starts_with('q');
        if ggml {
            assert!(correct.abs_diff(evaluated) <= 1, "{what}: {correct} vs evaluate {evaluated}");
        } else {
            assert_eq!(correct, evaluated, "{what}");
            assert_eq!(confusion, confusion_of(&report), "{what}");
        }
        // Close to the float model too (compression error only).
        let drift = logits
            .iter()
            .zip(&float_logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(u, v)| (u - v).abs()))
            .fold(0f32, f32::max);
        let bound = match what {
            "f16" => 0.01,
            "int8" | "q8_0" => 0.2,
            "pruned" => f32::INFINITY, // half the weights gone, no fine-tuning: only evaluate binds
            _ => 3.0,
        };
        assert!(drift <= bound, "{what}: logits drift {drift} from the float model");
        // The info endpoint says what is stored and how it runs.
        let info = app.get_json(&format!("/v1/models/{out}/predict/info")).await;
        let plan = &info["execution"]["plan"];
        if what != "pruned" {
            let label = if what == "int4" { "int4_g32" } else { what };
            assert_eq!(plan["quantization"], label, "{info}");
            assert_eq!(plan["layers"][1]["stored"], label, "{info}"); // fc1 (64 wide) may fall back
        }
        assert!(plan["layers"].as_array().unwrap().iter().all(|l| l["runs_as"] == "f32"), "{info}");
        assert_eq!(info["execution"]["loaded"], true);
    }
    app.stop().await;
}

#[tokio::test]
async fn structurally_pruned_model_is_served_smaller() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = run_job(
        &app,
        json!({"kind": "prune", "model_id": model, "params": {"structured": {"amount": 0.5, "norm": "l1"}}}),
    )
    .await;
    let out = job["output_model_id"].as_str().unwrap();
    let (x, y) = digits_test();
    let report = evaluate(&app, out, &data).await;
    let logits = all_logits(&app, out, &x).await;
    let (correct, confusion) = score(&logits, &y);
    assert_eq!(correct, report["correct"].as_u64().unwrap());
    assert_eq!(confusion, confusion_of(&report));
    let info = app.get_json(&format!("/v1/models/{out}/predict/info")).await;
    assert_eq!(info["execution"]["plan"]["layers"][0]["shape"], json!([128, 64]), "{info}");
    all_logits(&app, &model, &x).await;
    let full = app.get_json(&format!("/v1/models/{model}/predict/info")).await;
    assert!(info["execution"]["resident_bytes"].as_u64() < full["execution"]["resident_bytes"].as_u64());
    app.stop().await;
}

#[tokio::test]
async fn nested_u8_inputs_and_probability_outputs() {
    let app = spawn_app().await;
    for name in ["cnn", "mlp"] {
        let spec = String::from_utf8(fixture(&format!("reference/{name}.spec.json"))).unwrap();
        let weights = fixture(&format!("reference/{name}.safetensors"));
        let r = app.upload_with_spec(weights.clone(), name, &spec).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        let t = load(&weights);
        let input = &t["input"];
        // Nested JSON in the sample shape ([3, 12, 12] u8 / [2, 6] f32).
        let nested = nested_json(input);
        let resp = predict_json(&app, &id, json!({"inputs": nested})).await;
        assert_eq!(resp.status(), 200, "{name}: {}", resp.text().await.unwrap());
        let body: Value = resp.json().await.unwrap();
        let got: Vec<Vec<f32>> = serde_json::from_value(body["outputs"].clone()).unwrap();
        let want = t["expected"].to_vec2::<f32>().unwrap();
        // mlp ends in softmax: "logits" answers log-probabilities; ask for probabilities too.
        if name == "mlp" {
            let resp = predict_json(&app, &id, json!({"inputs": nested, "output": "probabilities"})).await;
            let body: Value = resp.json().await.unwrap();
            let probs: Vec<Vec<f32>> = serde_json::from_value(body["outputs"].clone()).unwrap();
            assert_close(&probs, &want, name);
            let logp: Vec<Vec<f32>> = want.iter().map(|r| r.iter().map(|p| p.max(1e-12).ln()).collect()).collect();
            assert_close(&got, &logp, name);
        } else {
            assert_close(&got, &want, name);
        }
        let info = app.get_json(&format!("/v1/models/{id}/predict/info")).await;
        assert_eq!(info["input"]["shape"], json!(input.dims()[1..]));
    }
    app.stop().await;
}

/// Nested JSON of a tensor of any rank (as numbers).
fn nested_json(t: &Tensor) -> Value {
    let t = t.to_dtype(candle_core::DType::F64).unwrap();
    fn build(v: &[f64], dims: &[usize]) -> Value {
        match dims.split_first() {
            None => json!(v[0]),
            Some((&d, rest)) => {
                let step: usize = rest.iter().product();
                Value::Array((0..d).map(|i| build(&v[i * step..(i + 1) * step], rest)).collect())
            }
        }
    }
    build(&t.flatten_all().unwrap().to_vec1::<f64>().unwrap(), t.dims())
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-4, "{what}: max abs diff {d}");
    }
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_rows() {
    let app = spawn_app().await;
    let (model, _) = teacher_and_digits(&app).await;
    let r = load(&fixture("reference/digits_teacher.safetensors"));
    let rows = r["x"].to_vec2::<f32>().unwrap();
    let want = r["logits"].to_vec2::<f32>().unwrap();
    // Warm the cache so every request finds the model loaded.
    assert_eq!(predict_json(&app, &model, json!({"inputs": [rows[0]]})).await.status(), 200);
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (i, row) in rows.iter().enumerate() {
            let (client, url) = (app.client.clone(), app.url(&format!("/v1/models/{model}/predict")));
            let body = json!({"inputs": [row]});
            tasks.push(tokio::spawn(async move {
                let resp = client.post(url).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                (round, i, resp.json::<Value>().await.unwrap())
            }));
        }
    }
    for t in tasks {
        let (_, i, body) = t.await.unwrap();
        let got: Vec<f32> = serde_json::from_value(body["outputs"][0].clone()).unwrap();
        let d = got.iter().zip(&want[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-4, "request {i} got someone else's row (max abs diff {d})");
    }
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    // Every row was computed once; batches never exceed the request count.
    assert_eq!(value("modelpress_inference_batch_size_sum"), 1.0 + 2.0 * rows.len() as f64);
    assert!(value("modelpress_inference_batch_size_count") <= 1.0 + 2.0 * rows.len() as f64);
    assert_eq!(value("modelpress_inference_queue_seconds_count"), 1.0 + 2.0 * rows.len() as f64);
    assert!(metrics.contains("modelpress_model_cache_total{event=\"load\"} 1"), "{metrics}");
    app.stop().await;
}

/// An MLP wide enough that a 64-row batch takes a while (4 × 1024²).
fn wide_mlp() -> (String, Vec<u8>) {
    let n = 1024;
    let mut layers = Vec::new();
    let mut tensors = Vec::new();
    for i in 0..4 {
        let out = if i == 3 { 10 } else { n };
        layers.push(json!({"type": "linear", "name": format!("fc{i}"), "in_features": n, "out_features": out}));
        if i < 3 {
            layers.push(json!({"type": "relu"}));
        }
        let w: Vec<f32> = (0..out * n).map(|k| ((k * 7919 + i) % 1000) as f32 / 16000.0 - 0.031).collect();
        tensors.push((format!("fc{i}.weight"), vec![out, n], f32_bytes(&w)));
        tensors.push((format!("fc{i}.bias"), vec![out], f32_bytes(&vec![0.01; out])));
    }
    let spec = json!({"format": "modelpress.spec", "version": 1, "input": {"shape": [n]},
                      "output": {"classes": 10}, "layers": layers});
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(name, shape, b)| (name.as_str(), "F32", shape.clone(), b.clone())).collect();
    (spec.to_string(), safetensors(&refs))
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let app = spawn_with(|c| {
        c.max_inference_queue = 1;
        c.max_batch = 64;
    })
    .await;
    let (spec, weights) = wide_mlp();
    let r = app.upload_with_spec(weights, "wide", &spec).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let x = Tensor::randn(0f32, 1f32, (64, 1024), &Device::Cpu).unwrap();
    let body = inputs_body(&x);
    // Load (and warm) the model first so the burst below only waits for compute.
    assert_eq!(predict_binary(&app, &id, body.clone(), "").await.status(), 200);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, body) = (app.client.clone(), app.url(&format!("/v1/models/{id}/predict")), body.clone());
        tasks.push(tokio::spawn(async move {
            let r =
                client.post(url).header("content-type", "application/octet-stream").body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            (status, retry, ct, r.bytes().await.unwrap())
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (status, retry, ct, bytes) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(ct.as_deref(), Some("application/problem+json"));
                let p: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(p["code"], "rate_limited");
                assert!(p["detail"].as_str().unwrap().contains("inference queue is full"), "{p}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && limited >= 1, "{ok} answered, {limited} rejected");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("modelpress_rejections_total{{reason=\"inference_queue_full\"}} {limited}")));
    app.stop().await;
}

#[tokio::test]
async fn malformed_inputs_get_clear_4xx() {
    let app = spawn_with(|c| c.max_predict_rows = 4).await;
    let (model, _) = teacher_and_digits(&app).await;
    let row: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let expect = |status: u16, needle: &'static str| {
        move |r: (u16, Value)| {
            assert_eq!(r.0, status, "{}", r.1);
            assert!(r.1["detail"].as_str().unwrap().contains(needle), "wanted '{needle}' in {}", r.1);
        }
    };
    let send = |body: Value| {
        let app = &app;
        let model = model.clone();
        async move {
            let r = predict_json(app, &model, body).await;
            let status = r.status().as_u16();
            if status != 200 {
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
            (status, r.json::<Value>().await.unwrap())
        }
    };
    expect(422, "expected a batch of shape [N, 64] (or [N, 64] flat), received [1, 63]")(
        send(json!({"inputs": [row[..63]]})).await,
    );
    expect(422, "received [2]; sample 0 has shape []")(send(json!({"inputs": &row[..2]})).await);
    expect(422, "inputs[0][5]: expected a number, received a string")(
        send(json!({"inputs": [row.iter().enumerate().map(|(i, v)| if i == 5 { json!("x") } else { json!(v) }).collect::<Vec<_>>()]})).await,
    );
    expect(422, "inputs[0][0]: expected a number, received null")(
        send(json!({"inputs": [std::iter::once(Value::Null).chain(row[1..].iter().map(|v| json!(v))).collect::<Vec<_>>()]}))
            .await,
    );
    expect(422, "the batch is empty")(send(json!({"inputs": []})).await);
    expect(422, "must be an array of samples")(send(json!({"inputs": "abc"})).await);
    expect(413, "more than the limit of 4 per request")(send(json!({"inputs": vec![row.clone(); 5]})).await);
    expect(422, "unknown output 'softmax'")(send(json!({"inputs": [row], "output": "softmax"})).await);
    expect(422, "k: must be between 1 and 10")(send(json!({"inputs": [row], "output": "top_k", "k": 11})).await);
    expect(422, "unknown field `input`")(send(json!({"input": [row]})).await);
    // NaN is not JSON; the answer still says why.
    let text = format!("{{\"inputs\": [[NaN{}]]}}", ",0".repeat(63));
    let r = app
        .client
        .post(app.url(&format!("/v1/models/{model}/predict")))
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("NaN and Infinity are not valid inputs"));
    // Binary NaN.
    let mut bad = row.clone();
    bad[7] = f32::NAN;
    let r = predict_binary(&app, &model, safetensors(&[("inputs", "F32", vec![1, 64], f32_bytes(&bad))]), "").await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("sample 0, value 7: NaN is not a finite number"));
    let r = predict_binary(&app, &model, safetensors(&[("x", "F32", vec![1, 64], f32_bytes(&row))]), "").await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("no 'inputs' tensor"));
    let r = predict_binary(&app, &model, b"garbage!garbage!".to_vec(), "").await;
    assert_eq!(r.status(), 422);
    // Wrong content type, bad JSON, unknown model, model without a spec.
    let r = app.client.post(app.url(&format!("/v1/models/{model}/predict"))).body("x").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = app
        .client
        .post(app.url(&format!("/v1/models/{model}/predict")))
        .header("content-type", "application/json")
        .body("{\"inputs\": [[1,")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let missing = "00000000-0000-7000-8000-000000000000";
    assert_eq!(predict_json(&app, missing, json!({"inputs": [row]})).await.status(), 404);
    let bare = app.upload_model(fixture("teacher_digits.safetensors"), "bare").await;
    let r = predict_json(&app, bare["id"].as_str().unwrap(), json!({"inputs": [row]})).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("has no architecture spec"));
    // Every refusal left the model servable.
    assert_eq!(send(json!({"inputs": [row]})).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_model_stops_being_served() {
    let app = spawn_app().await;
    let (model, _) = teacher_and_digits(&app).await;
    let row: Vec<f32> = vec![0.5; 64];
    assert_eq!(predict_json(&app, &model, json!({"inputs": [row]})).await.status(), 200);
    let info = app.get_json(&format!("/v1/models/{model}/predict/info")).await;
    assert_eq!(info["execution"]["loaded"], true);
    assert_eq!(info["input"]["shape"], json!([64]));
    assert_eq!(info["output"]["labels"], digits_spec()["output"]["labels"]);
    let r = app.client.delete(app.url(&format!("/v1/models/{model}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = predict_json(&app, &model, json!({"inputs": [row]})).await;
    assert_eq!(r.status(), 404);
    let r = app.client.get(app.url(&format!("/v1/models/{model}/predict/info"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("modelpress_model_cache_total{event=\"evict\"} 1"), "{metrics}");
    app.stop().await;
}
