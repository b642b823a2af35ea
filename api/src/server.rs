//! Serving HTTP with the limits slow or hostile clients need: a connection whose request headers
//! have not all arrived within `HEADER_TIMEOUT` is dropped (on a kept-alive connection the
//! wait for the next request counts), one whose client accepts no byte of an answer for
//! `WRITE_STALL` is dropped, at most `max_connections` are served at once (further ones wait in
//! the kernel's backlog), at most `per_peer` of them from one address (one more, once accepted,
//! gives its place back at once and is answered `503` with `Retry-After` by a task of its own,
//! so that one client cannot take every place and keep everyone else waiting in the backlog),
//! and a stop never waits longer than the shutdown timeout, whatever the clients do. (Body
//! stalls are the router's: `body_timeout`.)
//!
//! HTTP/1.1 only: HTTP/2 over cleartext, which nothing in front of the API needs (proxies and
//! ingresses speak HTTP/1.1 to their backends; browsers speak HTTP/2 over TLS only), would need
//! bounds of its own that hyper does not have: an idle connection is never closed, and an answer
//! its client grants no flow-control window waits without a write that could stall.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

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
    per_peer: Option<NonZeroU32>,
) -> anyhow::Result<Instant> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let peers = Peers::default();
    let refusals = Refusals::new();
    // Shown from the start, at 0.
    refused_count().absolute(0);
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
        let Some(peer_slot) = peers.admit(peer.ip(), per_peer) else {
            // Its place is free again for other peers at once; the answer and the close are
            // another task's.
            drop(slot);
            refusals.refuse(stream, peer);
            continue;
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
            drop(peer_slot);
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

/// The answer to a connection past its address's share, whatever its request (only its first
/// bytes are read, and dropped).
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/problem+json\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 156\r\n\r\n\
{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\
\"detail\":\"this address has as many connections as one may have; retry when one has closed\"}";

/// Refused connections answered at once; past it, one more is closed without an answer.
const REFUSALS_AT_ONCE: usize = 64;
/// Of those, one peer address's at most: a peer reconnecting in a loop leaves the rest to
/// other peers' refusals.
const REFUSALS_PER_PEER: NonZeroU32 = NonZeroU32::new(8).expect("not zero");
/// How long a refused connection is waited for and read, all told (what it sent is dropped):
/// its answer goes after the first bytes of its request (an HTTP client takes an answer that
/// comes before it has written its request for a broken connection), and it is read until it
/// closes, so that closing it with its request unread does not reset the answer away.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// At most one warning of refused connections this often.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Answers and closes the connections refused for their address's share, each within
/// `REFUSAL_LINGER`, at most `REFUSALS_AT_ONCE` at a time and `REFUSALS_PER_PEER` of one peer;
/// counts them, and warns now and then.
struct Refusals {
    at_once: Arc<Semaphore>,
    /// The refusals being answered, by peer.
    peers: Peers,
    warned: Mutex<Option<std::time::Instant>>,
}

impl Refusals {
    fn new() -> Self {
        Self {
            at_once: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            peers: Peers::default(),
            warned: Mutex::new(None),
        }
    }

    fn refuse(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        refused_count().increment(1);
        {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_EVERY) {
                *warned = Some(std::time::Instant::now());
                tracing::warn!(
                    %peer,
                    "a connection past its address's share (PROVISIONER_MAX_CONNECTIONS_PER_PEER) answered 503; behind a proxy that hides client addresses, set it to 0"
                );
            }
        }
        let Some(peer_slot) = self.peers.admit(peer.ip(), Some(REFUSALS_PER_PEER)) else {
            return;
        };
        let Ok(permit) = self.at_once.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = stream;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                let mut sink = [0u8; 4096];
                if stream.read(&mut sink).await? == 0 {
                    return Ok(());
                }
                stream.write_all(REFUSAL).await?;
                stream.shutdown().await?;
                while stream.read(&mut sink).await? > 0 {}
                std::io::Result::Ok(())
            })
            .await;
            drop((permit, peer_slot));
        });
    }
}

/// Connections refused for their address's share (answered, or closed unanswered past
/// `REFUSALS_AT_ONCE`).
fn refused_count() -> metrics::Counter {
    metrics::counter!("provisioner_http_connections_refused_total")
}

/// How many connections each peer address has served at once. IPv6 addresses count by their
/// /64 (one host's many addresses), IPv4 ones (mapped into IPv6 or not) by the address.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, u32>>>);

impl Peers {
    /// A place for one more connection from `ip`, if it has fewer than `cap`; held until the
    /// connection ends.
    fn admit(&self, ip: IpAddr, cap: Option<NonZeroU32>) -> Option<PeerSlot> {
        let ip = crate::peer::key(ip);
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if cap.is_some_and(|cap| *count >= cap.get()) {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_has_at_most_its_cap_and_its_places_come_back() {
        let peers = Peers::default();
        let cap = NonZeroU32::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = peers.admit(a, cap).unwrap();
        let _second = peers.admit(a, cap).unwrap();
        assert!(peers.admit(a, cap).is_none());
        assert!(peers.admit(b, cap).is_some());
        drop(first);
        assert!(peers.admit(a, cap).is_some());
        assert!(peers.admit(a, None).is_some(), "no cap");
    }

    #[test]
    fn the_refusal_is_one_whole_answer() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
    }

    #[tokio::test]
    async fn one_peer_has_at_most_its_share_of_the_answered_refusals() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refusals = Refusals::new();
        // A client from `from`, refused; what it reads once it has sent a request.
        let refused = async |from: &str| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let client = socket.connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            refusals.refuse(stream, peer);
            client
        };
        let answer = async |mut client: tokio::net::TcpStream| {
            let _ = client.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        };
        // The peer's share, held: each waits for its request.
        let mut held = Vec::new();
        for _ in 0..REFUSALS_PER_PEER.get() {
            held.push(refused("127.0.0.1").await);
        }
        let past = refused("127.0.0.1").await;
        let other = refused("127.0.0.2").await;
        assert_eq!(answer(past).await, "", "closed unanswered");
        assert!(answer(other).await.starts_with("HTTP/1.1 503 "));
        for client in held {
            assert!(answer(client).await.starts_with("HTTP/1.1 503 "));
        }
    }

    #[test]
    fn a_peer_without_connections_is_forgotten() {
        let peers = Peers::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(peers.admit(a, NonZeroU32::new(1)));
        assert!(peers.0.lock().unwrap().is_empty());
    }
}
