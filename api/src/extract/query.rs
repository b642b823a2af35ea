//! Reading single query parameters as text, whatever else the query holds.

use axum::http::Uri;

/// The first value of query parameter `name`, percent-decoded; `None` when absent.
pub(crate) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
