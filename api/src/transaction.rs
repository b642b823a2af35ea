//! Ending a transaction that holds advisory locks before the answer goes out.

use sqlx::{Postgres, Transaction};

use crate::error::ApiError;

/// Ends `tx` as `outcome` says, before the answer goes out: committed when it is `Ok`, rolled
/// back otherwise. A transaction dropped unended is rolled back only once its connection goes
/// back to the pool, in a task of its own; until then it holds its advisory locks (a tenant's,
/// a client's batch admission), and a request that follows the answer at once could find them
/// taken (`503` to one with `lockTimeout=0`).
pub(crate) async fn end<T>(
    tx: Transaction<'static, Postgres>,
    outcome: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match outcome {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "cannot roll back after a refusal; its locks may outlive the answer");
            }
            Err(e)
        }
    }
}
