//! A job whose template is at hand (in the store) is done before it is claimed: its claim and its
//! end are one write of its row, with both events. A job that cannot be done at once that way
//! (its lock is busy) is claimed as before and seen running while it waits.

use std::time::Duration;

use provisioner_tests::{Options, TestApp, batches, events::EventTap, eventually, fixtures};
use serde_json::json;

/// Records every change of a job's status from now on, in `job_writes`.
async fn record_job_writes(app: &TestApp) {
    for sql in [
        "CREATE TABLE job_writes (at bigserial, id uuid, was text, now text)",
        "CREATE FUNCTION job_written() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO job_writes (id, was, now) VALUES (NEW.id, OLD.status, NEW.status);
             RETURN NULL;
         END $$",
        "CREATE TRIGGER job_written AFTER UPDATE ON jobs
         FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
         EXECUTE FUNCTION job_written()",
    ] {
        sqlx::query(sql).execute(&app.db).await.unwrap();
    }
}

/// The status changes written to job `id`, in order.
async fn job_writes(app: &TestApp, id: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT was, now FROM job_writes WHERE id = $1::uuid ORDER BY at")
        .bind(id)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_create_from_a_stored_template_writes_its_job_once_and_publishes_every_status() {
    let app = TestApp::spawn().await;
    record_job_writes(&app).await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let template = app.store_sample_template().await;
    let tenant = fixtures::tenant_url();
    let id = app
        .submit(&tenant, &fixtures::create_body_by_id(&template))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{job}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    assert_eq!(
        job_writes(&app, &id).await,
        [("queued".to_owned(), "succeeded".to_owned())],
        "claimed and ended in one write"
    );

    // Every status is still announced, each with its version and the job as it was then.
    let versions = |e: &[provisioner_tests::events::Event]| {
        e.iter()
            .filter(|e| e.body["subject"] == id.as_str())
            .map(|e| e.body["jobversion"].as_i64().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let events = tap.collect_until(|e| versions(e).len() == 3).await;
    // In version order: the broker does not order events across relays.
    let mut of_job: Vec<(&str, i64, &str)> = events
        .iter()
        .filter(|e| e.body["subject"] == id.as_str())
        .map(|e| {
            (
                e.routing_key.as_str(),
                e.body["jobversion"].as_i64().unwrap(),
                e.body["data"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    // Delivery is at least once: one of each version.
    of_job.sort_by_key(|e| e.1);
    of_job.dedup_by_key(|e| e.1);
    assert_eq!(
        of_job,
        [
            ("job.queued", 1, "queued"),
            ("job.running", 2, "running"),
            ("job.succeeded", 3, "succeeded"),
        ]
    );
    let running = &events
        .iter()
        .find(|e| e.routing_key == "job.running")
        .unwrap()
        .body["data"];
    assert_eq!(
        (running["attempts"].as_i64(), &running["startedAt"]),
        (Some(1), &job["startedAt"]),
        "the running event is the job as its claim made it: {running}"
    );
    assert!(running["finishedAt"].is_null(), "{running}");
    app.stop().await;
}

#[tokio::test]
async fn a_create_from_a_stored_template_whose_lock_is_busy_is_seen_running_while_it_waits() {
    let app = TestApp::spawn().await;
    record_job_writes(&app).await;
    let template = app.store_sample_template().await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let id = app
        .submit(&tenant, &fixtures::create_body_by_id(&template))
        .await;
    app.until_lock_waiters(1).await;
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("running"), Some(1)),
        "waiting for its lock, the job is claimed: {job}"
    );
    held.rollback().await.unwrap();
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{job}"
    );
    assert_eq!(
        job_writes(&app, &id).await,
        [
            ("queued".to_owned(), "running".to_owned()),
            ("running".to_owned(), "succeeded".to_owned())
        ],
        "its claim and its end, each written once"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    app.stop().await;
}

#[tokio::test]
async fn a_create_from_a_stored_template_that_fails_for_good_ends_in_one_write_too() {
    let app = TestApp::spawn().await;
    record_job_writes(&app).await;
    let template = app.store_sample_template().await;
    let mut body = fixtures::create_body_by_id(&template);
    // No range of the template starts at this number: a bad template for this request (400).
    body["numberMap"] = json!({"9999999999": "4155550000"});
    let id = app.submit(&fixtures::tenant_url(), &body).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(400), Some(1)),
        "{job}"
    );
    assert!(
        job["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("numberMap key 9999999999"),
        "{job}"
    );
    assert_eq!(
        job_writes(&app, &id).await,
        [("queued".to_owned(), "failed".to_owned())],
        "claimed and failed in one write"
    );
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    app.stop().await;
}

/// A batch item tried before its claim gives way to an earlier create of its tenant still
/// running, as a claimed item does (the earlier creates read once the try holds the tenant's
/// lock), and ends 409 in one write.
#[tokio::test]
async fn a_batch_item_tried_before_its_claim_gives_way_to_an_earlier_create_of_its_tenant() {
    let app = TestApp::with(Options {
        workers: 1,
        // The held download below must outlast the test's usual 5 s.
        vars: vec![("PROVISIONER_TEMPLATE_TIMEOUT", "60".to_owned())],
    })
    .await;
    record_job_writes(&app).await;
    let stored = app.store_sample_template().await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let url = fixtures::tenant_url();
    let single = app.submit(&url, &fixtures::create_body(&slow)).await;
    // The single create runs, its download held: the tenant's earlier, active create.
    eventually(Duration::from_secs(30), || async {
        (app.templates.hits("slow.zip") == 1).then_some(())
    })
    .await;
    let by_id = |tenant: &str| {
        let mut body = fixtures::create_body_by_id(&stored);
        body["tenantUrl"] = json!(tenant);
        body
    };
    let other = fixtures::tenant_url();
    let submitted = batches::submit(&app, &[by_id(&url), by_id(&other)]).await;
    let batch_id = submitted["batchId"].as_str().unwrap().to_owned();
    let done = batches::wait(&app, &batch_id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let results = batches::results(&app, &batch_id, "").await;
    assert_eq!(results[0]["code"], 409, "{}", results[0]);
    assert_eq!(
        results[0]["error"]["detail"],
        format!("job {single} for tenant {url}, submitted earlier, is still queued or running"),
    );
    assert_eq!(results[1]["code"], 200, "{}", results[1]);
    for (result, ended) in results.iter().zip(["failed", "succeeded"]) {
        let job = result["jobId"].as_str().unwrap();
        assert_eq!(
            job_writes(&app, job).await,
            [("queued".to_owned(), ended.to_owned())],
            "tried, not claimed: {result}"
        );
    }

    // The single create, which came first, makes the tenant.
    app.templates.release("slow.zip");
    let job = app.wait_job(&single).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    fixtures::assert_sample_tenant(&app, &url).await;
    app.stop().await;
}
