//! Prometheus figures: request counts and latencies of this process, and cluster-wide job
//! figures read from the database at scrape time (aggregates only).

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use provisioner_shared::db::jobs::Stats;

/// The process-wide recorder (installed once, shared by every router in the process).
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("provisioner_http_request_duration_seconds".to_owned()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ],
            )
            .expect("static buckets are valid")
            .install_recorder()
            .expect("the metrics recorder is installed once")
    })
}

/// Middleware: counts and times every routed request by method, route template and status.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!("provisioner_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    histogram!("provisioner_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A standard method's name, or `other`: a client cannot add labels (and memory) by inventing
/// methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Sets the cluster-wide job gauges from the database's aggregates.
pub(crate) fn record_job_stats(stats: &Stats, outbox_lag_seconds: f64) {
    for (status, n) in [
        ("queued", stats.queued),
        ("running", stats.running),
        ("succeeded", stats.succeeded),
        ("failed", stats.failed),
        ("cancelled", stats.cancelled),
    ] {
        gauge!("provisioner_jobs", "status" => status).set(n as f64);
    }
    gauge!("provisioner_jobs_ended_last_hour").set(stats.recent as f64);
    gauge!("provisioner_lock_timeouts_last_hour").set(stats.lock_timeouts as f64);
    gauge!("provisioner_worker_panics").set(stats.worker_panics as f64);
    for (name, p50, p99) in [
        (
            "provisioner_job_duration_seconds_last_hour",
            stats.duration_p50,
            stats.duration_p99,
        ),
        (
            "provisioner_lock_wait_seconds_last_hour",
            stats.lock_wait_p50,
            stats.lock_wait_p99,
        ),
    ] {
        gauge!(name, "quantile" => "0.5").set(p50.unwrap_or(0.0));
        gauge!(name, "quantile" => "0.99").set(p99.unwrap_or(0.0));
    }
    gauge!("provisioner_outbox_lag_seconds").set(outbox_lag_seconds);
}

/// Sets the memory this process holds for uploads in flight and templates it checks or sends.
pub(crate) fn record_template_memory(in_use_bytes: u64) {
    gauge!("provisioner_template_memory_in_use_bytes").set(in_use_bytes as f64);
}

/// The operators' figures that the process-wide recorder does not hold, rendered as Prometheus
/// text at each scrape (so a client that drops out of the busiest ten leaves no stale series):
/// the age of the oldest waiting work by queue, held batch items, failures by code among the
/// recent endings, the busiest clients' share of the active work, and, from the broker, the job
/// queues' ready messages and consumers.
pub(crate) async fn operator_figures(
    pool: &sqlx::PgPool,
    broker: &BrokerReadings,
) -> Result<String, sqlx::Error> {
    use provisioner_shared::{
        db::figures,
        queue::{BATCH_QUEUE, CREATE_TENANT_QUEUE},
    };
    use std::fmt::Write as _;

    let backlog = figures::backlog(pool).await?;
    let failures = figures::recent_failures(pool).await?;
    let shares = figures::client_shares(pool).await?;
    let queues = broker.read().await;

    let mut out = String::new();
    let age = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or(0.0, |at| {
            (backlog.now - at).num_milliseconds().max(0) as f64 / 1000.0
        })
    };
    family(
        &mut out,
        "provisioner_queue_oldest_age_seconds",
        "Seconds the oldest queued job of each job queue has waited (single creates since they were made, batch items since they were released); 0 when none waits",
    );
    for (queue, at) in [
        (CREATE_TENANT_QUEUE, backlog.oldest_single),
        (BATCH_QUEUE, backlog.oldest_released),
    ] {
        let _ = writeln!(
            out,
            "provisioner_queue_oldest_age_seconds{{queue=\"{queue}\"}} {}",
            age(at)
        );
    }
    family(
        &mut out,
        "provisioner_batch_items_held",
        "Batch items held back in PostgreSQL for fairness, not on the broker yet",
    );
    let _ = writeln!(out, "provisioner_batch_items_held {}", backlog.held);
    family(
        &mut out,
        "provisioner_batch_held_oldest_age_seconds",
        "Seconds since the oldest batch with held items was accepted; 0 when none holds any",
    );
    let _ = writeln!(
        out,
        "provisioner_batch_held_oldest_age_seconds {}",
        age(backlog.oldest_held)
    );

    family(
        &mut out,
        "provisioner_job_recent_endings",
        "Jobs that ended among the most recent endings of the last hour (at most 10000): the sample of the failure figures",
    );
    let _ = writeln!(out, "provisioner_job_recent_endings {}", failures.endings);
    family(
        &mut out,
        "provisioner_job_recent_failures",
        "Failed jobs by code among the most recent endings of the last hour (at most 10000)",
    );
    let mut by_label: Vec<(&str, i64)> = FAILURE_CODES.iter().map(|c| (*c, 0)).collect();
    for (code, n) in &failures.by_code {
        let label = FAILURE_CODES
            .iter()
            .find(|c| **c == code.to_string())
            .copied()
            .unwrap_or("other");
        if let Some(slot) = by_label.iter_mut().find(|(l, _)| *l == label) {
            slot.1 += n;
        }
    }
    for (code, n) in by_label {
        let _ = writeln!(
            out,
            "provisioner_job_recent_failures{{code=\"{code}\"}} {n}"
        );
    }

    family(
        &mut out,
        "provisioner_client_active_jobs",
        "Queued and running jobs (single and batch items) of the ten busiest clients, and of all others together (client=\"other\", other=\"true\")",
    );
    let named: i64 = shares.top.iter().map(|(_, n)| n).sum();
    for (client, n) in &shares.top {
        let _ = writeln!(
            out,
            "provisioner_client_active_jobs{{client=\"{}\"}} {n}",
            label_value(client)
        );
    }
    let _ = writeln!(
        out,
        "provisioner_client_active_jobs{{client=\"other\",other=\"true\"}} {}",
        (shares.total - named).max(0)
    );

    family(
        &mut out,
        "provisioner_broker_reachable",
        "1 when this scrape read the job queues from the broker, 0 when it could not",
    );
    let _ = writeln!(
        out,
        "provisioner_broker_reachable {}",
        u8::from(queues.is_some())
    );
    if let Some(queues) = queues {
        family(
            &mut out,
            "provisioner_queue_messages_ready",
            "Messages of each job queue waiting for a consumer",
        );
        for q in &queues {
            let _ = writeln!(
                out,
                "provisioner_queue_messages_ready{{queue=\"{}\"}} {}",
                q.queue, q.ready
            );
        }
        family(
            &mut out,
            "provisioner_queue_consumers",
            "Consumers of each job queue: one per worker process consuming it",
        );
        for q in &queues {
            let _ = writeln!(
                out,
                "provisioner_queue_consumers{{queue=\"{}\"}} {}",
                q.queue, q.consumers
            );
        }
    }
    Ok(out)
}

