//! Job status: get (with long-poll), list with filters and cursor, cancel.

use axum::{Extension, Json, extract::State, http::Uri};
use provisioner_shared::{
    db::{
        self,
        jobs::{Cancel, ListFilter},
    },
    domain::{JobStatus, JobView, TenantUrl},
};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{
        Page, PageQuery, PathText, job_key, job_key_text, not_a_cursor, optional_param,
        status_param, wait_deadline,
    },
    openapi::shapes::{HostName, JobIdText, PageLimit, WaitSeconds},
    wait,
};

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}

fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no job {raw}")))
}

/// The job; with `?wait=N` it answers as soon as the job is terminal, or, with `&status=S`, as
/// soon as its status differs from `S`; after N seconds at most.
#[utoipa::path(get, path = "/configapi/v2/jobs/{jobId}", tag = "jobs", operation_id = "getJob",
    params(("jobId" = inline(JobIdText), Path), ("wait" = inline(Option<WaitSeconds>), Query, description = "Long-poll up to N s (<= 60, larger values clamped)"),
        ("status" = Option<JobStatus>, Query, description = "With wait: return as soon as the status differs from this")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Invalid wait or status"),
        (status = 404, description = "No such job for this client")))]
pub(super) async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
    uri: Uri,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&raw)?;
    let mut errors = Vec::new();
    let deadline = wait_deadline(&uri, &mut errors);
    let seen = status_param(&uri, &mut errors);
    if !errors.is_empty() {
        // Another client's job is 404 whatever the query (as a batch is).
        return match db::jobs::find(&state.pool, id, caller.sees()).await? {
            Some(_) => Err(ApiError::Validation(errors)),
            None => Err(not_found(id)),
        };
    }
    let job = wait::until(
        &state,
        id,
        caller.sees(),
        &caller.client_id,
        deadline,
        |j| match seen {
            None => j.status.is_terminal(),
            // As the contract says, even of a terminal job: it answers after N seconds.
            Some(seen) => j.status != seen,
        },
    )
    .await?
    .ok_or_else(|| not_found(id))?;
    Ok(Json(job.view()))
}

/// The client's jobs (every client's for an operator), newest first.
#[utoipa::path(get, path = "/configapi/v2/jobs", tag = "jobs", operation_id = "listJobs",
    params(("status" = Option<JobStatus>, Query), ("tenantUrl" = inline(Option<HostName>), Query),
        ("batchId" = inline(Option<JobIdText>), Query, description = "Only the items of this batch"),
        ("limit" = inline(Option<PageLimit>), Query, description = "1-500, default 50; larger values are clamped"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")),
    responses(
        (status = 200, description = "Jobs, newest first", body = Page<JobView>),
        (status = 400, description = "Invalid filter")))]
pub(super) async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<Page<JobView>>, ApiError> {
    let mut errors = Vec::new();
    let status = status_param(&uri, &mut errors);
    let tenant_url = optional_param(&uri, "tenantUrl").and_then(|u| {
        TenantUrl::parse(&u)
            .map_err(|m| errors.push(FieldError::new("tenantUrl", m)))
            .ok()
    });
    let batch_id = optional_param(&uri, "batchId").and_then(|b| {
        Uuid::parse_str(&b)
            .map_err(|_| errors.push(FieldError::new("batchId", "must be a UUID")))
            .ok()
    });
    let page = PageQuery::read(&uri, &mut errors);
    let after = page.after.as_deref().and_then(|c| {
        let key = job_key(c);
        if key.is_none() {
            errors.push(not_a_cursor());
        }
        key
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = ListFilter {
        client_id: caller.sees(),
        status,
        tenant_url: tenant_url.as_ref().map(TenantUrl::as_str),
        batch_id,
        after,
        limit: page.fetch(),
    };
    let rows = db::jobs::list(&state.pool, &filter).await?;
    Ok(Json(page.page(
        rows,
        |last| job_key_text(last.created_at, last.id),
        |row| row.view(),
    )))
}

/// Cancels a queued job.
#[utoipa::path(delete, path = "/configapi/v2/jobs/{jobId}", tag = "jobs", operation_id = "cancelJob",
    params(("jobId" = inline(JobIdText), Path)),
    responses(
        (status = 200, description = "The cancelled job", body = JobView),
        (status = 404, description = "No such job for this client"),
        (status = 409, description = "The job is running or has ended")))]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&raw)?;
    let mut tx = state.pool.begin().await?;
    match db::jobs::cancel_or_refuse(&mut tx, id, caller.sees()).await? {
        Cancel::Done(job) => {
            tx.commit().await?;
            Ok(Json(job.view()))
        }
        Cancel::NotFound => Err(ApiError::NotFound(format!("no job {id}"))),
        Cancel::Refused(job) => Err(ApiError::Conflict(format!(
            "job {id} {} and can no longer be cancelled",
            job.status.uncancellable_because()
        ))),
    }
}
