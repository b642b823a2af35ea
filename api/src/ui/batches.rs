//! Batches: the list with progress, a batch's page (exact counts kept current, failures grouped
//! by code and error, cancel, retry of the failed items, their rows as CSV), and the live counts
//! the pages poll.

use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use provisioner_shared::{
    db::{self, batches::BatchRow, dashboard::FailureGroup},
    domain::BatchStatus,
};
use uuid::Uuid;

use super::{
    PagePath,
    form::Form,
    layout::{self, Nav, csrf_input},
    session::Session,
};
use crate::{
    AppState,
    error::ApiError,
    extract::{CallerTrace, PageQuery, job_key, job_key_text, query_param},
    retry::{self, Retried},
};

/// Batches per page of the list.
const LIST_PAGE: i64 = 50;
/// Most batches one live request asks about.
const MAX_LIVE_IDS: usize = 100;

/// A batch `session` may see, read through the live cache.
pub(crate) async fn visible(
    state: &AppState,
    session: &Session,
    id: Uuid,
) -> Result<Option<BatchRow>, sqlx::Error> {
    let pool = state.pool.clone();
    let row = state
        .ui
        .batches
        .get(
            id,
            || async move { db::batches::find(&pool, id, None).await },
        )
        .await?;
    Ok(row.filter(|b| session.caller.sees().is_none_or(|c| c == b.client_id)))
}

/// `GET /ui/batches[?cursor=]`.
pub(crate) async fn list(State(state): State<AppState>, session: Session, uri: Uri) -> Response {
    let mut errors = Vec::new();
    let page = PageQuery::read_with(&uri, &mut errors, LIST_PAGE, LIST_PAGE);
    let after = page.after.as_deref().and_then(job_key);
    if !errors.is_empty() || (page.after.is_some() && after.is_none()) {
        return layout::refused(StatusCode::BAD_REQUEST, "That page link is not valid.");
    }
    let rows =
        match db::batches::list(&state.pool, session.caller.sees(), after, page.fetch()).await {
            Ok(rows) => rows,
            Err(e) => return layout::internal(e.into()),
        };
    let page = page.page(rows, |b| job_key_text(b.created_at, b.id), |b| b);
    let operator = session.caller.operator;
    let body = html! {
        @if page.items.is_empty() {
            p { "No batches yet." }
        } @else {
            table class="batches" {
                caption { "Batches, newest first" }
                thead { tr {
                    th scope="col" { "Batch" }
                    @if operator { th scope="col" { "Client" } }
                    th scope="col" { "Status" } th scope="col" { "Progress" } th scope="col" { "Created" }
                } }
                tbody {
                    @for b in &page.items {
                        tr data-live-batch=[(b.status == BatchStatus::Running).then(|| b.id.to_string())] {
                            td { a href={ "/ui/batches/" (b.id) } { (layout::short_id(&b.id.to_string())) } }
                            @if operator { td { (b.client_id) } }
                            td { (layout::status(b.status.as_str())) }
                            td { (layout::progress(&b.view().counts)) }
                            td { (layout::time(b.created_at)) }
                        }
                    }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a href={ "/ui/batches?cursor=" (cursor) } rel="next" { "Older batches" } }
            }
        }
    };
    layout::page(
        StatusCode::OK,
        "Batches",
        Some(&session),
        Nav::Batches,
        body,
    )
}

/// `GET /ui/batches/{batchId}`: the batch's id and exact counts, kept current.
#[utoipa::path(get, path = "/ui/batches/{batchId}", tag = "dashboard", operation_id = "dashboardBatch",
    params(("batchId" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch's id and its counts (total, queued, running, succeeded, failed, cancelled), kept current without reloading", content_type = "text/html", body = String),
        (status = 303, description = "No session: to `/ui/login`"),
        (status = 403, description = "The client may not read (`tenants:read`)", content_type = "text/html", body = String),
        (status = 404, description = "No such batch for this client", content_type = "text/html", body = String)))]
