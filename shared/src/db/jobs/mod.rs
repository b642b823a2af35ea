//! The jobs table: creation, lookup, listing and cancellation (here), the transitions a worker
//! makes under a lease (`lease`), aggregate figures (`stats`). Each transition bumps `version`
//! and writes its CloudEvent to the outbox in the caller's transaction (the claim: in its own
//! statement, which commits on its own). The rarer ones also notify waiters in it; the hot ones
//! (a create, a claim, a job's end) send no notification inside the transaction, and their
//! caller announces them after the commit (`relay::Notifications::committed`): PostgreSQL
//! commits notifying transactions one at a time, each with its WAL flush.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, postgres::PgArguments};
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
         traceparent, lane, handed_back"
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
        Ending, claim, claim_and_finish, expired_leases, finish, hand_back, lock_expired,
        lock_held, renew_lease, retry_later,
    },
    reconcile::{PanicSite, lanes_behind, record_horizons, record_panic, resend_stranded},
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
    /// The job queue its message was last sent to (`jobs.lane`).
    pub lane: queue::Lane,
    /// Attempts that a worker's shutdown cut short and handed back (`jobs.handed_back`): among
    /// `attempts`, but not counted against the limit (`counted_attempts`).
    pub handed_back: i32,
}

impl JobRow {
    /// The attempts counted against `PROVISIONER_JOB_MAX_ATTEMPTS`: every one begun but those
    /// a worker's shutdown handed back.
    pub fn counted_attempts(&self) -> i32 {
        self.attempts - self.handed_back
    }

    /// The trace id of the job's trace context, as logs show it.
    pub fn trace_id(&self) -> Option<String> {
        crate::trace::trace_id_of(self.traceparent.as_deref())
    }

    /// The fields of the create (or batch item) that asked for this job, by the contract's
    /// names (`CreateTenantParams::submitted_fields`); `None` for a job of another kind.
    pub fn submitted_fields(&self) -> Option<serde_json::Map<String, Value>> {
        use serde::Deserialize;
        crate::domain::CreateTenantParams::deserialize(&self.params)
            .ok()
            .map(|p| p.submitted_fields(&self.tenant_url))
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

/// A job about to be recorded by `submit`.
#[derive(Debug)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: JobKind,
    pub tenant_url: String,
    pub client_id: String,
    pub params: Value,
    pub sealed_password: Option<Vec<u8>>,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    /// The stored template the job reads (kept in the store until the job ends).
    pub template_id: Option<String>,
    /// The span of the request that makes it (the job's spans are its children).
    pub trace: TraceContext,
    /// What must hold for it to be recorded.
    pub admit: Admit,
}

/// What a submission must satisfy to be recorded, checked in the statement that records it.
#[derive(Debug, Clone)]
pub struct Admit {
    /// Refuse when a tenant with the URL exists or a batch item for it is active (creates;
    /// imports learn it from their job).
    pub refuse_existing_tenant: bool,
    /// Most queued and running jobs the client may have outside batches.
    pub max_active_jobs: i64,
    /// The client's active jobs outside batches, up to this many (counting this one), go to
    /// the interactive queue; past it, to the backlog queue of its rank's tier (`queue::Lane::Backlog`).
    pub interactive_jobs: u32,
    /// What the job's stored template (`NewJob::template_id`) must be; it is locked until
    /// the job is recorded.
    pub template: TemplateCheck,
}

/// The condition on a submission's stored template.
#[derive(Debug, Clone)]
pub enum TemplateCheck {
    /// None to check: the job names no stored template, or the caller's transaction stored it.
    None,
    /// Stored (an upload whose bytes the store may hold already).
    Stored,
    /// Stored and kept by this client (`None`: by any client, for an operator): a template
    /// named by id.
    KeptBy(Option<String>),
}

/// What became of one submission.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Recorded, with its job message and `job.queued` event: the job as stored.
    Recorded(Box<JobRow>),
    /// The template is not stored, or not kept by the client.
    TemplateNotVisible,
    /// A tenant with the URL exists.
    TenantExists,
    /// A queued or running batch item names the URL.
    BatchItemActive,
    /// A queued or running Import Tenant job names the URL.
    ImportActive,
    /// The client has `max_active_jobs` queued or running jobs already.
    TooManyActive,
    /// Admitted, but a job with its idempotency key, or an active job for its tenant, was
    /// recorded first (by another statement, or earlier in the same one).
    Conflict,
    /// Kept out by earlier jobs of the same statement with its tenant or key that were all
    /// refused in the end (another client's over its cap): to be submitted again, alone.
    Unsettled,
}

