//! Route table of the API.

pub mod create;
pub mod health;
pub mod jobs;
pub mod tenants;

use axum::{
    Router,
    routing::{get, post},
};

use crate::{AppState, error::ApiError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/configapi/v2/selfservice/tenant/{tenant_url}",
            post(create::create_from_json),
        )
        .route("/configapi/v2/jobs", get(jobs::list))
        .route(
            "/configapi/v2/jobs/{job_id}",
            get(jobs::get).delete(jobs::cancel),
        )
        .route("/configapi/v2/tenant/{tenant_url}", get(tenants::get))
        .route(
            "/configapi/v2/tenant/{tenant_url}/export",
            get(tenants::export),
        )
        .route("/configapi/v2/accessnumbers", get(tenants::access_numbers))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
}

/// The client a request acts for. Until OAuth clients exist every caller is the same client.
pub const ANONYMOUS_CLIENT: &str = "";
