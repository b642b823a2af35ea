//! The job queues as the broker sees them, for `/metrics` and the reconciler: messages ready and
//! consumers attached. Read with passive declares, one round trip per queue, on a connection a
//! reader keeps between reads: an API scraped every few seconds, or a worker's sweeper asking
//! every 10 s while a backlog is late, opens one connection, not one per read (each a pair of
//! lines in the broker's log and a login's work).

use lapin::{Channel, Connection, options::QueueDeclareOptions, types::FieldTable};
use secrecy::SecretString;

use crate::{queue, relay};

/// One job queue's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFigures {
    pub queue: &'static str,
    /// Messages waiting for a consumer (not those delivered and unacknowledged).
    pub ready: u32,
    /// Consumers attached: one per worker process consuming the queue.
    pub consumers: u32,
}

/// Reads the job queues' figures on one broker connection kept from one read to the next,
/// opened at the first read and again after any failed one. One read at a time; a read whose
/// future is dropped (a caller's timeout) drops the connection with it, so the next read starts
/// on a fresh one.
#[derive(Debug)]
pub struct QueueReader {
    amqp_url: SecretString,
    /// The connection's name, as the broker lists it.
    name: &'static str,
    held: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl QueueReader {
    pub fn new(amqp_url: SecretString, name: &'static str) -> Self {
        Self {
            amqp_url,
            name,
            held: tokio::sync::Mutex::new(None),
        }
    }

    /// The figures of every job queue, interactive first.
    pub async fn read(&self) -> anyhow::Result<Vec<QueueFigures>> {
        Ok(self.read_queues(DeadLetters::Unread).await?.0)
    }

    /// `read`, and the messages waiting in the dead-letter queue: `None` if it cannot be read
    /// (it was deleted: it is declared again when a process reconnects), which leaves the job
    /// queues' figures as they are.
    pub async fn read_with_dead_letters(&self) -> anyhow::Result<(Vec<QueueFigures>, Option<u32>)> {
        self.read_queues(DeadLetters::Read).await
    }

    async fn read_queues(
        &self,
        dead_letters: DeadLetters,
    ) -> anyhow::Result<(Vec<QueueFigures>, Option<u32>)> {
        let mut held = self.held.lock().await;
        // Taken out while it is used: kept again only after a read that succeeded.
        let (conn, channel) = match held.take() {
            Some((conn, channel)) if channel.status().connected() => (conn, channel),
            _ => {
                let conn = relay::connect_broker(&self.amqp_url, self.name).await?;
                let channel = conn.create_channel().await?;
                (conn, channel)
            }
        };
        let figures = match job_queues(&channel).await {
            Ok(figures) => figures,
            Err(e) => {
                // A queue not declared yet (or deleted) closed the channel: the connection goes
                // too, not left open beside the next read's.
                let _ = conn.close(200, "read failed".into()).await;
                return Err(e);
            }
        };
        // On a channel of its own: a passive declare of a queue that does not exist closes its
        // channel.
        let dead = match dead_letters {
            DeadLetters::Read => match conn.create_channel().await {
                Ok(apart) => {
                    let dead = ready(&apart, queue::DEAD_QUEUE).await;
                    if apart.status().connected() {
                        let _ = apart.close(200, "read".into()).await;
                    }
                    dead.ok().map(|q| q.message_count())
                }
                Err(_) => None,
            },
            DeadLetters::Unread => None,
        };
        *held = Some((conn, channel));
        Ok((figures, dead))
    }
}

/// Whether a read asks for the dead-letter queue too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadLetters {
    Read,
    Unread,
}

/// A passive declare of `name`: its figures, or an error (closing the channel) if it does not
/// exist.
async fn ready(channel: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The figures of every job queue, interactive first. A queue that does not exist closes the
/// channel (the broker answers a passive declare of it with an error).
async fn job_queues(channel: &Channel) -> anyhow::Result<Vec<QueueFigures>> {
    let mut figures = Vec::with_capacity(queue::JOB_QUEUES.len());
    for name in queue::JOB_QUEUES {
        let q = ready(channel, name).await?;
        figures.push(QueueFigures {
            queue: name,
            ready: q.message_count(),
            consumers: q.consumer_count(),
        });
    }
    Ok(figures)
}
