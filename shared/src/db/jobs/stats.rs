//! Aggregate job figures for `/metrics` and per-client limits.

use sqlx::PgExecutor;

/// Aggregate figures for `/metrics`: jobs by status and endings in the last hour (kept by
/// triggers, so reading them costs the same at any table size), and run time and lock wait
/// quantiles of the most recent endings of the last hour (at most `QUANTILE_SAMPLE`).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Stats {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub recent: i64,
    pub duration_p50: Option<f64>,
    pub duration_p99: Option<f64>,
    pub lock_wait_p50: Option<f64>,
    pub lock_wait_p99: Option<f64>,
    pub lock_timeouts: i64,
    /// Panics workers caught while handling deliveries, ever.
    pub worker_panics: i64,
}

/// Most recent endings the quantiles are computed over (those of them that ran).
pub const QUANTILE_SAMPLE: i64 = 10_000;

pub async fn stats(exec: impl PgExecutor<'_>) -> Result<Stats, sqlx::Error> {
    sqlx::query_as(
        "WITH counts AS (SELECT status, sum(n)::bigint AS n FROM job_counts GROUP BY status),
         endings AS (
             SELECT coalesce(sum(ended), 0)::bigint AS ended,
                    coalesce(sum(lock_timeouts), 0)::bigint AS lock_timeouts
             FROM job_endings WHERE minute > now() - interval '1 hour'),
         -- The last hour's most recent endings, of which those that ran: a scrape reads at
         -- most $1 entries of `jobs_finished`, however many of them never started (the
         -- cancelled items of a big batch), where looking for $1 that ran read them all.
         sample AS (
             SELECT EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS secs, lock_wait_ms
             FROM (SELECT finished_at, started_at, lock_wait_ms FROM jobs
                   WHERE finished_at > now() - interval '1 hour'
                   ORDER BY finished_at DESC LIMIT $1) recent
             WHERE started_at IS NOT NULL)
         SELECT
             coalesce((SELECT n FROM counts WHERE status = 'queued'), 0) AS queued,
             coalesce((SELECT n FROM counts WHERE status = 'running'), 0) AS running,
             coalesce((SELECT n FROM counts WHERE status = 'succeeded'), 0) AS succeeded,
             coalesce((SELECT n FROM counts WHERE status = 'failed'), 0) AS failed,
             coalesce((SELECT n FROM counts WHERE status = 'cancelled'), 0) AS cancelled,
             (SELECT ended FROM endings) AS recent,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY secs) FROM sample) AS duration_p50,
             (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FROM sample) AS duration_p99,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lock_wait_ms) / 1000.0 FROM sample) AS lock_wait_p50,
             (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY lock_wait_ms) / 1000.0 FROM sample) AS lock_wait_p99,
             (SELECT lock_timeouts FROM endings) AS lock_timeouts,
             (SELECT COALESCE(sum(count), 0)::bigint FROM worker_panics) AS worker_panics",
    )
    .bind(QUANTILE_SAMPLE)
    .fetch_one(exec)
    .await
}

/// Forgets per-minute endings older than two hours (the figures look back one).
pub async fn prune_endings(exec: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM job_endings WHERE minute < now() - interval '2 hours'")
        .execute(exec)
        .await
        .map(|r| r.rows_affected())
}
