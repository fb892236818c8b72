//! Quantization through the API: every scheme, accuracy of the stored artifact, mixed
//! precision, fallbacks, GGUF and dequantized downloads.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::engine::teacher_and_digits;
use crate::helpers::*;

async fn download(app: &TestApp, id: &str, format: &str) -> Vec<u8> {
    let r = app.client.get(app.url(&format!("/v1/models/{id}/download?format={format}"))).send().await.unwrap();
    assert_eq!(r.status(), 200, "{format}: {}", r.text().await.unwrap());
    r.bytes().await.unwrap().to_vec()
}

fn f32_tensors(bytes: &[u8]) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(_, t)| t.dtype().is_float())
        .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

async fn quantize(app: &TestApp, model: &str, params: Value) -> Value {
    let job = app.submit(json!({"kind": "quantize", "model_id": model, "params": params})).await;
    app.wait_for_job(job["id"].as_str().unwrap(), 120).await
}

#[tokio::test]
async fn int8_digits_teacher_keeps_accuracy_and_shrinks() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = quantize(&app, &model, json!({"scheme": "int8", "eval_dataset_id": data})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["report"];
    assert_eq!(r["accuracy"]["quantized"]["correct"], 351, "{}", r["accuracy"]);
    assert_eq!(r["accuracy"]["float"]["correct"], 351);
    assert!(r["accuracy"]["top1_agreement"].as_f64().unwrap() > 0.99);
    let ratio = r["size_ratio"].as_f64().unwrap();
    assert!(ratio <= 0.27, "int8 file is {ratio} of f32");
    assert_eq!(r["tensors_quantized"], 3); // the three weight matrices; biases stay float
    for t in r["tensors"].as_array().unwrap().iter().filter(|t| t["action"] == "quantized") {
        assert!(t["rel_error"].as_f64().unwrap() < 0.01, "{t}");
        assert!(t["sqnr_db"].as_f64().unwrap() > 40.0, "{t}");
    }
    // The dequantized download matches the report's error numbers.
    let out = job["output_model_id"].as_str().unwrap();
    let deq = f32_tensors(&download(&app, out, "safetensors-f32").await);
    let orig = f32_tensors(&fixture("teacher_digits.safetensors"));
    for t in r["tensors"].as_array().unwrap().iter().filter(|t| t["action"] == "quantized") {
        let name = t["name"].as_str().unwrap();
        let measured = rel_err(&orig[name], &deq[name]);
        assert!((measured - t["rel_error"].as_f64().unwrap()).abs() < 1e-6, "{name}: {measured} vs {t}");
    }
    assert_eq!(deq["fc1.bias"], orig["fc1.bias"]);
    app.stop().await;
}

