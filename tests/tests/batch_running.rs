//! Batches while their items run: an item gives way to an earlier create of its tenant, a
//! cancel lets running items finish, worker processes share one download, and a small batch of
//! one client is not held behind a big one of another.

use std::time::Duration;

use provisioner_shared::db;
use provisioner_tests::{
    Options, TestApp,
    batches::{self, assert_counts_add_up, item, items, ndjson, post},
    events::EventTap,
    eventually, fixtures,
    plans::rows_read_in_transaction,
    process::Proc,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

fn id(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

/// Template downloads wait as long as a test holds them (the tests' usual 5 s would end them).
fn patient_downloads() -> (&'static str, String) {
    ("PROVISIONER_TEMPLATE_TIMEOUT", "60".to_owned())
}

async fn batch(app: &TestApp, id: &str) -> Value {
    let (status, batch) = app.get_json(&format!("/configapi/v2/batches/{id}")).await;
    assert_eq!(status, 200, "{batch}");
    batch
}

#[tokio::test]
async fn a_batch_item_gives_way_to_an_earlier_single_create_of_its_tenant_and_ends_409() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![patient_downloads()],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let url = fixtures::tenant_url();
    let single = app.submit(&url, &fixtures::create_body(&slow)).await;
    // The single create runs, its download held: it is the tenant's earlier, active create.
    eventually(WITHIN, || async {
        (app.templates.hits("slow.zip") == 1).then_some(())
    })
    .await;
    let other = fixtures::tenant_url();
    let submitted = batches::submit(&app, &[item(&url, &template), item(&other, &template)]).await;
    let batch_id = id(&submitted, "batchId");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let results = batches::results(&app, &batch_id, "").await;
    assert_eq!(results[0]["tenantUrl"], url.as_str());
    assert_eq!(results[0]["code"], 409, "{}", results[0]);
    assert_eq!(results[0]["error"]["title"], "Conflict");
    assert_eq!(
        results[0]["error"]["detail"],
        format!("job {single} for tenant {url}, submitted earlier, is still queued or running"),
    );
    assert_eq!(results[1]["code"], 200, "{}", results[1]);

    // The single create, which came first, makes the tenant.
    app.templates.release("slow.zip");
    let job = app.wait_job(&single).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["code"], 200);
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM tenants WHERE url = '{url}'"))
            .await,
        1
    );
    app.stop().await;
}

