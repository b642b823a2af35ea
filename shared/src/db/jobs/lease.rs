//! The transitions a worker makes under a job's lease: claim, renewal, hand-back, the job's
//! end or retry, and taking over from a holder whose lease ran out.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{JobRow, transition};
use crate::{
    db::outbox,
    domain::{JobError, JobStatus, SkippedRange, TenantSummary},
    queue,
};

/// queued -> running under a fresh lease held by `token`. `None` when the job is not queued.
pub async fn claim(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    lease: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    transition(
        conn,
        transition_sql!(
            "status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, now()),
         lease_token = $2, lease_until = now() + make_interval(secs => $3)",
            "id = $1 AND status = 'queued'"
        ),
        id,
        |q| q.bind(token).bind(lease.as_secs_f64()),
    )
    .await
}

/// Extends the lease; `false` when `token` no longer holds the job.
pub async fn renew_lease(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_token = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(lease.as_secs_f64())
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Lets the lease of a job whose work was cut short (shutdown) expire now, so a redelivery may
/// take it at once.
pub async fn release_lease(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET lease_until = now() WHERE id = $1 AND lease_token = $2 AND status = 'running'")
        .bind(id)
        .bind(token)
        .execute(exec)
        .await
        .map(drop)
}

/// How a running job ends.
#[derive(Debug, Clone)]
pub enum Ending {
    Succeeded {
        /// How long the import waited for its lock.
        lock_wait: Duration,
        tenant: TenantSummary,
        skipped: Vec<SkippedRange>,
    },
    Failed {
        code: i32,
        error: JobError,
    },
}

/// running -> succeeded | failed, only while `token` holds the lease.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    ending: &Ending,
) -> Result<Option<JobRow>, sqlx::Error> {
    let (status, code, error, tenant, skipped, lock_wait_ms) = match ending {
        Ending::Succeeded {
            tenant,
            skipped,
            lock_wait,
        } => (
            JobStatus::Succeeded,
            200,
            None,
            Some(serde_json::to_value(tenant).expect("serializes")),
            serde_json::to_value(skipped).expect("serializes"),
            Some(i32::try_from(lock_wait.as_millis()).unwrap_or(i32::MAX)),
        ),
        Ending::Failed { code, error } => (
            JobStatus::Failed,
            *code,
            Some(serde_json::to_value(error).expect("serializes")),
            None,
            Value::Array(vec![]),
            None,
        ),
    };
    transition(
        conn,
        transition_sql!("status = $3, code = $4, error = $5, tenant = $6, skipped_numbers = $7, lock_wait_ms = $8, finished_at = now(),
         sealed_password = CASE WHEN $3 = 'failed' AND batch_id IS NOT NULL THEN sealed_password END,
         template_id = NULL, lease_token = NULL, lease_until = NULL", "id = $1 AND lease_token = $2 AND status = 'running'"),
        id,
        |q| q.bind(token).bind(status).bind(code).bind(error).bind(tenant).bind(skipped).bind(lock_wait_ms),
    )
    .await
}

/// running -> queued after a transient failure: the job message is published again after
/// `delay`.
pub async fn retry_later(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    delay: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = transition(
        conn,
        transition_sql!(
            "status = 'queued', lease_token = NULL, lease_until = NULL,
             sent_at = now() + make_interval(secs => $3)",
            "id = $1 AND lease_token = $2 AND status = 'running'"
        ),
        id,
        |q| q.bind(token).bind(delay.as_secs_f64()),
    )
    .await?;
    if let Some(row) = &row {
        outbox::insert(conn, &queue::JobMessage::outbox(row, delay)).await?;
    }
    Ok(row)
}

/// Running jobs whose lease ran out: their worker died or hung.
pub async fn expired_leases(
    exec: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE status = 'running' AND lease_until < now()
         ORDER BY lease_until LIMIT $1",
    )
    .bind(limit)
    .fetch_all(exec)
    .await
}

/// The lease of a running job whose holder let it run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredLease {
    pub token: Uuid,
    pub attempts: i32,
}

/// Locks a running job whose lease ran out (its worker died or hung), for the caller to take
/// it back with `retry_later` or `finish` under the returned token. `None`: the job is not
/// running, or its lease is alive.
pub async fn lock_expired(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<ExpiredLease>, sqlx::Error> {
    let holder: Option<(Uuid, i32)> = sqlx::query_as(
        "SELECT lease_token, attempts FROM jobs
         WHERE id = $1 AND status = 'running' AND lease_until < now() FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(holder.map(|(token, attempts)| ExpiredLease { token, attempts }))
}

/// Locks a running job whose lease `token` holds, for the caller to give it up with
/// `retry_later` or `finish` (its handling crashed). `None`: `token` holds no lease on it.
pub async fn lock_held(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
) -> Result<Option<ExpiredLease>, sqlx::Error> {
    let attempts: Option<i32> = sqlx::query_scalar(
        "SELECT attempts FROM jobs WHERE id = $1 AND lease_token = $2 AND status = 'running'
         FOR UPDATE",
    )
    .bind(id)
    .bind(token)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(attempts.map(|attempts| ExpiredLease { token, attempts }))
}
