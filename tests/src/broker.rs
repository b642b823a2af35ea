//! The test system's broker as an operator sees it (`rabbitmqctl`): queue depths, purges,
//! dropped connections, connections and their heartbeats, the job queue's binding, and
//! broker settings changed for a test.

use provisioner_shared::queue::Lane;

use crate::{TestApp, rabbitmqctl};

/// The backlog's queues, every tier.
fn backlog_queues() -> Vec<&'static str> {
    Lane::ALL
        .into_iter()
        .filter(|lane| matches!(lane, Lane::Backlog(_)))
        .map(Lane::queue)
        .collect()
}

impl TestApp {
    /// Messages in a queue of this test's vhost, ready and unacknowledged together.
    pub async fn queue_messages(&self, queue: &str) -> i64 {
        self.queue_counts(&[queue], &["messages"]).await[0]
    }

    /// A queue of this test's vhost: its messages ready, and delivered but not acknowledged.
    pub async fn queue_depths(&self, queue: &str) -> (i64, i64) {
        let counts = self
            .queue_counts(&[queue], &["messages_ready", "messages_unacknowledged"])
            .await;
        (counts[0], counts[1])
    }

    /// Messages in the backlog's queues together (every tier of `queue::Lane::Backlog`).
    pub async fn backlog_messages(&self) -> i64 {
        self.queue_counts(&backlog_queues(), &["messages"]).await[0]
    }

    /// The backlog's queues together: their messages ready, and delivered but not acknowledged.
    pub async fn backlog_depths(&self) -> (i64, i64) {
        let counts = self
            .queue_counts(
                &backlog_queues(),
                &["messages_ready", "messages_unacknowledged"],
            )
            .await;
        (counts[0], counts[1])
    }

