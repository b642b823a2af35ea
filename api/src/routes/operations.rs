//! Operators' routes: Prometheus figures and this API's OpenAPI document.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use crate::{AppState, error::ApiError, metrics, openapi};

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Read at most every few seconds, one reading shared by the scrapes meanwhile; this
    // process's own figures below are read at each scrape.
    let figures = state.figures.text(&state.pool, &state.sealer).await?;
    let mut text = metrics::handle().render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    metrics::template_memory(&mut text, state.template_budget.in_use_bytes());
    text.push_str(&figures);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi::document())
}
