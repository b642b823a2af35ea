//! `Prefer: wait` answers a job that ends in failure with the job's code and a problem whose
//! `job` member is the job: 500 after retries, 503 for the lock, and a cancelled job.

use std::time::Duration;

use provisioner_tests::{Options, TestApp, eventually, fixtures, template_server::Route};
use serde_json::{Value, json};

/// `POST` a create with `Prefer: wait=30`; returns the status, the headers' content type and
/// preference, and the body.
async fn create_waiting(app: &TestApp, tenant: &str, body: &Value) -> (u16, String, String, Value) {
    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
        .header("prefer", "wait=30")
        .json(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, applied) = (header("content-type"), header("preference-applied"));
    (
        r.status().as_u16(),
        content_type,
        applied,
        r.json().await.unwrap(),
    )
}

/// The problem answers the job's code and carries the job as `GET` shows it.
async fn assert_failed_job_problem(
    app: &TestApp,
    (status, content_type, applied, problem): &(u16, String, String, Value),
    code: u16,
    title: &str,
) {
    assert_eq!(*status, code, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(applied, "wait=30");
    assert_eq!(problem["type"], "urn:provisioner:problem:job-failed");
    assert_eq!(problem["status"], code);
    assert_eq!(problem["title"], title);
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    let id = problem["job"]["jobId"].as_str().expect("the job");
    let (_, job) = app.get_json(&format!("/configapi/v2/jobs/{id}")).await;
    assert_eq!(problem["job"], job, "the job as GET shows it");
}

#[tokio::test]
async fn a_wait_ending_in_500_answers_500_with_the_job_after_its_retries() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![("PROVISIONER_JOB_MAX_ATTEMPTS", "2".into())],
    })
    .await;
    let url = app.templates.route(
        "down",
        Route {
            status: 503,
            body: Default::default(),
            fail_first: 0,
        },
    );
    let answer = create_waiting(&app, &fixtures::tenant_url(), &fixtures::create_body(&url)).await;
    assert_failed_job_problem(&app, &answer, 500, "Internal Server Error").await;
    assert_eq!(
        answer.3["detail"],
        "the job failed 2 times with transient faults; the last: the template server answered 503 Service Unavailable"
    );
    let job = &answer.3["job"];
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(500), Some(2)),
        "{job}"
    );
    assert_eq!(app.templates.hits("down"), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_wait_ending_in_a_lock_timeout_answers_503_with_the_job() {
    let app = TestApp::spawn().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let held = app.hold_lock(&format!("provisioner:tenant:{tenant}")).await;
    let mut body = fixtures::create_body(&url);
    body["lockTimeout"] = json!(1);
    let answer = create_waiting(&app, &tenant, &body).await;
    assert_failed_job_problem(&app, &answer, 503, "Lock timeout").await;
    let job = &answer.3["job"];
    assert_eq!(
        (
            job["status"].as_str(),
            job["code"].as_i64(),
            job["attempts"].as_i64()
        ),
        (Some("failed"), Some(503), Some(1)),
        "{job}"
    );
    held.rollback().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_wait_ending_in_a_cancel_answers_409_with_the_cancelled_job() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let tenant = fixtures::tenant_url();
    let waiting = {
        let (app_url, http) = (app.url(""), app.http.clone());
        let (tenant, body) = (tenant.clone(), fixtures::create_body(&url));
        tokio::spawn(async move {
            let r = http
                .post(format!(
                    "{app_url}/configapi/v2/selfservice/tenant/{tenant}"
                ))
                .header("prefer", "wait=30")
                .json(&body)
                .send()
                .await
                .unwrap();
            let applied = r.headers().get("preference-applied").cloned();
            let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
            (
                r.status().as_u16(),
                content_type,
                applied,
                r.json::<Value>().await.unwrap(),
            )
        })
    };
    let id: String = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar("SELECT id::text FROM jobs WHERE tenant_url = $1")
            .bind(&tenant)
            .fetch_optional(&app.db)
            .await
            .unwrap()
    })
    .await;
    let r = app
        .http
        .delete(app.url(&format!("/configapi/v2/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, content_type, applied, problem) =
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the wait ends with the cancel, not at 30 s")
            .unwrap();
    let answer = (
        status,
        content_type,
        applied
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        problem,
    );
    assert_failed_job_problem(&app, &answer, 409, "Cancelled").await;
    let job = &answer.3["job"];
    assert_eq!(
        (
            job["jobId"].as_str(),
            job["status"].as_str(),
            job["code"].as_i64()
        ),
        (Some(id.as_str()), Some("cancelled"), None),
        "{job}"
    );
    app.stop().await;
}
