//! `/v1/models`: upload (raw or multipart, streamed), list, get, delete, download.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::extract::{check_cursor, check_id, page_limit, ApiPath, ApiQuery};
use super::AppState;
use crate::auth::Caller;
use crate::db::{self, DeleteOutcome, ModelRow};
use crate::storage::{StoreError, TempFile, Upload};
use crate::tensorfile::{parse_header, Header, HeaderLimits};

/// A stored model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub size_bytes: i64,
    /// Hex sha256 of the file; also the download `ETag`.
    pub sha256: String,
    pub tensor_count: i64,
    pub parameter_count: i64,
    /// Bytes per safetensors dtype, e.g. `{"F32": 337448}`.
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// The safetensors `__metadata__` (quantization config, lineage).
    pub metadata: BTreeMap<String, String>,
    /// The model this one was derived from, if a job made it.
    pub parent_model_id: Option<String>,
    /// The job that made it.
    pub job_id: Option<String>,
    pub has_spec: bool,
    /// The architecture spec (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
    /// Non-finite values (NaN, ±inf) per tensor, counted at upload; only tensors with any are
    /// listed (detail view only; absent for models that were not counted, e.g. job outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_finite: Option<BTreeMap<String, u64>>,
    /// The report of the job that made it (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
}

impl Model {
    pub(super) fn from_row(r: ModelRow, detail: bool) -> Model {
        Model {
            bytes_by_dtype: serde_json::from_str(&r.dtype_bytes).unwrap_or_default(),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            has_spec: r.spec.is_some(),
            spec: if detail { r.spec.as_deref().and_then(|s| serde_json::from_str(s).ok()) } else { None },
            report: None,
            non_finite: None,
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            tensor_count: r.tensor_count,
            parameter_count: r.parameter_count,
            parent_model_id: r.parent_model_id,
            job_id: r.job_id,
        }
    }
}

/// A page of models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub items: Vec<Model>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Model name (raw uploads; multipart uploads may send a `name` part instead): 1-200
    /// characters, not blank, no control characters.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: Option<String>,
    /// `safetensors` (default) or `onnx`: the raw body is an `.onnx` file, imported as an
    /// architecture spec plus safetensors weights (multipart uploads send an `onnx` part instead).
    #[param(pattern = "^(safetensors|onnx)$")]
    pub format: Option<String>,
}

/// Multipart upload form.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ModelUploadForm {
    /// The safetensors file (or send `onnx` instead).
    #[schema(value_type = Option<String>, format = Binary, content_media_type = "application/octet-stream")]
    weights: Option<Vec<u8>>,
    /// An ONNX model file, imported as spec + weights (instead of `weights` and `spec`).
    #[schema(value_type = Option<String>, format = Binary, content_media_type = "application/octet-stream")]
    onnx: Option<Vec<u8>>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: Option<String>,
    /// Architecture spec (JSON), see docs/spec.md.
    spec: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only models with exactly this name.
    pub name: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `native` (the stored file, default), `safetensors-f32` (every tensor dequantized to f32),
    /// `gguf` (GGUF v2; int8 as Q8_0, int4 as Q4_0/Q4_1, GGML types as stored), or `onnx`
    /// (opset 17; int8 weights as QDQ DequantizeLinear, f16 kept, other types as f32; needs the
    /// model's architecture spec).
    #[param(pattern = "^(native|safetensors-f32|gguf|onnx)$")]
    pub format: Option<String>,
}

pub(super) fn validate_name(name: Option<String>, default: &str) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| default.to_string());
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::validation("name", "must be 1-200 characters without control characters"));
    }
    Ok(name)
}

pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { limit } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("upload exceeds the limit of {limit} bytes (--max-upload-bytes)"),
        ),
        StoreError::Body(m) => ApiError::new(ErrorCode::BadRequest, format!("reading the upload failed: {m}")),
        StoreError::Io(e) => e.into(),
    }
}

/// The parts of an upload request.
pub(super) struct UploadParts {
    pub file: Option<Upload>,
    /// Which of the accepted file parts carried the file (multipart only).
    pub file_part: Option<String>,
    pub name: Option<String>,
    pub fields: BTreeMap<String, String>,
}

