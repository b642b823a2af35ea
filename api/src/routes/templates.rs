//! The template store: a client stores a template once, checked as create-from-template checks
//! it, names it by id in its creates, reads it back and deletes it. A client sees the templates
//! it stored; an operator every client's.

use std::convert::Infallible;

use axum::{
    Extension, Json,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use provisioner_shared::{
    db::{
        self,
        templates::{Facts, KeptRow, Viewer, is_template_id},
    },
    template::{Contents, Limits, Template, TemplateError},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{
        Page, PageQuery, PathText, not_a_cursor, query_param, template_key, template_key_text,
    },
    openapi::shapes::{self, PageLimit, TemplateIdText, TemplateName, ZipBody},
    upload::{self, Upload, require_zip},
    validate::text_problem,
};

/// Longest template label, characters.
const MAX_NAME: usize = 255;
/// The content is sent in pieces of this many bytes.
const CONTENT_CHUNK: usize = 256 << 10;

/// A stored template, as the client that stored it sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TemplateBody {
    /// The lower-case hex SHA-256 of the ZIP's bytes.
    #[schema(schema_with = shapes::template_id)]
    template_id: String,
    /// The label the client gave it (`?name=`), if any.
    name: Option<String>,
    /// The ZIP's size in bytes.
    bytes: i64,
    /// The `dbVersion` of its manifest.
    db_version: i64,
    counts: TemplateCounts,
    /// When the client stored it.
    created_at: DateTime<Utc>,
}

/// What a stored template holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TemplateCounts {
    users: i32,
    objects: i32,
    /// Access-number ranges.
    access_numbers: i32,
}

impl From<KeptRow> for TemplateBody {
    fn from(row: KeptRow) -> Self {
        // A kept template was checked (and described) in the transaction that kept it.
        Self {
            template_id: row.template_id,
            name: row.name,
            bytes: row.bytes,
            db_version: row.db_version.unwrap_or_default(),
            counts: TemplateCounts {
                users: row.users.unwrap_or_default(),
                objects: row.objects.unwrap_or_default(),
                access_numbers: row.access_numbers.unwrap_or_default(),
            },
            created_at: row.created_at,
        }
    }
}

/// Stores a template for this client: `201` when these bytes are new to it (even if another
/// client stored them), `200` with its template as it was when it stored them already.
#[utoipa::path(post, path = "/configapi/v2/templates", tag = "templates", operation_id = "storeTemplate",
    params(("name" = inline(Option<TemplateName>), Query, description = "A label for the template (1-255 characters)")),
    request_body(content = inline(ZipBody), content_type = "application/zip", description = "The template ZIP"),
    responses(
        (status = 201, description = "Stored for this client", body = TemplateBody,
            headers(("Location" = String, description = "/configapi/v2/templates/{templateId}"))),
        (status = 200, description = "This client stored these bytes already: its template, name unchanged", body = TemplateBody),
        (status = 400, description = "A template create-from-template refuses (the problem names the fault), or an invalid name"),
        (status = 409, description = "The client keeps as many templates, or bytes of them, as it may"),
        (status = 413, description = "The template is too large"),
        (status = 415, description = "Not a ZIP"),
        (status = 503, description = "The server is receiving as many templates as its memory allows, or this client's requests hold half of that memory (Retry-After)")))]
