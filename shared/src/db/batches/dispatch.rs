//! The dispatcher's release of held batch items to the broker: at most `window` batch items are
//! on the broker or running at once, and each round shares the free places between the clients
//! with held items, least recently served first (round robin with equal weights), each client's
//! oldest batch first, items in order. Single jobs never wait behind this window: they have
//! queues of their own. A client with more active single jobs than its interactive ones (some
//! on the backlog's queues) of which one waits is not served meanwhile: its single jobs go ahead of
//! its batch items. A batch whose cancel was asked for has no more items released.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    db::outbox::{self, OutboxMessage},
    queue,
};

/// The clients with held items, least recently served first, but for a client with more than
/// `$1` active single jobs of which one is queued and due (not waiting for a retry's backoff):
/// its single jobs go first. One running for long (an import waiting on a tenant's lock) holds
/// nothing back. The clients are found one index lookup each in `batches_held` (the next client
/// after the last found), not by reading every batch with held items: a client with 5,000
/// one-item batches held made each round read them all, with the checks above once per batch.
macro_rules! waiting_clients_sql {
    () => {
        "WITH RECURSIVE held AS (
             (SELECT client_id FROM batches WHERE held > 0 ORDER BY client_id LIMIT 1)
             UNION ALL
             SELECT (SELECT b.client_id FROM batches b
                     WHERE b.held > 0 AND b.client_id > h.client_id
                     ORDER BY b.client_id LIMIT 1)
             FROM held h WHERE h.client_id IS NOT NULL)
         SELECT h.client_id FROM held h
         LEFT JOIN dispatch_turns t ON t.client_id = h.client_id
         WHERE h.client_id IS NOT NULL
           AND NOT ((SELECT coalesce(sum(n), 0) FROM client_active_jobs a
                     WHERE a.client_id = h.client_id) > $1
                    AND EXISTS (SELECT 1 FROM jobs q
                                WHERE q.client_id = h.client_id AND q.status = 'queued'
                                  AND q.batch_id IS NULL AND q.sent_at <= now()))
         ORDER BY t.last_released_at NULLS FIRST, h.client_id"
    };
}

/// Releases what the window allows; returns how many items went out. One dispatcher at a time
/// across the cluster: a round that finds another running does nothing. A client with more
/// than `interactive_jobs` active single jobs, one of them queued, waits for them.
pub async fn release(
    conn: &mut PgConnection,
    window: i64,
    interactive_jobs: u32,
) -> Result<usize, sqlx::Error> {
    let ours: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('provisioner:dispatch', 0))",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !ours {
        return Ok(0);
    }
    // Released and not ended: queued but not held, or running (an item runs only once released:
    // only the release sends its message). Counted in `jobs_batch_in_flight`, which holds those
    // items alone (about a window's), not from one row per unfinished batch (the same count: a
    // batch stays running until its last item ends). Read with the clients to serve, in one
    // round trip.
    let (in_flight, mut clients): (i64, Vec<String>) = sqlx::query_as(concat!(
        "SELECT (SELECT count(*) FROM jobs
                 WHERE batch_id IS NOT NULL AND released_at IS NOT NULL
                   AND status IN ('queued', 'running')),
                ARRAY(",
        waiting_clients_sql!(),
        ")"
    ))
    .bind(i64::from(interactive_jobs))
    .fetch_one(&mut *conn)
    .await?;
    let mut free = window - in_flight;
    let mut released = 0;
    while free > 0 && !clients.is_empty() {
        let share = (free / clients.len() as i64).max(1);
        let mut round = 0;
        for client in &clients {
            if free <= 0 {
                break;
            }
            let n = release_for(conn, client, share.min(free)).await?;
            free -= n as i64;
            round += n;
        }
        released += round;
        if round == 0 || free <= 0 {
            break;
        }
        clients = sqlx::query_scalar(waiting_clients_sql!())
            .bind(i64::from(interactive_jobs))
            .fetch_all(&mut *conn)
            .await?;
    }
    Ok(released)
}

/// Releases up to `limit` held items of `client`, oldest batch first, and marks its turn. Items
/// another transaction has locked (a cancel or a retry of their batch at work) are passed over,
/// not waited for: a round releases a client's items in several statements, and one that
/// waited for a cancel holding an item the round had not reached, while the cancel waited for
/// one the round had released, was a deadlock.
async fn release_for(
    conn: &mut PgConnection,
    client: &str,
    limit: i64,
) -> Result<usize, sqlx::Error> {
    // The client's turn is marked in the same statement, if it released anything.
    let released: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "WITH picked AS (
             SELECT j.id FROM batches b
             CROSS JOIN LATERAL (
                 SELECT id, batch_item FROM jobs
                 WHERE batch_id = b.id AND status = 'queued' AND released_at IS NULL
                 ORDER BY batch_item LIMIT $2
                 FOR UPDATE SKIP LOCKED) j
             WHERE b.client_id = $1 AND b.held > 0 AND NOT b.cancel_requested
             ORDER BY b.created_at, b.id, j.batch_item
             LIMIT $2),
         released AS (
             UPDATE jobs SET released_at = now(), sent_at = now(), lane = 'batch'
             FROM picked WHERE jobs.id = picked.id AND jobs.status = 'queued'
             RETURNING jobs.id, jobs.traceparent),
         turn AS (
             INSERT INTO dispatch_turns (client_id, last_released_at)
             SELECT $1, clock_timestamp() WHERE EXISTS (SELECT FROM released)
             ON CONFLICT (client_id) DO UPDATE SET last_released_at = EXCLUDED.last_released_at)
         SELECT id, traceparent FROM released",
    )
    .bind(client)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if released.is_empty() {
        return Ok(0);
    }
    let messages: Vec<OutboxMessage> = released
        .iter()
        .map(|(id, traceparent)| {
            queue::JobMessage::routed(*id, queue::Lane::Batch, Duration::ZERO, traceparent.clone())
        })
        .collect();
    outbox::insert_many(conn, &messages).await?;
    Ok(released.len())
}
