//! Retention: ended jobs, ended batches with their jobs, and long-expired tokens are purged by
//! the workers' sweeper once they outlived `PROVISIONER_JOB_RETENTION`, in chunks; what is
//! younger, unfinished or still needed stays.

use std::time::Duration;

use provisioner_tests::{BOOTSTRAP_ID, Options, TestApp, batches, eventually, fixtures};
use serde_json::json;

const DAY: &str = "86400";

/// A system whose worker sweeps every second with a retention of a day.
async fn retention_app() -> TestApp {
    TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_JOB_RETENTION", DAY.into()),
            ("PROVISIONER_SWEEP_INTERVAL", "1".into()),
            ("PROVISIONER_RECONCILE_AFTER", "3600".into()),
        ],
    })
    .await
}

async fn backdate_job(app: &TestApp, id: &str) {
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 days' WHERE id = $1::uuid")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn what_outlived_its_retention_is_purged_in_chunks_and_the_rest_stays() {
    let mut app = retention_app().await;
    let url = app.serve_sample_template("t").await;

    // Two single jobs that ended: one two days ago (with its idempotency key), one just now.
    let old_key = "old-create";
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .header("idempotency-key", old_key)
        .json(&fixtures::create_body(&url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let old = r.json::<serde_json::Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let young = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    // Two batches that ended: one two days ago, one just now.
    let old_batch = batches::submit(&app, &batches::items(2, &url)).await;
    let young_batch = batches::submit(&app, &batches::items(2, &url)).await;
    let (old_batch, young_batch) = (
        old_batch["batchId"].as_str().unwrap().to_owned(),
        young_batch["batchId"].as_str().unwrap().to_owned(),
    );
    for id in [&old, &young] {
        assert_eq!(app.wait_job(id).await["status"], "succeeded");
    }
    for id in [&old_batch, &young_batch] {
        assert_eq!(
            batches::wait(&app, id, Duration::from_secs(60)).await["status"],
            "completed"
        );
    }
    // Stop the sweeper while the past is rewritten, so nothing goes half-way.
    app.stop_workers().await;
    backdate_job(&app, &old).await;
    sqlx::query("UPDATE batches SET finished_at = now() - interval '2 days' WHERE id = $1::uuid")
        .bind(&old_batch)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET finished_at = now() - interval '2 days' WHERE batch_id = $1::uuid",
    )
    .bind(&old_batch)
    .execute(&app.db)
    .await
    .unwrap();
    // More old endings than one chunk takes, so the purge must go on chunk after chunk.
    let copies = (provisioner_shared::db::retention::CHUNK * 2 + 7) as i32;
    sqlx::query(
        "INSERT INTO jobs SELECT (jsonb_populate_record(j, jsonb_build_object(
             'id', gen_random_uuid(), 'idempotency_key', NULL, 'request_digest', NULL))).*
         FROM jobs j, generate_series(1, $2) WHERE j.id = $1::uuid",
    )
    .bind(&old)
    .bind(copies)
    .execute(&app.db)
    .await
    .unwrap();
    // A job queued thirty days ago and not ended stays whatever its age (no message for it:
    // nothing runs it during the test).
    let queued: String = sqlx::query_scalar(
        "INSERT INTO jobs SELECT (jsonb_populate_record(j, jsonb_build_object(
             'id', gen_random_uuid(), 'idempotency_key', NULL, 'request_digest', NULL,
             'status', 'queued', 'finished_at', NULL, 'code', NULL, 'tenant', NULL,
             'tenant_url', 'still-queued.example.com',
             'created_at', now() - interval '30 days'))).*
         FROM jobs j WHERE j.id = $1::uuid RETURNING id::text",
    )
    .bind(&young)
    .fetch_one(&app.db)
    .await
    .unwrap();
    // Tokens: one expired two days ago goes, one expired an hour ago stays a day.
    for (hash, age) in [("long-expired", "2 days"), ("just-expired", "1 hour")] {
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, client_id, scopes, expires_at)
             VALUES (sha256($1::bytea), $2, '{tenants:read}', now() - $3::interval)",
        )
        .bind(hash.as_bytes())
        .bind(BOOTSTRAP_ID)
        .bind(age)
        .execute(&app.db)
        .await
        .unwrap();
    }
    let old_singles = "SELECT count(*) FROM jobs
                       WHERE batch_id IS NULL AND finished_at < now() - interval '1 day'";
    assert_eq!(app.count(old_singles).await, i64::from(copies) + 1);

    app.start_worker();
    eventually(Duration::from_secs(60), || async {
        let left = app.count(old_singles).await
            + app
                .count(&format!(
                    "SELECT count(*) FROM jobs WHERE batch_id = '{old_batch}'"
                ))
                .await
            + app.count("SELECT count(*) FROM purged_batches").await;
        (left == 0).then_some(())
    })
    .await;

    // Gone: the old job, its idempotency key (the same key now makes a new job), the old
    // batch (its results too), the long-expired token.
    assert_eq!(
        app.get_json(&format!("/configapi/v2/jobs/{old}")).await.0,
        404
    );
    assert_eq!(
        app.get_json(&format!("/configapi/v2/batches/{old_batch}"))
            .await
            .0,
        404
    );
    assert_eq!(
        app.count("SELECT count(*) FROM access_tokens WHERE expires_at < now() - interval '1 day'")
            .await,
        0
    );
    // Kept: the young job and batch with every item, the queued job, the recent token.
    assert_eq!(
        app.get_json(&format!("/configapi/v2/jobs/{young}")).await.1["status"],
        "succeeded"
    );
    assert_eq!(
        app.get_json(&format!("/configapi/v2/jobs/{queued}"))
            .await
            .1["status"],
        "queued"
    );
    let kept = batches::results(&app, &young_batch, "").await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM access_tokens WHERE expires_at < now()")
            .await,
        1
    );
    // The stored counts follow the removals (the figures of /metrics read them).
    let stored: i64 = app
        .count("SELECT coalesce(sum(n), 0)::bigint FROM job_counts")
        .await;
    assert_eq!(stored, app.count("SELECT count(*) FROM jobs").await);
    let again = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .header("idempotency-key", old_key)
        .json(&json!({"tenantName": "x"}))
        .send()
        .await
        .unwrap();
    // A key past retention is free again: the body is judged on its own (here, invalid).
    assert_eq!(again.status(), 400);
    app.stop().await;
}

