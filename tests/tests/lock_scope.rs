//! A job's `lockTimeout` bounds its wait for the advisory lock only: locks the import meets
//! after it (a row another session holds) are waited for, however small the timeout, and
//! however much of it the wait for the advisory lock left.

use std::time::Duration;

use provisioner_tests::{TestApp, eventually, fixtures};
use serde_json::{Value, json};

/// Sessions of this test's database waiting for a row or transaction lock (not an advisory one).
async fn row_lock_waiters(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND wait_event IN ('transactionid', 'tuple', 'relation')",
    )
    .await
}

#[tokio::test]
async fn an_import_waits_for_a_row_lock_longer_than_its_lock_timeout_and_succeeds() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    // The third import first waits for its advisory lock (a session of the test holds it),
    // so it sets the wait's bound on its session: that bound must not reach the row lock.
    for (lock_timeout, number, other, advisory_held) in [
        (0, "4155551000", "4155551100", false),
        (1, "4155552000", "4155552100", false),
        (3, "4155553000", "4155553100", true),
    ] {
        // The very range the template's first range maps to, unassigned: the import assigns
        // it, so it must lock its row, which a session of the test holds.
        sqlx::query("INSERT INTO access_numbers (number, count, media) VALUES ($1, 10, 'VOICE')")
            .bind(number)
            .execute(&app.db)
            .await
            .unwrap();
        let mut holder = app.db.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM access_numbers WHERE number = $1 FOR UPDATE")
            .bind(number)
            .execute(&mut *holder)
            .await
            .unwrap();
        let tenant = fixtures::tenant_url();
        let advisory = if advisory_held {
            Some(app.hold_lock(&format!("provisioner:tenant:{tenant}")).await)
        } else {
            None
        };
        let mut body = fixtures::create_body(&url);
        body["numberMap"] = json!({"0000000000": number, "0000000100": other});
        body["lockTimeout"] = json!(lock_timeout);
        let id = app.submit(&tenant, &body).await;
        if let Some(advisory) = advisory {
            eventually(Duration::from_secs(20), || async {
                (app.advisory_locks().await == (1, 1)).then_some(())
            })
            .await;
            advisory.rollback().await.unwrap();
        }
        eventually(Duration::from_secs(20), || async {
            (row_lock_waiters(&app).await == 1).then_some(())
        })
        .await;
        // Held well past the job's lockTimeout.
        tokio::time::sleep(Duration::from_secs(lock_timeout + 2)).await;
        assert_eq!(row_lock_waiters(&app).await, 1, "the import still waits");
        holder.commit().await.unwrap();
        let job = app.wait_job(&id).await;
        assert_eq!(
            (
                job["code"].as_i64(),
                job["attempts"].as_i64(),
                &job["skippedAccessNumbers"]
            ),
            (Some(200), Some(1), &json!([])),
            "lockTimeout={lock_timeout}: {job}"
        );
        let (_, ranges) = app
            .get_json(&format!("/configapi/v2/accessnumbers?tenantUrl={tenant}"))
            .await;
        let numbers: Vec<&str> = ranges
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r: &Value| r["number"].as_str())
            .collect();
        assert!(
            numbers.contains(&number),
            "the waited-for range went to the tenant: {ranges}"
        );
    }
    app.stop().await;
}
