//! Outside checks: schemathesis (a property-based tester nobody here wrote) generates requests
//! from the served OpenAPI document, valid and invalid, and checks every answer against it.

use std::{path::Path, time::Duration};

use provisioner_tests::{TestApp, fixtures};

/// The configuration (narrow, explained exceptions) and hooks the run uses.
const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis");
/// Examples per operation and phase: enough to find the rules the document does not state,
/// bounded so the run stays well under two minutes.
const MAX_EXAMPLES: &str = "25";
/// A fixed seed: a failure found once is found again.
const SEED: &str = "7";
/// The whole run may take this long.
const RUN_LIMIT: Duration = Duration::from_secs(110);

/// What the run needs from the system under test: a tenant, and a stored template (its id, and
/// a file holding its bytes, from which the hooks make more templates).
struct Fixtures<'a> {
    tenant: &'a str,
    template_id: &'a str,
    template_zip: &'a Path,
}

/// Runs schemathesis against `openapi` with every check; its exit status and report.
async fn schemathesis(openapi: &str, token: &str, fixtures: &Fixtures<'_>) -> (bool, String) {
    let config_dir = Path::new(CONFIG_DIR);
    let run = tokio::process::Command::new("schemathesis")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("PYTHONPATH", config_dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir())
        .env("SCHEMA_TENANT", fixtures.tenant)
        .env("SCHEMA_TEMPLATE_ID", fixtures.template_id)
        .env("SCHEMA_TEMPLATE_ZIP", fixtures.template_zip)
        .arg("--config-file")
        .arg(config_dir.join("schemathesis.toml"))
        .args(["run", openapi, "--checks", "all", "--workers", "1"])
        // DELETE on a job cancels it, and the contract keeps a cancelled job readable (status
        // `cancelled`): a read after it is not a use after free. schemathesis applies check
        // settings to its stateful phase only globally, so this check cannot be turned off for
        // the one operation; deleted tenants and ranges answering 404 are end-to-end tests.
        .args(["--exclude-checks", "use_after_free"])
        // The dashboard's pages are for people, behind a session cookie and a same-origin
        // check that no generated request passes; its own tests drive it in a browser.
        .args(["--exclude-tag", "dashboard"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("schemathesis finishes in time")
        .expect("schemathesis runs: use scripts/test, or put `scripts/tools` output on PATH");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_with_every_check_against_the_served_document() {
    let mut app = TestApp::spawn().await;
    // One tenant that routes naming an existing tenant can use; then no worker runs, so the
    // jobs the run submits stay queued and no generated template URL is fetched.
    let tenant = fixtures::tenant_url();
    let template = app.serve_sample_template("t.zip").await;
    let job = app
        .create_and_wait(&tenant, &fixtures::create_body(&template))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    app.stop_workers().await;
    // A stored template that creates may name, and its bytes for the hooks.
    let bytes = fixtures::sample_template(app.db_version().await).write();
    let template_zip = std::env::temp_dir().join(format!("{}-template.zip", app.database));
    std::fs::write(&template_zip, &bytes).unwrap();
    let stored = app
        .http
        .post(app.url("/configapi/v2/templates"))
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let stored: serde_json::Value = stored.json().await.unwrap();
    let run_with = Fixtures {
        tenant: &tenant,
        template_id: stored["templateId"].as_str().unwrap(),
        template_zip: &template_zip,
    };
    let token = app.bootstrap_token().await;
    let openapi = app.url("/openapi.json");
    let (passed, report) = schemathesis(&openapi, &token, &run_with).await;
    let _ = std::fs::remove_file(&template_zip);
    app.stop().await;
    println!("{report}");
    assert!(passed, "schemathesis found failures:\n{report}");
    // It did test: every documented operation was reached.
    assert!(report.contains("API Operations"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_answers_what_the_document_says_at_its_edges() {
    let app = TestApp::spawn().await;
    let tenant = fixtures::tenant_url();
    let template = app.serve_sample_template("t.zip").await;
    let job = app
        .create_and_wait(&tenant, &fixtures::create_body(&template))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let post =
        |path: &str, body: serde_json::Value| app.http.post(app.url(path)).json(&body).send();
    // A whole number written as a float is the integer JSON Schema says it is.
    let range = serde_json::json!({"number": "5550100", "count": 5.0, "tenantUrl": tenant});
    assert_eq!(
        post("/configapi/v2/accessnumbers", range)
            .await
            .unwrap()
            .status(),
        204
    );
    let mut body = fixtures::create_body(&template);
    body["lockTimeout"] = serde_json::json!(5.0);
    let created = app.create(&fixtures::tenant_url(), &body).await;
    assert_eq!(created.status(), 202);
    // `media` may not hide characters; a range count is at most 1,000,000.
    let hidden = serde_json::json!({"number": "5550200", "count": 1, "tenantUrl": tenant, "media": "VO\u{202e}ICE"});
    let refused = post("/configapi/v2/accessnumbers", hidden).await.unwrap();
    assert_eq!(refused.status(), 400);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "media", "{problem}");
    let too_many = app.url("/configapi/v2/accessnumbers/5550100?count=1000001");
    assert_eq!(
        app.http.delete(too_many).send().await.unwrap().status(),
        400
    );
    // A page size of any length is clamped.
    let (status, page) = app
        .get_json(&format!("/configapi/v2/tenant?limit={}", "9".repeat(30)))
        .await;
    assert_eq!(status, 200, "{page}");
    let urls: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["url"].as_str())
        .collect();
    assert!(urls.contains(&tenant.as_str()), "{page}");
    app.stop().await;
}
