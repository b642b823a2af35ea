//! JSON object bodies, read whole (at most `JSON_LIMIT` bytes) so every bad field can be named
//! at once instead of failing at the first.

use axum::{
    extract::{FromRequest, Request},
    http::HeaderMap,
};
use serde_json::{Map, Value};

use super::media_type;
use crate::{AppState, auth::Caller, error::ApiError, upload};

/// Largest JSON body.
const JSON_LIMIT: usize = 1 << 20;

/// A JSON body that is an object: `415` for another media type, `413` past the limit, `400`
/// for malformed JSON or another JSON value. Read within the caller's part of the memory budget
/// (`upload::read_json`), whose share comes with it: hold it while the fields are held.
#[derive(Debug)]
pub(crate) struct JsonObject(pub(crate) Map<String, Value>, pub(crate) upload::Share);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        Self::read(request, state, "application/json").await
    }
}

impl JsonObject {
    /// The body as a JSON object; a `415` names `accepted`, the media types the route takes
    /// (a route that also takes a form says so).
    pub(crate) async fn read(
        request: Request,
        state: &AppState,
        accepted: &str,
    ) -> Result<Self, ApiError> {
        require_json(request.headers(), accepted)?;
        let client = request
            .extensions()
            .get::<Caller>()
            .map(|c| c.client_id.clone())
            .unwrap_or_default();
        let (parts, body) = request.into_parts();
        let (body, share) = upload::read_json(
            &state.template_budget,
            &client,
            &parts.headers,
            body,
            JSON_LIMIT as u64,
            &format!("a JSON body may have at most {JSON_LIMIT} bytes"),
        )
        .await?;
        let fields = match crate::strict_json::parse(&body) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => {
                return Err(ApiError::BadRequest(
                    "the body must be a JSON object".to_owned(),
                ));
            }
            Err(e) => return Err(ApiError::BadRequest(format!("malformed JSON body: {e}"))),
        };
        Ok(Self(fields, share))
    }
}

/// `application/json` or any `application/*+json`; `accepted` is what a refusal asks for.
fn require_json(headers: &HeaderMap, accepted: &str) -> Result<(), ApiError> {
    let mime = media_type(headers);
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else if mime.is_empty() {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type is missing; send {accepted}"
        )))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime} is not supported here; send {accepted}"
        )))
    }
}
