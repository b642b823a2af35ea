//! OAuth clients and bearer tokens. Secrets are Argon2id hashes; tokens are stored as SHA-256
//! digests (they are 256-bit random values, so a fast digest is enough).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Announces a change to clients or tokens that may end a token before its expiry (triggers of
/// migration 20261208000001): API processes forget the tokens they kept.
pub(crate) const NOTIFY_CHANNEL: &str = "provisioner_auth";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What `insert` does when the client id exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Fail with a unique violation (operators making a new client).
    Refuse,
    /// Leave it as it is (the bootstrap client, made by another API starting at once).
    Keep,
}

pub async fn insert(
    exec: impl PgExecutor<'_>,
    id: &str,
    name: &str,
    secret_hash: &str,
    scopes: &[String],
    on_existing: OnExisting,
) -> Result<(), sqlx::Error> {
    let sql = match on_existing {
        OnExisting::Refuse => {
            "INSERT INTO api_clients (id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)"
        }
        OnExisting::Keep => {
            "INSERT INTO api_clients (id, name, secret_hash, scopes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING"
        }
    };
    sqlx::query(sql)
        .bind(id)
        .bind(name)
        .bind(secret_hash)
        .bind(scopes)
        .execute(exec)
        .await
        .map(drop)
}

/// A client, revoked or not.
pub async fn find(exec: impl PgExecutor<'_>, id: &str) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_clients WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// An active (not revoked) client.
pub async fn find_active(
    exec: impl PgExecutor<'_>,
    id: &str,
) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_clients WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .fetch_optional(exec)
        .await
}

pub async fn list(exec: impl PgExecutor<'_>) -> Result<Vec<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_clients ORDER BY created_at, id")
        .fetch_all(exec)
        .await
}

/// Gives an active client these scopes (its secret's hash kept).
pub async fn set_scopes(
    exec: impl PgExecutor<'_>,
    id: &str,
    scopes: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_clients SET scopes = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(scopes)
        .execute(exec)
        .await
        .map(drop)
}

/// Gives an active client a new secret's hash and these scopes, if its hash is still `read`
/// (`false`: changed or revoked meanwhile, by another process).
pub async fn replace_secret(
    exec: impl PgExecutor<'_>,
    id: &str,
    read: &str,
    secret_hash: &str,
    scopes: &[String],
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE api_clients SET secret_hash = $3, scopes = $4
         WHERE id = $1 AND secret_hash = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(read)
    .bind(secret_hash)
    .bind(scopes)
    .execute(exec)
    .await
    .map(|done| done.rows_affected() == 1)
}

/// Ends every token of the client (its secret changed: what the old one got ends with it).
pub async fn end_tokens(exec: impl PgExecutor<'_>, id: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM access_tokens WHERE client_id = $1")
        .bind(id)
        .execute(exec)
        .await
        .map(|done| done.rows_affected())
}

/// Revokes the client and ends its tokens; `false` if there is no such active client.
pub async fn revoke(conn: &mut sqlx::PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_clients SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    end_tokens(&mut *conn, id).await?;
    Ok(done.rows_affected() == 1)
}

/// Stores a token that lives `ttl` from now by PostgreSQL's clock, the one that checks it: no
/// skew between the API's host and the database lengthens or shortens its life. Only while the
/// client is active with the secret hash `verified` (the one its secret was checked against):
/// `false`, and no token, when its secret changed or it was revoked meanwhile. The client's
/// row is share-locked until the commit, so a change of secret (`end_tokens` in its
/// transaction) either waits for this token and ends it, or comes first and this stores none.
pub async fn insert_token(
    exec: impl PgExecutor<'_>,
    token_hash: &[u8],
    client_id: &str,
    verified: &str,
    scopes: &[String],
    ttl: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, client_id, scopes, expires_at)
         SELECT $1, c.id, $3, now() + make_interval(secs => $4)
         FROM api_clients c
         WHERE c.id = $2 AND c.secret_hash = $5 AND c.revoked_at IS NULL
         FOR SHARE OF c",
    )
    .bind(token_hash)
    .bind(client_id)
    .bind(scopes)
    .bind(ttl.as_secs_f64())
    .bind(verified)
    .execute(exec)
    .await
    .map(|done| done.rows_affected() == 1)
}

/// A token's client, scopes and expiry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenGrant {
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Seconds the token had left when it was read, by PostgreSQL's clock (the one that decides
    /// expiry).
    pub seconds_left: f64,
}

/// A token's scopes that its client still holds (a token never keeps a scope its client lost
/// after it was issued), in the token's order; SQL over `access_tokens t JOIN api_clients c`.
const GRANTED_SCOPES: &str = "ARRAY(SELECT s FROM unnest(t.scopes) WITH ORDINALITY AS g(s, n) WHERE s = ANY(c.scopes) ORDER BY n)";

/// The grant of an unexpired token (valid strictly before its `expires_at`) of an active client.
pub async fn find_token(
    exec: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<TokenGrant>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT t.client_id, {GRANTED_SCOPES} AS scopes,
                extract(epoch FROM t.expires_at - now())::float8 AS seconds_left
         FROM access_tokens t
         JOIN api_clients c ON c.id = t.client_id
         WHERE t.token_hash = $1 AND t.expires_at > now() AND c.revoked_at IS NULL"
    ))
    .bind(token_hash)
    .fetch_optional(exec)
    .await
}
