//! The outbox relay and the database notification hub. Every process runs one relay: it
//! publishes committed outbox rows with publisher confirms and `mandatory`, and deletes a row
//! only once the broker confirmed it routed and stored the message. Stopping drains: what is
//! committed and due is published first (`Relay::drain_and_stop`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, postgres::PgListener};
use tokio::{
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        mpsc,
    },
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::{self, outbox},
    queue,
    runtime::{self, Backoff},
};

const BATCH: i64 = 200;
/// The AMQP header carrying a message's W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Also poll this often (between passes): for delayed retries, notifications lost with a
/// connection, and rows another process wrote whose relay is down or stopped.
const POLL: Duration = Duration::from_millis(500);
/// While it deletes rows, a relay vacuums the outbox about this often.
const VACUUM_EVERY: Duration = Duration::from_secs(1);

/// Job changes waiting to be announced at most; past it, changes go unannounced (waiters fall
/// back to their poll).
const ANNOUNCE_QUEUE: usize = 4096;
/// Job changes announced per statement at most.
const ANNOUNCE_BATCH: usize = 512;

/// A notification from PostgreSQL: `channel` and `payload` as sent by `pg_notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// Fans out PostgreSQL notifications of the job and outbox channels to in-process subscribers,
/// keeps the [`AuthEpoch`], and announces the changes this process committed
/// ([`Notifications::committed`]).
#[derive(Debug, Clone)]
pub struct Notifications {
    sender: broadcast::Sender<Notification>,
    auth: AuthEpoch,
    announcer: mpsc::Sender<Uuid>,
    /// Changes are being left unannounced (said once, until an announcement gets through).
    unannounced: Arc<AtomicBool>,
}

impl Notifications {
    /// Starts listening and announcing; the tasks reconnect on their own until `shutdown`.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let (announcer, changes) = mpsc::channel(ANNOUNCE_QUEUE);
        let unannounced = Arc::new(AtomicBool::new(false));
        tokio::spawn(announce(
            pool.clone(),
            changes,
            unannounced.clone(),
            shutdown.clone(),
        ));
        let hub = Self {
            sender: sender.clone(),
            auth: AuthEpoch::default(),
            announcer,
            unannounced,
        };
        let auth = hub.auth.clone();
        tokio::spawn(async move {
            let backoff = Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(1),
            };
            runtime::reconnect("database notifications", backoff, &shutdown, || async {
                let listened = listen(&pool, &sender, &auth, &shutdown).await;
                // Changes made while nobody listens go unheard: what was kept is stale.
                auth.set_listening(false);
                listened.context("listening for database notifications")
            })
            .await;
        });
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }

    /// After this process committed outbox rows with the changes of `jobs` (a create, a claim,
    /// a job's end), which the transaction did not announce itself (`db::jobs`): wakes this
    /// process's relay at once, in-process, and has the changes announced to every process's
    /// waiters on the jobs channel, off the caller's path (one statement at a time, each with
    /// every change waiting). A change that is not announced (the queue full, the database
    /// unreachable, the process stopping or dying first, a commit whose answer was lost) is
    /// left to the waiters' poll (every 2 s) and the relays' (every 500 ms); the first of a
    /// run of them is logged.
    pub fn committed(&self, jobs: &[Uuid]) {
        let _ = self.sender.send(Notification {
            channel: outbox::NOTIFY_CHANNEL.to_owned(),
            payload: outbox::writer_tag().to_owned(),
        });
        for id in jobs {
            if self.announcer.try_send(*id).is_err()
                && !self.unannounced.swap(true, Ordering::AcqRel)
            {
                tracing::warn!(
                    job.id = %id,
                    "job changes are not being announced (the queue is full); waiters poll"
                );
            }
        }
    }

    /// The epoch of what this process may keep about clients and tokens.
    pub fn auth(&self) -> &AuthEpoch {
        &self.auth
    }
}

/// Says for how long what a process learned about clients and tokens may be kept: the epoch
/// moves on whenever the database announces a change to them (`provisioner_auth`), and whenever
/// the hub stops or starts listening (a change announced meanwhile is lost). While nobody
/// listens there is no epoch, and nothing may be kept.
#[derive(Debug, Clone, Default)]
pub struct AuthEpoch(Arc<AtomicU64>);

impl AuthEpoch {
    /// The current epoch; `None` while the hub is not listening. Read it before reading the
    /// database: what was read is good while `current()` stays the same.
    pub fn current(&self) -> Option<u64> {
        let n = self.0.load(Ordering::Acquire);
        (n % 2 == 1).then_some(n)
    }

