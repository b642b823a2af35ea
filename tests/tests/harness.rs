//! The harness itself: child processes see only the test system's settings, and a test that
//! fails leaves no database or vhost behind.

use std::collections::HashSet;

use provisioner_tests::{TestApp, process::Proc};

/// The names in a running process's environment.
fn environment_of(pid: u32) -> HashSet<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split_once('=')
                .map_or(v.to_string(), |(k, _)| k.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn child_processes_see_the_test_systems_settings_and_nothing_else_of_the_environment() {
    let app = TestApp::without_workers().await;
    let mut worker = Proc::spawn(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[("PROVISIONER_WORKER_CONCURRENCY", "2")],
        "info",
    );
    // Read the environment only once the worker's own code runs: between fork and exec the
    // kernel shows the parent's (or an empty) environment.
    worker.wait_for("worker started").await;
    let pid = worker.child.id().unwrap();
    let seen = environment_of(pid);
    let mut allowed: HashSet<String> = app.vars.keys().cloned().collect();
    for name in [
        "PATH",
        "HOME",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "PROVISIONER_LOG_FORMAT",
        "PROVISIONER_WORKER_CONCURRENCY",
    ] {
        allowed.insert(name.to_owned());
    }
    let mut leaked: Vec<_> = seen.difference(&allowed).collect();
    leaked.sort();
    assert!(
        leaked.is_empty(),
        "the worker inherited {leaked:?} from the test"
    );
    assert!(seen.contains("DATABASE_URL") && seen.contains("PATH"));
    // The test process itself has more (cargo sets these for every test it runs).
    assert!(environment_of(std::process::id()).contains("CARGO_MANIFEST_DIR"));
    worker.child.kill().await.unwrap();
    app.stop().await;
}

async fn database_exists(name: &str) -> bool {
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap()
}

fn vhost_exists(name: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_vhosts", "--quiet", "--no-table-headers", "name"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == name)
}

#[tokio::test]
async fn a_test_system_dropped_without_stop_as_by_a_failing_test_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    let (database, vhost) = (app.database.clone(), app.vhost.clone());
    assert!(database_exists(&database).await && vhost_exists(&vhost));
    // What unwinding from a failed assertion does.
    drop(app);
    assert!(!database_exists(&database).await, "the database is gone");
    assert!(!vhost_exists(&vhost), "the vhost is gone");
}
