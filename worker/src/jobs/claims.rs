//! Claims in groups: deliveries that ask while a claim is being written are read and claimed
//! together by the next statement (group commit; a lone delivery is claimed at once).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::JobStatus,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most claims one statement writes.
const MAX_GROUP: usize = 64;

/// The claims of one process, written by one task.
#[derive(Debug)]
pub struct Claims {
    requests: mpsc::UnboundedSender<Request>,
    /// Whether the loss of the task was logged.
    lost: AtomicBool,
}

/// What became of a claim asked of the group.
#[derive(Debug)]
pub enum Claim {
    /// Claimed: the job as written.
    Claimed(JobRow),
    /// Left to the one-job path, with the job as the group read it (`None`: no such job). Left:
    /// a job that is not queued, moved on since the read, or locked by another transaction; and
    /// a batch item, whose claim updates its batch's counts: a statement claiming items of
    /// several batches could deadlock with the dispatcher (which updates several batches in one
    /// transaction), and one waiting for a batch's row would hold up every claim behind it.
    Left(Option<JobRow>),
    /// Left to the one-job path unread: the database failed.
    Unread,
}

#[derive(Debug)]
struct Request {
    id: Uuid,
    token: Uuid,
    answer: oneshot::Sender<Claim>,
}

impl Claims {
    /// Starts the task that writes the claims, under leases of `lease`; it ends with `self`.
    pub fn start(pool: PgPool, lease: Duration) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(pool, lease, receiver));
        Self {
            requests,
            lost: AtomicBool::new(false),
        }
    }

    /// Claims job `id` under lease `token` with whatever other claims are waiting.
    pub async fn claim(&self, id: Uuid, token: Uuid) -> Claim {
        let (answer, answered) = oneshot::channel();
        let asked = self.requests.send(Request { id, token, answer }).is_ok();
        match answered.await {
            Ok(claim) => claim,
            Err(_) => {
                if !asked && !self.lost.swap(true, Ordering::Relaxed) {
                    tracing::error!("the claims task is gone; claiming one job at a time");
                }
                Claim::Unread
            }
        }
    }
}

async fn write_groups(
    pool: PgPool,
    lease: Duration,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while requests.recv_many(&mut group, MAX_GROUP).await > 0 {
        // A claimant that went away (its delivery abandoned at shutdown) is not claimed for.
        group.retain(|r| !r.answer.is_closed());
        if group.is_empty() {
            continue;
        }
        let mut answers = match claim_group(&pool, &group, lease).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!(error = %e, jobs = group.len(), "cannot claim a group; claiming one job at a time");
                HashMap::new()
            }
        };
        for request in group.drain(..) {
            let claim = answers
                .remove(&(request.id, request.token))
                .unwrap_or(Claim::Unread);
            if let Err(Claim::Claimed(job)) = request.answer.send(claim) {
                // Its claimant went away meanwhile: the lease ends now, for a redelivery.
                if let Err(e) = db::jobs::release_lease(&pool, job.id, request.token).await {
                    tracing::warn!(job.id = %job.id, error = %e, "cannot release lease; the sweeper will");
                }
            }
        }
    }
}

/// Reads the group's jobs and claims those that are queued outside batches: what became of
/// each request, by job id and token.
async fn claim_group(
    pool: &PgPool,
    group: &[Request],
    lease: Duration,
) -> Result<HashMap<(Uuid, Uuid), Claim>, sqlx::Error> {
    let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
    let read: HashMap<Uuid, JobRow> = db::jobs::find_many(pool, &ids)
        .await?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
    let wanted: Vec<(&JobRow, Uuid)> = group
        .iter()
        .filter_map(|r| read.get(&r.id).map(|job| (job, r.token)))
        .filter(|(job, _)| job.status == JobStatus::Queued && job.batch_id.is_none())
        .collect();
    let mut claimed: HashMap<(Uuid, Uuid), JobRow> = db::jobs::claim_many(pool, &wanted, lease)
        .await?
        .into_iter()
        .map(|job| {
            (
                (job.id, job.lease_token.expect("a claimed job has a lease")),
                job,
            )
        })
        .collect();
    Ok(group
        .iter()
        .map(|r| {
            let key = (r.id, r.token);
            let claim = match claimed.remove(&key) {
                Some(job) => Claim::Claimed(job),
                None => Claim::Left(read.get(&r.id).cloned()),
            };
            (key, claim)
        })
        .collect())
}
