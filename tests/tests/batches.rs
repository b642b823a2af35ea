//! Batches end to end: acceptance (JSON and NDJSON, all-or-nothing validation, limits,
//! idempotency), exact counts, results, events, one pinned download per URL, cancel, retry,
//! visibility, the client cap.

use std::time::Duration;

use provisioner_tests::{
    BOOTSTRAP_ID, Options, TestApp,
    batches::{self, assert_counts_add_up, item, items, ndjson, post},
    events::EventTap,
    fixtures,
    template_server::Route,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

fn id(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

/// Waits until some job has succeeded: the workers are taking the batch's items.
async fn until_a_job_succeeded(app: &TestApp) {
    provisioner_tests::eventually(WITHIN, || async {
        (app.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await
            > 0)
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_json_batch_with_defaults_runs_every_item_and_reports_exact_results_in_order() {
    let app = TestApp::spawn().await;
    let template = app.serve_sample_template("t.zip").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let urls: Vec<String> = (0..5).map(|_| fixtures::tenant_url()).collect();
    let mut defaults = fixtures::create_body(&template);
    defaults.as_object_mut().unwrap().remove("tenantName");
    let body = json!({
        "defaults": defaults,
        "items": urls.iter().enumerate().map(|(i, u)| json!({"tenantUrl": u, "tenantName": format!("T{i}")})).collect::<Vec<_>>(),
    });
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let batch: Value = r.json().await.unwrap();
    let batch_id = id(&batch, "batchId");
    assert_eq!(location, format!("/configapi/v2/batches/{batch_id}"));
    assert_eq!(batch["status"], "running");
    assert_eq!(batch["counts"]["total"], 5);
    assert_counts_add_up(&batch);

    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 5, "{done}");
    assert!(done["finishedAt"].is_string());
    assert_counts_add_up(&done);

    let results = batches::results(&app, &batch_id, "").await;
    assert_eq!(results.len(), 5);
    for (i, line) in results.iter().enumerate() {
        assert_eq!(line["item"], i, "{line}");
        assert_eq!(line["tenantUrl"], urls[i].as_str());
        assert_eq!(line["status"], "succeeded");
        assert_eq!(line["code"], 200);
        assert_eq!(
            line["tenant"]["name"],
            format!("T{i}"),
            "defaults under the item's own"
        );
        let (_, job) = app
            .get_json(&format!("/configapi/v2/jobs/{}", id(line, "jobId")))
            .await;
        assert_eq!(job["batchId"], batch_id.as_str());
        assert_eq!(job["batchItem"], i);
    }
    assert!(
        batches::results(&app, &batch_id, "?status=failed")
            .await
            .is_empty()
    );

    // Every item's events carry `batchid`; the batch's stop is announced once. (The stop commits
    // with the last item's end, but events reach the broker through more than one relay, which
    // the contract does not order: an earlier item's may come after it.)
    let events = tap
        .collect_until(|e| {
            e.iter().any(|e| e.routing_key == "batch.completed")
                && e.iter()
                    .filter(|e| e.routing_key.starts_with("job."))
                    .count()
                    >= 15
        })
        .await;
    let job_events: Vec<_> = events
        .iter()
        .filter(|e| e.routing_key.starts_with("job."))
        .collect();
    assert!(
        job_events.len() >= 15,
        "queued, running, succeeded for 5 items"
    );
    for e in &job_events {
        assert_eq!(e.body["batchid"], batch_id.as_str(), "{}", e.body);
    }
    let stops: Vec<_> = events
        .iter()
        .filter(|e| e.routing_key.starts_with("batch."))
        .collect();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].body["type"], "io.provisioner.batch.completed");
    assert_eq!(stops[0].body["subject"], batch_id.as_str());
    assert_eq!(stops[0].body["data"]["counts"]["succeeded"], 5);
    // A single create's events carry no batchid.
    let single = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&template))
        .await;
    let events = tap
        .collect_until(|e| {
            e.iter()
                .any(|e| e.body["subject"] == single["jobId"] && e.routing_key == "job.succeeded")
        })
        .await;
    assert!(
        events
            .iter()
            .filter(|e| e.body["subject"] == single["jobId"])
            .all(|e| e.body.get("batchid").is_none())
    );
    app.stop().await;
}

