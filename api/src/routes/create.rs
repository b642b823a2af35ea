//! Create tenant from template: the JSON and form-data variants of one route, and the job
//! submission every create or import shares (idempotency, the immediate 409s, the job and its
//! outbox message in one transaction, `Prefer: wait`).

use axum::{
    Extension, Json,
    extract::{FromRequest, Multipart, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db::{
        self,
        jobs::{InsertError, JobRow, NewJob},
    },
    domain::{JobKind, JobView},
    uploads,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::ApiError,
    openapi::{CreateTenantForm, CreateTenantRequest},
    upload,
    validate::{self, CreateRequest, TemplateInput},
    wait,
};

/// Longest `Prefer: wait`, seconds.
pub const MAX_PREFER_WAIT: u64 = 300;
/// Largest JSON body.
const JSON_LIMIT: usize = 1 << 20;
/// Largest text part of a form.
const FORM_TEXT_LIMIT: usize = 64 << 10;

/// `POST /configapi/v2/selfservice/tenant/{tenant_url}`, JSON or `multipart/form-data`.
#[utoipa::path(post, path = "/configapi/v2/selfservice/tenant/{tenant_url}", tag = "tenants",
    params(("tenant_url" = String, Path, description = "Host name of the new tenant"),
        ("Prefer" = Option<String>, Header, description = "wait=N (N <= 300): answer the job's final code if it ends in time"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and body: the same job")),
    request_body(content((CreateTenantRequest = "application/json"), (CreateTenantForm = "multipart/form-data"))),
    responses(
        (status = 202, description = "Accepted: the job, queued", body = JobView, headers(("Location" = String, description = "/configapi/v2/jobs/{jobId}"))),
        (status = 200, description = "Under Prefer: wait, the job succeeded in time", body = JobView),
        (status = 400, description = "Invalid fields (all named), or under Prefer: wait a bad template", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant, or an active job for it, exists", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The template is too large", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON or form data", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The client has too many queued or running jobs (Retry-After)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another body", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Under Prefer: wait, the job failed after retries", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Under Prefer: wait, lock timeout", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn create_from_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_url): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    if mime(&headers) == "multipart/form-data" {
        return from_form(state, caller, raw_url, headers, request).await;
    }
    require_json(&headers)?;
    let body = axum::body::to_bytes(request.into_body(), JSON_LIMIT)
        .await
        .map_err(|_| {
            ApiError::PayloadTooLarge(format!("a JSON body may have at most {JSON_LIMIT} bytes"))
        })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let request = validate::create_request(&raw_url, fields, TemplateInput::Json)
        .map_err(ApiError::Validation)?;
    // The digest covers the whole request, password included, keyed so it reveals nothing.
    let digest = state
        .sealer
        .digest(format!("{}\n{}", request.tenant_url, value).as_bytes());
    submit(
        &state,
        &caller,
        &headers,
        Submission::create(Uuid::now_v7(), request, digest, false),
    )
    .await
}

/// The form variant: parts as the original, the template streamed to the upload directory.
async fn from_form(
    state: AppState,
    caller: Caller,
    raw_url: String,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let job_id = Uuid::now_v7();
    let max = state.settings.template_max_bytes;
    let mut fields = Map::new();
    let mut number_map = Map::new();
    let mut upload = None;
    let parsed: Result<(), ApiError> = async {
        while let Some(field) = multipart.next_field().await? {
            let name = field.name().unwrap_or_default().to_owned();
            match name.as_str() {
                "template" if upload.is_none() => {
                    upload =
                        Some(upload::save(&state.settings.upload_dir, job_id, field, max).await?)
                }
                "numberMap" => {
                    let pair = form_text(field).await?;
                    match pair.split_once(':') {
                        Some((from, to)) => number_map
                            .insert(from.trim().to_owned(), Value::String(to.trim().to_owned())),
                        None => number_map.insert(pair, Value::Null),
                    };
                }
                _ if fields.contains_key(&name) || (name == "template" && upload.is_some()) => {
                    return Err(ApiError::Validation(vec![crate::error::FieldError::new(
                        &name,
                        "appears more than once",
                    )]));
                }
                _ => {
                    let text = form_text(field).await?;
                    let value = match name.as_str() {
                        "lockTimeout" => text
                            .trim()
                            .parse::<u64>()
                            .map(Value::from)
                            .unwrap_or(Value::String(text)),
                        _ => Value::String(text),
                    };
                    fields.insert(name, value);
                }
            }
        }
        Ok(())
    }
    .await;
    let discard = || async { uploads::remove(&state.settings.upload_dir, job_id).await };
    if let Err(e) = parsed {
        discard().await;
        return Err(e);
    }
    if !number_map.is_empty() {
        fields.insert("numberMap".to_owned(), Value::Object(number_map));
    }
    let input = if upload.is_some() {
        TemplateInput::FormFile
    } else {
        TemplateInput::FormUrl
    };
    let request = match validate::create_request(&raw_url, &fields, input) {
        Ok(r) => r,
        Err(errors) => {
            discard().await;
            return Err(ApiError::Validation(errors));
        }
    };
    let file_digest = upload.as_ref().map(|u| u.sha256.as_str()).unwrap_or("");
    let digest = state.sealer.digest(
        format!(
            "{}\n{}\n{file_digest}",
            request.tenant_url,
            Value::Object(fields)
        )
        .as_bytes(),
    );
    submit(
        &state,
        &caller,
        &headers,
        Submission::create(job_id, request, digest, upload.is_some()),
    )
    .await
}

async fn form_text(field: axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_owned();
    let bytes = field.bytes().await?;
    if bytes.len() > FORM_TEXT_LIMIT {
        return Err(ApiError::PayloadTooLarge(format!(
            "form part `{name}` is larger than {FORM_TEXT_LIMIT} bytes"
        )));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::BadRequest(format!("form part `{name}` is not UTF-8 text")))
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(e.body_text())
        } else {
            ApiError::BadRequest(format!("malformed form data: {}", e.body_text()))
        }
    }
}

/// A job about to be recorded.
pub struct Submission {
    pub id: Uuid,
    pub kind: JobKind,
    pub tenant_url: String,
    pub params: Value,
    pub password: Option<SecretString>,
    pub digest: String,
    /// Answer 409 at once when the tenant exists (creates; imports learn it from their job).
    pub refuse_existing_tenant: bool,
    /// The request uploaded its template: remove it unless the job is made.
    pub uploaded: bool,
}

impl Submission {
    pub fn create(id: Uuid, request: CreateRequest, digest: String, uploaded: bool) -> Self {
        Self {
            id,
            kind: JobKind::CreateTenant,
            tenant_url: request.tenant_url.to_string(),
            params: serde_json::to_value(&request.params).expect("params serialize"),
            password: Some(request.password),
            digest,
            refuse_existing_tenant: true,
            uploaded,
        }
    }
}

/// Records the job (or replays the one its idempotency key names) and answers.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    sub: Submission,
) -> Result<Response, ApiError> {
    let prefer_wait = prefer_wait(headers);
    let outcome = record(state, caller, headers, &sub).await;
    if sub.uploaded && !matches!(outcome, Ok(Recorded::New(_))) {
        uploads::remove(&state.settings.upload_dir, sub.id).await;
    }
    match outcome? {
        Recorded::New(job) => {
            tracing::info!(job.id = %job.id, job.kind = %job.kind, tenant.url = %job.tenant_url, "job accepted");
            respond(state, job, prefer_wait).await
        }
        Recorded::Replay(job) => replay(state, job, &sub.digest, prefer_wait).await,
    }
}

