//! Batches: accept (JSON or NDJSON), read (with long-poll), list, results, cancel, retry.

use axum::{
    Extension, Json,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt, stream};
use provisioner_shared::{
    db,
    domain::{BatchStatus, BatchView, JobError, JobStatus, TenantSummary},
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{
        CallerTrace, Page, PageQuery, PathText, job_key, job_key_text, media_type, not_a_cursor,
        optional_param, query_param, status_param, wait_deadline,
    },
    intake::{Accepted, Intake},
    openapi::shapes::{self, CodeList, IdempotencyKeyText, JobIdText, PageLimit, WaitSeconds},
    retry::{self, Retried},
    submit::Answer,
    wait,
};

/// Items read per query while results are streamed, and retried per statement.
const PAGE: i64 = 1_000;

fn batch_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no batch {raw}")))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no batch {id}"))
}

/// A request whose query is refused with `refusal`: `404` instead when the batch is not the
/// caller's (the contract's order: the scope, then whose the batch is, then the request).
/// Looked up only for a request already refused.
async fn refused(state: &AppState, caller: &Caller, id: Uuid, refusal: ApiError) -> ApiError {
    match db::batches::find(&state.pool, id, caller.sees()).await {
        Ok(Some(_)) => refusal,
        Ok(None) => not_found(id),
        Err(e) => e.into(),
    }
}

fn accepted(status: StatusCode, batch: BatchView) -> Response {
    let location = format!("/configapi/v2/batches/{}", batch.batch_id);
    (status, [(header::LOCATION, location)], Json(batch)).into_response()
}

/// A batch body: JSON with `defaults` and 1 to 1,000 `items`.
#[expect(dead_code, reason = "documents the body that is read item by item")]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    defaults: Option<BatchDefaults>,
    /// Create bodies, each with its `tenantUrl` (distinct in the batch).
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<BatchItem>,
}

/// Fields every item has unless it names its own; an item naming `templateUrl` or `templateId`
/// replaces the defaults' choice.
#[expect(dead_code, reason = "documents the body that is read item by item")]
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct BatchDefaults {
    #[schema(schema_with = shapes::text)]
    tenant_name: Option<String>,
    #[schema(schema_with = shapes::number_map)]
    number_map: Option<std::collections::BTreeMap<String, String>>,
    #[schema(schema_with = shapes::text)]
    first_name: Option<String>,
    #[schema(schema_with = shapes::text)]
    last_name: Option<String>,
    #[schema(schema_with = shapes::text)]
    login_id: Option<String>,
    #[schema(schema_with = shapes::password)]
    password: Option<String>,
    #[schema(schema_with = shapes::email)]
    email: Option<String>,
    #[schema(schema_with = shapes::template_url)]
    template_url: Option<String>,
    #[schema(schema_with = shapes::template_id)]
    template_id: Option<String>,
    #[schema(schema_with = shapes::lock_timeout)]
    lock_timeout: Option<u32>,
}

/// One item: a create body (exactly one of `templateUrl` and `templateId`) with its `tenantUrl`.
#[derive(Debug)]
pub(super) struct BatchItem;

impl utoipa::PartialSchema for BatchItem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{AllOfBuilder, ObjectBuilder, OneOfBuilder};
        let one_source = OneOfBuilder::new()
            .item(ObjectBuilder::new().required("templateUrl"))
            .item(ObjectBuilder::new().required("templateId"));
        AllOfBuilder::new()
            .item(BatchItemFields::schema())
            .item(one_source)
            .into()
    }
}

impl ToSchema for BatchItem {}

/// One item's fields.
#[expect(dead_code, reason = "documents the body that is read item by item")]
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct BatchItemFields {
    /// Host name of the item's tenant.
    #[schema(schema_with = shapes::host_name)]
    tenant_url: String,
    #[schema(schema_with = shapes::text)]
    tenant_name: String,
    #[schema(schema_with = shapes::number_map)]
    number_map: Option<std::collections::BTreeMap<String, String>>,
    #[schema(schema_with = shapes::text)]
    first_name: String,
    #[schema(schema_with = shapes::text)]
    last_name: String,
    #[schema(schema_with = shapes::text)]
    login_id: String,
    #[schema(schema_with = shapes::password)]
    password: String,
    #[schema(schema_with = shapes::email)]
    email: String,
    #[schema(schema_with = shapes::template_url)]
    template_url: Option<String>,
    #[schema(schema_with = shapes::template_id)]
    template_id: Option<String>,
    #[schema(schema_with = shapes::lock_timeout)]
    lock_timeout: Option<u32>,
}

