//! Taking a tenant's advisory lock for a synchronous change or read, as imports do, so the two
//! never interleave.

use std::time::{Duration, Instant};

use provisioner_shared::{
    db::{self, locks::LockKey, tenants::TenantRow},
    domain::TenantUrl,
};
use sqlx::PgConnection;

use crate::{auth::Caller, error::ApiError, slots::Slots};

/// Where a request that finds a tenant's lock busy waits: `slots` bounds such requests, and
/// `client`'s share of them.
#[derive(Clone, Copy)]
pub(crate) struct Waits<'a> {
    slots: &'a Slots,
    client: &'a str,
}

impl<'a> Waits<'a> {
    pub(crate) fn new(slots: &'a Slots, caller: &'a Caller) -> Self {
        Self {
            slots,
            client: &caller.client_id,
        }
    }
}

/// Takes the tenant's lock in `conn`'s transaction (see `lock`) and returns the tenant (`404`
/// when there is none).
pub(crate) async fn lock_tenant(
    conn: &mut PgConnection,
    waits: Waits<'_>,
    url: &TenantUrl,
    wait: Duration,
) -> Result<TenantRow, ApiError> {
    lock(conn, waits, url, wait).await?;
    db::tenants::find_by_url(&mut *conn, url.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant {url}")))
}

/// Takes the tenant's lock in `conn`'s transaction, whether the tenant exists or not: at once
/// when it is free, else as `wait_for` does.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    waits: Waits<'_>,
    url: &TenantUrl,
    wait: Duration,
) -> Result<(), ApiError> {
    let started = Instant::now();
    if try_lock(conn, url).await? {
        return Ok(());
    }
    wait_for(conn, waits, url, wait, started).await
}

/// Tries the tenant's lock in `conn`'s transaction, without waiting.
pub(crate) async fn try_lock(conn: &mut PgConnection, url: &TenantUrl) -> Result<bool, ApiError> {
    let keys = [LockKey::Tenant(url.as_str())];
    Ok(db::locks::acquire(conn, &keys, Duration::ZERO).await?)
}

/// Waits for the tenant's lock, found busy, in `conn`'s transaction, in one of `waits`' slots,
/// until `wait` after `started`: `503 Lock timeout` when it is not free by then (a wait for a
/// slot included), `503` with `Retry-After` when no slot frees within a few seconds, the lock
/// is still busy and the request's own time is not out.
pub(crate) async fn wait_for(
    conn: &mut PgConnection,
    waits: Waits<'_>,
    url: &TenantUrl,
    wait: Duration,
    started: Instant,
) -> Result<(), ApiError> {
    let timed_out = || {
        ApiError::LockTimeout(format!(
            "the tenant's lock was not free within {} s",
            wait.as_secs()
        ))
    };
    let left = wait.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(timed_out());
    }
    let _waiting = match waits.slots.take(waits.client, left).await {
        Ok(slot) => slot,
        // Other waits hold every slot (or the client's share); this tenant's lock may be free
        // by now.
        Err(busy) => {
            return match try_lock(conn, url).await? {
                true => Ok(()),
                false if started.elapsed() >= wait => Err(timed_out()),
                false => Err(busy),
            };
        }
    };
    let keys = [LockKey::Tenant(url.as_str())];
    if db::locks::acquire(conn, &keys, wait.saturating_sub(started.elapsed())).await? {
        Ok(())
    } else {
        Err(timed_out())
    }
}
