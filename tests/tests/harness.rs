//! The harness itself: child processes see only the test system's settings, and a test that
//! fails leaves no database or vhost behind.

use std::collections::HashSet;

use provisioner_tests::{TestApp, batches, cli::Cli, process::Proc};
use tokio::io::{AsyncBufReadExt, BufReader};

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

#[tokio::test]
async fn the_command_line_and_every_tool_a_test_runs_see_nothing_else_of_the_environment() {
    let app = TestApp::without_workers().await;
    let kept: HashSet<String> = ["PATH", "HOME"]
        .into_iter()
        .filter(|n| std::env::var_os(n).is_some())
        .map(str::to_owned)
        .collect();
    // A tool: `env -0` prints what it was given.
    let out = provisioner_tests::process::tool("env")
        .arg("-0")
        .output()
        .unwrap();
    let given: HashSet<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter_map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split_once('=').map(|(k, _)| k.to_owned())
        })
        .collect();
    assert_eq!(given, kept, "a tool inherited the test's environment");
    // The command line, while it waits for a batch that cannot end (no worker runs).
    let template = app.serve_sample_template("t.zip").await;
    let batch = batches::submit(&app, &batches::items(1, &template)).await;
    let cli = Cli::new(env!("CARGO_BIN_EXE_test-provisioner"), &app);
    let mut child = cli
        .command(&["batch", "wait", batch["batchId"].as_str().unwrap()])
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // Its first progress line: its own code runs (see above).
    let first = stderr.next_line().await.unwrap().unwrap();
    assert!(first.contains("0/1 done"), "{first}");
    let seen = environment_of(child.id().unwrap());
    let mut allowed = kept.clone();
    for name in [
        "PROVISIONER_API_URL",
        "PROVISIONER_CLIENT_ID",
        "PROVISIONER_CLIENT_SECRET",
        "PROVISIONER_STATE_DIR",
        "NO_COLOR",
    ] {
        allowed.insert(name.to_owned());
    }
    let mut leaked: Vec<_> = seen.difference(&allowed).collect();
    leaked.sort();
    assert!(
        leaked.is_empty(),
        "the command line inherited {leaked:?} from the test"
    );
    child.kill().await.unwrap();
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
    let out = provisioner_tests::process::tool("rabbitmqctl")
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
