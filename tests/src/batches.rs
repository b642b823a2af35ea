//! Helpers for batch tests: more clients, batch bodies, waiting for a batch, its results.

use std::time::Duration;

use futures_util::StreamExt;
use provisioner_shared::{db, passwords};
use serde_json::{Value, json};

use crate::{TestApp, authorized_client, fetch_token, fixtures};

/// A client `id` with `scopes`, made directly in the database; an HTTP client with its token.
pub async fn client(app: &TestApp, id: &str, scopes: &[&str]) -> reqwest::Client {
    let secret = format!("{id}-secret");
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    db::clients::insert(
        &app.db,
        id,
        id,
        &passwords::hash(secret.as_bytes()),
        &scopes,
        db::clients::OnExisting::Refuse,
    )
    .await
    .unwrap();
    let token = fetch_token(&crate::http_client(), app.addr, id, &secret).await;
    authorized_client(&token)
}

/// A valid batch item: the create body for `template_url`, for tenant `url`.
pub fn item(url: &str, template_url: &str) -> Value {
    let mut body = fixtures::create_body(template_url);
    body["tenantUrl"] = json!(url);
    body
}

/// `n` valid items with fresh tenant URLs.
pub fn items(n: usize, template_url: &str) -> Vec<Value> {
    (0..n)
        .map(|_| item(&fixtures::tenant_url(), template_url))
        .collect()
}

/// The items as an NDJSON body.
pub fn ndjson(items: &[Value]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

/// `POST /configapi/v2/batches` with `body` of `content_type`.
pub async fn post(
    app: &TestApp,
    http: &reqwest::Client,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    http.post(app.url("/configapi/v2/batches"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Submits `items` as NDJSON, expects 202, returns the batch.
pub async fn submit(app: &TestApp, items: &[Value]) -> Value {
    let r = post(app, &app.http, "application/x-ndjson", ndjson(items)).await;
    assert_eq!(r.status(), 202, "batch: {}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// Waits (long polls) until the batch stops running, at most `within`.
pub async fn wait(app: &TestApp, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, batch) = app
            .get_json(&format!("/configapi/v2/batches/{id}?wait=5"))
            .await;
        assert_eq!(status, 200, "batch {id}: {batch}");
        if batch["status"] != "running" {
            return batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch {id} still running after {within:?}: {batch}"
        );
    }
}

/// The batch's results (NDJSON lines), with `query` (e.g. `?status=failed`).
pub async fn results(app: &TestApp, id: &str, query: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url(&format!("/configapi/v2/batches/{id}/results{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The counts of a batch add up to its total.
pub fn assert_counts_add_up(batch: &Value) {
    let c = &batch["counts"];
    let parts: i64 = ["queued", "running", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|k| c[k].as_i64().unwrap())
        .sum();
    assert_eq!(parts, c["total"].as_i64().unwrap(), "{batch}");
}

/// A batch of 1,001 items whose last line waits for the returned sender (sent or dropped):
/// its answer's status, once it comes.
pub fn stalled(
    app: &TestApp,
    http: &reqwest::Client,
    template: &str,
) -> (
    tokio::task::JoinHandle<reqwest::StatusCode>,
    tokio::sync::oneshot::Sender<()>,
) {
    let first = items(1_001, template)
        .iter()
        .map(|i| format!("{i}\n"))
        .collect();
    let last = format!("{}\n", item(&fixtures::tenant_url(), template));
    let (answer, release) = stalled_lines(app, http, first, last);
    (
        tokio::spawn(async move { answer.await.unwrap().status() }),
        release,
    )
}

/// An NDJSON batch of `first` then `last`, whose last line waits for the returned sender (sent
/// or dropped): its answer, once it comes.
pub fn stalled_lines(
    app: &TestApp,
    http: &reqwest::Client,
    first: Vec<String>,
    last: String,
) -> (
    tokio::task::JoinHandle<reqwest::Response>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first: Vec<Result<bytes::Bytes, std::io::Error>> =
        first.into_iter().map(|l| Ok(l.into())).collect();
    let body = futures_util::stream::iter(first).chain(futures_util::stream::once(async move {
        released.await.ok();
        Ok(bytes::Bytes::from(last))
    }));
    let request = http
        .post(app.url("/configapi/v2/batches"))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body));
    let answer = tokio::spawn(async move { request.send().await.unwrap() });
    (answer, release)
}

/// Batches being received with their transaction open: their sessions idle in transaction,
/// waiting for their bodies.
pub async fn receiving(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .await
}

/// Waits until `n` batches are being received (`receiving`).
pub async fn until_receiving(app: &TestApp, n: i64) {
    crate::eventually(Duration::from_secs(30), || async {
        (receiving(app).await == n).then_some(())
    })
    .await;
}
