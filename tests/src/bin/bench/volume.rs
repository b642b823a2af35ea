//! `bench volume [BACKLOG] [TRIVIAL] [STANDARD] [ENDED]`: the system at volume, each figure next to
//! what this machine allows in the same run (build every binary first with
//! `cargo build --release -p provisioner-tests --bins`; the API and the workers run as the
//! release child processes `test-api` and `test-worker`, default settings, `RUST_LOG=info`; the
//! workers take `PROVISIONER_WORKER_CONCURRENCY` from the bench's environment when it is set).
//!
//! - raw figures: single-row commits of `pgbench` with 4 clients, and Argon2id hashes per
//!   second on every core;
//! - creates accepted by the API (workers stopped), with the tables about empty, then with
//!   BACKLOG (default 50,000) jobs queued and ENDED (default 1,000,000) jobs ended: 4
//!   connections as fast as they go, then an open loop at half that rate, and the second
//!   measure's rate and p99 against the first's;
//! - the floor of a job (`floor.rs`): TRIVIAL jobs through what the contract asks of each and
//!   nothing else, the same libraries and broker topology;
//! - TRIVIAL (default 3,000) stream creates of a template with one pre-hashed user (no hash, no
//!   download), 2 workers, end to end, with the CPU each process spent per job (the API, the
//!   workers, and the local PostgreSQL and RabbitMQ);
//! - STANDARD (default 2,000) tenants of a standard template (50 users, 200 objects, 5
//!   access-number ranges, one administrator hash each) as one batch, with 1 then 2 workers,
//!   against min(the hash rate, PostgreSQL's rate for the tenant's statements alone), with the
//!   CPU each process spent per tenant (the hash rate measured again just before and after each
//!   phase, and the higher taken), and that CPU split into the hash (the workers' `argon2-N`
//!   threads) and everything else, against what 75 % of the hash rate leaves besides the hash;
//! - the peak resident set of the API and of each worker through these runs.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{StreamExt, stream};
use provisioner_shared::template::{
    AccessNumberEntry, FORMAT, FORMAT_VERSION, Manifest, ManifestSource, ObjectEntry, Template,
    TenantEntry, UserEntry,
};
use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, TestApp, authorized_client, fetch_token, fixtures, http_client,
    process::{Proc, tool},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    cpu, floor,
    memory::{MIB, api_process, memory, reset_peak, sibling},
    percentile,
};

/// A hash of a password nobody uses, for the users templates carry.
const STORED_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";

pub async fn run(backlog: usize, trivial: usize, standard: usize, ended: usize) {
    let commits = raw_commits(4, Duration::from_secs(5));
    let hashes = hash_rate(Duration::from_secs(3)).await;
    println!("raw: pgbench single-row commits, 4 clients: {commits:.0}/s");
    for (name, value) in worker_settings() {
        println!("workers' setting from the environment: {name}={value}");
    }
    println!("raw: Argon2id (m=19456,t=2,p=1) on every core: {hashes:.1} hashes/s");
    let mut peaks = Peaks::default();
    // A phase asked for 0 times is left out (to measure one phase alone).
    accept(backlog, ended, commits, &mut peaks).await;
    if trivial > 0 {
        let floor = floor::measure(trivial).await;
        let cpu = |cpu: &floor::Cpu| {
            format!(
                "PostgreSQL {}, RabbitMQ {}, its own process {:.2} ms",
                shown_ms(cpu.postgres_ms),
                shown_ms(cpu.rabbitmq_ms),
                cpu.own_ms
            )
        };
        println!(
            "raw: the floor of a job (what the contract asks of each, at the least; floor.rs), {trivial} jobs: {:.0} accepted/s with 4 clients ({:.0}% of raw commits; CPU per create: {}); {:.0} jobs/s end to end (CPU per job: {})",
            floor.accept.per_second,
            floor.accept.per_second * 100.0 / commits,
            cpu(&floor.accept.cpu),
            floor.jobs.per_second,
            cpu(&floor.jobs.cpu)
        );
        trivial_jobs(trivial, floor.jobs.per_second, &mut peaks).await;
    }
    if standard > 0 {
        let (imports, cpu) = raw_imports(4, Duration::from_secs(3)).await;
        println!(
            "raw: the standard tenant's statements alone (PostgreSQL, 4 clients, no hash): {imports:.0} imports/s, PostgreSQL's CPU per import {}",
            shown_ms(cpu)
        );
        standard_imports(standard, imports, &mut peaks).await;
    }
    println!(
        "peak RSS: API {:.1} MiB, worker {:.1} MiB (worker threads at most {})",
        peaks.api as f64 / MIB,
        peaks.worker as f64 / MIB,
        peaks.worker_threads
    );
}

