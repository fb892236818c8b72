//! `/v1/datasets`: upload (raw or multipart, safetensors or CSV, streamed), list, get, delete.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult, ErrorCode, Problem};
use super::extract::{check_cursor, check_id, page_limit, ApiPath, ApiQuery};
use super::models::{read_upload, validate_name, ListQuery};
use super::AppState;
use crate::auth::Caller;
use crate::datasets::{self, DatasetError, DatasetInfo, SplitInfo};
use crate::db::{self, DatasetRow, DeleteOutcome};
use crate::tensorfile::HeaderLimits;

/// A stored dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dataset {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub size_bytes: i64,
    pub sha256: String,
    /// Format it was uploaded in (`safetensors` or `csv`; CSV is stored converted).
    pub format: String,
    pub splits: Vec<SplitInfo>,
}

impl Dataset {
    fn from_row(r: DatasetRow) -> Dataset {
        let info: DatasetInfo = serde_json::from_str(&r.info).unwrap_or(DatasetInfo { splits: vec![] });
        Dataset {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            format: r.format,
            splits: info.splits,
        }
    }
}

/// A page of datasets.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetList {
    pub items: Vec<Dataset>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatasetUploadQuery {
    /// 1-200 characters, not blank, no control characters.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: Option<String>,
    /// `safetensors` (default) or `csv`.
    #[param(pattern = "^(safetensors|csv)$")]
    pub format: Option<String>,
    /// CSV only: the label column (default `label`, else the last column; empty = unlabelled).
    pub label: Option<String>,
}

/// Multipart dataset upload form.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DatasetUploadForm {
    /// The safetensors or CSV file.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    data: Vec<u8>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: Option<String>,
    /// `safetensors` or `csv`.
    #[schema(pattern = "^(safetensors|csv)$")]
    format: Option<String>,
    label: Option<String>,
}

fn dataset_error(e: DatasetError) -> ApiError {
    match e {
        DatasetError::Io(e) => e.into(),
        DatasetError::File(crate::tensorfile::TensorfileError::Io(e)) => e.into(),
        DatasetError::File(e) => ApiError::new(ErrorCode::InvalidSafetensors, e.to_string()),
        DatasetError::Invalid(m) => ApiError::new(ErrorCode::Validation, m),
    }
}

/// Upload a dataset: safetensors with splits `train_x`/`train_y`, `test_x`/`test_y` or `x`/`y`
/// (labels optional), or CSV with a header row (`?format=csv`). Raw body or multipart (part
/// `data`, optional `name`, `format`, `label`).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets", params(DatasetUploadQuery),
    request_body(content(("application/octet-stream"), (DatasetUploadForm = "multipart/form-data")), description = "dataset file"),
    responses(
        (status = 201, description = "Stored", body = Dataset, headers(("Location" = String, description = "URL of the dataset"))),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Upload larger than --max-upload-bytes", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The data disk is full; nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid dataset (the problem says which tensor, line or column)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_dataset(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DatasetUploadQuery>,
    req: Request,
) -> ApiResult<Response> {
    let parts = read_upload(&st, req, "data", &["name", "format", "label"], 1024).await?;
    let upload =
        parts.file.ok_or_else(|| ApiError::validation("data", "missing the 'data' part with the dataset file"))?;
    let name = validate_name(parts.name.or(q.name), "dataset")?;
    let format = parts.fields.get("format").cloned().or(q.format).unwrap_or_else(|| "safetensors".into());
    let label = parts.fields.get("label").cloned().or(q.label);
    let limits = HeaderLimits { max_header_bytes: st.config.max_header_bytes, max_tensors: st.config.max_tensors };
    let (stored, info) = match format.as_str() {
        "safetensors" => {
            let path = upload.file.path().to_path_buf();
            let info = tokio::task::spawn_blocking(move || datasets::inspect(&path, limits))
                .await
                .map_err(ApiError::internal)?
                .map_err(dataset_error)?;
            (upload.file, info)
        }
        "csv" => {
            let out = st.store.temp_file("safetensors");
            let (src, dst) = (upload.file.path().to_path_buf(), out.path().to_path_buf());
            let info = tokio::task::spawn_blocking(move || datasets::csv_to_safetensors(&src, &dst, label.as_deref()))
                .await
                .map_err(ApiError::internal)?
                .map_err(dataset_error)?;
            (out, info)
        }
        other => {
            return Err(ApiError::validation("format", format!("unknown format '{other}'; use safetensors or csv")))
        }
    };
    let id = uuid::Uuid::now_v7().to_string();
    let row = DatasetRow {
        id: id.clone(),
        name,
        created_at: crate::time::now_rfc3339(),
        size_bytes: upload.size as i64,
        sha256: upload.sha256.clone(),
        format,
        info: serde_json::to_string(&info).map_err(ApiError::internal)?,
        tenant_id: caller.tenant.id().map(str::to_string),
    };
    let dest = st.store.dataset_path(&id);
    stored.persist(&dest)?;
    if let Err(e) = db::insert_dataset(&st.db, &row).await {
        let _ = std::fs::remove_file(&dest);
        return Err(e.into());
    }
    let mut resp = (StatusCode::CREATED, Json(Dataset::from_row(row))).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/datasets/{id}")).map_err(ApiError::internal)?);
    Ok(resp)
}

/// List datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", params(ListQuery),
    responses(
        (status = 200, description = "A page of datasets", body = DatasetList),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_datasets(
    State(st): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DatasetList>> {
    check_cursor(q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let rows = db::list_datasets(&st.db, &caller.tenant, q.name.as_deref(), q.cursor.as_deref(), limit).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|r| r.id.clone()) } else { None };
    Ok(Json(DatasetList { items: rows.into_iter().map(Dataset::from_row).collect(), next_cursor }))
}

/// The caller's dataset, or 404.
pub(super) async fn load_dataset(st: &AppState, caller: &Caller, id: &str) -> ApiResult<DatasetRow> {
    check_id("dataset", id)?;
    db::get_dataset_of(&st.db, &caller.tenant, id).await?.ok_or_else(|| ApiError::not_found("dataset", id))
}

/// Get one dataset with its splits, sample counts, shapes and class counts.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "Dataset id")),
    responses(
        (status = 200, description = "The dataset", body = Dataset),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_dataset(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Dataset>> {
    Ok(Json(Dataset::from_row(load_dataset(&st, &caller, &id).await?)))
}

/// Delete a dataset. Refused (409) while a queued or running job uses it.
#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "Dataset id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A queued or running job uses it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_dataset(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    check_id("dataset", &id)?;
    match db::delete_dataset(&st.db, &caller.tenant, &id).await? {
        DeleteOutcome::Deleted => {
            let _ = tokio::fs::remove_file(st.store.dataset_path(&id)).await;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::NotFound => Err(ApiError::not_found("dataset", &id)),
        DeleteOutcome::InUse(job) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("dataset '{id}' is used by job '{job}' which is queued or running"),
        )),
    }
}
