//! Traces: the W3C trace context of a request travels with its jobs, on their broker messages
//! (`traceparent` header), on every CloudEvent they announce (the `traceparent` extension
//! attribute) and into the worker's job span (`trace_id` on every log line of the job).

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicNackOptions},
    types::FieldTable,
};
use provisioner_shared::{queue, trace::TraceContext};
use provisioner_tests::{
    BOOTSTRAP_ID, BOOTSTRAP_SECRET, TestApp, authorized_client, batches,
    events::{Event, EventTap, traceparent_header},
    fetch_token, fixtures, http_client,
    process::Proc,
};
use serde_json::{Value, json};

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const PARENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

/// The trace context an event carries: its `traceparent` attribute, which must be valid W3C
/// version 00 and the same as its message's header.
fn event_trace(event: &Event) -> TraceContext {
    let attribute = event.body["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the event has a traceparent: {}", event.body));
    assert!(
        attribute.starts_with("00-") && attribute.len() == 55,
        "version 00: {attribute}"
    );
    assert_eq!(
        event.traceparent.as_deref(),
        Some(attribute),
        "the message header carries the attribute"
    );
    assert!(
        event.body["data"].get("traceparent").is_none(),
        "the job's view is unchanged: {}",
        event.body["data"]
    );
    TraceContext::parse(attribute).expect("a valid traceparent")
}

/// `POST` a create for a new tenant with `traceparent` (if any); returns the job id.
async fn create(app: &TestApp, template: &str, traceparent: Option<&str>) -> String {
    create_at(&app.http, &app.url(""), template, traceparent).await
}

