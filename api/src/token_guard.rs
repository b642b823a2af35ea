//! Bounds the token endpoint's work. Verifying a client secret is an Argon2id hash (19 MiB, tens
//! of milliseconds of a core), so an unbounded flood of bad requests could exhaust memory: at most
//! one verification per core runs at once, a few more wait briefly, and the rest are answered
//! `503` at once. A peer that keeps failing for one client id is refused (`429`) for that id for
//! a while without any hashing, whether the id exists or not. A peer that keeps naming client
//! ids that do not exist gets no more hashing for such ids for a while: they are answered as
//! wrong after as long as a verification takes, so the answer tells nothing of which ids exist.
//! A client that exists is never refused for what its peer did under other ids: behind a
//! reverse proxy every client has the proxy's address, and one integration's mistakes would
//! otherwise lock out all the others. Failures are not counted per client id alone: client ids
//! are not secret, and anyone could otherwise lock a client out.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Failed attempts one peer may make in a window, for one client id (then refused) or naming
/// client ids that do not exist (then such ids are not hashed).
const MAX_FAILURES: u32 = 20;
/// The window of `MAX_FAILURES`.
const WINDOW: Duration = Duration::from_secs(60);
/// How long a request may wait for a verification slot.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Queue places per verification slot: a burst of integrations starting at once (after a
/// deployment) waits its turn; only what could not be verified within `QUEUE_WAIT` is refused.
const QUEUE_PER_SLOT: usize = 16;
/// Most failure records kept (ids and peers together). Past it, windows that have ended are
/// dropped, then the record with the fewest failures (the oldest of those): a flood of new keys
/// pushes out its own single failures before the count of a key that keeps failing (only a
/// flood whose every record failed more often than that key could push it out).
const MAX_TRACKED: usize = 10_000;
/// How long a verification is taken to last before one was measured.
const FIRST_VERIFICATION: Duration = Duration::from_millis(50);

/// Why a token request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every verification slot and queue place is taken: `503`.
    Busy,
    /// The peer failed too often lately: `429` for `retry_after` seconds.
    TooManyFailures { retry_after: u64 },
}

/// Shared by every request of the process.
#[derive(Debug)]
pub(crate) struct TokenGuard {
    slots: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    /// Requests of each peer holding a slot or a queue place, at most `per_peer` each: all the
    /// places but one per slot.
    holding: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
    per_peer: usize,
    failures: Mutex<HashMap<Key, Window>>,
    /// A moving average of how long verifications take, nanoseconds (0: none measured yet).
    verification_nanos: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// One client id from one peer (`None`: the peer is unknown).
    ClientFrom(String, Option<IpAddr>),
    /// Client ids that do not exist (or are revoked), from one peer.
    UnknownFrom(IpAddr),
}

/// Peers as `peer::key` counts them: an IPv6 peer by its /64.
impl Key {
    fn client_from(client_id: &str, peer: Option<IpAddr>) -> Self {
        Self::ClientFrom(client_id.to_owned(), peer.map(crate::peer::key))
    }

