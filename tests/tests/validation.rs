//! Request validation: every bad field named at once, problem+json, nothing recorded.

use provisioner_tests::{TestApp, fixtures};
use serde_json::{Value, json};
use uuid::Uuid;

async fn problem(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    (status, r.json().await.unwrap())
}

fn fields(p: &Value) -> Vec<String> {
    p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_invalid_field_is_named_and_no_job_is_recorded() {
    let app = TestApp::without_workers().await;
    let good = fixtures::create_body("https://templates.example/t.zip");
    let cases: Vec<(&str, Value)> = vec![
        ("tenantName", json!(null)),
        ("tenantName", json!("")),
        ("tenantName", json!(42)),
        ("firstName", json!(null)),
        ("lastName", json!([])),
        ("loginId", json!(null)),
        ("password", json!("short")),
        ("password", json!("x".repeat(257))),
        ("password", json!(null)),
        ("email", json!("not-an-address")),
        ("email", json!(null)),
        ("templateUrl", json!("ftp://templates.example/t.zip")),
        ("templateUrl", json!("/relative/t.zip")),
        ("lockTimeout", json!(-1)),
        ("lockTimeout", json!(3601)),
        ("lockTimeout", json!(1.5)),
        ("lockTimeout", json!("10")),
        ("numberMap", json!(["0000000000"])),
        ("numberMap", json!({"00x": "4155550100"})),
        (
            "numberMap",
            json!({"0000000000": "41555501001234567890123"}),
        ),
        ("numberMap", json!({"0000000000": 4155550100u64})),
    ];
    for (field, value) in cases {
        let mut body = good.clone();
        let key = field.split('.').next().unwrap();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
        let (status, p) = problem(app.create("acme.example.com", &body).await).await;
        assert_eq!(status, 400, "{field} = {value}");
        assert_eq!(p["status"], 400);
        assert_eq!(fields(&p), vec![field.to_owned()], "{field} = {value}: {p}");
    }
    // Neither template source: both fields are named.
    let mut body = good.clone();
    body.as_object_mut().unwrap().remove("templateUrl");
    let (status, p) = problem(app.create("acme.example.com", &body).await).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&p), ["templateUrl", "templateId"], "{p}");
    // A template id is 64 lower-case hex digits.
    body["templateId"] = json!("F".repeat(64));
    let (status, p) = problem(app.create("acme.example.com", &body).await).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&p), ["templateId"], "{p}");
    // An id the client stored nothing under, beside another bad field: both at once.
    body["templateId"] = json!("a".repeat(64));
    body["email"] = json!("not-an-address");
    let (status, p) = problem(app.create("acme.example.com", &body).await).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&p), ["email", "templateId"], "{p}");
    // Two keys mapping to one number.
    let mut body = good.clone();
    body["numberMap"] = json!({"0000000000": "4155550100", "0000000100": "4155550100"});
    let (status, p) = problem(app.create("acme.example.com", &body).await).await;
    assert_eq!(status, 400);
    assert_eq!(fields(&p).len(), 1, "{p}");

    let count = app.count("SELECT count(*) FROM jobs").await;
    assert_eq!(count, 0);
    app.stop().await;
}

#[tokio::test]
async fn all_problems_are_reported_at_once_including_unknown_and_server_owned_fields() {
    let app = TestApp::without_workers().await;
    let body = json!({"tenantName": "", "password": "x", "email": "nope", "status": "succeeded", "owner": "me", "templateUrl": "mailto:x@y.z"});
    let (status, p) = problem(app.create("bad_host!", &body).await).await;
    assert_eq!(status, 400);
    let mut got = fields(&p);
    got.sort();
    let mut want: Vec<String> = [
        "tenant_url",
        "tenantName",
        "firstName",
        "lastName",
        "loginId",
        "password",
        "email",
        "templateUrl",
        "status",
        "owner",
    ]
    .map(String::from)
    .to_vec();
    want.sort();
    assert_eq!(got, want, "{p}");
    assert!(
        p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["message"].as_str().unwrap().is_empty())
    );
    app.stop().await;
}

