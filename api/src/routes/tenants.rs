//! Tenant details, Export Tenant, and the access-number listing.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use provisioner_shared::{
    db::{self, locks::LockKey, tenants::TenantRow},
    domain::{MAX_LOCK_TIMEOUT, TenantUrl},
    template::{self, AccessNumberEntry, Manifest, ManifestSource, Template, TenantEntry},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    AppState,
    error::{ApiError, FieldError},
};

/// Lifecycle routes wait this long for the tenant's lock unless told otherwise.
pub const DEFAULT_ROUTE_LOCK_TIMEOUT: u64 = 30;

#[derive(Debug, Serialize)]
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
            status: t.status,
            created_at: t.created_at,
        }
    }
}

fn tenant_url(raw: &str) -> Result<TenantUrl, ApiError> {
    TenantUrl::parse(raw).map_err(|_| ApiError::NotFound(format!("no tenant {raw}")))
}

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
#[serde(rename_all = "camelCase")]
pub struct LockQuery {
    lock_timeout: Option<String>,
}

/// `?lockTimeout=N`: 0 to 3600 seconds.
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

/// Export Tenant: a template-format-1 ZIP of everything the tenant has, read under its lock so
/// it never observes an import half-way.
pub async fn export(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<LockQuery>,
) -> Result<Response, ApiError> {
    let url = tenant_url(&raw)?;
    let wait = route_lock_timeout(&q)?;
    let mut tx = state.pool.begin().await?;
    if !db::locks::acquire(&mut tx, &[LockKey::Tenant(url.as_str())], wait).await? {
        return Err(ApiError::LockTimeout(format!(
            "the tenant's lock was not free within {} s",
            wait.as_secs()
        )));
    }
    let tenant = db::tenants::find_by_url(&mut *tx, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))?;
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
            settings,
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NumbersQuery {
    tenant_url: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeBody {
    number: String,
    count: i32,
    tenant_url: Option<String>,
    media: String,
}

pub async fn access_numbers(
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