    fn unknown_from(peer: IpAddr) -> Self {
        Self::UnknownFrom(crate::peer::key(peer))
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl TokenGuard {
    /// One verification slot per thread of the hashing pool; `QUEUE_PER_SLOT` times as many
    /// queue places.
    pub(crate) fn new() -> Self {
        Self::with_slots(provisioner_shared::passwords::occasional_threads())
    }

    fn with_slots(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            queue: Arc::new(Semaphore::new(slots * QUEUE_PER_SLOT)),
            holding: Arc::default(),
            // Every place but one per slot: one address cannot take them all, so another always
            // finds a place (and waits at most `QUEUE_WAIT`), while a burst from one address
            // (every client behind a proxy that is not trusted is one) keeps nearly all of them:
            // sixteen integrations starting at once fit even with one slot.
            per_peer: slots * QUEUE_PER_SLOT,
            failures: Mutex::new(HashMap::new()),
            verification_nanos: AtomicU64::new(0),
        }
    }

    /// A verification slot for `client_id` from `peer`, or why not (what needs no database:
    /// this id's failures from this peer, the peer's share of the slots and queue places, the
    /// slots).
    pub(crate) async fn admit(
        &self,
        client_id: &str,
        peer: Option<IpAddr>,
    ) -> Result<Slot, Refusal> {
        if let Some(retry_after) = self.refused_for(&[Key::client_from(client_id, peer)]) {
            return Err(Refusal::TooManyFailures { retry_after });
        }
        let share = self.share(peer).ok_or(Refusal::Busy)?;
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot {
                _permit: permit,
                _share: share,
            });
        }
        let _place = self
            .queue
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        let permit = tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        Ok(Slot {
            _permit: permit,
            _share: share,
        })
    }

    /// One more request of `peer` holding a slot or a queue place, unless it holds its share.
    fn share(&self, peer: Option<IpAddr>) -> Option<Share> {
        let peer = peer.map(crate::peer::key);
        let mut holding = self.holding.lock().expect("holding map");
        let held = holding.entry(peer).or_insert(0);
        if *held >= self.per_peer {
            return None;
        }
        *held += 1;
        Some(Share {
            holding: self.holding.clone(),
            peer,
        })
    }

    /// Whether `peer` named too many client ids that do not exist lately: another such id is
    /// not hashed.
    pub(crate) fn unknown_ids_refused(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|p| self.refused_for(&[Key::unknown_from(p)]).is_some())
    }

    /// Records how long a verification took.
    pub(crate) fn verification_took(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // An average over about the last eight; a race between two updates loses one reading.
        let before = self.verification_nanos.load(Ordering::Relaxed);
        let now = if before == 0 {
            took
        } else {
            before - before / 8 + took / 8
        };
        self.verification_nanos.store(now, Ordering::Relaxed);
    }

    /// Waits about as long as a verification takes.
    pub(crate) async fn as_long_as_a_verification(&self) {
        tokio::time::sleep(self.verification_estimate()).await;
    }

    /// How long a verification takes, as measured lately.
    fn verification_estimate(&self) -> Duration {
        match self.verification_nanos.load(Ordering::Relaxed) {
            0 => FIRST_VERIFICATION,
            nanos => Duration::from_nanos(nanos),
        }
    }

    /// Records a failed verification of `client_id` from `peer` (`known`: an active client has
    /// that id).
    pub(crate) fn failed(&self, client_id: &str, peer: Option<IpAddr>, known: bool) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("failure map");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        for key in keys(client_id, peer, known) {
            if failures.len() >= MAX_TRACKED && !failures.contains_key(&key) {
                let least = failures
                    .iter()
                    .min_by_key(|(_, w)| (w.failures, w.started))
                    .map(|(k, _)| k.clone());
                if let Some(least) = least {
                    failures.remove(&least);
                }
            }
            let window = failures.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.duration_since(window.started) >= WINDOW {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures += 1;
        }
    }

    /// Records a request for `client_id`, an id that does not exist, from `peer` once `peer`
    /// named too many such ids (`unknown_ids_refused`): counted for that id from that peer
    /// only, as a known id's failure is, so that both are refused after as many.
    pub(crate) fn failed_unknown_id(&self, client_id: &str, peer: Option<IpAddr>) {
        self.failed(client_id, peer, true);
    }

    /// Seconds until the first of `keys` that failed too often may try again.
    fn refused_for(&self, keys: &[Key]) -> Option<u64> {
        let now = Instant::now();
        let failures = self.failures.lock().expect("failure map");
        keys.iter()
            .filter_map(|k| failures.get(k))
            .filter(|w| w.failures >= MAX_FAILURES)
            .filter_map(|w| WINDOW.checked_sub(now.duration_since(w.started)))
            .map(|left| left.as_secs().max(1))
            .max()
    }
}

/// A verification slot, held until the verification ends (then given back with the peer's
/// place in its share).
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _share: Share,
}

/// A peer's place among the requests holding a slot or a queue place.
#[derive(Debug)]
struct Share {
    holding: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
    peer: Option<IpAddr>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut holding = self.holding.lock().expect("holding map");
        if let Some(held) = holding.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                holding.remove(&self.peer);
            }
        }
    }
}

