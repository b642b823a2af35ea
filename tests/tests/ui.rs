//! The dashboard at `/ui`: the contract's codes over plain HTTP (sign-in and its cookie, `303`s,
//! refused cross-site posts, who sees which batch, the failed rows as CSV), and the whole flow in
//! headless Chromium (sign in, watch a batch finish without reloading, retry its failed items,
//! cancel a queued job), which also writes the screenshots in `docs/ui/`.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, TestApp,
    batches::{self, items},
    eventually,
    fixtures::{self, SENTINEL_PASSWORD},
    ui::{self, count, csrf, post_login, sign_in},
};
use reqwest::{StatusCode, header};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(90);

/// Form fields or headers of a request.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn batch_id(batch: &Value) -> String {
    batch["batchId"].as_str().unwrap().to_owned()
}

async fn batch_status(app: &TestApp, id: &str) -> Value {
    let (status, batch) = app.get_json(&format!("/configapi/v2/batches/{id}")).await;
    assert_eq!(status, 200, "{batch}");
    batch
}

#[tokio::test]
async fn signed_out_visits_are_sent_to_the_sign_in_form() {
    let app = TestApp::without_workers().await;
    for path in [
        "/ui/",
        "/ui/batches",
        "/ui/jobs",
        "/ui/templates",
        "/ui/batches/0b8f5c1e-0000-4000-8000-000000000000",
    ] {
        let (status, location, _) = ui::get(&app, "", path).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location.as_deref(), Some("/ui/login"), "{path}");
    }
    let (status, location, _) = ui::get(&app, "provisioner_session=forged", "/ui/").await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ui/login"))
    );
    let (status, _, page) = ui::get(&app, "", "/ui/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("name=\"client_id\"") && page.contains("name=\"client_secret\""));
    // The live figures answer 401 instead of a page.
    let (status, _, _) = ui::get(&app, "", "/ui/live/overview").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie_that_lasts_as_long_as_a_token() {
    let app = TestApp::without_workers().await;
    let r = post_login(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/ui/");
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(
        attributes[0].starts_with("provisioner_session="),
        "{cookie}"
    );
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=3600"] {
        assert!(attributes.contains(&wanted), "{wanted} in {cookie}");
    }
    assert!(!attributes.contains(&"Secure"), "plain HTTP: {cookie}");
    let session = attributes[0];
    let (status, _, page) = ui::get(&app, session, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Signed in as") && page.contains(BOOTSTRAP_ID));
    assert!(page.contains("data-figure=\"queued\""));

    // Behind a TLS-terminating proxy the cookie is Secure.
    let r = post_login(
        &app,
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.split(';').any(|a| a.trim() == "Secure"), "{cookie}");

    // Signing out ends the session at once.
    let (_, _, page) = ui::get(&app, session, "/ui/").await;
    let r = ui::post(&app, session, "/ui/logout", &[("csrf", &csrf(&page))], &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, location, _) = ui::get(&app, session, "/ui/").await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ui/login"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_may_not_read_signs_in_is_told_why_and_can_sign_out() {
    let app = TestApp::without_workers().await;
    batches::client(&app, "writer", &["tenants:write"]).await;
    // Valid credentials sign in, as the contract says, whatever the client's scopes.
    let r = post_login(&app, "writer", "writer-secret", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/ui/");
    assert!(r.headers().contains_key(header::SET_COOKIE));
    let session = sign_in(&app, "writer", "writer-secret").await;
    // Its session's token carries no scope: used as a bearer token, it may change nothing.
    let token = session.split_once('=').unwrap().1;
    let r = provisioner_tests::authorized_client(token)
        .post(app.url("/configapi/v2/selfservice/tenant/a.example.com"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Every page then says why it shows nothing, and offers to sign out.
    let (status, _, page) = ui::get(&app, &session, "/ui/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("needs the scope tenants:read"), "{page}");
    let r = ui::post(&app, &session, "/ui/logout", &[("csrf", &csrf(&page))], &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, location, _) = ui::get(&app, &session, "/ui/").await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ui/login")),
        "signed out"
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_credentials_show_the_form_again_with_an_error_and_set_nothing() {
    let app = TestApp::without_workers().await;
    for (id, secret) in [
        (BOOTSTRAP_ID, "not-the-secret"),
        ("no-such-client", "whatever"),
        (BOOTSTRAP_ID, ""),
        ("a\0b", "whatever"),
    ] {
        let r = post_login(&app, id, secret, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{id}:{secret}");
        assert!(
            r.headers().get(header::SET_COOKIE).is_none(),
            "{id}:{secret}"
        );
        let page = r.text().await.unwrap();
        assert!(page.contains("role=\"alert\""), "an error is shown: {page}");
        assert!(page.contains("name=\"client_secret\""), "the form again");
        assert!(
            !page.contains("not-the-secret"),
            "the secret is never echoed"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_session_never_exports_and_ends_as_soon_as_its_client_is_revoked() {
    let app = TestApp::without_workers().await;
    batches::client(&app, "viewer", &["tenants:read", "tenants:export"]).await;
    let session = sign_in(&app, "viewer", "viewer-secret").await;
    // The cookie's token is a bearer token too, but a stolen cookie exports nothing.
    let token = session.split_once('=').unwrap().1;
    let r = provisioner_tests::authorized_client(token)
        .get(app.url("/configapi/v2/tenant/nobody.example.com/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The page reads the session (and keeps it for the next polls).
    let (status, _, _) = ui::get(&app, &session, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    // Revoked by another process (an operator's command): the database's announcement ends
    // the session at once, not when what this process kept of it grows old (2 s).
    let mut conn = app.db.acquire().await.unwrap();
    assert!(
        provisioner_shared::db::clients::revoke(&mut conn, "viewer")
            .await
            .unwrap()
    );
    drop(conn);
    eventually(Duration::from_millis(1200), || async {
        let (status, location, _) = ui::get(&app, &session, "/ui/").await;
        (status == StatusCode::SEE_OTHER && location.as_deref() == Some("/ui/login")).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn dashboard_faults_answer_pages_not_problem_json() {
    let app = TestApp::without_workers().await;
    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    for (method, path, status) in [
        ("GET", "/ui/logout", StatusCode::METHOD_NOT_ALLOWED),
        ("POST", "/ui/", StatusCode::METHOD_NOT_ALLOWED),
        ("POST", "/ui/no-such-page", StatusCode::NOT_FOUND),
        ("GET", "/ui/batches/%FF", StatusCode::NOT_FOUND),
        ("GET", "/ui/jobs/%FF%FE", StatusCode::NOT_FOUND),
        ("GET", "/ui/assets/%FF", StatusCode::NOT_FOUND),
    ] {
        let r = ui::no_redirects()
            .request(method.parse().unwrap(), app.url(path))
            .header(header::COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(r.headers().contains_key(header::ALLOW), "{method} {path}");
        }
        let kind = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/html"), "{method} {path}: {kind}");
        assert!(r.text().await.unwrap().contains("role=\"alert\""));
    }
    app.stop().await;
}

#[tokio::test]
async fn cross_site_posts_are_refused_and_change_nothing() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batch_id(&batches::submit(&app, &items(3, &template)).await);
    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let path = format!("/ui/batches/{batch}");
    let (status, _, page) = ui::get(&app, &session, &path).await;
    assert_eq!(status, StatusCode::OK);
    let token = csrf(&page);
    let cancel = format!("{path}/cancel");
    let host = app.addr.to_string();
    let origin = format!("http://{host}");

    let refused: [(Pairs, Pairs); 4] = [
        // A form on another site: the browser names its origin (and cannot know the token).
        (&[], &[("origin", "https://evil.example")]),
        (
            &[("csrf", token.as_str())],
            &[("origin", "https://evil.example")],
        ),
        (
            &[("csrf", token.as_str())],
            &[("sec-fetch-site", "cross-site")],
        ),
        // Same origin, but no token or a wrong one.
        (&[("csrf", "forged")], &[("origin", origin.as_str())]),
    ];
    for (form, headers) in refused {
        let r = ui::post(&app, &session, &cancel, form, headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form:?} {headers:?}");
        assert!(r.headers().get(header::LOCATION).is_none());
    }
    let batch_now = batch_status(&app, &batch).await;
    assert_eq!(batch_now["status"], "running", "{batch_now}");
    assert_eq!(batch_now["counts"]["queued"], 3, "{batch_now}");

    // A sign-in posted from another site sets no cookie.
    let r = post_login(
        &app,
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(header::SET_COOKIE).is_none());

    // The page's own form works.
    let r = ui::post(
        &app,
        &session,
        &cancel,
        &[("csrf", &token)],
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION].to_str().unwrap(), path);
    let batch_now = batch_status(&app, &batch).await;
    assert_eq!(batch_now["status"], "cancelled", "{batch_now}");
    assert_eq!(batch_now["counts"]["cancelled"], 3, "{batch_now}");
    app.stop().await;
}

#[tokio::test]
async fn a_client_sees_only_its_own_batches_and_an_operator_sees_every_one() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let alice = batches::client(&app, "alice", &["tenants:read", "tenants:write"]).await;
    batches::client(&app, "bob", &["tenants:read", "tenants:write"]).await;
    batches::client(&app, "ops", &["tenants:read", "provisioner:admin"]).await;
    let r = batches::post(
        &app,
        &alice,
        "application/x-ndjson",
        batches::ndjson(&items(4, &template)),
    )
    .await;
    assert_eq!(r.status(), 202);
    let batch = batch_id(&r.json().await.unwrap());
    let path = format!("/ui/batches/{batch}");

    let own = sign_in(&app, "alice", "alice-secret").await;
    let (status, _, page) = ui::get(&app, &own, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&batch));
    assert_eq!(count(&page, "total"), 4);
    assert_eq!(count(&page, "queued"), 4);

    let figure = |page: &str, name: &str| -> i64 {
        let marker = format!("data-figure=\"{name}\">");
        let rest = &page[page.find(&marker).unwrap() + marker.len()..];
        rest[..rest.find('<').unwrap()].parse().unwrap()
    };
    let (_, _, overview) = ui::get(&app, &own, "/ui/").await;
    assert!(overview.contains("Your jobs"), "a client's own figures");
    assert_eq!(figure(&overview, "queued"), 4);

    let other = sign_in(&app, "bob", "bob-secret").await;
    let (_, _, overview) = ui::get(&app, &other, "/ui/").await;
    assert_eq!(
        figure(&overview, "queued"),
        0,
        "another client's work is not counted"
    );
    let (status, _, page) = ui::get(&app, &other, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!page.contains(&batch[9..]), "nothing of it is shown");
    let (_, _, list) = ui::get(&app, &other, "/ui/batches").await;
    assert!(!list.contains(&batch));
    let (status, _, live) = ui::get(&app, &other, &format!("/ui/live/batches?ids={batch}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&live).unwrap()["batches"],
        serde_json::json!([])
    );
    let (_, _, jobs) = ui::get(&app, &other, &format!("/ui/jobs?batchId={batch}")).await;
    assert!(jobs.contains("No job matches"), "{jobs}");
    let (_, _, any_page) = ui::get(&app, &other, "/ui/batches").await;
    let r = ui::post(
        &app,
        &other,
        &format!("{path}/cancel"),
        &[("csrf", &csrf(&any_page))],
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(batch_status(&app, &batch).await["status"], "running");

    let operator = sign_in(&app, "ops", "ops-secret").await;
    let (status, _, page) = ui::get(&app, &operator, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&batch) && page.contains("alice"));
    assert_eq!(count(&page, "queued"), 4);
    assert!(
        !page.contains("/cancel\""),
        "no tenants:write: no actions offered"
    );
    let (_, _, list) = ui::get(&app, &operator, "/ui/batches").await;
    assert!(list.contains(&batch));
    let (_, _, live) = ui::get(&app, &operator, &format!("/ui/live/batches?ids={batch}")).await;
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["batches"][0]["counts"]["total"], 4, "{live}");
    app.stop().await;
}

#[tokio::test]
async fn the_failed_rows_download_as_csv_without_passwords() {
    let app = TestApp::spawn().await;
    let good = app.serve_sample_template("t.zip").await;
    let missing = format!("http://{}/missing.zip", app.templates.addr);
    let mut all = items(2, &good);
    let failing = items(2, &missing);
    all.extend(failing.iter().cloned());
    let batch = batch_id(&batches::submit(&app, &all).await);
    let done = batches::wait(&app, &batch, WITHIN).await;
    assert_eq!(done["counts"]["failed"], 2, "{done}");

    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let (status, _, page) = ui::get(&app, &session, &format!("/ui/batches/{batch}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count(&page, "failed"), 2);
    assert!(page.contains("failed.csv"), "the download is offered");
    let r = ui::no_redirects()
        .get(app.url(&format!("/ui/batches/{batch}/failed.csv")))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert!(
        r.headers()[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    // The columns of the command line's results files.
    assert_eq!(
        lines[0],
        "tenantUrl,tenantName,firstName,lastName,loginId,email,numberMap,templateUrl,templateId,lockTimeout,jobId,status,code,error"
    );
    for (line, item) in lines[1..].iter().zip(&failing) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], item["tenantUrl"].as_str().unwrap(), "{line}");
        assert_eq!(cells[1], item["tenantName"].as_str().unwrap(), "{line}");
        assert_eq!(cells[7], missing, "{line}");
        assert_eq!(cells[11], "failed");
        assert_eq!(cells[12], "400");
    }
    assert!(!csv.contains(SENTINEL_PASSWORD), "no password in the rows");
    // The file submits again as it is with the command line (the password from its variable).
    let scratch = provisioner_tests::cli::Scratch::new();
    let file = scratch.path("failed.csv");
    std::fs::write(&file, &csv).unwrap();
    let cli = provisioner_tests::cli::Cli::new(env!("CARGO_BIN_EXE_test-provisioner"), &app);
    let args = ["batch", "submit", file.to_str().unwrap()];
    let mut command = cli.command(&args);
    command.env("PROVISIONER_PASSWORD", "Resubmitted-pa55word");
    let out = cli.finish(command.spawn().unwrap(), &args).await.expect(0);
    let again = out.stdout.lines().next().unwrap().to_owned();
    let (status, resubmitted) = app
        .get_json(&format!("/configapi/v2/batches/{again}"))
        .await;
    assert_eq!(
        (status, resubmitted["counts"]["total"].as_i64()),
        (200, Some(2)),
        "{resubmitted}"
    );
    // Signed out, nothing is downloaded.
    let (status, location, _) = ui::get(&app, "", &format!("/ui/batches/{batch}/failed.csv")).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ui/login"))
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_filtered_shown_with_their_timeline_and_a_queued_one_is_cancelled() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let tenant = fixtures::tenant_url();
    let job = app.submit(&tenant, &fixtures::create_body(&template)).await;
    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;

    let (status, _, page) = ui::get(
        &app,
        &session,
        &format!("/ui/jobs?status=queued&tenantUrl={tenant}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&format!("data-job=\"{job}\"")), "{page}");
    let (_, _, page) = ui::get(&app, &session, "/ui/jobs?status=succeeded").await;
    assert!(!page.contains(&job) && page.contains("No job matches"));
    let (status, _, page) = ui::get(
        &app,
        &session,
        "/ui/jobs?tenantUrl=not%20a%20host&batchId=nope",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("The tenant URL must") && page.contains("The batch id must be a UUID"),
        "{page}"
    );

    let path = format!("/ui/jobs/{job}");
    let (status, _, page) = ui::get(&app, &session, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Timeline") && page.contains("— queued") && page.contains(&tenant));
    // A `back` that leaves the dashboard is ignored.
    let r = ui::post(
        &app,
        &session,
        &format!("{path}/cancel"),
        &[("csrf", &csrf(&page)), ("back", "//evil.example/ui/")],
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION].to_str().unwrap(), path);
    let (_, cancelled) = app.get_json(&format!("/configapi/v2/jobs/{job}")).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let r = ui::post(
        &app,
        &session,
        &format!("{path}/cancel"),
        &[("csrf", &csrf(&page))],
        &[],
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "an ended job is not cancelled again"
    );

    // A client that may only read is offered no action, and its posts are refused.
    batches::client(&app, "reader", &["tenants:read", "provisioner:admin"]).await;
    let reader = sign_in(&app, "reader", "reader-secret").await;
    let job = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&template))
        .await;
    let (_, _, page) = ui::get(&app, &reader, &format!("/ui/jobs/{job}")).await;
    assert!(!page.contains("/cancel\""));
    let r = ui::post(
        &app,
        &reader,
        &format!("/ui/jobs/{job}/cancel"),
        &[("csrf", &csrf(&page))],
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, still) = app.get_json(&format!("/configapi/v2/jobs/{job}")).await;
    assert_eq!(still["status"], "queued", "{still}");
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_pages_polling_one_batch_at_once_cost_the_database_one_read() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let batch = batch_id(&batches::submit(&app, &items(3, &template)).await);
    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    // Every read of `batches` waits while the test holds this lock: the API sessions waiting
    // for it are its reads in flight.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let polls: Vec<_> = (0..100)
        .map(|_| {
            let (url, cookie) = (
                app.url(&format!("/ui/live/batches?ids={batch}")),
                session.clone(),
            );
            tokio::spawn(async move {
                let r = ui::no_redirects()
                    .get(url)
                    .header(header::COOKIE, cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let waiting = || async { app.table_locks("batches", "NOT l.granted").await };
    eventually(Duration::from_secs(20), || async {
        (waiting().await >= 1).then_some(())
    })
    .await;
    // Watched for a while: without coalescing, the other requests' reads queue up here too.
    let mut most = 0;
    let watch_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < watch_until {
        most = most.max(waiting().await);
    }
    assert_eq!(most, 1, "one read of the batch serves every page");
    lock.rollback().await.unwrap();
    for poll in polls {
        let body = poll.await.unwrap();
        assert_eq!(body["batches"][0]["batchId"], batch.as_str(), "{body}");
        assert_eq!(body["batches"][0]["counts"]["queued"], 3, "{body}");
    }
    app.stop().await;
}

/// Ids a page asks for that name no batch cost one statement for all of them, then none for a
/// while: a request naming a hundred made-up ids read the batches a hundred times, one after
/// another (and the dashboard has no request rate of its own).
#[tokio::test]
async fn live_requests_for_made_up_batch_ids_read_the_database_once() {
    let app = TestApp::without_workers().await;
    let session = sign_in(&app, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let ids: Vec<String> = (0..100).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let lock_batches = || async {
        let mut tx = app.db.begin().await.unwrap();
        sqlx::query("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    };
    // The API's reads only (not an autovacuum of the table, say).
    let reads_waiting = || async {
        app.table_lockers(
            "batches",
            "NOT l.granted AND a.application_name = 'provisioner-api'",
        )
        .await
    };
    let poll = || {
        let url = app.url(&format!("/ui/live/batches?ids={}", ids.join(",")));
        let session = session.clone();
        tokio::spawn(async move {
            let r = ui::no_redirects()
                .get(url)
                .header(header::COOKIE, session)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        })
    };
    let until_a_read_waits = || {
        eventually(Duration::from_secs(20), || async {
            reads_waiting().await.into_iter().next()
        })
    };
    let first = lock_batches().await;
    let mut answer = poll();
    let first_read = until_a_read_waits().await;
    // Its first read goes through; the table is held again at once (after that read), so any
    // later read of the request, or of the next one, waits where the test sees it.
    first.rollback().await.unwrap();
    let mut held = lock_batches().await;
    // A statement's first run on a connection is prepared in a round trip of its own, which
    // takes the table's lock apart from its execution: what waited may have been that, and the
    // same session's execution of the same statement may wait once more. Any other read seen
    // waiting fails (one made before the table is held again is not seen: the hundred reads of
    // one request that this test was written for are).
    let mut executed = false;
    let answered = loop {
        tokio::select! {
            body = &mut answer => break body.unwrap(),
            read = until_a_read_waits() => {
                assert!(
                    !executed && read == first_read,
                    "the request read the batches again: {read:?} after {first_read:?}"
                );
                executed = true;
                held.rollback().await.unwrap();
                held = lock_batches().await;
            }
        }
    };
    assert_eq!(answered["batches"], serde_json::json!([]), "{answered}");
    let mut again = poll();
    let answered = tokio::select! {
        body = &mut again => body.unwrap(),
        read = until_a_read_waits() => panic!("the same ids were read again: {read:?}"),
    };
    assert_eq!(answered["batches"], serde_json::json!([]), "{answered}");
    held.rollback().await.unwrap();
    app.stop().await;
}

/// Headless Chromium under chromedriver, for one test.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = provisioner_tests::process::tool("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/browser installs it)");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,900", "--lang=en-US"
            ]}),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "chromedriver: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Self { driver, client }
    }

    /// The text of the first element matching `css`.
    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Waits until the element `css` shows `want`. The element may be missing or replaced
    /// meanwhile (a navigation, a section swapped in by the page's script): it is found again.
    async fn until_text(&self, css: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.ok(),
                Err(_) => None,
            };
            if text.as_deref() == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} shows {text:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits until the window shows the page at `want` (after a click that navigates).
    async fn until_path(&self, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let path = self.path().await;
            if path == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "at {path}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves what the window shows as `docs/ui/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ui");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

#[tokio::test]
async fn in_a_browser_an_operator_signs_in_watches_a_batch_finish_retries_it_and_cancels_a_job() {
    let mut app = TestApp::without_workers().await;
    let browser = Browser::start().await;
    let b = &browser;
    let good = app.serve_sample_template("t.zip").await;

    // Signed out: sent to the sign-in form.
    b.client.goto(&app.url("/ui/batches")).await.unwrap();
    b.until_path("/ui/login").await;
    b.screenshot("login").await;
    b.client
        .find(Locator::Id("client_id"))
        .await
        .unwrap()
        .send_keys(BOOTSTRAP_ID)
        .await
        .unwrap();
    b.client
        .find(Locator::Id("client_secret"))
        .await
        .unwrap()
        .send_keys("wrong secret")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The page was already /ui/login before the post: wait for the answer's error itself.
    let error = b
        .client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login-error"))
        .await
        .expect("the sign-in page answers with an error");
    assert!(error.text().await.unwrap().contains("wrong"));
    assert_eq!(b.path().await, "/ui/login");
    b.client
        .find(Locator::Id("client_secret"))
        .await
        .unwrap()
        .send_keys(BOOTSTRAP_SECRET)
        .await
        .unwrap();
    b.client
        .find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.until_path("/ui/").await;

    // A queued job (no worker runs yet) is cancelled from the jobs page.
    let tenant = fixtures::tenant_url();
    let job = app.submit(&tenant, &fixtures::create_body(&good)).await;
    b.client
        .goto(&app.url("/ui/jobs?status=queued"))
        .await
        .unwrap();
    b.screenshot("jobs").await;
    b.client
        .find(Locator::Css(&format!("tr[data-job=\"{job}\"] form button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        let (_, j) = app.get_json(&format!("/configapi/v2/jobs/{job}")).await;
        (j["status"] == "cancelled").then_some(())
    })
    .await;
    b.client
        .goto(&app.url(&format!("/ui/jobs/{job}")))
        .await
        .unwrap();
    assert_eq!(b.text("dd [data-status]").await, "cancelled");

    // A batch of 6 items, 2 of which name a template that is not there yet.
    let missing = format!("http://{}/later.zip", app.templates.addr);
    let mut all = items(4, &good);
    all.extend(items(2, &missing));
    let batch = batch_id(&batches::submit(&app, &all).await);
    b.client
        .goto(&app.url(&format!("/ui/batches/{batch}")))
        .await
        .unwrap();
    assert_eq!(b.text("#batch-id").await, batch);
    assert_eq!(b.text("[data-count=\"queued\"]").await, "6");
    // Marks this page: a reload would lose the mark.
    b.client
        .execute("window.notReloaded = true; return null;", vec![])
        .await
        .unwrap();

    app.start_worker();
    b.until_text("[data-count=\"succeeded\"]", "4").await;
    b.until_text("[data-count=\"failed\"]", "2").await;
    b.until_text("dd [data-status]", "completed").await;
    assert_eq!(b.text("[data-count=\"queued\"]").await, "0");
    assert_eq!(b.text("[data-count=\"total\"]").await, "6");
    let same_page = b
        .client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        Value::Bool(true),
        "the counts changed without a reload"
    );
    // The failures, grouped, appear without a reload too.
    b.until_text("[data-failures] tbody td.num", "400").await;
    b.screenshot("batch").await;

    // The template arrives; the failed items are retried from the page.
    app.serve_sample_template("later.zip").await;
    let retry = b
        .client
        .find(Locator::Css(
            "form[action$=\"/retry\"][data-show-when] button",
        ))
        .await
        .unwrap();
    retry.click().await.unwrap();
    b.until_path(&format!("/ui/batches/{batch}")).await;
    b.until_text("[data-count=\"succeeded\"]", "6").await;
    b.until_text("dd [data-status]", "completed").await;
    assert_eq!(b.text("[data-count=\"failed\"]").await, "0");
    let finished = batch_status(&app, &batch).await;
    assert_eq!(finished["counts"]["succeeded"], 6, "{finished}");

    // The timeline of a retried item's new job: queued, released, running, its lock wait, done.
    let results = batches::results(&app, &batch, "").await;
    let retried = results[4]["jobId"].as_str().unwrap();
    b.client
        .goto(&app.url(&format!("/ui/jobs/{retried}")))
        .await
        .unwrap();
    assert_eq!(b.text("dd [data-status]").await, "succeeded");
    let timeline = b.text("ol.timeline").await;
    assert!(
        timeline.contains("running (attempt 1)") && timeline.contains("for the import lock"),
        "{timeline}"
    );
    b.screenshot("job").await;

    b.client.goto(&app.url("/ui/batches")).await.unwrap();
    b.screenshot("batches").await;
    b.client.goto(&app.url("/ui/")).await.unwrap();
    b.until_text("[data-figure=\"succeeded\"]", "6").await;
    b.screenshot("overview").await;
    store_template(&app).await;
    b.client.goto(&app.url("/ui/templates")).await.unwrap();
    assert!(b.text("table.templates").await.contains("support-v3"));
    b.screenshot("templates").await;

    // Signing out: the next visit is sent to the sign-in form.
    b.client.goto(&app.url("/ui/")).await.unwrap();
    b.client
        .find(Locator::Css("form[action=\"/ui/logout\"] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.until_path("/ui/login").await;
    b.client
        .goto(&app.url(&format!("/ui/batches/{batch}")))
        .await
        .unwrap();
    b.until_path("/ui/login").await;
    browser.stop().await;
    app.stop().await;
}

/// Stores the sample template under the name `support-v3`.
async fn store_template(app: &TestApp) {
    let bytes = fixtures::sample_template(app.db_version().await).write();
    let r = app
        .http
        .post(app.url("/configapi/v2/templates?name=support-v3"))
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
