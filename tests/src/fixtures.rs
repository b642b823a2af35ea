//! Sample templates and requests.

use std::io::{Cursor, Write};

use chrono::Utc;
use provisioner_shared::template::{
    AccessNumberEntry, AuditEntry, CallingListEntry, FORMAT, FORMAT_VERSION, Manifest,
    ManifestSource, ObjectEntry, Template, TenantEntry, UserEntry,
};
use serde_json::{Value, json};
use uuid::Uuid;

pub const SENTINEL_PASSWORD: &str = "sentinel-Pa55word-7f3a9c";

/// A support-center template: a team, a skill, a service that refers to both, two users (one
/// `admin` that a request's administrator replaces), two access-number ranges, a calling list
/// and audit history.
pub fn sample_template(db_version: i64) -> Template {
    let (team, skill, service) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY".to_owned();
    let source = Uuid::new_v4();
    Template {
        manifest: Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            db_version,
            exported_at: Utc::now(),
            source: ManifestSource {
                tenant_id: source,
                tenant_url: "source.example.com".into(),
                tenant_name: "Source".into(),
            },
        },
        tenant: TenantEntry {
            id: source,
            url: "source.example.com".into(),
            name: "Source".into(),
            sip_domain: "source.example.com".into(),
            settings: json!({"timezone": "Europe/London", "recording": {"enabled": true}})
                .as_object()
                .unwrap()
                .clone()
                .into(),
        },
        users: vec![
            UserEntry {
                id: Uuid::new_v4(),
                login_id: "admin".into(),
                first_name: "Old".into(),
                last_name: "Admin".into(),
                email: "old@source.example".into(),
                roles: vec!["admin".into()],
                password_hash: Some(hash.clone()),
                teams: vec![],
            },
            UserEntry {
                id: Uuid::new_v4(),
                login_id: "agent1".into(),
                first_name: "Grace".into(),
                last_name: "Hopper".into(),
                email: "grace@source.example".into(),
                roles: vec!["agent".into()],
                password_hash: Some(hash),
                teams: vec![team],
            },
        ],
        objects: vec![
            ObjectEntry {
                id: team,
                kind: "team".into(),
                name: "Tier 1".into(),
                data: json!({"size": 5}).as_object().unwrap().clone().into(),
                refs: vec![],
            },
            ObjectEntry {
                id: skill,
                kind: "skill".into(),
                name: "English".into(),
                data: Default::default(),
                refs: vec![],
            },
            ObjectEntry {
                id: service,
                kind: "service".into(),
                name: "Support".into(),
                data: json!({"sla": 20}).as_object().unwrap().clone().into(),
                refs: vec![team, skill],
            },
        ],
        access_numbers: vec![
            AccessNumberEntry {
                number: "0000000000".into(),
                count: 10,
                media: "VOICE".into(),
            },
            AccessNumberEntry {
                number: "0000000100".into(),
                count: 5,
                media: "VOICE".into(),
            },
        ],
        calling_lists: vec![CallingListEntry {
            id: Uuid::new_v4(),
            name: "Leads".into(),
            entries: vec![json!({"phone": "4155550000"}).as_object().unwrap().clone()].into(),
        }],
        audit: vec![AuditEntry {
            at: Utc::now(),
            actor: "ops".into(),
            action: "update".into(),
            object: "service".into(),
            details: Default::default(),
        }],
    }
}

/// Asserts that `url` names one tenant holding exactly what the sample template makes with
/// `create_body`: its two users (the request's administrator in place of the template's), its
/// three objects, references only to its own objects, one copy of each. A tenant imported twice
/// over, or half, fails it, which the unique URL alone would not show.
pub async fn assert_sample_tenant(app: &crate::TestApp, url: &str) {
    let found: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "WITH t AS (SELECT id FROM tenants WHERE url = $1)
         SELECT (SELECT count(*) FROM t),
                (SELECT count(*) FROM users WHERE tenant_id IN (SELECT id FROM t)),
                (SELECT count(*) FROM users WHERE tenant_id IN (SELECT id FROM t)
                   AND login_id = 'admin' AND first_name = 'Ada'),
                (SELECT count(*) FROM config_objects WHERE tenant_id IN (SELECT id FROM t)),
                (SELECT count(*) FROM config_objects o, unnest(o.refs) r
                  WHERE o.tenant_id IN (SELECT id FROM t)
                    AND r NOT IN (SELECT id FROM config_objects WHERE tenant_id = o.tenant_id))",
    )
    .bind(url)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        found,
        (1, 2, 1, 3, 0),
        "{url}: (tenants, users, request admins, objects, references elsewhere)"
    );
}

/// How a job ended, as tests compare it: status, code and attempts.
pub fn ending(job: &Value) -> (Option<&str>, Option<i64>, Option<i64>) {
    (
        job["status"].as_str(),
        job["code"].as_i64(),
        job["attempts"].as_i64(),
    )
}

/// A valid create request body for `template_url`.
pub fn create_body(template_url: &str) -> Value {
    json!({
        "tenantName": "Acme Support",
        "numberMap": {"0000000000": "4155550100"},
        "firstName": "Ada", "lastName": "Lovelace",
        "loginId": "admin", "password": SENTINEL_PASSWORD,
        "email": "ada@acme.example",
        "templateUrl": template_url,
        "lockTimeout": 10
    })
}

/// `create_body` naming stored template `id` instead of a URL.
pub fn create_body_by_id(id: &str) -> Value {
    let mut body = create_body("unused");
    let fields = body.as_object_mut().expect("an object");
    fields.remove("templateUrl");
    fields.insert("templateId".to_owned(), json!(id));
    body
}

/// A ZIP from raw `(name, bytes)` entries, for hostile archives.
pub fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A random, unique tenant URL.
pub fn tenant_url() -> String {
    format!(
        "t{}.example.com",
        &Uuid::new_v4().simple().to_string()[..12]
    )
}
