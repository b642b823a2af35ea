//! The consume loop: one broker connection, a consumer per job queue, manual acks sent only after
//! the job's outcome committed, reconnection with backoff after broker faults. Each delivery is
//! handled in its own task under one of the process's slots (see `Context::slots`); a panic
//! anywhere in its handling returns the delivery and gives the job a way forward.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Acker,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use provisioner_shared::{
    queue::{self, JobMessage, Lane},
    relay,
    runtime::{self, Backoff},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    db_watch::DbWatch,
    jobs::{self, AbortOnDrop, Context, Disposition, HandBack, Stage},
};

/// How long shutdown spends handing an abandoned job back to the queue.
const HAND_BACK_DEADLINE: Duration = Duration::from_secs(5);

/// The deliveries being handled, across broker sessions.
struct InFlight {
    tasks: TaskTracker,
    /// Cancelled past the shutdown deadline: unfinished jobs are dropped and handed back.
    abandon: CancellationToken,
    /// The child of `abandon` that the jobs started since PostgreSQL's last silence hold.
    epoch: Epoch,
}

/// The token of the jobs started since PostgreSQL's last silence: replaced at the next one, and
/// cancelled a lease after it (see `abandon_after_silences`).
#[derive(Clone)]
struct Epoch(Arc<Mutex<CancellationToken>>);

impl Epoch {
    /// The token a job started now is abandoned by.
    fn current(&self) -> CancellationToken {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts a new epoch; gives the old one's token.
    fn replace(&self, fresh: CancellationToken) -> CancellationToken {
        std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            fresh,
        )
    }
}

/// Consumes until `shutdown`, reconnecting after broker faults; while `db` counts PostgreSQL
/// lost, holds no broker session (see `db_watch`).
pub(crate) async fn run(ctx: Arc<Context>, db: DbWatch, shutdown: CancellationToken) {
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    let abandon = CancellationToken::new();
    let in_flight = InFlight {
        tasks: TaskTracker::new(),
        epoch: Epoch(Arc::new(Mutex::new(abandon.child_token()))),
        abandon,
    };
    let consuming = runtime::reconnect("consumer", backoff, &shutdown, || {
        session(&ctx, db.clone(), &shutdown, &in_flight)
    });
    tokio::select! {
        () = consuming => {}
        () = abandon_after_silences(&ctx, db.clone(), &in_flight) => {}
    }
    // Shutdown may come while no session runs: jobs of lost channels still finish first.
    drain(&ctx, &in_flight).await;
}

/// Abandons, a lease after each silence of PostgreSQL (a probe it did not answer in time, see
/// `db_watch`), the jobs that had started when it began and are still running: a statement
/// whose answer the silence lost would wait for it for ever (the driver's sockets have no
/// keepalive), holding its slot and, through its heartbeat, its job's lease. Their deliveries go
/// back to the broker and their leases run out, so a redelivery runs each again (an attempt
/// more). A job that legitimately takes longer than that (a long lock wait) is retried too:
/// which statements lost their answers cannot be known. While PostgreSQL stays lost, nobody can
/// take the jobs over before their leases run out, so nothing is lost by waiting that long. At
/// each abandonment every session opened until then is distrusted too (the pool's idle ones are
/// replaced as they are next taken), so that those of the jobs abandoned are closed when they
/// come back, not tested for an answer that may never come.
async fn abandon_after_silences(ctx: &Context, mut db: DbWatch, in_flight: &InFlight) {
    let mut seen = 0;
    let mut due = FuturesUnordered::new();
    loop {
        tokio::select! {
            silences = db.silence_after(seen) => {
                seen = silences;
                // Jobs started from now on belong to the next epoch.
                let old = in_flight.epoch.replace(in_flight.abandon.child_token());
                let lease = ctx.settings.job_lease;
                due.push(async move {
                    tokio::time::sleep(lease).await;
                    old
                });
            }
            Some(old) = due.next(), if !due.is_empty() => {
                tracing::warn!(
                    "jobs running since PostgreSQL went silent a lease ago are abandoned to other workers"
                );
                db.distrust_sessions_now();
                old.cancel();
            }
        }
    }
}

