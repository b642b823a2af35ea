//! A job that outlasts the broker's consumer timeout completes exactly once. RabbitMQ 3.10 has
//! no per-queue timeout, so the test shortens the broker-wide one just while its worker opens
//! its channel (a channel keeps the timeout it opened with); it runs alone in this binary.

use std::time::Duration;

use provisioner_shared::queue::CREATE_TENANT_QUEUE;
use provisioner_tests::{
    TestApp, broker::BrokerSetting, events::EventTap, eventually, fixtures, process::Proc,
};
use serde_json::json;

#[tokio::test]
async fn a_job_that_outlasts_the_consumer_timeout_completes_exactly_once() {
    let app = TestApp::without_workers().await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    // The import will wait for this lock far longer than the consumer timeout.
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;

    // The broker checks its channels' deliveries every half second while the test runs.
    let _tick = BrokerSetting::set("channel_tick_interval", "500");
    let mut worker = {
        let _timeout = BrokerSetting::set("consumer_timeout", "2000");
        let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &[], "info");
        worker.wait_for("consuming").await;
        worker
    };
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(60);
    let id = app.submit(&tenant, &body).await;
    app.until_lock_waiters(1).await;
    // The broker gives up on the delivery and closes the channel; the worker consumes again
    // and gets the job's message back, while its first attempt still waits for the lock.
    worker
        .wait_for_record("the broker's consumer timeout", |r| {
            r.to_string().contains("acknowledgement")
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let consuming = |worker: &mut Proc| {
        worker
            .records()
            .iter()
            .filter(|r| r["message"] == "consuming")
            .count()
    };
    while consuming(&mut worker) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not consume again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.rollback().await.unwrap();

    let done = app.wait_job(&id).await;
    assert_eq!(
        fixtures::ending(&done),
        (Some("succeeded"), Some(200), Some(1)),
        "{done}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    // The redelivered copy was settled without a second run.
    eventually(Duration::from_secs(20), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await == 0).then_some(())
    })
    .await;
    let events = tap
        .collect_until(|e| e.iter().any(|e| e.routing_key == "job.succeeded"))
        .await;
    let running = events
        .iter()
        .filter(|e| e.routing_key == "job.running")
        .count();
    assert_eq!(running, 1, "one attempt ran");
    let (_, after) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(after, done, "nothing ran after it ended");
    worker.child.kill().await.unwrap();
    app.stop().await;
}
