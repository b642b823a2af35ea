//! Rescues jobs whose worker died or hung: a running job whose lease ran out goes back to the
//! queue (or fails with code 500 when out of attempts). Reconciles the queue with the jobs: a
//! queued job whose broker message is lost is sent again. Removes the templates nothing needs
//! any more from the template store. Purges what outlived its retention. Folds the changes of
//! held batch items into one row per client (`db::figures::compact_held_changes`).

use std::{sync::Arc, time::Duration};

use provisioner_shared::{broker_figures::QueueReader, db, queue::Lane};
use tokio_util::sync::CancellationToken;

use crate::jobs::{self, Context};

/// How long one sweep may take in all. Each of its steps is a few bounded statements, so one
/// that runs longer waits for an answer a network fault lost (the driver's sockets have no
/// keepalive): it is given up, and the next sweep starts afresh on other sessions.
const SWEEP_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = ctx
        .settings
        .sweep_interval
        // At most 10 s, so that a lost job message is sent again within the contract's 2 minutes
        // (with the default `reconcile_after` of 90 s, while its queue moves) whatever the lease.
        .unwrap_or(
            (ctx.settings.job_lease / 3).clamp(Duration::from_secs(1), Duration::from_secs(10)),
        );
    // The reconciler's one broker connection, kept from sweep to sweep.
    let queues = QueueReader::new(ctx.settings.amqp_url.clone(), "provisioner-sweeper");
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        if tokio::time::timeout(SWEEP_LIMIT, steps(&ctx, &queues))
            .await
            .is_err()
        {
            tracing::warn!(limit = ?SWEEP_LIMIT, "a sweep took too long; given up until the next");
        }
    }
}

async fn steps(ctx: &Context, queues: &QueueReader) {
    if let Err(e) = sweep(ctx).await {
        tracing::warn!(error = %e, "lease sweep failed");
    }
    if let Err(e) = reconcile(ctx, queues).await {
        tracing::warn!(error = %e, "queue reconciliation failed");
    }
    if let Err(e) = finish_cancels(ctx).await {
        tracing::warn!(error = %e, "going on with a batch's cancel failed");
    }
    // Before the templates: removing ended batches unpins theirs.
    if let Err(e) = purge(ctx).await {
        tracing::warn!(error = %e, "retention purge failed");
    }
    if let Err(e) = remove_unused_templates(ctx).await {
        tracing::warn!(error = %e, "template store sweep failed");
    }
    if let Err(e) = db::figures::compact_held_changes(&ctx.pool).await {
        tracing::warn!(error = %e, "folding the changes of held batch items failed");
    }
}

/// How long the reconciler waits for the broker's queue depths (a broker that accepts a
/// connection and then says nothing would hold the whole sweep).
const BROKER_READ_LIMIT: Duration = Duration::from_secs(2);

/// Jobs sent again per transaction, and transactions per sweep at most.
const RESEND_BATCH: i64 = 100;
const RESEND_BATCHES: usize = 10;

