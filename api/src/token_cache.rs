//! The tokens this process verified, kept for a few seconds so that a client's requests do not
//! each read its token from the database.
//!
//! What is kept is good only within one [`AuthEpoch`]: the epoch moves on when the database
//! announces a change to clients or tokens (a revocation, a session signed out, a token removed;
//! any process, any statement) and whenever the notification hub stops or starts listening, and
//! nothing is kept while it does not listen. A kept token also ends when the lifetime it had left
//! at its read (by PostgreSQL's clock) has passed, counted from before that read. So a revoked
//! token stops working as soon as this process hears of it (within the notification's
//! delivery, normally a millisecond) and never later than `KEEP` after its read began; a change
//! this process makes itself takes effect at once (`AuthEpoch::changed`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::{db::clients::TokenGrant, relay::AuthEpoch};
use tokio::time::Instant;

/// How long a verified token is kept at most, should an announcement be lost on a connection
/// that stays up.
const KEEP: Duration = Duration::from_secs(10);
/// Tokens kept at most; past it the cache starts again empty. Only tokens that verified are
/// kept, so its size follows the clients' tokens in use, not what anyone sends.
const MOST: usize = 10_000;

type Digest = [u8; 32];

#[derive(Debug)]
pub(crate) struct TokenCache {
    epoch: AuthEpoch,
    kept: Mutex<Kept>,
}

/// The grants kept in one epoch, each with the instant it stops being kept.
#[derive(Debug, Default)]
struct Kept {
    epoch: u64,
    grants: HashMap<Digest, (Arc<TokenGrant>, Instant)>,
}

impl TokenCache {
    pub(crate) fn new(epoch: AuthEpoch) -> Self {
        Self {
            epoch,
            kept: Mutex::default(),
        }
    }

    /// The grant kept for `digest`, if it is still good: kept in the current epoch, read less
    /// than `KEEP` ago, and unexpired.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<TokenGrant>> {
        let epoch = self.epoch.current()?;
        let kept = self.kept.lock().expect("not poisoned");
        if kept.epoch != epoch {
            return None;
        }
        let (grant, until) = kept.grants.get(digest)?;
        (Instant::now() < *until).then(|| grant.clone())
    }

    /// The epoch to read the database under: `None` when nothing read now may be kept.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.epoch.current()
    }

    /// Keeps `grant`, read from the database under `epoch` by a read that began at `read_at`
    /// (both taken before the read: a change announced since then makes it stale at once).
    pub(crate) fn keep(
        &self,
        digest: Digest,
        grant: Arc<TokenGrant>,
        epoch: u64,
        read_at: Instant,
    ) {
        let mut kept = self.kept.lock().expect("not poisoned");
        if epoch != kept.epoch {
            // Epochs only grow: an older one was stale before it was read.
            if epoch < kept.epoch {
                return;
            }
            kept.epoch = epoch;
            kept.grants.clear();
        }
        if kept.grants.len() >= MOST {
            kept.grants.clear();
        }
        let left = Duration::try_from_secs_f64(grant.seconds_left).unwrap_or_default();
        let until = read_at + left.min(KEEP);
        kept.grants.insert(digest, (grant, until));
    }

    /// Forgets everything at once: this process changed a client or a token.
    pub(crate) fn changed(&self) {
        self.epoch.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(seconds_left: f64) -> Arc<TokenGrant> {
        Arc::new(TokenGrant {
            client_id: "c".into(),
            scopes: vec!["tenants:read".into()],
            seconds_left,
        })
    }

    fn listening() -> AuthEpoch {
        let epoch = AuthEpoch::default();
        epoch.set_listening_for_tests(true);
        epoch
    }

    #[test]
    fn a_kept_token_is_forgotten_when_a_change_is_announced() {
        let cache = TokenCache::new(listening());
        let epoch = cache.epoch().expect("listening");
        cache.keep([1; 32], grant(3600.0), epoch, Instant::now());
        assert!(cache.get(&[1; 32]).is_some());
        cache.changed();
        assert!(cache.get(&[1; 32]).is_none());
    }

    #[test]
    fn a_grant_read_before_a_change_is_not_kept() {
        let cache = TokenCache::new(listening());
        let before = cache.epoch().expect("listening");
        cache.changed();
        let now = cache.epoch().expect("listening");
        cache.keep([2; 32], grant(3600.0), now, Instant::now());
        cache.keep([1; 32], grant(3600.0), before, Instant::now());
        assert!(cache.get(&[1; 32]).is_none());
        assert!(
            cache.get(&[2; 32]).is_some(),
            "the newer epoch's grants stay"
        );
    }

    #[test]
    fn nothing_is_kept_while_nobody_listens_nor_across_a_reconnection() {
        let epoch = AuthEpoch::default();
        let cache = TokenCache::new(epoch.clone());
        assert_eq!(cache.epoch(), None);
        epoch.set_listening_for_tests(true);
        let first = cache.epoch().expect("listening");
        cache.keep([1; 32], grant(3600.0), first, Instant::now());
        epoch.set_listening_for_tests(false);
        assert!(cache.get(&[1; 32]).is_none());
        epoch.set_listening_for_tests(true);
        assert!(cache.epoch().is_some_and(|e| e > first));
        assert!(
            cache.get(&[1; 32]).is_none(),
            "announcements were missed meanwhile"
        );
    }

    #[test]
    fn an_expired_token_is_refused_though_kept() {
        let cache = TokenCache::new(listening());
        let epoch = cache.epoch().expect("listening");
        cache.keep([1; 32], grant(-0.001), epoch, Instant::now());
        assert!(cache.get(&[1; 32]).is_none());
    }
}
