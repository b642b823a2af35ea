//! The provisioner worker: consumes job messages, runs each job under a lease, writes tenants
//! under the advisory lock, and relays the outbox.

mod consumer;
mod db_watch;
mod dispatcher;
mod fetch;
mod health;
mod horizons;
mod jobs;
mod slots;
mod sweeper;
mod tenant_write;

use std::time::Duration;

use anyhow::Context as _;
use provisioner_shared::{
    config::Settings,
    db::{self, PoolConfig},
    runtime::{self, Background},
    seal::Sealer,
    telemetry,
};
use tokio_util::sync::CancellationToken;

use crate::{db_watch::DbWatch, jobs::Context};

/// At shutdown, how long the relay may take to publish what the last jobs committed.
const RELAY_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Runs consumer, lease sweeper, batch dispatcher and outbox relay until `shutdown`, then
/// drains.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Probes (when configured): alive from here on, ready once started until draining.
    let health = health::Health::start(settings.worker_health_listen, shutdown.clone()).await?;
    let silences = db::Silences::default();
    let pool_config = PoolConfig {
        max_connections: u32::from(settings.worker_concurrency) * 2 + 4,
        application_name: "provisioner-worker",
        idle_in_transaction_timeout: Some(settings.idle_in_transaction_timeout),
        silences: Some(silences.clone()),
    };
    let connecting = db::connect(&settings.database_url, &pool_config);
    // Stopped while still connecting (PostgreSQL is retried for up to a minute): it exits at
    // once, and a worker told to stop never creates or migrates a database.
    let pool = tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            tracing::info!("worker stopped before it connected");
            return Ok(());
        }
        pool = connecting => pool.context("connecting to PostgreSQL")?,
    };
    let sealer = Sealer::load(settings.seal_key.as_ref(), &pool)
        .await
        .context("loading the seal key")?;
    let db_version = db::schema_version(&pool)
        .await
        .context("reading the schema version")?;
    let background = Background::start(&pool, &settings.amqp_url);
    let ctx = Context::new(
        pool.clone(),
        settings.clone(),
        sealer,
        db_version,
        background.notifications().clone(),
    )?;
    let sweeping = CancellationToken::new();
    let sweeper = tokio::spawn(sweeper::run(ctx.clone(), sweeping.clone()));
    let dispatcher = tokio::spawn(dispatcher::run(
        pool.clone(),
        settings.dispatch_window,
        settings.client_interactive_jobs,
        background.notifications().clone(),
        sweeping.clone(),
    ));
    tracing::info!(
        concurrency = settings.worker_concurrency,
        db_version,
        "worker started"
    );

    let db_watch = DbWatch::start(pool.clone(), silences, sweeping.clone());
    // Ready until draining, PostgreSQL out of reach included: a readiness lost by every worker
    // at once would only stop an orchestrator from moving them (a disruption budget counts
    // unready pods as down).
    health.set_ready();
    consumer::run(ctx, db_watch, shutdown).await;
    sweeping.cancel();
    // Their statements may wait on a database out of reach.
    for mut task in [sweeper, dispatcher] {
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    // Publish what the last jobs committed before stopping the relay.
    background.stop(RELAY_DRAIN_DEADLINE).await;
    // Connections a lost network left waiting would hold the close for ever.
    if tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .is_err()
    {
        tracing::warn!("some database connections did not close in time");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// The binary's whole `main`: telemetry, settings, signals, run.
pub async fn main_entry() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init_as(settings.log_format, "provisioner-worker");
    let shutdown = CancellationToken::new();
    tokio::spawn(runtime::shutdown_signal(shutdown.clone()));
    let ran = run(settings, shutdown).await;
    telemetry::shutdown().await;
    ran
}
