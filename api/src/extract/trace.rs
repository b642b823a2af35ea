//! The request's W3C trace context: every request gets one at the edge (a child of a valid
//! `traceparent` header, else a new trace), which its span records and its jobs continue. When
//! spans are exported (OTLP), it is the exported request span's own context instead, so the
//! jobs' spans hang under it.

use std::convert::Infallible;

use axum::{extract::FromRequestParts, extract::Request, http::request::Parts};
use provisioner_shared::{telemetry, trace::TraceContext};

/// The request's span in its trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTrace(pub(crate) TraceContext);

impl RequestTrace {
    fn of(request_headers: &axum::http::HeaderMap) -> Self {
        Self(TraceContext::continue_from(traceparent(request_headers)))
    }
}

/// The request's one `traceparent` header; several are as good as a malformed one.
fn traceparent(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    let mut all = headers.get_all("traceparent").iter();
    match (all.next(), all.next()) {
        (Some(one), None) => Some(one.as_bytes()),
        _ => None,
    }
}

/// The caller's trace context: the request's one `traceparent`, if it is valid.
fn caller_context(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    traceparent(headers)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(TraceContext::parse)
}

/// Outermost layer: gives the request its trace context, before its span is made.
pub(crate) async fn start(mut request: Request) -> Request {
    let trace = RequestTrace::of(request.headers());
    request.extensions_mut().insert(trace);
    request
}

/// The request's span: method, path and trace id (so every line the request logs has it).
pub(crate) fn request_span(request: &Request) -> tracing::Span {
    let ours = request
        .extensions()
        .get::<RequestTrace>()
        .copied()
        .unwrap_or_else(|| RequestTrace::of(request.headers()));
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = caller_context(request.headers()) {
        telemetry::set_parent(&span, &parent);
    }
    let trace = telemetry::exported_context(&span).unwrap_or(ours.0);
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    span
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let current = tracing::Span::current();
        if current.metadata().is_some_and(|m| m.name() == "request")
            && let Some(exported) = telemetry::exported_context(&current)
        {
            return Ok(Self(exported));
        }
        Ok(parts
            .extensions
            .get::<Self>()
            .copied()
            .unwrap_or_else(|| Self::of(&parts.headers)))
    }
}

/// The request's trace context when the request carried a valid `traceparent` (it continues a
/// caller's trace); `None` when the edge started a new trace for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerTrace(pub(crate) Option<TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for CallerTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let carried = caller_context(&parts.headers).is_some();
        let RequestTrace(trace) = RequestTrace::from_request_parts(parts, state).await?;
        Ok(Self(carried.then_some(trace)))
    }
}