/// A service's CPU per item as printed.
fn shown_ms(ms: Option<f64>) -> String {
    ms.map_or_else(
        || "not measured (not a local process)".to_owned(),
        |ms| format!("{ms:.2} ms"),
    )
}

#[derive(Default)]
struct Peaks {
    api: u64,
    worker: u64,
    /// Most threads seen in a worker (blocking-pool threads linger 10 s after their work).
    worker_threads: u64,
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process runs")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a thread count")
}

impl Peaks {
    fn api(&mut self, api: &Proc) {
        self.api = self.api.max(memory(pid(api)).1);
    }

    fn worker(&mut self, worker: &Proc) {
        self.worker = self.worker.max(memory(pid(worker)).1);
        self.worker_threads = self.worker_threads.max(threads(pid(worker)));
    }
}

fn pid(p: &Proc) -> u32 {
    p.child.id().expect("the process runs")
}

/// Transactions per second of `pgbench` committing one-row inserts with `clients` clients.
fn raw_commits(clients: usize, for_how_long: Duration) -> f64 {
    let db = format!("bench_raw_{}", std::process::id());
    let psql = |sql: &str, db: &str| {
        let ok = tool("psql")
            .args([
                "-qAt",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .status()
            .expect("psql runs")
            .success();
        assert!(ok, "psql: {sql}");
    };
    psql(&format!("CREATE DATABASE {db}"), "postgres");
    psql(
        "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)",
        &db,
    );
    let script = std::env::temp_dir().join(format!("{db}.sql"));
    std::fs::write(&script, "INSERT INTO t (v) VALUES ('x');\n").unwrap();
    let out = tool("pgbench")
        .args(["-n", "-h", "127.0.0.1", "-U", "postgres", "-j", "2"])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{}", for_how_long.as_secs()))
        .arg("-f")
        .arg(&script)
        .arg(&db)
        .output()
        .expect("pgbench runs (Debian's postgresql-client)");
    let _ = std::fs::remove_file(&script);
    psql(&format!("DROP DATABASE {db}"), "postgres");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("pgbench said: {text}"))
}

/// Argon2id hashes per second with a thread per core, hashed as a worker hashes them (its
/// hashing pool, each thread keeping its working memory between hashes; a hash that allocated
/// its 19 MiB afresh measured a few per cent slower), after one hash per thread.
/// The cores this machine gives the processes (each measure runs on all of them).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn hash_rate(for_how_long: Duration) -> f64 {
    use provisioner_shared::passwords::{HashPool, Memory};
    let threads = cores();
    let pool = std::sync::Arc::new(HashPool::new(threads, Memory::Keep));
    let hash = |pool: std::sync::Arc<HashPool>| async move {
        pool.hash(b"password".to_vec()).await.expect("a hash");
    };
    futures_util::future::join_all((0..threads).map(|_| hash(pool.clone()))).await;
    let started = Instant::now();
    let done: Vec<usize> = futures_util::future::join_all((0..threads).map(|_| {
        let pool = pool.clone();
        async move {
            let mut n = 0;
            while started.elapsed() < for_how_long {
                hash(pool.clone()).await;
                n += 1;
            }
            n
        }
    }))
    .await;
    done.iter().sum::<usize>() as f64 / started.elapsed().as_secs_f64()
}

