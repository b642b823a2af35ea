//! One place that installs the tracing subscriber for either binary, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, exports spans over OTLP/HTTP (protobuf) with the trace
//! context that requests and jobs carry (`crate::trace`).

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{config::LogFormat, trace::TraceContext};

/// The variable that turns the OTLP export on (the exporter reads the standard `OTEL_*`
/// variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_BSP_SCHEDULE_DELAY`, ...).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The exporting provider, when the export is on (flushed by `shutdown`).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), pretty or JSON lines,
/// and the OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`service` names the process
/// in it). Calling it twice is harmless (the second call is ignored), which tests rely on.
pub fn init(format: LogFormat) {
    init_as(format, "provisioner");
}

/// `init`, naming the process `service` in exported spans.
pub fn init_as(format: LogFormat, service: &'static str) {
    // PostgreSQL's notices (`relation "_sqlx_migrations" already exists, skipping` at every
    // start) are not news: shown from warnings up unless `RUST_LOG` says otherwise.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let (otel, otel_error) = match otlp_provider(service) {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("provisioner");
            let _ = PROVIDER.set(provider);
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                None,
            )
        }
        Ok(None) => (None, None),
        Err(e) => (None, Some(e)),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    if let Some(e) = otel_error {
        tracing::error!(error = %e, "the OTLP trace export is off: its exporter cannot start");
    }
}

/// The OTLP/HTTP exporting provider when the endpoint variable is set (and not empty).
fn otlp_provider(service: &'static str) -> anyhow::Result<Option<SdkTracerProvider>> {
    if std::env::var_os(OTLP_ENDPOINT_VAR).is_none_or(|v| v.is_empty()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Exports what is buffered and stops the export (at process end).
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        // The provider waits for its exporting thread: off the async threads.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "the OTLP trace export did not flush");
        }
    }
}

/// Makes `span` continue `parent` in the exported trace (a remote parent: the request's caller
/// or the request that made a job). Without the export, nothing to do.
pub fn set_parent(span: &tracing::Span, parent: &TraceContext) {
    if !exporting() {
        return;
    }
    let flags = if parent.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id()),
        SpanId::from_bytes(parent.span_id()),
        flags,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(cx);
}

/// The trace context of `span` as exported (its own span id), when the export is on.
pub fn exported_context(span: &tracing::Span) -> Option<TraceContext> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    if !sc.is_valid() {
        return None;
    }
    TraceContext::from_parts(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.is_sampled(),
    )
}