    /// A change this process made itself: forget at once, before any announcement arrives.
    pub fn changed(&self) {
        // Odd stays odd, even stays even.
        self.0.fetch_add(2, Ordering::AcqRel);
    }

    /// For tests of what keeps state under an epoch: the hub starting or stopping to listen.
    #[doc(hidden)]
    pub fn set_listening_for_tests(&self, listening: bool) {
        self.set_listening(listening);
    }

    fn set_listening(&self, listening: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(if (n % 2 == 1) == listening {
                    n + 2
                } else {
                    n + 1
                })
            });
    }
}

async fn listen(
    pool: &PgPool,
    sender: &broadcast::Sender<Notification>,
    auth: &AuthEpoch,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([
            outbox::NOTIFY_CHANNEL,
            db::jobs::NOTIFY_CHANNEL,
            db::clients::NOTIFY_CHANNEL,
        ])
        .await?;
    auth.set_listening(true);
    loop {
        let next = tokio::select! {
            n = listener.try_recv() => n?,
            () = shutdown.cancelled() => return Ok(()),
        };
        match next {
            Some(n) if n.channel() == db::clients::NOTIFY_CHANNEL => auth.changed(),
            Some(n) => {
                let _ = sender.send(Notification {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                });
            }
            // The listener's connection was lost (sqlx reconnects it only for the next call):
            // this session ends, and the loop around it starts another.
            None => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the notification connection was lost",
                )));
            }
        }
    }
}

/// Announces the job changes `committed` hands over, every change waiting in one statement,
/// until every sender is gone or `shutdown` (what is waiting then is announced once more). A
/// notifying transaction with nothing else to commit writes no WAL and waits for no flush, so
/// it holds PostgreSQL's notification lock only briefly.
async fn announce(
    pool: PgPool,
    mut changes: mpsc::Receiver<Uuid>,
    unannounced: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut ids = Vec::with_capacity(ANNOUNCE_BATCH);
    loop {
        let stopping = tokio::select! {
            biased;
            n = changes.recv_many(&mut ids, ANNOUNCE_BATCH) => n == 0,
            () = shutdown.cancelled() => {
                while ids.len() < ANNOUNCE_BATCH {
                    let Ok(id) = changes.try_recv() else { break };
                    ids.push(id);
                }
                true
            }
        };
        if !ids.is_empty() {
            ids.sort_unstable();
            ids.dedup();
            match db::jobs::notify_changed(&pool, &ids).await {
                Ok(()) => unannounced.store(false, Ordering::Release),
                Err(e) if !unannounced.swap(true, Ordering::AcqRel) => tracing::warn!(
                    error = %e,
                    jobs = ids.len(),
                    "job changes are not being announced; waiters poll"
                ),
                Err(_) => {}
            }
            ids.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Opens a broker connection named after the process.
pub async fn connect_broker(url: &SecretString, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose_secret(), props).await
}

/// How long opening a broker session may take in all. A broker that accepts the connection
/// and then says nothing (cut off behind a proxy or a load balancer, or stopped) would
/// otherwise hold the session's start, and the process's reconnection, for as long as the
/// kernel keeps the connection.
pub const BROKER_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects as `name`, opens a channel and declares the topology: how every broker session
/// starts. Gives up after `BROKER_SESSION_TIMEOUT`.
pub async fn open_channel(url: &SecretString, name: &str) -> anyhow::Result<(Connection, Channel)> {
    let open = async {
        let conn = connect_broker(url, name)
            .await
            .context("connecting to the broker")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        queue::declare_topology(&channel)
            .await
            .context("declaring the broker topology")?;
        Ok((conn, channel))
    };
    tokio::time::timeout(BROKER_SESSION_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the broker did not complete the session's start within {BROKER_SESSION_TIMEOUT:?}"
            ))
        })
}

/// A running outbox relay. `drain_and_stop` ends it after publishing what is committed.
#[derive(Debug)]
pub struct Relay {
    task: JoinHandle<()>,
    drain: CancellationToken,
}

impl Relay {
    /// Starts publishing the outbox, reconnecting to the broker as needed.
    pub fn start(pool: PgPool, amqp_url: SecretString, hub: Notifications) -> Self {
        let drain = CancellationToken::new();
        let task = tokio::spawn(publish_until(pool, amqp_url, hub, drain.clone()));
        Self { task, drain }
    }