#[tokio::test]
async fn four_bit_report_matches_evaluate_on_the_artifact() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    for scheme in ["int4", "q4_k"] {
        let job = quantize(&app, &model, json!({"scheme": scheme, "eval_dataset_id": data})).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let acc = job["report"]["accuracy"]["quantized"]["accuracy"].as_f64().unwrap();
        assert!(acc > 0.9, "{scheme}: {acc}");
        let out = job["output_model_id"].as_str().unwrap();
        let ev = app.submit(json!({"kind": "evaluate", "model_id": out, "params": {"dataset_id": data}})).await;
        let ev = app.wait_for_job(ev["id"].as_str().unwrap(), 60).await;
        assert_eq!(ev["status"], "succeeded", "{ev}");
        assert_eq!(ev["report"]["accuracy"].as_f64().unwrap(), acc, "{scheme}");
        if scheme == "q4_k" {
            // fc1 is 64 wide: q4_k needs 256, so it falls back (q5_0) and the report says so.
            let fc1 = job["report"]["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == "fc1.weight")
                .unwrap()
                .clone();
            assert_eq!(fc1["fell_back"], true, "{fc1}");
            assert_eq!(fc1["scheme"], "q5_0");
            assert!(job["report"]["fallbacks"].as_array().unwrap().contains(&json!("fc1.weight")));
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn every_scheme_on_a_specless_file_with_error_bounds() {
    let app = spawn_app().await;
    // 64 × 256 Gaussian-ish weights (deterministic), plus a bias and an integer tensor.
    let mut state = 12345u64;
    let w: Vec<f32> = (0..64 * 256)
        .map(|_| {
            let mut s = 0.0f32;
            for _ in 0..4 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s += ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            }
            s
        })
        .collect();
    let bytes = safetensors(&[
        ("w", "F32", vec![64, 256], f32_bytes(&w)),
        ("b", "F32", vec![64], f32_bytes(&[0.5; 64])),
        ("n", "I64", vec![1], 3i64.to_le_bytes().to_vec()),
    ]);
    let m = app.upload_model(bytes, "plain").await;
    let id = m["id"].as_str().unwrap();
    let bounds = [
        ("f16", 0.001),
        ("bf16", 0.005),
        ("int8", 0.01),
        ("int4", 0.15),
        ("q8_0", 0.01),
        ("q4_0", 0.12),
        ("q4_1", 0.12),
        ("q5_0", 0.06),
        ("q5_1", 0.06),
        ("q2_k", 0.4),
        ("q3_k", 0.2),
        ("q4_k", 0.1),
        ("q5_k", 0.05),
        ("q6_k", 0.03),
    ];
    for (scheme, bound) in bounds {
        let job = quantize(&app, id, json!({"scheme": scheme})).await;
        assert_eq!(job["status"], "succeeded", "{scheme}: {job}");
        let t = job["report"]["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "w").unwrap().clone();
        let rel = t["rel_error"].as_f64().unwrap();
        assert!(rel < bound, "{scheme}: rel error {rel} ≥ {bound}");
        let out = job["output_model_id"].as_str().unwrap();
        let deq = f32_tensors(&download(&app, out, "safetensors-f32").await);
        assert!((rel_err(&w, &deq["w"]) - rel).abs() < 1e-6, "{scheme}");
        assert_eq!(deq["w"].len(), w.len());
    }
    app.stop().await;
}

#[tokio::test]
async fn overrides_fallbacks_and_bad_weights() {
    let app = spawn_app().await;
    // A 10 × 784 weight: no block type fits 784 columns, int4 groups do not divide it either.
    let wide: Vec<f32> = (0..10 * 784).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let sq: Vec<f32> = (0..64 * 64).map(|i| ((i * 13 % 97) as f32 - 48.0) / 48.0).collect();
    let bytes = safetensors(&[
        ("wide.weight", "F32", vec![10, 784], f32_bytes(&wide)),
        ("sq.weight", "F32", vec![64, 64], f32_bytes(&sq)),
    ]);
    let m = app.upload_model(bytes, "mixed").await;
    let id = m["id"].as_str().unwrap();
    let job = quantize(&app, id, json!({"scheme": "q4_k", "overrides": {"sq.*": "int8"}})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let ts = job["report"]["tensors"].as_array().unwrap();
    let get = |n: &str| ts.iter().find(|t| t["name"] == n).unwrap().clone();
    assert_eq!(get("sq.weight")["scheme"], "int8");
    assert_eq!(get("wide.weight")["scheme"], "f16");
    assert_eq!(get("wide.weight")["fell_back"], true);
    let job = quantize(&app, id, json!({"scheme": "int4", "group_size": 128})).await;
    let ts = job["report"]["tensors"].as_array().unwrap().clone();
    let wide_t = ts.iter().find(|t| t["name"] == "wide.weight").unwrap();
    // No int4 group size divides 784: it falls back to int8 per-channel.
    assert_eq!(wide_t["scheme"], "int8", "{wide_t}");
    assert_eq!(wide_t["fell_back"], true);
    // NaN in a weight: refused at submission naming the tensor; with the opt-in the job runs
    // and fails naming it.
    let mut bad = sq.clone();
    bad[5] = f32::NAN;
    let nan = app.upload_model(safetensors(&[("sq.weight", "F32", vec![64, 64], f32_bytes(&bad))]), "nan").await;
    let body = json!({"kind": "quantize", "model_id": nan["id"], "params": {"scheme": "int8"}});
    let r = app.post_job(body.clone()).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("sq.weight (1)"));
    let mut body = body;
    body["allow_non_finite"] = json!(true);
    let job = app.submit(body).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 120).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["status"], 422);
    assert!(job["error"]["detail"].as_str().unwrap().contains("sq.weight"), "{job}");
    // Bad parameters are refused before queuing.
    for (params, field) in [
        (json!({"scheme": "q9_k"}), "params.scheme"),
        (json!({"scheme": "int4", "group_size": 48}), "params.group_size"),
        (json!({"scheme": "int8", "granularity": "per_row"}), "params.granularity"),
        (json!({"scheme": "int8", "overrides": {"x": "int3"}}), "params.overrides.x"),
    ] {
        let r = app.post_job(json!({"kind": "quantize", "model_id": id, "params": params})).await;
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["field"], field);
    }
    app.stop().await;
}

#[tokio::test]
async fn gguf_download_reads_back_with_candle() {
    let app = spawn_app().await;
    let m = app.upload_model(fixture("teacher_digits.safetensors"), "teacher").await;
    let job = quantize(&app, m["id"].as_str().unwrap(), json!({"scheme": "q8_0"})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = job["output_model_id"].as_str().unwrap();
    let gguf = download(&app, out, "gguf").await;
    let deq = f32_tensors(&download(&app, out, "safetensors-f32").await);
    let mut cursor = std::io::Cursor::new(gguf.clone());
    let content = candle_core::quantized::gguf_file::Content::read(&mut cursor).unwrap();
    assert!(content.metadata.contains_key("general.source_model"));
    assert_eq!(content.tensor_infos.len(), 6);
    for name in ["fc1.weight", "fc2.weight", "fc3.weight", "fc1.bias"] {
        let q = content.tensor(&mut cursor, name, &candle_core::Device::Cpu).unwrap();
        let v: Vec<f32> = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, deq[name], "{name}: GGUF and safetensors-f32 disagree");
    }
    // Derived files are cached: the second download has the same ETag.
    let e1 = app.client.get(app.url(&format!("/v1/models/{out}/download?format=gguf"))).send().await.unwrap().headers()
        ["etag"]
        .clone();
    let e2 = app.client.get(app.url(&format!("/v1/models/{out}/download?format=gguf"))).send().await.unwrap().headers()
        ["etag"]
        .clone();
    assert_eq!(e1, e2);
    app.stop().await;
}

