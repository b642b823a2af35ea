//! The broker's side of delivery: the queues as the broker holds them (quorum, persistent,
//! bounded, dead-lettering at least once), a job message no queue takes, or the broker refuses
//! (a full queue's nack), stays in the outbox until it can be routed and taken (publisher
//! confirms and `mandatory`), and a worker that falls silent is found out by the heartbeat its
//! connection negotiated, its job redelivered to another.

use std::time::{Duration, Instant};

use provisioner_shared::{broker_figures::QueueReader, queue::CREATE_TENANT_QUEUE};
use provisioner_tests::{TestApp, eventually, fixtures, process::Proc, proxy::Proxy, submit_via};
use serde_json::json;

#[tokio::test]
async fn the_broker_holds_every_jobs_queue_with_the_contracts_arguments() {
    let app = TestApp::spawn().await;
    let queues = app.queue_declarations().await;
    let find = |name: &str| {
        queues
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("no queue {name} in {queues:#?}"))
    };
    for name in provisioner_shared::queue::JOB_QUEUES {
        let q = find(name);
        assert_eq!(
            (&q["type"], &q["durable"]),
            (&json!("quorum"), &json!(true)),
            "{q}"
        );
        let args = &q["arguments"];
        assert_eq!(args["x-queue-type"], "quorum", "{q}");
        assert_eq!(
            args["x-dead-letter-exchange"], "provisioner.jobs.dead",
            "{q}"
        );
        assert_eq!(args["x-dead-letter-strategy"], "at-least-once", "{q}");
        assert_eq!(args["x-overflow"], "reject-publish", "{q}");
        // Explicit bounds: a poison message is dead-lettered, never redelivered forever, and
        // the queue refuses publishes past its length.
        assert!(
            args["x-delivery-limit"].as_i64().is_some_and(|n| n > 0),
            "{q}"
        );
        assert!(args["x-max-length"].as_i64().is_some_and(|n| n > 0), "{q}");
    }
    let dead = find("provisioner.jobs.dead");
    assert_eq!(
        (&dead["type"], &dead["durable"]),
        (&json!("quorum"), &json!(true)),
        "{dead}"
    );
    app.stop().await;
}

/// An operator deletes a job queue while workers consume it: the broker cancels their
/// consumers, and each worker starts a new broker session, which declares the queue again and
/// consumes it. Before, the cancelled consumer was dropped silently and nobody consumed the
/// queue again (its job messages, unroutable, stayed in the outbox).
#[tokio::test]
async fn a_job_queue_deleted_under_the_workers_is_declared_again_and_consumed() {
    let app = TestApp::spawn().await;
    let url = app.templates.put(
        "t.zip",
        fixtures::sample_template(app.db_version().await).write(),
    );
    let body = fixtures::create_body(&url);
    assert_eq!(
        app.create_and_wait(&fixtures::tenant_url(), &body).await["code"],
        200
    );
    app.delete_job_queue(&app.broker_url(), CREATE_TENANT_QUEUE)
        .await;
    let job = app.create_and_wait(&fixtures::tenant_url(), &body).await;
    assert_eq!(job["code"], 200, "{job}");
    app.stop().await;
}

/// The job message of `id` waiting in the outbox: how often the relay tried it.
async fn outbox_attempts(app: &TestApp, id: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT attempts FROM outbox WHERE exchange = 'provisioner.jobs' AND message_id = $1",
    )
    .bind(id)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

