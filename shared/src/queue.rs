//! The broker's wire contract: exchange and queue names, queue arguments, the job message and
//! the CloudEvents status events.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    db::{jobs::JobRow, outbox::OutboxMessage},
    domain::{BatchView, JobView},
};

pub(crate) const JOBS_EXCHANGE: &str = "provisioner.jobs";
/// Interactive work: single creates and imports, each client's first few active ones.
pub const CREATE_TENANT_QUEUE: &str = "provisioner.jobs.create-tenant";
pub(crate) const CREATE_TENANT_ROUTING_KEY: &str = "create-tenant";
/// A client's single jobs past its first few active ones (`client_interactive_jobs`), the
/// first of the backlog's tiers (see `Lane::Backlog`): taken only when no interactive work
/// waits, so one client's many creates never hold back another client's few.
pub const BACKLOG_QUEUE: &str = BACKLOG_QUEUES[0];
/// The backlog's tiers, by a job's rank among its client's active single jobs: tier `t` takes
/// the ranks past `interactive * 2^t` up to `interactive * 2^(t+1)`, the last every rank past
/// `interactive * 2^(TIERS-1)`. Their names in `jobs.lane` are their routing keys.
pub const BACKLOG_TIERS: usize = 6;
const BACKLOG_LANES: [&str; BACKLOG_TIERS] = [
    "backlog",
    "backlog-1",
    "backlog-2",
    "backlog-3",
    "backlog-4",
    "backlog-5",
];
const BACKLOG_QUEUES: [&str; BACKLOG_TIERS] = [
    "provisioner.jobs.backlog",
    "provisioner.jobs.backlog-1",
    "provisioner.jobs.backlog-2",
    "provisioner.jobs.backlog-3",
    "provisioner.jobs.backlog-4",
    "provisioner.jobs.backlog-5",
];
/// Batch items, released a few at a time by the dispatcher, fairly across clients.
pub const BATCH_QUEUE: &str = "provisioner.jobs.batch";
const BATCH_ROUTING_KEY: &str = "batch";
/// Every job queue, the first served first.
pub const JOB_QUEUES: [&str; Lane::COUNT] = {
    let mut queues = [CREATE_TENANT_QUEUE; Lane::COUNT];
    let mut i = 0;
    while i < Lane::COUNT {
        queues[i] = Lane::ALL[i].queue();
        i += 1;
    }
    queues
};

/// Which job queue a job's message goes to; a worker's free slot goes to the first lane with a
/// delivery waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// A client's first `client_interactive_jobs` active single jobs.
    Interactive,
    /// A client's single jobs past those, in tiers by their rank among the client's active
    /// single jobs when sent (`BACKLOG_TIERS`; the database's `job_rank_lane`): a client's
    /// tenth job waits behind other clients' first twenty at most, never behind the thousands
    /// another client queued before it. A tier is taken only when no lower one waits.
    Backlog(u8),
    /// Batch items.
    Batch,
}

impl Lane {
    /// How many lanes there are.
    pub const COUNT: usize = BACKLOG_TIERS + 2;

    /// Every lane, in the order a worker's free slot looks at them.
    pub const ALL: [Self; Self::COUNT] = {
        let mut lanes = [Self::Interactive; Self::COUNT];
        let mut t = 0;
        while t < BACKLOG_TIERS {
            lanes[1 + t] = Self::Backlog(t as u8);
            t += 1;
        }
        lanes[Self::COUNT - 1] = Self::Batch;
        lanes
    };

    /// Its place in `ALL`.
    pub const fn index(self) -> usize {
        match self {
            Self::Interactive => 0,
            Self::Backlog(tier) => 1 + tier as usize,
            Self::Batch => Self::COUNT - 1,
        }
    }

    /// The lane of a job queue's deliveries.
    pub fn of_queue(name: &str) -> Self {
        Self::of_queue_checked(name).unwrap_or(Self::Batch)
    }

    fn of_queue_checked(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|lane| lane.queue() == name)
    }

    /// Its name in `jobs.lane`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Backlog(tier) => BACKLOG_LANES[tier as usize],
            Self::Batch => "batch",
        }
    }

    /// Its job queue.
    pub const fn queue(self) -> &'static str {
        match self {
            Self::Interactive => CREATE_TENANT_QUEUE,
            Self::Backlog(tier) => BACKLOG_QUEUES[tier as usize],
            Self::Batch => BATCH_QUEUE,
        }
    }

    const fn routing_key(self) -> &'static str {
        match self {
            Self::Interactive => CREATE_TENANT_ROUTING_KEY,
            Self::Backlog(tier) => BACKLOG_LANES[tier as usize],
            Self::Batch => BATCH_ROUTING_KEY,
        }
    }
}

impl std::str::FromStr for Lane {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|lane| lane.as_str() == name)
            .ok_or_else(|| format!("no job lane is named {name:?}"))
    }
}

