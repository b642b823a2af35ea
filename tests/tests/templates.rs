//! Template contents checked like requests, end to end: every breach is job code 400 at the first
//! attempt (never a retried 500), before any lock is taken, and leaves nothing behind.

use provisioner_shared::template::{AccessNumberEntry, Template};
use provisioner_tests::{TestApp, fixtures};
use serde_json::{Value, json};

/// Creates a tenant from `template`; returns the ended job.
async fn create_from(app: &TestApp, name: &str, template: &Template) -> Value {
    let url = app.templates.put(name, template.write());
    app.create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await
}

fn assert_bad_template_at_once(name: &str, job: &Value, expect: &str) {
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(400), Some(1)),
        "{name}: {job}"
    );
    assert_eq!(job["error"]["title"], "Bad template", "{name}");
    let detail = job["error"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(expect),
        "{name}: `{detail}` lacks `{expect}`"
    );
}

#[tokio::test]
async fn template_strings_and_weak_hashes_end_the_job_with_400_at_once() {
    let app = TestApp::spawn().await;
    let good = fixtures::sample_template(app.db_version().await);
    let with_user = |f: &dyn Fn(&mut provisioner_shared::template::UserEntry)| {
        let mut t = good.clone();
        f(&mut t.users[1]);
        t
    };
    let weak =
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";
    let huge = "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";
    let cases: Vec<(&str, Template, &str)> = vec![
        (
            "nul",
            with_user(&|u| u.login_id = "age\0nt".into()),
            "loginId must not contain control",
        ),
        (
            "long",
            with_user(&|u| u.login_id = "x".repeat(1 << 20)),
            "loginId must be at most 255",
        ),
        (
            "bidi",
            with_user(&|u| u.first_name = "Gr\u{202e}ace".into()),
            "firstName must not contain",
        ),
        (
            "weak",
            with_user(&|u| u.password_hash = Some(weak.into())),
            "m=8,t=1,p=1",
        ),
        (
            "huge",
            with_user(&|u| u.password_hash = Some(huge.into())),
            "password hash",
        ),
        (
            "prefix",
            with_user(&|u| u.password_hash = Some("$argon2id$".into())),
            "not a PHC string",
        ),
    ];
    for (name, template, expect) in &cases {
        let job = create_from(&app, name, template).await;
        assert_bad_template_at_once(name, &job, expect);
    }
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_value_the_database_refuses_ends_the_job_with_400_at_once() {
    // A NUL inside free-form object data is any JSON's, but jsonb refuses it (SQLSTATE 22P05):
    // the reader refuses it first, naming the document, so the store never keeps such a
    // template.
    let app = TestApp::spawn().await;
    let mut template = fixtures::sample_template(app.db_version().await);
    template.objects[0].data = json!({"note": "a\u{0}b"})
        .as_object()
        .unwrap()
        .clone()
        .into();
    let job = create_from(&app, "nul-data", &template).await;
    assert_bad_template_at_once("nul-data", &job, "U+0000, which the database cannot store");
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    // A value the database refuses all the same (a data exception, or a program limit) is a
    // fault of the value, permanent: the worker ends such a job with 400 at once.
    let refused = sqlx::query(r#"SELECT '"a\u0000b"'::jsonb"#)
        .execute(&app.db)
        .await
        .unwrap_err();
    assert!(provisioner_shared::db::refused_value(&refused), "{refused}");
    let division = sqlx::query("SELECT 1/0")
        .execute(&app.db)
        .await
        .unwrap_err();
    assert!(
        provisioner_shared::db::refused_value(&division),
        "22012 is a data exception"
    );
    let other = sqlx::query("SELECT * FROM no_such_table")
        .execute(&app.db)
        .await
        .unwrap_err();
    assert!(!provisioner_shared::db::refused_value(&other), "{other}");
    app.stop().await;
}

#[tokio::test]
async fn import_checks_the_tenants_name_and_sip_domain_like_request_fields() {
    let app = TestApp::spawn().await;
    let good = fixtures::sample_template(app.db_version().await);
    for (name, edit, expect) in [
        (
            "bidi-name",
            ("name", "Ac\u{202e}me"),
            "tenant.json name must not contain",
        ),
        (
            "control-sip",
            ("sip", "sip.example.com\u{7}"),
            "tenant.json sipDomain",
        ),
        (
            "squat-sip",
            ("sip", "not a domain at all"),
            "tenant.json sipDomain",
        ),
        // Quoted in the job's error, a NUL the database cannot store (it would refuse the
        // job's end, again and again): U+FFFD in its place.
        (
            "nul-sip",
            ("sip", "sip.example.com\u{0}"),
            "tenant.json sipDomain `sip.example.com\u{fffd}`",
        ),
    ] {
        let mut t = good.clone();
        match edit {
            ("name", v) => t.tenant.name = v.into(),
            (_, v) => t.tenant.sip_domain = v.into(),
        }
        let job = app.import_and_wait(t.write()).await;
        assert_bad_template_at_once(name, &job, expect);
    }
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn access_number_caps_refuse_a_template_before_any_lock_is_taken() {
    let app = TestApp::spawn().await;
    let good = fixtures::sample_template(app.db_version().await);
    let ranges = |n: usize, count: i32| -> Vec<AccessNumberEntry> {
        (0..n)
            .map(|i| AccessNumberEntry {
                number: format!("{:010}", i * 1_000),
                count,
                media: "VOICE".into(),
            })
            .collect()
    };
    let tenant = fixtures::tenant_url();
    // Holding the tenant's import lock: a job that reached the lock would end 503, not 400.
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    for (name, numbers, expect) in [
        (
            "ranges",
            ranges(1_001, 1),
            "1001 access-number ranges; at most 1000",
        ),
        (
            "numbers",
            ranges(2, 50_001),
            "hold 100002 numbers; at most 100000",
        ),
    ] {
        let mut t = good.clone();
        t.access_numbers = numbers;
        let url = app.templates.put(name, t.write());
        let mut body = fixtures::create_body(&url);
        body["lockTimeout"] = json!(30);
        let job = app.create_and_wait(&tenant, &body).await;
        assert_bad_template_at_once(name, &job, expect);
    }
    drop(held);
    assert_eq!(app.count("SELECT count(*) FROM access_numbers").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_archive_with_a_duplicate_manifest_is_refused_by_both_kinds() {
    let app = TestApp::spawn().await;
    let good = fixtures::sample_template(app.db_version().await);
    // A second manifest.json (renamed in the finished bytes: writers refuse duplicates) that
    // the ZIP library would silently fold into the first.
    let manifest = serde_json::to_vec(&good.manifest).unwrap();
    let tenant = serde_json::to_vec(&good.tenant).unwrap();
    let bytes = fixtures::raw_zip(&[
        ("manifest.json", &manifest),
        ("manifesX.json", br#"{"format": "other"}"#),
        ("tenant.json", &tenant),
    ]);
    let dup = replace_all(&bytes, b"manifesX.json", b"manifest.json");
    let job = app.import_and_wait(dup.clone()).await;
    assert_bad_template_at_once("import", &job, "`manifest.json` appears more than once");
    let url = app.templates.put("dup", dup);
    let job = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_bad_template_at_once("create", &job, "`manifest.json` appears more than once");
    app.stop().await;
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    out
}

#[tokio::test]
async fn a_sip_domain_another_tenant_has_ends_the_job_with_409_naming_the_domain() {
    let app = TestApp::spawn().await;
    let good = fixtures::sample_template(app.db_version().await);
    let domain = fixtures::tenant_url();
    let importing = |sip_domain: &str| {
        let mut t = good.clone();
        t.tenant.id = uuid::Uuid::new_v4();
        t.tenant.url = fixtures::tenant_url();
        t.tenant.sip_domain = sip_domain.to_owned();
        t.access_numbers.clear();
        t
    };
    let first = app.import_and_wait(importing(&domain).write()).await;
    assert_eq!(first["code"], 200, "{first}");
    let expect = format!("the SIP domain {domain} is already taken by another tenant");
    // An import naming the same SIP domain, and a create whose URL is that domain (a create's
    // SIP domain is its URL): neither tenant exists, the domain is what is taken.
    let second = app.import_and_wait(importing(&domain).write()).await;
    let template = app.serve_sample_template("t").await;
    let create = app
        .create_and_wait(&domain, &fixtures::create_body(&template))
        .await;
    // In other letters' case, the same host name (before, it was stored beside the first).
    let shouted = app
        .import_and_wait(importing(&domain.to_ascii_uppercase()).write())
        .await;
    for (kind, job) in [
        ("import", &second),
        ("create", &create),
        ("import in capitals", &shouted),
    ] {
        assert_eq!(
            (
                job["status"].as_str(),
                job["code"].as_i64(),
                job["attempts"].as_i64()
            ),
            (Some("failed"), Some(409), Some(1)),
            "{kind}: {job}"
        );
        assert_eq!(job["error"]["title"], "Conflict", "{kind}");
        assert_eq!(job["error"]["detail"], expect.as_str(), "{kind}: {job}");
    }
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
    app.stop().await;
}
