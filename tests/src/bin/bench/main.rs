//! Throughput and latency benchmark of the whole system on this machine: the API and in-process
//! workers against the local PostgreSQL and RabbitMQ, templates from a local server.
//!
//! `cargo run --release -p provisioner-tests --bin bench -- [JOBS] [CLIENTS] [WORKERS]`
//! (defaults 1000, 32, 2; each worker runs PROVISIONER_WORKER_CONCURRENCY=8 jobs at once;
//! WORKERS=0 measures the API alone).
//!
//! Memory of an API process (`memory`; build every binary first with
//! `cargo build --release -p provisioner-tests --bins`): `bench tokens [N]` (default 128), N
//! concurrent bad token requests; `bench export [SETTINGS_MIB] [AUDIT_ROWS]` (default 16,
//! 100000), the export of a tenant that large.
//!
//! The system at volume against this machine's raw figures: `bench volume [BACKLOG] [TRIVIAL]
//! [STANDARD] [ENDED]` (see `volume.rs`).

mod cpu;
mod floor;
mod memory;
mod volume;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use provisioner_tests::{Options, TestApp, fixtures};
use serde_json::{Value, json};

const USAGE: &str = "usage: bench [JOBS] [CLIENTS] [WORKERS]
       bench volume [BACKLOG] [TRIVIAL] [STANDARD] [ENDED]
       bench tokens [N]
       bench export [SETTINGS_MIB] [AUDIT_ROWS]
(arguments are whole numbers; see the README, \"Benchmarks\")";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = match args.first().map(String::as_str) {
        Some(s @ ("tokens" | "export" | "volume")) => Some(s.to_owned()),
        _ => None,
    };
    if scenario.is_some() {
        args.remove(0);
    }
    let Ok(args) = args
        .iter()
        .map(|a| a.parse())
        .collect::<Result<Vec<usize>, _>>()
    else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    match scenario.as_deref() {
        Some("tokens") => return memory::token_flood(args.first().copied().unwrap_or(128)).await,
        Some("volume") => {
            let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
            return volume::run(
                arg(0, 50_000),
                arg(1, 3_000),
                arg(2, 2_000),
                arg(3, 1_000_000),
            )
            .await;
        }
        Some(_) => {
            let (settings, audit) = (
                args.first().copied().unwrap_or(16),
                args.get(1).copied().unwrap_or(100_000),
            );
            return memory::export(settings, audit).await;
        }
        None => {}
    }
    let (jobs, clients, workers) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(32),
        args.get(2).copied().unwrap_or(2),
    );
    let app = TestApp::with(Options {
        workers,
        vars: vec![
            ("PROVISIONER_WORKER_CONCURRENCY", "8".into()),
            ("RUST_LOG", "warn".into()),
        ],
    })
    .await;
    let url = app.serve_sample_template("t").await;

    let started = Instant::now();
    let results: Vec<(f64, String)> = stream::iter(0..jobs)
        .map(|i| {
            let app = &app;
            let url = url.clone();
            async move {
                let mut body = fixtures::create_body(&url);
                body["numberMap"] = json!({"0000000000": format!("4{i:09}0")});
                let t = Instant::now();
                let r = app.create(&fixtures::tenant_url(), &body).await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(r.status(), 202);
                (
                    ms,
                    r.json::<Value>().await.unwrap()["jobId"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let accepted_in = started.elapsed();
    let mut api: Vec<f64> = results.iter().map(|r| r.0).collect();
    api.sort_by(f64::total_cmp);
    if workers == 0 {
        // API only: how fast requests are accepted, with nothing else competing for the CPU.
        println!("jobs {jobs}, clients {clients}, no workers");
        println!(
            "accepted in {:.2} s ({:.0} req/s)",
            accepted_in.as_secs_f64(),
            jobs as f64 / accepted_in.as_secs_f64()
        );
        println!(
            "API POST latency ms     p50 {:.1}  p99 {:.1}",
            percentile(&api, 0.5),
            percentile(&api, 0.99)
        );
        app.stop().await;
        return;
    }

    // Every accepted job should end; one that does not by the deadline is a lost job, and the
    // run reports it rather than hanging.
    let deadline =
        Instant::now() + Duration::from_secs(120).max(Duration::from_millis(200) * jobs as u32);
    let open = loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&app.db)
                .await
                .unwrap();
        if open == 0 || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_done = started.elapsed();
    let rows: Vec<(f64, f64, i32)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM finished_at - created_at)::float8 * 1000,
                EXTRACT(EPOCH FROM finished_at - started_at)::float8 * 1000, code
         FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let panics = app
        .count("SELECT COALESCE(sum(count), 0)::bigint FROM worker_panics")
        .await;
    println!(
        "reliability: {} of {jobs} jobs ended ({open} never did); {panics} worker panics caught",
        jobs as i64 - open
    );
    let ok = rows.iter().filter(|r| r.2 == 200).count();
    let mut e2e: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut run: Vec<f64> = rows.iter().map(|r| r.1).collect();
    for v in [&mut e2e, &mut run] {
        v.sort_by(f64::total_cmp);
    }
    println!("jobs {jobs}, clients {clients}, workers {workers} x 8, succeeded {ok}");
    println!(
        "accepted in {:.2} s ({:.0} req/s); all ended in {:.2} s ({:.1} jobs/s)",
        accepted_in.as_secs_f64(),
        jobs as f64 / accepted_in.as_secs_f64(),
        all_done.as_secs_f64(),
        jobs as f64 / all_done.as_secs_f64()
    );
    println!(
        "API POST latency ms     p50 {:.1}  p99 {:.1}",
        percentile(&api, 0.5),
        percentile(&api, 0.99)
    );
    println!(
        "enqueue->terminal ms    p50 {:.0}  p95 {:.0}  p99 {:.0}",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.95),
        percentile(&e2e, 0.99)
    );
    println!(
        "job run (claim->end) ms p50 {:.0}  p99 {:.0}  max {:.0}",
        percentile(&run, 0.5),
        percentile(&run, 0.99),
        run.last().copied().unwrap_or(f64::NAN)
    );
    app.stop().await;
}