/// Accepts a batch of creates: every item is validated, and none is created unless all are valid.
#[utoipa::path(post, path = "/configapi/v2/batches", tag = "batches", operation_id = "createBatch",
    params(("Idempotency-Key" = inline(Option<IdempotencyKeyText>), Header, description = "Same key and body: the same batch")),
    request_body(content((BatchRequest = "application/json"), (String = "application/x-ndjson")),
        description = "JSON with defaults and 1-1,000 items, or NDJSON with one item per line"),
    responses(
        (status = 202, description = "Accepted: the batch", body = BatchView,
            headers(("Location" = String, description = "/configapi/v2/batches/{batchId}"))),
        (status = 400, description = "Invalid items (each named by item, and line for NDJSON); nothing created"),
        (status = 413, description = "Too many items"),
        (status = 415, description = "Neither JSON nor NDJSON"),
        (status = 422, description = "The Idempotency-Key was used with another body, or for another kind of request (a batch's key for a create, a job's for a batch)"),
        (status = 429, description = "The client's unfinished batch items would pass its limit (Retry-After)"),
        (status = 503, description = "As many NDJSON batches arriving as the server, or one client, may have at once (Retry-After)")))]
pub(super) async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    answer: Answer,
    request: Request,
) -> Result<Response, ApiError> {
    let ndjson = match media_type(request.headers()).as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => true,
        "application/json" => false,
        "" => {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type is missing; send application/json or application/x-ndjson".to_owned(),
            ));
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {other} is not supported here; send application/json or application/x-ndjson"
            )));
        }
    };
    if ndjson {
        // A body declared too long costs nothing more than this look.
        crate::intake::refuse_declared_ndjson(request.headers(), state.settings.batch_max_bytes)?;
    }
    let key = answer.idempotency_key.key()?;
    let max_items = usize::try_from(state.settings.batch_max_items).unwrap_or(usize::MAX);
    let mut intake = Intake::new(&state, &caller, key, max_items, answer.trace);
    intake.start().await?;
    let (parts, body) = request.into_parts();
    if ndjson {
        intake.ndjson(body).await?;
    } else {
        intake.json(&parts.headers, body).await?;
    }
    match intake.finish().await? {
        Accepted::New(batch) | Accepted::Replay(batch) => {
            Ok(accepted(StatusCode::ACCEPTED, batch.view()))
        }
    }
}

/// The batch; with `?wait=N` it answers as soon as the batch stops running, or after N s.
#[utoipa::path(get, path = "/configapi/v2/batches/{batchId}", tag = "batches", operation_id = "getBatch",
    params(("batchId" = inline(JobIdText), Path),
        ("wait" = inline(Option<WaitSeconds>), Query, description = "Long-poll up to N s (<= 60, larger values clamped)")),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 400, description = "Invalid wait"),
        (status = 404, description = "No such batch for this client")))]
pub(super) async fn get_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
    uri: Uri,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&raw)?;
    let mut errors = Vec::new();
    let deadline = wait_deadline(&uri, &mut errors);
    if !errors.is_empty() {
        return Err(refused(&state, &caller, id, ApiError::Validation(errors)).await);
    }
    let batch = wait::until_batch(
        &state,
        id,
        caller.sees(),
        &caller.client_id,
        deadline,
        |b| b.status != BatchStatus::Running,
    )
    .await?
    .ok_or_else(|| not_found(id))?;
    Ok(Json(batch.view()))
}

/// The client's batches (every client's for an operator), newest first.
#[utoipa::path(get, path = "/configapi/v2/batches", tag = "batches", operation_id = "listBatches",
    params(("limit" = inline(Option<PageLimit>), Query, description = "1-500, default 50; larger values are clamped"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")),
    responses(
        (status = 200, description = "Batches, newest first", body = Page<BatchView>),
        (status = 400, description = "Invalid limit or cursor")))]
pub(super) async fn list_batches(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<Page<BatchView>>, ApiError> {
    let mut errors = Vec::new();
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
    let rows = db::batches::list(&state.pool, caller.sees(), after, page.fetch()).await?;
    Ok(Json(page.page(
        rows,
        |last| job_key_text(last.created_at, last.id),
        |row| row.view(),
    )))
}

/// One line of a batch's results: the item's newest job.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ItemResult {
    item: i32,
    tenant_url: String,
    job_id: Uuid,
    status: JobStatus,
    code: Option<i32>,
    error: Option<JobError>,
    tenant: Option<TenantSummary>,
    /// With `?fields=submitted`: the fields the item was created with (its batch's defaults
    /// applied; never the password), by the item fields' names.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    fields: Option<Map<String, Value>>,
}

/// What `?fields=` of the results may ask for (documents the parameter; read as text).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "documents the query parameter's one value")]
enum ResultFields {
    Submitted,
}

/// The batch's items in order, one NDJSON line each (its newest job), streamed page by page.
#[utoipa::path(get, path = "/configapi/v2/batches/{batchId}/results", tag = "batches", operation_id = "getBatchResults",
    params(("batchId" = inline(JobIdText), Path),
        ("status" = Option<JobStatus>, Query, description = "Only the items whose newest job has this status"),
        ("fields" = inline(Option<ResultFields>), Query, description = "`submitted`: each line also carries `fields`, the fields the item was created with (never the password)")),
    responses(
        (status = 200, description = "One line per item, in item order", content_type = "application/x-ndjson", body = ItemResult),
        (status = 400, description = "Invalid status"),
        (status = 404, description = "No such batch for this client")))]
