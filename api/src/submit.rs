//! The job submission every create and import shares: idempotency replays, the immediate 409s,
//! the per-client cap, the job, its template (an upload stored, or a named one checked and
//! locked) and its outbox message in one transaction, and the answer (`202`, or the job's final
//! code under `Prefer: wait`).

use std::convert::Infallible;

use axum::{
    Json,
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db::{
        self,
        idempotency::KeyHolder,
        jobs::{Admit, JobRow, NewJob, SubmitOutcome, TemplateCheck},
    },
    domain::{JobKind, JobView, TemplateSource},
    trace::TraceContext,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{IdempotencyKey, PreferWait, RequestTrace},
    upload::Upload,
    validate::CreateRequest,
    wait,
};

/// A job about to be recorded.
pub(crate) struct Submission {
    pub(crate) id: Uuid,
    pub(crate) kind: JobKind,
    pub(crate) tenant_url: String,
    pub(crate) params: Value,
    pub(crate) password: Option<SecretString>,
    /// Keyed digest of the whole request: a replay with another body is `422`.
    pub(crate) digest: String,
    /// Answer 409 at once when the tenant exists (creates; imports learn it from their job).
    pub(crate) refuse_existing_tenant: bool,
    /// The template the job reads from the store, if any (its parameters name the same).
    pub(crate) template: JobTemplate,
}

/// Where the job's template is, as far as the store is concerned.
#[derive(Debug)]
pub(crate) enum JobTemplate {
    /// Not in the store: the worker downloads it (`templateUrl`).
    Download,
    /// Named by `templateId`: the client must see it (else `400` on that field).
    Named(String),
    /// Received with the request: stored with the job.
    Upload(Upload),
}

impl JobTemplate {
    /// What a validated create request names (`upload`: the form's file, if it had one).
    pub(crate) fn of(request: &CreateRequest, upload: Option<Upload>) -> Self {
        match (upload, &request.params.template) {
            (Some(upload), _) => Self::Upload(upload),
            (None, TemplateSource::Stored(id)) => Self::Named(id.clone()),
            (None, TemplateSource::Url(_)) => Self::Download,
        }
    }
}

impl Submission {
    /// A create from a validated request.
    pub(crate) fn create(
        id: Uuid,
        request: CreateRequest,
        digest: String,
        template: JobTemplate,
    ) -> Self {
        Self {
            id,
            kind: JobKind::CreateTenant,
            tenant_url: request.tenant_url.to_string(),
            params: serde_json::to_value(&request.params).expect("params serialize"),
            password: Some(request.password),
            digest,
            refuse_existing_tenant: true,
            template,
        }
    }
}

/// The answers every submission may give, for the routes' documentation (with their own 4xx).
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "documents the answers that `submit` builds")]
pub(crate) enum Submitted {
    /// Accepted: the job, queued.
    #[response(status = 202, headers(("Location" = String, description = "/configapi/v2/jobs/{jobId}")))]
    Accepted(JobView),
    /// Under `Prefer: wait`, the job succeeded in time (a failure answers its code).
    #[response(status = 200)]
    Succeeded(JobView),
    /// `Idempotency-Key` reused with another request.
    #[response(status = 422)]
    KeyReused,
    /// The client has too many queued or running jobs (`Retry-After`).
    #[response(status = 429)]
    TooManyJobs,
}

/// The answers of Import Tenant, which always answers `202` (no `Prefer: wait`).
#[derive(utoipa::IntoResponses)]
#[expect(
    dead_code,
    clippy::large_enum_variant,
    reason = "documents the answers that `submit` builds; never built, so its size is moot"
)]
pub(crate) enum Imported {
    /// Accepted: the job, queued.
    #[response(status = 202, headers(("Location" = String, description = "/configapi/v2/jobs/{jobId}")))]
    Accepted(JobView),
    /// `Idempotency-Key` reused with another request.
    #[response(status = 422)]
    KeyReused,
    /// The client has too many queued or running jobs (`Retry-After`).
    #[response(status = 429)]
    TooManyJobs,
}

/// How the caller asked to be answered: its `Idempotency-Key` and `Prefer: wait`; and the
/// request's trace context, which the job continues.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) idempotency_key: IdempotencyKey,
    pub(crate) prefer_wait: PreferWait,
    pub(crate) trace: TraceContext,
}

