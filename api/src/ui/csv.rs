//! `GET /ui/batches/{batchId}/failed.csv`: the failed items of a batch as CSV (RFC 4180), one row
//! per item in item order: its submitted fields (never the password), its job and the error, in
//! the columns of the command line's results files, so that it submits again as it is.
//! Streamed page by page, so neither side holds the whole batch.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::stream;
use provisioner_shared::{
    db::{self, jobs::JobRow},
    domain::{ITEM_FIELDS, JobStatus, RESULT_COLUMNS, csv_cell, error_cell, never_a_formula},
};
use serde_json::Value;
use uuid::Uuid;

use super::{PagePath, layout, session::Session};
use crate::AppState;

/// Items read per query.
const PAGE: i64 = 1_000;

/// The columns: an item's fields but the password, then its job's result; the command line's
/// `batch results --format csv` writes the same (when it does not have the submitted file), and
/// `batch submit` takes the file again as it is (the result columns read past).
fn header() -> String {
    let mut columns: Vec<&str> = ITEM_FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "password")
        .collect();
    columns.extend(RESULT_COLUMNS);
    format!("{}\r\n", columns.join(","))
}

pub(crate) async fn failed_rows(
    State(state): State<AppState>,
    session: Session,
    PagePath(raw): PagePath,
) -> Response {
    let Ok(id) = Uuid::parse_str(&raw) else {
        return layout::not_found("batch");
    };
    match db::batches::find(&state.pool, id, session.caller.sees()).await {
        Ok(Some(_)) => {}
        Ok(None) => return layout::not_found("batch"),
        Err(e) => return layout::internal(e.into()),
    }
    let pool = state.pool.clone();
    let first = stream::once(async { Ok::<_, sqlx::Error>(header().into_bytes()) });
    // Keyset pages: no transaction or connection is held while a slow client reads.
    let rows = stream::unfold(Some(-1), move |after| {
        let pool = pool.clone();
        async move {
            let after = after?;
            match db::batches::results(&pool, id, Some(JobStatus::Failed), after, PAGE).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = (rows.len() as i64 == PAGE)
                        .then(|| rows.last().and_then(|r| r.batch_item))
                        .flatten();
                    let text: String = rows.iter().map(row).collect();
                    Some((Ok(text.into_bytes()), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, batch.id = %id, "reading failed rows failed");
                    Some((Err(e), None))
                }
            }
        }
    });
    let mut response =
        Body::from_stream(futures_util::StreamExt::chain(first, rows)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!("attachment; filename=\"batch-{id}-failed.csv\"");
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("ascii"),
    );
    layout::no_store(&mut response);
    response
}

/// One CSV line of a failed item.
fn row(job: &JobRow) -> String {
    let fields = job.submitted_fields().unwrap_or_default();
    let error = job.error.as_ref();
    let error_text = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
    let mut cells: Vec<String> = ITEM_FIELDS
        .iter()
        .filter(|f| **f != "password")
        .map(|f| match *f {
            "tenantUrl" => job.tenant_url.clone(),
            f => fields.get(f).map(csv_cell).unwrap_or_default(),
        })
        .collect();
    cells.extend([
        job.id.to_string(),
        job.status.as_str().to_owned(),
        job.code.map(|c| c.to_string()).unwrap_or_default(),
        error_cell(error_text("title"), error_text("detail")),
    ]);
    let mut line = cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// A CSV cell: quoted when it holds a separator, quote or line break; a leading `=`, `+`, `-`,
/// `@`, tab or carriage return is prefixed with `'`, so a spreadsheet never runs it as a formula.
fn cell(text: &str) -> String {
    let text = never_a_formula(text.to_owned());
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn cells_are_quoted_and_never_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
