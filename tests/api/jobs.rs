//! Jobs: the f16 cast end to end, validation, cancel, queue limits, idempotency, SSE, panics.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

fn read_tensors(bytes: &[u8]) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu).expect("valid safetensors")
}

#[tokio::test]
async fn f16_cast_end_to_end() {
    let app = spawn_app().await;
    let bytes = fixture("teacher_digits.safetensors");
    let m = app.upload_model(bytes.clone(), "teacher").await;
    let id = m["id"].as_str().unwrap();
    let r = app.post_job(json!({"kind": "quantize", "model_id": id, "params": {"scheme": "f16"}})).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let job: Value = r.json().await.unwrap();
    assert_eq!(loc, format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(job["status"], "queued");
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 60).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["progress"], 1.0);
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
    assert_eq!(job["attempts"], 1);
    let out_id = job["output_model_id"].as_str().unwrap();
    let out = app.get_json(&format!("/v1/models/{out_id}")).await;
    assert_eq!(out["parent_model_id"], id);
    assert_eq!(out["job_id"], job["id"]);
    assert_eq!(out["report"], job["report"]);

    let r = app.client.get(app.url(&format!("/v1/models/{out_id}/download"))).send().await.unwrap();
    let out_bytes = r.bytes().await.unwrap().to_vec();
    assert_eq!(out_bytes.len() as u64, out["size_bytes"].as_u64().unwrap());
    let orig = read_tensors(&bytes);
    let cast = read_tensors(&out_bytes);
    assert_eq!(orig.len(), cast.len());
    let report = &job["report"];
    for (name, t) in &orig {
        let c = &cast[name];
        assert_eq!(c.dtype(), candle_core::DType::F16, "{name}");
        assert_eq!(c.dims(), t.dims());
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = c.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let max_err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // f16 keeps 11 significant bits: relative rounding error ≤ 2^-11.
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= x.abs() * 4.9e-4 + 6e-8, "{name}: {x} vs {y}");
        }
        let entry = report["tensors"].as_array().unwrap().iter().find(|e| e["name"] == name.as_str()).unwrap();
        let reported = entry["max_abs_error"].as_f64().unwrap();
        assert!(
            (reported - max_err as f64).abs() <= 1e-9 + max_err as f64 * 1e-6,
            "{name}: reported {reported}, measured {max_err}"
        );
        assert!(entry["rel_error"].as_f64().unwrap() < 5e-4);
    }
    let before = report["bytes_before"].as_u64().unwrap();
    let after = report["bytes_after"].as_u64().unwrap();
    assert_eq!(before, bytes.len() as u64);
    assert_eq!(after, out_bytes.len() as u64);
    let ratio = after as f64 / before as f64;
    assert!((0.49..0.52).contains(&ratio), "ratio {ratio}");
    assert!((report["size_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    app.stop().await;
}

#[tokio::test]
async fn bf16_keeps_integer_tensors() {
    let app = spawn_app().await;
    let m = app.upload_model(small_model(8), "s").await;
    let job = app.submit(json!({"kind": "quantize", "model_id": m["id"], "params": {"scheme": "bf16"}})).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), 30).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = app
        .client
        .get(app.url(&format!("/v1/models/{}/download", job["output_model_id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let t = read_tensors(&out);
    assert_eq!(t["fc.weight"].dtype(), candle_core::DType::BF16);
    assert_eq!(t["steps"].dtype(), candle_core::DType::I64);
    assert_eq!(t["steps"].to_vec1::<i64>().unwrap(), vec![7]);
    assert_eq!(job["report"]["tensors_kept"], 1);
    app.stop().await;
}

#[tokio::test]
async fn invalid_submissions_name_the_field() {
    let app = spawn_app().await;
    let m = app.upload_model(small_model(2), "s").await;
    let id = m["id"].as_str().unwrap();
    let cases = vec![
        (json!({"kind": "shrink", "model_id": id}), 422, Some("kind")),
        (json!({"kind": "quantize", "params": {"scheme": "f16"}}), 422, Some("model_id")),
        (
            json!({"kind": "quantize", "model_id": "00000000-0000-0000-0000-000000000000", "params": {"scheme": "f16"}}),
            422,
            Some("model_id"),
        ),
        (json!({"kind": "quantize", "model_id": "nope", "params": {"scheme": "f16"}}), 422, Some("model_id")),
        (json!({"kind": "quantize", "model_id": id, "params": {"scheme": "f12"}}), 422, Some("params.scheme")),
        (json!({"kind": "quantize", "model_id": id, "params": {"scheme": "f16", "bogus": 1}}), 422, Some("params")),
        (json!({"kind": "quantize", "model_id": id, "params": []}), 422, Some("params")),
        (json!({"model_id": id}), 422, None),
    ];
    for (body, status, field) in cases {
        let r = app.post_job(body.clone()).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        let p: Value = r.json().await.unwrap();
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{body}: {p}");
        }
    }
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(app.get_json("/v1/jobs").await["items"].as_array().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() {
    let app = spawn_app().await;
    let running = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 500, "step_ms": 10}})).await;
    let rid = running["id"].as_str().unwrap();
    let queued = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}})).await;
    let qid = queued["id"].as_str().unwrap();
    app.wait_for_status(rid, "running", 10).await;
    let r = app.client.post(app.url(&format!("/v1/jobs/{qid}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    let r = app.client.post(app.url(&format!("/v1/jobs/{rid}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let job = app.wait_for_job(rid, 10).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["error"]["code"], "cancelled");
    assert!(job["progress"].as_f64().unwrap() < 1.0);
    // The queued one never ran.
    let q = app.get_json(&format!("/v1/jobs/{qid}")).await;
    assert_eq!(q["status"], "cancelled");
    assert!(q["started_at"].is_null());
    let r = app.client.post(app.url("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    let app = spawn_with(|c| c.max_queued_jobs = 2).await;
    let first = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 300, "step_ms": 10}})).await;
    app.wait_for_status(first["id"].as_str().unwrap(), "running", 10).await;
    app.submit(json!({"kind": "debug_sleep", "params": {"steps": 1}})).await;
    app.submit(json!({"kind": "debug_sleep", "params": {"steps": 1}})).await;
    let r = app.post_job(json!({"kind": "debug_sleep", "params": {"steps": 1}})).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "queue_full");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("modelpress_rejections_total{reason=\"queue_full\"} 1"), "{metrics}");
    assert!(metrics.contains("modelpress_queue_depth 2"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job() {
    let app = spawn_app().await;
    let body = json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}});
    let send = |b: Value| app.client.post(app.url("/v1/jobs")).header("idempotency-key", "k-1").json(&b).send();
    let a: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let r = send(body.clone()).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let b: Value = r.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    let r = send(json!({"kind": "debug_sleep", "params": {"steps": 2}})).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(app.get_json("/v1/jobs").await["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn list_filters_jobs() {
    let app = spawn_app().await;
    let m = app.upload_model(small_model(2), "s").await;
    let q = app.submit(json!({"kind": "quantize", "model_id": m["id"], "params": {"scheme": "f16"}})).await;
    let s = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}})).await;
    app.wait_for_job(q["id"].as_str().unwrap(), 30).await;
    app.wait_for_job(s["id"].as_str().unwrap(), 30).await;
    let l = app.get_json("/v1/jobs?kind=quantize").await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let l = app.get_json(&format!("/v1/jobs?model_id={}", m["id"].as_str().unwrap())).await;
    assert_eq!(l["items"][0]["id"], q["id"]);
    let l = app.get_json("/v1/jobs?status=succeeded&limit=1").await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert!(l["next_cursor"].is_string());
    let r = app.client.get(app.url("/v1/jobs?status=done")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await;
}

#[tokio::test]
async fn sse_streams_progress_until_the_end() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 5, "step_ms": 40}})).await;
    let id = job["id"].as_str().unwrap();
    let r = app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    let mut stream = r.bytes_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("stream ends when the job ends");
    assert!(body.starts_with("event: state"), "{body}");
    assert!(body.contains("event: progress"), "{body}");
    let last = body.trim_end().lines().rev().find(|l| l.starts_with("data:")).unwrap();
    let last: Value = serde_json::from_str(last.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(last["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_job_fails_alone() {
    let app = spawn_app().await;
    let bad = app.submit(json!({"kind": "debug_sleep", "params": {"panic": true}})).await;
    let job = app.wait_for_job(bad["id"].as_str().unwrap(), 10).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["status"], 500);
    assert!(!job["error"]["detail"].as_str().unwrap().contains("panic"), "internals leak: {job}");
    // The worker survives and runs the next job.
    let ok = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}})).await;
    assert_eq!(app.wait_for_job(ok["id"].as_str().unwrap(), 10).await["status"], "succeeded");
    app.stop().await;
}
