//! Slow and hostile clients: half-sent headers, stalled bodies, connection floods.

use std::time::{Duration, Instant};

use provisioner_tests::{
    Options, TestApp,
    batches::{self, items},
    eventually, fixtures,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Reads until the server closes the connection (or `within` passes); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut seen)).await;
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn half_sent_headers_are_dropped_and_stalled_bodies_end_with_408() {
    let app = TestApp::without_workers().await;
    let started = Instant::now();
    let headers = async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        read_until_closed(&mut s, Duration::from_secs(45)).await;
        started.elapsed()
    };
    let body = async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let path = format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        );
        let token = app.bootstrap_token().await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tenantName\"",
            token
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(45)).await;
        (answer, started.elapsed())
    };
    let (headers_closed, (answer, body_answered)) = tokio::join!(headers, body);
    assert!(
        headers_closed < Duration::from_secs(40),
        "half-sent headers held the connection {headers_closed:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body answers 408: {answer}"
    );
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(body_answered < Duration::from_secs(40));
    app.stop().await;
}

/// A client that stops reading its answer is dropped once the API has waited `WRITE_STALL` (30 s)
/// to send it more, rather than holding its connection and the answer's bytes for as long as it
/// likes.
#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_dropped() {
    let app = TestApp::without_workers().await;
    // 50,000 ranges of a tenant with a long name: a listing of about 13 MB, more than both
    // sides' socket buffers hold.
    let url = format!(
        "{}.example.com",
        ["a".repeat(60), "b".repeat(60), "c".repeat(60)].join(".")
    );
    sqlx::query("INSERT INTO tenants (id, url, name, sip_domain, settings) VALUES (gen_random_uuid(), $1, 'T', $1, '{}')")
        .bind(&url)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO access_numbers (number, count, media, tenant_id)
         SELECT (1000000000 + g * 10)::text, 1, 'VOICE', t.id
         FROM tenants t, generate_series(1, 50000) g WHERE t.url = $1",
    )
    .bind(&url)
    .execute(&app.db)
    .await
    .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /configapi/v2/accessnumbers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.bootstrap_token().await
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The client stalls: this wait is the behaviour under test, past the API's 30 s.
    tokio::time::sleep(Duration::from_secs(36)).await;
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ends");
    assert!(
        !rest.ends_with(b"\r\n0\r\n\r\n"),
        "a client that had stopped reading was sent its whole answer ({} bytes)",
        rest.len()
    );
    app.stop().await;
}

