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
    stats::{QUANTILE_SAMPLE, Stats, prune_endings, stats},
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
    pub params: &'a Value,
    pub sealed_password: Option<&'a [u8]>,
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

/// What a submission must satisfy to be recorded, checked in the statement that records it.
#[derive(Debug, Clone, Copy)]
pub struct Admit<'a> {
    /// Refuse when a tenant with the URL exists or a batch item for it is active (creates;
    /// imports learn it from their job).
    pub refuse_existing_tenant: bool,
    /// Most queued and running jobs the client may have outside batches.
    pub max_active_jobs: i64,
    /// What the job's stored template (`NewJob::template_id`) must be; it is locked until
    /// the job is recorded.
    pub template: TemplateCheck<'a>,
}

/// The condition on a submission's stored template.
#[derive(Debug, Clone, Copy)]
pub enum TemplateCheck<'a> {
    /// None to check: the job names no stored template, or the caller's transaction stored it.
    None,
    /// Stored (an upload whose bytes the store may hold already).
    Stored,
    /// Stored and visible to this viewer (a template named by id).
    VisibleTo(db::templates::Viewer<'a>),
}

/// The outcome of `submit` when nothing failed.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Recorded, with its job message and `job.queued` event: the job as stored.
    Recorded(Box<JobRow>),
    /// The template is not stored, or not visible to the viewer.
    TemplateNotVisible,
    /// A tenant with the URL exists.
    TenantExists,
    /// A queued or running batch item names the URL.
    BatchItemActive,
    /// The client has `max_active_jobs` queued or running jobs already.
    TooManyActive,
}

/// Records a queued job, its job message and its `job.queued` event, after the admission
/// checks of `admit`, in one statement: on a connection outside a transaction it commits on its
/// own, so a create costs one round trip. The job's `createdAt` is this process's clock (the
/// event that announces it is written in the same statement).
pub async fn submit(
    conn: &mut PgConnection,
    job: &NewJob<'_>,
    admit: Admit<'_>,
) -> Result<SubmitOutcome, InsertError> {
    let now = Utc::now();
    let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let row = JobRow {
        id: job.id,
        kind: job.kind,
        tenant_url: job.tenant_url.to_owned(),
        status: JobStatus::Queued,
        version: 1,
        code: None,
        error: None,
        attempts: 0,
        created_at,
        started_at: None,
        finished_at: None,
        tenant: None,
        skipped_numbers: Value::Array(Vec::new()),
        batch_id: None,
        batch_item: None,
        client_id: job.client_id.to_owned(),
        params: job.params.clone(),
        idempotency_key: job.idempotency_key.map(str::to_owned),
        request_digest: job.request_digest.map(str::to_owned),
        lease_token: None,
        lease_until: None,
        template_id: job.template_id.map(str::to_owned),
        traceparent: Some(job.trace.to_string()),
    };
    let msgs = [
        queue::JobMessage::outbox(&row, Duration::ZERO),
        queue::status_event(&row.view(), row.version, row.traceparent.as_deref()),
    ];
    let column = |f: fn(&outbox::OutboxMessage) -> &str| msgs.iter().map(f).collect::<Vec<_>>();
    let payloads: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    let traces: Vec<Option<&str>> = msgs.iter().map(|m| m.traceparent.as_deref()).collect();
    let (check, owner) = match admit.template {
        TemplateCheck::None => (0_i16, None),
        TemplateCheck::Stored => (1, None),
        TemplateCheck::VisibleTo(viewer) => (2, viewer.owner()),
    };
    let id_text = row.id.to_string();
    let checks: (bool, bool, bool, i64, i64) = sqlx::query_as(
        "WITH admission AS (
             SELECT
                 ($13 = 0 OR EXISTS (
                     SELECT 1 FROM templates t
                     WHERE t.id = $9
                       AND ($13 = 1 OR EXISTS (SELECT 1 FROM client_templates k
                                               WHERE k.template_id = t.id
                                                 AND ($14::text IS NULL OR k.client_id = $14)))
                     FOR KEY SHARE OF t)) AS template_visible,
                 ($12 AND EXISTS (SELECT 1 FROM tenants WHERE url = $3)) AS tenant_exists,
                 ($12 AND EXISTS (SELECT 1 FROM jobs WHERE tenant_url = $3 AND batch_id IS NOT NULL
                                                     AND status IN ('queued', 'running')))
                     AS batch_item_active,
                 (SELECT coalesce(sum(n), 0)::bigint FROM client_active_jobs WHERE client_id = $4)
                     AS active_jobs
         ), job AS (
             INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, sealed_password,
                               idempotency_key, request_digest, template_id, traceparent,
                               created_at)
             SELECT $1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11
             FROM admission a
             WHERE a.template_visible AND NOT a.tenant_exists AND NOT a.batch_item_active
               AND a.active_jobs < $15
             RETURNING id
         ), messages AS (
             INSERT INTO outbox (exchange, routing_key, message_id, content_type, payload,
                                 traceparent)
             SELECT e, r, m, c, p, tp
             FROM job, UNNEST($16::text[], $17::text[], $18::text[], $19::text[], $20::bytea[],
                              $21::text[]) AS t(e, r, m, c, p, tp)
         )
         SELECT a.template_visible, a.tenant_exists, a.batch_item_active, a.active_jobs,
                (SELECT count(*) FROM (SELECT pg_notify($22, ''), pg_notify($23, $24)
                                       FROM job) n) AS recorded
         FROM admission a",
    )
    .bind(row.id)
    .bind(row.kind)
    .bind(&row.tenant_url)
    .bind(&row.client_id)
    .bind(&row.params)
    .bind(job.sealed_password)
    .bind(job.idempotency_key)
    .bind(job.request_digest)
    .bind(job.template_id)
    .bind(row.traceparent.as_deref())
    .bind(row.created_at)
    .bind(admit.refuse_existing_tenant)
    .bind(check)
    .bind(owner)
    .bind(admit.max_active_jobs)
    .bind(column(|m| &m.exchange))
    .bind(column(|m| &m.routing_key))
    .bind(column(|m| &m.message_id))
    .bind(column(|m| &m.content_type))
    .bind(&payloads)
    .bind(&traces)
    .bind(outbox::NOTIFY_CHANNEL)
    .bind(NOTIFY_CHANNEL)
    .bind(&id_text)
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
    let (template_visible, tenant_exists, batch_item_active, active_jobs, recorded) = checks;
    Ok(match () {
        () if recorded == 1 => SubmitOutcome::Recorded(Box::new(row)),
        () if !template_visible => SubmitOutcome::TemplateNotVisible,
        () if tenant_exists => SubmitOutcome::TenantExists,
        () if batch_item_active => SubmitOutcome::BatchItemActive,
        () if active_jobs >= admit.max_active_jobs => SubmitOutcome::TooManyActive,
        () => {
            return Err(InsertError::Database(sqlx::Error::Protocol(
                "a submission was neither recorded nor refused".to_owned(),
            )));
        }
    })
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
