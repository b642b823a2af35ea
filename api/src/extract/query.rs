//! Reading single query parameters as text, whatever else the query holds.

use axum::http::Uri;
use provisioner_shared::domain::JobStatus;

use crate::error::FieldError;

/// The first value of query parameter `name`, percent-decoded; `None` when absent.
pub(crate) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    first_value(uri, name, |_| true)
}

/// Like [`query_param`], but an empty value (`?status=`, as a form or a URL template sends for
/// "none") counts as absent and hides no value given after it (`?limit=&limit=x` is `x`). Only
/// for filters, paging and waits, whose absence is harmless; a parameter that changes what a
/// request does (`keepAccessNumbers`, a retry's `code`) keeps an empty value as a fault.
pub(crate) fn optional_param(uri: &Uri, name: &str) -> Option<String> {
    first_value(uri, name, |v| !v.is_empty())
}

fn first_value(uri: &Uri, name: &str, wanted: impl Fn(&str) -> bool) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && wanted(v))
        .map(|(_, v)| v.into_owned())
}

/// `?status=`: one of the job statuses; a bad one adds its field error.
pub(crate) fn status_param(uri: &Uri, errors: &mut Vec<FieldError>) -> Option<JobStatus> {
    let raw = optional_param(uri, "status")?;
    JobStatus::parse(&raw).or_else(|| {
        errors.push(FieldError::new(
            "status",
            "must be queued, running, succeeded, failed or cancelled",
        ));
        None
    })
}

/// Longest long-poll (`?wait=`), seconds.
const MAX_POLL_WAIT: u64 = 60;

/// `?wait=N`: the long-poll's deadline from now, N clamped to 60 s (none: now); a value that is
/// not a non-negative integer adds its field error.
pub(crate) fn wait_deadline(uri: &Uri, errors: &mut Vec<FieldError>) -> tokio::time::Instant {
    let secs = optional_param(uri, "wait").map_or(0, |w| {
        super::clamped_seconds(&w, MAX_POLL_WAIT).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "wait",
                "must be a non-negative integer of seconds",
            ));
            0
        })
    });
    tokio::time::Instant::now() + std::time::Duration::from_secs(secs)
}
