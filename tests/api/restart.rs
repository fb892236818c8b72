//! Durability: a job interrupted by a crash (SIGKILL of the real binary) or by a graceful
//! shutdown is run again after a restart on the same data dir.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Starts the real binary on `dir` and returns it with its base URL (read from its log).
fn start_binary(dir: &std::path::Path) -> (Child, String) {
    start_binary_with(dir, &[])
}

/// [`start_binary`] with more flags.
pub fn start_binary_with(dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelpress"))
        .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--enable-test-jobs"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env_remove("MODELPRESS_BIND")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("http://") {
                let _ = tx.send(line[i..].split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("binary logs its URL");
    (child, url)
}

async fn wait_running_with_progress(client: &reqwest::Client, base: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j: Value = client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if j["status"] == "running" && j["progress"].as_f64().unwrap() > 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "job never ran: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn crash_mid_job(dir: &std::path::Path) -> String {
    let (mut child, base) = start_binary(dir);
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "debug_sleep", "params": {"steps": 40, "step_ms": 25}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    wait_running_with_progress(&client, &base, &id).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    id
}

#[tokio::test]
async fn job_killed_mid_run_is_rerun_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let id = crash_mid_job(tmp.path()).await;
    // Debris an interrupted write could leave: a partial temp file and an orphan artifact.
    std::fs::write(tmp.path().join("tmp/x.safetensors.part"), b"partial").unwrap();
    std::fs::create_dir_all(tmp.path().join("models/01")).unwrap();
    std::fs::write(tmp.path().join("models/01/01234567-0000-7000-8000-000000000000.safetensors"), b"orphan").unwrap();

    let app = spawn_in(tmp.path(), |_| {}).await;
    let job = app.wait_for_job(&id, 30).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["report"]["attempts"], 2);
    assert!(app.artifact_files().is_empty(), "debris left: {:?}", app.artifact_files());
    app.stop().await;
}

#[tokio::test]
async fn job_interrupted_too_often_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let id = crash_mid_job(tmp.path()).await;
    let app = spawn_in(tmp.path(), |c| c.max_attempts = 1).await;
    let job = app.wait_for_job(&id, 10).await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"]["detail"].as_str().unwrap().contains("interrupted 1 times"), "{job}");
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_requeues_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let app = spawn_in(tmp.path(), |c| c.shutdown_grace_secs = 0).await;
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 200, "step_ms": 10}})).await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_for_status(&id, "running", 10).await;
    app.stop().await;
    let app = spawn_in(tmp.path(), |_| {}).await;
    let job = app.wait_for_job(&id, 30).await;
    assert_eq!(job["status"], "succeeded");
    // A graceful requeue does not count as a failed attempt.
    assert_eq!(job["attempts"], 1);
    app.stop().await;
}