#[tokio::test]
async fn any_invalid_item_refuses_the_whole_batch_naming_items_and_lines() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let good = items(3, &template);
    let mut bad = item("bad_host", &template);
    bad["email"] = json!("nope");
    let dup = good[0].clone();
    // Lines: 1 good, 2 blank, 3 good, 4 bad (two fields), 5 not JSON, 6 good, 7 duplicate URL.
    let body = format!(
        "{}\n\n{}\n{}\n{{not json\n{}\n{}\n",
        good[0], good[1], bad, good[2], dup
    );
    let r = post(&app, &app.http, "application/x-ndjson", body).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 items are invalid"),
        "{problem}"
    );
    let errors = problem["errors"].as_array().unwrap();
    let at = |item: u64, line: u64, field: &str| {
        errors
            .iter()
            .any(|e| e["item"] == item && e["line"] == line && e["field"] == field)
    };
    assert!(at(2, 4, "tenantUrl"), "{problem}");
    assert!(at(2, 4, "email"), "{problem}");
    assert!(at(3, 5, ""), "{problem}");
    assert!(at(5, 7, "tenantUrl"), "{problem}");
    assert_eq!(errors.len(), 4, "{problem}");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);

    // JSON: items named by position only.
    let body = json!({"items": [good[0], {"tenantUrl": "x.example.com"}]});
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    let errors = problem["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e["item"] == 1 && e.get("line").is_none()),
        "{problem}"
    );
    assert!(errors.iter().any(|e| e["field"] == "password"));
    // At most 100 problems are listed; the detail counts every invalid item.
    let many: Vec<Value> = (0..150)
        .map(|_| json!({"tenantUrl": fixtures::tenant_url()}))
        .collect();
    let r = post(&app, &app.http, "application/x-ndjson", ndjson(&many)).await;
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 100);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("150 items are invalid"),
        "{problem}"
    );
    // A line over 64 KiB is that item's problem (field ""), named in the same 400.
    let long = format!(
        "{}\n{{\"tenantName\": \"{}\"}}\n",
        good[0],
        "x".repeat(64 * 1024)
    );
    let r = post(&app, &app.http, "application/x-ndjson", long).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["errors"],
        json!([{"item": 1, "line": 2, "field": "",
            "message": "an item may be at most 65536 bytes"}]),
        "{problem}"
    );
    // Empty batches, unknown members, wrong media types.
    let r = post(&app, &app.http, "application/x-ndjson", "\n \n").await;
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&json!({"items": [], "extra": 1}))
        .send()
        .await
        .unwrap();
    let problem: Value = r.json().await.unwrap();
    let fields: Vec<_> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].clone())
        .collect();
    assert!(
        fields.contains(&json!("extra")) && fields.contains(&json!("items")),
        "{problem}"
    );
    let r = post(&app, &app.http, "text/csv", "a,b\n").await;
    assert_eq!(r.status(), 415);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn more_items_than_allowed_is_413_and_nothing_is_created() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_BATCH_MAX_ITEMS", "3".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let r = post(
        &app,
        &app.http,
        "application/x-ndjson",
        ndjson(&items(4, &template)),
    )
    .await;
    assert_eq!(r.status(), 413);
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&json!({"items": items(4, &template)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    let r = post(
        &app,
        &app.http,
        "application/x-ndjson",
        ndjson(&items(3, &template)),
    )
    .await;
    assert_eq!(r.status(), 202);
    app.stop().await;
}

/// An NDJSON body has at most `PROVISIONER_BATCH_MAX_BYTES`: past them `413`, nothing created,
/// however the bytes come (items, or one line that never ends, which before was read into
/// nothing for as long as it came), and at once when its declared length is longer. A JSON
/// batch body has at most the same when it is less than its own 8 MiB.
#[tokio::test]
async fn an_ndjson_body_past_its_bytes_is_413_and_nothing_is_created() {
    let template = "https://templates.example/t.zip";
    let three = ndjson(&items(3, template));
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_BATCH_MAX_BYTES", three.len().to_string())],
    })
    .await;
    let said = format!("an NDJSON batch may have at most {} bytes", three.len());
    for body in [ndjson(&items(4, template)), "x".repeat(3 * three.len())] {
        let r = post(&app, &app.http, "application/x-ndjson", body).await;
        assert_eq!(r.status(), 413);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["detail"], said, "{p}");
    }
    // Declared longer, refused before any of it is read (the body never comes).
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let token = app.bootstrap_token().await;
    let head = format!(
        "POST /configapi/v2/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        three.len() + 1
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer),
    )
    .await
    .expect("an answer before the body")
    .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    // A JSON batch has the smaller of its own bound and this one.
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&json!({"items": items(4, template)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["detail"],
        format!("a batch body may be at most {} bytes", three.len()),
        "{p}"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    let r = post(&app, &app.http, "application/x-ndjson", three).await;
    assert_eq!(r.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_json_body_holds_at_most_a_thousand_items() {
    let app = TestApp::without_workers().await;
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .json(&json!({"items": items(1001, "https://t.example/t.zip")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_batch() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let body = ndjson(&items(3, &template));
    let send = |body: String| {
        app.http
            .post(app.url("/configapi/v2/batches"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "batch-1")
            .body(body)
            .send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["batchId"], first["batchId"]);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    let other = send(ndjson(&items(3, &template))).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_key_names_one_request_of_its_client_whatever_its_route() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let (items, tenant) = (ndjson(&items(2, &template)), fixtures::tenant_url());
    let batch = |key: &'static str| {
        app.http
            .post(app.url("/configapi/v2/batches"))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", key)
            .body(items.clone())
            .send()
    };
    let create = |key: &'static str| {
        app.http
            .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
            .header("idempotency-key", key)
            .json(&fixtures::create_body(&template))
            .send()
    };
    // A job's key, then a batch with it: 422, nothing made.
    assert_eq!(create("one").await.unwrap().status(), 202);
    let r = batch("one").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    // A batch's key, then a create with it (of another tenant: the first create's is
    // active): the same.
    assert_eq!(batch("two").await.unwrap().status(), 202);
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .header("idempotency-key", "two")
        .json(&fixtures::create_body(&template))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    assert_eq!(create("one").await.unwrap().status(), 202, "replayed");
    // Each still replays on its own route.
    assert_eq!(batch("two").await.unwrap().status(), 202);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_item_whose_tenant_exists_ends_with_409_and_the_batch_completes() {
    let app = TestApp::spawn().await;
    let template = app.serve_sample_template("t.zip").await;
    let existing = fixtures::tenant_url();
    app.create_and_wait(&existing, &fixtures::create_body(&template))
        .await;
    let mut list = items(2, &template);
    list.push(item(&existing, &template));
    let batch = batches::submit(&app, &list).await;
    let done = batches::wait(&app, &id(&batch, "batchId"), WITHIN).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["counts"]["succeeded"], 2, "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let failed = batches::results(&app, &id(&batch, "batchId"), "?status=failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["item"], 2);
    assert_eq!(failed[0]["code"], 409);
    app.stop().await;
}

#[tokio::test]
async fn items_of_a_batch_share_one_download_of_their_template_url_pinned() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(6, &template)).await;
    let batch_id = id(&batch, "batchId");
    let mut app = app;
    app.start_worker();
    // Once the first item has its template, the server's file changes: the rest use the pin.
    provisioner_tests::eventually(WITHIN, || async {
        (app.count(&format!("SELECT count(*) FROM batch_downloads WHERE batch_id = '{batch_id}' AND template_id IS NOT NULL")).await == 1).then_some(())
    })
    .await;
    app.templates.put("t.zip", b"not a zip any more".to_vec());
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 6, "{done}");
    assert_eq!(app.templates.hits("t.zip"), 1);
    // The pinned bytes are in the store, kept as long as the batch.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM batch_templates WHERE batch_id = '{batch_id}'"
        ))
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_url_that_fails_for_good_fails_every_item_with_one_request() {
    let app = TestApp::spawn().await;
    let missing = format!("http://{}/missing.zip", app.templates.addr);
    let batch = batches::submit(&app, &items(4, &missing)).await;
    let done = batches::wait(&app, &id(&batch, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["failed"], 4, "{done}");
    let failed = batches::results(&app, &id(&batch, "batchId"), "").await;
    let details: std::collections::HashSet<_> = failed
        .iter()
        .map(|l| (l["code"].clone(), l["error"]["detail"].clone()))
        .collect();
    assert_eq!(details.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["code"], 400);
    assert_eq!(app.templates.hits("missing.zip"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_url_that_keeps_failing_is_asked_at_most_max_attempts_times_for_the_batch() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "3".to_owned())],
    })
    .await;
    let url = app.templates.route(
        "down.zip",
        Route {
            status: 200,
            body: Vec::new().into(),
            fail_first: usize::MAX,
        },
    );
    let batch = batches::submit(&app, &items(5, &url)).await;
    let done = batches::wait(&app, &id(&batch, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["failed"], 5, "{done}");
    for line in batches::results(&app, &id(&batch, "batchId"), "").await {
        assert_eq!(line["code"], 500, "{line}");
        // Every item says how often the batch asked, as a single create's last fault does.
        let detail = line["error"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(
                "the batch's template download failed 3 times with transient faults; the last: "
            ),
            "{line}"
        );
    }
    assert_eq!(app.templates.hits("down.zip"), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_download_whose_last_fetcher_never_reported_fails_every_item_saying_so() {
    let mut app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "3".to_owned())],
    })
    .await;
    let url = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(2, &url)).await;
    let batch_id = id(&batch, "batchId");
    // Its last attempt taken by a fetcher whose lease ran out without a word.
    sqlx::query(
        "INSERT INTO batch_downloads (batch_id, url, attempts, fetcher, fetch_until)
         VALUES ($1::uuid, $2, 3, gen_random_uuid(), now() - interval '1 second')",
    )
    .bind(&batch_id)
    .bind(&url)
    .execute(&app.db)
    .await
    .unwrap();
    app.start_worker();
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["failed"], 2, "{done}");
    for line in batches::results(&app, &batch_id, "").await {
        assert_eq!(line["code"], 500, "{line}");
        assert_eq!(
            line["error"]["detail"],
            "the batch's template download failed 3 times with transient faults; the last: \
             it did not end within its lease",
            "{line}"
        );
    }
    assert_eq!(app.templates.hits("t.zip"), 0, "not asked a fourth time");
    app.stop().await;
}

