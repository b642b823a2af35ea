//! The administrator's password is never stored, logged, published or answered in plaintext.

use std::{process::Stdio, time::Duration};

use provisioner_tests::{
    TestApp,
    events::EventTap,
    fixtures::{self, SENTINEL_PASSWORD},
};
use serde_json::Value;
use tokio::{io::AsyncReadExt, process::Command};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_sentinel_password_is_found_nowhere_but_as_an_argon2id_hash() {
    // The API and the worker run as processes whose complete debug logs are read.
    let app = TestApp::without_workers().await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let spawn = |bin: &str| {
        Command::new(bin)
            .envs(&app.vars)
            .env("PROVISIONER_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut api = spawn(env!("CARGO_BIN_EXE_test-api"));
    let mut worker = spawn(env!("CARGO_BIN_EXE_test-worker"));
    let mut api_out = tokio::io::BufReader::new(api.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut api_out, &mut line)
            .await
            .unwrap();
        assert!(!line.is_empty(), "the API exited early");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["message"] == "provisioner API listening" {
                break v["addr"].as_str().unwrap().to_owned();
            }
        }
    };
    let url = app.serve_sample_template("t").await;
    let token = provisioner_tests::fetch_token(
        &reqwest::Client::new(),
        addr.parse().unwrap(),
        provisioner_tests::BOOTSTRAP_ID,
        provisioner_tests::BOOTSTRAP_SECRET,
    )
    .await;
    let http = provisioner_tests::authorized_client(&token);
    let mut answers = String::new();
    let tenant = fixtures::tenant_url();
    let r = http
        .post(format!(
            "http://{addr}/configapi/v2/selfservice/tenant/{tenant}"
        ))
        .header("prefer", "wait=60")
        .json(&fixtures::create_body(&url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    answers.push_str(&r.text().await.unwrap());
    // A failing job too, so error paths are covered.
    let r = http
        .post(format!(
            "http://{addr}/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        ))
        .header("prefer", "wait=60")
        .json(&fixtures::create_body("http://127.0.0.1:9/none.zip"))
        .send()
        .await
        .unwrap();
    answers.push_str(&r.text().await.unwrap());
    for path in [
        "/configapi/v2/jobs",
        &format!("/configapi/v2/tenant/{tenant}"),
        "/configapi/v2/accessnumbers",
    ] {
        answers.push_str(
            &http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let export = http
        .get(format!("http://{addr}/configapi/v2/tenant/{tenant}/export"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let events = tap
        .collect_until(|e| {
            e.iter()
                .filter(|e| e.routing_key == "job.succeeded" || e.routing_key == "job.failed")
                .count()
                >= 2
        })
        .await;

    for child in [&mut api, &mut worker] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }
    let mut logs = String::new();
    for child in [&mut api, &mut worker] {
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut logs).await.unwrap();
        }
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .await
            .unwrap();
    }
    tokio::io::AsyncReadExt::read_to_string(&mut api_out, &mut logs)
        .await
        .unwrap();
    assert!(logs.contains("job succeeded"), "the logs were captured");

    let dump = Command::new("pg_dump")
        .args([
            "--data-only",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            &app.database,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dump.contains("$argon2id$v=19$m=19456,t=2,p=1$"),
        "the admin's hash is stored"
    );

    let events: String = events.iter().map(|e| e.body.to_string()).collect();
    let places = [
        ("API answers", answers),
        ("logs", logs),
        ("events", events),
        ("database dump", dump),
        ("export", String::from_utf8_lossy(&export).into_owned()),
    ];
    for (place, text) in places {
        assert!(
            !text.contains(SENTINEL_PASSWORD),
            "the password is in the {place}"
        );
        assert!(
            !text.contains(&hex(SENTINEL_PASSWORD)),
            "the password is hex-encoded in the {place}"
        );
    }
    app.stop().await;
}