/// Imports per second of the standard template's tenant written by PostgreSQL alone, with
/// `clients` connections: the statements a create's import makes for its tenant (the tenant
/// with its users and objects, then its access numbers: created by the first tenant, found
/// taken and skipped by every other, as in the system's run), each tenant one transaction,
/// fresh ids each time, no job, lock, hash or event around them.
///
/// Returns the rate and PostgreSQL's CPU per import (when it is a local process).
async fn raw_imports(clients: usize, for_how_long: Duration) -> (f64, Option<f64>) {
    use provisioner_shared::{
        db::{
            access_numbers,
            tenants::{self, Contents, TenantRow},
        },
        domain::TenantStatus,
    };
    let app = TestApp::without_workers().await;
    let template = standard(app.db_version().await);
    // As the system's pools: no round trip to test a connection before each use.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .test_before_acquire(false)
        .connect(&app.vars["DATABASE_URL"])
        .await
        .expect("PostgreSQL answers");
    let postgres = cpu::Services::find(&db).await;
    let postgres_before = postgres.seconds()[0];
    let started = Instant::now();
    let done: usize = stream::iter(0..clients)
        .map(|_| {
            let (db, template) = (db.clone(), &template);
            async move {
                let mut n = 0;
                while started.elapsed() < for_how_long {
                    let ids: std::collections::HashMap<Uuid, Uuid> = template
                        .objects
                        .iter()
                        .map(|o| (o.id, Uuid::now_v7()))
                        .collect();
                    let objects: Vec<ObjectEntry> = template
                        .objects
                        .iter()
                        .map(|o| ObjectEntry {
                            id: ids[&o.id],
                            refs: o.refs.iter().map(|r| ids[r]).collect(),
                            ..o.clone()
                        })
                        .collect();
                    let users: Vec<UserEntry> = template
                        .users
                        .iter()
                        .map(|u| UserEntry {
                            id: Uuid::now_v7(),
                            teams: u.teams.iter().map(|t| ids[t]).collect(),
                            ..u.clone()
                        })
                        .collect();
                    let url = fixtures::tenant_url();
                    let tenant = TenantRow {
                        id: Uuid::now_v7(),
                        sip_domain: url.clone(),
                        url,
                        name: "Raw".into(),
                        status: TenantStatus::Inactive,
                        created_at: Utc::now(),
                    };
                    let contents = Contents {
                        settings: Some(&template.tenant.settings),
                        objects: &objects,
                        users: &users,
                        calling_lists: &[],
                        audit: &[],
                    };
                    let mut tx = db.begin().await.expect("a transaction");
                    assert!(
                        tenants::insert(&mut tx, &tenant, contents)
                            .await
                            .expect("the tenant")
                    );
                    access_numbers::place_all(&mut tx, tenant.id, &template.access_numbers)
                        .await
                        .expect("the access numbers");
                    tx.commit().await.expect("a commit");
                    n += 1;
                }
                n
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    let rate = done as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu::per_item_ms(postgres_before, postgres.seconds()[0], done);
    db.close().await;
    app.stop().await;
    (rate, cpu)
}

/// A system whose in-process API is stopped, with an API child process and a client of it.
async fn system() -> (TestApp, Proc, String, reqwest::Client) {
    let app = TestApp::without_workers().await;
    app.stop_api();
    let (api, addr) = api_process(&app).await;
    let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    (
        app,
        api,
        format!("http://{addr}"),
        authorized_client(&token),
    )
}

/// A worker process with the default settings, but for the workers' concurrency given to the
/// bench itself (`PROVISIONER_WORKER_CONCURRENCY=8 bench volume ...`), passed on so that another
/// setting can be measured beside the default (`run` prints it).
fn worker(app: &TestApp) -> Proc {
    let passed = worker_settings();
    let extra: Vec<(&str, &str)> = passed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Proc::spawn(&sibling("test-worker"), app, &extra, "info")
}

/// The workers' settings of the bench's environment that its workers get: only those that
/// can differ between measures of one machine (not, say, a health listener's address, which
/// two workers cannot share; a child process sees nothing else of the bench's environment).
fn worker_settings() -> Vec<(String, String)> {
    const PASSED: [&str; 1] = ["PROVISIONER_WORKER_CONCURRENCY"];
    PASSED
        .iter()
        .filter_map(|&k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .collect()
}

/// Creates a tenant from a template URL nobody serves (no worker runs in the accept phase):
/// the answer's status and its latency in milliseconds.
async fn create(http: &reqwest::Client, base: &str, url: String) -> (u16, f64) {
    let mut body = fixtures::create_body("https://templates.example/support-v3.zip");
    body["numberMap"] = json!({});
    let t = Instant::now();
    let r = http
        .post(format!("{base}/configapi/v2/selfservice/tenant/{url}"))
        .json(&body)
        .send()
        .await
        .expect("an answer");
    (r.status().as_u16(), t.elapsed().as_secs_f64() * 1e3)
}

/// What the accept loops measured.
struct AcceptLoops {
    /// Creates a second, closed loop.
    rate: f64,
    closed_p99: f64,
    open_p99: f64,
}

/// Creates accepted with 4 connections in a closed loop, then in an open loop at half that
/// rate, printed with `what` the tables hold.
async fn accept_loops(
    http: &reqwest::Client,
    base: &str,
    api: &Proc,
    app: &TestApp,
    commits: f64,
    what: &str,
) -> AcceptLoops {
    let requests = 4000;
    let grouping = Grouping::read(http, base).await;
    let services = cpu::Services::find(&app.db).await;
    let cpu_before = (
        services.seconds(),
        cpu::process_seconds(pid(api)),
        cpu::process_seconds(std::process::id()),
    );
    let started = Instant::now();
    let mut closed: Vec<(u16, f64)> = stream::iter(0..requests)
        .map(|_| create(http, base, fixtures::tenant_url()))
        .buffer_unordered(4)
        .collect()
        .await;
    let rate = requests as f64 / started.elapsed().as_secs_f64();
    let services_after = services.seconds();
    let per_create = |before: f64, after: f64| (after - before) * 1e3 / requests as f64;
    let cpu = format!(
        "CPU per create: PostgreSQL {}, RabbitMQ {}, API {:.2} ms, this client {:.2} ms",
        shown_ms(cpu::per_item_ms(
            cpu_before.0[0],
            services_after[0],
            requests
        )),
        shown_ms(cpu::per_item_ms(
            cpu_before.0[1],
            services_after[1],
            requests
        )),
        per_create(cpu_before.1, cpu::process_seconds(pid(api))),
        per_create(cpu_before.2, cpu::process_seconds(std::process::id())),
    );
    let refused: Vec<u16> = closed
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != 202)
        .collect();
    assert!(refused.is_empty(), "every create accepted, not {refused:?}");
    let mut latencies: Vec<f64> = closed.drain(..).map(|(_, ms)| ms).collect();
    latencies.sort_by(f64::total_cmp);
    let closed_p99 = percentile(&latencies, 0.99);
    println!(
        "accept, {what}, 4 connections: {rate:.0}/s ({:.0}% of raw commits), p50 {:.1} ms, p99 {closed_p99:.1} ms, {:.2} submissions a statement",
        100.0 * rate / commits,
        percentile(&latencies, 0.5),
        grouping.since(http, base).await,
    );
    println!("{cpu}");

    // Open loop: requests leave on a schedule, whatever the answers do.
    let half = rate / 2.0;
    let n = (half * 5.0) as usize;
    let started = tokio::time::Instant::now();
    let grouping = Grouping::read(http, base).await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let at = started + Duration::from_secs_f64(i as f64 / half);
            let (http, base) = (http.clone(), base.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                create(&http, &base, fixtures::tenant_url()).await
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    for t in tasks {
        open.push(t.await.expect("a request"));
    }
    let refused = open.iter().filter(|(s, _)| *s != 202).count();
    let mut latencies: Vec<f64> = open.into_iter().map(|(_, ms)| ms).collect();
    latencies.sort_by(f64::total_cmp);
    let open_p99 = percentile(&latencies, 0.99);
    println!(
        "accept, {what}, open loop at {half:.0}/s for 5 s: p50 {:.1} ms, p99 {open_p99:.1} ms, {refused} not accepted, {:.2} submissions a statement",
        percentile(&latencies, 0.5),
        grouping.since(http, base).await,
    );
    AcceptLoops {
        rate,
        closed_p99,
        open_p99,
    }
}

/// Creates accepted with the tables about empty, then with `backlog` jobs queued and `ended`
/// jobs ended (another client's and the creating client's own, as on a shared deployment that
/// keeps a week of jobs): the rate and latencies should be the same (a create's cost does not
/// grow with the tables).
async fn accept(backlog: usize, ended: usize, commits: f64, peaks: &mut Peaks) {
    let (app, api, base, http) = system().await;
    // One real job, copied into the tables below.
    let (status, _) = create(&http, &base, fixtures::tenant_url()).await;
    assert_eq!(status, 202);
    // A warm-up first, unmeasured (connections, caches, the recorder's plans), so that the
    // first measure is not also the warm-up of the second.
    let _: Vec<(u16, f64)> = stream::iter(0..1000)
        .map(|_| create(&http, &base, fixtures::tenant_url()))
        .buffer_unordered(4)
        .collect()
        .await;
    reset_peak(pid(&api));
    let empty = accept_loops(&http, &base, &api, &app, commits, "tables about empty").await;
    let copies = |status: &'static str, from: usize, to: usize| {
        let db = app.db.clone();
        async move {
            // The copy is queued, or ended an hour ago (within any retention): a tenth of the
            // ended jobs are the creating client's own.
            sqlx::query(
                "INSERT INTO jobs SELECT (jsonb_populate_record(j, jsonb_build_object(
                     'id', gen_random_uuid(), 'tenant_url', $1 || g || '.example.com',
                     'client_id', CASE WHEN $1 = 'backlog-' THEN 'backlog-client'
                                       WHEN g % 10 = 0 THEN j.client_id
                                       ELSE 'ended-client-' || g % 100 END,
                     'idempotency_key', NULL, 'status', $2::text,
                     'code', CASE WHEN $2 = 'succeeded' THEN 200 END,
                     'started_at', CASE WHEN $2 = 'succeeded' THEN now() - interval '61 minutes' END,
                     'finished_at', CASE WHEN $2 = 'succeeded' THEN now() - interval '1 hour' END))).*
                 FROM jobs j, generate_series($3, $4) g
                 WHERE j.id = (SELECT id FROM jobs ORDER BY created_at LIMIT 1)",
            )
            .bind(if status == "queued" { "backlog-" } else { "ended-" })
            .bind(status)
            .bind(from as i64)
            .bind(to as i64)
            .execute(&db)
            .await
            .expect("copies of the job");
        }
    };
    let grown = Instant::now();
    // The loops' jobs end, as a worker would end them: the client stays under its cap of
    // active jobs.
    sqlx::query(
        "UPDATE jobs SET status = 'succeeded', code = 200, started_at = now(), finished_at = now()
         WHERE status = 'queued'",
    )
    .execute(&app.db)
    .await
    .expect("the loops' jobs ended");
    copies("queued", 1, backlog).await;
    // In chunks: one statement's transition tables (the counting triggers) stay small.
    for from in (1..=ended).step_by(100_000) {
        copies("succeeded", from, (from + 99_999).min(ended)).await;
    }
    // What autovacuum would do after such growth (PostgreSQL's default; this machine's
    // PostgreSQL may run without it).
    sqlx::raw_sql("ANALYZE jobs")
        .execute(&app.db)
        .await
        .expect("analyze");
    eprintln!(
        "({backlog} queued and {ended} ended jobs written in {:.0} s)",
        grown.elapsed().as_secs_f64()
    );
    let full = accept_loops(
        &http,
        &base,
        &api,
        &app,
        commits,
        &format!("{backlog} queued, {ended} ended"),
    )
    .await;
    println!(
        "accept with {backlog} queued and {ended} ended against tables about empty: {:.0}% of the rate, p99 {:.1} against {:.1} ms (closed loop), {:.1} against {:.1} ms (open loop)",
        100.0 * full.rate / empty.rate,
        full.closed_p99,
        empty.closed_p99,
        full.open_p99,
        empty.open_p99,
    );
    peaks.api(&api);
    drop(api);
    app.stop().await;
}