    /// The counts `columns` of `rabbitmqctl list_queues`, summed over `queues` of this test's
    /// vhost (zeros for a queue it does not list).
    async fn queue_counts(&self, queues: &[&str], columns: &[&'static str]) -> Vec<i64> {
        let vhost = self.vhost.clone();
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        let columns = columns.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "list_queues",
                "-p",
                &vhost,
                "--quiet",
                "--no-table-headers",
                "name",
            ];
            args.extend(columns.iter().copied());
            let out = rabbitmqctl(&args);
            let mut sums = vec![0; columns.len()];
            for f in out
                .lines()
                .map(|l| l.split('\t').map(str::trim).collect::<Vec<_>>())
                .filter(|f| f.len() == columns.len() + 1 && queues.iter().any(|q| q == f[0]))
            {
                for (sum, n) in sums.iter_mut().zip(&f[1..]) {
                    *sum += n.parse::<i64>().expect("a count");
                }
            }
            sums
        })
        .await
        .unwrap()
    }

    /// Every queue of this test's vhost with its ready and unacknowledged messages and its
    /// consumers, as `rabbitmqctl` prints them (for a failure's diagnosis).
    pub async fn queue_consumers(&self) -> String {
        let vhost = self.vhost.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&[
                "list_queues",
                "-p",
                &vhost,
                "--quiet",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
        })
        .await
        .unwrap()
    }

    /// Every queue of this test's vhost as the broker declared it: `name`, `type`, `durable`
    /// and `arguments` (an object of each argument's value; `rabbitmqctl` lists them as
    /// `[name, type, value]`).
    pub async fn queue_declarations(&self) -> Vec<serde_json::Value> {
        let vhost = self.vhost.clone();
        tokio::task::spawn_blocking(move || {
            let out = rabbitmqctl(&[
                "list_queues",
                "-p",
                &vhost,
                "--quiet",
                "--formatter",
                "json",
                "name",
                "type",
                "durable",
                "arguments",
            ]);
            let mut queues: Vec<serde_json::Value> =
                serde_json::from_str(&out).expect("rabbitmqctl's JSON");
            for q in &mut queues {
                let arguments: serde_json::Map<String, serde_json::Value> = q["arguments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| Some((a[0].as_str()?.to_owned(), a[2].clone())))
                    .collect();
                q["arguments"] = arguments.into();
            }
            queues
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

/// A connection of this test's vhost: its client-given name, negotiated heartbeat (s) and the
/// client's port (which tells one connection from another of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConnection {
    pub name: String,
    pub heartbeat: u64,
    pub peer_port: u64,
}

impl TestApp {
    /// The connections the broker holds for this test's vhost.
    pub async fn broker_connections(&self) -> Vec<BrokerConnection> {
        let vhost = self.vhost.clone();
        tokio::task::spawn_blocking(move || {
            let out = rabbitmqctl(&[
                "list_connections",
                "--quiet",
                "--formatter",
                "json",
                "vhost",
                "timeout",
                "peer_port",
                "client_properties",
            ]);
            let all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
            all.into_iter()
                .filter(|c| c["vhost"] == vhost.as_str())
                .map(|c| BrokerConnection {
                    name: c["client_properties"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p[0] == "connection_name")
                        .and_then(|p| p[2].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    heartbeat: c["timeout"].as_u64().unwrap_or_default(),
                    peer_port: c["peer_port"].as_u64().unwrap_or_default(),
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// Caps `queue` of this test's vhost at `max` messages, publishes past it refused (the
    /// broker nacks them), by an operator's policy; `None` removes the policy. (A policy's limit
    /// and the queue's own `x-max-length` both hold: the lower one counts.)
    pub async fn cap_queue(&self, queue: &str, max: Option<u32>) {
        let vhost = self.vhost.clone();
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        tokio::task::spawn_blocking(move || match max {
            Some(max) => rabbitmqctl(&[
                "set_policy",
                "-p",
                &vhost,
                "--apply-to",
                "queues",
                "--priority",
                "10",
                "test-cap",
                &pattern,
                &format!(r#"{{"max-length": {max}, "overflow": "reject-publish"}}"#),
            ]),
            None => rabbitmqctl(&["clear_policy", "-p", &vhost, "test-cap"]),
        })
        .await
        .unwrap();
    }

    /// Unbinds (`false`) or binds again (`true`) the job queue from the jobs exchange, as an
    /// operator's mistake could.
    pub async fn bind_job_queue(&self, amqp_url: &str, bound: bool) {
        use lapin::{
            Connection, ConnectionProperties, options::QueueBindOptions, types::FieldTable,
        };
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let (queue, exchange, key) = (
            provisioner_shared::queue::CREATE_TENANT_QUEUE,
            "provisioner.jobs",
            "create-tenant",
        );
        if bound {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        } else {
            channel
                .queue_unbind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let _ = conn.close(200, "done".into()).await;
    }

    /// Deletes job queue `queue` (with what it holds), as an operator's mistake could.
    pub async fn delete_job_queue(&self, amqp_url: &str, queue: &str) {
        use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let _ = conn.close(200, "done".into()).await;
    }
}

/// A setting of the `rabbit` application changed on the running broker for the life of the
/// guard, then set back (also when the test fails). Broker-wide: only what a test can share
/// with others running at the same time.
pub struct BrokerSetting {
    key: &'static str,
    before: String,
}

impl BrokerSetting {
    /// Sets `key` (an Erlang term, e.g. `2000`).
    pub fn set(key: &'static str, value: &str) -> Self {
        let before = rabbitmqctl(&[
            "eval",
            &format!("{{ok, V}} = application:get_env(rabbit, {key}), V."),
        ])
        .trim()
        .to_owned();
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {key}, {value})."),
        ]);
        Self { key, before }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        let _ = crate::process::tool("rabbitmqctl")
            .args([
                "eval",
                &format!(
                    "application:set_env(rabbit, {}, {}).",
                    self.key, self.before
                ),
            ])
            .output();
    }
}
