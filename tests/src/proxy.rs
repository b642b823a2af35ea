//! A TCP proxy a test can cut: once cut, it forwards nothing either way and closes nothing
//! (every byte is dropped, every connection stays open), and new connections are accepted and
//! left silent, until it heals; the connections the cut met stay silent for ever, as after a
//! partition that lost their state. Its own kernel still acknowledges what each end sends (and
//! answers keepalive probes), so what it shows is silence, not a peer that stops acknowledging.
//! Dropped, it closes everything.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp},
    sync::watch,
    task::JoinSet,
};

pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// The accept loop; its connections' pumps live in its own set, ended with it.
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            let mut pumps = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if *watching.borrow() {
                    // Held open, never answered.
                    pumps.spawn(async move {
                        let _client = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, watching.clone()));
                pumps.spawn(pump(server_read, client_write, watching.clone()));
            }
        });
        Self {
            addr,
            cut,
            accepting,
        }
    }

    /// From now on nothing passes.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// New connections pass again; those the cut met stay silent.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to` until either end closes or the proxy is cut; cut, it keeps both halves
/// open and forwards nothing more.
async fn pump(
    mut from: tcp::OwnedReadHalf,
    mut to: tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|cut| *cut) => break,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _held = (from, to);
    std::future::pending::<()>().await;
}