#[tokio::test]
async fn cancel_stops_queued_items_once_and_is_idempotent() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let batch = batches::submit(&app, &items(4, &template)).await;
    let batch_id = id(&batch, "batchId");
    let cancel = || {
        app.http
            .post(app.url(&format!("/configapi/v2/batches/{batch_id}/cancel")))
            .send()
    };
    let r = cancel().await.unwrap();
    assert_eq!(r.status(), 200);
    let cancelled: Value = r.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["counts"]["cancelled"], 4);
    assert_counts_add_up(&cancelled);
    let again: Value = cancel().await.unwrap().json().await.unwrap();
    assert_eq!(again, cancelled);
    let events = tap
        .collect_until(|e| {
            e.iter()
                .filter(|e| e.routing_key == "job.cancelled")
                .count()
                == 4
                && e.iter().any(|e| e.routing_key == "batch.cancelled")
        })
        .await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.routing_key.starts_with("batch."))
            .count(),
        1
    );
    // A worker started now finds nothing to do.
    let mut app = app;
    app.start_worker();
    let (_, after) = app
        .get_json(&format!("/configapi/v2/batches/{batch_id}"))
        .await;
    assert_eq!(after["counts"]["cancelled"], 4);
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn retry_gives_failed_items_new_jobs_and_keeps_the_old_ones_readable() {
    let app = TestApp::spawn().await;
    let late = format!("http://{}/late.zip", app.templates.addr);
    let list = items(3, &late);
    let batch = batches::submit(&app, &list).await;
    let batch_id = id(&batch, "batchId");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["failed"], 3);
    let old = batches::results(&app, &batch_id, "").await;
    // Nothing failed with 503: nothing to retry.
    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/batches/{batch_id}/retry?code=503")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The template appears; a retry of the 400s runs them again.
    app.serve_sample_template("late.zip").await;
    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/batches/{batch_id}/retry?code=400")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let retried: Value = r.json().await.unwrap();
    assert_eq!(retried["status"], "running");
    assert_eq!(retried["counts"]["total"], 3);
    assert_counts_add_up(&retried);
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["counts"]["succeeded"], 3, "{done}");
    assert_eq!(done["counts"]["total"], 3);
    let new = batches::results(&app, &batch_id, "").await;
    for (o, n) in old.iter().zip(&new) {
        assert_eq!(o["item"], n["item"]);
        assert_ne!(o["jobId"], n["jobId"]);
        let (status, old_job) = app
            .get_json(&format!("/configapi/v2/jobs/{}", id(o, "jobId")))
            .await;
        assert_eq!(status, 200);
        assert_eq!(old_job["status"], "failed");
        assert_eq!(old_job["batchItem"], o["item"]);
    }
    // The retried admin got the password the batch was submitted with.
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE login_id = 'admin' AND password_hash LIKE '$argon2id$%'").await,
        3
    );
    // Sealed passwords of replaced and succeeded jobs are erased.
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE sealed_password IS NOT NULL")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn batches_are_seen_only_by_their_client_and_by_operators() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(2, &template)).await;
    let batch_id = id(&batch, "batchId");
    let other = batches::client(&app, "other", &["tenants:read", "tenants:write"]).await;
    let operator = batches::client(&app, "ops", &["tenants:read", "provisioner:admin"]).await;
    for (method, path) in [
        ("GET", format!("/configapi/v2/batches/{batch_id}")),
        ("GET", format!("/configapi/v2/batches/{batch_id}/results")),
        ("POST", format!("/configapi/v2/batches/{batch_id}/cancel")),
        ("POST", format!("/configapi/v2/batches/{batch_id}/retry")),
        // Whose the batch is comes before what the query asks: 404, not 400.
        ("GET", format!("/configapi/v2/batches/{batch_id}?wait=x")),
        (
            "GET",
            format!("/configapi/v2/batches/{batch_id}/results?status=nope"),
        ),
        (
            "GET",
            format!("/configapi/v2/batches/{batch_id}/results?fields=all"),
        ),
        (
            "POST",
            format!("/configapi/v2/batches/{batch_id}/retry?code=abc"),
        ),
    ] {
        let r = other
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    // To its owner the same queries are 400.
    for (method, path) in [
        ("GET", format!("/configapi/v2/batches/{batch_id}?wait=x")),
        (
            "GET",
            format!("/configapi/v2/batches/{batch_id}/results?status=nope"),
        ),
        (
            "POST",
            format!("/configapi/v2/batches/{batch_id}/retry?code=abc"),
        ),
    ] {
        let r = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} {path}");
    }
    let list: Value = other
        .get(app.url("/configapi/v2/batches"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    let seen = operator
        .get(app.url(&format!("/configapi/v2/batches/{batch_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    // Read-only operators cannot steer: the scope is checked first.
    let r = operator
        .post(app.url(&format!("/configapi/v2/batches/{batch_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The owner's list, newest first, paged.
    let second = batches::submit(&app, &items(1, &template)).await;
    let (_, page) = app.get_json("/configapi/v2/batches?limit=1").await;
    assert_eq!(page["items"][0]["batchId"], second["batchId"]);
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, page) = app
        .get_json(&format!("/configapi/v2/batches?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page["items"][0]["batchId"], batch_id.as_str());
    assert_eq!(page["nextCursor"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_past_the_clients_unfinished_items_cap_is_429_and_creates_nothing() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "5".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    batches::submit(&app, &items(3, &template)).await;
    let r = post(
        &app,
        &app.http,
        "application/x-ndjson",
        ndjson(&items(3, &template)),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    batches::submit(&app, &items(2, &template)).await;
    app.stop().await;
}

#[tokio::test]
async fn counts_read_while_a_batch_runs_always_add_up_and_never_go_back() {
    let app = TestApp::with(Options {
        workers: 2,
        vars: vec![],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(20, &template)).await;
    let batch_id = id(&batch, "batchId");
    let mut last_ended = 0;
    loop {
        let (_, now) = app
            .get_json(&format!("/configapi/v2/batches/{batch_id}"))
            .await;
        assert_counts_add_up(&now);
        let c = &now["counts"];
        let ended = c["succeeded"].as_i64().unwrap() + c["failed"].as_i64().unwrap();
        assert!(ended >= last_ended, "{now}");
        last_ended = ended;
        // The counts equal the jobs' committed states.
        if now["status"] != "running" {
            let succeeded = app
                .count(&format!("SELECT count(*) FROM jobs WHERE batch_id = '{batch_id}' AND status = 'succeeded'"))
                .await;
            assert_eq!(c["succeeded"].as_i64().unwrap(), succeeded);
            assert_eq!(succeeded, 20);
            break;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn another_clients_single_create_is_not_held_back_by_a_big_batch() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_WORKER_CONCURRENCY", "2".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let big = batches::submit(&app, &items(300, &template)).await;
    let b = batches::client(&app, "b", &["tenants:read", "tenants:write"]).await;
    // A's items are running before B submits.
    until_a_job_succeeded(&app).await;
    let r = b
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .header("prefer", "wait=30")
        .json(&fixtures::create_body(&template))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "B's create finished while A's batch runs");
    let (_, a) = app
        .get_json(&format!("/configapi/v2/batches/{}", id(&big, "batchId")))
        .await;
    assert_eq!(a["status"], "running");
    assert!(
        a["counts"]["queued"].as_i64().unwrap() > 200,
        "A's batch is far from done: {a}"
    );
    app.stop().await;
}

/// Past its first `PROVISIONER_CLIENT_INTERACTIVE_JOBS` active single jobs, a client's creates
/// go to the backlog queue, which a worker serves only when no interactive job waits: another
/// client's create takes the first slot that frees, not the place behind them.
#[tokio::test]
async fn another_clients_single_create_is_not_held_back_by_a_clients_many_single_creates() {
    use provisioner_shared::queue::CREATE_TENANT_QUEUE;
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "2".to_owned()),
            ("PROVISIONER_CLIENT_INTERACTIVE_JOBS", "1".to_owned()),
        ],
    })
    .await;
    let sample = fixtures::sample_template(app.db_version().await).write();
    let first = app.templates.put("first.zip", sample.clone());
    let rest = app.templates.put("rest.zip", sample.clone());
    let fast = app.templates.put("fast.zip", sample);
    app.templates.hold("first.zip");
    app.templates.hold("rest.zip");
    // A's first create (interactive) and second (on the backlog queue) hold both slots,
    // downloading their template; four more wait on the backlog queue.
    for _ in 0..2 {
        app.submit(&fixtures::tenant_url(), &fixtures::create_body(&first))
            .await;
        let hits = app.templates.hits("first.zip") + 1;
        provisioner_tests::eventually(WITHIN, || async {
            (app.templates.hits("first.zip") == hits).then_some(())
        })
        .await;
    }
    let mut a_rest = Vec::new();
    for _ in 0..4 {
        a_rest.push(
            app.submit(&fixtures::tenant_url(), &fixtures::create_body(&rest))
                .await,
        );
    }
    let b = batches::client(&app, "b", &["tenants:read", "tenants:write"]).await;
    let r = b
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .json(&fixtures::create_body(&fast))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let b_job = id(&r.json::<Value>().await.unwrap(), "jobId");
    // Every job message is on the broker, and B's (with A's first) at the worker, waiting for
    // a slot beside A's next backlog one.
    provisioner_tests::eventually(WITHIN, || async {
        let interactive = app.queue_depths(CREATE_TENANT_QUEUE).await;
        let backlog = app.backlog_depths().await;
        (interactive == (0, 2) && backlog.0 + backlog.1 == 5).then_some(())
    })
    .await;
    app.templates.release("first.zip");
    // Without the backlog queue, A's next two take the freed slots and hold them: B's create
    // would not start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job: Value = b
            .get(app.url(&format!("/configapi/v2/jobs/{b_job}?wait=5")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] != "queued" && job["status"] != "running" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's create did not end: {job}; {}",
            app.queue_consumers().await
        );
    };
    assert_eq!(job["status"], "succeeded", "B's create: {job}");
    // A's later creates are still waiting for their template, or for a slot.
    for a in &a_rest {
        let (_, a) = app.get_json(&format!("/configapi/v2/jobs/{a}")).await;
        assert!(a["status"] == "queued" || a["status"] == "running", "{a}");
    }
    app.templates.release("rest.zip");
    app.stop().await;
}

/// A client's creates past its first few wait behind other clients' creates of no higher rank
/// among their own, not behind every create queued before them: with client A's forty creates
/// queued behind one slot, client B's three (its first interactive, the next two in the
/// backlog's two lowest tiers) start after a few of A's. With one backlog queue served in
/// arrival order, B's second and third started after all of A's.
#[tokio::test]
async fn a_clients_creates_past_its_first_wait_behind_a_few_of_another_clients_many() {
    use provisioner_shared::queue::CREATE_TENANT_QUEUE;
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "1".to_owned()),
            ("PROVISIONER_CLIENT_INTERACTIVE_JOBS", "1".to_owned()),
        ],
    })
    .await;
    let sample = fixtures::sample_template(app.db_version().await).write();
    let first = app.templates.put("first.zip", sample.clone());
    let rest = app.templates.put("rest.zip", sample);
    app.templates.hold("first.zip");
    // A's first create holds the one slot, downloading its template.
    app.submit(&fixtures::tenant_url(), &fixtures::create_body(&first))
        .await;
    provisioner_tests::eventually(WITHIN, || async {
        (app.templates.hits("first.zip") == 1).then_some(())
    })
    .await;
    for _ in 0..39 {
        app.submit(&fixtures::tenant_url(), &fixtures::create_body(&rest))
            .await;
    }
    let b = batches::client(&app, "b", &["tenants:read", "tenants:write"]).await;
    for _ in 0..3 {
        let r = b
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body(&rest))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Every job message is on the broker: A's first (at the worker) and B's first on the
    // interactive queue, the other 41 in the backlog's tiers.
    provisioner_tests::eventually(WITHIN, || async {
        let interactive = app.queue_messages(CREATE_TENANT_QUEUE).await;
        (interactive == 2 && app.backlog_messages().await == 41).then_some(())
    })
    .await;
    app.templates.release("first.zip");
    let b_ended = "SELECT count(*) FROM jobs WHERE client_id = 'b' AND status = 'succeeded'";
    provisioner_tests::eventually(Duration::from_secs(60), || async {
        (app.count(b_ended).await == 3).then_some(())
    })
    .await;
    // B's last start against A's: A's first, the two of A's ranks before B's in the lowest
    // tiers, and one or two that took the slot while B's next message was on its way from the
    // broker (each queue's consumer holds one delivery at this concurrency).
    let a_before = app
        .count(&format!(
            "SELECT count(*) FROM jobs WHERE client_id = '{BOOTSTRAP_ID}'
               AND started_at < (SELECT max(started_at) FROM jobs WHERE client_id = 'b')"
        ))
        .await;
    assert!(
        a_before <= 8,
        "{a_before} of A's 40 creates started before B's third"
    );
    app.stop().await;
}

#[tokio::test]
async fn within_a_client_a_single_create_goes_ahead_of_its_queued_batch_items() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_WORKER_CONCURRENCY", "1".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let big = batches::submit(&app, &items(100, &template)).await;
    until_a_job_succeeded(&app).await;
    let single = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&template))
        .await;
    let job = app.wait_job(&single).await;
    assert_eq!(job["status"], "succeeded");
    // With one slot, a batch item may start between the single's acceptance and its start
    // only if it took the slot before the single's message reached the worker.
    let overtaking = app
        .count(&format!(
            "SELECT count(*) FROM jobs j, jobs s WHERE s.id = '{single}' AND j.batch_id = '{}'
               AND j.started_at > s.created_at AND j.started_at < s.started_at",
            id(&big, "batchId")
        ))
        .await;
    assert!(
        overtaking <= 1,
        "{overtaking} batch items started while the single create waited"
    );
    let (_, a) = app
        .get_json(&format!("/configapi/v2/batches/{}", id(&big, "batchId")))
        .await;
    assert!(a["counts"]["queued"].as_i64().unwrap() > 50, "{a}");
    app.stop().await;
}

/// A client's single creates past its first few (on the backlog queue, which takes turns with
/// batch items at a worker) still go ahead of its own batch items: the dispatcher releases none
/// of its items while it has them, so only the items already released may run in between.
#[tokio::test]
async fn within_a_client_its_many_single_creates_go_ahead_of_its_batch_items() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "1".to_owned()),
            ("PROVISIONER_CLIENT_INTERACTIVE_JOBS", "1".to_owned()),
            ("PROVISIONER_DISPATCH_WINDOW", "2".to_owned()),
        ],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let big = batches::submit(&app, &items(100, &template)).await;
    until_a_job_succeeded(&app).await;
    let mut singles = Vec::new();
    for _ in 0..8 {
        singles.push(
            app.submit(&fixtures::tenant_url(), &fixtures::create_body(&template))
                .await,
        );
    }
    for single in &singles {
        assert_eq!(app.wait_job(single).await["status"], "succeeded");
    }
    let ids = singles
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let overtaking = app
        .count(&format!(
            "SELECT count(*) FROM jobs j WHERE j.batch_id = '{}'
               AND j.started_at > (SELECT min(created_at) FROM jobs WHERE id IN ({ids}))
               AND j.started_at < (SELECT max(started_at) FROM jobs WHERE id IN ({ids}))",
            id(&big, "batchId")
        ))
        .await;
    // The window's two released items, and one that took the slot as the first single came.
    assert!(
        overtaking <= 3,
        "{overtaking} batch items started while the client's single creates waited"
    );
    app.stop().await;
}

