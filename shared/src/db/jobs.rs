//! The jobs table: creation, lookup, listing and every status transition. Each transition bumps
//! `version`, writes its CloudEvent to the outbox and notifies waiters, in the caller's
//! transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    db::outbox,
    domain::{JobError, JobKind, JobStatus, JobView, SkippedRange, TenantSummary},
    queue,
};

/// The channel on which job changes are announced (payload: the job id).
pub(crate) const NOTIFY_CHANNEL: &str = "provisioner_jobs";

macro_rules! columns {
    () => {
        "id, kind, tenant_url, status, version, code, error, attempts, created_at, \
         started_at, finished_at, tenant, skipped_numbers, batch_id, client_id, params, \
         idempotency_key, request_digest, lease_token, lease_until"
    };
}

/// `UPDATE jobs SET <set>, version = version + 1 WHERE <filter> RETURNING <columns>`.
macro_rules! transition_sql {
    ($set:literal, $filter:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            ", version = version + 1 WHERE ",
            $filter,
            " RETURNING ",
            columns!()
        )
    };
}

const COLUMNS: &str = columns!();

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: JobKind,
    pub tenant_url: String,
    pub status: JobStatus,
    pub version: i32,
    pub code: Option<i32>,
    pub error: Option<Value>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tenant: Option<Value>,
    pub skipped_numbers: Value,
    pub batch_id: Option<Uuid>,
    pub client_id: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    pub lease_token: Option<Uuid>,
    pub lease_until: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn view(&self) -> JobView {
        JobView {
            job_id: self.id,
            kind: self.kind,
            tenant_url: self.tenant_url.clone(),
            status: self.status,
            code: self.code,
            error: self
                .error
                .clone()
                .and_then(|e| serde_json::from_value(e).ok()),
            attempts: self.attempts,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            tenant: self
                .tenant
                .clone()
                .and_then(|t| serde_json::from_value(t).ok()),
            skipped_access_numbers: serde_json::from_value(self.skipped_numbers.clone())
                .unwrap_or_default(),
            batch_id: self.batch_id,
        }
    }
}

#[derive(Debug)]
pub struct NewJob<'a> {
    pub id: Uuid,
    pub kind: JobKind,
    pub tenant_url: &'a str,
    pub client_id: &'a str,
    pub params: Value,
    pub sealed_password: Option<Vec<u8>>,
    pub idempotency_key: Option<&'a str>,
    pub request_digest: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("a queued or running job exists for this tenant")]
    ActiveJobExists,
    #[error("the idempotency key is taken")]
    IdempotencyKeyTaken,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records a queued job, its job message and its `job.queued` event.
pub async fn insert(conn: &mut PgConnection, job: NewJob<'_>) -> Result<JobRow, InsertError> {
    let row: JobRow = sqlx::query_as(&format!(
        "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, sealed_password,
                           idempotency_key, request_digest)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8)
         RETURNING {COLUMNS}"
    ))
    .bind(job.id)
    .bind(job.kind)
    .bind(job.tenant_url)
    .bind(job.client_id)
    .bind(&job.params)
    .bind(&job.sealed_password)
    .bind(job.idempotency_key)
    .bind(job.request_digest)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        if super::violates(&e, "jobs_one_active_per_tenant") {
            InsertError::ActiveJobExists
        } else if super::violates(&e, "jobs_idempotency") {
            InsertError::IdempotencyKeyTaken
        } else {
            InsertError::Database(e)
        }
    })?;
    outbox::insert(conn, &queue::JobMessage::outbox(row.id, Duration::ZERO)).await?;
    announce(conn, &row).await?;
    Ok(row)
}

/// Writes the event of the transition that produced `row` and wakes waiters.
async fn announce(conn: &mut PgConnection, row: &JobRow) -> Result<(), sqlx::Error> {
    outbox::insert(conn, &queue::status_event(&row.view(), row.version)).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(row.id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A job by id, as seen by `client_id` (`None`: any client, for workers).
pub async fn find(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(exec)
    .await
}

pub async fn find_by_idempotency_key(
    exec: impl PgExecutor<'_>,
    client_id: &str,
    key: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE client_id = $1 AND idempotency_key = $2"
    ))
    .bind(client_id)
    .bind(key)
    .fetch_optional(exec)
    .await
}

/// Filters of the job list; `after` is the (created_at, id) of the last item already seen.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    pub client_id: &'a str,
    pub status: Option<JobStatus>,
    pub tenant_url: Option<&'a str>,
    pub batch_id: Option<Uuid>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Jobs newest first.
pub async fn list(
    exec: impl PgExecutor<'_>,
    f: &ListFilter<'_>,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE client_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR tenant_url = $3)
           AND ($4::uuid IS NULL OR batch_id = $4)
           AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
         ORDER BY created_at DESC, id DESC
         LIMIT $7"
    ))
    .bind(f.client_id)
    .bind(f.status)
    .bind(f.tenant_url)
    .bind(f.batch_id)
    .bind(f.after.map(|a| a.0))
    .bind(f.after.map(|a| a.1))
    .bind(f.limit)
    .fetch_all(exec)
    .await
}

/// queued -> cancelled. `None` when the job is not queued (or not the client's).
pub async fn cancel(
    conn: &mut PgConnection,
    id: Uuid,
    client_id: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = transition(
        conn,
        transition_sql!(
            "status = 'cancelled', finished_at = now(), sealed_password = NULL",
            "id = $1 AND status = 'queued' AND client_id = $2"
        ),
        id,
        |q| q.bind(client_id.to_owned()),
    )
    .await?;
    Ok(row)
}

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
         sealed_password = NULL, lease_token = NULL, lease_until = NULL", "id = $1 AND lease_token = $2 AND status = 'running'"),
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
            "status = 'queued', lease_token = NULL, lease_until = NULL",
            "id = $1 AND lease_token = $2 AND status = 'running'"
        ),
        id,
        |q| q.bind(token),
    )
    .await?;
    if row.is_some() {
        outbox::insert(conn, &queue::JobMessage::outbox(id, delay)).await?;
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

/// The sealed administrator password of a job.
pub async fn sealed_password(
    exec: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT sealed_password FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
        .map(Option::flatten)
}

type Query = sqlx::query::QueryAs<'static, sqlx::Postgres, JobRow, sqlx::postgres::PgArguments>;

/// Runs a statement made by `transition_sql!` (`$1` is the id), then announces the new version.
async fn transition(
    conn: &mut PgConnection,
    sql: &'static str,
    id: Uuid,
    bind: impl FnOnce(Query) -> Query,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = bind(sqlx::query_as(sql).bind(id))
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = &row {
        announce(conn, row).await?;
    }
    Ok(row)
}

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
             (SELECT count(*) FROM recent WHERE code = 503) AS lock_timeouts",
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
