//! A test subscriber of the `provisioner.events` exchange.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde_json::Value;

pub struct EventTap {
    _conn: Connection,
    consumer: lapin::Consumer,
}

/// One received event: its routing key, content type, `traceparent` header and parsed body.
#[derive(Debug, Clone)]
pub struct Event {
    pub routing_key: String,
    pub content_type: Option<String>,
    pub persistent: bool,
    /// The message's `traceparent` header, if it has one.
    pub traceparent: Option<String>,
    pub body: Value,
}

impl EventTap {
    pub async fn start(amqp_url: &str) -> Self {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .exchange_declare(
                provisioner_shared::queue::EVENTS_EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for key in ["job.#", "batch.#"] {
            channel
                .queue_bind(
                    queue.name().clone(),
                    provisioner_shared::queue::EVENTS_EXCHANGE.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            consumer,
        }
    }

    /// Receives events until `done` holds for the list so far, or 30 s pass.
    pub async fn collect_until(&mut self, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let mut events = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&events) {
            let next = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .expect("events arrive in time")
                .unwrap()
                .unwrap();
            next.acker.ack(BasicAckOptions::default()).await.unwrap();
            events.push(Event {
                routing_key: next.routing_key.to_string(),
                content_type: next
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.to_string()),
                persistent: *next.properties.delivery_mode() == Some(2),
                traceparent: traceparent_header(&next.properties),
                body: serde_json::from_slice(&next.data).unwrap(),
            });
        }
        events
    }
}

impl crate::TestApp {
    /// Every event `tap` got and the system will send for what it committed so far: waits for
    /// the outbox to empty (each row is deleted once the broker confirmed it, so routed to the
    /// tap), then reads up to a marker published behind them. The caller makes sure nothing is
    /// still writing events (the jobs ended, their deliveries settled).
    pub async fn published_events(&self, tap: &mut EventTap) -> Vec<Event> {
        crate::eventually(Duration::from_secs(20), || async {
            (self.count("SELECT count(*) FROM outbox").await == 0).then_some(())
        })
        .await;
        tap.collect_published().await
    }
}

impl EventTap {
    /// Every event received until now and those already routed to the tap: publishes a marker
    /// behind them and receives up to it. Whatever a relay published and the broker confirmed
    /// before this call (an empty outbox says every row was) comes before the marker.
    pub async fn collect_published(&mut self) -> Vec<Event> {
        let channel = self._conn.create_channel().await.unwrap();
        let marker = uuid::Uuid::new_v4().to_string();
        channel
            .basic_publish(
                provisioner_shared::queue::EVENTS_EXCHANGE.into(),
                "job.marker".into(),
                lapin::options::BasicPublishOptions::default(),
                serde_json::json!({"id": marker}).to_string().as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
        channel.close(200, "marker sent".into()).await.unwrap();
        let mut events = self
            .collect_until(|seen| seen.last().is_some_and(|e| e.body["id"] == marker.as_str()))
            .await;
        events.pop();
        events
    }
}

/// What a claimed job that succeeded announces: `(jobversion, routing key)` of each change.
pub const CLAIMED_AND_SUCCEEDED: [(i64, &str); 3] =
    [(1, "job.queued"), (2, "job.running"), (3, "job.succeeded")];

/// The status changes `events` announce of job `id`, each once as a consumer de-duplicating by
/// event id sees them: `(jobversion, routing key)`, in version order.
pub fn changes_of<'a>(events: &'a [Event], id: &str) -> Vec<(i64, &'a str)> {
    let mut by_id = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e.body["subject"] == id) {
        by_id.insert(e.body["id"].as_str().unwrap_or_default().to_owned(), e);
    }
    let mut changes: Vec<(i64, &str)> = by_id
        .values()
        .map(|e| {
            (
                e.body["jobversion"].as_i64().unwrap_or_default(),
                e.routing_key.as_str(),
            )
        })
        .collect();
    changes.sort_unstable();
    changes
}

/// The `traceparent` header of a message, if it has one (as a string).
pub fn traceparent_header(properties: &lapin::BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("traceparent")? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}
