//! JSON object bodies, read whole (at most `JSON_LIMIT` bytes) so every bad field can be named
//! at once instead of failing at the first.

use axum::{
    extract::{FromRequest, Request},
    http::HeaderMap,
};
use serde_json::{Map, Value};

use super::media_type;
use crate::error::ApiError;

/// Largest JSON body.
const JSON_LIMIT: usize = 1 << 20;

/// A JSON body that is an object: `415` for another media type, `413` past the limit, `400`
/// for malformed JSON or another JSON value.
#[derive(Debug)]
pub(crate) struct JsonObject(pub(crate) Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        let body = axum::body::to_bytes(request.into_body(), JSON_LIMIT)
            .await
            .map_err(|e| match ApiError::from(e) {
                ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
                    "a JSON body may have at most {JSON_LIMIT} bytes"
                )),
                other => other,
            })?;
        match serde_json::from_slice(&body) {
            Ok(Value::Object(fields)) => Ok(Self(fields)),
            Ok(_) => Err(ApiError::BadRequest(
                "the body must be a JSON object".to_owned(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!("malformed JSON body: {e}"))),
        }
    }
}

/// `application/json` or any `application/*+json`.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = media_type(headers);
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else if mime.is_empty() {
        Err(ApiError::UnsupportedMediaType(
            "Content-Type is missing; send application/json or multipart/form-data".to_owned(),
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime} is not supported here; send application/json or multipart/form-data"
        )))
    }
}
