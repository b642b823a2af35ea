//! The overview: jobs by status, throughput and failure rate over the last hour, queue depth and
//! the oldest queued job's age, lock waits and timeouts, worker hosts and what runs now. An
//! operator sees the whole system; a client its own jobs of the last hour. The figures come
//! through the live cache, so open pages cost one read per viewer kind every few seconds.

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use maud::html;
use provisioner_shared::db::{
    self,
    dashboard::{OVERVIEW_SAMPLE, RunningJob, WorkerHost},
};

use super::{
    layout::{self, Nav},
    session::Session,
};
use crate::AppState;

/// One figure of the overview: its key (for the live updates), label and text.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    key: &'static str,
    label: &'static str,
    text: String,
}

/// Everything the overview shows.
#[derive(Debug, Clone)]
pub(crate) struct Overview {
    /// Sections of figures: a heading and its figures.
    sections: Vec<(&'static str, Vec<Figure>)>,
    running: Vec<RunningJob>,
    hosts: Vec<WorkerHost>,
}

fn figure(key: &'static str, label: &'static str, text: impl ToString) -> Figure {
    Figure {
        key,
        label,
        text: text.to_string(),
    }
}

fn percent(part: i64, whole: i64) -> String {
    if whole == 0 {
        "—".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn seconds(secs: Option<f64>) -> String {
    secs.map_or_else(|| "—".to_owned(), |s| format!("{s:.2} s"))
}

/// Reads the overview as `session` may see it (through the live cache).
pub(crate) async fn load(state: &AppState, session: &Session) -> Result<Overview, sqlx::Error> {
    let key = session.caller.sees().map(str::to_owned);
    let pool = state.pool.clone();
    state
        .ui
        .overview
        .get(key.clone(), || async move {
            match key {
                None => operator_view(&pool).await,
                Some(client) => client_view(&pool, &client).await,
            }
        })
        .await
}

async fn operator_view(pool: &sqlx::PgPool) -> Result<Overview, sqlx::Error> {
    let stats = db::jobs::stats(pool).await?;
    let system = db::dashboard::system_figures(pool).await?;
    let backlog = db::figures::backlog(pool).await?;
    let running = db::dashboard::running_jobs(pool, None).await?;
    let hosts = db::dashboard::worker_hosts(pool).await?;
    let oldest = backlog
        .oldest_waiting()
        .map(|t| (backlog.now - t).num_seconds().max(0));
    Ok(Overview {
        sections: vec![
            (
                "Jobs by status",
                vec![
                    figure("queued", "Queued", stats.queued),
                    figure("running", "Running", stats.running),
                    figure("succeeded", "Succeeded", stats.succeeded),
                    figure("failed", "Failed", stats.failed),
                    figure("cancelled", "Cancelled", stats.cancelled),
                ],
            ),
            (
                "Last hour",
                vec![
                    figure("ended", "Jobs ended", stats.recent),
                    figure(
                        "throughput",
                        "Throughput",
                        format!("{:.1} per minute", stats.recent as f64 / 60.0),
                    ),
                    figure(
                        "failureRate",
                        "Failure rate",
                        percent(system.sampled_failures, system.sampled_endings),
                    ),
                    figure("lockTimeouts", "Lock timeouts", stats.lock_timeouts),
                    figure(
                        "lockWaitP50",
                        "Lock wait, median",
                        seconds(stats.lock_wait_p50),
                    ),
                    figure(
                        "lockWaitP99",
                        "Lock wait, 99th percentile",
                        seconds(stats.lock_wait_p99),
                    ),
                ],
            ),
            (
                "Queue",
                vec![
                    figure("queueDepth", "Queued jobs", stats.queued),
                    figure(
                        "oldestQueued",
                        "Oldest queued job waiting for",
                        oldest.map_or_else(|| "—".to_owned(), layout::duration),
                    ),
                    figure(
                        "lockWaiters",
                        "Imports waiting for a lock now",
                        system.lock_waiters,
                    ),
                ],
            ),
        ],
        running,
        hosts,
    })
}

async fn client_view(pool: &sqlx::PgPool, client: &str) -> Result<Overview, sqlx::Error> {
    let mine = db::dashboard::client_figures(pool, client).await?;
    let running = db::dashboard::running_jobs(pool, Some(client)).await?;
    let ended = mine.succeeded + mine.failed + mine.cancelled;
    let oldest = mine
        .oldest_queued_at
        .map(|t| (Utc::now() - t).num_seconds().max(0));
    Ok(Overview {
        sections: vec![
            (
                "Your jobs of the last hour, by status",
                vec![
                    figure("queued", "Queued", mine.queued),
                    figure("running", "Running", mine.running),
                    figure("succeeded", "Succeeded", mine.succeeded),
                    figure("failed", "Failed", mine.failed),
                    figure("cancelled", "Cancelled", mine.cancelled),
                ],
            ),
            (
                "Last hour",
                vec![
                    figure("ended", "Jobs ended", ended),
                    figure("failureRate", "Failure rate", percent(mine.failed, ended)),
                    figure(
                        "oldestQueued",
                        "Oldest queued job waiting for",
                        oldest.map_or_else(|| "—".to_owned(), layout::duration),
                    ),
                ],
            ),
        ],
        running,
        hosts: vec![],
    })
}

/// `GET /ui/`.
#[utoipa::path(get, path = "/ui/", tag = "dashboard", operation_id = "dashboardOverview",
    responses(
        (status = 200, description = "The overview of the client's work (everything for an operator)", content_type = "text/html", body = String),
        (status = 303, description = "No session: to `/ui/login`"),
        (status = 403, description = "The client may not read (`tenants:read`)", content_type = "text/html", body = String)))]
pub(crate) async fn page(State(state): State<AppState>, session: Session) -> Response {
    let overview = match load(&state, &session).await {
        Ok(overview) => overview,
        Err(e) => return layout::internal(e.into()),
    };
    let operator = session.caller.operator;
    let body = html! {
        div data-live-overview {
            @for (heading, figures) in &overview.sections {
                section aria-labelledby={ "h-" (figures[0].key) } {
                    h2 id={ "h-" (figures[0].key) } { (heading) }
                    dl class="figures" {
                        @for f in figures {
                            div class="figure" {
                                dt { (f.label) }
                                dd data-figure=(f.key) { (f.text) }
                            }
                        }
                    }
                }
            }
        }
        @if !operator {
            p class="muted" { "Figures of your jobs created in the last hour (the newest "
                (OVERVIEW_SAMPLE) " at most)." }
        }
        @if operator {
            section aria-labelledby="h-workers" {
                h2 id="h-workers" { "Workers" }
                @if overview.hosts.is_empty() {
                    p { "No worker is connected to the database." }
                } @else {
                    table {
                        caption { "Hosts whose workers hold database connections" }
                        thead { tr { th scope="col" { "Host" } th scope="col" { "Connections" } th scope="col" { "Connected since" } } }
                        tbody {
                            @for h in &overview.hosts {
                                tr { td { (h.address) } td class="num" { (h.connections) } td { (layout::maybe_time(h.since)) } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-running" {
            h2 id="h-running" { "Running now" }
            @if overview.running.is_empty() {
                p { "Nothing is running." }
            } @else {
                table {
                    caption { "Running jobs, those whose lease ends first first (20 at most)" }
                    thead { tr {
                        th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Tenant" }
                        @if operator { th scope="col" { "Client" } }
                        th scope="col" { "Attempt" } th scope="col" { "Started" }
                    } }
                    tbody {
                        @for j in &overview.running {
                            tr {
                                td { a href={ "/ui/jobs/" (j.id) } { (layout::short_id(&j.id.to_string())) } }
                                td { (j.kind) }
                                td { (j.tenant_url) }
                                @if operator { td { (j.client_id) } }
                                td class="num" { (j.attempts) }
                                td { (layout::maybe_time(j.started_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(
        axum::http::StatusCode::OK,
        "Overview",
        Some(&session),
        Nav::Overview,
        body,
    )
}

/// `GET /ui/live/overview`: the figures as `{"figures": {key: text}}`.
pub(crate) async fn live(State(state): State<AppState>, session: Session) -> Response {
    match load(&state, &session).await {
        Ok(overview) => {
            let figures: serde_json::Map<String, serde_json::Value> = overview
                .sections
                .into_iter()
                .flat_map(|(_, figures)| figures)
                .map(|f| (f.key.to_owned(), serde_json::Value::String(f.text)))
                .collect();
            let mut response = Json(serde_json::json!({ "figures": figures })).into_response();
            layout::no_store(&mut response);
            response
        }
        Err(e) => layout::internal(e.into()),
    }
}
