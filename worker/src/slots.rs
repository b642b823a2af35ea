//! The process's job slots: at most `worker_concurrency` jobs run at once. A free slot goes to
//! an interactive delivery (a client's first few single jobs) when one waits, so one client's
//! many creates never hold back another client's few, and a backlog of batch items never holds
//! back a job submitted on its own. The two later lanes (single jobs past a client's first few,
//! batch items) take turns when both wait, so neither one client's many creates nor another
//! client's batch starves the other (a client's own batch items are not released while it has
//! single jobs past its first few waiting: `db::batches::release`). A delivery of a later lane
//! that has waited `OVERDUE` goes before interactive work, so a stream of it that keeps every
//! slot busy never leaves one waiting toward the broker's consumer timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::queue::Lane;
use tokio::{sync::Notify, time::Instant};

/// Lanes, the first served first.
const LANES: usize = 3;
const INTERACTIVE: usize = 0;

/// How long a delivery of a later lane waits before it goes ahead of interactive work: far
/// below the broker's consumer timeout (`deploy/rabbitmq.conf`: 2 h 5 min), far above a job.
const OVERDUE: Duration = Duration::from_secs(600);

/// Slots shared by every delivery of the process, across broker sessions.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Deliveries waiting for a slot, by lane.
    waiting: [usize; LANES],
    /// When each waiting delivery of the later lanes began to wait, by arrival.
    since: BTreeMap<u64, Instant>,
    /// The next arrival's number.
    arrivals: u64,
    /// The later lane whose turn is next when both wait.
    later_turn: usize,
}

impl State {
    /// Whether a delivery of a later lane has waited `OVERDUE`.
    fn later_overdue(&self) -> bool {
        self.since
            .values()
            .next()
            .is_some_and(|at| at.elapsed() >= OVERDUE)
    }

    /// Whether a delivery of `lane` may take a free slot now.
    fn may_take(&self, lane: usize) -> bool {
        if self.free == 0 {
            return false;
        }
        let overdue = self.later_overdue();
        if lane == INTERACTIVE {
            return !overdue;
        }
        if self.waiting[INTERACTIVE] > 0 && !overdue {
            return false;
        }
        // The two later lanes take turns while both wait.
        let other = if lane == 1 { 2 } else { 1 };
        self.waiting[other] == 0 || self.later_turn == lane
    }

    fn take(&mut self, lane: usize) {
        self.free -= 1;
        if lane != INTERACTIVE {
            self.later_turn = if lane == 1 { 2 } else { 1 };
        }
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

/// A delivery counted among its lane's waiters (with its arrival number) until it holds a slot
/// or gives up.
struct Waiting<'a>(&'a Slots, usize, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("slots");
        state.waiting[self.1] -= 1;
        state.since.remove(&self.2);
        drop(state);
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
                since: BTreeMap::new(),
                arrivals: 0,
                later_turn: 1,
            }),
            freed: Notify::new(),
        })
    }

    /// Waits for a slot: a delivery takes a free one when its lane's turn allows (`may_take`).
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
                    state.take(lane);
                    let more = state.free > 0;
                    drop(state);
                    drop(waiting);
                    if more {
                        // The take may have changed whose turn it is for the slots left.
                        self.freed.notify_waiters();
                    }
                    return Slot(self.clone());
                }
                if waiting.is_none() {
                    let arrival = state.arrivals;
                    state.arrivals += 1;
                    state.waiting[lane] += 1;
                    if lane != INTERACTIVE {
                        state.since.insert(arrival, Instant::now());
                    }
                    waiting = Some(Waiting(self, lane, arrival));
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

    /// Takes the slot in turn: every waiting delivery of `lanes`, spawned in that order, records
    /// its lane once it holds the slot; returns the order in which they got it.
    async fn order_of(lanes: &[Lane]) -> Vec<Lane> {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Interactive).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, &lane) in lanes.iter().enumerate() {
            let (slots_, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = slots_.acquire(lane).await;
                order.lock().unwrap().push(lane);
                drop(slot);
            }));
            while slots.state.lock().unwrap().waiting.iter().sum::<usize>() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await
        .expect("all ran");
        order.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn the_backlog_and_batch_items_take_turns() {
        let order = order_of(&[
            Lane::Batch,
            Lane::Batch,
            Lane::Batch,
            Lane::Backlog,
            Lane::Backlog,
            Lane::Backlog,
        ])
        .await;
        use Lane::{Backlog, Batch};
        assert_eq!(order, [Backlog, Batch, Backlog, Batch, Backlog, Batch]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_item_that_waited_ten_minutes_goes_before_interactive_work() {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Interactive).await;
        let batch = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Lane::Batch).await }
        });
        until_waiting(&slots, Lane::Batch).await;
        tokio::time::advance(OVERDUE).await;
        let interactive = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Lane::Interactive).await }
        });
        until_waiting(&slots, Lane::Interactive).await;
        drop(held);
        let slot = batch.await.unwrap();
        assert!(!interactive.is_finished());
        drop(slot);
        drop(interactive.await.unwrap());
        assert_eq!(slots.free(), 1);
        assert!(slots.state.lock().unwrap().since.is_empty());
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
