//! The process's job slots: at most `worker_concurrency` jobs run at once, and a free slot goes
//! to interactive work (single creates, imports) before batch items, so a client's backlog of
//! batch items never holds back a job submitted on its own.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Slots shared by every delivery of the process, across broker sessions.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Interactive deliveries waiting for a slot: batch items wait while any does.
    interactive_waiting: usize,
}

/// A slot held; dropping it frees it.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.state.lock().expect("slots").free += 1;
        self.0.freed.notify_waiters();
    }
}

/// An interactive delivery counted among the waiters until it holds a slot or gives up.
struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("slots").interactive_waiting -= 1;
        // Batch items may have waited for this one only.
        self.0.freed.notify_waiters();
    }
}

impl Slots {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: n,
                interactive_waiting: 0,
            }),
            freed: Notify::new(),
        })
    }

    /// Waits for a slot: an interactive delivery takes the first one free; a batch item waits
    /// also while an interactive delivery does.
    pub(crate) async fn acquire(self: &Arc<Self>, interactive: bool) -> Slot {
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot freed in between is not missed.
            freed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("slots");
                if state.free > 0 && (interactive || state.interactive_waiting == 0) {
                    state.free -= 1;
                    drop(state);
                    drop(waiting);
                    return Slot(self.clone());
                }
                if interactive && waiting.is_none() {
                    state.interactive_waiting += 1;
                    waiting = Some(Waiting(self));
                }
            }
            freed.await;
        }
    }

    /// Slots free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.state.lock().expect("slots").free
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_freed_slot_goes_to_interactive_work_before_waiting_batch_items() {
        let slots = Slots::new(1);
        let held = slots.acquire(false).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let batch = tokio::spawn({
            let (slots, order) = (slots.clone(), order.clone());
            async move {
                let _slot = slots.acquire(false).await;
                order.lock().unwrap().push("batch");
            }
        });
        // The batch item is waiting before the interactive delivery arrives.
        tokio::task::yield_now().await;
        let interactive = tokio::spawn({
            let (slots, order) = (slots.clone(), order.clone());
            async move {
                let slot = slots.acquire(true).await;
                order.lock().unwrap().push("interactive");
                drop(slot);
            }
        });
        while slots.state.lock().unwrap().interactive_waiting == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), async {
            interactive.await.unwrap();
            batch.await.unwrap();
        })
        .await
        .expect("both ran");
        assert_eq!(*order.lock().unwrap(), ["interactive", "batch"]);
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test]
    async fn an_interactive_waiter_that_gives_up_does_not_block_batch_items() {
        let slots = Slots::new(1);
        let held = slots.acquire(false).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.acquire(true)).await;
        assert!(gave_up.is_err());
        assert_eq!(slots.state.lock().unwrap().interactive_waiting, 0);
        drop(held);
        let _slot = tokio::time::timeout(Duration::from_secs(5), slots.acquire(false))
            .await
            .expect("a batch item takes the free slot");
    }
}
