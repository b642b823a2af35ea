//! Batches: their items accepted in bulk, counts kept exact by a trigger on `jobs` (see the
//! migration `20261203000001`), the stop announced once when the last item ends, cancel, retry,
//! results in item order; the dispatcher's fair release of held items (`dispatch`) and the one
//! download per batch and template URL (`downloads`); which of two creates for one tenant goes
//! first (`precedence`).

mod dispatch;
mod downloads;
mod precedence;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

pub use self::{
    dispatch::release,
    downloads::{DownloadFailure, DownloadState, download_done, download_failed, download_state},
    precedence::earlier_active_job,
};
use crate::{
    db::{
        jobs::{self, JobRow},
        outbox::{self, OutboxMessage},
    },
    domain::{BatchCounts, BatchStatus, BatchView},
    queue,
    trace::TraceContext,
};

const COLUMNS: &str = "id, client_id, status, cancel_requested, total, queued, running, \
     succeeded, failed, cancelled, held, version, idempotency_key, request_digest, created_at, \
     finished_at, traceparent";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub client_id: String,
    pub status: BatchStatus,
    pub cancel_requested: bool,
    pub total: i32,
    pub queued: i32,
    pub running: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub cancelled: i32,
    /// Queued items the dispatcher has not released to the broker yet.
    pub held: i32,
    pub version: i32,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The W3C trace context of the request that made the batch (or retried it last).
    pub traceparent: Option<String>,
}

impl BatchRow {
    pub fn view(&self) -> BatchView {
        BatchView {
            batch_id: self.id,
            status: self.status,
            created_at: self.created_at,
            finished_at: self.finished_at,
            counts: BatchCounts {
                total: self.total,
                queued: self.queued,
                running: self.running,
                succeeded: self.succeeded,
                failed: self.failed,
                cancelled: self.cancelled,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the idempotency key is taken")]
    IdempotencyKeyTaken,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Opens a batch with no items yet (its counts grow as `insert_items` adds them), in the
/// caller's transaction, which calls `count_items` before it commits. A key another batch of
/// the client holds is `IdempotencyKeyTaken` (a concurrent holder is waited for).
pub async fn create(
    conn: &mut PgConnection,
    id: Uuid,
    client_id: &str,
    idempotency_key: Option<&str>,
    trace: &TraceContext,
) -> Result<(), CreateError> {
    // The items are counted among all jobs at the end, not as they come: the counter rows are
    // shared with every other statement that inserts or moves jobs.
    sqlx::query("SELECT set_config('provisioner.job_counts_at_commit', 'on', true)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO batches (id, client_id, idempotency_key, traceparent) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(client_id)
    .bind(idempotency_key)
    .bind(trace.to_string())
    .execute(conn)
    .await
    .map_err(|e| {
        if super::violates(&e, "batches_idempotency") {
            CreateError::IdempotencyKeyTaken
        } else {
            CreateError::Database(e)
        }
    })?;
    Ok(())
}

/// Counts the items of batch `id` among all jobs (`job_counts`), as the transaction that
/// inserted them ends: the shared counter row is locked only until the commit that follows.
pub async fn count_items(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_counts (status, shard, n)
         SELECT status, pg_backend_pid() % 16, count(*) FROM jobs WHERE batch_id = $1
         GROUP BY status
         ON CONFLICT (status, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n",
    )
    .bind(id)
    .execute(conn)
    .await
    .map(drop)
}

/// One item of a batch being accepted: its job, queued and held until the dispatcher releases it.
#[derive(Debug)]
pub struct NewItem {
    pub job_id: Uuid,
    pub item: i32,
    pub tenant_url: String,
    pub params: Value,
    pub sealed_password: Vec<u8>,
    /// The stored template the item names (pinned by the batch too).
    pub template_id: Option<String>,
}

/// Inserts items' jobs in one statement, with their `job.queued` events. Each job continues
/// `trace` (the span of the request that adds it).
pub async fn insert_items(
    conn: &mut PgConnection,
    batch_id: Uuid,
    client_id: &str,
    items: &[NewItem],
    trace: &TraceContext,
) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = items.iter().map(|i| i.job_id).collect();
    let positions: Vec<i32> = items.iter().map(|i| i.item).collect();
    let urls: Vec<&str> = items.iter().map(|i| i.tenant_url.as_str()).collect();
    let params: Vec<&Value> = items.iter().map(|i| &i.params).collect();
    let sealed: Vec<&[u8]> = items.iter().map(|i| i.sealed_password.as_slice()).collect();
    let templates: Vec<Option<&str>> = items.iter().map(|i| i.template_id.as_deref()).collect();
    let trace = trace.to_string();
    let traces: Vec<&str> = items.iter().map(|_| trace.as_str()).collect();
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, sealed_password,
                           template_id, batch_id, batch_item, traceparent, lane)
         SELECT id, 'createTenant', url, 'queued', $7, params, sealed, template, $8, item, tp,
                'batch'
         FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::bytea[], $6::text[],
                     $9::text[])
              AS i(id, item, url, params, sealed, template, tp)
         RETURNING {}",
        jobs::COLUMNS
    ))
    .bind(&ids)
    .bind(&positions)
    .bind(&urls)
    .bind(&params)
    .bind(&sealed)
    .bind(&templates)
    .bind(client_id)
    .bind(batch_id)
    .bind(&traces)
    .fetch_all(&mut *conn)
    .await?;
    let events: Vec<OutboxMessage> = rows
        .iter()
        .map(|row| queue::status_event(&row.view(), row.version, row.traceparent.as_deref()))
        .collect();
    outbox::insert_many(conn, &events).await
}

