//! The transitions a worker makes under a job's lease: claim, renewal, hand-back, the job's
//! end or retry, and taking over from a holder whose lease ran out.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Postgres, Row as _, postgres::PgArguments};
use uuid::Uuid;

use super::{COLUMNS, JobRow, transition};
use crate::{
    db::outbox,
    domain::{JobError, JobStatus, SkippedRange, TenantSummary},
    queue,
};

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// queued -> running under a fresh lease held by `token`, for `job` as read at its version
/// (`queued`): one statement that commits on its own (outside a transaction) with the job's
/// `job.running` event, built from the row it writes, which is `job` moved on (the caller
/// announces it after the commit); its `startedAt`, on a first attempt, is this process's clock. `None` when the job is no
/// longer at that version (read it again).
pub async fn claim(
    exec: impl PgExecutor<'_>,
    job: &JobRow,
    token: Uuid,
    lease: Duration,
) -> Result<Option<JobRow>, sqlx::Error> {
    let at = crate::db::clock();
    let claimed = JobRow {
        status: JobStatus::Running,
        attempts: job.attempts + 1,
        started_at: job.started_at.or(Some(at)),
        lease_token: Some(token),
        lease_until: Some(at + lease),
        version: job.version + 1,
        ..job.clone()
    };
    let written = announced(
        exec,
        &[&claimed],
        outbox::announced_update_sql!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                 started_at = COALESCE(started_at, $9), lease_token = $10,
                 lease_until = now() + make_interval(secs => $11), version = version + 1
             WHERE id = $8 AND status = 'queued' AND version = $12"
        ),
        move |q| {
            q.bind(job.id)
                .bind(at)
                .bind(token)
                .bind(lease.as_secs_f64())
                .bind(job.version)
        },
    )
    .await?;
    Ok(written.written.then_some(claimed))
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

/// The start of a job's end: `UPDATE jobs SET` with the columns `End::bind` binds (`$8`-`$15`),
/// the failed batch item's sealed password kept for a retry, the template reference and the
/// lease cleared; the caller adds the version (and what else it sets) and the condition.
macro_rules! end_update_sql {
    () => {
        "UPDATE jobs SET status = $9, code = $10, error = $11, tenant = $12,
                 tenant_url = CASE WHEN tenant_url = '' THEN coalesce($12::jsonb ->> 'url', '')
                                   ELSE tenant_url END,
                 skipped_numbers = $13, lock_wait_ms = $14, finished_at = $15,
                 sealed_password = CASE WHEN $9 = 'failed' AND batch_id IS NOT NULL
                                        THEN sealed_password END,
                 template_id = NULL, lease_token = NULL, lease_until = NULL,"
    };
}

/// running -> succeeded | failed, for `held` as its lease holder made it (the row `claim`
/// returned, or one locked by `lock_expired`/`lock_held`), only while that lease holds: one
/// statement in the caller's transaction with the job's event, built from the row it writes
/// (the caller announces it after the commit); the end of a batch's last item also ends the batch. `None` when the lease
/// no longer holds. The job's `finishedAt` is this process's clock.
pub async fn finish(
    conn: &mut PgConnection,
    held: &JobRow,
    ending: &Ending,
) -> Result<Option<JobRow>, sqlx::Error> {
    let end = End::of(held, ending);
    let finished = end.row.clone();
    let written = announced(
        &mut *conn,
        &[&finished],
        outbox::announced_update_sql!(concat!(
            end_update_sql!(),
            " version = version + 1
             WHERE id = $8 AND lease_token = $16 AND status = 'running' AND version = $17"
        )),
        move |q| end.bind(q).bind(held.lease_token).bind(held.version),
    )
    .await?;
    settled(conn, written.written.then_some(finished), None).await
}