/// Reads a raw (`application/octet-stream`) or multipart upload; `file_part` names the file
/// part, `text_parts` the small text parts accepted (each at most `max_text` bytes).
pub(super) async fn read_upload(
    st: &AppState,
    req: Request,
    file_part: &str,
    text_parts: &[&str],
    max_text: usize,
) -> ApiResult<UploadParts> {
    read_upload_any(st, req, &[file_part], text_parts, max_text).await
}

/// [`read_upload`] accepting any one of `file_parts` as the file.
pub(super) async fn read_upload_any(
    st: &AppState,
    req: Request,
    file_parts: &[&str],
    text_parts: &[&str],
    max_text: usize,
) -> ApiResult<UploadParts> {
    let file_part = file_parts.join("' or '");
    let file_part = file_part.as_str();
    let limit = st.config.max_upload_bytes;
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit.saturating_add(64 * 1024) {
            st.metrics.inc("modelpress_rejections_total", vec![("reason", "upload_too_large".into())], 1.0);
            return Err(store_error(StoreError::TooLarge { limit }));
        }
    }
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let mut parts = UploadParts { file: None, file_part: None, name: None, fields: BTreeMap::new() };
    if ct.starts_with("multipart/form-data") {
        let mut mp =
            Multipart::from_request(req, &()).await.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
        while let Some(field) =
            mp.next_field().await.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?
        {
            let fname = field.name().unwrap_or("").to_string();
            if file_parts.contains(&fname.as_str()) {
                if parts.file.is_some() {
                    return Err(ApiError::validation(&fname, "sent twice (send one file)"));
                }
                parts.file_part = Some(fname.clone());
                let stream = field.map_err(|e| e.body_text());
                parts.file = Some(st.store.save_stream(stream, limit).await.map_err(store_error)?);
            } else if text_parts.contains(&fname.as_str()) {
                let mut buf = Vec::new();
                let mut field = field;
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?
                {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > max_text {
                        return Err(ApiError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("part '{fname}' exceeds {max_text} bytes"),
                        ));
                    }
                }
                let text = String::from_utf8(buf).map_err(|_| ApiError::validation(&fname, "must be UTF-8 text"))?;
                if fname == "name" {
                    parts.name = Some(text);
                } else {
                    parts.fields.insert(fname, text);
                }
            } else {
                return Err(ApiError::validation(
                    "multipart",
                    format!(
                        "unexpected part '{fname}'; expected '{file_part}' and optionally {}",
                        text_parts.join(", ")
                    ),
                ));
            }
        }
    } else if ct.is_empty() || ct.starts_with("application/octet-stream") {
        let stream = req.into_body().into_data_stream();
        parts.file = Some(st.store.save_stream(stream, limit).await.map_err(store_error)?);
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type '{ct}' is not accepted; send application/octet-stream or multipart/form-data"),
        ));
    }
    Ok(parts)
}

/// Validates the safetensors header of an uploaded temp file (blocking work, off the runtime).
pub(super) async fn validate_safetensors(st: &AppState, file: &TempFile) -> ApiResult<Header> {
    let path = file.path().to_path_buf();
    let limits = HeaderLimits { max_header_bytes: st.config.max_header_bytes, max_tensors: st.config.max_tensors };
    let r = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        Ok::<_, std::io::Error>(parse_header(std::io::BufReader::new(f), len, limits))
    })
    .await
    .map_err(ApiError::internal)??;
    r.map_err(|e| match e {
        crate::tensorfile::TensorfileError::Io(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
            ApiError::internal(e)
        }
        crate::tensorfile::TensorfileError::Io(_) => {
            ApiError::new(ErrorCode::InvalidSafetensors, "file ends inside its header")
        }
        other => ApiError::new(ErrorCode::InvalidSafetensors, other.to_string()),
    })
}

