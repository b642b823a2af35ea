//! The job queues' figures as an API's broker gives them, read at most every few seconds.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long a scrape waits for the broker's answer, and for its turn to ask.
const BROKER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A broker reading this recent is served as it is.
const BROKER_READING_FRESH: Duration = Duration::from_secs(5);

/// The job queues' figures, and the messages waiting in the dead-letter queue (when it could be
/// read).
pub(super) type QueueFigures = (
    Vec<provisioner_shared::broker_figures::QueueFigures>,
    Option<u32>,
);

/// An API's readings of its broker's job queues. Each API has its own (its own broker and
/// vhost): several APIs in one process, as the tests run them, never serve each other's.
#[derive(Debug)]
pub(crate) struct BrokerReadings {
    reader: Arc<provisioner_shared::broker_figures::QueueReader>,
    /// One read at a time: its permit goes with the read's task.
    turn: Arc<tokio::sync::Semaphore>,
    last: Arc<Mutex<Option<(Instant, QueueFigures)>>>,
}

impl BrokerReadings {
    pub(crate) fn new(amqp_url: secrecy::SecretString) -> Self {
        Self {
            reader: Arc::new(provisioner_shared::broker_figures::QueueReader::new(
                amqp_url,
                "provisioner-metrics",
            )),
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The job queues' figures, or `None` when the broker did not answer in time. One read at
    /// a time, and a reading serves every scrape for `BROKER_READING_FRESH`: a flood of
    /// (unauthenticated) scrapes can neither open a flood of broker connections nor keep the
    /// read's turn from the monitoring system's scrape. The read runs in a task of its own,
    /// which holds the turn and keeps what it read: a scrape whose client leaves mid-read takes
    /// neither the reader's kept connection nor the reading with it.
    pub(super) async fn read(&self) -> Option<QueueFigures> {
        if let Some(figures) = fresh(&self.last) {
            return Some(figures);
        }
        let turn = tokio::time::timeout(BROKER_READ_TIMEOUT, self.turn.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        // The scrape that held the turn may have just read it.
        if let Some(figures) = fresh(&self.last) {
            return Some(figures);
        }
        let (reader, last) = (Arc::clone(&self.reader), Arc::clone(&self.last));
        let read = tokio::spawn(async move {
            let read =
                tokio::time::timeout(BROKER_READ_TIMEOUT, reader.read_with_dead_letters()).await;
            if let Ok(Ok(figures)) = &read
                && let Ok(mut last) = last.lock()
            {
                *last = Some((Instant::now(), figures.clone()));
            }
            drop(turn);
            read
        })
        .await;
        match read {
            Ok(Ok(Ok(figures))) => Some(figures),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "reading the job queues' figures from the broker");
                None
            }
            Ok(Err(_)) => {
                tracing::warn!("the broker did not give the job queues' figures in time");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the read of the job queues' figures failed");
                None
            }
        }
    }
}

/// The last reading, if it is fresh enough to serve.
fn fresh(last: &Mutex<Option<(Instant, QueueFigures)>>) -> Option<QueueFigures> {
    last.lock()
        .ok()?
        .as_ref()
        .filter(|(at, _)| at.elapsed() < BROKER_READING_FRESH)
        .map(|(_, figures)| figures.clone())
}
