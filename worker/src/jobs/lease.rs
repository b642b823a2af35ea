//! A job's lease: claiming the job (or rescuing it from a dead holder), renewing the lease while
//! the handler runs, and handing the job back to the queue at shutdown.

use std::{sync::Arc, time::Duration};

use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::JobStatus,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Context, Disposition, outcome};

/// Claims job `id` under lease `token`, or says what to do with the delivery instead, starting
/// from `read`, the job as just read, if the caller has it. `redelivered` is the broker's flag:
/// such a delivery may stand for a worker that died holding the job, so it waits for that
/// worker's lease instead of being dropped as a duplicate.
pub(super) async fn claim(
    ctx: &Context,
    id: Uuid,
    token: Uuid,
    redelivered: bool,
    mut read: Option<JobRow>,
    shutdown: &CancellationToken,
) -> Result<JobRow, Disposition> {
    // A redelivered copy waits at most this long for a live holder before leaving the job to it
    // (and to the sweeper, should that holder die later).
    let patience = tokio::time::Instant::now() + ctx.settings.job_lease * 2;
    loop {
        let wait = match acquire(ctx, id, token, read.take()).await {
            Ok(Acquired::Claimed(job)) => return Ok(*job),
            Ok(Acquired::Ended) => return Err(Disposition::Ack),
            Ok(Acquired::Unknown) => {
                tracing::warn!(job.id = %id, "message names no known job; dead-lettering it");
                return Err(Disposition::DeadLetter);
            }
            Ok(Acquired::Changed) => continue,
            // A duplicate of a job another live worker runs: that worker settles it.
            Ok(Acquired::HeldElsewhere(_))
                if !redelivered || tokio::time::Instant::now() > patience =>
            {
                tracing::debug!(job.id = %id, redelivered, "a copy of a job running elsewhere; acknowledged");
                return Err(Disposition::Ack);
            }
            Ok(Acquired::HeldElsewhere(wait)) => wait,
            Err(e) => {
                tracing::warn!(job.id = %id, error = %e, "cannot claim job; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Err(Disposition::Requeue),
        }
    }
}

enum Acquired {
    Claimed(Box<JobRow>),
    Ended,
    Unknown,
    /// Running under another worker's live lease, which ends within this long at most.
    HeldElsewhere(Duration),
    /// It changed since it was read (say, its previous worker's lease ran out and the job was
    /// taken back): try again at once.
    Changed,
}

async fn acquire(
    ctx: &Context,
    id: Uuid,
    token: Uuid,
    read: Option<JobRow>,
) -> Result<Acquired, sqlx::Error> {
    let job = match read {
        Some(job) => job,
        None => match db::jobs::find(&ctx.pool, id, None).await? {
            Some(job) => job,
            None => return Ok(Acquired::Unknown),
        },
    };
    match job.status {
        status if status.is_terminal() => Ok(Acquired::Ended),
        JobStatus::Queued => {
            let lease = ctx.settings.job_lease;
            Ok(
                match db::jobs::claim(&ctx.pool, &job, token, lease).await? {
                    Some(job) => {
                        ctx.notifications.committed(&[job.id]);
                        Acquired::Claimed(Box::new(job))
                    }
                    // It changed since it was read: read it again.
                    None => Acquired::Changed,
                },
            )
        }
        _ => {
            let remaining = job
                .lease_until
                .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default())
                .unwrap_or_default();
            if !remaining.is_zero() {
                return Ok(Acquired::HeldElsewhere(
                    remaining.clamp(Duration::from_millis(100), Duration::from_secs(1)),
                ));
            }
            // Its worker died or hung: take it back (or fail it when out of attempts).
            let mut tx = ctx.pool.begin().await?;
            let rescued = outcome::rescue(&mut tx, id, &ctx.settings).await?;
            tx.commit().await?;
            // The database's clock may still see the lease alive: then wait like for any holder.
            Ok(if rescued.is_some() {
                Acquired::Changed
            } else {
                Acquired::HeldElsewhere(Duration::from_secs(1))
            })
        }
    }
}

/// Renews the lease every third of its term while alive; stops with its guard.
pub(super) fn heartbeat(ctx: Arc<Context>, id: Uuid, token: Uuid) -> AbortOnDrop<()> {
    AbortOnDrop(tokio::spawn(async move {
        let every = ctx.settings.job_lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match db::jobs::renew_lease(&ctx.pool, id, token, ctx.settings.job_lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(job.id = %id, error = %e, "cannot renew the job's lease"),
            }
        }
    }))
}

/// What `hand_back` did with a job that shutdown cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandBack {
    /// Back in the queue with a new job message, which replaces the delivery.
    Queued,
    /// Taken back with the attempt counted, since the job's free hand-backs were spent: back
    /// in the queue with a new job message. The delivery is spent.
    Counted,
    /// As `Counted`, but the job's attempts had run out: it ended with code 500, a poison
    /// job whose delivery goes to the dead-letter queue.
    Failed,
    /// The job had moved on (ended, retried or taken back by another worker): the delivery is
    /// spent too.
    MovedOn,
    /// Nothing written: no lease of this delivery (a try, or a claim not made), or PostgreSQL
    /// out of reach. The delivery goes back to the broker with the connection; a lease, if
    /// any, runs out, and the job is taken back as from a lost worker (the attempt counted).
    NotDone,
}

/// A job that shutdown cut short, whose lease `token` holds: back to the queue now with a new
/// job message, its attempt handed back rather than counted against the limit
/// (`db::jobs::hand_back`). As many attempts of a job as `PROVISIONER_JOB_MAX_ATTEMPTS` are
/// handed back so; past them the attempt counts, as a lost worker's does, and a job whose
/// counted attempts have run out ends with code 500 (`outcome::take_back`).
pub(crate) async fn hand_back(ctx: &Context, id: Uuid, token: Uuid) -> HandBack {
    if !ctx.leases.holds(id, token) {
        return HandBack::NotDone;
    }
    let settings = &ctx.settings;
    let handed = async {
        let mut tx = ctx.pool.begin().await?;
        let taken = match db::jobs::lock_held(&mut tx, id, token).await? {
            None => None,
            Some(held) if held.handed_back < settings.job_max_attempts as i32 => {
                db::jobs::hand_back(&mut tx, id, token, settings.client_interactive_jobs)
                    .await?
                    .map(|_| HandBack::Queued)
            }
            Some(held) => outcome::take_back(&mut tx, &held, settings, outcome::Taken::Stopped)
                .await?
                .map(|job| match job.status {
                    JobStatus::Failed => HandBack::Failed,
                    _ => HandBack::Counted,
                }),
        };
        tx.commit().await?;
        Ok::<_, sqlx::Error>(taken.unwrap_or(HandBack::MovedOn))
    };
    match handed.await {
        Ok(handed) => {
            ctx.leases.release_token(id, token);
            match handed {
                HandBack::Queued => {
                    tracing::info!(job.id = %id, "job handed back to the queue at shutdown");
                }
                HandBack::Counted => tracing::warn!(
                    job.id = %id,
                    "job stopped at shutdown once more than hand-backs are free; the attempt counts"
                ),
                HandBack::Failed => tracing::error!(
                    job.id = %id,
                    "job stopped at shutdown after its free hand-backs, and its attempts ran out: failed"
                ),
                HandBack::MovedOn | HandBack::NotDone => {}
            }
            handed
        }
        Err(e) => {
            tracing::warn!(job.id = %id, error = %e, "cannot hand the job back; its lease will run out");
            HandBack::NotDone
        }
    }
}

/// A task that is aborted when this guard is dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
