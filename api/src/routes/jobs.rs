//! Job status: get (with long-poll), list with filters and cursor, cancel.

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use provisioner_shared::{
    db::{self, jobs::ListFilter},
    domain::{JobStatus, JobView, TenantUrl},
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    wait,
};

/// Longest long-poll, seconds.
pub const MAX_POLL_WAIT: u64 = 60;

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    wait: Option<String>,
    status: Option<String>,
}

fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no job {raw}")))
}

#[utoipa::path(get, path = "/configapi/v2/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path), ("wait" = Option<u64>, Query, description = "Long-poll up to N s (<= 60)"),
        ("status" = Option<JobStatus>, Query, description = "Return as soon as the status differs from this")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Invalid wait or status", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this client", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:read"]), ("oauth2" = ["tenants:read"])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&raw)?;
    let mut errors = Vec::new();
    let wait_secs = match q.wait.as_deref() {
        None => 0,
        Some(w) => w
            .parse::<u64>()
            .map(|n| n.min(MAX_POLL_WAIT))
            .unwrap_or_else(|_| {
                errors.push(FieldError::new(
                    "wait",
                    "must be a non-negative integer of seconds",
                ));
                0
            }),
    };
    let seen = match q.status.as_deref() {
        None => None,
        Some(s) => JobStatus::parse(s).or_else(|| {
            errors.push(FieldError::new(
                "status",
                "must be queued, running, succeeded, failed or cancelled",
            ));
            None
        }),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(wait_secs);
    let job = wait::until(&state, id, &caller.client_id, deadline, |j| {
        j.status.is_terminal() || seen.is_none_or(|s| s != j.status)
    })
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(job.view()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    status: Option<String>,
    tenant_url: Option<String>,
    batch_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/configapi/v2/jobs", tag = "jobs",
    params(("status" = Option<JobStatus>, Query), ("tenantUrl" = Option<String>, Query), ("batchId" = Option<String>, Query),
        ("limit" = Option<u32>, Query, description = "1-500, default 50"), ("cursor" = Option<String>, Query)),
    responses(
        (status = 200, description = "Jobs, newest first", body = Page<JobView>),
        (status = 400, description = "Invalid filter", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:read"]), ("oauth2" = ["tenants:read"])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let mut errors = Vec::new();
    let status = q.status.as_deref().and_then(|s| {
        JobStatus::parse(s).or_else(|| {
            errors.push(FieldError::new(
                "status",
                "must be queued, running, succeeded, failed or cancelled",
            ));
            None
        })
    });
    let tenant_url = q.tenant_url.as_deref().and_then(|u| {
        TenantUrl::parse(u)
            .map_err(|m| errors.push(FieldError::new("tenantUrl", m)))
            .ok()
    });
    let batch_id = q.batch_id.as_deref().and_then(|b| {
        Uuid::parse_str(b)
            .map_err(|_| errors.push(FieldError::new("batchId", "must be a UUID")))
            .ok()
    });
    let limit = page_limit(q.limit.as_deref(), &mut errors);
    let after = q.cursor.as_deref().and_then(|c| {
        decode_cursor(c).or_else(|| {
            errors.push(FieldError::new("cursor", "is not a cursor this API issued"));
            None
        })
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = ListFilter {
        client_id: &caller.client_id,
        status,
        tenant_url: tenant_url.as_ref().map(TenantUrl::as_str),
        batch_id,
        after,
        limit: limit + 1,
    };
    let mut rows = db::jobs::list(&state.pool, &filter).await?;
    let next_cursor = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        let last = rows.last().expect("a full page has a last item");
        encode_cursor(last.created_at, last.id)
    });
    Ok(Json(Page {
        items: rows.iter().map(|r| r.view()).collect(),
        next_cursor,
    }))
}

/// `limit`: 1 to 500, default 50; larger values are clamped.
pub fn page_limit(raw: Option<&str>, errors: &mut Vec<FieldError>) -> i64 {
    match raw.map(str::parse::<i64>) {
        None => 50,
        Some(Ok(n)) if n >= 1 => n.min(500),
        Some(_) => {
            errors.push(FieldError::new("limit", "must be an integer from 1 to 500"));
            50
        }
    }
}

pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.timestamp_micros()))
}

pub fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

#[utoipa::path(delete, path = "/configapi/v2/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The cancelled job", body = JobView),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this client", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is running or has ended", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&raw)?;
    let mut tx = state.pool.begin().await?;
    if let Some(job) = db::jobs::cancel(&mut tx, id, &caller.client_id).await? {
        tx.commit().await?;
        provisioner_shared::uploads::remove(&state.settings.upload_dir, id).await;
        return Ok(Json(job.view()));
    }
    match db::jobs::find(&mut *tx, id, Some(&caller.client_id)).await? {
        None => Err(ApiError::NotFound(format!("no job {id}"))),
        Some(job) => Err(ApiError::Conflict(format!(
            "job {id} is {} and can no longer be cancelled",
            job.status
        ))),
    }
}