enum Recorded {
    New(JobRow),
    Replay(JobRow),
}

async fn record(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    sub: &Submission,
) -> Result<Recorded, ApiError> {
    let idempotency_key = idempotency_key(headers)?;
    if let Some(key) = idempotency_key {
        if let Some(job) =
            db::jobs::find_by_idempotency_key(&state.pool, &caller.client_id, key).await?
        {
            return Ok(Recorded::Replay(job));
        }
    }
    if sub.refuse_existing_tenant && db::tenants::exists(&state.pool, &sub.tenant_url).await? {
        return Err(ApiError::Conflict(format!(
            "a tenant with URL {} already exists",
            sub.tenant_url
        )));
    }
    let cap = state.settings.client_max_active_jobs;
    if db::jobs::active_count(&state.pool, &caller.client_id).await? >= i64::from(cap) {
        return Err(ApiError::TooManyRequests {
            detail: format!("this client has {cap} queued or running jobs, its limit; retry later"),
            retry_after: 5,
        });
    }
    let sealed = sub.password.as_ref().map(|p| {
        state
            .sealer
            .seal(p.expose_secret().as_bytes(), sub.id.as_bytes())
    });
    let mut tx = state.pool.begin().await?;
    let new_job = NewJob {
        id: sub.id,
        kind: sub.kind,
        tenant_url: &sub.tenant_url,
        client_id: &caller.client_id,
        params: sub.params.clone(),
        sealed_password: sealed,
        idempotency_key,
        request_digest: Some(&sub.digest),
    };
    match db::jobs::insert(&mut tx, new_job).await {
        Ok(job) => {
            tx.commit().await?;
            Ok(Recorded::New(job))
        }
        Err(InsertError::ActiveJobExists | InsertError::IdempotencyKeyTaken) => {
            drop(tx);
            // A concurrent request with the same key may have won the race: its job is
            // committed by now (the unique check waited for it).
            if let Some(key) = idempotency_key {
                if let Some(job) =
                    db::jobs::find_by_idempotency_key(&state.pool, &caller.client_id, key).await?
                {
                    return Ok(Recorded::Replay(job));
                }
            }
            Err(ApiError::Conflict(format!(
                "a queued or running job exists for tenant {}",
                sub.tenant_url
            )))
        }
        Err(InsertError::Database(e)) => Err(e.into()),
    }
}

