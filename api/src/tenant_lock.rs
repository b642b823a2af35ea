//! Taking a tenant's advisory lock for a synchronous change or read, as imports do, so the two
//! never interleave.

use std::time::Duration;

use provisioner_shared::{
    db::{self, locks::LockKey, tenants::TenantRow},
    domain::TenantUrl,
};
use sqlx::PgConnection;

use crate::error::ApiError;

/// Takes the tenant's lock in `conn`'s transaction (`503` when it is not free within `wait`)
/// and returns the tenant (`404` when there is none).
pub(crate) async fn lock_tenant(
    conn: &mut PgConnection,
    url: &TenantUrl,
    wait: Duration,
) -> Result<TenantRow, ApiError> {
    lock(conn, url, wait).await?;
    db::tenants::find_by_url(&mut *conn, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))
}

/// Takes the tenant's lock in `conn`'s transaction (`503` when it is not free within `wait`),
/// whether the tenant exists or not.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    url: &TenantUrl,
    wait: Duration,
) -> Result<(), ApiError> {
    if db::locks::acquire(conn, &[LockKey::Tenant(url.as_str())], wait).await? {
        Ok(())
    } else {
        Err(ApiError::LockTimeout(format!(
            "the tenant's lock was not free within {} s",
            wait.as_secs()
        )))
    }
}
