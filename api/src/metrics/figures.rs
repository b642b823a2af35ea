//! The figures read from the database and the broker, at most once per `READING_FRESH` whatever
//! the number of scrapes.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use provisioner_shared::{
    db::{self, figures, jobs::Stats},
    queue::{BATCH_QUEUE, CREATE_TENANT_QUEUE, Lane},
    seal::Sealer,
};

use super::{broker::BrokerReadings, client_label, family, typed_family};
use crate::cache::Cache;

/// A reading of the database's figures this recent serves every scrape.
const READING_FRESH: Duration = Duration::from_secs(2);

/// Longest a scrape waits for the database's figures: past it the scrape goes on without them
/// (`provisioner_database_reachable 0`), well within Prometheus's default scrape timeout
/// (10 s), rather than waiting for the pool's own limit and answering nothing.
const READING_WAIT: Duration = Duration::from_secs(3);

/// An API's figures from its database and broker for `/metrics`. `/metrics` needs no token, so
/// a flood of scrapes must not become a flood of statements (nor of writes, see
/// `render_database`): one reading serves every scrape for `READING_FRESH`, the scrapes that
/// arrive while it is read wait for it rather than read their own, and one reading at a time
/// runs, in a task of its own (`turn`), to its end: a scrape that stops waiting for a slow
/// database leaves it running, and the next scrape waits for its turn rather than adding
/// another reading (and another connection held) beside it. The broker's figures are read
/// beside the database's, each within its own bounds. Each API has its own (its own database
/// and broker): several APIs in one process, as the tests run them, never serve each other's.
#[derive(Debug)]
pub(crate) struct Figures {
    broker: BrokerReadings,
    reading: Cache<(), Arc<str>>,
    turn: Arc<tokio::sync::Semaphore>,
}

/// Whether a scrape read the database's figures (its `provisioner_database_reachable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Database {
    Read,
    Unread,
}

