//! Create tenant from template (JSON): validate, record the job and its outbox message in one
//! transaction, answer 202 at once (or the final code under `Prefer: wait`).

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db::{
        self,
        jobs::{InsertError, JobRow, NewJob},
    },
    domain::JobKind,
};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{AppState, auth::Caller, error::ApiError, validate, wait};

/// Longest `Prefer: wait`, seconds.
pub const MAX_PREFER_WAIT: u64 = 300;

pub async fn create_from_json(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_url): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let Value::Object(fields) = &value else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let request = validate::create_request(&raw_url, fields).map_err(ApiError::Validation)?;
    let idempotency_key = idempotency_key(&headers)?;
    let prefer_wait = prefer_wait(&headers);
    // The digest covers the whole request, password included, keyed so it reveals nothing.
    let digest = state
        .sealer
        .digest(format!("{}\n{}", request.tenant_url, value).as_bytes());

    if let Some(key) = idempotency_key {
        if let Some(job) =
            db::jobs::find_by_idempotency_key(&state.pool, &caller.client_id, key).await?
        {
            return replay(&state, job, &digest, prefer_wait).await;
        }
    }
    if db::tenants::exists(&state.pool, request.tenant_url.as_str()).await? {
        return Err(ApiError::Conflict(format!(
            "a tenant with URL {} already exists",
            request.tenant_url
        )));
    }
    let id = Uuid::now_v7();
    let sealed = state
        .sealer
        .seal(request.password.expose_secret().as_bytes(), id.as_bytes());
    let mut tx = state.pool.begin().await?;
    let inserted = db::jobs::insert(
        &mut tx,
        NewJob {
            id,
            kind: JobKind::CreateTenant.as_str(),
            tenant_url: request.tenant_url.as_str(),
            client_id: &caller.client_id,
            params: serde_json::to_value(&request.params).expect("params serialize"),
            sealed_password: Some(sealed),
            idempotency_key,
            request_digest: Some(&digest),
        },
    )
    .await;
    let job = match inserted {
        Ok(job) => job,
        Err(InsertError::ActiveJobExists | InsertError::IdempotencyKeyTaken)
            if idempotency_key.is_some() =>
        {
            // A concurrent request with the same key may have won the race: its job is
            // committed by now (the unique check waited for it).
            drop(tx);
            let key = idempotency_key.expect("checked above");
            return match db::jobs::find_by_idempotency_key(&state.pool, &caller.client_id, key)
                .await?
            {
                Some(job) => replay(&state, job, &digest, prefer_wait).await,
                None => Err(active_job_exists(&request.tenant_url)),
            };
        }
        Err(InsertError::ActiveJobExists | InsertError::IdempotencyKeyTaken) => {
            return Err(active_job_exists(&request.tenant_url));
        }
        Err(InsertError::Database(e)) => return Err(e.into()),
    };
    tx.commit().await?;
    tracing::info!(job.id = %job.id, tenant.url = %job.tenant_url, "job accepted");
    respond(&state, job, prefer_wait).await
}

fn active_job_exists(tenant: &provisioner_shared::domain::TenantUrl) -> ApiError {
    ApiError::Conflict(format!(
        "a queued or running job exists for tenant {tenant}"
    ))
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
        j.status().is_terminal()
    })
    .await?
    .unwrap_or(job);
    if !job.status().is_terminal() {
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

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else if mime.is_empty() {
        Err(ApiError::UnsupportedMediaType(
            "Content-Type is missing; send application/json".to_owned(),
        ))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime} is not supported here; send application/json"
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
