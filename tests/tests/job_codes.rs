//! Every final job code: 400 for each template fault, 500 after retries, 503 on lock timeout.

use std::time::Duration;

use provisioner_tests::{Options, TestApp, fixtures, template_server::Route};
use serde_json::{Value, json};

async fn submit(app: &TestApp, body: &Value) -> String {
    let r = app.create(&fixtures::tenant_url(), body).await;
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn each_template_fault_ends_the_job_with_400_and_is_not_retried() {
    let app = TestApp::spawn().await;
    let db = app.db_version().await;
    let good = fixtures::sample_template(db);
    let manifest = |fv: u32, dbv: i64| {
        serde_json::to_vec(&json!({"format": "provisioner-tenant-template", "formatVersion": fv, "dbVersion": dbv, "exportedAt": "2026-11-30T10:00:00Z", "source": {"tenantId": good.tenant.id, "tenantUrl": "s.example.com", "tenantName": "S"}})).unwrap()
    };
    let tenant = serde_json::to_vec(&good.tenant).unwrap();
    let many: Vec<String> = (0..1001).map(|i| format!("x/{i}")).collect();
    let many_entries: Vec<(&str, &[u8])> = many.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let huge = vec![b' '; (64 << 20) + 1];
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-zip", b"this is not a zip".to_vec(), "not a ZIP"),
        (
            "no-manifest",
            fixtures::raw_zip(&[("tenant.json", &tenant)]),
            "manifest.json",
        ),
        (
            "bad-manifest",
            fixtures::raw_zip(&[("manifest.json", b"{"), ("tenant.json", &tenant)]),
            "manifest.json",
        ),
        (
            "old-db",
            fixtures::raw_zip(&[
                ("manifest.json", &manifest(1, db - 1)),
                ("tenant.json", &tenant),
            ]),
            "dbVersion",
        ),
        (
            "new-format",
            fixtures::raw_zip(&[
                ("manifest.json", &manifest(2, db)),
                ("tenant.json", &tenant),
            ]),
            "formatVersion",
        ),
        (
            "bad-users",
            fixtures::raw_zip(&[
                ("manifest.json", &manifest(1, db)),
                ("tenant.json", &tenant),
                ("users.json", b"{}"),
            ]),
            "users.json",
        ),
        ("many", fixtures::raw_zip(&many_entries), "1001 entries"),
        (
            "slip",
            fixtures::raw_zip(&[
                ("../../etc/cron.d/x", b"x"),
                ("manifest.json", &manifest(1, db)),
            ]),
            "leaves the archive",
        ),
        (
            "bomb",
            fixtures::raw_zip(&[
                ("manifest.json", &manifest(1, db)),
                ("tenant.json", &tenant),
                ("objects.json", &huge),
            ]),
            "larger than",
        ),
    ];
    let mut dangling = good.clone();
    dangling.objects[2].refs.push(uuid::Uuid::new_v4());
    cases.push(("dangling", dangling.write(), "unknown object"));
    let mut jobs = vec![];
    for (name, bytes, expect) in &cases {
        let url = app.templates.put(name, bytes.clone());
        jobs.push((
            name,
            expect,
            submit(&app, &fixtures::create_body(&url)).await,
        ));
    }
    // A template server's 4xx, and a numberMap key that starts no template range.
    jobs.push((
        &"missing",
        &"404",
        submit(
            &app,
            &fixtures::create_body(&format!("http://{}/nothing-here", app.templates.addr)),
        )
        .await,
    ));
    let url = app.templates.put("good", good.write());
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({"0000000005": "4155550100"});
    jobs.push((
        &"numberMap",
        &"numberMap key 0000000005",
        submit(&app, &body).await,
    ));

    for (name, expect, id) in jobs {
        let job = app.wait_job(&id).await;
        assert_eq!(
            (job["status"].as_str(), job["code"].as_i64()),
            (Some("failed"), Some(400)),
            "{name}: {job}"
        );
        assert_eq!(
            job["attempts"], 1,
            "{name}: permanent faults are not retried"
        );
        assert_eq!(job["error"]["title"], "Bad template");
        let detail = job["error"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(*expect),
            "{name}: `{detail}` lacks `{expect}`"
        );
    }
    let tenants = app.count("SELECT count(*) FROM tenants").await;
    assert_eq!(tenants, 0, "no failed import left a tenant behind");
    app.stop().await;
}

#[tokio::test]
async fn a_template_server_that_keeps_failing_ends_with_500_after_max_attempts() {
    let app = TestApp::with(Options {
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "3".into())],
        ..Default::default()
    })
    .await;
    let url = app.templates.route(
        "down",
        Route {
            status: 200,
            body: Default::default(),
            fail_first: usize::MAX,
        },
    );
    let id = submit(&app, &fixtures::create_body(&url)).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(500), Some(3)),
        "{job}"
    );
    assert_eq!(app.templates.hits("down"), 3);
    let detail = job["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("503"), "the last fault is named: {detail}");
    app.stop().await;
}

#[tokio::test]
async fn transient_faults_are_retried_until_the_import_succeeds() {
    let app = TestApp::spawn().await;
    let body = fixtures::sample_template(app.db_version().await).write();
    let url = app.templates.route(
        "flaky",
        Route {
            status: 200,
            body: body.into(),
            fail_first: 2,
        },
    );
    let id = submit(&app, &fixtures::create_body(&url)).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(200), Some(3)),
        "{job}"
    );
    // A refused connection is transient too: nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app2 = TestApp::with(Options {
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "2".into())],
        ..Default::default()
    })
    .await;
    let id = submit(
        &app2,
        &fixtures::create_body(&format!("http://{closed}/t.zip")),
    )
    .await;
    let job = app2.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(500), Some(2)),
        "{job}"
    );
    app.stop().await;
    app2.stop().await;
}

#[tokio::test]
async fn lock_wait_past_lock_timeout_ends_with_503_and_is_not_retried() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(1);
    let r = app.create(&tenant, &body).await;
    let id = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(503), Some(1)),
        "{job}"
    );
    assert_eq!(job["error"]["title"], "Lock timeout");
    let started = chrono::DateTime::parse_from_rfc3339(job["startedAt"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(job["finishedAt"].as_str().unwrap()).unwrap();
    let took = (finished - started).to_std().unwrap();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "waited {took:?}"
    );
    drop(held);

    // lockTimeout 0: do not wait at all.
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    body["lockTimeout"] = json!(0);
    let r = app.create(&tenant, &body).await;
    let id = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_job(&id).await["code"], 503);
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn a_lock_freed_within_lock_timeout_lets_the_import_succeed() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let r = app.create(&tenant, &fixtures::create_body(&url)).await;
    let id = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.until_lock_waiters(1).await;
    held.rollback().await.unwrap();
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(200), Some(1)),
        "{job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn global_lock_mode_serialises_imports_of_different_tenants() {
    let app = TestApp::with(Options {
        vars: vec![("PROVISIONER_IMPORT_LOCK", "global".into())],
        ..Default::default()
    })
    .await;
    let url = app.serve_sample_template("t").await;
    let held = app.hold_lock("provisioner:import").await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(1);
    let id = submit(&app, &body).await;
    assert_eq!(
        app.wait_job(&id).await["code"],
        503,
        "the global key blocks any tenant"
    );
    drop(held);
    let id = submit(&app, &body).await;
    assert_eq!(app.wait_job(&id).await["code"], 200);
    app.stop().await;
}
