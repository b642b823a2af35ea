//! A worker's claim and end write the row and its event in one statement, the event built from
//! the row as it was read or held: these show that the statement writes only when the row is
//! still what it was read as, and that the row written is the one the event announces; and that
//! a worker's claims made at about the same time are written together.

use std::time::Duration;

use futures_util::FutureExt;

use provisioner_shared::db::{
    self,
    jobs::{Ending, JobRow, Locked},
};
use provisioner_tests::{TestApp, events::EventTap, eventually, fixtures};
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
    let (app, ids) = queued_jobs(1).await;
    (app, ids[0])
}

/// A system without workers, and the ids of `n` queued creates.
async fn queued_jobs(n: usize) -> (TestApp, Vec<Uuid>) {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let body = fixtures::create_body(&url);
        ids.push(
            app.submit(&fixtures::tenant_url(), &body)
                .await
                .parse()
                .unwrap(),
        );
    }
    (app, ids)
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
async fn a_group_claim_takes_the_jobs_still_as_read_once_each_and_waits_for_no_lock() {
    let (app, ids) = queued_jobs(4).await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let mut reads = Vec::new();
    for id in &ids {
        reads.push(job_row(&app, *id).await);
    }
    let [a, b, c, d] = [ids[0], ids[1], ids[2], ids[3]];
    // `b` moved on since it was read: another worker claimed it.
    let other = Uuid::new_v4();
    db::jobs::claim(&app.db, &reads[1], other, LEASE)
        .await
        .unwrap()
        .expect("the other worker claims b");
    // `c` is locked by a transaction that goes on.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(c)
        .execute(&mut *holder)
        .await
        .unwrap();

    // `d` is asked for twice, as two deliveries of its message would.
    let tokens: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let wanted: Vec<(&JobRow, Uuid)> = vec![
        (&reads[0], tokens[0]),
        (&reads[1], tokens[1]),
        (&reads[2], tokens[2]),
        (&reads[3], tokens[3]),
        (&reads[3], tokens[4]),
    ];
    let claimed = tokio::time::timeout(
        Duration::from_secs(20),
        db::jobs::claim_many(&app.db, &wanted, LEASE, Locked::Skip),
    )
    .await
    .expect("the locked job is left out, not waited for")
    .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|j| (j.id, j.lease_token))
            .collect::<Vec<_>>(),
        vec![(a, Some(tokens[0])), (d, Some(tokens[3]))],
        "the jobs still queued as read are claimed, once each, with the first token asked"
    );
    holder.rollback().await.unwrap();
    for job in &claimed {
        assert_eq!((job.version, job.attempts), (2, 1));
        assert_eq!(
            serde_json::to_value(job.view()).unwrap(),
            shown(&app, job.id).await,
            "the claim's row is the one written"
        );
    }
    let (b_now, c_now) = (job_row(&app, b).await, job_row(&app, c).await);
    assert_eq!((b_now.lease_token, b_now.version), (Some(other), 2));
    assert_eq!((c_now.status.as_str(), c_now.version), ("queued", 1));

    // One `job.running` event per job claimed; after them, the one of `c`, claimed now.
    db::jobs::claim(&app.db, &c_now, Uuid::new_v4(), LEASE)
        .await
        .unwrap()
        .expect("c is claimed once free");
    let running = |e: &provisioner_tests::events::Event| {
        e.body["type"] == "io.provisioner.job.running"
            && ids.iter().any(|id| e.body["subject"] == id.to_string())
    };
    let events = tap
        .collect_until(|events| {
            events
                .iter()
                .any(|e| running(e) && e.body["subject"] == c.to_string())
        })
        .await;
    let mut announced: Vec<(String, i64)> = events
        .iter()
        .filter(|e| running(e))
        .map(|e| {
            (
                e.body["subject"].as_str().unwrap().to_owned(),
                e.body["jobversion"].as_i64().unwrap(),
            )
        })
        .collect();
    announced.sort();
    let mut expected: Vec<(String, i64)> = ids.iter().map(|id| (id.to_string(), 2)).collect();
    expected.sort();
    assert_eq!(
        announced, expected,
        "each job's claim is announced once, at the version it wrote"
    );
    app.stop().await;
}

#[tokio::test]
async fn claims_asked_for_while_one_is_written_are_written_together() {
    let (app, ids) = queued_jobs(4).await;
    let claims = provisioner_worker::Claims::start(app.db.clone(), LEASE);
    // Inserts into the outbox wait: so does the first claim's statement (and the relay's
    // deletes).
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let tokens: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut first = Box::pin(claims.claim(ids[0], tokens[0]));
    assert!((&mut first).now_or_never().is_none());
    eventually(Duration::from_secs(20), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%UPDATE jobs SET status = ''running''%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    // Asked for while the first is written (each asks when first polled).
    let mut rest: Vec<_> = (1..4)
        .map(|i| Box::pin(claims.claim(ids[i], tokens[i])))
        .collect();
    for claim in &mut rest {
        assert!(claim.now_or_never().is_none());
    }
    holder.commit().await.unwrap();

    let mut claimed = vec![first.await.expect("the first is claimed")];
    for claim in rest {
        claimed.push(claim.await.expect("each is claimed"));
    }
    for (job, (id, token)) in claimed.iter().zip(ids.iter().zip(&tokens)) {
        assert_eq!((job.id, job.lease_token), (*id, Some(*token)));
        assert_eq!(job.status.as_str(), "running");
    }
    // One statement's claims share the clock it read for their `startedAt`.
    let started: Vec<_> = claimed.iter().map(|j| j.started_at.unwrap()).collect();
    assert_ne!(started[0], started[1], "the first was written alone");
    assert!(
        started[1..].iter().all(|t| *t == started[1]),
        "the three asked for meanwhile were written in one statement: {started:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await,
        4
    );
    // A job that is not queued is not claimed here: the one-job path tells why.
    assert!(claims.claim(ids[0], Uuid::new_v4()).await.is_none());
    assert!(claims.claim(Uuid::new_v4(), Uuid::new_v4()).await.is_none());
    app.stop().await;
}
