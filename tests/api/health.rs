//! Operations routes and the uniform error format.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_ready_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/healthz").await["status"], "ok");
    assert_eq!(app.get_json("/readyz").await["status"], "ready");
    app.get_json("/v1/models").await;
    let m = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(m.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = m.text().await.unwrap();
    assert!(
        text.contains("modelpress_http_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE modelpress_job_duration_seconds histogram"));
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "not_found");
    assert_eq!(p["status"], 404);
    let r = app.client.put(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app.client.get(app.url("/v1/models/not-a-uuid")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    app.stop().await;
}
