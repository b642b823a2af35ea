//! The frame of the OpenAPI 3.1 document (title, security schemes, tags, the problem body) and
//! the document itself: the frame plus every route of `routes::table`, each secured operation
//! given its scope and the 401/403 answers, and every error answer the problem+json body.

pub(crate) mod shapes;

use std::sync::OnceLock;

use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, Content, ObjectBuilder, RefOr, Type,
        path::{Operation, ParameterIn},
        response::ResponseBuilder,
        schema::AnyOfBuilder,
        security::{
            ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes,
            SecurityRequirement, SecurityScheme,
        },
    },
};

use crate::{
    auth::Scope,
    error::{FieldError, PROBLEM_JSON, Problem},
    extract::EMPTY_IS_ABSENT,
    routes,
};

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let scopes = Scopes::from_iter(Scope::ALL.map(|s| (s.as_str(), s.description())));
        let flow =
            Flow::ClientCredentials(ClientCredentials::new("/configapi/v2/oauth/token", scopes));
        components.add_security_scheme("oauth2", SecurityScheme::OAuth2(OAuth2::new([flow])));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "provisioner", description = "Provisions contact-center tenants from templates, as jobs."),
    components(schemas(Problem, FieldError)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "OAuth 2.0 client credentials"),
        (name = "tenants", description = "Create, import, inspect and manage tenants"),
        (name = "jobs", description = "Asynchronous jobs"),
        (name = "templates", description = "The template store: templates stored once, named by id"),
        (name = "access numbers", description = "Access-number ranges"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "dashboard", description = "Pages for people (HTML, a session cookie): its entry points"),
    )
)]
struct Frame;

/// The document as served (built once).
pub(crate) fn document() -> &'static openapi::OpenApi {
    static DOCUMENT: OnceLock<openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

fn build() -> openapi::OpenApi {
    let mut document = Frame::openapi();
    for group in routes::table(usize::MAX) {
        let (_, mut paths) = group.routes.split_for_parts();
        for operation in operations(&mut paths) {
            if let Some(scope) = group.scope {
                secure(operation, scope);
            }
            problem_bodies(operation);
            empty_is_absent(operation);
        }
        document.merge(paths);
    }
    // The dashboard's pages answer HTML, never problem+json, and take a session cookie.
    document.merge(crate::ui::Doc::openapi());
    document
}

/// Every operation of `api`.
fn operations(api: &mut openapi::OpenApi) -> impl Iterator<Item = &mut Operation> {
    api.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ]
        .into_iter()
        .filter_map(Option::as_mut)
    })
}

/// The scope's security requirements, and the answers every secured route may give.
fn secure(operation: &mut Operation, scope: Scope) {
    operation.security = Some(vec![
        SecurityRequirement::new("bearer", [scope.as_str()]),
        SecurityRequirement::new("oauth2", [scope.as_str()]),
    ]);
    for (status, description) in [
        ("401", "Missing, unknown or expired token"),
        ("403", "The client lacks the scope"),
    ] {
        operation.responses.responses.insert(
            status.to_owned(),
            RefOr::T(ResponseBuilder::new().description(description).build()),
        );
    }
    // A route's own 429 (a cap it checks) says more; every secured route may meet the rate.
    operation
        .responses
        .responses
        .entry("429".to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "The client passed its request rate (`PROVISIONER_CLIENT_REQUEST_RATE`); \
                         `Retry-After` says when to send again",
                    )
                    .build(),
            )
        });
}

/// A filter, paging or wait parameter may be sent empty (a form or a URL template sends
/// `?status=` for "none"), which the server takes as absent (`extract::EMPTY_IS_ABSENT`): its
/// schema says so.
fn empty_is_absent(operation: &mut Operation) {
    let parameters = operation.parameters.iter_mut().flatten();
    for parameter in parameters.filter(|p| {
        p.parameter_in == ParameterIn::Query && EMPTY_IS_ABSENT.contains(&p.name.as_str())
    }) {
        let Some(schema) = parameter.schema.take() else {
            continue;
        };
        let empty = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(0));
        parameter.schema = Some(AnyOfBuilder::new().item(schema).item(empty).into());
    }
}

/// Every 4xx and 5xx answer without a documented body has the problem+json body.
fn problem_bodies(operation: &mut Operation) {
    let problem = Content::new(Some(RefOr::Ref(openapi::Ref::from_schema_name("Problem"))));
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response
            && status.starts_with(['4', '5'])
            && response.content.is_empty()
        {
            response
                .content
                .insert(PROBLEM_JSON.to_owned(), problem.clone());
        }
    }
}
