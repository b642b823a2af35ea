//! The worker's optional probe listener: alive throughout, ready while it consumes, not ready from
//! the moment it drains.

use std::time::Duration;

use provisioner_tests::{TestApp, fixtures, process::Proc};

/// `GET http://addr/path`: the status code, or `None` when nothing answers.
async fn probe(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    provisioner_tests::http_client()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn worker_readiness_turns_503_while_it_drains_and_liveness_stays_200() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[
            ("PROVISIONER_WORKER_HEALTH_LISTEN", "127.0.0.1:0"),
            ("PROVISIONER_SHUTDOWN_TIMEOUT", "20"),
        ],
        "info",
    );
    let addr: std::net::SocketAddr = worker.wait_for("worker health listening").await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    worker.wait_for("worker started").await;
    provisioner_tests::eventually(Duration::from_secs(10), || async {
        (probe(addr, "/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(probe(addr, "/healthz").await, Some(200));
    assert_eq!(probe(addr, "/elsewhere").await, Some(404));

    // A job waits for its tenant's lock; the worker is told to stop and drains.
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    app.until_lock_waiters(1).await;
    worker.terminate();
    worker.wait_for("shutdown signal received").await;
    assert_eq!(
        probe(addr, "/readyz").await,
        Some(503),
        "draining is not ready"
    );
    assert_eq!(
        probe(addr, "/healthz").await,
        Some(200),
        "draining is alive"
    );
    assert!(worker.child.try_wait().unwrap().is_none());

    held.rollback().await.unwrap();
    let status = worker.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(app.wait_job(&id).await["code"], 200);
    assert_eq!(
        probe(addr, "/healthz").await,
        None,
        "the listener ends with the worker"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::without_workers().await;
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("PROVISIONER_WORKER_HEALTH_LISTEN", "127.0.0.1:0")],
        "info",
    );
    let addr: std::net::SocketAddr = worker.wait_for("worker health listening").await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // 64 KiB of header bytes without an end: answered 431 and closed, not read forever.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'x', 64 * 1024));
    let _ = stream.write_all(&head).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the listener closes the connection");
    // The answer is 431; the kernel may reset the connection over the unread bytes instead.
    match read {
        Ok(_) => assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // A client that sends nothing is dropped after the read timeout, and probes still answer.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut nothing = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing))
        .await
        .expect("a silent connection is closed")
        .ok();
    assert_eq!(probe(addr, "/healthz").await, Some(200));
    worker.child.kill().await.unwrap();
    app.stop().await;
}