/// Pins stored templates to the batch: they are kept as long as it is.
pub async fn pin_templates(
    conn: &mut PgConnection,
    batch_id: Uuid,
    template_ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batch_templates (batch_id, template_id)
         SELECT $1, t FROM UNNEST($2::text[]) AS t ON CONFLICT DO NOTHING",
    )
    .bind(batch_id)
    .bind(template_ids)
    .execute(conn)
    .await
    .map(drop)
}

/// Records the digest of the request that made the batch (for idempotent replays).
pub async fn set_digest(
    conn: &mut PgConnection,
    id: Uuid,
    digest: &str,
) -> Result<BatchRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE batches SET request_digest = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(digest)
    .fetch_one(conn)
    .await
}

/// Batch items of `client_id` still queued or running (for its cap): its held items and its
/// items in flight, not a row per unfinished batch (a client with 100,000 one-item batches
/// unfinished made each of its batches read them all).
pub async fn unfinished_items(
    exec: impl PgExecutor<'_>,
    client_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT coalesce(sum(n), 0)::bigint FROM (",
        crate::db::figures::batch_items_active_sql!("AND client_id = $1"),
        ") active"
    ))
    .bind(client_id)
    .fetch_one(exec)
    .await
}

/// Serializes the admission of a client's batches until the transaction ends, so that two
/// batches accepted at once cannot both pass the client's cap.
pub async fn lock_admission(conn: &mut PgConnection, client_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('provisioner:batch-admission:' || $1, 0))",
    )
    .bind(client_id)
    .execute(conn)
    .await
    .map(drop)
}

/// A batch by id, as seen by `client_id` (`None`: any client's, for operators).
pub async fn find(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(exec)
    .await
}

/// Those of `ids` that name a batch (any client's), in no order.
pub async fn existing(exec: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM batches WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(exec)
        .await
}

pub async fn find_by_idempotency_key(
    exec: impl PgExecutor<'_>,
    client_id: &str,
    key: &str,
) -> Result<Option<BatchRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE client_id = $1 AND idempotency_key = $2"
    ))
    .bind(client_id)
    .bind(key)
    .fetch_optional(exec)
    .await
}

