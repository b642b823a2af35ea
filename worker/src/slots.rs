//! The process's job slots: at most `worker_concurrency` jobs run at once. A free slot goes to
//! an interactive delivery (a client's first few single jobs) when one waits, so one client's
//! many creates never hold back another client's few, and a backlog of batch items never holds
//! back a job submitted on its own. The later lanes (single jobs past a client's first few, in
//! the backlog's tiers, and batch items) take turns, the backlog's lowest tier waiting against
//! batch items, so neither one client's many creates nor another client's batch starves the
//! other (a client's own batch items are not released while it has single jobs past its first
//! few waiting: `db::batches::release`); a backlog tier goes only when no lower one waits, so a
//! client's sixth job goes before another's thousandth. The oldest delivery of a later lane,
//! once it has waited `OVERDUE`, goes before the other later lanes, and once it has waited
//! `LATE`, before interactive work too, so a stream of work that keeps every slot busy never
//! leaves one waiting toward the broker's consumer timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::queue::Lane;
use tokio::{sync::Notify, time::Instant};

/// Lanes, the first served first (`Lane::index`).
const LANES: usize = Lane::COUNT;
const INTERACTIVE: usize = 0;
const BATCH: usize = LANES - 1;
/// The backlog's tiers, the lowest first.
const BACKLOG: std::ops::Range<usize> = 1..BATCH;

/// How long the oldest delivery of a later lane waits before it goes ahead of the other later
/// lanes (lower backlog tiers, batch items): far above a job.
const OVERDUE: Duration = Duration::from_secs(600);

/// How long it waits before it goes ahead of interactive work too: far below the broker's
/// consumer timeout (`deploy/rabbitmq.conf`: 2 h 5 min). A worker holds up to its concurrency
/// from each later lane's queue; going ahead of interactive work at `OVERDUE` would let a worker
/// whose later lanes are all full give the next several slots to overdue deliveries.
const LATE: Duration = Duration::from_secs(1800);

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
    /// When each waiting delivery of the later lanes began to wait, and its lane, by arrival.
    since: BTreeMap<u64, (Instant, usize)>,
    /// The next arrival's number.
    arrivals: u64,
    /// Whether batch items have the turn when both they and the backlog wait.
    batch_turn: bool,
}

impl State {
    /// The arrival of the oldest delivery of a later lane and how long it has waited.
    fn oldest_later(&self) -> Option<(u64, Duration)> {
        self.since
            .iter()
            .next()
            .map(|(&arrival, (at, _))| (arrival, at.elapsed()))
    }

    /// Whether a delivery of `lane` (waiting since `arrival`, once it has waited) may take a
    /// free slot now.
    fn may_take(&self, lane: usize, arrival: Option<u64>) -> bool {
        if self.free == 0 {
            return false;
        }
        match self.oldest_later() {
            Some((oldest, waited)) if waited >= LATE => return arrival == Some(oldest),
            Some((oldest, waited)) if waited >= OVERDUE => {
                return lane == INTERACTIVE
                    || (self.waiting[INTERACTIVE] == 0 && arrival == Some(oldest));
            }
            _ => {}
        }
        if lane == INTERACTIVE {
            return true;
        }
        if self.waiting[INTERACTIVE] > 0 {
            return false;
        }
        let backlog_waits = self.waiting[BACKLOG].iter().any(|&n| n > 0);
        if lane == BATCH {
            return !backlog_waits || self.batch_turn;
        }
        // A backlog tier: none lower waiting, and the backlog's turn when batch items wait.
        self.waiting[BACKLOG.start..lane].iter().all(|&n| n == 0)
            && (self.waiting[BATCH] == 0 || !self.batch_turn)
    }

    fn take(&mut self, lane: usize) {
        self.free -= 1;
        if lane != INTERACTIVE {
            self.batch_turn = lane != BATCH;
        }
    }
}

fn index(lane: Lane) -> usize {
    lane.index()
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
                batch_turn: false,
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
                if state.may_take(lane, waiting.as_ref().map(|w: &Waiting<'_>| w.2)) {
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
                        state.since.insert(arrival, (Instant::now(), lane));
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
        let backlog = spawn(Lane::Backlog(0));
        until_waiting(&slots, Lane::Backlog(0)).await;
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
            [Lane::Interactive, Lane::Backlog(0), Lane::Batch]
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
            Lane::Backlog(0),
            Lane::Backlog(0),
            Lane::Backlog(0),
        ])
        .await;
        use Lane::{Backlog, Batch};
        assert_eq!(
            order,
            [Backlog(0), Batch, Backlog(0), Batch, Backlog(0), Batch]
        );
    }

    #[tokio::test]
    async fn a_backlog_tier_goes_only_when_no_lower_one_waits() {
        use Lane::{Backlog, Batch};
        // Arrived highest tier first; batch items still take every other turn.
        let order = order_of(&[Backlog(5), Backlog(5), Backlog(2), Backlog(0), Batch, Batch]).await;
        assert_eq!(
            order,
            [Backlog(0), Batch, Backlog(2), Batch, Backlog(5), Backlog(5)]
        );
    }

    /// One slot held while a delivery of `first` waits `waited`, then one of `second` arrives:
    /// the lane of the one that takes the slot once it frees (the other takes it next).
    async fn first_to_take(first: Lane, waited: Duration, second: Lane) -> Lane {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Interactive).await;
        let wait = |lane: Lane| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(lane).await })
        };
        let mut a = wait(first);
        until_waiting(&slots, first).await;
        tokio::time::advance(waited).await;
        let mut b = wait(second);
        until_waiting(&slots, second).await;
        drop(held);
        let (slot, first_took) = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::select! {
                slot = &mut a => (slot.unwrap(), true),
                slot = &mut b => (slot.unwrap(), false),
            }
        })
        .await
        .expect("a waiting delivery takes the freed slot");
        drop(slot);
        let next = if first_took { b.await } else { a.await };
        drop(next.unwrap());
        assert_eq!(slots.free(), 1);
        assert!(slots.state.lock().unwrap().since.is_empty());
        if first_took { first } else { second }
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_delivery_that_waited_ten_minutes_goes_before_lower_tiers() {
        use Lane::Backlog;
        assert_eq!(
            first_to_take(Backlog(5), OVERDUE - Duration::from_secs(1), Backlog(0)).await,
            Backlog(0)
        );
        assert_eq!(
            first_to_take(Backlog(5), OVERDUE, Backlog(0)).await,
            Backlog(5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_item_that_waited_ten_minutes_still_gives_way_to_interactive_work() {
        assert_eq!(
            first_to_take(Lane::Batch, OVERDUE, Lane::Interactive).await,
            Lane::Interactive
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_item_that_waited_half_an_hour_goes_before_interactive_work() {
        assert_eq!(
            first_to_take(
                Lane::Batch,
                LATE - Duration::from_secs(1),
                Lane::Interactive
            )
            .await,
            Lane::Interactive
        );
        assert_eq!(
            first_to_take(Lane::Batch, LATE, Lane::Interactive).await,
            Lane::Batch
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_block_later_lanes() {
        let slots = Slots::new(1);
        let held = slots.acquire(Lane::Batch).await;
        for lane in [Lane::Interactive, Lane::Backlog(0)] {
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