pub(crate) async fn page(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("batch");
    };
    let batch = match db::batches::find(&state.pool, id, session.caller.sees()).await {
        Ok(Some(batch)) => batch,
        Ok(None) => return layout::not_found("batch"),
        Err(e) => return layout::internal(e.into()),
    };
    let failures = match failure_groups(&state, &batch).await {
        Ok(groups) => groups,
        Err(e) => return layout::internal(e.into()),
    };
    let view = batch.view();
    let back = format!("/ui/batches/{id}");
    let body = html! {
        div data-live-batch=(id) class="batch" {
            dl class="facts" {
                div { dt { "Batch id" } dd { code id="batch-id" { (id) } } }
                @if session.caller.operator { div { dt { "Client" } dd { (batch.client_id) } } }
                div { dt { "Status" } dd { (layout::status(batch.status.as_str())) } }
                div { dt { "Created" } dd { (layout::time(batch.created_at)) } }
                div { dt { "Finished" } dd data-finished { (layout::maybe_time(batch.finished_at)) } }
            }
            section aria-labelledby="h-progress" {
                h2 id="h-progress" { "Progress" }
                div aria-live="polite" { (layout::progress(&view.counts)) }
            }
            @if session.can_write {
                div class="actions" {
                    form method="post" action={ "/ui/batches/" (id) "/cancel" } data-show-when="running"
                        hidden[batch.status != BatchStatus::Running] {
                        (csrf_input(&session))
                        button type="submit" class="danger" { "Cancel batch" }
                    }
                    form method="post" action={ "/ui/batches/" (id) "/retry" } data-show-when="failed"
                        hidden[batch.failed == 0] {
                        (csrf_input(&session))
                        input type="hidden" name="back" value=(back);
                        button type="submit" { "Retry failed items" }
                    }
                }
            }
            section aria-labelledby="h-failures" {
                h2 id="h-failures" { "Failures" }
                div data-failures data-failed=(batch.failed) {
                    (failures_table(&session, id, &failures, batch.failed))
                }
            }
            p {
                a href={ "/ui/jobs?batchId=" (id) } { "This batch's jobs" }
            }
        }
    };
    layout::page(
        StatusCode::OK,
        &format!("Batch {}", &raw[..8.min(raw.len())]),
        Some(&session),
        Nav::Batches,
        body,
    )
}

async fn failure_groups(
    state: &AppState,
    batch: &BatchRow,
) -> Result<Vec<FailureGroup>, sqlx::Error> {
    if batch.failed == 0 {
        return Ok(vec![]);
    }
    let (pool, id) = (state.pool.clone(), batch.id);
    state
        .ui
        .failures
        .get(id, || async move {
            db::dashboard::failure_groups(&pool, id).await
        })
        .await
}

