//! Access-number ranges: list, create and assign, delete.

use axum::{
    Extension, Json,
    body::Body,
    extract::State,
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures_util::{StreamExt, stream};
use provisioner_shared::{
    db,
    domain::{AuditAction, TenantUrl, is_access_number, is_hidden_char},
    template::{self, range_fits},
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{
        JsonObject, Page, PageQuery, PathText, not_a_cursor, optional_param, query_param,
        whole_number,
    },
    openapi::shapes::{self, AccessNumberText, HostName, PageLimit, RangeCount},
};

/// `POST /configapi/v2/accessnumbers`.
#[expect(
    dead_code,
    reason = "documents the body that is read field by field, to name every bad field"
)]
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AccessNumberRequest {
    #[schema(schema_with = access_number)]
    number: String,
    /// Must stay within the number's digit length.
    #[schema(minimum = 1, maximum = 1_000_000)]
    count: i32,
    /// An existing tenant.
    #[schema(schema_with = shapes::host_name)]
    tenant_url: String,
    /// Default `VOICE`.
    #[schema(schema_with = media)]
    media: Option<String>,
}

fn access_number() -> impl Into<utoipa::openapi::RefOr<utoipa::openapi::Schema>> {
    <AccessNumberText as utoipa::PartialSchema>::schema()
}

/// `media`: 1 to 32 characters, not blank, or null for the default.
fn media() -> impl Into<utoipa::openapi::RefOr<utoipa::openapi::Schema>> {
    shapes::nullable_text(32)
}

/// A range of access numbers as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RangeBody {
    number: String,
    count: i32,
    tenant_url: Option<String>,
    media: String,
}

impl From<db::access_numbers::ListedRange> for RangeBody {
    fn from(r: db::access_numbers::ListedRange) -> Self {
        Self {
            number: r.number,
            count: r.count,
            tenant_url: r.tenant_url,
            media: r.media,
        }
    }
}

/// Most ranges in one page (a `limit` asked for), and in one read of the whole listing.
const MAX_RANGES: i64 = 1000;

/// Ranges by digit length and first number. The body is an array (as the original's): every
/// range, unless a `limit` (or a `cursor`) asks for pages, which continue at the
/// `Link: <...>; rel="next"` URL.
#[utoipa::path(get, path = "/configapi/v2/accessnumbers", tag = "access numbers", operation_id = "listAccessNumbers",
    params(("tenantUrl" = inline(Option<HostName>), Query), ("limit" = inline(Option<PageLimit>), Query, description = "Pages of 1-1000 ranges (larger values are clamped); without it (and without a cursor), every range"),
        ("cursor" = Option<String>, Query, description = "From the previous answer's Link header")),
    responses(
        (status = 200, description = "Ranges; unassigned ones have tenantUrl null", body = Vec<RangeBody>,
            headers(("Link" = String, description = "`<URL>; rel=\"next\"` when a page was asked for and more ranges follow"))),
        (status = 400, description = "Invalid tenantUrl, limit or cursor")))]
