//! Creates that arrive together are recorded together (several per statement) and each keeps
//! its own admission: one job per tenant URL, every answer its own. (Alone in its test binary:
//! it reads the process's `/metrics` counters.)

use std::collections::HashMap;

use futures_util::{StreamExt, stream};
use provisioner_shared::{
    db::{
        self,
        jobs::{Admit, NewJob, SubmitOutcome, TemplateCheck, submit_many},
    },
    domain::JobKind,
    queue::{BACKLOG_QUEUE, CREATE_TENANT_QUEUE},
    trace::TraceContext,
};
use provisioner_tests::{TestApp, fixtures, plans::rows_read_in_transaction};

/// A counter of `/metrics`.
async fn figure(app: &TestApp, name: &str) -> f64 {
    app.metric(name)
        .await
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Sends every create at once (64 in flight) and gives each URL's answers.
async fn create_all(app: &TestApp, urls: &[String], template: &str) -> HashMap<String, Vec<u16>> {
    let answers: Vec<(String, u16)> = stream::iter(urls.iter().cloned())
        .map(|url| async move {
            let r = app.create(&url, &fixtures::create_body(template)).await;
            (url, r.status().as_u16())
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut by_url: HashMap<String, Vec<u16>> = HashMap::new();
    for (url, status) in answers {
        by_url.entry(url).or_default().push(status);
    }
    by_url
}

#[tokio::test]
async fn concurrent_creates_are_recorded_several_per_statement_one_job_per_tenant() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t").await;
    // 80 tenants, each asked for three times, all at once.
    let tenants: Vec<String> = (0..80).map(|_| fixtures::tenant_url()).collect();
    let urls: Vec<String> = tenants
        .iter()
        .flat_map(|u| [u.clone(), u.clone(), u.clone()])
        .collect();
    let by_url = create_all(&app, &urls, &template).await;
    for (url, mut statuses) in by_url {
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [202, 409, 409],
            "one job for {url}, the others 409"
        );
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(jobs, 80);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let queued_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE routing_key = 'job.queued'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    // Published or not yet, never more than one message and one event per job.
    assert!(outbox <= 160 && queued_events <= 80, "{outbox} outbox rows");
    let submissions = figure(&app, "provisioner_submissions_total").await;
    let statements = figure(&app, "provisioner_submission_statements_total").await;
    assert_eq!(submissions, 240.0);
    assert!(
        statements < submissions,
        "{statements} statements for {submissions} submissions: none was grouped"
    );
    app.stop().await;
}

/// A create of client `grouped` (at most four active jobs, two of them interactive) that
/// refuses an existing tenant.
fn job(url: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4(),
        kind: JobKind::CreateTenant,
        tenant_url: url.to_owned(),
        client_id: "grouped".to_owned(),
        params: serde_json::json!({}),
        sealed_password: None,
        idempotency_key: key.map(str::to_owned),
        request_digest: None,
        template_id: None,
        trace: TraceContext::new_root(),
        admit: Admit {
            refuse_existing_tenant: true,
            max_active_jobs: 4,
            interactive_jobs: 2,
            template: TemplateCheck::None,
        },
    }
}

/// One statement records several clients' jobs; a job kept out by an active create of its
/// tenant or by its idempotency key (recorded already, or earlier in the same statement) takes
/// no place under the client's cap, which still holds for the rest.
#[tokio::test]
async fn a_statement_counts_against_the_cap_only_the_jobs_it_records() {
    let app = TestApp::without_workers().await;
    let outcomes = |jobs: Vec<NewJob>| {
        let db = app.db.clone();
        async move {
            let mut conn = db.acquire().await.unwrap();
            submit_many(&mut conn, &jobs)
                .await
                .unwrap()
                .into_iter()
                .map(|o| match o {
                    SubmitOutcome::Recorded(_) => "recorded",
                    SubmitOutcome::Conflict => "conflict",
                    SubmitOutcome::TooManyActive => "too many",
                    SubmitOutcome::Unsettled => "unsettled",
                    other => panic!("unexpected {other:?}"),
                })
                .collect::<Vec<_>>()
        }
    };
    // Two active jobs of the client's cap of four.
    assert_eq!(
        outcomes(vec![
            job("one.example.com", None),
            job("two.example.com", None)
        ])
        .await,
        ["recorded", "recorded"]
    );
    assert_eq!(
        outcomes(vec![
            job("one.example.com", None),       // its tenant's create is active
            job("three.example.com", None),     // the third
            job("four.example.com", Some("k")), // the fourth
            job("five.example.com", Some("k")), // its key was taken just before
            job("six.example.com", None),       // past the cap
        ])
        .await,
        ["conflict", "recorded", "recorded", "conflict", "too many"]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE client_id = 'grouped'")
            .await,
        4
    );
    // The client's first two active jobs went to the interactive queue, the two past them to
    // the backlog queue.
    provisioner_tests::eventually(std::time::Duration::from_secs(30), || async {
        (app.queue_messages(CREATE_TENANT_QUEUE).await + app.queue_messages(BACKLOG_QUEUE).await
            == 4)
            .then_some(())
    })
    .await;
    assert_eq!(app.queue_messages(CREATE_TENANT_QUEUE).await, 2);
    assert_eq!(app.queue_messages(BACKLOG_QUEUE).await, 2);
    // A client past its cap asks for a tenant first: refused, it keeps out no one else's job,
    // which is left to be judged again alone (no 409 for a job that does not exist).
    let mut capped = job("seven.example.com", None);
    capped.client_id = "capped".to_owned();
    capped.admit.max_active_jobs = 0;
    let mut other = job("seven.example.com", None);
    other.client_id = "other".to_owned();
    let mut again = job("seven.example.com", None);
    again.client_id = "other".to_owned();
    assert_eq!(
        outcomes(vec![capped, other]).await,
        ["too many", "unsettled"]
    );
    assert_eq!(outcomes(vec![again]).await, ["recorded"]);
    app.stop().await;
}

/// The recorder's lanes keep the recording statement's generic plan for their sessions' lives,
/// made at a session's first create from what the tables held then. Made on small tables, never
/// analyzed or analyzed while small (a young deployment, no batch yet), it must still look each
/// job's keys up once they hold many active jobs, batch items, imports and tenants, not scan
/// them once per statement or once per job, nor read every client's keeps of a template; made
/// on the grown tables, analyzed, it must not read every ended job of a tenant either.
#[tokio::test]
async fn a_plan_made_on_small_tables_still_reads_a_handful_of_rows_once_they_grow() {
    for statistics in [Statistics::None, Statistics::Small, Statistics::Grown] {
        let read = rows_read_once_the_tables_grew(statistics).await;
        assert!(
            read <= 10,
            "{read} rows of jobs, tenants and keeps read (plan made with statistics: {statistics:?})"
        );
    }
}

/// What PostgreSQL knew of the tables when a lane's session made its plan.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Statistics {
    /// Nothing: the tables were never analyzed.
    None,
    /// Analyzed with 60 jobs, no batch item among them, and 60 tenants.
    Small,
    /// Vacuumed and analyzed once they had grown (below).
    Grown,
}

