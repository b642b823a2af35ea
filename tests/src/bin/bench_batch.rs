//! Batch benchmark on this machine, against the local PostgreSQL and RabbitMQ:
//!
//! 1. **Acceptance**: one NDJSON batch of ITEMS items posted to a release `provisioner-api`
//!    process (its own process, so its peak RSS is its own), against the raw cost of inserting
//!    as many job rows in one transaction on the same database, in the same run.
//! 2. **Throughput**: TENANTS tenants of a standard template (50 users, 200 objects, 5 ranges;
//!    one administrator password each) as one batch, then as single creates, with the same
//!    in-process workers: the batch downloads the template once, the singles once each.
//!
//! `cargo build --release -p provisioner-api -p provisioner-tests --bins &&
//!  target/release/bench_batch [ITEMS] [TENANTS] [WORKERS]` (defaults 10000, 1000, 2; each worker
//! runs PROVISIONER_WORKER_CONCURRENCY=4 jobs at once).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use provisioner_shared::template::{AccessNumberEntry, ObjectEntry, Template, UserEntry};
use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, Options, TestApp, authorized_client, batches, fetch_token,
    fixtures, process::Proc,
};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let items = args.first().copied().unwrap_or(10_000);
    let tenants = args.get(1).copied().unwrap_or(1_000);
    let workers = args.get(2).copied().unwrap_or(2);
    acceptance(items).await;
    throughput(tenants, workers).await;
}

/// Peak resident set of process `pid`, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn sibling_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let path = me.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release -p provisioner-api`",
        path.display()
    );
    path
}

