//! Model upload, listing, download and deletion.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn raw_upload_then_get_and_list() {
    let app = spawn_app().await;
    let bytes = fixture("teacher_digits.safetensors");
    let r = app.upload_raw(bytes.clone(), "teacher").await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let m: Value = r.json().await.unwrap();
    assert_eq!(loc, format!("/v1/models/{}", m["id"].as_str().unwrap()));
    assert_eq!(m["name"], "teacher");
    assert_eq!(m["size_bytes"], bytes.len() as u64);
    assert_eq!(m["tensor_count"], 6);
    assert_eq!(m["parameter_count"], 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
    use sha2::Digest;
    assert_eq!(m["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert!(m["parent_model_id"].is_null() && m["job_id"].is_null());
    let got = app.get_json(&loc).await;
    assert_eq!(got["id"], m["id"]);
    assert_eq!(
        got["bytes_by_dtype"]["F32"],
        (bytes.len() as u64) - 8 - u64::from_le_bytes(bytes[..8].try_into().unwrap())
    );
    let list = app.get_json("/v1/models").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn multipart_upload_with_name_and_spec() {
    let app = spawn_app().await;
    let spec =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digits-mlp.spec.json"))
            .unwrap();
    let r = app.upload_with_spec(fixture("teacher_digits.safetensors"), "mp", &spec).await;
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["name"], "mp");
    assert_eq!(m["has_spec"], true);
    // A multipart upload without the file part is refused.
    let form = reqwest::multipart::Form::new().text("name", "x");
    let r = app.client.post(app.url("/v1/models")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "weights");
    app.stop().await;
}

#[tokio::test]
async fn list_paginates_newest_first_and_filters() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (i, name) in ["a", "b", "a"].iter().enumerate() {
        let m = app.upload_model(small_model(2 + i), name).await;
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    let p1 = app.get_json("/v1/models?limit=2").await;
    let items: Vec<&str> = p1["items"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(items, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = app.get_json(&format!("/v1/models?limit=2&cursor={cursor}")).await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["items"][0]["id"], ids[0].as_str());
    assert!(p2["next_cursor"].is_null());
    let named = app.get_json("/v1/models?name=a").await;
    assert_eq!(named["items"].as_array().unwrap().len(), 2);
    let r = app.client.get(app.url("/v1/models?cursor=garbage")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = app.client.get(app.url("/v1/models?limit=0")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await;
}

#[tokio::test]
async fn download_full_ranged_and_not_modified() {
    let app = spawn_app().await;
    let bytes = fixture("teacher_digits.safetensors");
    let m = app.upload_model(bytes.clone(), "teacher v1/../x").await;
    let url = app.url(&format!("/v1/models/{}/download", m["id"].as_str().unwrap()));
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", m["sha256"].as_str().unwrap()));
    assert_eq!(r.headers()["content-length"], bytes.len().to_string().as_str());
    let cd = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert_eq!(cd, "attachment; filename=\"teacher_v1_.._x.safetensors\"");
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    let r = app.client.get(&url).header("range", "bytes=8-15").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 8-15/{}", bytes.len()).as_str());
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes[8..16].to_vec());
    let r = app.client.get(&url).header("range", "bytes=-4").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes[bytes.len() - 4..].to_vec());
    let r = app.client.get(&url).header("range", format!("bytes={}-", bytes.len() + 10)).send().await.unwrap();
    assert_eq!(r.status(), 416);

    let r = app.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app.client.get(format!("{url}?format=onnx")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    app.stop().await;
}

fn header_only(h: &str, data: usize) -> Vec<u8> {
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data));
    v
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let app = spawn_with(|c| c.max_tensors = 3).await;
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (vec![1, 2, 3], 422, "invalid_safetensors", "8-byte header length"),
        (
            {
                let mut v = header_only("{}", 0);
                v[0] = 99;
                v
            },
            422,
            "invalid_safetensors",
            "beyond the file",
        ),
        (header_only("{nope", 0), 422, "invalid_safetensors", "not valid JSON"),
        (
            header_only(r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, 4),
            422,
            "invalid_safetensors",
            "unknown dtype",
        ),
        (
            header_only(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
            422,
            "invalid_safetensors",
            "needs 12 bytes",
        ),
        (
            header_only(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4),
            422,
            "invalid_safetensors",
            "beyond the data section",
        ),
        (
            header_only(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            422,
            "invalid_safetensors",
            "overlap",
        ),
        (
            header_only(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8),
            422,
            "invalid_safetensors",
            "gap",
        ),
        (
            header_only(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 6),
            422,
            "invalid_safetensors",
            "trailing",
        ),
        (
            header_only(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            422,
            "invalid_safetensors",
            "duplicate",
        ),
        (
            header_only(
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"c":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"d":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}}"#,
                4,
            ),
            422,
            "invalid_safetensors",
            "limit of 3",
        ),
    ];
    for (bytes, status, code, detail) in cases {
        let r = app.upload_raw(bytes, "bad").await;
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], code, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(detail), "{detail}: {p}");
    }
    // Wrong content type, bad name, bad spec.
    let r = app.client.post(app.url("/v1/models")).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = app.upload_raw(small_model(2), "%0a").await;
    assert_eq!(r.status(), 422);
    let r = app.upload_with_spec(small_model(2), "s", "{not json").await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_spec");
    assert!(app.artifact_files().is_empty(), "files left: {:?}", app.artifact_files());
    assert!(app.get_json("/v1/models").await["items"].as_array().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn oversized_upload_gets_413_and_leaves_nothing() {
    let app = spawn_with(|c| c.max_upload_bytes = 1000).await;
    let r = app.upload_raw(small_model(32), "big").await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "payload_too_large");
    // Without a Content-Length the limit is enforced while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![0u8; 500])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = app
        .client
        .post(app.url("/v1/models"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(app.artifact_files().is_empty(), "files left: {:?}", app.artifact_files());
    app.stop().await;
}

#[tokio::test]
async fn delete_removes_file_and_refuses_while_in_use() {
    let app = spawn_app().await;
    let m = app.upload_model(small_model(4), "d").await;
    let id = m["id"].as_str().unwrap();
    assert_eq!(app.artifact_files().len(), 1);
    // A queued job (blocked behind a running one) holds the model.
    let blocker = app.submit(serde_json::json!({"kind": "debug_sleep", "params": {"steps": 100, "step_ms": 20}})).await;
    let job = app.submit(serde_json::json!({"kind": "quantize", "model_id": id, "params": {"scheme": "f16"}})).await;
    let r = app.client.delete(app.url(&format!("/v1/models/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 409);
    app.client.post(app.url(&format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()))).send().await.unwrap();
    app.client.post(app.url(&format!("/v1/jobs/{}/cancel", blocker["id"].as_str().unwrap()))).send().await.unwrap();
    let r = app.client.delete(app.url(&format!("/v1/models/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(app.artifact_files().is_empty());
    let r = app.client.get(app.url(&format!("/v1/models/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.client.delete(app.url(&format!("/v1/models/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}
