//! The worker's optional probe listener (`PROVISIONER_WORKER_HEALTH_LISTEN`): `GET /healthz`
//! answers `200` while the process runs, draining included; `GET /readyz` answers `200` once the
//! worker has started (connected, migrated) and `503` before that and from the moment its
//! shutdown (draining) begins, so an orchestrator sees a stopping worker as not ready while it
//! finishes its jobs. A worker that pauses consuming while PostgreSQL does not answer stays
//! ready: every worker unready at once would only block node drains.
//!
//! A deliberately tiny HTTP/1.1 responder: one request per connection, the request head read
//! within `READ_TIMEOUT` and `MAX_HEAD` bytes, at most `MAX_CONNECTIONS` connections at once
//! (more wait in the kernel's backlog).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

/// Longest request head read.
const MAX_HEAD: usize = 4096;
/// Time a client has to send its request head, and to take the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;

/// The running listener (if configured). Dropping it stops the listener.
#[derive(Debug, Default)]
pub(crate) struct Health {
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Health {
    /// Binds `addr` (none: no listener) and answers probes until dropped. `/readyz` is `503`
    /// until `set_ready`, and again once `draining` is cancelled.
    pub(crate) async fn start(
        addr: Option<SocketAddr>,
        draining: CancellationToken,
    ) -> anyhow::Result<Self> {
        let health = Self::default();
        let Some(addr) = addr else {
            return Ok(health);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding PROVISIONER_WORKER_HEALTH_LISTEN ({addr})"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "worker health listening");
        tokio::spawn(serve(
            listener,
            health.ready.clone(),
            draining,
            health.stop.clone(),
        ));
        Ok(health)
    }

    /// The worker consumes: `/readyz` answers `200` until draining begins.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a health probe connection");
                    continue;
                }
            },
        };
        let ready = ready.load(Ordering::SeqCst) && !draining.is_cancelled();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, ready)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, ready: bool) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0_u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "too large",
            )
            .await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/healthz") => ("200 OK", "ok"),
        (b"GET", b"/readyz") if ready => ("200 OK", "ready"),
        (b"GET", b"/readyz") => ("503 Service Unavailable", "draining or starting"),
        (b"GET", _) => ("404 Not Found", "not found"),
        _ => ("405 Method Not Allowed", "method not allowed"),
    };
    respond(&mut stream, status, body).await
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}
