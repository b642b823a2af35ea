//! The life of one job inside a worker: claim under a lease, run its kind's handler, record how
//! the attempt ended. One file per kind; `run_kind` is the registry.

mod context;
mod create_tenant;
mod import_tenant;
mod lease;
mod outcome;
mod pin;
mod recent;
mod template;

use std::sync::Arc;

use provisioner_shared::{
    config::ImportLockMode,
    db::{
        self,
        jobs::{JobRow, PanicSite},
    },
    domain::{CreateTenantParams, JobKind, JobStatus, TemplateSource},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub(crate) use self::{
    context::{Context, Stage},
    lease::{AbortOnDrop, HandBack, hand_back},
    outcome::{Finished, JobFailure, rescue},
};
use crate::tenant_write::{self, Plan};

/// What the consumer should do with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Ack,
    /// Dead-letter it: the message is poison (unparsable, unknown job, or a job that kept
    /// crashing its handler).
    DeadLetter,
    /// Give it back to the broker (shutdown interrupted the work, or its handling crashed).
    Requeue,
}

/// Processes the job `id` once: returns when its outcome (or a retry) is committed.
/// `redelivered` is the broker's flag (see `lease::claim`).
///
/// A job on its first attempt whose template is at hand (in the store, or its batch's download
/// pinned here) is first tried before it is claimed: its work, then its claim and its end in
/// the write transaction, one write of the job's row instead of two (`first_try`). Anything
/// else (a download to make, a retry, a redelivery, that try not ending the job) is claimed
/// under lease `token` and run under that lease.
pub(crate) async fn process(
    ctx: Arc<Context>,
    id: Uuid,
    token: Uuid,
    redelivered: bool,
    shutdown: CancellationToken,
) -> Disposition {
    // A redelivery may be of a job whose handling killed its worker: it is claimed first, so
    // that such attempts count.
    let read = if redelivered {
        None
    } else {
        match db::jobs::find_to_try(&ctx.pool, id).await {
            Ok(Some(read)) if at_hand(&ctx, &read.job) => {
                if first_try(&ctx, read.job, read.sealed_password).await {
                    return Disposition::Ack;
                }
                if shutdown.is_cancelled() {
                    // Not claimed for an attempt the drain would cut short.
                    return Disposition::Requeue;
                }
                None
            }
            Ok(found) => found.map(|read| read.job),
            // The claim reads it again, retrying.
            Err(_) => None,
        }
    };
    let job = match lease::claim(&ctx, id, token, redelivered, read, &shutdown).await {
        Ok(job) => job,
        Err(disposition) => return disposition,
    };
    ctx.leases.hold(id, token);
    ctx.faults.at(Stage::Claim);
    let span = job_span(&job, job.attempts);
    let (outcome, panicked) = run_under_lease(&ctx, &job, token, span.clone()).await;
    ctx.faults.at(Stage::Record);
    outcome::record(&ctx, &job, token, outcome)
        .instrument(span)
        .await;
    ctx.leases.release_token(id, token);
    if panicked && job.counted_attempts() >= ctx.settings.job_max_attempts as i32 {
        Disposition::DeadLetter
    } else {
        Disposition::Ack
    }
}

/// Whether queued `job` may be tried before it is claimed: its first attempt (a retry, whose
/// message no broker marks redelivered, may follow an attempt that killed its worker: it is
/// claimed first, so that every such attempt counts), whose template needs no download (a
/// single create named by URL downloads it; a batch item's is pinned once for the batch), so
/// the job stays queued only for the time its work takes in this process. Not with the global
/// import lock, which another import holds most of the time under load: the try would mostly
/// find it busy and the job's work would be done twice.
fn at_hand(ctx: &Context, job: &JobRow) -> bool {
    if job.status != JobStatus::Queued
        || job.attempts > 0
        || ctx.settings.import_lock != ImportLockMode::Tenant
    {
        return false;
    }
    match job.kind {
        JobKind::ImportTenant => true,
        JobKind::CreateTenant => match params::<CreateTenantParams>(job) {
            Ok(p) => match (p.template, job.batch_id) {
                (TemplateSource::Stored(_), _) => true,
                (TemplateSource::Url(url), Some(batch)) => ctx.recent.pin(batch, &url).is_some(),
                (TemplateSource::Url(_), None) => false,
            },
            Err(_) => false,
        },
    }
}

