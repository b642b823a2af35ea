//! The outbox relay and the database notification hub. Every process runs one relay: it
//! publishes committed outbox rows with publisher confirms and `mandatory`, and deletes a row
//! only once the broker confirmed it routed and stored the message.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{self, outbox},
    queue,
};

const BATCH: i64 = 200;
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Also poll this often, for delayed retries and notifications lost with a connection.
const POLL: Duration = Duration::from_millis(500);

/// A notification from PostgreSQL: `channel` and `payload` as sent by `pg_notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// Fans out PostgreSQL notifications of the job and outbox channels to in-process subscribers.
#[derive(Debug, Clone)]
pub struct Notifications {
    sender: broadcast::Sender<Notification>,
}

impl Notifications {
    /// Starts listening; the task reconnects on its own until `shutdown`.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let hub = Self {
            sender: sender.clone(),
        };
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                if let Err(e) = listen(&pool, &sender, &shutdown).await {
                    tracing::warn!(error = %e, "database notifications interrupted; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        });
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }
}

async fn listen(
    pool: &PgPool,
    sender: &broadcast::Sender<Notification>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([outbox::NOTIFY_CHANNEL, db::jobs::NOTIFY_CHANNEL])
        .await?;
    loop {
        let next = tokio::select! {
            n = listener.try_recv() => n?,
            () = shutdown.cancelled() => return Ok(()),
        };
        match next {
            Some(n) => {
                let _ = sender.send(Notification {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                });
            }
            None => return Err(sqlx::Error::PoolClosed),
        }
    }
}

/// Opens a broker connection named after the process.
pub async fn connect_broker(url: &SecretString, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose_secret(), props).await
}

/// Publishes the outbox until `shutdown`, reconnecting to the broker as needed.
pub async fn run(
    pool: PgPool,
    amqp_url: SecretString,
    hub: Notifications,
    shutdown: CancellationToken,
) {
    let mut wake = hub.subscribe();
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        match relay_session(&pool, &amqp_url, &mut wake, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                // A session that ran a while was healthy: start backing off afresh.
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay interrupted");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn relay_session(
    pool: &PgPool,
    amqp_url: &SecretString,
    wake: &mut broadcast::Receiver<Notification>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connect_broker(amqp_url, "provisioner-relay").await?;
    let channel = conn.create_channel().await?;
    queue::declare_topology(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    tracing::info!("outbox relay connected");
    loop {
        while publish_batch(pool, &channel).await? == BATCH as usize {}
        tokio::select! {
            _ = wake.recv() => {}
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
        }
    }
}

/// Publishes one batch of due rows; returns how many it handled.
async fn publish_batch(pool: &PgPool, channel: &Channel) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = outbox::lock_due(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(row.message_id.clone().into())
            .with_content_type(row.content_type.clone().into());
        let confirm = channel
            .basic_publish(
                row.exchange.clone().into(),
                row.routing_key.clone().into(),
                // Job messages must reach their queue; events may have no subscriber.
                BasicPublishOptions {
                    mandatory: row.exchange == queue::JOBS_EXCHANGE,
                    ..Default::default()
                },
                &row.payload,
                props,
            )
            .await?;
        pending.push(confirm);
    }
    let mut sent = Vec::with_capacity(rows.len());
    for (row, confirm) in rows.iter().zip(pending) {
        let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| anyhow::anyhow!("publisher confirm timed out"))??;
        match outcome {
            Confirmation::Ack(None) => sent.push(row.id),
            Confirmation::NotRequested => anyhow::bail!("the channel is not in confirm mode"),
            Confirmation::Ack(Some(_returned)) => {
                tracing::error!(exchange = %row.exchange, routing_key = %row.routing_key, "message unroutable; kept in the outbox");
                outbox::postpone(&mut tx, row.id, retry_delay(row.attempts)).await?;
            }
            Confirmation::Nack(_) => {
                tracing::warn!(exchange = %row.exchange, "broker refused message; kept in the outbox");
                outbox::postpone(&mut tx, row.id, retry_delay(row.attempts)).await?;
            }
        }
    }
    outbox::delete(&mut tx, &sent).await?;
    tx.commit().await?;
    Ok(rows.len())
}

fn retry_delay(attempts: i32) -> Duration {
    Duration::from_secs(1 << attempts.clamp(0, 5))
}