#[tokio::test]
async fn items_may_name_a_stored_template_by_id_and_an_unknown_id_is_the_items_problem() {
    let app = TestApp::spawn().await;
    let zip = fixtures::sample_template(app.db_version().await).write();
    let r = app
        .http
        .post(app.url("/configapi/v2/templates?name=support"))
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let stored: Value = r.json().await.unwrap();
    let template_id = id(&stored, "templateId");
    let by_id = |url: &str, template: &str| {
        let mut it = item(url, "unused");
        it.as_object_mut().unwrap().remove("templateUrl");
        it["templateId"] = json!(template);
        it
    };
    let unknown = "0".repeat(64);
    let list = [
        by_id(&fixtures::tenant_url(), &unknown),
        by_id(&fixtures::tenant_url(), &template_id),
    ];
    let r = post(&app, &app.http, "application/x-ndjson", ndjson(&list)).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["errors"],
        json!([{"item": 0, "line": 1, "field": "templateId",
        "message": format!("no template {unknown} is stored by this client")}])
    );
    // With another problem, both are named at once, as for a single create.
    let mut short = by_id(&fixtures::tenant_url(), &unknown);
    short["password"] = json!("short");
    let r = post(&app, &app.http, "application/x-ndjson", ndjson(&[short])).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["password", "templateId"], "{problem}");
    // Both fields, or neither, name both.
    let mut both = by_id(&fixtures::tenant_url(), &template_id);
    both["templateUrl"] = json!("https://t.example/t.zip");
    let mut neither = by_id(&fixtures::tenant_url(), &template_id);
    neither.as_object_mut().unwrap().remove("templateId");
    let r = post(
        &app,
        &app.http,
        "application/x-ndjson",
        ndjson(&[both, neither]),
    )
    .await;
    let problem: Value = r.json().await.unwrap();
    for item in [0, 1] {
        for field in ["templateUrl", "templateId"] {
            assert!(
                problem["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["item"] == item && e["field"] == field),
                "{problem}"
            );
        }
    }
    let batch = batches::submit(
        &app,
        &[
            by_id(&fixtures::tenant_url(), &template_id),
            by_id(&fixtures::tenant_url(), &template_id),
        ],
    )
    .await;
    let batch_id = id(&batch, "batchId");
    // The batch pins the template: the client's delete does not remove it from under the items.
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/templates/{template_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 2, "{done}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM templates WHERE id = '{template_id}'"
        ))
        .await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_single_create_for_a_url_a_queued_batch_item_names_is_409() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let url = fixtures::tenant_url();
    batches::submit(&app, &[item(&url, &template)]).await;
    let r = app.create(&url, &fixtures::create_body(&template)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    app.stop().await;
}

