//! Claims in groups. A claim costs the database a read and a write of the job's row, a commit,
//! and the counting triggers on `jobs`; deliveries that arrive while a claim is being written
//! wait for it, and the next write claims them all with one read and one statement (group
//! commit: a lone delivery is claimed at once). A job the group cannot claim (not queued, moved
//! on since the read, locked by another transaction, or the database failing) is left to the
//! one-job path in `lease`, which tells those cases apart.

use std::{collections::HashMap, time::Duration};

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
}

#[derive(Debug)]
struct Request {
    id: Uuid,
    token: Uuid,
    answer: oneshot::Sender<Option<JobRow>>,
}

impl Claims {
    /// Starts the task that writes the claims, under leases of `lease`; it ends with `self`.
    pub fn start(pool: PgPool, lease: Duration) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(pool, lease, receiver));
        Self { requests }
    }

    /// Claims job `id` under lease `token` if it is queued, with whatever other claims are
    /// waiting; `None` when this did not claim it (the caller takes the one-job path).
    pub async fn claim(&self, id: Uuid, token: Uuid) -> Option<JobRow> {
        let (answer, answered) = oneshot::channel();
        self.requests.send(Request { id, token, answer }).ok()?;
        answered.await.ok().flatten()
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
        let mut claimed = match claim_group(&pool, &group, lease).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::debug!(error = %e, jobs = group.len(), "a group claim failed; claiming one by one");
                HashMap::new()
            }
        };
        for request in group.drain(..) {
            let job = claimed.remove(&(request.id, request.token));
            // One that went away since leaves the job to its lease running out.
            let _ = request.answer.send(job);
        }
    }
}

/// Reads the group's jobs and claims those that are queued: the claimed, by id and token.
async fn claim_group(
    pool: &PgPool,
    group: &[Request],
    lease: Duration,
) -> Result<HashMap<(Uuid, Uuid), JobRow>, sqlx::Error> {
    let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
    let read: HashMap<Uuid, JobRow> = db::jobs::find_many(pool, &ids)
        .await?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
    let wanted: Vec<(&JobRow, Uuid)> = group
        .iter()
        .filter_map(|r| read.get(&r.id).map(|job| (job, r.token)))
        .filter(|(job, _)| job.status == JobStatus::Queued)
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let claimed = db::jobs::claim_many(pool, &wanted, lease, db::jobs::Locked::Skip).await?;
    Ok(claimed
        .into_iter()
        .map(|job| {
            (
                (job.id, job.lease_token.expect("a claimed job has a lease")),
                job,
            )
        })
        .collect())
}
