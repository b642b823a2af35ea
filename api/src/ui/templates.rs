//! Templates: the stored templates the viewer sees, their size, counts and `dbVersion` (marked
//! when it is not the server's, which create-from-template refuses), and the batches that used
//! them.

use std::collections::HashMap;

use axum::{
    extract::State,
    http::{StatusCode, Uri},
    response::Response,
};
use maud::html;
use provisioner_shared::db::{self, dashboard::TemplateBatch};

use super::{
    layout::{self, Nav},
    session::Session,
};
use crate::{
    AppState,
    extract::{PageQuery, template_key, template_key_text},
};

/// Templates per page.
const LIST_PAGE: i64 = 50;

/// `GET /ui/templates[?cursor=]`.
pub(crate) async fn list(State(state): State<AppState>, session: Session, uri: Uri) -> Response {
    let mut errors = Vec::new();
    let page = PageQuery::read_with(&uri, &mut errors, LIST_PAGE, LIST_PAGE);
    let after = page.after.as_deref().and_then(template_key);
    if !errors.is_empty() || (page.after.is_some() && after.is_none()) {
        return layout::refused(StatusCode::BAD_REQUEST, "That page link is not valid.");
    }
    let read = async {
        let rows = db::templates::list(
            &state.pool,
            session.caller.viewer(),
            after.as_ref(),
            page.fetch(),
        )
        .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.template_id.clone()).collect();
        let used = db::dashboard::batches_using(&state.pool, &ids, session.caller.sees()).await?;
        let version = db::schema_version(&state.pool).await?;
        Ok::<_, sqlx::Error>((rows, used, version))
    };
    let (rows, used, server_version) = match read.await {
        Ok(read) => read,
        Err(e) => return layout::internal(e.into()),
    };
    let mut by_template: HashMap<&str, Vec<&TemplateBatch>> = HashMap::new();
    for b in &used {
        by_template
            .entry(b.template_id.as_str())
            .or_default()
            .push(b);
    }
    let page = page.page(
        rows,
        |r| template_key_text(r.created_at, &r.template_id, &r.client_id),
        |r| r,
    );
    let operator = session.caller.operator;
    let body = html! {
        p { "This server's database version is " strong { (server_version) }
            ": only templates of that version can be used to create tenants." }
        @if page.items.is_empty() {
            p { "No stored templates." }
        } @else {
            table class="templates" {
                caption { "Stored templates, newest first" }
                thead { tr {
                    th scope="col" { "Template" } th scope="col" { "Name" }
                    @if operator { th scope="col" { "Client" } }
                    th scope="col" { "Size" } th scope="col" { "dbVersion" }
                    th scope="col" { "Users" } th scope="col" { "Objects" } th scope="col" { "Access numbers" }
                    th scope="col" { "Stored" } th scope="col" { "Used by batches" }
                } }
                tbody {
                    @for t in &page.items {
                        tr {
                            td { (layout::short_id(&t.template_id)) }
                            td { (t.name.as_deref().unwrap_or("")) }
                            @if operator { td { (t.client_id) } }
                            td class="num" { (bytes(t.bytes)) }
                            td class="num" {
                                @match t.db_version {
                                    Some(v) if v == server_version => { (v) }
                                    Some(v) => { span class="warn" title="Not this server's version: creates refuse it" { (v) " (not usable)" } }
                                    None => { "—" }
                                }
                            }
                            td class="num" { (t.users.map(|n| n.to_string()).unwrap_or_default()) }
                            td class="num" { (t.objects.map(|n| n.to_string()).unwrap_or_default()) }
                            td class="num" { (t.access_numbers.map(|n| n.to_string()).unwrap_or_default()) }
                            td { (layout::time(t.created_at)) }
                            td {
                                @match by_template.get(t.template_id.as_str()) {
                                    None => { span class="muted" { "none" } }
                                    Some(batches) => {
                                        ul class="plain" {
                                            @for b in batches {
                                                li { a href={ "/ui/batches/" (b.batch_id) } { (layout::short_id(&b.batch_id.to_string())) } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a href={ "/ui/templates?cursor=" (cursor) } rel="next" { "Older templates" } }
            }
        }
    };
    layout::page(
        StatusCode::OK,
        "Templates",
        Some(&session),
        Nav::Templates,
        body,
    )
}

/// A size in bytes for people.
fn bytes(n: i64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}
