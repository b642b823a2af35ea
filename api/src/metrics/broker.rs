//! The job queues' figures as an API's broker gives them, read at most every few seconds.

/// How long a scrape waits for the broker's answer, and for its turn to ask.
const BROKER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A broker reading this recent is served as it is.
const BROKER_READING_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) type QueueFigures = Vec<provisioner_shared::broker_figures::QueueFigures>;

/// An API's readings of its broker's job queues. Each API has its own (its own broker and
/// vhost): several APIs in one process, as the tests run them, never serve each other's.
#[derive(Debug)]
pub(crate) struct BrokerReadings {
    reader: std::sync::Arc<provisioner_shared::broker_figures::QueueReader>,
    /// One read at a time.
    turn: tokio::sync::Semaphore,
    last: std::sync::Mutex<Option<(std::time::Instant, QueueFigures)>>,
}

impl BrokerReadings {
    pub(crate) fn new(amqp_url: secrecy::SecretString) -> Self {
        Self {
            reader: std::sync::Arc::new(provisioner_shared::broker_figures::QueueReader::new(
                amqp_url,
                "provisioner-metrics",
            )),
            turn: tokio::sync::Semaphore::new(1),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The job queues' figures, or `None` when the broker did not answer in time. One read at
    /// a time, and a reading serves every scrape for `BROKER_READING_FRESH`: a flood of
    /// (unauthenticated) scrapes can neither open a flood of broker connections nor keep the
    /// read's turn from the monitoring system's scrape.
    pub(super) async fn read(&self) -> Option<QueueFigures> {
        let fresh = || {
            self.last
                .lock()
                .ok()?
                .as_ref()
                .filter(|(at, _)| at.elapsed() < BROKER_READING_FRESH)
                .map(|(_, figures)| figures.clone())
        };
        if let Some(figures) = fresh() {
            return Some(figures);
        }
        let _turn = tokio::time::timeout(BROKER_READ_TIMEOUT, self.turn.acquire())
            .await
            .ok()?
            .ok()?;
        // The scrape that held the turn may have just read it.
        if let Some(figures) = fresh() {
            return Some(figures);
        }
        // In a task of its own, bounded by its own timeout: a scrape whose client leaves
        // mid-read does not take the reader's kept connection with it.
        let reader = std::sync::Arc::clone(&self.reader);
        let read =
            tokio::spawn(
                async move { tokio::time::timeout(BROKER_READ_TIMEOUT, reader.read()).await },
            )
            .await;
        match read {
            Ok(Ok(Ok(figures))) => {
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((std::time::Instant::now(), figures.clone()));
                }
                Some(figures)
            }
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
