//! `/v1/keys`: the admin creates, lists and revokes tenant API keys. The secret is returned
//! once, at creation; only its SHA-256 is stored. Revocation takes effect at the next request
//! (every request looks its key up).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, Problem};
use super::extract::{check_id, ApiJson, ApiPath};
use super::AppState;
use crate::auth::{generate_key, hash_key, valid_tenant_id, Caller};
use crate::db::keys::{self as keydb, ApiKeyRow};

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for (1-200 characters, not blank, no control characters), e.g. `ci-pipeline`.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    /// The tenant the key acts for: omit for a new tenant (the key's id), or give an existing
    /// tenant's id to issue a second key for it (rotation). 1-64 of `A-Z a-z 0-9 . _ -`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant: Option<String>,
}

/// A key as listed (never the secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The tenant whose models, datasets and jobs this key sees.
    pub tenant: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
    /// When it was revoked; null while it works.
    pub revoked_at: Option<String>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> ApiKey {
        ApiKey {
            id: r.id,
            name: r.name,
            tenant: r.tenant_id,
            prefix: r.key_prefix,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A newly created key, with its secret (shown only this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// The secret: send it as `Authorization: Bearer <key>`. It cannot be shown again.
    pub key: String,
    pub created_at: String,
}

/// All keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

/// Create a tenant API key (admin only). The secret is in the response and nowhere else.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` is the secret, shown only now", body = CreatedKey,
            headers(("Location" = String, description = "URL of the key"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin key, or keys are off", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name or tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let name = super::models::validate_name(Some(body.name), "key")?;
    let id = uuid::Uuid::now_v7().to_string();
    let tenant = match body.tenant {
        Some(t) if valid_tenant_id(&t) => t,
        Some(_) => return Err(ApiError::validation("tenant", "must be 1-64 of A-Z a-z 0-9 . _ -")),
        None => id.clone(),
    };
    let key = generate_key();
    let row = ApiKeyRow {
        id: id.clone(),
        name,
        tenant_id: tenant,
        key_hash: hash_key(&key),
        key_prefix: key.chars().take(10).collect(),
        created_at: crate::time::now_rfc3339(),
        revoked_at: None,
    };
    keydb::insert_key(&st.db, &row).await?;
    tracing::info!(key_id = %id, tenant = %row.tenant_id, "API key created");
    let created = CreatedKey { id: row.id, name: row.name, tenant: row.tenant_id, key, created_at: row.created_at };
    let mut resp = (StatusCode::CREATED, Json(created)).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&format!("/v1/keys/{id}")).map_err(ApiError::internal)?);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// List tenant API keys (admin only; secrets are never shown).
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "Every key, newest first, revoked ones included", body = KeyList),
        (status = 403, description = "Not the admin key, or keys are off", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<KeyList>> {
    caller.require_admin()?;
    let rows = keydb::list_keys(&st.db).await?;
    Ok(Json(KeyList { items: rows.into_iter().map(ApiKey::from).collect() }))
}

/// Revoke a tenant API key (admin only). Requests with it are refused from now on; what its
/// tenant created stays (other keys of the tenant still see it).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 403, description = "Not the admin key, or keys are off", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    check_id("key", &id)?;
    if !keydb::revoke_key(&st.db, &id).await? {
        return Err(ApiError::not_found("key", &id));
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
