//! A worker claims the jobs it is asked for while a claim is being written together, in one
//! statement: these show what that statement claims and leaves, and that claims are grouped.

use std::time::Duration;

use futures_util::FutureExt;
use provisioner_shared::db::{self, jobs::JobRow};
use provisioner_tests::{TestApp, batches, events::EventTap, eventually};
use provisioner_worker::{Claim, Claims};
use serde_json::Value;
use uuid::Uuid;

/// Leases as long as the tests need.
const LEASE: Duration = Duration::from_secs(60);

/// What `GET /jobs/{id}` answers, as JSON.
async fn shown(app: &TestApp, id: Uuid) -> Value {
    let (status, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(status, 200);
    job
}

#[tokio::test]
async fn a_group_claim_takes_the_jobs_still_as_read_once_each_and_waits_for_no_lock() {
    let (app, ids) = TestApp::with_queued_jobs(4).await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let mut reads = Vec::new();
    for id in &ids {
        reads.push(app.job_row(*id).await);
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
        db::jobs::claim_many(&app.db, &wanted, LEASE),
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
    let (b_now, c_now) = (app.job_row(b).await, app.job_row(c).await);
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

/// Holds the outbox against inserts until the transaction ends: claims wait (and so do the
/// relay's deletes).
async fn hold_claims(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Waits until a claim statement waits for a lock.
async fn until_a_claim_waits(app: &TestApp) {
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
}

fn taken(claim: Claim) -> JobRow {
    match claim {
        Claim::Claimed(job) => job,
        other => panic!("not claimed: {other:?}"),
    }
}

#[tokio::test]
async fn claims_asked_for_while_one_is_written_are_written_together() {
    let (app, ids) = TestApp::with_queued_jobs(4).await;
    let claims = Claims::start(app.db.clone(), LEASE);
    let holder = hold_claims(&app).await;
    let tokens: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut first = Box::pin(claims.claim(ids[0], tokens[0]));
    assert!((&mut first).now_or_never().is_none());
    until_a_claim_waits(&app).await;
    // Asked for while the first is written (each asks when first polled).
    let mut rest: Vec<_> = (1..4)
        .map(|i| Box::pin(claims.claim(ids[i], tokens[i])))
        .collect();
    for claim in &mut rest {
        assert!(claim.now_or_never().is_none());
    }
    holder.commit().await.unwrap();

    let mut claimed = vec![taken(first.await)];
    for claim in rest {
        claimed.push(taken(claim.await));
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
    // Left to the one-job path, with the group's read: a job that is not queued, and none at
    // all.
    let left = |claim: Claim| match claim {
        Claim::Left(read) => read,
        other => panic!("not left to the one-job path: {other:?}"),
    };
    let running = left(claims.claim(ids[0], Uuid::new_v4()).await).expect("read");
    assert_eq!((running.id, running.status.as_str()), (ids[0], "running"));
    assert!(left(claims.claim(Uuid::new_v4(), Uuid::new_v4()).await).is_none());
    // And a batch item, queued: claiming it updates its batch's counts.
    let template = app.serve_sample_template("b").await;
    let batch = batches::submit(&app, &batches::items(1, &template)).await;
    let item: Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1::uuid")
        .bind(batch["batchId"].as_str().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    let read = left(claims.claim(item, Uuid::new_v4()).await).expect("read");
    assert_eq!(read.status.as_str(), "queued");
    assert_eq!(
        app.job_row(item).await.version,
        1,
        "the item is not claimed"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claim_made_for_a_claimant_that_went_away_lets_its_lease_end_at_once() {
    let (app, ids) = TestApp::with_queued_jobs(1).await;
    let claims = Claims::start(app.db.clone(), LEASE);
    let holder = hold_claims(&app).await;
    let mut gone = Box::pin(claims.claim(ids[0], Uuid::new_v4()));
    assert!((&mut gone).now_or_never().is_none());
    until_a_claim_waits(&app).await;
    // Its delivery is abandoned (shutdown) while the statement is written.
    drop(gone);
    holder.commit().await.unwrap();

    eventually(Duration::from_secs(20), || async {
        let job = app.job_row(ids[0]).await;
        (job.status.as_str() == "running" && job.lease_until <= Some(chrono::Utc::now()))
            .then_some(())
    })
    .await;
    app.stop().await;
}
