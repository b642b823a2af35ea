//! Access numbers through `numberMap` and the contract's range rules.

use provisioner_tests::{TestApp, fixtures};
use serde_json::{Value, json};

async fn insert_range(app: &TestApp, number: &str, count: i32, owner: Option<&str>) {
    sqlx::query("INSERT INTO access_numbers (number, count, media, tenant_id) VALUES ($1, $2, 'VOICE', (SELECT id FROM tenants WHERE url = $3))")
        .bind(number)
        .bind(count)
        .bind(owner)
        .execute(&app.db)
        .await
        .unwrap();
}

async fn ranges(app: &TestApp, tenant: Option<&str>) -> Vec<(String, i64, Value)> {
    let path = match tenant {
        Some(t) => format!("/configapi/v2/accessnumbers?tenantUrl={t}"),
        None => "/configapi/v2/accessnumbers".to_owned(),
    };
    let (status, body) = app.get_json(&path).await;
    assert_eq!(status, 200);
    body.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["number"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
                r["tenantUrl"].clone(),
            )
        })
        .collect()
}

/// `tenant`'s ranges, as (first number, count), in number order.
async fn ranges_of(app: &TestApp, tenant: &str) -> Vec<(String, i64)> {
    ranges(app, Some(tenant))
        .await
        .into_iter()
        .map(|(n, c, _)| (n, c))
        .collect()
}

#[tokio::test]
async fn each_range_rule_applies_and_skipping_never_fails_the_job() {
    let app = TestApp::spawn().await;
    let mut template = fixtures::sample_template(app.db_version().await);
    template.access_numbers = serde_json::from_value(json!([
        {"number": "1000", "count": 10, "media": "VOICE"},   // mapped to 5000: free -> created
        {"number": "2000", "count": 10, "media": "VOICE"},   // identical unassigned range exists -> assigned
        {"number": "3000", "count": 10, "media": "VOICE"},   // identical range owned by another tenant -> skipped
        {"number": "4000", "count": 10, "media": "VOICE"},   // overlaps an unassigned range -> skipped
        {"number": "6000", "count": 10, "media": "CHAT"},    // overlaps another tenant's range -> skipped
        {"number": "70000", "count": 10, "media": "VOICE"}   // another digit length never overlaps 7000..
    ]))
    .unwrap();
    let url = app.templates.put("numbers.zip", template.write());

    let other = app.tenant_without_ranges().await;
    insert_range(&app, "2000", 10, None).await;
    insert_range(&app, "3000", 10, Some(&other)).await;
    insert_range(&app, "4005", 10, None).await;
    insert_range(&app, "6009", 1, Some(&other)).await;
    insert_range(&app, "7000", 10, None).await;

    let tenant = fixtures::tenant_url();
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({"1000": "5000"});
    let job = app.create_and_wait(&tenant, &body).await;
    assert_eq!(job["code"], 200, "{job}");
    assert_eq!(
        job["skippedAccessNumbers"],
        json!([
            {"number": "3000", "count": 10, "reason": "assignedToOtherTenant"},
            {"number": "4000", "count": 10, "reason": "overlapsExistingRange"},
            {"number": "6000", "count": 10, "reason": "overlapsExistingRange"}
        ])
    );
    let mine = ranges_of(&app, &tenant).await;
    assert_eq!(
        mine,
        vec![
            ("2000".to_owned(), 10),
            ("5000".to_owned(), 10),
            ("70000".to_owned(), 10)
        ]
    );
    let all = ranges(&app, None).await;
    assert!(
        all.contains(&("4005".to_owned(), 10, Value::Null)),
        "the overlapped unassigned range stays unassigned"
    );
    assert!(
        all.contains(&("3000".to_owned(), 10, json!(other))),
        "another tenant's range is untouched"
    );
    assert!(
        !all.iter().any(|(n, ..)| n == "1000"),
        "a mapped range does not keep its template number"
    );
    app.stop().await;
}

