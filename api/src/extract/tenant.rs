//! `{tenant_url}` of a route that names an existing tenant.

use axum::{extract::FromRequestParts, http::request::Parts};
use provisioner_shared::domain::TenantUrl;

use crate::error::ApiError;

/// The path's tenant URL, normalised. One that cannot be a host name names no tenant: `404`.
#[derive(Debug, Clone)]
pub(crate) struct TenantPath(pub(crate) TenantUrl);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let super::PathText(raw) = super::PathText::from_request_parts(parts, state).await?;
        TenantUrl::parse(&raw)
            .map(Self)
            .map_err(|_| ApiError::NotFound(format!("no tenant {raw}")))
    }
}