#[tokio::test]
async fn tenant_urls_must_be_host_names() {
    let app = TestApp::without_workers().await;
    let body = fixtures::create_body("https://templates.example/t.zip");
    for bad in [
        "-acme.com",
        "acme..com",
        "acme_support.com",
        &format!("{}.com", "a".repeat(64)),
    ] {
        let (status, p) = problem(app.create(bad, &body).await).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(fields(&p), vec!["tenant_url"], "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_content_types_say_what_is_wrong() {
    let app = TestApp::without_workers().await;
    let url = app.url("/configapi/v2/selfservice/tenant/acme.example.com");
    let r = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"tenantName\": ")
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 400);
    assert!(
        p["detail"].as_str().unwrap().contains("line 1 column"),
        "{p}"
    );

    let r = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 400);

    let r = app
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_unsupported(
        r,
        "Content-Type text/plain is not supported here; send application/json or multipart/form-data",
    )
    .await;

    let r = app.http.post(&url).body("{}").send().await.unwrap();
    assert_eq!(problem(r).await.0, 415);

    // A route that takes JSON alone asks for JSON alone, whatever was sent.
    let r = app
        .http
        .post(app.url("/configapi/v2/accessnumbers"))
        .multipart(reqwest::multipart::Form::new().text("number", "900"))
        .send()
        .await
        .unwrap();
    assert_unsupported(
        r,
        "Content-Type multipart/form-data is not supported here; send application/json",
    )
    .await;
    app.stop().await;
}

/// A `415` problem saying `detail`.
async fn assert_unsupported(r: reqwest::Response, detail: &str) {
    let (status, p) = problem(r).await;
    assert_eq!((status, p["detail"].as_str()), (415, Some(detail)), "{p}");
}