impl sqlx::Type<sqlx::Postgres> for Lane {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for Lane {
    /// A lane this release does not know (one a later release named) reads as the backlog's
    /// last tier: a row of such a job still reads, where a failure would refuse every page
    /// listing it while two releases run side by side. The lane of a job this process sends is
    /// always one that the statement sending it named.
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(name
            .parse()
            .unwrap_or(Self::Backlog(BACKLOG_TIERS as u8 - 1)))
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Lane {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

/// The header of a job message that carries when the job was sent (`jobs.sent_at`, in
/// microseconds since the Unix epoch): how far its queue has delivered, once a worker receives it
/// (`job_queue_horizons`).
pub const SENT_AT_HEADER: &str = "x-sent-at";

const DEAD_EXCHANGE: &str = "provisioner.jobs.dead";
pub(crate) const DEAD_QUEUE: &str = "provisioner.jobs.dead";
pub const EVENTS_EXCHANGE: &str = "provisioner.events";

/// Deliveries of one message (including redeliveries after a consumer died) before the broker
/// dead-letters it.
const DELIVERY_LIMIT: i64 = 20;

/// Most messages the job queue holds.
const MAX_QUEUED: i64 = 1_000_000;

/// The body of a job message: the id and nothing else; PostgreSQL holds the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: Uuid,
}

impl JobMessage {
    /// The message of `job` on `lane`'s queue. It carries the job's trace context as its
    /// `traceparent` header.
    pub(crate) fn outbox(job: &JobRow, lane: Lane, delay: std::time::Duration) -> OutboxMessage {
        Self::routed(job.id, lane, delay, job.traceparent.clone())
    }

    pub(crate) fn routed(
        job_id: Uuid,
        lane: Lane,
        delay: std::time::Duration,
        traceparent: Option<String>,
    ) -> OutboxMessage {
        OutboxMessage {
            exchange: JOBS_EXCHANGE.to_owned(),
            routing_key: lane.routing_key().to_owned(),
            message_id: job_id.to_string(),
            content_type: "application/json".to_owned(),
            payload: serde_json::to_vec(&JobMessage { job_id }).expect("job message serializes"),
            delay,
            traceparent,
        }
    }
}

/// The CloudEvents 1.0 structured event announcing a job's status at `version`. With the job's
/// trace context, the event carries it as the distributed-tracing extension attribute
/// `traceparent` (and its message as the header of that name); `data` stays the job's view.
pub(crate) fn status_event(
    job: &JobView,
    version: i32,
    traceparent: Option<&str>,
) -> OutboxMessage {
    let id = Uuid::now_v7();
    let status = job.status.as_str();
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/provisioner",
        "type": format!("io.provisioner.job.{status}"),
        "subject": job.job_id,
        "time": chrono::Utc::now(),
        "datacontenttype": "application/json",
        "jobversion": version,
        "data": job,
    });
    if let Some(batch) = job.batch_id {
        event["batchid"] = serde_json::Value::String(batch.to_string());
    }
    if let Some(traceparent) = traceparent {
        event["traceparent"] = serde_json::Value::String(traceparent.to_owned());
    }
    OutboxMessage {
        exchange: EVENTS_EXCHANGE.to_owned(),
        routing_key: format!("job.{status}"),
        message_id: id.to_string(),
        content_type: "application/cloudevents+json".to_owned(),
        payload: serde_json::to_vec(&event).expect("event serializes"),
        delay: std::time::Duration::ZERO,
        traceparent: traceparent.map(str::to_owned),
    }
}

/// The CloudEvent announcing that a batch stopped (`batch.completed` or `batch.cancelled`),
/// with the trace context of the batch's request (`traceparent`) when it has one.
pub(crate) fn batch_event(
    batch: &BatchView,
    version: i32,
    traceparent: Option<&str>,
) -> OutboxMessage {
    let id = Uuid::now_v7();
    let status = batch.status.as_str();
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/provisioner",
        "type": format!("io.provisioner.batch.{status}"),
        "subject": batch.batch_id,
        "time": chrono::Utc::now(),
        "datacontenttype": "application/json",
        "batchversion": version,
        "data": batch,
    });
    if let Some(traceparent) = traceparent {
        event["traceparent"] = serde_json::Value::String(traceparent.to_owned());
    }
    OutboxMessage {
        exchange: EVENTS_EXCHANGE.to_owned(),
        routing_key: format!("batch.{status}"),
        message_id: id.to_string(),
        content_type: "application/cloudevents+json".to_owned(),
        payload: serde_json::to_vec(&event).expect("event serializes"),
        delay: std::time::Duration::ZERO,
        traceparent: traceparent.map(str::to_owned),
    }
}

/// Arguments of the job queue; every declarer uses exactly these, so a drift fails at start
/// (the broker refuses a redeclaration with other arguments).
fn job_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    // A bounded queue: past the limit publishes are refused (nacked), and the relay keeps
    // the messages in the outbox until there is room.
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(MAX_QUEUED));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// Declares every exchange and queue of the contract (idempotent).
pub async fn declare_topology(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            JOBS_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(DEAD_QUEUE.into(), queue, dead_args)
        .await?;
    channel
        .queue_bind(
            DEAD_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for (name, routing_key) in Lane::ALL.map(|lane| (lane.queue(), lane.routing_key())) {
        channel
            .queue_declare(name.into(), queue, job_queue_arguments())
            .await?;
        channel
            .queue_bind(
                name.into(),
                JOBS_EXCHANGE.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lane_is_named_once_and_read_back_from_its_name() {
        assert_eq!(
            Lane::ALL.map(|l| l.as_str().parse::<Lane>().unwrap()),
            Lane::ALL
        );
        assert_eq!(
            Lane::ALL.map(|l| Lane::of_queue_checked(l.queue())),
            Lane::ALL.map(Some)
        );
        let mut queues = JOB_QUEUES.to_vec();
        queues.dedup();
        assert_eq!(queues.len(), Lane::COUNT);
        assert_eq!(BACKLOG_QUEUE, "provisioner.jobs.backlog");
        for lane in Lane::ALL {
            if let Lane::Backlog(_) = lane {
                let quoted = format!("'{}'", lane.as_str());
                assert!(
                    crate::db::figures::BACKLOG_QUERY.contains(&quoted),
                    "the backlog figures read {lane:?}"
                );
            }
        }
    }
}
