//! Template contents checked like requests: strings, stored password hashes, free-form JSON,
//! access-number caps.

use std::io::{Cursor, Write};

use serde_json::{Value, json};

use super::*;

const DB: i64 = 7;
const ID: &str = "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10";
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY";

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn manifest() -> Value {
    json!({"format": FORMAT, "formatVersion": 1, "dbVersion": DB, "exportedAt": "2026-11-30T10:00:00Z",
           "source": {"tenantId": ID, "tenantUrl": "a.example.com", "tenantName": "A"}})
}

fn tenant() -> Value {
    json!({"id": ID, "url": "a.example.com", "name": "A", "sipDomain": "a.example.com", "settings": {}})
}

fn user() -> Value {
    json!({"id": ID, "loginId": "agent", "firstName": "Grace", "lastName": "Hopper",
           "email": "grace@a.example", "roles": ["agent"], "passwordHash": HASH})
}

/// Reads a template of `manifest`, `tenant` and the given entries, for create or import.
fn read_with(
    contents: Contents,
    tenant: &Value,
    entries: &[(&str, Value)],
) -> Result<Template, TemplateError> {
    let mut all = vec![
        (MANIFEST, serde_json::to_vec(&manifest()).unwrap()),
        (TENANT, serde_json::to_vec(tenant).unwrap()),
    ];
    all.extend(
        entries
            .iter()
            .map(|(n, v)| (*n, serde_json::to_vec(v).unwrap())),
    );
    let bytes = zip_of(&all);
    match contents {
        Contents::ForCreate => Template::read_for_create(&bytes, &Limits::default(), DB),
        Contents::All => Template::read_upgrading(&bytes, &Limits::default(), DB),
    }
}

fn refused(entries: &[(&str, Value)]) -> String {
    match read_with(Contents::ForCreate, &tenant(), entries) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {entries:?}"),
    }
}

#[test]
fn user_strings_obey_the_request_fields_rules() {
    assert!(read_with(Contents::ForCreate, &tenant(), &[(USERS, json!([user()]))]).is_ok());
    let cases = [
        (
            "loginId",
            json!("ag\u{0}ent"),
            "users[0].loginId must not contain control",
        ),
        (
            "loginId",
            json!("x".repeat(1 << 20)),
            "users[0].loginId must be at most 255",
        ),
        ("loginId", json!("  "), "users[0].loginId must not be empty"),
        (
            "firstName",
            json!("Gr\u{202e}ace"),
            "users[0].firstName must not contain",
        ),
        (
            "lastName",
            json!("Hop\u{200b}per"),
            "users[0].lastName must not contain",
        ),
        (
            "email",
            json!("not-an-email"),
            "users[0].email must be a valid e-mail",
        ),
        (
            "roles",
            json!(["ag\nent"]),
            "users[0].roles[0] must not contain",
        ),
        ("roles", json!(vec!["r"; 40]), "more than 32 roles"),
    ];
    for (field, value, expect) in cases {
        let mut u = user();
        u[field] = value;
        let err = refused(&[(USERS, json!([u]))]);
        assert!(err.contains(expect), "{field}: {err}");
        assert!(
            err.len() < 500,
            "the error does not repeat a huge value: {}",
            err.len()
        );
    }
}

#[test]
fn stored_password_hashes_must_be_argon2id_within_bounds() {
    for (hash, expect) in [
        (
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY",
            "m=8,t=1,p=1",
        ),
        (
            "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY",
            "password hash",
        ),
        ("$argon2id$", "password hash that is not a PHC string"),
        (
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3q2+7w0Wm4m6b3Hn2c7l1o8d5bY2xgq4p0aXc1kz9QY",
            "not argon2id",
        ),
    ] {
        let mut u = user();
        u["passwordHash"] = json!(hash);
        let err = refused(&[(USERS, json!([u]))]);
        assert!(err.contains(expect), "{hash}: {err}");
    }
}

