//! A worker's claim and end write the row and its event in one statement, the event built from
//! the row as it was read or held: these show that the statement writes only when the row is
//! still what it was read as, and that the row written is the one the event announces.

use std::time::Duration;

use provisioner_shared::db::{self, jobs::Ending};
use provisioner_tests::{TestApp, eventually, fixtures};
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
    db::jobs::retry_later(&mut tx, id, first, Duration::ZERO)
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
    db::jobs::retry_later(&mut tx, id, expired.lease_token.unwrap(), Duration::ZERO)
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
    db::jobs::retry_later(&mut tx, id, other.lease_token.unwrap(), Duration::ZERO)
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
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        locked.map(|t| t.locked),
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
    assert!(!claim.is_finished(), "the claim waits for the try");
    let failed = Ending::Failed {
        code: 409,
        error: provisioner_shared::domain::JobError {
            title: "Conflict".into(),
            detail: "taken".into(),
        },
    };
    db::jobs::claim_and_finish(&mut try_tx, &read, &failed)
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
        None,
    )
    .await
    .unwrap();
    assert_eq!(again, None);
    tx.rollback().await.unwrap();
    app.stop().await;
}
