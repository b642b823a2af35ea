//! Operators' figures for `/metrics` beyond the job counts of `jobs::stats`: how old the waiting
//! work is, what the recent failures were, how much work each client has, and how much batch work
//! is held back. Each query reads an index whose size is bounded by a cap or a window (never
//! the whole `jobs` table), or a sample bounded by `LIMIT`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::JobStatus;

/// Most recent endings that the failure figures look at (as the run-time quantiles do).
pub const FAILURE_SAMPLE: i64 = 10_000;

/// Clients named one by one in the per-client figures; the rest are summed as one.
pub const TOP_CLIENTS: i64 = 10;

/// When the oldest waiting work of each kind was queued (`None`: nothing waits).
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Backlog {
    /// When the job on the interactive queue (`provisioner.jobs.create-tenant`) longest waiting
    /// for a worker was sent there (a delayed retry's, when its delay ends).
    pub oldest_interactive: Option<DateTime<Utc>>,
    /// The same for each of the backlog's queues (`queue::Lane::Backlog`), by tier.
    pub oldest_backlog_tiers: Vec<Option<DateTime<Utc>>>,
    /// The same for the batch queue: the batch item released (or sent again) longest ago.
    pub oldest_released: Option<DateTime<Utc>>,
    /// The oldest batch with items held back in PostgreSQL (not on the broker yet).
    pub oldest_held: Option<DateTime<Utc>>,
    /// Batch items held back in PostgreSQL: work the broker does not know about yet.
    pub held: i64,
    /// The database's clock, against which the ages are taken.
    pub now: DateTime<Utc>,
}

impl Backlog {
    /// The same for the backlog's queues together.
    pub fn oldest_backlog(&self) -> Option<DateTime<Utc>> {
        self.oldest_backlog_tiers.iter().flatten().min().copied()
    }

    /// When the longest-waiting work was sent to the broker, or its batch accepted while
    /// the dispatcher holds it back.
    pub fn oldest_waiting(&self) -> Option<DateTime<Utc>> {
        [
            self.oldest_interactive,
            self.oldest_backlog(),
            self.oldest_released,
            self.oldest_held,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The waiting work: each queue's oldest queued job is the first entry of its lane in
/// `jobs_sent_by_lane`, however many jobs wait or are held; the oldest held batch is the first
/// entry of `batches_held_oldest`, and the held items are the sum of `batch_held_changes`.
pub const BACKLOG_QUERY: &str = "SELECT
             (SELECT min(sent_at) FROM jobs
              WHERE lane = 'interactive' AND status = 'queued'
                AND (batch_id IS NULL OR released_at IS NOT NULL)) AS oldest_interactive,
             ARRAY(SELECT (SELECT min(sent_at) FROM jobs
                           WHERE lane = t.lane AND status = 'queued'
                             AND (batch_id IS NULL OR released_at IS NOT NULL))
                   FROM unnest(ARRAY['backlog', 'backlog-1', 'backlog-2', 'backlog-3',
                                     'backlog-4', 'backlog-5']) WITH ORDINALITY AS t(lane, n)
                   ORDER BY t.n) AS oldest_backlog_tiers,
             (SELECT min(sent_at) FROM jobs
              WHERE lane = 'batch' AND status = 'queued'
                AND (batch_id IS NULL OR released_at IS NOT NULL)) AS oldest_released,
             (SELECT min(created_at) FROM batches WHERE held > 0) AS oldest_held,
             (SELECT coalesce(sum(n), 0)::bigint FROM batch_held_changes) AS held,
             now() AS now";

pub async fn backlog(exec: impl PgExecutor<'_>) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(BACKLOG_QUERY).fetch_one(exec).await
}

/// The query the worker autoscaler (KEDA's `postgresql` trigger in `deploy/k8s`) runs: batch
/// items held back in PostgreSQL. Kept here so that a test runs the very text.
pub const HELD_ITEMS_QUERY: &str = "SELECT coalesce(sum(n), 0)::bigint FROM batch_held_changes";

/// Changes of held items one fold takes at most (a long gap between folds drains over a few).
pub const FOLD_LIMIT: i64 = 100_000;

/// Folds the changes of held items appended since the last fold into one row per client (none
/// for a client that holds nothing), so that the readers above sum a few rows however many
/// batches were accepted, released or cancelled since. Does nothing when no client has more than
/// one row (an idle system's folds leave no dead rows behind). Rows another fold is folding are
/// left to it (`SKIP LOCKED`): folds never wait for each other (two at once may leave a client
/// two rows, which the next fold merges), and a reader sees the rows before or after one, with
/// the same sums. Returns how many rows it folded.
pub async fn compact_held_changes(exec: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH folded AS (
             DELETE FROM batch_held_changes
             WHERE id = ANY (ARRAY(
                 SELECT id FROM batch_held_changes
                 WHERE EXISTS (SELECT FROM batch_held_changes
                               GROUP BY client_id HAVING count(*) > 1)
                 ORDER BY id LIMIT $1
                 FOR UPDATE SKIP LOCKED))
             RETURNING client_id, n),
         kept AS (
             INSERT INTO batch_held_changes (client_id, n)
             SELECT client_id, sum(n) FROM folded GROUP BY client_id HAVING sum(n) <> 0)
         SELECT count(*) FROM folded",
    )
    .bind(FOLD_LIMIT)
    .fetch_one(exec)
    .await
}

/// Failed jobs by code among the most recent endings of the last hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentFailures {
    /// Endings in the sample (every terminal status).
    pub endings: i64,
    /// `(code, failed jobs)`, by code.
    pub by_code: Vec<(i32, i64)>,
}

/// One read of the sample: endings by code (a cancelled job has none; a succeeded one has 200, a
/// failed one its failure code).
pub const FAILURES_QUERY: &str = "SELECT code, status, count(*)::bigint FROM (
             SELECT status, code FROM jobs
             WHERE finished_at > now() - interval '1 hour'
             ORDER BY finished_at DESC LIMIT $1) sample
         GROUP BY code, status ORDER BY code";

