//! Jobs: the list with filters (status, tenant URL, batch), a job's timeline (queued, released,
//! attempts, lock wait, end with its code and error), and cancelling a queued job.

use axum::{
    extract::{Request, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use provisioner_shared::{
    db::{
        self,
        dashboard::JobTiming,
        jobs::{Cancel, ListFilter},
    },
    domain::{JobStatus, JobView, SkipReason, TenantUrl},
};
use uuid::Uuid;

use super::{
    PagePath,
    form::{Form, back_to},
    layout::{self, Nav, csrf_input},
    session::Session,
};
use crate::{
    AppState,
    extract::{PageQuery, job_key, job_key_text, query_param},
};

/// Jobs per page of the list.
const LIST_PAGE: i64 = 50;

const STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Running,
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// The list's filters as the viewer typed them, and what is wrong with them.
#[derive(Debug, Default)]
struct Filters {
    status: String,
    tenant_url: String,
    batch_id: String,
    errors: Vec<(&'static str, String)>,
}

impl Filters {
    fn read(uri: &Uri) -> Self {
        let text = |name| query_param(uri, name).unwrap_or_default().trim().to_owned();
        let mut f = Self {
            status: text("status"),
            tenant_url: text("tenantUrl"),
            batch_id: text("batchId"),
            errors: vec![],
        };
        if !f.status.is_empty() && JobStatus::parse(&f.status).is_none() {
            f.errors
                .push(("status", "Choose one of the statuses.".to_owned()));
        }
        if !f.tenant_url.is_empty()
            && let Err(m) = TenantUrl::parse(&f.tenant_url)
        {
            f.errors.push(("tenantUrl", format!("The tenant URL {m}.")));
        }
        if !f.batch_id.is_empty() && Uuid::parse_str(&f.batch_id).is_err() {
            f.errors
                .push(("batchId", "The batch id must be a UUID.".to_owned()));
        }
        f
    }

    fn error(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }

    /// The query string of these filters (for the next page's link).
    fn query(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("status", &self.status)
            .append_pair("tenantUrl", &self.tenant_url)
            .append_pair("batchId", &self.batch_id)
            .finish()
    }
}

/// `GET /ui/jobs[?status=&tenantUrl=&batchId=&cursor=]`.
pub(crate) async fn list(State(state): State<AppState>, session: Session, uri: Uri) -> Response {
    let filters = Filters::read(&uri);
    let mut page_errors = Vec::new();
    let page = PageQuery::read_with(&uri, &mut page_errors, LIST_PAGE, LIST_PAGE);
    let after = page.after.as_deref().and_then(job_key);
    if !page_errors.is_empty() || (page.after.is_some() && after.is_none()) {
        return layout::refused(StatusCode::BAD_REQUEST, "That page link is not valid.");
    }
    let (status_code, jobs, next) = if filters.errors.is_empty() {
        let tenant_url = TenantUrl::parse(&filters.tenant_url).ok();
        let filter = ListFilter {
            client_id: session.caller.sees(),
            status: JobStatus::parse(&filters.status),
            tenant_url: tenant_url.as_ref().map(TenantUrl::as_str),
            batch_id: Uuid::parse_str(&filters.batch_id).ok(),
            after,
            limit: page.fetch(),
        };
        let rows = match db::jobs::list(&state.pool, &filter).await {
            Ok(rows) => rows,
            Err(e) => return layout::internal(e.into()),
        };
        let page = page.page(rows, |j| job_key_text(j.created_at, j.id), |j| j.view());
        (StatusCode::OK, page.items, page.next_cursor)
    } else {
        (StatusCode::BAD_REQUEST, vec![], None)
    };
    let back = uri
        .path_and_query()
        .map_or("/ui/jobs".to_owned(), |p| p.as_str().to_owned());
    let body = html! {
        (filter_form(&filters))
        @if filters.errors.is_empty() {
            @if jobs.is_empty() {
                p { "No job matches." }
            } @else {
                (jobs_table(&session, &jobs, &back))
                @if let Some(cursor) = &next {
                    p { a href={ "/ui/jobs?" (filters.query()) "&cursor=" (cursor) } rel="next" { "Older jobs" } }
                }
            }
        }
    };
    layout::page(status_code, "Jobs", Some(&session), Nav::Jobs, body)
}

fn filter_form(f: &Filters) -> Markup {
    let described = |field: &'static str| f.error(field).map(|_| format!("{field}-error"));
    html! {
        form method="get" action="/ui/jobs" class="filters" aria-label="Filter jobs" {
            div class="field" {
                label for="status" { "Status" }
                select id="status" name="status" aria-describedby=[described("status")] {
                    option value="" selected[f.status.is_empty()] { "Any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[f.status == s.as_str()] { (s.as_str()) }
                    }
                }
                @if let Some(m) = f.error("status") { span class="error" id="status-error" { (m) } }
            }
            div class="field" {
                label for="tenantUrl" { "Tenant URL" }
                input type="text" id="tenantUrl" name="tenantUrl" value=(f.tenant_url) maxlength="253"
                    spellcheck="false" aria-invalid=[f.error("tenantUrl").map(|_| "true")]
                    aria-describedby=[described("tenantUrl")];
                @if let Some(m) = f.error("tenantUrl") { span class="error" id="tenantUrl-error" { (m) } }
            }
            div class="field" {
                label for="batchId" { "Batch id" }
                input type="text" id="batchId" name="batchId" value=(f.batch_id) maxlength="36"
                    spellcheck="false" aria-invalid=[f.error("batchId").map(|_| "true")]
                    aria-describedby=[described("batchId")];
                @if let Some(m) = f.error("batchId") { span class="error" id="batchId-error" { (m) } }
            }
            button type="submit" { "Filter" }
            " " a href="/ui/jobs" { "Clear" }
        }
    }
}

fn jobs_table(session: &Session, jobs: &[JobView], back: &str) -> Markup {
    html! {
        table class="jobs" {
            caption { "Jobs, newest first" }
            thead { tr {
                th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Tenant" }
                th scope="col" { "Status" } th scope="col" { "Code" } th scope="col" { "Attempts" }
                th scope="col" { "Batch" } th scope="col" { "Created" }
                @if session.can_write { th scope="col" { span class="visually-hidden" { "Action" } } }
            } }
            tbody {
                @for j in jobs {
                    tr data-job=(j.job_id) {
                        td { a href={ "/ui/jobs/" (j.job_id) } { (layout::short_id(&j.job_id.to_string())) } }
                        td { (j.kind.as_str()) }
                        td { (j.tenant_url) }
                        td { (layout::status(j.status.as_str())) }
                        td class="num" { (j.code.map(|c| c.to_string()).unwrap_or_default()) }
                        td class="num" { (j.attempts) }
                        td {
                            @if let Some(b) = j.batch_id {
                                a href={ "/ui/batches/" (b) } { (layout::short_id(&b.to_string())) }
                                " #" (j.batch_item.unwrap_or_default())
                            }
                        }
                        td { (layout::time(j.created_at)) }
                        @if session.can_write {
                            td {
                                @if j.status == JobStatus::Queued {
                                    (cancel_form(session, j.job_id, back))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn cancel_form(session: &Session, id: Uuid, back: &str) -> Markup {
    html! {
        form method="post" action={ "/ui/jobs/" (id) "/cancel" } class="inline" {
            (csrf_input(session))
            input type="hidden" name="back" value=(back);
            button type="submit" class="small danger" aria-label={ "Cancel job " (id) } { "Cancel" }
        }
    }
}

/// `GET /ui/jobs/{jobId}`: the job and its timeline.
pub(crate) async fn page(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("job");
    };
    let job = match db::jobs::find(&state.pool, id, session.caller.sees()).await {
        Ok(Some(job)) => job,
        Ok(None) => return layout::not_found("job"),
        Err(e) => return layout::internal(e.into()),
    };
    let timing = match db::dashboard::job_timing(&state.pool, id).await {
        Ok(timing) => timing,
        Err(e) => return layout::internal(e.into()),
    };
    let view = job.view();
    let body = html! {
        dl class="facts" {
            div { dt { "Job id" } dd { code { (id) } } }
            div { dt { "Kind" } dd { (view.kind.as_str()) } }
            div { dt { "Tenant" } dd { (view.tenant_url) } }
            div { dt { "Status" } dd { (layout::status(view.status.as_str())) } }
            @if let Some(code) = view.code { div { dt { "Code" } dd { (code) } } }
            @if session.caller.operator { div { dt { "Client" } dd { (job.client_id) } } }
            @if let Some(b) = view.batch_id {
                div { dt { "Batch" } dd {
                    a href={ "/ui/batches/" (b) } { (b) } " item " (view.batch_item.unwrap_or_default())
                } }
            }
        }
        @if session.can_write && view.status == JobStatus::Queued {
            div class="actions" { (cancel_form(&session, id, &format!("/ui/jobs/{id}"))) }
        }
        section aria-labelledby="h-timeline" {
            h2 id="h-timeline" { "Timeline" }
            (timeline(&view, timing.as_ref()))
        }
        @if !view.skipped_access_numbers.is_empty() {
            section aria-labelledby="h-skipped" {
                h2 id="h-skipped" { "Access numbers skipped" }
                ul { @for s in &view.skipped_access_numbers {
                    li {
                        code { (s.number) } " (" (s.count) " numbers): "
                        (match s.reason {
                            SkipReason::AssignedToOtherTenant => "assigned to another tenant",
                            SkipReason::OverlapsExistingRange => "overlaps an existing range",
                        })
                    }
                } }
            }
        }
    };
    layout::page(
        StatusCode::OK,
        &format!("Job {}", &raw[..8.min(raw.len())]),
        Some(&session),
        Nav::Jobs,
        body,
    )
}

/// The job's life as the row records it, in order.
fn timeline(job: &JobView, timing: Option<&JobTiming>) -> Markup {
    html! {
        ol class="timeline" {
            li { (layout::time(job.created_at)) " — queued" }
            @if let Some(released) = timing.and_then(|t| t.released_at) {
                li { (layout::time(released)) " — released to the workers by the batch dispatcher" }
            }
            @if let Some(t) = timing.filter(|t| job.attempts > 1 || t.sent_at > job.created_at + chrono::Duration::seconds(1)) {
                li { (layout::time(t.sent_at)) " — last sent to the workers" }
            }
            @if let Some(started) = job.started_at {
                li {
                    (layout::time(started)) " — running (attempt " (job.attempts) ")"
                    @if job.attempts > 1 {
                        " after " (job.attempts - 1) " earlier attempt" @if job.attempts > 2 { "s" }
                        " that did not finish (a transient fault, a lost worker or a worker stopped)"
                    }
                }
            }
            @if let Some(ms) = timing.and_then(|t| t.lock_wait_ms) {
                li { "waited " (ms) " ms for the import lock" }
            }
            @if let Some(finished) = job.finished_at {
                li {
                    (layout::time(finished)) " — " (layout::status(job.status.as_str()))
                    @if let Some(code) = job.code { " with code " (code) }
                    @if let Some(error) = &job.error {
                        div class="error-box" {
                            strong { (error.title) } br;
                            (error.detail)
                        }
                    }
                    @if let Some(tenant) = &job.tenant {
                        div { "Tenant made: " code { (tenant.id) } }
                    }
                }
            }
            @if timing.is_some_and(|t| t.superseded) {
                li { "A retry of the batch replaced this job with a newer one for the same item." }
            }
        }
    }
}

/// `POST /ui/jobs/{jobId}/cancel`: a queued job becomes cancelled.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
    request: Request,
) -> Response {
    let form = match Form::action(&session, request).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("job");
    };
    let sees = session.caller.sees();
    let cancelled = async {
        let mut tx = state.pool.begin().await?;
        let cancel = db::jobs::cancel_or_refuse(&mut tx, id, sees).await?;
        if let Cancel::Done(_) = cancel {
            tx.commit().await?;
        }
        Ok::<_, sqlx::Error>(cancel)
    };
    match cancelled.await {
        Ok(Cancel::Done(job)) => {
            if let Some(batch) = job.batch_id {
                state.ui.batches.forget(&batch);
            }
            tracing::info!(job.id = %id, client.id = %session.caller.client_id, "job cancelled from the dashboard");
            Redirect::to(&back_to(&form, format!("/ui/jobs/{id}"))).into_response()
        }
        Ok(Cancel::NotFound) => layout::not_found("job"),
        Ok(Cancel::Refused(job)) => layout::refused(
            StatusCode::CONFLICT,
            &format!(
                "Job {id} {} and can no longer be cancelled.",
                job.status.uncancellable_because()
            ),
        ),
        Err(e) => layout::internal(e.into()),
    }
}