/// Runs the handler of `queued`, unclaimed, whose write claims and ends the job together (see
/// `tenant_write::run`); says whether the job ended. A failure that a claimed attempt would end
/// the job with at once (400, 409, 500 without retry) ends it so, claimed and failed in one
/// write. Any other outcome wrote nothing: the lock was busy, the job changed since it was read,
/// the failure may pass on a retry, the handler panicked. The job is then claimed and run again
/// as usual, which waits for the lock, counts the attempt and records its outcome.
async fn first_try(ctx: &Arc<Context>, queued: JobRow, sealed_password: Option<Vec<u8>>) -> bool {
    // The job's `startedAt`, should the try end it: when its work began.
    let queued = JobRow {
        started_at: queued.started_at.or(Some(db::clock())),
        ..queued
    };
    let span = job_span(&queued, queued.attempts + 1);
    let run = run_kind(ctx.clone(), queued.clone(), sealed_password).instrument(span.clone());
    let mut handler = AbortOnDrop(tokio::spawn(run));
    let max = ctx.settings.job_max_attempts;
    match (&mut handler.0).await {
        Ok(Ok(Finished::Committed)) => {
            span.in_scope(|| outcome::log(&Ok(Finished::Committed), queued.attempts + 1, max));
            true
        }
        Ok(Ok(Finished::LostLease)) => {
            span.in_scope(|| {
                tracing::debug!("the job changed before it was claimed; reading it again")
            });
            false
        }
        Ok(Err(failure)) if failure.ends_the_job() => {
            match outcome::fail_unclaimed(ctx, &queued, &failure).await {
                Ok(ended) => {
                    if ended {
                        span.in_scope(|| outcome::log(&Err(failure), queued.attempts + 1, max));
                    }
                    ended
                }
                Err(e) => {
                    span.in_scope(|| tracing::warn!(error = %e, "cannot record the failure of the job's first try; claiming the job"));
                    false
                }
            }
        }
        Ok(Err(failure)) => {
            span.in_scope(|| {
                tracing::debug!(
                    reason = failure.detail(),
                    "the first try wrote nothing; claiming the job"
                )
            });
            false
        }
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "the job's handler crashed before the job was claimed"));
            if e.is_panic() {
                count_panic(ctx, PanicSite::Handler).await;
            }
            false
        }
    }
}

/// The span every line of the job's attempt (number `attempt`) logs under: its id, kind,
/// tenant, attempt, batch (for a batch item) and the trace id of the request that made it.
fn job_span(job: &JobRow, attempt: i32) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        job.id = %job.id,
        job.kind = %job.kind,
        tenant.url = %job.tenant_url,
        attempt,
        batch.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(batch) = job.batch_id {
        span.record("batch.id", tracing::field::display(batch));
    }
    if let Some(trace_id) = job.trace_id() {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    // Exported, the job's span is a child of the span its trace context names.
    if let Some(parent) = job
        .traceparent
        .as_deref()
        .and_then(provisioner_shared::trace::TraceContext::parse)
    {
        provisioner_shared::telemetry::set_parent(&span, &parent);
    }
    span
}

