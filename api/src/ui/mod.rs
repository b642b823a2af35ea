//! The dashboard for people, at `/ui/`: server-rendered pages (overview, batches, jobs,
//! templates) behind a sign-in with the API's own clients, with small vendored assets and live
//! figures that open pages poll through a coalescing cache. Pages answer HTML, never
//! problem+json.

mod assets;
mod batches;
mod csv;
mod form;
mod jobs;
mod layout;
mod login;
mod overview;
mod session;
mod templates;

use std::time::Duration;

use axum::{
    Router,
    extract::{FromRequestParts, Request},
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get, post},
};
use provisioner_shared::db::{batches::BatchRow, dashboard::FailureGroup};
use tower_http::catch_panic::CatchPanicLayer;
use uuid::Uuid;

use crate::{AppState, cache::Cache};

/// The dashboard's entry points that the contract names, for the OpenAPI document: pages for
/// people (HTML), signed in with a session cookie rather than a bearer token.
#[derive(utoipa::OpenApi)]
#[openapi(paths(overview::page, login::form, login::submit, batches::page))]
pub(crate) struct Doc;

/// How long a live figure serves every open page before it is read again.
const LIVE_TTL: Duration = Duration::from_secs(2);
/// Most keys each live cache holds.
const LIVE_KEYS: usize = 4096;
/// How long whether a batch id names a batch is kept: ids are the server's (random), so one
/// that named none names none later; a batch removed meanwhile reads as none from `batches`.
const EXISTS_TTL: Duration = Duration::from_secs(60);

/// The live caches of one API process.
#[derive(Debug)]
pub(crate) struct Live {
    batches: Cache<Uuid, Option<BatchRow>>,
    /// Whether an id names a batch at all, checked for many ids in one statement: a live
    /// request's ids that name none never reach `batches`, one read each.
    batch_ids: Cache<Uuid, bool>,
    failures: Cache<Uuid, Vec<FailureGroup>>,
    /// By whose work (`None`: an operator's view of everything).
    overview: Cache<Option<String>, overview::Overview>,
    /// Sessions by the authentication epoch they were read in and their token's digest: a
    /// page's polls do not each read the token again, and a revocation or a sign-out (any
    /// process) moves the epoch on, so a session read before it is never served after it.
    sessions: Cache<(u64, [u8; 32]), Option<session::Found>>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            batches: Cache::new(LIVE_TTL, LIVE_KEYS),
            batch_ids: Cache::new(EXISTS_TTL, LIVE_KEYS),
            failures: Cache::new(LIVE_TTL, LIVE_KEYS),
            overview: Cache::new(LIVE_TTL, LIVE_KEYS),
            sessions: Cache::new(LIVE_TTL, LIVE_KEYS),
        }
    }
}

/// Every route of the dashboard.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/batches", get(batches::list))
        .route("/ui/batches/{batch_id}", get(batches::page))
        .route("/ui/batches/{batch_id}/failures", get(batches::failures))
        .route("/ui/batches/{batch_id}/failed.csv", get(csv::failed_rows))
        .route("/ui/batches/{batch_id}/cancel", post(batches::cancel))
        .route("/ui/batches/{batch_id}/retry", post(batches::retry))
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/{job_id}", get(jobs::page))
        .route("/ui/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/ui/templates", get(templates::list))
        .route("/ui/live/overview", get(overview::live))
        .route("/ui/live/batches", get(batches::live))
        .route("/ui/assets/{name}", get(assets::serve))
        .route("/ui/{*rest}", any(|| async { layout::not_found("page") }))
        .method_not_allowed_fallback(|| async {
            layout::refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "This page does not take that kind of request.",
            )
        })
        // Inside the API's own: a dashboard page that panics answers a page too.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                layout::internal(anyhow::anyhow!("a dashboard handler panicked"))
            },
        ))
        .layer(middleware::from_fn(protect))
}

/// A page's one path parameter, percent-decoded; one that does not decode to UTF-8 names no
/// page: `404` as a page (the API's routes answer such a path `400` as problem+json).
pub(crate) struct PagePath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PagePath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        crate::extract::PathText::from_request_parts(parts, state)
            .await
            .map(|crate::extract::PathText(text)| Self(text))
            .map_err(|_| layout::not_found("page"))
    }
}

/// Headers of every dashboard answer: only this origin's scripts, styles and forms; never in a
/// frame; no MIME sniffing; no referrer to other sites.
async fn protect(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