/// HTTP/2 over cleartext is not served: the API speaks HTTP/1.1, whose bounds it keeps (an
/// HTTP/2 connection that sent nothing was held open for good).
#[tokio::test]
async fn http2_over_cleartext_is_refused_at_once() {
    let app = TestApp::without_workers().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    // The connection preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an HTTP/2 connection was held {:?} (answer {answer:?})",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_MAX_CONNECTIONS", "1".into())],
    })
    .await;
    // This keep-alive connection takes the only slot (once the harness's own have closed).
    let mut hog = TcpStream::connect(app.addr).await.unwrap();
    hog.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    hog.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let mut waiting = TcpStream::connect(app.addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_secs(1), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap");
    drop(hog);
    let answer = read_until_closed(&mut waiting, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

/// One address holds at most `PROVISIONER_MAX_CONNECTIONS_PER_PEER` connections: one more is
/// answered `503` with `Retry-After` and closed as soon as it is accepted, its request unread,
/// and the places left serve other addresses. Before, one address could hold every place and
/// keep every other client in the backlog.
#[tokio::test]
async fn one_address_holds_at_most_its_share_of_the_connections() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![
            ("PROVISIONER_MAX_CONNECTIONS", "8".into()),
            ("PROVISIONER_MAX_CONNECTIONS_PER_PEER", "2".into()),
        ],
    })
    .await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let from_other_address = || async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(app.addr).await.unwrap()
    };
    // Two kept-alive connections from 127.0.0.2, each served once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = from_other_address().await;
        s.write_all(health).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    // A third from there is refused, whatever it sent.
    let mut third = from_other_address().await;
    third.write_all(health).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "a third connection from one address was kept open"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 1\r\n"), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("retry when one has closed\"}"), "{answer}");
    // An HTTP client reads it as the answer to its request, not as a broken connection.
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        app.metric("provisioner_http_connections_refused_total")
            .await,
        Some(2.0)
    );
    // Another address is served meanwhile.
    let mut other = TcpStream::connect(app.addr).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut other, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Once one of the two ends (as soon as the server has seen it end), that address is
    // served again.
    drop(held.pop());
    eventually(Duration::from_secs(10), || async {
        let mut again = from_other_address().await;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let answer = read_until_closed(&mut again, Duration::from_secs(10)).await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_past_its_waits_at_once_is_answered_without_waiting() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_WAITS", "2".into())],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let poll = app.url(&format!("/configapi/v2/jobs/{id}?wait=60&status=queued"));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.http.get(&poll).send()))
        .collect();
    eventually(Duration::from_secs(10), || async {
        let text = provisioner_tests::get(app.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("provisioner_http_waits 2").then_some(())
    })
    .await;
    let started = Instant::now();
    let r = app
        .http
        .get(&poll)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("answered without waiting");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(20));
    for h in held {
        h.abort();
    }
    app.stop().await;
}

#[tokio::test]
async fn a_trickling_upload_ends_with_408_at_the_body_deadline_and_is_dropped() {
    const DEADLINE: Duration = Duration::from_secs(3);
    const DECLARED: usize = 1 << 20;
    // The budget holds one declared upload: the trickle's share must be given back for the
    // upload after it to fit.
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![
            ("PROVISIONER_BODY_TIMEOUT", DEADLINE.as_secs().to_string()),
            ("PROVISIONER_TEMPLATE_MEMORY_BUDGET", DECLARED.to_string()),
        ],
    })
    .await;
    let token = app.bootstrap_token().await;
    let tenant = fixtures::tenant_url();
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            format!(
                "PUT /configapi/v2/tenant/{tenant} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/zip\r\nContent-Length: {DECLARED}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 100 ms: never silent for long, never done (it would take 29 hours).
    let trickle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < Duration::from_secs(60) {
            ticks.tick().await;
            if writer.write_all(b"P").await.is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let margin = Duration::from_secs(5);
    let _ = tokio::time::timeout(DEADLINE + margin, async {
        let mut buf = [0u8; 4096];
        // The whole answer: its headers and its (short) problem body.
        while problem_of(&seen).is_none() {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answered = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "no 408 within {:?} of a trickling body: {answer:?}",
        DEADLINE + margin
    );
    assert!(
        answered >= DEADLINE - Duration::from_millis(500),
        "ended before its deadline: {answered:?}"
    );
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    let problem = problem_of(&seen).unwrap();
    assert_eq!(problem["status"], 408, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 3 s"),
        "{problem}"
    );
    // Nothing of it was recorded, and its share of the memory budget is free again: a whole
    // upload right after it is taken at once.
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM templates").await, 0);
    let template = fixtures::sample_template(app.db_version().await).write();
    let r = app
        .http
        .put(app.url(&format!("/configapi/v2/tenant/{tenant}")))
        .header("content-type", "application/zip")
        .body(template)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    app.stop().await;
}

/// The JSON object in an HTTP answer's body, once it has all arrived.
fn problem_of(answer: &[u8]) -> Option<serde_json::Value> {
    let text = String::from_utf8_lossy(answer);
    let body = &text[text.find("\r\n\r\n")? + 4..];
    serde_json::from_str(&body[body.find('{')?..=body.rfind('}')?]).ok()
}

/// The body's deadline counts the time the client keeps the API waiting, not the API's own:
/// a batch sent at once whose first chunk of items waits on the database past the deadline is
/// still read to its end and accepted.
#[tokio::test]
async fn the_body_deadline_does_not_count_the_servers_own_time() {
    let deadline = Duration::from_secs(2);
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_BODY_TIMEOUT", deadline.as_secs().to_string())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    // The items' events cannot be written while this lock is held.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let items = provisioner_tests::batches::items(1_500, &template);
    let request = tokio::spawn({
        let (url, http) = (app.url("/configapi/v2/batches"), app.http.clone());
        let body = provisioner_tests::batches::ndjson(&items);
        async move {
            http.post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    });
    // The first chunk waits on the lock, the rest of the body sent already.
    eventually(Duration::from_secs(30), || async {
        let waiting = app
            .table_locks(
                "outbox",
                "NOT l.granted AND a.query LIKE '%INSERT INTO outbox%'",
            )
            .await;
        (waiting > 0).then_some(())
    })
    .await;
    // The server's own time runs past the body's deadline (the time passing is the test).
    tokio::time::sleep(deadline + Duration::from_secs(1)).await;
    blocker.rollback().await.unwrap();
    let r = request.await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE batch_id IS NOT NULL")
            .await,
        1_500
    );
    app.stop().await;
}

/// A stream create for an existing tenant is refused before its body is read when the body is
/// declared large (a small one is read first: the recording statement refuses it the same way,
/// and reading it costs less than the round trip of a look).
#[tokio::test]
async fn a_large_stream_create_for_an_existing_tenant_is_refused_before_its_body_arrives() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let done = app
        .create_and_wait(&tenant, &fixtures::create_body(&url))
        .await;
    assert_eq!(done["code"].as_i64(), Some(200), "{done}");
    let token = app.bootstrap_token().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // A megabyte declared, not a byte of it sent: only the look answers.
    stream
        .write_all(
            format!(
                "PUT /configapi/v2/tenant/{tenant} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/zip\r\nContent-Length: 1048576\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while problem_of(&seen).is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let problem = problem_of(&seen)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&seen)));
    assert_eq!(problem["status"], 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{problem}"
    );
    app.stop().await;
}

/// A batch of more items than one chunk whose body arrives whole: the status and the detail
/// of its answer.
async fn whole_batch(app: &TestApp, http: &reqwest::Client, template: &str) -> (u16, String) {
    let r = batches::post(
        app,
        http,
        "application/x-ndjson",
        batches::ndjson(&items(1_001, template)),
    )
    .await;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").cloned();
    let text = r.text().await.unwrap();
    if status == 503 {
        assert_eq!(retry.unwrap(), "5", "{text}");
    }
    (status, text)
}

/// NDJSON batches write their items as they arrive, in a transaction that waits for the
/// client: four at once (two per client) hold a connection each, further ones are `503` with
/// `Retry-After`, so slow senders never take the pool every other route needs (34 of them
/// left the API unable to issue a token or list a job).
#[tokio::test]
async fn ndjson_batches_arriving_at_once_are_bounded() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let scopes = ["tenants:read", "tenants:write"];
    let first = batches::client(&app, "first", &scopes).await;
    let second = batches::client(&app, "second", &scopes).await;
    let third = batches::client(&app, "third", &scopes).await;
    let stalled: Vec<_> = [&first, &first, &second, &second]
        .into_iter()
        .map(|http| batches::stalled(&app, http, &template))
        .collect();
    batches::until_receiving(&app, 4).await;
    let (status, detail) = whole_batch(&app, &first, &template).await;
    assert_eq!(status, 503, "{detail}");
    assert!(
        detail.contains("this client has as many NDJSON batches arriving"),
        "{detail}"
    );
    let (status, detail) = whole_batch(&app, &third, &template).await;
    assert_eq!(status, 503, "{detail}");
    assert!(
        detail.contains("the server has as many NDJSON batches arriving"),
        "{detail}"
    );
    assert_eq!(
        batches::receiving(&app).await,
        4,
        "the refused held nothing"
    );
    // The other routes keep the pool: more requests at once than it has connections.
    let listings = (0..40).map(|_| {
        third
            .get(app.url("/configapi/v2/jobs?limit=1"))
            .timeout(Duration::from_secs(5))
            .send()
    });
    for answer in futures_util::future::join_all(listings).await {
        assert_eq!(answer.expect("answered while batches stall").status(), 200);
    }
    // A small batch holds no transaction while it arrives, and needs no slot.
    let small = batches::post(
        &app,
        &third,
        "application/x-ndjson",
        batches::ndjson(&items(2, &template)),
    )
    .await;
    assert_eq!(small.status(), 202);
    // One released: its batch is accepted, and its slot is another client's.
    let mut stalled = stalled.into_iter();
    let (answer, release) = stalled.next().unwrap();
    drop(release);
    assert_eq!(answer.await.unwrap(), 202);
    assert_eq!(whole_batch(&app, &third, &template).await.0, 202);
    drop(stalled);
    app.stop().await;
}

/// A form's bytes are within the upload budget from its first byte, not from its template
/// part's: the multipart parser buffers a part's headers (and whatever precedes the first
/// boundary) until it finds their end, and 24 forms whose headers never ended held 1.6 GiB
/// outside any budget.
#[tokio::test]
async fn a_form_takes_its_share_of_the_upload_budget_before_its_first_part() {
    const BUDGET: u64 = 2 << 20;
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TEMPLATE_MEMORY_BUDGET", BUDGET.to_string())],
    })
    .await;
    let token = app.bootstrap_token().await;
    // A form declared at 1.5 MiB whose first part's headers never end.
    let mut form = TcpStream::connect(app.addr).await.unwrap();
    let tenant = fixtures::tenant_url();
    form.write_all(
        format!(
            "POST /configapi/v2/selfservice/tenant/{tenant} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=XyZb\r\nContent-Length: {}\r\n\r\n--XyZb\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: {}",
            3 << 19,
            "a".repeat(64 << 10)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Its reading has begun once its padding is in the API's hands: the first bytes of the
    // form were read only after its share was taken, so another client's upload of 1 MiB no
    // longer fits.
    let other = provisioner_tests::authorized_client(
        &app.client_token("other", &["tenants:read", "tenants:write"])
            .await,
    );
    let upload = |tenant: String| {
        other
            .put(app.url(&format!("/configapi/v2/tenant/{tenant}")))
            .header("content-type", "application/zip")
            .body(vec![b'P'; 1 << 20])
            .send()
    };
    let refused = eventually(Duration::from_secs(20), || async {
        let r = upload(fixtures::tenant_url()).await.unwrap();
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "5");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("as many templates as its memory allows"),
        "{problem}"
    );
    // The form gone, its share is free again.
    drop(form);
    let answered = eventually(Duration::from_secs(20), || async {
        let r = upload(fixtures::tenant_url()).await.unwrap();
        (r.status() != 503).then_some(r.status())
    })
    .await;
    assert_eq!(answered, 202, "accepted once the budget has room");
    app.stop().await;
}

/// Sends a form create whose body is `pieces`, each as a chunk of its own, until the server
/// answers (at most 60 s) or the pieces run out; the answer and the bytes of pieces sent.
async fn form_in_pieces(
    app: &TestApp,
    pieces: impl Iterator<Item = String> + Send + 'static,
) -> (String, usize) {
    let token = app.bootstrap_token().await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /configapi/v2/selfservice/tenant/{} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=BB\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        fixtures::tenant_url()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let sending = tokio::spawn(async move {
        for piece in pieces {
            let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            counted.fetch_add(piece.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("answered within 60 s, long before the body limit");
    sending.abort();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    (String::from_utf8_lossy(&answer).into_owned(), sent)
}

/// Checks that a form was refused for its headers' pieces before `within` bytes of them went.
fn refused_within((answer, sent): (String, usize), within: usize) {
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("or came in too many pieces"), "{answer}");
    assert!(
        sent < within,
        "{sent} bytes of headers were taken before the answer"
    );
}

/// A part's header of `len` bytes in 64-byte pieces, after its boundary line.
fn long_header_part(name: &str, len: usize) -> impl Iterator<Item = String> + use<> {
    let start = format!("--BB\r\nContent-Disposition: form-data; name=\"{name}\"\r\nX-H: ");
    std::iter::once(start)
        .chain(std::iter::repeat_n("a".repeat(64), len / 64))
        .chain(std::iter::once("\r\n\r\nv\r\n".to_owned()))
}

/// A form whose part headers arrive in small pieces is refused once they pass a bounded read,
/// not read to the body limit: the parser searches everything it holds for their end each
/// time more arrives, and 12 MiB of such headers in 64-byte pieces kept a core busy for 49 s.
#[tokio::test]
async fn a_forms_part_headers_in_small_pieces_end_400_after_a_bounded_read() {
    let app = TestApp::without_workers().await;
    refused_within(
        form_in_pieces(&app, long_header_part("x", 64 << 20)).await,
        16 << 20,
    );
    app.stop().await;
}

/// The bound holds for the whole form, not for each part: parts whose headers each stay within
/// a part's bound (48 KiB in 64-byte pieces) are refused once their searches add up, where
/// each part could spend a part's worth again (64 of them, 64 GiB of searching).
#[tokio::test]
async fn many_parts_with_long_headers_in_small_pieces_end_400() {
    let app = TestApp::without_workers().await;
    let parts = (0..200).flat_map(|i| long_header_part(&format!("x{i}"), 48 << 10));
    refused_within(form_in_pieces(&app, parts).await, 4 << 20);
    app.stop().await;
}

/// An NDJSON batch of few but large items is written as its text reaches a chunk's bytes, not
/// only its items: twenty items of about 60 KB each open the batch's transaction (and take an
/// arriving batch's slot) before the body ends, where 999 such items were all held in memory.
#[tokio::test]
async fn an_ndjson_batch_of_few_large_items_is_written_as_it_arrives() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let http = batches::client(&app, "fat", &["tenants:read", "tenants:write"]).await;
    let fat = |n: usize| -> String {
        let mut item = batches::item(&fixtures::tenant_url(), &template);
        let map: serde_json::Map<String, serde_json::Value> = (0..2_500u64)
            .map(|i| {
                (
                    format!("{}", 1_000_000_000 + i),
                    serde_json::Value::String(format!("{}", 2_000_000_000 + n as u64 * 10_000 + i)),
                )
            })
            .collect();
        item["numberMap"] = serde_json::Value::Object(map);
        format!("{item}\n")
    };
    let first: Vec<String> = (0..20).map(&fat).collect();
    assert!(first.iter().all(|l| l.len() < 64 << 10));
    let (answer, release) = batches::stalled_lines(&app, &http, first, fat(20));
    batches::until_receiving(&app, 1).await;
    drop(release);
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 202);
    let batch: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(batch["counts"]["total"], 21, "{batch}");
    app.stop().await;
}

/// An NDJSON batch being received counts the items it holds (their text and a little per item)
/// and the line it parses in the memory budget, and gives it all back once written: 999 small
/// items held before they are written were counted nowhere.
#[tokio::test]
async fn an_ndjson_batch_counts_the_items_it_holds_in_the_memory_budget() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let http = batches::client(&app, "small", &["tenants:read", "tenants:write"]).await;
    let in_use = || async {
        app.metric("provisioner_template_memory_in_use_bytes")
            .await
            .unwrap_or_default()
    };
    let first: Vec<String> = items(10, &template)
        .iter()
        .map(|i| format!("{i}\n"))
        .collect();
    // The items' text, without the line ends.
    let text: usize = first.iter().map(|l| l.len() - 1).sum();
    let last = format!("{}\n", batches::item(&fixtures::tenant_url(), &template));
    let (answer, release) = batches::stalled_lines(&app, &http, first, last);
    // Ten items held: four bytes a byte of their text and 4 KiB each, in whole KiB.
    let expected = ((text * 4 + 10 * 4096).div_ceil(1024) * 1024) as f64;
    eventually(Duration::from_secs(20), || async {
        (in_use().await == expected).then_some(())
    })
    .await;
    drop(release);
    assert_eq!(answer.await.unwrap().status(), 202);
    eventually(Duration::from_secs(20), || async {
        (in_use().await == 0.0).then_some(())
    })
    .await;
    app.stop().await;
}