#[tokio::test]
async fn sensitivity_ranks_the_digits_teacher_layers() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = app
        .submit(json!({"kind": "sensitivity", "model_id": model, "params": {"scheme": "q2_k", "dataset_id": data}}))
        .await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 120).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["report"];
    assert_eq!(r["float_accuracy"].as_f64().unwrap(), 0.975);
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    // Ranked worst first.
    let drops: Vec<f64> = layers.iter().map(|l| l["accuracy_drop"].as_f64().unwrap()).collect();
    assert!(drops.windows(2).all(|w| w[0] >= w[1]), "{drops:?}");
    assert!(layers.iter().all(|l| l["mean_kl"].as_f64().unwrap() >= 0.0));
    // Suggested overrides, if any, keep the worst layers at int8, and applying them helps.
    let sugg = r["suggested_overrides"].as_object().unwrap();
    for (k, v) in sugg {
        assert_eq!(v, "int8", "{k}");
    }
    let refused = app.post_job(json!({"kind": "sensitivity", "model_id": model, "params": {"scheme": "q2_k"}})).await;
    assert_eq!(refused.status(), 422);
    app.stop().await;
}

#[tokio::test]
async fn finetuning_after_quantization_runs_and_matches_the_artifact() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;
    let job = quantize(
        &app,
        &model,
        json!({"scheme": "q2_k", "eval_dataset_id": data, "finetune": {"dataset_id": data, "epochs": 5, "lr": 0.0005, "seed": 3}}),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let f = &job["report"]["finetune"];
    let (before, after) = (f["accuracy_before"].as_f64().unwrap(), f["accuracy_after"].as_f64().unwrap());
    eprintln!(
        "q2_k QAT: before {before}, after {after}, stored {}",
        job["report"]["accuracy"]["quantized"]["accuracy"]
    );
    // On the digits teacher q2_k post-training quantization already keeps ≈ 98 %, so there is
    // little to recover; the bound guards against fine-tuning breaking the model.
    assert!(after >= before - 0.02, "fine-tuning hurt: {before} -> {after}");
    assert_eq!(f["curve"].as_array().unwrap().len(), 5);
    // The stored artifact is what the fine-tuned simulation predicted (same quantizer).
    let stored = job["report"]["accuracy"]["quantized"]["accuracy"].as_f64().unwrap();
    assert!((stored - after).abs() <= 0.02, "stored {stored} vs simulated {after}");
    app.stop().await;
}

/// Quantization-aware fine-tuning recovers what an aggressive scheme costs: a narrow student
/// (64-32-10, distilled from the teacher) loses about 1.7 points to int4 with groups of 32;
/// ten epochs of fine-tuning through the fake quantizer win them back, measured on the stored
/// int4 artifact.
#[tokio::test]
async fn finetuning_raises_the_accuracy_of_an_aggressive_scheme() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let student = app
        .submit(json!({"kind": "distill", "model_id": teacher, "params": {"dataset_id": data,
            "student": {"from_teacher": {"width": 0.125}}, "epochs": 60, "lr": 0.003, "batch_size": 32, "seed": 0}}))
        .await;
    let student = app.wait_for_job(student["id"].as_str().unwrap(), 300).await;
    assert_eq!(student["status"], "succeeded", "{student}");
    let float = student["report"]["student"]["accuracy"].as_f64().unwrap();
    let student = student["output_model_id"].as_str().unwrap().to_string();
    let scheme = json!({"scheme": "int4", "group_size": 32, "min_elements": 0, "eval_dataset_id": data});
    let ptq = quantize(&app, &student, scheme.clone()).await;
    assert_eq!(ptq["status"], "succeeded", "{ptq}");
    let ptq_acc = ptq["report"]["accuracy"]["quantized"]["accuracy"].as_f64().unwrap();
    let mut qat_params = scheme;
    qat_params["finetune"] = json!({"dataset_id": data, "epochs": 10, "lr": 0.001, "seed": 0});
    let qat = quantize(&app, &student, qat_params).await;
    assert_eq!(qat["status"], "succeeded", "{qat}");
    let f = &qat["report"]["finetune"];
    let stored = qat["report"]["accuracy"]["quantized"]["accuracy"].as_f64().unwrap();
    eprintln!("int4 g32 student: float {float:.4}, PTQ {ptq_acc:.4}, QAT stored {stored:.4}");
    assert!(ptq_acc < float - 0.005, "the scheme should cost accuracy here: {float} -> {ptq_acc}");
    assert!((f["accuracy_before"].as_f64().unwrap() - ptq_acc).abs() < 1e-9, "{f}");
    assert!(stored >= ptq_acc + 0.01, "QAT should win back at least a point: PTQ {ptq_acc}, QAT {stored}");
    assert!((stored - f["accuracy_after"].as_f64().unwrap()).abs() <= 0.01, "{f}");
    app.stop().await;
}
