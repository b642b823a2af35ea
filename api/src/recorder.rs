//! Group commit of submissions: the creates that arrive while the database is busy with earlier
//! ones are recorded together, in one statement and one commit (`db::jobs::submit_many`).
//!
//! A few lanes each take what waits for them (at least one submission, at most `MOST_AT_ONCE`)
//! and record it; a client's submissions always take the same lane. A lone request is recorded
//! at once, with nothing added to its wait; under load every lane is busy and the waiting
//! submissions form the next group, so the database's cost per create falls as the load rises.
//! Each submission keeps its own admission checks and outcome; should a group's statement fail,
//! its submissions are recorded one by one, so one fault never fails another's request. The
//! lanes' sessions keep the statement's generic plan (`db::generic_plan_pool`).

use std::sync::Arc;

use provisioner_shared::{
    db::{
        self,
        jobs::{NewJob, SubmitOutcome},
    },
    relay::Notifications,
};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Lanes recording at once: each holds one database connection while it records.
const LANES: usize = 2;
/// Most submissions one statement records.
const MOST_AT_ONCE: usize = 64;
/// Submissions waiting for one lane, past which requests wait to hand theirs over.
const WAITING: usize = 1024;

type Outcome = Result<SubmitOutcome, sqlx::Error>;

type Reply = oneshot::Sender<(NewJob, Outcome)>;

struct Pending {
    job: NewJob,
    reply: Reply,
}

/// The API's recorder of submissions (cheap to clone).
#[derive(Clone)]
pub(crate) struct Recorder {
    /// One queue per lane; a client's submissions always take the same lane, so each of its
    /// statements sees the jobs of the one before (its cap holds exactly within a process).
    lanes: Arc<[mpsc::Sender<Pending>]>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the lanes, on connections of their own to `pool`'s database; they end when
    /// every clone of the recorder is gone.
    pub(crate) fn start(pool: &PgPool, notifications: Notifications) -> Self {
        // Planning the recording statement afresh at each execution cost more than running it
        // (docs/performance.md): the lanes' sessions keep its generic plan.
        let pool = db::generic_plan_pool(pool, LANES as u32);
        let lanes = (0..LANES)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(WAITING);
                tokio::spawn(supervise(
                    pool.clone(),
                    Arc::new(Mutex::new(receiver)),
                    notifications.clone(),
                ));
                sender
            })
            .collect();
        Self { lanes }
    }

    /// Records `job` (committed when this returns `Recorded`), and gives it back with the
    /// outcome.
    pub(crate) async fn record(&self, job: NewJob) -> Result<(NewJob, Outcome), RecorderGone> {
        let lane = &self.lanes[lane_of(&job.client_id, self.lanes.len())];
        let (reply, answer) = oneshot::channel();
        lane.send(Pending { job, reply })
            .await
            .map_err(|_| RecorderGone)?;
        answer.await.map_err(|_| RecorderGone)
    }
}

/// The lane of a client's submissions.
fn lane_of(client_id: &str, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

/// The recorder stopped (the process is stopping) or its lane failed while recording: whether
/// the job was recorded is unknown to this request.
#[derive(Debug, thiserror::Error)]
#[error("the job recorder stopped while recording")]
pub(crate) struct RecorderGone;

/// Runs a lane, and a new one if it panics (its group's requests answer `RecorderGone`).
async fn supervise(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    notifications: Notifications,
) {
    loop {
        let lane = lane(pool.clone(), receiver.clone(), notifications.clone());
        match tokio::spawn(lane).await {
            Err(e) if e.is_panic() => {
                tracing::error!(error = %e, "a job recorder lane failed; starting another");
            }
            // Every sender is gone, or the runtime is stopping.
            _ => return,
        }
    }
}

async fn lane(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    notifications: Notifications,
) {
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MOST_AT_ONCE {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        record(&pool, group, &notifications).await;
    }
}

/// Answers a submission. A job recorded wakes this process's relay first (its statement
/// announced nothing), here rather than in the request, which its client may abandon.
fn answer(notifications: &Notifications, reply: Reply, job: NewJob, outcome: Outcome) {
    if matches!(outcome, Ok(SubmitOutcome::Recorded(_))) {
        notifications.committed(&[]);
    }
    let _ = reply.send((job, outcome));
}

async fn record(pool: &PgPool, group: Vec<Pending>, notifications: &Notifications) {
    let (jobs, replies): (Vec<NewJob>, Vec<_>) =
        group.into_iter().map(|p| (p.job, p.reply)).unzip();
    // Submissions per statement, for operators: their ratio is the grouping under load.
    metrics::counter!("provisioner_submissions_total").increment(jobs.len() as u64);
    // No connection (the pool is exhausted or closed): nothing was sent, and trying each job
    // on its own would only wait again, so every request hears it at once.
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            for (job, reply) in jobs.into_iter().zip(replies) {
                let _ = reply.send((job, Err(same_error(&e))));
            }
            return;
        }
    };
    metrics::counter!("provisioner_submission_statements_total").increment(1);
    let e = match db::jobs::submit_many(&mut conn, &jobs).await {
        Ok(outcomes) => {
            for ((job, reply), outcome) in jobs.into_iter().zip(replies).zip(outcomes) {
                // Kept out by jobs of the group that were refused in the end: judged alone.
                let outcome = match outcome {
                    SubmitOutcome::Unsettled => {
                        metrics::counter!("provisioner_submission_statements_total").increment(1);
                        db::jobs::submit(&mut conn, &job).await
                    }
                    outcome => Ok(outcome),
                };
                answer(notifications, reply, job, outcome);
            }
            return;
        }
        Err(e) => e,
    };
    // The statement failed, perhaps for one job's sake (or after it committed, the connection
    // lost): each job is recorded on its own, so one fault never fails another's request.
    tracing::warn!(error = %e, jobs = jobs.len(), "recording a group of jobs failed; recording them one by one");
    drop(conn);
    for (job, reply) in jobs.into_iter().zip(replies) {
        let outcome = match pool.acquire().await {
            Ok(mut conn) => {
                metrics::counter!("provisioner_submission_statements_total").increment(1);
                submit_again(&mut conn, &job).await
            }
            Err(e) => Err(e),
        };
        answer(notifications, reply, job, outcome);
    }
}

/// Records `job` after a failed statement that may have recorded it (committed, then the
/// connection lost): a job stored under its id is that job.
async fn submit_again(conn: &mut sqlx::PgConnection, job: &NewJob) -> Outcome {
    match db::jobs::find(&mut *conn, job.id, None).await? {
        Some(row) => Ok(SubmitOutcome::Recorded(Box::new(row))),
        None => db::jobs::submit(conn, job).await,
    }
}

/// An error for each request of a group that failed before its statement (sqlx's errors are
/// not `Clone`; the pool's own kinds are kept, so they answer as they would alone).
fn same_error(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        e => sqlx::Error::Protocol(e.to_string()),
    }
}
