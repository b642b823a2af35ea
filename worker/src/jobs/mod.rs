//! Job kinds and the life of one job inside a worker: claim under a lease, run the kind's
//! handler, record how it ended. One file per kind; `run_kind` is the registry.

pub mod create_tenant;
pub mod import_tenant;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::{
    config::Settings,
    db::{
        self,
        jobs::{Ending, JobRow},
    },
    domain::{JobError, JobKind, TemplateSource},
    seal::Sealer,
    template::{Limits, Template},
    uploads,
};
use rand::Rng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fetch::{FetchError, Fetcher};

/// What every job handler may use.
#[derive(Debug)]
pub struct Context {
    pub pool: PgPool,
    pub settings: Settings,
    pub sealer: Sealer,
    pub fetcher: Fetcher,
    pub db_version: i64,
    pub limits: Limits,
    /// Jobs this process holds a lease on, so shutdown can hand them back.
    pub leases: Mutex<HashMap<Uuid, Uuid>>,
}

/// How a handler's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The work and the job's success committed together.
    Committed,
    /// A permanent failure with the job's final code.
    Fail {
        code: i32,
        title: String,
        detail: String,
    },
    /// A fault that a later attempt may not meet.
    Transient(String),
    /// Another worker took the job over (our lease ran out); nothing was written.
    LostLease,
}

impl Step {
    pub fn fail(code: i32, title: &str, detail: impl Into<String>) -> Self {
        Self::Fail {
            code,
            title: title.to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<sqlx::Error> for Step {
    /// The cause is logged here; the job's record says only what kind of fault it was.
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "database fault during the job");
        Step::Transient("a database fault interrupted the job".to_owned())
    }
}

/// What the consumer should do with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Dead-letter it: the message is poison (unparsable, unknown job, or a job that kept
    /// crashing its handler).
    DeadLetter,
    /// Give it back to the broker (shutdown interrupted the work).
    Requeue,
}

/// Processes the job `id` once: returns when its outcome (or a retry) is committed.
/// `redelivered` is the broker's flag: such a delivery may stand for a worker that died holding
/// the job, so it waits for that worker's lease instead of being dropped as a duplicate.
pub async fn process(
    ctx: Arc<Context>,
    id: Uuid,
    redelivered: bool,
    shutdown: CancellationToken,
) -> Disposition {
    let token = Uuid::new_v4();
    // A redelivered copy waits at most this long for a live holder before leaving the job to it
    // (and to the sweeper, should that holder die later).
    let patience = tokio::time::Instant::now() + ctx.settings.job_lease * 2;
    let job = loop {
        match acquire(&ctx, id, token).await {
            Ok(Acquired::Claimed(job)) => break *job,
            Ok(Acquired::Ended) => return Disposition::Ack,
            Ok(Acquired::Unknown) => {
                tracing::warn!(job.id = %id, "message names no known job; dead-lettering it");
                return Disposition::DeadLetter;
            }
            Ok(Acquired::Rescued) => {}
            // A duplicate of a job another live worker runs: that worker settles it.
            Ok(Acquired::HeldElsewhere(_))
                if !redelivered || tokio::time::Instant::now() > patience =>
            {
                return Disposition::Ack;
            }
            Ok(Acquired::HeldElsewhere(wait)) | Err(Wait(wait)) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return Disposition::Requeue,
                }
            }
        }
    };
    ctx.leases.lock().expect("lease map").insert(id, token);
    let span = tracing::info_span!("job", job.id = %id, job.kind = %job.kind, tenant.url = %job.tenant_url, attempt = job.attempts);
    // Both stop with this task: a job abandoned at shutdown neither renews its lease nor goes on
    // importing.
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(ctx.clone(), id, token)));
    let mut handler = AbortOnDrop(tokio::spawn(tracing::Instrument::instrument(
        run_kind(ctx.clone(), job.clone(), token),
        span.clone(),
    )));
    let (step, panicked) = match (&mut handler.0).await {
        Ok(step) => (step, false),
        Err(e) => {
            tracing::error!(job.id = %id, error = %e, "the job's handler crashed");
            (
                Step::Transient("the importer crashed".to_owned()),
                e.is_panic(),
            )
        }
    };
    drop(_heartbeat);
    let _enter = span.enter();
    let (disposition, ended) = record(&ctx, &job, token, step, panicked).await;
    ctx.leases.lock().expect("lease map").remove(&id);
    if ended {
        // No later attempt needs the uploaded template.
        uploads::remove(&ctx.settings.upload_dir, id).await;
    }
    disposition
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Acquired {
    Claimed(Box<JobRow>),
    Ended,
    Unknown,
    /// Running under another worker's live lease, which ends within this long at most.
    HeldElsewhere(Duration),
    /// Its previous worker's lease ran out and the job was taken back: try again at once.
    Rescued,
}

