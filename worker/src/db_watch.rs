//! Whether this worker reaches PostgreSQL. A worker cut off from the database cannot claim,
//! import or record anything, yet its broker session would go on taking deliveries and holding
//! them (each waiting for the database, unacknowledged) while other workers could run them. So
//! a probe asks PostgreSQL every second, on a session of its own; after `LOST_AFTER` probes in a
//! row without an answer within `PROBE_TIMEOUT` (up to 9 s; an error PostgreSQL sends is an
//! answer) the worker counts it lost, and the consumer ends its broker session
//! (the broker hands every unacknowledged delivery to the other workers at once) and opens no
//! new session until a probe is answered again.
//!
//! A probe not answered in time (the network cut it, or PostgreSQL was too slow to answer within
//! 2 s: the two cannot be told apart) is a silence: whatever cut the probe off may have cut the pool's
//! sessions too, for good, and a statement whose answer was lost waits for ever. So each
//! silence is recorded (`Silences`: the pool closes every session opened before it) and counted
//! (the consumer abandons the jobs running then that still run a lease later, see
//! `consumer::abandon_after_silences`), however soon the database answers again. A probe that
//! fails at once (a refused connection, a reset) only has the sessions opened before it closed:
//! the sessions such a fault breaks fail their statements, nothing waits on them.

use std::time::Duration;

use provisioner_shared::db::Silences;
use sqlx::{Connection, PgPool, postgres::PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Time between probes.
const EVERY: Duration = Duration::from_secs(1);
/// Longest a probe waits for its answer (the pool's connection and the query).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unanswered probes in a row that make the database lost.
const LOST_AFTER: u32 = 3;

/// What the probe has heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    /// The latest verdict: `true` while the database answers.
    reachable: bool,
    /// Silences so far: probes that got no answer in time, each of them (a job may have started,
    /// on a new session, between two of a streak). An error instead of an answer (a refused
    /// connection, a reset) is no silence: the sessions it breaks fail their statements.
    silences: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct DbWatch {
    heard: watch::Receiver<Heard>,
    silences: Silences,
}

impl DbWatch {
    /// Probes `pool` until `stop`, recording each silence in `silences`; the database counts
    /// as reachable to begin with.
    pub(crate) fn start(pool: PgPool, silences: Silences, stop: CancellationToken) -> Self {
        let (verdict, watching) = watch::channel(Heard {
            reachable: true,
            silences: 0,
        });
        let recorded = silences.clone();
        tokio::spawn(async move {
            let silences = recorded;
            let options = (*pool.connect_options())
                .clone()
                .application_name("provisioner-worker-probe");
            // A session of its own, so that a pool whose connections are all busy (jobs waiting
            // for their locks) does not read as an unreachable database.
            let mut session: Option<PgConnection> = None;
            let mut unanswered = 0;
            // Whether the last probe got no answer in time.
            let mut quiet_before = false;
            loop {
                let sent = std::time::Instant::now();
                let probe = async {
                    let conn = match &mut session {
                        Some(conn) => conn,
                        None => session.insert(PgConnection::connect_with(&options).await?),
                    };
                    sqlx::query("SELECT 1").execute(conn).await
                };
                let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe).await;
                // An error PostgreSQL sends (too many connections, starting up, refused
                // credentials) is an answer: it is there, and the pool's sessions may work.
                let answered = match &outcome {
                    Ok(Ok(_)) | Ok(Err(sqlx::Error::Database(_))) => true,
                    Ok(Err(_)) | Err(_) => false,
                };
                if !matches!(outcome, Ok(Ok(_))) {
                    // Whatever state it is in, the next probe starts afresh.
                    session = None;
                }
                let silent = outcome.is_err();
                if !answered {
                    silences.record(sent);
                }
                if silent {
                    if !quiet_before {
                        tracing::warn!(
                            "PostgreSQL did not answer a probe in time; sessions opened before \
                             are closed, and jobs running then get a lease to finish"
                        );
                    }
                    verdict.send_modify(|heard| heard.silences += 1);
                }
                quiet_before = silent;
                unanswered = if answered { 0 } else { unanswered + 1 };
                let reachable = unanswered < LOST_AFTER;
                if reachable != verdict.borrow().reachable {
                    if reachable {
                        tracing::info!("PostgreSQL answers again; taking jobs again");
                    } else {
                        tracing::warn!(
                            probes = unanswered,
                            "PostgreSQL does not answer; giving deliveries back and taking no jobs until it does"
                        );
                    }
                    verdict.send_modify(|heard| heard.reachable = reachable);
                }
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
        Self {
            heard: watching,
            silences,
        }
    }

    /// Returns once the database counts as reachable (at once if it does).
    pub(crate) async fn reachable(&mut self) {
        // The sender lives as long as the probe; should it end, nothing is known: go on.
        let _ = self.heard.wait_for(|heard| heard.reachable).await;
    }

    /// Returns once the database counts as lost (never, should the probe end).
    pub(crate) async fn lost(&mut self) {
        if self.heard.wait_for(|heard| !heard.reachable).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// From now on, the pool closes every session opened until now when it comes back or is
    /// next taken (as after a silence).
    pub(crate) fn distrust_sessions_now(&self) {
        self.silences.record(std::time::Instant::now());
    }

    /// Returns once a silence comes after the `seen` first ones; gives their count then
    /// (never returns, should the probe end).
    pub(crate) async fn silence_after(&mut self, seen: u64) -> u64 {
        let heard = self
            .heard
            .wait_for(|heard| heard.silences > seen)
            .await
            .map(|heard| heard.silences);
        match heard {
            Ok(silences) => silences,
            Err(_) => std::future::pending().await,
        }
    }
}