/// A test system whose only outbox relay is an API process of its own (the harness's API cannot
/// reach the broker), with that process's address and the vhost's broker URL.
async fn system_with_one_relay() -> (TestApp, Proc, std::net::SocketAddr, String) {
    let app = TestApp::without_broker().await;
    let amqp = app.broker_url();
    let mut api = Proc::spawn(
        env!("CARGO_BIN_EXE_test-api"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    let addr = api.api_addr().await;
    (app, api, addr, amqp)
}

#[tokio::test]
async fn an_unroutable_job_message_stays_in_the_outbox_until_the_queue_is_bound_again() {
    let (app, mut api, addr, amqp) = system_with_one_relay().await;
    // Its relay declared the topology; then the job queue loses its binding.
    api.wait_for("outbox relay connected").await;
    app.bind_job_queue(&amqp, false).await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let id = submit_via(addr, &tenant, &url).await;

    // The broker returned it, twice: the relay says so and keeps it.
    api.wait_for_record("the unroutable alert", |r| {
        r["message"] == "message unroutable; kept in the outbox"
            && r["routing_key"] == "create-tenant"
    })
    .await;
    eventually(Duration::from_secs(15), || async {
        (outbox_attempts(&app, &id).await >= Some(2)).then_some(())
    })
    .await;
    assert_eq!(app.queue_messages(CREATE_TENANT_QUEUE).await, 0);
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(job["status"], "queued");
    // The relay's lag (`provisioner_outbox_lag_seconds`, the alert's figure) counts from when
    // the message was first due, not from its next try, which each refusal puts further off.
    let waited: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox
         WHERE exchange = 'provisioner.jobs' AND message_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let lag = provisioner_shared::db::outbox::lag_seconds(&mut app.db.acquire().await.unwrap())
        .await
        .unwrap();
    assert!(
        lag >= waited - 0.5 && waited > 0.5,
        "lag {lag} s; the message has waited {waited} s"
    );

    // Bound again, it is sent at its next try: once.
    app.bind_job_queue(&amqp, true).await;
    eventually(Duration::from_secs(20), || async {
        outbox_attempts(&app, &id).await.is_none().then_some(())
    })
    .await;
    // The broker's queue figures lag its confirms by a moment: wait for the copy to show.
    eventually(Duration::from_secs(15), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await >= 1).then_some(())
    })
    .await;
    assert_eq!(
        app.queue_messages(CREATE_TENANT_QUEUE).await,
        1,
        "one copy reached the queue"
    );
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    let done = app.wait_job(&id).await;
    assert_eq!(
        (done["code"].as_i64(), done["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{done}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    eventually(Duration::from_secs(10), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await == 0).then_some(())
    })
    .await;
    worker.child.kill().await.unwrap();
    api.child.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_job_message_the_broker_refuses_stays_in_the_outbox_until_it_is_taken() {
    let (app, mut api, addr, amqp) = system_with_one_relay().await;
    // Its relay declared the topology; then an operator caps the job queue, and a first job
    // fills it: past the cap (a quorum queue refuses a publish once it holds more than its
    // limit), the broker nacks every publish.
    api.wait_for("outbox relay connected").await;
    app.cap_queue(CREATE_TENANT_QUEUE, Some(0)).await;
    let url = app.serve_sample_template("t").await;
    let (first_tenant, tenant) = (fixtures::tenant_url(), fixtures::tenant_url());
    let first = submit_via(addr, &first_tenant, &url).await;
    eventually(Duration::from_secs(15), || async {
        (outbox_attempts(&app, &first).await.is_none()
            && app.queue_messages(CREATE_TENANT_QUEUE).await == 1)
            .then_some(())
    })
    .await;
    let id = submit_via(addr, &tenant, &url).await;

    // Refused, twice: the relay says so and keeps the message.
    api.wait_for_record("the refusal", |r| {
        r["message"] == "broker refused message; kept in the outbox"
            && r["exchange"] == "provisioner.jobs"
    })
    .await;
    eventually(Duration::from_secs(15), || async {
        (outbox_attempts(&app, &id).await >= Some(2)).then_some(())
    })
    .await;
    assert_eq!(
        app.queue_messages(CREATE_TENANT_QUEUE).await,
        1,
        "the first only"
    );
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(job["status"], "queued");

    // With room again, it is sent at its next try: once, and each job runs once.
    app.cap_queue(CREATE_TENANT_QUEUE, None).await;
    eventually(Duration::from_secs(20), || async {
        outbox_attempts(&app, &id).await.is_none().then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        app.queue_messages(CREATE_TENANT_QUEUE).await,
        2,
        "one copy of each reached the queue"
    );
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    for (id, tenant) in [(&first, &first_tenant), (&id, &tenant)] {
        let done = app.wait_job(id).await;
        assert_eq!(
            (done["code"].as_i64(), done["attempts"].as_i64()),
            (Some(200), Some(1)),
            "{done}"
        );
        fixtures::assert_sample_tenant(&app, tenant).await;
    }
    eventually(Duration::from_secs(10), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await == 0).then_some(())
    })
    .await;
    worker.child.kill().await.unwrap();
    api.child.kill().await.unwrap();
    app.stop().await;
}

/// The heartbeat the worker below asks for, in seconds (`?heartbeat=` of its AMQP URL).
const HEARTBEAT: u64 = 2;

fn signal(worker: &Proc, signal: &str) {
    let pid = worker.child.id().unwrap().to_string();
    let ok = provisioner_tests::process::tool("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Creates a tenant from `url` (whose template the test holds), waits until its download
/// began, then starts a second worker that never sweeps: only a redelivery can bring it the
/// job. The tenant, the job and that worker.
async fn job_held_and_a_rescuer(app: &TestApp, url: &str) -> (String, String, Proc) {
    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &fixtures::create_body(url)).await;
    eventually(Duration::from_secs(20), || async {
        (app.templates.hits("t") == 1).then_some(())
    })
    .await;
    let mut rescuer = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        app,
        &[("PROVISIONER_SWEEP_INTERVAL", "3600")],
        "info",
    );
    rescuer.wait_for("consuming").await;
    (tenant, id, rescuer)
}

#[tokio::test]
async fn a_silent_worker_is_found_out_within_three_heartbeats_and_its_job_redelivered() {
    let app = TestApp::without_workers().await;
    let amqp = format!(
        "amqp://guest:guest@127.0.0.1:5672/{}?heartbeat={HEARTBEAT}",
        app.vhost
    );
    let url = app.serve_sample_template("t").await;
    app.templates.hold("t");
    let mut victim = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp)],
        "info",
    );
    victim.wait_for("consuming").await;
    // The heartbeat asked for is the one negotiated; connections that ask for none get the
    // broker's (60 s).
    let connections = app.broker_connections().await;
    let victims: Vec<_> = connections
        .iter()
        .filter(|c| c.heartbeat == HEARTBEAT)
        .map(|c| c.name.as_str())
        .collect();
    assert!(victims.contains(&"provisioner-worker"), "{connections:?}");
    assert!(
        connections
            .iter()
            .filter(|c| c.heartbeat != HEARTBEAT)
            .all(|c| c.heartbeat == 60),
        "{connections:?}"
    );

    let (tenant, id, mut rescuer) = job_held_and_a_rescuer(&app, &url).await;
    signal(&victim, "STOP");
    let stopped = Instant::now();
    app.templates.release("t");
    // The broker hears nothing from the victim: it closes the victim's connection and
    // redelivers its job to the rescuer, which takes the job over at once (the victim's lease,
    // unrenewed, has run out by then).
    let redelivered = eventually(Duration::from_secs(30), || async {
        let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        (attempts == 2).then(|| stopped.elapsed())
    })
    .await;
    // RabbitMQ closes a connection after two to three heartbeat intervals without a byte.
    assert!(
        redelivered <= Duration::from_secs(3 * HEARTBEAT + 1),
        "redelivered after {redelivered:?}"
    );
    assert!(
        !app.broker_connections()
            .await
            .iter()
            .any(|c| c.heartbeat == HEARTBEAT),
        "the victim's connections are closed"
    );
    let done = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(
        fixtures::ending(&done),
        (Some("succeeded"), Some(200), Some(2)),
        "{done}"
    );
    rescuer
        .wait_for_record("the rescuer's success", |r| r["message"] == "job succeeded")
        .await;
    fixtures::assert_sample_tenant(&app, &tenant).await;
    victim.child.kill().await.unwrap();
    rescuer.child.kill().await.unwrap();
    app.stop().await;
}

