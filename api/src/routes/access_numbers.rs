//! Access-number ranges: list, create and assign, delete.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
};
use provisioner_shared::{
    db,
    domain::{AuditAction, TenantUrl, is_access_number},
    template::range_fits,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{create::require_json, tenants::actor};
use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NumbersQuery {
    tenant_url: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeBody {
    number: String,
    count: i32,
    tenant_url: Option<String>,
    media: String,
}

#[utoipa::path(get, path = "/configapi/v2/accessnumbers", tag = "access numbers",
    params(("tenantUrl" = Option<String>, Query)),
    responses(
        (status = 200, description = "Ranges; unassigned ones have tenantUrl null", body = Vec<RangeBody>),
        (status = 400, description = "Invalid tenantUrl", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:read"]), ("oauth2" = ["tenants:read"])))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<NumbersQuery>,
) -> Result<Json<Vec<RangeBody>>, ApiError> {
    let url = q
        .tenant_url
        .as_deref()
        .map(|u| {
            TenantUrl::parse(u)
                .map_err(|m| ApiError::Validation(vec![FieldError::new("tenantUrl", m)]))
        })
        .transpose()?;
    let ranges = db::access_numbers::list(&state.pool, url.as_ref().map(TenantUrl::as_str)).await?;
    Ok(Json(
        ranges
            .into_iter()
            .map(|r| RangeBody {
                number: r.number,
                count: r.count,
                tenant_url: r.tenant_url,
                media: r.media,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    count: Option<String>,
}

/// `POST /configapi/v2/accessnumbers`: create a range and assign it to an existing tenant.
#[utoipa::path(post, path = "/configapi/v2/accessnumbers", tag = "access numbers",
    request_body = crate::openapi::AccessNumberRequest,
    responses(
        (status = 204, description = "Created and assigned"),
        (status = 400, description = "Invalid fields, or no such tenant", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Overlaps an existing range", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_json(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let mut errors: Vec<FieldError> = fields
        .keys()
        .filter(|k| !["number", "count", "tenantUrl", "media"].contains(&k.as_str()))
        .map(|k| FieldError::new(k, "unknown field"))
        .collect();
    let number = match fields.get("number").and_then(Value::as_str) {
        Some(n) if is_access_number(n) => Some(n.to_owned()),
        _ => {
            errors.push(FieldError::new(
                "number",
                "is required: a string of 1 to 20 digits",
            ));
            None
        }
    };
    let count = match fields.get("count").and_then(Value::as_i64) {
        Some(c) if (1..=1_000_000).contains(&c) => Some(c as i32),
        _ => {
            errors.push(FieldError::new(
                "count",
                "is required: an integer from 1 to 1000000",
            ));
            None
        }
    };
    if let (Some(n), Some(c)) = (&number, count) {
        if !range_fits(n, c) {
            errors.push(FieldError::new(
                "count",
                "the range runs past the number's digit length",
            ));
        }
    }
    let media = match fields.get("media") {
        None | Some(Value::Null) => Some("VOICE".to_owned()),
        Some(Value::String(m)) if !m.trim().is_empty() && m.len() <= 32 => Some(m.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "media",
                "must be a non-empty string of at most 32 characters",
            ));
            None
        }
    };
    let tenant_url = match fields
        .get("tenantUrl")
        .and_then(Value::as_str)
        .map(TenantUrl::parse)
    {
        Some(Ok(u)) => Some(u),
        Some(Err(m)) => {
            errors.push(FieldError::new("tenantUrl", m));
            None
        }
        None => {
            errors.push(FieldError::new("tenantUrl", "is required"));
            None
        }
    };
    let (Some(number), Some(count), Some(media), Some(url)) = (number, count, media, tenant_url)
    else {
        return Err(ApiError::Validation(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut tx = state.pool.begin().await?;
    let Some(tenant) = db::tenants::find_by_url(&mut *tx, url.as_str()).await? else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "tenantUrl",
            format!("no tenant {url} exists"),
        )]));
    };
    if !db::access_numbers::create(&mut tx, &number, count, &media, tenant.id).await? {
        return Err(ApiError::Conflict(format!(
            "the range {number} x {count} overlaps an existing range"
        )));
    }
    let details = json!({"number": number, "count": count, "media": media});
    db::tenants::audit_event(
        &mut tx,
        tenant.id,
        &actor(&caller),
        AuditAction::AccessNumbersCreate,
        &format!("accessNumber:{number}"),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /configapi/v2/accessnumbers/{number}?count=N`: the range with exactly that start and
/// count.
#[utoipa::path(delete, path = "/configapi/v2/accessnumbers/{number}", tag = "access numbers",
    params(("number" = String, Path), ("count" = u32, Query)),
    responses(
        (status = 200, description = "The deleted range", body = RangeBody),
        (status = 400, description = "Missing count", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such range", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(number): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<RangeBody>, ApiError> {
    let count = match q.count.as_deref().map(str::parse::<i32>) {
        Some(Ok(c)) if c >= 1 => c,
        _ => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "count",
                "is required: a positive integer",
            )]));
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
        db::tenants::audit_event(
            &mut tx,
            tenant_id,
            &actor(&caller),
            AuditAction::AccessNumbersDelete,
            &format!("accessNumber:{number}"),
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
