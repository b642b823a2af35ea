//! The form-data and stream variants of create, and Import Tenant.

use provisioner_shared::template::{CallingListEntry, JsonDoc, Template};
use provisioner_tests::{Options, TestApp, fixtures};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

fn form(template: Option<Vec<u8>>, template_url: Option<&str>) -> Form {
    let mut form = Form::new()
        .text("tenantName", "Form Tenant")
        .text("numberMap", "0000000000:4155550100")
        .text("numberMap", "0000000100:0000000200")
        .text("firstName", "Ada")
        .text("lastName", "Lovelace")
        .text("loginId", "admin")
        .text("password", fixtures::SENTINEL_PASSWORD)
        .text("email", "ada@acme.example")
        .text("lockTimeout", "10");
    if let Some(bytes) = template {
        form = form.part(
            "template",
            Part::bytes(bytes)
                .file_name("template.zip")
                .mime_str("application/zip")
                .unwrap(),
        );
    }
    if let Some(url) = template_url {
        form = form.text("templateUrl", url.to_owned());
    }
    form
}

/// Templates in the store (uploads among them).
async fn stored_templates(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM templates").await
}

/// Waits until the sweeper removed every stored template.
async fn until_store_empty(app: &TestApp) {
    provisioner_tests::eventually(std::time::Duration::from_secs(10), || async {
        (stored_templates(app).await == 0).then_some(())
    })
    .await;
}

async fn job_of(r: reqwest::Response, app: &TestApp) -> Value {
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    app.wait_job(job["jobId"].as_str().unwrap()).await
}

#[tokio::test]
async fn form_data_creates_from_an_uploaded_template_or_a_template_url() {
    let app = TestApp::spawn().await;
    let template = fixtures::sample_template(app.db_version().await);
    let tenant = fixtures::tenant_url();
    let url = app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}"));
    let job = job_of(
        app.http
            .post(&url)
            .multipart(form(Some(template.write()), None))
            .send()
            .await
            .unwrap(),
        &app,
    )
    .await;
    assert_eq!(job["code"], 200, "{job}");
    let exported = app.export(&tenant).await;
    assert_eq!(exported.tenant.name, "Form Tenant");
    let numbers: Vec<_> = exported
        .access_numbers
        .iter()
        .map(|n| n.number.as_str())
        .collect();
    assert_eq!(
        numbers,
        vec!["0000000200", "4155550100"],
        "repeatable numberMap parts"
    );
    let admin = exported
        .users
        .iter()
        .find(|u| u.login_id == "admin")
        .unwrap();
    assert!(provisioner_shared::passwords::verify(
        fixtures::SENTINEL_PASSWORD.as_bytes(),
        admin.password_hash.as_deref().unwrap()
    ));
    // The upload is removed from the store once its job ended.
    until_store_empty(&app).await;

    let served = app.templates.put("t.zip", template.write());
    let other = fixtures::tenant_url();
    let job = job_of(
        app.http
            .post(app.url(&format!("/configapi/v2/selfservice/tenant/{other}")))
            .multipart(form(None, Some(&served)))
            .send()
            .await
            .unwrap(),
        &app,
    )
    .await;
    assert_eq!(job["code"], 200, "{job}");
    app.stop().await;
}