#[tokio::test]
async fn unknown_jobs_and_tenants_are_404_problems() {
    let app = TestApp::without_workers().await;
    for path in [
        "/configapi/v2/jobs/00000000-0000-0000-0000-000000000000",
        "/configapi/v2/jobs/not-a-uuid",
        "/configapi/v2/tenant/nobody.example.com",
        "/configapi/v2/tenant/nobody.example.com/export",
        "/configapi/v2/no-such-route",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(problem(r).await.0, 404, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let app = TestApp::without_workers().await;
    let r = app
        .http
        .patch(app.url("/configapi/v2/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, 405);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_named_with_the_bodys_faults() {
    let app = TestApp::without_workers().await;
    let path = format!(
        "/configapi/v2/selfservice/tenant/{}",
        fixtures::tenant_url()
    );
    let bad_key = "k".repeat(300);
    let r = app
        .http
        .post(app.url(&path))
        .header("idempotency-key", &bad_key)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "the media type is judged first");
    // A create with the malformed key: its problem (a 400).
    let keyed = |request: reqwest::RequestBuilder| {
        let request = request.header("idempotency-key", &bad_key);
        async move {
            let (status, body) = problem(request.send().await.unwrap()).await;
            assert_eq!(status, 400, "{body}");
            body
        }
    };
    let create = || app.http.post(app.url(&path));
    let body = keyed(create().json(&serde_json::json!({}))).await;
    let fields = self::fields(&body);
    // Every problem at once: the body's fields and the key.
    assert!(
        fields.contains(&"tenantName".to_owned()) && fields.contains(&"Idempotency-Key".to_owned()),
        "{fields:?}"
    );
    let body =
        keyed(create().json(&fixtures::create_body("https://templates.example/t.zip"))).await;
    assert_eq!(self::fields(&body), ["Idempotency-Key"], "{body}");
    // A body whose only other fault is a template the client cannot name: both at once, of
    // JSON and of a form.
    let body = keyed(create().json(&fixtures::create_body_by_id(&"f".repeat(64)))).await;
    assert_eq!(
        self::fields(&body),
        ["Idempotency-Key", "templateId"],
        "{body}"
    );
    let form = reqwest::multipart::Form::new()
        .text("tenantName", "Acme")
        .text("firstName", "Ada")
        .text("lastName", "Lovelace")
        .text("loginId", "admin")
        .text("password", "correct horse battery")
        .text("email", "ada@acme.example")
        .text("templateId", "f".repeat(64));
    let body = keyed(create().multipart(form)).await;
    assert_eq!(
        self::fields(&body),
        ["Idempotency-Key", "templateId"],
        "{body}"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_target_or_head_is_a_problem_routed_or_not() {
    let app = TestApp::without_workers().await;
    let long = "a".repeat(9_000);
    for path in [
        format!("/configapi/v2/jobs?x={long}"),
        format!("/no/such/route/{long}"),
    ] {
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, 414, "{p}");
        assert!(
            p["detail"].as_str().unwrap().contains("at most 8192"),
            "{p}"
        );
    }
    let r = app
        .http
        .get(app.url("/configapi/v2/jobs"))
        .header("x-padding", "b".repeat(40_000))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 431, "{p}");
    // Within the bounds, nothing changes.
    let r = app
        .http
        .get(app.url(&format!("/healthz?x={}", "a".repeat(8_000))))
        .header("x-padding", "b".repeat(30_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn undecodable_paths_and_oversized_token_forms_still_answer_json() {
    let app = TestApp::without_workers().await;
    let r = app
        .http
        .get(app.url("/configapi/v2/jobs/%FF%FE"))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(r).await;
    assert!([400, 404].contains(&status), "{status} {body}");
    let r = provisioner_tests::http_client()
        .post(app.url("/configapi/v2/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={}",
            "x".repeat(100_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    app.stop().await;
}

/// A body with thousands of bad fields gets an answer of the first hundred, saying how many
/// there were: 40,000 bad `numberMap` keys in a 1 MiB create made a 3.7 MB answer.
#[tokio::test]
async fn an_answer_lists_at_most_a_hundred_faults_and_says_how_many_there_were() {
    let app = TestApp::without_workers().await;
    let mut body = fixtures::create_body("https://templates.example/t.zip");
    body["numberMap"] = Value::Object(
        (0..5_000)
            .map(|i| (format!("bad{i}"), json!("1")))
            .collect(),
    );
    let (status, p) = problem(app.create(&fixtures::tenant_url(), &body).await).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(fields(&p).len(), 100);
    assert_eq!(
        p["detail"],
        "5000 fields are invalid; see `errors` (the first 100)"
    );
    app.stop().await;
}

/// A body with a `Content-Encoding` is refused (`415`), not read as if it were plain; an
/// `Idempotency-Key` sent twice is a fault of its own, not the first of the two; and nothing is
/// recorded for either.
#[tokio::test]
async fn an_encoded_body_and_a_repeated_idempotency_key_are_refused() {
    let app = TestApp::without_workers().await;
    let path = format!(
        "/configapi/v2/selfservice/tenant/{}",
        fixtures::tenant_url()
    );
    let body = fixtures::create_body("https://templates.example/t.zip");
    let r = app
        .http
        .post(app.url(&path))
        .header("content-encoding", "gzip")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 415, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Content-Encoding \"gzip\""),
        "{p}"
    );
    let r = app
        .http
        .post(app.url(&path))
        .header("content-encoding", "identity")
        .header("idempotency-key", "first")
        .header("idempotency-key", "second")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key", "{p}");
    assert_eq!(p["errors"][0]["message"], "must be sent once", "{p}");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

/// A member named twice in one object is refused, not read as its last value: the single
/// create, a JSON batch's item and an NDJSON batch's line each answer `400` naming it, and
/// nothing is recorded. Before, `{"tenantUrl": ...}` given twice took the second silently.
#[tokio::test]
async fn a_member_named_twice_is_refused_in_every_json_body() {
    let app = TestApp::without_workers().await;
    let create = fixtures::create_body("https://templates.example/t.zip").to_string();
    // `"lockTimeout": 30` again at the end of the object.
    let twice = format!("{},\"lockTimeout\":30}}", &create[..create.len() - 1]);
    let path = format!(
        "/configapi/v2/selfservice/tenant/{}",
        fixtures::tenant_url()
    );
    let item = |url: String| {
        let mut item: Value = serde_json::from_str(&create).unwrap();
        item["tenantUrl"] = json!(url);
        item.to_string()
    };
    let one = item(fixtures::tenant_url());
    let item_twice = format!(
        "{},\"tenantUrl\":\"{}\"}}",
        &one[..one.len() - 1],
        fixtures::tenant_url()
    );
    for (path, content_type, body, says) in [
        (
            path.as_str(),
            "application/json",
            twice.clone(),
            "malformed JSON body: the member \"lockTimeout\" is given twice",
        ),
        (
            "/configapi/v2/batches",
            "application/json",
            format!(
                "{{\"items\": [{}, {item_twice}]}}",
                item(fixtures::tenant_url())
            ),
            "the body is not valid JSON: the member \"tenantUrl\" is given twice",
        ),
        (
            "/configapi/v2/batches",
            "application/x-ndjson",
            format!("{}\n{item_twice}\n", item(fixtures::tenant_url())),
            "not valid JSON: the member \"tenantUrl\" is given twice",
        ),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, 400, "{content_type} {path}: {p}");
        let mut said = vec![p["detail"].as_str().unwrap_or_default()];
        if let Some(errors) = p["errors"].as_array() {
            said.extend(
                errors
                    .iter()
                    .map(|e| e["message"].as_str().unwrap_or_default()),
            );
        }
        assert!(
            said.iter().any(|m| m.starts_with(says)),
            "{content_type} {path}: {p}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 0);
    app.stop().await;
}

/// A query parameter that is not UTF-8 once percent-decoded is `400` naming it, on every route,
/// before anything is done: read with replacement characters, `?name=%FF` stored a template
/// named "\u{fffd}".
#[tokio::test]
async fn a_query_that_is_not_utf8_once_decoded_is_refused() {
    let app = TestApp::without_workers().await;
    let zip = fixtures::sample_template(app.db_version().await).write();
    let r = app
        .http
        .post(app.url("/configapi/v2/templates?name=caf%E9"))
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["errors"][0]["field"], "name", "{p}");
    assert_eq!(
        p["errors"][0]["message"], "is not UTF-8 once percent-decoded",
        "{p}"
    );
    assert_eq!(app.count("SELECT count(*) FROM templates").await, 0);
    let r = app
        .http
        .get(app.url("/configapi/v2/jobs?limit=5&tenantUrl=a%C3"))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(fields(&p), ["tenantUrl"], "{p}");
    assert_eq!(
        p["errors"][0]["message"], "is not UTF-8 once percent-decoded",
        "{p}"
    );
    // Checked after the route, its method and the token: without a token such a query is
    // `401`, with a method the route lacks `405`, as any other query would be.
    let path = "/configapi/v2/jobs?tenantUrl=a%C3";
    let r = provisioner_tests::http_client()
        .get(app.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app.http.patch(app.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    app.stop().await;
}

/// A query parameter given two different values is `400` naming it, before anything is done:
/// which one the client meant is not for the server to guess (a retry's `?code=400&code=409`
/// retried the 400s alone). An empty value beside another, or the same value twice, says one
/// thing.
#[tokio::test]
async fn a_query_parameter_given_two_different_values_is_refused() {
    let app = TestApp::without_workers().await;
    let twice = "is given more than once, with different values";
    for (path, field) in [
        (
            format!(
                "/configapi/v2/batches/{}/retry?code=400&code=409",
                Uuid::new_v4()
            ),
            "code",
        ),
        (
            "/configapi/v2/tenant/a.example.com/activate?lockTimeout=1&lockTimeout=abc".to_owned(),
            "lockTimeout",
        ),
        (
            "/configapi/v2/jobs?status=failed&limit=&status=queued".to_owned(),
            "status",
        ),
    ] {
        let request = if path.starts_with("/configapi/v2/jobs") {
            app.http.get(app.url(&path))
        } else {
            app.http.post(app.url(&path))
        };
        let (status, p) = problem(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{path}: {p}");
        assert_eq!(fields(&p), [field], "{path}: {p}");
        assert_eq!(p["errors"][0]["message"], twice, "{path}: {p}");
    }
    for path in [
        "/configapi/v2/jobs?limit=&limit=5",
        "/configapi/v2/jobs?limit=5&limit=5",
        "/configapi/v2/jobs?status=queued&status=",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    app.stop().await;
}

/// Routes whose parameters are read apart (the path, the query, an `Idempotency-Key`) still
/// name every bad one at once.
#[tokio::test]
async fn the_stream_import_and_delete_routes_name_every_bad_parameter_at_once() {
    let app = TestApp::without_workers().await;
    let bad_key = "k".repeat(300);
    let zip = fixtures::raw_zip(&[("manifest.json", b"{}")]);
    let cases = [
        (
            app.http
                .put(app.url("/configapi/v2/tenant/bad_host?lockTimeout=x"))
                .header("idempotency-key", &bad_key),
            vec!["tenant_url", "lockTimeout", "Idempotency-Key"],
        ),
        (
            app.http
                .post(app.url("/configapi/v2/tenant?lockTimeout=x"))
                .header("idempotency-key", &bad_key),
            vec!["lockTimeout", "Idempotency-Key"],
        ),
        (
            app.http.delete(
                app.url("/configapi/v2/tenant/a.example.com?keepAccessNumbers=maybe&lockTimeout=x"),
            ),
            vec!["lockTimeout", "keepAccessNumbers"],
        ),
    ];
    for (request, named) in cases {
        let request = request
            .header("content-type", "application/zip")
            .body(zip.clone());
        let (status, p) = problem(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{p}");
        assert_eq!(fields(&p), named, "{p}");
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}
