//! Every request error knowable at submission is a 422 naming the field, before anything is
//! queued: each case below used to be accepted (202) and then fail as a job.

use serde_json::{json, Value};

use crate::engine::teacher_and_digits;
use crate::helpers::*;

async fn jobs_count(app: &TestApp) -> usize {
    app.get_json("/v1/jobs").await["items"].as_array().expect("a list").len()
}

/// Posts `body`, expects a 422 problem naming `field` and an unchanged job list.
async fn refused(app: &TestApp, body: Value, field: &str, detail_has: &str) {
    let before = jobs_count(app).await;
    let r = app.post_job(body.clone()).await;
    assert_eq!(r.status(), 422, "{body}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], field, "{body} → {p}");
    assert!(p["detail"].as_str().unwrap().contains(detail_has), "{p} lacks {detail_has:?}");
    assert_eq!(jobs_count(app).await, before, "nothing is queued for {body}");
}

#[tokio::test]
async fn former_run_time_refusals_are_422s_and_nothing_is_queued() {
    let app = spawn_app().await;
    let (model, data) = teacher_and_digits(&app).await;

    // Cosine warm-up as long as the training.
    refused(
        &app,
        json!({"kind": "train", "model_id": model,
               "params": {"dataset_id": data, "epochs": 2, "schedule": "cosine", "warmup_epochs": 2}}),
        "params.warmup_epochs",
        "smaller than epochs",
    )
    .await;
    refused(
        &app,
        json!({"kind": "quantize", "model_id": model,
               "params": {"scheme": "int8", "finetune": {"dataset_id": data, "epochs": 1, "schedule": "cosine", "warmup_epochs": 3}}}),
        "params.finetune.warmup_epochs",
        "smaller than epochs",
    )
    .await;

    // N:M that does not divide a tensor's input width (shapes from the stored header).
    let w: Vec<f32> = (0..36).map(|i| i as f32 - 17.5).collect();
    let six = app.upload_model(safetensors(&[("fc.weight", "F32", vec![6, 6], f32_bytes(&w))]), "six").await;
    refused(
        &app,
        json!({"kind": "prune", "model_id": six["id"], "params": {"pattern": "2:4"}}),
        "params.pattern",
        "fc.weight",
    )
    .await;

    // Per-layer targets naming no selected tensor; a selection that selects nothing.
    refused(
        &app,
        json!({"kind": "prune", "model_id": model,
               "params": {"sparsity": 0.5, "scope": "per_layer", "targets": {"fc9.*": 0.9}}}),
        "params.targets.fc9.*",
        "matches no selected tensor",
    )
    .await;
    refused(
        &app,
        json!({"kind": "prune", "model_id": model, "params": {"sparsity": 0.5, "include": ["nothing.*"]}}),
        "params.include",
        "no tensor is selected",
    )
    .await;

    // A split the dataset lacks (an x/y dataset has only `all`), without a spec involved too.
    let x: Vec<f32> = (0..4 * 64).map(|i| (i % 7) as f32).collect();
    let y: Vec<u8> = [0i64, 1, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let r = app
        .client
        .post(app.url("/v1/datasets?name=xy"))
        .header("content-type", "application/octet-stream")
        .body(safetensors(&[("x", "F32", vec![4, 64], f32_bytes(&x)), ("y", "I64", vec![4], y)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let xy: Value = r.json().await.unwrap();
    refused(
        &app,
        json!({"kind": "sensitivity", "model_id": model,
               "params": {"scheme": "int8", "eval_dataset_id": xy["id"], "eval_split": "test"}}),
        "params.eval_dataset_id",
        "has no 'test' split",
    )
    .await;
    refused(
        &app,
        json!({"kind": "quantize", "model_id": model,
               "params": {"scheme": "int8", "finetune": {"dataset_id": xy["id"], "split": "train"}}}),
        "params.finetune.dataset_id",
        "has no 'train' split",
    )
    .await;

    // An integer scheme for a tensor that cannot hold one (a scalar).
    let m = app
        .upload_model(
            safetensors(&[
                ("w", "F32", vec![4, 4], f32_bytes(&[0.5; 16])),
                ("scale", "F32", vec![], f32_bytes(&[2.0])),
            ]),
            "with-scalar",
        )
        .await;
    refused(
        &app,
        json!({"kind": "quantize", "model_id": m["id"], "params": {"scheme": "int8", "overrides": {"sc*": "int8"}}}),
        "params.overrides.sc*",
        "scalar",
    )
    .await;

    // Quantizing an artifact that is already quantized.
    let job = app.submit(json!({"kind": "quantize", "model_id": model, "params": {"scheme": "int8"}})).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 60).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    refused(
        &app,
        json!({"kind": "quantize", "model_id": job["output_model_id"], "params": {"scheme": "int4"}}),
        "model_id",
        "already quantized",
    )
    .await;

    // A student that does not fit its teacher.
    let mut student = crate::engine::digits_spec();
    student["layers"][4]["out_features"] = json!(5);
    student["output"]["classes"] = json!(5);
    student["output"]["labels"] = json!(["0", "1", "2", "3", "4"]);
    refused(
        &app,
        json!({"kind": "distill", "model_id": model,
               "params": {"dataset_id": data, "student": {"spec": student}, "epochs": 1}}),
        "params.student",
        "classes",
    )
    .await;

    // `dataset_id` stays accepted by sensitivity (alias of `eval_dataset_id`).
    let r = app
        .post_job(json!({"kind": "sensitivity", "model_id": model, "params": {"scheme": "int8", "dataset_id": data}}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    app.stop().await;
}