/// The rows of `jobs`, `tenants` and `client_templates` a statement recording three creates
/// reads on a lane's session, once another session added 20,000 active jobs and tenants, 5,000
/// failed jobs of one of the statement's tenants and 5,000 other clients' keeps of the template
/// one of them names. The session made its plan at its first create, before the tables grew
/// (`Statistics::None`, `Small`) or after (`Grown`).
async fn rows_read_once_the_tables_grew(statistics: Statistics) -> i64 {
    let app = TestApp::without_workers().await;
    let sql = |sql: String| {
        let db = app.db.clone();
        async move { sqlx::raw_sql(&sql).execute(&db).await.unwrap() }
    };
    // No statistics replace the plan meanwhile, as an analyze by autovacuum would.
    for table in ["jobs", "tenants", "client_templates"] {
        sql(format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .await;
    }
    let add = |from: i64, to: i64, batch_items: bool| {
        sql(format!(
            "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, created_at,
                               batch_id, batch_item)
             SELECT gen_random_uuid(),
                    CASE WHEN g % 4 = 0 THEN 'importTenant' ELSE 'createTenant' END,
                    'active-' || g || '.example.com', 'queued', 'other', '{{}}', now(),
                    CASE WHEN {batch_items} AND g % 2 = 1
                         THEN '00000000-0000-0000-0000-000000000001'::uuid END,
                    CASE WHEN {batch_items} AND g % 2 = 1 THEN g END
             FROM generate_series({from}, {to}) g;
             INSERT INTO tenants (id, url, name, sip_domain)
             SELECT gen_random_uuid(), 'made-' || g || '.example.com', 'Made', 'sip-' || g
             FROM generate_series({from}, {to}) g"
        ))
    };
    let grow = || async {
        // 20,000 active jobs (half of them batch items, a quarter imports) and 20,000 tenants.
        sql("INSERT INTO batches (id, client_id)
             VALUES ('00000000-0000-0000-0000-000000000001', 'other')"
            .to_owned())
        .await;
        add(1001, 21000, true).await;
        // One of the statement's tenants failed 5,000 times before (a client retrying a
        // create).
        sql(
            "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, finished_at)
             SELECT gen_random_uuid(), 'createTenant', 'fourth.example.com', 'failed', 500,
                    'grouped', '{}', now()
             FROM generate_series(1, 5000)"
                .to_owned(),
        )
        .await;
        // The template a create names is kept by 5,000 clients besides its own.
        sql(
            "INSERT INTO templates (id, content, bytes) VALUES (repeat('ab', 32), 'zip', 3);
             INSERT INTO client_templates (client_id, template_id)
             SELECT 'keeper-' || g, repeat('ab', 32) FROM generate_series(1, 5000) g
             UNION ALL SELECT 'grouped', repeat('ab', 32)"
                .to_owned(),
        )
        .await;
    };
    match statistics {
        Statistics::None => {}
        Statistics::Small => {
            add(1, 60, false).await;
            sql("ANALYZE jobs, tenants".to_owned()).await;
        }
        Statistics::Grown => {
            grow().await;
            // Every page visible too, as after a vacuum.
            sql("VACUUM ANALYZE jobs, tenants, client_templates".to_owned()).await;
        }
    }
    let lanes = db::generic_plan_pool(&app.db, 1);
    let mut conn = lanes.acquire().await.unwrap();
    let recorded = |outcomes: Vec<SubmitOutcome>| {
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, SubmitOutcome::Recorded(_))),
            "{outcomes:?}"
        );
    };
    recorded(
        submit_many(&mut conn, &[job("first.example.com", None)])
            .await
            .unwrap(),
    );
    if statistics != Statistics::Grown {
        grow().await;
    }
    let mut named = job("third.example.com", None);
    named.template_id = Some("ab".repeat(32));
    named.admit.template = TemplateCheck::KeptBy(Some("grouped".to_owned()));
    let tables = ["jobs", "tenants", "client_templates"];
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let before = rows_read_in_transaction(&mut tx, &tables).await;
    recorded(
        submit_many(
            &mut tx,
            &[
                job("second.example.com", Some("key")),
                named,
                job("fourth.example.com", None),
            ],
        )
        .await
        .unwrap(),
    );
    let after = rows_read_in_transaction(&mut tx, &tables).await;
    drop(tx);
    // A generic plan ran at each of the two statements, never a custom one.
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement LIKE 'WITH input AS%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((generic >= 2, custom), (true, 0));
    drop(conn);
    lanes.close().await;
    app.stop().await;
    after - before
}

