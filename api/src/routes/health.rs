//! Liveness and readiness.

use std::time::Duration;

use axum::{Json, extract::State};
use provisioner_shared::{db, relay};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, error::ApiError};

/// How long each dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// `ok` (alive) or `ready`.
    status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the database answers and the broker accepts a connection.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Database and broker reachable", body = Health),
        (status = 503, description = "Database or broker unreachable")))]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let db = tokio::time::timeout(PROBE_TIMEOUT, db::ping(&state.pool)).await;
    if !matches!(db, Ok(Ok(()))) {
        return Err(ApiError::Unavailable(
            "the database is not reachable".to_owned(),
        ));
    }
    let broker = tokio::time::timeout(
        PROBE_TIMEOUT,
        relay::connect_broker(&state.settings.amqp_url, "provisioner-readyz"),
    )
    .await;
    match broker {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "readiness probe".into()).await;
            Ok(Json(Health { status: "ready" }))
        }
        _ => Err(ApiError::Unavailable(
            "the message broker is not reachable".to_owned(),
        )),
    }
}
