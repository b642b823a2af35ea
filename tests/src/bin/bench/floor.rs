//! The floor under a job's cost on this machine: what the contract asks of every job, done
//! with nothing else, measured in the same run as the system so that the system's rate can be
//! read as a share of it.
//!
//! Per job, as the contract asks and with the same libraries and broker topology: a one-row
//! insert committed; the job message to the create queue (quorum, persistent) and its
//! `job.queued` event, each confirmed by the broker; the message consumed (two consumers,
//! prefetch 4, like two workers at the default concurrency); a one-row update committed; the
//! `job.running` and `job.succeeded` events, confirmed; the delivery acknowledged. No request,
//! authentication, admission, outbox, lease, tenant rows or counters: a job system doing less
//! than this per job would not keep the contract's promises (a job recorded before `202`,
//! messages and events that survive a broker restart, an outcome recorded before the ack).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use provisioner_shared::queue::{self, CREATE_TENANT_QUEUE, EVENTS_EXCHANGE};
use provisioner_tests::TestApp;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::cpu;

/// Consumers, and deliveries each has at once: two workers at the default concurrency.
const CONSUMERS: usize = 2;
const PREFETCH: u16 = 4;
/// Creates in flight, as the trivial phase sends them.
const CLIENTS: usize = 32;
/// Creates in flight in the accept half alone, as the system's accept phase sends them.
const ACCEPT_CLIENTS: usize = 4;

/// The floor's figures: its accept half alone, then the whole pipeline.
pub struct Floor {
    /// Creates recorded per second, `ACCEPT_CLIENTS` at once, no consumer; the CPU is that of
    /// recording and announcing them.
    pub accept: Phase,
    /// Jobs per second end to end (`CLIENTS` creating, `CONSUMERS` consuming).
    pub jobs: Phase,
}

pub struct Phase {
    pub per_second: f64,
    pub cpu: Cpu,
}

/// CPU per item, ms: PostgreSQL's and RabbitMQ's process trees (when local), and the bench's
/// own process (standing for the API and the workers).
pub struct Cpu {
    pub postgres_ms: Option<f64>,
    pub rabbitmq_ms: Option<f64>,
    pub own_ms: f64,
}

/// The CPU used so far by the services and this process.
struct Reading {
    services: [Option<f64>; 2],
    own: f64,
}

impl Reading {
    fn now(services: &cpu::Services) -> Self {
        Self {
            services: services.seconds(),
            own: cpu::process_seconds(std::process::id()),
        }
    }

    /// What was used from `self` to now, per item of `n`.
    fn per_item(&self, services: &cpu::Services, n: usize) -> Cpu {
        let now = Self::now(services);
        Cpu {
            postgres_ms: cpu::per_item_ms(self.services[0], now.services[0], n),
            rabbitmq_ms: cpu::per_item_ms(self.services[1], now.services[1], n),
            own_ms: (now.own - self.own) * 1e3 / n as f64,
        }
    }
}

/// Longest a step of the floor over `n` jobs may take: past it the bench fails instead of
/// hanging (a publish or a consumer that failed leaves a job that never ends).
fn step_bound(n: usize) -> Duration {
    Duration::from_secs(300) + Duration::from_millis(10) * u32::try_from(n).unwrap_or(u32::MAX)
}

async fn within<T>(what: &str, n: usize, step: impl Future<Output = T>) -> T {
    let bound = step_bound(n);
    tokio::time::timeout(bound, step)
        .await
        .unwrap_or_else(|_| panic!("the floor's {what} did not finish within {bound:?}"))
}

/// Runs `n` jobs through the floor's accept half, then `n` through the whole pipeline, on a
/// scratch database and vhost of its own.
pub async fn measure(n: usize) -> Floor {
    let app = TestApp::without_workers().await;
    app.stop_api();
    // As many connections as work at once, all opened before any clock starts, so no step
    // waits for the pool or pays for a connection.
    let connections = CLIENTS + CONSUMERS * usize::from(PREFETCH);
    let db = PgPoolOptions::new()
        .max_connections(connections as u32)
        // No test round trip before each use, as the system's pools (`db::connect`).
        .test_before_acquire(false)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:5432/{}",
            app.database
        ))
        .await
        .expect("PostgreSQL answers");
    let opened = futures_util::future::try_join_all((0..connections).map(|_| db.acquire()))
        .await
        .expect("the pool's connections");
    drop(opened);
    sqlx::query(
        "CREATE TABLE floor_jobs (id uuid PRIMARY KEY, status text NOT NULL,
                                  created_at timestamptz NOT NULL, finished_at timestamptz)",
    )
    .execute(&db)
    .await
    .expect("the floor's table");
    let amqp = app.broker_url();
    let setup = connect(&amqp).await;
    queue::declare_topology(&setup.create_channel().await.expect("a channel"))
        .await
        .expect("the broker topology");
    let publisher = confirming(&connect(&amqp).await).await;
    let services = cpu::Services::find(&db).await;

    // The accept half alone, as the system's accept phase runs (no consumer, 4 clients); its
    // CPU until every announcement is confirmed.
    let before = Reading::now(&services);
    let started = Instant::now();
    let announcing = within("accept", n, accept(&db, &publisher, n, ACCEPT_CLIENTS)).await;
    let accepted = started.elapsed();
    within("announcements", n, announced(announcing)).await;
    let accepting = Phase {
        per_second: n as f64 / accepted.as_secs_f64(),
        cpu: before.per_item(&services, n),
    };

    let done = Arc::new(Done::default());
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| tokio::spawn(consume(amqp.clone(), db.clone(), done.clone())))
        .collect();
    within("first jobs", n, done.until(n)).await;
    let before = Reading::now(&services);
    let started = Instant::now();
    within("whole pipeline", n, async {
        let announcing = accept(&db, &publisher, n, CLIENTS).await;
        done.until(2 * n).await;
        announced(announcing).await;
    })
    .await;
    let jobs = Phase {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu: before.per_item(&services, n),
    };
    for c in consumers {
        c.abort();
    }
    let ended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM floor_jobs WHERE status = 'succeeded'")
            .fetch_one(&db)
            .await
            .expect("PostgreSQL answers");
    assert_eq!(ended, 2 * n as i64, "every floor job ended once");
    db.close().await;
    app.stop().await;
    Floor {
        accept: accepting,
        jobs,
    }
}

