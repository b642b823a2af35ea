//! Retention: ended jobs, ended batches (with their jobs) and long-expired tokens are removed
//! some time after they ended, a chunk per statement. Each chunk reads an index holding only
//! what may go, oldest first, and skips rows another transaction holds, so a purge neither
//! grows with what stays nor makes a hot path wait.

use std::time::Duration;

use sqlx::PgExecutor;

/// Rows one statement removes at most.
pub const CHUNK: i64 = 500;

/// Removes up to `CHUNK` jobs outside batches that ended more than `retention` ago (with their
/// idempotency keys, which live on the job). Returns how many went.
pub async fn purge_jobs(
    exec: impl PgExecutor<'_>,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    purge_older(
        exec,
        retention,
        "batch_id IS NULL AND finished_at IS NOT NULL",
        "finished_at",
    )
    .await
}

/// Removes up to `CHUNK` batch items' jobs that a retry replaced more than `retention` ago,
/// whatever their batch's state: a batch retried again and again keeps them no longer than any
/// ended job, and each stays readable the whole retention after its replacement. Returns how
/// many went.
pub async fn purge_superseded_jobs(
    exec: impl PgExecutor<'_>,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    purge_older(
        exec,
        retention,
        "superseded_at IS NOT NULL",
        "superseded_at",
    )
    .await
}

/// Removes up to `CHUNK` jobs matching `which` (the predicate of a partial index on `since`)
/// whose `since` is more than `retention` ago, oldest first.
async fn purge_older(
    exec: impl PgExecutor<'_>,
    retention: Duration,
    which: &'static str,
    since: &'static str,
) -> Result<u64, sqlx::Error> {
    sqlx::query(&format!(
        "DELETE FROM jobs WHERE id IN (
             SELECT id FROM jobs
             WHERE {which} AND {since} < now() - make_interval(secs => $1)
             ORDER BY {since} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    ))
    .bind(retention.as_secs_f64())
    .bind(CHUNK)
    .execute(exec)
    .await
    .map(|r| r.rows_affected())
}

/// Removes up to `CHUNK` batches that ended more than `retention` ago (their template pins
/// and download leases go with them), and records them so their jobs follow
/// (`purge_batch_jobs`). Returns how many went.
pub async fn purge_batches(
    exec: impl PgExecutor<'_>,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "WITH gone AS (
             DELETE FROM batches WHERE id IN (
                 SELECT id FROM batches
                 WHERE status <> 'running' AND finished_at < now() - make_interval(secs => $1)
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id)
         INSERT INTO purged_batches (id) SELECT id FROM gone ON CONFLICT DO NOTHING",
    )
    .bind(retention.as_secs_f64())
    .bind(CHUNK)
    .execute(exec)
    .await
    .map(|r| r.rows_affected())
}

/// Removes up to `CHUNK` ended jobs of removed batches, and forgets the removed batches none
/// of whose jobs remain. Returns how many jobs went.
pub async fn purge_batch_jobs(exec: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH doomed AS (
             SELECT j.id FROM purged_batches p CROSS JOIN LATERAL (
                 SELECT id FROM jobs
                 WHERE batch_id = p.id AND finished_at IS NOT NULL
                 LIMIT $1 FOR UPDATE SKIP LOCKED) j
             LIMIT $1),
         gone AS (DELETE FROM jobs WHERE id IN (SELECT id FROM doomed) RETURNING batch_id),
         emptied AS (
             DELETE FROM purged_batches p
             WHERE NOT EXISTS (SELECT 1 FROM gone)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = p.id))
         SELECT count(*) FROM gone",
    )
    .bind(CHUNK)
    .fetch_one(exec)
    .await
    .map(|n: i64| n as u64)
}

/// Removes up to `CHUNK` bearer tokens that expired more than a day ago (until then a request
/// with one is still told its token expired, in the logs).
pub async fn purge_tokens(exec: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM access_tokens WHERE token_hash IN (
             SELECT token_hash FROM access_tokens WHERE expires_at < now() - interval '1 day'
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind(CHUNK)
    .execute(exec)
    .await
    .map(|r| r.rows_affected())
}