/// An Import Tenant job is work on its tenant too: a batch item submitted after it gives way
/// while it is queued or running, and ends 409 naming it.
#[tokio::test]
async fn a_batch_item_gives_way_to_an_earlier_import_of_its_tenant_and_ends_409() {
    const INTERACTIVE: &str = "provisioner.jobs.create-tenant";
    let mut app = TestApp::with(Options {
        workers: 0,
        vars: vec![],
    })
    .await;
    let archive = app.new_tenant_export().await;
    let url = archive.tenant.url.clone();
    let r = app.import(archive.write(), "").await;
    assert_eq!(r.status(), 202);
    let import = id(&r.json().await.unwrap(), "jobId");
    // The import stays queued (active) for the whole test: its message is taken off the broker
    // before any worker runs (it is sent again only after PROVISIONER_RECONCILE_AFTER, 90 s).
    eventually(WITHIN, || async {
        (app.count("SELECT count(*) FROM outbox WHERE exchange = 'provisioner.jobs'")
            .await
            == 0
            && app.queue_messages(INTERACTIVE).await == 1)
            .then_some(())
    })
    .await;
    app.purge_queue(INTERACTIVE).await;
    eventually(WITHIN, || async {
        (app.queue_messages(INTERACTIVE).await == 0).then_some(())
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let submitted = batches::submit(&app, &[item(&url, &template)]).await;
    app.start_worker();
    let done = batches::wait(&app, &id(&submitted, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let item = &batches::results(&app, &id(&submitted, "batchId"), "").await[0];
    assert_eq!(item["code"], 409, "{item}");
    assert_eq!(
        item["error"]["detail"],
        format!("job {import} for tenant {url}, submitted earlier, is still queued or running"),
    );
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM tenants WHERE url = '{url}'"))
            .await,
        0
    );
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{import}")).await;
    assert_eq!(job["status"], "queued", "{job}");
    app.stop().await;
}

#[tokio::test]
async fn of_two_batches_naming_one_tenant_the_earlier_item_wins_and_the_later_ends_409() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![patient_downloads()],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let url = fixtures::tenant_url();
    let first = batches::submit(&app, &[item(&url, &slow)]).await;
    let first_id = id(&first, "batchId");
    eventually(WITHIN, || async {
        (app.templates.hits("slow.zip") == 1).then_some(())
    })
    .await;
    let first_job = batches::results(&app, &first_id, "").await[0]["jobId"].clone();
    let second = batches::submit(&app, &[item(&url, &template)]).await;
    let done = batches::wait(&app, &id(&second, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    let later = &batches::results(&app, &id(&second, "batchId"), "").await[0];
    assert_eq!(later["code"], 409, "{later}");
    assert_eq!(
        later["error"]["detail"],
        format!(
            "job {} for tenant {url}, submitted earlier, is still queued or running",
            first_job.as_str().unwrap()
        ),
    );

    app.templates.release("slow.zip");
    let done = batches::wait(&app, &first_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    let earlier = &batches::results(&app, &first_id, "").await[0];
    assert_eq!(earlier["code"], 200, "{earlier}");
    assert_eq!(earlier["tenant"]["url"], url.as_str());
    app.stop().await;
}

/// An item's look for an earlier active job of its tenant (made under the tenant's lock, so it
/// holds up the tenant's other writes) reads that tenant's active jobs alone, whatever else the
/// table holds: 20,000 queued batch items of other tenants and 5,000 ended jobs of its own
/// (a client retrying a create that fails), under the custom plans of a session's first calls
/// and the generic plan PostgreSQL settles on after them.
#[tokio::test]
async fn an_items_look_for_earlier_work_reads_only_its_tenants_active_jobs() {
    let app = TestApp::without_workers().await;
    let earlier = uuid::Uuid::new_v4();
    sqlx::raw_sql(&format!(
        "INSERT INTO batches (id, client_id)
         VALUES ('00000000-0000-0000-0000-000000000001', 'other');
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, batch_id, batch_item,
                           released_at, lane)
         SELECT gen_random_uuid(), 'createTenant', 'item-' || g || '.example.com', 'queued',
                'other', '{{}}', '00000000-0000-0000-0000-000000000001', g,
                CASE WHEN g % 2 = 0 THEN now() END, 'batch'
         FROM generate_series(1, 20000) g;
         INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, finished_at)
         SELECT gen_random_uuid(),
                CASE WHEN g % 4 = 0 THEN 'importTenant' ELSE 'createTenant' END,
                'busy.example.com', 'failed', 500, 'retrying', '{{}}', now()
         FROM generate_series(1, 5000) g;
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, created_at)
         VALUES ('{earlier}', 'importTenant', 'busy.example.com', 'running', 'mover', '{{}}',
                 now() - interval '1 minute')"
    ))
    .execute(&app.db)
    .await
    .unwrap();
    // Every page visible, as after a vacuum: a scan that needs no heap access looks cheapest.
    sqlx::raw_sql("VACUUM ANALYZE jobs")
        .execute(&app.db)
        .await
        .unwrap();
    let mut conn = app.db.acquire().await.unwrap();
    let now = chrono::Utc::now();
    let before_it = now - chrono::Duration::minutes(2);
    // Past the five custom plans PostgreSQL makes before it weighs a generic one.
    for call in 0..8 {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let before = rows_read_in_transaction(&mut tx, &["jobs"]).await;
        let found =
            db::batches::earlier_active_job(&mut tx, "busy.example.com", now, uuid::Uuid::new_v4())
                .await
                .unwrap();
        let read = rows_read_in_transaction(&mut tx, &["jobs"]).await - before;
        assert_eq!(found, Some(earlier), "call {call}");
        assert!(read <= 5, "call {call}: {read} rows of jobs read");
        // A job submitted before the running import does not give way to it.
        let found = db::batches::earlier_active_job(
            &mut tx,
            "busy.example.com",
            before_it,
            uuid::Uuid::new_v4(),
        )
        .await
        .unwrap();
        assert_eq!(found, None, "call {call}");
    }
    drop(conn);
    app.stop().await;
}

/// A dispatch round reads an index entry or two per client with held items and what it
/// releases, however many batches are held or ended: one client holds 5,000 one-item batches,
/// twenty others one batch each, and 3,000 batches ended before.
#[tokio::test]
async fn a_dispatch_round_reads_a_handful_of_batches_however_many_are_held() {
    let app = TestApp::without_workers().await;
    sqlx::raw_sql(
        "INSERT INTO batches (id, client_id, created_at)
         SELECT gen_random_uuid(), 'many', now() - interval '1 hour' + g * interval '1 ms'
         FROM generate_series(1, 5000) g
         UNION ALL
         SELECT gen_random_uuid(), 'other-' || g, now() FROM generate_series(1, 20) g;
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, batch_id, batch_item,
                           lane)
         SELECT gen_random_uuid(), 'createTenant', 'item-' || b.id || '.example.com', 'queued',
                b.client_id, '{}', b.id, 1, 'batch'
         FROM batches b;
         INSERT INTO batches (id, client_id, status, created_at, finished_at)
         SELECT gen_random_uuid(), 'many', 'completed', now() - interval '2 hours', now()
         FROM generate_series(1, 3000)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::raw_sql("VACUUM ANALYZE batches, jobs")
        .execute(&app.db)
        .await
        .unwrap();
    let mut conn = app.db.acquire().await.unwrap();
    for round in 1..=3 {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let before = rows_read_in_transaction(&mut tx, &["batches", "jobs"]).await;
        // Sixteen places more each round: one item for each of sixteen clients.
        let released = db::batches::release(&mut tx, 16 * round, 4).await.unwrap();
        let read = rows_read_in_transaction(&mut tx, &["batches", "jobs"]).await - before;
        tx.commit().await.unwrap();
        assert_eq!(released, 16, "round {round}");
        assert!(
            read <= 300,
            "round {round}: {read} rows of batches and jobs read"
        );
    }
    // Every other client's one item went out, and the rest of the 48 places to `many`.
    let served: Vec<(String, i64)> = sqlx::query_as(
        "SELECT client_id, count(*) FROM jobs WHERE released_at IS NOT NULL
         GROUP BY client_id ORDER BY client_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(served.len(), 21, "{served:?}");
    assert_eq!(served[0], ("many".to_owned(), 28), "{served:?}");
    drop(conn);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_batch_while_items_run_lets_them_finish_and_announces_the_final_counts() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            patient_downloads(),
            ("PROVISIONER_WORKER_CONCURRENCY", "2".to_owned()),
        ],
    })
    .await;
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let submitted = batches::submit(&app, &items(6, &slow)).await;
    let batch_id = id(&submitted, "batchId");
    // Both slots hold an item (one downloads the template, one waits for it); four are queued.
    eventually(WITHIN, || async {
        let now = batch(&app, &batch_id).await;
        (now["counts"]["running"] == 2).then_some(())
    })
    .await;

    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/batches/{batch_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cancelling: Value = r.json().await.unwrap();
    assert_eq!(cancelling["status"], "running", "{cancelling}");
    assert_eq!(cancelling["counts"]["running"], 2, "{cancelling}");
    assert_eq!(cancelling["counts"]["cancelled"], 4, "{cancelling}");
    assert_eq!(cancelling["finishedAt"], Value::Null);
    assert_counts_add_up(&cancelling);

    app.templates.release("slow.zip");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    let counts =
        json!({"total": 6, "queued": 0, "running": 0, "succeeded": 2, "failed": 0, "cancelled": 4});
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["counts"], counts, "{done}");
    assert!(done["finishedAt"].is_string());
    // The running items' results are kept.
    let results = batches::results(&app, &batch_id, "").await;
    let finished: Vec<&Value> = results
        .iter()
        .filter(|l| l["status"] == "succeeded")
        .collect();
    assert_eq!(finished.len(), 2, "{results:?}");
    for line in &finished {
        assert_eq!(line["code"], 200);
        assert_eq!(line["tenant"]["url"], line["tenantUrl"]);
    }
    for line in results.iter().filter(|l| l["status"] != "succeeded") {
        assert_eq!(line["status"], "cancelled", "{line}");
        assert_eq!(line["code"], Value::Null);
    }
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 2);

    // One stop event, after the last running item, with the final counts.
    let events = tap
        .collect_until(|e| e.iter().any(|e| e.routing_key.starts_with("batch.")))
        .await;
    let stop = events
        .iter()
        .find(|e| e.routing_key.starts_with("batch."))
        .unwrap();
    assert_eq!(stop.routing_key, "batch.cancelled");
    assert_eq!(stop.body["type"], "io.provisioner.batch.cancelled");
    assert_eq!(stop.body["subject"], batch_id.as_str());
    assert_eq!(stop.body["data"]["status"], "cancelled");
    assert_eq!(stop.body["data"]["counts"], counts);
    // Whatever was committed is published once the outbox is empty; a job's events published
    // after that arrive after it: no second stop comes before them.
    eventually(WITHIN, || async {
        (app.count("SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    let marker = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&slow))
        .await;
    let later = tap
        .collect_until(|e| {
            e.iter()
                .any(|e| e.body["subject"] == marker["jobId"] && e.routing_key == "job.succeeded")
        })
        .await;
    assert!(
        !later.iter().any(|e| e.routing_key.starts_with("batch.")),
        "the stop is announced once"
    );
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_completed_batch_changes_nothing_and_announces_nothing() {
    let app = TestApp::spawn().await;
    let template = app.serve_sample_template("t.zip").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let submitted = batches::submit(&app, &items(2, &template)).await;
    let batch_id = id(&submitted, "batchId");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["status"], "completed", "{done}");
    tap.collect_until(|e| e.iter().any(|e| e.routing_key == "batch.completed"))
        .await;
    let version = format!("SELECT version::bigint FROM batches WHERE id = '{batch_id}'");
    let before = app.count(&version).await;

    for _ in 0..2 {
        let r = app
            .http
            .post(app.url(&format!("/configapi/v2/batches/{batch_id}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, done, "the batch as it was");
    }
    assert_eq!(batch(&app, &batch_id).await, done);
    assert_eq!(app.count(&version).await, before);

    // Whatever the cancels committed is published once the outbox is empty; a job's events
    // published after that arrive after it.
    eventually(WITHIN, || async {
        (app.count("SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    let marker = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&template))
        .await;
    let events = tap
        .collect_until(|e| {
            e.iter()
                .any(|e| e.body["subject"] == marker["jobId"] && e.routing_key == "job.succeeded")
        })
        .await;
    let batch_events: Vec<_> = events
        .iter()
        .filter(|e| e.routing_key.starts_with("batch."))
        .collect();
    assert!(batch_events.is_empty(), "{batch_events:?}");
    app.stop().await;
}

#[tokio::test]
async fn worker_processes_share_one_download_of_a_batchs_template_url() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![
            patient_downloads(),
            ("PROVISIONER_WORKER_CONCURRENCY", "2".to_owned()),
        ],
    })
    .await;
    let url = app.serve_sample_template("shared.zip").await;
    app.templates.hold("shared.zip");
    let submitted = batches::submit(&app, &items(24, &url)).await;
    let batch_id = id(&submitted, "batchId");
    let mut workers: Vec<Proc> = (0..3)
        .map(|_| Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &[], "warn"))
        .collect();
    // Every slot of the three processes holds an item: one fetches, five wait for its bytes.
    // (An item is running before its fetch reaches the server: the hit is waited for too.)
    eventually(WITHIN, || async {
        (batch(&app, &batch_id).await["counts"]["running"] == 6
            && app.templates.hits("shared.zip") > 0)
            .then_some(())
    })
    .await;
    assert_eq!(app.templates.hits("shared.zip"), 1);
    app.templates.release("shared.zip");
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 24, "{done}");
    assert_eq!(app.templates.hits("shared.zip"), 1);
    for worker in &workers {
        worker.terminate();
    }
    for worker in &mut workers {
        assert!(worker.exit(Duration::from_secs(30)).await.success());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_small_batch_of_one_client_finishes_while_a_big_batch_of_another_is_far_from_done() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_DISPATCH_WINDOW", "2".to_owned()),
            ("PROVISIONER_WORKER_CONCURRENCY", "2".to_owned()),
        ],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let big = batches::submit(&app, &items(200, &template)).await;
    let b = batches::client(&app, "b", &["tenants:read", "tenants:write"]).await;
    let r = post(
        &app,
        &b,
        "application/x-ndjson",
        ndjson(&items(6, &template)),
    )
    .await;
    assert_eq!(r.status(), 202);
    let small: Value = r.json().await.unwrap();
    let done = batches::wait(&app, &id(&small, "batchId"), WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 6, "{done}");
    let a = batch(&app, &id(&big, "batchId")).await;
    assert_eq!(a["status"], "running");
    // Released two at a time, round robin between the clients: A's share while B's six ran.
    let a_succeeded = a["counts"]["succeeded"].as_i64().unwrap();
    assert!(a_succeeded < 50, "A's batch is far from done: {a}");
    app.stop().await;
}

/// Waits until `n` sessions of this test's database wait for a lock of any kind.
async fn until_sessions_wait_for_locks(app: &TestApp, n: i64) {
    eventually(Duration::from_secs(20), || async {
        (app.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == n)
            .then_some(())
    })
    .await;
}

/// A cancel that arrives while a retry of the same batch is being written waits for it, then
/// cancels the retried items too: it saw neither the retry's new item nor, once the retry had
/// reopened the batch, anything left to do, answered as done, and left the new item to run.
#[tokio::test]
async fn a_cancel_beside_a_retry_cancels_the_retried_items() {
    let app = TestApp::without_workers().await;
    // A completed batch of one item that failed.
    let failed = uuid::Uuid::new_v4();
    let batch = held_batch(&app, 1, &format!("'{failed}'::uuid")).await;
    sqlx::raw_sql(&format!(
        "UPDATE jobs SET status = 'failed', code = 400, finished_at = now() WHERE id = '{failed}';
         UPDATE batches SET status = 'completed', finished_at = now() WHERE id = '{batch}';"
    ))
    .execute(&app.db)
    .await
    .unwrap();
    // The retry, as far as its new item: locked, reopened, the failed job replaced.
    let mut retry = app.db.begin().await.unwrap();
    assert!(
        db::batches::lock_for_retry(&mut retry, batch, None)
            .await
            .unwrap()
            .is_some()
    );
    sqlx::raw_sql(&format!(
        "UPDATE batches SET status = 'running', finished_at = NULL WHERE id = '{batch}';
         UPDATE jobs SET superseded = true, superseded_at = now() WHERE id = '{failed}';
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, batch_id, batch_item,
                           lane)
         VALUES (gen_random_uuid(), 'createTenant', 'r.example.com', 'queued', 'c', '{{}}',
                 '{batch}', 0, 'batch');"
    ))
    .execute(&mut *retry)
    .await
    .unwrap();
    let db = app.db.clone();
    let cancel = tokio::spawn(async move {
        let mut tx = db.begin().await.unwrap();
        let done = db::batches::cancel(&mut tx, batch, None, -1, db::batches::CANCEL_CHUNK)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        done.unwrap().batch
    });
    until_sessions_wait_for_locks(&app, 1).await;
    retry.commit().await.unwrap();
    let cancelled = cancel.await.unwrap();
    assert_eq!(
        (cancelled.queued, cancelled.cancelled),
        (0, 1),
        "{cancelled:?}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM jobs WHERE batch_id = '{batch}' AND status = 'queued'"
        ))
        .await,
        0,
        "nothing left to run"
    );
    app.stop().await;
}

/// A cancel beside a dispatcher round that releases a client's items in two statements (its
/// share, then what other clients left) waits for the round, and both end: the cancel locked
/// the items in an index's order, last item first, held the ones the round's second statement
/// wanted while it waited for the first's, and one of the two ended in a deadlock.
#[tokio::test]
async fn a_cancel_beside_a_dispatch_round_waits_for_it_instead_of_deadlocking() {
    let app = TestApp::without_workers().await;
    // Items whose ids rise with their positions (as time-ordered ids do), 20,000 single jobs
    // so that the plans read indexes, and no index of a batch's items by position: the cancel's
    // plan then reads the batch's queued items newest id first, last item first.
    let batch = held_batch(
        &app,
        40,
        "('00000000-0000-7000-8000-' || lpad(i::text, 12, '0'))::uuid",
    )
    .await;
    sqlx::raw_sql(
        "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, finished_at)
         SELECT gen_random_uuid(), 'createTenant', 's-' || i || '.example.com', 'succeeded',
                200, 'c', '{}', now()
         FROM generate_series(1, 20000) i;
         DROP INDEX jobs_batch_items;
         ANALYZE jobs, batches;",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let mut round = app.db.begin().await.unwrap();
    assert_eq!(db::batches::release(&mut round, 16, 4).await.unwrap(), 16);
    let db = app.db.clone();
    let cancel = tokio::spawn(async move {
        let mut tx = db.begin().await?;
        let done = db::batches::cancel(&mut tx, batch, None, -1, db::batches::CANCEL_CHUNK).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(done.unwrap().batch)
    });
    until_sessions_wait_for_locks(&app, 1).await;
    // The same round's second statement for the client: the next sixteen items.
    assert_eq!(db::batches::release(&mut round, 32, 4).await.unwrap(), 16);
    round.commit().await.unwrap();
    let cancelled = cancel
        .await
        .unwrap()
        .expect("the cancel ends without a deadlock");
    assert_eq!(
        (cancelled.queued, cancelled.cancelled),
        (0, 40),
        "{cancelled:?}"
    );
    app.stop().await;
}

/// A dispatch round passes over held items that another transaction has locked (a cancel or a
/// retry of their batch at work) instead of waiting for them: a round that waited for an item
/// a cancel held, while the cancel waited for one the round had released, was a deadlock.
#[tokio::test]
async fn a_dispatch_round_passes_over_items_another_transaction_holds() {
    let app = TestApp::without_workers().await;
    held_batch(&app, 10, "gen_random_uuid()").await;
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE batch_item = 0 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut round = app.db.begin().await.unwrap();
    let released = tokio::time::timeout(
        Duration::from_secs(20),
        db::batches::release(&mut round, 4, 4),
    )
    .await
    .expect("the round does not wait for the held item")
    .unwrap();
    round.commit().await.unwrap();
    assert_eq!(released, 4);
    let items: Vec<i32> = sqlx::query_scalar(
        "SELECT batch_item FROM jobs WHERE released_at IS NOT NULL ORDER BY batch_item",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(items, vec![1, 2, 3, 4]);
    holder.rollback().await.unwrap();
    app.stop().await;
}

/// A batch of client `c` with `items` queued items held (positions 0 to `items - 1`), each
/// job's id the SQL `id` over the position `i`; the batch's id.
async fn held_batch(app: &TestApp, items: i32, id: &str) -> uuid::Uuid {
    let batch = uuid::Uuid::new_v4();
    sqlx::raw_sql(&format!(
        "INSERT INTO batches (id, client_id) VALUES ('{batch}', 'c');
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, batch_id, batch_item,
                           lane)
         SELECT {id}, 'createTenant', 'i-' || i || '-{batch}.example.com', 'queued', 'c',
                '{{}}', '{batch}', i, 'batch'
         FROM generate_series(0, {items} - 1) i;"
    ))
    .execute(&app.db)
    .await
    .unwrap();
    batch
}

/// A batch ends when its last item does, by the clock that item ended by: its `finishedAt`
/// was the start of the last item's transaction, which a lock wait puts well before the
/// item's own `finishedAt` (a `lockTimeout` of an hour could make it an hour early).
#[tokio::test]
async fn a_batch_ends_no_earlier_than_its_last_item() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    let url = fixtures::tenant_url();
    let lock = app.hold_lock(&format!("provisioner:tenant:{url}")).await;
    let submitted = batches::submit(&app, &[item(&url, &template)]).await;
    let batch_id = id(&submitted, "batchId");
    // The item's transaction waits for the lock; then it is let go.
    eventually(WITHIN, || async {
        (app.advisory_locks().await.1 == 1).then_some(())
    })
    .await;
    lock.rollback().await.unwrap();
    let done = batches::wait(&app, &batch_id, WITHIN).await;
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    let results = batches::results(&app, &batch_id, "").await;
    let (_, job) = app
        .get_json(&format!("/configapi/v2/jobs/{}", id(&results[0], "jobId")))
        .await;
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["finishedAt"].as_str().unwrap()).unwrap()
    };
    assert!(at(&done) >= at(&job), "batch {done}, its last item {job}");
    app.stop().await;
}
