//! A worker process's memory while it creates tenants, with and without the allocator setting
//! that the Kubernetes manifests give it (`deploy/k8s/worker-deployment.yaml`). Each create
//! hashes a password with Argon2id in a 19 MiB block; glibc's dynamic mmap threshold grows past
//! that size after the first block is freed, later blocks come from the heap, and the heap
//! fragments. A fixed threshold hands every block back to the kernel.

use std::time::Duration;

use provisioner_tests::{TestApp, fixtures, process::Proc};
use serde_json::json;

/// The value the worker Deployment gives `MALLOC_MMAP_THRESHOLD_`.
fn manifest_threshold() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/k8s/worker-deployment.yaml"
    ))
    .unwrap();
    let mut lines = text.lines();
    lines
        .find(|l| l.trim() == "- name: MALLOC_MMAP_THRESHOLD_")
        .expect("the worker Deployment sets MALLOC_MMAP_THRESHOLD_");
    lines
        .next()
        .and_then(|l| l.trim().strip_prefix("value: "))
        .expect("with a value")
        .trim_matches('"')
        .to_owned()
}

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

/// Runs `jobs` creates on one worker process of concurrency 4 with `extra` variables; returns
/// its peak and final resident set, in MiB.
async fn creates_on_one_worker(jobs: usize, extra: &[(&str, &str)]) -> (u64, u64) {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let mut vars = vec![("PROVISIONER_WORKER_CONCURRENCY", "4")];
    vars.extend_from_slice(extra);
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
async fn the_manifests_allocator_setting_keeps_a_busy_worker_small() {
    let threshold = manifest_threshold();
    let (peak, after) =
        creates_on_one_worker(120, &[("MALLOC_MMAP_THRESHOLD_", threshold.as_str())]).await;
    println!("with MALLOC_MMAP_THRESHOLD_={threshold}: peak {peak} MiB, after {after} MiB");
    assert!(peak < 200, "peak {peak} MiB");
    assert!(after < 100, "{after} MiB resident once the jobs ended");
    // Without it the same work leaves the heap much larger (measured: 440-650 MiB).
    let (peak, after) = creates_on_one_worker(120, &[]).await;
    println!("without: peak {peak} MiB, after {after} MiB");
    assert!(
        after > 200,
        "{after} MiB: the setting no longer matters; revisit the manifests"
    );
}