async fn acceptance(items: usize) {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let bin = sibling_binary("provisioner-api");
    let mut api = Proc::spawn(
        bin.to_str().unwrap(),
        &app,
        &[("PROVISIONER_BATCH_MAX_ITEMS", "1000000")],
        "warn,provisioner_api=info",
    );
    let addr = api.api_addr().await;
    let pid = api.child.id().expect("running");
    let idle = peak_rss_mib(pid);
    let token = fetch_token(
        &provisioner_tests::http_client(),
        addr,
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    let http = authorized_client(&token);
    let body = batches::ndjson(&batches::items(items, &template));
    let bytes = body.len();
    let started = Instant::now();
    let r = http
        .post(format!("http://{addr}/configapi/v2/batches"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let accepted = started.elapsed();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let peak = peak_rss_mib(pid);

    // The raw figure: as many job rows inserted in one transaction, one statement per 1,000.
    let started = Instant::now();
    let mut tx = app.db.begin().await.unwrap();
    for chunk in (0..items).collect::<Vec<_>>().chunks(1000) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params)
             SELECT id, 'createTenant', 'raw-' || id, 'cancelled', 'raw', '{}'::jsonb
             FROM UNNEST($1::uuid[]) AS id",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let raw = started.elapsed();
    println!(
        "## acceptance: one NDJSON batch of {items} items ({:.1} MiB)",
        bytes as f64 / 1048576.0
    );
    println!(
        "accepted in {:.2} s ({:.0} items/s); raw insert of {items} job rows: {:.2} s; ratio {:.1}x",
        accepted.as_secs_f64(),
        items as f64 / accepted.as_secs_f64(),
        raw.as_secs_f64(),
        accepted.as_secs_f64() / raw.as_secs_f64()
    );
    println!("API peak RSS {peak:.1} MiB (idle {idle:.1} MiB)");
    api.terminate();
    let _ = api.exit(Duration::from_secs(10)).await;
    app.stop().await;
}

/// A template close to a real deployment: 50 users, 200 objects, 5 access-number ranges.
fn standard_template(db_version: i64) -> Vec<u8> {
    let mut t: Template = fixtures::sample_template(db_version);
    let hash = t.users[0].password_hash.clone();
    let teams: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    t.objects = (0..200)
        .map(|i| ObjectEntry {
            id: teams.get(i).copied().unwrap_or_else(Uuid::new_v4),
            kind: if i < 20 { "team" } else { "service" }.into(),
            name: format!("Object {i}"),
            data: json!({"order": i}).as_object().unwrap().clone().into(),
            refs: if i < 20 { vec![] } else { vec![teams[i % 20]] },
        })
        .collect();
    t.users = (0..50)
        .map(|i| UserEntry {
            id: Uuid::new_v4(),
            login_id: if i == 0 {
                "admin".into()
            } else {
                format!("agent{i}")
            },
            first_name: "Agent".into(),
            last_name: format!("{i}"),
            email: format!("agent{i}@source.example"),
            roles: vec!["agent".into()],
            password_hash: hash.clone(),
            teams: vec![teams[i % 20]],
        })
        .collect();
    t.access_numbers = (0..5)
        .map(|i| AccessNumberEntry {
            number: format!("00000{i}0000"),
            count: 10,
            media: "VOICE".into(),
        })
        .collect();
    t.write()
}

/// A standard template's tenant `i`: its own ranges through `numberMap`.
fn tenant_body(url: &str, i: usize, run: usize) -> Value {
    let mut body = fixtures::create_body(url);
    body["numberMap"] = json!(
        (0..5)
            .map(|r| (
                format!("00000{r}0000"),
                Value::String(format!("{run}{i:07}{r}0"))
            ))
            .collect::<serde_json::Map<_, _>>()
    );
    body
}

/// Waits until no job is queued or running; returns how long that took.
async fn until_idle(app: &TestApp, since: Instant) -> Duration {
    loop {
        let open = app
            .count("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            .await;
        if open == 0 {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn throughput(tenants: usize, workers: usize) {
    let app = TestApp::with(Options {
        workers,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "4".into()),
            ("RUST_LOG", "warn".into()),
        ],
    })
    .await;
    let url = app
        .templates
        .put("standard.zip", standard_template(app.db_version().await));

    let started = Instant::now();
    let list: Vec<Value> = (0..tenants)
        .map(|i| {
            let mut item = tenant_body(&url, i, 1);
            item["tenantUrl"] = json!(fixtures::tenant_url());
            item
        })
        .collect();
    let batch = batches::submit(&app, &list).await;
    let done = batches::wait(
        &app,
        batch["batchId"].as_str().unwrap(),
        Duration::from_secs(86_400),
    )
    .await;
    let batch_time = started.elapsed();
    let batch_hits = app.templates.hits("standard.zip");

    let started = Instant::now();
    let _: Vec<()> = stream::iter(0..tenants)
        .map(|i| {
            let app = &app;
            let url = url.clone();
            async move {
                let r = app
                    .create(&fixtures::tenant_url(), &tenant_body(&url, i, 2))
                    .await;
                assert_eq!(r.status(), 202);
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let singles_time = until_idle(&app, started).await;
    let single_hits = app.templates.hits("standard.zip") - batch_hits;
    let ok = app
        .count("SELECT count(*) FROM jobs WHERE batch_id IS NULL AND status = 'succeeded'")
        .await;
    println!(
        "## throughput: {tenants} standard tenants (50 users, 200 objects, 5 ranges), {workers} workers x 4"
    );
    println!(
        "as one batch: {:.1} s ({:.1} tenants/s), {} succeeded, {batch_hits} template download(s)",
        batch_time.as_secs_f64(),
        tenants as f64 / batch_time.as_secs_f64(),
        done["counts"]["succeeded"]
    );
    println!(
        "as single creates: {:.1} s ({:.1} tenants/s), {ok} succeeded, {single_hits} template downloads",
        singles_time.as_secs_f64(),
        tenants as f64 / singles_time.as_secs_f64()
    );
    println!(
        "batch time / single-creates time: {:.2}",
        batch_time.as_secs_f64() / singles_time.as_secs_f64()
    );
    app.stop().await;
}
