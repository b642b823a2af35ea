//! Releases held batch items to the broker, fairly across clients, keeping at most
//! `PROVISIONER_DISPATCH_WINDOW` batch items on the broker or running (see
//! `db::batches::release`). Every worker runs one; a round that finds another process's round
//! running does nothing. Woken by the database's notifications (items accepted, jobs ending),
//! and every second in any case.

use std::time::Duration;

use provisioner_shared::{db, relay::Notifications};
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Rounds happen at most this often, however many notifications arrive.
const MIN_GAP: Duration = Duration::from_millis(50);
/// A round happens at least this often.
const TICK: Duration = Duration::from_secs(1);
/// How long a round (one short transaction) may take: one that runs longer waits for an answer
/// a network fault lost (the driver's sockets have no keepalive); it is given up, and the next
/// round starts afresh on another session.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

pub(crate) async fn run(
    pool: PgPool,
    window: u32,
    interactive_jobs: u32,
    notifications: Notifications,
    shutdown: CancellationToken,
) {
    let mut changes = notifications.subscribe();
    loop {
        match tokio::time::timeout(
            ROUND_LIMIT,
            round(&pool, i64::from(window), interactive_jobs),
        )
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(items = n, "batch items released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing batch items failed"),
            Err(_) => {
                tracing::warn!(limit = ?ROUND_LIMIT, "a dispatch round took too long; given up")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_GAP) => {}
            () = shutdown.cancelled() => return,
        }
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        tokio::select! {
            n = changes.recv() => {
                if matches!(n, Err(RecvError::Closed)) {
                    tick.await;
                }
            }
            () = &mut tick => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn round(pool: &PgPool, window: i64, interactive_jobs: u32) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = db::batches::release(&mut tx, window, interactive_jobs).await?;
    tx.commit().await?;
    Ok(released)
}