impl<S: Send + Sync> FromRequestParts<S> for Answer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let Ok(idempotency_key) = IdempotencyKey::from_request_parts(parts, state).await;
        let Ok(prefer_wait) = PreferWait::from_request_parts(parts, state).await;
        let Ok(RequestTrace(trace)) = RequestTrace::from_request_parts(parts, state).await;
        Ok(Self {
            idempotency_key,
            prefer_wait,
            trace,
        })
    }
}

/// Records the job (or replays the one its idempotency key names) and answers.
pub(crate) async fn submit(
    state: &AppState,
    caller: &Caller,
    answer: &Answer,
    sub: Submission,
) -> Result<Response, ApiError> {
    let key = answer.idempotency_key.key()?;
    let outcome = record(state, caller, key, &sub, &answer.trace).await;
    // The upload is stored (or refused): its memory goes back before any wait for the job.
    drop(sub.template);
    let job = match outcome? {
        Recorded::New(job) => {
            tracing::info!(job.id = %job.id, job.kind = %job.kind, tenant.url = %job.tenant_url, "job accepted");
            job
        }
        Recorded::Replay(job) if job.request_digest.as_deref() == Some(sub.digest.as_str()) => job,
        Recorded::Replay(_) => return Err(ApiError::key_reused()),
    };
    respond(state, job, answer.prefer_wait).await
}

/// How often an upload is stored and its job recorded before giving up (each retry means the
/// sweeper removed the template between the two).
const UPLOAD_TRIES: usize = 3;

enum Recorded {
    New(JobRow),
    Replay(JobRow),
}

