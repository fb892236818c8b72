//! The deployment files as shipped, checked without a Docker engine:
//! - the Dockerfile's build stage copies every path `cargo build` reads;
//! - the real binary started with exactly the environment of `docker-compose.yml` on top of the
//!   Dockerfile's `ENV` answers its healthcheck, enforces the generated admin key and stops
//!   cleanly on SIGTERM within compose's `stop_grace_period`;
//! - a configuration error is one line on stderr and exit status 2, even with `RUST_BACKTRACE`.
//!
//! Two rewrites are unavoidable outside a container, and only these: the port in
//! `MODELPRESS_BIND` becomes 0 (the host is shared; the address stays `0.0.0.0`, so the
//! public-bind key policy is exercised), and every value under the image's `VOLUME` (`/data`)
//! points into a temp dir instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Sources of the `COPY` instructions of the first (build) stage, relative to the context.
fn build_stage_copies(instructions: &[String]) -> BTreeSet<PathBuf> {
    let mut copies = BTreeSet::new();
    let mut stage = 0;
    for ins in instructions {
        let mut words = ins.split_whitespace();
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        if stage != 1 || !(op == "COPY" || op == "ADD") {
            continue;
        }
        let args: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        assert!(!ins.contains("--from"), "a build-stage COPY --from is not handled here: {ins}");
        for src in &args[..args.len().saturating_sub(1)] {
            copies.insert(PathBuf::from(src.trim_start_matches("./").trim_end_matches('/')));
        }
    }
    copies
}

/// The string literal right after each `marker` in `text` (e.g. `include_str!("`).
fn literal_args<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every path outside `src/` that `cargo build --release --bin modelpress` reads, relative to
/// the crate root: `include_str!`/`include_bytes!` targets (resolved from the including file),
/// `sqlx::migrate!` folders, `build.rs`, and the target paths Cargo.toml declares (Cargo
/// refuses a manifest whose declared bench/test files are missing, even when building a bin).
fn paths_the_build_reads() -> BTreeSet<PathBuf> {
    let root = root().canonicalize().expect("crate root");
    let mut needed = BTreeSet::new();
    for p in ["Cargo.toml", "Cargo.lock", "src"] {
        needed.insert(PathBuf::from(p));
    }
    if root.join("build.rs").exists() {
        needed.insert(PathBuf::from("build.rs"));
    }
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source readable");
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for arg in literal_args(&text, marker) {
                let target = f.parent().expect("file has a dir").join(arg);
                let target = target.canonicalize().unwrap_or_else(|e| panic!("{arg} from {}: {e}", f.display()));
                needed.insert(target.strip_prefix(&root).expect("inside the crate").to_path_buf());
            }
        }
        for arg in literal_args(&text, "migrate!(\"") {
            needed.insert(PathBuf::from(arg.trim_start_matches("./")));
        }
        if text.contains("migrate!()") {
            needed.insert(PathBuf::from("migrations"));
        }
    }
    needed.extend(manifest_targets(&read("Cargo.toml")));
    needed
}

/// Files of the targets Cargo.toml declares: an explicit `path`, else Cargo's default for the
/// section (`benches/<name>.rs`, `tests/<name>.rs`, …).
fn manifest_targets(toml: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut section: Option<(&str, Option<String>, Option<String>)> = None;
    let mut flush = |s: &mut Option<(&str, Option<String>, Option<String>)>| {
        if let Some((dir, name, path)) = s.take() {
            match (path, name) {
                (Some(p), _) => out.push(PathBuf::from(p)),
                (None, Some(n)) if !dir.is_empty() => out.push(PathBuf::from(format!("{dir}/{n}.rs"))),
                _ => {}
            }
        }
    };
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            flush(&mut section);
            let dir = match line {
                "[[bench]]" => "benches",
                "[[test]]" => "tests",
                "[[example]]" => "examples",
                "[[bin]]" | "[lib]" => "",
                _ => continue,
            };
            section = Some((dir, None, None));
        } else if let Some((_, name, path)) = section.as_mut() {
            let value = |l: &str, key: &str| {
                l.strip_prefix(key)
                    .map(|r| r.trim_start())
                    .and_then(|r| r.strip_prefix('='))
                    .map(|r| r.trim().trim_matches('"').to_string())
            };
            if let Some(v) = value(line, "name") {
                *name = Some(v);
            } else if let Some(v) = value(line, "path") {
                *path = Some(v);
            }
        }
    }
    flush(&mut section);
    out
}

