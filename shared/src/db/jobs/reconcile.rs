//! The queries of the worker's reconciler: queued jobs whose broker message may be lost are sent
//! again through the outbox, and the panics workers caught are counted.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{db::outbox, queue};

/// Sends again, through the outbox, up to `limit` queued jobs whose message was sent more than
/// `after` ago and none of whose messages waits in the outbox: the broker lost it (a purged
/// queue, a dead-lettered delivery) or still holds it behind a backlog. A duplicate is harmless
/// (a claim takes only a queued job); a job is sent again at most once per `after`. Returns the
/// jobs sent again. Jobs another reconciler is sending are skipped. A single job goes on the
/// lane its client's active jobs give it now (`interactive_jobs`: see `queue::Lane`).
pub async fn resend_stranded(
    conn: &mut PgConnection,
    after: Duration,
    limit: i64,
    interactive_jobs: u32,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid, bool, Option<String>, i64)> = sqlx::query_as(
        "WITH stranded AS (
             SELECT id FROM jobs j
             WHERE status = 'queued' AND sent_at < now() - make_interval(secs => $1)
               AND (batch_id IS NULL OR released_at IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM outbox o
                               WHERE o.message_id = j.id::text AND o.exchange = $2)
             ORDER BY sent_at LIMIT $3
             FOR UPDATE SKIP LOCKED)
         UPDATE jobs SET sent_at = now() FROM stranded WHERE jobs.id = stranded.id
         RETURNING jobs.id, jobs.batch_id IS NOT NULL, jobs.traceparent,
                   (SELECT coalesce(sum(n), 0)::bigint FROM client_active_jobs c
                    WHERE c.client_id = jobs.client_id)",
    )
    .bind(after.as_secs_f64())
    .bind(queue::JOBS_EXCHANGE)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for (id, batch_item, traceparent, active) in &rows {
        let lane = if *batch_item {
            queue::Lane::Batch
        } else {
            queue::Lane::of_single(*active, interactive_jobs)
        };
        outbox::insert(
            conn,
            &queue::JobMessage::routed(*id, lane, Duration::ZERO, traceparent.clone()),
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