fn keys(client_id: &str, peer: Option<IpAddr>, known: bool) -> Vec<Key> {
    let mut keys = vec![Key::client_from(client_id, peer)];
    keys.extend(peer.filter(|_| !known).map(Key::unknown_from));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_is_refused_at_once_and_slots_come_back() {
        let guard = TokenGuard::with_slots(1);
        let held = guard.admit("a", None).await.unwrap();
        // Every queue place waits (and runs out); one more request is refused without waiting.
        let waiting: Vec<_> = (0..QUEUE_PER_SLOT)
            .map(|_| guard.admit("a", None))
            .collect();
        let started = Instant::now();
        assert_eq!(guard.queue.available_permits(), QUEUE_PER_SLOT);
        let (queued, overflow) = tokio::join!(futures_util::future::join_all(waiting), async {
            tokio::task::yield_now().await;
            guard.admit("a", None).await
        });
        assert_eq!(overflow.unwrap_err(), Refusal::Busy);
        assert!(
            queued
                .iter()
                .all(|r| r.as_ref().unwrap_err() == &Refusal::Busy)
        );
        assert!(started.elapsed() < QUEUE_WAIT * 4);
        drop(held);
        assert!(guard.admit("a", None).await.is_ok());
    }

    #[tokio::test]
    async fn one_peer_leaves_a_place_for_another() {
        use futures_util::FutureExt as _;
        let guard = Arc::new(TokenGuard::with_slots(1));
        let flooder: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        let most = guard.per_peer;
        assert_eq!(most, 16, "one slot and its sixteen queue places, but one");
        // The flooder's first request holds the slot, the others wait in the queue.
        let held = guard.admit("a", Some(flooder)).await.unwrap();
        let waiting: Vec<_> = (1..most)
            .map(|_| {
                let guard = guard.clone();
                tokio::spawn(async move { guard.admit("a", Some(flooder)).await.map(drop) })
            })
            .collect();
        while guard.holding.lock().unwrap().get(&Some(flooder)) != Some(&most) {
            tokio::task::yield_now().await;
        }
        // One more of the flooder's is refused at once; another peer's waits for the slot.
        let more = guard.admit("a", Some(flooder)).now_or_never();
        assert!(matches!(more, Some(Err(Refusal::Busy))), "{more:?}");
        assert!(guard.admit("b", Some(other)).now_or_never().is_none());
        for w in &waiting {
            w.abort();
        }
        drop(held);
        assert!(guard.admit("b", Some(other)).await.is_ok());
        for w in waiting {
            let _ = w.await;
        }
        assert!(
            guard.holding.lock().unwrap().is_empty(),
            "every share given back"
        );
    }

    #[tokio::test]
    async fn repeated_failures_lock_out_the_failing_peer_only() {
        let guard = TokenGuard::with_slots(2);
        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        let owner: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(guard.admit("victim", Some(attacker)).await.is_ok());
            guard.failed("victim", Some(attacker), true);
        }
        let refusal = guard.admit("victim", Some(attacker)).await.unwrap_err();
        assert!(
            matches!(refusal, Refusal::TooManyFailures { retry_after } if (1..=60).contains(&retry_after))
        );
        assert!(
            guard.admit("other", Some(attacker)).await.is_ok(),
            "another client, through the same peer (a proxy), is not locked out"
        );
        assert!(
            !guard.unknown_ids_refused(Some(attacker)),
            "a known id's failures"
        );
        assert!(
            guard.admit("victim", Some(owner)).await.is_ok(),
            "the client itself, from elsewhere, is not locked out"
        );
    }

    /// An IPv6 peer that takes a new address of its /64 for each attempt is one peer.
    #[tokio::test]
    async fn failures_from_one_ipv6_64_count_together() {
        let guard = TokenGuard::with_slots(2);
        let address = |i: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i + 1]);
        for i in 0..u16::try_from(MAX_FAILURES).unwrap() {
            assert!(guard.admit("victim", Some(address(i))).await.is_ok());
            guard.failed("victim", Some(address(i)), true);
        }
        assert!(matches!(
            guard.admit("victim", Some(address(999))).await.unwrap_err(),
            Refusal::TooManyFailures { .. }
        ));
        let elsewhere = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(guard.admit("victim", Some(elsewhere)).await.is_ok());
    }

    #[tokio::test]
    async fn a_peer_naming_unknown_clients_gets_no_more_hashing_for_unknown_ids() {
        let guard = TokenGuard::with_slots(2);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..MAX_FAILURES {
            let id = format!("nobody-{i}");
            assert!(guard.admit(&id, Some(peer)).await.is_ok());
            assert!(!guard.unknown_ids_refused(Some(peer)));
            guard.failed(&id, Some(peer), false);
        }
        assert!(guard.unknown_ids_refused(Some(peer)));
        assert!(
            !guard.unknown_ids_refused(Some("198.51.100.9".parse().unwrap())),
            "another peer's are hashed"
        );
        assert!(
            guard.admit("a-real-client", Some(peer)).await.is_ok(),
            "every id is still admitted: a client that exists is verified"
        );
    }

    #[test]
    fn a_pause_lasts_about_as_long_as_the_verifications_took() {
        let guard = TokenGuard::with_slots(1);
        assert_eq!(guard.verification_estimate(), FIRST_VERIFICATION);
        guard.verification_took(Duration::from_millis(80));
        assert_eq!(guard.verification_estimate(), Duration::from_millis(80));
        for _ in 0..64 {
            guard.verification_took(Duration::from_millis(20));
        }
        let after = guard.verification_estimate();
        assert!(
            (Duration::from_millis(19)..=Duration::from_millis(21)).contains(&after),
            "{after:?}"
        );
    }

    /// A flood of new keys (ids that do not exist, from many peers) fills the map; a key that
    /// keeps failing is still counted, and locked out (it was not recorded once the map was full).
    #[tokio::test]
    async fn a_full_failure_map_still_counts_a_key_that_keeps_failing() {
        let guard = TokenGuard::with_slots(1);
        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..MAX_TRACKED {
            let peer = IpAddr::from(std::net::Ipv6Addr::from(u128::try_from(i).unwrap() + 1));
            guard.failed(&format!("nobody-{i}"), Some(peer), false);
        }
        for i in 0..MAX_FAILURES {
            assert!(guard.admit("victim", Some(attacker)).await.is_ok(), "{i}");
            guard.failed("victim", Some(attacker), true);
            // The flood goes on between the attempts.
            let peer = IpAddr::from(std::net::Ipv6Addr::from((u128::from(i) + 1) << 64));
            guard.failed("nobody", Some(peer), false);
        }
        assert!(matches!(
            guard.admit("victim", Some(attacker)).await.unwrap_err(),
            Refusal::TooManyFailures { .. }
        ));
        assert!(guard.failures.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn the_failure_map_stays_bounded() {
        let guard = TokenGuard::with_slots(1);
        for i in 0..(MAX_TRACKED * 3) {
            guard.failed(&format!("client-{i}"), None, false);
        }
        assert!(guard.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
