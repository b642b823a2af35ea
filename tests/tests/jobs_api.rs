//! The job resource: events, `Prefer: wait`, idempotency, cancel, listing and long-polling.

use std::{collections::HashSet, time::Duration};

use futures_util::StreamExt;
use provisioner_tests::{TestApp, events::EventTap, fixtures};
use serde_json::{Value, json};

#[tokio::test]
async fn every_status_change_is_published_as_a_cloudevent_with_jobversion() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let url = app.serve_sample_template("t").await;
    let job = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let id = job["jobId"].as_str().unwrap();
    let mut events = tap.collect_until(|e| e.len() >= 3).await;
    events.sort_by_key(|e| e.body["jobversion"].as_i64());
    let keys: Vec<_> = events.iter().map(|e| e.routing_key.as_str()).collect();
    assert_eq!(keys, ["job.queued", "job.running", "job.succeeded"]);
    let mut ids = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let b = &e.body;
        assert_eq!(
            e.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert!(e.persistent);
        assert_eq!(b["specversion"], "1.0");
        assert_eq!(b["source"], "/provisioner");
        assert_eq!(b["type"], format!("io.provisioner.{}", e.routing_key));
        assert_eq!(b["subject"], id);
        assert_eq!(b["jobversion"], i as i64 + 1);
        assert!(b["time"].is_string());
        assert!(
            ids.insert(b["id"].as_str().unwrap().to_owned()),
            "event ids are unique"
        );
        assert_eq!(b["data"]["jobId"], id);
        assert_eq!(
            b["data"]["status"],
            e.routing_key.trim_start_matches("job.")
        );
    }
    assert_eq!(
        events[2].body["data"], job,
        "the last event carries the job as GET returns it"
    );
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_answers_with_the_final_code() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let post = |tenant: String, body: Value, wait: &'static str| {
        app.http
            .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
            .header("prefer", wait)
            .json(&body)
            .send()
    };
    let tenant = fixtures::tenant_url();
    let r = post(
        tenant.clone(),
        fixtures::create_body(&url),
        "respond-async, wait=30",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "wait=30");
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        (job["status"].as_str(), job["code"].as_i64()),
        (Some("succeeded"), Some(200))
    );
    assert_eq!(job["tenant"]["url"], tenant);

    // A failure answers its code as a problem carrying the job.
    let r = post(
        fixtures::tenant_url(),
        fixtures::create_body(&format!("http://{}/absent", app.templates.addr)),
        "wait=30",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["preference-applied"], "wait=30");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["title"], "Bad template");
    assert_eq!(p["job"]["code"], 400);

    // Existing tenant: 409 at once, whatever the preference.
    let r = post(tenant, fixtures::create_body(&url), "wait=30")
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_that_runs_out_answers_202() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let started = std::time::Instant::now();
    let r = app
        .http
        .post(app.url(&format!(
            "/configapi/v2/selfservice/tenant/{}",
            fixtures::tenant_url()
        )))
        .header("prefer", "wait=1")
        .json(&fixtures::create_body(&url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(r.headers().contains_key("location"));
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_job_and_a_different_body_is_422() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let send = |body: Value, key: &'static str| {
        app.http
            .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = fixtures::create_body(&url);
    // A storm of concurrent retries makes exactly one job.
    let storm = futures_util::future::join_all((0..8).map(|_| send(body.clone(), "key-1"))).await;
    let mut ids = HashSet::new();
    for r in storm {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        ids.insert(
            r.json::<Value>().await.unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    app.wait_job(&id).await;

    // After the job ended, the same key and body still return it (not 409 for the new tenant).
    let r = send(body.clone(), "key-1").await.unwrap();
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        (again["jobId"].as_str(), again["status"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );

    let mut other = body.clone();
    other["password"] = json!("another password entirely");
    let r = send(other, "key-1").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let jobs = app.count("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_storm_over_many_keys_with_conflicting_bodies_makes_one_job_per_key() {
    // No worker: every job stays in flight while the storm lasts.
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    const KEYS: usize = 16;
    let mut requests = vec![];
    for k in 0..KEYS {
        let tenant = fixtures::tenant_url();
        let key = format!("storm-{k}");
        let first = fixtures::create_body(&url);
        let mut second = first.clone();
        second["password"] = json!(format!("another password {k}"));
        // Four copies of one body and two of a conflicting one, sent all at once and
        // interleaved with every other key's.
        for which in [0, 1, 0, 0, 1, 0] {
            let body = if which == 0 { &first } else { &second };
            requests.push((k, which, tenant.clone(), key.clone(), body.clone()));
        }
    }
    let answers = futures_util::future::join_all(requests.into_iter().map(
        |(k, which, tenant, key, body)| {
            let app = &app;
            async move {
                let r = app
                    .http
                    .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
                    .header("idempotency-key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let job = r.json::<Value>().await.unwrap()["jobId"]
                    .as_str()
                    .map(str::to_owned);
                (k, which, status, job)
            }
        },
    ))
    .await;
    for k in 0..KEYS {
        let mine: Vec<_> = answers.iter().filter(|a| a.0 == k).collect();
        // Whichever body was recorded first wins: all its copies get that job, every copy of
        // the other body 422.
        let winner = mine
            .iter()
            .find(|a| a.2 == 202)
            .expect("one body accepted")
            .1;
        let jobs: HashSet<&Option<String>> =
            mine.iter().filter(|a| a.2 == 202).map(|a| &a.3).collect();
        assert_eq!(jobs.len(), 1, "key {k}: {mine:?}");
        for a in &mine {
            let expected = if a.1 == winner { 202 } else { 422 };
            assert_eq!(a.2, expected, "key {k}: {mine:?}");
        }
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, KEYS as i64);
    app.stop().await;
}

#[tokio::test]
async fn a_queued_job_can_be_cancelled_and_is_then_never_run() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let id = app.submit(&tenant, &fixtures::create_body(&url)).await;
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cancelled: Value = r.json().await.unwrap();
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["code"].as_i64()),
        (Some("cancelled"), None)
    );
    assert!(cancelled["finishedAt"].is_string());
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        format!("job {id} was already cancelled and can no longer be cancelled").as_str()
    );
    let r = app
        .http
        .delete(app.url("/configapi/v2/jobs/00000000-0000-0000-0000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The worker receives the message, sees the job cancelled, and does nothing.
    app.start_worker();
    let other = app
        .create_and_wait(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(other["code"], 200);
    let (_, after) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(
        app.get_json(&format!("/configapi/v2/tenant/{tenant}"))
            .await
            .0,
        404
    );
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT sealed_password FROM jobs WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        sealed.is_none(),
        "an ended job keeps no password, sealed or not"
    );

    // Ended jobs cannot be cancelled.
    let r = app
        .http
        .delete(app.url(&format!(
            "/configapi/v2/jobs/{}",
            other["jobId"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .ends_with(" has already succeeded and can no longer be cancelled"),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_list_newest_first_with_filters_and_a_cursor() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let mut made = vec![];
    for _ in 0..5 {
        let job: Value = app
            .create(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await
            .json()
            .await
            .unwrap();
        made.push(job["jobId"].as_str().unwrap().to_owned());
    }
    app.http
        .delete(app.url(&format!("/configapi/v2/jobs/{}", made[0])))
        .send()
        .await
        .unwrap();
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/configapi/v2/jobs?limit=2&cursor={c}"),
            None => "/configapi/v2/jobs?limit=2".to_owned(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|j| j["jobId"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made, "every job once, newest first");
    let (_, cancelled) = app.get_json("/configapi/v2/jobs?status=cancelled").await;
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["jobId"], made[4]);
    let (status, _) = app.get_json("/configapi/v2/jobs?status=bogus").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/configapi/v2/jobs?cursor=garbage").await;
    assert_eq!(status, 400);
    // A well-formed cursor holding a NUL (`1796689952844080|x|\0`), which no key does.
    for list in ["jobs", "templates", "batches", "tenant", "accessnumbers"] {
        let path = format!("/configapi/v2/{list}?cursor=MTc5NjY4OTk1Mjg0NDA4MHx4fAA");
        let (status, problem) = app.get_json(&path).await;
        assert_eq!(status, 400, "{list}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "cursor", "{list}: {problem}");
    }
    app.stop().await;
}

/// A URL written from a template (`?status=&limit=&cursor=`) sends empty values: for filters,
/// paging and waits, empty is absent; for a parameter that changes what a request does, an
/// empty value stays a fault rather than a default nobody chose.
#[tokio::test]
async fn empty_filter_paging_and_wait_values_count_as_absent() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let (status, page) = app
        .get_json("/configapi/v2/jobs?status=&tenantUrl=&batchId=&limit=&cursor=")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["jobId"], id.as_str(), "{page}");
    for path in [
        "/configapi/v2/batches?limit=&cursor=",
        "/configapi/v2/templates?limit=&cursor=",
        "/configapi/v2/accessnumbers?tenantUrl=&limit=&cursor=",
    ] {
        let (status, page) = app.get_json(path).await;
        assert_eq!(status, 200, "{path}: {page}");
    }
    let started = std::time::Instant::now();
    let (status, job) = app
        .get_json(&format!("/configapi/v2/jobs/{id}?wait=&status="))
        .await;
    assert_eq!((status, job["status"].as_str()), (200, Some("queued")));
    assert!(started.elapsed() < Duration::from_secs(5), "no wait asked");
    let tenant = fixtures::tenant_url();
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/tenant/{tenant}?keepAccessNumbers=")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an empty keepAccessNumbers is not `false`");
    app.stop().await;
}

#[tokio::test]
async fn long_polling_returns_as_soon_as_the_status_changes() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let started = std::time::Instant::now();
    let (_, same) = app
        .get_json(&format!("/configapi/v2/jobs/{id}?wait=1&status=queued"))
        .await;
    assert_eq!(same["status"], "queued");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "no change: waits the full time"
    );

    // The long poll goes to an API process of its own, whose `/metrics` show when it holds it:
    // the job changes only then.
    let mut api =
        provisioner_tests::process::Proc::spawn(env!("CARGO_BIN_EXE_test-api"), &app, &[], "info");
    let addr = api.api_addr().await;
    let http = provisioner_tests::authorized_client(
        &provisioner_tests::fetch_token(
            &provisioner_tests::http_client(),
            addr,
            provisioner_tests::BOOTSTRAP_ID,
            provisioner_tests::BOOTSTRAP_SECRET,
        )
        .await,
    );
    let poll = tokio::spawn(async move {
        http.get(format!(
            "http://{addr}/configapi/v2/jobs/{id}?wait=60&status=queued"
        ))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
    });
    provisioner_tests::until_api_waits(addr, 1).await;
    let started = std::time::Instant::now();
    app.start_worker();
    let changed = poll.await.unwrap();
    assert_ne!(changed["status"], "queued");
    assert!(started.elapsed() < Duration::from_secs(20));
    api.child.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_client_past_its_active_job_cap_gets_429_with_retry_after() {
    let app = TestApp::with(provisioner_tests::Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_ACTIVE_JOBS", "2".into())],
    })
    .await;
    let url = app.serve_sample_template("t").await;
    let mut ids = vec![];
    for _ in 0..2 {
        let r = app
            .create(&fixtures::tenant_url(), &fixtures::create_body(&url))
            .await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = app
        .create(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    app.http
        .delete(app.url(&format!("/configapi/v2/jobs/{}", ids[0])))
        .send()
        .await
        .unwrap();
    let r = app
        .create(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    assert_eq!(r.status(), 202, "an ended job frees its place");
    app.stop().await;
}

#[tokio::test]
async fn a_client_cap_holds_exactly_when_its_creates_arrive_together() {
    let app = TestApp::with(provisioner_tests::Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_ACTIVE_JOBS", "25".into())],
    })
    .await;
    let template = app.serve_sample_template("t").await;
    let urls: Vec<String> = (0..100).map(|_| fixtures::tenant_url()).collect();
    let statuses: Vec<u16> = futures_util::stream::iter(urls)
        .map(|url| {
            let body = fixtures::create_body(&template);
            let app = &app;
            async move { app.create(&url, &body).await.status().as_u16() }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut counts: std::collections::HashMap<u16, usize> = Default::default();
    for status in statuses {
        *counts.entry(status).or_default() += 1;
    }
    assert_eq!(counts.get(&202), Some(&25), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&75), "{counts:?}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(jobs, 25);
    app.stop().await;
}

#[tokio::test]
async fn long_polling_without_a_status_waits_until_the_job_is_terminal() {
    let mut app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let poll = {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/configapi/v2/jobs/{id}?wait=60")),
        );
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    // The job passes through `running` on its way: neither that nor `queued` may answer.
    app.start_worker();
    let (status, job) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["code"], 200);
    app.stop().await;
}

/// A job that has ended (cancelled while queued): it never changes again.
async fn cancelled_job(app: &TestApp) -> String {
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    id
}

#[tokio::test]
async fn a_wait_of_any_length_is_clamped_not_refused() {
    let app = TestApp::without_workers().await;
    let id = cancelled_job(&app).await;
    // A terminal job answers at once, whatever the wait.
    for wait in ["61", "18446744073709551616", &"9".repeat(40)] {
        let (status, job) = app
            .get_json(&format!("/configapi/v2/jobs/{id}?wait={wait}"))
            .await;
        assert_eq!(status, 200, "wait={wait}: {job}");
        assert_eq!(job["status"], "cancelled");
    }
    for wait in ["-1", "soon", "1.5"] {
        let (status, problem) = app
            .get_json(&format!("/configapi/v2/jobs/{id}?wait={wait}"))
            .await;
        assert_eq!(status, 400, "wait={wait}");
        assert_eq!(problem["errors"][0]["field"], "wait");
    }
    app.stop().await;
}

#[tokio::test]
async fn long_polling_for_a_change_from_the_status_a_job_ended_in_waits_its_seconds() {
    let app = TestApp::without_workers().await;
    let id = cancelled_job(&app).await;
    // The contract: `?wait=N&status=S` answers once the status differs from `S`, and in every
    // case after N seconds; a job that ended in `S` never differs, so it is the N seconds.
    let asked = std::time::Instant::now();
    let (status, job) = app
        .get_json(&format!("/configapi/v2/jobs/{id}?wait=1&status=cancelled"))
        .await;
    let waited = asked.elapsed();
    assert_eq!(
        (status, &job["status"]),
        (200, &json!("cancelled")),
        "{job}"
    );
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    // Asked with another status, it answers at once.
    let asked = std::time::Instant::now();
    let (status, _) = app
        .get_json(&format!("/configapi/v2/jobs/{id}?wait=60&status=queued"))
        .await;
    assert_eq!(status, 200);
    assert!(asked.elapsed() < Duration::from_secs(20));
    app.stop().await;
}

/// A page of the job list reads about as many rows as it shows, however many jobs are stored
/// and however rare the status or tenant asked for: one index range per status.
#[tokio::test]
async fn a_job_list_page_reads_no_more_rows_than_it_shows_whatever_the_filter() {
    use provisioner_shared::{
        db::jobs::{ListFilter, list, list_statement},
        domain::JobStatus,
    };
    let app = TestApp::without_workers().await;
    let batch = uuid::Uuid::new_v4();
    // Two failed jobs, then 20,000 newer succeeded ones, all of one client and one batch (the
    // batch's counts written here, its triggers off: they count only what is inserted queued).
    let mut conn = app.db.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "INSERT INTO batches (id, client_id, status, finished_at, total, succeeded, failed)
         VALUES ($1, 'lister', 'completed', now(), 20002, 20000, 2)",
        "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, created_at,
                           finished_at, batch_id, batch_item)
         SELECT gen_random_uuid(), 'createTenant', 'old-' || i || '.example.com', 'failed', 500,
                'lister', '{}', now() - interval '1 day' - i * interval '1 s', now(), $1, i
         FROM generate_series(0, 1) i",
        "INSERT INTO jobs (id, kind, tenant_url, status, code, client_id, params, created_at,
                           finished_at, batch_id, batch_item)
         SELECT gen_random_uuid(), 'createTenant', 'new-' || i || '.example.com', 'succeeded',
                200, 'lister', '{}', now() - i * interval '1 ms', now(), $1, i + 2
         FROM generate_series(0, 19999) i",
        "RESET session_replication_role",
        "ANALYZE jobs",
    ] {
        let query = sqlx::query(sql);
        let query = if sql.contains("$1") {
            query.bind(batch)
        } else {
            query
        };
        query.execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    let newest: Vec<(chrono::DateTime<chrono::Utc>, uuid::Uuid)> = sqlx::query_as(
        "SELECT created_at, id FROM jobs ORDER BY created_at DESC, id DESC LIMIT 200",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let base = ListFilter {
        limit: 11,
        ..ListFilter::default()
    };
    let filters = [
        (
            "a client's failed jobs",
            2,
            ListFilter {
                client_id: Some("lister"),
                status: Some(JobStatus::Failed),
                ..base
            },
        ),
        (
            "a client's jobs of one tenant",
            1,
            ListFilter {
                client_id: Some("lister"),
                tenant_url: Some("old-1.example.com"),
                ..base
            },
        ),
        (
            "everyone's failed jobs",
            2,
            ListFilter {
                status: Some(JobStatus::Failed),
                ..base
            },
        ),
        (
            "a batch's failed jobs",
            2,
            ListFilter {
                client_id: Some("lister"),
                batch_id: Some(batch),
                status: Some(JobStatus::Failed),
                ..base
            },
        ),
        (
            "a client's jobs",
            11,
            ListFilter {
                client_id: Some("lister"),
                ..base
            },
        ),
        (
            "a batch's jobs after a cursor",
            11,
            ListFilter {
                batch_id: Some(batch),
                after: Some(newest[99]),
                ..base
            },
        ),
        ("everyone's jobs", 11, ListFilter { ..base }),
    ];
    for (name, shown, filter) in filters {
        let jobs = list(&app.db, &filter).await.unwrap();
        assert_eq!(jobs.len(), shown, "{name}");
        let (sql, args) = list_statement(&filter).unwrap();
        let plan: Value =
            sqlx::query_scalar_with(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), args)
                .fetch_one(&app.db)
                .await
                .unwrap();
        let read = provisioner_tests::plans::rows_read(&plan, "jobs");
        assert!(
            read <= 5.0 * 11.0 + 5.0,
            "{name}: {read} rows read for {shown} shown: {plan}"
        );
        // Newest first, the page the whole table sorted would give.
        if shown == 11 {
            let offset = usize::from(filter.after.is_some()) * 100;
            let expected: Vec<uuid::Uuid> =
                newest[offset..offset + 11].iter().map(|n| n.1).collect();
            let got: Vec<uuid::Uuid> = jobs.iter().map(|j| j.id).collect();
            assert_eq!(got, expected, "{name}");
        }
    }
    app.stop().await;
}