/// The failure codes a job may end with; any other is counted as `other`.
const FAILURE_CODES: [&str; 5] = ["400", "409", "500", "503", "other"];

/// How long a scrape waits for the broker's answer, and for its turn to ask.
const BROKER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A broker reading this recent is served as it is.
const BROKER_READING_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

type QueueFigures = Vec<provisioner_shared::broker_figures::QueueFigures>;

/// An API's readings of its broker's job queues. Each API has its own (its own broker and
/// vhost): several APIs in one process, as the tests run them, never serve each other's.
#[derive(Debug)]
pub(crate) struct BrokerReadings {
    amqp_url: secrecy::SecretString,
    /// One read at a time.
    turn: tokio::sync::Semaphore,
    last: std::sync::Mutex<Option<(std::time::Instant, QueueFigures)>>,
}

impl BrokerReadings {
    pub(crate) fn new(amqp_url: secrecy::SecretString) -> Self {
        Self {
            amqp_url,
            turn: tokio::sync::Semaphore::new(1),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The job queues' figures, or `None` when the broker did not answer in time. One read at
    /// a time, and a reading serves every scrape for `BROKER_READING_FRESH`: a flood of
    /// (unauthenticated) scrapes can neither open a flood of broker connections nor keep the
    /// read's turn from the monitoring system's scrape.
    async fn read(&self) -> Option<QueueFigures> {
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
        let read = tokio::time::timeout(
            BROKER_READ_TIMEOUT,
            provisioner_shared::broker_figures::job_queues(&self.amqp_url),
        )
        .await;
        match read {
            Ok(Ok(figures)) => {
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((std::time::Instant::now(), figures.clone()));
                }
                Some(figures)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the job queues' figures from the broker");
                None
            }
            Err(_) => {
                tracing::warn!("the broker did not give the job queues' figures in time");
                None
            }
        }
    }
}

/// Writes a metric family's `HELP` and `TYPE` (gauge) lines.
fn family(out: &mut String, name: &str, help: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// A label value escaped as the Prometheus text format wants (backslash, quote, newline).
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::label_value;

    #[test]
    fn label_values_are_escaped_as_the_text_format_wants() {
        assert_eq!(label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(label_value("plain-id_1.~"), "plain-id_1.~");
    }
}
