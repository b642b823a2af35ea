//! The API's one error type: a single mapping to status codes and RFC 9457 problem bodies. 5xx
//! bodies are generic; their cause is logged once, when the response is made, inside the
//! request's span.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use provisioner_shared::domain::JobView;
use serde::Serialize;
use utoipa::ToSchema;

pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct FieldError {
    /// The item's 0-based position, for an item of a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) item: Option<usize>,
    /// The item's 1-based line, for an item of an NDJSON batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<u64>,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl FieldError {
    /// `templateId` names no template the client stored.
    pub(crate) fn template_not_stored(id: &str) -> Self {
        Self::new(
            "templateId",
            format!("no template {id} is stored by this client"),
        )
    }

    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            item: None,
            line: None,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The same problem, placed at an item of a batch.
    pub(crate) fn at(self, item: usize, line: Option<u64>) -> Self {
        Self {
            item: Some(item),
            line,
            ..self
        }
    }
}

/// RFC 9457 problem details: the body of every 4xx and 5xx answer (the token endpoint aside).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    kind: &'static str,
    title: String,
    status: u16,
    detail: String,
    /// Every invalid field (validation problems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<FieldError>>,
    /// The job, when a job's failure is answered under `Prefer: wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<Box<JobView>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// Items of a batch are invalid: the first problems, and how many items have one.
    #[error("invalid batch items")]
    InvalidItems {
        errors: Vec<FieldError>,
        invalid: usize,
    },
    #[error("{0}")]
    BadRequest(String),
    /// A template refused by the checks create-from-template makes (the detail names the fault).
    #[error("{0}")]
    BadTemplate(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UriTooLong(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The request body stalled.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    LockTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Out of a bounded resource for now: `503` with `Retry-After`.
    #[error("{detail}")]
    Busy { detail: String, retry_after: u64 },
    /// A job that ended with a failure code, answered under `Prefer: wait`.
    #[error("job failed")]
    JobFailed {
        code: u16,
        title: String,
        detail: String,
        job: Box<JobView>,
        applied: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    /// A fault a retry may cure (a lost connection, a server restarting, a deadlock) is `503`
    /// with `Retry-After`: the client learns it may send the request again (with its
    /// `Idempotency-Key`, a create's retry is safe). Any other is a `500`.
    fn from(e: sqlx::Error) -> Self {
        // Not a protocol error: the driver also raises those for faults of the request itself.
        if provisioner_shared::db::is_transient(&e) && !matches!(e, sqlx::Error::Protocol(_)) {
            tracing::warn!(error = %e, "the database failed a request for the moment");
            return Self::Busy {
                detail: "the database could not complete the request just now; try again"
                    .to_owned(),
                retry_after: 1,
            };
        }
        Self::Internal(e.into())
    }
}

impl From<crate::recorder::RecorderGone> for ApiError {
    fn from(e: crate::recorder::RecorderGone) -> Self {
        Self::Internal(e.into())
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        if let Some(fault) = body_fault(&e) {
            return fault;
        }
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(e.body_text())
        } else {
            Self::BadRequest(format!("malformed form data: {}", e.body_text()))
        }
    }
}

impl From<axum::Error> for ApiError {
    /// A request body that could not be read.
    fn from(e: axum::Error) -> Self {
        body_fault(&e)
            .unwrap_or_else(|| Self::BadRequest(format!("the request body could not be read: {e}")))
    }
}

/// `408` for a body that stalled, `413` for one past a length limit, found anywhere in the
/// error's chain of causes.
pub(crate) fn body_fault(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Some(ApiError::RequestTimeout(
                "the request body stalled; send it without long pauses".to_owned(),
            ));
        }
        if let Some(long) = e.downcast_ref::<crate::form_window::HeadersTooLong>() {
            return Some(ApiError::BadRequest(format!("malformed form data: {long}")));
        }
        if let Some(late) = e.downcast_ref::<crate::body_deadline::BodyDeadline>() {
            return Some(ApiError::RequestTimeout(format!(
                "{late}; send it faster or in smaller parts"
            )));
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return Some(ApiError::PayloadTooLarge(
                "the request body is larger than this route accepts".to_owned(),
            ));
        }
        cause = e.source();
    }
    None
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::Validation(vec![e])
    }
}

impl ApiError {
    /// `422`: an `Idempotency-Key` the client used for another request (another body, or
    /// another route: a key names one request of its client, job or batch).
    pub(crate) fn key_reused() -> Self {
        Self::Unprocessable("this Idempotency-Key was used with a different request".to_owned())
    }