/// What `submit_many`'s statement says of one job.
#[derive(sqlx::FromRow)]
struct Answer {
    template_visible: bool,
    tenant_exists: bool,
    batch_item_active: bool,
    import_active: bool,
    conflicts: bool,
    fits: bool,
    unsettled: bool,
    recorded: bool,
}

/// `submit_many` of one job, on `conn` (within the caller's transaction, if any).
pub async fn submit(conn: &mut PgConnection, job: &NewJob) -> Result<SubmitOutcome, sqlx::Error> {
    let mut outcomes = submit_many(conn, std::slice::from_ref(job)).await?;
    Ok(outcomes.pop().expect("one outcome per job"))
}

/// Records queued jobs, each with its job message and `job.queued` event, after the admission
/// checks of each, in one statement: on a connection outside a transaction it commits on its
/// own, so several concurrent creates cost one round trip and one commit. A job's `createdAt`
/// is this process's clock (the event announcing it is written in the same statement). No
/// notification is sent: the caller wakes its relay after the commit. One outcome per job, in
/// order.
pub async fn submit_many(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<SubmitOutcome>, sqlx::Error> {
    let created_at = db::clock();
    let rows: Vec<JobRow> = jobs
        .iter()
        .map(|job| JobRow {
            id: job.id,
            kind: job.kind,
            tenant_url: job.tenant_url.clone(),
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
            client_id: job.client_id.clone(),
            params: job.params.clone(),
            idempotency_key: job.idempotency_key.clone(),
            request_digest: job.request_digest.clone(),
            lease_token: None,
            lease_until: None,
            template_id: job.template_id.clone(),
            traceparent: Some(job.trace.to_string()),
            // The statement puts a job past its client's interactive ones on a backlog tier.
            lane: queue::Lane::Interactive,
            handed_back: 0,
        })
        .collect();
    let msgs: Vec<(Uuid, outbox::OutboxMessage)> = rows
        .iter()
        .flat_map(|row| {
            [
                // On the backlog queue instead when the statement finds the client past its
                // interactive jobs.
                (
                    row.id,
                    queue::JobMessage::outbox(row, queue::Lane::Interactive, Duration::ZERO),
                ),
                (
                    row.id,
                    queue::status_event(&row.view(), row.version, row.traceparent.as_deref()),
                ),
            ]
        })
        .collect();
    let job_column = |f: fn(&JobRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
    let msg_column =
        |f: fn(&outbox::OutboxMessage) -> &str| msgs.iter().map(|(_, m)| f(m)).collect::<Vec<_>>();
    let checks: Vec<(i16, Option<&str>)> = jobs
        .iter()
        .map(|j| match &j.admit.template {
            TemplateCheck::None => (0, None),
            TemplateCheck::Stored => (1, None),
            TemplateCheck::KeptBy(owner) => (2, owner.as_deref()),
        })
        .collect();
    let answers: Vec<Answer> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::boolean[], $12::int2[], $13::text[], $14::int8[],
                                  $23::int8[])
                 WITH ORDINALITY
                 AS i(id, kind, url, client, params, sealed, key, digest, template_id,
                      traceparent, refuse, template_check, owner, cap, interactive, ord)
         ), admission AS (
             -- Every check here and in `admitted` looks its job's keys up. The lanes keep a
             -- generic plan (`db::generic_plan_pool`), made from what the tables held when it
             -- was made: `OFFSET 0` keeps PostgreSQL from making an EXISTS one scan of the
             -- whole table, hashed, per statement, which a plan made on small tables would go
             -- on doing as they grow.
             SELECT i.ord, i.id, i.client, i.cap,
                 (i.template_check = 0 OR EXISTS (
                     SELECT 1 FROM templates t
                     WHERE t.id = i.template_id
                       AND (i.template_check = 1
                            -- A client's keep by its key, not among every client's keeps of
                            -- the same bytes (a template is stored once for all).
                            OR (i.owner IS NOT NULL
                                AND EXISTS (SELECT 1 FROM client_templates k
                                            WHERE k.client_id = i.owner
                                              AND k.template_id = t.id
                                            OFFSET 0))
                            OR (i.owner IS NULL
                                AND EXISTS (SELECT 1 FROM client_templates k
                                            WHERE k.template_id = t.id OFFSET 0)))
                     FOR KEY SHARE OF t)) AS template_visible,
                 (i.refuse AND EXISTS (SELECT 1 FROM tenants WHERE url = i.url OFFSET 0))
                     AS tenant_exists,
                 -- `batch_item` is set exactly when `batch_id` is; asked of it, the check
                 -- cannot be served by the partial indexes of batch items, which a plan made
                 -- before there were any would take for the cheapest scan.
                 (i.refuse AND EXISTS (SELECT 1 FROM jobs j
                                       WHERE j.tenant_url = i.url AND j.batch_item IS NOT NULL
                                         AND j.status IN ('queued', 'running') OFFSET 0))
                     AS batch_item_active,
                 (i.refuse AND EXISTS (SELECT 1 FROM jobs j
                                       WHERE j.tenant_url = i.url AND j.kind = 'importTenant'
                                         AND j.status IN ('queued', 'running') OFFSET 0))
                     AS import_active,
                 (SELECT coalesce(sum(n), 0)::bigint FROM client_active_jobs
                  WHERE client_id = i.client) AS active_jobs
             FROM input i
         ), admitted AS (
             -- A job that its idempotency key or its tenant's active create would keep out
             -- (recorded already, or earlier in this statement) is not recorded, nor counted.
             SELECT a.ord, a.client, a.cap, a.active_jobs,
                 (i.key IS NOT NULL
                  AND EXISTS (SELECT 1 FROM jobs j
                              WHERE j.client_id = i.client AND j.idempotency_key = i.key
                              OFFSET 0))
                 OR (i.kind = 'createTenant'
                     AND EXISTS (SELECT 1 FROM jobs j
                                 WHERE j.tenant_url = i.url AND j.kind = 'createTenant'
                                   AND j.batch_id IS NULL AND j.status IN ('queued', 'running')
                                 OFFSET 0))
                     AS stored_conflict,
                 (i.key IS NOT NULL
                  AND row_number() OVER (PARTITION BY i.client, i.key ORDER BY i.ord) > 1)
                 OR (i.kind = 'createTenant'
                     AND row_number() OVER (PARTITION BY i.url, i.kind ORDER BY i.ord) > 1)
                     AS group_conflict
             FROM admission a JOIN input i ON i.ord = a.ord
             WHERE a.template_visible AND NOT a.tenant_exists AND NOT a.batch_item_active
               AND NOT a.import_active
         ), ranked AS (
             -- The client's jobs already active, then those of this statement in order: a
             -- job's rank counts itself.
             SELECT ord, cap, stored_conflict, stored_conflict OR group_conflict AS conflicts,
                    active_jobs
                    + count(*) FILTER (WHERE NOT (stored_conflict OR group_conflict))
                          OVER (PARTITION BY client ORDER BY ord) AS rank
             FROM admitted
         ), within_cap AS (
             SELECT r.ord, r.stored_conflict, r.conflicts, r.rank,
                    NOT r.conflicts AND r.rank <= r.cap AS fits,
                    job_rank_lane(r.rank, i.interactive) AS lane
             FROM ranked r JOIN input i ON i.ord = r.ord
         ), job AS (
             INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, sealed_password,
                               idempotency_key, request_digest, template_id, traceparent,
                               created_at, lane)
             SELECT i.id, i.kind, i.url, 'queued', i.client, i.params, i.sealed, i.key,
                    i.digest, i.template_id, i.traceparent, $15, w.lane
             FROM input i JOIN within_cap w ON w.ord = i.ord AND w.fits
             ORDER BY i.ord
             ON CONFLICT DO NOTHING
             RETURNING id
         ), messages AS (
             INSERT INTO outbox (exchange, routing_key, message_id, content_type, payload,
                                 traceparent)
             -- A job message goes to the backlog queue of its rank's tier past the client's
             -- interactive jobs (a backlog lane's name is its routing key).
             SELECT m.e, CASE WHEN m.r = $24 AND w.lane <> 'interactive' THEN w.lane
                              ELSE m.r END,
                    m.m, m.c, m.p, m.tp
             FROM UNNEST($16::uuid[], $17::text[], $18::text[], $19::text[], $20::text[],
                         $21::bytea[], $22::text[]) WITH ORDINALITY
                      AS m(job, e, r, m, c, p, tp, n)
             JOIN job ON job.id = m.job
             JOIN input i ON i.id = m.job
             JOIN within_cap w ON w.ord = i.ord
             ORDER BY m.n
         )
         SELECT a.ord, a.template_visible, a.tenant_exists, a.batch_item_active, a.import_active,
                coalesce(w.conflicts, false) AS conflicts, coalesce(w.fits, false) AS fits,
                -- Kept out only by earlier jobs of this statement, none of them recorded.
                coalesce(w.conflicts AND NOT w.stored_conflict, false)
                AND NOT EXISTS (
                    SELECT 1 FROM job JOIN input e ON e.id = job.id
                    WHERE e.ord < a.ord
                      AND ((e.kind = 'createTenant' AND i.kind = 'createTenant' AND e.url = i.url)
                           OR (i.key IS NOT NULL AND e.client = i.client AND e.key = i.key)))
                    AS unsettled,
                EXISTS (SELECT 1 FROM job WHERE job.id = a.id) AS recorded
         FROM admission a JOIN input i ON i.ord = a.ord LEFT JOIN within_cap w ON w.ord = a.ord
         ORDER BY a.ord",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind(job_column(|r| Some(&r.tenant_url)))
    .bind(job_column(|r| Some(&r.client_id)))
    .bind(rows.iter().map(|r| &r.params).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.sealed_password.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(job_column(|r| r.idempotency_key.as_deref()))
    .bind(job_column(|r| r.request_digest.as_deref()))
    .bind(job_column(|r| r.template_id.as_deref()))
    .bind(job_column(|r| r.traceparent.as_deref()))
    .bind(
        jobs.iter()
            .map(|j| j.admit.refuse_existing_tenant)
            .collect::<Vec<_>>(),
    )
    .bind(checks.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(checks.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.admit.max_active_jobs)
            .collect::<Vec<_>>(),
    )
    .bind(created_at)
    .bind(msgs.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(msg_column(|m| &m.exchange))
    .bind(msg_column(|m| &m.routing_key))
    .bind(msg_column(|m| &m.message_id))
    .bind(msg_column(|m| &m.content_type))
    .bind(
        msgs.iter()
            .map(|(_, m)| m.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        msgs.iter()
            .map(|(_, m)| m.traceparent.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| i64::from(j.admit.interactive_jobs))
            .collect::<Vec<_>>(),
    )
    .bind(queue::CREATE_TENANT_ROUTING_KEY)
    .fetch_all(&mut *conn)
    .await?;
    if answers.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{} answers for {} submissions",
            answers.len(),
            rows.len()
        )));
    }
    Ok(rows
        .into_iter()
        .zip(answers)
        .zip(jobs)
        .map(|((row, answer), job)| {
            let Answer {
                template_visible,
                tenant_exists,
                batch_item_active,
                import_active,
                conflicts,
                fits,
                unsettled,
                recorded,
                ..
            } = answer;
            // An upload the store lacks is stored only for a job the rest would admit.
            let upload = matches!(job.admit.template, TemplateCheck::Stored);
            if recorded {
                SubmitOutcome::Recorded(Box::new(row))
            } else if !template_visible
                && !(upload && (tenant_exists || batch_item_active || import_active))
            {
                SubmitOutcome::TemplateNotVisible
            } else if tenant_exists {
                SubmitOutcome::TenantExists
            } else if batch_item_active {
                SubmitOutcome::BatchItemActive
            } else if import_active {
                SubmitOutcome::ImportActive
            } else if unsettled {
                SubmitOutcome::Unsettled
            } else if !conflicts && !fits {
                SubmitOutcome::TooManyActive
            } else {
                SubmitOutcome::Conflict
            }
        })
        .collect())
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
        db::batches::settle(conn, batch, row.finished_at).await?;
    }
    Ok(())
}