/// Upload a model.
///
/// Send the safetensors file as the raw body (`curl --data-binary @model.safetensors
/// -H 'Content-Type: application/octet-stream' '…/v1/models?name=mymodel'`) or as
/// `multipart/form-data` with parts `weights`, optional `name` and `spec`. The body is streamed
/// to disk while hashed, the header is validated, then the file is stored.
///
/// An ONNX model is sent as the raw body with `?format=onnx`, or as a multipart `onnx` part. Its
/// graph becomes the architecture spec and its initializers the weights (same names); a graph
/// with operators modelpress cannot run is refused with 422 listing every such node.
#[utoipa::path(post, path = "/v1/models", tag = "models",
    params(UploadQuery),
    request_body(content(
        ("application/octet-stream"),
        (ModelUploadForm = "multipart/form-data"),
    ), description = "safetensors file (raw) or multipart form"),
    responses(
        (status = 201, description = "Stored", body = Model, headers(("Location" = String, description = "URL of the new model"))),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Upload larger than --max-upload-bytes", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The data disk is full; nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid safetensors file, invalid spec/name, or an ONNX graph that cannot be imported (`errors` lists unsupported nodes)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_model(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UploadQuery>,
    req: Request,
) -> ApiResult<Response> {
    let want_onnx = match q.format.as_deref() {
        None | Some("safetensors") => false,
        Some("onnx") => true,
        Some(other) => {
            return Err(ApiError::validation("format", format!("unknown format '{other}'; use safetensors or onnx")))
        }
    };
    let parts = read_upload_any(&st, req, &["weights", "onnx"], &["name", "spec"], st.config.max_spec_bytes).await?;
    let onnx = want_onnx || parts.file_part.as_deref() == Some("onnx");
    if want_onnx && parts.file_part.as_deref() == Some("weights") {
        return Err(ApiError::validation("weights", "with format=onnx send the file as the 'onnx' part"));
    }
    let name = validate_name(parts.name.or(q.name), "model")?;
    let (file, size, sha256, header, spec) = if onnx {
        if parts.fields.contains_key("spec") {
            return Err(ApiError::validation(
                "spec",
                "an ONNX upload carries its own architecture; drop the 'spec' part",
            ));
        }
        let upload = parts.file.ok_or_else(|| ApiError::validation("onnx", "missing the ONNX file"))?;
        let (file, size, sha256, spec) = super::onnx::import_upload(&st, upload).await?;
        let header = validate_safetensors(&st, &file).await?;
        let spec = Some(crate::checks::check_spec_for_upload(&spec, &header)?);
        (file, size, sha256, header, spec)
    } else {
        let upload = parts
            .file
            .ok_or_else(|| ApiError::validation("weights", "missing the 'weights' part with the safetensors file"))?;
        let header = validate_safetensors(&st, &upload.file).await?;
        let spec = match parts.fields.get("spec") {
            Some(s) => Some(crate::checks::check_spec_for_upload(s, &header)?),
            None => None,
        };
        (upload.file, upload.size, upload.sha256, header, spec)
    };
    let non_finite = {
        let path = file.path().to_path_buf();
        let limits = HeaderLimits { max_header_bytes: st.config.max_header_bytes, max_tensors: st.config.max_tensors };
        tokio::task::spawn_blocking(move || crate::nonfinite::count_file(&path, limits))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::new(ErrorCode::InvalidSafetensors, e.to_string()))?
    };
    let id = uuid::Uuid::now_v7().to_string();
    let row = ModelRow {
        id: id.clone(),
        name,
        created_at: crate::time::now_rfc3339(),
        size_bytes: size as i64,
        sha256: sha256.clone(),
        tensor_count: header.tensors.len() as i64,
        parameter_count: header.parameter_count() as i64,
        dtype_bytes: serde_json::to_string(&header.bytes_by_dtype()).unwrap_or_default(),
        metadata: serde_json::to_string(&header.metadata).unwrap_or_default(),
        spec,
        parent_model_id: None,
        job_id: None,
        tenant_id: caller.tenant.id().map(str::to_string),
    };
    let dest = st.store.model_path(&id);
    file.persist(&dest)?;
    if let Err(e) = db::insert_model(&st.db, &row).await {
        let _ = std::fs::remove_file(&dest);
        return Err(e.into());
    }
    db::set_model_non_finite(&st.db, &id, &serde_json::to_string(&non_finite).map_err(ApiError::internal)?).await?;
    if !non_finite.is_empty() {
        tracing::warn!(model_id = %id, tensors = non_finite.len(), "model has non-finite values");
    }
    tracing::info!(model_id = %id, bytes = size, onnx, "model stored");
    let location = format!("/v1/models/{id}");
    let mut model = Model::from_row(row, true);
    model.non_finite = Some(non_finite);
    let mut resp = (StatusCode::CREATED, Json(model)).into_response();
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).map_err(ApiError::internal)?);
    Ok(resp)
}

