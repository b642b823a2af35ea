//! OAuth client credentials, bearer tokens, scopes, and per-client visibility of jobs.

use std::time::Duration;

use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, Options, TestApp, authorized_client, fetch_token, fixtures,
};
use serde_json::Value;

/// `POST` to the token endpoint at `url` with client credentials in the form.
async fn token_request(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    secret: &str,
) -> reqwest::Response {
    token_request_via(http, url, None, id, secret).await
}

/// `token_request`, through a proxy that says the request came from `from` when given.
async fn token_request_via(
    http: &reqwest::Client,
    url: &str,
    from: Option<&str>,
    id: &str,
    secret: &str,
) -> reqwest::Response {
    let mut request = http.post(url);
    if let Some(from) = from {
        request = request.header("x-forwarded-for", from);
    }
    request
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap()
}

/// Runs `provisioner-api` (the test build) with the app's settings and `args`.
async fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = provisioner_tests::process::command(env!("CARGO_BIN_EXE_test-api"), app)
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// `--help` and a mistyped command are answered before anything is connected to: neither
/// creates nor migrates the database `DATABASE_URL` names; a command refuses a database that
/// does not exist.
#[tokio::test]
async fn the_operator_commands_help_and_a_mistyped_one_create_no_database() {
    let app = TestApp::without_workers().await;
    let name = format!("{}_never", app.database);
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        let app = &app;
        async move {
            provisioner_tests::process::command(env!("CARGO_BIN_EXE_test-api"), app)
                .env("DATABASE_URL", url)
                .env("RUST_LOG", "warn")
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    // Help anywhere in a command (after it, as most tools take it) prints the usage and ends
    // well; `client create --help` was an unknown option.
    for asked in [
        &["--help"][..],
        &["client", "create", "--help"],
        &["client", "-h"],
    ] {
        let help = run(asked).await;
        assert!(help.status.success(), "{asked:?}: {help:?}");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("client create"),
            "{help:?}"
        );
    }
    let typo = run(&["client", "craete"]).await;
    assert!(!typo.status.success());
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("unknown command `client craete`") && stderr.contains("usage:"),
        "{typo:?}"
    );
    // A mistyped option is refused, not ignored: `--scope` would have given the default scopes,
    // writing included.
    let option = run(&[
        "client",
        "create",
        "--name",
        "ro",
        "--scope",
        "tenants:read",
    ])
    .await;
    assert!(!option.status.success());
    assert!(
        String::from_utf8_lossy(&option.stderr).contains("unknown option `--scope`"),
        "{option:?}"
    );
    // An option where a value goes is no value (a client named `--scopes`, with the default
    // scopes, before).
    let missing = run(&["client", "create", "--name", "--scopes", "tenants:read"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--name needs a value"),
        "{missing:?}"
    );
    let revoke = run(&["client", "revoke"]).await;
    assert!(
        String::from_utf8_lossy(&revoke.stderr).contains("client revoke needs the client's id"),
        "{revoke:?}"
    );
    // A command against a database that does not exist (`DATABASE_URL` mistyped, or `.env`
    // not loaded) makes none: its client would be where no API reads.
    for args in [
        &["client", "list"][..],
        &["client", "create", "--name", "ops"][..],
    ] {
        let out = provisioner_tests::process::command(env!("CARGO_BIN_EXE_test-api"), &app)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(
            stderr.contains(&format!("the database \"{name}\" does not exist"))
                && stderr.contains("DATABASE_URL"),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("client_secret"));
    }
    let exists = app.drop_database_if_made(&name).await;
    assert!(
        !exists,
        "a database was created for --help, a typo or a command"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_follows_rfc_6749() {
    let app = TestApp::without_workers().await;
    let anon = provisioner_tests::http_client();
    let url = app.url("/configapi/v2/oauth/token");
    let r = token_request(&anon, &url, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().len() >= 40);

    // HTTP Basic client authentication works too.
    let r = anon
        .post(&url)
        .basic_auth(BOOTSTRAP_ID, Some(BOOTSTRAP_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = anon
        .post(&url)
        .basic_auth("\0", Some("x"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", BOOTSTRAP_ID),
                ("client_secret", "wrong"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", "x"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", BOOTSTRAP_SECRET),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            401,
            "invalid_client",
        ),
        // No client's id holds a NUL: unknown, as any other.
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "a\0b"),
                ("client_secret", "x"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", BOOTSTRAP_ID),
                ("client_secret", BOOTSTRAP_SECRET),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![
                ("client_id", BOOTSTRAP_ID),
                ("client_secret", BOOTSTRAP_SECRET),
            ],
            400,
            "invalid_request",
        ),
    ];
    for (form, status, error) in cases {
        let r = anon.post(&url).form(&form).send().await.unwrap();
        assert_eq!(r.status(), status, "{form:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], error, "{form:?}");
    }
    let r = anon
        .post(&url)
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // Secrets and tokens are stored hashed.
    let stored: Vec<String> = sqlx::query_scalar("SELECT secret_hash FROM api_clients")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.starts_with("$argon2id$") && !h.contains(BOOTSTRAP_SECRET))
    );
    let token = body["access_token"].as_str().unwrap();
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM access_tokens WHERE position(convert_to($1, 'UTF8') in token_hash) > 0").bind(token).fetch_one(&app.db).await.unwrap();
    assert_eq!(raw, 0);
    app.stop().await;
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_are_401_with_a_bearer_challenge() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TOKEN_TTL", "1".into())],
    })
    .await;
    let anon = provisioner_tests::http_client();
    let path = app.url("/configapi/v2/jobs");
    // The contract's bare challenge, whatever was wrong with the token.
    let check = |r: reqwest::Response| {
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    };
    check(anon.get(&path).send().await.unwrap());
    check(
        anon.get(&path)
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap(),
    );
    check(
        anon.post(app.url("/configapi/v2/selfservice/tenant/a.example.com"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap(),
    );
    let token = fetch_token(&anon, app.addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    assert_eq!(
        anon.get(&path)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    check(anon.get(&path).bearer_auth(&token).send().await.unwrap());
    // Health, readiness and the token endpoint need no token.
    assert_eq!(
        anon.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        anon.get(app.url("/readyz")).send().await.unwrap().status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn scopes_are_enforced_and_clients_see_only_their_own_jobs() {
    let app = TestApp::without_workers().await;
    let (ok, out) = cli(
        &app,
        &[
            "client",
            "create",
            "--name",
            "reader",
            "--scopes",
            "tenants:read",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let reader = authorized_client(
        &fetch_token(
            &provisioner_tests::http_client(),
            app.addr,
            field(&out, "client_id"),
            field(&out, "client_secret"),
        )
        .await,
    );
    let (ok, out) = cli(&app, &["client", "create", "--name", "other writer"]).await;
    assert!(ok, "{out}");
    let (other_id, other_secret) = (
        field(&out, "client_id").to_owned(),
        field(&out, "client_secret").to_owned(),
    );
    let other = authorized_client(
        &fetch_token(
            &provisioner_tests::http_client(),
            app.addr,
            &other_id,
            &other_secret,
        )
        .await,
    );

    let body = fixtures::create_body("https://templates.example/t.zip");
    let r = reader
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a read-only client cannot create");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(
        reader
            .get(app.url("/configapi/v2/jobs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &body).await;
    let r = other
        .get(app.url(&format!("/configapi/v2/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another client's job is not found");
    let text = r.text().await.unwrap();
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["status"], 404);
    assert!(
        !text.contains(&tenant) && !text.contains("queued") && problem.get("job").is_none(),
        "no data of the job leaks: {text}"
    );
    assert_eq!(
        other
            .delete(app.url(&format!("/configapi/v2/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let listed: Value = other
        .get(app.url("/configapi/v2/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], serde_json::json!([]));
    let (status, mine) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!((status, mine["status"].as_str()), (200, Some("queued")));
    // Whose the job is comes before what the query asks: another client's is 404 even with a
    // query its owner would be refused (400).
    for query in ["wait=x", "wait=1&status=nope"] {
        let path = format!("/configapi/v2/jobs/{id}?{query}");
        let r = other.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{query}");
        assert_eq!(app.get_json(&path).await.0, 400, "{query}");
    }

    // Listing and revoking clients.
    let (ok, out) = cli(&app, &["client", "list"]).await;
    assert!(
        ok && out.contains(&other_id) && out.contains("reader") && !out.contains(&other_secret),
        "{out}"
    );
    // The API keeps the token it just verified (for 10 s at most); the revocation, made by
    // another process, reaches it as a database notification, well before that.
    let (ok, _) = cli(&app, &["client", "revoke", &other_id]).await;
    assert!(ok);
    provisioner_tests::eventually(Duration::from_secs(2), || async {
        let r = other
            .get(app.url("/configapi/v2/jobs"))
            .send()
            .await
            .unwrap();
        (r.status() == 401).then_some(())
    })
    .await;
    let url = app.url("/configapi/v2/oauth/token");
    let r = token_request(
        &provisioner_tests::http_client(),
        &url,
        &other_id,
        &other_secret,
    )
    .await;
    assert_eq!(r.status(), 401);
    let (ok, out) = cli(
        &app,
        &[
            "client",
            "create",
            "--name",
            "x",
            "--scopes",
            "tenants:admin",
        ],
    )
    .await;
    assert!(!ok && out.contains("unknown scope"), "{out}");
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_bad_token_requests_is_bounded_and_failing_peers_are_refused() {
    let app = TestApp::without_workers().await;
    let url = app.url("/configapi/v2/oauth/token");
    let http = provisioner_tests::http_client();
    // More than the largest bound admits (four slots and their queue: 68).
    let flood = (0..128).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = token_request(&http, &url, &format!("nobody-{i}"), "wrong").await;
            let retry_after = r.headers().get("retry-after").cloned();
            (r.status().as_u16(), retry_after)
        }
    });
    let answers = futures_util::future::join_all(flood).await;
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "past the verification slots and their queue, requests are refused at once: {answers:?}"
    );
    assert!(busy.iter().all(|(_, retry)| retry.is_some()));
    assert!(
        answers.iter().all(|(s, _)| [401, 503, 429].contains(s)),
        "{answers:?}"
    );

    // Failures from one peer naming ids that do not exist are counted: after 20 in a minute,
    // another such id is no longer hashed, but still answered as a wrong secret would be, and
    // refused after 20 tries as a known id is (were it not, the `429` would tell which ids
    // exist).
    let mut failed = answers.iter().filter(|(s, _)| *s == 401).count();
    let mut n = 0;
    while failed < 20 {
        let r = token_request(&http, &url, &format!("nobody-{n}"), "wrong").await;
        assert_eq!(r.status(), 401, "failure {} of 20", failed + 1);
        failed += 1;
        n += 1;
    }
    for n in 1..=20 {
        let r = token_request(&http, &url, "nobody-else", "wrong").await;
        assert_eq!(r.status(), 401, "try {n} of an id that does not exist");
    }
    let r = token_request(&http, &url, "nobody-else", "wrong").await;
    assert_too_many_failures(r).await;
    // A client that exists is still verified through that peer (behind a proxy every client
    // has the proxy's address): 401 for a wrong secret, a token for the right one.
    let r = token_request(&http, &url, BOOTSTRAP_ID, "wrong").await;
    assert_eq!(r.status(), 401);
    let r = token_request(&http, &url, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    assert_eq!(
        r.status(),
        200,
        "a real client is not locked out by others' failures"
    );
    // Its own failures from that peer lock it out there, good credentials included.
    for n in 2..=20 {
        let r = token_request(&http, &url, BOOTSTRAP_ID, "wrong").await;
        assert_eq!(r.status(), 401, "failure {n} of 20");
    }
    let r = token_request(&http, &url, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    assert_too_many_failures(r).await;
    app.stop().await;
}

/// A token digest nobody holds.
fn rand_digest() -> Vec<u8> {
    uuid::Uuid::new_v4().as_bytes().repeat(2)
}

#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_by_the_address_it_names() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TRUSTED_PROXIES", "127.0.0.0/8, ::1".into())],
    })
    .await;
    let url = app.url("/configapi/v2/oauth/token");
    let http = provisioner_tests::http_client();
    // Someone elsewhere guesses the bootstrap client's secret through the proxy (the test's
    // connections come from 127.0.0.1, the trusted proxy), and writes an address of its own
    // choosing in front of the one the proxy appends: only the proxy's is believed.
    for n in 1..=20 {
        let r = token_request_via(
            &http,
            &url,
            Some("198.51.100.1, 203.0.113.66"),
            BOOTSTRAP_ID,
            "x",
        )
        .await;
        assert_eq!(r.status(), 401, "failure {n} of 20");
    }
    let r = token_request_via(&http, &url, Some("203.0.113.66"), BOOTSTRAP_ID, "x").await;
    assert_too_many_failures(r).await;
    // The client itself, from its own address, is not locked out: before, every request had
    // the proxy's address, and the guesses locked the client out.
    let r = token_request_via(
        &http,
        &url,
        Some("192.0.2.10"),
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The guesser cannot pass for the client: what it writes left of the proxy's entry is not
    // believed.
    let r = token_request_via(
        &http,
        &url,
        Some("192.0.2.10, 203.0.113.66"),
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    assert_too_many_failures(r).await;
    app.stop().await;

    // Without a trusted proxy, the header is not believed: the connection's address counts.
    let app = TestApp::without_workers().await;
    let url = app.url("/configapi/v2/oauth/token");
    for n in 1..=20 {
        let r = token_request_via(
            &http,
            &url,
            Some(&format!("203.0.113.{n}")),
            BOOTSTRAP_ID,
            "x",
        )
        .await;
        assert_eq!(r.status(), 401, "failure {n} of 20");
    }
    let r = token_request_via(
        &http,
        &url,
        Some("192.0.2.10"),
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    assert_too_many_failures(r).await;
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_clients_asking_for_tokens_at_once_gets_them_all() {
    let app = TestApp::without_workers().await;
    let url = app.url("/configapi/v2/oauth/token");
    let http = provisioner_tests::http_client();
    // Sixteen integrations starting at once: more than two verification slots and a small
    // queue would take (the rest were refused at once), fewer than the queue waits for.
    let burst = (0..16).map(|_| token_request(&http, &url, BOOTSTRAP_ID, BOOTSTRAP_SECRET));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.stop().await;
}

/// A token request refused after repeated failures: `429`, `Retry-After` within the minute,
/// the RFC 6749 error body.
async fn assert_too_many_failures(r: reqwest::Response) {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
}

/// A client made by the operator command with `scopes`, and a bearer-token HTTP client for it.
async fn client_with(app: &TestApp, name: &str, scopes: &str) -> (String, reqwest::Client) {
    let (ok, out) = cli(
        app,
        &["client", "create", "--name", name, "--scopes", scopes],
    )
    .await;
    assert!(ok, "{out}");
    let (id, secret) = (field(&out, "client_id"), field(&out, "client_secret"));
    let token = fetch_token(&provisioner_tests::http_client(), app.addr, id, secret).await;
    (id.to_owned(), authorized_client(&token))
}

#[tokio::test]
async fn export_needs_its_own_scope_and_operators_see_every_clients_jobs() {
    let app = TestApp::without_workers().await;
    let (_, reader) = client_with(&app, "reader", "tenants:read").await;
    let (_, exporter) = client_with(&app, "exporter", "tenants:read,tenants:export").await;
    let (_, operator) = client_with(&app, "operator", "tenants:read,provisioner:admin").await;
    let (_, writer) = client_with(&app, "writer", "tenants:read,tenants:write").await;

    let export = app.url("/configapi/v2/tenant/nobody.example.com/export");
    let r = reader.get(&export).send().await.unwrap();
    assert_eq!(r.status(), 403, "tenants:read does not grant export");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"tenants:export\"")
    );
    let r = exporter.get(&export).send().await.unwrap();
    assert_eq!(r.status(), 404, "past the scope check: no such tenant");

    let tenant = fixtures::tenant_url();
    let r = writer
        .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
        .json(&fixtures::create_body("https://templates.example/t.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = app.url(&format!("/configapi/v2/jobs/{id}"));
    assert_eq!(reader.get(&job).send().await.unwrap().status(), 404);
    let r = operator.get(&job).send().await.unwrap();
    assert_eq!(r.status(), 200, "an operator sees another client's job");
    assert_eq!(
        r.json::<Value>().await.unwrap()["tenantUrl"],
        tenant.as_str()
    );
    let listed: Value = operator
        .get(app.url("/configapi/v2/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["jobId"] == id.as_str()),
        "{listed}"
    );
    let r = operator.delete(&job).send().await.unwrap();
    assert_eq!(r.status(), 403, "visibility is not the write scope");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_bootstrap_client_stays_revoked_across_restarts() {
    let app = TestApp::without_workers().await;
    let (ok, out) = cli(&app, &["client", "revoke", BOOTSTRAP_ID]).await;
    assert!(ok, "{out}");
    // Another API process starts with the same PROVISIONER_BOOTSTRAP_CLIENT.
    let mut api =
        provisioner_tests::process::Proc::spawn(env!("CARGO_BIN_EXE_test-api"), &app, &[], "info");
    let addr = api.api_addr().await;
    let url = format!("http://{addr}/configapi/v2/oauth/token");
    let r = token_request(
        &provisioner_tests::http_client(),
        &url,
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    assert_eq!(r.status(), 401, "the restart did not undo the revocation");
    api.terminate();
    assert!(api.exit(Duration::from_secs(10)).await.success());
    app.stop().await;
}

#[tokio::test]
async fn a_token_holds_only_the_scopes_its_client_still_has_and_a_new_secret_ends_tokens() {
    let app = TestApp::without_workers().await;
    let writer = app
        .client_with("scope-loser", &["tenants:read", "tenants:write"])
        .await;
    let create = || {
        writer
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body("https://templates.example/t.zip"))
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 202);
    // An operator takes the write scope away: the token issued before loses it too.
    sqlx::query("UPDATE api_clients SET scopes = '{tenants:read}' WHERE id = 'scope-loser'")
        .execute(&app.db)
        .await
        .unwrap();
    provisioner_tests::eventually(Duration::from_secs(20), || async {
        (create().await.unwrap().status() == 403).then_some(())
    })
    .await;
    let r = writer
        .get(app.url("/configapi/v2/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the scope it keeps still works");

    // The bootstrap client lost a scope; an API starting with the same secret gives it back and
    // keeps the secret's hash (a new one would fail the token requests verified meanwhile).
    let hash_of_bootstrap = || async {
        sqlx::query_as::<_, (String, Vec<String>)>(
            "SELECT secret_hash, scopes FROM api_clients WHERE id = $1",
        )
        .bind(BOOTSTRAP_ID)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let (hash_before, _) = hash_of_bootstrap().await;
    sqlx::query(
        "UPDATE api_clients SET scopes = array_remove(scopes, 'tenants:export') WHERE id = $1",
    )
    .bind(BOOTSTRAP_ID)
    .execute(&app.db)
    .await
    .unwrap();
    let same = format!("{BOOTSTRAP_ID}:{BOOTSTRAP_SECRET}");
    let mut again = provisioner_tests::process::Proc::spawn(
        env!("CARGO_BIN_EXE_test-api"),
        &app,
        &[("PROVISIONER_BOOTSTRAP_CLIENT", same.as_str())],
        "info",
    );
    again.api_addr().await;
    let (hash_after, scopes) = hash_of_bootstrap().await;
    assert!(scopes.iter().any(|s| s == "tenants:export"), "{scopes:?}");
    assert_eq!(hash_after, hash_before, "the secret's hash kept");
    again.terminate();
    assert!(again.exit(Duration::from_secs(10)).await.success());

    // The bootstrap client's secret is changed (an API starts with a new one, as an operator
    // rotates a secret that leaked): the tokens the old secret got end.
    let old_token = fetch_token(
        &provisioner_tests::http_client(),
        app.addr,
        BOOTSTRAP_ID,
        BOOTSTRAP_SECRET,
    )
    .await;
    let old = authorized_client(&old_token);
    let jobs = app.url("/configapi/v2/jobs");
    assert_eq!(old.get(&jobs).send().await.unwrap().status(), 200);
    let spec = format!("{BOOTSTRAP_ID}:a-new-secret");
    let mut api = provisioner_tests::process::Proc::spawn(
        env!("CARGO_BIN_EXE_test-api"),
        &app,
        &[("PROVISIONER_BOOTSTRAP_CLIENT", spec.as_str())],
        "info",
    );
    let addr = api.api_addr().await;
    provisioner_tests::eventually(Duration::from_secs(20), || async {
        (old.get(&jobs).send().await.unwrap().status() == 401).then_some(())
    })
    .await;
    // A token request that verified the old secret before the change stores no token after
    // it (it is stored only while the client still has the hash it was verified against).
    let stored = |verified: String| {
        let db = app.db.clone();
        async move {
            provisioner_shared::db::clients::insert_token(
                &db,
                &rand_digest(),
                BOOTSTRAP_ID,
                &verified,
                &["tenants:read".to_owned()],
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        }
    };
    let current: String = sqlx::query_scalar("SELECT secret_hash FROM api_clients WHERE id = $1")
        .bind(BOOTSTRAP_ID)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let old_hash =
        "$argon2id$v=19$m=19456,t=2,p=1$c3RhbGUtc2FsdA$c3RhbGUtaGFzaC1vZi10aGUtb2xkLXNlY3JldA";
    assert!(
        !stored(old_hash.to_owned()).await,
        "verified against a hash it no longer has"
    );
    assert!(stored(current).await);
    let fresh = fetch_token(
        &provisioner_tests::http_client(),
        addr,
        BOOTSTRAP_ID,
        "a-new-secret",
    )
    .await;
    let r = authorized_client(&fresh).get(&jobs).send().await.unwrap();
    assert_eq!(r.status(), 200);
    api.terminate();
    assert!(api.exit(Duration::from_secs(10)).await.success());
    app.stop().await;
}

#[tokio::test]
async fn batch_and_template_store_changes_need_the_write_scope_checked_before_the_owner() {
    let app = TestApp::without_workers().await;
    let reader = app.client_with("store-reader", &["tenants:read"]).await;
    let zip = fixtures::sample_template(app.db_version().await).write();
    // A template the bootstrap client stored: the scope is checked before whose it is.
    let r = app
        .http
        .post(app.url("/configapi/v2/templates"))
        .header("content-type", "application/zip")
        .body(zip.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let stored = r.json::<Value>().await.unwrap()["templateId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut item = fixtures::create_body("https://templates.example/t.zip");
    item["tenantUrl"] = fixtures::tenant_url().into();
    let refused = [
        reader
            .post(app.url("/configapi/v2/batches"))
            .header("content-type", "application/x-ndjson")
            .body(format!("{item}\n")),
        reader
            .post(app.url("/configapi/v2/batches"))
            .json(&serde_json::json!({"items": [item]})),
        reader
            .post(app.url("/configapi/v2/templates?name=mine"))
            .header("content-type", "application/zip")
            .body(zip),
        reader.delete(app.url(&format!("/configapi/v2/templates/{stored}"))),
    ];
    for request in refused {
        let r = request.send().await.unwrap();
        let what = format!("{} {}", r.url().path(), r.status());
        assert_eq!(r.status(), 403, "{what}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("scope=\"tenants:write\""),
            "{what}"
        );
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM client_templates").await,
        1,
        "the bootstrap client's keep only"
    );
    let r = app
        .http
        .get(app.url(&format!("/configapi/v2/templates/{stored}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "not deleted");
    // The reader may read: its own (empty) lists.
    for path in ["/configapi/v2/batches", "/configapi/v2/templates"] {
        assert_eq!(
            reader.get(app.url(path)).send().await.unwrap().status(),
            200
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_past_its_request_rate_gets_429_and_other_clients_do_not_wait() {
    // One request a second, one at once: a window wide enough for a loaded machine.
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_REQUEST_RATE", "1".into())],
    })
    .await;
    let template = app.serve_sample_template("t").await;
    let rated = app
        .client_with("rated", &["tenants:read", "tenants:write"])
        .await;
    let jobs = app.url("/configapi/v2/jobs");
    let burst = (0..10).map(|_| {
        let (rated, jobs) = (rated.clone(), jobs.clone());
        async move { rated.get(&jobs).send().await.unwrap() }
    });
    let answers = futures_util::future::join_all(burst).await;
    let passed = answers.iter().filter(|r| r.status() == 200).count();
    assert!(
        (1..10).contains(&passed),
        "one passes, then one a second: {passed} of 10 passed"
    );
    let refused: Vec<_> = answers.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(passed + refused.len(), 10);
    for r in &refused {
        assert_eq!(
            r.headers()["retry-after"],
            "1",
            "at 1 a second, the next within 1 s"
        );
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }

    // A create past the rate is refused before anything is recorded (back to back, the second
    // of two creates at most is within the second; one that passed recorded its job).
    let create = || {
        rated
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body(&template))
            .send()
    };
    let mut accepted = 0;
    let refused = loop {
        let r = create().await.unwrap();
        match r.status().as_u16() {
            202 if accepted < 5 => accepted += 1,
            429 => break r,
            other => panic!("{other} after {accepted} accepted"),
        }
    };
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, accepted);
    // Another client's requests pass meanwhile.
    assert_eq!(app.get_json("/configapi/v2/jobs").await.0, 200);

    // The rate refills the bucket: after `Retry-After`, the client's next request passes.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(create().await.unwrap().status(), 202);
    app.stop().await;
}