async fn replay(
    state: &AppState,
    job: JobRow,
    digest: &str,
    prefer_wait: Option<u64>,
) -> Result<Response, ApiError> {
    if job.request_digest.as_deref() != Some(digest) {
        return Err(ApiError::Unprocessable(
            "this Idempotency-Key was used with a different request".to_owned(),
        ));
    }
    respond(state, job, prefer_wait).await
}

/// 202 with the job, or, under `Prefer: wait=N`, the job's final code if it ends within N s.
pub async fn respond(
    state: &AppState,
    job: JobRow,
    prefer_wait: Option<u64>,
) -> Result<Response, ApiError> {
    let Some(secs) = prefer_wait else {
        return Ok(accepted(&job));
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let job = wait::until(state, job.id, &job.client_id, deadline, |j| {
        j.status.is_terminal()
    })
    .await?
    .unwrap_or(job);
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

/// The request's media type, lower-case, without parameters.
pub fn mime(headers: &HeaderMap) -> String {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = mime(headers);
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else if mime.is_empty() {
        Err(ApiError::UnsupportedMediaType(
            "Content-Type is missing; send application/json or multipart/form-data".to_owned(),
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime} is not supported here; send application/json or multipart/form-data"
        )))
    }
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k)
            if (1..=255).contains(&k.len())
                && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ') =>
        {
            Ok(Some(k))
        }
        _ => Err(ApiError::Validation(vec![crate::error::FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )])),
    }
}

/// `Prefer: wait=N` (RFC 7240), clamped to the maximum; other preferences are ignored.
pub fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait"))
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()
        .map(|n| n.min(MAX_PREFER_WAIT))
}
