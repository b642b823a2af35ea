//! Signing in and out. The sign-in form takes a client id and secret, verified as the token
//! endpoint verifies them (through the same guard, which bounds the Argon2 work and refuses peers
//! that keep failing); success issues a token of the client and keeps it in the session cookie.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use super::{
    form::Form,
    layout::{self, Nav},
    session::{Session, SignedIn, clear_cookie, over_tls, same_origin, set_cookie},
};
use crate::{
    AppState,
    auth::{Credentials, Scope, issue_token, verify_credentials},
    token_guard::Refusal,
};

/// Longest client id looked up.
const MAX_CLIENT_ID: usize = 255;
/// Longest client secret verified.
const MAX_SECRET: usize = 1024;

/// The sign-in form's fields, as the OpenAPI document describes them (the form is read field by
/// field, within bounds).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct LoginForm {
    client_id: String,
    client_secret: String,
}

/// `GET /ui/login`: the form (or, when already signed in, the overview).
#[utoipa::path(get, path = "/ui/login", tag = "dashboard", operation_id = "dashboardSignInForm",
    responses(
        (status = 200, description = "The sign-in form", content_type = "text/html", body = String),
        (status = 303, description = "Already signed in: to `/ui/`")))]
pub(crate) async fn form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match Session::lookup(&state, &headers).await {
        Ok(Some(_)) => Redirect::to("/ui/").into_response(),
        Ok(None) => login_page(StatusCode::OK, None, ""),
        Err(e) => layout::internal(e.into()),
    }
}

/// `POST /ui/login`: `303` to `/ui/` with the session cookie, or the form again with what was
/// wrong (and no cookie).
#[utoipa::path(post, path = "/ui/login", tag = "dashboard", operation_id = "dashboardSignIn",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: to `/ui/`, with the session cookie (`HttpOnly`, `SameSite=Strict`)"),
        (status = 200, description = "Wrong or missing credentials: the form again with the error, no cookie", content_type = "text/html", body = String),
        (status = 403, description = "Not sent from the dashboard's own page (cross-site)", content_type = "text/html", body = String),
        (status = 408, description = "The form did not arrive in time", content_type = "text/html", body = String),
        (status = 413, description = "The form is too large", content_type = "text/html", body = String),
        (status = 415, description = "Not a form", content_type = "text/html", body = String),
        (status = 429, description = "Too many failed sign-ins from this address (`Retry-After`)", content_type = "text/html", body = String),
        (status = 503, description = "Too many sign-ins at once (`Retry-After`)", content_type = "text/html", body = String)))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if !same_origin(request.headers()) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("Sign in from this dashboard's own page."),
            "",
        );
    }
    // The failures are counted by the address a trusted proxy names, when one does.
    let headers = request.headers().clone();
    let form = match Form::read(request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let id = form.get("client_id").unwrap_or("").trim().to_owned();
    let secret = form.get("client_secret").unwrap_or("").to_owned();
    if id.is_empty() || secret.is_empty() {
        return login_page(
            StatusCode::OK,
            Some("Enter the client id and the client secret."),
            &id,
        );
    }
    if id.len() > MAX_CLIENT_ID || secret.len() > MAX_SECRET {
        // No client has such an id or secret: nothing to verify.
        return wrong_credentials(&id);
    }
    let client = match verify_credentials(&state, &id, secret, peer.ip(), &headers).await {
        Credentials::Valid(client) => client,
        Credentials::Wrong => return wrong_credentials(&id),
        Credentials::Refused(refusal) => return refused(refusal, &id),
        Credentials::Failed(e) => return layout::internal(e.into()),
    };
    let ttl = state.settings.token_ttl;
    // The session's token is a bearer token too: it gets only what the dashboard uses, so a
    // stolen cookie never exports tenants (their password hashes), and a client that may not
    // read, for which every page is refused, gets no scope at all.
    let can_read = client
        .scopes
        .iter()
        .any(|s| s == Scope::TenantsRead.as_str());
    let scopes: Vec<String> = client
        .scopes
        .iter()
        .filter(|_| can_read)
        .filter(|s| *s != Scope::TenantsExport.as_str())
        .cloned()
        .collect();
    let token = match issue_token(&state.pool, &client, &scopes, ttl).await {
        Ok(Some(token)) => token,
        // Its secret changed, or it was revoked, since the secret was verified.
        Ok(None) => return wrong_credentials(&id),
        Err(e) => return layout::internal(e.into()),
    };
    tracing::info!(client.id = %client.id, "dashboard sign-in");
    let mut response = Redirect::to("/ui/").into_response();
    let cookie = set_cookie(&token, ttl.as_secs(), over_tls(&form.headers));
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    layout::no_store(&mut response);
    response
}

/// `POST /ui/logout`: ends the session (its token stops working) and clears the cookie.
pub(crate) async fn logout(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    request: Request,
) -> Response {
    let form = match Form::from_page(&session, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    if let Err(e) = session.end(&state).await {
        return layout::internal(e.into());
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(over_tls(&form.headers)));
    response
}

fn wrong_credentials(id: &str) -> Response {
    login_page(
        StatusCode::OK,
        Some("The client id or the client secret is wrong."),
        id,
    )
}

/// The guard's refusal, as the form with `Retry-After`.
fn refused(refusal: Refusal, id: &str) -> Response {
    let (status, message, retry_after) = match refusal {
        Refusal::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins at once. Try again in a moment.",
            1,
        ),
        Refusal::TooManyFailures { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts from this address. Try again later.",
            retry_after,
        ),
    };
    let mut response = login_page(status, Some(message), id);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn login_page(status: StatusCode, error: Option<&str>, id: &str) -> Response {
    layout::page(status, "Sign in", None, Nav::None, login_form(error, id))
}

fn login_form(error: Option<&str>, id: &str) -> Markup {
    html! {
        p { "Sign in with the client id and secret of one of this provider's API clients." }
        @if let Some(error) = error {
            p class="error" role="alert" id="login-error" { (error) }
        }
        form method="post" action="/ui/login" class="login" {
            div class="field" {
                label for="client_id" { "Client id" }
                input type="text" id="client_id" name="client_id" value=(id) required
                    autocomplete="username" autocapitalize="none" spellcheck="false"
                    maxlength="255" aria-describedby=[error.map(|_| "login-error")];
            }
            div class="field" {
                label for="client_secret" { "Client secret" }
                input type="password" id="client_secret" name="client_secret" required
                    autocomplete="current-password" maxlength="1024";
            }
            button type="submit" { "Sign in" }
        }
    }
}
