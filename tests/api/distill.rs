//! Knowledge distillation through the API: the digits teacher into the 64-32-10 student,
//! templates, determinism, α = 0, live epoch events, cancel with `keep_partial`, resume after a
//! restart, and teacher/student mismatches refused before queueing.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::engine::teacher_and_digits;
use crate::helpers::*;

fn student_spec() -> Value {
    serde_json::from_slice(
        &std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits-student.spec.json"))
            .unwrap(),
    )
    .unwrap()
}

fn distill(teacher: &str, params: Value) -> Value {
    json!({"kind": "distill", "model_id": teacher, "params": params})
}

async fn run_ok(app: &TestApp, body: Value, secs: u64) -> Value {
    let job = app.submit(body).await;
    let job = app.wait_for_job(job["id"].as_str().unwrap(), secs).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// The output model's tensor bytes (the data section: the header's metadata names the job).
async fn output_tensors(app: &TestApp, job: &Value) -> Vec<u8> {
    let id = job["output_model_id"].as_str().unwrap();
    let r = app.client.get(app.url(&format!("/v1/models/{id}/download"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap().to_vec();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

/// Polls until the running job's stage says it finished at least `epoch` epochs of `phase`.
async fn wait_for_epoch(app: &TestApp, id: &str, phase: &str, epoch: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = app.get_json(&format!("/v1/jobs/{id}")).await;
        let stage = job["stage"].as_str().unwrap_or_default();
        let done = stage
            .strip_prefix(&format!("{phase}: epoch "))
            .and_then(|s| s.split('/').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if done >= epoch {
            assert_eq!(job["status"], "running", "{job}");
            return job;
        }
        assert!(Instant::now() < deadline && job["status"] != "succeeded", "never reached epoch {epoch}: {job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The target: the 64-32-10 student reaches ≥ 97.4 % on the digits test split with
/// Hinton's loss (T = 4, α = 0.9, 200 epochs), and the report compares it with the same
/// student trained alone on the same budget.
#[tokio::test]
async fn digits_student_reaches_the_goal_and_beats_training_alone() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let params = json!({"dataset_id": data, "student": {"spec": student_spec()}, "epochs": 200,
                        "batch_size": 32, "lr": 0.003, "seed": 0, "baseline": true});
    let job = run_ok(&app, distill(&teacher, params), 600).await;
    let r = &job["report"];
    let acc = r["student"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.974, "student test accuracy {acc}: {r}");
    assert_eq!(r["accuracy"], r["student"]["accuracy"]);
    assert!((r["teacher"]["accuracy"].as_f64().unwrap() - 0.975).abs() < 1e-12);
    // Distillation bought something over training alone (97.1 % in Keras).
    let alone = r["baseline"]["accuracy"].as_f64().unwrap();
    assert!(acc > alone, "distilled {acc} vs alone {alone}");
    assert!((r["distillation_gain"].as_f64().unwrap() - (acc - alone)).abs() < 1e-12);
    assert_eq!(r["baseline"]["curve"].as_array().unwrap().len(), 200);
    // Sizes: 85,002 vs 2,410 parameters (35×), and the file follows.
    assert_eq!(r["teacher"]["parameters"], 85_002);
    assert_eq!(r["student"]["parameters"], 2_410);
    assert!(r["parameter_ratio"].as_f64().unwrap() > 35.0);
    assert!(r["size_ratio"].as_f64().unwrap() > 20.0, "{r}");
    assert!(r["student"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(r["teacher"]["latency_ms"].as_f64().unwrap() > 0.0);
    // The curve carries both loss parts; the soft term falls.
    let curve = r["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 200);
    let (first, last) = (&curve[0], &curve[199]);
    assert!(last["kd_loss"].as_f64().unwrap() < first["kd_loss"].as_f64().unwrap() / 3.0, "{first} {last}");
    assert!(last["ce_loss"].as_f64().unwrap() < first["ce_loss"].as_f64().unwrap());
    assert!(r["loss"]["formula"].as_str().unwrap().contains("KL"));
    assert_eq!(r["teacher_outputs"]["cached"], true);
    assert_eq!(r["cancelled"], false);
    // The student is a new model with its spec, child of the teacher, and evaluates the same.
    let out = job["output_model_id"].as_str().unwrap();
    let m = app.get_json(&format!("/v1/models/{out}")).await;
    assert_eq!(m["has_spec"], true);
    assert_eq!(m["parent_model_id"], teacher.as_str());
    let ev = run_ok(&app, json!({"kind": "evaluate", "model_id": out, "params": {"dataset_id": data}}), 60).await;
    assert_eq!(ev["report"]["accuracy"], r["student"]["accuracy"]);
    eprintln!("digits distillation: student {acc:.4}, alone {alone:.4}, {:.2} s", r["duration_s"].as_f64().unwrap());
    assert!(!app.dir.join("checkpoints").join(job["id"].as_str().unwrap()).exists());
    app.stop().await;
}

/// α = 0 is plain training: the distilled student and the baseline retrace each other; a
/// seed makes the whole job reproducible byte for byte; a template student is stored with its
/// derived spec.
#[tokio::test]
async fn alpha_zero_determinism_and_templates() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let base = json!({"dataset_id": data, "student": {"from_teacher": {"width": 0.125, "depth": 0}},
                      "epochs": 15, "batch_size": 64, "lr": 0.003, "seed": 4});
    let mut alpha0 = base.clone();
    alpha0["alpha"] = json!(0.0);
    alpha0["baseline"] = json!(true);
    let job = run_ok(&app, distill(&teacher, alpha0), 300).await;
    let r = &job["report"];
    assert_eq!(r["student"]["accuracy"], r["baseline"]["accuracy"]);
    for (a, b) in r["curve"].as_array().unwrap().iter().zip(r["baseline"]["curve"].as_array().unwrap()) {
        assert_eq!(a["train_loss"], b["train_loss"]);
        assert_eq!(a["train_loss"], a["ce_loss"], "with α = 0 the loss is the cross-entropy");
    }

    let a = run_ok(&app, distill(&teacher, base.clone()), 300).await;
    let b = run_ok(&app, distill(&teacher, base.clone()), 300).await;
    assert!(output_tensors(&app, &a).await == output_tensors(&app, &b).await);
    let mut other = base.clone();
    other["seed"] = json!(5);
    let c = run_ok(&app, distill(&teacher, other), 300).await;
    assert!(output_tensors(&app, &a).await != output_tensors(&app, &c).await);

    // The derived student: 64 → 32 → 10, spec stored with the model.
    let m = app.get_json(&format!("/v1/models/{}", a["output_model_id"].as_str().unwrap())).await;
    assert_eq!(m["has_spec"], true);
    assert_eq!(a["report"]["student"]["parameters"], 2_410);
    let layers = &a["report"]["student_spec"]["layers"];
    assert_eq!(layers.as_array().unwrap().len(), 3, "{layers}");
    assert_eq!(layers[0]["out_features"], 32);
    assert_eq!(layers[2]["in_features"], 32);
    assert!(a["report"]["student"]["accuracy"].as_f64().unwrap() > 0.9);
    app.stop().await;
}

/// Each epoch is an `epoch` SSE event with the loss parts, validation accuracy, elapsed time
/// and ETA.
#[tokio::test]
async fn epochs_stream_live() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    // Keep the single worker busy so the subscription starts before the first epoch.
    let blocker = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 5, "step_ms": 60}})).await;
    let params = json!({"dataset_id": data, "student": {"spec": student_spec()}, "epochs": 8, "batch_size": 64,
                        "lr": 0.003, "validation_split": 0.2, "seed": 1});
    let job = app.submit(distill(&teacher, params)).await;
    let id = job["id"].as_str().unwrap();
    let r = app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let mut body = String::new();
    let mut stream = r.bytes_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("stream ends with the job");
    let epochs: Vec<Value> = body
        .split("\n\n")
        .filter(|e| e.contains("event: epoch"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(!epochs.is_empty(), "{body}");
    for e in &epochs {
        assert_eq!(e["phase"], "distill");
        assert_eq!(e["epochs"], 8);
        for k in ["kd_loss", "ce_loss", "val_accuracy", "elapsed_total_s", "eta_s", "train_loss"] {
            assert!(e[k].is_number(), "{k} missing in {e}");
        }
    }
    let last = epochs.last().unwrap();
    assert!(last["val_accuracy"].as_f64().unwrap() > 0.6, "{last}");
    assert!(body.contains("\"succeeded\""));
    app.wait_for_job(blocker["id"].as_str().unwrap(), 10).await;
    app.stop().await;
}

/// Cancel stops at the next batch; with `keep_partial` the best student so far is the output.
#[tokio::test]
async fn cancel_keeps_the_best_student_when_asked() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let long = |keep: bool| {
        json!({"dataset_id": data, "student": {"spec": student_spec()}, "epochs": 1000, "batch_size": 16,
               "validation_split": 0.2, "keep_partial": keep})
    };
    for keep in [true, false] {
        let job = app.submit(distill(&teacher, long(keep))).await;
        let id = job["id"].as_str().unwrap();
        wait_for_epoch(&app, id, "distill", 3).await;
        assert!(app.dir.join("checkpoints").join(id).join("distill.safetensors").exists());
        let r = app.client.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let job = app.wait_for_job(id, 60).await;
        if keep {
            assert_eq!(job["status"], "succeeded", "{job}");
            let r = &job["report"];
            assert_eq!(r["cancelled"], true);
            let epochs = r["curve"].as_array().unwrap().len();
            assert!((3..1000).contains(&epochs), "{epochs}");
            assert!(r["student"]["best_epoch"].as_u64().unwrap() as usize <= epochs);
            assert!(r["student"]["accuracy"].as_f64().unwrap() > 0.5);
            assert!(job["output_model_id"].is_string());
        } else {
            assert_eq!(job["status"], "cancelled", "{job}");
            assert!(job["output_model_id"].is_null());
        }
        assert!(!app.dir.join("checkpoints").join(id).exists(), "checkpoints left behind");
    }
    app.stop().await;
}

/// A server stopped mid-training requeues the job; after the restart it resumes from its last
/// checkpoint and ends with exactly the student an uninterrupted run produces.
#[tokio::test]
async fn resumes_after_a_restart_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let app = spawn_in(tmp.path(), |c| c.shutdown_grace_secs = 0).await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let params = json!({"dataset_id": data, "student": {"spec": student_spec()}, "epochs": 60, "batch_size": 8,
                        "lr": 0.002, "seed": 5, "validation_split": 0.2, "schedule": "cosine"});
    let job = app.submit(distill(&teacher, params.clone())).await;
    let id = job["id"].as_str().unwrap().to_string();
    wait_for_epoch(&app, &id, "distill", 5).await;
    app.stop().await;
    let ckpt = tmp.path().join("checkpoints").join(&id).join("distill.safetensors");
    assert!(ckpt.exists(), "no checkpoint after the shutdown");

    let app = spawn_in(tmp.path(), |_| {}).await;
    let job = app.wait_for_job(&id, 300).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["report"];
    let from = r["resumed"][0]["from_epoch"].as_u64().expect("the report names the resumed epoch");
    assert!((5..60).contains(&from), "{r}");
    assert_eq!(r["resumed"][0]["phase"], "distill");
    assert_eq!(r["curve"].as_array().unwrap().len(), 60);
    assert!(!ckpt.exists(), "checkpoint not cleaned up");

    // The same job without interruption gives the same student, byte for byte.
    let fresh = run_ok(&app, distill(&teacher, params), 300).await;
    assert!(fresh["report"]["resumed"].as_array().unwrap().is_empty());
    assert_eq!(fresh["report"]["student"]["accuracy"], r["student"]["accuracy"]);
    assert_eq!(fresh["report"]["student"]["best_epoch"], r["student"]["best_epoch"]);
    assert!(output_tensors(&app, &fresh).await == output_tensors(&app, &job).await);
    assert_eq!(
        fresh["report"]["curve"],
        r["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["elapsed_s"] =
                    fresh["report"]["curve"][c["epoch"].as_u64().unwrap() as usize - 1]["elapsed_s"].clone();
                c["samples_per_sec"] =
                    fresh["report"]["curve"][c["epoch"].as_u64().unwrap() as usize - 1]["samples_per_sec"].clone();
                c
            })
            .collect::<Value>()
    );
    app.stop().await;
}

/// Teacher and student must read the same input and predict the same classes: refused with a
/// 422 naming `params.student` before anything is queued.
#[tokio::test]
async fn mismatched_students_are_refused_before_queueing() {
    let app = spawn_app().await;
    let (teacher, data) = teacher_and_digits(&app).await;
    let mut classes = student_spec();
    classes["output"] = json!({"classes": 9});
    classes["layers"][2]["out_features"] = json!(9);
    let mut input = student_spec();
    input["input"]["shape"] = json!([63]);
    input["layers"][0]["in_features"] = json!(63);
    // The same wrong-input student as an uploaded model.
    let w1: Vec<f32> = vec![0.01; 32 * 63];
    let w2: Vec<f32> = vec![0.01; 10 * 32];
    let weights = safetensors(&[
        ("fc1.weight", "F32", vec![32, 63], f32_bytes(&w1)),
        ("fc1.bias", "F32", vec![32], f32_bytes(&[0.0; 32])),
        ("fc2.weight", "F32", vec![10, 32], f32_bytes(&w2)),
        ("fc2.bias", "F32", vec![10], f32_bytes(&[0.0; 10])),
    ]);
    let r = app.upload_with_spec(weights, "wrong-input", &input.to_string()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let uploaded: Value = r.json().await.unwrap();
    let cases = [
        (json!({"spec": classes}), "classes"),
        (json!({"spec": input}), "input shape"),
        (json!({"model_id": uploaded["id"]}), "input shape"),
    ];
    for (student, want) in cases {
        let r = app.post_job(distill(&teacher, json!({"dataset_id": data, "student": student}))).await;
        assert_eq!(r.status(), 422);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], "params.student", "{p}");
        assert!(p["detail"].as_str().unwrap().contains(want), "{p}");
    }
    // Other bad input: an unknown student model, a bad template, a baseline on a teacher
    // without spec is covered by the generic checks.
    let r = app
        .post_job(distill(
            &teacher,
            json!({"dataset_id": data, "student": {"model_id": "00000000-0000-7000-8000-000000000000"}}),
        ))
        .await;
    assert_eq!(r.status(), 422);
    let r =
        app.post_job(distill(&teacher, json!({"dataset_id": data, "student": {"from_teacher": {"width": 9}}}))).await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "params.student.from_teacher");
    assert!(app.get_json("/v1/jobs").await["items"].as_array().unwrap().is_empty());
    app.stop().await;
}
