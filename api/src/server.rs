//! Serving HTTP with the limits slow or hostile clients need: a connection whose request headers
//! have not all arrived within `HEADER_TIMEOUT` is dropped, at most `max_connections` are served
//! at once (further ones wait in the kernel's backlog), and a stop never waits longer than the
//! shutdown timeout, whatever the clients do. (Body stalls are the router's: `body_timeout`.)

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How long a client may take to send a request's headers.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` until `shutdown`, then lets requests in flight finish for at most `timeout`;
/// past it their connections are closed. Returns when the whole stop must be over.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: &CancellationToken,
    timeout: Duration,
    max_connections: usize,
) -> anyhow::Result<Instant> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
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
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
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