fn failures_table(session: &Session, id: Uuid, groups: &[FailureGroup], failed: i32) -> Markup {
    html! {
        @if groups.is_empty() {
            p { "No item has failed." }
        } @else {
            p {
                (failed) " failed items. "
                a href={ "/ui/batches/" (id) "/failed.csv" } download { "Download the failed rows (CSV)" }
            }
            table {
                caption { "Failed items grouped by code and error, largest groups first" }
                thead { tr {
                    th scope="col" { "Code" } th scope="col" { "Error" } th scope="col" { "Items" }
                    @if session.can_write { th scope="col" { span class="visually-hidden" { "Action" } } }
                } }
                tbody {
                    @for g in groups {
                        tr {
                            td class="num" { (g.code.map(|c| c.to_string()).unwrap_or_default()) }
                            td {
                                strong { (g.title.as_deref().unwrap_or("")) }
                                @if let Some(detail) = &g.detail { br; span class="detail" { (detail) } }
                            }
                            td class="num" { (g.items) }
                            @if session.can_write {
                                td {
                                    @if let Some(code) = g.code {
                                        form method="post" action={ "/ui/batches/" (id) "/retry" } {
                                            (csrf_input(session))
                                            input type="hidden" name="code" value=(code);
                                            input type="hidden" name="back" value={ "/ui/batches/" (id) };
                                            button type="submit" class="small" { "Retry code " (code) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/batches/{batchId}/failures`: the failures section, for the page's script to swap in
/// when the number of failed items changes.
pub(crate) async fn failures(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("batch");
    };
    let batch = match visible(&state, &session, id).await {
        Ok(Some(batch)) => batch,
        Ok(None) => return layout::not_found("batch"),
        Err(e) => return layout::internal(e.into()),
    };
    match failure_groups(&state, &batch).await {
        Ok(groups) => {
            let mut response = failures_table(&session, id, &groups, batch.failed).into_response();
            layout::no_store(&mut response);
            response
        }
        Err(e) => layout::internal(e.into()),
    }
}

/// `GET /ui/live/batches?ids=a,b`: the counts of those batches the session may see, as
/// `{"batches": [batch, ...]}` (the JSON API's batch body); unknown ids are left out.
pub(crate) async fn live(State(state): State<AppState>, session: Session, uri: Uri) -> Response {
    let raw = query_param(&uri, "ids").unwrap_or_default();
    let ids: Vec<&str> = raw.split(',').filter(|s| !s.is_empty()).collect();
    if ids.len() > MAX_LIVE_IDS {
        return (StatusCode::BAD_REQUEST, "too many ids").into_response();
    }
    let mut wanted: Vec<Uuid> = Vec::with_capacity(ids.len());
    for id in ids.iter().filter_map(|i| Uuid::parse_str(i).ok()) {
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    // Which of them name a batch, those not known yet in one statement (a hundred ids the
    // caller made up cost one read, not a hundred); then each batch through the live cache,
    // one read for every page that shows it.
    let pool = state.pool.clone();
    let named = state
        .ui
        .batch_ids
        .get_many(&wanted, |unknown| async move {
            let found = db::batches::existing(&pool, &unknown).await?;
            Ok(unknown.iter().map(|id| found.contains(id)).collect())
        })
        .await;
    let named = match named {
        Ok(named) => named,
        Err(e) => return layout::internal(e.into()),
    };
    let mut batches = Vec::with_capacity(wanted.len());
    for (id, named) in wanted.into_iter().zip(named) {
        if named != Some(true) {
            continue;
        }
        match visible(&state, &session, id).await {
            Ok(Some(batch)) => batches.push(batch.view()),
            Ok(None) => {}
            Err(e) => return layout::internal(e.into()),
        }
    }
    let mut response = Json(serde_json::json!({ "batches": batches })).into_response();
    layout::no_store(&mut response);
    response
}

/// `POST /ui/batches/{batchId}/cancel`: queued items are cancelled, running ones finish.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
    request: Request,
) -> Response {
    if let Err(refused) = Form::action(&session, request).await {
        return refused;
    }
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("batch");
    };
    match crate::cancel::cancel(&state.pool, id, session.caller.sees()).await {
        Ok(Some(_)) => {
            state.ui.batches.forget(&id);
            tracing::info!(batch.id = %id, client.id = %session.caller.client_id, "batch cancelled from the dashboard");
            Redirect::to(&format!("/ui/batches/{id}")).into_response()
        }
        Ok(None) => layout::not_found("batch"),
        Err(e) => layout::internal(e.into()),
    }
}

/// `POST /ui/batches/{batchId}/retry` (`code`: only the items that failed with it): every failed
/// item gets a new job, and the batch runs again.
pub(crate) async fn retry(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
    CallerTrace(trace): CallerTrace,
    request: Request,
) -> Response {
    let form = match Form::action(&session, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("batch");
    };
    let codes = match form.get("code").filter(|c| !c.is_empty()) {
        None => None,
        Some(code) => match code.trim().parse::<i32>() {
            Ok(code) if (100..=599).contains(&code) => Some(vec![code]),
            _ => {
                return layout::refused(
                    StatusCode::BAD_REQUEST,
                    "The code must be an HTTP status code.",
                );
            }
        },
    };
    let sees = session.caller.sees();
    match retry::failed_items(&state, id, sees, codes.as_deref(), trace).await {
        Ok(None) => layout::not_found("batch"),
        Ok(Some(Retried::Nothing(_) | Retried::Items(_))) => {
            state.ui.batches.forget(&id);
            state.ui.failures.forget(&id);
            let back = super::form::back_to(&form, format!("/ui/batches/{id}"));
            Redirect::to(&back).into_response()
        }
        Err(ApiError::TooManyRequests { detail, .. }) => {
            layout::refused(StatusCode::TOO_MANY_REQUESTS, &detail)
        }
        // Its cancel is at work, or its running items finish after it.
        Err(ApiError::Conflict(detail)) => layout::refused(StatusCode::CONFLICT, &detail),
        Err(e) => layout::internal(e.into()),
    }
}
