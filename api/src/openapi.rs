//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! body types. Types here exist to describe bodies that handlers read field by field (to report
//! every bad field at once) or that other modules serialize by hand.

use std::collections::BTreeMap;

use axum::Json;
use provisioner_shared::domain::{
    JobError, JobStatus, JobView, SkipReason, SkippedRange, TenantSummary,
};
use serde::{Deserialize, Serialize};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{
        ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes, SecurityScheme,
    },
};

use crate::{
    error::FieldError,
    routes::{access_numbers::RangeBody, jobs::Page, tenants::TenantBody},
};

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every invalid field (validation problems only).
    pub errors: Option<Vec<FieldError>>,
    /// The job, when a job's failure is answered under `Prefer: wait`.
    pub job: Option<JobView>,
}

/// Create tenant from template (JSON).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenantRequest {
    pub tenant_name: String,
    /// Template access number -> real access number (1-20 digits each; targets distinct).
    pub number_map: Option<BTreeMap<String, String>>,
    pub first_name: String,
    pub last_name: String,
    pub login_id: String,
    /// 8-256 characters; never stored or returned in plaintext.
    pub password: String,
    pub email: String,
    /// Absolute http(s) URL of the template ZIP.
    pub template_url: String,
    /// Seconds to wait for the import lock, 0-3600 (default 120).
    pub lock_timeout: Option<u32>,
}

/// Create tenant from template (form data): the same fields, `numberMap` repeated as
/// `template:actual`, and either a `template` file part or `templateUrl`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTenantForm {
    pub tenant_name: String,
    pub number_map: Option<Vec<String>>,
    pub first_name: String,
    pub last_name: String,
    pub login_id: String,
    pub password: String,
    pub email: String,
    pub lock_timeout: Option<u32>,
    #[schema(content_media_type = "application/zip")]
    pub template: Option<Vec<u8>>,
    pub template_url: Option<String>,
}

/// `POST /configapi/v2/accessnumbers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessNumberRequest {
    pub number: String,
    pub count: i32,
    pub tenant_url: String,
    /// Default `VOICE`.
    pub media: Option<String>,
}

/// `POST /configapi/v2/oauth/token` (form-encoded).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `client_credentials`.
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated subset of the client's scopes.
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
}

/// RFC 6749 section 5.2 error.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type` or `invalid_scope`.
    pub error: String,
    pub error_description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let scopes = Scopes::from_iter([
            ("tenants:read", "read tenants, jobs and numbers"),
            ("tenants:write", "change them"),
        ]);
        let flow =
            Flow::ClientCredentials(ClientCredentials::new("/configapi/v2/oauth/token", scopes));
        components.add_security_scheme("oauth2", SecurityScheme::OAuth2(OAuth2::new([flow])));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "provisioner", description = "Provisions contact-center tenants from templates, as jobs."),
    paths(
        crate::auth::token,
        crate::routes::create::create_from_template,
        crate::routes::stream::create_from_stream,
        crate::routes::stream::import_tenant,
        crate::routes::jobs::get,
        crate::routes::jobs::list,
        crate::routes::jobs::cancel,
        crate::routes::tenants::get,
        crate::routes::tenants::list,
        crate::routes::tenants::activate,
        crate::routes::tenants::deactivate,
        crate::routes::tenants::delete,
        crate::routes::export::export,
        crate::routes::access_numbers::list,
        crate::routes::access_numbers::create,
        crate::routes::access_numbers::delete,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::metrics::render,
        openapi_json,
    ),
    components(schemas(
        JobView, JobStatus, JobError, TenantSummary, SkippedRange, SkipReason, TenantBody, RangeBody,
        Page<JobView>, Page<TenantBody>, Problem, FieldError, CreateTenantRequest, CreateTenantForm,
        AccessNumberRequest, TokenRequest, TokenResponse, OAuthError, Health,
    )),
    modifiers(&Security),
    tags(
        (name = "auth", description = "OAuth 2.0 client credentials"),
        (name = "tenants", description = "Create, import, inspect and manage tenants"),
        (name = "jobs", description = "Asynchronous jobs"),
        (name = "access numbers", description = "Access-number ranges"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
