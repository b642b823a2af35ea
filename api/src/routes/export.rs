//! Export Tenant: a template-format-1 ZIP of everything the tenant has.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db,
    template::{self, AccessNumberEntry, Manifest, ManifestSource, Template, TenantEntry},
};
use serde_json::{Map, Value};

use crate::{
    AppState,
    error::ApiError,
    extract::{RouteLockTimeout, TenantPath},
    openapi::shapes::{HostName, LockTimeoutSeconds},
    tenant_lock::lock_tenant,
};

/// Export Tenant: a template-format-1 ZIP of everything the tenant has, read under its lock so
/// it never observes an import half-way.
#[utoipa::path(get, path = "/configapi/v2/tenant/{tenant_url}/export", tag = "tenants", operation_id = "exportTenant",
    params(("tenant_url" = inline(HostName), Path), ("lockTimeout" = inline(Option<LockTimeoutSeconds>), Query, description = "Seconds to wait for the tenant lock (default 30)")),
    responses(
        (status = 200, description = "The tenant as a template ZIP", content_type = "application/zip"),
        (status = 400, description = "Invalid lockTimeout"),
        (status = 404, description = "No such tenant"),
        (status = 503, description = "Lock timeout")))]
pub(super) async fn export_tenant(
    State(state): State<AppState>,
    TenantPath(url): TenantPath,
    wait: RouteLockTimeout,
) -> Result<Response, ApiError> {
    let mut tx = state.pool.begin().await?;
    let tenant = lock_tenant(&mut tx, &url, wait.duration()).await?;
    let settings: Map<String, Value> =
        serde_json::from_value(tenant.settings.clone()).unwrap_or_default();
    let template = Template {
        manifest: Manifest {
            format: template::FORMAT.to_owned(),
            format_version: template::FORMAT_VERSION,
            db_version: db::schema_version(&state.pool).await?,
            exported_at: chrono::Utc::now(),
            source: ManifestSource {
                tenant_id: tenant.id,
                tenant_url: tenant.url.clone(),
                tenant_name: tenant.name.clone(),
            },
        },
        tenant: TenantEntry {
            id: tenant.id,
            url: tenant.url.clone(),
            name: tenant.name.clone(),
            sip_domain: tenant.sip_domain.clone(),
            settings: settings.into(),
        },
        users: db::tenants::users(&mut *tx, tenant.id).await?,
        objects: db::tenants::objects(&mut *tx, tenant.id).await?,
        access_numbers: db::access_numbers::of_tenant(&mut *tx, tenant.id)
            .await?
            .into_iter()
            .map(|r| AccessNumberEntry {
                number: r.number,
                count: r.count,
                media: r.media,
            })
            .collect(),
        calling_lists: db::tenants::calling_lists(&mut *tx, tenant.id).await?,
        audit: db::tenants::audit(&mut *tx, tenant.id).await?,
    };
    tx.commit().await?;
    let body = tokio::task::spawn_blocking(move || template.write())
        .await
        .map_err(anyhow::Error::from)?;
    let disposition = format!("attachment; filename=\"{url}.zip\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
