//! The provisioner HTTP API: validates requests, records jobs with their outbox messages in one
//! transaction, answers at once, and serves job and tenant state.

mod auth;
mod cache;
mod cancel;
mod cli;
mod client_rate;
mod error;
mod extract;
mod form_window;
#[doc(hidden)]
pub mod fuzzing;
mod intake;
mod metrics;
mod openapi;
mod peer;
mod recorder;
mod retry;
mod routes;
mod server;
mod slots;
mod strict_json;
mod submit;
mod tenant_lock;
mod token_cache;
mod token_guard;
mod transaction;
mod ui;
mod upload;
mod validate;
mod wait;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::Router;
use provisioner_shared::{
    config::Settings,
    db::{self, PoolConfig},
    relay::Notifications,
    runtime::{self, Background},
    seal::Sealer,
    telemetry,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

/// What every handler may use.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pool: PgPool,
    sealer: Sealer,
    settings: Arc<Settings>,
    notifications: Notifications,
    token_guard: Arc<token_guard::TokenGuard>,
    /// Each client's request rate, when one is set.
    client_rate: Arc<client_rate::ClientRate>,
    /// Tokens verified lately, forgotten when a client or token changes.
    tokens: Arc<token_cache::TokenCache>,
    waits: Arc<wait::Waits>,
    /// Memory for uploads in flight and templates being checked.
    template_budget: upload::Budget,
    /// The dashboard's live caches.
    ui: Arc<ui::Live>,
    /// Records submitted jobs, several per statement under load.
    recorder: recorder::Recorder,
    /// The figures `/metrics` reads from the database and the broker, at most every few
    /// seconds whatever the number of scrapes.
    figures: Arc<metrics::Figures>,
    /// Exports reading at once: each holds two of the pool's connections while its client reads.
    exports: slots::Slots,
    /// Requests waiting for a tenant's lock at once: each holds a connection while it waits.
    lock_waits: slots::Slots,
    /// NDJSON batches whose items are written while their body arrives: each holds a
    /// connection (its transaction) for as long as its client takes to send the body.
    batch_intakes: slots::Slots,
}

/// Connections in the API's database pool.
const POOL_CONNECTIONS: u32 = 32;
/// Exports reading at once: each holds two connections (the tenant's lock and the snapshot it
/// reads in) for as long as its client takes to read the archive.
const EXPORTS_AT_ONCE: usize = 6;
/// Requests (lifecycle changes, exports) waiting for a busy tenant's lock at once, each for up
/// to its `lockTimeout` (an hour at most) on a connection of its own. With the exports reading
/// (whose slot is taken before their connection) and the batches arriving, at most 24 of the 32
/// connections are held for long; the rest serve every other route.
const LOCK_WAITS_AT_ONCE: usize = 8;
/// NDJSON batches at once whose items are being written as their body arrives, each in a
/// transaction on a connection of its own until the body ends (at most `PROVISIONER_BODY_TIMEOUT`
/// of the client's time, and as long as the database takes to write the items).
const BATCH_INTAKES_AT_ONCE: usize = 4;

/// The whole HTTP surface, apart from binding.
fn router(state: AppState) -> Router {
    metrics::handle();
    routes::router(&state)
        .merge(ui::router())
        // Inside the request's trace and figures: its refusals are logged and counted.
        .route_layer(axum::middleware::from_fn(refuse_encoded_bodies))
        // Every request, a path no route matches too (as `unmatched`).
        .layer(axum::middleware::from_fn(metrics::track))
        // Every path, routed or not.
        .layer(axum::middleware::from_fn(refuse_oversized_heads))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                axum::response::IntoResponse::into_response(error::ApiError::Internal(
                    anyhow::anyhow!("a request handler panicked"),
                ))
            },
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(extract::request_span)
                .on_failure(log_failure),
        )
        .layer(axum::middleware::map_request(extract::start_trace))
        .layer(axum::middleware::map_request_with_state(
            state.settings.clone(),
            body_timeout,
        ))
        .with_state(state)
}

/// A response the server failed: an error, unless it is a `503` (a lock's timeout, a bound
/// that is full: the answers that say "later"), which is a warning, so alerts on errors stay
/// quiet under expected contention.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: Duration,
    _: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass::StatusCode;
    let latency = latency.as_millis();
    match class {
        StatusCode(code) if code == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(
                status = code.as_u16(),
                latency_ms = latency,
                "response refused for now"
            );
        }
        class => tracing::error!(classification = %class, latency_ms = latency, "response failed"),
    }
}

