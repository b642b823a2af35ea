//! Reading single query parameters as text, whatever else the query holds.

use axum::http::Uri;
use provisioner_shared::domain::JobStatus;

use crate::error::FieldError;

/// The first value of query parameter `name`, percent-decoded; `None` when absent.
pub(crate) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `?status=`: one of the job statuses; a bad one adds its field error.
pub(crate) fn status_param(uri: &Uri, errors: &mut Vec<FieldError>) -> Option<JobStatus> {
    let raw = query_param(uri, "status")?;
    JobStatus::parse(&raw).or_else(|| {
        errors.push(FieldError::new(
            "status",
            "must be queued, running, succeeded, failed or cancelled",
        ));
        None
    })
}
