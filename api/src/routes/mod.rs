//! The route table: every route is registered here once, with its documentation (its handler's
//! `#[utoipa::path]`), in a group that says which scope its token needs. The router and the
//! OpenAPI document are both made from this table, so they cannot disagree.
//!
//! Route files are leaves: a handler may use the modules below `routes` (`extract`, `submit`,
//! `auth`, `error`, ...) but never a sibling route file.

mod access_numbers;
mod batches;
mod create;
mod export;
mod health;
mod jobs;
mod operations;
mod stream;
mod templates;
mod tenants;
mod token;

use axum::{Router, extract::DefaultBodyLimit, middleware};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    auth::{Gate, Scope, require_token},
    error::ApiError,
    extract::refuse_undecodable_queries,
};

/// Routes that share an access rule.
pub(crate) struct Group {
    /// The scope a bearer token needs; `None`: public.
    pub(crate) scope: Option<Scope>,
    pub(crate) routes: OpenApiRouter<AppState>,
}

/// Every route. `body_limit` caps the bodies of the routes that take a template in a form.
pub(crate) fn table(body_limit: usize) -> Vec<Group> {
    let (schemas, paths, create) = routes!(create::create_from_template);
    let create = (
        schemas,
        paths,
        create.layer(DefaultBodyLimit::max(body_limit)),
    );
    let public = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(operations::metrics))
        .routes(routes!(operations::openapi_json))
        .routes(routes!(token::issue_token_route));
    let read = OpenApiRouter::new()
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(tenants::list_tenants))
        .routes(routes!(tenants::get_tenant))
        .routes(routes!(access_numbers::list_access_numbers))
        .routes(routes!(batches::list_batches))
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::batch_results))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template))
        .routes(routes!(templates::get_template_content));
    let export = OpenApiRouter::new().routes(routes!(export::export_tenant));
    let write = OpenApiRouter::new()
        .routes(create)
        .routes(routes!(stream::create_from_stream))
        .routes(routes!(stream::import_tenant))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(tenants::activate_tenant))
        .routes(routes!(tenants::deactivate_tenant))
        .routes(routes!(tenants::delete_tenant))
        .routes(routes!(access_numbers::create_access_numbers))
        .routes(routes!(access_numbers::delete_access_numbers))
        .routes(routes!(batches::create_batch))
        .routes(routes!(batches::cancel_batch))
        .routes(routes!(batches::retry_batch))
        .routes(routes!(templates::store_template))
        .routes(routes!(templates::delete_template));
    vec![
        Group {
            scope: None,
            routes: public,
        },
        Group {
            scope: Some(Scope::TenantsRead),
            routes: read,
        },
        Group {
            scope: Some(Scope::TenantsWrite),
            routes: write,
        },
        Group {
            scope: Some(Scope::TenantsExport),
            routes: export,
        },
    ]
}

/// The whole HTTP surface of `table`, each group behind its scope's bearer-token check.
pub(crate) fn router(state: &AppState) -> Router<AppState> {
    // The form variant: the whole request, template and text parts, as the contract says.
    let body_limit = usize::try_from(state.settings.template_max_bytes).unwrap_or(usize::MAX);
    table(body_limit)
        .into_iter()
        .fold(Router::new(), |router, group| {
            let (routes, _) = group.routes.split_for_parts();
            // Inside the token's check: a request without one is `401` whatever its query.
            let routes = routes.route_layer(middleware::from_fn(refuse_undecodable_queries));
            let routes = match group.scope {
                None => routes,
                Some(scope) => routes.route_layer(middleware::from_fn_with_state(
                    Gate {
                        state: state.clone(),
                        scope,
                    },
                    require_token,
                )),
            };
            router.merge(routes)
        })
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}