pub(super) async fn batch_results(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = batch_id(&raw)?;
    let mut errors = Vec::new();
    let status = status_param(&uri, &mut errors);
    let with_fields = match optional_param(&uri, "fields").as_deref() {
        None => false,
        Some("submitted") => true,
        Some(_) => {
            errors.push(FieldError::new("fields", "must be submitted"));
            false
        }
    };
    if !errors.is_empty() {
        return Err(refused(&state, &caller, id, ApiError::Validation(errors)).await);
    }
    db::batches::find(&state.pool, id, caller.sees())
        .await?
        .ok_or_else(|| not_found(id))?;
    let pool = state.pool.clone();
    // Keyset pages: no transaction or connection is held while a slow client reads.
    let pages = stream::unfold(Some(-1), move |after| {
        let pool = pool.clone();
        async move {
            let after = after?;
            match db::batches::results(&pool, id, status, after, PAGE).await {
                Ok(rows) => {
                    let next = (rows.len() as i64 == PAGE)
                        .then(|| rows.last().and_then(|r| r.batch_item))
                        .flatten();
                    let mut text = Vec::new();
                    for row in rows {
                        let fields = with_fields.then(|| row.submitted_fields()).flatten();
                        let view = row.view();
                        let line = ItemResult {
                            item: row.batch_item.unwrap_or_default(),
                            tenant_url: view.tenant_url,
                            job_id: view.job_id,
                            status: view.status,
                            code: view.code,
                            error: view.error,
                            tenant: view.tenant,
                            fields,
                        };
                        serde_json::to_writer(&mut text, &line).expect("results serialize");
                        text.push(b'\n');
                    }
                    Some((Ok::<_, sqlx::Error>(text), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, batch.id = %id, "reading batch results failed");
                    Some((Err(e), None))
                }
            }
        }
    })
    .filter(|page| std::future::ready(!matches!(page, Ok(text) if text.is_empty())));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response())
}

/// Cancels a batch: queued items are cancelled, running ones finish. Idempotent.
#[utoipa::path(post, path = "/configapi/v2/batches/{batchId}/cancel", tag = "batches", operation_id = "cancelBatch",
    params(("batchId" = inline(JobIdText), Path)),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 404, description = "No such batch for this client")))]
pub(super) async fn cancel_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
) -> Result<Json<BatchView>, ApiError> {
    let id = batch_id(&raw)?;
    let batch = crate::cancel::cancel(&state.pool, id, caller.sees())
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(batch.view()))
}

/// `?code=C,C`: job codes.
fn codes_param(uri: &Uri) -> Result<Option<Vec<i32>>, ApiError> {
    let Some(raw) = query_param(uri, "code") else {
        return Ok(None);
    };
    raw.split(',')
        .map(|c| match c.trim().parse::<i32>() {
            Ok(code) if (100..=599).contains(&code) => Ok(code),
            _ => {
                Err(FieldError::new("code", "must be HTTP status codes separated by commas").into())
            }
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map(Some)
}

/// Gives every item whose newest job failed (with one of the codes, if given) a new job.
#[utoipa::path(post, path = "/configapi/v2/batches/{batchId}/retry", tag = "batches", operation_id = "retryBatch",
    params(("batchId" = inline(JobIdText), Path),
        ("code" = inline(Option<CodeList>), Query, description = "Only items that failed with one of these codes, comma-separated")),
    responses(
        (status = 202, description = "Items retried: the batch, running again", body = BatchView),
        (status = 200, description = "Nothing to retry: the batch", body = BatchView),
        (status = 400, description = "Invalid code"),
        (status = 404, description = "No such batch for this client"),
        (status = 409, description = "The batch is being cancelled (its cancel at work, or its running items finishing after it): retry once it has stopped"),
        (status = 429, description = "The retried items would pass the owner's limit of unfinished batch items (Retry-After); nothing retried")))]
pub(super) async fn retry_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
    CallerTrace(trace): CallerTrace,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = batch_id(&raw)?;
    let codes = match codes_param(&uri) {
        Ok(codes) => codes,
        Err(refusal) => return Err(refused(&state, &caller, id, refusal).await),
    };
    // The new jobs continue the retry request's trace if it carried one, else the batch's.
    match retry::failed_items(&state, id, caller.sees(), codes.as_deref(), trace).await? {
        None => Err(not_found(id)),
        Some(Retried::Nothing(batch)) => Ok((StatusCode::OK, Json(batch.view())).into_response()),
        Some(Retried::Items(batch)) => Ok(accepted(StatusCode::ACCEPTED, batch.view())),
    }
}