/// `create`, through the API at `base` with `http`.
async fn create_at(
    http: &reqwest::Client,
    base: &str,
    template: &str,
    traceparent: Option<&str>,
) -> String {
    let tenant = fixtures::tenant_url();
    let mut request = http
        .post(format!("{base}/configapi/v2/selfservice/tenant/{tenant}"))
        .json(&fixtures::create_body(template));
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The events of each job in `ids`, collected until each has its `job.succeeded`.
async fn events_until_succeeded(tap: &mut EventTap, ids: &[&str]) -> HashMap<String, Vec<Event>> {
    let events = tap
        .collect_until(|seen| {
            ids.iter().all(|id| {
                seen.iter()
                    .any(|e| e.routing_key == "job.succeeded" && e.body["subject"] == *id)
            })
        })
        .await;
    let mut by_job: HashMap<String, Vec<Event>> = HashMap::new();
    for e in events {
        if let Some(id) = e.body["subject"].as_str()
            && e.routing_key.starts_with("job.")
        {
            by_job.entry(id.to_owned()).or_default().push(e);
        }
    }
    for id in ids {
        let keys: Vec<&str> = by_job[*id].iter().map(|e| e.routing_key.as_str()).collect();
        assert_eq!(
            keys,
            ["job.queued", "job.running", "job.succeeded"],
            "job {id}"
        );
    }
    by_job
}

/// The one trace context all of a job's events carry (they must agree).
fn job_trace(events: &[Event]) -> TraceContext {
    let traces: Vec<TraceContext> = events.iter().map(event_trace).collect();
    assert!(
        traces.windows(2).all(|w| w[0] == w[1]),
        "every event of the job carries the same trace context: {traces:?}"
    );
    traces[0]
}

/// Takes the next message of `queue` (a consumer, waiting up to 30 s) and hands it back
/// unacknowledged; returns its `traceparent` header and body.
async fn peek_job_message(amqp_url: &str, queue_name: &str) -> (Option<String>, Value) {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue_name.into(),
            "trace-peek".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("the job message is published in time")
        .unwrap()
        .unwrap();
    let header = traceparent_header(&delivery.properties);
    let body = serde_json::from_slice(&delivery.data).unwrap();
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    (header, body)
}

#[tokio::test]
async fn a_requests_trace_reaches_the_job_message_every_event_and_the_workers_log() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    // Through an API process logging JSON lines: the request's span has the trace id.
    let mut api = Proc::spawn(env!("CARGO_BIN_EXE_test-api"), &app, &[], "info");
    let addr = api.api_addr().await;
    let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let http = authorized_client(&token);
    let id = create_at(&http, &format!("http://{addr}"), &template, Some(PARENT)).await;
    let accepted = api.wait_for("job accepted").await;
    assert_eq!(accepted["job.id"], id.as_str(), "{accepted}");
    assert_eq!(accepted["span"]["name"], "request", "{accepted}");
    assert_eq!(accepted["span"]["trace_id"], PARENT_TRACE, "{accepted}");

    // The job's broker message carries the trace as its `traceparent` header, and no more than
    // the job id in its body.
    let (header, body) = peek_job_message(&app.vars["AMQP_URL"], queue::CREATE_TENANT_QUEUE).await;
    assert_eq!(body, json!({ "jobId": id }));
    let header = TraceContext::parse(&header.expect("the job message has a traceparent header"))
        .expect("a valid traceparent header");
    assert_eq!(header.trace_id_hex(), PARENT_TRACE);

    let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &[], "info");
    let events = events_until_succeeded(&mut tap, &[&id]).await;
    let trace = job_trace(&events[&id]);
    assert_eq!(trace.trace_id_hex(), PARENT_TRACE, "the request's trace id");
    assert_ne!(
        trace.span_id_hex(),
        PARENT_SPAN,
        "the request's span (a child of the caller's) is the job's parent"
    );
    assert!(trace.sampled(), "the request's flags");
    assert_eq!(
        header, trace,
        "the message and the events carry the same context"
    );

    // The worker's log lines of the job carry the trace id on the job span: the request's trace
    // reached the worker's spans.
    let line = worker
        .wait_for_record("a log line of the job's span", |r| {
            r["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["job.id"] == id.as_str()))
        })
        .await;
    let job_span = line["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "job")
        .unwrap_or_else(|| panic!("a job span: {line}"));
    assert_eq!(job_span["trace_id"], PARENT_TRACE, "{line}");
    assert!(
        job_span.get("batch.id").is_none(),
        "not a batch item: {line}"
    );
    // Every line under the job span has it.
    let job_lines: Vec<Value> = worker
        .records()
        .into_iter()
        .filter(|r| r["span"]["job.id"] == id.as_str())
        .collect();
    assert!(!job_lines.is_empty());
    for l in &job_lines {
        assert_eq!(l["span"]["trace_id"], PARENT_TRACE, "{l}");
    }
    worker.terminate();
    worker.exit(Duration::from_secs(30)).await;
    api.terminate();
    api.exit(Duration::from_secs(30)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_request_without_a_valid_traceparent_starts_a_new_trace() {
    let app = TestApp::spawn().await;
    let template = app.serve_sample_template("t").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    // Malformed in several ways: uppercase hex, an all-zero trace id, a wrong length.
    let malformed = [
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
    ];
    let missing = create(&app, &template, None).await;
    let mut ids = vec![missing.clone()];
    for m in malformed {
        ids.push(create(&app, &template, Some(m)).await);
    }
    // Two valid headers at once are as good as a malformed one.
    let tenant = fixtures::tenant_url();
    let r = app
        .http
        .post(app.url(&format!("/configapi/v2/selfservice/tenant/{tenant}")))
        .json(&fixtures::create_body(&template))
        .header("traceparent", PARENT)
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    ids.push(
        r.json::<Value>().await.unwrap()["jobId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let events = events_until_succeeded(&mut tap, &refs).await;
    let traces: Vec<String> = ids
        .iter()
        .map(|id| job_trace(&events[id]).trace_id_hex())
        .collect();
    for t in &traces {
        assert_ne!(t, PARENT_TRACE);
        assert_ne!(t, &"0".repeat(32));
    }
    let distinct: std::collections::HashSet<&String> = traces.iter().collect();
    assert_eq!(
        distinct.len(),
        traces.len(),
        "a new trace per job: {traces:?}"
    );
    // The job's row keeps the context it carries.
    let stored: String = sqlx::query_scalar("SELECT traceparent FROM jobs WHERE id = $1::uuid")
        .bind(&missing)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        TraceContext::parse(&stored).unwrap().trace_id_hex(),
        traces[0]
    );
    app.stop().await;
}

/// Submits a batch of `items` in the trace `PARENT` (expecting 202); returns its id.
async fn submit_batch(app: &TestApp, items: &[Value]) -> String {
    let r = app
        .http
        .post(app.url("/configapi/v2/batches"))
        .header("content-type", "application/x-ndjson")
        .header("traceparent", PARENT)
        .body(batches::ndjson(items))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let batch: Value = r.json().await.unwrap();
    batch["batchId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_batchs_items_carry_the_trace_of_the_batch_request() {
    let app = TestApp::without_workers().await;
    let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &[], "info");
    let template = app.serve_sample_template("t").await;
    let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
    let batch_id = submit_batch(&app, &batches::items(3, &template)).await;
    let events = tap
        .collect_until(|seen| seen.iter().any(|e| e.routing_key == "batch.completed"))
        .await;
    let mut spans = std::collections::HashSet::new();
    let mut jobs = std::collections::HashSet::new();
    for e in &events {
        let trace = event_trace(e);
        assert_eq!(trace.trace_id_hex(), PARENT_TRACE, "{}", e.body);
        if e.routing_key.starts_with("job.") {
            assert_eq!(e.body["batchid"], batch_id.as_str());
            jobs.insert(e.body["subject"].as_str().unwrap().to_owned());
            spans.insert(trace.span_id_hex());
        }
    }
    assert_eq!(jobs.len(), 3, "every item announced");
    assert_eq!(
        spans.len(),
        1,
        "the items continue the batch request's span"
    );
    assert!(!spans.contains(PARENT_SPAN), "a child of the caller's span");
    let done = events
        .iter()
        .filter(|e| e.routing_key == "job.succeeded")
        .count();
    assert_eq!(done, 3);
    // The worker's lines of each item carry the batch id and the batch request's trace id.
    for job in &jobs {
        let line = worker
            .wait_for_record("a log line of the item's job span", |r| {
                r["span"]["job.id"] == job.as_str()
            })
            .await;
        assert_eq!(line["span"]["batch.id"], batch_id.as_str(), "{line}");
        assert_eq!(line["span"]["trace_id"], PARENT_TRACE, "{line}");
    }
    worker.terminate();
    worker.exit(Duration::from_secs(30)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_retry_carries_the_retry_requests_trace_or_else_the_batchs() {
    let app = TestApp::spawn().await;
    let retry_parent = "00-1bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    // A retry that carries a trace continues it; one that carries none (as the dashboard's)
    // leaves the new jobs in the batch's trace, with the batch's other jobs.
    for (n, (header, trace_id, sampled)) in [
        (
            Some(retry_parent),
            "1bf92f3577b34da6a3ce929d0e0e4736",
            false,
        ),
        (None, PARENT_TRACE, true),
    ]
    .into_iter()
    .enumerate()
    {
        // The template is missing at first: the item fails (400), and its retry gets a new job.
        let name = format!("late-{n}.zip");
        let late = format!("http://{}/{name}", app.templates.addr);
        let items = vec![batches::item(&fixtures::tenant_url(), &late)];
        let batch_id = submit_batch(&app, &items).await;
        let ended = batches::wait(&app, &batch_id, Duration::from_secs(90)).await;
        assert_eq!(ended["counts"]["failed"], 1, "{ended}");
        let old_job = batches::results(&app, &batch_id, "").await[0]["jobId"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut tap = EventTap::start(&app.vars["AMQP_URL"]).await;
        app.serve_sample_template(&name).await;
        let mut retry = app
            .http
            .post(app.url(&format!("/configapi/v2/batches/{batch_id}/retry")));
        if let Some(header) = header {
            retry = retry.header("traceparent", header);
        }
        let r = retry.send().await.unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let retried_stop = |e: &Event| {
            e.routing_key == "batch.completed"
                && e.body["subject"] == batch_id.as_str()
                && e.body["data"]["counts"]["succeeded"] == 1
        };
        // The broker does not order events across publishers: the new job's end may come
        // after the batch's.
        let retried_end =
            |e: &Event| e.routing_key == "job.succeeded" && e.body["subject"] != old_job.as_str();
        let events = tap
            .collect_until(|seen| seen.iter().any(retried_stop) && seen.iter().any(retried_end))
            .await;
        // What the first run announced late (if anything) is not the retry's.
        let retry_events: Vec<&Event> = events
            .iter()
            .filter(|e| {
                if e.routing_key.starts_with("batch.") {
                    retried_stop(e)
                } else {
                    e.body["subject"] != old_job.as_str()
                }
            })
            .collect();
        let mut keys: Vec<&str> = retry_events
            .iter()
            .map(|e| e.routing_key.as_str())
            .collect();
        keys.sort_by_key(|k| {
            [
                "job.queued",
                "job.running",
                "job.succeeded",
                "batch.completed",
            ]
            .iter()
            .position(|x| x == k)
        });
        assert_eq!(
            keys,
            [
                "job.queued",
                "job.running",
                "job.succeeded",
                "batch.completed"
            ]
        );
        for e in retry_events {
            let trace = event_trace(e);
            assert_eq!(
                (trace.trace_id_hex().as_str(), trace.sampled()),
                (trace_id, sampled),
                "retry with traceparent {header:?}: {}",
                e.body
            );
        }
    }
    app.stop().await;
}

/// What an OTLP/HTTP receiver got: each request's path, content type and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A tiny OTLP/HTTP collector: records every export and answers `200` (an empty
/// `ExportTraceServiceResponse`).
async fn otlp_receiver() -> (String, Received) {
    use axum::{body::Bytes, extract::State, http::HeaderMap, http::Uri, routing::post};
    let received = Received::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(r): State<Received>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    r.lock()
                        .unwrap()
                        .push((uri.path().to_owned(), content_type, body.to_vec()));
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn spans_are_exported_over_otlp_in_the_requests_trace() {
    let app = TestApp::without_workers().await;
    let template = app.serve_sample_template("t").await;
    let (endpoint, received) = otlp_receiver().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut api = Proc::spawn(env!("CARGO_BIN_EXE_test-api"), &app, &otel, "info");
    let mut worker = Proc::spawn(env!("CARGO_BIN_EXE_test-worker"), &app, &otel, "info");
    let addr = api.api_addr().await;
    let token = fetch_token(&http_client(), addr, BOOTSTRAP_ID, BOOTSTRAP_SECRET).await;
    let http = authorized_client(&token);
    let id = create_at(&http, &format!("http://{addr}"), &template, Some(PARENT)).await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stored: String = sqlx::query_scalar("SELECT traceparent FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let stored = TraceContext::parse(&stored).unwrap();
    assert_eq!(stored.trace_id_hex(), PARENT_TRACE);
    let trace_id = hex_bytes(PARENT_TRACE);
    let request_span = stored.span_id().to_vec();
    // The API exports the request span (its id is what the job carries) and the worker the job
    // span (whose parent it is), both in the caller's trace.
    let exported = |service: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(path, content_type, body)| {
                assert_eq!(path, "/v1/traces");
                assert_eq!(content_type, "application/x-protobuf");
                contains(body, service.as_bytes())
                    && contains(body, &trace_id)
                    && contains(body, &request_span)
            })
    };
    provisioner_tests::eventually(Duration::from_secs(30), || async {
        (exported("provisioner-api") && exported("provisioner-worker")).then_some(())
    })
    .await;
    // The worker's job span has the job id as an attribute.
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, body)| contains(body, id.as_bytes()) && contains(body, &trace_id))
    );
    worker.terminate();
    worker.exit(Duration::from_secs(30)).await;
    api.terminate();
    api.exit(Duration::from_secs(30)).await;
    app.stop().await;
}