/// Records how far the job queues delivered to this process, then sends again the queued jobs
/// whose message was sent longer ago than `reconcile_after`, with none waiting in the outbox, and
/// that no longer wait behind their queue's other messages: a purged queue or a dead-lettered
/// delivery lost it, or a stopped worker holds it. The broker is asked which queues hold
/// messages only when a job was sent that long ago; when it cannot say, every queue is taken
/// for holding some.
async fn reconcile(ctx: &Context, queues: &QueueReader) -> Result<(), sqlx::Error> {
    ctx.horizons.record(&ctx.pool).await?;
    let after = ctx.settings.reconcile_after;
    let behind = db::jobs::lanes_behind(&ctx.pool, after).await?;
    if behind.is_empty() {
        return Ok(());
    }
    let read = tokio::time::timeout(BROKER_READ_LIMIT, queues.read())
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {BROKER_READ_LIMIT:?}")));
    let waiting: Vec<Lane> = match read {
        Ok(figures) => figures
            .iter()
            .filter(|q| q.ready > 0)
            .map(|q| Lane::of_queue(q.queue))
            .collect(),
        Err(e) => {
            // Taken for waiting: a job is then sent again once its queue's deliveries passed it
            // (sending every late job would flood a deep queue with duplicates).
            tracing::warn!(error = %e, "cannot read the job queues; taking them for non-empty");
            Lane::ALL.to_vec()
        }
    };
    for _ in 0..RESEND_BATCHES {
        let mut tx = ctx.pool.begin().await?;
        let ids = db::jobs::resend_stranded(
            &mut tx,
            after,
            RESEND_BATCH,
            ctx.settings.client_interactive_jobs,
            &waiting,
        )
        .await?;
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

async fn sweep(ctx: &Context) -> Result<(), sqlx::Error> {
    for id in db::jobs::expired_leases(&ctx.pool, 100).await? {
        let mut tx = ctx.pool.begin().await?;
        if let Some(job) = jobs::rescue(&mut tx, id, &ctx.settings).await? {
            tracing::warn!(job.id = %id, status = %job.status, "rescued a job whose lease ran out");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Chunks of a cancel one sweep goes on with at most.
const CANCEL_CHUNKS: usize = 20;

/// Goes on with the cancels whose canceller stopped before it was done (the API stopped, or the
/// database failed, half-way through a large batch): their held items are released no more, and
/// are cancelled here, a chunk per transaction, the oldest such batch first and at most
/// `CANCEL_CHUNKS` chunks a sweep (one left half done by a sweep is found again by the next,
/// which reads from its first item on). A batch whose cancel is at work elsewhere is left to it.
/// Read at each sweep, not at each dispatch round: the batches holding items back are read to
/// find them.
async fn finish_cancels(ctx: &Context) -> Result<(), sqlx::Error> {
    let Some(batch) = db::batches::pending_cancel(&ctx.pool).await? else {
        return Ok(());
    };
    let mut after = -1;
    for _ in 0..CANCEL_CHUNKS {
        let mut tx = ctx.pool.begin().await?;
        // A canceller at work (an API's request, another worker's sweep) is left to it.
        if !db::batches::try_lock_changes(&mut tx, batch).await? {
            return Ok(());
        }
        let done =
            db::batches::cancel(&mut tx, batch, None, after, db::batches::CANCEL_CHUNK).await?;
        tx.commit().await?;
        match done {
            Some(done) if done.more => after = done.last.unwrap_or(after),
            Some(done) => {
                tracing::info!(batch.id = %batch, status = %done.batch.status, "finished a batch's cancel");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Templates removed per sweep at most.
const TEMPLATES_PER_SWEEP: i64 = 100;

/// Removes stored templates that no client keeps, no queued or running job reads and no batch
/// pins (a job's upload, once the job ended; a template its clients deleted).
async fn remove_unused_templates(ctx: &Context) -> Result<(), sqlx::Error> {
    let removed = db::templates::remove_unused(&ctx.pool, TEMPLATES_PER_SWEEP).await?;
    if removed > 0 {
        tracing::info!(
            templates = removed,
            "removed templates nothing needs any more"
        );
    }
    Ok(())
}

/// Chunks of each kind one sweep removes at most: a backlog of expired rows drains over a few
/// sweeps instead of one long burst of writes.
const PURGE_CHUNKS: usize = 20;

/// Removes jobs and batches that ended longer than `job_retention` ago, and long-expired
/// tokens, a chunk per statement (see `db::retention`).
async fn purge(ctx: &Context) -> Result<(), sqlx::Error> {
    let retention = ctx.settings.job_retention;
    let pool = &ctx.pool;
    let jobs = drain(|| db::retention::purge_jobs(pool, retention)).await?
        + drain(|| db::retention::purge_superseded_jobs(pool, retention)).await?;
    let batches = drain(|| db::retention::purge_batches(pool, retention)).await?;
    let batch_jobs = drain(|| db::retention::purge_batch_jobs(pool)).await?;
    let tokens = drain(|| db::retention::purge_tokens(pool)).await?;
    if jobs + batches + batch_jobs + tokens > 0 {
        tracing::info!(
            jobs,
            batches,
            batch_jobs,
            tokens,
            retention_secs = retention.as_secs(),
            "purged what outlived its retention"
        );
    }
    Ok(())
}

/// Runs `chunk` until it removes less than a full chunk, `PURGE_CHUNKS` times at most; returns
/// how many rows went.
async fn drain<F: std::future::Future<Output = Result<u64, sqlx::Error>>>(
    mut chunk: impl FnMut() -> F,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for _ in 0..PURGE_CHUNKS {
        let n = chunk().await?;
        total += n;
        if n < db::retention::CHUNK as u64 {
            break;
        }
    }
    Ok(total)
}
