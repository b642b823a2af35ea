//! The page shell every dashboard page shares (navigation, who is signed in, sign-out), the
//! small pieces pages repeat (times, statuses, progress), and the HTML error pages.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use provisioner_shared::domain::BatchCounts;

use super::session::{CSRF_FIELD, Session};

/// The navigation's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Batches,
    Jobs,
    Templates,
    /// Pages outside the navigation (sign-in, errors).
    None,
}

const NAV: [(Nav, &str, &str); 4] = [
    (Nav::Overview, "/ui/", "Overview"),
    (Nav::Batches, "/ui/batches", "Batches"),
    (Nav::Jobs, "/ui/jobs", "Jobs"),
    (Nav::Templates, "/ui/templates", "Templates"),
];

/// A whole page: `200` unless `status` says otherwise.
pub(crate) fn page(
    status: StatusCode,
    title: &str,
    session: Option<&Session>,
    nav: Nav,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Provisioner" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" { "Provisioner" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                @for (entry, href, label) in NAV {
                                    li {
                                        @if entry == nav {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div class="who" {
                            span { "Signed in as " strong { (session.caller.client_id) } }
                            @if session.caller.operator {
                                " " span class="badge" title="provisioner:admin: sees every client's work" { "operator" }
                            }
                            form method="post" action="/ui/logout" class="inline" {
                                (csrf_input(session))
                                button type="submit" class="link" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
                footer {
                    p { "Times are shown in your browser's time zone "
                        span class="tz" {} "." }
                }
            }
        }
    };
    let mut response = (status, markup).into_response();
    no_store(&mut response);
    response
}

/// Pages are never cached: they show live state and who is signed in.
pub(crate) fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The hidden field that carries the anti-forgery token.
pub(crate) fn csrf_input(session: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf()); }
}

/// A time as UTC text that the page's script shows in the viewer's zone.
pub(crate) fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

/// An optional time, or a dash.
pub(crate) fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span class="muted" { "—" } },
    }
}

/// A status word, styled by its value (and readable without colour).
pub(crate) fn status(text: &str) -> Markup {
    html! { span class={ "status status-" (text) } data-status { (text) } }
}

/// A batch's progress: a bar of its ended items and the exact counts as text. Inside an element
/// with `data-live-batch`, the page's script keeps them current.
pub(crate) fn progress(counts: &BatchCounts) -> Markup {
    let ended = counts.succeeded + counts.failed + counts.cancelled;
    html! {
        div class="progress" {
            progress max=(counts.total.max(1)) value=(ended) data-progress
                aria-label="Items ended" { (ended) " of " (counts.total) }
            dl class="counts" {
                @for (name, value) in [
                    ("total", counts.total), ("queued", counts.queued), ("running", counts.running),
                    ("succeeded", counts.succeeded), ("failed", counts.failed), ("cancelled", counts.cancelled),
                ] {
                    div class={ "count count-" (name) } {
                        dt { (name) }
                        dd data-count=(name) { (value) }
                    }
                }
            }
        }
    }
}

/// An id shortened for tables, whole in its title and its link's text for screen readers.
pub(crate) fn short_id(id: &str) -> Markup {
    let short: String = id.chars().take(8).collect();
    html! { code title=(id) { (short) span class="visually-hidden" { (id.get(8..).unwrap_or("")) } } }
}

/// A page that says what went wrong, with `status`.
pub(crate) fn refused(status: StatusCode, message: &str) -> Response {
    refusal(status, message, None)
}

/// A refusal as a page for a signed-in client that may see no other (its header offers to sign
/// out).
pub(crate) fn refused_signed_in(status: StatusCode, message: &str, session: &Session) -> Response {
    refusal(status, message, Some(session))
}

fn refusal(status: StatusCode, message: &str, session: Option<&Session>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        status,
        title,
        session,
        Nav::None,
        html! {
            p role="alert" { (message) }
            @if session.is_none() {
                p { a href="/ui/" { "Back to the dashboard" } }
            }
        },
    )
}

/// `404` as a page.
pub(crate) fn not_found(what: &str) -> Response {
    refused(
        StatusCode::NOT_FOUND,
        &format!("There is no {what} here for you."),
    )
}

/// `500` as a page; the cause is logged, never shown.
pub(crate) fn internal(error: anyhow::Error) -> Response {
    tracing::error!(error = ?error, "dashboard request failed");
    refused(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side. Try again in a moment.",
    )
}

/// Text for a number of seconds: `3 s`, `4 min 10 s`, `2 h 5 min`.
pub(crate) fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
