//! The claim: queued -> running under a fresh lease, for one job or for a group of jobs a worker
//! received at about the same time, in one statement that commits on its own with their
//! `job.running` events and notifications.

use std::{collections::HashSet, time::Duration};

use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::{COLUMNS, JobRow, NOTIFY_CHANNEL};
use crate::{db::outbox, domain::JobStatus, queue};

/// The claim of the jobs `$10` (tokens `$11`, as read at versions `$12`; `startedAt` `$13` on a
/// first attempt, lease `$14` seconds) with their events and notifications (`$1`-`$9`, one
/// event per job in the same order, see `outbox::bind_announcements`), written for the jobs
/// claimed only; `$locking` is what locking the rows does about a row locked by another
/// transaction (`""`: wait for it). Returns the ids claimed.
macro_rules! claim_sql {
    ($locking:literal) => {
        concat!(
            "WITH wanted AS (
                 SELECT * FROM UNNEST($10::uuid[], $11::uuid[], $12::int4[])
                     AS w(id, token, version)
             ), locked AS (
                 -- By id only: with a condition on the status, the planner may scan the
                 -- queued jobs' partial index, the whole backlog, for a handful of ids.
                 SELECT id, status, version FROM jobs WHERE id = ANY($10) FOR UPDATE ",
            $locking,
            "
             ), changed AS (
                 UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1,
                     started_at = COALESCE(jobs.started_at, $13), lease_token = w.token,
                     lease_until = now() + make_interval(secs => $14),
                     version = jobs.version + 1
                 FROM wanted w JOIN locked l ON l.id = w.id AND l.version = w.version
                 WHERE jobs.id = l.id AND l.status = 'queued'
                 RETURNING jobs.id
             ), inserted AS (",
            $crate::db::outbox::insert_sql!(
                ", $10::uuid[]",
                ", job",
                "WHERE job IN (SELECT id FROM changed)"
            ),
            "), notified AS (
                 SELECT count(*) FROM (
                     SELECT pg_notify(channel, note)
                     FROM UNNEST($7::text[], $8::text[]) AS n(channel, note)
                     WHERE note IN (SELECT id::text FROM changed)
                        OR (note = '' AND EXISTS (SELECT FROM changed))
                 ) sent
             )
             SELECT changed.id FROM changed CROSS JOIN notified"
        )
    };
}

/// queued -> running under a fresh lease held by `token`, for `job` as read at its version
/// (`queued`), waiting for a transaction that holds the job locked: one statement as
/// [`claim_many`] writes. `None` when the job is no longer at that version (read it again).
pub async fn claim(
    exec: impl PgExecutor<'_>,
    job: &JobRow,
    token: Uuid,
    lease: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = claim_sql!("");
    Ok(write(exec, sql, &[(job, token)], lease).await?.pop())
}

/// queued -> running under a fresh lease, for each `(job, token)` with `job` as read at its
/// version: one statement that commits on its own (outside a transaction) with the `job.running`
/// event and notification of each job it claims, built from the row it writes, which is `job`
/// moved on; its `startedAt`, on a first attempt, is this process's clock. Returns the jobs
/// claimed, in the order asked. Left out: a job no longer at its version, one another
/// transaction holds locked (never waited for, so the statement cannot deadlock with another
/// locking several jobs), and every repetition of a job after its first.
pub async fn claim_many(
    exec: impl PgExecutor<'_>,
    reads: &[(&JobRow, Uuid)],
    lease: Duration,
) -> Result<Vec<JobRow>, sqlx::Error> {
    write(exec, claim_sql!("SKIP LOCKED"), reads, lease).await
}

async fn write(
    exec: impl PgExecutor<'_>,
    sql: &'static str,
    reads: &[(&JobRow, Uuid)],
    lease: Duration,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let at = crate::db::clock();
    let mut seen = HashSet::with_capacity(reads.len());
    let mut moved: Vec<JobRow> = reads
        .iter()
        .filter(|(job, _)| seen.insert(job.id))
        .map(|&(job, token)| JobRow {
            status: JobStatus::Running,
            attempts: job.attempts + 1,
            started_at: job.started_at.or(Some(at)),
            lease_token: Some(token),
            lease_until: Some(at + lease),
            version: job.version + 1,
            ..job.clone()
        })
        .collect();
    if moved.is_empty() {
        return Ok(moved);
    }
    let events: Vec<_> = moved
        .iter()
        .map(|row| queue::status_event(&row.view(), row.version, row.traceparent.as_deref()))
        .collect();
    let ids: Vec<String> = moved.iter().map(|row| row.id.to_string()).collect();
    let notes: Vec<(&str, &str)> = ids.iter().map(|id| (NOTIFY_CHANNEL, id.as_str())).collect();
    let claimed: HashSet<Uuid> = outbox::bind_announcements(sqlx::query(sql), &events, &notes)
        .bind(moved.iter().map(|row| row.id).collect::<Vec<_>>())
        .bind(moved.iter().map(|row| row.lease_token).collect::<Vec<_>>())
        // The version as read: one before the moved row's.
        .bind(moved.iter().map(|row| row.version - 1).collect::<Vec<_>>())
        .bind(at)
        .bind(lease.as_secs_f64())
        .fetch_all(exec)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid, _>(0))
        .collect::<Result<_, _>>()?;
    moved.retain(|row| claimed.contains(&row.id));
    Ok(moved)
}

/// The jobs among `ids` that exist, in no particular order.
pub async fn find_many(
    exec: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(exec)
        .await
}
