//! Waiting for a job (or a batch) to change, woken by the database's job notifications (with a polling
//! fallback), for `Prefer: wait` and long-polling. Each client may hold a bounded number of
//! waits at once; past it, a wait answers at once with the job as it is, as every wait does
//! when the API stops and its shutdown timeout nearly ran out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::db::{self, batches::BatchRow, jobs::JobRow};
use tokio::{sync::broadcast::error::RecvError, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;

/// Waits in progress, per client.
#[derive(Debug)]
pub(crate) struct Waits {
    held: Mutex<HashMap<String, u32>>,
    /// Cancelled a little before the shutdown timeout runs out once the API begins to stop:
    /// every wait then ends with the thing as it is (a create's `202`, a job's state), so its
    /// client is answered before the connections close.
    answer_now: CancellationToken,
}

/// One wait of a client; it ends when dropped.
struct WaitSlot {
    waits: Arc<Waits>,
    client: String,
}

impl Waits {
    /// Waits that end once `stopping` is cancelled and `shutdown_timeout` has nearly run out
    /// (a quarter of it, at most a second, left for the answers).
    pub(crate) fn new(stopping: CancellationToken, shutdown_timeout: Duration) -> Self {
        let answer_now = CancellationToken::new();
        let margin = (shutdown_timeout / 4).min(Duration::from_secs(1));
        tokio::spawn({
            let answer_now = answer_now.clone();
            async move {
                stopping.cancelled().await;
                tokio::time::sleep(shutdown_timeout.saturating_sub(margin)).await;
                answer_now.cancel();
            }
        });
        Self {
            held: Mutex::default(),
            answer_now,
        }
    }

    /// A slot for `client`, unless it already holds `max`.
    fn take(self: &Arc<Self>, client: &str, max: u32) -> Option<WaitSlot> {
        let mut held = self.held.lock().expect("wait map");
        let n = held.entry(client.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        metrics::gauge!("provisioner_http_waits").increment(1);
        Some(WaitSlot {
            waits: self.clone(),
            client: client.to_owned(),
        })
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        metrics::gauge!("provisioner_http_waits").decrement(1);
        let mut held = self.waits.held.lock().expect("wait map");
        if let Some(n) = held.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// Returns the job once `done` holds for it or `deadline` passes; `None` if it does not exist
/// for `owner` (`None`: any client's). `waiter` is the client that waits: past its limit of
/// waits at once, the job is returned as it is, without waiting.
pub(crate) async fn until(
    state: &AppState,
    id: Uuid,
    owner: Option<&str>,
    waiter: &str,
    deadline: Instant,
    done: impl Fn(&JobRow) -> bool,
) -> Result<Option<JobRow>, sqlx::Error> {
    let fetch = || db::jobs::find(&state.pool, id, owner);
    // An ended job never changes: it is not read again while the wait runs out.
    let settled = |j: &JobRow| j.status.is_terminal();
    watch(state, id, waiter, deadline, fetch, done, settled).await
}

/// `until` for a batch (woken when it stops).
pub(crate) async fn until_batch(
    state: &AppState,
    id: Uuid,
    owner: Option<&str>,
    waiter: &str,
    deadline: Instant,
    done: impl Fn(&BatchRow) -> bool,
) -> Result<Option<BatchRow>, sqlx::Error> {
    let fetch = || db::batches::find(&state.pool, id, owner);
    // A stopped batch may run again (a retry).
    watch(state, id, waiter, deadline, fetch, done, |_| false).await
}

/// Reads the thing `id` with `fetch` until `done` holds, woken by notifications naming `id`;
/// a thing `settled` (it will not change) is not read again: the wait runs out on its own.
async fn watch<T, F, Fut>(
    state: &AppState,
    id: Uuid,
    waiter: &str,
    deadline: Instant,
    fetch: F,
    done: impl Fn(&T) -> bool,
    settled: impl Fn(&T) -> bool,
) -> Result<Option<T>, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let slot = state.waits.take(waiter, state.settings.client_max_waits);
    let mut deadline = if slot.is_some() && !state.waits.answer_now.is_cancelled() {
        deadline
    } else {
        Instant::now()
    };
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let mut changes = state.notifications.subscribe();
    let id_text = id.to_string();
    loop {
        let Some(thing) = fetch().await? else {
            return Ok(None);
        };
        if done(&thing) || Instant::now() >= deadline {
            return Ok(Some(thing));
        }
        if settled(&thing) {
            // Nothing to hear of it; one read at the end (it may have been purged since).
            drop(changes);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = state.waits.answer_now.cancelled() => {}
            }
            return fetch().await;
        }
        let poll = (Instant::now() + Duration::from_secs(2)).min(deadline);
        loop {
            tokio::select! {
                n = changes.recv() => match n {
                    Ok(n) if n.payload == id_text => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => { tokio::time::sleep_until(poll).await; break }
                },
                () = tokio::time::sleep_until(poll) => break,
                () = state.waits.answer_now.cancelled() => {
                    deadline = Instant::now();
                    break;
                }
            }
        }
    }
}
