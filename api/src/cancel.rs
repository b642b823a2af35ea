//! Cancelling a batch, shared by the cancel route and the dashboard: its queued items a chunk
//! per transaction (`db::batches::CANCEL_CHUNK`), so no transaction holds a large batch's rows
//! for long; the answer comes once none is left.

use provisioner_shared::db::{self, batches::BatchRow};
use sqlx::PgPool;
use uuid::Uuid;

/// The batch once its queued items are cancelled; `None` when `sees` has no such batch. Should
/// this stop half-way (the process stops, the database fails), the cancel is asked for already:
/// the dispatcher releases none of the items left and cancels those it holds, and asking again
/// goes on where this stopped.
pub(crate) async fn cancel(
    pool: &PgPool,
    id: Uuid,
    sees: Option<&str>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    loop {
        let mut tx = pool.begin().await?;
        let Some(done) = db::batches::cancel(&mut tx, id, sees, db::batches::CANCEL_CHUNK).await?
        else {
            return Ok(None);
        };
        tx.commit().await?;
        if !done.more {
            return Ok(Some(done.batch));
        }
    }
}
