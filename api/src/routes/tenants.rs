//! Tenants: details, list, and the lifecycle (activate, deactivate, delete). Every change takes
//! the tenant's advisory lock, so it never interleaves with an import of that tenant, and is
//! written to the tenant's audit history.

use std::time::Duration;

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use provisioner_shared::{
    db::{
        self,
        locks::LockKey,
        tenants::{NumbersOnDelete, TenantRow},
    },
    domain::{AuditAction, MAX_LOCK_TIMEOUT, TenantStatus, TenantUrl},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use super::jobs::{Page, page_limit};
use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
};

/// Lifecycle routes wait this long for the tenant's lock unless told otherwise.
pub const DEFAULT_ROUTE_LOCK_TIMEOUT: u64 = 30;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantBody {
    id: uuid::Uuid,
    url: String,
    name: String,
    sip_domain: String,
    status: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<TenantRow> for TenantBody {
    fn from(t: TenantRow) -> Self {
        Self {
            id: t.id,
            url: t.url,
            name: t.name,
            sip_domain: t.sip_domain,
            status: t.status.to_string(),
            created_at: t.created_at,
        }
    }
}

/// A path's tenant URL; one that cannot be a host name names no tenant.
pub fn tenant_url(raw: &str) -> Result<TenantUrl, ApiError> {
    TenantUrl::parse(raw).map_err(|_| ApiError::NotFound(format!("no tenant {raw}")))
}

#[utoipa::path(get, path = "/configapi/v2/tenant/{tenant_url}", tag = "tenants",
    params(("tenant_url" = String, Path)),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:read"]), ("oauth2" = ["tenants:read"])))]
pub async fn get(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TenantBody>, ApiError> {
    let url = tenant_url(&raw)?;
    let tenant = db::tenants::find_by_url(&state.pool, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))?;
    Ok(Json(tenant.into()))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// Tenants ordered by URL.
#[utoipa::path(get, path = "/configapi/v2/tenant", tag = "tenants",
    params(("limit" = Option<u32>, Query, description = "1-500, default 50"), ("cursor" = Option<String>, Query)),
    responses(
        (status = 200, description = "Tenants by URL", body = Page<TenantBody>),
        (status = 400, description = "Invalid limit or cursor", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:read"]), ("oauth2" = ["tenants:read"])))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<TenantBody>>, ApiError> {
    let mut errors = Vec::new();
    let limit = page_limit(q.limit.as_deref(), &mut errors);
    let after = q.cursor.as_deref().and_then(|c| {
        let decoded = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        decoded.or_else(|| {
            errors.push(FieldError::new("cursor", "is not a cursor this API issued"));
            None
        })
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut rows = db::tenants::list(&state.pool, after.as_deref(), limit + 1).await?;
    let next_cursor = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        URL_SAFE_NO_PAD.encode(&rows.last().expect("a full page has a last item").url)
    });
    Ok(Json(Page {
        items: rows.into_iter().map(TenantBody::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockQuery {
    lock_timeout: Option<String>,
    keep_access_numbers: Option<String>,
}

/// `?lockTimeout=N`: 0 to 3600 seconds, default 30.
pub fn route_lock_timeout(q: &LockQuery) -> Result<Duration, ApiError> {
    match q.lock_timeout.as_deref().map(str::parse::<u64>) {
        None => Ok(Duration::from_secs(DEFAULT_ROUTE_LOCK_TIMEOUT)),
        Some(Ok(n)) if n <= u64::from(MAX_LOCK_TIMEOUT) => Ok(Duration::from_secs(n)),
        Some(_) => Err(ApiError::Validation(vec![FieldError::new(
            "lockTimeout",
            format!("must be an integer from 0 to {MAX_LOCK_TIMEOUT}"),
        )])),
    }
}

/// Takes the tenant's lock in `conn`'s transaction (503 when it is not free in time) and
/// returns the tenant (404 when there is none).
pub async fn lock_tenant(
    conn: &mut PgConnection,
    url: &TenantUrl,
    wait: Duration,
) -> Result<TenantRow, ApiError> {
    if !db::locks::acquire(conn, &[LockKey::Tenant(url.as_str())], wait).await? {
        return Err(ApiError::LockTimeout(format!(
            "the tenant's lock was not free within {} s",
            wait.as_secs()
        )));
    }
    db::tenants::find_by_url(&mut *conn, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))
}

#[utoipa::path(post, path = "/configapi/v2/tenant/{tenant_url}/activate", tag = "tenants", description = "Inactive -> Active",
    params(("tenant_url" = String, Path), ("lockTimeout" = Option<u32>, Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 400, description = "Invalid lockTimeout", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn activate(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: Path<String>,
    q: Query<LockQuery>,
) -> Result<Json<TenantBody>, ApiError> {
    change_status(
        state,
        caller,
        path,
        q,
        TenantStatus::Inactive,
        TenantStatus::Active,
        AuditAction::Activate,
    )
    .await
}

#[utoipa::path(post, path = "/configapi/v2/tenant/{tenant_url}/deactivate", tag = "tenants", description = "Active -> Inactive",
    params(("tenant_url" = String, Path), ("lockTimeout" = Option<u32>, Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 400, description = "Invalid lockTimeout", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn deactivate(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: Path<String>,
    q: Query<LockQuery>,
) -> Result<Json<TenantBody>, ApiError> {
    change_status(
        state,
        caller,
        path,
        q,
        TenantStatus::Active,
        TenantStatus::Inactive,
        AuditAction::Deactivate,
    )
    .await
}

/// from -> to; a tenant already in `to` answers 200 unchanged.
async fn change_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    Query(q): Query<LockQuery>,
    from: TenantStatus,
    to: TenantStatus,
    action: AuditAction,
) -> Result<Json<TenantBody>, ApiError> {
    let url = tenant_url(&raw)?;
    let wait = route_lock_timeout(&q)?;
    let mut tx = state.pool.begin().await?;
    let mut tenant = lock_tenant(&mut tx, &url, wait).await?;
    if db::tenants::set_status(&mut tx, tenant.id, from, to).await? {
        let details = json!({"from": from, "to": to});
        db::tenants::audit_event(
            &mut tx,
            tenant.id,
            &actor(&caller),
            action,
            &format!("tenant:{url}"),
            details,
        )
        .await?;
        tenant.status = to;
    }
    tx.commit().await?;
    Ok(Json(tenant.into()))
}

/// Delete Tenant: only an Inactive one; its numbers go too unless `keepAccessNumbers=true`.
#[utoipa::path(delete, path = "/configapi/v2/tenant/{tenant_url}", tag = "tenants",
    params(("tenant_url" = String, Path), ("lockTimeout" = Option<u32>, Query, description = "Seconds to wait for the tenant lock (default 30)"), ("keepAccessNumbers" = Option<bool>, Query, description = "Keep the numbers, unassigned")),
    responses(
        (status = 200, description = "The deleted tenant", body = TenantBody),
        (status = 400, description = "The tenant is active", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or expired token", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client lacks the scope", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Lock timeout", body = crate::openapi::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = ["tenants:write"]), ("oauth2" = ["tenants:write"])))]
pub async fn delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<LockQuery>,
) -> Result<Json<TenantBody>, ApiError> {
    let url = tenant_url(&raw)?;
    let wait = route_lock_timeout(&q)?;
    let numbers = match q.keep_access_numbers.as_deref() {
        None | Some("false") => NumbersOnDelete::Delete,
        Some("true") => NumbersOnDelete::KeepUnassigned,
        Some(_) => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "keepAccessNumbers",
                "must be true or false",
            )]));
        }
    };
    let mut tx = state.pool.begin().await?;
    let tenant = lock_tenant(&mut tx, &url, wait).await?;
    if tenant.status != TenantStatus::Inactive {
        return Err(ApiError::BadRequest(format!(
            "tenant {url} is {}; deactivate it first",
            tenant.status
        )));
    }
    db::tenants::delete(&mut tx, tenant.id, numbers).await?;
    tx.commit().await?;
    tracing::info!(tenant.url = %url, ?numbers, "tenant deleted");
    Ok(Json(tenant.into()))
}

/// Who made a change, as the audit history records it.
pub fn actor(caller: &Caller) -> String {
    format!("client:{}", caller.client_id)
}
