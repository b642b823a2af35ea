//! Batch requests at their edges: the long-poll's `wait`, the client cap checked as items
//! arrive and on retry, idempotent JSON submissions, results past one page, tenant URLs that
//! differ only in case.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use provisioner_tests::{
    Options, TestApp,
    batches::{self, item, items, ndjson, post},
    eventually, fixtures,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

fn id(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

/// The value of an unlabelled gauge in the API's `/metrics` (0 when absent).
async fn gauge(app: &TestApp, name: &str) -> f64 {
    app.metric(name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn batch_wait_holds_a_running_batch_up_to_n_seconds_and_answers_when_it_stops() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let submitted = batches::submit(&app, &items(2, &template)).await;
    let batch_id = id(&submitted, "batchId");
    let path = format!("/configapi/v2/batches/{batch_id}");

    // Still running after N seconds: the batch as it is then.
    let started = Instant::now();
    let (status, held) = app.get_json(&format!("{path}?wait=1")).await;
    assert_eq!(status, 200);
    assert_eq!(held["status"], "running", "{held}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "held {:?}",
        started.elapsed()
    );

    // A wait far past the maximum is clamped, not refused; it answers as soon as the batch stops.
    let waiter = tokio::spawn({
        let http = app.http.clone();
        let url = app.url(&format!("{path}?wait=99999999999999999999999999"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    // Cancel once the wait is held (the gauge counts every test's waits in this process: if
    // another's shows first, this wait may begin after the stop and answer at once, as it must).
    eventually(WITHIN, || async {
        (gauge(&app, "provisioner_http_waits").await >= 1.0).then_some(())
    })
    .await;
    let r = app
        .http
        .post(app.url(&format!("{path}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cancelled_at = Instant::now();
    let (status, stopped) = waiter.await.unwrap();
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "answered {:?} after the stop",
        cancelled_at.elapsed()
    );

    // A stopped batch is answered at once, whatever the wait.
    let started = Instant::now();
    let (status, _) = app.get_json(&format!("{path}?wait=60")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));

    // An empty `wait` is no wait (as a URL template sends it), answered at once.
    let started = Instant::now();
    let (status, _) = app.get_json(&format!("{path}?wait=")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    for bad in ["abc", "-1", "1.5"] {
        let r = app
            .http
            .get(app.url(&format!("{path}?wait={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "wait={bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "wait", "{problem}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_past_the_cap_is_refused_as_its_items_arrive_before_the_body_ends() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "5".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    batches::submit(&app, &items(3, &template)).await;
    // Three more items pass the cap of 5; the body then stalls, as a huge upload would go on.
    let lines: Vec<Result<bytes::Bytes, std::io::Error>> = items(3, &template)
        .iter()
        .map(|i| Ok(format!("{i}\n").into()))
        .collect();
    let body = stream::iter(lines).chain(stream::pending());
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        post(
            &app,
            &app.http,
            "application/x-ndjson",
            reqwest::Body::wrap_stream(body),
        ),
    )
    .await
    .expect("the refusal comes before the body ends");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "this batch would give the client 6 unfinished batch items; its limit is 5; \
         retry when some have ended"
    );
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    app.stop().await;
}

/// Also: the refusal ends its transaction before it answers, so the owner's admission lock is
/// free once the client has the answer (a transaction merely dropped is rolled back only when
/// its connection goes back to the pool, in a task of its own). Several threads, as a server's;
/// without the fix, one of the 500 refusals found the lock still held in each of three runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_that_would_pass_the_clients_cap_is_429_and_retries_nothing() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "3".to_owned()),
            ("PROVISIONER_TEMPLATE_TIMEOUT", "60".to_owned()),
        ],
    })
    .await;
    let missing = format!("http://{}/missing.zip", app.templates.addr);
    let failed = batches::submit(&app, &items(3, &missing)).await;
    let failed_id = id(&failed, "batchId");
    let done = batches::wait(&app, &failed_id, WITHIN).await;
    assert_eq!(done["counts"]["failed"], 3, "{done}");
    // Two items stay unfinished while their template is held.
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let busy = batches::submit(&app, &items(2, &slow)).await;

    let retry = || {
        app.http
            .post(app.url(&format!("/configapi/v2/batches/{failed_id}/retry")))
            .send()
    };
    for _ in 0..500 {
        let r = retry().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(
            app.advisory_locks().await,
            (0, 0),
            "the admission lock is free once the refusal is out"
        );
    }
    let r = retry().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "this retry would give the client 5 unfinished batch items; its limit is 3; \
         retry when some have ended"
    );
    let (_, after) = app
        .get_json(&format!("/configapi/v2/batches/{failed_id}"))
        .await;
    assert_eq!(after, done, "nothing retried");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 5);

    app.templates.release("slow.zip");
    batches::wait(&app, &id(&busy, "batchId"), WITHIN).await;
    let r = retry().await.unwrap();
    assert_eq!(r.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_json_batch_sent_again_with_its_idempotency_key_is_the_same_batch() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let send = |body: &Value| {
        app.http
            .post(app.url("/configapi/v2/batches"))
            .header("idempotency-key", "json-batch-1")
            .json(body)
            .send()
    };
    let mut defaults = fixtures::create_body(&template);
    defaults.as_object_mut().unwrap().remove("tenantName");
    let body = json!({
        "defaults": defaults,
        "items": [
            {"tenantUrl": fixtures::tenant_url(), "tenantName": "One"},
            {"tenantUrl": fixtures::tenant_url(), "tenantName": "Two"},
        ],
    });
    let first = send(&body).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send(&body).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers()["location"],
        format!("/configapi/v2/batches/{}", id(&first, "batchId")).as_str()
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["batchId"], first["batchId"]);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 2);

    let mut other = body.clone();
    other["items"][1]["tenantName"] = json!("Deux");
    let r = send(&other).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn results_of_more_items_than_one_page_come_complete_and_in_item_order() {
    let app = TestApp::without_workers().await;
    let list = items(1_100, "https://templates.example/t.zip");
    let submitted = batches::submit(&app, &list).await;
    let batch_id = id(&submitted, "batchId");
    for query in ["", "?status=queued"] {
        let results = batches::results(&app, &batch_id, query).await;
        assert_eq!(results.len(), 1_100, "{query}");
        for (i, line) in results.iter().enumerate() {
            assert_eq!(line["item"], i, "{query}");
            assert_eq!(line["tenantUrl"], list[i]["tenantUrl"], "{query}");
            assert_eq!(line["status"], "queued");
        }
    }
    assert!(
        batches::results(&app, &batch_id, "?status=failed")
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn results_carry_each_items_submitted_fields_when_asked_never_the_password() {
    let app = TestApp::without_workers().await;
    let template = "https://templates.example/t.zip";
    let (first, second) = (fixtures::tenant_url(), fixtures::tenant_url());
    let mut defaults = fixtures::create_body(template);
    defaults.as_object_mut().unwrap().remove("numberMap");
    let body = json!({
        "defaults": defaults,
        "items": [
            {"tenantUrl": first, "tenantName": "First"},
            {"tenantUrl": second, "numberMap": {"0000000000": "4155550199"}, "lockTimeout": 0},
        ],
    });
    let r = post(&app, &app.http, "application/json", body.to_string()).await;
    assert_eq!(r.status(), 202);
    let batch_id = id(&r.json().await.unwrap(), "batchId");
    let plain = batches::results(&app, &batch_id, "").await;
    assert!(
        plain.iter().all(|l| l.get("fields").is_none()),
        "the contract's lines unless asked"
    );
    let results = batches::results(&app, &batch_id, "?fields=submitted").await;
    let admin = json!({"firstName": "Ada", "lastName": "Lovelace", "loginId": "admin",
        "email": "ada@acme.example", "templateUrl": template});
    let mut expected = [
        json!({"tenantUrl": first, "tenantName": "First", "lockTimeout": 10}),
        json!({"tenantUrl": second, "tenantName": "Acme Support", "lockTimeout": 0,
            "numberMap": {"0000000000": "4155550199"}}),
    ];
    for e in &mut expected {
        e.as_object_mut()
            .unwrap()
            .extend(admin.as_object().unwrap().clone());
    }
    assert_eq!(results.len(), expected.len());
    for (line, expected) in results.iter().zip(&expected) {
        assert_eq!(
            &line["fields"], expected,
            "the defaults under the item's own"
        );
    }
    let text = serde_json::to_string(&results).unwrap();
    assert!(
        !text.contains(fixtures::SENTINEL_PASSWORD),
        "never the password"
    );
    let r = app
        .http
        .get(app.url(&format!(
            "/configapi/v2/batches/{batch_id}/results?fields=all"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn tenant_urls_that_differ_only_in_case_are_one_url_within_a_batch() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let url = fixtures::tenant_url();
    let upper = url.to_ascii_uppercase();
    let r = post(
        &app,
        &app.http,
        "application/x-ndjson",
        ndjson(&[item(&upper, &template), item(&url, &template)]),
    )
    .await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["errors"],
        json!([{"item": 1, "line": 2, "field": "tenantUrl",
            "message": format!("{url} is named by an earlier item; tenant URLs must be distinct")}]),
        "{problem}"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);

    // Named with the items' other faults, wherever they are: every problem at once.
    let mut first = item(&url, &template);
    first["email"] = json!("not an address");
    let mut second = item(&upper, &template);
    second.as_object_mut().unwrap().remove("tenantName");
    // More faults than the answer has room for: the repeated URL is still named.
    for i in 0..120 {
        second[format!("zz{i}")] = json!(1);
    }
    let r = post(
        &app,
        &app.http,
        "application/json",
        json!({"items": [first, second]}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    let named: Vec<(i64, &str)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["item"].as_i64().unwrap(), e["field"].as_str().unwrap()))
        .take(3)
        .collect();
    assert_eq!(
        named,
        [(0, "email"), (1, "tenantUrl"), (1, "tenantName")],
        "{problem}"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);

    // Accepted alone, the item's URL is stored lower-case.
    let submitted = batches::submit(&app, &[item(&upper, &template)]).await;
    let results = batches::results(&app, &id(&submitted, "batchId"), "").await;
    assert_eq!(results[0]["tenantUrl"], url.as_str());
    app.stop().await;
}

/// While a batch's body is still arriving, its transaction (open since the first chunk of
/// items) holds no lock on the counters every create and claim updates: it counts its items
/// as it commits.
#[tokio::test]
async fn a_batch_whose_body_is_still_arriving_holds_no_shared_counter() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    // Every shard's counter row of queued jobs exists, as on a system that ran a while.
    sqlx::query(
        "INSERT INTO job_counts (status, shard, n) SELECT 'queued', s, 0
         FROM generate_series(0, 15) s ON CONFLICT DO NOTHING",
    )
    .execute(&app.db)
    .await
    .unwrap();
    // More items than one chunk, so some are inserted, then the body stalls until released.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first: Vec<Result<bytes::Bytes, std::io::Error>> = items(1_001, &template)
        .iter()
        .map(|i| Ok(format!("{i}\n").into()))
        .collect();
    let last = format!("{}\n", item(&fixtures::tenant_url(), &template));
    let body = stream::iter(first).chain(stream::once(async move {
        released.await.ok();
        Ok(bytes::Bytes::from(last))
    }));
    let request = tokio::spawn({
        let (url, http) = (app.url("/configapi/v2/batches"), app.http.clone());
        async move {
            http.post(url)
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .unwrap()
        }
    });
    // The first chunk is in: its transaction has written the items' events.
    eventually(WITHIN, || async {
        let writers = app
            .table_locks("outbox", "l.mode = 'RowExclusiveLock'")
            .await;
        (writers > 0).then_some(())
    })
    .await;
    let mut probe = app.db.begin().await.unwrap();
    let locked = sqlx::query("SELECT n FROM job_counts FOR UPDATE NOWAIT")
        .fetch_all(&mut *probe)
        .await;
    probe.rollback().await.unwrap();
    assert!(
        locked.is_ok(),
        "a counter row is held by the batch being received: {locked:?}"
    );

    release.send(()).unwrap();
    let r = request.await.unwrap();
    assert_eq!(r.status(), 202);
    // Counted once it committed: the counters agree with the jobs.
    assert_eq!(
        app.count("SELECT coalesce(sum(n), 0)::bigint FROM job_counts WHERE status = 'queued'")
            .await,
        1_002
    );
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE status = 'queued'")
            .await,
        1_002
    );
    app.stop().await;
}
