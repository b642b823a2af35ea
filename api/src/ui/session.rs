//! Dashboard sessions. Signing in issues a bearer token of the client without `tenants:export`
//! (stored hashed, expiring with `PROVISIONER_TOKEN_TTL`); the session cookie carries it,
//! `HttpOnly`, `SameSite=Strict`, and `Secure` when the request came over TLS. State-changing forms carry a
//! token derived from the session (`csrf`), and every `POST` must come from this origin.

use std::time::Instant;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use provisioner_shared::db;
use sha2::{Digest, Sha256};

use super::layout;
use crate::{
    AppState,
    auth::{Caller, Scope, token_digest},
};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "provisioner_session";
/// The form field that carries the anti-forgery token.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// Longest cookie value looked at (a token is 43 characters).
const MAX_TOKEN: usize = 128;

/// A signed-in viewer of the dashboard.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) caller: Caller,
    /// Holds `tenants:read`: may see the dashboard at all.
    can_read: bool,
    /// Holds `tenants:write`: may cancel and retry.
    pub(crate) can_write: bool,
    token: String,
}

impl Session {
    /// The anti-forgery token of this session's forms: a digest of the session's secret token,
    /// so a page of another site can neither read nor guess it.
    pub(crate) fn csrf(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"provisioner-ui-csrf\0");
        digest.update(self.token.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.finalize())
    }

    /// Does `sent` (a form's field) carry this session's anti-forgery token?
    pub(crate) fn csrf_matches(&self, sent: Option<&str>) -> bool {
        let expected = self.csrf();
        sent.is_some_and(|s| {
            s.len() == expected.len()
                && s.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// Ends the session: its token stops working at once.
    pub(crate) async fn end(&self, state: &AppState) -> Result<(), sqlx::Error> {
        let digest = token_digest(&self.token);
        db::dashboard::revoke_token(&state.pool, &digest).await?;
        // A new epoch: no session read before is served again. Other API processes hear of it
        // from the database.
        state.tokens.changed();
        Ok(())
    }
}

impl Session {
    /// The session of the request's cookie, if it has a valid one.
    pub(crate) async fn lookup(
        state: &AppState,
        headers: &HeaderMap,
    ) -> Result<Option<Self>, sqlx::Error> {
        let Some(token) = cookie(headers, COOKIE).filter(|t| t.len() <= MAX_TOKEN) else {
            return Ok(None);
        };
        let digest = token_digest(&token);
        // Kept only while the process hears of revocations (see `TokenCache`).
        let found = match state.tokens.epoch() {
            Some(epoch) => {
                let pool = state.pool.clone();
                state
                    .ui
                    .sessions
                    .get((epoch, digest), || async move {
                        Found::read(&pool, &digest).await
                    })
                    .await?
            }
            None => Found::read(&state.pool, &digest).await?,
        };
        // A cached session is still refused from the second its token expires.
        let Some(Found {
            row: db::dashboard::SessionRow {
                client_id, scopes, ..
            },
            ..
        }) = found.filter(|f| Instant::now() < f.until)
        else {
            return Ok(None);
        };
        let has = |scope: Scope| scopes.iter().any(|s| s == scope.as_str());
        Ok(Some(Self {
            caller: Caller {
                client_id,
                operator: has(Scope::ProvisionerAdmin),
            },
            can_read: has(Scope::TenantsRead),
            can_write: has(Scope::TenantsWrite),
            token,
        }))
    }
}

/// Any signed-in session, whatever its scopes: what signing out needs.
pub(crate) struct SignedIn(pub(crate) Session);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    /// The session of the request's cookie; without a valid one, pages answer `303` to the
    /// sign-in form and the live figures `401`.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = Session::lookup(state, &parts.headers)
            .await
            .map_err(|e| layout::internal(e.into()))?;
        match session {
            Some(session) => Ok(Self(session)),
            None if parts.uri.path().starts_with("/ui/live/") => {
                Err((StatusCode::UNAUTHORIZED, "signed out").into_response())
            }
            None => Err(to_login()),
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    /// A signed-in session that may read (`SignedIn`'s answers without one); a client without
    /// `tenants:read` gets a `403` page from which it can sign out.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let SignedIn(session) = SignedIn::from_request_parts(parts, state).await?;
        if !session.can_read {
            if parts.uri.path().starts_with("/ui/live/") {
                return Err((StatusCode::FORBIDDEN, "may not read").into_response());
            }
            return Err(layout::refused_signed_in(
                StatusCode::FORBIDDEN,
                "This client may not read: the dashboard needs the scope tenants:read. Sign out to sign in as another client.",
                &session,
            ));
        }
        Ok(session)
    }
}

/// `303` to the sign-in form.
pub(crate) fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// The value of cookie `name`, if the request has it.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// Did the request come over TLS (to this process, or to a proxy in front of it that says so)?
pub(crate) fn over_tls(headers: &HeaderMap) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    header("x-forwarded-proto").is_some_and(|p| p.split(',').next().map(str::trim) == Some("https"))
        || header("forwarded")
            .is_some_and(|f| f.split([';', ',']).any(|part| part.trim() == "proto=https"))
}

/// The `Set-Cookie` of a new session holding `token` for `max_age` seconds.
pub(crate) fn set_cookie(token: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a token is URL-safe text")
}

/// The `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("ascii")
}

/// Did a `POST` come from a page of this origin? Browsers say where a request comes from
/// (`Sec-Fetch-Site`, `Origin`); a request of another site is refused. Clients that send
/// neither (scripts) are judged by the anti-forgery token alone.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = text(header::ORIGIN) else {
        return true;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let hosts = [
        text(header::HeaderName::from_static("x-forwarded-host")),
        text(header::HOST),
    ];
    authority.is_some_and(|a| {
        hosts
            .iter()
            .flatten()
            .any(|h| h.split(',').next().map(str::trim) == Some(a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_post_of_another_site_is_not_same_origin() {
        assert!(same_origin(&headers(&[("host", "dash.example:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "dash.example:8080"),
            ("origin", "http://dash.example:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "dash.example:8080"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "dash.example:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "dash.example:8080"),
            ("origin", "null"),
        ])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; provisioner_session=abc; b=2")]);
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "x=1")]), COOKIE), None);
    }

    #[test]
    fn tls_is_recognised_from_proxy_headers() {
        assert!(over_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(over_tls(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
        assert!(!over_tls(&HeaderMap::new()));
    }
}

/// A session as read, and the instant its token expires: the lifetime it had left by
/// PostgreSQL's clock, counted from before the read (this host's clock may differ from the
/// database's; its monotonic clock only measures the time since).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    row: db::dashboard::SessionRow,
    until: Instant,
}

impl Found {
    async fn read(pool: &sqlx::PgPool, digest: &[u8; 32]) -> Result<Option<Self>, sqlx::Error> {
        let read_at = Instant::now();
        let row = db::dashboard::session(pool, digest).await?;
        Ok(row.map(|row| {
            let left = std::time::Duration::try_from_secs_f64(row.seconds_left).unwrap_or_default();
            Self {
                until: read_at + left,
                row,
            }
        }))
    }
}