/// A batch item's job that a retry replaced goes once it was replaced longer ago than the
/// retention, while its batch (ended just now, or retried again and again) and the item's
/// newest job stay; one replaced just now stays, however long ago it ended.
#[tokio::test]
async fn a_retried_batch_items_replaced_job_goes_after_the_retention_without_its_batch() {
    use provisioner_tests::template_server::Route;
    let mut app = retention_app().await;
    // A template URL that answers 404: the items fail at once, every time.
    let missing = app.templates.route(
        "missing.zip",
        Route {
            status: 404,
            body: Default::default(),
            fail_first: 0,
        },
    );
    let batch = batches::submit(&app, &batches::items(2, &missing)).await;
    let batch = batch["batchId"].as_str().unwrap().to_owned();
    let done = batches::wait(&app, &batch, Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["failed"], 2, "{done}");
    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/batches/{batch}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let done = batches::wait(&app, &batch, Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["failed"], 2, "{done}");
    app.stop_workers().await;
    let replaced = format!("SELECT count(*) FROM jobs WHERE batch_id = '{batch}' AND superseded");
    assert_eq!(app.count(&replaced).await, 2);
    // Both ended two days ago; one was replaced two days ago, the other just now.
    sqlx::query(
        "UPDATE jobs SET finished_at = now() - interval '2 days',
                         superseded_at = CASE WHEN batch_item = 0
                                              THEN now() - interval '2 days' ELSE now() END
         WHERE batch_id = $1::uuid AND superseded",
    )
    .bind(&batch)
    .execute(&app.db)
    .await
    .unwrap();

    app.start_worker();
    eventually(Duration::from_secs(60), || async {
        (app.count(&replaced).await == 1).then_some(())
    })
    .await;
    let kept = format!(
        "SELECT count(*) FROM jobs WHERE batch_id = '{batch}' AND superseded AND batch_item = 1"
    );
    assert_eq!(app.count(&kept).await, 1);
    // The batch and each item's newest job stay.
    let results = batches::results(&app, &batch, "").await;
    assert_eq!(results.len(), 2, "{results:?}");
    for item in &results {
        let (status, job) = app
            .get_json(&format!(
                "/configapi/v2/jobs/{}",
                item["jobId"].as_str().unwrap()
            ))
            .await;
        assert_eq!((status, job["status"].as_str()), (200, Some("failed")));
    }
    app.stop().await;
}