impl Figures {
    pub(crate) fn new(amqp_url: secrecy::SecretString) -> Self {
        Self {
            broker: BrokerReadings::new(amqp_url),
            reading: Cache::new(READING_FRESH, 1),
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The database's figures as Prometheus text: the last reading if it is fresh, else the
    /// reading under way, else a new one when no other runs, within `READING_WAIT`. A reading
    /// that fails is not kept: the next scrape reads again.
    pub(crate) async fn database_text(
        &self,
        pool: &sqlx::PgPool,
        sealer: &Sealer,
    ) -> Result<Arc<str>, sqlx::Error> {
        let read = self.reading.get((), || async {
            let turn = self
                .turn
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let (pool, sealer) = (pool.clone(), sealer.clone());
            tokio::spawn(async move {
                let _turn = turn;
                render_database(&pool, &sealer).await.map(Arc::from)
            })
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("the figures' reading ended: {e}")))?
        });
        tokio::time::timeout(READING_WAIT, read)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    /// The broker's figures as Prometheus text (`BrokerReadings::read` bounds its own time).
    pub(crate) async fn broker_text(&self) -> String {
        render_broker(self.broker.read().await)
    }
}

/// The figures of one reading, as Prometheus text: the cluster's job figures from the database,
/// the age of the oldest waiting work by queue, held batch items, failures by code among the
/// recent endings, the busiest clients' share of the active work, each client by its label
/// (`client_label`: a pseudonym, never its id; so a client that drops out of the busiest ten
/// leaves no stale series), and, from the broker, the job queues' ready messages and consumers.
/// Written here rather than into the process-wide recorder, so that several APIs in one process
/// (as the tests run them) each show their own.
async fn render_database(pool: &sqlx::PgPool, sealer: &Sealer) -> Result<String, sqlx::Error> {
    let stats = db::jobs::stats(pool).await?;
    // Each worker's sweep folds the changes of held items too; a reading does it as well (once
    // per reading, whatever the number of scrapes), so that a deployment whose workers are
    // scaled to zero still reads a few rows, and forgets the old endings, which nothing else
    // does. A fold that fails leaves the sums exact: the reading goes on.
    db::jobs::prune_endings(pool).await?;
    if let Err(e) = figures::compact_held_changes(pool).await {
        tracing::warn!(error = %e, "folding the changes of held batch items failed");
    }
    let outbox_lag = db::outbox::lag_seconds(&mut *pool.acquire().await?).await?;
    let mut out = String::new();
    job_figures(&mut out, &stats, outbox_lag);

    let backlog = figures::backlog(pool).await?;
    let failures = figures::recent_failures(pool).await?;
    let shares = figures::client_shares(pool).await?;

    let age = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or(0.0, |at| {
            (backlog.now - at).num_milliseconds().max(0) as f64 / 1000.0
        })
    };
    family(
        &mut out,
        "provisioner_queue_oldest_age_seconds",
        "Seconds the oldest queued job of each job queue has waited since it was sent there (batch items since their release); 0 when none waits",
    );
    let tiers = Lane::ALL.into_iter().filter_map(|lane| match lane {
        Lane::Backlog(tier) => Some((
            lane.queue(),
            backlog
                .oldest_backlog_tiers
                .get(usize::from(tier))
                .copied()
                .flatten(),
        )),
        _ => None,
    });
    let queues = [(CREATE_TENANT_QUEUE, backlog.oldest_interactive)]
        .into_iter()
        .chain(tiers)
        .chain([(BATCH_QUEUE, backlog.oldest_released)]);
    for (queue, at) in queues {
        let _ = writeln!(
            out,
            "provisioner_queue_oldest_age_seconds{{queue=\"{queue}\"}} {}",
            age(at)
        );
    }
    family(
        &mut out,
        "provisioner_batch_items_held",
        "Batch items held back in PostgreSQL for fairness, not on the broker yet",
    );
    let _ = writeln!(out, "provisioner_batch_items_held {}", backlog.held);
    family(
        &mut out,
        "provisioner_batch_held_oldest_age_seconds",
        "Seconds since the oldest batch with held items was accepted; 0 when none holds any",
    );
    let _ = writeln!(
        out,
        "provisioner_batch_held_oldest_age_seconds {}",
        age(backlog.oldest_held)
    );

    family(
        &mut out,
        "provisioner_job_recent_endings",
        "Jobs that ended among the most recent endings of the last hour (at most 10000): the sample of the failure figures",
    );
    let _ = writeln!(out, "provisioner_job_recent_endings {}", failures.endings);
    family(
        &mut out,
        "provisioner_job_recent_failures",
        "Failed jobs by code among the most recent endings of the last hour (at most 10000)",
    );
    let mut by_label: Vec<(&str, i64)> = FAILURE_CODES.iter().map(|c| (*c, 0)).collect();
    for (code, n) in &failures.by_code {
        let label = FAILURE_CODES
            .iter()
            .find(|c| **c == code.to_string())
            .copied()
            .unwrap_or("other");
        if let Some(slot) = by_label.iter_mut().find(|(l, _)| *l == label) {
            slot.1 += n;
        }
    }
    for (code, n) in by_label {
        let _ = writeln!(
            out,
            "provisioner_job_recent_failures{{code=\"{code}\"}} {n}"
        );
    }

    family(
        &mut out,
        "provisioner_client_active_jobs",
        "Queued and running jobs (single and batch items) of the ten busiest clients, each by its pseudonym (provisioner-api client list shows each client's), and of all others together (client=\"other\", other=\"true\")",
    );
    let named: i64 = shares.top.iter().map(|(_, n)| n).sum();
    for (client, n) in &shares.top {
        let _ = writeln!(
            out,
            "provisioner_client_active_jobs{{client=\"{}\"}} {n}",
            client_label(sealer, client)
        );
    }
    let _ = writeln!(
        out,
        "provisioner_client_active_jobs{{client=\"other\",other=\"true\"}} {}",
        (shares.total - named).max(0)
    );