/// Whether the broker holds a connection of a worker asking for `HEARTBEAT` (the victims below).
async fn victim_connected(app: &TestApp) -> bool {
    app.broker_connections()
        .await
        .iter()
        .any(|c| c.heartbeat == HEARTBEAT && c.name == "provisioner-worker")
}

#[tokio::test]
async fn a_worker_cut_off_from_the_broker_loses_its_delivery_and_reconnects_once_it_can() {
    let app = TestApp::without_workers().await;
    // The victim reaches the broker through a proxy the test cuts (packets dropped, nothing
    // closed); its database link stays up.
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!(
        "amqp://guest:guest@{}/{}?heartbeat={HEARTBEAT}",
        proxy.addr, app.vhost
    );
    let url = app.serve_sample_template("t").await;
    app.templates.hold("t");
    // Its download waits for the test's release (a minute at most), past the cut.
    let mut victim = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("AMQP_URL", &amqp), ("PROVISIONER_TEMPLATE_TIMEOUT", "60")],
        "info",
    );
    victim.wait_for("consuming").await;
    let (tenant, id, mut rescuer) = job_held_and_a_rescuer(&app, &url).await;

    proxy.cut();
    let cut = Instant::now();
    // Timed from before the reading that finds it gone (`rabbitmqctl` takes a while).
    let closed = eventually(Duration::from_secs(30), || async {
        let asked = cut.elapsed();
        (!victim_connected(&app).await).then_some(asked)
    })
    .await;
    assert!(
        closed <= Duration::from_secs(3 * HEARTBEAT + 1),
        "the broker closed the victim's connection after {closed:?}"
    );
    // The victim, hearing nothing either, gives its session up and tries a new one, which the
    // cut leaves unanswered.
    victim.wait_for("consumer interrupted; reconnecting").await;

    // Its job goes on (its database is reachable) and ends once; the copy the broker
    // redelivered to the rescuer finds it held, then ended, and is settled there.
    app.templates.release("t");
    let done = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(
        fixtures::ending(&done),
        (Some("succeeded"), Some(200), Some(1)),
        "{done}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    eventually(Duration::from_secs(30), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await == 0).then_some(())
    })
    .await;

    // Healed, the victim is back within a session's start timeout: an attempt that met the
    // cut does not hold its reconnection.
    proxy.heal();
    let healed = Instant::now();
    eventually(Duration::from_secs(40), || async {
        victim_connected(&app).await.then_some(())
    })
    .await;
    assert!(
        healed.elapsed()
            <= provisioner_shared::relay::BROKER_SESSION_TIMEOUT + Duration::from_secs(20),
        "reconnected after {:?}",
        healed.elapsed()
    );
    victim.child.kill().await.unwrap();
    rescuer.child.kill().await.unwrap();
    app.stop().await;
}