/// List models, newest first.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ListQuery),
    responses(
        (status = 200, description = "A page of models", body = ModelList),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_models(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ModelList>> {
    check_cursor(q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let rows = db::list_models(&st.db, &caller.tenant, q.name.as_deref(), q.cursor.as_deref(), limit).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|r| r.id.clone()) } else { None };
    Ok(Json(ModelList { items: rows.into_iter().map(|r| Model::from_row(r, false)).collect(), next_cursor }))
}

/// The caller's model, or 404 (another tenant's model does not exist for it).
pub(super) async fn load_model(st: &AppState, caller: &Caller, id: &str) -> ApiResult<ModelRow> {
    check_id("model", id)?;
    db::get_model_of(&st.db, &caller.tenant, id).await?.ok_or_else(|| ApiError::not_found("model", id))
}

/// Get one model, with its spec and the report of the job that made it.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_model(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Model>> {
    let row = load_model(&st, &caller, &id).await?;
    let job_id = row.job_id.clone();
    let mut m = Model::from_row(row, true);
    m.non_finite = db::get_model_non_finite(&st.db, &id).await?.and_then(|s| serde_json::from_str(&s).ok());
    if let Some(job_id) = job_id {
        if let Some(job) = db::get_job(&st.db, &job_id).await? {
            m.report = job.report.as_deref().and_then(|s| serde_json::from_str(s).ok());
        }
    }
    Ok(Json(m))
}

/// Delete a model and its file. Refused (409) while a queued or running job uses it.
#[utoipa::path(delete, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "Model id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A queued or running job uses it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_model(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    check_id("model", &id)?;
    match db::delete_model(&st.db, &caller.tenant, &id).await? {
        DeleteOutcome::Deleted => {
            st.inference.evict(&id);
            let path = st.store.model_path(&id);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!(model_id = %id, error = %e, "model file already gone");
            }
            st.store.remove_derived(&id);
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::NotFound => Err(ApiError::not_found("model", &id)),
        DeleteOutcome::InUse(job) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("model '{id}' is used by job '{job}' which is queued or running; cancel it or wait"),
        )),
    }
}

/// A file name safe for `Content-Disposition`: ASCII letters, digits, `-`, `_`, `.`.
pub(super) fn safe_filename(name: &str, ext: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    s.truncate(100);
    let s = s.trim_matches('.').to_string();
    format!("{}.{ext}", if s.is_empty() { "model" } else { &s })
}

/// Parses a single `bytes=` range against a length. `Ok(None)` = serve the whole file.
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None); // multipart ranges: answer the whole file, as RFC 9110 allows
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (s, e)
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Whether an `If-None-Match` value matches `etag` (a quoted strong tag). RFC 9110 §13.1.2
/// compares weakly: `W/"x"` matches `"x"`; `*` matches any existing file.
pub(super) fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().strip_prefix("W/").unwrap_or(t.trim()).to_string();
    let want = strip(etag);
    header.split(',').any(|t| t.trim() == "*" || strip(t) == want)
}

/// Refuses a job whose selected tensors of `model_id` hold non-finite values (see
/// [`crate::nonfinite`]); models never counted pass.
pub(super) async fn refuse_non_finite(st: &AppState, model_id: &str, params: &Value, allow: bool) -> ApiResult<()> {
    if allow {
        return Ok(());
    }
    let Some(json) = db::get_model_non_finite(&st.db, model_id).await? else { return Ok(()) };
    let counts: crate::nonfinite::Counts = serde_json::from_str(&json).map_err(ApiError::internal)?;
    Ok(crate::nonfinite::refuse_selected(&counts, params, false)?)
}

