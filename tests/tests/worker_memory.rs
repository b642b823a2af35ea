//! A worker process's memory while it creates tenants. Each create hashes a password with
//! Argon2id, which needs 19 MiB of working memory. Hashed on tokio's blocking pool, every hash
//! allocated and freed its block on whichever of many threads ran it; glibc's dynamic mmap
//! threshold grew past 19 MiB after the first free, later blocks came from per-thread heaps, and
//! the heaps fragmented (505 MiB peak, 430 MiB kept after 120 creates). The hashing pool
//! (`passwords::pool`) has one thread per core (no more than the worker's job slots), each
//! reusing one block: the peak is bounded with the allocator's defaults.

use std::time::Duration;

use provisioner_shared::template::{self, Contents, Limits, ObjectEntry, Template};
use provisioner_tests::{TestApp, fixtures, process::Proc};
use serde_json::json;
use uuid::Uuid;

/// `key` (a `VmRSS:`-like line) of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Runs `jobs` creates on one worker process of concurrency 4; returns
/// its peak and final resident set, in MiB.
async fn creates_on_one_worker(jobs: usize) -> (u64, u64) {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let vars = [("PROVISIONER_WORKER_CONCURRENCY", "4")];
    let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &vars, "warn");
    let pid = worker.child.id().unwrap();
    let mut ids = vec![];
    for i in 0..jobs {
        let mut body = fixtures::create_body(&url);
        body["numberMap"] = json!({"0000000000": format!("42{i:08}")});
        ids.push(app.submit(&fixtures::tenant_url(), &body).await);
    }
    for id in &ids {
        let job = app.wait_job_within(id, Duration::from_secs(240)).await;
        assert_eq!(job["code"], 200, "{job}");
    }
    let figures = (
        status_kib(pid, "VmHWM:") / 1024,
        status_kib(pid, "VmRSS:") / 1024,
    );
    worker.child.kill().await.unwrap();
    app.stop().await;
    figures
}

#[tokio::test]
async fn a_busy_worker_stays_small_with_the_allocators_defaults() {
    let (peak, after) = creates_on_one_worker(120).await;
    println!("peak {peak} MiB, after {after} MiB");
    // The bound for a worker at the default concurrency.
    assert!(peak < 128, "peak {peak} MiB");
    assert!(after < 100, "{after} MiB resident once the jobs ended");
}

/// The sample template with `extra` more objects, as small as objects are, written without the
/// writer's indentation (about 92 bytes of `objects.json` each): the most built for the bytes.
fn template_with_objects(db_version: i64, extra: usize) -> Vec<u8> {
    let mut t = fixtures::sample_template(db_version);
    t.objects.extend((0..extra).map(|i| ObjectEntry {
        id: Uuid::new_v4(),
        kind: "k".to_owned(),
        name: i.to_string(),
        data: Default::default(),
        refs: vec![],
    }));
    let entries = [
        (template::MANIFEST, serde_json::to_vec(&t.manifest).unwrap()),
        (template::TENANT, serde_json::to_vec(&t.tenant).unwrap()),
        (template::USERS, serde_json::to_vec(&t.users).unwrap()),
        (template::OBJECTS, serde_json::to_vec(&t.objects).unwrap()),
        (
            template::ACCESS_NUMBERS,
            serde_json::to_vec(&t.access_numbers).unwrap(),
        ),
    ];
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    fixtures::raw_zip(&entries)
}

/// A job's share of its worker's template memory budget covers what the job holds: the
/// template read and what its write builds from it (the plan, a copy with new ids, and the
/// statement's parameters), not only the reading, which measured half of it. One create of a
/// template near the largest allowed: 56 MiB of the smallest objects, the most built for the
/// bytes.
#[tokio::test]
async fn a_jobs_share_of_the_template_memory_budget_covers_its_read_and_its_write() {
    let app = TestApp::without_workers().await;
    let template = template_with_objects(app.db_version().await, 640_000);
    let costs = Template::costs(&template, &Limits::default(), Contents::ForCreate).unwrap();
    let url = app.templates.put("large", template);
    let vars = [("PROVISIONER_WORKER_CONCURRENCY", "4")];
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &vars,
        "warn,provisioner_worker::jobs::template=debug",
    );
    let pid = worker.child.id().unwrap();
    // The worker at rest after a create of the small sample template, so that what it sets up
    // once (sessions, a hashing thread's working area) is in the baseline.
    let small = app.serve_sample_template("small").await;
    let first = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&small))
        .await;
    app.wait_job_within(&first, Duration::from_secs(60)).await;
    let idle = status_kib(pid, "VmRSS:") / 1024;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let job = app.wait_job_within(&id, Duration::from_secs(300)).await;
    assert_eq!(job["code"], 200, "{job}");
    let peak = status_kib(pid, "VmHWM:") / 1024;
    // What the worker reserved for each job, the small one's first.
    let shares: Vec<u64> = worker
        .records()
        .iter()
        .filter(|r| r["message"] == "template memory reserved")
        .filter_map(|r| r["bytes"].as_u64())
        .collect();
    worker.child.kill().await.unwrap();
    app.stop().await;
    assert_eq!(shares.len(), 2, "{shares:?}");
    let share = shares[1] >> 20;
    let held = peak - idle;
    println!(
        "held {held} MiB (idle {idle}, peak {peak}); share {share} MiB: reading {} MiB, writing {} MiB",
        costs.reading >> 20,
        costs.writing >> 20
    );
    assert!(
        held <= share,
        "the job held {held} MiB on a share of {share} MiB"
    );
}
