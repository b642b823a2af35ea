//! Process plumbing both binaries share: the shutdown signal, the reconnect-with-backoff loop of
//! long-lived sessions (broker consumer, outbox relay, notification listener), and the
//! background services every process runs and stops by draining.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use rand::Rng;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::relay::{Notifications, Relay};

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn shutdown_signal(token: CancellationToken) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// How a reconnect loop waits between sessions: from `first`, doubling up to `max`, each wait
/// jittered by ±20%.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

/// A session that lasted this long was healthy: the next failure backs off from `first` again.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Runs `session` again and again until one returns `Ok` (it stopped on purpose) or `shutdown`
/// is cancelled. Each failure is logged once, naming `what`, then waited out with `backoff`. A
/// session that fails once `shutdown` was asked for ends the loop quietly: the process is
/// stopping, and what it tears down (its database pool, closed next) fails the session, which a
/// warning would present as a fault.
pub async fn reconnect<F, Fut>(
    what: &str,
    backoff: Backoff,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut wait = backoff.first;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let Err(e) = session().await else {
            return;
        };
        if shutdown.is_cancelled() {
            tracing::debug!(error = format!("{e:#}"), "{what} stopped with the process");
            return;
        }
        if started.elapsed() > HEALTHY_SESSION {
            wait = backoff.first;
        }
        let retry_in = wait.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
        tracing::warn!(
            error = format!("{e:#}"),
            ?retry_in,
            "{what} interrupted; reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(backoff.max);
    }
}

/// The services every process runs besides its own work: the notification hub and the outbox
/// relay. Stop them with `stop`, which publishes what is committed first.
#[derive(Debug)]
pub struct Background {
    notifications: Notifications,
    relay: Relay,
    hub: CancellationToken,
}

impl Background {
    /// Starts listening for notifications and relaying the outbox.
    pub fn start(pool: &PgPool, amqp_url: &SecretString) -> Self {
        let hub = CancellationToken::new();
        let notifications = Notifications::start(pool.clone(), hub.clone());
        let relay = Relay::start(pool.clone(), amqp_url.clone(), notifications.clone());
        Self {
            notifications,
            relay,
            hub,
        }
    }

    /// The hub, for in-process subscribers.
    pub fn notifications(&self) -> &Notifications {
        &self.notifications
    }

    /// Publishes the outbox rows already committed and due (giving up after `deadline`), then
    /// stops the relay and the hub.
    pub async fn stop(self, deadline: Duration) {
        self.relay.drain_and_stop(deadline).await;
        self.hub.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::Context;

    use super::*;

    /// What a subscriber logged, for the tests that read it.
    #[derive(Clone, Default)]
    struct Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logged {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logged {
        /// Captures what this thread logs at `info` and above while the guard lives.
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let logged = Self::default();
            let writer = logged.clone();
            let guard = tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_writer(move || writer.clone())
                    .with_max_level(tracing::Level::INFO)
                    .finish(),
            );
            (logged, guard)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn a_session_failing_as_the_process_stops_ends_the_loop_quietly() {
        let (logged, _subscriber) = Logged::capture();
        let sessions = AtomicUsize::new(0);
        let backoff = Backoff {
            first: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        };
        // The process stops: the token is cancelled, then the pool closes under the session.
        // The loop ends either way (its wait also watches the token); what this shows is that
        // it ends without a warning, and without a second session.
        let shutdown = CancellationToken::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            reconnect("listening", backoff, &shutdown, || {
                sessions.fetch_add(1, Ordering::SeqCst);
                shutdown.cancel();
                async {
                    Err(sqlx::Error::PoolClosed).context("listening for database notifications")
                }
            }),
        )
        .await
        .expect("the loop ends");
        assert_eq!(sessions.load(Ordering::SeqCst), 1);
        assert!(
            !logged.text().contains("interrupted"),
            "a clean stop reads as a fault: {}",
            logged.text()
        );
    }

    #[tokio::test]
    async fn a_session_failing_while_the_process_runs_is_retried_whatever_the_error() {
        let (logged, _subscriber) = Logged::capture();
        let sessions = AtomicUsize::new(0);
        let backoff = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(1),
        };
        let shutdown = CancellationToken::new();
        // A lost connection and a closed pool alike: the session runs again (the third time
        // it stops the process).
        tokio::time::timeout(
            Duration::from_secs(5),
            reconnect("listening", backoff, &shutdown, || {
                let n = sessions.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 3 {
                    shutdown.cancel();
                }
                async move {
                    match n {
                        1 => Err(sqlx::Error::PoolClosed),
                        _ => Err(sqlx::Error::Io(
                            std::io::ErrorKind::ConnectionAborted.into(),
                        )),
                    }
                    .context("listening for database notifications")
                }
            }),
        )
        .await
        .expect("the loop ends");
        assert_eq!(sessions.load(Ordering::SeqCst), 3);
        assert!(
            logged
                .text()
                .matches("listening interrupted; reconnecting")
                .count()
                == 2,
            "each failure while running is said: {}",
            logged.text()
        );
    }
}
