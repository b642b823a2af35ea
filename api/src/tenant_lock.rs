//! Taking a tenant's advisory lock for a synchronous change or read, as imports do, so the two
//! never interleave.

use std::time::{Duration, Instant};

use provisioner_shared::{
    db::{self, locks::LockKey, tenants::TenantRow},
    domain::TenantUrl,
};
use sqlx::PgConnection;

use crate::{error::ApiError, slots::Slots};

/// Takes the tenant's lock in `conn`'s transaction (see `lock`) and returns the tenant (`404`
/// when there is none).
pub(crate) async fn lock_tenant(
    conn: &mut PgConnection,
    waits: &Slots,
    url: &TenantUrl,
    wait: Duration,
) -> Result<TenantRow, ApiError> {
    lock(conn, waits, url, wait).await?;
    db::tenants::find_by_url(&mut *conn, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))
}

/// Takes the tenant's lock in `conn`'s transaction, whether the tenant exists or not: at once
/// when it is free; else waiting for it in one of `waits`' slots (`503` with `Retry-After`
/// when none is free within a few seconds), `503 Lock timeout` when it is not free within
/// `wait` in all.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    waits: &Slots,
    url: &TenantUrl,
    wait: Duration,
) -> Result<(), ApiError> {
    let started = Instant::now();
    let keys = [LockKey::Tenant(url.as_str())];
    if db::locks::acquire(conn, &keys, Duration::ZERO).await? {
        return Ok(());
    }
    if !wait.is_zero() {
        let _waiting = waits.take(wait).await?;
        let left = wait.saturating_sub(started.elapsed());
        if db::locks::acquire(conn, &keys, left).await? {
            return Ok(());
        }
    }
    Err(ApiError::LockTimeout(format!(
        "the tenant's lock was not free within {} s",
        wait.as_secs()
    )))
}
