//! Rescues jobs whose worker died or hung: a running job whose lease ran out goes back to the
//! queue (or fails with code 500 when out of attempts). Reconciles the queue with the jobs: a
//! queued job whose broker message is lost is sent again.

use std::{sync::Arc, time::Duration};

use provisioner_shared::{db, uploads};
use tokio_util::sync::CancellationToken;

use crate::jobs::{self, Context};

pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = ctx
        .settings
        .sweep_interval
        // At most 10 s, so that a lost job message is sent again within the contract's 2 minutes
        // (with the default `reconcile_after` of 90 s) whatever the lease.
        .unwrap_or(
            (ctx.settings.job_lease / 3).clamp(Duration::from_secs(1), Duration::from_secs(10)),
        );
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = sweep(&ctx).await {
            tracing::warn!(error = %e, "lease sweep failed");
        }
        if let Err(e) = reconcile(&ctx).await {
            tracing::warn!(error = %e, "queue reconciliation failed");
        }
    }
}

/// Jobs sent again per transaction, and transactions per sweep at most.
const RESEND_BATCH: i64 = 100;
const RESEND_BATCHES: usize = 10;

/// Sends again the queued jobs whose message was sent longer ago than `reconcile_after` with
/// none waiting in the outbox: a purged queue or a dead-lettered delivery lost it.
async fn reconcile(ctx: &Context) -> Result<(), sqlx::Error> {
    for _ in 0..RESEND_BATCHES {
        let mut tx = ctx.pool.begin().await?;
        let ids =
            db::jobs::resend_stranded(&mut tx, ctx.settings.reconcile_after, RESEND_BATCH).await?;
        tx.commit().await?;
        if !ids.is_empty() {
            tracing::warn!(
                jobs = ids.len(),
                first = %ids[0],
                "sent again queued jobs whose message may be lost"
            );
        }
        if ids.len() < RESEND_BATCH as usize {
            break;
        }
    }
    Ok(())
}

/// Uploads older than this whose job has ended (or never came to be) are removed.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

async fn sweep(ctx: &Context) -> Result<(), sqlx::Error> {
    sweep_uploads(ctx).await?;
    for id in db::jobs::expired_leases(&ctx.pool, 100).await? {
        let mut tx = ctx.pool.begin().await?;
        if let Some(job) = jobs::rescue(&mut tx, id, ctx.settings.job_max_attempts).await? {
            tracing::warn!(job.id = %id, status = %job.status, "rescued a job whose lease ran out");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Removes uploads no job needs: the job ended, or its request failed before the job was made.
async fn sweep_uploads(ctx: &Context) -> Result<(), sqlx::Error> {
    let candidates = match uploads::older_than(&ctx.settings.upload_dir, ORPHAN_AGE).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the upload directory");
            return Ok(());
        }
    };
    for id in candidates {
        let live = db::jobs::find(&ctx.pool, id, None)
            .await?
            .is_some_and(|j| !j.status.is_terminal());
        if !live {
            uploads::remove(&ctx.settings.upload_dir, id).await;
        }
    }
    Ok(())
}
