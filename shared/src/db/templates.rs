//! The template store: ZIPs content-addressed by their SHA-256, the templates each client keeps,
//! and the removal of templates nothing needs any more.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};

/// The id of a template: the lower-case hex SHA-256 of its bytes.
pub fn content_id(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores `bytes` under `id` (their `content_id`) unless the store holds them already.
pub async fn put(conn: &mut PgConnection, id: &str, bytes: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO templates (id, content, bytes) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(bytes)
    .bind(bytes.len() as i64)
    .execute(conn)
    .await
    .map(drop)
}

/// The bytes of template `id`, if the store holds it.
pub async fn content(exec: impl PgExecutor<'_>, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT content FROM templates WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}
