//! The two ways a job whose worker is lost comes back, each on its own: the broker's
//! redelivery (the sweeper out of reach) and the lease sweeper (no redelivery possible); and a
//! lock holder killed mid-write or cut off from PostgreSQL, which leaves no partial rows and no
//! lock behind.

use std::time::{Duration, Instant};

use provisioner_tests::{Options, TestApp, eventually, fixtures, process::Proc, proxy::Proxy};
use serde_json::json;

fn spawn_worker(app: &TestApp, extra: &[(&str, &str)]) -> Proc {
    Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), app, extra, "info")
}

/// Sends `signal` (`STOP`, `CONT`, ...) to the child.
fn signal(worker: &Proc, signal: &str) {
    let pid = worker.child.id().expect("running").to_string();
    let ok = provisioner_tests::process::tool("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// No sweeper runs for an hour in these workers: only a redelivery can take a job back.
const NO_SWEEPER: (&str, &str) = ("PROVISIONER_SWEEP_INTERVAL", "3600");

/// A worker that never sweeps takes the job over by redelivery alone: it succeeds at its
/// second attempt, its tenant exists once, and no advisory lock is left.
async fn rescued_by_redelivery(app: &TestApp, id: &str, tenant: &str) {
    let (mut rescuer, _) = runs_again(app, id, tenant, &[NO_SWEEPER]).await;
    assert_eq!(app.advisory_locks().await, (0, 0));
    rescuer.child.kill().await.unwrap();
}

/// Starts another worker (with `extra` settings), which runs job `id` again: it succeeds at its
/// second attempt and its tenant exists, whole and once. The worker, and the job as it ended.
async fn runs_again(
    app: &TestApp,
    id: &str,
    tenant: &str,
    extra: &[(&str, &str)],
) -> (Proc, serde_json::Value) {
    let rescuer = spawn_worker(app, extra);
    let done = app.wait_job_within(id, Duration::from_secs(30)).await;
    assert_eq!(
        fixtures::ending(&done),
        (Some("succeeded"), Some(200), Some(2)),
        "{done}"
    );
    fixtures::assert_sample_tenant(app, tenant).await;
    (rescuer, done)
}

#[tokio::test]
async fn a_killed_workers_job_completes_through_redelivery_alone() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut victim = spawn_worker(&app, &[NO_SWEEPER]);
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(60);
    let id = app.submit(&tenant, &body).await;
    app.until_lock_waiters(1).await;
    victim.child.start_kill().unwrap(); // SIGKILL
    victim.child.wait().await.unwrap();
    app.until_lock_waiters(0).await;
    held.rollback().await.unwrap();
    // Had the victim acknowledged on receipt, nothing would bring the job back.
    rescued_by_redelivery(&app, &id, &tenant).await;
    app.stop().await;
}

#[tokio::test]
async fn a_stopped_workers_job_is_rescued_by_the_sweeper_and_the_worker_writes_nothing_after() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    // The victim claims the job and then waits for its template, outside any transaction.
    // At concurrency 1 (prefetch 1) it takes no further message: a stopped worker with free
    // prefetch would swallow the rescued job's new message until the broker's heartbeat
    // check closed its connection.
    app.templates.hold("t");
    let mut victim = spawn_worker(&app, &[("PROVISIONER_WORKER_CONCURRENCY", "1")]);
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    eventually(Duration::from_secs(20), || async {
        (app.templates.hits("t") == 1).then_some(())
    })
    .await;
    signal(&victim, "STOP");
    app.templates.release("t");
    // Its channel stays open, so the broker redelivers nothing: only the sweeper of another
    // worker can take the job back once the victim's lease (3 s) runs out.
    let (mut rescuer, done) = runs_again(&app, &id, &tenant, &[]).await;
    rescuer.wait_for("rescued a job whose lease ran out").await;
    // Woken, the victim finishes its attempt without effect: the job and tenant stay as they are.
    signal(&victim, "CONT");
    victim
        .wait_for_record("the victim's attempt ending", |r| {
            [
                "job failed",
                "job succeeded",
                "lease lost to another worker; this attempt wrote nothing",
            ]
            .contains(&r["message"].as_str().unwrap_or(""))
        })
        .await;
    let (_, after) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(after, done, "the stopped worker changed nothing");
    fixtures::assert_sample_tenant(&app, &tenant).await;
    victim.child.kill().await.unwrap();
    rescuer.child.kill().await.unwrap();
    app.stop().await;
}

/// Advisory locks granted and relation locks awaited in this test's database.
async fn locks(app: &TestApp) -> (i64, i64) {
    let advisory = app.advisory_locks().await.0;
    let waits = app
        .count(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND NOT granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
    (advisory, waits)
}

/// Waits (up to `within`) until no advisory lock is held and no relation lock awaited; how
/// long that took.
async fn until_locks_free(app: &TestApp, within: Duration) -> Duration {
    let since = Instant::now();
    eventually(within, || async {
        (locks(app).await == (0, 0)).then_some(())
    })
    .await;
    since.elapsed()
}

/// Nothing of an import that did not commit is left.
async fn assert_no_rows_written(app: &TestApp) {
    for table in [
        "tenants",
        "tenant_documents",
        "calling_lists",
        "access_numbers",
    ] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "no partial rows in {table}"
        );
    }
}