async fn session(
    ctx: &Arc<Context>,
    mut db: DbWatch,
    shutdown: &CancellationToken,
    in_flight: &InFlight,
) -> anyhow::Result<()> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(()),
        () = db.reachable() => {}
    }
    let (conn, channel) = relay::open_channel(&ctx.settings.amqp_url, "provisioner-worker").await?;
    // One consumer per job queue, each with its prefetch; the slots bound what runs, and give a
    // free one to the first lane with a delivery waiting.
    let mut tags = Vec::new();
    let mut streams = Vec::new();
    for name in queue::JOB_QUEUES {
        let lane = Lane::of_queue(name);
        channel
            .basic_qos(
                prefetch(lane, ctx.settings.worker_concurrency),
                BasicQosOptions::default(),
            )
            .await
            .context("setting the prefetch")?;
        let tag = format!("provisioner-worker-{}", uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(
                name.into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("starting to consume {name}"))?;
        // Its end is an item too: `select_all` would drop an ended stream and go on with the
        // others, and a consumer the broker cancelled (its queue deleted) would be gone
        // unnoticed, its queue consumed by nobody here.
        streams.push(
            consumer
                .map(move |d| (lane, Some(d)))
                .chain(futures_util::stream::once(async move { (lane, None) }))
                .boxed(),
        );
        tags.push(tag);
    }
    let mut consumer = futures_util::stream::select_all(streams);
    tracing::info!(
        queues = ?queue::JOB_QUEUES,
        concurrency = ctx.settings.worker_concurrency,
        "consuming"
    );
    let result = loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some((lane, Some(Ok(delivery)))) => {
                    ctx.horizons.saw(lane, &delivery.properties);
                    in_flight.tasks.spawn(handle(
                        ctx.clone(),
                        delivery,
                        lane,
                        shutdown.clone(),
                        in_flight.epoch.clone(),
                        in_flight.abandon.clone(),
                    ));
                }
                Some((_, Some(Err(e)))) => break Err(anyhow::Error::new(e).context("receiving deliveries")),
                // A new session declares the queue again (deleted, the broker cancelled its
                // consumer) and consumes every queue.
                Some((lane, None)) => break Err(anyhow::anyhow!(
                    "the broker ended the consumer of {}", lane.queue()
                )),
                None => break Err(anyhow::anyhow!("the broker ended the consumers")),
            },
            () = db.lost() => {
                // Closed, the connection gives every unacknowledged delivery back to the
                // broker at once (the jobs in flight are abandoned a lease after the silence
                // began: `abandon_after_silences`).
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.close(200, "PostgreSQL unreachable".into()),
                )
                .await;
                break Err(anyhow::anyhow!("PostgreSQL does not answer"));
            }
            () = shutdown.cancelled() => break Ok(()),
        }
    };
    // On a broker fault the channel is gone, but the jobs in flight are not: they go on, keep
    // their slots (so the next session cannot exceed the concurrency) and record their
    // outcomes (their acks fail; the redeliveries find the jobs ended).
    if result.is_ok() {
        // Stop intake, let in-flight jobs finish within the deadline and settle.
        for tag in tags {
            let _ = channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await;
        }
        drain(ctx, in_flight).await;
        // Unacknowledged deliveries return to the queue when the connection closes.
        let _ = conn.close(200, "shutdown".into()).await;
    }
    result
}

/// Deliveries a consumer of `lane` may hold unacknowledged: the concurrency, on each lane. (A
/// larger interactive prefetch would have a light client's delivery here, waiting, even while
/// interactive work fills every slot; but a hung worker would hold more deliveries, which wait
/// for the reconciler.)
fn prefetch(_lane: Lane, concurrency: u16) -> u16 {
    concurrency
}

/// Waits for the deliveries in flight up to the shutdown deadline; past it, abandons them: each
/// hands its job back to the queue (`handle`).
async fn drain(ctx: &Context, in_flight: &InFlight) {
    in_flight.tasks.close();
    let drained = tokio::time::timeout(ctx.settings.shutdown_timeout, in_flight.tasks.wait()).await;
    if drained.is_err() {
        tracing::warn!(
            jobs = in_flight.tasks.len(),
            "shutdown deadline reached; handing unfinished jobs back"
        );
        in_flight.abandon.cancel();
        in_flight.tasks.wait().await;
    }
}

