//! Issue 16's races and small defects, each driven over HTTP: concurrent idempotent submissions,
//! weak ETags, metric label escaping, artifact sharding.

use serde_json::{json, Value};

use crate::helpers::spawn_app;

/// Eight concurrent submissions with one `Idempotency-Key`, repeated over many keys: every
/// answer is 202 for the same job, exactly one of them is not a replay, and one job exists per key.
#[tokio::test]
async fn concurrent_idempotent_submissions_all_replay_one_job() {
    let app = spawn_app().await;
    let body = json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}});
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let key = format!("race-{round}");
        let sends =
            (0..8).map(|_| app.client.post(app.url("/v1/jobs")).header("idempotency-key", &key).json(&body).send());
        let answers = futures_util::future::join_all(sends).await;
        let mut ids = std::collections::BTreeSet::new();
        let mut fresh = 0;
        for r in answers {
            let r = r.expect("request sent");
            let status = r.status();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            let text = r.text().await.expect("body");
            assert_eq!(status, 202, "round {round}: {text}");
            let job: Value = serde_json::from_str(&text).expect("json");
            ids.insert(job["id"].as_str().expect("id").to_string());
            fresh += usize::from(!replayed);
        }
        assert_eq!(ids.len(), 1, "round {round}: one job for one key, got {ids:?}");
        assert_eq!(fresh, 1, "round {round}: exactly one answer is the original");
    }
    let listed = app.get_json("/v1/jobs?limit=100").await;
    assert_eq!(listed["items"].as_array().expect("items").len(), ROUNDS);
    app.stop().await;
}

/// `If-None-Match` compares weakly (RFC 9110): a cache that weakened our tag still gets 304.
#[tokio::test]
async fn weak_etags_match_if_none_match() {
    let app = spawn_app().await;
    let model = app.upload_model(crate::helpers::fixture("teacher_digits.safetensors"), "m").await;
    let url = app.url(&format!("/v1/models/{}/download", model["id"].as_str().expect("id")));
    let r = app.client.get(&url).send().await.expect("download");
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().expect("ascii").to_string();
    for inm in [etag.clone(), format!("W/{etag}"), format!("\"other\", W/{etag}")] {
        let r = app.client.get(&url).header("if-none-match", &inm).send().await.expect("conditional");
        assert_eq!(r.status(), 304, "{inm}");
        assert_eq!(r.headers()["etag"], etag.as_str());
    }
    let r = app.client.get(&url).header("if-none-match", "W/\"other\"").send().await.expect("conditional");
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// A data dir written with the old `id[..2]` shards still loads: the file is found, served and
/// survives the start-up sweep.
#[tokio::test]
async fn artifacts_in_old_shards_still_load_after_restart() {
    let app = spawn_app().await;
    let model = app.upload_model(crate::helpers::fixture("teacher_digits.safetensors"), "m").await;
    let id = model["id"].as_str().expect("id").to_string();
    let files = app.artifact_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let shard = files[0].parent().expect("shard").file_name().expect("name").to_string_lossy().to_string();
    assert_eq!(shard, id[id.len() - 2..], "new files are sharded by the id's random tail");
    let dir = app.dir.clone();
    let tmp = app.stop().await;
    let legacy = dir.join("models").join(&id[..2]).join(format!("{id}.safetensors"));
    std::fs::create_dir_all(legacy.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&files[0], &legacy).expect("move to the old layout");
    let app = crate::helpers::spawn_in(&dir, |_| {}).await;
    let r = app.client.get(app.url(&format!("/v1/models/{id}/download"))).send().await.expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len() as i64, model["size_bytes"].as_i64().expect("size"));
    assert!(legacy.exists(), "the sweep kept the old-layout file");
    let r = app.client.delete(app.url(&format!("/v1/models/{id}"))).send().await.expect("delete");
    assert!(r.status().is_success(), "{}", r.status());
    assert!(!legacy.exists(), "delete removes the old-layout file");
    app.stop().await;
    drop(tmp);
}

/// A NaN in `fc1.bias` is counted at upload and named when a job would read it.
#[tokio::test]
async fn non_finite_weights_are_counted_and_refused_unless_allowed() {
    let app = spawn_app().await;
    let w: Vec<u8> = (0..16).flat_map(|i| (i as f32 * 0.1).to_le_bytes()).collect();
    let b: Vec<u8> = [0.5f32, f32::NAN, 0.0, f32::NEG_INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = crate::helpers::safetensors(&[("fc1.weight", "F32", vec![4, 4], w), ("fc1.bias", "F32", vec![4], b)]);
    let model = app.upload_model(file, "nan").await;
    assert_eq!(model["non_finite"], json!({"fc1.bias": 2}), "{model}");
    let id = model["id"].as_str().expect("id");
    assert_eq!(app.get_json(&format!("/v1/models/{id}")).await["non_finite"], json!({"fc1.bias": 2}));

    for scheme in ["f16", "int8", "q4_k"] {
        let r = app.post_job(json!({"kind": "quantize", "model_id": id, "params": {"scheme": scheme}})).await;
        assert_eq!(r.status(), 422, "{scheme}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.expect("problem");
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("fc1.bias (2)") && !detail.contains("fc1.weight"), "{p}");
    }
    // Leaving the tensor out, or opting in, is accepted.
    let r = app
        .post_job(json!({"kind": "quantize", "model_id": id, "params": {"scheme": "f16", "exclude": ["*.bias"]}}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let r = app
        .post_job(json!({"kind": "quantize", "model_id": id, "params": {"scheme": "int8"}, "allow_non_finite": true}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    // A clean model has an empty count and is not refused.
    let clean = app.upload_model(crate::helpers::fixture("teacher_digits.safetensors"), "clean").await;
    assert_eq!(clean["non_finite"], json!({}));
    app.stop().await;
}
