//! Create-from-template, end to end: what an import writes, seen through the API.

use provisioner_tests::{
    TestApp,
    fixtures::{self, SENTINEL_PASSWORD},
};
use serde_json::Value;

#[tokio::test]
async fn create_from_template_imports_everything_but_calling_lists_and_audit() {
    let app = TestApp::spawn().await;
    let template = fixtures::sample_template(app.db_version().await);
    let url = app.templates.put("support.zip", template.write());
    let tenant = fixtures::tenant_url();

    let r = app.create(&tenant, &fixtures::create_body(&url)).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/configapi/v2/jobs/{}", job["jobId"].as_str().unwrap())
    );
    assert_eq!(job["status"], "queued");
    assert_eq!(job["kind"], "createTenant");
    assert_eq!(job["tenantUrl"], tenant);
    assert_eq!(job["code"], Value::Null);

    let done = app.wait_job(job["jobId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["code"], 200);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["tenant"]["url"], tenant);
    assert_eq!(done["tenant"]["name"], "Acme Support");
    assert_eq!(done["tenant"]["status"], "Inactive");
    assert_eq!(done["skippedAccessNumbers"], serde_json::json!([]));

    let (status, details) = app
        .get_json(&format!("/configapi/v2/tenant/{tenant}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(details["status"], "Inactive");
    assert_eq!(details["id"], done["tenant"]["id"]);

    let exported = app.export(&tenant).await;
    assert_eq!(exported.tenant.url, tenant);
    assert_eq!(exported.tenant.name, "Acme Support");
    assert_eq!(exported.tenant.settings, template.tenant.settings);
    assert!(
        exported.calling_lists.is_empty(),
        "calling lists are never imported"
    );
    assert!(exported.audit.is_empty(), "audit history is never imported");

    // Objects: same content, new ids, references rewritten to the new ids.
    assert_eq!(exported.objects.len(), 3);
    let by_name = |n: &str| {
        exported
            .objects
            .iter()
            .find(|o| o.name == n)
            .unwrap()
            .clone()
    };
    let (team, skill, service) = (by_name("Tier 1"), by_name("English"), by_name("Support"));
    for o in &exported.objects {
        assert!(
            template.objects.iter().all(|t| t.id != o.id),
            "object id was reused"
        );
    }
    assert_eq!(service.refs, vec![team.id, skill.id]);
    assert_eq!(service.data, template.objects[2].data);

    // Users: the template agent with a new id and rewritten team; the request's admin replaced
    // the template's `admin`, hashed with Argon2id at the contract's cost.
    assert_eq!(exported.users.len(), 2);
    let agent = exported
        .users
        .iter()
        .find(|u| u.login_id == "agent1")
        .unwrap();
    assert_ne!(agent.id, template.users[1].id);
    assert_eq!(agent.teams, vec![team.id]);
    assert_eq!(agent.password_hash, template.users[1].password_hash);
    let admin = exported
        .users
        .iter()
        .find(|u| u.login_id == "admin")
        .unwrap();
    assert_eq!(
        (
            admin.first_name.as_str(),
            admin.last_name.as_str(),
            admin.email.as_str()
        ),
        ("Ada", "Lovelace", "ada@acme.example")
    );
    assert_eq!(admin.roles, vec!["admin".to_owned()]);
    let hash = admin.password_hash.as_deref().unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    use argon2::{PasswordHash, PasswordVerifier};
    argon2::Argon2::default()
        .verify_password(
            SENTINEL_PASSWORD.as_bytes(),
            &PasswordHash::new(hash).unwrap(),
        )
        .expect("hash verifies");

    // Access numbers: the mapped range moved, the other kept its number.
    let numbers: Vec<_> = exported
        .access_numbers
        .iter()
        .map(|n| (n.number.as_str(), n.count))
        .collect();
    assert_eq!(numbers, vec![("0000000100", 5), ("4155550100", 10)]);
    let (_, listed) = app
        .get_json(&format!("/configapi/v2/accessnumbers?tenantUrl={tenant}"))
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenantUrl"] == tenant.as_str() && r["media"] == "VOICE")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_export_creates_an_identical_configuration_with_new_ids() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("support.zip").await;
    let first = fixtures::tenant_url();
    assert_eq!(
        app.create_and_wait(&first, &fixtures::create_body(&url))
            .await["code"],
        200
    );
    let exported = app.export(&first).await;

    let url = app.templates.put("export.zip", exported.write());
    let second = fixtures::tenant_url();
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = serde_json::json!({"4155550100": "4155550200", "0000000100": "0000000200"});
    assert_eq!(app.create_and_wait(&second, &body).await["code"], 200);
    let copy = app.export(&second).await;

    assert_eq!(copy.tenant.settings, exported.tenant.settings);
    assert_eq!(copy.objects.len(), exported.objects.len());
    for (a, b) in exported.objects.iter().zip(&copy.objects) {
        assert_ne!(a.id, b.id);
        assert_eq!((&a.kind, &a.name, &a.data), (&b.kind, &b.name, &b.data));
        let names = |o: &provisioner_shared::template::ObjectEntry,
                     t: &provisioner_shared::template::Template|
         -> Vec<String> {
            o.refs
                .iter()
                .map(|r| t.objects.iter().find(|x| x.id == *r).unwrap().name.clone())
                .collect()
        };
        assert_eq!(names(a, &exported), names(b, &copy));
    }
    let logins = |t: &provisioner_shared::template::Template| {
        t.users
            .iter()
            .map(|u| (u.login_id.clone(), u.roles.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(logins(&copy), logins(&exported));
    app.stop().await;
}

#[tokio::test]
async fn an_existing_tenant_or_an_active_job_for_it_is_409_at_once() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("support.zip").await;
    let tenant = fixtures::tenant_url();
    assert_eq!(
        app.create(&tenant, &fixtures::create_body(&url))
            .await
            .status(),
        202
    );
    let r = app.create(&tenant, &fixtures::create_body(&url)).await;
    assert_eq!(r.status(), 409, "a queued job for the tenant exists");
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    app.start_worker();
    let (_, jobs) = app
        .get_json(&format!("/configapi/v2/jobs?tenantUrl={tenant}"))
        .await;
    let done = app
        .wait_job(jobs["items"][0]["jobId"].as_str().unwrap())
        .await;
    assert_eq!(done["code"], 200);
    let r = app
        .create(&tenant.to_uppercase(), &fixtures::create_body(&url))
        .await;
    assert_eq!(
        r.status(),
        409,
        "the tenant exists (URLs compare lower-case)"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_create_while_an_import_of_its_tenant_is_queued_is_409_at_once() {
    let app = TestApp::without_workers().await;
    let exported = app.new_tenant_export().await;
    let r = app.import(exported.write(), "").await;
    assert_eq!(r.status(), 202, "an import is always accepted");

    let url = app.serve_sample_template("support.zip").await;
    let r = app
        .create(&exported.tenant.url, &fixtures::create_body(&url))
        .await;
    assert_eq!(r.status(), 409, "a queued import of the tenant exists");
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("import"),
        "{problem}"
    );
    // Another tenant's create is not held up by it.
    let other = app
        .create(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(other.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_created_between_acceptance_and_import_ends_the_job_with_409() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("support.zip").await;
    let tenant = fixtures::tenant_url();
    let r = app.create(&tenant, &fixtures::create_body(&url)).await;
    let job: Value = r.json().await.unwrap();
    sqlx::query("INSERT INTO tenants (id, url, name, sip_domain) VALUES (gen_random_uuid(), $1, 'Squatter', $1)")
        .bind(&tenant)
        .execute(&app.db)
        .await
        .unwrap();
    app.start_worker();
    let done = app.wait_job(job["jobId"].as_str().unwrap()).await;
    assert_eq!(
        (done["status"].as_str(), done["code"].as_i64()),
        (Some("failed"), Some(409))
    );
    assert!(
        done["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
    app.stop().await;
}
