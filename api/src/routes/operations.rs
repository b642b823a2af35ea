//! Operators' routes: Prometheus figures and this API's OpenAPI document.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use crate::{AppState, metrics, openapi};

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    // Read at most every few seconds, one reading shared by the scrapes meanwhile, the
    // database's and the broker's side by side; this process's own figures below are read at
    // each scrape. Without the database, they are served all the same, with the figures read
    // from it left out.
    let (database, broker) = tokio::join!(
        state.figures.database_text(&state.pool, &state.sealer),
        state.figures.broker_text()
    );
    let mut text = metrics::handle().render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    metrics::template_memory(&mut text, state.template_budget.in_use_bytes());
    let read = match &database {
        Ok(_) => metrics::Database::Read,
        Err(_) => metrics::Database::Unread,
    };
    metrics::database_reachable(&mut text, read);
    match database {
        Ok(figures) => text.push_str(&figures),
        Err(e) => tracing::warn!(error = %e, "/metrics cannot read the figures of the database"),
    }
    text.push_str(&broker);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi::document())
}
