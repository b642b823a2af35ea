//! The jobs table: creation, lookup, listing and cancellation (here), the transitions a worker
//! makes under a lease (`lease`), aggregate figures (`stats`). Each transition bumps `version`,
//! writes its CloudEvent to the outbox and notifies waiters, in the caller's transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    db::{self, outbox},
    domain::{JobKind, JobStatus, JobView},
    queue,
    trace::TraceContext,
};

/// The channel on which job changes are announced (payload: the job id).
pub(crate) const NOTIFY_CHANNEL: &str = "provisioner_jobs";

macro_rules! columns {
    () => {
        "id, kind, tenant_url, status, version, code, error, attempts, created_at, \
         started_at, finished_at, tenant, skipped_numbers, batch_id, batch_item, client_id, \
         params, idempotency_key, request_digest, lease_token, lease_until, template_id, \
         traceparent"
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

pub(crate) const COLUMNS: &str = columns!();

// After the macros: the submodules use them.
mod lease;
mod reconcile;
mod stats;

pub use self::{
    lease::{
        Ending, ExpiredLease, claim, expired_leases, finish, lock_expired, lock_held,
        release_lease, renew_lease, retry_later,
    },
    reconcile::{PanicSite, record_panic, resend_stranded},
    stats::{Admission, QUANTILE_SAMPLE, Stats, active_count, admission, prune_endings, stats},
};

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
    pub batch_item: Option<i32>,
    pub client_id: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    pub lease_token: Option<Uuid>,
    pub lease_until: Option<DateTime<Utc>>,
    /// The stored template the job reads, while it is queued or running.
    pub template_id: Option<String>,
    /// The W3C trace context the job continues (`00-<trace id>-<span id>-<flags>`): the span
    /// of the request that made it, parent of the job's spans. Its message and events carry it.
    pub traceparent: Option<String>,
}

impl JobRow {
    /// The trace id of the job's trace context, as logs show it.
    pub fn trace_id(&self) -> Option<String> {
        crate::trace::trace_id_of(self.traceparent.as_deref())
    }

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
            batch_item: self.batch_item,
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
    /// The stored template the job reads (kept in the store until the job ends).
    pub template_id: Option<&'a str>,
    /// The span of the request that makes it (the job's spans are its children).
    pub trace: TraceContext,
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
                           idempotency_key, request_digest, template_id, traceparent)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10)
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
    .bind(job.template_id)
    .bind(job.trace.to_string())
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
    let message = queue::JobMessage::outbox(&row, Duration::ZERO);
    announce_with(conn, &row, Some(message)).await?;
    Ok(row)
}

/// Writes the event of the transition that produced `row` and wakes waiters; the end of a
/// batch's last item stops the batch.
async fn announce(conn: &mut PgConnection, row: &JobRow) -> Result<(), sqlx::Error> {
    announce_with(conn, row, None).await
}

/// `announce`, with the job's broker message written in the same statement as its event.
async fn announce_with(
    conn: &mut PgConnection,
    row: &JobRow,
    message: Option<outbox::OutboxMessage>,
) -> Result<(), sqlx::Error> {
    let event = queue::status_event(&row.view(), row.version, row.traceparent.as_deref());
    let id = row.id.to_string();
    let msgs: Vec<outbox::OutboxMessage> = message.into_iter().chain([event]).collect();
    outbox::insert_notifying(conn, &msgs, &[(NOTIFY_CHANNEL, &id)]).await?;
    if let Some(batch) = row.batch_id.filter(|_| row.status.is_terminal()) {
        db::batches::settle(conn, batch).await?;
    }
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
    /// Whose jobs (`None`: every client's, for operators).
    pub client_id: Option<&'a str>,
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
         WHERE ($1::text IS NULL OR client_id = $1)
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
    client_id: Option<&str>,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = transition(
        conn,
        transition_sql!(
            "status = 'cancelled', finished_at = now(), sealed_password = NULL, template_id = NULL",
            "id = $1 AND status = 'queued' AND ($2::text IS NULL OR client_id = $2)"
        ),
        id,
        |q| q.bind(client_id.map(str::to_owned)),
    )
    .await?;
    Ok(row)
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
