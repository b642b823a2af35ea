//! Template downloads are bounded end to end: a server that drips bytes is cut off at
//! `PROVISIONER_TEMPLATE_TIMEOUT` (a transient fault: retried, then 500), a body without end
//! at `PROVISIONER_TEMPLATE_MAX_BYTES` (code 400 at once), and a body whose type says it is no
//! archive (a page, JSON) is not read past its first bytes unless they are a ZIP's (code 400 at
//! once). A server whose answer is not HTTP a client reads (its head larger than any client
//! takes) is code 400 at once too: asking again gets the same answer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use provisioner_tests::{Options, TestApp, eventually, fixtures};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A job's status, code and attempts.
fn ending(job: &Value) -> (&str, i64, i64) {
    (
        job["status"].as_str().unwrap_or_default(),
        job["code"].as_i64().unwrap_or_default(),
        job["attempts"].as_i64().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_template_server_that_drips_bytes_is_cut_off_at_the_timeout_then_retried_then_500() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_TEMPLATE_TIMEOUT", "2".into()),
            ("PROVISIONER_JOB_MAX_ATTEMPTS", "2".into()),
        ],
    })
    .await;
    // A byte every 100 ms: never idle long, never done.
    let (url, flow) = app
        .templates
        .endless("drip", Some(Duration::from_millis(100)));
    let started = Instant::now();
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let job = app.wait_job_within(&id, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(ending(&job), ("failed", 500, 2), "{job}");
    assert_eq!(
        job["error"]["detail"],
        "the job failed 2 times with transient faults; the last: the template download timed out"
    );
    assert_eq!(app.templates.hits("drip"), 2, "one download per attempt");
    // Each attempt lasted the timeout, not more: two of them, and the retry's short delay.
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The worker hung up both times; the server counted a byte per 100 ms.
    eventually(Duration::from_secs(5), || async {
        (flow.dropped.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let sent = flow.bytes.load(Ordering::SeqCst);
    assert!((30..=50).contains(&sent), "{sent} bytes dripped");
    app.stop().await;
}

#[tokio::test]
async fn a_template_without_end_is_cut_off_at_the_byte_cap_with_400_at_once() {
    const CAP: u64 = 1 << 20;
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_TEMPLATE_MAX_BYTES", CAP.to_string())],
    })
    .await;
    let (url, flow) = app.templates.endless("flood", None);
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let job = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(ending(&job), ("failed", 400, 1), "{job}");
    assert_eq!(
        job["error"]["detail"],
        format!("the template is larger than {CAP} bytes")
    );
    assert_eq!(app.templates.hits("flood"), 1, "not retried");
    eventually(Duration::from_secs(5), || async {
        (flow.dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // What the server got out before the worker hung up: the cap, and what sockets buffer.
    let sent = flow.bytes.load(Ordering::SeqCst);
    assert!(sent > CAP && sent < CAP + (16 << 20), "{sent} bytes sent");
    app.stop().await;
}

#[tokio::test]
async fn a_page_served_for_a_template_is_refused_by_its_type_and_first_bytes() {
    let app = TestApp::spawn().await;
    // A sign-in page without end: nothing of it is worth reading.
    let (url, flow) = app.templates.endless("login", None);
    app.templates
        .set_content_type("login", "text/html; charset=utf-8");
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let job = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(400), Some(1)),
        "{job}"
    );
    assert_eq!(
        job["error"]["detail"],
        "the template server answered text/html, not a ZIP"
    );
    eventually(Duration::from_secs(5), || async {
        (flow.dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // What the server got out before the worker hung up: what sockets buffer, no more.
    let sent = flow.bytes.load(Ordering::SeqCst);
    assert!(sent < 16 << 20, "{sent} bytes sent");

    // Bytes by any other name are read as an archive, and so is a ZIP a misconfigured server
    // calls text.
    for (name, content_type) in [
        ("s3.zip", "binary/octet-stream"),
        ("plain.zip", "text/plain"),
    ] {
        let url = app.serve_sample_template(name).await;
        app.templates.set_content_type(name, content_type);
        let id = app
            .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await;
        assert_eq!(app.wait_job(&id).await["code"], 200, "{content_type}");
    }
    app.stop().await;
}

/// Serves `answer` to every connection on a local port; returns the URL and the connections
/// counted.
async fn raw_server(answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/t", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    tokio::spawn({
        let hits = hits.clone();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(&answer).await;
                });
            }
        }
    });
    (url, hits)
}

#[tokio::test]
async fn a_template_server_whose_answer_is_not_http_a_client_reads_is_400_at_once() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "3".into())],
    })
    .await;
    // A status line, then a header of 1 MiB: more than the HTTP client reads of a head.
    let mut big_head = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', 1 << 20));
    big_head.extend(b"\r\n\r\n");
    let not_http = "the template server's answer is not HTTP this service reads";
    for (answer, detail) in [
        (
            big_head,
            format!("{not_http}: its head is too large or has too many headers"),
        ),
        (
            b"HTTP/1.1 two hundred OK\r\n\r\n".to_vec(),
            not_http.to_owned(),
        ),
    ] {
        let (url, hits) = raw_server(answer).await;
        let id = app
            .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await;
        let job = app.wait_job_within(&id, Duration::from_secs(30)).await;
        assert_eq!(ending(&job), ("failed", 400, 1), "{job}");
        assert_eq!(job["error"]["detail"], detail.as_str());
        assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried");
    }
    app.stop().await;
}
