//! Bounds on the requests that hold database connections for long: exports streaming their
//! archive (two connections each, for as long as the client reads) and requests waiting for a
//! tenant's lock (one each, for up to their `lockTimeout`). Past a bound a request waits a
//! moment for a slot, then is answered `503` with `Retry-After`, so they never take the whole
//! pool from the other routes. One client holds at most half of a bound's slots (at least
//! one), so no single client takes a bound of two or more whole. A request past its client's
//! share waits as briefly for one of the client's own to end where waiting holds nothing
//! (exports take their reading slot before any connection), and is refused at once where it
//! would hold a connection meanwhile (lock waits): one client's burst must not hold the pool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Longest wait for a slot when all are taken (never longer than the request's own bound).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// The `Retry-After` of a request refused for want of a slot, seconds.
const RETRY_AFTER: u64 = 5;

/// Each client's share of the slots, by client id.
type Shares = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

/// A fixed number of slots for one kind of long holder, at most half of them per client.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    free: Arc<Semaphore>,
    /// The slots each client holding or waiting for one may still take; a client's entry goes
    /// when its last request leaves, so there are never more entries than requests.
    clients: Shares,
    per_client: usize,
    /// Whether a request past its client's share waits for one of the client's own (when its
    /// wait holds no connection) or is refused at once.
    share: ShareWait,
    /// What the holders do, for the refusal: "exports", "requests waiting for a tenant's lock".
    what: &'static str,
}

/// What a request past its client's share does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShareWait {
    /// Waits, as for the server's slots: the request holds nothing meanwhile.
    Wait,
    /// Refused at once: the request holds a connection meanwhile, and one client's burst of
    /// such waits would hold the pool.
    Refuse,
}

/// A slot held (or, inside `take`, waited for): the client's share and the server's, given
/// back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    clients: Shares,
    client: String,
    share: Option<Arc<Semaphore>>,
    /// The client's permit, then the server's: each kept here as soon as it is taken, so the
    /// drop below gives back whatever a refusal or a cancelled wait had taken.
    own: Option<OwnedSemaphorePermit>,
    server: Option<OwnedSemaphorePermit>,
}