/// `415` for a body with a `Content-Encoding` (other than `identity`): no route decodes one, and
/// a gzipped JSON body was read as if it were plain.
async fn refuse_encoded_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let encodings: Vec<String> = request
        .headers()
        .get_all(axum::http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|e| !e.is_empty() && e != "identity")
        .collect();
    if let Some(encoding) = encodings.first() {
        let mut refused = axum::response::IntoResponse::into_response(
            error::ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {:?} is not supported; send the body as it is",
                validate::shortened(encoding)
            )),
        );
        // RFC 9110, 15.5.16: the codings this server takes.
        refused.headers_mut().insert(
            axum::http::header::ACCEPT_ENCODING,
            axum::http::HeaderValue::from_static("identity"),
        );
        return refused;
    }
    next.run(request).await
}

/// Longest request target (path and query) answered: `414` past it.
const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) a request may carry: `431` past it.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// `414` for a request target longer than `MAX_TARGET_BYTES`, `431` for headers past
/// `MAX_HEADER_BYTES`, as problems like every other refusal. The HTTP server's own bounds
/// (a 65,534-byte target, 100 headers, about 400 KiB of head) are further out, and answer with
/// an empty body: these come first for every request that fits in them.
async fn refuse_oversized_heads(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |t| t.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let refusal = if target > MAX_TARGET_BYTES {
        Some(error::ApiError::UriTooLong(format!(
            "the request target (path and query) is {target} bytes; at most {MAX_TARGET_BYTES} are read"
        )))
    } else if headers > MAX_HEADER_BYTES {
        Some(error::ApiError::HeadersTooLarge(format!(
            "the request's headers are {headers} bytes; at most {MAX_HEADER_BYTES} are read"
        )))
    } else {
        None
    };
    match refusal {
        Some(refusal) => axum::response::IntoResponse::into_response(refusal),
        None => next.run(request).await,
    }
}

/// A request body that sends nothing for this long ends the request with `408`.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes reading the request body fail once it stalls for `BODY_IDLE_TIMEOUT`, or once it has
/// not ended `PROVISIONER_BODY_TIMEOUT` after the headers arrived (a steady trickle).
async fn body_timeout(
    axum::extract::State(settings): axum::extract::State<Arc<Settings>>,
    request: axum::extract::Request,
) -> axum::extract::Request {
    let total = settings.body_timeout;
    request.map(|body| {
        if http_body::Body::is_end_stream(&body) {
            return body;
        }
        let idle = tower_http::timeout::TimeoutBody::new(BODY_IDLE_TIMEOUT, body);
        axum::body::Body::new(body_deadline::DeadlineBody::new(idle, total))
    })
}

/// The request body's total deadline.
mod body_deadline {
    use std::{
        future::Future,
        pin::Pin,
        task::{Context, Poll},
        time::Duration,
    };

    use http_body::{Body, Frame, SizeHint};
    use tokio::time::Instant;

    /// The error of a body that had not ended by its deadline.
    #[derive(Debug, thiserror::Error)]
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    pub(crate) struct BodyDeadline(pub(crate) Duration);

    /// `inner`, failing with `BodyDeadline` once it has kept the server waiting for `limit` in
    /// all. Only the client's time counts: the waits for the next bytes, not the time the
    /// server spends between two reads (a batch's chunks written to the database, a memory
    /// budget awaited), so a large body sent at full speed is never cut by the server's pace.
    pub(super) struct DeadlineBody<B> {
        inner: Pin<Box<B>>,
        /// Fires when the waits so far reach `limit`; armed while a wait is under way.
        timer: Pin<Box<tokio::time::Sleep>>,
        /// The waits before the current one.
        waited: Duration,
        /// When the current wait for the client began.
        waiting_since: Option<Instant>,
        limit: Duration,
    }

    impl<B> DeadlineBody<B> {
        pub(super) fn new(inner: B, limit: Duration) -> Self {
            Self {
                inner: Box::pin(inner),
                timer: Box::pin(tokio::time::sleep(limit)),
                waited: Duration::ZERO,
                waiting_since: None,
                limit,
            }
        }
    }