/// The cancelled count of batch `batch_id`, read in the database.
async fn cancelled_count(app: &TestApp, batch_id: &str) -> i64 {
    app.count(&format!(
        "SELECT cancelled::bigint FROM batches WHERE id = '{batch_id}'"
    ))
    .await
}

/// A large batch's cancel commits a chunk of its items at a time: no transaction holds the rows
/// of the whole batch, which in one transaction kept every worker that reached one of them (and
/// other clients' jobs behind those workers) waiting for minutes. Here one item's row is held:
/// the chunks before it are committed while the cancel waits for it, and once it is free the
/// cancel ends with every item cancelled.
#[tokio::test]
async fn a_large_batch_is_cancelled_a_chunk_per_transaction() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(2_500, &template)).await;
    let batch_id = id(&batch, "batchId");
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM jobs WHERE batch_id = '{batch_id}' AND batch_item = 2400 FOR UPDATE"
    ))
    .execute(&mut *holder)
    .await
    .unwrap();
    let request = app
        .http
        .post(app.url(&format!("/configapi/v2/batches/{batch_id}/cancel")))
        .send();
    let cancel = tokio::spawn(request);
    provisioner_tests::eventually(WITHIN, || async {
        (cancelled_count(&app, &batch_id).await >= 2_000).then_some(())
    })
    .await;
    assert!(!cancel.is_finished(), "the cancel waits for the held item");
    holder.rollback().await.unwrap();
    let r = cancel.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let cancelled: Value = r.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["counts"]["cancelled"], 2_500, "{cancelled}");
    assert_counts_add_up(&cancelled);
    app.stop().await;
}

