//! The operators' figures of `/metrics` that dashboards and alerts read: the backlog and its age,
//! held batch items, recent failures by code, the busiest clients' share of the work, the job
//! queues' consumers; and what each of their queries reads.

use std::{collections::HashMap, time::Duration};

use provisioner_shared::db::figures;
use provisioner_tests::{TestApp, batches, eventually, fixtures, plans::rows_read_in_transaction};
use serde_json::{Value, json};

/// The `/metrics` text.
async fn scrape(app: &TestApp) -> String {
    let r = provisioner_tests::get(app.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample whose line is `series` (name and labels) and a value.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Each client's `/metrics` label as the operator command `provisioner-api client list` shows
/// it (its last column), by client id.
async fn client_labels(app: &TestApp) -> HashMap<String, String> {
    let out = provisioner_tests::process::command(env!("CARGO_BIN_EXE_test-api"), app)
        .env("RUST_LOG", "warn")
        .args(["client", "list"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    text.lines()
        .map(|l| {
            let columns: Vec<&str> = l.split('\t').collect();
            assert_eq!(columns.len(), 6, "{l}");
            (columns[0].to_owned(), columns[5].to_owned())
        })
        .collect()
}

/// Whether `label` is a client's pseudonym: `c-` and 12 lowercase hex digits.
fn is_pseudonym(label: &str) -> bool {
    label.strip_prefix("c-").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

const SINGLES: &str =
    "provisioner_queue_oldest_age_seconds{queue=\"provisioner.jobs.create-tenant\"}";
const CONSUMERS: &str = "provisioner_queue_consumers{queue=\"provisioner.jobs.create-tenant\"}";
const READY: &str = "provisioner_queue_messages_ready{queue=\"provisioner.jobs.create-tenant\"}";

/// A client's single creates past its interactive ones wait on the backlog's queues, a tier
/// by rank, and each queue's age is its own jobs': the interactive queue's figure no longer
/// stands for them all.
#[tokio::test]
async fn each_job_queue_has_the_age_of_its_own_oldest_job() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    for _ in 0..9 {
        app.submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await;
    }
    let lanes: Vec<(String, i64)> =
        sqlx::query_as("SELECT lane, count(*) FROM jobs GROUP BY lane ORDER BY lane")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        lanes,
        [
            ("backlog".to_owned(), 4),
            ("backlog-1".to_owned(), 1),
            ("interactive".to_owned(), 4)
        ],
        "the 5th to 8th past the client's four interactive jobs, the 9th in the next tier"
    );
    sqlx::query("UPDATE jobs SET sent_at = now() - interval '60 seconds' WHERE lane = 'backlog-1'")
        .execute(&app.db)
        .await
        .unwrap();
    let text = scrape(&app).await;
    let age = |queue: &str| {
        value(
            &text,
            &format!("provisioner_queue_oldest_age_seconds{{queue=\"{queue}\"}}"),
        )
    };
    let tier = age("provisioner.jobs.backlog-1");
    assert!((60.0..90.0).contains(&tier), "backlog-1 queue: {tier} s");
    for queue in ["provisioner.jobs.backlog", "provisioner.jobs.create-tenant"] {
        let queued = age(queue);
        assert!(queued < 30.0, "{queue}: {queued} s");
    }
    assert_eq!(
        age("provisioner.jobs.backlog-2"),
        0.0,
        "nothing waits there"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_the_backlog_its_age_held_items_and_the_busiest_clients() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let text = scrape(&app).await;
    assert_eq!(value(&text, SINGLES), 0.0, "nothing waits yet");
    assert_eq!(value(&text, "provisioner_batch_items_held"), 0.0);
    assert_eq!(
        value(
            &text,
            "provisioner_client_active_jobs{client=\"other\",other=\"true\"}"
        ),
        0.0
    );

    // Client `busy` has two single creates and a batch of three (held: no worker dispatches);
    // `second` two creates; eleven more clients one create each.
    let busy = batches::client(&app, "busy", &["tenants:read", "tenants:write"]).await;
    let mut first = None;
    for _ in 0..2 {
        let r = busy
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body(&url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let job: serde_json::Value = r.json().await.unwrap();
        first.get_or_insert(job["jobId"].as_str().unwrap().to_owned());
    }
    let r = batches::post(
        &app,
        &busy,
        "application/x-ndjson",
        batches::ndjson(&batches::items(3, &url)),
    )
    .await;
    assert_eq!(r.status(), 202);
    let mut singles = 2;
    for id in ["second"]
        .into_iter()
        .map(str::to_owned)
        // A client may be called `other`: its series is not the others' sum.
        .chain(["other".to_owned()])
        .chain((0..10).map(|i| format!("quiet-{i:02}")))
    {
        let http = batches::client(&app, &id, &["tenants:read", "tenants:write"]).await;
        let r = http
            .post(app.url(&format!(
                "/configapi/v2/selfservice/tenant/{}",
                fixtures::tenant_url()
            )))
            .json(&fixtures::create_body(&url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{id}");
        singles += 1;
        if id == "second" {
            let r = http
                .post(app.url(&format!(
                    "/configapi/v2/selfservice/tenant/{}",
                    fixtures::tenant_url()
                )))
                .json(&fixtures::create_body(&url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            singles += 1;
        }
    }
    // The oldest single create was sent two minutes ago; the batch made five.
    sqlx::query("UPDATE jobs SET sent_at = now() - interval '120 seconds' WHERE id = $1::uuid")
        .bind(first.as_deref().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE batches SET created_at = now() - interval '300 seconds'")
        .execute(&app.db)
        .await
        .unwrap();

    // A reading made after the last change: the first one serves the scrapes of a few seconds.
    let text = eventually(Duration::from_secs(20), || async {
        let text = scrape(&app).await;
        (sample(&text, "provisioner_batch_held_oldest_age_seconds")? >= 300.0).then_some(text)
    })
    .await;
    let age = value(&text, SINGLES);
    assert!(
        (120.0..150.0).contains(&age),
        "oldest single create: {age} s"
    );
    assert_eq!(
        value(
            &text,
            "provisioner_queue_oldest_age_seconds{queue=\"provisioner.jobs.batch\"}"
        ),
        0.0,
        "no batch item is released without a worker"
    );
    assert_eq!(value(&text, "provisioner_batch_items_held"), 3.0);
    let held_age = value(&text, "provisioner_batch_held_oldest_age_seconds");
    assert!((300.0..330.0).contains(&held_age), "held for {held_age} s");

    // Ten clients by their label, busiest first; the other three together. A client's label is
    // the pseudonym the operator command shows for it; no client id is anywhere in the text.
    let labels = client_labels(&app).await;
    let label = |id: &str| {
        labels
            .get(id)
            .unwrap_or_else(|| panic!("no {id} in the client list: {labels:?}"))
            .clone()
    };
    let named: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("provisioner_client_active_jobs{client=\""))
        .filter(|l| !l.contains("other=\"true\""))
        .map(|l| {
            let (client, rest) = l.split_once("\"} ").unwrap();
            (client.to_owned(), rest.parse().unwrap())
        })
        .collect();
    assert_eq!(named.len(), 10, "{text}");
    assert_eq!(named[0], (label("busy"), 5.0));
    assert_eq!(named[1], (label("second"), 2.0));
    // Ties in the order of their ids, as before: `other`, then the first seven quiet ones.
    assert_eq!(named[2], (label("other"), 1.0));
    let quiet: Vec<(String, f64)> = (0..7)
        .map(|i| (label(&format!("quiet-{i:02}")), 1.0))
        .collect();
    assert_eq!(named[3..], quiet[..]);
    for line in text.lines().filter(|l| l.contains("client=\"")) {
        let (_, rest) = line.split_once("client=\"").unwrap();
        let (value, _) = rest.split_once('"').unwrap();
        assert!(
            is_pseudonym(value) || (value == "other" && line.contains("other=\"true\"")),
            "a client label that is not a pseudonym: {line}"
        );
    }
    assert_eq!(
        labels.len(),
        14,
        "the thirteen and the bootstrap client: {labels:?}"
    );
    for id in labels.keys() {
        assert!(
            !text.contains(&format!("\"{id}\"")) || id == "other",
            "{id} in\n{text}"
        );
        // Nowhere at all, but for the ids that are words of the figures' names and help.
        if !["other", "second"].contains(&id.as_str()) {
            assert!(!text.contains(id.as_str()), "{id} in\n{text}");
        }
    }
    assert_eq!(
        value(
            &text,
            "provisioner_client_active_jobs{client=\"other\",other=\"true\"}"
        ),
        3.0
    );
    assert_eq!(singles, 15);

    // The broker: the single creates wait on the interactive queue, nobody consumes it.
    assert_eq!(value(&text, "provisioner_broker_reachable"), 1.0);
    assert_eq!(value(&text, CONSUMERS), 0.0);
    eventually(Duration::from_secs(20), || async {
        (sample(&scrape(&app).await, READY) == Some(f64::from(singles))).then_some(())
    })
    .await;

    // A worker consumes both queues, and the backlog drains.
    app.start_worker();
    eventually(Duration::from_secs(20), || async {
        let text = scrape(&app).await;
        (sample(&text, CONSUMERS) == Some(1.0)
            && sample(
                &text,
                "provisioner_queue_consumers{queue=\"provisioner.jobs.batch\"}",
            ) == Some(1.0))
        .then_some(())
    })
    .await;
    let busiest = format!(
        "provisioner_client_active_jobs{{client=\"{}\"}}",
        label("busy")
    );
    eventually(Duration::from_secs(60), || async {
        let text = scrape(&app).await;
        (sample(&text, SINGLES) == Some(0.0)
            && sample(&text, "provisioner_batch_items_held") == Some(0.0)
            && sample(
                &text,
                "provisioner_client_active_jobs{client=\"other\",other=\"true\"}",
            ) == Some(0.0)
            && !text.contains(&busiest))
        .then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_the_recent_failures_by_code() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    assert_eq!(
        app.create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await["code"],
        200
    );
    // A template the server does not have: code 400.
    let missing = format!("{}-missing", url);
    assert_eq!(
        app.create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&missing))
            .await["code"],
        400
    );
    // A tenant whose lock is held, with no wait allowed: code 503, twice.
    for _ in 0..2 {
        let tenant = fixtures::tenant_url();
        let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
        let mut body = fixtures::create_body(&url);
        body["lockTimeout"] = json!(0);
        assert_eq!(app.create_and_wait(&tenant, &body).await["code"], 503);
        held.rollback().await.unwrap();
    }
    let text = scrape(&app).await;
    assert_eq!(value(&text, "provisioner_job_recent_endings"), 4.0);
    for (code, n) in [
        ("400", 1.0),
        ("409", 0.0),
        ("500", 0.0),
        ("503", 2.0),
        ("other", 0.0),
    ] {
        assert_eq!(
            value(
                &text,
                &format!("provisioner_job_recent_failures{{code=\"{code}\"}}")
            ),
            n,
            "code {code}"
        );
    }
    app.stop().await;
}

/// `/metrics` needs no token, so a flood of scrapes must not become a flood of statements: fifty
/// scrapes at once cost the database one reading, counted by a statement trigger on the table
/// each reading prunes (the statement runs, and the trigger fires, whether it deletes rows or
/// not). The reading is held on a lock until a scrape waits on it, so the others arrive while it
/// is under way; a change made afterwards shows in a later reading.
#[tokio::test]
async fn concurrent_scrapes_share_one_reading_of_the_database() {
    let app = TestApp::without_workers().await;
    sqlx::raw_sql(
        "CREATE TABLE readings_seen (at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION reading_seen() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO readings_seen DEFAULT VALUES;
             RETURN NULL;
         END $$;
         CREATE TRIGGER reading_seen AFTER DELETE ON job_endings
             FOR EACH STATEMENT EXECUTE FUNCTION reading_seen();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    const READINGS: &str = "SELECT count(*) FROM readings_seen";
    assert_eq!(app.count(READINGS).await, 0, "nothing scraped yet");

    // A reading's first statement reads the job counts: it waits while this holds them.
    let mut held = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_counts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let scrapes: Vec<_> = (0..50)
        .map(|_| {
            let url = app.url("/metrics");
            tokio::spawn(async move {
                let r = provisioner_tests::get(url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    eventually(Duration::from_secs(20), || async {
        let waiting = app
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'provisioner-api'
                   AND wait_event_type = 'Lock'",
            )
            .await;
        (waiting > 0).then_some(())
    })
    .await;
    held.rollback().await.unwrap();
    for scrape in scrapes {
        let (status, text) = scrape.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert_eq!(value(&text, "provisioner_jobs{status=\"queued\"}"), 0.0);
    }
    assert_eq!(
        app.count(READINGS).await,
        1,
        "fifty scrapes at once cost one reading"
    );

    // A job created now shows in a later reading.
    let url = app.serve_sample_template("t").await;
    app.submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    eventually(Duration::from_secs(20), || async {
        let text = scrape(&app).await;
        (sample(&text, "provisioner_jobs{status=\"queued\"}") == Some(1.0)).then_some(())
    })
    .await;
    assert!(app.count(READINGS).await >= 2);
    app.stop().await;
}

/// A reading of the database slower than a scrape waits for: the scrape answers without it
/// (`provisioner_database_reachable 0`), the reading goes on to its end, and the next scrape
/// waits for it rather than starting another beside it (each scrape started one, holding a
/// connection each, for as long as the database was slow).
#[tokio::test]
async fn a_slow_reading_of_the_database_runs_alone_while_scrapes_answer_without_it() {
    let app = TestApp::without_workers().await;
    let waiting_readings = || async {
        app.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'provisioner-api'
               AND wait_event_type = 'Lock'",
        )
        .await
    };
    // A reading's first statement reads the job counts: it waits while this holds them.
    let mut held = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_counts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    for _ in 0..2 {
        let text = scrape(&app).await;
        assert_eq!(value(&text, "provisioner_database_reachable"), 0.0);
        assert!(sample(&text, "provisioner_jobs{status=\"queued\"}").is_none());
        assert!(sample(&text, "provisioner_broker_reachable").is_some());
    }
    assert_eq!(
        waiting_readings().await,
        1,
        "one reading waits, however many scrapes gave up on it"
    );
    held.rollback().await.unwrap();
    eventually(Duration::from_secs(20), || async {
        let text = scrape(&app).await;
        (sample(&text, "provisioner_database_reachable") == Some(1.0)).then_some(())
    })
    .await;
    app.stop().await;
}

/// Several APIs in one process (as this suite runs them) each read their own broker's queues
/// and their own database's figures: a reading of one is never served to another's scrape.
#[tokio::test]
async fn each_api_shows_the_queues_of_its_own_broker() {
    // `busy`: two creates waiting, no worker. `idle`: nothing waiting, one worker consuming.
    let busy = TestApp::without_workers().await;
    let mut idle = TestApp::without_workers().await;
    idle.start_worker();
    eventually(Duration::from_secs(20), || async {
        (sample(&scrape(&idle).await, CONSUMERS) == Some(1.0)).then_some(())
    })
    .await;
    let url = busy.serve_sample_template("t").await;
    for _ in 0..2 {
        busy.submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await;
    }
    // The busy API's reading shows its two messages and no consumer; the idle API's scrape
    // right after it shows its own queue: empty, consumed.
    eventually(Duration::from_secs(20), || async {
        (sample(&scrape(&busy).await, READY) == Some(2.0)).then_some(())
    })
    .await;
    let text = scrape(&idle).await;
    assert_eq!(value(&text, "provisioner_broker_reachable"), 1.0, "{text}");
    assert_eq!(value(&text, READY), 0.0, "{text}");
    assert_eq!(value(&text, CONSUMERS), 1.0, "{text}");
    // Scraped at the same moment, again and again, each shows its own database's jobs.
    const QUEUED: &str = "provisioner_jobs{status=\"queued\"}";
    for _ in 0..20 {
        let (busy_text, idle_text) = tokio::join!(scrape(&busy), scrape(&idle));
        assert_eq!(value(&busy_text, QUEUED), 2.0, "{busy_text}");
        assert_eq!(value(&busy_text, CONSUMERS), 0.0, "{busy_text}");
        assert_eq!(value(&idle_text, QUEUED), 0.0, "{idle_text}");
    }
    busy.stop().await;
    idle.stop().await;
}

/// Why the plan of `sql` (with `$1` bound to `limit`, sequential scans priced out) reads
/// `jobs` as a whole, if it does: a sequential scan, or an index scan without a condition on an
/// index that covers every row.
async fn whole_jobs_reads(app: &TestApp, sql: &str, limit: Option<i64>) -> Vec<String> {
    let partial: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'jobs' AND indexdef LIKE '% WHERE %'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut conn = app.db.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let query = sqlx::query_scalar::<_, Value>(&explain);
    let query = match limit {
        Some(limit) => query.bind(limit),
        None => query,
    };
    let plan = query.fetch_one(&mut *conn).await.unwrap();
    sqlx::query("RESET enable_seqscan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut found = vec![];
    let mut nodes = vec![plan[0]["Plan"].clone()];
    while let Some(node) = nodes.pop() {
        if let Some(children) = node["Plans"].as_array() {
            nodes.extend(children.iter().cloned());
        }
        let kind = node["Node Type"].as_str().unwrap_or_default();
        if kind == "Seq Scan" && node["Relation Name"] == "jobs" {
            found.push("a sequential scan of jobs".to_owned());
        }
        if let Some(index) = node["Index Name"].as_str()
            && index.starts_with("jobs_")
            && node["Index Cond"].is_null()
            && !partial.iter().any(|p| p == index)
        {
            found.push(format!("a whole scan of index {index}"));
        }
    }
    found
}

#[tokio::test]
async fn no_figure_query_reads_the_whole_jobs_table() {
    let app = TestApp::without_workers().await;
    for (name, sql, limit) in [
        ("backlog", figures::BACKLOG_QUERY, None),
        (
            "failures",
            figures::FAILURES_QUERY,
            Some(figures::FAILURE_SAMPLE),
        ),
        ("shares", figures::SHARES_QUERY, Some(figures::TOP_CLIENTS)),
        ("held items", figures::HELD_ITEMS_QUERY, None),
    ] {
        let found = whole_jobs_reads(&app, sql, limit).await;
        assert!(found.is_empty(), "the {name} query reads {found:?}");
    }
    // The check does see a query that no index answers.
    let found = whole_jobs_reads(&app, "SELECT count(*) FROM jobs WHERE code = 500", None).await;
    assert!(!found.is_empty());
    app.stop().await;
}

/// A system without workers holding back 100,000 one-item batches accepted an hour ago, with
/// 200,000 ended creates and no single create queued.
async fn with_many_held_batch_items() -> TestApp {
    let app = TestApp::without_workers().await;
    for sql in [
        "INSERT INTO batches (id, client_id, created_at)
         SELECT md5(i::text)::uuid, 'heavy', now() - i * interval '1 ms'
         FROM generate_series(1, 100000) i",
        "INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, created_at,
                           sent_at, batch_id, batch_item, lane)
         SELECT gen_random_uuid(), 'createTenant', 'held-' || i || '.example.com', 'queued',
                'heavy', '{}', now() - interval '1 hour' - i * interval '1 ms',
                now() - interval '1 hour' - i * interval '1 ms', md5(i::text)::uuid, 0, 'batch'
         FROM generate_series(1, 100000) i",
        "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, created_at,
                           finished_at)
         SELECT gen_random_uuid(), 'createTenant', 'done-' || i || '.example.com', 'succeeded',
                200, 'light', '{}', now() - i * interval '1 ms', now()
         FROM generate_series(1, 200000) i",
        "ANALYZE",
    ] {
        sqlx::query(sql).execute(&app.db).await.unwrap();
    }
    app
}

/// The reconciler's pass and the backlog figures (`/metrics`, the overview's oldest waiting
/// job) read the jobs on the broker, by lane, not the batch items held back: a sweep reads a handful of rows however many items
/// batches hold (every worker's sweep read them all, and so did each overview).
#[tokio::test]
async fn the_reconciler_and_the_overview_read_a_handful_of_rows_behind_many_held_batch_items() {
    use provisioner_shared::{db, queue::Lane};
    let app = with_many_held_batch_items().await;
    let mut tx = app.db.begin().await.unwrap();
    let after = Duration::from_secs(60);
    assert_eq!(
        db::jobs::lanes_behind(&mut *tx, after).await.unwrap(),
        Vec::<Lane>::new()
    );
    let resent = db::jobs::resend_stranded(&mut tx, after, 100, 4, &Lane::ALL)
        .await
        .unwrap();
    assert!(resent.is_empty());
    // The rows of `jobs` this transaction read so far, by scans and through indexes.
    let read = async |tx: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables
             WHERE relname = 'jobs'",
        )
        .fetch_one(tx)
        .await
        .unwrap()
    };
    let by_the_reconciler = read(&mut tx).await;
    assert!(
        by_the_reconciler <= 10,
        "{by_the_reconciler} rows of jobs read"
    );
    let backlog = figures::backlog(&mut *tx).await.unwrap();
    assert!(backlog.oldest_waiting().is_some(), "the held items wait");
    let by_the_overview = read(&mut tx).await - by_the_reconciler;
    assert!(by_the_overview <= 10, "{by_the_overview} rows of jobs read");
    drop(tx);
    app.stop().await;
}

/// The oldest queued single create is the first entry of an index of its own: the backlog
/// figures read a handful of rows however many jobs are stored and batch items held (here
/// 100,000 one-item batches and 200,000 ended creates, no single create queued: the shape in
/// which a minimum over a wider index walked them all on each scrape).
#[tokio::test]
async fn the_backlog_figures_read_a_handful_of_rows_behind_many_held_batch_items() {
    let app = with_many_held_batch_items().await;
    let backlog = figures::backlog(&app.db).await.unwrap();
    assert_eq!(backlog.held, 100_000);
    assert_eq!(
        (
            backlog.oldest_interactive,
            backlog.oldest_backlog(),
            backlog.oldest_released
        ),
        (None, None, None)
    );
    let plan: Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        figures::BACKLOG_QUERY
    ))
    .fetch_one(&app.db)
    .await
    .unwrap();
    let read = provisioner_tests::plans::rows_read(&plan, "jobs");
    assert!(read <= 10.0, "{read} rows of jobs read: {plan}");
    app.stop().await;
}

/// The run-time quantiles of `/metrics` read at most the sample's number of endings, however
/// many of the last hour's endings never started (here the 30,000 cancelled items of a big
/// batch, after 50 jobs that ran): they are over the jobs that ran among the most recent
/// endings.
#[tokio::test]
async fn the_run_time_quantiles_read_at_most_a_sample_of_the_hours_endings() {
    use provisioner_shared::db;
    let app = TestApp::without_workers().await;
    sqlx::raw_sql(
        "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, created_at,
                           started_at, finished_at)
         SELECT gen_random_uuid(), 'createTenant', 'ran-' || i || '.example.com', 'succeeded',
                200, 'light', '{}', now() - interval '40 minutes',
                now() - interval '30 minutes' - i * interval '1 s',
                now() - interval '30 minutes'
         FROM generate_series(1, 50) i;
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, created_at,
                           finished_at)
         SELECT gen_random_uuid(), 'createTenant', 'never-' || i || '.example.com', 'cancelled',
                'heavy', '{}', now() - interval '20 minutes', now() - interval '10 minutes'
         FROM generate_series(1, 30000) i;
         ANALYZE jobs",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let mut tx = app.db.begin().await.unwrap();
    let before = rows_read_in_transaction(&mut tx, &["jobs"]).await;
    let stats = db::jobs::stats(&mut *tx).await.unwrap();
    let read = rows_read_in_transaction(&mut tx, &["jobs"]).await - before;
    assert!(
        read <= db::jobs::QUANTILE_SAMPLE + 10,
        "{read} rows of jobs read"
    );
    // The most recent 10,000 endings never ran: no run time to tell.
    assert_eq!(stats.duration_p50, None);
    // Fifty that ran ending after them are the sample.
    sqlx::query(
        "UPDATE jobs SET finished_at = now(), started_at = now() - interval '5 s'
         WHERE tenant_url LIKE 'ran-%'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let stats = db::jobs::stats(&mut *tx).await.unwrap();
    assert_eq!(stats.duration_p50, Some(5.0));
    drop(tx);
    app.stop().await;
}

/// Submits, for each client, a batch of each size (items of a served template, held: the
/// dispatcher releases them); each batch's client and id.
async fn submit_batches(
    app: &TestApp,
    batches: &[(&str, &[usize])],
) -> Vec<(reqwest::Client, String)> {
    let url = app.serve_sample_template("t").await;
    let mut submitted = vec![];
    for (client, sizes) in batches {
        let http = batches::client(app, client, &["tenants:read", "tenants:write"]).await;
        for n in *sizes {
            let r = batches::post(
                app,
                &http,
                "application/x-ndjson",
                batches::ndjson(&batches::items(*n, &url)),
            )
            .await;
            assert_eq!(r.status(), 202);
            let body: Value = r.json().await.unwrap();
            submitted.push((http.clone(), body["batchId"].as_str().unwrap().to_owned()));
        }
    }
    submitted
}

/// Checks that the held and active batch items read from `batch_held_changes` and the items in
/// flight (by the figures, KEDA's trigger, the shares and a batch's admission) are what the
/// batches' own counts say, before and after the changes are folded.
async fn agree_with_the_batches(app: &TestApp, step: &str) {
    use provisioner_shared::db;
    let counted: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT client_id, sum(held)::bigint,
                coalesce(sum(queued + running) FILTER (WHERE status = 'running'), 0)::bigint
         FROM batches GROUP BY client_id ORDER BY client_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let oldest: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT min(created_at) FROM batches WHERE held > 0")
            .fetch_one(&app.db)
            .await
            .unwrap();
    for folded in [false, true] {
        let at = format!("{step}, folded: {folded}");
        if folded {
            figures::compact_held_changes(&app.db).await.unwrap();
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_held_changes")
                .fetch_one(&app.db)
                .await
                .unwrap();
            let holding = counted.iter().filter(|(_, held, _)| *held > 0).count();
            assert_eq!(
                rows, holding as i64,
                "{at}: one row per client holding items"
            );
        }
        let held: i64 = sqlx::query_scalar(figures::HELD_ITEMS_QUERY)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(held, counted.iter().map(|(_, h, _)| h).sum::<i64>(), "{at}");
        let backlog = figures::backlog(&app.db).await.unwrap();
        assert_eq!(backlog.held, held, "{at}");
        assert_eq!(backlog.oldest_held, oldest, "{at}");
        let shares = figures::client_shares(&app.db).await.unwrap();
        let mut active: Vec<(String, i64)> = counted
            .iter()
            .filter(|(_, _, active)| *active > 0)
            .map(|(client, _, active)| (client.clone(), *active))
            .collect();
        active.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(shares.top, active, "{at}");
        for (client, _, n) in &counted {
            let unfinished = db::batches::unfinished_items(&app.db, client)
                .await
                .unwrap();
            assert_eq!(unfinished, *n, "{at}: {client}");
        }
    }
}

/// The held and active batch items agree with the batches' counts through every change an item
/// goes through: intake, release, claim, end, cancel and retry, with and without the changes
/// folded.
#[tokio::test]
async fn held_and_active_batch_items_agree_with_the_batches_counts_through_every_change() {
    use provisioner_shared::db;
    let app = TestApp::without_workers().await;
    let batch_ids = submit_batches(&app, &[("a", &[3, 6]), ("b", &[2, 4]), ("c", &[5, 1])]).await;
    agree_with_the_batches(&app, "accepted").await;
    for window in [5, 9] {
        let mut tx = app.db.begin().await.unwrap();
        let released = db::batches::release(&mut tx, window, 4).await.unwrap();
        tx.commit().await.unwrap();
        assert!(released > 0, "window {window}");
        agree_with_the_batches(&app, &format!("released up to {window}")).await;
    }
    for (step, sql) in [
        (
            "claimed",
            "UPDATE jobs SET status = 'running', started_at = now()
             WHERE id IN (SELECT id FROM jobs WHERE released_at IS NOT NULL
                          ORDER BY id LIMIT 5)",
        ),
        (
            "ended",
            "UPDATE jobs SET status = CASE WHEN batch_item % 2 = 0 THEN 'succeeded' ELSE 'failed' END,
                             code = CASE WHEN batch_item % 2 = 0 THEN 200 ELSE 400 END,
                             finished_at = now()
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' ORDER BY id LIMIT 4)",
        ),
    ] {
        let changed = sqlx::query(sql).execute(&app.db).await.unwrap();
        assert!(changed.rows_affected() > 0, "{step}");
        agree_with_the_batches(&app, step).await;
    }
    // A cancel of a batch with held items; a retry of every batch's failed items.
    let (http, cancelled) = &batch_ids[3];
    let r = http
        .post(app.url(&format!("/configapi/v2/batches/{cancelled}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    agree_with_the_batches(&app, "cancelled").await;
    let mut retried = 0;
    for (http, id) in &batch_ids {
        let r = http
            .post(app.url(&format!("/configapi/v2/batches/{id}/retry?code=400")))
            .send()
            .await
            .unwrap();
        retried += u32::from(r.status() == 202);
    }
    assert!(retried > 0, "a failed item was retried");
    agree_with_the_batches(&app, "retried").await;

    // A scrape folds what the next round appends.
    let rows = || async { app.count("SELECT count(*) FROM batch_held_changes").await };
    let folded = rows().await;
    let mut tx = app.db.begin().await.unwrap();
    assert!(db::batches::release(&mut tx, 30, 4).await.unwrap() > 0);
    tx.commit().await.unwrap();
    assert!(rows().await > folded, "the round appended its changes");
    scrape(&app).await;
    let holding = app
        .count("SELECT count(DISTINCT client_id) FROM batches WHERE held > 0")
        .await;
    assert_eq!(rows().await, holding, "a row per client holding items");
    agree_with_the_batches(&app, "released again, scraped").await;
    app.stop().await;
}

/// Each worker's sweep folds the changes of held items: two clients' batches run to their end
/// with nobody scraping `/metrics`, and what their intake, releases and ends appended is folded
/// away (nothing is held at the end, so no row is left).
#[tokio::test]
async fn a_workers_sweeps_fold_the_changes_of_held_items() {
    let mut app = TestApp::with(provisioner_tests::Options {
        workers: 0,
        vars: vec![("PROVISIONER_SWEEP_INTERVAL", "1".to_owned())],
    })
    .await;
    let submitted = submit_batches(&app, &[("a", &[2, 3]), ("b", &[2, 3])]).await;
    const ROWS: &str = "SELECT count(*) FROM batch_held_changes";
    assert_eq!(app.count(ROWS).await, 4, "a change per batch accepted");
    app.start_worker();
    for (_, id) in &submitted {
        let done = batches::wait(&app, id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    eventually(Duration::from_secs(20), || async {
        (app.count(ROWS).await == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// The migration that brought `batch_held_changes` counts the items batches already hold: its
/// objects are taken away from a migrated database, batches of two clients are given held
/// items as the previous version would, and the migration's own text runs again.
#[tokio::test]
async fn the_held_items_migration_counts_what_batches_already_hold() {
    let app = TestApp::without_workers().await;
    sqlx::raw_sql(
        "DROP TABLE batch_held_changes;
         DROP FUNCTION batches_held_changed() CASCADE;
         DROP INDEX batches_held_oldest;
         INSERT INTO batches (id, client_id, created_at)
         SELECT md5('m' || g)::uuid, 'client-' || (g % 2), now() - g * interval '1 minute'
         FROM generate_series(1, 5) g;
         INSERT INTO jobs (id, kind, tenant_url, status, client_id, params, batch_id,
                           batch_item, lane)
         SELECT gen_random_uuid(), 'createTenant', 'm-' || g || '-' || i || '.example.com',
                'queued', b.client_id, '{}', b.id, i, 'batch'
         FROM generate_series(1, 5) g JOIN batches b ON b.id = md5('m' || g)::uuid
         CROSS JOIN LATERAL generate_series(0, g) i;",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/20261215000001_held_items_by_client.sql"
    ))
    .execute(&app.db)
    .await
    .unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT client_id, n FROM batch_held_changes ORDER BY client_id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    // client-0 holds the items of batches 2 and 4 (3 and 5), client-1 of 1, 3 and 5 (2, 4, 6).
    assert_eq!(
        rows,
        vec![("client-0".to_owned(), 8), ("client-1".to_owned(), 12)]
    );
    agree_with_the_batches(&app, "migrated").await;
    app.stop().await;
}

/// `/metrics`' held items and shares, KEDA's trigger and a batch's admission read a handful of
/// rows of `batches`, `jobs` and `batch_held_changes` however many batches hold items, once the
/// changes are folded (as each sweep and scrape does): here 100,000 one-item batches, where each
/// read one row per batch.
#[tokio::test]
async fn the_held_and_active_batch_items_read_a_handful_of_rows_behind_many_held_batches() {
    use provisioner_shared::db;
    let app = with_many_held_batch_items().await;
    // The one statement that gave the 100,000 batches their items appended a change for each.
    let folded = figures::compact_held_changes(&app.db).await.unwrap();
    assert_eq!(folded, 100_000);
    assert_eq!(
        app.count("SELECT count(*) FROM batch_held_changes").await,
        1
    );
    // A fold with nothing to merge writes nothing.
    assert_eq!(figures::compact_held_changes(&app.db).await.unwrap(), 0);
    let tables = ["batches", "jobs", "batch_held_changes"];
    let mut conn = app.db.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let mut reads = vec![];
    let mut before = rows_read_in_transaction(&mut tx, &tables).await;
    let backlog = figures::backlog(&mut *tx).await.unwrap();
    assert_eq!(backlog.held, 100_000);
    assert!(backlog.oldest_held.is_some());
    let after = rows_read_in_transaction(&mut tx, &tables).await;
    reads.push(("backlog", after - before));
    before = after;
    let held: i64 = sqlx::query_scalar(figures::HELD_ITEMS_QUERY)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(held, 100_000);
    let after = rows_read_in_transaction(&mut tx, &tables).await;
    reads.push(("KEDA's trigger", after - before));
    before = after;
    let shares = figures::client_shares(&mut *tx).await.unwrap();
    assert_eq!(shares.top, vec![("heavy".to_owned(), 100_000)]);
    let after = rows_read_in_transaction(&mut tx, &tables).await;
    reads.push(("shares", after - before));
    before = after;
    let unfinished = db::batches::unfinished_items(&mut *tx, "heavy")
        .await
        .unwrap();
    assert_eq!(unfinished, 100_000);
    let after = rows_read_in_transaction(&mut tx, &tables).await;
    reads.push(("admission", after - before));
    drop(tx);
    assert!(reads.iter().all(|(_, n)| *n <= 10), "rows read: {reads:?}");
    drop(conn);
    app.stop().await;
}

/// An API cut off from PostgreSQL still answers `/metrics` within a few seconds, with its own
/// figures and `provisioner_database_reachable 0`, the database's and broker's left out (it
/// answered 503 after the pool's 10 s, with nothing a dashboard or alert could read).
#[tokio::test]
async fn without_its_database_an_api_serves_its_own_figures_and_says_so() {
    let app = TestApp::without_workers().await;
    let proxy = provisioner_tests::proxy::Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = format!("postgres://postgres@{}/{}", proxy.addr, app.database);
    let mut api = provisioner_tests::process::Proc::spawn(
        env!("CARGO_BIN_EXE_test-api"),
        &app,
        &[("DATABASE_URL", &through_proxy)],
        "info",
    );
    let addr = api.api_addr().await;
    let scrape = || async move {
        let r = provisioner_tests::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let reachable = scrape().await;
    assert_eq!(value(&reachable, "provisioner_database_reachable"), 1.0);
    assert!(sample(&reachable, "provisioner_batch_items_held").is_some());

    proxy.cut();
    // The reading of the last 2 s may serve a scrape or two; then each scrape reads again.
    let unreachable = eventually(Duration::from_secs(30), || async {
        let started = std::time::Instant::now();
        let text = scrape().await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a scrape took {:?}",
            started.elapsed()
        );
        (sample(&text, "provisioner_database_reachable") == Some(0.0)).then_some(text)
    })
    .await;
    assert!(sample(&unreachable, "provisioner_template_memory_in_use_bytes").is_some());
    assert!(
        sample(&unreachable, "provisioner_batch_items_held").is_none(),
        "{unreachable}"
    );
    drop(api);
    app.stop().await;
}