/// The job queues' figures (`/metrics`, the reconciler of a late backlog) are read on one
/// connection kept from one read to the next, and on a new one once it is lost.
#[tokio::test]
async fn the_job_queues_are_read_on_one_connection_kept_between_reads() {
    const NAME: &str = "provisioner-test-queues";
    let app = TestApp::without_workers().await;
    let reader = QueueReader::new(app.broker_url().into(), NAME);
    let ports = || async {
        app.broker_connections()
            .await
            .into_iter()
            .filter(|c| c.name == NAME)
            .map(|c| c.peer_port)
            .collect::<Vec<_>>()
    };
    // The API's relay declares the queues as it starts: read once they are all there.
    let figures = eventually(Duration::from_secs(15), || async {
        reader.read().await.ok()
    })
    .await;
    assert_eq!(
        figures.iter().map(|q| q.queue).collect::<Vec<_>>(),
        provisioner_shared::queue::JOB_QUEUES,
    );
    let kept = ports().await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    for _ in 0..3 {
        reader.read().await.unwrap();
    }
    assert_eq!(ports().await, kept, "the same connection, still open");

    // Lost: a read may fail on it (the reader learns of the close as it reads), and the next
    // one reads on a new connection.
    app.drop_broker_connections("test: the reader's connection is lost")
        .await;
    eventually(Duration::from_secs(10), || async {
        reader.read().await.ok()
    })
    .await;
    let new = ports().await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, kept);
    app.stop().await;
}
