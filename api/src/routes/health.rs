//! Liveness and readiness.

use std::time::Duration;

use axum::{Json, extract::State};
use provisioner_shared::relay;
use serde_json::{Value, json};

use crate::{AppState, error::ApiError};

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive", body = crate::openapi::Health)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and the broker accepts a connection.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
        (status = 200, description = "Database and broker reachable", body = crate::openapi::Health),
        (status = 503, description = "Database or broker unreachable", body = crate::openapi::Problem, content_type = "application/problem+json")
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await;
    if !matches!(db, Ok(Ok(_))) {
        return Err(ApiError::Unavailable(
            "the database is not reachable".to_owned(),
        ));
    }
    let broker = tokio::time::timeout(
        Duration::from_secs(2),
        relay::connect_broker(&state.settings.amqp_url, "provisioner-readyz"),
    )
    .await;
    match broker {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "readiness probe".into()).await;
            Ok(Json(json!({"status": "ready"})))
        }
        _ => Err(ApiError::Unavailable(
            "the message broker is not reachable".to_owned(),
        )),
    }
}