pub(super) async fn list_access_numbers(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let url = optional_param(&uri, "tenantUrl").and_then(|u| {
        TenantUrl::parse(&u)
            .map_err(|m| errors.push(FieldError::new("tenantUrl", m)))
            .ok()
    });
    let page = PageQuery::read_with(&uri, &mut errors, MAX_RANGES, MAX_RANGES);
    if page.after.as_deref().is_some_and(|a| !is_access_number(a)) {
        errors.push(not_a_cursor());
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let tenant = url.as_ref().map(TenantUrl::as_str);
    if optional_param(&uri, "limit").is_none() && optional_param(&uri, "cursor").is_none() {
        return every_range(state.pool.clone(), tenant.map(str::to_owned)).await;
    }
    let rows =
        db::access_numbers::list(&state.pool, tenant, page.after.as_deref(), page.fetch()).await?;
    let Page { items, next_cursor } = page.page(rows, |r| r.number.clone(), RangeBody::from);
    let mut response = Json(items).into_response();
    if let Some(cursor) = next_cursor {
        let mut next = format!(
            "/configapi/v2/accessnumbers?limit={}&cursor={cursor}",
            page.limit
        );
        if let Some(t) = tenant {
            next.push_str(&format!("&tenantUrl={t}"));
        }
        let link = HeaderValue::from_str(&format!("<{next}>; rel=\"next\""))
            .map_err(anyhow::Error::from)?;
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Every range (of `tenant`, if given) as one JSON array, read a page at a time by key: no
/// transaction or connection is held while a slow client reads, and memory stays one page
/// whatever the table holds. The first page is read before the answer starts (a database that
/// does not answer is a `500`); a later page that cannot be read ends the body unfinished (the
/// client sees a broken answer, never a shorter list that parses).
async fn every_range(pool: sqlx::PgPool, tenant: Option<String>) -> Result<Response, ApiError> {
    let first = db::access_numbers::list(&pool, tenant.as_deref(), None, MAX_RANGES).await?;
    let (mut text, after) = ranges_text(first, true);
    text.insert(0, b'[');
    let rest = stream::unfold(after, move |after| {
        let (pool, tenant) = (pool.clone(), tenant.clone());
        async move {
            let after = after?;
            match db::access_numbers::list(&pool, tenant.as_deref(), Some(&after), MAX_RANGES).await
            {
                Ok(rows) => {
                    let (text, next) = ranges_text(rows, false);
                    Some((Ok::<_, sqlx::Error>(text), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading access-number ranges failed");
                    Some((Err(e), None))
                }
            }
        }
    });
    let body = stream::once(async { Ok(text) }).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A page of ranges as array elements (preceded by a comma unless `first`), and the cursor of
/// the page after it; the last page (`None`) ends with the array's `]`.
fn ranges_text(
    rows: Vec<db::access_numbers::ListedRange>,
    first: bool,
) -> (Vec<u8>, Option<String>) {
    let full = rows.len() == MAX_RANGES as usize;
    let mut text = Vec::new();
    let mut last = None;
    for (i, row) in rows.into_iter().enumerate() {
        if !first || i > 0 {
            text.push(b',');
        }
        last = Some(row.number.clone());
        serde_json::to_writer(&mut text, &RangeBody::from(row)).expect("a range serializes");
    }
    let next = last.filter(|_| full);
    if next.is_none() {
        text.push(b']');
    }
    (text, next)
}

/// A range to create, as validated.
struct NewRange {
    number: String,
    count: i32,
    media: String,
    tenant_url: TenantUrl,
}

/// Every field of a create request checked at once.
fn new_range(fields: &Map<String, Value>) -> Result<NewRange, Vec<FieldError>> {
    let mut errors: Vec<FieldError> = fields
        .keys()
        .filter(|k| !["number", "count", "tenantUrl", "media"].contains(&k.as_str()))
        .map(|k| FieldError::new(k, "unknown field"))
        .collect();
    fn check<T>(
        errors: &mut Vec<FieldError>,
        field: &str,
        message: &str,
        v: Option<T>,
    ) -> Option<T> {
        if v.is_none() {
            errors.push(FieldError::new(field, message));
        }
        v
    }
    let number = fields.get("number").and_then(Value::as_str);
    let number = check(
        &mut errors,
        "number",
        "is required: a string of 1 to 20 digits",
        number.filter(|n| is_access_number(n)).map(str::to_owned),
    );
    let count = fields.get("count").and_then(whole_number);
    let count = check(
        &mut errors,
        "count",
        "is required: an integer from 1 to 1000000",
        count
            .filter(|c| (1..=1_000_000).contains(c))
            .map(|c| c as i32),
    );
    let media = match fields.get("media") {
        None | Some(Value::Null) => Some("VOICE".to_owned()),
        Some(Value::String(m))
            if !m.trim().is_empty()
                && m.chars().count() <= 32
                && !m.chars().any(is_hidden_char) =>
        {
            Some(m.clone())
        }
        Some(_) => None,
    };
    let media = check(
        &mut errors,
        "media",
        "must be 1 to 32 characters, not blank, without control or format characters",
        media,
    );
    let tenant_url = match fields.get("tenantUrl").and_then(Value::as_str) {
        None => Err("is required"),
        Some(u) => TenantUrl::parse(u),
    };
    let tenant_url = tenant_url
        .map_err(|m| errors.push(FieldError::new("tenantUrl", m)))
        .ok();
    if let (Some(n), Some(c)) = (&number, count)
        && !range_fits(n, c)
    {
        errors.push(FieldError::new(
            "count",
            "the range runs past the number's digit length",
        ));
    }
    match (number, count, media, tenant_url) {
        (Some(number), Some(count), Some(media), Some(tenant_url)) if errors.is_empty() => {
            Ok(NewRange {
                number,
                count,
                media,
                tenant_url,
            })
        }
        _ => Err(errors),
    }
}

/// `POST /configapi/v2/accessnumbers`: create a range and assign it to an existing tenant.
#[utoipa::path(post, path = "/configapi/v2/accessnumbers", tag = "access numbers", operation_id = "createAccessNumbers",
    request_body = AccessNumberRequest,
    responses(
        (status = 204, description = "Created and assigned"),
        (status = 400, description = "Invalid fields, or no such tenant"),
        (status = 409, description = "Overlaps an existing range, or would give the tenant more than 1,000 ranges or 100,000 numbers"),
        (status = 415, description = "Not JSON")))]
pub(super) async fn create_access_numbers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonObject(fields, held): JsonObject,
) -> Result<StatusCode, ApiError> {
    let NewRange {
        number,
        count,
        media,
        tenant_url: url,
    } = new_range(&fields).map_err(ApiError::Validation)?;
    // The body read: its memory is not held through the database's work.
    drop((fields, held));
    let mut tx = state.pool.begin().await?;
    let Some(tenant) = db::tenants::find_by_url(&mut *tx, url.as_str()).await? else {
        return Err(FieldError::new("tenantUrl", format!("no tenant {url} exists")).into());
    };
    // A tenant holds at most what a template may carry, so that its export imports again.
    let Some(held) = db::access_numbers::holding_locked(&mut tx, tenant.id).await? else {
        return Err(FieldError::new("tenantUrl", format!("no tenant {url} exists")).into());
    };
    if held.ranges >= template::MAX_RANGES as i64
        || held.numbers + i64::from(count) > template::MAX_NUMBERS as i64
    {
        return Err(ApiError::Conflict(format!(
            "tenant {url} holds {} access-number ranges of {} numbers; with {count} more it would pass what a tenant may hold, as a template: {} ranges, {} numbers",
            held.ranges,
            held.numbers,
            template::MAX_RANGES,
            template::MAX_NUMBERS
        )));
    }
    if !db::access_numbers::create(&mut tx, &number, count, &media, tenant.id).await? {
        return Err(ApiError::Conflict(format!(
            "the range {number} x {count} overlaps an existing range"
        )));
    }
    let details = json!({"number": number, "count": count, "media": media});
    let target = format!("accessNumber:{number}");
    db::tenants::audit_event(
        &mut tx,
        tenant.id,
        &caller.actor(),
        AuditAction::AccessNumbersCreate,
        &target,
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /configapi/v2/accessnumbers/{number}?count=N`: the range with exactly that start and
/// count.
#[utoipa::path(delete, path = "/configapi/v2/accessnumbers/{number}", tag = "access numbers", operation_id = "deleteAccessNumbers",
    params(("number" = inline(AccessNumberText), Path), ("count" = inline(RangeCount), Query)),
    responses(
        (status = 200, description = "The deleted range", body = RangeBody),
        (status = 400, description = "Missing or invalid count"),
        (status = 404, description = "No such range")))]
pub(super) async fn delete_access_numbers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(number): PathText,
    uri: Uri,
) -> Result<Json<RangeBody>, ApiError> {
    let count = match query_param(&uri, "count").map(|c| c.parse::<i32>()) {
        Some(Ok(c)) if (1..=1_000_000).contains(&c) => c,
        _ => {
            let message = "is required: an integer from 1 to 1000000";
            return Err(FieldError::new("count", message).into());
        }
    };
    if !is_access_number(&number) {
        return Err(ApiError::NotFound(format!("no range {number} x {count}")));
    }
    let mut tx = state.pool.begin().await?;
    let range = db::access_numbers::delete(&mut tx, &number, count)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no range {number} x {count}")))?;
    let mut tenant_url = None;
    if let Some(tenant_id) = range.tenant_id {
        let details = json!({"number": number, "count": count});
        let target = format!("accessNumber:{number}");
        db::tenants::audit_event(
            &mut tx,
            tenant_id,
            &caller.actor(),
            AuditAction::AccessNumbersDelete,
            &target,
            details,
        )
        .await?;
        tenant_url = db::tenants::url_of(&mut *tx, tenant_id).await?;
    }
    tx.commit().await?;
    Ok(Json(RangeBody {
        number: range.number,
        count: range.count,
        tenant_url,
        media: range.media,
    }))
}