/// The rules when no range of the plan needs placing alone (no identical unassigned range,
/// nothing being changed): the plan's one statement decides them all.
#[tokio::test]
async fn the_plans_one_statement_applies_each_rule() {
    let app = TestApp::spawn().await;
    let other = app.tenant_without_ranges().await;
    insert_range(&app, "3000", 10, Some(&other)).await;
    insert_range(&app, "4005", 10, None).await;
    insert_range(&app, "6009", 1, Some(&other)).await;
    insert_range(&app, "7000", 10, None).await;

    let tenant = fixtures::tenant_url();
    let job = create_with_ranges(
        &app,
        &tenant,
        json!([
            {"number": "1000", "count": 10, "media": "VOICE"},  // free -> created
            {"number": "3000", "count": 10, "media": "VOICE"},  // another tenant's -> skipped
            {"number": "4000", "count": 10, "media": "VOICE"},  // overlaps an unassigned range
            {"number": "6000", "count": 10, "media": "CHAT"},   // overlaps another tenant's range
            {"number": "70000", "count": 10, "media": "VOICE"}  // another digit length: created
        ]),
    )
    .await;
    let job = succeeded(&app, &job).await;
    assert_eq!(
        job["skippedAccessNumbers"],
        json!([
            {"number": "3000", "count": 10, "reason": "assignedToOtherTenant"},
            {"number": "4000", "count": 10, "reason": "overlapsExistingRange"},
            {"number": "6000", "count": 10, "reason": "overlapsExistingRange"}
        ])
    );
    let mine = ranges_of(&app, &tenant).await;
    assert_eq!(
        mine,
        vec![("1000".to_owned(), 10), ("70000".to_owned(), 10)]
    );
    let all = ranges(&app, None).await;
    assert!(all.contains(&("4005".to_owned(), 10, Value::Null)));
    assert!(all.contains(&("3000".to_owned(), 10, json!(other))));
    app.stop().await;
}