/// A database fault while claiming: wait this long and try again.
struct Wait(Duration);

async fn acquire(ctx: &Context, id: Uuid, token: Uuid) -> Result<Acquired, Wait> {
    let attempt = async {
        let mut tx = ctx.pool.begin().await?;
        if let Some(job) = db::jobs::claim(&mut tx, id, token, ctx.settings.job_lease).await? {
            tx.commit().await?;
            return Ok(Acquired::Claimed(Box::new(job)));
        }
        let Some(job) = db::jobs::find(&mut *tx, id, None).await? else {
            return Ok(Acquired::Unknown);
        };
        if job.status().is_terminal() {
            return Ok(Acquired::Ended);
        }
        let remaining = job
            .lease_until
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or_default();
        if job.status == "running" && remaining.is_zero() {
            // Its worker died or hung: take it back (or fail it when out of attempts).
            let rescued = db::jobs::rescue(&mut tx, id, ctx.settings.job_max_attempts).await?;
            tx.commit().await?;
            // The database's clock may still see the lease alive: then wait like for any holder.
            return Ok(if rescued.is_some() {
                Acquired::Rescued
            } else {
                Acquired::HeldElsewhere(Duration::from_secs(1))
            });
        }
        Ok(Acquired::HeldElsewhere(
            remaining.clamp(Duration::from_millis(100), Duration::from_secs(1)),
        ))
    };
    attempt.await.map_err(|e: sqlx::Error| {
        tracing::warn!(job.id = %id, error = %e, "cannot claim job; retrying");
        Wait(Duration::from_secs(1))
    })
}

async fn run_kind(ctx: Arc<Context>, job: JobRow, token: Uuid) -> Step {
    match JobKind::parse(&job.kind) {
        Some(JobKind::CreateTenant) => create_tenant::run(&ctx, &job, token).await,
        Some(JobKind::ImportTenant) => import_tenant::run(&ctx, &job, token).await,
        None => Step::fail(
            500,
            "Internal Server Error",
            format!("no handler for job kind `{}`", job.kind),
        ),
    }
}

/// The job's parameters, as its kind stores them.
pub fn params<T: serde::de::DeserializeOwned>(job: &JobRow) -> Result<T, Step> {
    serde_json::from_value(job.params.clone()).map_err(|e| {
        Step::fail(
            500,
            "Internal Server Error",
            format!("the job's parameters are unreadable: {e}"),
        )
    })
}

/// Which database versions a template may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Exactly the server's (create-from-template).
    Exact,
    /// The server's, or an older one that can be upgraded (Import Tenant).
    Upgradable,
}

/// Loads and reads the job's template; every fault in it is code 400.
pub async fn load_template(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
    versions: Versions,
) -> Result<Template, Step> {
    let bytes = template_bytes(ctx, job, source).await?;
    let (limits, db_version) = (ctx.limits, ctx.db_version);
    let read = tokio::task::spawn_blocking(move || match versions {
        Versions::Exact => Template::read(&bytes, &limits, db_version),
        Versions::Upgradable => Template::read_upgrading(&bytes, &limits, db_version),
    });
    match read.await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Step::fail(400, "Bad template", e.to_string())),
        Err(_) => Err(Step::Transient("the template reader crashed".to_owned())),
    }
}

