//! The consume loop: one broker connection, prefetch = concurrency, manual acks sent only after
//! the job's outcome committed, reconnection with backoff after broker faults.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use provisioner_shared::{
    queue::{self, JobMessage},
    relay,
    runtime::{self, Backoff},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::jobs::{self, Context, Disposition};

/// Consumes until `shutdown`, reconnecting after broker faults.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    runtime::reconnect("consumer", backoff, &shutdown, || session(&ctx, &shutdown)).await;
}

async fn session(ctx: &Arc<Context>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let (conn, channel) = relay::open_channel(&ctx.settings.amqp_url, "provisioner-worker").await?;
    channel
        .basic_qos(ctx.settings.worker_concurrency, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let tag = format!("provisioner-worker-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            queue::CREATE_TENANT_QUEUE.into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("starting to consume")?;
    tracing::info!(
        queue = queue::CREATE_TENANT_QUEUE,
        prefetch = ctx.settings.worker_concurrency,
        "consuming"
    );
    let mut tasks = JoinSet::new();
    let result = loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => { tasks.spawn(handle(ctx.clone(), delivery, shutdown.clone())); }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("receiving deliveries")),
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done { tracing::error!(error = %e, "delivery task failed"); }
            }
            () = shutdown.cancelled() => break Ok(()),
        }
    };
    match &result {
        // The channel is gone, but the jobs in flight are not: let them finish and record their
        // outcomes (their acks will fail; the redeliveries find the jobs ended).
        Err(_) => tasks.detach_all(),
        Ok(()) => {
            // Stop intake, let in-flight jobs finish within the deadline.
            let _ = channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await;
            drain(ctx, tasks).await;
            // Unacknowledged deliveries return to the queue when the connection closes.
            let _ = conn.close(200, "shutdown".into()).await;
        }
    }
    result
}

/// Waits for the jobs in flight up to the shutdown deadline; past it, aborts them and hands
/// their leases back.
async fn drain(ctx: &Context, mut tasks: JoinSet<()>) {
    let drained = tokio::time::timeout(ctx.settings.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            jobs = tasks.len(),
            "shutdown deadline reached; handing unfinished jobs back"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        jobs::hand_back(ctx).await;
    }
}

async fn handle(ctx: Arc<Context>, delivery: Delivery, shutdown: CancellationToken) {
    let disposition = match serde_json::from_slice::<JobMessage>(&delivery.data) {
        Ok(msg) => jobs::process(ctx, msg.job_id, delivery.redelivered, shutdown).await,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable job message; dead-lettering it");
            Disposition::DeadLetter
        }
    };
    let sent = match disposition {
        Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => {
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
        Disposition::Requeue => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = sent {
        // The channel is gone: the broker redelivers, and the job's state in the database
        // makes the redelivery harmless.
        tracing::warn!(error = %e, "cannot settle delivery");
    }
}