/// The API's count of recorded submissions and of the statements that recorded them.
struct Grouping {
    submissions: f64,
    statements: f64,
}

impl Grouping {
    async fn read(http: &reqwest::Client, base: &str) -> Self {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics reads");
        let figure = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map_or(0.0, |v| v.trim().parse().expect("a number"))
        };
        Self {
            submissions: figure("provisioner_submissions_total"),
            statements: figure("provisioner_submission_statements_total"),
        }
    }

    /// Submissions a statement recorded since `self` was read.
    async fn since(&self, http: &reqwest::Client, base: &str) -> f64 {
        let now = Self::read(http, base).await;
        (now.submissions - self.submissions) / (now.statements - self.statements).max(1.0)
    }
}

fn manifest(db_version: i64) -> (Manifest, TenantEntry) {
    let source = Uuid::new_v4();
    (
        Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            db_version,
            exported_at: Utc::now(),
            source: ManifestSource {
                tenant_id: source,
                tenant_url: "source.example.com".into(),
                tenant_name: "Source".into(),
            },
        },
        TenantEntry {
            id: source,
            url: "source.example.com".into(),
            name: "Source".into(),
            sip_domain: "source.example.com".into(),
            settings: Default::default(),
        },
    )
}

fn user(login: &str) -> UserEntry {
    UserEntry {
        id: Uuid::new_v4(),
        login_id: login.into(),
        first_name: "First".into(),
        last_name: "Last".into(),
        email: format!("{login}@source.example"),
        roles: vec!["agent".into()],
        password_hash: Some(STORED_HASH.to_owned()),
        teams: vec![],
    }
}