/// Every create from a template whose ranges another tenant owns skips them; were the skip to
/// lock those ranges until its commit, such creates would commit one at a time.
#[tokio::test]
async fn skipping_another_tenants_range_waits_for_no_lock_on_it() {
    let app = TestApp::spawn().await;
    let other = app.tenant_without_ranges().await;
    insert_range(&app, "3000", 10, Some(&other)).await;

    // Another transaction holds the range's row, as a concurrent import placing it would.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM access_numbers WHERE number = '3000' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut template = fixtures::sample_template(app.db_version().await);
    template.access_numbers =
        serde_json::from_value(json!([{"number": "3000", "count": 10, "media": "VOICE"}])).unwrap();
    let url = app.templates.put("taken.zip", template.write());
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({});
    let r = app.create(&fixtures::tenant_url(), &body).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job = app
        .wait_job_within(
            job["jobId"].as_str().unwrap(),
            std::time::Duration::from_secs(20),
        )
        .await;
    assert_eq!(job["code"], 200, "{job}");
    assert_eq!(
        job["skippedAccessNumbers"],
        json!([{"number": "3000", "count": 10, "reason": "assignedToOtherTenant"}])
    );
    holder.rollback().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn overlapping_ranges_are_impossible_in_the_database_itself() {
    let app = TestApp::without_workers().await;
    insert_range(&app, "4155550100", 100, None).await;
    for (number, count) in [("4155550199", 1), ("4155550000", 101), ("4155550150", 10)] {
        let err = sqlx::query(
            "INSERT INTO access_numbers (number, count, media) VALUES ($1, $2, 'VOICE')",
        )
        .bind(number)
        .bind(count)
        .execute(&app.db)
        .await
        .unwrap_err();
        assert_eq!(
            err.as_database_error().unwrap().constraint(),
            Some("access_numbers_no_overlap"),
            "{number} x {count}"
        );
    }
    // Adjacent ranges and other digit lengths are fine.
    insert_range(&app, "4155550200", 5, None).await;
    insert_range(&app, "04155550100", 5, None).await;
    app.stop().await;
}

#[tokio::test]
async fn the_range_listing_is_paged_through_link_headers_in_number_order() {
    let app = TestApp::without_workers().await;
    for n in ["99", "7000", "20", "100", "10", "30"] {
        insert_range(&app, n, 1, None).await;
    }
    let mut seen = Vec::new();
    let mut next = Some(app.url("/configapi/v2/accessnumbers?limit=4"));
    let mut pages = 0;
    while let Some(url) = next.take() {
        let r = app.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        next = r.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            assert!(l.ends_with(">; rel=\"next\""), "{l}");
            app.url(&l[1..l.find('>').unwrap()])
        });
        let page: Vec<Value> = r.json().await.unwrap();
        assert!(page.len() <= 4);
        seen.extend(
            page.iter()
                .map(|r| r["number"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        assert!(pages <= 3, "the listing ends");
    }
    // Shorter numbers first, then by first number.
    assert_eq!(seen, ["10", "20", "30", "99", "100", "7000"]);
    assert_eq!(pages, 2);
    let (status, _) = app.get_json("/configapi/v2/accessnumbers?cursor=zzz").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/configapi/v2/accessnumbers?limit=0").await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn without_a_limit_the_listing_is_every_range_in_one_array() {
    let app = TestApp::without_workers().await;
    let (status, empty) = app.get_json("/configapi/v2/accessnumbers").await;
    assert_eq!((status, empty), (200, json!([])));
    // More than two of the pages it is read in.
    sqlx::query(
        "INSERT INTO access_numbers (number, count, media)
         SELECT '7' || lpad(g::text, 5, '0'), 1, 'voice' FROM generate_series(1, 2500) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    insert_range(&app, "42", 1, None).await;
    let r = app
        .http
        .get(app.url("/configapi/v2/accessnumbers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("link").is_none(), "no page was asked for");
    let all: Vec<Value> = r.json().await.unwrap();
    let numbers: Vec<&str> = all.iter().map(|r| r["number"].as_str().unwrap()).collect();
    let expected: Vec<String> = std::iter::once("42".to_owned())
        .chain((1..=2500).map(|g| format!("7{g:05}")))
        .collect();
    assert_eq!(numbers, expected, "every range, in number order, each once");
    assert_eq!(
        all[1],
        json!({"number": "700001", "count": 1, "tenantUrl": null, "media": "voice"})
    );
    app.stop().await;
}

/// Job `id` once it ended, which must be with 200.
async fn succeeded(app: &TestApp, id: &str) -> Value {
    let job = app
        .wait_job_within(id, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(job["code"], 200, "{job}");
    job
}

/// Ranges of one create that overlap each other (in the template, or made identical by its
/// `numberMap`): the first of them is placed, the others overlap it, as when they are placed
/// one at a time.
#[tokio::test]
async fn ranges_of_one_create_that_overlap_each_other_keep_only_the_first() {
    let app = TestApp::spawn().await;
    let mut template = fixtures::sample_template(app.db_version().await);
    template.access_numbers = serde_json::from_value(json!([
        {"number": "1000", "count": 10, "media": "VOICE"},
        {"number": "1005", "count": 10, "media": "VOICE"},
        {"number": "2000", "count": 5, "media": "VOICE"},
        {"number": "3000", "count": 5, "media": "CHAT"}
    ]))
    .unwrap();
    let url = app.templates.put("overlapping.zip", template.write());
    let tenant = fixtures::tenant_url();
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({"3000": "2000"});
    let job = app.create_and_wait(&tenant, &body).await;
    assert_eq!(job["code"], 200, "{job}");
    assert_eq!(
        job["skippedAccessNumbers"],
        json!([
            {"number": "1005", "count": 10, "reason": "overlapsExistingRange"},
            {"number": "2000", "count": 5, "reason": "overlapsExistingRange"}
        ])
    );
    let mine = ranges_of(&app, &tenant).await;
    assert_eq!(mine, vec![("1000".to_owned(), 10), ("2000".to_owned(), 5)]);
    app.stop().await;
}

/// Waits until a statement of the job's write whose text starts with `statement` waits for
/// another transaction.
async fn until_the_write_waits(app: &TestApp, statement: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity
                            WHERE datname = current_database()
                              AND wait_event = 'transactionid'
                              AND ltrim(query) LIKE $1 || '%')",
        )
        .bind(statement)
        .fetch_one(&app.db)
        .await
        .unwrap();
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write never waited in {statement}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Starts a create of a template with `ranges` (numbers kept); its job id.
async fn create_with_ranges(app: &TestApp, tenant: &str, ranges: Value) -> String {
    let mut template = fixtures::sample_template(app.db_version().await);
    template.access_numbers = serde_json::from_value(ranges).unwrap();
    let url = app.templates.put("ranges.zip", template.write());
    let mut body = fixtures::create_body(&url);
    body["numberMap"] = json!({});
    let r = app.create(tenant, &body).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    job["jobId"].as_str().unwrap().to_owned()
}

/// The plan's ranges are read as last committed; one that another transaction inserts after
/// that read is decided again once that transaction ends (here: it commits, so the range is
/// the other tenant's).
#[tokio::test]
async fn a_range_another_transaction_inserts_meanwhile_is_decided_on_what_it_committed() {
    let app = TestApp::spawn().await;
    let other = app.tenant_without_ranges().await;

    let mut writer = app.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO access_numbers (number, count, media, tenant_id)
         VALUES ('1000', 10, 'VOICE', (SELECT id FROM tenants WHERE url = $1))",
    )
    .bind(&other)
    .execute(&mut *writer)
    .await
    .unwrap();

    let tenant = fixtures::tenant_url();
    let job = create_with_ranges(
        &app,
        &tenant,
        json!([
            {"number": "1000", "count": 10, "media": "VOICE"},
            {"number": "3000", "count": 10, "media": "VOICE"}
        ]),
    )
    .await;
    // The plan's one statement, inserting what it saw free, waits for the other insert.
    until_the_write_waits(&app, "WITH offered").await;
    writer.commit().await.unwrap();

    let job = succeeded(&app, &job).await;
    assert_eq!(
        job["skippedAccessNumbers"],
        json!([{"number": "1000", "count": 10, "reason": "assignedToOtherTenant"}])
    );
    let mine = ranges_of(&app, &tenant).await;
    assert_eq!(mine, vec![("3000".to_owned(), 10)]);
    assert!(
        ranges(&app, None)
            .await
            .contains(&("1000".to_owned(), 10, json!(other)))
    );
    app.stop().await;
}

/// A range that another transaction is releasing (unassigning or deleting, as removing a
/// tenant or a range does) is decided once that transaction ends, as when the ranges were
/// placed one at a time: released, it is the new tenant's; it is not skipped as still taken.
#[tokio::test]
async fn a_range_another_transaction_is_releasing_is_decided_once_it_ends() {
    let app = TestApp::spawn().await;
    let other = app.tenant_without_ranges().await;
    insert_range(&app, "2000", 10, Some(&other)).await;
    insert_range(&app, "4000", 10, Some(&other)).await;

    let mut releaser = app.db.begin().await.unwrap();
    sqlx::query("UPDATE access_numbers SET tenant_id = NULL WHERE number = '2000'")
        .execute(&mut *releaser)
        .await
        .unwrap();
    sqlx::query("DELETE FROM access_numbers WHERE number = '4000'")
        .execute(&mut *releaser)
        .await
        .unwrap();

    let tenant = fixtures::tenant_url();
    let job = create_with_ranges(
        &app,
        &tenant,
        json!([
            {"number": "2000", "count": 10, "media": "VOICE"},
            {"number": "4000", "count": 10, "media": "VOICE"}
        ]),
    )
    .await;
    // Placed one at a time: the insert waits for the release.
    until_the_write_waits(&app, "INSERT INTO access_numbers").await;
    releaser.commit().await.unwrap();

    let job = succeeded(&app, &job).await;
    assert_eq!(job["skippedAccessNumbers"], json!([]), "{job}");
    let mine = ranges_of(&app, &tenant).await;
    assert_eq!(mine, vec![("2000".to_owned(), 10), ("4000".to_owned(), 10)]);
    app.stop().await;
}

/// A range's create locks its tenant's row before its insert, and a tenant's delete locks that
/// row before it touches the tenant's ranges: a create whose range overlaps one the delete
/// removes and the delete wait for one another in one order, never in a cycle. (The delete
/// used to remove the ranges first: then it waited for the create's row lock while the
/// create's insert waited for the removed range, and PostgreSQL broke the deadlock by failing
/// one of them.)
#[tokio::test]
async fn a_range_create_and_its_tenants_delete_never_deadlock() {
    use provisioner_shared::db::{access_numbers, tenants};
    let app = TestApp::without_workers().await;
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (id, url, name, sip_domain)
         VALUES (gen_random_uuid(), 'acme.example.com', 'Acme', 'acme.example.com') RETURNING id",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    insert_range(&app, "4155550100", 100, Some("acme.example.com")).await;
    let mut create = app.db.begin().await.unwrap();
    let held = access_numbers::holding_locked(&mut create, id)
        .await
        .unwrap();
    assert_eq!(held.map(|h| (h.ranges, h.numbers)), Some((1, 100)));
    let db = app.db.clone();
    let delete = tokio::spawn(async move {
        let mut tx = db.begin().await?;
        tenants::delete(&mut tx, id, tenants::NumbersOnDelete::Delete).await?;
        tx.commit().await
    });
    // The delete waits for the create's lock on the tenant's row.
    provisioner_tests::eventually(std::time::Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    // The create's overlapping range: refused as an overlap, without waiting for the delete.
    let created = access_numbers::create(&mut create, "4155550150", 10, "VOICE", id)
        .await
        .unwrap();
    assert!(!created);
    create.commit().await.unwrap();
    delete
        .await
        .unwrap()
        .expect("the delete goes through once the create ends");
    assert_eq!(app.count("SELECT count(*) FROM access_numbers").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM tenants").await, 0);
    app.stop().await;
}