    impl<B> Body for DeadlineBody<B>
    where
        B: Body,
        B::Error: Into<axum::BoxError>,
    {
        type Data = B::Data;
        type Error = axum::BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let this = self.get_mut();
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    let since = *this.waiting_since.get_or_insert_with(Instant::now);
                    let end = since + this.limit.saturating_sub(this.waited);
                    if this.timer.deadline() != end {
                        this.timer.as_mut().reset(end);
                    }
                    match this.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(BodyDeadline(this.limit)))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
                Poll::Ready(frame) => {
                    if let Some(since) = this.waiting_since.take() {
                        this.waited += since.elapsed();
                    }
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }
}

/// Connects, binds `settings.listen` and serves until `shutdown`; then finishes in-flight
/// requests. `on_bound` learns the bound address (port 0 picks one).
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let pool = db::connect(
        &settings.database_url,
        &PoolConfig {
            max_connections: POOL_CONNECTIONS,
            application_name: "provisioner-api",
            idle_in_transaction_timeout: Some(settings.idle_in_transaction_timeout),
            silences: None,
        },
    )
    .await?;
    let sealer = Sealer::load(settings.seal_key.as_ref(), &pool).await?;
    if let Some(spec) = &settings.bootstrap_client {
        auth::bootstrap(&pool, secrecy::ExposeSecret::expose_secret(spec)).await?;
    }
    let background = Background::start(&pool, &settings.amqp_url);
    let state = AppState {
        pool: pool.clone(),
        sealer,
        settings: Arc::new(settings.clone()),
        notifications: background.notifications().clone(),
        token_guard: Arc::new(token_guard::TokenGuard::new()),
        client_rate: Arc::new(client_rate::ClientRate::new(settings.client_request_rate)),
        tokens: Arc::new(token_cache::TokenCache::new(
            background.notifications().auth().clone(),
        )),
        waits: Arc::new(wait::Waits::new(
            shutdown.clone(),
            settings.shutdown_timeout,
        )),
        template_budget: upload::Budget::new(settings.template_memory_budget),
        ui: Arc::default(),
        recorder: recorder::Recorder::start(&pool, background.notifications().clone()),
        figures: Arc::new(metrics::Figures::new(settings.amqp_url.clone())),
        exports: slots::Slots::new(EXPORTS_AT_ONCE, slots::ShareWait::Wait, "exports reading"),
        lock_waits: slots::Slots::new(
            LOCK_WAITS_AT_ONCE,
            slots::ShareWait::Refuse,
            "requests waiting for a tenant's lock",
        ),
        batch_intakes: slots::Slots::new(
            BATCH_INTAKES_AT_ONCE,
            slots::ShareWait::Wait,
            "NDJSON batches arriving",
        ),
    };

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (PROVISIONER_LISTEN; is another API running there?)",
                settings.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "provisioner API listening");
    on_bound(addr);
    let served = server::serve(
        listener,
        router(state),
        &shutdown,
        settings.shutdown_timeout,
        settings.max_connections as usize,
        settings.max_connections_per_peer,
    )
    .await;
    // Publish what the last requests committed, within what is left of the shutdown timeout;
    // whatever remains is published by any other process's relay, or by this one at its next
    // start.
    let left = served.as_ref().map_or(Duration::ZERO, |stop_by| {
        stop_by.saturating_duration_since(tokio::time::Instant::now())
    });
    background.stop(left).await;
    // Connections a lost network left waiting would hold the close for ever.
    if tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .is_err()
    {
        tracing::warn!("some database connections did not close in time");
    }
    tracing::info!("provisioner API stopped");
    served.map(drop)
}

/// The binary's whole `main`: telemetry, settings, signals, run.
pub async fn main_entry() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Help needs no settings: it answers whatever the environment holds.
    if cli::asks_for_help(&args) {
        println!("{}", cli::USAGE);
        return Ok(());
    }
    let settings = Settings::from_env()?;
    telemetry::init_as(settings.log_format, "provisioner-api");
    if args.first().map(String::as_str) == Some("openapi") {
        println!("{}", openapi::document().to_pretty_json()?);
        return Ok(());
    }
    if !args.is_empty() {
        return cli::run(&settings, &args).await;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(runtime::shutdown_signal(shutdown.clone()));
    let served = run(settings, shutdown, |_| {}).await;
    telemetry::shutdown().await;
    served
}
