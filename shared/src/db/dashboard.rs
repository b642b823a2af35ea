//! Reads of the dashboard (`/ui`) that the JSON routes do not make: the overview's figures, a
//! batch's failures grouped, a job's timing, the batches that used a template, and ending a
//! dashboard session. Every query is bounded (a `LIMIT`, a sample, or one batch's items) and
//! served by an index.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::JobStatus;

/// Most recent endings (or, for one client, most recent jobs) the overview's rates look at.
pub const OVERVIEW_SAMPLE: i64 = 10_000;
/// Most running jobs the overview lists.
pub const RUNNING_SHOWN: i64 = 20;
/// Most failure groups a batch page shows.
pub const FAILURE_GROUPS: i64 = 20;
/// Most batches listed per template.
pub const BATCHES_PER_TEMPLATE: i64 = 5;

/// The system as an operator sees it, beyond `jobs::stats`.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct SystemFigures {
    /// Endings and failures among the most recent endings of the last hour (at most
    /// `OVERVIEW_SAMPLE`).
    pub sampled_endings: i64,
    pub sampled_failures: i64,
    /// Sessions waiting for an advisory lock now.
    pub lock_waiters: i64,
}

pub async fn system_figures(exec: impl PgExecutor<'_>) -> Result<SystemFigures, sqlx::Error> {
    sqlx::query_as(
        "WITH recent AS (
             SELECT status FROM jobs
             WHERE finished_at > now() - interval '1 hour'
             ORDER BY finished_at DESC LIMIT $1)
         SELECT
             (SELECT count(*) FROM recent) AS sampled_endings,
             (SELECT count(*) FROM recent WHERE status = 'failed') AS sampled_failures,
             (SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
                 AS lock_waiters",
    )
    .bind(OVERVIEW_SAMPLE)
    .fetch_one(exec)
    .await
}

/// Jobs of one client by status, among its most recent jobs of the last hour (at most
/// `OVERVIEW_SAMPLE`), and how many of them ended in that hour.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct ClientFigures {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

pub async fn client_figures(
    exec: impl PgExecutor<'_>,
    client_id: &str,
) -> Result<ClientFigures, sqlx::Error> {
    sqlx::query_as(&CLIENT_FIGURES_SQL)
        .bind(client_id)
        .bind(OVERVIEW_SAMPLE)
        .fetch_one(exec)
        .await
}

/// `client_figures`' statement: `jobs_listing` (client_id, status, created_at DESC, id DESC)
/// serves the sample, the newest of each status merged.
static CLIENT_FIGURES_SQL: LazyLock<String> = LazyLock::new(|| {
    let ranges: Vec<String> = JobStatus::ALL
        .iter()
        .map(|status| {
            format!(
                "(SELECT status, created_at, id FROM jobs
                  WHERE client_id = $1 AND status = '{}'
                    AND created_at > now() - interval '1 hour'
                  ORDER BY created_at DESC, id DESC LIMIT $2)",
                status.as_str()
            )
        })
        .collect();
    format!(
        "WITH recent AS (
             SELECT status, created_at FROM ({}) newest
             ORDER BY created_at DESC, id DESC LIMIT $2)
         SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
                count(*) FILTER (WHERE status = 'running') AS running,
                count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_at
         FROM recent",
        ranges.join(" UNION ALL ")
    )
});

/// A job that runs now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningJob {
    pub id: Uuid,
    pub kind: String,
    pub tenant_url: String,
    pub client_id: String,
    pub batch_id: Option<Uuid>,
    pub attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
}

/// Running jobs (of `client_id`, or everyone's), those whose lease ends first first, at most
/// `RUNNING_SHOWN`.
pub async fn running_jobs(
    exec: impl PgExecutor<'_>,
    client_id: Option<&str>,
) -> Result<Vec<RunningJob>, sqlx::Error> {
    // `jobs_running_lease` holds only running jobs, however large the table.
    sqlx::query_as(
        "SELECT id, kind, tenant_url, client_id, batch_id, attempts, started_at FROM jobs
         WHERE status = 'running' AND ($1::text IS NULL OR client_id = $1)
         ORDER BY lease_until LIMIT $2",
    )
    .bind(client_id)
    .bind(RUNNING_SHOWN)
    .fetch_all(exec)
    .await
}

