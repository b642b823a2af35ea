//! The queries of the worker's reconciler: queued jobs whose broker message may be lost are sent
//! again through the outbox, and the panics workers caught are counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{db::outbox, queue};

/// How far before a job queue's horizon (`job_queue_horizons`) a job must have been sent to be
/// taken for no longer behind the queue's other messages: the send times of messages committed
/// at about the same time by different transactions may reach the queue in another order.
const HORIZON_SLACK: Duration = Duration::from_secs(5);

/// How many times `after` a job may wait behind its queue's other messages before it is sent
/// again all the same: a queue that does not move, or a horizon that stopped (messages published
/// by an older release carry no send time).
const MAX_WAIT_FACTOR: u32 = 20;

/// The lanes that have a queued job sent more than `after` ago: the only ones a
/// `resend_stranded` may find anything in (one index entry each, however deep the queues).
pub async fn lanes_behind(
    exec: impl PgExecutor<'_>,
    after: Duration,
) -> Result<Vec<queue::Lane>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT l.lane FROM UNNEST($1::text[]) AS l(lane)
         WHERE EXISTS (SELECT 1 FROM jobs
                       WHERE jobs.lane = l.lane AND status = 'queued'
                         AND (batch_id IS NULL OR released_at IS NOT NULL)
                         AND sent_at < now() - make_interval(secs => $2))",
    )
    .bind(queue::Lane::ALL.map(queue::Lane::as_str))
    .bind(after.as_secs_f64())
    .fetch_all(exec)
    .await
}

/// Records that workers received, from each queue of `delivered`, a message of a job sent at
/// that time (a horizon only moves forward, and never past a minute after the database's
/// clock: a send time from elsewhere would hold it there for good).
pub async fn record_horizons(
    exec: impl PgExecutor<'_>,
    delivered: &[(queue::Lane, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_queue_horizons (queue, delivered_through)
         SELECT q, least(t, now() + interval '1 minute')
         FROM UNNEST($1::text[], $2::timestamptz[]) AS d(q, t)
         ON CONFLICT (queue) DO UPDATE
             SET delivered_through = greatest(job_queue_horizons.delivered_through,
                                              EXCLUDED.delivered_through),
                 updated_at = now()",
    )
    .bind(delivered.iter().map(|(l, _)| l.queue()).collect::<Vec<_>>())
    .bind(delivered.iter().map(|(_, t)| *t).collect::<Vec<_>>())
    .execute(exec)
    .await
    .map(drop)
}

/// Sends again, through the outbox, up to `limit` queued jobs whose message was sent more than
/// `after` ago and is no longer on the broker: none of its messages waits in the outbox, and
/// either its queue holds no message waiting for a consumer (`waiting` names the lanes whose
/// queue does) or the queue's deliveries passed it (`job_queue_horizons`), so the broker lost
/// the message (a purged queue, a dead-lettered delivery) or a worker holds it unstarted. A job
/// still behind its queue's other messages is not sent again until it has waited
/// `MAX_WAIT_FACTOR` times `after`. A duplicate is harmless (a claim takes only a queued job); a
/// job is sent again at most once per `after`. Returns the jobs sent again. Jobs another
/// reconciler is sending are skipped. A single job goes on the lane its client's active jobs
/// give it now (`interactive_jobs`: see `queue::Lane`), recorded in `jobs.lane`.
pub async fn resend_stranded(
    conn: &mut PgConnection,
    after: Duration,
    limit: i64,
    interactive_jobs: u32,
    waiting: &[queue::Lane],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid, queue::Lane, Option<String>)> = sqlx::query_as(
        "WITH bound AS (
             SELECT l.lane,
                    CASE WHEN l.waiting
                         THEN greatest(least(now() - make_interval(secs => $1),
                                             coalesce(h.delivered_through
                                                          - make_interval(secs => $8),
                                                      '-infinity')),
                                       now() - make_interval(secs => $9))
                         ELSE now() - make_interval(secs => $1) END AS before
             FROM UNNEST($5::text[], $6::text[], $7::bool[]) AS l(lane, queue, waiting)
             LEFT JOIN job_queue_horizons h ON h.queue = l.queue
         ), stranded AS (
             SELECT s.id FROM bound b
             CROSS JOIN LATERAL (
                 SELECT j.id FROM jobs j
                 WHERE j.lane = b.lane AND j.status = 'queued'
                   AND (j.batch_id IS NULL OR j.released_at IS NOT NULL)
                   AND j.sent_at < b.before
                   AND NOT EXISTS (SELECT 1 FROM outbox o
                                   WHERE o.message_id = j.id::text AND o.exchange = $2)
                 ORDER BY j.sent_at LIMIT $3
                 FOR UPDATE SKIP LOCKED) s
             LIMIT $3)
         UPDATE jobs SET sent_at = now(), lane = job_resend_lane(batch_id, client_id, $4, jobs.lane)
         FROM stranded WHERE jobs.id = stranded.id
         RETURNING jobs.id, jobs.lane, jobs.traceparent",
    )
    .bind(after.as_secs_f64())
    .bind(queue::JOBS_EXCHANGE)
    .bind(limit)
    .bind(i64::from(interactive_jobs))
    .bind(queue::Lane::ALL.map(queue::Lane::as_str))
    .bind(queue::Lane::ALL.map(queue::Lane::queue))
    .bind(queue::Lane::ALL.map(|l| waiting.contains(&l)))
    .bind(HORIZON_SLACK.as_secs_f64())
    .bind((after * MAX_WAIT_FACTOR).as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    for (id, lane, traceparent) in &rows {
        outbox::insert(
            conn,
            &queue::JobMessage::routed(*id, *lane, Duration::ZERO, traceparent.clone()),
        )
        .await?;
    }
    Ok(rows.into_iter().map(|(id, ..)| id).collect())
}

/// Where a worker caught a panic while handling a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSite {
    /// A job's handler task.
    Handler,
    /// Anything else while a delivery was handled: claim, commit, recording, settling.
    Delivery,
}

impl PanicSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handler => "handler",
            Self::Delivery => "delivery",
        }
    }
}

/// Counts one panic caught at `site` (the total is in `Stats::worker_panics`).
pub async fn record_panic(exec: impl PgExecutor<'_>, site: PanicSite) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO worker_panics (stage, count) VALUES ($1, 1)
         ON CONFLICT (stage) DO UPDATE SET count = worker_panics.count + 1, last_at = now()",
    )
    .bind(site.as_str())
    .execute(exec)
    .await
    .map(drop)
}