    Ok(out)
}

/// The broker's figures of one reading (`None`: the broker could not be read) as Prometheus
/// text: the job queues' ready messages and consumers, and the dead letters when read.
fn render_broker(queues: Option<super::broker::QueueFigures>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "provisioner_broker_reachable",
        "1 when this scrape read the job queues from the broker, 0 when it could not",
    );
    let _ = writeln!(
        out,
        "provisioner_broker_reachable {}",
        u8::from(queues.is_some())
    );
    if let Some((queues, dead_letters)) = queues {
        type Figure = fn(&provisioner_shared::broker_figures::QueueFigures) -> u32;
        let per_queue: [(&str, &str, Figure); 2] = [
            (
                "provisioner_queue_messages_ready",
                "Messages of each job queue waiting for a consumer",
                |q| q.ready,
            ),
            (
                "provisioner_queue_consumers",
                "Consumers of each job queue: one per worker process consuming it",
                |q| q.consumers,
            ),
        ];
        for (name, help, figure) in per_queue {
            family(&mut out, name, help);
            for q in &queues {
                let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", q.queue, figure(q));
            }
        }
        if let Some(dead_letters) = dead_letters {
            family(
                &mut out,
                "provisioner_dead_letters",
                "Messages waiting in provisioner.jobs.dead (nothing consumes it: an operator inspects and purges it)",
            );
            let _ = writeln!(out, "provisioner_dead_letters {dead_letters}");
        }
    }
    out
}

/// The failure codes a job may end with; any other is counted as `other`.
const FAILURE_CODES: [&str; 5] = ["400", "409", "500", "503", "other"];

/// The cluster-wide job figures from the database's aggregates.
fn job_figures(out: &mut String, stats: &Stats, outbox_lag_seconds: f64) {
    family(out, "provisioner_jobs", "Jobs stored, by status");
    for (status, n) in [
        ("queued", stats.queued),
        ("running", stats.running),
        ("succeeded", stats.succeeded),
        ("failed", stats.failed),
        ("cancelled", stats.cancelled),
    ] {
        let _ = writeln!(out, "provisioner_jobs{{status=\"{status}\"}} {n}");
    }
    for (name, help, n) in [
        (
            "provisioner_jobs_ended_last_hour",
            "Jobs that ended in the last hour",
            stats.recent,
        ),
        (
            "provisioner_lock_timeouts_last_hour",
            "Jobs that ended in the last hour with a lock timeout (503)",
            stats.lock_timeouts,
        ),
        (
            "provisioner_worker_panics",
            "Panics workers caught while handling deliveries, ever",
            stats.worker_panics,
        ),
    ] {
        family(out, name, help);
        let _ = writeln!(out, "{name} {n}");
    }
    for (name, help, p50, p99) in [
        (
            "provisioner_job_duration_seconds_last_hour",
            "Run time (first start to end) of the jobs that ran among the most recent endings of the last hour (at most 10000), by quantile",
            stats.duration_p50,
            stats.duration_p99,
        ),
        (
            "provisioner_lock_wait_seconds_last_hour",
            "Import lock wait of the jobs that ran among the most recent endings of the last hour (at most 10000; those that recorded one), by quantile",
            stats.lock_wait_p50,
            stats.lock_wait_p99,
        ),
    ] {
        // Quantiles over a window, as a summary reports them (without its sum and count).
        typed_family(out, name, help, "summary");
        let _ = writeln!(out, "{name}{{quantile=\"0.5\"}} {}", p50.unwrap_or(0.0));
        let _ = writeln!(out, "{name}{{quantile=\"0.99\"}} {}", p99.unwrap_or(0.0));
    }
    family(
        out,
        "provisioner_outbox_lag_seconds",
        "Seconds the oldest outbox row not yet published has waited since it was first due (a row the broker refused counts from its first try); 0 when none waits",
    );
    let _ = writeln!(out, "provisioner_outbox_lag_seconds {outbox_lag_seconds}");
}