/// Wakes whoever waits on these jobs (or batches): one notification each on the jobs channel,
/// in one statement.
pub async fn notify_changed(exec: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, id::text) FROM UNNEST($2::uuid[]) AS id")
        .bind(NOTIFY_CHANNEL)
        .bind(ids)
        .execute(exec)
        .await
        .map(drop)
}

/// Wakes whoever waits on job `id`, and this process's relay, when the caller's transaction
/// commits: for the rare transitions that announce themselves in their transaction.
pub async fn notify_in_transaction(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    let id = id.to_string();
    outbox::insert_notifying(
        conn,
        &[],
        &[
            (NOTIFY_CHANNEL, &id),
            (outbox::NOTIFY_CHANNEL, outbox::writer_tag()),
        ],
    )
    .await
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
#[derive(Debug, Default, Clone, Copy)]
pub struct ListFilter<'a> {
    /// Whose jobs (`None`: every client's, for operators).
    pub client_id: Option<&'a str>,
    pub status: Option<JobStatus>,
    pub tenant_url: Option<&'a str>,
    pub batch_id: Option<Uuid>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Jobs newest first. Only the filters given are in the statement, so that each plan reads the
/// index made for it (a batch's jobs, a tenant's, a client's, or everyone's), and each of those
/// has the status before the time: a page reads one range per status asked for (all five when
/// none is, merged), so it costs the same whatever the tables hold and however rare the status.
pub async fn list(
    exec: impl PgExecutor<'_>,
    f: &ListFilter<'_>,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let (sql, args) = list_statement(f)?;
    sqlx::query_as_with(&sql, args).fetch_all(exec).await
}

/// The statement `list` runs, with its arguments (public for the tests of its plans).
pub fn list_statement(f: &ListFilter<'_>) -> Result<(String, PgArguments), sqlx::Error> {
    use sqlx::Arguments as _;
    let mut args = PgArguments::default();
    let mut conditions = Vec::new();
    let mut add = |condition: &str, args: &mut PgArguments| {
        conditions.push(condition.replace('#', &format!("${}", args.len() + 1)));
    };
    let encode = sqlx::Error::Encode;
    if let Some(client) = f.client_id {
        add("client_id = #", &mut args);
        args.add(client).map_err(encode)?;
    }
    if let Some(url) = f.tenant_url {
        add("tenant_url = #", &mut args);
        args.add(url).map_err(encode)?;
    }
    if let Some(batch) = f.batch_id {
        add("batch_id = #", &mut args);
        args.add(batch).map_err(encode)?;
    }
    if let Some((at, id)) = f.after {
        // Two placeholders: the time, then the id.
        conditions.push(format!(
            "(created_at, id) < (${}, ${})",
            args.len() + 1,
            args.len() + 2
        ));
        args.add(at).map_err(encode)?;
        args.add(id).map_err(encode)?;
    }
    args.add(f.limit).map_err(encode)?;
    let limit = format!("${}", args.len());
    let range = |status: JobStatus| {
        let mut filter = format!("status = '{}'", status.as_str());
        for c in &conditions {
            filter.push_str(" AND ");
            filter.push_str(c);
        }
        format!(
            "SELECT {COLUMNS} FROM jobs WHERE {filter}
             ORDER BY created_at DESC, id DESC LIMIT {limit}"
        )
    };
    let sql = match f.status {
        Some(status) => range(status),
        None => {
            let ranges: Vec<String> = JobStatus::ALL
                .iter()
                .map(|s| format!("({})", range(*s)))
                .collect();
            format!(
                "SELECT * FROM ({}) page ORDER BY created_at DESC, id DESC LIMIT {limit}",
                ranges.join(" UNION ALL ")
            )
        }
    };
    Ok((sql, args))
}

/// What a cancel of one job found.
#[derive(Debug)]
pub enum Cancel {
    /// It was queued and is now cancelled.
    Done(JobRow),
    /// It is running or has ended, as of its latest committed state.
    Refused(JobRow),
    /// No such job (for this client).
    NotFound,
}

/// queued -> cancelled, or why not. A job that was not queued when the cancel looked is read
/// again under its row lock, so what is refused is its latest committed state and cannot
/// change before the answer: a job handed back to the queue meanwhile (a retry) is cancelled
/// then, never refused as "queued". The caller commits.
pub async fn cancel_or_refuse(
    conn: &mut PgConnection,
    id: Uuid,
    client_id: Option<&str>,
) -> Result<Cancel, sqlx::Error> {
    if let Some(job) = cancel(conn, id, client_id).await? {
        return Ok(Cancel::Done(job));
    }
    let locked: Option<JobRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR client_id = $2)
         FOR UPDATE"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match locked {
        None => Cancel::NotFound,
        Some(job) if job.status == JobStatus::Queued => match cancel(conn, id, client_id).await? {
            Some(job) => Cancel::Done(job),
            // Unreachable while the row is locked; said plainly if it ever is not.
            None => Cancel::Refused(job),
        },
        Some(job) => Cancel::Refused(job),
    })
}

/// queued -> cancelled. `None` when the job is not queued (or not the client's).
async fn cancel(
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

/// A job as a worker reads it before trying it, with its sealed administrator password (the
/// try's hash needs it; reading both at once saves a round trip). `Debug` leaves the sealed
/// password out.
#[derive(Clone, sqlx::FromRow)]
pub struct JobToTry {
    #[sqlx(flatten)]
    pub job: JobRow,
    pub sealed_password: Option<Vec<u8>>,
}

impl std::fmt::Debug for JobToTry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobToTry")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

/// Job `id` with its sealed administrator password (`JobToTry`).
pub async fn find_to_try(
    exec: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<JobToTry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, sealed_password FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(exec)
    .await
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