/// Worker connections to PostgreSQL, by the address they come from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerHost {
    pub address: String,
    pub connections: i64,
    pub since: Option<DateTime<Utc>>,
}

/// Hosts whose worker processes hold connections to this database (at most 50).
pub async fn worker_hosts(exec: impl PgExecutor<'_>) -> Result<Vec<WorkerHost>, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(host(client_addr), 'local socket') AS address,
                count(*) AS connections, min(backend_start) AS since
         FROM pg_stat_activity
         WHERE application_name = 'provisioner-worker' AND datname = current_database()
         GROUP BY 1 ORDER BY 1 LIMIT 50",
    )
    .fetch_all(exec)
    .await
}

/// Failed items of a batch that share a code and an error.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailureGroup {
    pub code: Option<i32>,
    pub title: Option<String>,
    pub detail: Option<String>,
    pub items: i64,
}

/// The failures of a batch's items (their newest jobs), grouped by code and error, largest
/// groups first, at most `FAILURE_GROUPS`. Reads the failed items of one batch only.
pub async fn failure_groups(
    exec: impl PgExecutor<'_>,
    batch_id: Uuid,
) -> Result<Vec<FailureGroup>, sqlx::Error> {
    sqlx::query_as(
        "SELECT code, error->>'title' AS title, error->>'detail' AS detail, count(*) AS items
         FROM jobs
         WHERE batch_id = $1 AND NOT superseded AND status = 'failed'
         GROUP BY 1, 2, 3 ORDER BY items DESC, code LIMIT $2",
    )
    .bind(batch_id)
    .bind(FAILURE_GROUPS)
    .fetch_all(exec)
    .await
}

/// What a job's timeline needs beyond its row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobTiming {
    /// When the job was last sent to the broker (a retry sends it again).
    pub sent_at: DateTime<Utc>,
    /// Batch items: when the dispatcher released it to the broker.
    pub released_at: Option<DateTime<Utc>>,
    /// How long its import waited for the lock.
    pub lock_wait_ms: Option<i32>,
    /// A newer job of the same batch item replaced it (a retry).
    pub superseded: bool,
}

pub async fn job_timing(
    exec: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<JobTiming>, sqlx::Error> {
    sqlx::query_as("SELECT sent_at, released_at, lock_wait_ms, superseded FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// A batch that used a template.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateBatch {
    pub template_id: String,
    pub batch_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// For each of `template_ids`, the newest batches (of `client_id`, or anyone's) that used it, at
/// most `BATCHES_PER_TEMPLATE` each.
pub async fn batches_using(
    exec: impl PgExecutor<'_>,
    template_ids: &[String],
    client_id: Option<&str>,
) -> Result<Vec<TemplateBatch>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id AS template_id, b.id AS batch_id, b.created_at
         FROM unnest($1::text[]) AS t(id)
         CROSS JOIN LATERAL (
             SELECT b.id, b.created_at FROM batch_templates bt
             JOIN batches b ON b.id = bt.batch_id
             WHERE bt.template_id = t.id AND ($2::text IS NULL OR b.client_id = $2)
             ORDER BY b.created_at DESC LIMIT $3) b",
    )
    .bind(template_ids)
    .bind(client_id)
    .bind(BATCHES_PER_TEMPLATE)
    .fetch_all(exec)
    .await
}

/// A dashboard session: the client and scopes of an unexpired token of an unrevoked client.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Seconds the token had left when it was read, by PostgreSQL's clock (the one that
    /// decides).
    pub seconds_left: f64,
}

pub async fn session(
    exec: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<SessionRow>, sqlx::Error> {
    // A session's token is a bearer token: the same grant, with the scopes its client holds.
    Ok(super::clients::find_token(exec, token_hash)
        .await?
        .map(|grant| SessionRow {
            client_id: grant.client_id,
            scopes: grant.scopes,
            seconds_left: grant.seconds_left,
        }))
}

/// Ends a dashboard session: its token (by digest) stops working at once.
pub async fn revoke_token(exec: impl PgExecutor<'_>, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
        .bind(token_hash)
        .execute(exec)
        .await
        .map(drop)
}
