//! Keys and tenants, limits, CORS, the bind policy and log redaction (issue 8).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use modelpress::auth::Secret;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "test-admin-key-0123456789";

fn client_for(key: &str) -> reqwest::Client {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

async fn spawn_keyed(f: impl FnOnce(&mut modelpress::config::Config)) -> TestApp {
    spawn_with(|c| {
        c.auth.admin_key = Some(Secret::new(ADMIN));
        f(c)
    })
    .await
}

/// Creates a tenant key as the admin; returns (key id, secret, tenant).
async fn create_key(app: &TestApp, name: &str) -> (String, String, String) {
    let r = client_for(ADMIN).post(app.url("/v1/keys")).json(&json!({"name": name})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("location").is_some());
    let k: Value = r.json().await.unwrap();
    let secret = k["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("mp_") && secret.len() == 67, "{k}");
    (k["id"].as_str().unwrap().to_string(), secret, k["tenant"].as_str().unwrap().to_string())
}

async fn status(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    let text = r.text().await.unwrap();
    (s, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn upload_as(c: &reqwest::Client, app: &TestApp, path: &str, bytes: Vec<u8>) -> Value {
    let r = c.post(app.url(path)).header("content-type", "application/octet-stream").body(bytes).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn wait_job(c: &reqwest::Client, app: &TestApp, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let j: Value = c.get(app.url(&format!("/v1/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} did not finish: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_others_resources() {
    let app = spawn_keyed(|_| {}).await;
    let (_, key_a, tenant_a) = create_key(&app, "team a").await;
    let (_, key_b, tenant_b) = create_key(&app, "team b").await;
    assert_ne!(tenant_a, tenant_b);
    let (a, b, admin) = (client_for(&key_a), client_for(&key_b), client_for(ADMIN));

    // Tenant B's resources: a model with a spec, a dataset, a finished job and its output.
    let form = reqwest::multipart::Form::new()
        .part("weights", reqwest::multipart::Part::bytes(fixture("teacher_digits.safetensors")).file_name("m"))
        .text("name", "b-model")
        .text("spec", crate::engine::digits_spec().to_string());
    let r = b.post(app.url("/v1/models")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let mb = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let db = upload_as(&b, &app, "/v1/datasets?name=b-data", fixture("digits.safetensors")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, job) = status(
        &b,
        reqwest::Method::POST,
        app.url("/v1/jobs"),
        Some(json!({"kind": "quantize", "model_id": mb, "params": {"scheme": "f16"}})),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let jb = job["id"].as_str().unwrap().to_string();
    let done = wait_job(&b, &app, &jb).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out_b = done["output_model_id"].as_str().unwrap().to_string();

    // Tenant A's own model and dataset.
    let form = reqwest::multipart::Form::new()
        .part("weights", reqwest::multipart::Part::bytes(fixture("teacher_digits.safetensors")).file_name("m"))
        .text("name", "a-model")
        .text("spec", crate::engine::digits_spec().to_string());
    let ma = a.post(app.url("/v1/models")).multipart(form).send().await.unwrap().json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let da = upload_as(&a, &app, "/v1/datasets?name=a-data", fixture("digits.safetensors")).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Every route on B's resources, with A's key and with the admin key (the default tenant): 404.
    use reqwest::Method as M;
    let spec = crate::engine::digits_spec();
    let matrix: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, format!("/v1/models/{mb}"), None),
        (M::GET, format!("/v1/models/{out_b}"), None),
        (M::GET, format!("/v1/models/{mb}/download"), None),
        (M::GET, format!("/v1/models/{out_b}/download?format=safetensors-f32"), None),
        (M::PUT, format!("/v1/models/{mb}/spec"), Some(spec.clone())),
        (M::DELETE, format!("/v1/models/{mb}"), None),
        (M::DELETE, format!("/v1/models/{out_b}"), None),
        (M::GET, format!("/v1/datasets/{db}"), None),
        (M::DELETE, format!("/v1/datasets/{db}"), None),
        (M::GET, format!("/v1/jobs/{jb}"), None),
        (M::POST, format!("/v1/jobs/{jb}/cancel"), None),
        (M::GET, format!("/v1/jobs/{jb}/events"), None),
    ];
    for (who, c) in [("tenant a", &a), ("admin", &admin)] {
        for (m, path, body) in &matrix {
            let (s, p) = status(c, m.clone(), app.url(path), body.clone()).await;
            assert_eq!(s, 404, "{who}: {m} {path} → {s} {p}");
            assert_eq!(p["code"], "not_found", "{p}");
        }
        // Lists exclude B's resources.
        for (path, theirs) in [("/v1/models", vec![&mb, &out_b]), ("/v1/datasets", vec![&db]), ("/v1/jobs", vec![&jb])]
        {
            let (s, list) = status(c, M::GET, app.url(path), None).await;
            assert_eq!(s, 200);
            for id in theirs {
                assert!(!ids(&list).contains(id), "{who}: {path} lists {id}");
            }
        }
        let (_, list) = status(c, M::GET, app.url(&format!("/v1/jobs?model_id={mb}")), None).await;
        assert!(ids(&list).is_empty(), "{list}");
    }
    // A cannot use B's model or dataset as a job input: answered like a missing id.
    let refused = [
        json!({"kind": "quantize", "model_id": mb, "params": {"scheme": "f16"}}),
        json!({"kind": "evaluate", "model_id": ma, "params": {"dataset_id": db}}),
        json!({"kind": "quantize", "model_id": ma, "params": {"scheme": "int8", "eval_dataset_id": db}}),
        json!({"kind": "train", "model_id": ma, "params": {"dataset_id": db, "epochs": 1}}),
    ];
    for body in refused {
        let (s, p) = status(&a, M::POST, app.url("/v1/jobs"), Some(body.clone())).await;
        assert_eq!(s, 422, "{body} → {p}");
        assert!(p["detail"].as_str().unwrap().contains("does not exist"), "{p}");
    }
    // The same job on A's own dataset is accepted: the refusals above were about ownership.
    let (s, p) = status(
        &a,
        M::POST,
        app.url("/v1/jobs"),
        Some(json!({"kind": "evaluate", "model_id": ma, "params": {"dataset_id": da}})),
    )
    .await;
    assert_eq!(s, 202, "{p}");
    let (_, list) = status(&a, M::GET, app.url("/v1/jobs"), None).await;
    assert_eq!(ids(&list), vec![p["id"].as_str().unwrap().to_string()]);

    // B still has everything, the job's output included, and its lists show them.
    for path in [format!("/v1/models/{mb}"), format!("/v1/models/{out_b}"), format!("/v1/datasets/{db}")] {
        let (s, _) = status(&b, M::GET, app.url(&path), None).await;
        assert_eq!(s, 200, "{path}");
    }
    let (_, list) = status(&b, M::GET, app.url("/v1/models"), None).await;
    let mut got = ids(&list);
    got.sort();
    let mut want = vec![mb.clone(), out_b.clone()];
    want.sort();
    assert_eq!(got, want);
    let r = b.get(app.url(&format!("/v1/models/{out_b}/download"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn missing_bad_and_revoked_keys_get_401() {
    let app = spawn_keyed(|_| {}).await;
    let anon = reqwest::Client::new();
    for (c, what) in
        [(anon.clone(), "no key"), (client_for("mp_0000"), "unknown key"), (client_for(&ADMIN[1..]), "near miss")]
    {
        let r = c.get(app.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), "Bearer realm=\"modelpress\"");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], "unauthorized");
        assert_eq!(p["status"], 401);
    }
    // Wrong scheme.
    let r = anon.get(app.url("/v1/jobs")).header("authorization", format!("Basic {ADMIN}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Unknown /v1 routes do not reveal themselves before authentication.
    assert_eq!(anon.get(app.url("/v1/nothing")).send().await.unwrap().status(), 401);
    // Public routes need no key.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml", "/openapi.json", "/"] {
        assert_eq!(anon.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }

    // A key works until it is revoked, then fails at once.
    let (id, key, _) = create_key(&app, "short-lived").await;
    let c = client_for(&key);
    assert_eq!(c.get(app.url("/v1/models")).send().await.unwrap().status(), 200);
    let admin = client_for(ADMIN);
    let r = admin.delete(app.url(&format!("/v1/keys/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Revoking twice is fine; an unknown key is 404.
    assert_eq!(admin.delete(app.url(&format!("/v1/keys/{id}"))).send().await.unwrap().status(), 204);
    let r = admin.delete(app.url("/v1/keys/00000000-0000-7000-8000-000000000000")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The listing shows the revocation and never a secret or hash.
    let list: Value = admin.get(app.url("/v1/keys")).send().await.unwrap().json().await.unwrap();
    let item = list["items"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    assert!(item["revoked_at"].is_string(), "{item}");
    assert!(item.get("key").is_none() && item.get("key_hash").is_none(), "{item}");
    assert!(!list.to_string().contains(&key[10..]), "the listing leaks the secret");
    assert_eq!(item["prefix"].as_str().unwrap(), &key[..10]);
    app.stop().await;
}

#[tokio::test]
async fn only_the_admin_manages_keys() {
    let app = spawn_keyed(|_| {}).await;
    let (id, key, _) = create_key(&app, "tenant").await;
    let c = client_for(&key);
    use reqwest::Method as M;
    for (m, path, body) in [
        (M::GET, "/v1/keys".to_string(), None),
        (M::POST, "/v1/keys".to_string(), Some(json!({"name": "escalate"}))),
        (M::DELETE, format!("/v1/keys/{id}"), None),
    ] {
        let (s, p) = status(&c, m.clone(), app.url(&path), body).await;
        assert_eq!(s, 403, "{m} {path}: {p}");
        assert_eq!(p["code"], "forbidden");
    }
    // Validation of the admin's requests.
    let admin = client_for(ADMIN);
    for body in
        [json!({"name": ""}), json!({"name": "x", "tenant": "no spaces"}), json!({"name": "x", "other": 1}), json!({})]
    {
        let (s, p) = status(&admin, M::POST, app.url("/v1/keys"), Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {p}");
    }
    // A second key for an existing tenant (rotation) sees the same resources.
    let (_, key1, tenant) = create_key(&app, "rotate-1").await;
    let m = upload_as(&client_for(&key1), &app, "/v1/models?name=m", small_model(4)).await;
    let r = admin.post(app.url("/v1/keys")).json(&json!({"name": "rotate-2", "tenant": tenant})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let key2 = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_string();
    let r = client_for(&key2).get(app.url(&format!("/v1/models/{}", m["id"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;

    // Open mode has no keys to manage.
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.client.get(app.url("/v1/models")).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_per_key() {
    let app = spawn_keyed(|c| {
        c.limits.rate_limit_rps = 0.2;
        c.limits.rate_limit_burst = 3;
    })
    .await;
    let (_, key, _) = create_key(&app, "chatty").await;
    let c = client_for(&key);
    for _ in 0..3 {
        assert_eq!(c.get(app.url("/v1/models")).send().await.unwrap().status(), 200);
    }
    let r = c.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "rate_limited");
    // Other keys have their own bucket; public routes are not limited.
    assert_eq!(client_for(ADMIN).get(app.url("/v1/models")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn job_quota_per_tenant() {
    let app = spawn_keyed(|c| c.limits.max_jobs_per_tenant = 2).await;
    let (_, key_a, _) = create_key(&app, "a").await;
    let (_, key_b, _) = create_key(&app, "b").await;
    let (a, b) = (client_for(&key_a), client_for(&key_b));
    let slow = json!({"kind": "debug_sleep", "params": {"steps": 400, "step_ms": 25}});
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let (s, j) = status(&a, reqwest::Method::POST, app.url("/v1/jobs"), Some(slow.clone())).await;
        assert_eq!(s, 202, "{j}");
        jobs.push(j["id"].as_str().unwrap().to_string());
    }
    let r = a.post(app.url("/v1/jobs")).json(&slow).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "quota_exceeded", "{p}");
    // Another tenant is not affected.
    let (s, jb) = status(&b, reqwest::Method::POST, app.url("/v1/jobs"), Some(slow.clone())).await;
    assert_eq!(s, 202);
    // A finished (cancelled) job frees a slot.
    for id in &jobs {
        a.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
    }
    for id in &jobs {
        wait_job(&a, &app, id).await;
    }
    let (s, j) = status(&a, reqwest::Method::POST, app.url("/v1/jobs"), Some(slow.clone())).await;
    assert_eq!(s, 202, "{j}");
    for (c, id) in [(&a, j["id"].as_str().unwrap()), (&b, jb["id"].as_str().unwrap())] {
        c.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn sse_connections_are_capped() {
    let app = spawn_with(|c| c.limits.max_sse_connections = 1).await;
    let job = app.submit(json!({"kind": "debug_sleep", "params": {"steps": 400, "step_ms": 25}})).await;
    let id = job["id"].as_str().unwrap();
    let first = app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().get("retry-after").is_some());
    drop(first);
    // The slot frees when the first client goes away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SSE slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.client.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn json_bodies_are_bounded_in_size_and_depth() {
    let app = spawn_with(|c| {
        c.limits.max_json_bytes = 4096;
        c.limits.max_json_depth = 8;
    })
    .await;
    let big = json!({"kind": "debug_sleep", "params": {"pad": "x".repeat(8000)}});
    let r = app.post_job(big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let deep = format!("{{\"kind\": \"quantize\", \"params\": {}1{}}}", "[".repeat(20), "]".repeat(20));
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("--max-json-depth"), "{p}");
    // Uploads keep their own (larger) limit.
    let m = app.upload_raw(small_model(64), "bigger-than-4k").await;
    assert_eq!(m.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_allowed_origins() {
    let app = spawn_keyed(|c| c.auth.cors_origins = vec!["https://dash.example.com".into()]).await;
    let c = reqwest::Client::new();
    let pre = c
        .request(reqwest::Method::OPTIONS, app.url("/v1/models"))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(pre.headers()["access-control-allow-origin"], "https://dash.example.com");
    let allowed = pre.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r =
        client_for(ADMIN).get(app.url("/v1/models")).header("origin", "https://dash.example.com").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://dash.example.com");
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("location") && exposed.contains("retry-after"), "{exposed}");
    let other =
        client_for(ADMIN).get(app.url("/v1/models")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn public_bind_without_keys_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.bind = "0.0.0.0:0".parse().unwrap();
    let err = match modelpress::startup::Application::build(config.clone()).await {
        Ok(_) => panic!("started on 0.0.0.0 without keys"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--admin-key") && err.contains("--insecure-no-auth"), "{err}");
    config.auth.admin_key = Some(Secret::new("short"));
    config.bind = "127.0.0.1:0".parse().unwrap();
    assert!(modelpress::startup::Application::build(config).await.is_err(), "a weak admin key was accepted");

    // The binary says so and exits non-zero, without touching the data dir.
    let out = Command::new(env!("CARGO_BIN_EXE_modelpress"))
        .args(["--bind", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path().join("never"))
        .env_remove("MODELPRESS_ADMIN_KEY")
        .env_remove("MODELPRESS_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("refusing to serve"), "{text}");
    assert!(!tmp.path().join("never").exists());
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelpress"))
        .args(["--bind", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(tmp.path())
        .env("MODELPRESS_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "trace")
        .env_remove("MODELPRESS_BIND")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&all);
            if !sent {
                if let Some(i) = text.find("http://") {
                    let url: String = text[i..].chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                    let _ = tx.send(url);
                    sent = true;
                }
            }
        }
        String::from_utf8_lossy(&all).to_string()
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("binary logs its URL");
    let admin = client_for(ADMIN);
    let r = admin.post(format!("{base}/v1/keys")).json(&json!({"name": "logged?"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let tenant_key = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_string();
    let t = client_for(&tenant_key);
    assert_eq!(t.get(format!("{base}/v1/models")).send().await.unwrap().status(), 200);
    let wrong = format!("{}-wrong", tenant_key);
    assert_eq!(client_for(&wrong).get(format!("{base}/v1/jobs")).send().await.unwrap().status(), 401);
    assert_eq!(t.get(format!("{base}/v1/keys")).send().await.unwrap().status(), 403);
    // SIGINT-free stop: kill is enough, the logs are already written line by line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = out_thread.join().unwrap() + &err_thread.join().unwrap();
    assert!(logs.contains("/v1/models"), "the requests were not logged at all:\n{logs}");
    for secret in [ADMIN, tenant_key.as_str(), &tenant_key[3..], wrong.as_str()] {
        assert!(!logs.contains(secret), "a key appears in the logs");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    app.upload_model(small_model(4), "m").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.dir), 0o700);
    for d in ["models", "datasets", "tmp"] {
        assert_eq!(mode(&app.dir.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&app.dir.join("modelpress.db")), 0o600);
    for f in app.artifact_files() {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_do_not_cross_tenants() {
    let app = spawn_keyed(|_| {}).await;
    let (_, key_a, _) = create_key(&app, "a").await;
    let (_, key_b, _) = create_key(&app, "b").await;
    let body = json!({"kind": "debug_sleep", "params": {"steps": 1, "step_ms": 1}});
    let post = |c: reqwest::Client| {
        let (url, body) = (app.url("/v1/jobs"), body.clone());
        async move {
            let r = c.post(url).header("idempotency-key", "deploy-42").json(&body).send().await.unwrap();
            assert_eq!(r.status(), 202);
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string(), replayed)
        }
    };
    let (job_a, replayed) = post(client_for(&key_a)).await;
    assert!(!replayed);
    // The same key from another tenant is a new job, not a replay of A's.
    let (job_b, replayed) = post(client_for(&key_b)).await;
    assert!(!replayed);
    assert_ne!(job_a, job_b);
    let (again, replayed) = post(client_for(&key_a)).await;
    assert!(replayed);
    assert_eq!(again, job_a);
    app.stop().await;
}
