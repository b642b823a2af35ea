//! Serving HTTP with the limits slow or hostile clients need: a connection whose request headers
//! have not all arrived within `HEADER_TIMEOUT` is dropped (on a kept-alive connection the
//! wait for the next request counts), one whose client accepts no byte of an answer for
//! `WRITE_STALL` is dropped, at most `max_connections` are served at once (further ones wait in
//! the kernel's backlog), and a stop never waits longer than the shutdown timeout, whatever the
//! clients do. (Body stalls are the router's: `body_timeout`.)
//!
//! HTTP/1.1 only: HTTP/2 over cleartext, which nothing in front of the API needs (proxies and
//! ingresses speak HTTP/1.1 to their backends; browsers speak HTTP/2 over TLS only), would need
//! bounds of its own that hyper does not have: an idle connection is never closed, and an answer
//! its client grants no flow-control window waits without a write that could stall.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet, time::Instant};
use tokio_io_timeout::TimeoutWriter;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How long a client may take to send a request's headers, or to start its next request on a
/// kept-alive connection.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an answer may wait for its client to accept any of it. A client that stops reading
/// would otherwise hold its connection (one of `max_connections`) and the answer's buffered
/// bytes for as long as it likes.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(30);

/// Serves `app` until `shutdown`, then lets requests in flight finish for at most `timeout`;
/// past it their connections are closed. Returns when the whole stop must be over.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: &CancellationToken,
    timeout: Duration,
    max_connections: usize,
) -> anyhow::Result<Instant> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("the connection limit closed")?,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = hyper::service::service_fn(with_peer(app.clone(), peer));
        let mut stream = TimeoutWriter::new(stream);
        stream.set_timeout(Some(WRITE_STALL));
        let connection = builder.serve_connection(TokioIo::new(Box::pin(stream)), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let stop_by = Instant::now() + timeout;
    if tokio::time::timeout_at(stop_by, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "requests still in flight at the shutdown timeout; closing their connections"
        );
        connections.abort_all();
    }
    Ok(stop_by)
}

/// The router as a per-connection service that tells handlers the peer's address
/// (`ConnectInfo<SocketAddr>`).
fn with_peer(
    app: Router,
    peer: SocketAddr,
) -> impl Fn(hyper::Request<Incoming>) -> <Router as Service<hyper::Request<Incoming>>>::Future + Clone
{
    move |mut request| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().call(request)
    }
}