/// The backlog's tiers by rank, and the lane of a job sent again (a retry, a lost message): the
/// lower of the lane it was sent on and the lane of its client's active count, both bounds of
/// its rank now. By the count alone, a client's first job retried behind its thousands queued
/// after it would wait in the last tier.
#[tokio::test]
async fn a_job_sent_again_keeps_its_tier_or_takes_a_lower_one() {
    let app = TestApp::without_workers().await;
    let ranks = [
        1_i64, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 1_000_000,
    ];
    let lanes: Vec<String> =
        sqlx::query_scalar("SELECT job_rank_lane(r, 4) FROM unnest($1::bigint[]) AS r")
            .bind(ranks.as_slice())
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        lanes,
        [
            "interactive",
            "interactive",
            "backlog",
            "backlog",
            "backlog-1",
            "backlog-1",
            "backlog-2",
            "backlog-2",
            "backlog-3",
            "backlog-3",
            "backlog-4",
            "backlog-4",
            "backlog-5",
            "backlog-5"
        ]
    );
    // Recorded as the API records them (not through it: this binary's other tests count the
    // process's submissions).
    // (The test's pool holds one connection: each use takes it for a moment.)
    let mut jobs = Vec::new();
    for _ in 0..40 {
        let mut next = job(&provisioner_tests::fixtures::tenant_url(), None);
        next.admit.max_active_jobs = 100;
        next.admit.interactive_jobs = 4;
        jobs.push(next.id);
        let mut conn = app.db.acquire().await.unwrap();
        let recorded = submit_many(&mut conn, &[next]).await.unwrap();
        assert!(matches!(recorded[..], [SubmitOutcome::Recorded(_)]));
    }
    let sent_again = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT lane, job_resend_lane(batch_id, client_id, 4, lane) FROM jobs
             WHERE status = 'queued' ORDER BY created_at, id",
        )
        .fetch_all(&app.db)
        .await
        .unwrap()
    };
    // With 40 active (the count's lane: backlog-3), each keeps the lane it was sent on.
    let lanes = sent_again().await;
    assert_eq!(lanes.len(), 40);
    assert!(lanes.iter().all(|(was, now)| was == now), "{lanes:?}");
    assert_eq!(lanes[0].0, "interactive");
    assert_eq!(lanes[39].0, "backlog-3");
    // With all but the last six cancelled, the count (6: backlog) is the lower bound for them.
    for &job in &jobs[..34] {
        let mut conn = app.db.acquire().await.unwrap();
        let cancelled = provisioner_shared::db::jobs::cancel_or_refuse(&mut conn, job, None)
            .await
            .unwrap();
        assert!(matches!(
            cancelled,
            provisioner_shared::db::jobs::Cancel::Done(_)
        ));
    }
    let lanes = sent_again().await;
    assert_eq!(
        lanes
            .iter()
            .map(|(_, now)| now.as_str())
            .collect::<Vec<_>>(),
        ["backlog"; 6],
        "{lanes:?}"
    );
    app.stop().await;
}