pub(super) async fn store_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    request: Request,
) -> Result<Response, ApiError> {
    require_zip(request.headers())?;
    let name = name_param(&uri)?;
    let max = state.settings.template_max_bytes;
    let length = upload::declared_length(request.headers(), max)?;
    let body = request.into_body().into_data_stream();
    let mut upload =
        upload::read(&state.template_budget, &caller.client_id, body, length, max).await?;
    // Even an operator stores for itself: only its own keep makes this a repeat.
    let own = Viewer {
        client_id: &caller.client_id,
        operator: false,
    };
    if let Some(kept) = db::templates::find(&state.pool, &upload.id, own).await? {
        return Ok(answer(StatusCode::OK, kept));
    }
    let facts = check(&state, &mut upload).await?;
    let mut tx = state.pool.begin().await?;
    db::templates::put(&mut tx, &upload.id, &upload.bytes).await?;
    db::templates::describe(&mut tx, &upload.id, &facts).await?;
    let new = db::templates::keep(&mut tx, &caller.client_id, &upload.id, name.as_deref()).await?;
    if new {
        // Last in the transaction, so the client's row is locked only for its commit, not
        // while the bytes are written.
        within_quota(&state, &mut tx, &caller.client_id).await?;
    }
    let kept = db::templates::find(&mut *tx, &upload.id, own)
        .await?
        .ok_or_else(|| anyhow::anyhow!("template {} is not kept after keeping it", upload.id))?;
    tx.commit().await?;
    if new {
        tracing::info!(template.id = %upload.id, bytes = kept.bytes, "template stored");
    }
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(answer(status, kept))
}

/// `409` when the template just kept passes the client's quota
/// (`PROVISIONER_CLIENT_MAX_STORED_TEMPLATES`, `PROVISIONER_CLIENT_MAX_STORED_BYTES`): every
/// stored template stays until its client deletes it, so a client could otherwise grow the
/// database without bound. Counted in `tx`, its keep included, under the client's row lock, so
/// concurrent stores of one client never pass it together; a template the client came to keep
/// meanwhile was no new keep, and is never refused.
async fn within_quota(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    client_id: &str,
) -> Result<(), ApiError> {
    let (count, held) = db::templates::kept_by(tx, client_id).await?;
    let (max_count, max_bytes) = (
        state.settings.client_max_stored_templates,
        state.settings.client_max_stored_bytes,
    );
    if count > i64::from(max_count) || u64::try_from(held).unwrap_or(0) > max_bytes {
        return Err(ApiError::Conflict(format!(
            "this client keeps {} templates, and may keep at most {max_count} templates of \
             {max_bytes} bytes together; delete some first",
            count - 1
        )));
    }
    Ok(())
}

/// `?name=`: text of 1 to `MAX_NAME` characters, or absent.
fn name_param(uri: &Uri) -> Result<Option<String>, ApiError> {
    match query_param(uri, "name") {
        None => Ok(None),
        Some(name) => match text_problem(&name, MAX_NAME) {
            None => Ok(Some(name)),
            Some(problem) => Err(FieldError::new("name", problem).into()),
        },
    }
}

/// Reads the upload as create-from-template reads a template (format, the server's
/// `dbVersion`, every limit), within the memory budget its reading costs.
async fn check(state: &AppState, upload: &mut Upload) -> Result<Facts, ApiError> {
    let limits = Limits::default();
    let cost = Template::costs(&upload.bytes, &limits, Contents::ForCreate)
        .map_err(refused)?
        .reading;
    upload::take(&mut upload.reserved, cost).await?;
    let db_version = db::schema_version(&state.pool).await?;
    let bytes = upload.bytes.clone();
    let template =
        tokio::task::spawn_blocking(move || Template::read_for_create(&bytes, &limits, db_version))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(refused)?;
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(Facts {
        db_version,
        users: count(template.users.len()),
        objects: count(template.objects.len()),
        access_numbers: count(template.access_numbers.len()),
    })
}

fn refused(e: TemplateError) -> ApiError {
    ApiError::BadTemplate(format!("the template is refused: {e}"))
}

fn answer(status: StatusCode, kept: KeptRow) -> Response {
    let location = format!("/configapi/v2/templates/{}", kept.template_id);
    let body = Json(TemplateBody::from(kept));
    if status == StatusCode::CREATED {
        (status, [(header::LOCATION, location)], body).into_response()
    } else {
        (status, body).into_response()
    }
}

/// The templates this client stored (every client's for an operator, one item per client that
/// stored it), newest first.
#[utoipa::path(get, path = "/configapi/v2/templates", tag = "templates", operation_id = "listTemplates",
    params(("limit" = inline(Option<PageLimit>), Query, description = "1-500, default 50; larger values are clamped"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")),
    responses(
        (status = 200, description = "Templates, newest first", body = Page<TemplateBody>),
        (status = 400, description = "Invalid limit or cursor")))]