/// A cancel whose canceller stopped half-way (here: asked for, no item cancelled yet) releases
/// none of the batch's held items, and a worker's sweep finishes it: every item cancelled, none
/// run.
#[tokio::test]
async fn a_cancel_left_half_done_is_finished_by_the_workers_and_no_held_item_runs() {
    let mut app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &items(1_500, &template)).await;
    let batch_id = id(&batch, "batchId");
    app.count(&format!(
        "WITH asked AS (UPDATE batches SET cancel_requested = true WHERE id = '{batch_id}'
                        RETURNING 1)
         SELECT count(*) FROM asked"
    ))
    .await;
    app.start_worker();
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["counts"]["cancelled"], 1_500, "{done}");
    assert_counts_add_up(&done);
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE attempts > 0")
            .await,
        0
    );
    app.stop().await;
}

/// A JSON batch whose frame has faults that leave its items readable (an unknown member, a
/// default `tenantUrl`) is refused with those faults and every item's own, all at once.
#[tokio::test]
async fn a_json_batchs_frame_faults_are_reported_with_its_items_faults() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let mut defaults = item("x.example.com", &template);
    defaults["bogus"] = json!(1);
    let body = json!({"defaults": defaults, "items": [{"tenantUrl": "bad_host"}], "extra": 1});
    let r = post(&app, &app.http, "application/json", body.to_string()).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    let errors = problem["errors"].as_array().unwrap();
    let named = |item: Option<u64>, field: &str| {
        errors
            .iter()
            .any(|e| e["field"] == field && e.get("item").and_then(Value::as_u64) == item)
    };
    assert!(named(None, "extra"), "{problem}");
    assert!(named(None, "defaults.tenantUrl"), "{problem}");
    assert!(named(Some(0), "tenantUrl"), "{problem}");
    assert!(named(Some(0), "bogus"), "{problem}");
    // The detail counts the invalid items, as for any batch with some.
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 item is invalid"),
        "{problem}"
    );
    // Its items valid, the frame's faults alone.
    let body = json!({"items": [item("ok.example.com", &template)], "extra": 1});
    let r = post(&app, &app.http, "application/json", body.to_string()).await;
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "extra", "{problem}");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    app.stop().await;
}