async fn announced(announcing: Vec<tokio::task::JoinHandle<()>>) {
    for announcement in announcing {
        announcement.await.expect("announced");
    }
}

/// Records `n` jobs, `clients` at once, each answered once its row is committed (as a create
/// is answered `202`), and announces each in a task of its own (as a relay publishes after the
/// commit). Returns once every job is recorded, with the announcements still to await.
#[allow(
    clippy::async_yields_async,
    reason = "the announcements are awaited after the clock stops"
)]
async fn accept(
    db: &PgPool,
    publisher: &Channel,
    n: usize,
    clients: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    stream::iter(0..n)
        .map(|_| async move {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO floor_jobs (id, status, created_at) VALUES ($1, 'queued', now())",
            )
            .bind(id)
            .execute(db)
            .await
            .expect("the job recorded");
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let message = serde_json::to_vec(&serde_json::json!({"jobId": id})).unwrap();
                futures_util::future::join(
                    publish(&publisher, "", CREATE_TENANT_QUEUE, &message),
                    publish(
                        &publisher,
                        EVENTS_EXCHANGE,
                        "job.queued",
                        &event(id, "queued"),
                    ),
                )
                .await;
            })
        })
        .buffer_unordered(clients)
        .collect()
        .await
}

/// Jobs ended by the consumers, and a wake-up for each.
#[derive(Default)]
struct Done {
    count: AtomicUsize,
    changed: Notify,
}

impl Done {
    fn one(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    async fn until(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    }
}

/// A consumer as a worker runs one: its own connection, a channel of confirmed publishes for
/// the events, `PREFETCH` deliveries at once, each handled in a task of its own.
async fn consume(amqp: String, db: PgPool, done: Arc<Done>) {
    let conn = connect(&amqp).await;
    let events = confirming(&connect(&amqp).await).await;
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("the prefetch");
    let mut deliveries = channel
        .basic_consume(
            CREATE_TENANT_QUEUE.into(),
            format!("floor-{}", Uuid::new_v4()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming");
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery.expect("a delivery");
        let (db, events, done) = (db.clone(), events.clone(), done.clone());
        tokio::spawn(async move {
            let message: serde_json::Value =
                serde_json::from_slice(&delivery.data).expect("a job message");
            let id: Uuid = serde_json::from_value(message["jobId"].clone()).expect("a job id");
            sqlx::query(
                "UPDATE floor_jobs SET status = 'succeeded', finished_at = now()
                 WHERE id = $1 AND status = 'queued'",
            )
            .bind(id)
            .execute(&db)
            .await
            .expect("the outcome recorded");
            futures_util::future::join(
                publish(
                    &events,
                    EVENTS_EXCHANGE,
                    "job.running",
                    &event(id, "running"),
                ),
                publish(
                    &events,
                    EVENTS_EXCHANGE,
                    "job.succeeded",
                    &event(id, "succeeded"),
                ),
            )
            .await;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("the delivery settled");
            done.one();
        });
    }
}

async fn connect(amqp: &str) -> Connection {
    Connection::connect(amqp, ConnectionProperties::default())
        .await
        .expect("the broker answers")
}

async fn confirming(conn: &Connection) -> Channel {
    let channel = conn.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("publisher confirms");
    channel
}

/// Publishes a persistent message and waits for the broker's confirm.
async fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/cloudevents+json".into()),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert!(matches!(confirm, Confirmation::Ack(_)), "{confirm:?}");
}

/// A status event about as large as the system's (a CloudEvent carrying the job's view).
fn event(id: Uuid, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": Uuid::new_v4(),
        "source": "/provisioner",
        "type": format!("io.provisioner.job.{status}"),
        "subject": id,
        "time": chrono::Utc::now(),
        "jobversion": 1,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "datacontenttype": "application/json",
        "data": {
            "jobId": id, "kind": "createTenant", "status": status,
            "tenantUrl": "t0123456789ab.example.com", "code": null, "error": null,
            "attempts": 1, "createdAt": chrono::Utc::now(), "startedAt": null,
            "finishedAt": null, "tenant": null, "skippedAccessNumbers": [],
            "batchId": null, "batchItem": null, "templateId": null,
        },
    }))
    .unwrap()
}
