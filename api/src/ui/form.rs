//! Reading the dashboard's forms: small URL-encoded bodies, and for actions the checks that they
//! come from a page of this dashboard (origin and anti-forgery token) and that the session may
//! change state.

use axum::{
    extract::Request,
    http::{HeaderMap, StatusCode},
    response::Response,
};

use super::{
    layout,
    session::{CSRF_FIELD, Session, same_origin},
};
use crate::extract::media_type;

/// Largest form body.
const FORM_LIMIT: usize = 16 << 10;

/// A submitted form.
#[derive(Debug)]
pub(crate) struct Form {
    pub(crate) headers: HeaderMap,
    fields: Vec<(String, String)>,
}

impl Form {
    /// The first value of field `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads a URL-encoded form of at most 16 KiB.
    pub(crate) async fn read(request: Request) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let kind = media_type(&parts.headers);
        if !kind.is_empty() && kind != "application/x-www-form-urlencoded" {
            return Err(layout::refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the form as application/x-www-form-urlencoded.",
            ));
        }
        let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|e| {
            // Too slow (the body's deadlines) is not too large.
            if matches!(
                crate::error::body_fault(&e),
                Some(crate::error::ApiError::RequestTimeout(_))
            ) {
                layout::refused(
                    StatusCode::REQUEST_TIMEOUT,
                    "The form did not arrive in time.",
                )
            } else {
                layout::refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is larger than 16 KiB.",
                )
            }
        })?;
        let fields = url::form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Self {
            headers: parts.headers,
            fields,
        })
    }

    /// Reads a form of `session`'s pages: refused (`403`) unless it comes from a page of this
    /// dashboard with the session's anti-forgery token.
    pub(crate) async fn from_page(session: &Session, request: Request) -> Result<Self, Response> {
        let from_here = same_origin(request.headers());
        let form = Self::read(request).await?;
        if !from_here || !session.csrf_matches(form.get(CSRF_FIELD)) {
            return Err(layout::refused(
                StatusCode::FORBIDDEN,
                "This action was refused: it did not come from a page of this dashboard. Reload the page and try again.",
            ));
        }
        Ok(form)
    }

    /// Reads the form of an action that changes state: as `from_page`, and the client must hold
    /// `tenants:write`.
    pub(crate) async fn action(session: &Session, request: Request) -> Result<Self, Response> {
        let form = Self::from_page(session, request).await?;
        if !session.can_write {
            return Err(layout::refused(
                StatusCode::FORBIDDEN,
                "This client may not change anything: that needs the scope tenants:write.",
            ));
        }
        Ok(form)
    }
}

/// Where to go back to after an action: a path of the dashboard the form names, or `default`.
/// Anything else (another site, a scheme-relative URL) is ignored.
pub(crate) fn back_to(form: &Form, default: String) -> String {
    form.get("back")
        .filter(|b| b.starts_with("/ui/") && !b.contains("//") && !b.contains('\\'))
        .filter(|b| b.len() <= 2048 && b.chars().all(|c| c.is_ascii_graphic()))
        .map_or(default, str::to_owned)
}
