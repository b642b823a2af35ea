//! A route's path parameter as text, its rejection a problem+json answer like every other error.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};

use crate::error::ApiError;

/// The route's one path parameter, percent-decoded. Bytes that do not decode to UTF-8 are `400`.
#[derive(Debug, Clone)]
pub(crate) struct PathText(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| Self(text))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