impl Slots {
    pub(crate) fn new(slots: usize, share: ShareWait, what: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(slots)),
            clients: Arc::default(),
            per_client: (slots / 2).max(1),
            share,
            what,
        }
    }

    /// A slot for `client`, waiting at most `within` (and `SLOT_WAIT`) in all for one of the
    /// client's share (when its own requests hold the share, and `ShareWait::Wait`) and one of
    /// the server's; `503` when none frees.
    pub(crate) async fn take(&self, client: &str, within: Duration) -> Result<Slot, ApiError> {
        let deadline = tokio::time::Instant::now() + within.min(SLOT_WAIT);
        let mut slot = self.register(client);
        let share = slot.share.clone().expect("kept until the slot drops");
        // Only the client's own requests can free its share (a client reading several exports
        // at once, say): a free one is taken at the first poll.
        let own = match self.share {
            ShareWait::Wait => tokio::time::timeout_at(deadline, share.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
            ShareWait::Refuse => share.try_acquire_owned().ok(),
        };
        slot.own = Some(own.ok_or_else(|| {
            self.busy(format!(
                "this client has as many {} as one client may have at once ({}); retry later",
                self.what, self.per_client
            ))
        })?);
        // A free slot is taken at the first poll, before the timeout looks at its clock.
        let server = tokio::time::timeout_at(deadline, self.free.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                self.busy(format!(
                    "the server has as many {} as it allows at once; retry later",
                    self.what
                ))
            })?;
        slot.server = Some(server);
        Ok(slot)
    }

    /// The client's share, made when none of its requests holds or waits for a slot.
    fn register(&self, client: &str) -> Slot {
        let share = self
            .clients
            .lock()
            .expect("slot table")
            .entry(client.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_client)))
            .clone();
        Slot {
            clients: self.clients.clone(),
            client: client.to_owned(),
            share: Some(share),
            own: None,
            server: None,
        }
    }

    fn busy(&self, detail: String) -> ApiError {
        ApiError::Busy {
            detail,
            retry_after: RETRY_AFTER,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Every reference a slot has to its share is made under the table's lock or while the
        // slot holds one, and given back here under the lock: the last request of a client to
        // leave sees only the table's and removes the entry, so the table never grows past
        // the requests in it.
        let mut table = self.clients.lock().expect("slot table");
        self.server = None;
        self.own = None;
        self.share = None;
        if table
            .get(&self.client)
            .is_some_and(|share| Arc::strong_count(share) == 1)
        {
            table.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn refused_for(refusal: &ApiError) -> &str {
        match refusal {
            ApiError::Busy {
                detail,
                retry_after: 5,
            } => detail,
            other => panic!("not a 503 with Retry-After: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_slot_freed_within_the_wait_is_taken_and_none_past_it_is_503() {
        let slots = Slots::new(2, ShareWait::Wait, "exports");
        let a = slots.take("a", Duration::ZERO).await.unwrap();
        let b = slots.take("b", Duration::ZERO).await.unwrap();
        let refused = slots.take("c", Duration::ZERO).await.unwrap_err();
        assert!(
            refused_for(&refused).starts_with("the server has as many exports"),
            "{refused:?}"
        );
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take("c", Duration::from_secs(3600)).await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert!(
            waiting.await.unwrap(),
            "the freed slot goes to the waiting request"
        );
        drop(b);
    }

    #[tokio::test]
    async fn one_client_holds_at_most_half_the_slots_and_leaves_no_trace() {
        let slots = Slots::new(5, ShareWait::Wait, "exports");
        let mine: Vec<Slot> = futures_util::future::try_join_all(
            (0..2).map(|_| slots.take("greedy", Duration::ZERO)),
        )
        .await
        .unwrap();
        // Past its share a client's request waits for one of its own, within its bound.
        let refused = slots.take("greedy", Duration::ZERO).await.unwrap_err();
        assert!(
            refused_for(&refused).starts_with("this client has as many exports"),
            "{refused:?}"
        );
        let mut mine = mine.into_iter();
        let (third, ()) = tokio::join!(slots.take("greedy", Duration::from_secs(3600)), async {
            tokio::task::yield_now().await;
            drop(mine.next());
        });
        let mine: Vec<Slot> = mine
            .chain([third.expect("the share freed while it waited")])
            .collect();
        let theirs = [
            slots.take("other", Duration::ZERO).await.unwrap(),
            slots.take("other", Duration::ZERO).await.unwrap(),
            slots.take("third", Duration::ZERO).await.unwrap(),
        ];
        assert!(slots.take("fourth", Duration::ZERO).await.is_err());
        drop(mine);
        drop(theirs);
        assert!(
            slots.clients.lock().unwrap().is_empty(),
            "no entry is left once a client's requests are gone, refused ones included"
        );
        assert_eq!(slots.free.available_permits(), 5);
        // A bound of one slot still lets a client have it.
        let one = Slots::new(1, ShareWait::Wait, "exports");
        assert!(one.take("only", Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn where_waiting_would_hold_a_connection_a_client_past_its_share_is_refused_at_once() {
        let slots = Slots::new(4, ShareWait::Refuse, "lock waits");
        let _mine = [
            slots.take("greedy", Duration::ZERO).await.unwrap(),
            slots.take("greedy", Duration::ZERO).await.unwrap(),
        ];
        let refused = slots
            .take("greedy", Duration::from_secs(3600))
            .now_or_never()
            .expect("answered at the first poll")
            .unwrap_err();
        assert!(
            refused_for(&refused).starts_with("this client has as many lock waits"),
            "{refused:?}"
        );
        assert!(slots.take("other", Duration::ZERO).await.is_ok());
    }
}
