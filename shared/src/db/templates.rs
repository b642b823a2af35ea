//! The template store: ZIPs content-addressed by their SHA-256, the templates each client keeps,
//! and the removal of templates nothing needs any more.
//!
//! A template stays while a client keeps it (`client_templates`), a queued or running job reads
//! it (`jobs.template_id`) or a batch pins it (`batch_templates`, `batch_downloads`). Every one of
//! those references is a foreign key, so a reference inserted while the sweeper deletes makes
//! one of the two fail: `put` locks the row it stores against deletion until its transaction
//! ends, and `remove_unused` leaves a template a reference took meanwhile for its next pass.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool};

/// The id of a template: the lower-case hex SHA-256 of its bytes.
pub fn content_id(bytes: &[u8]) -> String {
    hex_id(&Sha256::digest(bytes))
}

/// A SHA-256 digest as a template id (for callers that hash as the bytes arrive).
pub fn hex_id(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Is `text` shaped like a template id (64 lower-case hex digits)?
pub fn is_template_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How often `put` tries again when the sweeper removed the template between its insert and its
/// lock (each retry needs another sweep to win the same race).
const PUT_TRIES: usize = 3;

/// Stores `bytes` under `id` (their `content_id`) unless the store holds them already, and locks
/// the template against removal until the caller's transaction ends (`FOR KEY SHARE`: other
/// transactions may still read, store and reference it).
pub async fn put(conn: &mut PgConnection, id: &str, bytes: &[u8]) -> Result<(), sqlx::Error> {
    // Stored already (thousands of creates may upload one template): the bytes need not travel.
    if lock(&mut *conn, id).await? {
        return Ok(());
    }
    for _ in 0..PUT_TRIES {
        sqlx::query(
            "INSERT INTO templates (id, content, bytes) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .execute(&mut *conn)
        .await?;
        // Stored meanwhile by another transaction, it may have been removed since: lock it,
        // or store it again.
        if lock(&mut *conn, id).await? {
            return Ok(());
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "template {id} was removed {PUT_TRIES} times while it was stored"
    )))
}

/// Locks template `id` against removal until the transaction ends; `false` if it is not stored.
async fn lock(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM templates WHERE id = $1 FOR KEY SHARE")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map(|found| found.is_some())
}

/// The bytes of template `id`, if the store holds it.
pub async fn content(exec: impl PgExecutor<'_>, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT content FROM templates WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// What checking a template as a create template found out about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub db_version: i64,
    pub users: i32,
    pub objects: i32,
    /// Access-number ranges.
    pub access_numbers: i32,
}

/// Records what checking template `id` found.
pub async fn describe(conn: &mut PgConnection, id: &str, facts: &Facts) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE templates SET db_version = $2, users = $3, objects = $4, access_numbers = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(facts.db_version)
    .bind(facts.users)
    .bind(facts.objects)
    .bind(facts.access_numbers)
    .execute(conn)
    .await
    .map(drop)
}

/// Client `client_id` keeps template `id` under `name`; `false` if it kept it already (its
/// keep, name included, is left as it was).
pub async fn keep(
    conn: &mut PgConnection,
    client_id: &str,
    id: &str,
    name: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO client_templates (client_id, template_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (client_id, template_id) DO NOTHING",
    )
    .bind(client_id)
    .bind(id)
    .bind(name)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1)
}

/// What client `client_id` keeps in the store: how many templates, and their bytes together.
/// Locks the client's row first, so concurrent stores of one client count one after another
/// (until the transaction ends). Reads at most as many rows as the client keeps, which its
/// quota bounds.
pub async fn kept_by(conn: &mut PgConnection, client_id: &str) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query("SELECT 1 FROM api_clients WHERE id = $1 FOR NO KEY UPDATE")
        .bind(client_id)
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(t.bytes), 0)::bigint
         FROM client_templates c JOIN templates t ON t.id = c.template_id
         WHERE c.client_id = $1",
    )
    .bind(client_id)
    .fetch_one(conn)
    .await
}

/// Client `client_id` no longer keeps template `id`; `false` if it did not keep it. Other
/// clients' keeps, and jobs that read the template, are not affected.
pub async fn forget(
    exec: impl PgExecutor<'_>,
    client_id: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM client_templates WHERE client_id = $1 AND template_id = $2")
        .bind(client_id)
        .bind(id)
        .execute(exec)
        .await
        .map(|done| done.rows_affected() == 1)
}

/// Who reads the store: a client sees the templates it keeps; an operator every client's.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub client_id: &'a str,
    pub operator: bool,
}

impl<'a> Viewer<'a> {
    /// Whose keeps this viewer sees (`None`: everyone's).
    pub(crate) fn owner(&self) -> Option<&'a str> {
        (!self.operator).then_some(self.client_id)
    }
}

/// A template as a client keeps it: its keep (who, under which name, since when) and what the
/// store knows of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeptRow {
    pub template_id: String,
    pub client_id: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub bytes: i64,
    pub db_version: Option<i64>,
    pub users: Option<i32>,
    pub objects: Option<i32>,
    pub access_numbers: Option<i32>,
}

