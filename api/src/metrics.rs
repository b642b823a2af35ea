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
