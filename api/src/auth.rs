//! OAuth 2.0 client credentials (RFC 6749 section 4.4): the token endpoint, and the middleware
//! that checks bearer tokens and scopes on every other route.

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use chrono::Utc;
use provisioner_shared::{db, passwords};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{AppState, error::ApiError};

pub const SCOPE_READ: &str = "tenants:read";
pub const SCOPE_WRITE: &str = "tenants:write";
pub const ALL_SCOPES: [&str; 2] = [SCOPE_READ, SCOPE_WRITE];

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client_id: String,
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"provisioner\""
                .parse()
                .expect("static header"),
        );
    }
    response
}

/// `POST /configapi/v2/oauth/token`: form-encoded `grant_type=client_credentials`, with the
/// client's credentials in the form or in HTTP Basic authentication.
#[utoipa::path(post, path = "/configapi/v2/oauth/token", tag = "auth",
    request_body(content = crate::openapi::TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A bearer token", body = crate::openapi::TokenResponse),
        (status = 400, description = "invalid_request, unsupported_grant_type or invalid_scope", body = crate::openapi::OAuthError),
        (status = 401, description = "invalid_client", body = crate::openapi::OAuthError)
    ))]
pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded",
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<TokenForm>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form cannot be parsed",
        );
    };
    match form.grant_type.as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
    }
    let (id, secret) = match (
        form.client_id,
        form.client_secret,
        basic_credentials(&headers),
    ) {
        (Some(id), Some(secret), None) => (id, secret),
        (None, None, Some(basic)) => basic,
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    let client = match db::clients::find_active(&state.pool, &id).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // Verify against a dummy hash when the client is unknown, so timing does not tell.
    let phc = client
        .as_ref()
        .map(|c| c.secret_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_owned());
    let verified = tokio::task::spawn_blocking(move || passwords::verify(secret.as_bytes(), &phc))
        .await
        .unwrap_or(false);
    let Some(client) = client.filter(|_| verified) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
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
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "the client may not have that scope",
                );
            }
            asked
        }
    };
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let ttl = state.settings.token_ttl;
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).expect("TTL fits");
    if let Err(e) = db::clients::insert_token(
        &state.pool,
        &token_digest(&token),
        &client.id,
        &scopes,
        expires_at,
    )
    .await
    {
        return ApiError::from(e).into_response();
    }
    let body = json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "scope": scopes.join(" ")});
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// An Argon2id hash of a random value nobody knows, verified against for unknown clients.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bm90LWEtcmVhbC1zYWx0$TG8gTJrXyJ0Jw0gOZz3QYcZRBYw6cJzP0m1GkV1xHhY";

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Middleware: a valid bearer token whose client holds the route's scope (`tenants:read` for
/// GET and HEAD, `tenants:write` for the rest). Puts the `Caller` into the request.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return unauthorized(None);
    };
    let found = match db::clients::find_token(&state.pool, &token_digest(token)).await {
        Ok(found) => found,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some((client_id, scopes)) = found else {
        return unauthorized(Some("the token is unknown or expired"));
    };
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) {
        SCOPE_READ
    } else {
        SCOPE_WRITE
    };
    if !scopes.iter().any(|s| s == needed) {
        let mut response =
            ApiError::Forbidden(format!("this route needs the scope {needed}")).into_response();
        let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\"");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().expect("ascii"));
        return response;
    }
    request.extensions_mut().insert(Caller { client_id });
    next.run(request).await
}

fn unauthorized(reason: Option<&str>) -> Response {
    let mut response =
        ApiError::Unauthorized(reason.unwrap_or("a bearer token is required").to_owned())
            .into_response();
    let challenge = match reason {
        None => "Bearer realm=\"provisioner\"".to_owned(),
        Some(r) => format!(
            "Bearer realm=\"provisioner\", error=\"invalid_token\", error_description=\"{r}\""
        ),
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.parse().expect("ascii"));
    response
}

/// Makes sure `id:secret` exists with every scope (the bootstrap client).
pub async fn bootstrap(pool: &sqlx::PgPool, spec: &str) -> anyhow::Result<()> {
    let (id, secret) = spec.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("PROVISIONER_BOOTSTRAP_CLIENT must be client_id:client_secret")
    })?;
    anyhow::ensure!(
        !id.is_empty() && !secret.is_empty(),
        "PROVISIONER_BOOTSTRAP_CLIENT must be client_id:client_secret"
    );
    if let Some(existing) = db::clients::find_active(pool, id).await? {
        let (secret, phc) = (secret.to_owned(), existing.secret_hash.clone());
        let same =
            tokio::task::spawn_blocking(move || passwords::verify(secret.as_bytes(), &phc)).await?;
        if same
            && ALL_SCOPES
                .iter()
                .all(|s| existing.scopes.iter().any(|e| e == s))
        {
            return Ok(());
        }
    }
    let secret = secret.to_owned();
    let hash = tokio::task::spawn_blocking(move || passwords::hash(secret.as_bytes())).await?;
    let scopes: Vec<String> = ALL_SCOPES.map(str::to_owned).to_vec();
    db::clients::insert(
        pool,
        id,
        id,
        &hash,
        &scopes,
        db::clients::OnExisting::Replace,
    )
    .await?;
    tracing::info!(client.id = id, "bootstrap client ready");
    Ok(())
}