/// Batches newest first; `after` is the (created_at, id) of the last one already seen.
pub async fn list(
    exec: impl PgExecutor<'_>,
    client_id: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<BatchRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches
         WHERE ($1::text IS NULL OR client_id = $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(client_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(exec)
    .await
}

/// Stops the batch if none of its items is queued or running any more: `completed`, or
/// `cancelled` when a cancel was asked for while it ran; its event goes to the outbox and its
/// waiters are woken. `None` when it still runs (or had stopped already). Called in the
/// transaction of every change that may end a batch's last item, after the change: the counts
/// it reads include it, and of two last items ending at once, the second sees the first. The
/// batch ends now, by the database's clock (not at its transaction's start, which may precede
/// a long lock wait), and never before `ended_at`, the ending item's `finishedAt` (a worker's
/// clock).
pub async fn settle(
    conn: &mut PgConnection,
    id: Uuid,
    ended_at: Option<DateTime<Utc>>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    let row: Option<BatchRow> = sqlx::query_as(&format!(
        "UPDATE batches SET
             status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END,
             finished_at = greatest(clock_timestamp(), $2::timestamptz), version = version + 1
         WHERE id = $1 AND status = 'running' AND queued = 0 AND running = 0
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(ended_at)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(batch) = &row {
        let event = queue::batch_event(&batch.view(), batch.version, batch.traceparent.as_deref());
        outbox::insert(conn, &event).await?;
        notify(conn, &[id]).await?;
    }
    Ok(row)
}

/// Wakes whoever waits on these jobs or batches, in the caller's transaction: on the jobs
/// channel (a batch's id for a batch), so one listener serves every wait.
async fn notify(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    jobs::notify_changed(conn, ids).await
}

/// The advisory-lock key of batch `$1`'s changes (`lock_changes`, `try_lock_changes`).
macro_rules! changes_key {
    () => {
        "hashtextextended('provisioner:batch-changes:' || $1, 0)"
    };
}

/// Serializes the changes of a batch's items that a client asks for (cancel, retry) until the
/// transaction ends. Taken before any row: a cancel that ran beside a retry saw neither the
/// retry's new items nor, once the retry had reopened the batch, that it had anything to cancel,
/// and left the new items to run under a cancel it answered as done.
pub async fn lock_changes(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "SELECT pg_advisory_xact_lock(",
        changes_key!(),
        ")"
    ))
    .bind(id.to_string())
    .execute(conn)
    .await
    .map(drop)
}

/// Queued items a cancel changes in one transaction: each of its transactions holds the items'
/// rows, and with them the workers that reach one, for no longer than this many take.
pub const CANCEL_CHUNK: i64 = 1_000;

/// What one transaction of a cancel did.
#[derive(Debug)]
pub struct Cancelled {
    /// The batch after it.
    pub batch: BatchRow,
    /// Whether queued items may be left: the caller cancels again, in a new transaction.
    pub more: bool,
    /// The last item it cancelled: where the next transaction goes on.
    pub last: Option<i32>,
}

/// Cancels a running batch, up to `limit` of its queued items in this transaction, the first in
/// item order after position `after` (the last item the caller's previous transaction cancelled,
/// or -1: the items before it, cancelled already, are not read again): they become `cancelled`
/// (running ones finish), and the batch stops as `cancelled` when its last item ends. Once a
/// cancel was asked for, the dispatcher releases no more of its items, and the workers' sweep
/// finishes the cancel of its held items should its caller stop before it is done
/// (`pending_cancel`). A batch that stopped already is unchanged. `None` when the
/// client has no such batch.
///
/// One transaction for a whole batch of 100,000 queued items held their rows for minutes (each
/// cancelled row a new version with its index entries, an event and a notification): every
/// worker that reached one of them waited, other clients' jobs behind it.
///
/// Locks in the order every other writer does, job rows first, then the batch row (the counting
/// trigger's): claims, releases and finishes of its items cannot deadlock with it. The items'
/// rows are locked in item order, as a dispatcher round releases them: in the order of an index
/// whose entries of one batch share their time, a cancel locked them last item first, and
/// deadlocked with a round that released a client's items in two statements (the second
/// waiting for items the cancel held, the cancel for items the first had released).
pub async fn cancel(
    conn: &mut PgConnection,
    id: Uuid,
    client_id: Option<&str>,
    after: i32,
    limit: i64,
) -> Result<Option<Cancelled>, sqlx::Error> {
    if find(&mut *conn, id, client_id).await?.is_none() {
        return Ok(None);
    }
    // At least one a transaction, or a caller going on while `more` would never end.
    let limit = limit.max(1);
    lock_changes(conn, id).await?;
    let cancelled: Vec<JobRow> = sqlx::query_as(&format!(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), sealed_password = NULL,
                         template_id = NULL, version = version + 1
         WHERE id IN (SELECT id FROM jobs
                      WHERE batch_id = $1 AND batch_item > $3 AND status = 'queued'
                        AND NOT superseded
                        AND EXISTS (SELECT 1 FROM batches WHERE id = $1 AND status = 'running')
                      ORDER BY batch_item LIMIT $2 FOR UPDATE)
           AND status = 'queued'
         RETURNING {}",
        jobs::COLUMNS
    ))
    .bind(id)
    .bind(limit)
    .bind(after)
    .fetch_all(&mut *conn)
    .await?;
    let more = i64::try_from(cancelled.len()).is_ok_and(|n| n >= limit);
    let last = cancelled.iter().filter_map(|row| row.batch_item).max();
    let running: Option<bool> = sqlx::query_scalar(
        "UPDATE batches SET cancel_requested = cancel_requested OR status = 'running'
         WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)
         RETURNING status = 'running'",
    )
    .bind(id)
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await?;
    if running.is_none() {
        return Ok(None);
    }
    let events: Vec<OutboxMessage> = cancelled
        .iter()
        .map(|row| queue::status_event(&row.view(), row.version, row.traceparent.as_deref()))
        .collect();
    outbox::insert_many(conn, &events).await?;
    let ids: Vec<Uuid> = cancelled.iter().map(|row| row.id).collect();
    notify(conn, &ids).await?;
    settle(conn, id, None).await?;
    Ok(find(&mut *conn, id, None)
        .await?
        .map(|batch| Cancelled { batch, more, last }))
}

