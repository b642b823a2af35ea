//! A worker's claim and end write the row and its event in one statement, the event built from
//! the row as it was read or held: these show that the statement writes only when the row is
//! still what it was read as, and that the row written is the one the event announces.

use std::time::Duration;

use provisioner_shared::db::{self, jobs::Ending};
use provisioner_tests::{TestApp, batches, eventually, fixtures};
use serde_json::Value;
use uuid::Uuid;

async fn job_row(app: &TestApp, id: Uuid) -> db::jobs::JobRow {
    db::jobs::find(&app.db, id, None)
        .await
        .unwrap()
        .expect("the job exists")
}

/// What `GET /jobs/{id}` answers, as JSON.
async fn shown(app: &TestApp, id: Uuid) -> Value {
    let (status, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(status, 200);
    job
}

/// A system without workers, and the id of one queued create.
async fn one_queued_job() -> (TestApp, Uuid) {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await
        .parse()
        .unwrap();
    (app, id)
}

/// Returns once one session of the app's database waits for a lock.
async fn one_waits_for_a_lock(app: &TestApp) {
    eventually(Duration::from_secs(10), || async {
        let waiting = app
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
        (waiting == 1).then_some(())
    })
    .await;
}

/// Leases as long as the tests need.
const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_claim_from_a_read_the_job_has_moved_past_writes_nothing() {
    let (app, id) = one_queued_job().await;
    let stale = job_row(&app, id).await;

    // Claimed, then queued again after a transient failure: queued, as it was read, but two
    // versions on.
    let first = Uuid::new_v4();
    let claimed = db::jobs::claim(&app.db, &stale, first, LEASE)
        .await
        .unwrap()
        .expect("the first claim takes the job");
    assert_eq!(
        serde_json::to_value(claimed.view()).unwrap(),
        shown(&app, id).await,
        "the claim's row is the one written"
    );
    let mut tx = app.db.begin().await.unwrap();
    db::jobs::retry_later(&mut tx, id, first, Duration::ZERO, 4)
        .await
        .unwrap()
        .expect("the lease holds");
    tx.commit().await.unwrap();

    let late = Uuid::new_v4();
    let claimed_late = db::jobs::claim(&app.db, &stale, late, LEASE).await.unwrap();
    assert!(
        claimed_late.is_none(),
        "a claim from the old read is refused"
    );
    let now = job_row(&app, id).await;
    assert_eq!(
        (
            now.status.as_str(),
            now.version,
            now.attempts,
            now.lease_token
        ),
        ("queued", 3, 1, None),
        "the refused claim wrote nothing"
    );

    // Read again, it is claimed for its second attempt, and the row is what its event says.
    let second = db::jobs::claim(&app.db, &now, late, LEASE)
        .await
        .unwrap()
        .expect("a fresh read claims it");
    assert_eq!((second.version, second.attempts), (4, 2));
    assert_eq!(
        serde_json::to_value(second.view()).unwrap(),
        shown(&app, id).await
    );
    app.stop().await;
}

#[tokio::test]
async fn an_end_under_a_lease_taken_over_writes_nothing() {
    let (app, id) = one_queued_job().await;
    let read = job_row(&app, id).await;
    let held = db::jobs::claim(&app.db, &read, Uuid::new_v4(), LEASE)
        .await
        .unwrap()
        .expect("claimed");
    // Its lease ran out and another worker took it over.
    sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let expired = db::jobs::lock_expired(&mut tx, id)
        .await
        .unwrap()
        .expect("the lease ran out");
    db::jobs::retry_later(&mut tx, id, expired.lease_token.unwrap(), Duration::ZERO, 4)
        .await
        .unwrap()
        .expect("taken back");
    tx.commit().await.unwrap();
    let taken = job_row(&app, id).await;
    let other = db::jobs::claim(&app.db, &taken, Uuid::new_v4(), LEASE)
        .await
        .unwrap()
        .expect("the other worker claims it");

    let failed = Ending::Failed {
        code: 500,
        error: provisioner_shared::domain::JobError {
            title: "Internal Server Error".into(),
            detail: "late".into(),
        },
    };
    let mut tx = app.db.begin().await.unwrap();
    let ended = db::jobs::finish(&mut tx, &held, &failed).await.unwrap();
    tx.commit().await.unwrap();
    assert!(ended.is_none(), "the first holder's end is refused");
    assert_eq!(
        serde_json::to_value(other.view()).unwrap(),
        shown(&app, id).await,
        "the job is the second holder's, untouched"
    );

    // Its holder ends it, and the row is what the end's event says.
    let mut tx = app.db.begin().await.unwrap();
    let ended = db::jobs::finish(&mut tx, &other, &failed)
        .await
        .unwrap()
        .expect("the holder ends it");
    tx.commit().await.unwrap();
    assert_eq!(ended.status.as_str(), "failed");
    assert_eq!(
        serde_json::to_value(ended.view()).unwrap(),
        shown(&app, id).await
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claim_with_its_end_writes_only_a_job_still_queued_as_read() {
    let (app, id) = one_queued_job().await;
    let read = job_row(&app, id).await;
    let failed = Ending::Failed {
        code: 409,
        error: provisioner_shared::domain::JobError {
            title: "Conflict".into(),
            detail: "taken".into(),
        },
    };

    // Another worker claimed it meanwhile: the read is stale, nothing is written.
    let other = db::jobs::claim(&app.db, &read, Uuid::new_v4(), LEASE)
        .await
        .unwrap()
        .expect("claimed");
    let mut tx = app.db.begin().await.unwrap();
    let ended = db::jobs::claim_and_finish(&mut tx, &read, &failed)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        ended.is_none(),
        "a claim and end from a stale read is refused"
    );
    assert_eq!(
        serde_json::to_value(other.view()).unwrap(),
        shown(&app, id).await,
        "the job is the other worker's, untouched"
    );

    // Queued again after a transient failure, it is queued as it was read, but two versions on:
    // still a stale read.
    let mut tx = app.db.begin().await.unwrap();
    db::jobs::retry_later(&mut tx, id, other.lease_token.unwrap(), Duration::ZERO, 4)
        .await
        .unwrap()
        .expect("the holder queues it again");
    tx.commit().await.unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let ended = db::jobs::claim_and_finish(&mut tx, &read, &failed)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(ended.is_none(), "a read of an earlier version is refused");
    assert_eq!(
        (
            shown(&app, id).await["status"].as_str(),
            job_row(&app, id).await.version
        ),
        (Some("queued"), 3)
    );

    // A job still queued as read is claimed and ended at once: the row is what the end's event
    // says, one attempt on, two versions on.
    app.stop().await;
    let (app, id) = one_queued_job().await;
    let read = job_row(&app, id).await;
    let mut tx = app.db.begin().await.unwrap();
    let ended = db::jobs::claim_and_finish(&mut tx, &read, &failed)
        .await
        .unwrap()
        .expect("written");
    tx.commit().await.unwrap();
    assert_eq!(
        (ended.status.as_str(), ended.version, ended.attempts),
        ("failed", 3, 1)
    );
    assert!(ended.started_at.is_some() && ended.finished_at.is_some());
    assert_eq!(
        serde_json::to_value(ended.view()).unwrap(),
        shown(&app, id).await
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claim_while_a_try_holds_the_job_waits_for_it_and_then_finds_the_job_ended() {
    let (app, id) = one_queued_job().await;
    let read = job_row(&app, id).await;
    let mut try_tx = app.db.begin().await.unwrap();
    let locked = db::locks::try_for_queued_job(
        &mut try_tx,
        id,
        read.version,
        db::locks::LockKey::Tenant(&read.tenant_url),
    )
    .await
    .unwrap();
    assert_eq!(
        locked,
        Some(true),
        "the row and the import lock are the try's"
    );

    // Another copy of the job is claimed meanwhile: the claim waits for the try.
    let claim = tokio::spawn({
        let (pool, read) = (app.db.clone(), read.clone());
        async move {
            db::jobs::claim(&pool, &read, Uuid::new_v4(), LEASE)
                .await
                .unwrap()
        }
    });
    one_waits_for_a_lock(&app).await;
    assert!(!claim.is_finished(), "the claim waits for the try");
    db::jobs::claim_and_finish(&mut try_tx, &read, &conflict())
        .await
        .unwrap()
        .expect("the try ends the job");
    try_tx.commit().await.unwrap();
    assert!(
        claim.await.unwrap().is_none(),
        "the claim finds the job no longer queued"
    );
    assert_eq!(shown(&app, id).await["status"], "failed");

    // A second try from the same read finds nothing to lock.
    let mut tx = app.db.begin().await.unwrap();
    let again = db::locks::try_for_queued_job(
        &mut tx,
        id,
        read.version,
        db::locks::LockKey::Tenant(&read.tenant_url),
    )
    .await
    .unwrap();
    assert_eq!(again, None);
    tx.rollback().await.unwrap();
    app.stop().await;
}

/// A batch of `n` items of a stored template, released to the broker (no worker runs): its id
/// and its items' jobs, in order.
async fn released_batch(app: &TestApp, n: usize) -> (String, Vec<db::jobs::JobRow>) {
    let stored = app.store_sample_template().await;
    let items: Vec<Value> = (0..n)
        .map(|_| {
            let mut body = fixtures::create_body_by_id(&stored);
            body["tenantUrl"] = serde_json::json!(fixtures::tenant_url());
            body
        })
        .collect();
    let batch = batches::submit(app, &items).await["batchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tx = app.db.begin().await.unwrap();
    assert_eq!(db::batches::release(&mut tx, 100, 4).await.unwrap(), n);
    tx.commit().await.unwrap();
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1::uuid ORDER BY batch_item")
            .bind(&batch)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(job_row(app, id).await);
    }
    (batch, jobs)
}

/// The id of the transaction `conn` is in.
async fn transaction_id(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A failure that ends a job for good.
fn conflict() -> Ending {
    Ending::Failed {
        code: 409,
        error: provisioner_shared::domain::JobError {
            title: "Conflict".into(),
            detail: "taken".into(),
        },
    }
}

/// An item's end in one write reads its batch's open items under lock: while another item is
/// open the end does not look at whether the batch is done (one update of the batch's row, its
/// counts, where there were two), and of two last items ending at once the second, which waits
/// for the first's lock, reads the count the first left and ends the batch.
#[tokio::test]
async fn only_an_items_end_that_may_be_its_batchs_last_looks_at_whether_the_batch_is_done() {
    let app = TestApp::without_workers().await;
    let (batch, jobs) = released_batch(&app, 3).await;
    for sql in [
        "CREATE TABLE batch_updates (txid bigint)",
        "CREATE FUNCTION batch_updated() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO batch_updates VALUES (txid_current());
             RETURN NULL;
         END $$",
        "CREATE TRIGGER batch_updated AFTER UPDATE ON batches
         FOR EACH STATEMENT EXECUTE FUNCTION batch_updated()",
    ] {
        sqlx::query(sql).execute(&app.db).await.unwrap();
    }
    let updates = |txid: i64| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM batch_updates WHERE txid = $1")
                .bind(txid)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM batches WHERE id = $1::uuid")
            .bind(&batch)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };

    // Two others open: the end counts itself, and that is all.
    let mut tx = app.db.begin().await.unwrap();
    let txid = transaction_id(&mut tx).await;
    db::jobs::claim_and_finish(&mut tx, &jobs[0], &conflict())
        .await
        .unwrap()
        .expect("the first item ends");
    tx.commit().await.unwrap();
    assert_eq!(updates(txid).await, 1, "the counts only");
    assert_eq!(status().await, "running");

    // The last two at once: the first holds the batch's row until it commits; the second waits
    // for it, then finds itself the last.
    let mut first = app.db.begin().await.unwrap();
    let first_txid = transaction_id(&mut first).await;
    db::jobs::claim_and_finish(&mut first, &jobs[1], &conflict())
        .await
        .unwrap()
        .expect("the second item ends");
    let second = tokio::spawn({
        let (pool, job) = (app.db.clone(), jobs[2].clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let txid = transaction_id(&mut tx).await;
            let ended = db::jobs::claim_and_finish(&mut tx, &job, &conflict())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (txid, ended.is_some())
        }
    });
    one_waits_for_a_lock(&app).await;
    first.commit().await.unwrap();
    let (second_txid, ended) = second.await.unwrap();
    assert!(ended, "the third item ends");
    assert_eq!(
        updates(first_txid).await,
        1,
        "another was open: the counts only"
    );
    assert_eq!(
        updates(second_txid).await,
        2,
        "the counts, then the batch's end"
    );
    assert_eq!(status().await, "completed");
    app.stop().await;
}

/// The dispatcher's round (its counts and clients read together, each client's turn marked with
/// its release): with a window of one, nothing more goes out while an item is in flight, and
/// each item that ends lets the least recently served client's next item out, so two clients'
/// batches alternate.
#[tokio::test]
async fn the_dispatcher_keeps_its_window_and_serves_the_least_recently_served_client_first() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t.zip").await;
    let b = batches::client(&app, "b", &["tenants:read", "tenants:write"]).await;
    for http in [&app.http, &b] {
        let items = batches::ndjson(&batches::items(3, &template));
        let r = batches::post(&app, http, "application/x-ndjson", items).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    let release = || async {
        let mut tx = app.db.begin().await.unwrap();
        let n = db::batches::release(&mut tx, 1, 4).await.unwrap();
        tx.commit().await.unwrap();
        n
    };
    let mut served = Vec::new();
    for _ in 0..6 {
        assert_eq!(release().await, 1, "one place in the window");
        assert_eq!(release().await, 0, "the window is full");
        let (id, client): (Uuid, String) = sqlx::query_as(
            "SELECT id, client_id FROM jobs WHERE released_at IS NOT NULL AND finished_at IS NULL",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        served.push(client);
        let mut tx = app.db.begin().await.unwrap();
        db::jobs::claim_and_finish(&mut tx, &job_row(&app, id).await, &conflict())
            .await
            .unwrap()
            .expect("the released item ends");
        tx.commit().await.unwrap();
    }
    assert_eq!(release().await, 0, "nothing is left");
    // Neither served yet: by client id, then turn about.
    assert_eq!(
        served,
        ["b", "test-admin", "b", "test-admin", "b", "test-admin"]
    );
    app.stop().await;
}

/// A cancel that finds the job running while its hand-back to the queue (a retry) is being
/// written waits for that write and cancels the job, queued again; it is not refused on a
/// state that is already being left.
#[tokio::test]
async fn a_cancel_beside_a_hand_back_to_the_queue_cancels_the_job() {
    let (app, id) = one_queued_job().await;
    let read = job_row(&app, id).await;
    let lease = Uuid::new_v4();
    db::jobs::claim(&app.db, &read, lease, LEASE)
        .await
        .unwrap()
        .expect("the claim takes the job");
    let mut hand_back = app.db.begin().await.unwrap();
    db::jobs::retry_later(&mut hand_back, id, lease, Duration::ZERO, 4)
        .await
        .unwrap()
        .expect("the lease holds");

    let mut cancel = tokio::spawn({
        let request = app
            .http
            .delete(app.url(&format!("/configapi/v2/jobs/{id}")));
        async move { request.send().await.unwrap() }
    });
    tokio::select! {
        answered = &mut cancel => {
            let answer = answered.unwrap();
            panic!(
                "the cancel answered {} ({}) without waiting for the hand-back",
                answer.status(),
                answer.text().await.unwrap()
            );
        }
        () = one_waits_for_a_lock(&app) => {}
    }
    hand_back.commit().await.unwrap();
    let answer = cancel.await.unwrap();
    assert_eq!(answer.status(), 200);
    let cancelled: Value = answer.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(shown(&app, id).await["status"], "cancelled");
    app.stop().await;
}