    /// Publishes every outbox row already committed and due, then stops. At `deadline` (say,
    /// the broker is unreachable) it stops anyway: what remains is published at another
    /// process's relay's next poll, or by this one at its next start.
    pub async fn drain_and_stop(mut self, deadline: Duration) {
        self.drain.cancel();
        if tokio::time::timeout(deadline, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                ?deadline,
                "the outbox relay did not drain in time; stopping it"
            );
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// Publishes until `drain`, then makes one last pass over due rows. A relay that is between
/// broker sessions when `drain` comes stops at once (the broker is unreachable anyway).
async fn publish_until(
    pool: PgPool,
    amqp_url: SecretString,
    hub: Notifications,
    drain: CancellationToken,
) {
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };
    runtime::reconnect("outbox relay", backoff, &drain, || {
        // A fresh subscription per session: the session starts with a full pass anyway.
        relay_session(&pool, &amqp_url, hub.subscribe(), &drain)
    })
    .await;
}

async fn relay_session(
    pool: &PgPool,
    amqp_url: &SecretString,
    mut wake: broadcast::Receiver<Notification>,
    drain: &CancellationToken,
) -> anyhow::Result<()> {
    let (conn, channel) = open_channel(amqp_url, "provisioner-relay").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    tracing::info!("outbox relay connected");
    let mut vacuum = Vacuum::new();
    loop {
        // Read before the pass: a pass that began before the drain was asked for may miss rows
        // committed during it, so only a pass that began after it may be the last.
        let last_pass = drain.is_cancelled();
        loop {
            let handled = publish_batch(pool, &channel)
                .await
                .context("publishing the outbox")?;
            vacuum.after(pool, handled);
            if handled < BATCH as usize {
                break;
            }
        }
        if last_pass {
            break;
        }
        tokio::select! {
            () = outbox_committed(&mut wake) => {}
            () = tokio::time::sleep(POLL) => {}
            // One last pass over what is due, then stop.
            () = drain.cancelled() => {}
        }
    }
    let _ = conn.close(200, "shutdown".into()).await;
    Ok(())
}

/// Returns once a transaction of this process that wrote outbox rows committed since the last
/// pass (or announcements were lost: the pass looks anyway). Other processes' rows are their
/// relays' to publish (or the next poll's): waking every relay for every commit made all but
/// the first find nothing. Every announcement already waiting is taken with it, so a burst of
/// commits costs one pass, and the hub's other channels (a notification per job transition)
/// wake nobody here.
async fn outbox_committed(wake: &mut broadcast::Receiver<Notification>) {
    loop {
        match wake.recv().await {
            // Rows this process wrote (or a writer that does not say which process it is).
            Ok(n) if n.channel == outbox::NOTIFY_CHANNEL && is_ours(&n.payload) => break,
            Ok(_) => {}
            // Some were lost: the pass looks anyway.
            Err(RecvError::Lagged(_)) => break,
            // The hub is gone: only the poll wakes this relay now.
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
    while !matches!(
        wake.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
}

/// Whether an outbox announcement is of rows this process wrote (an untagged one, from a
/// process of an older version, may be anyone's).
fn is_ours(tag: &str) -> bool {
    tag.is_empty() || tag == outbox::writer_tag()
}

/// Keeps the outbox's dead rows few: after a pass that deleted or postponed rows, and then
/// while passes keep doing so, a vacuum of the table about every [`VACUUM_EVERY`], unless
/// another process's relay vacuumed it within that time (so a deployment of many processes
/// vacuums about once a second in all). It runs in a task of its own, so publishing never
/// waits for it, one at a time per relay. A pass that found nothing may also, at most every
/// [`TRIM_EVERY`], cut the table's empty end if the table is over [`TRIM_ABOVE`] bytes and
/// empty at that moment, so it shrinks back after a backlog (a busy table is never cut: that
/// takes a lock every create and transition would queue behind). A user that may not vacuum
/// the table is told once per process, and its relays stop trying.
struct Vacuum {
    last: tokio::time::Instant,
    /// Rows handled since the last vacuum.
    dirty: bool,
    /// When a cut was last considered.
    last_trim: Option<tokio::time::Instant>,
    running: Option<JoinHandle<()>>,
}

/// This process's database user may not vacuum the outbox (found once, kept).
static VACUUM_REFUSED: AtomicBool = AtomicBool::new(false);
/// A cut of the outbox's empty end is considered at most this often per relay...
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// ...and made only when the table is larger than this (bytes) and empty.
const TRIM_ABOVE: i64 = 1 << 20;

impl Vacuum {
    fn new() -> Self {
        Self {
            last: tokio::time::Instant::now(),
            dirty: false,
            last_trim: None,
            running: None,
        }
    }

    /// After a pass that handled `handled` rows.
    fn after(&mut self, pool: &PgPool, handled: usize) {
        self.dirty |= handled > 0;
        let trim = handled == 0 && self.last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY);
        if !(self.dirty || trim)
            || self.last.elapsed() < VACUUM_EVERY
            || VACUUM_REFUSED.load(Ordering::Relaxed)
            || self
                .running
                .as_ref()
                .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let ask = outbox::VacuumAsk {
            reclaim: self.dirty.then_some(VACUUM_EVERY),
            trim_above: trim.then_some(TRIM_ABOVE),
        };
        self.dirty = false;
        self.last = tokio::time::Instant::now();
        if trim {
            self.last_trim = Some(self.last);
        }
        let pool = pool.clone();
        self.running = Some(tokio::spawn(async move {
            match outbox::vacuum(&pool, ask).await {
                Ok(outbox::Vacuumed::NotAllowed) => {
                    if !VACUUM_REFUSED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the database user owns neither the outbox table nor the database, \
                             so the relay cannot vacuum the table; its dead rows wait for \
                             autovacuum"
                        );
                    }
                }
                Ok(outbox::Vacuumed::Done | outbox::Vacuumed::Nothing) => {}
                Err(e) => tracing::debug!(error = %e, "vacuuming the outbox failed"),
            }
        }));
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
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(row.message_id.clone().into())
            .with_content_type(row.content_type.clone().into());
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &row.traceparent {
            headers.insert(
                TRACEPARENT_HEADER.into(),
                AMQPValue::LongString(traceparent.as_str().into()),
            );
        }
        let job_message = row.exchange == queue::JOBS_EXCHANGE;
        if job_message {
            // How far its queue delivered, once a worker receives it (the reconciler's horizon).
            headers.insert(
                queue::SENT_AT_HEADER.into(),
                AMQPValue::LongLongInt(row.available_at.timestamp_micros()),
            );
        }
        if !headers.inner().is_empty() {
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                row.exchange.clone().into(),
                row.routing_key.clone().into(),
                // Job messages must reach their queue; events may have no subscriber.
                BasicPublishOptions {
                    mandatory: job_message,
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// A notification on `channel`, as this process sends it.
    fn note(channel: &str) -> Notification {
        let payload = if channel == outbox::NOTIFY_CHANNEL {
            outbox::writer_tag()
        } else {
            ""
        };
        Notification {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        }
    }

    #[test]
    fn only_outbox_announcements_wake_the_relay_and_a_burst_wakes_it_once() {
        let (hub, mut wake) = broadcast::channel(16);
        hub.send(note(db::jobs::NOTIFY_CHANNEL)).unwrap();
        assert_eq!(outbox_committed(&mut wake).now_or_never(), None);

        for _ in 0..3 {
            hub.send(note(outbox::NOTIFY_CHANNEL)).unwrap();
            hub.send(note(db::jobs::NOTIFY_CHANNEL)).unwrap();
        }
        assert_eq!(outbox_committed(&mut wake).now_or_never(), Some(()));
        assert_eq!(
            outbox_committed(&mut wake).now_or_never(),
            None,
            "the burst was taken with the first announcement"
        );
    }

    #[test]
    fn only_rows_this_process_wrote_wake_its_relay() {
        let tagged = |tag: &str| Notification {
            channel: outbox::NOTIFY_CHANNEL.to_owned(),
            payload: tag.to_owned(),
        };
        let (hub, mut wake) = broadcast::channel(16);
        // Another process's rows: its own relay publishes them (others poll).
        hub.send(tagged("0123456789abcdef0123456789abcdef"))
            .unwrap();
        assert_eq!(outbox_committed(&mut wake).now_or_never(), None);

        hub.send(tagged(outbox::writer_tag())).unwrap();
        assert_eq!(outbox_committed(&mut wake).now_or_never(), Some(()));
        // A writer that does not say which process it is wakes every relay.
        hub.send(tagged("")).unwrap();
        assert_eq!(outbox_committed(&mut wake).now_or_never(), Some(()));
    }

    #[test]
    fn lost_announcements_wake_the_relay() {
        let (hub, mut wake) = broadcast::channel(2);
        for _ in 0..3 {
            hub.send(note(db::jobs::NOTIFY_CHANNEL)).unwrap();
        }
        assert_eq!(outbox_committed(&mut wake).now_or_never(), Some(()));
    }
}
