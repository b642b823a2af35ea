//! The template store end to end: storing (201, then 200 for the same bytes), reading back byte
//! for byte, visibility per client and for operators, deletion, creates that name a template by
//! id, uploads kept with their job, the sweeper's removal of what nothing needs, the upload
//! memory budget, and workers that share nothing with the API but PostgreSQL and RabbitMQ.

use std::time::Duration;

use provisioner_shared::db::templates::{content_id, remove_unused};
use provisioner_tests::{Options, TestApp, eventually, fixtures, process::Proc};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const READ_WRITE: &[&str] = &["tenants:read", "tenants:write"];

/// `POST /configapi/v2/templates[?name=]` with `bytes` as `application/zip`.
async fn store(
    http: &reqwest::Client,
    app: &TestApp,
    bytes: &[u8],
    name: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(app.url("/configapi/v2/templates"))
        .header("content-type", "application/zip")
        .body(bytes.to_vec());
    if let Some(name) = name {
        request = request.query(&[("name", name)]);
    }
    request.send().await.unwrap()
}

/// Stores `bytes` for the client of `http`, expecting 201; returns the template's id.
async fn store_new(http: &reqwest::Client, app: &TestApp, bytes: &[u8]) -> String {
    let r = store(http, app, bytes, None).await;
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["templateId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn get(http: &reqwest::Client, app: &TestApp, path: &str) -> (u16, Value) {
    let r = http.get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn content(http: &reqwest::Client, app: &TestApp, id: &str) -> (u16, Vec<u8>) {
    let r = http
        .get(app.url(&format!("/configapi/v2/templates/{id}/content")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn delete(http: &reqwest::Client, app: &TestApp, id: &str) -> u16 {
    http.delete(app.url(&format!("/configapi/v2/templates/{id}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The template ids of `GET /configapi/v2/templates` for the client of `http`, every page.
async fn listed(http: &reqwest::Client, app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = "/configapi/v2/templates?limit=1".to_owned();
    loop {
        let (status, page) = get(http, app, &path).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            ids.push(item["templateId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/configapi/v2/templates?limit=1&cursor={cursor}"),
            None => return ids,
        }
    }
}

fn fields_of(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

async fn stored_templates(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM templates").await
}

async fn is_stored(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1)")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The stored template job `id` reads (null once it ended).
async fn job_template(app: &TestApp, job: &str) -> Option<String> {
    sqlx::query_scalar("SELECT template_id FROM jobs WHERE id = $1::uuid")
        .bind(job)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A sample template archive of this schema version (each call makes different bytes).
async fn sample(app: &TestApp) -> Vec<u8> {
    fixtures::sample_template(app.db_version().await).write()
}

#[tokio::test]
async fn storing_answers_201_then_200_for_the_same_bytes_and_another_client_gets_its_own() {
    let app = TestApp::without_workers().await;
    let bytes = sample(&app).await;
    let id = content_id(&bytes);
    let r = store(&app.http, &app, &bytes, Some("Support v3")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/configapi/v2/templates/{id}").as_str()
    );
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["templateId"], id.as_str(), "the SHA-256 of the bytes");
    assert_eq!(first["name"], "Support v3");
    assert_eq!(first["bytes"], bytes.len());
    assert_eq!(first["dbVersion"], app.db_version().await);
    assert_eq!(
        first["counts"],
        json!({"users": 2, "objects": 3, "accessNumbers": 2})
    );
    assert!(first["createdAt"].is_string(), "{first}");

    let r = store(&app.http, &app, &bytes, Some("Renamed")).await;
    assert_eq!(r.status(), 200, "the same bytes again");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        first,
        "as it was, name unchanged"
    );

    let other = app.client_with("other", READ_WRITE).await;
    let r = store(&other, &app, &bytes, Some("Theirs")).await;
    assert_eq!(r.status(), 201, "new to this client");
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "Theirs");
    assert_eq!(
        (
            stored_templates(&app).await,
            app.count("SELECT count(*) FROM client_templates").await
        ),
        (1, 2),
        "one copy, two keeps"
    );

    for http in [&app.http, &other] {
        let r = http
            .get(app.url(&format!("/configapi/v2/templates/{id}/content")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        assert_eq!(r.bytes().await.unwrap(), bytes, "byte for byte");
    }
    assert_eq!(
        get(&app.http, &app, &format!("/configapi/v2/templates/{id}"))
            .await
            .1,
        first
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_templates_are_refused_naming_the_fault_and_nothing_is_stored() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TEMPLATE_MAX_BYTES", "100000".into())],
    })
    .await;
    let newer = fixtures::sample_template(app.db_version().await + 1).write();
    // Stored, a NUL in an object's data would fail every create that used it.
    let mut nul = fixtures::sample_template(app.db_version().await);
    nul.objects[0].data = json!({"note": "Tier\u{0}"})
        .as_object()
        .unwrap()
        .clone()
        .into();
    for (bytes, fault) in [
        (newer, "dbVersion"),
        (nul.write(), "U+0000"),
        (b"not a zip".to_vec(), "not a ZIP"),
        (
            fixtures::raw_zip(&[("tenant.json", b"{}")]),
            "manifest.json",
        ),
    ] {
        let r = store(&app.http, &app, &bytes, None).await;
        assert_eq!(r.status(), 400, "{fault}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["title"], "Bad template", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(fault), "`{detail}` names {fault}");
    }
    let r = store(&app.http, &app, &vec![7; 150_000], None).await;
    assert_eq!(r.status(), 413);
    let good = sample(&app).await;
    let r = store(&app.http, &app, &good, Some("Acme\u{202e}")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(fields_of(&r.json().await.unwrap()), ["name"]);
    let r = app
        .http
        .post(app.url("/configapi/v2/templates"))
        .header("content-type", "text/plain")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(stored_templates(&app).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM client_templates").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_client_sees_only_its_templates_an_operator_every_clients_and_delete_is_per_client() {
    let app = TestApp::without_workers().await;
    let alice = app.client_with("alice", READ_WRITE).await;
    let bob = app.client_with("bob", READ_WRITE).await;
    let (a_bytes, b_bytes) = (sample(&app).await, sample(&app).await);
    let a = store_new(&alice, &app, &a_bytes).await;
    let b = store_new(&bob, &app, &b_bytes).await;
    assert_eq!(listed(&alice, &app).await, vec![a.clone()]);
    assert_eq!(listed(&bob, &app).await, vec![b.clone()]);
    let path = format!("/configapi/v2/templates/{b}");
    assert_eq!(get(&alice, &app, &path).await.0, 404, "another's template");
    assert_eq!(content(&alice, &app, &b).await.0, 404);
    assert_eq!(delete(&alice, &app, &b).await, 404);
    assert_eq!(
        get(&alice, &app, "/configapi/v2/templates/not-an-id")
            .await
            .0,
        404
    );

    // The bootstrap client is an operator: it sees every client's templates.
    let mut every = listed(&app.http, &app).await;
    every.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(every, expected);
    assert_eq!(get(&app.http, &app, &path).await.0, 200);
    assert_eq!(content(&app.http, &app, &b).await, (200, b_bytes.clone()));

    // Alice stores Bob's bytes too; Bob's delete leaves hers alone.
    assert_eq!(store(&alice, &app, &b_bytes, None).await.status(), 201);
    assert_eq!(delete(&bob, &app, &b).await, 204);
    assert_eq!(get(&bob, &app, &path).await.0, 404);
    assert_eq!(delete(&bob, &app, &b).await, 404, "deleted already");
    assert_eq!(get(&alice, &app, &path).await.0, 200);
    assert_eq!(content(&alice, &app, &b).await, (200, b_bytes));
    assert_eq!(
        listed(&alice, &app).await,
        [b, a],
        "newest first, one page at a time"
    );
    assert_eq!(listed(&bob, &app).await, Vec::<String>::new());
    app.stop().await;
}

#[tokio::test]
async fn creates_name_a_stored_template_by_id_and_both_neither_or_unknown_ids_are_400() {
    let app = TestApp::spawn().await;
    let id = store_new(&app.http, &app, &sample(&app).await).await;
    let tenant = fixtures::tenant_url();
    let job = app
        .create_and_wait(&tenant, &fixtures::create_body_by_id(&id))
        .await;
    assert_eq!(job["code"], 200, "{job}");
    let exported = app.export(&tenant).await;
    assert_eq!(
        exported.objects.len(),
        3,
        "the stored template's objects were imported"
    );

    let form = Form::new()
        .text("tenantName", "Form Tenant")
        .text("firstName", "Ada")
        .text("lastName", "Lovelace")
        .text("loginId", "admin")
        .text("password", fixtures::SENTINEL_PASSWORD)
        .text("email", "ada@acme.example")
        .text("numberMap", "0000000000:4155550111")
        .text("numberMap", "0000000100:0000000211")
        .text("templateId", id.clone());
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = app
        .wait_job(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap())
        .await;
    assert_eq!(
        job["code"], 200,
        "a form names a stored template too: {job}"
    );

    let jobs_before = app.count("SELECT count(*) FROM jobs").await;
    let mut both = fixtures::create_body_by_id(&id);
    both["templateUrl"] = json!("https://templates.example/t.zip");
    let mut neither = fixtures::create_body_by_id(&id);
    neither.as_object_mut().unwrap().remove("templateId");
    // `null` is a value: a choice given, as the document's `oneOf` counts it.
    let mut null = fixtures::create_body_by_id(&id);
    null["templateUrl"] = Value::Null;
    for (body, what) in [(both, "both"), (neither, "neither"), (null, "null")] {
        let r = app.create(&fixtures::tenant_url(), &body).await;
        assert_eq!(r.status(), 400, "{what}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(
            fields_of(&problem),
            ["templateUrl", "templateId"],
            "{what}: {problem}"
        );
    }
    let bob = app.client_with("bob", READ_WRITE).await;
    let bobs = store_new(&bob, &app, &sample(&app).await).await;
    let carol = app.client_with("carol", READ_WRITE).await;
    // No such template; and Bob's, which Carol cannot see.
    for (http, unknown) in [(&app.http, "f".repeat(64)), (&carol, bobs.clone())] {
        let r = http
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body_by_id(&unknown))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{unknown}");
        assert_eq!(fields_of(&r.json().await.unwrap()), ["templateId"]);
    }
    // The bootstrap client is an operator: it sees, and may name, every client's templates.
    let operators = app
        .create(&fixtures::tenant_url(), &fixtures::create_body_by_id(&bobs))
        .await;
    assert_eq!(operators.status(), 202);
    assert_eq!(
        app.count("SELECT count(*) FROM jobs").await,
        jobs_before + 1,
        "only the operator's create made a job"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_accepted_before_its_template_is_deleted_still_completes_then_the_template_goes() {
    let mut app = TestApp::without_workers().await;
    let id = store_new(&app.http, &app, &sample(&app).await).await;
    let job = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body_by_id(&id))
        .await;
    assert_eq!(delete(&app.http, &app, &id).await, 204);
    assert_eq!(
        get(&app.http, &app, &format!("/configapi/v2/templates/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(job_template(&app, &job).await.as_deref(), Some(id.as_str()));
    assert!(is_stored(&app, &id).await, "its job still needs it");

    app.start_worker();
    let ended = app.wait_job(&job).await;
    assert_eq!(ended["code"], 200, "{ended}");
    assert_eq!(job_template(&app, &job).await, None);
    eventually(Duration::from_secs(10), || async {
        (!is_stored(&app, &id).await).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn uploads_are_kept_until_their_job_ends_and_listed_only_when_also_stored() {
    let mut app = TestApp::without_workers().await;
    let streamed = sample(&app).await;
    let r = app
        .http
        .put(app.url(&format!("/configapi/v2/tenant/{}", fixtures::tenant_url())))
        .header("content-type", "application/zip")
        .body(streamed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let stream_job = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let exported = app.new_tenant_export().await;
    let archive = exported.write();
    let r = app.import(archive.clone(), "").await;
    assert_eq!(r.status(), 202);
    let import_job = r.json::<Value>().await.unwrap();
    assert_eq!(import_job["tenantUrl"], exported.tenant.url.as_str());
    let import_job = import_job["jobId"].as_str().unwrap().to_owned();

    let (stream_id, import_id) = (content_id(&streamed), content_id(&archive));
    assert_eq!(
        job_template(&app, &stream_job).await,
        Some(stream_id.clone())
    );
    assert_eq!(
        job_template(&app, &import_job).await,
        Some(import_id.clone())
    );
    assert_eq!(stored_templates(&app).await, 2);
    assert!(
        listed(&app.http, &app).await.is_empty(),
        "uploads are not listed"
    );
    let path = format!("/configapi/v2/templates/{stream_id}");
    assert_eq!(get(&app.http, &app, &path).await.0, 404);
    assert_eq!(store(&app.http, &app, &streamed, None).await.status(), 201);
    assert_eq!(listed(&app.http, &app).await, vec![stream_id.clone()]);

    app.start_worker();
    for job in [&stream_job, &import_job] {
        let ended = app.wait_job(job).await;
        assert_eq!(ended["code"], 200, "{ended}");
    }
    eventually(Duration::from_secs(10), || async {
        (!is_stored(&app, &import_id).await).then_some(())
    })
    .await;
    assert!(is_stored(&app, &stream_id).await, "kept by its client");
    assert_eq!(delete(&app.http, &app, &stream_id).await, 204);
    eventually(Duration::from_secs(10), || async {
        (stored_templates(&app).await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// Sessions of this test's database waiting for a lock.
async fn lock_waiters(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
}

#[tokio::test]
async fn the_sweeper_removes_only_what_nothing_needs_and_a_reference_taken_meanwhile_wins() {
    let mut app = TestApp::without_workers().await;
    let kept = store_new(&app.http, &app, &sample(&app).await).await;
    let forgotten = store_new(&app.http, &app, &sample(&app).await).await;
    assert_eq!(delete(&app.http, &app, &forgotten).await, 204);
    // A template a batch pins.
    let pinned = sample(&app).await;
    let pinned_id = content_id(&pinned);
    let mut tx = app.db.begin().await.unwrap();
    provisioner_shared::db::templates::put(&mut tx, &pinned_id, &pinned)
        .await
        .unwrap();
    sqlx::query(
        "WITH b AS (INSERT INTO batches (id, client_id) VALUES (gen_random_uuid(), 'test-admin')
                    RETURNING id)
         INSERT INTO batch_templates (batch_id, template_id) SELECT id, $1 FROM b",
    )
    .bind(&pinned_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // An upload its queued job reads.
    let upload = sample(&app).await;
    let r = app
        .http
        .put(app.url(&format!("/configapi/v2/tenant/{}", fixtures::tenant_url())))
        .header("content-type", "application/zip")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(remove_unused(&app.db, 100).await.unwrap(), 1);
    assert!(!is_stored(&app, &forgotten).await);
    for id in [&kept, &pinned_id, &content_id(&upload)] {
        assert!(is_stored(&app, id).await, "{id} is still needed");
    }

    // A job takes an unreferenced template while the sweep deletes it: the job wins.
    let taken = store_new(&app.http, &app, &sample(&app).await).await;
    assert_eq!(delete(&app.http, &app, &taken).await, 204);
    let mut tx = app.db.begin().await.unwrap();
    provisioner_shared::db::templates::put(&mut tx, &taken, b"unused: stored already")
        .await
        .unwrap();
    let sweep = tokio::spawn({
        let pool = app.db.clone();
        async move { remove_unused(&pool, 100).await }
    });
    eventually(Duration::from_secs(10), || async {
        (lock_waiters(&app).await == 1).then_some(())
    })
    .await;
    sqlx::query(
        "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, template_id)
         VALUES (gen_random_uuid(), 'createTenant', 'race.example.com', 'queued', 'test-admin',
                 '{}', $1)",
    )
    .bind(&taken)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        sweep.await.unwrap().unwrap(),
        0,
        "the sweep leaves it, without failing"
    );
    assert!(is_stored(&app, &taken).await);

    // The worker's sweeper removes the upload once its job ended; the rest stays.
    sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), template_id = NULL
         WHERE template_id = $1",
    )
    .bind(&taken)
    .execute(&app.db)
    .await
    .unwrap();
    app.start_worker();
    assert_eq!(app.wait_job(&job).await["code"], 200);
    eventually(Duration::from_secs(10), || async {
        (stored_templates(&app).await == 2).then_some(())
    })
    .await;
    for id in [&kept, &pinned_id] {
        assert!(is_stored(&app, id).await, "{id} is still needed");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_worker_that_shares_no_files_with_the_api_runs_form_uploads_and_imports() {
    let app = TestApp::without_workers().await;
    // The worker runs in a directory of its own, with its own temporary directory.
    let home = std::env::temp_dir().join(format!("{}-worker", app.database));
    std::fs::create_dir_all(&home).unwrap();
    let mut worker = Proc::spawn_with(
        env!("CARGO_BIN_EXE_test-worker"),
        &app,
        &[],
        "info",
        |command| {
            command.current_dir(&home).env("TMPDIR", &home);
        },
    );
    worker.wait_for("worker started").await;

    let form = Form::new()
        .text("tenantName", "Form Tenant")
        .text("firstName", "Ada")
        .text("lastName", "Lovelace")
        .text("loginId", "admin")
        .text("password", fixtures::SENTINEL_PASSWORD)
        .text("email", "ada@acme.example")
        .text("numberMap", "0000000000:4155550122")
        .text("numberMap", "0000000100:0000000222")
        .part(
            "template",
            Part::bytes(sample(&app).await)
                .file_name("template.zip")
                .mime_str("application/zip")
                .unwrap(),
        );
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let created = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();

    let exported = app.new_tenant_export().await;
    let r = app.import(exported.write(), "").await;
    assert_eq!(r.status(), 202);
    let imported = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();

    for job in [created, imported] {
        let ended = app.wait_job(&job).await;
        assert_eq!(
            (ended["code"].as_i64(), ended["attempts"].as_i64()),
            (Some(200), Some(1)),
            "{ended}\n{}",
            worker.text()
        );
    }
    drop(worker);
    let _ = std::fs::remove_dir_all(&home);
    app.stop().await;
}

/// `provisioner_template_memory_in_use_bytes` of the API's `/metrics` (0 when absent).
async fn template_memory_in_use(app: &TestApp) -> u64 {
    app.metric("provisioner_template_memory_in_use_bytes")
        .await
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn uploads_past_the_memory_budget_wait_then_answer_503_with_retry_after() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TEMPLATE_MEMORY_BUDGET", "65536".into())],
    })
    .await;
    // An upload that declares the whole budget and sends a little of it.
    let token = app.bootstrap_token().await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /configapi/v2/templates HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/zip\r\nContent-Length: 65536\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0; 1000]).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        (template_memory_in_use(&app).await == 65536).then_some(())
    })
    .await;

    let bytes = sample(&app).await;
    // The same client's next upload passes its half of the budget: refused at once.
    let started = tokio::time::Instant::now();
    let r = store(&app.http, &app, &bytes, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once"
    );
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("this client's requests hold"),
        "{problem}"
    );
    // Another client's waits for room first.
    let other = provisioner_tests::authorized_client(
        &app.client_token("other", &["tenants:read", "tenants:write"])
            .await,
    );
    let started = tokio::time::Instant::now();
    let r = store(&other, &app, &bytes, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for room first"
    );

    drop(slow);
    eventually(Duration::from_secs(10), || async {
        (template_memory_in_use(&app).await == 0).then_some(())
    })
    .await;
    assert_eq!(store(&app.http, &app, &bytes, None).await.status(), 201);
    app.stop().await;
}

/// A client keeps at most `PROVISIONER_CLIENT_MAX_STORED_TEMPLATES` templates, of at most
/// `PROVISIONER_CLIENT_MAX_STORED_BYTES` together: past either, storing another is `409`
/// (nothing stored); bytes it keeps already are still `200`; deleting one makes room; another
/// client has a quota of its own.
#[tokio::test]
async fn a_client_keeps_templates_within_its_quota() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_STORED_TEMPLATES", "2".into())],
    })
    .await;
    let (first, second, third) = (sample(&app).await, sample(&app).await, sample(&app).await);
    let first_id = store_new(&app.http, &app, &first).await;
    store_new(&app.http, &app, &second).await;
    let r = store(&app.http, &app, &third, None).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("keeps 2 templates") && detail.contains("at most 2 templates"),
        "{detail}"
    );
    assert!(
        !is_stored(&app, &content_id(&third)).await,
        "nothing stored"
    );
    assert_eq!(store(&app.http, &app, &first, None).await.status(), 200);
    let other = provisioner_tests::authorized_client(
        &app.client_token("other", &["tenants:read", "tenants:write"])
            .await,
    );
    store_new(&other, &app, &third).await;
    assert_eq!(delete(&app.http, &app, &first_id).await, 204);
    store_new(&app.http, &app, &third).await;
    app.stop().await;

    // The bytes: a quota smaller than one template refuses even the first.
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_STORED_BYTES", "1000".into())],
    })
    .await;
    let r = store(&app.http, &app, &sample(&app).await, None).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("of 1000 bytes together"),
        "{problem}"
    );
    assert_eq!(stored_templates(&app).await, 0);
    app.stop().await;
}

/// Two stores of the same new bytes by a client one template below its quota: the one that
/// keeps it second is a repeat (`200`), not past the quota, though it counts the first's keep.
#[tokio::test]
async fn concurrent_stores_of_the_same_bytes_at_the_quota_are_a_repeat_not_a_409() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_STORED_TEMPLATES", "2".into())],
    })
    .await;
    store_new(&app.http, &app, &sample(&app).await).await;
    let bytes = sample(&app).await;
    // The client's row held, so both stores come to their count before either keeps.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM api_clients WHERE id = 'test-admin' FOR UPDATE")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let stores: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, bytes) = (
                app.http.clone(),
                app.url("/configapi/v2/templates"),
                bytes.clone(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .header("content-type", "application/zip")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    eventually(Duration::from_secs(30), || async {
        (app.count(waiting).await == 2).then_some(())
    })
    .await;
    holder.rollback().await.unwrap();
    let mut statuses = Vec::new();
    for store in stores {
        statuses.push(store.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201]);
    app.stop().await;
}

/// A client's look at a template it keeps (reading it, naming it in a create) finds its own
/// keep by its key, however many other clients keep the same bytes (one template of many kept
/// by 5,000 clients), under the custom plans of
/// a session's first calls and the generic plan PostgreSQL settles on after them; an operator
/// still sees the earliest client's keep, and a client none it does not keep.
#[tokio::test]
async fn a_clients_look_at_a_template_reads_its_own_keep_not_every_clients() {
    use provisioner_shared::db::templates::{Viewer, find, lock_visible};
    use provisioner_tests::plans::rows_read_in_transaction;

    let app = TestApp::without_workers().await;
    sqlx::raw_sql(
        "INSERT INTO templates (id, content, bytes) VALUES (repeat('ab', 32), 'zip', 3);
         INSERT INTO client_templates (client_id, template_id, created_at)
         SELECT 'keeper-' || g, repeat('ab', 32), now() - interval '1 day' + g * interval '1 s'
         FROM generate_series(1, 5000) g;
         INSERT INTO client_templates (client_id, template_id) VALUES ('mine', repeat('ab', 32));
         -- 2,000 other templates, one keep each: to the planner a template has few keeps.
         INSERT INTO templates (id, content, bytes)
         SELECT lpad(to_hex(g), 64, '0'), 'zip', 3 FROM generate_series(1, 2000) g;
         INSERT INTO client_templates (client_id, template_id)
         SELECT 'owner-' || g, lpad(to_hex(g), 64, '0') FROM generate_series(1, 2000) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::raw_sql("VACUUM ANALYZE templates, client_templates")
        .execute(&app.db)
        .await
        .unwrap();
    let id = "ab".repeat(32);
    let mine = Viewer {
        client_id: "mine",
        operator: false,
    };
    let mut conn = app.db.acquire().await.unwrap();
    for call in 0..8 {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let before = rows_read_in_transaction(&mut tx, &["client_templates"]).await;
        let kept = find(&mut *tx, &id, mine).await.unwrap().expect("its keep");
        assert!(lock_visible(&mut tx, &id, mine).await.unwrap());
        let read = rows_read_in_transaction(&mut tx, &["client_templates"]).await - before;
        assert_eq!(kept.client_id, "mine");
        assert!(read <= 4, "call {call}: {read} keeps read");
        let stranger = Viewer {
            client_id: "stranger",
            operator: false,
        };
        assert!(find(&mut *tx, &id, stranger).await.unwrap().is_none());
        assert!(!lock_visible(&mut tx, &id, stranger).await.unwrap());
        let operator = Viewer {
            client_id: "operator",
            operator: true,
        };
        let earliest = find(&mut *tx, &id, operator)
            .await
            .unwrap()
            .expect("a keep");
        assert_eq!(earliest.client_id, "keeper-1", "call {call}");
        assert!(lock_visible(&mut tx, &id, operator).await.unwrap());
    }
    drop(conn);
    app.stop().await;
}