/// Serves a stored file with ETag, Range and If-None-Match support.
pub(super) async fn serve_file(
    path: &std::path::Path,
    sha256: &str,
    filename: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let etag = format!("\"{sha256}\"");
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if if_none_match_matches(inm, &etag) {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
            return Ok(r);
        }
    }
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // If-Range with a different validator: ignore the Range.
        Some(r) if headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|ir| ir == etag) => {
            match parse_range(r, len) {
                Ok(r) => r,
                Err(()) => {
                    let mut resp = ApiError::new(
                        ErrorCode::RangeNotSatisfiable,
                        format!("range '{r}' is not satisfiable for {len} bytes"),
                    )
                    .into_response();
                    resp.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{len}")).map_err(ApiError::internal)?,
                    );
                    return Ok(resp);
                }
            }
        }
        _ => None,
    };
    let (status, start, count) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, len),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")).map_err(ApiError::internal)?,
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{len}", start, start + count - 1))
                .map_err(ApiError::internal)?,
        );
    }
    Ok(resp)
}

/// Writes a derived download format of a stored model file.
type DeriveFn = fn(&std::path::Path, &std::path::Path, &ModelRow) -> Result<(), String>;

/// Download a model's file (streamed; `Range`, `ETag`/`If-None-Match` supported).
#[utoipa::path(get, path = "/v1/models/{id}/download", tag = "models",
    params(("id" = String, Path, description = "Model id"), DownloadQuery),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("ETag" = String, description = "Quoted sha256"), ("Content-Disposition" = String, description = "attachment; filename"))),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Unsatisfiable range", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown format", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn download_model(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = load_model(&st, &caller, &id).await?;
    let format = q.format.as_deref().unwrap_or("native");
    let (ext, derive): (&str, DeriveFn) = match format {
        "native" => {
            return serve_file(
                &st.store.model_path(&row.id),
                &row.sha256,
                &safe_filename(&row.name, "safetensors"),
                &headers,
            )
            .await
        }
        "safetensors-f32" => {
            ("safetensors", |src, dst, _| crate::artifact::write_dequantized(src, dst).map_err(|e| e.to_string()))
        }
        "gguf" => ("gguf", |src, dst, row| {
            crate::artifact::write_gguf(src, dst, &row.name, &format!("modelpress:{}:{}", row.id, row.sha256))
                .map_err(|e| e.to_string())
        }),
        "onnx" => {
            if row.spec.is_none() {
                return Err(ApiError::validation(
                    "format",
                    "ONNX export needs the model's architecture spec; upload the model with a spec",
                ));
            }
            ("onnx", super::onnx::export_derive)
        }
        other => {
            return Err(ApiError::validation(
                "format",
                format!("unknown format '{other}'; available: native, safetensors-f32, gguf, onnx"),
            ))
        }
    };
    let path = st.store.derived_path(&row.id, format, ext);
    let sha_path = path.with_extension(format!("{ext}.sha256"));
    if !sha_path.exists() {
        // Derived once, under a temp name, then renamed: concurrent requests at worst derive
        // twice, never serve a partial file.
        let (src, tmp, dst, sha_dst, row2) =
            (st.store.model_path(&row.id), st.store.temp_file(ext), path.clone(), sha_path.clone(), row.clone());
        tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
            derive(&src, tmp.path(), &row2)
                .map_err(|e| ApiError::new(ErrorCode::Validation, format!("cannot convert to this format: {e}")))?;
            let sha = crate::storage::ArtifactStore::sha256_file(tmp.path())?;
            tmp.persist(&dst)?;
            std::fs::write(&sha_dst, sha)?;
            Ok(())
        })
        .await
        .map_err(ApiError::internal)??;
    }
    let sha = tokio::fs::read_to_string(&sha_path).await?;
    let suffix = match format {
        "gguf" => "gguf",
        "onnx" => "onnx",
        _ => "f32.safetensors",
    };
    serve_file(&path, sha.trim(), &safe_filename(&row.name, suffix), &headers).await
}

#[cfg(test)]
mod tests {
    use super::if_none_match_matches;

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = "\"abc\"";
        for (h, want) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            (" \"x\" , W/\"abc\" ", true),
            ("*", true),
            ("\"abcd\"", false),
            ("W/\"ab\"", false),
            ("abc", false),
            ("", false),
        ] {
            assert_eq!(if_none_match_matches(h, tag), want, "{h}");
        }
    }
}