async fn record(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    sub: &Submission,
    trace: &TraceContext,
) -> Result<Recorded, ApiError> {
    if let Some(job) = replayed(state, caller, key).await? {
        return Ok(Recorded::Replay(job));
    }
    let sealed = sub.password.as_ref().map(|p| {
        state
            .sealer
            .seal(p.expose_secret().as_bytes(), sub.id.as_bytes())
    });
    let template_id = match &sub.template {
        JobTemplate::Download => None,
        JobTemplate::Named(id) => Some(id.clone()),
        JobTemplate::Upload(upload) => Some(upload.id.clone()),
    };
    let template = match &sub.template {
        JobTemplate::Download => TemplateCheck::None,
        JobTemplate::Named(_) => TemplateCheck::KeptBy(caller.sees().map(str::to_owned)),
        JobTemplate::Upload(_) => TemplateCheck::Stored,
    };
    let job = NewJob {
        id: sub.id,
        kind: sub.kind,
        tenant_url: sub.tenant_url.clone(),
        client_id: caller.client_id.clone(),
        params: sub.params.clone(),
        sealed_password: sealed,
        idempotency_key: key.map(str::to_owned),
        request_digest: Some(sub.digest.clone()),
        template_id: template_id.clone(),
        // The request's span: the job's spans are its children.
        trace: *trace,
        admit: Admit {
            refuse_existing_tenant: sub.refuse_existing_tenant,
            max_active_jobs: i64::from(state.settings.client_max_active_jobs),
            interactive_jobs: state.settings.client_interactive_jobs,
            template,
        },
    };
    // Recorded in one statement with whatever other creates wait meanwhile. An upload the
    // store does not hold yet is stored, then recorded the same way (the template sweeper
    // may remove it in between, as it removes anything unreferenced: then again).
    let (mut job, mut submitted) = state.recorder.record(job).await?;
    if let JobTemplate::Upload(upload) = &sub.template {
        let mut stored = false;
        for _ in 0..UPLOAD_TRIES {
            if !matches!(submitted, Ok(SubmitOutcome::TemplateNotVisible)) {
                break;
            }
            let mut conn = state.pool.acquire().await?;
            db::templates::put(&mut conn, &upload.id, &upload.bytes).await?;
            drop(conn);
            stored = true;
            (job, submitted) = state.recorder.record(job).await?;
        }
        // Stored for a job then refused (the client's cap, a conflict): the bytes do not stay
        // until the sweeper's next pass (unless another job took them meanwhile; another
        // request about to, finding them gone, stores them again).
        if stored && !matches!(submitted, Ok(SubmitOutcome::Recorded(_))) {
            // The request's answer is the refusal; the sweeper removes what this leaves.
            if let Err(e) = db::templates::remove_if_unused(&state.pool, &upload.id).await {
                tracing::warn!(template.id = %upload.id, error = %e, "cannot remove a refused upload; the sweeper will");
            }
        }
    }
    // Refused for its tenant's or its client's sake: the same request again may have had its
    // job recorded by another statement meanwhile (this request's replay check came before it;
    // a conflict on the key waited for that job's commit), and then that job is the answer,
    // not the refusal its own job met.
    if matches!(
        submitted,
        Ok(SubmitOutcome::TenantExists
            | SubmitOutcome::BatchItemActive
            | SubmitOutcome::ImportActive
            | SubmitOutcome::TooManyActive
            | SubmitOutcome::Conflict
            | SubmitOutcome::Unsettled)
    ) && let Some(job) = replayed(state, caller, key).await?
    {
        return Ok(Recorded::Replay(job));
    }
    match submitted {
        Ok(SubmitOutcome::Recorded(job)) => Ok(Recorded::New(*job)),
        Ok(SubmitOutcome::TemplateNotVisible) if matches!(sub.template, JobTemplate::Upload(_)) => {
            Err(anyhow::anyhow!(
                "the uploaded template was removed {UPLOAD_TRIES} times while its job was recorded"
            )
            .into())
        }
        Ok(SubmitOutcome::TemplateNotVisible) => {
            let id = template_id.unwrap_or_default();
            Err(FieldError::template_not_stored(&id).into())
        }
        Ok(SubmitOutcome::TenantExists) => Err(ApiError::Conflict(format!(
            "a tenant with URL {} already exists",
            sub.tenant_url
        ))),
        Ok(SubmitOutcome::BatchItemActive) => Err(ApiError::Conflict(format!(
            "a queued or running batch item exists for tenant {}",
            sub.tenant_url
        ))),
        Ok(SubmitOutcome::ImportActive) => Err(ApiError::Conflict(format!(
            "a queued or running import exists for tenant {}",
            sub.tenant_url
        ))),
        Ok(SubmitOutcome::TooManyActive) => {
            let cap = state.settings.client_max_active_jobs;
            Err(ApiError::TooManyRequests {
                detail: format!(
                    "this client has {cap} queued or running jobs, its limit; retry later"
                ),
                retry_after: 5,
            })
        }
        // (The recorder judges an unsettled job again, alone: it never answers one.)
        Ok(SubmitOutcome::Conflict | SubmitOutcome::Unsettled) => Err(ApiError::Conflict(format!(
            "a queued or running job exists for tenant {}",
            sub.tenant_url
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The caller's job recorded under this idempotency key, if any. A key the client gave a batch
/// is `422`: a key names one request, whatever its route.
async fn replayed(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
) -> Result<Option<JobRow>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let (pool, client) = (&state.pool, &caller.client_id);
    if let Some(job) = db::jobs::find_by_idempotency_key(pool, client, key).await? {
        return Ok(Some(job));
    }
    if db::idempotency::key_taken(pool, KeyHolder::Batch, client, key).await? {
        return Err(ApiError::key_reused());
    }
    Ok(None)
}

/// 202 with the job, or, under `Prefer: wait=N`, the job's final code if it ends within N s.
async fn respond(
    state: &AppState,
    job: JobRow,
    prefer_wait: PreferWait,
) -> Result<Response, ApiError> {
    let Some(secs) = prefer_wait.0 else {
        return Ok(accepted(&job));
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let waited = wait::until(
        state,
        job.id,
        Some(&job.client_id),
        &job.client_id,
        deadline,
        |j| j.status.is_terminal(),
    )
    .await;
    let job = match waited {
        Ok(found) => found.unwrap_or(job),
        // The job is recorded: a read that fails while waiting answers as without the
        // preference, never with an error a client would take for the create's own.
        Err(e) => {
            tracing::warn!(job.id = %job.id, error = %e, "cannot wait for the job; answering 202");
            return Ok(accepted(&job));
        }
    };
    if !job.status.is_terminal() {
        return Ok(accepted(&job));
    }
    let applied = format!("wait={secs}");
    let view = job.view();
    match (job.code, view.error.clone()) {
        (Some(200), _) => {
            let mut response = (StatusCode::OK, Json(view)).into_response();
            response.headers_mut().insert(
                "preference-applied",
                HeaderValue::from_str(&applied).expect("ascii"),
            );
            Ok(response)
        }
        (code, error) => {
            let (title, detail) = error
                .map(|e| (e.title, e.detail))
                .unwrap_or_else(|| ("Cancelled".to_owned(), "the job was cancelled".to_owned()));
            Err(ApiError::JobFailed {
                code: code.map_or(409, |c| c as u16),
                title,
                detail,
                job: Box::new(view),
                applied,
            })
        }
    }
}

fn accepted(job: &JobRow) -> Response {
    let location = format!("/configapi/v2/jobs/{}", job.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job.view()),
    )
        .into_response()
}
