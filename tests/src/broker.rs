//! The test system's broker as an operator sees it (`rabbitmqctl`): queue depths, purges,
//! dropped connections.

use crate::{TestApp, rabbitmqctl};

impl TestApp {
    /// Messages in a queue of this test's vhost, ready and unacknowledged together.
    pub async fn queue_messages(&self, queue: &str) -> i64 {
        let vhost = self.vhost.clone();
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || {
            let out = rabbitmqctl(&[
                "list_queues",
                "-p",
                &vhost,
                "--quiet",
                "--no-table-headers",
                "name",
                "messages",
            ]);
            out.lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(name, _)| name.trim() == queue)
                .map_or(0, |(_, n)| n.trim().parse().expect("a count"))
        })
        .await
        .unwrap()
    }

    /// Drops every message ready in a queue of this test's vhost, as an operator could.
    pub async fn purge_queue(&self, queue: &str) {
        let vhost = self.vhost.clone();
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || rabbitmqctl(&["purge_queue", "-p", &vhost, &queue]))
            .await
            .unwrap();
    }

    /// Has the broker close every connection of this test's vhost.
    pub async fn drop_broker_connections(&self, reason: &str) {
        let vhost = self.vhost.clone();
        let reason = reason.to_owned();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["close_all_connections", "--vhost", &vhost, &reason])
        })
        .await
        .unwrap();
    }
}