pub async fn recent_failures(exec: impl PgExecutor<'_>) -> Result<RecentFailures, sqlx::Error> {
    let rows: Vec<(Option<i32>, JobStatus, i64)> = sqlx::query_as(FAILURES_QUERY)
        .bind(FAILURE_SAMPLE)
        .fetch_all(exec)
        .await?;
    Ok(RecentFailures {
        endings: rows.iter().map(|(_, _, n)| n).sum(),
        by_code: rows
            .into_iter()
            .filter(|(_, status, _)| *status == JobStatus::Failed)
            .filter_map(|(code, _, n)| Some((code?, n)))
            .collect(),
    })
}

/// Active work (queued and running jobs, single and batch items) of the busiest clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientShares {
    /// `(client id, active jobs)` of at most `TOP_CLIENTS` clients, busiest first.
    pub top: Vec<(String, i64)>,
    /// Active jobs of every client.
    pub total: i64,
}

/// A client's batch items queued or running, as rows of `(client_id, n)` to be summed: its held
/// items (its changes in `batch_held_changes`) and its items released and not ended (in
/// `jobs_batch_in_flight`, at most about the dispatcher's window in all). The same number as the
/// sum of `queued + running` over its running batches (a batch runs until its last item ends),
/// without a row per batch. `$filter` (`""` or a condition on `client_id` with its `AND`)
/// restricts both to one client.
macro_rules! batch_items_active_sql {
    ($filter:literal) => {
        concat!(
            "SELECT client_id, sum(n)::bigint AS n FROM batch_held_changes
             WHERE true ",
            $filter,
            " GROUP BY client_id
             UNION ALL
             SELECT client_id, count(*) FROM jobs
             WHERE batch_id IS NOT NULL AND released_at IS NOT NULL
               AND status IN ('queued', 'running') AND NOT superseded ",
            $filter,
            " GROUP BY client_id"
        )
    };
}
pub(crate) use batch_items_active_sql;

/// Read from the counters the triggers keep (`client_active_jobs`, `batch_held_changes`) and the
/// batch items in flight: rows per client and per item in flight, never per job or per batch.
pub const SHARES_QUERY: &str = concat!(
    "WITH work AS (
             SELECT client_id, sum(n)::bigint AS n FROM client_active_jobs GROUP BY client_id
             UNION ALL ",
    batch_items_active_sql!(""),
    "),
         per_client AS (
             SELECT client_id, sum(n)::bigint AS n FROM work GROUP BY client_id HAVING sum(n) > 0)
         SELECT client_id, n, (sum(n) OVER ())::bigint FROM per_client
         ORDER BY n DESC, client_id LIMIT $1"
);

pub async fn client_shares(exec: impl PgExecutor<'_>) -> Result<ClientShares, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(SHARES_QUERY)
        .bind(TOP_CLIENTS)
        .fetch_all(exec)
        .await?;
    let total = rows.first().map_or(0, |(_, _, total)| *total);
    Ok(ClientShares {
        top: rows.into_iter().map(|(id, n, _)| (id, n)).collect(),
        total,
    })
}
