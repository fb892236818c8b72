//! Webhooks: a receiver inside the test (axum on port 0) that fails the first attempts, the
//! signature checked with the `hmac` crate, durability across a restart, the allow-list.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{spawn_in, spawn_with, TestApp};

#[derive(Default)]
struct Receiver {
    /// Attempts to answer 500 before answering 200.
    fail_first: usize,
    /// While set, every attempt gets 503.
    down: AtomicBool,
    /// While set, attempts hang (longer than the sender's timeout) before any answer.
    hang: AtomicBool,
    calls: AtomicUsize,
    got: Mutex<Vec<(String, HeaderMap, Bytes)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = r.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if r.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if r.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if n <= r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.got.lock().unwrap().push((uri.path().to_string(), headers, body));
    StatusCode::NO_CONTENT
}

/// Starts a receiver; returns its base URL.
async fn start_receiver(r: Arc<Receiver>) -> String {
    let app = axum::Router::new().route("/{*path}", axum::routing::post(receive)).with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The signature check a receiver would write, with the standard `hmac` crate.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let h = headers.get("modelpress-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut t = "";
    let mut v1 = "";
    for part in h.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x,
            Some(("v1", x)) => v1 = x,
            _ => {}
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    if (now - t.parse::<i64>().unwrap_or(0)).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap_or_default()).is_ok()
}

fn allow_loopback(c: &mut modelpress::config::Config) {
    c.webhooks.webhook_allow = vec!["127.0.0.1".into()];
    c.webhooks.webhook_retry_base_ms = 50;
}

async fn wait_received(r: &Receiver, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while r.got.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} events arrived", r.got.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn deliveries(app: &TestApp, job: &str) -> Vec<Value> {
    app.get_json(&format!("/v1/jobs/{job}/deliveries")).await["items"].as_array().unwrap().clone()
}

/// Polls the job's deliveries until `done` holds (10 s at most).
async fn wait_deliveries(app: &TestApp, job: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(app, job).await;
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "deliveries never reached the expected state: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sleep_job(app: &TestApp, webhook: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/jobs"))
        .json(&json!({"kind": "debug_sleep", "params": {"steps": 2, "step_ms": 5}, "webhook": webhook}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failing_receiver_gets_signed_events_after_retries() {
    let r = Arc::new(Receiver { fail_first: 2, ..Default::default() });
    let base = start_receiver(r.clone()).await;
    let app = spawn_with(allow_loopback).await;

    // A default webhook of the tenant: the secret is shown once, never listed.
    let resp =
        app.client.post(app.url("/v1/webhooks")).json(&json!({"url": format!("{base}/tenant")})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let tenant_secret = created["secret"].as_str().unwrap().to_string();
    assert!(tenant_secret.starts_with("whsec_"));
    let listed = app.get_json("/v1/webhooks").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["items"][0].get("secret").is_none(), "{listed}");

    // The job's own webhook without a secret: a generated one comes back once, in a header.
    let resp = sleep_job(&app, json!({"url": format!("{base}/job")})).await;
    assert_eq!(resp.status(), 202);
    let job_secret = resp.headers()["modelpress-webhook-secret"].to_str().unwrap().to_string();
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_for_job(&id, 20).await["status"], "succeeded");

    wait_received(&r, 2, 30).await;
    for (path, headers, body) in r.got.lock().unwrap().iter() {
        let secret = if path == "/tenant" { &tenant_secret } else { &job_secret };
        assert!(verify(secret, headers, body), "signature of {path} does not verify");
        assert!(!verify("whsec_wrong", headers, body));
        let ev: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(ev["type"], "job.succeeded");
        assert_eq!(ev["job"]["id"], id.as_str());
        assert_eq!(ev["job"]["kind"], "debug_sleep");
        assert_eq!(ev["links"]["job"], format!("/v1/jobs/{id}"));
        assert_eq!(headers["modelpress-event"], "job.succeeded");
    }

    // Every attempt is visible: two 500s, then a 2xx for each target, in some order. (The
    // receiver answers before the server records the attempt: wait for the record.)
    let ds = wait_deliveries(&app, &id, |d| d.len() == 2 && d.iter().all(|d| d["status"] == "delivered")).await;
    let mut codes = Vec::new();
    for d in &ds {
        assert_eq!(d["status"], "delivered", "{d}");
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.last().unwrap()["status_code"], 204, "{d}");
        codes.extend(attempts.iter().map(|a| a["status_code"].as_i64().unwrap()));
    }
    codes.sort();
    assert_eq!(codes, vec![204, 204, 500, 500]);
    app.stop().await;
}

