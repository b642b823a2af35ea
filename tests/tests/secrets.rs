//! The administrator's password is never stored, logged, published or answered in plaintext.

use std::time::Duration;

use provisioner_tests::{
    TestApp,
    events::EventTap,
    fixtures::{self, SENTINEL_PASSWORD},
    process::Proc,
};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_sentinel_password_is_found_nowhere_but_as_an_argon2id_hash() {
    // The API and the worker run as processes whose complete debug logs are read.
    let app = TestApp::without_workers().await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let mut api = Proc::spawn(env!("CARGO_BIN_EXE_test-api"), &app, &[], "debug");
    let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &[], "debug");
    let addr = api.api_addr().await;
    let url = app.serve_sample_template("t").await;
    let token = provisioner_tests::fetch_token(
        &provisioner_tests::http_client(),
        addr,
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

    api.terminate();
    worker.terminate();
    let mut logs = String::new();
    for process in [&mut api, &mut worker] {
        assert!(process.exit(Duration::from_secs(20)).await.success());
        logs.push_str(&process.text());
    }
    assert!(logs.contains("job succeeded"), "the logs were captured");

    let dump = provisioner_tests::process::tool_async("pg_dump")
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
    // The administrator's own row (the template's users carry hashes of their own).
    let admin_hash: String = sqlx::query_scalar(
        "SELECT u.password_hash FROM users u JOIN tenants t ON t.id = u.tenant_id
         WHERE t.url = $1 AND u.login_id = 'admin'",
    )
    .bind(&tenant)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(
        admin_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{admin_hash}"
    );
    assert!(
        provisioner_shared::passwords::verify(SENTINEL_PASSWORD.as_bytes(), &admin_hash),
        "the admin's hash is of the sentinel password"
    );
    let template_hashes = fixtures::sample_template(app.db_version().await)
        .users
        .into_iter()
        .filter_map(|u| u.password_hash);
    for hash in template_hashes {
        assert_ne!(admin_hash, hash, "the template's hash was kept");
    }
    assert!(
        dump.contains(&admin_hash),
        "the dump holds the admin's hash"
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
