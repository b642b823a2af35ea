//! Aggregate job figures for `/metrics` and per-client limits.

use sqlx::PgExecutor;

/// Aggregate figures for `/metrics`: jobs by status, and run time and lock wait quantiles of
/// the jobs that ended in the last hour.
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

pub async fn stats(exec: impl PgExecutor<'_>) -> Result<Stats, sqlx::Error> {
    sqlx::query_as(
        "WITH recent AS (
             SELECT EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS secs, lock_wait_ms, code
             FROM jobs WHERE finished_at > now() - interval '1 hour' AND started_at IS NOT NULL)
         SELECT
             (SELECT count(*) FROM jobs WHERE status = 'queued') AS queued,
             (SELECT count(*) FROM jobs WHERE status = 'running') AS running,
             (SELECT count(*) FROM jobs WHERE status = 'succeeded') AS succeeded,
             (SELECT count(*) FROM jobs WHERE status = 'failed') AS failed,
             (SELECT count(*) FROM jobs WHERE status = 'cancelled') AS cancelled,
             (SELECT count(*) FROM recent) AS recent,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY secs) FROM recent) AS duration_p50,
             (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FROM recent) AS duration_p99,
             (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lock_wait_ms) / 1000.0 FROM recent) AS lock_wait_p50,
             (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY lock_wait_ms) / 1000.0 FROM recent) AS lock_wait_p99,
             (SELECT count(*) FROM recent WHERE code = 503) AS lock_timeouts,
             (SELECT COALESCE(sum(count), 0)::bigint FROM worker_panics) AS worker_panics",
    )
    .fetch_one(exec)
    .await
}

/// Queued and running jobs of one client.
pub async fn active_count(exec: impl PgExecutor<'_>, client_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE client_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(client_id)
    .fetch_one(exec)
    .await
}
