//! The command-line client: the real binary (`CARGO_BIN_EXE_modelpress`) against a real
//! server on port 0. Exit codes, the gate, downloads, the progress bar on a pseudo-terminal
//! (`script` from util-linux), and `--local`.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::helpers::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelpress")
}

fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs the client with `MODELPRESS_URL` set (off the runtime: it blocks).
async fn cli(server: &str, args: &[&str]) -> Output {
    let server = server.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args(&args)
            .env("MODELPRESS_URL", server)
            .env_remove("MODELPRESS_API_KEY")
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn show(o: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(o), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test]
async fn upload_quantize_gate_download() {
    let app = spawn_app().await;
    let teacher = root("tests/fixtures/teacher_digits.safetensors");
    let spec = root("examples/digits-mlp.spec.json");
    let o =
        cli(&app.base, &["upload", teacher.to_str().unwrap(), "--spec", spec.to_str().unwrap(), "--name", "t"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let model = stdout(&o);
    assert_eq!(app.get_json(&format!("/v1/models/{model}")).await["name"], "t");
    let digits = root("tests/fixtures/digits.safetensors");
    let o = cli(&app.base, &["upload", "--dataset", digits.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let data = stdout(&o);

    // Passing gate: exit 0, stdout is the output model.
    let o = cli(
        &app.base,
        &[
            "quantize",
            &model,
            "--scheme",
            "int8",
            "--eval-dataset",
            &data,
            "--require",
            "size_ratio<=0.3",
            "--require",
            "accuracy_drop<=0.005",
            "--progress",
            "plain",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out_model = stdout(&o);
    assert_eq!(app.get_json(&format!("/v1/models/{out_model}")).await["parent_model_id"], model.as_str());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("require size_ratio<=0.3: ok"), "{err}");
    assert!(!err.contains("###"), "no bar without a terminal: {err}");

    // Failing gate: exit 4, the JSON says which condition failed.
    let o = cli(&app.base, &["quantize", &model, "--scheme", "int8", "--require", "size_ratio<=0.01", "--json"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["requirements"][0]["ok"], false);
    assert_eq!(v["job"]["status"], "succeeded");
    // A figure the report lacks (no eval dataset → no accuracy) fails the gate too.
    let o = cli(&app.base, &["quantize", &model, "--scheme", "int8", "--require", "accuracy_drop<=0.5"]).await;
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));

    // Refused submission: exit 1 with the server's problem detail.
    let o = cli(&app.base, &["quantize", &model, "--scheme", "int9", "--wait"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("422"), "{}", show(&o));

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let o = cli(&app.base, &["download", &out_model, "--format", "gguf", "-o", dest.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert!(!dir.path().join("m.gguf.part").exists());

    let o = cli(&app.base, &["predict", &out_model, "--input", &json!([vec![0.0f32; 64]]).to_string()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_exits_3_and_unreachable_server_exits_1() {
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 2000, "step_ms": 10}})).await;
    let id = job["id"].as_str().unwrap().to_string();
    let o = cli(&app.base, &["jobs", &id, "--cancel", "--wait"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cancelled"), "{}", show(&o));
    let o = cli(&app.base, &["jobs", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&o)).unwrap()["items"][0]["id"], id.as_str());
    app.stop().await;
    let o = cli("http://127.0.0.1:9", &["jobs"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach"), "{}", show(&o));
    // Usage errors exit 2, before any request.
    let o = cli("http://127.0.0.1:9", &["quantize", "m", "--require", "speed<=1"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown report key"), "{}", show(&o));
    let o = cli("http://127.0.0.1:9", &["quantize", "m", "--params", "[1]"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

#[tokio::test]
async fn progress_bar_on_a_pseudo_terminal_plain_lines_otherwise() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux) is needed for the pseudo-terminal test");
    }
    let app = spawn_app().await;
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 40, "step_ms": 25}})).await;
    let id = job["id"].as_str().unwrap().to_string();
    // `script -q -c CMD /dev/null` runs CMD with a pseudo-terminal as stdin/stdout/stderr and
    // copies what it writes to our stdout.
    let cmd = format!("MODELPRESS_URL={} {} jobs {id} --wait", app.base, bin());
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]).output().unwrap()
    })
    .await
    .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{tty}");
    assert!(tty.contains("#####"), "no bar drawn on the terminal: {tty:?}");
    assert!(tty.contains("100%") && tty.contains("succeeded"), "{tty:?}");
    assert!(tty.contains('\u{1b}'), "a bar redraws with escape sequences: {tty:?}");

    // Same command without a terminal: plain lines, no escape sequences.
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 10, "step_ms": 20}})).await;
    let id = job["id"].as_str().unwrap().to_string();
    let o = cli(&app.base, &["jobs", &id, "--wait"]).await;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!err.contains('\u{1b}') && !err.contains("###"), "{err:?}");
    assert!(err.contains("succeeded"), "{err:?}");
    app.stop().await;
}

#[tokio::test]
async fn local_mode_runs_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let teacher = root("tests/fixtures/teacher_digits.safetensors");
    let spec = root("examples/digits-mlp.spec.json");
    // No server anywhere: MODELPRESS_URL points at a closed port.
    let o = cli(
        "http://127.0.0.1:9",
        &["upload", "--local", d, teacher.to_str().unwrap(), "--spec", spec.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let model = stdout(&o);
    // `--local` always waits: the job runs in the CLI process.
    let o = cli(
        "http://127.0.0.1:9",
        &["quantize", "--local", d, &model, "--scheme", "int8", "--require", "size_ratio<=0.3"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    assert_ne!(out, model);
    // The data dir is an ordinary one: a server started on it sees the output.
    let app = spawn_in(&data, |_| {}).await;
    assert_eq!(app.get_json(&format!("/v1/models/{out}")).await["parent_model_id"], model.as_str());
    app.stop().await;
}
