//! Cancelling a batch, shared by the cancel route and the dashboard: its queued items a chunk
//! per transaction (`db::batches::CANCEL_CHUNK`), in item order, so no transaction holds a large
//! batch's rows for long; the answer comes once none is left.

use provisioner_shared::db::{self, batches::BatchRow};
use sqlx::PgPool;
use uuid::Uuid;

/// The batch once its queued items are cancelled; `None` when `sees` has no such batch. Should
/// this stop half-way (the process stops, the database fails), the cancel is asked for already:
/// the dispatcher releases none of the items left, the workers' sweep cancels them, and asking
/// again goes on where this stopped.
pub(crate) async fn cancel(
    pool: &PgPool,
    id: Uuid,
    sees: Option<&str>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    // Forward from the last item cancelled (the items before it are not read again), then once
    // more from the start: an item running when the cursor passed it may be queued again since
    // (a transient fault's retry, a rescue). A retry of the batch is refused from the first
    // commit on (`retry::failed_items`).
    let mut after = -1;
    let mut from_start = false;
    loop {
        let mut tx = pool.begin().await?;
        let Some(done) =
            db::batches::cancel(&mut tx, id, sees, after, db::batches::CANCEL_CHUNK).await?
        else {
            return Ok(None);
        };
        tx.commit().await?;
        if done.more {
            after = done.last.unwrap_or(after);
        } else if after == -1 || from_start {
            return Ok(Some(done.batch));
        } else {
            (after, from_start) = (-1, true);
        }
    }
}
