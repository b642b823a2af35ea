//! The API's one error type: a single mapping to status codes and RFC 9457 problem bodies. 5xx
//! bodies are generic; their cause is logged once, inside the request's span.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use provisioner_shared::domain::JobView;
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
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
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a JobView>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title, detail): (StatusCode, &str, String, String) = match &self {
            ApiError::Validation(_) => (
                StatusCode::BAD_REQUEST,
                "urn:provisioner:problem:validation",
                "Validation failed".into(),
                "one or more fields are invalid; see `errors`".into(),
            ),
            ApiError::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                "about:blank",
                "Bad Request".into(),
                d.clone(),
            ),
            ApiError::UnsupportedMediaType(d) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "about:blank",
                "Unsupported Media Type".into(),
                d.clone(),
            ),
            ApiError::Unauthorized(d) => (
                StatusCode::UNAUTHORIZED,
                "about:blank",
                "Unauthorized".into(),
                d.clone(),
            ),
            ApiError::Forbidden(d) => (
                StatusCode::FORBIDDEN,
                "about:blank",
                "Forbidden".into(),
                d.clone(),
            ),
            ApiError::TooManyRequests { detail, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "about:blank",
                "Too Many Requests".into(),
                detail.clone(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "about:blank",
                "Method Not Allowed".into(),
                "this route does not take that method".into(),
            ),
            ApiError::PayloadTooLarge(d) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "about:blank",
                "Content Too Large".into(),
                d.clone(),
            ),
            ApiError::NotFound(d) => (
                StatusCode::NOT_FOUND,
                "about:blank",
                "Not Found".into(),
                d.clone(),
            ),
            ApiError::Conflict(d) => (
                StatusCode::CONFLICT,
                "about:blank",
                "Conflict".into(),
                d.clone(),
            ),
            ApiError::Unprocessable(d) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "about:blank",
                "Unprocessable Content".into(),
                d.clone(),
            ),
            ApiError::LockTimeout(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:provisioner:problem:lock-timeout",
                "Lock timeout".into(),
                d.clone(),
            ),
            ApiError::Unavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "about:blank",
                "Service Unavailable".into(),
                d.clone(),
            ),
            ApiError::JobFailed {
                code,
                title,
                detail,
                ..
            } => (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "urn:provisioner:problem:job-failed",
                title.clone(),
                detail.clone(),
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "about:blank",
                    "Internal Server Error".into(),
                    "the server could not complete the request".into(),
                )
            }
        };
        let problem = Problem {
            kind,
            title: &title,
            status: status.as_u16(),
            detail: &detail,
            errors: match &self {
                ApiError::Validation(errors) => Some(errors),
                _ => None,
            },
            job: match &self {
                ApiError::JobFailed { job, .. } => Some(job),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).expect("problems serialize");
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after),
            );
        }
        if let ApiError::JobFailed { applied, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(applied) {
                response.headers_mut().insert("preference-applied", v);
            }
        }
        response
    }
}
