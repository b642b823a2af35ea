//! A transaction that sends a notification commits only after every other notifying
//! transaction's commit, its WAL flush included (PostgreSQL serialises them on one lock), so
//! the hot transitions (a create, a claim, a job's end) notify nothing inside their
//! transaction: their process announces them after the commit, in a statement of their own.

use std::time::Duration;

use provisioner_shared::db::{self, jobs::Ending};
use provisioner_tests::{TestApp, fixtures};
use sqlx::postgres::PgListener;
use uuid::Uuid;

const CHANNELS: [&str; 2] = ["provisioner_jobs", "provisioner_outbox"];

/// What `listener` heard before a notification this test sends after everything it did:
/// notifications arrive in commit order, so anything those transactions sent comes first.
async fn heard_before_now(app: &TestApp, listener: &mut PgListener) -> Vec<(String, String)> {
    let sentinel = Uuid::new_v4().to_string();
    sqlx::query("SELECT pg_notify('provisioner_jobs', $1)")
        .bind(&sentinel)
        .execute(&app.db)
        .await
        .unwrap();
    let mut heard = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the test's own notification arrives")
            .unwrap();
        if n.payload() == sentinel {
            return heard;
        }
        heard.push((n.channel().to_owned(), n.payload().to_owned()));
    }
}

#[tokio::test]
async fn a_create_a_claim_and_an_end_notify_nothing_inside_their_transactions() {
    let app = TestApp::without_workers().await;
    let mut listener = PgListener::connect_with(&app.db).await.unwrap();
    listener.listen_all(CHANNELS).await.unwrap();

    // Recorded by the API, whose process wakes its own relay in-process.
    let url = app.serve_sample_template("t").await;
    let id: Uuid = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await
        .parse()
        .unwrap();
    // Claimed and ended as a worker does, by this test's process, which announces nothing.
    let queued = db::jobs::find(&app.db, id, None).await.unwrap().unwrap();
    let held = db::jobs::claim(&app.db, &queued, Uuid::new_v4(), Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the claim takes the job");
    let mut tx = app.db.begin().await.unwrap();
    let failed = Ending::Failed {
        code: 500,
        error: provisioner_shared::domain::JobError {
            title: "Internal".to_owned(),
            detail: "ended by the test".to_owned(),
        },
    };
    db::jobs::finish(&mut tx, &held, &failed)
        .await
        .unwrap()
        .expect("the lease holds");
    tx.commit().await.unwrap();
    assert_eq!(
        db::jobs::find(&app.db, id, None)
            .await
            .unwrap()
            .unwrap()
            .version,
        3,
        "created, claimed and ended"
    );

    assert_eq!(heard_before_now(&app, &mut listener).await, vec![]);
    // The listener holds one of the pool's connections, which closing the pool waits for.
    drop(listener);
    app.stop().await;
}

#[tokio::test]
async fn a_workers_claim_and_end_are_announced_to_every_process_after_their_commit() {
    let app = TestApp::spawn().await;
    let mut listener = PgListener::connect_with(&app.db).await.unwrap();
    listener.listen("provisioner_jobs").await.unwrap();

    // A downloaded template: the job is claimed (`running`), then ended.
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = listener.recv().await.unwrap();
            if n.payload() != id {
                continue;
            }
            // Announced after the commit: the change is there to read.
            let job = db::jobs::find(&app.db, id.parse().unwrap(), None)
                .await
                .unwrap()
                .unwrap();
            seen.push((job.status.as_str(), job.version));
            if job.status.is_terminal() {
                return job;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no announcement of the job's end; heard {seen:?}"));
    assert_eq!(ended.code, Some(200));
    // Its creation is not announced: nobody can wait for a job before it exists.
    assert!(
        seen.iter().all(|(_, version)| *version > 1),
        "only the claim and the end are announced: {seen:?}"
    );
    drop(listener);
    app.stop().await;
}