#[test]
fn object_and_number_strings_obey_the_rules() {
    let object = |kind: &str, name: &str| json!([{"id": ID, "kind": kind, "name": name}]);
    assert!(
        refused(&[(OBJECTS, object("te\u{7}am", "t"))])
            .contains("objects[0].kind must not contain")
    );
    assert!(
        refused(&[(OBJECTS, object("team", &"n".repeat(256)))])
            .contains("objects[0].name must be at most 255")
    );
    let media = json!([{"number": "4155550100", "count": 1, "media": "VO\u{202e}ICE"}]);
    assert!(
        refused(&[(ACCESS_NUMBERS, media)]).contains("access_numbers[0].media must not contain")
    );
}

#[test]
fn settings_keys_and_values_obey_the_rules_and_documents_are_bounded() {
    let with_settings = |settings: Value| {
        let mut t = tenant();
        t["settings"] = settings;
        read_with(Contents::ForCreate, &t, &[]).map(|t| t.tenant.settings.to_value())
    };
    assert_eq!(
        with_settings(json!({"tz": "Europe/London", "n": {"deep": [1, "two"]}})).unwrap(),
        json!({"tz": "Europe/London", "n": {"deep": [1, "two"]}})
    );
    for (settings, expect) in [
        (
            json!({"a\u{202e}": 1}),
            "settings key contains control or Unicode format",
        ),
        (
            json!({"a": {"b": ["x\u{0}"]}}),
            "settings value contains control",
        ),
        (
            json!({"a": "v".repeat(65_537)}),
            "settings value is longer than 65536",
        ),
        (
            json!({"k".repeat(256): 1}),
            "settings key is longer than 255",
        ),
        (json!([1]), "invalid type"),
    ] {
        let err = with_settings(settings).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
    // Nesting is bounded in every free-form document, settings or not.
    let deep = |levels: usize| -> Value {
        serde_json::from_str(&format!("{}1{}", "[".repeat(levels), "]".repeat(levels))).unwrap()
    };
    let object = |data: Value| json!([{"id": ID, "kind": "team", "name": "t", "data": data}]);
    assert!(
        read_with(
            Contents::ForCreate,
            &tenant(),
            &[(OBJECTS, object(json!({"a": deep(30)})))]
        )
        .is_ok()
    );
    let err = refused(&[(OBJECTS, object(json!({"a": deep(31)})))]);
    assert!(err.contains("nests deeper than 32 levels"), "{err}");
}

#[test]
fn a_free_form_array_or_object_holds_at_most_four_million_elements() {
    // PostgreSQL's `jsonb` cannot hold an array or object much past 16.7 or 8.4 million
    // elements (one allocation of at most 1 GiB): such a template is the template's fault.
    // Raw text: a tree of millions of values would cost the test what the reader avoids.
    let read = |name: &str, text: String| {
        let all = vec![
            (MANIFEST, serde_json::to_vec(&manifest()).unwrap()),
            (TENANT, serde_json::to_vec(&tenant()).unwrap()),
            (name, text.into_bytes()),
        ];
        Template::read_for_create(&zip_of(&all), &Limits::default(), DB)
    };
    let list = |n: usize, element: &str| -> String {
        let mut text = String::with_capacity(n * (element.len() + 1) + 2);
        text.push('[');
        for i in 0..n {
            if i > 0 {
                text.push(',');
            }
            text.push_str(element);
        }
        text.push(']');
        text
    };
    let members = |n: usize| -> String {
        let mut text = String::with_capacity(n * 12 + 2);
        text.push('{');
        for i in 0..n {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"k{i}\":0"));
        }
        text.push('}');
        text
    };
    let object = |data: String| {
        format!(r#"[{{"id": "{ID}", "kind": "team", "name": "t", "data": {data}}}]"#)
    };
    let calling_list =
        |entries: String| format!(r#"[{{"id": "{ID}", "name": "n", "entries": {entries}}}]"#);
    // Each: the entry, its text with n elements where the bound applies, the fault past it.
    type Text<'a> = Box<dyn Fn(usize) -> String + 'a>;
    let cases: [(&str, Text, &str); 3] = [
        (
            OBJECTS,
            Box::new(|n| object(format!(r#"{{"a": {}}}"#, list(n, "0")))),
            "an array holds more than 4000000 elements (in an object's data",
        ),
        (
            OBJECTS,
            Box::new(|n| object(members(n))),
            "an object has more than 4000000 members (in an object's data",
        ),
        (
            CALLING_LISTS,
            Box::new(|n| calling_list(list(n, "{}"))),
            "an array holds more than 4000000 elements (in a calling list's entries",
        ),
    ];
    for (name, text, expect) in cases {
        assert!(read(name, text(MAX_ELEMENTS)).is_ok(), "{expect}");
        match read(name, text(MAX_ELEMENTS + 1)) {
            Err(e) => assert!(e.to_string().contains(expect), "{e}"),
            Ok(_) => panic!("accepted past the bound: {expect}"),
        }
    }
}

#[test]
fn every_entry_and_record_is_an_object_never_an_array_of_its_fields() {
    // Serde's derived structs take `[field, field, ...]` too; the format does not.
    let read = |entries: &[(&str, String)]| {
        let mut all = vec![
            (MANIFEST, serde_json::to_vec(&manifest()).unwrap()),
            (TENANT, serde_json::to_vec(&tenant()).unwrap()),
        ];
        for (name, text) in entries {
            all.retain(|(n, _)| n != name);
            all.push((*name, text.clone().into_bytes()));
        }
        Template::read_upgrading(&zip_of(&all), &Limits::default(), DB)
    };
    let fields = |v: Value| -> String {
        let values: Vec<Value> = v.as_object().unwrap().values().cloned().collect();
        Value::Array(values).to_string()
    };
    let mut source_as_array = manifest();
    source_as_array["source"] = json!([ID, "a.example.com", "A"]);
    let audit = json!({"at": "2026-11-30T10:00:00Z", "actor": "a", "action": "b", "object": "c"});
    let range = json!({"number": "5550000", "count": 1, "media": "VOICE"});
    let object = json!({"id": ID, "kind": "team", "name": "t"});
    let list = json!({"id": ID, "name": "n"});
    // Each entry as objects is read; with one of them an array of its fields, refused.
    for (name, good, bad) in [
        (
            MANIFEST,
            manifest().to_string(),
            source_as_array.to_string(),
        ),
        (MANIFEST, manifest().to_string(), {
            // The manifest's fields in the order the struct declares them.
            let m = manifest();
            json!([
                m["format"],
                m["formatVersion"],
                m["dbVersion"],
                m["exportedAt"],
                m["source"]
            ])
            .to_string()
        }),
        (TENANT, tenant().to_string(), fields(tenant())),
        (
            USERS,
            json!([user()]).to_string(),
            format!("[{}]", fields(user())),
        ),
        (
            OBJECTS,
            json!([object]).to_string(),
            format!("[{}]", fields(object.clone())),
        ),
        (
            ACCESS_NUMBERS,
            json!([range]).to_string(),
            format!("[{}]", fields(range.clone())),
        ),
        (
            CALLING_LISTS,
            json!([list]).to_string(),
            format!("[{}]", fields(list.clone())),
        ),
        (
            AUDIT,
            json!([audit]).to_string(),
            format!("[{}]", fields(audit.clone())),
        ),
    ] {
        assert!(read(&[(name, good)]).is_ok(), "{name}");
        let err = read(&[(name, bad.clone())])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid type: sequence, expected a JSON object"),
            "{name} {bad}: {err}"
        );
    }
}

#[test]
fn access_number_caps_hold_after_the_numbers_are_counted() {
    let ranges = |n: usize, count: i32| -> Value {
        (0..n)
            .map(|i| json!({"number": format!("{:010}", i * 1_000_000), "count": count, "media": "VOICE"}))
            .collect()
    };
    assert!(
        read_with(
            Contents::ForCreate,
            &tenant(),
            &[(ACCESS_NUMBERS, ranges(1_000, 100))]
        )
        .is_ok()
    );
    assert!(
        refused(&[(ACCESS_NUMBERS, ranges(1_001, 1))])
            .contains("1001 access-number ranges; at most 1000")
    );
    assert!(
        refused(&[(ACCESS_NUMBERS, ranges(2, 50_001))])
            .contains("hold 100002 numbers; at most 100000")
    );
}

#[test]
fn import_checks_the_tenants_own_name_url_and_sip_domain_and_create_does_not() {
    for (field, value, expect) in [
        (
            "name",
            json!("Ac\u{202e}me"),
            "tenant.json name must not contain",
        ),
        ("name", json!(""), "tenant.json name must not be empty"),
        (
            "sipDomain",
            json!("sip.example.com\u{0}"),
            "tenant.json sipDomain",
        ),
        ("sipDomain", json!("not a domain"), "tenant.json sipDomain"),
        ("url", json!("bad_host"), "tenant.json url"),
    ] {
        let mut t = tenant();
        t[field] = value;
        let err = read_with(Contents::All, &t, &[]).unwrap_err().to_string();
        assert!(err.contains(expect), "{field}: {err}");
        assert!(
            read_with(Contents::ForCreate, &t, &[]).is_ok(),
            "create replaces {field}"
        );
    }
}

#[test]
fn create_checks_the_lists_it_does_not_import_as_import_does_and_builds_none() {
    let lists = json!([{"id": ID, "name": "n", "entries": [{"a": [[[[1]]]]}]}]);
    let audit = json!([{"at": "2026-11-30T10:00:00Z", "actor": "a", "action": "b", "object": "c", "details": {"x": 1}}]);
    let t = read_with(
        Contents::ForCreate,
        &tenant(),
        &[(CALLING_LISTS, lists.clone()), (AUDIT, audit.clone())],
    )
    .unwrap();
    assert!(
        t.calling_lists.is_empty() && t.audit.is_empty(),
        "nothing built"
    );
    let imported = read_with(Contents::All, &tenant(), &[(AUDIT, audit.clone())]).unwrap();
    assert_eq!(imported.audit[0].details.to_value(), json!({"x": 1}));
    // Each fault, in the second element: the same verdict for a create as for an import.
    let second = |entry: &Value, field: &str, value: Value| {
        let mut list = vec![entry[0].clone(), entry[0].clone()];
        list[1][field] = value;
        Value::Array(list)
    };
    let twice = format!("calling list id {ID} appears twice");
    let cases = [
        (
            CALLING_LISTS,
            json!([lists[0], lists[0]]),
            Some(twice.as_str()),
        ),
        (
            CALLING_LISTS,
            second(&lists, "name", json!("n\u{0}")),
            Some("calling_lists[1].name must not contain"),
        ),
        (CALLING_LISTS, second(&lists, "name", json!(5)), None),
        (CALLING_LISTS, second(&lists, "entries", json!(["x"])), None),
        (
            CALLING_LISTS,
            second(&lists, "id", json!("not a uuid")),
            None,
        ),
        (AUDIT, second(&audit, "actor", json!(1)), None),
        (
            AUDIT,
            second(&audit, "action", json!("a".repeat(65))),
            Some("audit[1].action must be at most 64"),
        ),
        (AUDIT, second(&audit, "object", json!(null)), None),
        (AUDIT, second(&audit, "details", json!("text")), None),
        (AUDIT, second(&audit, "at", json!("yesterday")), None),
    ];
    // Both at fault, the lists' and another entry's: a create reports first what an import
    // does (the lists' strings are checked last).
    let mut bad_user = user();
    bad_user["email"] = json!("x");
    let both = [
        (USERS, json!([bad_user])),
        (CALLING_LISTS, second(&lists, "name", json!("n\u{0}"))),
    ];
    for contents in [Contents::ForCreate, Contents::All] {
        let err = read_with(contents, &tenant(), &both)
            .unwrap_err()
            .to_string();
        assert!(err.contains("users[0].email"), "{err}");
    }
    for (entry, body, rule) in cases {
        for contents in [Contents::ForCreate, Contents::All] {
            let err = read_with(contents, &tenant(), &[(entry, body.clone())]).unwrap_err();
            match rule {
                Some(rule) => assert!(
                    matches!(&err, TemplateError::InvalidContent(m) if m.contains(rule)),
                    "{entry} {body}: {err}"
                ),
                None => assert!(
                    matches!(err, TemplateError::InvalidEntry(e, _) if e == entry),
                    "{entry} {body}: {err}"
                ),
            }
        }
    }
}

#[test]
fn the_checks_find_every_faulty_element_and_the_first_is_the_readers_fault() {
    let mut users = vec![user(), user(), user()];
    users[0]["firstName"] = json!("Gr\u{202e}ace");
    users[1]["id"] = json!("1b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10");
    users[1]["loginId"] = json!("second");
    users[2]["id"] = json!("2b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10");
    users[2]["loginId"] = json!("third");
    users[2]["email"] = json!("not an address");
    let numbers = json!([{"number": "99999", "count": 10, "media": "VOICE"},
                         {"number": "0000000000", "count": 10, "media": "VOICE"}]);
    let template = Template {
        manifest: serde_json::from_value(manifest()).unwrap(),
        tenant: serde_json::from_value(tenant()).unwrap(),
        users: serde_json::from_value(Value::Array(users.clone())).unwrap(),
        objects: vec![],
        access_numbers: serde_json::from_value(numbers.clone()).unwrap(),
        calling_lists: vec![],
        audit: vec![],
    };
    let faults: Vec<String> = template
        .faults(false, 100)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(faults.len(), 3, "{faults:?}");
    assert!(faults[0].contains("users[0].firstName"), "{faults:?}");
    assert!(faults[1].contains("users[2].email"), "{faults:?}");
    assert!(faults[2].contains("range 99999 x 10"), "{faults:?}");
    assert_eq!(template.faults(false, 1).len(), 1, "stops at `most`");
    // A user at fault is not judged further: no fault quotes text that broke the rules (an
    // escape sequence here, twice, which would also be a login id appearing twice).
    let mut hostile = template.clone();
    hostile.users[1].login_id = "\u{1b}]0;x\u{7}".into();
    hostile.users.push(hostile.users[1].clone());
    let faults: Vec<String> = hostile
        .faults(false, 100)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        faults
            .iter()
            .any(|f| f.contains("users[1].loginId must not contain")),
        "{faults:?}"
    );
    assert!(!faults.iter().any(|f| f.contains('\u{1b}')), "{faults:?}");
    let read = read_with(
        Contents::ForCreate,
        &tenant(),
        &[(USERS, Value::Array(users)), (ACCESS_NUMBERS, numbers)],
    )
    .unwrap_err();
    assert_eq!(
        read.to_string(),
        faults[0],
        "the reader refuses with the first"
    );
    // Negative counts: each range a fault of its own, and none adds to the numbers' total
    // (as unsigned they overflowed it).
    let mut negative = template.clone();
    negative.users.truncate(1);
    negative.users[0].first_name = "Grace".into();
    negative.access_numbers = serde_json::from_value(json!([
        {"number": "5550000000", "count": -1, "media": "VOICE"},
        {"number": "5560000000", "count": -1, "media": "VOICE"}]))
    .unwrap();
    let faults: Vec<String> = negative
        .faults(false, 100)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(
        faults
            .iter()
            .all(|f| f.contains("with a count of 1 to 1000000")),
        "{faults:?}"
    );
}

#[test]
fn a_member_named_twice_in_free_form_json_is_refused_wherever_it_is() {
    // Raw text: `json!` cannot repeat a member. Each document once with a name given twice,
    // once with the same name in two objects (no repetition).
    let read = |tenant: String, entries: &[(&str, String)]| {
        let mut all = vec![
            (MANIFEST, serde_json::to_vec(&manifest()).unwrap()),
            (TENANT, tenant.into_bytes()),
        ];
        all.extend(entries.iter().map(|(n, t)| (*n, t.clone().into_bytes())));
        Template::read_upgrading(&zip_of(&all), &Limits::default(), DB)
    };
    let tenant_with = |settings: &str| {
        format!(
            r#"{{"id": "{ID}", "url": "a.example.com", "name": "A", "sipDomain": "a.example.com",
                 "settings": {settings}}}"#
        )
    };
    let object =
        |data: &str| format!(r#"[{{"id": "{ID}", "kind": "team", "name": "t", "data": {data}}}]"#);
    let list =
        |entry: &str| format!(r#"[{{"id": "{ID}", "name": "n", "entries": [{{}}, {entry}]}}]"#);
    let audit = |details: &str| {
        format!(
            r#"[{{"at": "2026-11-30T10:00:00Z", "actor": "a", "action": "b", "object": "c", "details": {details}}}]"#
        )
    };
    let twice = r#"{"tz": 1, "n": {"a": 1, "a": 2}}"#;
    let apart = r#"{"tz": 1, "n": {"a": 1}, "m": {"a": {"a": "a"}}}"#;
    // Each document: where it is, the tenant's text, the other entries.
    type Case = (&'static str, String, Vec<(&'static str, String)>);
    let cases = |doc: &str| -> Vec<Case> {
        vec![
            ("settings", tenant_with(doc), vec![]),
            (OBJECTS, tenant_with("{}"), vec![(OBJECTS, object(doc))]),
            (
                CALLING_LISTS,
                tenant_with("{}"),
                vec![(CALLING_LISTS, list(doc))],
            ),
            (AUDIT, tenant_with("{}"), vec![(AUDIT, audit(doc))]),
        ]
    };
    for ((what, t, entries), (_, bad_t, bad_entries)) in cases(apart).into_iter().zip(cases(twice))
    {
        assert!(read(t, &entries).is_ok(), "{what}");
        let err = read(bad_t, &bad_entries).unwrap_err().to_string();
        // Its place counts from the document's own text, which the message names.
        let document = match what {
            "settings" => "the tenant's settings",
            OBJECTS => "an object's data",
            CALLING_LISTS => "a calling list's entries",
            _ => "an audit entry's details",
        };
        let place = format!(r#"the member "a" is given twice (in {document}, at line 1 column "#);
        assert!(err.contains(&place), "{what}: {err}");
    }
}

#[test]
fn a_number_the_database_cannot_store_is_refused_wherever_it_is() {
    // `jsonb` stores numbers as `numeric`: at most 16,383 digits after the point. `1e-16384`
    // passed the reader (an `f64` holds it as 0), and every create from the template failed.
    let tiny = format!("0.{}1", "0".repeat(16_383));
    for (number, fits) in [
        ("1e-16384", false),
        ("1.5e-16383", false),
        (tiny.as_str(), false),
        ("1e-16383", true),
        ("-2.5E+3", true),
        ("12345678901234567890.125", true),
    ] {
        // As text, so the number reaches the reader as written; a string that looks like one
        // is no number.
        let objects = format!(
            r#"[{{"id":"{ID}","kind":"team","name":"t","data":{{"n":{number},"s":"1e-99999"}}}}]"#
        );
        let settings = format!(
            r#"{{"id":"{ID}","url":"a.example.com","name":"A","sipDomain":"a.example.com","settings":{{"n":{number}}}}}"#
        );
        let read = |entries: &[(&str, Vec<u8>)]| {
            let mut all = vec![(MANIFEST, serde_json::to_vec(&manifest()).unwrap())];
            all.extend(entries.iter().cloned());
            Template::read_for_create(&zip_of(&all), &Limits::default(), DB).map(drop)
        };
        let tenant_text = serde_json::to_vec(&tenant()).unwrap();
        for (document, got) in [
            (
                "an object's data",
                read(&[(TENANT, tenant_text), (OBJECTS, objects.into_bytes())]),
            ),
            (
                "the tenant's settings",
                read(&[(TENANT, settings.into_bytes())]),
            ),
        ] {
            match (fits, got) {
                (true, Ok(())) => {}
                (false, Err(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("more than 16383 digits after the decimal point")
                            && e.contains(document),
                        "{number}: {e}"
                    );
                }
                (fits, got) => panic!("{number} in {document}: fits {fits}, read {got:?}"),
            }
        }
    }
}

#[test]
fn a_nul_character_in_free_form_json_is_refused_wherever_it_is() {
    // `jsonb` cannot hold U+0000, in a value or a name: a template that holds one would be
    // stored, then fail every create that uses it. Settings refuse every control character.
    let object = |data: Value| json!([{"id": ID, "kind": "team", "name": "t", "data": data}]);
    let list = |entry: Value| json!([{"id": ID, "name": "n", "entries": [{}, entry]}]);
    let audit = |details: Value| {
        json!([{"at": "2026-11-30T10:00:00Z", "actor": "a", "action": "b", "object": "c",
                "details": details}])
    };
    let cases = [
        (
            OBJECTS,
            object(json!({"a": {"b": ["x\u{0}"]}})),
            "an object's data",
            "value",
        ),
        (
            OBJECTS,
            object(json!({"a\u{0}": 1})),
            "an object's data",
            "key",
        ),
        (
            CALLING_LISTS,
            list(json!({"n": "\u{0}"})),
            "a calling list's entries",
            "value",
        ),
        (
            AUDIT,
            audit(json!({"k\u{0}": "v"})),
            "an audit entry's details",
            "key",
        ),
    ];
    for (entry, body, document, what) in cases {
        for contents in [Contents::ForCreate, Contents::All] {
            let err = read_with(contents, &tenant(), &[(entry, body.clone())])
                .unwrap_err()
                .to_string();
            let said = format!(
                "a {what} contains the character U+0000, which the database cannot store (in {document}"
            );
            assert!(err.contains(&said), "{entry} {contents:?}: {err}");
        }
    }
    // Any other character is the author's to use there, an escaped control character too.
    assert!(
        read_with(
            Contents::ForCreate,
            &tenant(),
            &[(OBJECTS, object(json!({"a\u{1}": "\u{7}\u{202e}"})))]
        )
        .is_ok()
    );
}

#[test]
fn a_template_must_fit_the_limits_as_its_tenants_export_writes_it() {
    // The database keeps `1e300` exactly and writes it out as 301 characters: 5,000 of them in
    // 30 KB of settings export as 1.5 MB, which the export's reader refused (its settings over
    // 1 MiB), so the tenant could not be imported again.
    let numbers = |n: usize| format!("[{}]", ["1e300"; 1].repeat(n).join(","));
    let settings = |n: usize| {
        format!(
            r#"{{"id":"{ID}","url":"a.example.com","name":"A","sipDomain":"a.example.com","settings":{{"a":{}}}}}"#,
            numbers(n)
        )
    };
    let read = |tenant: String, objects: Option<String>, limits: &Limits| {
        let mut all = vec![
            (MANIFEST, serde_json::to_vec(&manifest()).unwrap()),
            (TENANT, tenant.into_bytes()),
        ];
        all.extend(objects.map(|o| (OBJECTS, o.into_bytes())));
        Template::read_for_create(&zip_of(&all), limits, DB).map(drop)
    };
    let defaults = Limits::default();
    // 3,000 export as 903 KB: taken; 5,000 as 1.5 MB: refused.
    assert_eq!(read(settings(3_000), None, &defaults), Ok(()));
    let err = read(settings(5_000), None, &defaults)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("once their numbers are written out in full"),
        "{err}"
    );

    // An entry's size, and all entries', count what their numbers gain too.
    let objects = |n: usize| {
        format!(
            r#"[{{"id":"{ID}","kind":"team","name":"t","data":{{"n":{}}}}}]"#,
            numbers(n)
        )
    };
    let small = Limits {
        max_entry_bytes: 1 << 20,
        max_total_bytes: 3 << 19,
        ..Limits::default()
    };
    let tenant = serde_json::to_string(&tenant()).unwrap();
    assert_eq!(read(tenant.clone(), Some(objects(3_000)), &small), Ok(()));
    assert_eq!(
        read(tenant.clone(), Some(objects(4_000)), &small),
        Err(TemplateError::EntryTooLargeExported(
            OBJECTS.to_owned(),
            1 << 20
        ))
    );
    assert_eq!(
        read(settings(3_000), Some(objects(3_000)), &small),
        Err(TemplateError::TotalTooLargeExported(3 << 19))
    );
}
