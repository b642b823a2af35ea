//! Faults inside a worker: a panic at any stage of handling a delivery, a job message the broker
//! lost, and a broker reconnect while jobs run.

use std::time::Duration;

use provisioner_tests::{Options, TestApp, eventually, fixtures, process::Proc};
use serde_json::{Value, json};

const JOB_QUEUE: &str = "provisioner.jobs.create-tenant";
const DEAD_QUEUE: &str = "provisioner.jobs.dead";
const BACKLOG_QUEUE: &str = "provisioner.jobs.backlog";

fn spawn_worker(app: &TestApp, extra: &[(&str, &str)]) -> Proc {
    Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), app, extra, "info")
}

/// The `provisioner_worker_panics` figure of `/metrics`.
async fn panics_in_metrics(app: &TestApp) -> f64 {
    app.metric("provisioner_worker_panics")
        .await
        .expect("provisioner_worker_panics in /metrics")
}

async fn tenants_named(app: &TestApp, url: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tenants WHERE url = $1")
        .bind(url)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Waits until no message of `queue` is ready or held unacknowledged.
async fn until_queue_empty(app: &TestApp, queue: &str) {
    eventually(Duration::from_secs(30), || async {
        (app.queue_messages(queue).await == 0).then_some(())
    })
    .await;
}

/// Job messages committed and not yet published.
async fn job_messages_in_outbox(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM outbox WHERE exchange = 'provisioner.jobs'")
        .await
}

/// The job ends 200 at its first attempt, and its tenant exists once.
async fn succeeds_once(app: &TestApp, id: &str, tenant: &str) {
    let job = app.wait_job_within(id, Duration::from_secs(30)).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{job}"
    );
    fixtures::assert_sample_tenant(app, tenant).await;
}

#[tokio::test]
async fn a_panic_at_any_stage_of_handling_a_delivery_returns_it_and_the_job_ends_once() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    // (stage, the attempts the job ends with): a panic before the job's outcome committed
    // costs an attempt; one after it changes nothing.
    let stages = [
        ("claim", 2),
        ("handler", 2),
        ("commit", 1),
        ("record", 1),
        ("settle", 1),
    ];
    for (n, (stage, attempts)) in stages.into_iter().enumerate() {
        let mut worker = spawn_worker(&app, &[("PROVISIONER_TEST_PANIC", stage)]);
        let tenant = fixtures::tenant_url();
        let mut body = fixtures::create_body(&url);
        body["numberMap"] = json!({"0000000000": format!("41577{n:05}")});
        let id = app.submit(&tenant, &body).await;
        let job = app.wait_job(&id).await;
        assert_eq!(
            (job["code"].as_i64(), job["attempts"].as_i64()),
            (Some(200), Some(attempts)),
            "panic at {stage}: {job}"
        );
        fixtures::assert_sample_tenant(&app, &tenant).await;
        // The delivery was settled or returned, not left unacknowledged with the worker.
        until_queue_empty(&app, JOB_QUEUE).await;
        assert!(
            worker
                .text()
                .contains(&format!("injected panic at {}", capitalized(stage))),
            "the panic at {stage} happened"
        );
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "the worker lives on"
        );
        worker.child.kill().await.unwrap();
    }
    // The last job's events may still be on their way out when its worker is killed: another
    // process's relay publishes them at its next pass.
    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    assert_eq!(panics_in_metrics(&app).await, 5.0, "every panic is counted");
    app.stop().await;
}

fn capitalized(stage: &str) -> String {
    let mut chars = stage.chars();
    chars.next().unwrap().to_uppercase().chain(chars).collect()
}

#[tokio::test]
async fn a_job_whose_handling_always_panics_fails_once_out_of_attempts_and_is_dead_lettered() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "2".to_owned())],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    let mut worker = spawn_worker(&app, &[("PROVISIONER_TEST_PANIC", "claim:always")]);
    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(500), Some(2)),
        "{job}"
    );
    until_queue_empty(&app, JOB_QUEUE).await;
    eventually(Duration::from_secs(10), || async {
        (app.queue_messages(DEAD_QUEUE).await == 1).then_some(())
    })
    .await;
    assert_eq!(tenants_named(&app, &tenant).await, 0);
    assert_eq!(panics_in_metrics(&app).await, 2.0);
    worker.child.kill().await.unwrap();
    app.stop().await;
}