/// queued -> running -> succeeded | failed at once, for `queued` as read at its version: the
/// claim and the end of an attempt that did its work before claiming (see the worker's
/// `jobs::process`), in one statement of the caller's transaction with both events (the
/// `job.running` event is the row as `claim` would have written it, without a lease), written
/// only if the job is still queued at that version; the end of a batch's last item also ends
/// the batch. `None` when the job changed since it was read (claimed by another worker,
/// cancelled). Its `startedAt`, on a first attempt, is `queued.started_at` if the caller set it
/// (when the work began), else this process's clock; `finishedAt` is this process's clock.
pub async fn claim_and_finish(
    conn: &mut PgConnection,
    queued: &JobRow,
    ending: &Ending,
) -> Result<Option<JobRow>, sqlx::Error> {
    let started_at = queued.started_at.unwrap_or_else(crate::db::clock);
    let running = JobRow {
        status: JobStatus::Running,
        attempts: queued.attempts + 1,
        started_at: queued.started_at.or(Some(started_at)),
        version: queued.version + 1,
        ..queued.clone()
    };
    let end = End::of(&running, ending);
    let finished = end.row.clone();
    let written = announced(
        &mut *conn,
        &[&running, &finished],
        outbox::announced_update_sql!(
            concat!(
                end_update_sql!(),
                " attempts = attempts + 1, started_at = COALESCE(started_at, $16),
                 version = version + 2
             WHERE id = $8 AND status = 'queued' AND version = $17"
            ),
            // The batch's row as its last commit left it, locked once the job's row is
            // written (the order of the counting trigger, which updates it at the
            // statement's end, and of every other writer).
            ", batch AS MATERIALIZED (
                 SELECT (queued + running)::bigint AS open FROM batches
                 WHERE id = $18 AND EXISTS (SELECT FROM changed)
                 FOR NO KEY UPDATE)",
            "(SELECT open FROM batch)"
        ),
        move |q| {
            end.bind(q)
                .bind(started_at)
                .bind(queued.version)
                .bind(queued.batch_id)
        },
    )
    .await?;
    settled(
        conn,
        written.written.then_some(finished),
        written.batch_open,
    )
    .await
}

/// The row a job's end writes, from the row it ends (`from`, running), and the parameters
/// `$8`-`$15` of its update.
struct End {
    row: JobRow,
    code: i32,
    error: Option<Value>,
    tenant: Option<Value>,
    skipped: Value,
    lock_wait_ms: Option<i32>,
}

impl End {
    fn of(from: &JobRow, ending: &Ending) -> Self {
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
        // An Import Tenant job whose URL the API could not read from its archive in time
        // (`tenantUrl` empty) takes the URL of the tenant it made (as the statement does).
        let tenant_url = match ending {
            Ending::Succeeded { tenant, .. } if from.tenant_url.is_empty() => tenant.url.clone(),
            _ => from.tenant_url.clone(),
        };
        let row = JobRow {
            status,
            code: Some(code),
            error: error.clone(),
            tenant: tenant.clone(),
            tenant_url,
            skipped_numbers: skipped.clone(),
            finished_at: Some(crate::db::clock()),
            template_id: None,
            lease_token: None,
            lease_until: None,
            version: from.version + 1,
            ..from.clone()
        };
        Self {
            row,
            code,
            error,
            tenant,
            skipped,
            lock_wait_ms,
        }
    }

