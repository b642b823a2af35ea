//! Prometheus figures: request counts and latencies of this process (the process-wide
//! recorder), and the figures each API reads from the database and its broker, at most every
//! few seconds whatever the number of scrapes (aggregates only: clients are named by a keyed
//! pseudonym, never by their id).

mod broker;
mod figures;

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use provisioner_shared::seal::Sealer;

pub(crate) use self::figures::{Database, Figures};

/// The process-wide recorder (installed once, shared by every router in the process).
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("provisioner_http_request_duration_seconds".to_owned()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ],
            )
            .expect("static buckets are valid")
            .install_recorder()
            .expect("the metrics recorder is installed once");
        // Each family's `# HELP` line (`promtool check metrics` wants one).
        metrics::describe_counter!(
            "provisioner_http_requests_total",
            "HTTP requests this API process answered, by method, route template and status"
        );
        metrics::describe_histogram!(
            "provisioner_http_request_duration_seconds",
            "Seconds this API process took to answer, by method and route template"
        );
        metrics::describe_counter!(
            "provisioner_http_connections_refused_total",
            "Connections refused because their address had PROVISIONER_MAX_CONNECTIONS_PER_PEER already"
        );
        metrics::describe_counter!(
            "provisioner_submissions_total",
            "Creates and imports this API process recorded"
        );
        metrics::describe_counter!(
            "provisioner_submission_statements_total",
            "Statements that recorded them (under load one records several: group commit)"
        );
        metrics::describe_gauge!(
            "provisioner_http_waits",
            "Long-polls (Prefer: wait, ?wait=) this API process holds now"
        );
        handle
    })
}

/// Middleware: counts and times every request by method, route template (`unmatched` for a path
/// no route matches: a client cannot add labels by inventing paths) and status.
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

/// Writes a metric family's `HELP` and `TYPE` (gauge) lines.
pub(super) fn family(out: &mut String, name: &str, help: &str) {
    typed_family(out, name, help, "gauge");
}

/// Writes a metric family's `HELP` and `TYPE` lines, of type `kind`.
pub(super) fn typed_family(out: &mut String, name: &str, help: &str, kind: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// This process's memory for templates, as a figure (read at each scrape, like the recorder's).
pub(crate) fn template_memory(out: &mut String, in_use_bytes: u64) {
    use std::fmt::Write as _;
    family(
        out,
        "provisioner_template_memory_in_use_bytes",
        "Memory this API holds for uploads in flight and templates it checks or sends",
    );
    let _ = writeln!(
        out,
        "provisioner_template_memory_in_use_bytes {in_use_bytes}"
    );
}

/// Whether this scrape could read the figures of the database (`1`), or is served without them
/// (`0`: the database unreachable, or slower than the scrape's wait for it).
pub(crate) fn database_reachable(out: &mut String, database: Database) {
    use std::fmt::Write as _;
    family(
        out,
        "provisioner_database_reachable",
        "1 when this scrape read the figures of PostgreSQL; 0 when it could not within 3 s, and they are left out",
    );
    let read = u8::from(database == Database::Read);
    let _ = writeln!(out, "provisioner_database_reachable {read}");
}

/// What a client's label is a digest of, besides its id: these digests are of nothing else the
/// process digests with the same key (request bodies).
const CLIENT_LABEL_DOMAIN: &[u8] = b"provisioner:metrics:client-label\0";

/// The label `/metrics` gives a client (`provisioner_client_active_jobs{client}`): `c-` and the
/// first 12 hex digits of a keyed digest of its id. Every process of the cluster has the same key
/// (`PROVISIONER_SEAL_KEY`, else the instance key in the database), so every API replica gives
/// a client the same label, scrape after scrape; whoever lacks the key cannot tell the id from
/// it. `provisioner-api client list` shows each client's.
pub(crate) fn client_label(sealer: &Sealer, client_id: &str) -> String {
    let mut digest = sealer.digester();
    digest.update(CLIENT_LABEL_DOMAIN);
    digest.update(client_id.as_bytes());
    let hex = digest.finish();
    format!("c-{}", &hex[..12])
}

#[cfg(test)]
mod tests {
    use provisioner_shared::seal::Sealer;

    use super::client_label;

    #[test]
    fn a_clients_label_is_stable_keyed_and_not_its_id() {
        let sealer = Sealer::from_key(&[3; 32]);
        let label = client_label(&sealer, "busy");
        assert_eq!(label, client_label(&Sealer::from_key(&[3; 32]), "busy"));
        assert_eq!(label.len(), 14);
        assert!(label.starts_with("c-"));
        assert!(
            label[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(label, client_label(&sealer, "second"));
        assert_ne!(label, client_label(&Sealer::from_key(&[4; 32]), "busy"));
        // Not the digest of the id alone, as a request body's would be.
        assert!(!sealer.digest(b"busy").starts_with(&label[2..]));
        // No label is the others' sum.
        assert_ne!(client_label(&sealer, "other"), "other");
    }
}
