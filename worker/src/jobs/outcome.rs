//! How a job attempt ends: `Finished` or a `JobFailure`, whose code and title come from one
//! mapping, and the recording of that outcome (retry with backoff, or the job's end).

use std::time::Duration;

use provisioner_shared::{
    config::Settings,
    db::{self, jobs::Ending, jobs::JobRow},
    domain::JobError,
};
use rand::Rng;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Context;
use crate::tenant_write::WriteOutcome;

/// A handler's attempt that failed in none of the `JobFailure` ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// The work and the job's success committed together.
    Committed,
    /// Another worker took the job over (our lease ran out); nothing was written.
    LostLease,
}

/// Why a job attempt failed. The detail is what the job's `error.detail` says.
#[derive(Debug)]
pub(crate) enum JobFailure {
    /// The template (or a parameter naming part of it) is unusable: code 400.
    BadTemplate(String),
    /// The tenant, or ids it keeps, exist: code 409.
    Conflict(String),
    /// The import lock was not free within the client's `lockTimeout`: code 503, final.
    LockTimeout(String),
    /// A fault a later attempt may not meet: retried, code 500 once attempts run out. The
    /// `cause`, if any, is logged when the attempt is recorded; the job shows only `detail`.
    Transient {
        detail: String,
        cause: Option<anyhow::Error>,
    },
    /// A fault no retry cures: code 500.
    Internal(String),
}

impl JobFailure {
    pub(crate) fn transient(detail: impl Into<String>) -> Self {
        Self::Transient {
            detail: detail.into(),
            cause: None,
        }
    }

    /// A transient fault whose cause stays in the logs.
    pub(crate) fn fault(detail: impl Into<String>, cause: impl Into<anyhow::Error>) -> Self {
        Self::Transient {
            detail: detail.into(),
            cause: Some(cause.into()),
        }
    }

    /// The job's final code and error title: the one mapping.
    fn code_and_title(&self) -> (i32, &'static str) {
        match self {
            Self::BadTemplate(_) => (400, "Bad template"),
            Self::Conflict(_) => (409, "Conflict"),
            Self::LockTimeout(_) => (503, "Lock timeout"),
            Self::Transient { .. } | Self::Internal(_) => (500, "Internal Server Error"),
        }
    }

    pub(super) fn detail(&self) -> &str {
        match self {
            Self::BadTemplate(d)
            | Self::Conflict(d)
            | Self::LockTimeout(d)
            | Self::Internal(d)
            | Self::Transient { detail: d, .. } => d,
        }
    }

    /// Whether a claimed attempt failing so ends the job at once (no retry). Not a lock timeout,
    /// which ends the job only after the client's `lockTimeout` was waited for.
    pub(super) fn ends_the_job(&self) -> bool {
        matches!(
            self,
            Self::BadTemplate(_) | Self::Conflict(_) | Self::Internal(_)
        )
    }

    fn ending(&self) -> Ending {
        let (code, title) = self.code_and_title();
        Ending::Failed {
            code,
            error: JobError {
                title: title.to_owned(),
                detail: provisioner_shared::domain::storable(self.detail()).into_owned(),
            },
        }
    }
}

impl From<sqlx::Error> for JobFailure {
    /// Classifies by SQLSTATE: what the database refuses in the data itself fails the job at
    /// once; everything else (connection loss, serialization failure, deadlock, shutdown,
    /// resources) may pass on a later attempt. The cause is logged with the outcome.
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        match code.as_deref().map(|c| (c, &c[..2])) {
            Some((c, _)) if db::refused_value(&e) => Self::BadTemplate(format!(
                "the database refused a value of the template (SQLSTATE {c})"
            )),
            // A unique violation nothing expected: something of this tenant exists already.
            Some(("23505", _)) => Self::Conflict(
                "part of the tenant already exists in this cluster (SQLSTATE 23505)".to_owned(),
            ),
            // Not-null, foreign-key and check violations: the template's data breaks a rule.
            Some((c @ ("23502" | "23503" | "23514"), _)) => Self::BadTemplate(format!(
                "the template breaks a rule of the database (SQLSTATE {c})"
            )),
            // 23P01 (an access-number range placed concurrently) and the rest: retried.
            _ => Self::fault("a database fault interrupted the job", e),
        }
    }
}

/// What the write transaction's outcome means for the job.
pub(crate) fn written(outcome: WriteOutcome) -> Result<Finished, JobFailure> {
    match outcome {
        WriteOutcome::Committed => Ok(Finished::Committed),
        WriteOutcome::LostLease => Ok(Finished::LostLease),
        WriteOutcome::LockNotFree { within } => Err(JobFailure::LockTimeout(format!(
            "the import lock was not free within {} s",
            within.as_secs()
        ))),
        WriteOutcome::TenantExists { url } => Err(JobFailure::Conflict(format!(
            "a tenant with URL {url} already exists"
        ))),
        WriteOutcome::TenantIdTaken { id } => Err(JobFailure::Conflict(format!(
            "a tenant with id {id} already exists (under another URL)"
        ))),
        WriteOutcome::SipDomainTaken { sip_domain } => Err(JobFailure::Conflict(format!(
            "the SIP domain {sip_domain} is already taken by another tenant"
        ))),
        WriteOutcome::EarlierWork { url, job } => Err(JobFailure::Conflict(format!(
            "job {job} for tenant {url}, submitted earlier, is still queued or running"
        ))),
    }
}