/// A system whose worker, started later, re-sends job messages sent over a second ago.
async fn reconciling_app() -> TestApp {
    TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_RECONCILE_AFTER", "1".to_owned())],
    })
    .await
}

/// Waits until the relay has published every job message to the queue.
async fn until_published(app: &TestApp, messages: i64) {
    eventually(Duration::from_secs(20), || async {
        (job_messages_in_outbox(app).await == 0 && app.queue_messages(JOB_QUEUE).await == messages)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_queued_job_whose_message_was_purged_is_sent_again_and_completes_once() {
    let mut app = reconciling_app().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    until_published(&app, 1).await;
    app.purge_queue(JOB_QUEUE).await;
    // The broker's counts lag a little behind the purge.
    until_queue_empty(&app, JOB_QUEUE).await;
    app.start_worker();
    succeeds_once(&app, &id, &tenant).await;
    app.stop().await;
}

#[tokio::test]
async fn a_queued_job_whose_message_was_dead_lettered_is_sent_again_and_completes_once() {
    use lapin::options::{BasicGetOptions, BasicRejectOptions};
    let mut app = reconciling_app().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    until_published(&app, 1).await;
    // A consumer gives up on the message: the broker dead-letters it.
    let conn = lapin::Connection::connect(
        &app.vars["AMQP_URL"],
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let message = channel
        .basic_get(JOB_QUEUE.into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the job message is queued");
    message
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        (app.queue_messages(DEAD_QUEUE).await == 1).then_some(())
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    app.start_worker();
    succeeds_once(&app, &id, &tenant).await;
    app.stop().await;
}

/// A create of the template at `url` that a worker runs and that waits for its tenant's lock,
/// which the test holds (until the transaction returned ends) for at most `lock_timeout`
/// seconds: its job id and the test's hold.
async fn waiting_for_its_lock(
    app: &TestApp,
    url: &str,
    lock_timeout: u64,
) -> (String, sqlx::Transaction<'static, sqlx::Postgres>) {
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut body = fixtures::create_body(url);
    body["lockTimeout"] = json!(lock_timeout);
    let id = app.submit(&tenant, &body).await;
    app.until_lock_waiters(1).await;
    (id, held)
}

#[tokio::test]
async fn the_concurrency_bound_holds_across_a_broker_reconnect() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_WORKER_CONCURRENCY", "1".to_owned())],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    // Job A waits for a tenant lock the test holds, until its lockTimeout ends it (503).
    let (a, held) = waiting_for_its_lock(&app, &url, 10).await;
    // The channel that delivered A is lost while A runs; the consumer reconnects.
    app.drop_broker_connections("test: reconnect under load")
        .await;
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({"0000000000": "4158800000"});
    let b = app.submit(&fixtures::tenant_url(), &body).await;
    let a = app.wait_job(&a).await;
    let b = app.wait_job(&b).await;
    assert_eq!(
        (a["code"].as_i64(), b["code"].as_i64()),
        (Some(503), Some(200))
    );
    // At concurrency 1, B starts only once A has ended (both times from the database's clock).
    let at = |job: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap()).unwrap()
    };
    assert!(
        at(&b, "startedAt") >= at(&a, "finishedAt"),
        "B started at {} while A ran until {}",
        b["startedAt"],
        a["finishedAt"]
    );
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn the_reconciler_sends_a_job_again_only_when_no_message_waits_and_once_per_period() {
    use provisioner_shared::db::jobs::resend_stranded;
    // The API's relay cannot reach a broker: the job message stays in the outbox.
    let app = TestApp::without_broker().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    sqlx::query("UPDATE jobs SET sent_at = now() - interval '1 hour'")
        .execute(&app.db)
        .await
        .unwrap();
    let resend = || async {
        let mut conn = app.db.acquire().await.unwrap();
        resend_stranded(&mut conn, Duration::from_secs(60), 100, 4, &[])
            .await
            .unwrap()
    };
    assert!(
        resend().await.is_empty(),
        "its message still waits in the outbox"
    );
    sqlx::query("DELETE FROM outbox")
        .execute(&app.db)
        .await
        .unwrap();
    let sent: Vec<String> = resend().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        sent,
        vec![id.clone()],
        "a message the broker lost is sent again"
    );
    assert_eq!(job_messages_in_outbox(&app).await, 1);
    sqlx::query("DELETE FROM outbox")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(resend().await.is_empty(), "at most once per period");
    app.stop().await;
}

/// Behind a busy worker, jobs whose messages wait in their queue are not sent again while they
/// wait (they were, once per `PROVISIONER_RECONCILE_AFTER`, each a duplicate on the queue: a
/// deep backlog grew by itself), while a job whose message the broker lost, sent before the
/// queue's deliveries reached, is sent again in the same passes.
#[tokio::test]
async fn the_reconciler_sends_again_a_lost_message_but_not_the_messages_waiting_behind_a_busy_worker()
 {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "1".to_owned()),
            // Twenty periods (100 s) are more than the whole test takes.
            ("PROVISIONER_RECONCILE_AFTER", "5".to_owned()),
            ("PROVISIONER_SWEEP_INTERVAL", "1".to_owned()),
        ],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    // A takes the worker's one slot and waits for a tenant lock the test holds.
    let (a, held) = waiting_for_its_lock(&app, &url, 120).await;
    // Five more of the client's creates: three on the interactive queue, two past its
    // interactive jobs on the backlog queue (one of them prefetched by the worker).
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(
            app.submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
                .await,
        );
    }
    eventually(Duration::from_secs(20), || async {
        let (interactive, backlog) = (
            app.queue_depths(JOB_QUEUE).await,
            app.queue_depths(BACKLOG_QUEUE).await,
        );
        (job_messages_in_outbox(&app).await == 0
            && interactive.0 >= 3
            && interactive.1 == 1
            && backlog.0 >= 1
            && backlog.1 == 1)
            .then_some(())
    })
    .await;
    let sent_at = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT sent_at FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id",
        )
        .bind(&waiting)
        .fetch_all(&app.db)
        .await
        .unwrap()
    };
    let first_sent = sent_at().await;
    // They wait longer than PROVISIONER_RECONCILE_AFTER (by the database's clock)...
    let last_sent = *first_sent.iter().max().unwrap();
    eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, bool>("SELECT now() > $1 + interval '5 s'")
            .bind(last_sent)
            .fetch_one(&app.db)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    // ...and a job sent 10 s before A, the interactive queue's first delivery, has no message
    // left anywhere (the broker lost it). It waited far less than twenty periods: only the
    // queue's horizon can show it lost.
    let (lost, lost_sent): (uuid::Uuid, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO jobs SELECT (jsonb_populate_record(j, jsonb_build_object(
             'id', gen_random_uuid(), 'tenant_url', 'lost-' || j.tenant_url,
             'sent_at', (SELECT sent_at FROM jobs WHERE id = $2::uuid) - interval '10 s',
             'idempotency_key', NULL))).*
         FROM jobs j WHERE id = $1::uuid RETURNING id, sent_at",
    )
    .bind(&waiting[0])
    .bind(&a)
    .fetch_one(&app.db)
    .await
    .unwrap();
    eventually(Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, bool>("SELECT sent_at > $2 FROM jobs WHERE id = $1")
            .bind(lost)
            .bind(lost_sent)
            .fetch_one(&app.db)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        (job_messages_in_outbox(&app).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        sent_at().await,
        first_sent,
        "the jobs waiting in their queues were not sent again"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM job_queue_horizons
             WHERE queue IN ('provisioner.jobs.create-tenant', 'provisioner.jobs.backlog')"
        )
        .await,
        2,
        "the worker recorded how far both queues delivered"
    );
    // A, the five waiting jobs and the lost one sent again: one message each (the broker's
    // counts lag a little behind).
    eventually(Duration::from_secs(20), || async {
        (app.queue_messages(JOB_QUEUE).await + app.queue_messages(BACKLOG_QUEUE).await == 7)
            .then_some(())
    })
    .await;
    drop(held);
    app.stop().await;
}
