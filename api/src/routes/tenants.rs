//! Tenants: details, list, and the lifecycle (activate, deactivate, delete). Every change takes
//! the tenant's advisory lock, so it never interleaves with an import of that tenant, and is
//! written to the tenant's audit history.

use axum::{Extension, Json, extract::State, http::Uri};
use provisioner_shared::{
    db::{
        self,
        tenants::{NumbersOnDelete, TenantRow},
    },
    domain::{AuditAction, TenantStatus, TenantUrl},
};
use serde::Serialize;
use serde_json::json;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError, all_valid},
    extract::{Page, PageQuery, RouteLockTimeout, TenantPath, not_a_cursor, query_param},
    openapi::shapes::{HostName, LockTimeoutSeconds, PageLimit},
    tenant_lock::{Waits, lock_tenant},
    transaction,
};

/// A tenant as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TenantBody {
    id: uuid::Uuid,
    url: String,
    name: String,
    sip_domain: String,
    status: TenantStatus,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<TenantRow> for TenantBody {
    fn from(t: TenantRow) -> Self {
        Self {
            id: t.id,
            url: t.url,
            name: t.name,
            sip_domain: t.sip_domain,
            status: t.status,
            created_at: t.created_at,
        }
    }
}

#[utoipa::path(get, path = "/configapi/v2/tenant/{tenant_url}", tag = "tenants", operation_id = "getTenant",
    params(("tenant_url" = inline(HostName), Path)),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 404, description = "No such tenant")))]
pub(super) async fn get_tenant(
    State(state): State<AppState>,
    TenantPath(url): TenantPath,
) -> Result<Json<TenantBody>, ApiError> {
    let tenant = db::tenants::find_by_url(&state.pool, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))?;
    Ok(Json(tenant.into()))
}

/// Tenants ordered by URL.
#[utoipa::path(get, path = "/configapi/v2/tenant", tag = "tenants", operation_id = "listTenants",
    params(("limit" = inline(Option<PageLimit>), Query, description = "1-500, default 50; larger values are clamped"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")),
    responses(
        (status = 200, description = "Tenants by URL", body = Page<TenantBody>),
        (status = 400, description = "Invalid limit or cursor")))]
pub(super) async fn list_tenants(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Page<TenantBody>>, ApiError> {
    let mut errors = Vec::new();
    let page = PageQuery::read(&uri, &mut errors);
    // A cursor carries the last URL of a page, as stored: lower-case, a host name.
    if page
        .after
        .as_deref()
        .is_some_and(|after| !TenantUrl::parse(after).is_ok_and(|u| u.as_str() == after))
    {
        errors.push(not_a_cursor());
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = db::tenants::list(&state.pool, page.after.as_deref(), page.fetch()).await?;
    Ok(Json(page.page(rows, |t| t.url.clone(), TenantBody::from)))
}

#[utoipa::path(post, path = "/configapi/v2/tenant/{tenant_url}/activate", tag = "tenants",
    operation_id = "activateTenant", description = "Inactive -> Active; an Active tenant is answered unchanged.",
    params(("tenant_url" = inline(HostName), Path), ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 400, description = "Invalid lockTimeout"),
        (status = 404, description = "No such tenant"),
        (status = 503, description = "Lock timeout; or, with Retry-After, as many requests waiting for a lock as the server, or one client, may have")))]
pub(super) async fn activate_tenant(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: TenantPath,
    wait: RouteLockTimeout,
) -> Result<Json<TenantBody>, ApiError> {
    change_status(state, caller, path, wait, Change::Activate).await
}

#[utoipa::path(post, path = "/configapi/v2/tenant/{tenant_url}/deactivate", tag = "tenants",
    operation_id = "deactivateTenant", description = "Active -> Inactive; an Inactive tenant is answered unchanged.",
    params(("tenant_url" = inline(HostName), Path), ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant", body = TenantBody),
        (status = 400, description = "Invalid lockTimeout"),
        (status = 404, description = "No such tenant"),
        (status = 503, description = "Lock timeout; or, with Retry-After, as many requests waiting for a lock as the server, or one client, may have")))]