/// Commits how the attempt ended. Database faults here are retried until they pass: the
/// delivery is not acknowledged before the outcome is durable.
pub(super) async fn record(
    ctx: &Context,
    job: &JobRow,
    token: Uuid,
    outcome: Result<Finished, JobFailure>,
) {
    let max = ctx.settings.job_max_attempts;
    // The attempt as counted against `max` (handed-back attempts are not).
    log(&outcome, job.counted_attempts(), max);
    let failure = match outcome {
        Ok(Finished::Committed | Finished::LostLease) => return,
        Err(f) if job.counted_attempts() >= max as i32 => exhausted(f, max),
        Err(f) => f,
    };
    loop {
        match write(ctx, job, token, &failure).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the job's outcome; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The attempt's one log line, inside the job's span.
pub(super) fn log(outcome: &Result<Finished, JobFailure>, attempt: i32, max: u32) {
    match outcome {
        Ok(Finished::Committed) => tracing::info!("job succeeded"),
        Ok(Finished::LostLease) => {
            tracing::warn!("lease lost to another worker; this attempt wrote nothing")
        }
        Err(JobFailure::Transient { detail, cause }) => match cause {
            Some(e) => {
                tracing::warn!(reason = %detail, error = format!("{e:#}"), attempt, max, "transient failure")
            }
            None => tracing::warn!(reason = %detail, attempt, max, "transient failure"),
        },
        Err(f) => tracing::info!(
            code = f.code_and_title().0,
            detail = f.detail(),
            "job failed"
        ),
    }
}

/// A transient failure on the last attempt ends the job.
fn exhausted(failure: JobFailure, max: u32) -> JobFailure {
    match failure {
        JobFailure::Transient { detail, .. } => JobFailure::Internal(format!(
            "the job failed {max} times with transient faults; the last: {detail}"
        )),
        permanent => permanent,
    }
}

/// Ends the job with `failure`, or queues it again after a backoff if it is transient.
async fn write(
    ctx: &Context,
    job: &JobRow,
    token: Uuid,
    failure: &JobFailure,
) -> Result<(), sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    match failure {
        JobFailure::Transient { .. } => {
            // Queued again, still naming its stored template (if any) for the next attempt.
            let delay = backoff(ctx.settings.retry_base_delay, job.counted_attempts());
            db::jobs::retry_later(
                &mut tx,
                job.id,
                token,
                delay,
                ctx.settings.client_interactive_jobs,
            )
            .await?;
        }
        permanent => {
            db::jobs::finish(&mut tx, job, &permanent.ending()).await?;
            tx.commit().await?;
            ctx.notifications.committed(&[job.id]);
            return Ok(());
        }
    }
    tx.commit().await
}

/// Ends `queued`, as read and not yet claimed, with `failure` (one that `ends_the_job`): claimed
/// and failed in one write, as a claimed attempt failing so would end it. `false` when the job
/// changed since it was read.
pub(super) async fn fail_unclaimed(
    ctx: &Context,
    queued: &JobRow,
    failure: &JobFailure,
) -> Result<bool, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let ended = db::jobs::claim_and_finish(&mut tx, queued, &failure.ending()).await?;
    tx.commit().await?;
    if ended.is_some() {
        ctx.notifications.committed(&[queued.id]);
    }
    Ok(ended.is_some())
}

/// Takes a running job from a holder whose lease ran out: back to queued (with a new job
/// message) while attempts remain, else failed with code 500. `None`: nothing to take.
pub(crate) async fn rescue(
    conn: &mut PgConnection,
    id: Uuid,
    settings: &Settings,
) -> Result<Option<JobRow>, sqlx::Error> {
    let Some(held) = db::jobs::lock_expired(conn, id).await? else {
        return Ok(None);
    };
    take_back(conn, &held, settings, Taken::Lost).await
}

/// Why a job is taken from its lease holder, as the job's error says it when its attempts
/// have run out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// Its lease ran out, or its handling crashed.
    Lost,
    /// Its worker stopped past the shutdown deadline, once more than hand-backs are free.
    Stopped,
}

/// Takes a running job, `held` as its lease holder made it (locked by the caller), from that
/// holder: back to queued with a new job message while attempts remain, else failed with code
/// 500. Both announce the change in the caller's transaction (these are rare: the hot
/// transitions are announced after their commit).
pub(crate) async fn take_back(
    conn: &mut PgConnection,
    held: &JobRow,
    settings: &Settings,
    why: Taken,
) -> Result<Option<JobRow>, sqlx::Error> {
    if held.counted_attempts() >= settings.job_max_attempts as i32 {
        let failure = JobFailure::Internal(match why {
            Taken::Lost => format!(
                "the job's worker was lost {} times",
                held.counted_attempts()
            ),
            Taken::Stopped => format!(
                "the job's worker was stopped at shutdown again after its free hand-backs ({}), and its attempts ran out",
                held.handed_back
            ),
        });
        let ended = db::jobs::finish(conn, held, &failure.ending()).await?;
        if ended.is_some() {
            db::jobs::notify_in_transaction(conn, held.id).await?;
        }
        Ok(ended)
    } else {
        let token = held.lease_token.expect("a running job has a lease");
        db::jobs::retry_later(
            conn,
            held.id,
            token,
            Duration::ZERO,
            settings.client_interactive_jobs,
        )
        .await
    }
}

/// Exponential backoff with jitter: base * 2^(attempt-1), at most 5 minutes.
fn backoff(base: Duration, attempt: i32) -> Duration {
    let exp = base
        .saturating_mul(1 << (attempt - 1).clamp(0, 16))
        .min(Duration::from_secs(300));
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    exp.mul_f64(jitter)
}
