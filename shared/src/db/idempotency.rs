//! Idempotency keys across routes: a key names one request of its client, a job's (a create of
//! any variant, an import) or a batch's. Each kind keeps its keys on its own rows (unique per
//! client there); a key one kind holds is refused to the other.

use sqlx::PgExecutor;

/// The kinds of request that hold idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHolder {
    Job,
    Batch,
}

impl KeyHolder {
    fn lookup(self) -> &'static str {
        match self {
            Self::Job => {
                "SELECT EXISTS (SELECT FROM jobs WHERE client_id = $1 AND idempotency_key = $2)"
            }
            Self::Batch => {
                "SELECT EXISTS (SELECT FROM batches WHERE client_id = $1 AND idempotency_key = $2)"
            }
        }
    }
}

/// Whether the client gave a request of kind `holder` this key.
pub async fn key_taken(
    exec: impl PgExecutor<'_>,
    holder: KeyHolder,
    client_id: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(holder.lookup())
        .bind(client_id)
        .bind(key)
        .fetch_one(exec)
        .await
}
