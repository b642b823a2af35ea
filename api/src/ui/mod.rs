//! The dashboard for people, at `/ui/`: server-rendered pages (overview, batches, jobs,
//! templates) behind a sign-in with the API's own clients, with small vendored assets and live
//! figures that open pages poll through a coalescing cache. Pages answer HTML, never
//! problem+json.

mod assets;
mod batches;
mod cache;
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
    extract::Request,
    http::{HeaderName, HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use provisioner_shared::db::{
    batches::BatchRow,
    dashboard::{FailureGroup, SessionRow},
};
use uuid::Uuid;

use crate::AppState;
use cache::Cache;

/// How long a live figure serves every open page before it is read again.
const LIVE_TTL: Duration = Duration::from_secs(2);
/// Most keys each live cache holds.
const LIVE_KEYS: usize = 4096;

/// The live caches of one API process.
#[derive(Debug)]
pub(crate) struct Live {
    batches: Cache<Uuid, Option<BatchRow>>,
    failures: Cache<Uuid, Vec<FailureGroup>>,
    /// By whose work (`None`: an operator's view of everything).
    overview: Cache<Option<String>, overview::Overview>,
    /// Sessions by their token's digest: a page's polls do not each read the token again.
    sessions: Cache<[u8; 32], Option<SessionRow>>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            batches: Cache::new(LIVE_TTL, LIVE_KEYS),
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
        .route("/ui/{*rest}", get(|| async { layout::not_found("page") }))
        .layer(middleware::from_fn(protect))
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
