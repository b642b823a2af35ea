//! How far each job queue has delivered to this process: the latest send time carried by a
//! message received from it (`queue::SENT_AT_HEADER`). The sweeper records it in PostgreSQL
//! (`job_queue_horizons`), where every worker's reconciler reads how far the queues' deliveries
//! reached: a queued job sent well before that is no longer behind the queue's other messages.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use lapin::{protocol::BasicProperties, types::AMQPValue};
use provisioner_shared::{db, queue};

/// How far ahead of this host's clock a message's send time may be (the database's clock, which
/// stamped it, may run ahead of ours).
const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// Per lane, in microseconds since the Unix epoch (0: nothing received yet): the latest seen and
/// the latest recorded.
#[derive(Debug, Default)]
pub(crate) struct Horizons {
    seen: [AtomicI64; queue::Lane::COUNT],
    recorded: [AtomicI64; queue::Lane::COUNT],
}

fn index(lane: queue::Lane) -> usize {
    lane.index()
}

impl Horizons {
    /// Notes a message received from `lane`'s queue. One without the header (published by an
    /// older release), or whose send time lies ahead of this host's clock by more than
    /// `MAX_SKEW` (not ours), moves nothing: a horizon only moves forward, so one too far ahead
    /// would hold for good.
    pub(crate) fn saw(&self, lane: queue::Lane, properties: &BasicProperties) {
        let sent = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(queue::SENT_AT_HEADER))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(us) => Some(*us),
                _ => None,
            });
        let latest = (Utc::now() + MAX_SKEW).timestamp_micros();
        if let Some(sent) = sent.filter(|&us| us <= latest) {
            self.seen[index(lane)].fetch_max(sent, Ordering::Relaxed);
        }
    }

    /// Records what moved since the last call; nothing when nothing did.
    pub(crate) async fn record(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let moved: Vec<(queue::Lane, i64)> = queue::Lane::ALL
            .into_iter()
            .filter_map(|lane| {
                let seen = self.seen[index(lane)].load(Ordering::Relaxed);
                (seen > self.recorded[index(lane)].load(Ordering::Relaxed)).then_some((lane, seen))
            })
            .collect();
        let delivered: Vec<(queue::Lane, DateTime<Utc>)> = moved
            .iter()
            .filter_map(|&(lane, us)| Some((lane, DateTime::from_timestamp_micros(us)?)))
            .collect();
        if delivered.is_empty() {
            return Ok(());
        }
        db::jobs::record_horizons(pool, &delivered).await?;
        for (lane, us) in moved {
            self.recorded[index(lane)].fetch_max(us, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    fn sent_at(us: i64) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(queue::SENT_AT_HEADER.into(), AMQPValue::LongLongInt(us));
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_lane_keeps_the_latest_send_time_it_received() {
        let horizons = Horizons::default();
        horizons.saw(queue::Lane::Backlog(0), &sent_at(20));
        horizons.saw(queue::Lane::Backlog(0), &sent_at(10));
        horizons.saw(queue::Lane::Backlog(0), &BasicProperties::default());
        horizons.saw(queue::Lane::Backlog(3), &sent_at(7));
        horizons.saw(queue::Lane::Batch, &sent_at(5));
        horizons.saw(queue::Lane::Batch, &sent_at(i64::MAX));
        let seen = |lane| horizons.seen[index(lane)].load(Ordering::Relaxed);
        assert_eq!(
            queue::Lane::ALL.map(seen),
            [0, 20, 0, 0, 7, 0, 0, 5],
            "each lane its own latest; an older message, one without the header or one from the \
             future moves nothing"
        );
    }
}