const KEPT_COLUMNS: &str = "k.template_id, k.client_id, k.name, k.created_at, t.bytes, \
     t.db_version, t.users, t.objects, t.access_numbers";

impl Viewer<'_> {
    /// The condition on a keep `k` that this viewer sees, `owner` being the parameter bound to
    /// `owner()`: a client's is a lookup of its own keeps by their key. (One statement for both,
    /// `$2 IS NULL OR ...`, got a generic plan after five runs that walked every client's keep
    /// of a template.)
    fn keeps_seen(&self, owner: &str) -> String {
        if self.operator {
            format!("{owner}::text IS NULL")
        } else {
            format!("k.client_id = {owner}")
        }
    }
}

/// Template `id` as `viewer` sees it: its own keep, or (an operator) the earliest client's.
pub async fn find(
    exec: impl PgExecutor<'_>,
    id: &str,
    viewer: Viewer<'_>,
) -> Result<Option<KeptRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEPT_COLUMNS} FROM client_templates k JOIN templates t ON t.id = k.template_id
         WHERE k.template_id = $1 AND {}
         ORDER BY k.client_id = $3 DESC, k.created_at, k.client_id
         LIMIT 1",
        viewer.keeps_seen("$2")
    ))
    .bind(id)
    .bind(viewer.owner())
    .bind(viewer.client_id)
    .fetch_optional(exec)
    .await
}

/// Can `viewer` name template `id` in a create? If so, locks it against removal until the
/// transaction ends, so the job that names it can be recorded.
pub async fn lock_visible(
    conn: &mut PgConnection,
    id: &str,
    viewer: Viewer<'_>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, i32>(&format!(
        "SELECT 1 FROM templates t
         WHERE t.id = $1 AND EXISTS (SELECT 1 FROM client_templates k
                                     WHERE k.template_id = t.id AND {})
         FOR KEY SHARE OF t",
        viewer.keeps_seen("$2")
    ))
    .bind(id)
    .bind(viewer.owner())
    .fetch_optional(conn)
    .await
    .map(|found| found.is_some())
}

/// The sort key of the template listing: the keep's creation time, template id, client id.
pub type ListKey = (DateTime<Utc>, String, String);

/// Templates `viewer` sees, newest keep first (an operator sees one item per client's keep),
/// after `after` (the key of the last item already seen), at most `limit`.
pub async fn list(
    exec: impl PgExecutor<'_>,
    viewer: Viewer<'_>,
    after: Option<&ListKey>,
    limit: i64,
) -> Result<Vec<KeptRow>, sqlx::Error> {
    // A client's listing filters on `client_id` alone, so its index serves the order.
    let whose = viewer.keeps_seen("$1");
    sqlx::query_as(&format!(
        "SELECT {KEPT_COLUMNS} FROM client_templates k JOIN templates t ON t.id = k.template_id
         WHERE {whose}
           AND ($2::timestamptz IS NULL OR (k.created_at, k.template_id, k.client_id) < ($2, $3, $4))
         ORDER BY k.created_at DESC, k.template_id DESC, k.client_id DESC
         LIMIT $5"
    ))
    .bind(viewer.owner())
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1.as_str()))
    .bind(after.map(|a| a.2.as_str()))
    .bind(limit)
    .fetch_all(exec)
    .await
}

/// A template nothing references: no client keeps it, no queued or running job reads it, no
/// batch pins it (`t` is the template).
const UNUSED: &str = "NOT EXISTS (SELECT 1 FROM client_templates k WHERE k.template_id = t.id)
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.template_id = t.id)
     AND NOT EXISTS (SELECT 1 FROM batch_templates b WHERE b.template_id = t.id)
     AND NOT EXISTS (SELECT 1 FROM batch_downloads d WHERE d.template_id = t.id)";

/// Removes at most `limit` templates nothing references; returns how many went. Each goes in a
/// statement of its own: one that a new reference took meanwhile (the delete then violates its
/// foreign key) stays, for the next pass to judge again.
pub async fn remove_unused(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT t.id FROM templates t WHERE {UNUSED} ORDER BY t.created_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut removed = 0;
    for id in ids {
        if remove_if_unused(pool, &id).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes template `id` if nothing references it (in a statement of its own: a reference
/// taken meanwhile makes the delete fail, and the template stays). Whether it went.
pub async fn remove_if_unused(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(&format!(
        "DELETE FROM templates t WHERE t.id = $1 AND {UNUSED}"
    ))
    .bind(id)
    .execute(pool)
    .await;
    match deleted {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(e) if is_foreign_key_violation(&e) => {
            tracing::debug!(template.id = %id, "a template being removed was taken meanwhile; kept");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "23503")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_lower_case_hex_sha256_of_the_bytes() {
        let id = content_id(b"abc");
        assert_eq!(
            id,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_template_id(&id));
        assert!(!is_template_id(&id.to_uppercase()));
        assert!(!is_template_id(&id[1..]));
        assert!(!is_template_id(&format!("{}g", &id[1..])));
    }
}
