//! Chaos: about a thousand creates while RabbitMQ restarts twice and PostgreSQL once, worker
//! processes are killed (-9) every few seconds, many of them inside their import transaction
//! holding a tenant's lock, and one more worker is cut off from PostgreSQL and then from
//! RabbitMQ (packets dropped, its connections left open) for a few seconds each. Half name a template URL (claimed, then imported), half a stored
//! template (tried before their claim: claimed and ended in the import's transaction). Every accepted job ends exactly once with its tenant written once
//! and whole; no advisory lock, outbox row or queued message is left.
//!
//! It restarts the machine's shared services, so it is ignored by a plain `cargo test`;
//! `scripts/test` runs it with `CI=true` or `PROVISIONER_CHAOS=1`.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use provisioner_tests::{
    Options, TestApp, eventually, fixtures, process::Proc, proxy::Proxy, settles,
};
use serde_json::Value;

const JOB_QUEUE: &str = "provisioner.jobs.create-tenant";
const DEAD_QUEUE: &str = "provisioner.jobs.dead";

fn spawn_worker(app: &TestApp) -> Proc {
    Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        app,
        &[("PROVISIONER_WORKER_CONCURRENCY", "4")],
        "warn",
    )
}

/// Runs service commands one after the other in one blocking task, which completes even if the
/// test fails meanwhile (a stopped broker is always started again); fails the test if one fails.
async fn run(commands: Vec<(&'static str, Vec<String>)>) {
    let failures = tokio::task::spawn_blocking(move || {
        commands
            .into_iter()
            .filter_map(|(program, args)| {
                let out = provisioner_tests::process::tool(program)
                    .args(&args)
                    .output()
                    .unwrap();
                (!out.status.success()).then(|| {
                    format!(
                        "{program} {args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}

async fn restart_rabbitmq() {
    run(vec![
        ("rabbitmqctl", vec!["stop_app".into()]),
        ("rabbitmqctl", vec!["start_app".into()]),
    ])
    .await;
}

/// Restarts the newest local cluster, as `scripts/services` starts it.
async fn restart_postgresql() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL cluster");
    let args = ["--skip-systemctl-redirect", &version, "main", "restart"];
    run(vec![("pg_ctlcluster", args.map(str::to_owned).to_vec())]).await;
}

/// The two ways a create names its template: a URL the worker downloads (the job is claimed
/// before its work), and a template of the store (the job is tried before its claim).
struct Templates {
    url: String,
    stored: String,
}

/// Submits a create until it is accepted (the same `Idempotency-Key` each time, so a create
/// whose answer was lost is not made twice); returns its job id. Every other create names the
/// stored template.
async fn submit(
    app: &TestApp,
    templates: &Templates,
    i: usize,
    at: tokio::time::Instant,
) -> String {
    // Paced so that the creates span the faults (not a synchronisation).
    tokio::time::sleep_until(at).await;
    let tenant = format!("chaos{i:05}.example.com");
    let mut body = fixtures::create_body(&templates.url);
    if i % 2 == 1 {
        let fields = body.as_object_mut().unwrap();
        fields.remove("templateUrl");
        fields.insert(
            "templateId".to_owned(),
            Value::from(templates.stored.clone()),
        );
    }
    body["numberMap"] = serde_json::json!({"0000000000": format!("4{:09}", i * 10)});
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = app
            .http
            .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
            .header("idempotency-key", format!("chaos-{i}"))
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await;
        if let Ok(r) = answer
            && r.status() == 202
        {
            let job: Value = r.json().await.unwrap();
            return job["jobId"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "create {i} never accepted");
        // Back off while the database restarts (not a synchronisation: any answer will do).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A worker reaching PostgreSQL and RabbitMQ through proxies the test cuts and heals (the
/// connections a cut met stay silent for ever, as after a partition that lost their state).
struct Partitioned {
    worker: Proc,
    database: Proxy,
    broker: Proxy,
}

impl Partitioned {
    async fn start(app: &TestApp) -> Self {
        let database = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
        let broker = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
        let worker = Proc::spawn(
            env!("CARGO_BIN_EXE_test-worker"),
            app,
            &[
                ("PROVISIONER_WORKER_CONCURRENCY", "4"),
                (
                    "DATABASE_URL",
                    &format!("postgres://postgres@{}/{}", database.addr, app.database),
                ),
                (
                    "AMQP_URL",
                    &format!(
                        "amqp://guest:guest@{}/{}?heartbeat=2",
                        broker.addr, app.vhost
                    ),
                ),
            ],
            "info,sqlx=warn",
        );
        Self {
            worker,
            database,
            broker,
        }
    }
}

/// Kills a worker every 3 s (starting a new one), restarting RabbitMQ at rounds 2 and 10 and
/// PostgreSQL at round 6 unless `restarts` is false; cuts the partitioned worker off from
/// PostgreSQL for rounds 3-4 and from RabbitMQ for rounds 8-9.
async fn chaos(
    app: &TestApp,
    workers: &mut Vec<Proc>,
    partitioned: &Partitioned,
    rounds: usize,
    restarts: bool,
) -> usize {
    let mut kills = 0;
    for round in 0..rounds {
        let started = Instant::now();
        match round {
            2 | 10 if restarts => restart_rabbitmq().await,
            6 if restarts => restart_postgresql().await,
            _ => {}
        }
        match round {
            3 => partitioned.database.cut(),
            5 => partitioned.database.heal(),
            8 => partitioned.broker.cut(),
            10 => partitioned.broker.heal(),
            _ => {}
        }
        let mut victim = workers.remove(round % workers.len());
        victim.child.start_kill().unwrap();
        victim.child.wait().await.unwrap();
        kills += 1;
        workers.push(spawn_worker(app));
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    }
    kills
}

#[tokio::test]
#[ignore = "restarts the shared PostgreSQL and RabbitMQ: scripts/test runs it with CI=true or PROVISIONER_CHAOS=1"]
async fn every_job_ends_exactly_once_through_broker_and_database_restarts_and_worker_kills() {
    let jobs: usize = std::env::var("PROVISIONER_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // `PROVISIONER_CHAOS_RESTARTS=0` keeps the shared services up (worker kills only).
    let restarts = std::env::var("PROVISIONER_CHAOS_RESTARTS").map_or(true, |v| v != "0");
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_RECONCILE_AFTER", "30".to_owned())],
    })
    .await;
    let templates = Templates {
        url: app.serve_sample_template("t").await,
        stored: app.store_sample_template().await,
    };
    let mut workers: Vec<Proc> = (0..3).map(|_| spawn_worker(&app)).collect();
    let mut partitioned = Partitioned::start(&app).await;
    let began = Instant::now();
    let start = tokio::time::Instant::now();
    // Spread over the first 36 s of the 42 s of chaos.
    let pace = Duration::from_secs(36) / jobs as u32;
    let submissions = stream::iter(0..jobs)
        .map(|i| submit(&app, &templates, i, start + pace * i as u32))
        .buffer_unordered(8)
        .collect::<Vec<String>>();
    let (ids, kills) = tokio::join!(
        submissions,
        chaos(&app, &mut workers, &partitioned, 14, restarts)
    );
    assert_eq!(ids.len(), jobs);

    // Every accepted job ends; then nothing is left anywhere.
    eventually(Duration::from_secs(300), || async {
        let open: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&app.db)
                .await
                .ok();
        (open == Some(0)).then_some(())
    })
    .await;
    let ended_in = began.elapsed();
    let by_code: Vec<(Option<i32>, i64)> =
        sqlx::query_as("SELECT code, count(*) FROM jobs GROUP BY code ORDER BY code")
            .fetch_all(&app.db)
            .await
            .unwrap();
    if by_code != vec![(Some(200), jobs as i64)] {
        let failed: Vec<String> = sqlx::query_scalar(
            "SELECT row_to_json(j)::text FROM (SELECT id, tenant_url, status, code, error, attempts,
               created_at, started_at, finished_at FROM jobs WHERE code IS DISTINCT FROM 200 LIMIT 10) j",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        let mut seen = String::new();
        for worker in workers.iter_mut().chain([&mut partitioned.worker]) {
            let text = worker.text();
            for line in text.lines().filter(|l| {
                failed
                    .iter()
                    .any(|f| f.get(7..43).is_some_and(|id| l.contains(id)))
            }) {
                seen.push_str(line);
                seen.push('\n');
            }
        }
        panic!("not every job succeeded once: {by_code:?}\n{failed:#?}\nworkers on them:\n{seen}");
    }
    // The tenant each job reports is the one that exists, whole.
    let matched = app
        .count(
            "SELECT count(*) FROM jobs j JOIN tenants t
             ON t.url = j.tenant_url AND t.id::text = j.tenant->>'id'",
        )
        .await;
    assert_eq!(matched, jobs as i64, "each job's tenant exists, once");
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, jobs as i64);
    let partial = app
        .count(
            "SELECT count(*) FROM tenants t WHERE
             (SELECT count(*) FROM users u WHERE u.tenant_id = t.id) <>
             (SELECT count(*) FROM users u JOIN tenants f ON f.id = u.tenant_id
              WHERE f.url = 'chaos00000.example.com')
             OR NOT EXISTS (SELECT 1 FROM config_objects o WHERE o.tenant_id = t.id)",
        )
        .await;
    assert_eq!(partial, 0, "no tenant is partly written");
    if let Err(left) = settles(Duration::from_secs(60), &Leftovers::default(), || {
        Leftovers::of(&app)
    })
    .await
    {
        let mut procs: Vec<&mut Proc> = workers.iter_mut().collect();
        procs.push(&mut partitioned.worker);
        panic!(
            "left after the jobs ended: {left:?}\n{}",
            diagnosis(&app, procs).await
        );
    }
    let attempts = app.count("SELECT sum(attempts)::bigint FROM jobs").await;
    println!(
        "chaos: {jobs} jobs, {kills} workers killed, restarts {restarts}; \
         all ended in {ended_in:?}; {attempts} attempts in all"
    );
    for mut worker in workers {
        worker.child.kill().await.unwrap();
    }
    partitioned.worker.child.kill().await.unwrap();
    app.stop().await;
}

/// What the system may hold once every job has ended: none of it should remain.
#[derive(Debug, Default, PartialEq)]
struct Leftovers {
    /// Import and tenant advisory locks, granted and awaited.
    locks: (i64, i64),
    outbox: i64,
    job_queue: i64,
    dead_queue: i64,
}

impl Leftovers {
    async fn of(app: &TestApp) -> Self {
        Self {
            locks: app.advisory_locks().await,
            outbox: app.count("SELECT count(*) FROM outbox").await,
            job_queue: app.queue_messages(JOB_QUEUE).await,
            dead_queue: app.queue_messages(DEAD_QUEUE).await,
        }
    }
}

/// Who holds what was left: the advisory locks' sessions, the outbox's rows, the queues'
/// consumers and the dead letters' reasons with their jobs.
async fn diagnosis(app: &TestApp, workers: Vec<&mut Proc>) -> String {
    let json = |sql: &'static str| async move {
        sqlx::query_scalar::<_, Option<String>>(sql)
            .fetch_one(&app.db)
            .await
            .map_or_else(|e| e.to_string(), Option::unwrap_or_default)
    };
    let locks = json(
        "SELECT json_agg(json_build_object('granted', l.granted, 'objid', l.objid, 'pid', a.pid,
           'state', a.state, 'port', a.client_port, 'since', now() - a.state_change,
           'query', left(a.query, 160)))::text
         FROM pg_locks l JOIN pg_stat_activity a USING (pid)
         WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await;
    let outbox = json(
        "SELECT json_agg(json_build_object('id', id, 'routing_key', routing_key, 'message_id', message_id,
           'available_at', available_at, 'attempts', attempts, 'created_at', created_at))::text
         FROM (SELECT * FROM outbox ORDER BY id LIMIT 20) o",
    )
    .await;
    let queues = app.queue_consumers().await;
    let sessions = json(
        "SELECT json_agg(json_build_object('pid', pid, 'app', application_name, 'port', client_port,
           'state', state, 'since', now() - state_change, 'query', left(query, 120)))::text
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let printed = |program: &str, args: &[&str]| {
        provisioner_tests::process::tool(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e.to_string())
    };
    let channels = printed(
        "rabbitmqctl",
        &[
            "list_channels",
            "-p",
            &app.vhost,
            "--quiet",
            "pid",
            "connection",
            "consumer_count",
            "messages_unacknowledged",
        ],
    );
    let connections = printed(
        "rabbitmqctl",
        &[
            "list_connections",
            "-p",
            &app.vhost,
            "--quiet",
            "pid",
            "peer_port",
            "channels",
        ],
    );
    let sockets = printed("ss", &["-tnpH", "dport = :5672"]);
    let logs: Vec<String> = workers
        .into_iter()
        .map(|w| {
            let pid = w.child.id();
            let text = w.text();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "worker {pid:?}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    let mut dead = Vec::new();
    if let Ok(conn) =
        lapin::Connection::connect(&app.broker_url(), lapin::ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        // Read without acknowledging: the letters go back when the connection closes.
        while dead.len() < 20
            && let Ok(Some(message)) = channel
                .basic_get(
                    DEAD_QUEUE.into(),
                    lapin::options::BasicGetOptions::default(),
                )
                .await
        {
            let job: Option<uuid::Uuid> = serde_json::from_slice::<Value>(&message.data)
                .ok()
                .and_then(|v| v["jobId"].as_str()?.parse().ok());
            let row: Option<String> = sqlx::query_scalar(
                "SELECT row_to_json(j)::text FROM (SELECT id, status, code, attempts, created_at, started_at, finished_at
                 FROM jobs WHERE id = $1) j",
            )
            .bind(job)
            .fetch_optional(&app.db)
            .await
            .ok()
            .flatten();
            dead.push(format!(
                "{} headers {:?} job {row:?}",
                String::from_utf8_lossy(&message.data),
                message.properties.headers()
            ));
        }
        let _ = conn.close(200, "read".into()).await;
    }
    format!(
        "advisory locks: {locks}\noutbox: {outbox}\nqueues: {queues}\nsessions: {sessions}\n\
         channels:\n{channels}\nconnections:\n{connections}\nsockets:\n{sockets}\n\
         dead letters:\n{}\n{}",
        dead.join("\n"),
        logs.join("\n")
    )
}