pub(super) async fn list_templates(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<Page<TemplateBody>>, ApiError> {
    let mut errors = Vec::new();
    let page = PageQuery::read(&uri, &mut errors);
    let after = page.after.as_deref().and_then(|c| {
        let key = template_key(c);
        if key.is_none() {
            errors.push(not_a_cursor());
        }
        key
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows =
        db::templates::list(&state.pool, caller.viewer(), after.as_ref(), page.fetch()).await?;
    Ok(Json(page.page(
        rows,
        |last| template_key_text(last.created_at, &last.template_id, &last.client_id),
        TemplateBody::from,
    )))
}

/// The template id of the path: one that is not an id is unknown, like any other.
fn template_id(raw: &str) -> Result<&str, ApiError> {
    if is_template_id(raw) {
        Ok(raw)
    } else {
        Err(not_found(raw))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no template {id} for this client"))
}

/// The template as the client that stored it sees it.
async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<KeptRow, ApiError> {
    let id = template_id(raw)?;
    db::templates::find(&state.pool, id, caller.viewer())
        .await?
        .ok_or_else(|| not_found(id))
}

/// A template this client stored.
#[utoipa::path(get, path = "/configapi/v2/templates/{templateId}", tag = "templates", operation_id = "getTemplate",
    params(("templateId" = inline(TemplateIdText), Path)),
    responses(
        (status = 200, description = "The template", body = TemplateBody),
        (status = 404, description = "No such template for this client")))]
pub(super) async fn get_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
) -> Result<Json<TemplateBody>, ApiError> {
    Ok(Json(visible(&state, &caller, &raw).await?.into()))
}

/// The ZIP of a template this client stored, byte for byte.
#[utoipa::path(get, path = "/configapi/v2/templates/{templateId}/content", tag = "templates", operation_id = "getTemplateContent",
    params(("templateId" = inline(TemplateIdText), Path)),
    responses(
        (status = 200, description = "The template ZIP as it was stored", content_type = "application/zip"),
        (status = 404, description = "No such template for this client"),
        (status = 503, description = "The server is sending as many templates as its memory allows, or this client's requests hold half of that memory (Retry-After)")))]
pub(super) async fn get_template_content(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
) -> Result<Response, ApiError> {
    let kept = visible(&state, &caller, &raw).await?;
    let mut reserved = state.template_budget.none(&caller.client_id);
    upload::take(&mut reserved, u64::try_from(kept.bytes).unwrap_or(u64::MAX)).await?;
    let content = db::templates::content(&state.pool, &kept.template_id)
        .await?
        .ok_or_else(|| not_found(&kept.template_id))?;
    let disposition = format!("attachment; filename=\"{}.zip\"", kept.template_id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_LENGTH, content.len().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        held_body(Bytes::from(content), reserved),
    )
        .into_response())
}

/// A body of `bytes` that holds `reserved` until it is sent (or abandoned).
fn held_body(bytes: Bytes, reserved: upload::Share) -> Body {
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(CONTENT_CHUNK)
        .map(|at| bytes.slice(at..(at + CONTENT_CHUNK).min(bytes.len())))
        .collect();
    Body::from_stream(stream::iter(chunks).map(move |chunk| {
        let _still_reserved = &reserved;
        Ok::<_, Infallible>(chunk)
    }))
}

/// Deletes this client's template. Other clients that stored the same bytes keep theirs, and
/// jobs already accepted still read it; the store drops the bytes once nothing needs them.
#[utoipa::path(delete, path = "/configapi/v2/templates/{templateId}", tag = "templates", operation_id = "deleteTemplate",
    params(("templateId" = inline(TemplateIdText), Path)),
    responses(
        (status = 204, description = "Deleted for this client"),
        (status = 404, description = "No such template for this client")))]
pub(super) async fn delete_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw): PathText,
) -> Result<StatusCode, ApiError> {
    let id = template_id(&raw)?;
    if db::templates::forget(&state.pool, &caller.client_id, id).await? {
        tracing::info!(template.id = %id, "template deleted for this client");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}
