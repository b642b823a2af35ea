//! A worker process's memory while it creates tenants. Each create hashes a password with
//! Argon2id, which needs 19 MiB of working memory. Hashed on tokio's blocking pool, every hash
//! allocated and freed its block on whichever of many threads ran it; glibc's dynamic mmap
//! threshold grew past 19 MiB after the first free, later blocks came from per-thread heaps, and
//! the heaps fragmented (505 MiB peak, 430 MiB kept after 120 creates). The hashing pool
//! (`passwords::pool`) has one thread per core (no more than the worker's job slots), each
//! reusing one block: the peak is bounded with the allocator's defaults.

use std::time::Duration;

use provisioner_tests::{TestApp, fixtures, process::Proc};
use serde_json::json;

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
