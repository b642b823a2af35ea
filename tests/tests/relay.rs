//! Outbox announcements wake the relay of the process that wrote the rows; the others poll, so
//! rows of a process whose relay cannot reach the broker, or that was killed after its commit,
//! are still published, once. A relay that deletes rows vacuums the table.

use std::time::Duration;

use provisioner_tests::{
    NO_BROKER, TestApp,
    events::{CLAIMED_AND_SUCCEEDED, EventTap, changes_of},
    eventually, fixtures,
    process::Proc,
    submit_via,
};

#[tokio::test]
async fn a_job_its_api_committed_and_never_sent_is_published_by_another_process_and_ends_once() {
    // Neither the harness's API nor the API process that accepts the job can reach the broker:
    // what that process commits, it never publishes, as if it died between its commit and its
    // publish; then it does die.
    let app = TestApp::without_broker().await;
    let amqp = app.broker_url();
    let mut api = Proc::spawn(
        env!("CARGO_BIN_EXE_test-api"),
        &app,
        &[("AMQP_URL", NO_BROKER)],
        "info",
    );
    let addr = api.api_addr().await;
    let mut tap = EventTap::start(&amqp).await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let id = submit_via(addr, &tenant, &url).await;
    // Killed at once after the 202: the job and its outbox rows are committed, nothing sent.
    api.child.kill().await.unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM outbox").await,
        2,
        "the job message and its queued event wait"
    );

    // A worker's relay (which reaches the broker) publishes them as soon as it is connected.
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    worker.wait_for("outbox relay connected").await;
    eventually(Duration::from_secs(5), || async {
        (app.count("SELECT count(*) FROM outbox WHERE exchange = 'provisioner.jobs'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let done = app.wait_job(&id).await;
    assert_eq!(
        (done["code"].as_i64(), done["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{done}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM tenants WHERE url = '{tenant}'"
        ))
        .await,
        1
    );
    // Once: each status change announced once.
    let events = app.published_events(&mut tap).await;
    assert_eq!(changes_of(&events, &id), CLAIMED_AND_SUCCEEDED);
    worker.child.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn rows_of_a_process_whose_relay_is_down_are_published_by_another_processs_poll() {
    // The harness's API (this test's process) cannot reach a broker.
    let app = TestApp::without_broker().await;
    let amqp = app.broker_url();
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    worker.wait_for("outbox relay connected").await;

    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    // The create woke only its own process's relay (in-process); the worker's relay, not woken
    // for it, published the job message when it polled.
    let done = app.wait_job(&id).await;
    assert_eq!(done["code"].as_i64(), Some(200), "{done}");
    worker.child.kill().await.unwrap();
    app.stop().await;
}

/// Every message's row is deleted within milliseconds; a relay reclaims the dead rows itself
/// rather than leaving every pass to walk them until autovacuum's next visit (a minute apart),
/// and once the system is quiet it cuts the empty end of a table a backlog left large.
#[tokio::test]
async fn a_relay_that_deletes_rows_vacuums_the_outbox_and_shrinks_it_when_quiet() {
    let app = TestApp::spawn().await;
    // Manual vacuums only: autovacuum's are counted apart.
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let before = vacuums().await;
    // What a backlog leaves: a table of megabytes, all its rows gone.
    sqlx::raw_sql(
        "INSERT INTO outbox (exchange, routing_key, message_id, content_type, payload)
         SELECT 'x', 'y', g::text, 'application/json', convert_to(repeat('z', 200), 'UTF8')
         FROM generate_series(1, 20000) g;
         DELETE FROM outbox;",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let large = app.count("SELECT pg_relation_size('outbox')").await;
    assert!(large > 2 << 20, "{large} bytes");

    let url = app.serve_sample_template("t").await;
    let done = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(done["code"].as_i64(), Some(200), "{done}");
    eventually(Duration::from_secs(10), || async {
        (vacuums().await > before).then_some(())
    })
    .await;
    // Every row published and deleted, and the relays quiet: the table is cut.
    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT pg_relation_size('outbox')").await < 64 << 10).then_some(())
    })
    .await;
    app.stop().await;
}

/// A database user that does not own the outbox cannot vacuum it: its relay says so once and
/// goes on publishing.
#[tokio::test]
async fn a_relay_whose_user_may_not_vacuum_the_outbox_says_so_and_goes_on_publishing() {
    // The harness's API (this test's process) cannot reach a broker: the worker's relay
    // publishes everything.
    let app = TestApp::without_broker().await;
    let role = format!("relay_{}", uuid::Uuid::new_v4().simple());
    for grant in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT ALL ON SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&grant).execute(&app.db).await.unwrap();
    }
    let amqp = app.broker_url();
    let database = format!("postgres://{role}@127.0.0.1:5432/{}", app.database);
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp), ("DATABASE_URL", &database)],
        "info",
    );
    worker.wait_for("outbox relay connected").await;

    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let done = app
        .create_and_wait(&tenant, &fixtures::create_body(&url))
        .await;
    assert_eq!(done["code"].as_i64(), Some(200), "{done}");
    let said = worker
        .wait_for_record("the relay's warning", |r| {
            r["level"] == "WARN" && r["message"].as_str().is_some_and(|m| m.contains("vacuum"))
        })
        .await;
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("owns neither the outbox table nor the database"),
        "{said}"
    );
    // It goes on: another job's messages and events are published.
    let done = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(done["code"].as_i64(), Some(200), "{done}");
    let warnings = worker
        .records()
        .into_iter()
        .filter(|r| r["level"] == "WARN" && r.to_string().contains("vacuum"))
        .count();
    assert_eq!(warnings, 1, "said once");

    worker.child.kill().await.unwrap();
    app.stop().await;
    let cleanup = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&cleanup)
        .await
        .unwrap();
}