/// A transaction holding `users` against writes: an import stops after writing the tenant and
/// its objects, holding the tenant's lock, until it ends.
async fn users_held(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut users = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN SHARE MODE")
        .execute(&mut *users)
        .await
        .unwrap();
    users
}

#[tokio::test]
async fn a_lock_holder_killed_mid_write_leaves_no_rows_and_frees_the_lock() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let users = users_held(&app).await;
    let mut victim = spawn_worker(&app, &[NO_SWEEPER]);
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    eventually(Duration::from_secs(20), || async {
        (locks(&app).await == (1, 1)).then_some(())
    })
    .await;
    let wrote_tenant = app
        .table_locks("tenants", "l.mode = 'RowExclusiveLock' AND l.granted")
        .await;
    assert_eq!(wrote_tenant, 1, "the holder is inside its write");
    victim.child.start_kill().unwrap(); // SIGKILL
    victim.child.wait().await.unwrap();
    let freed_in = until_locks_free(&app, Duration::from_secs(5)).await;
    // Worker sessions check for a vanished client every second.
    assert!(
        freed_in < Duration::from_secs(2),
        "lock freed only after {freed_in:?}"
    );
    assert_no_rows_written(&app).await;
    users.rollback().await.unwrap();
    rescued_by_redelivery(&app, &id, &tenant).await;
    app.stop().await;
}

/// How long the sessions of the tests below may sit idle in a transaction (the least allowed).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(15);

/// A system without workers whose sessions may sit idle in a transaction `IDLE_IN_TRANSACTION`.
async fn app_with_idle_bound() -> TestApp {
    TestApp::with(Options {
        workers: 0,
        vars: vec![(
            "PROVISIONER_IDLE_IN_TRANSACTION_TIMEOUT",
            IDLE_IN_TRANSACTION.as_secs().to_string(),
        )],
    })
    .await
}

/// A worker that reaches PostgreSQL through a proxy the test cuts (its broker link stays up, so
/// only the database side is partitioned), with one slot: the job it is cut off in must not
/// keep it for ever. No sweeper.
async fn victim_behind_proxy(app: &TestApp) -> (Proxy, Proc) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = format!("postgres://postgres@{}/{}", proxy.addr, app.database);
    let victim = spawn_worker(
        app,
        &[
            NO_SWEEPER,
            ("DATABASE_URL", &through_proxy),
            ("PROVISIONER_WORKER_CONCURRENCY", "1"),
        ],
    );
    (proxy, victim)
}