/// The template's bytes: downloaded, or read from the job's upload.
pub async fn template_bytes(
    ctx: &Context,
    job: &JobRow,
    source: &TemplateSource,
) -> Result<bytes::Bytes, Step> {
    match source {
        TemplateSource::Url(url) => ctx.fetcher.get(url).await.map_err(|e| match e {
            FetchError::Permanent(detail) => Step::fail(400, "Bad template", detail),
            FetchError::Transient(detail) => Step::Transient(detail),
        }),
        TemplateSource::Upload => {
            let path = uploads::path(&ctx.settings.upload_dir, job.id);
            match tokio::fs::read(&path).await {
                Ok(b) if b.len() as u64 <= ctx.settings.template_max_bytes => Ok(b.into()),
                Ok(_) => Err(Step::fail(
                    400,
                    "Bad template",
                    format!(
                        "the template is larger than {} bytes",
                        ctx.settings.template_max_bytes
                    ),
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Step::fail(
                    500,
                    "Internal Server Error",
                    "the uploaded template is no longer available",
                )),
                Err(e) => {
                    tracing::warn!(job.id = %job.id, error = %e, "cannot read the uploaded template");
                    Err(Step::Transient(
                        "the uploaded template could not be read".to_owned(),
                    ))
                }
            }
        }
    }
}

async fn heartbeat(ctx: Arc<Context>, id: Uuid, token: Uuid) {
    let every = ctx.settings.job_lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match db::jobs::renew_lease(&ctx.pool, id, token, ctx.settings.job_lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(job.id = %id, error = %e, "cannot renew the job's lease"),
        }
    }
}

/// Commits how the attempt ended. Database faults here are retried until they pass: the
/// delivery is not acknowledged before the outcome is durable. Also says whether the job ended
/// by this attempt (its outcome applied while this worker still held the lease).
async fn record(
    ctx: &Context,
    job: &JobRow,
    token: Uuid,
    step: Step,
    panicked: bool,
) -> (Disposition, bool) {
    let max = ctx.settings.job_max_attempts as i32;
    let exhausted = job.attempts >= max;
    match &step {
        Step::Committed => tracing::info!("job succeeded"),
        Step::LostLease => {
            tracing::warn!("lease lost to another worker; this attempt wrote nothing")
        }
        Step::Fail { code, detail, .. } => tracing::info!(code, detail, "job failed"),
        Step::Transient(reason) => {
            tracing::warn!(reason, attempt = job.attempts, max, "transient failure")
        }
    }
    let ended_here;
    loop {
        let result = async {
            let mut tx = ctx.pool.begin().await?;
            let applied = match &step {
                Step::Committed => return Ok(true),
                Step::LostLease => return Ok(false),
                Step::Fail {
                    code,
                    title,
                    detail,
                } => {
                    let ending = Ending::Failed {
                        code: *code,
                        error: JobError {
                            title: title.clone(),
                            detail: detail.clone(),
                        },
                    };
                    db::jobs::finish(&mut tx, job.id, token, &ending)
                        .await?
                        .is_some()
                }
                Step::Transient(reason) if exhausted => {
                    let error = JobError {
                        title: "Internal Server Error".to_owned(),
                        detail: format!(
                            "the job failed {max} times with transient faults; the last: {reason}"
                        ),
                    };
                    db::jobs::finish(&mut tx, job.id, token, &Ending::Failed { code: 500, error })
                        .await?
                        .is_some()
                }
                Step::Transient(_) => {
                    db::jobs::retry_later(
                        &mut tx,
                        job.id,
                        token,
                        backoff(ctx.settings.retry_base_delay, job.attempts),
                    )
                    .await?;
                    // Queued again: a later attempt still needs the job's upload.
                    false
                }
            };
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(applied)
        }
        .await;
        match result {
            Ok(applied) => {
                ended_here = applied;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the job's outcome; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let disposition = if panicked && exhausted {
        Disposition::DeadLetter
    } else {
        Disposition::Ack
    };
    (disposition, ended_here)
}

/// Exponential backoff with jitter: base * 2^(attempt-1), at most 5 minutes.
fn backoff(base: Duration, attempt: i32) -> Duration {
    let exp = base
        .saturating_mul(1 << (attempt - 1).clamp(0, 16))
        .min(Duration::from_secs(300));
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    exp.mul_f64(jitter)
}
