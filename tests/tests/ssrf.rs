//! Template downloads never reach an internal address, end to end. With private addresses
//! refused (the production default), every spelling of this machine's loopback, a name that
//! resolves to it, and the cloud metadata address and name end the job with code 400, and no
//! connection reaches a listener on this machine. With them allowed (as the other tests run), a
//! redirect is still not followed, not even to this machine. And by default only the web's
//! ports are asked, wherever the host.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use provisioner_tests::{Options, TestApp, fixtures};
use tokio::{io::AsyncWriteExt, net::TcpListener};

/// A listener on 127.0.0.1 that counts the connections it accepts and answers each with
/// `reply`.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    async fn start(reply: String) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Creates a tenant from `template_url` and waits for its job: its code and error detail.
async fn job_outcome(app: &TestApp, template_url: &str) -> (i64, String) {
    let id = app
        .submit(
            &fixtures::tenant_url(),
            &fixtures::create_body(template_url),
        )
        .await;
    let job = app.wait_job(&id).await;
    (
        job["code"].as_i64().unwrap_or_default(),
        job["error"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn no_spelling_of_an_internal_address_is_fetched_from() {
    let app = TestApp::with(Options {
        vars: vec![
            ("PROVISIONER_TEMPLATE_ALLOW_PRIVATE", "false".to_owned()),
            // The listener's port is not a web port: any port, so the addresses are what is
            // refused.
            ("PROVISIONER_TEMPLATE_PORTS", "any".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let inside = Listener::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()).await;
    let port = inside.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/t.zip"),
        format!("http://127.1:{port}/t.zip"),
        format!("http://2130706433:{port}/t.zip"),
        format!("http://0x7f.1:{port}/t.zip"),
        format!("http://[::ffff:127.0.0.1]:{port}/t.zip"),
        format!("http://[::1]:{port}/t.zip"),
        format!("http://localhost:{port}/t.zip"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
    ] {
        let (code, detail) = job_outcome(&app, &url).await;
        assert_eq!(code, 400, "{url}: {detail}");
        // One detail for every refusal: a client cannot map internal names with it.
        assert!(
            detail.contains("does not resolve to a public address"),
            "{url}: {detail}"
        );
    }
    assert_eq!(inside.accepted(), 0, "a download reached this machine");
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_even_to_an_allowed_address() {
    let app = TestApp::spawn().await;
    let target = Listener::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()).await;
    let redirecting = Listener::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{}/t.zip\r\nContent-Length: 0\r\n\r\n",
        target.addr
    ))
    .await;
    let (code, detail) = job_outcome(&app, &format!("http://{}/t.zip", redirecting.addr)).await;
    assert_eq!(code, 400, "{detail}");
    assert!(detail.contains("redirect"), "{detail}");
    assert_eq!(redirecting.accepted(), 1, "the first address was asked");
    assert_eq!(target.accepted(), 0, "the redirect was followed");
    app.stop().await;
}

#[tokio::test]
async fn by_default_only_the_webs_ports_are_asked() {
    let app = TestApp::with(Options {
        vars: vec![("PROVISIONER_TEMPLATE_ALLOW_PRIVATE", "false".to_owned())],
        ..Default::default()
    })
    .await;
    let inside = Listener::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()).await;
    let url = format!("http://{}/t.zip", inside.addr);
    let (code, detail) = job_outcome(&app, &url).await;
    assert_eq!(code, 400, "{detail}");
    assert_eq!(
        detail,
        format!(
            "templateUrl's port {} is not one templates are downloaded from (80, 443)",
            inside.addr.port()
        )
    );
    assert_eq!(inside.accepted(), 0);
    app.stop().await;
}
