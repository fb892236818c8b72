//! Crashes and a full disk, on the real binary (`MODELPRESS_FAULT`, see `src/fault.rs`):
//! - for every point of a job's life the process aborts there (as `kill -9` would), restarts on
//!   the same data dir, and the job ends succeeded or failed-with-reason within
//!   `max_attempts`; no partial artifact is visible, no orphan file remains, and every model
//!   row has its file with the recorded sha256;
//! - with writes failing `ENOSPC`, uploads answer 507 problem+json, a job fails with the
//!   `insufficient_storage` reason, nothing half-written stays, and the service keeps serving.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::fixture;

const MAX_ATTEMPTS: &str = "3";

/// The release or debug binary cargo built for these tests, on loopback port 0.
struct Server {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, fault: Option<&str>) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelpress"));
    cmd.env_clear()
        .env("MODELPRESS_BIND", "127.0.0.1:0")
        .env("MODELPRESS_DATA_DIR", dir)
        .env("MODELPRESS_MAX_ATTEMPTS", MAX_ATTEMPTS)
        .env("MODELPRESS_HEARTBEAT_SECS", "1")
        .env("MODELPRESS_SHUTDOWN_GRACE_SECS", "1")
        .env("MODELPRESS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(f) = fault {
        cmd.env("MODELPRESS_FAULT", f);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let marker = "listening on http://";
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find(marker) {
                let addr: String = line[i + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == ':')
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("server announces its address");
    // No connection reuse: a refused upload (507) is answered before its body is read, and
    // the server then closes that connection; a pooled client could race that close with its
    // next request (IncompleteMessage) — a client-side artifact, not what is under test.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    Server { child, base: format!("http://{addr}"), client }
}

impl Server {
    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    async fn get(&self, p: &str) -> Value {
        let r = self.client.get(self.url(p)).send().await.expect("request");
        assert!(r.status().is_success(), "GET {p}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Waits for the process to die by `abort()` (SIGABRT).
    fn wait_aborted(&mut self, point: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(6), "fault point {point}: expected an abort, got {status}");
                return;
            }
            assert!(Instant::now() < deadline, "fault point {point} was never reached");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// DB and files agree: `tmp/` is empty, every model file belongs to a listed model, every
/// listed model has exactly one file whose sha256 is the recorded one.
async fn assert_consistent(s: &Server, dir: &Path, context: &str) {
    let tmp = files_under(&dir.join("tmp"));
    assert!(tmp.is_empty(), "{context}: files left in tmp/: {tmp:?}");
    let models = s.get("/v1/models?limit=200").await;
    let models = models["items"].as_array().expect("items").clone();
    let ids: BTreeSet<String> = models.iter().map(|m| m["id"].as_str().expect("id").to_string()).collect();
    let files = files_under(&dir.join("models"));
    let file_ids: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().split('.').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(file_ids, ids, "{context}: model files {files:?} vs rows");
    assert_eq!(files.len(), ids.len(), "{context}: one file per model");
    for m in &models {
        let id = m["id"].as_str().expect("id");
        let f = files.iter().find(|f| f.to_string_lossy().contains(id)).expect("file of the model");
        let sha = hex::encode(Sha256::digest(std::fs::read(f).expect("readable")));
        assert_eq!(sha, m["sha256"].as_str().expect("sha"), "{context}: {id} file and row disagree");
    }
}

async fn upload(s: &Server) -> reqwest::Response {
    s.client
        .post(s.url("/v1/models?name=teacher"))
        .header("content-type", "application/octet-stream")
        .body(fixture("teacher_digits.safetensors"))
        .send()
        .await
        .expect("request")
}

fn job_body(model_id: &str) -> Value {
    json!({"kind": "quantize", "model_id": model_id, "params": {"scheme": "f16"}})
}

async fn wait_terminal(s: &Server, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let jobs = s.get("/v1/jobs").await;
        let items = jobs["items"].as_array().expect("items").clone();
        assert!(items.len() <= 1, "one job only: {items:?}");
        if let Some(j) = items.first() {
            if ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or_default()) {
                return j.clone();
            }
        }
        assert!(Instant::now() < deadline, "job not finished after restart: {jobs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_crash_at_every_job_stage_is_survived() {
    for point in modelpress::fault::POINTS {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        // The input model is stored by a healthy run.
        let s = start(dir, None);
        let model: Value = upload(&s).await.json().await.expect("json");
        let model_id = model["id"].as_str().expect("id").to_string();
        s.stop().await;

        let mut s = start(dir, Some(point));
        // At `queued` the process dies before answering: the request may fail.
        let _ = s.client.post(s.url("/v1/jobs")).json(&job_body(&model_id)).send().await;
        s.wait_aborted(point);

        let s = start(dir, None);
        let job = wait_terminal(&s, 60).await;
        let status = job["status"].as_str().unwrap_or_default();
        let attempts = job["attempts"].as_i64().unwrap_or_default();
        assert!(attempts <= MAX_ATTEMPTS.parse::<i64>().expect("number"), "{point}: {job}");
        match status {
            "succeeded" => {
                let out = job["output_model_id"].as_str().expect("output model");
                let m = s.get(&format!("/v1/models/{out}")).await;
                assert_eq!(m["job_id"], job["id"], "{point}");
            }
            "failed" => {
                let detail = job["error"]["detail"].as_str().unwrap_or_default();
                assert!(!detail.is_empty(), "{point}: a failed job says why: {job}");
            }
            other => panic!("{point}: unexpected end state {other}: {job}"),
        }
        assert_consistent(&s, dir, point).await;
        eprintln!("fault point {point}: job {status} after {attempts} attempt(s)");
        s.stop().await;
    }
}

#[tokio::test]
async fn a_full_disk_fails_cleanly_and_the_service_keeps_serving() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let s = start(dir, None);
    let model: Value = upload(&s).await.json().await.expect("json");
    let model_id = model["id"].as_str().expect("id").to_string();
    s.stop().await;

    let s = start(dir, Some("enospc"));
    // Uploads: 507 problem+json, nothing stored.
    let r = upload(&s).await;
    assert_eq!(r.status(), 507);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.expect("problem");
    assert_eq!(p["code"], "insufficient_storage", "{p}");
    assert!(p["detail"].as_str().unwrap_or_default().contains("disk is full"), "{p}");
    let r = s
        .client
        .post(s.url("/v1/datasets?name=d&format=csv"))
        .header("content-type", "application/octet-stream")
        .body("a,label\n1,0\n2,1\n")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 507, "{}", r.text().await.unwrap_or_default());
    // A job whose output cannot be written fails with the reason; its spool is gone.
    let r = s.client.post(s.url("/v1/jobs")).json(&job_body(&model_id)).send().await.expect("request");
    assert_eq!(r.status(), 202);
    let job = wait_terminal(&s, 60).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "insufficient_storage", "{job}");
    // Still serving: health, reads and downloads of what is stored.
    let r = s.client.get(s.url("/readyz")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let r = s.client.get(s.url(&format!("/v1/models/{model_id}/download"))).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), fixture("teacher_digits.safetensors").len());
    assert_consistent(&s, dir, "enospc").await;
    assert!(files_under(&dir.join("datasets")).is_empty(), "no half-written dataset");
    s.stop().await;
}
