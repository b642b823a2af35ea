//! `lockTimeout`: how long a caller waits for a tenant's lock. Jobs default to the contract's
//! 120 s, the synchronous lifecycle routes to 30 s; both take 0 to 3600.

use std::time::Duration;

use axum::{extract::FromRequestParts, http::request::Parts};
use provisioner_shared::domain::{DEFAULT_LOCK_TIMEOUT, MAX_LOCK_TIMEOUT};

use super::query_param;
use crate::error::FieldError;

/// Lifecycle routes wait this long for the tenant's lock unless told otherwise.
const DEFAULT_ROUTE_LOCK_TIMEOUT: u32 = 30;

/// Checks a lock timeout given as a number (`None`: the value was not a non-negative integer).
pub(crate) fn lock_timeout_from(n: Option<u64>) -> Result<u32, FieldError> {
    match n {
        Some(n) if n <= u64::from(MAX_LOCK_TIMEOUT) => Ok(n as u32),
        _ => Err(FieldError::new(
            "lockTimeout",
            format!("must be an integer from 0 to {MAX_LOCK_TIMEOUT}"),
        )),
    }
}

/// `?lockTimeout=N` in seconds, `DEFAULT` when absent. Its rejection is the field error, so a
/// handler can report it together with its other fields' (`Result<LockTimeout, FieldError>`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockTimeout<const DEFAULT: u32>(pub(crate) u32);

/// The lock timeout a job records.
pub(crate) type JobLockTimeout = LockTimeout<DEFAULT_LOCK_TIMEOUT>;
/// The lock timeout of a synchronous route that takes the tenant's lock.
pub(crate) type RouteLockTimeout = LockTimeout<DEFAULT_ROUTE_LOCK_TIMEOUT>;

impl<const DEFAULT: u32> LockTimeout<DEFAULT> {
    pub(crate) fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.0))
    }
}

impl<S: Send + Sync, const DEFAULT: u32> FromRequestParts<S> for LockTimeout<DEFAULT> {
    type Rejection = FieldError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, FieldError> {
        match query_param(&parts.uri, "lockTimeout") {
            None => Ok(Self(DEFAULT)),
            Some(raw) => lock_timeout_from(raw.parse().ok()).map(Self),
        }
    }
}

impl axum::response::IntoResponse for FieldError {
    fn into_response(self) -> axum::response::Response {
        crate::error::ApiError::from(self).into_response()
    }
}