#[tokio::test]
async fn form_data_needs_exactly_one_template_source_and_a_size_limit_holds() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_TEMPLATE_MAX_BYTES", "100000".into())],
    })
    .await;
    let template = fixtures::sample_template(app.db_version().await).write();
    let url = app.url(&format!(
        "/configapi/v2/selfservice/tenant/{}",
        fixtures::tenant_url()
    ));
    // Every part of the choice at fault is named, the file part too.
    for (f, fields) in [
        (
            form(Some(template.clone()), Some("https://t.example/t.zip")),
            &["template", "templateUrl"][..],
        ),
        (form(None, None), &["template", "templateUrl", "templateId"]),
    ] {
        let r = app.http.post(&url).multipart(f).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let p: Value = r.json().await.unwrap();
        let named: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["field"].as_str())
            .filter(|f| f.starts_with("template"))
            .collect();
        assert_eq!(named, fields, "{p}");
    }
    let bad = form(Some(template.clone()), None).text("status", "succeeded");
    let r = app.http.post(&url).multipart(bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A template number mapped twice is a fault, not the last mapping silently kept.
    let twice = form(Some(template.clone()), None).text("numberMap", "0000000000:4155553000");
    let r = app.http.post(&url).multipart(twice).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "numberMap", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"0000000000\" is mapped more than once"),
        "{p}"
    );
    let huge: Vec<u8> = (0..150_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let r = app
        .http
        .post(&url)
        .multipart(form(Some(huge.clone()), None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // The limit is the whole request's: a template just under it, with the text parts, is over.
    let near: Vec<u8> = huge[..99_000].to_vec();
    let r = app
        .http
        .post(&url)
        .multipart(form(Some(near), None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        stored_templates(&app).await,
        0,
        "refused requests leave no upload behind"
    );
    let jobs = app.count("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_streamed_template_makes_a_tenant_with_the_templates_own_administrator() {
    let app = TestApp::with(Options {
        vars: vec![("PROVISIONER_TEMPLATE_MAX_BYTES", "100000".into())],
        ..Default::default()
    })
    .await;
    let template = fixtures::sample_template(app.db_version().await);
    let tenant = fixtures::tenant_url();
    let put = |tenant: String, body: Vec<u8>, ct: &'static str| {
        app.http
            .put(app.url(&format!("/configapi/v2/tenant/{tenant}?lockTimeout=5")))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = put(tenant.clone(), template.write(), "application/zip")
        .await
        .unwrap();
    let job = job_of(r, &app).await;
    assert_eq!(
        (job["kind"].as_str(), job["code"].as_i64()),
        (Some("createTenant"), Some(200)),
        "{job}"
    );
    let (_, details) = app
        .get_json(&format!("/configapi/v2/tenant/{tenant}"))
        .await;
    assert_eq!(
        (details["name"].as_str(), details["sipDomain"].as_str()),
        (Some(tenant.as_str()), Some(tenant.as_str()))
    );
    let exported = app.export(&tenant).await;
    let logins: Vec<_> = exported
        .users
        .iter()
        .map(|u| {
            (
                u.login_id.clone(),
                u.first_name.clone(),
                u.password_hash.clone(),
            )
        })
        .collect();
    let expected: Vec<_> = template
        .users
        .iter()
        .map(|u| {
            (
                u.login_id.clone(),
                u.first_name.clone(),
                u.password_hash.clone(),
            )
        })
        .collect();
    assert_eq!(logins, expected, "the template's administrator, unchanged");
    assert!(exported.calling_lists.is_empty() && exported.audit.is_empty());

    assert_eq!(
        put(tenant.clone(), template.write(), "application/zip")
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        put(fixtures::tenant_url(), vec![0; 200_000], "application/zip")
            .await
            .unwrap()
            .status(),
        413
    );
    assert_eq!(
        put(fixtures::tenant_url(), template.write(), "text/plain")
            .await
            .unwrap()
            .status(),
        415
    );
    let job = job_of(
        put(
            fixtures::tenant_url(),
            b"not a zip".to_vec(),
            "application/octet-stream",
        )
        .await
        .unwrap(),
        &app,
    )
    .await;
    assert_eq!(job["code"], 400);
    until_store_empty(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn import_tenant_round_trip_keeps_everything_and_create_from_the_export_does_not() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t.zip").await;
    let tenant = fixtures::tenant_url();
    app.create_and_wait(&tenant, &fixtures::create_body(&url))
        .await;
    for action in ["activate", "deactivate"] {
        assert_eq!(
            app.http
                .post(app.url(&format!("/configapi/v2/tenant/{tenant}/{action}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    sqlx::query("INSERT INTO calling_lists (id, tenant_id, position, name, entries) SELECT gen_random_uuid(), id, 0, 'Renewals', '[{\"phone\": \"4155550123\"}]' FROM tenants WHERE url = $1")
        .bind(&tenant)
        .execute(&app.db)
        .await
        .unwrap();
    let mut before = app.export(&tenant).await;
    assert_eq!((before.calling_lists.len(), before.audit.len()), (1, 2));
    // Numbers no `f64` holds: kept as written (they were rounded).
    let exact = [
        "18446744073709551617",
        "-9223372036854775809",
        "0.1000000000000000000001",
    ];
    before.tenant.settings = serde_json::value::RawValue::from_string(format!(
        r#"{{"a":{},"b":{},"c":{}}}"#,
        exact[0], exact[1], exact[2]
    ))
    .unwrap()
    .into();
    assert_eq!(
        app.http
            .delete(app.url(&format!("/configapi/v2/tenant/{tenant}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let import = |body: Vec<u8>| {
        app.http
            .post(app.url("/configapi/v2/tenant?lockTimeout=5"))
            .header("content-type", "application/zip")
            .body(body)
            .send()
    };
    let job = job_of(import(before.write()).await.unwrap(), &app).await;
    assert_eq!(
        (
            job["kind"].as_str(),
            job["code"].as_i64(),
            job["tenantUrl"].as_str()
        ),
        (Some("importTenant"), Some(200), Some(tenant.as_str())),
        "{job}"
    );
    let after = app.export(&tenant).await;
    assert_eq!(
        after.tenant, before.tenant,
        "ids, URL, name, SIP domain and settings are kept"
    );
    for number in exact {
        assert!(
            after.tenant.settings.get().contains(number),
            "{number} in {}",
            after.tenant.settings.get()
        );
    }
    assert_eq!(
        after.users, before.users,
        "users keep their ids and password hashes"
    );
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.calling_lists, before.calling_lists);
    assert_eq!(after.access_numbers, before.access_numbers);
    assert_eq!(after.audit[..2], before.audit[..], "history is kept");
    assert_eq!(after.audit.len(), 3, "plus the import itself");
    assert_eq!(
        (
            after.audit[2].action.as_str(),
            after.audit[2].actor.as_str()
        ),
        ("import", "client:test-admin")
    );
    let (_, details) = app
        .get_json(&format!("/configapi/v2/tenant/{tenant}"))
        .await;
    assert_eq!(details["status"], "Inactive");

    // The same tenant again: the job ends with 409, the API still answers 202.
    let job = job_of(import(before.write()).await.unwrap(), &app).await;
    assert_eq!(job["code"], 409, "{job}");

    // Create-from-template from that export carries neither calling lists nor history.
    let export_url = app.templates.put("export.zip", before.write());
    let copy = fixtures::tenant_url();
    let mut body = fixtures::create_body(&export_url);
    body["numberMap"] = json!({"4155550100": "4155550300", "0000000100": "0000000300"});
    assert_eq!(app.create_and_wait(&copy, &body).await["code"], 200);
    let copied = app.export(&copy).await;
    assert!(copied.calling_lists.is_empty() && copied.audit.is_empty());
    app.stop().await;
}

/// A tenant created from the sample template, and its export.
async fn created_and_exported(app: &TestApp) -> (String, Template) {
    let url = app.serve_sample_template("t.zip").await;
    let tenant = fixtures::tenant_url();
    app.create_and_wait(&tenant, &fixtures::create_body(&url))
        .await;
    let export = app.export(&tenant).await;
    (tenant, export)
}

/// The ids of a tenant's users, objects and calling lists are its own: imports of a copy under
/// other URLs and ids, keeping every other id, succeed beside the original and each other, and
/// each tenant's export gives back its entries with those ids.
#[tokio::test]
async fn imports_keep_ids_another_tenant_also_holds_each_tenant_its_own() {
    let app = TestApp::spawn().await;
    let (original, mut copy) = created_and_exported(&app).await;
    assert!(!copy.users.is_empty() && !copy.objects.is_empty());
    copy.calling_lists = vec![CallingListEntry {
        id: uuid::Uuid::new_v4(),
        name: "Leads".into(),
        entries: JsonDoc::empty_list(),
    }];
    copy.access_numbers.clear();
    let mut imported = Vec::new();
    for _ in 0..2 {
        copy.tenant.id = uuid::Uuid::new_v4();
        copy.tenant.url = fixtures::tenant_url();
        copy.tenant.sip_domain = copy.tenant.url.clone();
        let job = app.import_and_wait(copy.write()).await;
        assert_eq!(job["code"], 200, "{job}");
        imported.push(copy.tenant.url.clone());
    }
    let first = app.export(&original).await;
    for url in &imported {
        let export = app.export(url).await;
        assert_eq!(export.users, first.users, "{url}");
        assert_eq!(export.objects, first.objects, "{url}");
        assert_eq!(export.calling_lists, copy.calling_lists, "{url}");
    }
    app.stop().await;
}

/// A tenant whose lists run past a document part (`PART_ENTRIES` entries): the worker writes
/// each list in parts, the views number the entries in order across them, and the export gives
/// every entry back, in order, once.
#[tokio::test]
async fn an_import_larger_than_a_document_part_is_stored_in_parts_and_exported_whole() {
    let app = TestApp::spawn().await;
    let mut t = fixtures::sample_template(app.db_version().await);
    t.tenant.id = uuid::Uuid::new_v4();
    t.tenant.url = fixtures::tenant_url();
    t.tenant.sip_domain = t.tenant.url.clone();
    t.access_numbers.clear();
    let team = t.objects[0].id;
    let (mut object, mut user) = (t.objects[0].clone(), t.users[1].clone());
    for i in 0..450 {
        object.id = uuid::Uuid::new_v4();
        object.name = format!("team {i}");
        t.objects.push(object.clone());
    }
    for i in 0..250 {
        user.id = uuid::Uuid::new_v4();
        user.login_id = format!("agent-{i}");
        user.teams = vec![team];
        t.users.push(user.clone());
    }
    let job = app.import_and_wait(t.write()).await;
    assert_eq!(job["code"], 200, "{job}");
    let parts: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT d.kind, d.part, jsonb_array_length(d.entries) FROM tenant_documents d
         JOIN tenants t ON t.id = d.tenant_id WHERE t.url = $1 ORDER BY d.kind, d.part",
    )
    .bind(&t.tenant.url)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let (objects, users) = (t.objects.len() as i32, t.users.len() as i32);
    assert_eq!(
        parts,
        [
            ("objects".into(), 0, 200),
            ("objects".into(), 1, 200),
            ("objects".into(), 2, objects - 400),
            ("users".into(), 0, 200),
            ("users".into(), 1, users - 200),
        ]
    );
    let in_order: Vec<String> = sqlx::query_scalar(
        "SELECT o.name FROM config_objects o JOIN tenants t ON t.id = o.tenant_id
         WHERE t.url = $1 ORDER BY o.position",
    )
    .bind(&t.tenant.url)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let names: Vec<String> = t.objects.iter().map(|o| o.name.clone()).collect();
    assert_eq!(
        in_order, names,
        "the view numbers the entries in order across parts"
    );
    let export = app.export(&t.tenant.url).await;
    assert_eq!(export.objects, t.objects);
    assert_eq!(export.users, t.users);
    app.stop().await;
}

/// A NUL character in an import's free-form JSON (`jsonb` cannot hold one) is the template's
/// fault, found as it is read: `400` naming where, whatever the tenant (here one that exists,
/// which a template without the fault would meet as a `409`), and nothing changes.
#[tokio::test]
async fn an_import_with_a_nul_in_free_form_json_is_400_before_the_tenant_is_looked_at() {
    let app = TestApp::spawn().await;
    let (tenant, mut copy) = created_and_exported(&app).await;
    let mut data = serde_json::Map::new();
    data.insert("note".to_owned(), json!("a\u{0}b"));
    copy.objects[0].data = data.into();
    let job = app.import_and_wait(copy.write()).await;
    assert_eq!(
        (job["code"].as_i64(), job["attempts"].as_i64()),
        (Some(400), Some(1)),
        "{job}"
    );
    let detail = job["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("U+0000, which the database cannot store (in an object's data"),
        "{job}"
    );
    let (status, _) = app
        .get_json(&format!("/configapi/v2/tenant/{tenant}"))
        .await;
    assert_eq!(status, 200, "the tenant is still there");
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 1);
    app.stop().await;
}

/// An import under a new URL of a tenant whose id another tenant has ends 409 naming the id,
/// not the URL (which no tenant has: a client told so would look for it in vain).
#[tokio::test]
async fn an_import_whose_tenant_id_another_url_has_ends_409_naming_the_id() {
    let app = TestApp::spawn().await;
    let (original, mut copy) = created_and_exported(&app).await;
    let moved = fixtures::tenant_url();
    copy.tenant.url = moved.clone();
    copy.tenant.sip_domain = moved.clone();
    let job = app.import_and_wait(copy.write()).await;
    assert_eq!(job["code"], 409, "{job}");
    let detail = job["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("a tenant with id {}", copy.tenant.id))
            && !detail.contains(&moved),
        "{job}"
    );
    // The original, still there under its own URL.
    let (status, tenant) = app
        .get_json(&format!("/configapi/v2/tenant/{original}"))
        .await;
    assert_eq!(
        (status, tenant["id"].as_str()),
        (200, Some(copy.tenant.id.to_string().as_str()))
    );
    app.stop().await;
}

#[tokio::test]
async fn import_upgrades_known_older_versions_and_refuses_newer_or_unknown_ones() {
    let app = TestApp::spawn().await;
    let current = app.db_version().await;
    let import = |body: Vec<u8>| {
        app.http
            .post(app.url("/configapi/v2/tenant"))
            .header("content-type", "application/zip")
            .body(body)
            .send()
    };
    for (version, code) in [
        (20261130000001, 200),
        (current + 1, 400),
        (20200101000000, 400),
    ] {
        let mut template = fixtures::sample_template(version);
        template.tenant.id = uuid::Uuid::new_v4();
        template.tenant.url = fixtures::tenant_url();
        template.tenant.sip_domain = template.tenant.url.clone();
        template.access_numbers.clear();
        let job = job_of(import(template.write()).await.unwrap(), &app).await;
        assert_eq!(job["code"], code, "dbVersion {version}: {job}");
    }
    let job = job_of(import(b"garbage".to_vec()).await.unwrap(), &app).await;
    assert_eq!(
        job["code"], 400,
        "a bad archive is a job failure, never an immediate error"
    );
    // Import Tenant always answers 202: `Prefer: wait` does not turn its job's end into the
    // answer (the job above ended in milliseconds; this one would have too).
    let r = app
        .http
        .post(app.url("/configapi/v2/tenant"))
        .header("content-type", "application/zip")
        .header("prefer", "wait=10")
        .body(b"garbage".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("preference-applied").is_none());
    let job = job_of(r, &app).await;
    assert_eq!(job["code"], 400);
    app.stop().await;
}

#[tokio::test]
async fn a_streamed_create_retried_with_its_idempotency_key_answers_the_same_job() {
    let app = TestApp::spawn().await;
    let body = fixtures::sample_template(app.db_version().await).write();
    let tenant = fixtures::tenant_url();
    let put = |body: Vec<u8>| {
        app.http
            .put(app.url(&format!("/configapi/v2/tenant/{tenant}")))
            .header("content-type", "application/zip")
            .header("idempotency-key", "stream-1")
            .body(body)
            .send()
    };
    let job = job_of(put(body.clone()).await.unwrap(), &app).await;
    assert_eq!(job["code"], 200);
    let r = put(body.clone()).await.unwrap();
    assert_eq!(r.status(), 202, "a replay, not 409");
    assert_eq!(r.json::<Value>().await.unwrap()["jobId"], job["jobId"]);
    let mut other = body;
    other.extend_from_slice(b"trailing bytes");
    assert_eq!(
        put(other).await.unwrap().status(),
        422,
        "same key, different body"
    );
    app.stop().await;
}

/// Every fault of a form's parts is reported at once with its fields' own, as the JSON variant
/// reports every bad field: a name given twice, a number mapped twice, a text part too long or not
/// UTF-8, beside a bad e-mail and a missing field.
#[tokio::test]
async fn a_forms_faults_are_all_reported_at_once_with_its_fields_own() {
    let app = TestApp::without_workers().await;
    let template = fixtures::sample_template(app.db_version().await).write();
    let url = app.url(&format!(
        "/configapi/v2/selfservice/tenant/{}",
        fixtures::tenant_url()
    ));
    let bad = Form::new()
        .text("tenantName", "Form Tenant")
        .text("tenantName", "Again")
        .text("numberMap", "0000000000:4155550100")
        .text("numberMap", "0000000000:4155550101")
        .text("numberMap", "0000000000:4155550102")
        .text("numberMap", "abc:4155550103")
        .text("firstName", "a".repeat(70 << 10))
        .text("password", fixtures::SENTINEL_PASSWORD)
        .text("email", "not an address")
        .part("lastName", Part::bytes(vec![0xff, 0xfe, 0x00]))
        .part(
            "template",
            Part::bytes(template)
                .file_name("t.zip")
                .mime_str("application/zip")
                .unwrap(),
        );
    let r = app.http.post(&url).multipart(bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let p: Value = r.json().await.unwrap();
    let faults: Vec<(String, String)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let message = |field: &str| {
        let of: Vec<&str> = faults
            .iter()
            .filter(|(f, _)| f == field)
            .map(|(_, m)| m.as_str())
            .collect();
        assert_eq!(of.len(), 1, "one fault of {field}: {p}");
        of[0].to_owned()
    };
    assert_eq!(message("tenantName"), "appears more than once");
    // A key mapped three times is one fault; the validator's own fault of the map stays.
    let of_map: Vec<&str> = faults
        .iter()
        .filter(|(f, _)| f == "numberMap")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(of_map.len(), 2, "{p}");
    assert!(of_map[0].contains("is mapped more than once"), "{p}");
    assert!(of_map[1].contains("abc"), "{p}");
    assert_eq!(message("firstName"), "is larger than 65536 bytes");
    assert_eq!(
        message("lastName"),
        "is not UTF-8 text",
        "not also `required`"
    );
    assert!(message("email").contains("address"), "{p}");
    message("loginId");
    assert_eq!(faults.len(), 7, "{p}");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_forms_text_past_1_mib_is_refused_while_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::without_workers().await;
    let token = app.bootstrap_token().await;
    // Forms declaring 8 MiB of text, of which only 1 MiB + 192 KiB are sent: many parts of
    // 60 KiB each (each within the limit of a part), and one part of 8 MiB (past it, so read
    // into nothing, but counted): the handler must refuse each from what arrived (what it
    // reads of a form besides its template is bounded), not wait for the rest.
    const BOUNDARY: &str = "provisionerboundary";
    const SENT: usize = (1 << 20) + (192 << 10);
    let part = |name: &str, size: usize| {
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{}\r\n",
            "a".repeat(size)
        )
    };
    let many: String = (0..(8 << 20) / (60 << 10))
        .map(|i| part(&format!("extra{i}"), 60 << 10))
        .collect();
    let one = part("tenantName", 8 << 20);
    for parts in [many, one] {
        let body = parts + &format!("--{BOUNDARY}--\r\n");
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(
            format!(
                "POST /configapi/v2/selfservice/tenant/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
                fixtures::tenant_url(),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(&body.as_bytes()[..SENT]).await.unwrap();
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("}") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let answer = String::from_utf8_lossy(&seen);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "no 413 within {:?} of 1.2 MiB of 8 MiB of text: {answer:?}",
            started.elapsed()
        );
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(
            answer.contains(
                "a form's parts but its template may have at most 1048576 bytes together"
            ),
            "{answer}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

/// An upload the store lacked, stored for a create the client's cap then refuses, does not stay
/// in the store (no sweeper runs here: there are no workers).
#[tokio::test]
async fn an_upload_refused_by_the_clients_cap_leaves_nothing_stored() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_ACTIVE_JOBS", "1".into())],
    })
    .await;
    let downloaded = app.serve_sample_template("t.zip").await;
    let r = app
        .create(&fixtures::tenant_url(), &fixtures::create_body(&downloaded))
        .await;
    assert_eq!(r.status(), 202);
    let template = fixtures::sample_template(app.db_version().await);
    let r = app
        .http
        .put(app.url(&format!("/configapi/v2/tenant/{}", fixtures::tenant_url())))
        .header("content-type", "application/zip")
        .body(template.write())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(stored_templates(&app).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    app.stop().await;
}

/// An exported archive whose `tenant.json` does not name its URL within the first 1 MiB (the
/// API's bounded read): accepted with an empty `tenantUrl`, which the job takes from the tenant
/// it made once it succeeds, so the job lists under its tenant like any other.
#[tokio::test]
async fn an_import_whose_url_the_api_cannot_read_in_time_takes_the_url_of_its_tenant() {
    use std::io::Read;
    let app = TestApp::spawn().await;
    let template = fixtures::sample_template(app.db_version().await);
    let url = template.tenant.url.clone();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(template.write())).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "tenant.json" {
            // 1 MiB of spaces after the opening brace: the URL comes after the read's end.
            assert_eq!(bytes[0], b'{');
            let mut padded = b"{".to_vec();
            padded.resize(1 + (1 << 20), b' ');
            padded.extend_from_slice(&bytes[1..]);
            bytes = padded;
        }
        entries.push((name, bytes));
    }
    let entries: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let response = app
        .http
        .post(app.url("/configapi/v2/tenant?lockTimeout=5"))
        .header("content-type", "application/zip")
        .body(fixtures::raw_zip(&entries))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["tenantUrl"], "", "{accepted}");
    let id = accepted["jobId"].as_str().unwrap();
    let job = app.wait_job(id).await;
    assert_eq!(
        (job["code"].as_i64(), job["tenantUrl"].as_str()),
        (Some(200), Some(url.as_str())),
        "{job}"
    );
    let (_, listed) = app
        .get_json(&format!("/configapi/v2/jobs?tenantUrl={url}"))
        .await;
    assert_eq!(listed["items"][0]["jobId"].as_str(), Some(id), "{listed}");
    app.stop().await;
}