    fn bind(self, q: Query<'_>) -> Query<'_> {
        q.bind(self.row.id)
            .bind(self.row.status)
            .bind(self.code)
            .bind(self.error)
            .bind(self.tenant)
            .bind(self.skipped)
            .bind(self.lock_wait_ms)
            .bind(self.row.finished_at)
    }
}

/// After a job's end was written (`Some`): the end of a batch's last item ends the batch.
/// `open_before`: the batch's queued and running items as its row read under lock before this
/// end was counted, if the end's statement read it. The end takes one item at most off that
/// count, and no other transaction can change it before this one commits (the row stays
/// locked), so from two open items on the batch cannot be done, and is not looked at.
async fn settled(
    conn: &mut PgConnection,
    finished: Option<JobRow>,
    open_before: Option<i64>,
) -> Result<Option<JobRow>, sqlx::Error> {
    if let Some(f) = finished.as_ref()
        && let Some(batch) = f.batch_id
        && open_before.is_none_or(|open| open < 2)
    {
        crate::db::batches::settle(conn, batch, f.finished_at).await?;
    }
    Ok(finished)
}

/// running -> queued after a transient failure: the job message is published again after
/// `delay`, on the lane its client's active jobs give it now (`interactive_jobs`: see
/// `queue::Lane`).
pub async fn retry_later(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    delay: Duration,
    interactive_jobs: u32,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = transition_sql!(
        "status = 'queued', lease_token = NULL, lease_until = NULL,
         sent_at = now() + make_interval(secs => $3),
         lane = job_resend_lane(batch_id, client_id, $4, lane)",
        "id = $1 AND lease_token = $2 AND status = 'running'"
    );
    requeue(conn, sql, id, token, delay, interactive_jobs).await
}

/// running -> queued for a job whose attempt shutdown cut short (its worker stopped past its
/// deadline, as a scale-down does), as `retry_later` without a delay: its message is sent
/// again at once; the attempt is counted as handed back (`handed_back`), not against the job's
/// limit, since the job did not fail. The caller acknowledges the delivery it replaces, and
/// bounds how often a job is handed back (the worker: as many times as its attempts limit).
pub async fn hand_back(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
    interactive_jobs: u32,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = transition_sql!(
        "status = 'queued', handed_back = handed_back + 1, lease_token = NULL,
         lease_until = NULL, sent_at = now() + make_interval(secs => $3),
         lane = job_resend_lane(batch_id, client_id, $4, lane)",
        "id = $1 AND lease_token = $2 AND status = 'running'"
    );
    requeue(conn, sql, id, token, Duration::ZERO, interactive_jobs).await
}

/// A running job held by `token` back to the queue by `sql` (`$1` its id, `$2` the token, `$3`
/// the delay in seconds, `$4` the interactive jobs), with its event and a new job message.
async fn requeue(
    conn: &mut PgConnection,
    sql: &'static str,
    id: Uuid,
    token: Uuid,
    delay: Duration,
    interactive_jobs: u32,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = transition(conn, sql, id, |q| {
        q.bind(token)
            .bind(delay.as_secs_f64())
            .bind(i64::from(interactive_jobs))
    })
    .await?;
    if let Some(row) = &row {
        outbox::insert(conn, &queue::JobMessage::outbox(row, row.lane, delay)).await?;
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

/// Locks a running job whose lease ran out (its worker died or hung), for the caller to take
/// it back with `retry_later` or `finish` as its holder. `None`: the job is not running, or its
/// lease is alive.
pub async fn lock_expired(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE id = $1 AND status = 'running' AND lease_until < now() FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Locks a running job whose lease `token` holds, for the caller to give it up with
/// `retry_later` or `finish` (its handling crashed). `None`: `token` holds no lease on it.
pub async fn lock_held(
    conn: &mut PgConnection,
    id: Uuid,
    token: Uuid,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs
         WHERE id = $1 AND lease_token = $2 AND status = 'running' FOR UPDATE"
    ))
    .bind(id)
    .bind(token)
    .fetch_optional(&mut *conn)
    .await
}

/// What an `announced` statement answered.
struct Announced {
    /// Whether it wrote.
    written: bool,
    /// The batch's open items, for a statement that read them (`claim_and_finish`).
    batch_open: Option<i64>,
}

/// Runs `update` (made with `outbox::announced_update_sql`, its own parameters bound by
/// `bind`) with the events of `rows`, the versions it writes in order (the last is the row it
/// leaves). The caller announces the change after its commit
/// (`relay::Notifications::committed`).
async fn announced(
    exec: impl PgExecutor<'_>,
    rows: &[&JobRow],
    update: &'static str,
    bind: impl for<'q> FnOnce(Query<'q>) -> Query<'q>,
) -> Result<Announced, sqlx::Error> {
    let msgs: Vec<_> = rows
        .iter()
        .map(|row| queue::status_event(&row.view(), row.version, row.traceparent.as_deref()))
        .collect();
    let answer = bind(outbox::bind_messages(sqlx::query(update), &msgs))
        .fetch_one(exec)
        .await?;
    Ok(Announced {
        written: answer.get::<i64, _>(0) > 0,
        batch_open: answer.get(1),
    })
}
