//! The committed `openapi.yaml` must equal the document generated from the routes.
//! `UPDATE_OPENAPI=1 cargo test --test api openapi` rewrites it.

use crate::helpers::*;

#[test]
fn openapi_yaml_matches_the_code() {
    let generated = modelpress::api::openapi().to_yaml().expect("yaml");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(&path, &generated).expect("write openapi.yaml");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.yaml is out of date with the routes; run `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it"
    );
}

#[tokio::test]
async fn served_document_is_the_committed_one() {
    let app = spawn_app().await;
    let served = app.client.get(app.url("/openapi.yaml")).send().await.unwrap().text().await.unwrap();
    let committed =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")).unwrap();
    assert_eq!(served, committed);
    let json: serde_json::Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
    // Every documented path answers something other than the 404 fallback.
    for (path, item) in json["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.client.request(m, app.url(&concrete)).send().await.unwrap();
            if r.status() == 404 {
                let p: serde_json::Value = r.json().await.unwrap();
                assert_ne!(
                    p["detail"], "no such route; see /openapi.yaml",
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
    app.stop().await;
}