/// After a panic while the delivery of job `id` was handled under lease `token` (outside the
/// handler, whose panics `process` records as failed attempts): counts it, gives the job up if
/// `token` still holds it (queued again with a new message, or failed once out of attempts),
/// and says what becomes of the delivery. Whatever state the panic left, the job has a way
/// forward: a new message, the returned delivery, or (the database unreachable) its lease
/// running out for a redelivery or the sweeper.
pub(crate) async fn recover(ctx: &Context, id: Uuid, token: Uuid) -> Disposition {
    ctx.leases.release_token(id, token);
    count_panic(ctx, PanicSite::Delivery).await;
    match give_up(ctx, id, token).await {
        Ok(Some(job)) if job.status == JobStatus::Failed => Disposition::DeadLetter,
        // Queued again, with a new job message in the outbox: this copy is spent.
        Ok(Some(_)) => Disposition::Ack,
        // Not ours (not claimed, ended, or another worker's): the redelivery settles it.
        Ok(None) => Disposition::Requeue,
        Err(e) => {
            tracing::warn!(job.id = %id, error = %e, "cannot give up the crashed job; its lease will run out");
            Disposition::Requeue
        }
    }
}

async fn give_up(ctx: &Context, id: Uuid, token: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let Some(held) = db::jobs::lock_held(&mut tx, id, token).await? else {
        return Ok(None);
    };
    let job = outcome::take_back(&mut tx, &held, &ctx.settings, outcome::Taken::Lost).await?;
    tx.commit().await?;
    Ok(job)
}

/// Counts a caught panic for `/metrics` (a failure to count is only logged).
async fn count_panic(ctx: &Context, site: PanicSite) {
    if let Err(e) = db::jobs::record_panic(&ctx.pool, site).await {
        tracing::warn!(error = %e, site = site.as_str(), "cannot count a panic");
    }
}

/// Runs the kind's handler in its own task while a heartbeat renews the lease. Both stop with
/// this future: a job abandoned (at shutdown, or after a silence of PostgreSQL) neither renews
/// its lease nor goes on importing.
/// Also says whether the handler panicked.
async fn run_under_lease(
    ctx: &Arc<Context>,
    job: &JobRow,
    token: Uuid,
    span: tracing::Span,
) -> (Result<Finished, JobFailure>, bool) {
    let _heartbeat = lease::heartbeat(ctx.clone(), job.id, token);
    let run = run_kind(ctx.clone(), job.clone(), None).instrument(span);
    let mut handler = AbortOnDrop(tokio::spawn(run));
    match (&mut handler.0).await {
        Ok(outcome) => (outcome, false),
        Err(e) => {
            tracing::error!(job.id = %job.id, error = %e, "the job's handler crashed");
            if e.is_panic() {
                count_panic(ctx, PanicSite::Handler).await;
            }
            (
                Err(JobFailure::transient("the importer crashed")),
                e.is_panic(),
            )
        }
    }
}

/// The registry: each kind's handler.
async fn run_kind(
    ctx: Arc<Context>,
    job: JobRow,
    sealed_password: Option<Vec<u8>>,
) -> Result<Finished, JobFailure> {
    ctx.faults.at(Stage::Handler);
    match job.kind {
        JobKind::CreateTenant => create_tenant::run(&ctx, &job, sealed_password).await,
        JobKind::ImportTenant => import_tenant::run(&ctx, &job).await,
    }
}

/// The job's parameters, as its kind stores them.
fn params<T: serde::de::DeserializeOwned>(job: &JobRow) -> Result<T, JobFailure> {
    serde_json::from_value(job.params.clone())
        .map_err(|e| JobFailure::Internal(format!("the job's parameters are unreadable: {e}")))
}

/// Runs the write transaction for `plan` and says what its outcome means for the job.
async fn write_tenant(ctx: &Context, job: &JobRow, plan: &Plan) -> Result<Finished, JobFailure> {
    let written = tenant_write::run(&ctx.pool, ctx.settings.import_lock, job, plan).await?;
    if matches!(written, tenant_write::WriteOutcome::Committed) {
        ctx.notifications.committed(&[job.id]);
    }
    ctx.faults.at(Stage::Commit);
    outcome::written(written)
}
