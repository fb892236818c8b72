//! SQL of tenant API keys (`api_keys`, migration 0002).

use sqlx::FromRow;

use super::Db;
use crate::time::now_rfc3339;

#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

const KEY_COLS: &str = "id, name, tenant_id, key_hash, key_prefix, created_at, revoked_at";

pub async fn insert_key(db: &Db, k: &ApiKeyRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO api_keys ({KEY_COLS}) VALUES (?,?,?,?,?,?,?)"))
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.tenant_id)
        .bind(&k.key_hash)
        .bind(&k.key_prefix)
        .bind(&k.created_at)
        .bind(&k.revoked_at)
        .execute(db)
        .await?;
    Ok(())
}

/// The live (not revoked) key with this hash.
pub async fn find_active_key(db: &Db, key_hash: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {KEY_COLS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL"))
        .bind(key_hash)
        .fetch_optional(db)
        .await
}

/// Every key, newest first (revoked ones included).
pub async fn list_keys(db: &Db) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {KEY_COLS} FROM api_keys ORDER BY created_at DESC, id DESC")).fetch_all(db).await
}

/// Revokes a key; `false` when there is no such key. Revoking twice is harmless.
pub async fn revoke_key(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
        .bind(now_rfc3339())
        .bind(id)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}
