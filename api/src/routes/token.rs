//! The OAuth 2.0 token endpoint (client credentials, RFC 6749 section 4.4). Its errors are RFC
//! 6749 section 5.2 bodies, not problem+json.

use std::net::SocketAddr;

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AppState,
    auth::{Credentials, basic_credentials, issue_token, verify_credentials},
    error::{ApiError, body_fault},
    extract::media_type,
    token_guard::Refusal,
};

/// Largest token request form.
const FORM_LIMIT: usize = 16 << 10;
/// Longest client id (longer ones are refused before any work).
const MAX_CLIENT_ID: usize = 255;

/// `POST /configapi/v2/oauth/token` (form-encoded).
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct TokenRequest {
    /// `client_credentials`.
    grant_type: Option<String>,
    /// With `client_secret`, unless the credentials come by HTTP Basic authentication.
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Space-separated subset of the client's scopes.
    scope: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenResponse {
    access_token: String,
    /// `Bearer`.
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// RFC 6749 section 5.2 error.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OAuthError {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type` or `invalid_scope`.
    error: &'static str,
    error_description: &'static str,
}

impl OAuthError {
    fn respond(
        status: StatusCode,
        error: &'static str,
        error_description: &'static str,
    ) -> Response {
        let body = Self {
            error,
            error_description,
        };
        let mut response =
            (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"provisioner\""),
            );
        }
        response
    }

    /// The guard's refusal, with `Retry-After`.
    fn refused(refusal: Refusal) -> Response {
        let (status, description, retry_after) = match refusal {
            Refusal::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many token requests at once; retry shortly",
                1,
            ),
            Refusal::TooManyFailures { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address; retry later",
                retry_after,
            ),
        };
        let mut response = Self::respond(status, "temporarily_unavailable", description);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        response
    }

    fn invalid_client() -> Response {
        Self::respond(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }
}

/// Form-encoded `grant_type=client_credentials`, with the client's credentials in the form or
/// in HTTP Basic authentication.
#[utoipa::path(post, path = "/configapi/v2/oauth/token", tag = "auth", operation_id = "issueToken",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A bearer token", body = TokenResponse),
        (status = 400, description = "invalid_request, unsupported_grant_type or invalid_scope", body = OAuthError),
        (status = 401, description = "invalid_client", body = OAuthError),
        (status = 413, description = "The form is larger than 16 KiB", body = OAuthError),
        (status = 429, description = "Too many failed attempts from this address (Retry-After)", body = OAuthError),
        (status = 503, description = "Too many token requests at once (Retry-After)", body = OAuthError)))]
pub(super) async fn issue_token_route(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), FORM_LIMIT).await {
        Ok(body) => body,
        // Too slow (the body's deadlines) is not too large.
        Err(e) if matches!(body_fault(&e), Some(ApiError::RequestTimeout(_))) => {
            return OAuthError::respond(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "the form did not arrive in time",
            );
        }
        Err(_) => {
            return OAuthError::respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the form is larger than 16 KiB",
            );
        }
    };
    let form = match read_form(&headers, &body) {
        Ok(form) => form,
        Err((error, description)) => {
            return OAuthError::respond(StatusCode::BAD_REQUEST, error, description);
        }
    };
    let (id, secret) = match (
        form.client_id,
        form.client_secret,
        basic_credentials(&headers),
    ) {
        (Some(id), Some(secret), None) => (id, secret),
        (None, None, Some(basic)) => basic,
        _ => return OAuthError::invalid_client(),
    };
    if id.len() > MAX_CLIENT_ID {
        // No client has such an id: nothing to verify, nothing to remember.
        return OAuthError::invalid_client();
    }
    let client = match verify_credentials(&state, &id, secret, peer.ip(), &headers).await {
        Credentials::Valid(client) => client,
        Credentials::Wrong => return OAuthError::invalid_client(),
        Credentials::Refused(refusal) => return OAuthError::refused(refusal),
        Credentials::Failed(e) => return ApiError::from(e).into_response(),
    };
    let scopes: Vec<String> = match form.scope.as_deref() {
        None | Some("") => client.scopes.clone(),
        Some(asked) => {
            let asked: Vec<String> = asked
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !asked.iter().all(|s| client.scopes.contains(s)) {
                return OAuthError::respond(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "the client may not have that scope",
                );
            }
            asked
        }
    };
    let ttl = state.settings.token_ttl;
    let access_token = match issue_token(&state.pool, &client, &scopes, ttl).await {
        Ok(Some(token)) => token,
        // Its secret changed, or it was revoked, since the secret was verified.
        Ok(None) => return OAuthError::invalid_client(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl.as_secs(),
        scope: scopes.join(" "),
    };
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// The form, with `grant_type=client_credentials` checked; else the RFC 6749 error and its
/// description.
fn read_form(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<TokenRequest, (&'static str, &'static str)> {
    if media_type(headers) != "application/x-www-form-urlencoded" {
        return Err(("invalid_request", "send application/x-www-form-urlencoded"));
    }
    let Ok(form) = serde_urlencoded::from_bytes::<TokenRequest>(body) else {
        return Err(("invalid_request", "the form cannot be parsed"));
    };
    match form.grant_type.as_deref() {
        None => Err(("invalid_request", "grant_type is required")),
        Some("client_credentials") => Ok(form),
        Some(_) => Err((
            "unsupported_grant_type",
            "only client_credentials is supported",
        )),
    }
}
