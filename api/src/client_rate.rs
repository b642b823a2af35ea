//! Each client's request rate (`PROVISIONER_CLIENT_REQUEST_RATE`): a bucket per client in this
//! API process (GCRA, from `governor`) holding as many requests as the rate allows a second, so
//! a client may send that many at once and then that many a second. A request past it is `429`
//! with the seconds until the next one would pass as `Retry-After`; one client's flood never
//! delays another's requests. No limit by default: creates the contract answers `202` are not
//! refused unless an operator chose a rate.
//!
//! The buckets are kept by client id, for authenticated clients only (so their number is the
//! number of clients that made requests); those idle long enough to be full again are dropped
//! once there are many.

use std::{
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock, DefaultClock},
};

/// Buckets kept before full ones are dropped.
const BUCKETS_KEPT: usize = 4096;

/// Least time between two sweeps of the buckets (a sweep visits every one).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct ClientRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    /// When the buckets were last swept.
    swept: Mutex<Instant>,
}

impl ClientRate {
    /// `per_second` requests a second per client, as many at once; `None`: no limit.
    pub(crate) fn new(per_second: Option<NonZeroU32>) -> Self {
        Self {
            limiter: per_second.map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate))),
            clock: DefaultClock::default(),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Takes one request from `client`'s bucket; if it is empty, how long until it holds one.
    pub(crate) fn take(&self, client: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > BUCKETS_KEPT {
            self.sweep(limiter);
        }
        limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

impl ClientRate {
    /// Drops the buckets that are full again, at most once every `SWEEP_EVERY` (should many
    /// clients be active at once, a request does not visit them all each time).
    fn sweep(&self, limiter: &DefaultKeyedRateLimiter<String>) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.elapsed() < SWEEP_EVERY {
                return;
            }
            *swept = Instant::now();
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least one.
pub(crate) fn retry_after(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_untouched() {
        let rate = ClientRate::new(NonZeroU32::new(3));
        for _ in 0..3 {
            assert_eq!(rate.take("a"), Ok(()));
        }
        let wait = rate.take("a").expect_err("the fourth request at once");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert_eq!(rate.take("b"), Ok(()), "another client's bucket is its own");
    }

    #[test]
    fn no_rate_means_no_limit() {
        let rate = ClientRate::new(None);
        for _ in 0..10_000 {
            assert_eq!(rate.take("a"), Ok(()));
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
    }
}