pub(super) async fn deactivate_tenant(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: TenantPath,
    wait: RouteLockTimeout,
) -> Result<Json<TenantBody>, ApiError> {
    change_status(state, caller, path, wait, Change::Deactivate).await
}

/// A lifecycle change of status.
#[derive(Debug, Clone, Copy)]
enum Change {
    Activate,
    Deactivate,
}

impl Change {
    /// From, to, and the audit action.
    fn parts(self) -> (TenantStatus, TenantStatus, AuditAction) {
        match self {
            Self::Activate => (
                TenantStatus::Inactive,
                TenantStatus::Active,
                AuditAction::Activate,
            ),
            Self::Deactivate => (
                TenantStatus::Active,
                TenantStatus::Inactive,
                AuditAction::Deactivate,
            ),
        }
    }
}

/// from -> to; a tenant already in `to` answers 200 unchanged.
async fn change_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(url): TenantPath,
    wait: RouteLockTimeout,
    change: Change,
) -> Result<Json<TenantBody>, ApiError> {
    let (from, to, action) = change.parts();
    let mut tx = state.pool.begin().await?;
    let changed = async {
        let mut tenant = lock_tenant(
            &mut tx,
            Waits::new(&state.lock_waits, &caller),
            &url,
            wait.duration(),
        )
        .await?;
        if db::tenants::set_status(&mut tx, tenant.id, from, to).await? {
            let details = json!({"from": from, "to": to});
            let target = format!("tenant:{url}");
            db::tenants::audit_event(
                &mut tx,
                tenant.id,
                &caller.actor(),
                action,
                &target,
                details,
            )
            .await?;
            tenant.status = to;
        }
        Ok(tenant)
    }
    .await;
    let tenant = transaction::end(tx, changed).await?;
    Ok(Json(tenant.into()))
}

/// Delete Tenant: only an Inactive one; its numbers go too unless `keepAccessNumbers=true`.
#[utoipa::path(delete, path = "/configapi/v2/tenant/{tenant_url}", tag = "tenants", operation_id = "deleteTenant",
    params(("tenant_url" = inline(HostName), Path), ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the tenant lock (default 30)"), ("keepAccessNumbers" = Option<bool>, Query, description = "Keep the numbers, unassigned")),
    responses(
        (status = 200, description = "The deleted tenant", body = TenantBody),
        (status = 400, description = "The tenant is active, or an invalid parameter"),
        (status = 404, description = "No such tenant"),
        (status = 503, description = "Lock timeout; or, with Retry-After, as many requests waiting for a lock as the server, or one client, may have")))]
pub(super) async fn delete_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TenantPath(url): TenantPath,
    wait: Result<RouteLockTimeout, FieldError>,
    uri: Uri,
) -> Result<Json<TenantBody>, ApiError> {
    let numbers = match query_param(&uri, "keepAccessNumbers").as_deref() {
        None | Some("false") => Ok(NumbersOnDelete::Delete),
        Some("true") => Ok(NumbersOnDelete::KeepUnassigned),
        Some(_) => Err(FieldError::new(
            "keepAccessNumbers",
            "must be true or false",
        )),
    };
    let (wait, numbers) = all_valid(wait, numbers, None)?;
    let mut tx = state.pool.begin().await?;
    let deleted = async {
        let tenant = lock_tenant(
            &mut tx,
            Waits::new(&state.lock_waits, &caller),
            &url,
            wait.duration(),
        )
        .await?;
        if tenant.status != TenantStatus::Inactive {
            return Err(ApiError::BadRequest(format!(
                "tenant {url} is {}; deactivate it first",
                tenant.status
            )));
        }
        db::tenants::delete(&mut tx, tenant.id, numbers).await?;
        Ok(tenant)
    }
    .await;
    let tenant = transaction::end(tx, deleted).await?;
    tracing::info!(tenant.url = %url, ?numbers, "tenant deleted");
    Ok(Json(tenant.into()))
}