/// One pre-hashed user and nothing else.
fn trivial_template(db_version: i64) -> Vec<u8> {
    let (manifest, tenant) = manifest(db_version);
    Template {
        manifest,
        tenant,
        users: vec![user("admin")],
        objects: vec![],
        access_numbers: vec![],
        calling_lists: vec![],
        audit: vec![],
    }
    .write()
}

/// 50 users, 200 objects referring to each other, 5 access-number ranges.
fn standard_template(db_version: i64) -> Vec<u8> {
    standard(db_version).write()
}

/// The standard template, as `standard_template` writes it.
fn standard(db_version: i64) -> Template {
    let (manifest, tenant) = manifest(db_version);
    let mut users: Vec<UserEntry> = (1..50).map(|i| user(&format!("agent{i}"))).collect();
    users.push(user("admin"));
    let teams: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let mut objects: Vec<ObjectEntry> = teams
        .iter()
        .enumerate()
        .map(|(i, id)| ObjectEntry {
            id: *id,
            kind: "team".into(),
            name: format!("Team {i}"),
            data: json!({"size": i}).as_object().unwrap().clone().into(),
            refs: vec![],
        })
        .collect();
    for i in 0..180 {
        objects.push(ObjectEntry {
            id: Uuid::new_v4(),
            kind: if i % 2 == 0 { "skill" } else { "service" }.into(),
            name: format!("Object {i}"),
            data: json!({"sla": i, "note": "x".repeat(64)})
                .as_object()
                .unwrap()
                .clone()
                .into(),
            refs: vec![teams[i % teams.len()]],
        });
    }
    for (i, u) in users.iter_mut().enumerate() {
        u.teams = vec![teams[i % teams.len()]];
    }
    Template {
        manifest,
        tenant,
        users,
        objects,
        access_numbers: (0..5)
            .map(|i| AccessNumberEntry {
                number: format!("00000{i}0000"),
                count: 100,
                media: "VOICE".into(),
            })
            .collect(),
        calling_lists: vec![],
        audit: vec![],
    }
}

