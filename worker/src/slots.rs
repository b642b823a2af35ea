//! The process's job slots: at most `worker_concurrency` jobs run at once, and a free slot goes
//! to the first lane with a delivery waiting (`queue::Lane`): a client's first few single jobs,
//! then the single jobs past them, then batch items. So one client's many creates never hold
//! back another client's few, and a client's backlog of batch items never holds back a job
//! submitted on its own.

use std::sync::{Arc, Mutex};

use provisioner_shared::queue::Lane;
use tokio::sync::Notify;

/// Lanes, the first served first.
const LANES: usize = 3;

/// Slots shared by every delivery of the process, across broker sessions.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Deliveries waiting for a slot, by lane: a delivery waits while one of an earlier lane
    /// does.
    waiting: [usize; LANES],
}

impl State {
    fn may_take(&self, lane: usize) -> bool {
        self.free > 0 && self.waiting[..lane].iter().all(|&n| n == 0)
    }
}

fn index(lane: Lane) -> usize {
    match lane {
        Lane::Interactive => 0,
        Lane::Backlog => 1,
        Lane::Batch => 2,
    }
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

/// A delivery counted among its lane's waiters until it holds a slot or gives up.
struct Waiting<'a>(&'a Slots, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("slots").waiting[self.1] -= 1;
        // Later lanes may have waited for this one only.
        self.0.freed.notify_waiters();
    }
}

impl Slots {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: n,
                waiting: [0; LANES],
            }),
            freed: Notify::new(),
        })
    }

    /// Waits for a slot: a delivery takes a free one unless a delivery of an earlier lane waits.
    pub(crate) async fn acquire(self: &Arc<Self>, lane: Lane) -> Slot {
        let lane = index(lane);
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot freed in between is not missed.
            freed.as_mut().enable();
            {
                let mut state = self.state.lock().expect("slots");
                if state.may_take(lane) {
                    state.free -= 1;
                    drop(state);
                    drop(waiting);
                    return Slot(self.clone());
                }
                if waiting.is_none() {
                    state.waiting[lane] += 1;
                    waiting = Some(Waiting(self, lane));
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

    /// Waits until `lane` has a delivery waiting.
    async fn until_waiting(slots: &Slots, lane: Lane) {
        while slots.state.lock().unwrap().waiting[index(lane)] == 0 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_first_lane_with_a_delivery_waiting() {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Batch).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |lane: Lane| {
            let (slots, order) = (slots.clone(), order.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(lane).await;
                order.lock().unwrap().push(lane);
                drop(slot);
            })
        };
        // They arrive last lane first.
        let batch = spawn(Lane::Batch);
        until_waiting(&slots, Lane::Batch).await;
        let backlog = spawn(Lane::Backlog);
        until_waiting(&slots, Lane::Backlog).await;
        let interactive = spawn(Lane::Interactive);
        until_waiting(&slots, Lane::Interactive).await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), async {
            interactive.await.unwrap();
            backlog.await.unwrap();
            batch.await.unwrap();
        })
        .await
        .expect("all ran");
        assert_eq!(
            *order.lock().unwrap(),
            [Lane::Interactive, Lane::Backlog, Lane::Batch]
        );
        assert_eq!(slots.free(), 1);
        assert_eq!(slots.state.lock().unwrap().waiting, [0; LANES]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_block_later_lanes() {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Batch).await;
        for lane in [Lane::Interactive, Lane::Backlog] {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(20), slots.acquire(lane)).await;
            assert!(gave_up.is_err());
        }
        assert_eq!(slots.state.lock().unwrap().waiting, [0; LANES]);
        drop(held);
        let _slot = tokio::time::timeout(Duration::from_secs(5), slots.acquire(Lane::Batch))
            .await
            .expect("a batch item takes the free slot");
    }
}
