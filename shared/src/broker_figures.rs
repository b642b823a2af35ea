//! The job queues as the broker sees them, for `/metrics`: messages ready and consumers
//! attached. Read with passive declares on a short-lived connection, so a scrape costs one
//! connection and one round trip per queue.

use lapin::{options::QueueDeclareOptions, types::FieldTable};
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

/// The figures of every job queue, interactive first.
pub async fn job_queues(amqp_url: &SecretString) -> anyhow::Result<Vec<QueueFigures>> {
    let conn = relay::connect_broker(amqp_url, "provisioner-metrics").await?;
    let read = async {
        let channel = conn.create_channel().await?;
        let mut figures = Vec::with_capacity(queue::JOB_QUEUES.len());
        for name in queue::JOB_QUEUES {
            let q = channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            figures.push(QueueFigures {
                queue: name,
                ready: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        anyhow::Ok(figures)
    }
    .await;
    let _ = conn.close(200, "metrics read".into()).await;
    read
}
