//! Template downloads never reach an internal address, end to end. With private addresses
//! refused (the production default), every spelling of this machine's loopback, a name that
//! resolves to it, and the cloud metadata address and name end the job with code 400, and no
//! connection reaches a listener on this machine. With them allowed (as the other tests run), a
//! redirect is followed (a signed link's) only where a first URL could go and at most five
//! times. And by default only the web's ports are asked, wherever the host.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use provisioner_tests::{Options, TestApp, fixtures};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A listener on 127.0.0.1 that counts the connections it accepts and answers each with
/// `reply`.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Listener {
    async fn start(reply: String) -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), reply)
    }

    /// As `start`, on a socket already bound (so that `reply` may name its address).
    fn serve(socket: TcpListener, reply: String) -> Self {
        let addr = socket.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    // The request's head first: an answer sent before it is not one to it.
                    let mut head = Vec::new();
                    let mut buf = [0; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
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
    let mut urls = vec![
        format!("http://127.0.0.1:{port}/t.zip"),
        format!("http://127.1:{port}/t.zip"),
        format!("http://2130706433:{port}/t.zip"),
        format!("http://0x7f.1:{port}/t.zip"),
        format!("http://[::ffff:127.0.0.1]:{port}/t.zip"),
        format!("http://[::1]:{port}/t.zip"),
        format!("http://localhost:{port}/t.zip"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ];
    // A name of an internal address where its cloud's metadata service is, that does not exist
    // elsewhere: refused alike. On a machine whose DNS server does not answer its lookup fails
    // for the moment instead, which is retried (a transient fault): left out there.
    let metadata = "metadata.google.internal";
    match tokio::net::lookup_host((metadata, 80)).await {
        Err(e) if e.to_string().contains("Temporary failure") => {
            eprintln!("{metadata} left out: {e}");
        }
        _ => urls.push(format!("http://{metadata}/computeMetadata/v1/")),
    }
    for url in urls {
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

/// A listener that answers every request with a `302` to `location`.
async fn redirecting_to(location: &str) -> Listener {
    Listener::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await
}

#[tokio::test]
async fn a_redirect_is_followed_to_the_template_as_a_signed_link_would_be() {
    let app = TestApp::spawn().await;
    let template = app.serve_sample_template("signed.zip").await;
    // Two hops, as a store's link to a CDN's.
    let second = redirecting_to(&template).await;
    let first = redirecting_to(&format!("http://{}/t.zip", second.addr)).await;
    let (code, detail) = job_outcome(&app, &format!("http://{}/t.zip", first.addr)).await;
    assert_eq!(code, 200, "{detail}");
    assert_eq!((first.accepted(), second.accepted()), (1, 1));
    assert_eq!(app.templates.hits("signed.zip"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_goes_only_where_a_template_url_could_and_not_for_ever() {
    // Downloads only from the first listener's port: the redirect's target is on another.
    let target = Listener::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()).await;
    let redirecting = redirecting_to(&format!("http://{}/t.zip", target.addr)).await;
    let app = TestApp::with(Options {
        vars: vec![(
            "PROVISIONER_TEMPLATE_PORTS",
            redirecting.addr.port().to_string(),
        )],
        ..Default::default()
    })
    .await;
    let (code, detail) = job_outcome(&app, &format!("http://{}/t.zip", redirecting.addr)).await;
    assert_eq!(code, 400, "{detail}");
    assert_eq!(
        detail,
        format!(
            "the template server redirected: the redirect's port {} is not one templates are downloaded from ({})",
            target.addr.port(),
            redirecting.addr.port()
        )
    );
    assert_eq!(redirecting.accepted(), 1, "the first address was asked");
    assert_eq!(target.accepted(), 0, "the redirect was followed");
    app.stop().await;

    // A listener that redirects to itself: five hops are followed, not the sixth.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let looping = Listener::serve(
        socket,
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{addr}/again.zip\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    let app = TestApp::spawn().await;
    let (code, detail) = job_outcome(&app, &format!("http://{addr}/t.zip")).await;
    assert_eq!(code, 400, "{detail}");
    assert_eq!(
        detail,
        "the template server redirected: more than 5 redirects"
    );
    assert_eq!(looping.accepted(), 6, "the first URL and five redirects");
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