/// Waits until no job is queued or running (read from the trigger-kept counts).
async fn until_idle(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(n), 0)::bigint FROM job_counts WHERE status IN ('queued', 'running')",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} jobs still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn trivial_jobs(n: usize, floor: f64, peaks: &mut Peaks) {
    let (app, api, base, http) = system().await;
    let zip = bytes::Bytes::from(trivial_template(app.db_version().await));
    let workers = [worker(&app), worker(&app)];
    let procs: Vec<&Proc> = std::iter::once(&api).chain(workers.iter()).collect();
    for p in &procs {
        reset_peak(pid(p));
    }
    let before: Vec<f64> = procs.iter().map(|p| cpu::process_seconds(pid(p))).collect();
    let services = cpu::Services::find(&app.db).await;
    let services_before = services.seconds();
    let started = Instant::now();
    let statuses: Vec<u16> = stream::iter(0..n)
        .map(|_| {
            let (http, base, zip) = (http.clone(), base.clone(), zip.clone());
            async move {
                http.put(format!(
                    "{base}/configapi/v2/tenant/{}",
                    fixtures::tenant_url()
                ))
                .header("content-type", "application/zip")
                .body(zip)
                .send()
                .await
                .expect("an answer")
                .status()
                .as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every create accepted");
    let accepted = started.elapsed();
    until_idle(&app, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let cpu: Vec<f64> = procs
        .iter()
        .zip(&before)
        .map(|(p, b)| cpu::process_seconds(pid(p)) - b)
        .collect();
    let services_after = services.seconds();
    let ok = app
        .count("SELECT count(*) FROM jobs WHERE code = 200")
        .await;
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "trivial jobs: {n} stream creates (accepted in {:.2} s), 2 workers: {rate:.0} jobs/s end to end ({:.0} % of the floor), {ok} succeeded",
        accepted.as_secs_f64(),
        rate * 100.0 / floor
    );
    println!(
        "CPU per trivial job: API {:.2} ms, workers {:.2} ms",
        cpu[0] * 1e3 / n as f64,
        (cpu[1] + cpu[2]) * 1e3 / n as f64
    );
    // The services' share: most of a trivial job's cost is theirs.
    let per_job = |service: usize| {
        shown_ms(cpu::per_item_ms(
            services_before[service],
            services_after[service],
            n,
        ))
    };
    println!(
        "CPU per trivial job, services: PostgreSQL {}, RabbitMQ {}",
        per_job(0),
        per_job(1)
    );
    peaks.api(&api);
    for w in &workers {
        peaks.worker(w);
    }
    drop(workers);
    drop(api);
    app.stop().await;
}

/// `n` standard tenants as one batch, with one then two workers, each against min(PostgreSQL's
/// import rate `imports`, the hash rate). The hash rate is measured just before and just after
/// each phase and the higher of the two taken: the machine's speed moves by a fifth within
/// minutes, and a measure taken at the run's start, minutes away, moved the ratio by as much;
/// the higher one, since what the phase left running (autovacuum, a checkpoint) may slow the
/// measure after it, which would flatter the ratio.
async fn standard_imports(n: usize, imports: f64, peaks: &mut Peaks) {
    let (app, api, base, http) = system().await;
    let zip = standard_template(app.db_version().await);
    let stored: Value = http
        .post(format!("{base}/configapi/v2/templates"))
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("the stored template");
    let template_id = stored["templateId"].as_str().expect("an id").to_owned();
    let mut workers = vec![worker(&app)];
    for count in [1, 2] {
        while workers.len() < count {
            workers.push(worker(&app));
        }
        for w in &workers {
            reset_peak(pid(w));
        }
        let body: String = (0..n)
            .map(|_| {
                let mut item = fixtures::create_body("https://unused.example/t.zip");
                let item = item.as_object_mut().unwrap();
                item.remove("templateUrl");
                item.remove("numberMap");
                item.insert("templateId".into(), json!(template_id));
                item.insert("tenantUrl".into(), json!(fixtures::tenant_url()));
                format!("{}\n", Value::Object(item.clone()))
            })
            .collect();
        let hashes_before = hash_rate(Duration::from_secs(3)).await;
        let procs: Vec<&Proc> = std::iter::once(&api).chain(workers.iter()).collect();
        let before: Vec<f64> = procs.iter().map(|p| cpu::process_seconds(pid(p))).collect();
        let hashing = || -> f64 {
            workers
                .iter()
                .map(|w| cpu::threads_seconds(pid(w), "argon2-"))
                .sum()
        };
        let hashing_before = hashing();
        let services = cpu::Services::find(&app.db).await;
        let services_before = services.seconds();
        let started = Instant::now();
        let r = http
            .post(format!("{base}/configapi/v2/batches"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        until_idle(&app, Duration::from_secs(1800)).await;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let cpu: Vec<f64> = procs
            .iter()
            .zip(&before)
            .map(|(p, b)| (cpu::process_seconds(pid(p)) - b) * 1e3 / n as f64)
            .collect();
        let hash_ms = (hashing() - hashing_before) * 1e3 / n as f64;
        let services_after = services.seconds();
        let service_ms = |i: usize| cpu::per_item_ms(services_before[i], services_after[i], n);
        let service = |i: usize| shown_ms(service_ms(i));
        let ok = app
            .count("SELECT count(*) FROM jobs WHERE code = 200")
            .await;
        let hashes_after = hash_rate(Duration::from_secs(3)).await;
        let limit = imports.min(hashes_before.max(hashes_after));
        println!(
            "raw: Argon2id on every core just before and after the phase: {hashes_before:.1} and {hashes_after:.1} hashes/s"
        );
        println!(
            "standard tenants, {count} worker(s): {rate:.1}/s ({:.0}% of min(hash rate, PostgreSQL's import rate) {limit:.1}/s); {ok} succeeded so far",
            100.0 * rate / limit
        );
        println!(
            "CPU per standard tenant, {count} worker(s): API {:.2} ms, workers {:.2} ms (the hash included), PostgreSQL {}, RabbitMQ {}",
            cpu[0],
            cpu[1..].iter().sum::<f64>(),
            service(0),
            service(1)
        );
        if let (Some(pg), Some(mq)) = (service_ms(0), service_ms(1)) {
            let rest = cpu.iter().sum::<f64>() + pg + mq - hash_ms;
            let hashes = hashes_before.max(hashes_after);
            // On saturated cores, a rate of 75 % of `limit` leaves this much CPU a tenant.
            let budget = cores() as f64 * 1e3 / (0.75 * limit);
            println!(
                "CPU of a standard tenant, {count} worker(s): the hash {hash_ms:.2} ms ({:.2} ms alone), everything else {rest:.2} ms; 75% of {limit:.1}/s leaves {:.2} ms besides the hash",
                cores() as f64 * 1e3 / hashes,
                budget - hash_ms
            );
        }
        for w in &workers {
            peaks.worker(w);
        }
    }
    peaks.api(&api);
    drop(workers);
    drop(api);
    app.stop().await;
}