/// Items of `batch_id` set by hand: item 0 failed with code 400 and, when `running`, item 1
/// running under a lease nobody renews (valid for an hour); the rest stay held.
async fn fail_first_item(app: &TestApp, batch_id: &str, running: bool) {
    app.count(&format!(
        "WITH failed AS (UPDATE jobs SET status = 'failed', code = 400, finished_at = now(),
                                         released_at = now(), attempts = 1
                         WHERE batch_id = '{batch_id}' AND batch_item = 0 RETURNING 1),
              running AS (UPDATE jobs SET status = 'running', released_at = now(), attempts = 1,
                                          started_at = now(), lease_token = gen_random_uuid(),
                                          lease_until = now() + interval '1 hour'
                          WHERE batch_id = '{batch_id}' AND batch_item = 1 AND {running}
                          RETURNING 1)
         SELECT (SELECT count(*) FROM failed) + (SELECT count(*) FROM running)"
    ))
    .await;
}

/// A retry of a batch whose cancel was asked for is `409` until the batch stops (its running
/// items finished): retried meanwhile, its items would be held back with the cancelled ones, or
/// run, as a race went. Once it stopped, the retry runs its items, and the batch, running again
/// with no cancel asked for, ends `completed`.
#[tokio::test]
async fn a_retry_waits_for_a_cancel_to_stop_then_runs_its_items() {
    let mut app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let post_to = |batch_id: &str, action: &str| {
        app.http
            .post(app.url(&format!("/configapi/v2/batches/{batch_id}/{action}")))
            .send()
    };
    // An item still runs after the cancel.
    let stopping = id(
        &batches::submit(&app, &items(3, &template)).await,
        "batchId",
    );
    fail_first_item(&app, &stopping, true).await;
    let cancelled: Value = post_to(&stopping, "cancel")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "running", "{cancelled}");
    let r = post_to(&stopping, "retry?code=400").await.unwrap();
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("being cancelled"),
        "{problem}"
    );
    // Nothing runs any more: the cancel stops the batch, and the retry runs its items.
    let stopped = id(
        &batches::submit(&app, &items(3, &template)).await,
        "batchId",
    );
    fail_first_item(&app, &stopped, false).await;
    let cancelled: Value = post_to(&stopped, "cancel")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let r = post_to(&stopped, "retry?code=400").await.unwrap();
    assert_eq!(r.status(), 202);
    app.start_worker();
    let done = batches::wait(&app, &stopped, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (&done["counts"]["succeeded"], &done["counts"]["cancelled"]),
        (&json!(1), &json!(2)),
        "{done}"
    );
    app.stop().await;
}
