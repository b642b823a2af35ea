//! Batch requests at their edges: the client cap checked as items arrive and on retry.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use provisioner_tests::{
    Options, TestApp,
    batches::{self, items, post},
};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(90);

fn id(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_batch_past_the_cap_is_refused_as_its_items_arrive_before_the_body_ends() {
    let app = TestApp::with(Options {
        workers: 0,
        vars: vec![("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "5".to_owned())],
    })
    .await;
    let template = app.serve_sample_template("t.zip").await;
    batches::submit(&app, &items(3, &template)).await;
    // Three more items pass the cap of 5; the body then stalls, as a huge upload would go on.
    let lines: Vec<Result<bytes::Bytes, std::io::Error>> = items(3, &template)
        .iter()
        .map(|i| Ok(format!("{i}\n").into()))
        .collect();
    let body = stream::iter(lines).chain(stream::pending());
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        post(
            &app,
            &app.http,
            "application/x-ndjson",
            reqwest::Body::wrap_stream(body),
        ),
    )
    .await
    .expect("the refusal comes before the body ends");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "this batch would give the client 6 unfinished batch items; its limit is 5; \
         retry when some have ended"
    );
    assert_eq!(app.count("SELECT count(*) FROM batches").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_that_would_pass_the_clients_cap_is_429_and_retries_nothing() {
    let app = TestApp::with(Options {
        workers: 1,
        vars: vec![
            ("PROVISIONER_CLIENT_MAX_BATCH_ITEMS", "3".to_owned()),
            ("PROVISIONER_TEMPLATE_TIMEOUT", "60".to_owned()),
        ],
    })
    .await;
    let missing = format!("http://{}/missing.zip", app.templates.addr);
    let failed = batches::submit(&app, &items(3, &missing)).await;
    let failed_id = id(&failed, "batchId");
    let done = batches::wait(&app, &failed_id, WITHIN).await;
    assert_eq!(done["counts"]["failed"], 3, "{done}");
    // Two items stay unfinished while their template is held.
    let slow = app.serve_sample_template("slow.zip").await;
    app.templates.hold("slow.zip");
    let busy = batches::submit(&app, &items(2, &slow)).await;

    let retry = || {
        app.http
            .post(app.url(&format!("/configapi/v2/batches/{failed_id}/retry")))
            .send()
    };
    let r = retry().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "this retry would give the client 5 unfinished batch items; its limit is 3; \
         retry when some have ended"
    );
    let (_, after) = app
        .get_json(&format!("/configapi/v2/batches/{failed_id}"))
        .await;
    assert_eq!(after, done, "nothing retried");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 5);

    app.templates.release("slow.zip");
    batches::wait(&app, &id(&busy, "batchId"), WITHIN).await;
    let r = retry().await.unwrap();
    assert_eq!(r.status(), 202);
    app.stop().await;
}
