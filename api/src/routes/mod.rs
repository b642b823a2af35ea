//! Route table of the API: public routes, the token endpoint, and everything else behind a
//! bearer token with the route's scope.

pub mod access_numbers;
pub mod create;
pub mod export;
pub mod health;
pub mod jobs;
pub mod tenants;

use axum::{
    Router, middleware,
    routing::{delete, get, post},
};

use crate::{AppState, auth, error::ApiError};

pub fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route(
            "/configapi/v2/selfservice/tenant/{tenant_url}",
            post(create::create_from_json),
        )
        .route("/configapi/v2/jobs", get(jobs::list))
        .route(
            "/configapi/v2/jobs/{job_id}",
            get(jobs::get).delete(jobs::cancel),
        )
        .route("/configapi/v2/tenant", get(tenants::list))
        .route(
            "/configapi/v2/tenant/{tenant_url}",
            get(tenants::get).delete(tenants::delete),
        )
        .route(
            "/configapi/v2/tenant/{tenant_url}/export",
            get(export::export),
        )
        .route(
            "/configapi/v2/tenant/{tenant_url}/activate",
            post(tenants::activate),
        )
        .route(
            "/configapi/v2/tenant/{tenant_url}/deactivate",
            post(tenants::deactivate),
        )
        .route(
            "/configapi/v2/accessnumbers",
            get(access_numbers::list).post(access_numbers::create),
        )
        .route(
            "/configapi/v2/accessnumbers/{number}",
            delete(access_numbers::delete),
        )
        .route_layer(middleware::from_fn_with_state(state, auth::require_token));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/configapi/v2/oauth/token", post(auth::token))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
}