    /// Status, problem type and title: the one place they are decided.
    fn class(&self) -> (StatusCode, &'static str, &'static str) {
        const BLANK: &str = "about:blank";
        match self {
            Self::Validation(_) | Self::InvalidItems { .. } => (
                StatusCode::BAD_REQUEST,
                "urn:provisioner:problem:validation",
                "Validation failed",
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, BLANK, "Bad Request"),
            Self::BadTemplate(_) => (
                StatusCode::BAD_REQUEST,
                "urn:provisioner:problem:bad-template",
                "Bad template",
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                BLANK,
                "Unsupported Media Type",
            ),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, BLANK, "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, BLANK, "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, BLANK, "Not Found"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, BLANK, "Request Timeout"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, BLANK, "Content Too Large"),
            Self::UriTooLong(_) => (StatusCode::URI_TOO_LONG, BLANK, "URI Too Long"),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                BLANK,
                "Request Header Fields Too Large",
            ),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, BLANK, "Method Not Allowed"),
            Self::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, BLANK, "Too Many Requests")
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, BLANK, "Conflict"),
            Self::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                BLANK,
                "Unprocessable Content",
            ),
            Self::LockTimeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:provisioner:problem:lock-timeout",
                "Lock timeout",
            ),
            Self::Unavailable(_) | Self::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                BLANK,
                "Service Unavailable",
            ),
            Self::JobFailed { code, .. } => (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "urn:provisioner:problem:job-failed",
                "",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                BLANK,
                "Internal Server Error",
            ),
        }
    }

    fn into_problem(self) -> (Problem, Option<(header::HeaderName, HeaderValue)>) {
        let (status, kind, title) = self.class();
        let mut problem = Problem {
            kind,
            title: title.to_owned(),
            status: status.as_u16(),
            detail: String::new(),
            errors: None,
            job: None,
        };
        let mut extra = None;
        match self {
            Self::Validation(mut errors) => {
                // An answer no larger than a few kilobytes, however many faults the body held
                // (40,000 bad `numberMap` keys in a 1 MiB create made a 3.7 MB answer).
                let max = crate::intake::MAX_REPORTED_ERRORS;
                problem.detail = if errors.len() > max {
                    let all = errors.len();
                    errors.truncate(max);
                    format!("{all} fields are invalid; see `errors` (the first {max})")
                } else {
                    "one or more fields are invalid; see `errors`".to_owned()
                };
                problem.errors = Some(errors);
            }
            Self::InvalidItems { errors, invalid } => {
                let items = if invalid == 1 { "item is" } else { "items are" };
                problem.detail = format!(
                    "{invalid} {items} invalid; nothing was created; see `errors` (at most {})",
                    crate::intake::MAX_REPORTED_ERRORS
                );
                problem.errors = Some(errors);
            }
            Self::MethodNotAllowed => {
                problem.detail = "this route does not take that method".to_owned();
            }
            Self::TooManyRequests {
                detail,
                retry_after,
            }
            | Self::Busy {
                detail,
                retry_after,
            } => {
                problem.detail = detail;
                extra = Some((header::RETRY_AFTER, HeaderValue::from(retry_after)));
            }
            Self::JobFailed {
                title,
                detail,
                job,
                applied,
                ..
            } => {
                (problem.title, problem.detail, problem.job) = (title, detail, Some(job));
                extra = HeaderValue::from_str(&applied)
                    .ok()
                    .map(|v| (header::HeaderName::from_static("preference-applied"), v));
            }
            Self::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                problem.detail = "the server could not complete the request".to_owned();
            }
            Self::BadRequest(d)
            | Self::BadTemplate(d)
            | Self::UnsupportedMediaType(d)
            | Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::NotFound(d)
            | Self::PayloadTooLarge(d)
            | Self::UriTooLong(d)
            | Self::HeadersTooLarge(d)
            | Self::RequestTimeout(d)
            | Self::Conflict(d)
            | Self::Unprocessable(d)
            | Self::LockTimeout(d)
            | Self::Unavailable(d) => problem.detail = d,
        }
        (problem, extra)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (problem, extra) = self.into_problem();
        let status = StatusCode::from_u16(problem.status).expect("a valid status");
        let body = serde_json::to_vec(&problem).expect("problems serialize");
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Runs every check, then answers all their field errors at once (with `more`, the faults of
/// what is checked elsewhere, such as an `Idempotency-Key`), or all their values.
pub(crate) fn all_valid<A, B>(
    a: Result<A, FieldError>,
    b: Result<B, FieldError>,
    more: Option<FieldError>,
) -> Result<(A, B), ApiError> {
    match (a, b, more) {
        (Ok(a), Ok(b), None) => Ok((a, b)),
        (a, b, more) => Err(ApiError::Validation(
            a.err().into_iter().chain(b.err()).chain(more).collect(),
        )),
    }
}