#[tokio::test]
async fn a_lock_holder_cut_off_from_postgresql_frees_its_lock_within_the_idle_bound() {
    let app = app_with_idle_bound().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let users = users_held(&app).await;
    let (proxy, mut victim) = victim_behind_proxy(&app).await;
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    eventually(Duration::from_secs(20), || async {
        (locks(&app).await == (1, 1)).then_some(())
    })
    .await;
    // Cut while the holder waits inside its write; then its statement goes through, and its
    // answer goes nowhere: the session sits idle in its transaction, holding the tenant's lock,
    // and nothing the victim sends arrives.
    proxy.cut();
    users.rollback().await.unwrap();
    let freed_in = until_locks_free(&app, Duration::from_secs(30)).await;
    // The idle timeout is what freed it: not before, and soon after.
    assert!(
        freed_in >= IDLE_IN_TRANSACTION - Duration::from_secs(1)
            && freed_in < IDLE_IN_TRANSACTION + Duration::from_secs(5),
        "lock freed after {freed_in:?}"
    );
    assert_no_rows_written(&app).await;
    // The victim can renew nothing, and takes no more jobs: a lease after its first unanswered
    // probe it abandons the job and gives its delivery back, and once PostgreSQL counts as lost
    // it ends its broker session; another worker takes the job over once the lease has run out
    // (or that worker's sweeper takes it back first), so the job runs again.
    victim
        .wait_for(
            "PostgreSQL does not answer; giving deliveries back and taking no jobs until it does",
        )
        .await;
    let (mut rescuer, _) = runs_again(&app, &id, &tenant, &[]).await;
    assert_eq!(app.advisory_locks().await, (0, 0));

    // Healed (its connections that met the cut stay silent), the victim takes jobs again, and
    // runs them: it is the only worker left.
    victim
        .wait_for(
            "jobs running since PostgreSQL went silent a lease ago are abandoned to other workers",
        )
        .await;
    rescuer.child.kill().await.unwrap();
    proxy.heal();
    victim
        .wait_for("PostgreSQL answers again; taking jobs again")
        .await;
    victim.wait_for_count("consuming", 2).await;
    let next = fixtures::tenant_url();
    let id = app.submit(&next, &fixtures::create_body(&url)).await;
    let done = app.wait_job_within(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    fixtures::assert_sample_tenant(&app, &next).await;
    victim.child.kill().await.unwrap();
    drop(proxy);
    app.stop().await;
}

/// A worker cut off from PostgreSQL for less than it takes to count it lost: the job whose
/// answer the cut swallowed (its lock, granted while the cut lasted) would wait for it for ever,
/// holding the worker's only slot while its heartbeat, over new sessions, kept its lease alive.
/// A lease after the silence the worker abandons it and gives its delivery back; once the lease
/// has run out, it runs the job again itself, and more jobs after it.
#[tokio::test]
async fn a_job_whose_answer_a_short_cut_lost_is_abandoned_and_run_again() {
    let app = app_with_idle_bound().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let (proxy, mut victim) = victim_behind_proxy(&app).await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(60);
    let id = app.submit(&tenant, &body).await;
    app.until_lock_waiters(1).await;
    // The lock is granted while the cut lasts: the answer goes nowhere.
    proxy.cut();
    held.rollback().await.unwrap();
    victim
        .wait_for(
            "PostgreSQL did not answer a probe in time; sessions opened before are closed, and jobs running then get a lease to finish",
        )
        .await;
    proxy.heal();
    let done = app.wait_job_within(&id, Duration::from_secs(60)).await;
    assert_eq!(
        fixtures::ending(&done),
        (Some("succeeded"), Some(200), Some(2)),
        "{done}"
    );
    fixtures::assert_sample_tenant(&app, &tenant).await;
    victim
        .wait_for(
            "jobs running since PostgreSQL went silent a lease ago are abandoned to other workers",
        )
        .await;
    let next = fixtures::tenant_url();
    let id = app.submit(&next, &fixtures::create_body(&url)).await;
    let done = app.wait_job_within(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The cut was shorter than it takes to count PostgreSQL lost.
    assert!(
        !victim.records().iter().any(|r| r["message"]
            == "PostgreSQL does not answer; giving deliveries back and taking no jobs until it does"),
        "the worker counted PostgreSQL lost"
    );
    assert_eq!(app.advisory_locks().await, (0, 0));
    victim.child.kill().await.unwrap();
    drop(proxy);
    app.stop().await;
}

/// A session whose answer a cut swallowed, opened before the silence that followed, is closed
/// when it comes back to its pool: sqlx's own test on return would wait for ever for that
/// answer, holding the session's place (here the pool's only one).
#[tokio::test]
async fn a_session_older_than_a_silence_is_closed_when_it_comes_back_not_waited_for() {
    let app = TestApp::without_workers().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = secrecy::SecretString::from(format!(
        "postgres://postgres@{}/{}",
        proxy.addr, app.database
    ));
    let silences = provisioner_shared::db::Silences::default();
    let config = provisioner_shared::db::PoolConfig {
        max_connections: 1,
        application_name: "silence-test",
        idle_in_transaction_timeout: None,
        silences: Some(silences.clone()),
    };
    let pool = provisioner_shared::db::connect(&url, &config)
        .await
        .unwrap();
    let lost = tokio::spawn({
        let pool = pool.clone();
        async move { sqlx::query("SELECT pg_sleep(60)").execute(&pool).await }
    });
    eventually(Duration::from_secs(10), || async {
        let running = app
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'silence-test' AND state = 'active'
                   AND query LIKE 'SELECT pg_sleep%'",
            )
            .await;
        (running == 1).then_some(())
    })
    .await;
    // Its answer goes nowhere; the worker's probe would hear the silence.
    proxy.cut();
    silences.record(Instant::now());
    lost.abort();
    assert!(lost.await.unwrap_err().is_cancelled());
    proxy.heal();
    let conn = tokio::time::timeout(Duration::from_secs(5), pool.acquire())
        .await
        .expect("the pool's place came back")
        .unwrap();
    drop(conn);
    pool.close().await;
    drop(proxy);
    app.stop().await;
}

/// Over TCP, every pooled session asks PostgreSQL to probe a silent peer, so a partition ends
/// even a session that is not idle in a transaction (waiting for a lock); the recorder's pool of
/// generic plans starts its sessions the same way.
#[tokio::test]
async fn the_processes_sessions_ask_postgresql_to_probe_a_silent_peer() {
    let app = TestApp::without_workers().await;
    let config = provisioner_shared::db::PoolConfig {
        max_connections: 1,
        application_name: "keepalive-test",
        idle_in_transaction_timeout: Some(IDLE_IN_TRANSACTION),
        silences: None,
    };
    let pool = provisioner_shared::db::connect(&app.settings().database_url, &config)
        .await
        .unwrap();
    let generic = provisioner_shared::db::generic_plan_pool(&pool, 1);
    for (pool, plans) in [(&pool, "auto"), (&generic, "force_generic_plan")] {
        let mut settings = vec![];
        for name in [
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_keepalives_count",
            "client_connection_check_interval",
            "idle_in_transaction_session_timeout",
            "plan_cache_mode",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(pool)
                .await
                .unwrap();
            settings.push(value);
        }
        assert_eq!(settings, ["10", "5", "3", "1s", "15s", plans]);
    }
    generic.close().await;
    pool.close().await;
    app.stop().await;
}
