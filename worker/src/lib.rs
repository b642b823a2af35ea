//! The provisioner worker: consumes job messages, runs each job under a lease, imports templates
//! under the advisory lock, and relays the outbox.

pub mod consumer;
pub mod fetch;
pub mod import;
pub mod jobs;
pub mod sweeper;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use provisioner_shared::{
    config::Settings,
    db::{self, PoolConfig},
    relay::{self, Notifications},
    seal::Sealer,
    telemetry,
    template::Limits,
};
use tokio_util::sync::CancellationToken;

use crate::{fetch::Fetcher, jobs::Context};

/// Runs consumer, lease sweeper and outbox relay until `shutdown`, then drains.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = db::connect(
        &settings.database_url,
        &PoolConfig {
            max_connections: u32::from(settings.worker_concurrency) * 2 + 4,
            application_name: "provisioner-worker",
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
        },
    )
    .await?;
    let sealer = Sealer::load(settings.seal_key.as_ref(), &pool).await?;
    let db_version = db::schema_version(&pool).await?;
    let limits = Limits {
        max_entries: 1_000,
        ..Limits::default()
    };
    let fetcher = Fetcher::new(
        settings.template_allow_private,
        settings.template_timeout,
        settings.template_max_bytes,
    );
    let ctx = Arc::new(Context {
        pool: pool.clone(),
        settings: settings.clone(),
        sealer,
        fetcher,
        db_version,
        limits,
        leases: Mutex::new(HashMap::new()),
    });

    let background = CancellationToken::new();
    let hub = Notifications::start(pool.clone(), background.clone());
    let relay = tokio::spawn(relay::run(
        pool.clone(),
        settings.amqp_url.clone(),
        hub,
        background.clone(),
    ));
    let sweeper = tokio::spawn(sweeper::run(ctx.clone(), background.clone()));
    tracing::info!(
        concurrency = settings.worker_concurrency,
        db_version,
        "worker started"
    );

    consumer::run(ctx, shutdown).await;
    // Give the relay a moment to publish what the last jobs wrote, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    background.cancel();
    let _ = tokio::join!(relay, sweeper);
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The binary's whole `main`: telemetry, settings, signals, run.
pub async fn main_entry() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    run(settings, shutdown).await
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}
