//! Bounds on the requests that hold database connections for long: exports streaming their
//! archive (two connections each, for as long as the client reads) and requests waiting for a
//! tenant's lock (one each, for up to their `lockTimeout`). Past a bound a request waits a
//! moment for a slot, then is answered `503` with `Retry-After`, so they never take the whole
//! pool from the other routes.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Longest wait for a slot when all are taken (never longer than the request's own bound).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// The `Retry-After` of a request refused for want of a slot, seconds.
const RETRY_AFTER: u64 = 5;

/// A fixed number of slots for one kind of long holder.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    free: Arc<Semaphore>,
    /// What the holders do, for the refusal: "exports", "requests waiting for a tenant's lock".
    what: &'static str,
}

impl Slots {
    pub(crate) fn new(slots: usize, what: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(slots)),
            what,
        }
    }

    /// A slot, waiting at most `within` (and `SLOT_WAIT`) for one; `503` when none frees.
    pub(crate) async fn take(&self, within: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
        // A free slot is taken at the first poll, before the timeout looks at its clock.
        let taken =
            tokio::time::timeout(within.min(SLOT_WAIT), self.free.clone().acquire_owned()).await;
        taken
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| ApiError::Busy {
                detail: format!(
                    "the server has as many {} as it allows at once; retry later",
                    self.what
                ),
                retry_after: RETRY_AFTER,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_freed_within_the_wait_is_taken_and_none_past_it_is_503() {
        let slots = Slots::new(1, "exports");
        let held = slots.take(Duration::ZERO).await.unwrap();
        let refused = slots.take(Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(&refused, ApiError::Busy { detail, retry_after: 5 } if detail.contains("exports")),
            "{refused:?}"
        );
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(Duration::from_secs(3600)).await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(
            waiting.await.unwrap(),
            "the freed slot goes to the waiting request"
        );
    }
}