/// Takes the changes lock of batch `id` if no other transaction holds it (`lock_changes`).
pub async fn try_lock_changes(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT pg_try_advisory_xact_lock(",
        changes_key!(),
        ")"
    ))
    .bind(id.to_string())
    .fetch_one(conn)
    .await
}

/// A running batch whose cancel was asked for and that still holds items back (its canceller
/// stopped before it was done, or is at work), the oldest first.
pub async fn pending_cancel(exec: impl PgExecutor<'_>) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM batches WHERE held > 0 AND cancel_requested AND status = 'running'
         ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(exec)
    .await
}

/// The newest job of a batch item that failed, as a retry needs it.
#[derive(Debug, sqlx::FromRow)]
pub struct FailedItem {
    pub job_id: Uuid,
    pub item: i32,
    pub tenant_url: String,
    pub params: Value,
    pub sealed_password: Option<Vec<u8>>,
}

/// Locks the batch for a retry (after `lock_changes`: a cancel waits for the retry, and then
/// sees its items); `None` when the client has no such batch.
pub async fn lock_for_retry(
    conn: &mut PgConnection,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Option<BatchRow>, sqlx::Error> {
    if find(&mut *conn, id, client_id).await?.is_none() {
        return Ok(None);
    }
    lock_changes(conn, id).await?;
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)
         FOR UPDATE"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(conn)
    .await
}

/// Up to `limit` items after position `after` whose newest job failed (with one of `codes`,
/// when given), in item order.
pub async fn failed_items(
    conn: &mut PgConnection,
    id: Uuid,
    codes: Option<&[i32]>,
    after: i32,
    limit: i64,
) -> Result<Vec<FailedItem>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS job_id, batch_item AS item, tenant_url, params, sealed_password FROM jobs
         WHERE batch_id = $1 AND NOT superseded AND batch_item > $3 AND status = 'failed'
           AND ($2::int[] IS NULL OR code = ANY($2))
         ORDER BY batch_item LIMIT $4 FOR UPDATE",
    )
    .bind(id)
    .bind(codes)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Replaces failed items' jobs by `items` (new jobs at the same positions, continuing `trace`,
/// the retry request's): the old jobs stay readable, no longer counted, their sealed passwords
/// erased.
pub async fn replace_items(
    conn: &mut PgConnection,
    batch_id: Uuid,
    client_id: &str,
    old_jobs: &[Uuid],
    items: &[NewItem],
    trace: &TraceContext,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET superseded = true, superseded_at = now(), sealed_password = NULL
         WHERE id = ANY($1)",
    )
    .bind(old_jobs)
    .execute(&mut *conn)
    .await?;
    insert_items(conn, batch_id, client_id, items, trace).await
}

/// Runs the batch again after a retry added items: `running`, no cancel pending (a batch whose
/// cancel was asked for is retried only once it stopped: the cancel is over), and the downloads
/// that failed for good may be tried again. The batch takes the retry request's
/// trace (`trace`): its next stop event continues it.
pub async fn reopen(
    conn: &mut PgConnection,
    id: Uuid,
    trace: &TraceContext,
) -> Result<BatchRow, sqlx::Error> {
    sqlx::query("DELETE FROM batch_downloads WHERE batch_id = $1 AND failure_code IS NOT NULL")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(&format!(
        "UPDATE batches SET status = 'running', finished_at = NULL,
                            cancel_requested = cancel_requested AND status = 'running',
                            version = version + 1, traceparent = $2
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(trace.to_string())
    .fetch_one(conn)
    .await
}

/// Up to `limit` items after position `after`, each its newest job, in item order (with the
/// given status only, when one is given).
pub async fn results(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    status: Option<crate::domain::JobStatus>,
    after: i32,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} FROM jobs
         WHERE batch_id = $1 AND NOT superseded AND batch_item > $2
           AND ($3::text IS NULL OR status = $3)
         ORDER BY batch_item LIMIT $4",
        jobs::COLUMNS
    ))
    .bind(id)
    .bind(after)
    .bind(status)
    .bind(limit)
    .fetch_all(exec)
    .await
}
