//! The raw-ZIP variants: create from a streamed template (`PUT /configapi/v2/tenant/{url}`) and
//! Import Tenant (`POST /configapi/v2/tenant`). Both read the body into memory and store it in
//! the template store with its job.

use std::collections::BTreeMap;

use axum::{
    Extension,
    extract::{Request, State},
    response::Response,
};
use provisioner_shared::{
    db,
    domain::{CreateTenantParams, ImportTenantParams, JobKind, TemplateSource, TenantUrl},
    template::{self, Limits},
};

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError, all_valid},
    extract::{JobLockTimeout, PathText, PreferWait},
    openapi::shapes::{HostName, LockTimeoutSeconds, ZipBody},
    submit::{Answer, Imported, JobTemplate, Submission, Submitted, submit},
    upload::{self, Upload, require_zip},
};

/// A create whose body is declared at most this large reads it before looking whether the
/// tenant exists (see `create_from_stream`).
const READ_BEFORE_LOOKING: u64 = 64 * 1024;

/// Reads the request body into memory, within the size cap and the upload budget.
async fn read_body(
    state: &AppState,
    caller: &Caller,
    request: Request,
) -> Result<Upload, ApiError> {
    let max = state.settings.template_max_bytes;
    let length = upload::declared_length(request.headers(), max)?;
    let body = request.into_body().into_data_stream();
    upload::read(&state.template_budget, &caller.client_id, body, length, max).await
}

/// `PUT /configapi/v2/tenant/{tenant_url}?lockTimeout=N`: the tenant name and SIP domain are
/// generated, and the administrator comes from the template unchanged.
#[utoipa::path(put, path = "/configapi/v2/tenant/{tenant_url}", tag = "tenants",
    operation_id = "createTenantFromStream",
    params(("tenant_url" = inline(HostName), Path, description = "Host name of the new tenant"),
        ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the import lock, 0-3600 (default 120)")),
    request_body(content = inline(ZipBody), content_type = "application/zip", description = "The template ZIP"),
    responses(
        Submitted,
        (status = 400, description = "Invalid tenant URL or lockTimeout"),
        (status = 409, description = "The tenant exists, or a queued or running job (a create, a batch item, an Import Tenant) names it"),
        (status = 413, description = "The template is too large"),
        (status = 415, description = "Not a ZIP"),
        (status = 503, description = "The server is receiving as many templates as its memory allows, or this client's requests hold half of that memory (Retry-After)")))]
pub(super) async fn create_from_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw_url): PathText,
    lock_timeout: Result<JobLockTimeout, FieldError>,
    answer: Answer,
    request: Request,
) -> Result<Response, ApiError> {
    require_zip(request.headers())?;
    let url = TenantUrl::parse(&raw_url).map_err(|m| FieldError::new("tenant_url", m));
    let (url, lock_timeout) = all_valid(url, lock_timeout, answer.idempotency_key.fault())?;
    let lock_timeout = lock_timeout.0;
    // Refuse an existing tenant before reading a possibly large body, unless the request may be
    // the retry of one that made it (a replay answers the job, not 409). A body declared small
    // is read first: the recording statement refuses an existing tenant the same way, and
    // reading it costs less than a round trip to look.
    let keyed = answer.idempotency_key.is_present();
    let small = upload::declared_at_most(
        request.headers(),
        READ_BEFORE_LOOKING.min(state.settings.template_max_bytes),
    );
    if !keyed && !small && db::tenants::exists(&state.pool, url.as_str()).await? {
        return Err(ApiError::Conflict(format!(
            "a tenant with URL {url} already exists"
        )));
    }
    let upload = read_body(&state, &caller, request).await?;
    let params = CreateTenantParams {
        tenant_name: url.to_string(),
        admin: None,
        number_map: BTreeMap::new(),
        template: TemplateSource::Stored(upload.id.clone()),
        lock_timeout,
    };
    let digest = state
        .sealer
        .digest(format!("stream\n{url}\n{lock_timeout}\n{}", upload.id).as_bytes());
    let sub = Submission {
        id: uuid::Uuid::now_v7(),
        kind: JobKind::CreateTenant,
        tenant_url: url.to_string(),
        params: serde_json::to_value(&params).expect("params serialize"),
        password: None,
        digest,
        refuse_existing_tenant: true,
        template: JobTemplate::Upload(upload),
    };
    submit(&state, &caller, &answer, sub).await
}

/// `POST /configapi/v2/tenant?lockTimeout=N`: Import Tenant. Always a job, always `202`: a bad
/// archive or an existing tenant ends it with code 400 or 409 (`Prefer: wait` is not applied).
#[utoipa::path(post, path = "/configapi/v2/tenant", tag = "tenants",
    operation_id = "importTenant",
    params(("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the import lock, 0-3600 (default 120)")),
    request_body(content = inline(ZipBody), content_type = "application/zip", description = "An exported tenant"),
    responses(
        Imported,
        (status = 400, description = "Invalid lockTimeout"),
        (status = 413, description = "The archive is too large"),
        (status = 415, description = "Not a ZIP"),
        (status = 503, description = "The server is receiving as many templates as its memory allows, or this client's requests hold half of that memory (Retry-After)")))]
pub(super) async fn import_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    lock_timeout: Result<JobLockTimeout, FieldError>,
    answer: Answer,
    request: Request,
) -> Result<Response, ApiError> {
    require_zip(request.headers())?;
    let (lock_timeout, ()) = all_valid(lock_timeout, Ok(()), answer.idempotency_key.fault())?;
    let lock_timeout = lock_timeout.0;
    let answer = Answer {
        prefer_wait: PreferWait(None),
        ..answer
    };
    let upload = read_body(&state, &caller, request).await?;
    // The job names its tenant when the archive says which, within a bounded read (the
    // directory and the start of tenant.json); a bad archive fails in the worker.
    let bytes = upload.bytes.clone();
    let tenant_url = tokio::task::spawn_blocking(move || {
        template::peek_tenant_url(std::io::Cursor::new(&bytes[..]), &Limits::default())
    })
    .await
    .ok()
    .flatten()
    .and_then(|u| TenantUrl::parse(&u).ok())
    .map(|u| u.to_string())
    .unwrap_or_default();
    let params = ImportTenantParams {
        lock_timeout,
        template_id: upload.id.clone(),
    };
    let digest = state
        .sealer
        .digest(format!("import\n{lock_timeout}\n{}", upload.id).as_bytes());
    let sub = Submission {
        id: uuid::Uuid::now_v7(),
        kind: JobKind::ImportTenant,
        tenant_url,
        params: serde_json::to_value(&params).expect("params serialize"),
        password: None,
        digest,
        refuse_existing_tenant: false,
        template: JobTemplate::Upload(upload),
    };
    submit(&state, &caller, &answer, sub).await
}