fn covered(path: &Path, copies: &BTreeSet<PathBuf>) -> bool {
    copies.iter().any(|c| c.as_os_str() == "." || path.starts_with(c))
}

#[test]
fn dockerfile_copies_everything_the_build_reads() {
    let instructions = dockerfile_instructions(&read("Dockerfile"));
    let copies = build_stage_copies(&instructions);
    let needed = paths_the_build_reads();
    // The scan finds what we know is there (guards against a scanner that finds nothing).
    for known in ["assets/dashboard/index.html", "migrations", "benches/nn.rs", "tests/api/main.rs"] {
        assert!(needed.contains(Path::new(known)), "scanner missed {known}: {needed:?}");
    }
    let missing: Vec<_> = needed.iter().filter(|p| !covered(p, &copies)).collect();
    assert!(missing.is_empty(), "the Dockerfile's build stage does not COPY {missing:?} (it copies {copies:?})");
    // Nothing the build needs may be excluded from the context.
    if let Ok(ignore) = std::fs::read_to_string(root().join(".dockerignore")) {
        for pat in ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let pat = pat.trim_start_matches("./").trim_end_matches('/');
            let hit: Vec<_> = needed.iter().filter(|p| p.starts_with(pat)).collect();
            assert!(hit.is_empty(), ".dockerignore pattern {pat} excludes {hit:?}");
        }
    }
}

#[test]
fn dockerfile_parser_sees_a_missing_copy() {
    let broken = "FROM rust AS build\nCOPY Cargo.toml Cargo.lock ./\nCOPY src ./src\nRUN cargo build\nFROM debian\nCOPY assets /x\n";
    let copies = build_stage_copies(&dockerfile_instructions(broken));
    assert!(covered(Path::new("src/main.rs"), &copies));
    assert!(covered(Path::new("Cargo.lock"), &copies));
    assert!(!covered(Path::new("assets/dashboard/app.js"), &copies), "runtime-stage COPY must not count");
}

/// `ENV` of the Dockerfile's last (runtime) stage, the `VOLUME`s, and the `CMD` words.
struct Runtime {
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    cmd: Vec<String>,
}