/// Handles one delivery under a slot. The work runs in its own task so that a panic in it (in
/// the claim, a commit, the recording or the settling) is caught here: the panic is counted,
/// the job given up if this delivery held it, and the delivery returned or settled. The job
/// belongs to the epoch current when it gets its slot (`Epoch`); `deadline` is cancelled when
/// shutdown's deadline passes.
async fn handle(
    ctx: Arc<Context>,
    delivery: Delivery,
    lane: Lane,
    shutdown: CancellationToken,
    epoch: Epoch,
    deadline: CancellationToken,
) {
    let acker = delivery.acker.clone();
    let _slot = tokio::select! {
        slot = ctx.slots.acquire(lane) => slot,
        () = shutdown.cancelled() => {
            settle(&acker, Disposition::Requeue).await;
            return;
        }
    };
    let abandon = epoch.current();
    let job = match serde_json::from_slice::<JobMessage>(&delivery.data) {
        Ok(msg) => msg.job_id,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable job message; dead-lettering it");
            settle(&acker, Disposition::DeadLetter).await;
            return;
        }
    };
    let token = Uuid::new_v4();
    let mut work = AbortOnDrop(tokio::spawn(deliver(
        ctx.clone(),
        delivery,
        job,
        token,
        shutdown,
    )));
    let joined = tokio::select! {
        joined = &mut work.0 => joined,
        () = abandon.cancelled() => {
            work.0.abort();
            let _ = (&mut work.0).await;
            if deadline.is_cancelled() {
                // Shutdown's deadline: the job goes back to the queue with a new message, which
                // replaces this delivery (it may come from a broker session already gone, whose
                // delivery the broker has given to another worker meanwhile). Bounded: with
                // PostgreSQL out of reach, the delivery goes back with the connection and the
                // lease runs out.
                match tokio::time::timeout(HAND_BACK_DEADLINE, jobs::hand_back(&ctx, job, token))
                    .await
                {
                    Ok(HandBack::Queued | HandBack::Counted | HandBack::MovedOn) => {
                        settle(&acker, Disposition::Ack).await;
                    }
                    Ok(HandBack::Failed) => settle(&acker, Disposition::DeadLetter).await,
                    Ok(HandBack::NotDone) => {}
                    Err(_) => tracing::warn!(
                        job.id = %job,
                        "cannot hand the job back in time; its lease will run out"
                    ),
                }
            } else {
                // Abandoned after a silence: the lease is not handed back (it runs out within a
                // lease, its heartbeat gone with the work); the delivery goes back to the broker
                // (if its session is gone, the broker has it already) for a redelivery to run
                // the job again once it has.
                ctx.leases.release_token(job, token);
                settle(&acker, Disposition::Requeue).await;
            }
            return;
        }
    };
    if let Err(e) = joined {
        tracing::error!(job.id = %job, error = %e, "handling a delivery panicked; returning it");
        // Should recovering panic too, the delivery still goes back; abandoned, it goes back
        // at once and the job is left to its lease.
        let mut recovering = AbortOnDrop(tokio::spawn(async move {
            jobs::recover(&ctx, job, token).await
        }));
        let disposition = tokio::select! {
            recovered = &mut recovering.0 => recovered.unwrap_or(Disposition::Requeue),
            () = abandon.cancelled() => {
                if deadline.is_cancelled() {
                    // Shutdown's deadline: the broker has it back once its session ends (now,
                    // or already); the job is left to its lease.
                    return;
                }
                Disposition::Requeue
            }
        };
        settle(&acker, disposition).await;
    }
}

/// Processes the job, then settles its delivery.
async fn deliver(
    ctx: Arc<Context>,
    delivery: Delivery,
    job: Uuid,
    token: Uuid,
    shutdown: CancellationToken,
) {
    let disposition = jobs::process(ctx.clone(), job, token, delivery.redelivered, shutdown).await;
    ctx.faults.at(Stage::Settle);
    settle(&delivery.acker, disposition).await;
}

/// Acks, rejects or requeues. An acker settles once: a second call does nothing.
async fn settle(acker: &Acker, disposition: Disposition) {
    let sent = match disposition {
        Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
        Disposition::Requeue => {
            acker
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
