//! Workers as separate processes: load sharing, no duplicates, and a worker killed mid-import.

use std::time::Duration;

use provisioner_tests::{
    TestApp,
    events::{CLAIMED_AND_SUCCEEDED, EventTap, changes_of},
    eventually, fixtures,
    process::Proc,
};
use serde_json::{Value, json};

/// Starts a worker process with the app's settings and `extra` variables.
fn spawn_worker(app: &TestApp, extra: &[(&str, &str)]) -> Proc {
    Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), app, extra, "info")
}

#[tokio::test]
async fn two_worker_processes_share_the_load_and_create_each_tenant_once() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let mut a = spawn_worker(&app, &[("PROVISIONER_WORKER_CONCURRENCY", "2")]);
    let mut b = spawn_worker(&app, &[("PROVISIONER_WORKER_CONCURRENCY", "2")]);
    let mut ids = vec![];
    let mut tenants = vec![];
    for i in 0..24 {
        let tenant = fixtures::tenant_url();
        let mut body = fixtures::create_body(&url);
        body["numberMap"] = json!({"0000000000": format!("41555{i:05}")});
        let r = app.create(&tenant, &body).await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        tenants.push(tenant);
    }
    for id in &ids {
        let job = app.wait_job(id).await;
        assert_eq!(
            (job["code"].as_i64(), job["attempts"].as_i64()),
            (Some(200), Some(1)),
            "{job}"
        );
    }
    for tenant in &tenants {
        fixtures::assert_sample_tenant(&app, tenant).await;
    }
    let done_by = |logs: Vec<Value>| {
        logs.iter()
            .filter(|l| l["message"] == "job succeeded")
            .count()
    };
    // The log lines of the last jobs may still be on their way through the pipes: poll them
    // with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (by_a, by_b) = loop {
        let (by_a, by_b) = (done_by(a.records()), done_by(b.records()));
        if by_a + by_b >= 24 || tokio::time::Instant::now() > deadline {
            break (by_a, by_b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_a + by_b, 24, "each job ran once");
    assert!(
        by_a > 0 && by_b > 0,
        "both workers took jobs: {by_a} and {by_b}"
    );
    a.child.kill().await.unwrap();
    b.child.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_import_loses_nothing_and_the_job_completes_once() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    // Hold the tenant's lock so the first worker stops inside its import transaction.
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut victim = spawn_worker(&app, &[]);
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(60);
    let job: Value = app.create(&tenant, &body).await.json().await.unwrap();
    let id = job["jobId"].as_str().unwrap().to_owned();
    app.until_lock_waiters(1).await;
    victim.child.start_kill().unwrap(); // SIGKILL
    victim.child.wait().await.unwrap();
    // Its session ends with it: no one waits on the lock any more.
    app.until_lock_waiters(0).await;
    held.rollback().await.unwrap();

    let mut rescuer = spawn_worker(&app, &[]);
    let done = app.wait_job(&id).await;
    assert_eq!(
        (
            done["status"].as_str(),
            done["code"].as_i64(),
            done["attempts"].as_i64()
        ),
        (Some("succeeded"), Some(200), Some(2)),
        "{done}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    assert_eq!(
        app.advisory_locks().await,
        (0, 0),
        "no advisory lock outlives its import"
    );
    rescuer.child.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_job_finish_before_the_worker_exits() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut worker = spawn_worker(&app, &[("PROVISIONER_SHUTDOWN_TIMEOUT", "20")]);
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    app.until_lock_waiters(1).await;
    worker.terminate();
    worker.wait_for("shutdown signal received").await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker waits for its in-flight job"
    );
    held.rollback().await.unwrap();
    let status = worker.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn duplicate_deliveries_of_a_job_have_one_effect() {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    // Publish the same job message four more times, then race two workers.
    let conn = Connection::connect(&app.vars["AMQP_URL"], ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    for _ in 0..4 {
        channel
            .basic_publish(
                "provisioner.jobs".into(),
                "create-tenant".into(),
                BasicPublishOptions::default(),
                json!({"jobId": id}).to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    app.start_worker();
    app.start_worker();
    let done = app.wait_job(&id).await;
    assert_eq!(
        (done["code"].as_i64(), done["attempts"].as_i64()),
        (Some(200), Some(1))
    );
    // Every copy was delivered and settled: none is ready or unacknowledged.
    eventually(Duration::from_secs(20), || async {
        (app.queue_messages("provisioner.jobs.create-tenant").await == 0).then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
    fixtures::assert_sample_tenant(&app, &tenant).await;
    let (_, after) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(after, done, "later deliveries changed nothing");
    // De-duplicated by id, as consumers do: one event per status change, one ending.
    let events = app.published_events(&mut tap).await;
    assert_eq!(
        changes_of(&events, &id),
        CLAIMED_AND_SUCCEEDED,
        "the job's events"
    );
    // Garbage on the queue is dead-lettered, not looped.
    channel
        .basic_publish(
            "provisioner.jobs".into(),
            "create-tenant".into(),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let dead = eventually(Duration::from_secs(10), || async {
        let q = channel
            .queue_declare(
                "provisioner.jobs.dead".into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        (q.message_count() >= 1).then_some(q.message_count())
    })
    .await;
    assert_eq!(dead, 1);
    // ...where /metrics counts it, for the alert that tells an operator to look.
    eventually(Duration::from_secs(20), || async {
        let text = app.metrics_text().await;
        text.lines()
            .any(|l| l == "provisioner_dead_letters 1")
            .then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn broker_connections_dropped_under_load_are_reestablished_and_no_job_is_lost() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let mut ids = vec![];
    for round in 0..3 {
        for i in 0..5 {
            let mut body = fixtures::create_body(&url);
            body["numberMap"] = json!({"0000000000": format!("5{round}{i:08}")});
            let r = app.create(&fixtures::tenant_url(), &body).await;
            assert_eq!(r.status(), 202);
            ids.push(
                r.json::<Value>().await.unwrap()["jobId"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        // The broker drops every connection of this system: relays and consumers.
        let vhost = app.vhost.clone();
        let out = tokio::task::spawn_blocking(move || {
            provisioner_tests::process::tool("rabbitmqctl")
                .args([
                    "close_all_connections",
                    "--vhost",
                    &vhost,
                    "test: connection loss",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for id in &ids {
        let job = app.wait_job(id).await;
        assert_eq!(job["code"], 200, "{job}");
        fixtures::assert_sample_tenant(&app, job["tenantUrl"].as_str().unwrap()).await;
    }
    // A message the broker took just before it dropped the relay's connection stays in the
    // outbox until a relay publishes it again and the broker confirms it: a job can end before
    // its row goes. Every row goes, and the second delivery changes nothing.
    eventually(Duration::from_secs(20), || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE exchange = 'provisioner.jobs'")
                .fetch_one(&app.db)
                .await
                .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let tenants = app.count("SELECT count(*) FROM tenants").await;
    assert_eq!(tenants, 15, "every accepted job made its tenant, once");
    app.stop().await;
}

#[tokio::test]
async fn replicas_starting_together_on_a_new_database_all_come_up() {
    let app = TestApp::without_workers().await;
    let fresh = format!("{}_fresh", app.database);
    let url = format!("postgres://postgres@127.0.0.1:5432/{fresh}");
    let mut children: Vec<Proc> = (0..3)
        .map(|_| spawn_worker(&app, &[("DATABASE_URL", url.as_str())]))
        .collect();
    let db = eventually(Duration::from_secs(30), || async {
        sqlx::PgPool::connect(&url).await.ok()
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        let applied: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&db)
            .await
            .ok();
        (applied == Some(provisioner_shared::db::MIGRATOR.iter().count() as i64)).then_some(())
    })
    .await;
    for child in &mut children {
        child.wait_for("worker started").await;
        assert!(
            child.child.try_wait().unwrap().is_none(),
            "a replica died at start"
        );
        child.child.kill().await.unwrap();
    }
    db.close().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{fresh}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_job_in_flight_when_the_broker_connection_drops_still_ends() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(3);
    let job: Value = app.create(&tenant, &body).await.json().await.unwrap();
    app.until_lock_waiters(1).await;
    let vhost = app.vhost.clone();
    let out = tokio::task::spawn_blocking(move || {
        provisioner_tests::process::tool("rabbitmqctl")
            .args([
                "close_all_connections",
                "--vhost",
                &vhost,
                "test: connection loss mid-job",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let done = app.wait_job(job["jobId"].as_str().unwrap()).await;
    assert_eq!(
        (done["code"].as_i64(), done["attempts"].as_i64()),
        (Some(503), Some(1)),
        "the in-flight attempt recorded its outcome: {done}"
    );
    drop(held);
    app.stop().await;
}

/// A create (template `t`, served) that `worker` has claimed and that waits for its tenant's
/// lock, which the returned transaction holds; the job's id.
async fn a_job_waiting_for_its_lock(
    app: &TestApp,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, String) {
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(60);
    let id = app.submit(&tenant, &body).await;
    app.until_lock_waiters(1).await;
    (held, id)
}

/// Until the interactive queue holds one message ready and none delivered (the broker's
/// figures lag a little).
async fn until_one_message_waits(app: &TestApp) {
    let queue = provisioner_shared::queue::Lane::Interactive.queue();
    eventually(Duration::from_secs(20), || async {
        (app.queue_depths(queue).await == (1, 0)).then_some(())
    })
    .await;
}

/// Stops `worker` with SIGTERM; it must exit cleanly.
async fn stop(mut worker: Proc) {
    worker.terminate();
    assert!(worker.exit(Duration::from_secs(15)).await.success());
}

#[tokio::test]
async fn a_job_still_running_at_the_shutdown_deadline_is_handed_back_at_once() {
    let app = TestApp::without_workers().await;
    let worker = spawn_worker(&app, &[("PROVISIONER_SHUTDOWN_TIMEOUT", "1")]);
    let (held, id) = a_job_waiting_for_its_lock(&app).await;
    stop(worker).await;
    // Back in the queue at once, without its lease; the attempt shutdown cut short is counted
    // as handed back, not against the job's limit (the job did not fail).
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "{job}"
    );
    let (lease, handed_back): (Option<chrono::DateTime<chrono::Utc>>, i32) =
        sqlx::query_as("SELECT lease_until, handed_back FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((lease, handed_back), (None, 1));
    // One message waits for it: the new one, which replaced the delivery (acknowledged).
    until_one_message_waits(&app).await;
    app.until_lock_waiters(0).await; // the abandoned session's wait ends within a second
    held.rollback().await.unwrap();
    // The next attempt's download fails once (transient): with two attempts allowed, it is
    // the job's first counted one, so the job is retried, not failed with 500 as when the
    // handed-back attempt counted.
    app.templates.route(
        "t",
        provisioner_tests::template_server::Route {
            status: 200,
            body: fixtures::sample_template(app.db_version().await)
                .write()
                .into(),
            // Counted over the path's requests: the first attempt's download was one.
            fail_first: app.templates.hits("t") + 1,
        },
    );
    let second = spawn_worker(&app, &[("PROVISIONER_JOB_MAX_ATTEMPTS", "2")]);
    let done = app.wait_job(&id).await;
    assert_eq!(
        (done["code"].as_i64(), done["attempts"].as_i64()),
        (Some(200), Some(3)),
        "{done}"
    );
    stop(second).await;
    app.stop().await;
}

/// A job that gets every worker stopped under it (a worker starved by it until its liveness
/// probe fails, say) is not handed back for ever: as many attempts as the limit are handed back
/// free, and past them an attempt stopped counts, as a lost worker's does, so the job ends.
#[tokio::test]
async fn hand_backs_past_the_attempts_limit_count_so_the_job_ends() {
    let app = TestApp::without_workers().await;
    let settings = [
        ("PROVISIONER_SHUTDOWN_TIMEOUT", "1"),
        ("PROVISIONER_JOB_MAX_ATTEMPTS", "1"),
    ];
    let first = spawn_worker(&app, &settings);
    let (held, id) = a_job_waiting_for_its_lock(&app).await;
    stop(first).await;
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(
        job["status"], "queued",
        "the first hand-back is free: {job}"
    );
    // The second attempt waits for the same lock, and its worker is stopped too.
    app.until_lock_waiters(0).await; // the abandoned session's wait ends within a second
    let second = spawn_worker(&app, &settings);
    app.until_lock_waiters(1).await;
    stop(second).await;
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(500), Some(2)),
        "{job}"
    );
    let detail = job["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("stopped at shutdown again after its free hand-backs (1)"),
        "{detail}"
    );
    // A poison job: its delivery is dead-lettered, as a job that crashed its last attempt is.
    eventually(Duration::from_secs(20), || async {
        (app.queue_depths("provisioner.jobs.dead").await.0 == 1).then_some(())
    })
    .await;
    let handed_back: i32 = sqlx::query_scalar("SELECT handed_back FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(handed_back, 1);
    held.rollback().await.unwrap();
    app.stop().await;
}

/// A job whose delivery the broker took back earlier (its session ended; the copy it delivered
/// again waited for the running job, then left it) is sent again when shutdown hands it back:
/// no delivery of it is left to go back with the connection.
#[tokio::test]
async fn a_job_handed_back_after_its_delivery_was_lost_is_sent_again() {
    let app = TestApp::without_workers().await;
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("PROVISIONER_SHUTDOWN_TIMEOUT", "1")],
        "info,provisioner_worker=debug",
    );
    let (held, id) = a_job_waiting_for_its_lock(&app).await;
    app.drop_broker_connections("test: a session lost mid-job")
        .await;
    // The copy the broker delivers again (to the next session) finds the job running under a
    // live lease, waits for two leases, and is acknowledged: no message of the job is left.
    worker
        .wait_for("a copy of a job running elsewhere; acknowledged")
        .await;
    stop(worker).await;
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(job["status"], "queued", "{job}");
    until_one_message_waits(&app).await;
    held.rollback().await.unwrap();
    let second = spawn_worker(&app, &[]);
    let done = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(done["code"], 200, "{done}");
    stop(second).await;
    app.stop().await;
}

#[tokio::test]
async fn stopping_the_api_publishes_every_job_it_committed() {
    // The harness's own API gets a broker it cannot reach, so its relay publishes nothing and
    // no worker consumes: whatever reaches the job queue was published by the API stopped below.
    let app = TestApp::with(provisioner_tests::Options {
        workers: 0,
        vars: vec![(
            "AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/unreachable".to_owned(),
        )],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    let amqp_url = app.broker_url();
    let mut settings = app.settings();
    settings.amqp_url = amqp_url.clone().into();
    let stop = tokio_util::sync::CancellationToken::new();
    let (bound, addr) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(provisioner_api::run(settings, stop.clone(), move |a| {
        let _ = bound.send(a);
    }));
    let addr = addr.await.expect("the API binds");
    let anonymous = provisioner_tests::http_client();
    let token = provisioner_tests::fetch_token(
        &anonymous,
        addr,
        provisioner_tests::BOOTSTRAP_ID,
        provisioner_tests::BOOTSTRAP_SECRET,
    )
    .await;
    let http = provisioner_tests::authorized_client(&token);

    let submissions = (0..30).map(|i| {
        let http = http.clone();
        let mut body = fixtures::create_body(&url);
        body["numberMap"] = json!({"0000000000": format!("41566{i:05}")});
        async move {
            let r = http
                .post(format!(
                    "http://{addr}/configapi/v2/selfservice/tenant/{}",
                    fixtures::tenant_url()
                ))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let mut ids: Vec<String> = futures_util::future::join_all(submissions).await;
    // Stop right after the last 202, and wait until the API has stopped.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), api)
        .await
        .expect("the API stops")
        .unwrap()
        .unwrap();

    assert_eq!(
        app.count("SELECT count(*) FROM outbox").await,
        0,
        "the outbox is drained"
    );
    let conn = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    // The client's first jobs on the interactive queue, the rest on the backlog queue.
    let mut queued = vec![];
    for queue in provisioner_shared::queue::JOB_QUEUES {
        while let Some(message) = channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap()
        {
            let message: provisioner_shared::queue::JobMessage =
                serde_json::from_slice(&message.delivery.data).unwrap();
            queued.push(message.job_id.to_string());
        }
    }
    let _ = conn.close(200, "done".into()).await;
    ids.sort();
    queued.sort();
    assert_eq!(queued, ids, "one message per job in the job queues");
    app.stop().await;
}

#[tokio::test]
async fn a_worker_stopped_before_it_connected_creates_no_database() {
    let app = TestApp::without_workers().await;
    let never = format!("{}_never", app.database);
    let mut vars = app.vars.clone();
    vars.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:5432/{never}"),
    );
    let settings = provisioner_shared::config::Settings::from_lookup(|k| vars.get(k).cloned())
        .expect("valid settings");
    // A test system dropped right after it started its worker (or a SIGTERM during start-up)
    // stops the worker before it has connected.
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    tokio::time::timeout(
        Duration::from_secs(30),
        provisioner_worker::run(settings, shutdown),
    )
    .await
    .expect("the worker returns")
    .expect("without an error");
    let created = app.drop_database_if_made(&never).await;
    assert!(!created, "the stopped worker created its database");
    app.stop().await;
}