fn dockerfile_runtime() -> Runtime {
    let mut rt = Runtime { env: BTreeMap::new(), volumes: Vec::new(), cmd: Vec::new() };
    for ins in dockerfile_instructions(&read("Dockerfile")) {
        let (op, rest) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        match op.to_ascii_uppercase().as_str() {
            // Only the runtime (last) stage's ENV reaches the container.
            "FROM" => rt.env.clear(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV without `=`: {pair}"));
                    rt.env.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
            "VOLUME" => rt.volumes = serde_json::from_str(rest.trim()).expect("VOLUME in JSON form"),
            "CMD" => rt.cmd = serde_json::from_str(rest.trim()).expect("CMD in JSON form"),
            _ => {}
        }
    }
    rt
}

struct Compose {
    env: BTreeMap<String, String>,
    health_url: String,
    stop_grace: Duration,
}

fn compose_service() -> Compose {
    let doc: serde_json::Value = serde_norway::from_str(&read("docker-compose.yml")).expect("compose is YAML");
    let svc = &doc["services"]["modelpress"];
    let env: BTreeMap<String, String> = svc["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
        .collect();
    let test: Vec<String> = serde_json::from_value(svc["healthcheck"]["test"].clone()).expect("healthcheck test");
    let health_url = test.iter().find(|w| w.starts_with("http")).expect("healthcheck URL").clone();
    let stop_grace = humantime::parse_duration(svc["stop_grace_period"].as_str().expect("stop_grace_period set"))
        .expect("stop_grace_period parses");
    let named: Vec<String> = doc["volumes"].as_object().expect("named volumes").keys().cloned().collect();
    let vols: Vec<String> = serde_json::from_value(svc["volumes"].clone()).expect("service volumes");
    assert!(vols.iter().any(|v| named.iter().any(|n| v.starts_with(&format!("{n}:")))), "data on a named volume");
    assert!(svc["deploy"]["resources"]["limits"]["memory"].is_string(), "memory limit set");
    assert!(svc["deploy"]["resources"]["limits"]["cpus"].is_string(), "cpu limit set");
    Compose { env, health_url, stop_grace }
}

/// A child process killed on drop (a failing assertion must not leak the server).
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_starts_with_the_compose_environment_and_answers_readyz() {
    let rt = dockerfile_runtime();
    let compose = compose_service();
    let tmp = tempfile::tempdir().expect("temp dir");
    // Compose's environment overrides the image's ENV, as Docker does.
    let mut env = rt.env.clone();
    env.extend(compose.env.clone());
    for v in env.values_mut() {
        for vol in &rt.volumes {
            if let Some(rest) = v.strip_prefix(vol.as_str()) {
                *v = format!("{}{rest}", tmp.path().display());
            }
        }
    }
    let bind = env.get_mut("MODELPRESS_BIND").expect("compose sets the bind address");
    let (host, port) = bind.rsplit_once(':').expect("host:port");
    let container_port = port.to_string();
    *bind = format!("{host}:0");
    let grace: u64 = env.get("MODELPRESS_SHUTDOWN_GRACE_SECS").map_or(10, |s| s.parse().expect("grace is a number"));
    assert!(
        compose.stop_grace > Duration::from_secs(grace),
        "stop_grace_period {:?} must exceed the job shutdown grace {grace} s",
        compose.stop_grace
    );

    let child = Command::new(env!("CARGO_BIN_EXE_modelpress"))
        .args(&rt.cmd)
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut child = Child(child);
    // The JSON log line "modelpress listening on http://0.0.0.0:PORT" gives the port.
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let addr = &line[i + "listening on http://".len()..];
                let port: String =
                    addr.rsplit(':').next().unwrap_or_default().chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port);
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(p) => p,
        Err(_) => {
            let _ = child.0.kill();
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the server did not start with the compose environment: {err}");
        }
    };
    let health = compose.health_url.replace(&format!(":{container_port}"), &format!(":{port}"));
    let client = reqwest::Client::new();
    let r = client.get(&health).send().await.expect("healthcheck request");
    assert_eq!(r.status(), 200, "{health}");
    // The generated admin key guards /v1 and is the one in the key file.
    let key_file = PathBuf::from(env.get("MODELPRESS_ADMIN_KEY_FILE").expect("compose uses a key file"));
    let key = std::fs::read_to_string(&key_file).expect("key file generated");
    let base = format!("http://127.0.0.1:{port}");
    let r = client.get(format!("{base}/v1/models")).send().await.expect("request");
    assert_eq!(r.status(), 401);
    let r = client.get(format!("{base}/v1/models")).bearer_auth(key.trim()).send().await.expect("request");
    assert_eq!(r.status(), 200);

    // `docker compose stop`: SIGTERM, then the process must be gone within stop_grace_period.
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let deadline = Instant::now() + compose.stop_grace;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running after stop_grace_period");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn config_error_is_one_line_and_exit_status_2() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_modelpress"))
        .env_clear()
        .env("RUST_BACKTRACE", "full")
        .env("MODELPRESS_BIND", "0.0.0.0:0")
        .env("MODELPRESS_DATA_DIR", tmp.path())
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {err}");
    assert!(lines[0].contains("refusing") && lines[0].contains("MODELPRESS_ADMIN_KEY"), "{err}");
    // Nothing was created for a refused configuration.
    assert!(!tmp.path().join("modelpress.db").exists());
}
