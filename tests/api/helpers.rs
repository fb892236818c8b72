//! `spawn_app()` and typed helpers, used by every test module.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelpress::config::Config;
use modelpress::startup::{Application, StopHandle};
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: StopHandle,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).expect("fixture exists")
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::for_tests(dir.to_path_buf());
    c.workers = 1;
    c.job_threads = 1;
    c.enable_test_jobs = true;
    c.shutdown_grace_secs = 1;
    c.heartbeat_secs = 1;
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> TestApp {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let mut app = spawn_in(&dir, f).await;
    app._tmp = Some(tmp);
    app
}

/// Starts a server on an existing data dir (restart tests).
pub async fn spawn_in(dir: &Path, f: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(dir);
    f(&mut config);
    let app = Application::build(config).await.expect("app builds");
    let base = format!("http://{}", app.addr());
    let stop = app.stop_handle();
    let join = tokio::spawn(app.run_until_stopped());
    TestApp { base, client: reqwest::Client::new(), dir: dir.to_path_buf(), _tmp: None, stop, join }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful stop; returns once the server has drained.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.stop.stop();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.join).await.expect("server stops within 30 s");
        self._tmp
    }

    pub async fn upload_raw(&self, bytes: Vec<u8>, name: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/models?name={name}")))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn upload_model(&self, bytes: Vec<u8>, name: &str) -> Value {
        let r = self.upload_raw(bytes, name).await;
        assert_eq!(r.status(), 201, "upload failed: {}", r.text().await.unwrap_or_default());
        r.json().await.expect("json")
    }

    pub async fn upload_with_spec(&self, bytes: Vec<u8>, name: &str, spec: &str) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .part("weights", reqwest::multipart::Part::bytes(bytes).file_name("m.safetensors"))
            .text("name", name.to_string())
            .text("spec", spec.to_string());
        self.client.post(self.url("/v1/models")).multipart(form).send().await.expect("request sent")
    }

    pub async fn post_job(&self, body: Value) -> reqwest::Response {
        self.client.post(self.url("/v1/jobs")).json(&body).send().await.expect("request sent")
    }

    pub async fn submit(&self, body: Value) -> Value {
        let r = self.post_job(body).await;
        assert_eq!(r.status(), 202, "job refused: {}", r.text().await.unwrap_or_default());
        r.json().await.expect("json")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.expect("request sent");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Polls until the job reaches a terminal state; panics with the job after `secs`.
    pub async fn wait_for_job(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.get_json(&format!("/v1/jobs/{id}")).await;
            let s = job["status"].as_str().unwrap_or_default().to_string();
            if ["succeeded", "failed", "cancelled"].contains(&s.as_str()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish in {secs} s: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the job has the given status.
    pub async fn wait_for_status(&self, id: &str, status: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.get_json(&format!("/v1/jobs/{id}")).await;
            if job["status"] == status {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never reached {status}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every file under the data dir's artifact folders.
    pub fn artifact_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in ["models", "datasets", "tmp"] {
            walk(&self.dir.join(d), &mut out);
        }
        out
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
}

/// Builds a safetensors file from (name, dtype, shape, data bytes).
pub fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        data.extend_from_slice(bytes);
    }
    let h = serde_json::to_vec(&header).expect("json");
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small f32 model with a deterministic pattern.
pub fn small_model(n: usize) -> Vec<u8> {
    let w: Vec<f32> = (0..n * n).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
    let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
    safetensors(&[
        ("fc.weight", "F32", vec![n, n], f32_bytes(&w)),
        ("fc.bias", "F32", vec![n], f32_bytes(&b)),
        ("steps", "I64", vec![1], 7i64.to_le_bytes().to_vec()),
    ])
}
