//! Route table of the API: public routes, the token endpoint, and everything else behind a
//! bearer token with the route's scope.

pub mod access_numbers;
pub mod create;
pub mod export;
pub mod health;
pub mod jobs;
pub mod stream;
pub mod tenants;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{delete, get, post},
};

use crate::{AppState, auth, error::ApiError};

pub fn routes(state: AppState) -> Router<AppState> {
    // The form variant carries the template plus a few small text parts.
    let body_limit = usize::try_from(state.settings.template_max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    let protected = Router::new()
        .route(
            "/configapi/v2/selfservice/tenant/{tenant_url}",
            post(create::create_from_template).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/configapi/v2/jobs", get(jobs::list))
        .route(
            "/configapi/v2/jobs/{job_id}",
            get(jobs::get).delete(jobs::cancel),
        )
        .route(
            "/configapi/v2/tenant",
            get(tenants::list).post(stream::import_tenant),
        )
        .route(
            "/configapi/v2/tenant/{tenant_url}",
            get(tenants::get)
                .put(stream::create_from_stream)
                .delete(tenants::delete),
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
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .route("/configapi/v2/oauth/token", post(auth::token))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}