#[tokio::test]
async fn pending_delivery_survives_a_restart() {
    let r = Arc::new(Receiver::default());
    r.down.store(true, Ordering::SeqCst);
    let base = start_receiver(r.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let app = spawn_in(tmp.path(), allow_loopback).await;
    let secret = "a-secret-of-the-pipeline";
    let resp = sleep_job(&app, json!({"url": format!("{base}/hook"), "secret": secret})).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.wait_for_job(&id, 20).await;
    // Failed attempts while the receiver is down; the delivery stays pending.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = deliveries(&app, &id).await;
        if d.len() == 1 && d[0]["attempts"].as_array().unwrap().len() >= 2 {
            assert_eq!(d[0]["status"], "pending");
            assert_eq!(d[0]["attempts"][0]["status_code"], 503);
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempts recorded: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;

    // The receiver comes back while the service is down; the next run delivers.
    r.down.store(false, Ordering::SeqCst);
    let app = spawn_in(tmp.path(), allow_loopback).await;
    wait_received(&r, 1, 30).await;
    let (_, headers, body) = r.got.lock().unwrap()[0].clone();
    assert!(verify(secret, &headers, &body));
    let d = wait_deliveries(&app, &id, |d| d.len() == 1 && d[0]["status"] == "delivered").await;
    assert!(d[0]["attempts"].as_array().unwrap().len() >= 3, "{d:?}");
    app.stop().await;
}

#[tokio::test]
async fn webhooks_are_off_without_an_allow_list() {
    let app = spawn_with(|_| {}).await;
    let resp =
        app.client.post(app.url("/v1/webhooks")).json(&json!({"url": "https://example.com/h"})).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let p: Value = resp.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("webhooks are off"), "{p}");
    let resp = sleep_job(&app, json!({"url": "https://example.com/h"})).await;
    assert_eq!(resp.status(), 422);
    app.stop().await;
}

#[tokio::test]
async fn urls_outside_the_allow_list_are_refused() {
    let app = spawn_with(allow_loopback).await;
    for url in ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data", "ftp://127.0.0.1/", "http://[::1]/", "x"]
    {
        let resp = app.client.post(app.url("/v1/webhooks")).json(&json!({"url": url})).send().await.unwrap();
        assert_eq!(resp.status(), 422, "{url}");
        let resp = sleep_job(&app, json!({"url": url})).await;
        assert_eq!(resp.status(), 422, "{url}");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["field"], "webhook.url", "{p}");
    }
    let resp = sleep_job(&app, json!({"url": "http://127.0.0.1:9/", "secret": "short"})).await;
    assert_eq!(resp.status(), 422);
    // A refused submission leaves no job.
    assert_eq!(app.get_json("/v1/jobs").await["items"].as_array().unwrap().len(), 0);
    // Webhooks can be deleted once.
    let resp =
        app.client.post(app.url("/v1/webhooks")).json(&json!({"url": "http://127.0.0.1:9/"})).send().await.unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.client.delete(app.url(&format!("/v1/webhooks/{id}"))).send().await.unwrap().status(), 204);
    assert_eq!(app.client.delete(app.url(&format!("/v1/webhooks/{id}"))).send().await.unwrap().status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_at_delivery() {
    let r = Arc::new(Receiver::default());
    let base = start_receiver(r.clone()).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    // The name is allowed, its address is not: the SSRF check is on the resolved address.
    let app = spawn_with(|c| {
        c.webhooks.webhook_allow = vec!["localhost".into()];
        c.webhooks.webhook_retry_base_ms = 50;
    })
    .await;
    let resp = sleep_job(&app, json!({"url": format!("http://localhost:{port}/hook")})).await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.wait_for_job(&id, 20).await;
    let d = wait_deliveries(&app, &id, |d| d.len() == 1 && d[0]["status"] == "failed").await;
    assert!(d[0]["last_error"].as_str().unwrap().contains("loopback"), "{d:?}");
    assert_eq!(d[0]["attempts"].as_array().unwrap().len(), 1, "refusals are not retried");
    assert_eq!(r.calls.load(Ordering::SeqCst), 0, "the receiver was reached");
    app.stop().await;
}

fn client_for(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

#[tokio::test]
async fn tenants_get_only_their_own_events_and_a_cancel_is_an_event() {
    const ADMIN: &str = "test-admin-key-0123456789";
    let r = Arc::new(Receiver::default());
    let base = start_receiver(r.clone()).await;
    let app = spawn_with(|c| {
        allow_loopback(c);
        c.auth.admin_key = Some(modelpress::auth::Secret::new(ADMIN));
    })
    .await;
    let admin = client_for(ADMIN);
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let k: Value =
            admin.post(app.url("/v1/keys")).json(&json!({"name": name})).send().await.unwrap().json().await.unwrap();
        keys.push(client_for(k["key"].as_str().unwrap()));
    }
    let (a, b) = (&keys[0], &keys[1]);
    let resp = a.post(app.url("/v1/webhooks")).json(&json!({"url": format!("{base}/a")})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let hook_a = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    // B neither sees nor deletes A's webhook.
    let listed: Value = b.get(app.url("/v1/webhooks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    assert_eq!(b.delete(app.url(&format!("/v1/webhooks/{hook_a}"))).send().await.unwrap().status(), 404);

    // B's job ends: A's webhook hears nothing. A's long job is cancelled: A hears job.cancelled.
    let job = json!({"kind": "debug_sleep", "params": {"steps": 2, "step_ms": 5}});
    let jb: Value = b.post(app.url("/v1/jobs")).json(&job).send().await.unwrap().json().await.unwrap();
    let long = json!({"kind": "debug_sleep", "params": {"steps": 5000, "step_ms": 10}});
    let ja: Value = a.post(app.url("/v1/jobs")).json(&long).send().await.unwrap().json().await.unwrap();
    let (ida, idb) = (ja["id"].as_str().unwrap(), jb["id"].as_str().unwrap());
    assert_eq!(a.post(app.url(&format!("/v1/jobs/{ida}/cancel"))).send().await.unwrap().status(), 202);
    wait_received(&r, 1, 30).await;
    let (path, _, body) = r.got.lock().unwrap()[0].clone();
    let ev: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(path, "/a");
    assert_eq!(ev["type"], "job.cancelled", "{ev}");
    assert_eq!(ev["job"]["id"], ida);
    // B's job (ended too) has no deliveries, and B cannot read A's.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j: Value = b.get(app.url(&format!("/v1/jobs/{idb}"))).send().await.unwrap().json().await.unwrap();
        if j["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d: Value = b.get(app.url(&format!("/v1/jobs/{idb}/deliveries"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["items"].as_array().unwrap().len(), 0, "{d}");
    assert_eq!(b.get(app.url(&format!("/v1/jobs/{ida}/deliveries"))).send().await.unwrap().status(), 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.got.lock().unwrap().len(), 1, "an event of another tenant arrived");
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_cut_short_by_a_crash_is_retried_at_once_after_restart() {
    let r = Arc::new(Receiver::default());
    r.hang.store(true, Ordering::SeqCst);
    let base = start_receiver(r.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    // The real binary, so a SIGKILL ends the attempt mid-flight. Timeout 1 s → a claimed
    // delivery is leased for 31 s.
    let flags = ["--webhook-allow", "127.0.0.1", "--webhook-timeout-secs", "1", "--webhook-retry-base-ms", "50"];
    let (mut child, server) = crate::restart::start_binary_with(tmp.path(), &flags);
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{server}/v1/jobs"))
        .json(&json!({"kind": "debug_sleep", "params": {"steps": 2, "step_ms": 5},
            "webhook": {"url": format!("{base}/hook"), "secret": "a-secret-of-the-pipeline"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no attempt started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Killed while the attempt is in flight: its lease must not delay the next run.
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    r.hang.store(false, Ordering::SeqCst);
    let app = spawn_in(tmp.path(), allow_loopback).await;
    wait_received(&r, 1, 10).await;
    let d = wait_deliveries(&app, &id, |d| d.len() == 1 && d[0]["status"] == "delivered").await;
    assert_eq!(d[0]["attempts"][0]["status_code"], 204, "{d:?}");
    app.stop().await;
}
