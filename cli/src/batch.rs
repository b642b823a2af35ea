//! `batch status | wait | list | cancel | retry | results`: the batch routes, and the results
//! as NDJSON (as the API streams them) or CSV (the submitted fields but `password`, then
//! `jobId,status,code,error`, ready to be fixed and submitted again).

use std::{
    collections::BTreeSet,
    io::{BufWriter, Write},
    path::Path,
};

use provisioner_shared::domain::never_a_formula;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::{
    api::{Api, answer_failure, success_json},
    exit::{Exit, Failure, Result},
    fields::{self, FIELDS},
    output::{Output, batch_line},
    state,
    submit::resubmitted_rows,
    wait::Target,
};

/// Longest results line read.
const MAX_RESULT_LINE: usize = 1 << 20;

fn path(id: &str) -> Result<String> {
    Ok(Target::batch(id)?.path())
}

pub async fn status(api: &Api, id: &str, out: &Output) -> Result<Exit> {
    let batch: Value = api.get(&path(id)?).await?;
    out.show(&batch, batch_line)?;
    Ok(Exit::Ok)
}

pub async fn list(api: &Api, out: &Output) -> Result<Exit> {
    let items = api.list_all("/configapi/v2/batches").await?;
    if out.json {
        crate::output::print_line(json!({ "items": items }))?;
    } else {
        for b in &items {
            crate::output::print_text(batch_line(b))?;
        }
    }
    Ok(Exit::Ok)
}

pub async fn cancel(api: &Api, id: &str, out: &Output) -> Result<Exit> {
    let batch: Value = api
        .call(Method::POST, &format!("{}/cancel", path(id)?), None)
        .await?;
    out.show(&batch, batch_line)?;
    Ok(Exit::Ok)
}

/// `batch retry ID [--code C]...`: the batch as it is then. When nothing failed (with those
/// codes) the API answers `200` and the batch unchanged: not an error (exit 0), but said on
/// stderr, since the state alone does not tell it from a retry.
pub async fn retry(api: &Api, id: &str, codes: &[u16], out: &Output) -> Result<Exit> {
    let mut route = format!("{}/retry", path(id)?);
    if !codes.is_empty() {
        let list: Vec<String> = codes.iter().map(u16::to_string).collect();
        route.push_str(&format!("?code={}", list.join(",")));
    }
    let url = api.url(&route);
    let response = api.send(|http| http.post(url.clone())).await?;
    let retried = response.status() != StatusCode::OK;
    let batch: Value = success_json(response).await?;
    if !retried {
        eprintln!("{}", nothing_to_retry(id, codes, &batch));
    }
    out.show(&batch, batch_line)?;
    Ok(Exit::Ok)
}

/// What a retry that renewed no item says.
fn nothing_to_retry(id: &str, codes: &[u16], batch: &Value) -> String {
    let with = match codes {
        [] => String::new(),
        [code] => format!(" with code {code}"),
        [codes @ .., last] => {
            let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
            format!(" with code {} or {last}", codes.join(", "))
        }
    };
    let running = if batch["status"] == "running" {
        " (yet: the batch is still running)"
    } else {
        ""
    };
    format!("nothing to retry: no item of batch {id} has failed{with}{running}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    Ndjson,
    Csv,
}

/// How `batch results` writes the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON document a line, as the API gives them.
    Ndjson,
    Csv,
    /// One JSON array (`--json`: any command prints JSON), written item by item.
    Array,
}

impl Layout {
    /// The layout of `--format` (if given) under `--json` (if given): `--json` alone is one
    /// array; NDJSON asked for by name is JSON too, a document a line; CSV is not JSON.
    pub fn of(format: Option<ResultsFormat>, json: bool) -> Result<Self> {
        match (format, json) {
            (Some(ResultsFormat::Csv), true) => Err(Failure::invalid(
                "--json prints JSON: it cannot be given with --format csv",
            )),
            (Some(ResultsFormat::Csv), false) => Ok(Self::Csv),
            (Some(ResultsFormat::Ndjson), _) | (None, false) => Ok(Self::Ndjson),
            (None, true) => Ok(Self::Array),
        }
    }
}

/// `batch results ID [--status S] [--format csv|ndjson] [-o FILE]`.
pub async fn results(
    api: &Api,
    id: &str,
    status: Option<&str>,
    layout: Layout,
    out_file: Option<&Path>,
) -> Result<Exit> {
    let mut url = api.url(&format!("{}/results", path(id)?));
    if let Some(s) = status {
        url.query_pairs_mut().append_pair("status", s);
    }
    let csv = match layout {
        Layout::Csv => Some(CsvResults::new(id)?),
        Layout::Ndjson | Layout::Array => None,
    };
    if csv.as_ref().is_some_and(CsvResults::fields_from_server) {
        url.query_pairs_mut().append_pair("fields", "submitted");
    }
    let mut response = api.send(|http| http.get(url.clone())).await?;
    if !response.status().is_success() {
        return Err(answer_failure(response).await);
    }
    let sink: Box<dyn Write> = match out_file {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| Failure::invalid(format!("{}: {e}", p.display())))?,
        ),
        None => Box::new(crate::output::Stdout),
    };
    let mut sink = BufWriter::new(sink);
    let mut writer = match (layout, csv) {
        (_, Some(csv)) => Writer::Csv(Box::new(csv)),
        (Layout::Array, None) => Writer::Array { items: 0 },
        (_, None) => Writer::Ndjson,
    };
    let copied = copy_results(&mut response, &mut writer, &mut sink).await;
    // Whatever stopped the copy, what was written is ended (an array is closed, so stdout
    // stays one JSON document); the exit code and stderr say it stopped.
    let ended = writer.finish(&mut sink).and_then(|()| Ok(sink.flush()?));
    copied.and(ended)?;
    Ok(Exit::Ok)
}

/// Copies the results' NDJSON lines to `writer` as they arrive.
async fn copy_results(
    response: &mut reqwest::Response,
    writer: &mut Writer,
    sink: &mut impl Write,
) -> Result<()> {
    let mut pending = Vec::new();
    let mut more = true;
    // Stdout's reader may have left: the rest is not worth downloading.
    while more && !crate::output::stdout_closed() {
        match response.chunk().await {
            Ok(Some(chunk)) => pending.extend_from_slice(&chunk),
            Ok(None) => more = false,
            Err(e) => {
                return Err(Failure::new(
                    Exit::Unreachable,
                    format!("the results stopped: {}", e.without_url()),
                ));
            }
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            writer.item(&line, sink)?;
        }
        if pending.len() > MAX_RESULT_LINE {
            return Err(Failure::new(
                Exit::Unreachable,
                "a results line is too long",
            ));
        }
    }
    // The last line, if the results ended without a line feed; a copy cut short because
    // stdout's reader left holds a piece of a line, which is not one.
    if !more && !pending.is_empty() {
        writer.item(&pending, sink)?;
    }
    Ok(())
}

/// Writes the results' lines in their layout.
enum Writer {
    Ndjson,
    Csv(Box<CsvResults>),
    Array { items: u64 },
}

impl Writer {
    /// Writes one line of the API's NDJSON (a blank one is skipped).
    fn item(&mut self, line: &[u8], sink: &mut impl Write) -> Result<()> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let json = || {
            serde_json::from_slice::<Value>(line).map_err(|e| {
                Failure::new(
                    Exit::Unreachable,
                    format!("a results line is not JSON: {e}"),
                )
            })
        };
        match self {
            Self::Ndjson => {
                sink.write_all(line)?;
                if line.last() != Some(&b'\n') {
                    sink.write_all(b"\n")?;
                }
                Ok(())
            }
            Self::Csv(csv) => csv.row(&json()?, sink),
            Self::Array { items } => {
                sink.write_all(if *items == 0 { b"[" } else { b"," })?;
                sink.write_all(&serde_json::to_vec(&json()?).expect("a value serializes"))?;
                *items += 1;
                Ok(())
            }
        }
    }

    fn finish(&mut self, sink: &mut impl Write) -> Result<()> {
        match self {
            Self::Ndjson => Ok(()),
            Self::Csv(csv) => csv.finish(sink),
            Self::Array { items: 0 } => Ok(sink.write_all(b"[]\n")?),
            Self::Array { .. } => Ok(sink.write_all(b"]\n")?),
        }
    }
}

/// Results as CSV, each beside the item's submitted fields: read again from the submitted file
/// when this machine knows it (its columns in the file's order), else as the server recorded
/// them (every field's column, in the API's order).
struct CsvResults {
    columns: Vec<String>,
    /// The submitted items, read along with the results (both in item order).
    items: Option<(crate::rows::Rows, fields::Defaults)>,
    next_item: u64,
    rows: Vec<u8>,
    header_written: bool,
}

impl CsvResults {
    fn new(id: &str) -> Result<Self> {
        let submission = state::recall(id);
        let mut items = submission.as_ref().and_then(resubmitted_rows);
        // Without the file, the fields the server recorded for each item.
        let mut columns: Vec<String> = FIELDS
            .iter()
            .filter(|f| **f != "password")
            .map(|f| (*f).to_owned())
            .collect();
        if let Some((rows, defaults)) = items.as_mut() {
            // One reading to learn which fields the items have.
            let mut present = BTreeSet::new();
            while let Some(row) = rows.next_row()? {
                if let Ok(mut f) = row.fields {
                    defaults.fill(&mut f);
                    present.extend(f.keys().cloned());
                }
            }
            // A CSV file's columns in its order; then the fields the options filled in (and an
            // NDJSON file's), in the API's order. Never the password.
            let file: Vec<String> = rows.headers().map(<[String]>::to_vec).unwrap_or_default();
            columns = file
                .iter()
                .map(String::as_str)
                .chain(FIELDS.iter().copied().filter(|f| present.contains(*f)))
                // A results file's own columns come again after the fields, once.
                .filter(|f| *f != "password" && !crate::rows::RESULT_COLUMNS.contains(f))
                .fold(Vec::new(), |mut columns: Vec<String>, f| {
                    if !columns.iter().any(|c| c == f) {
                        columns.push(f.to_owned());
                    }
                    columns
                });
            items = submission.as_ref().and_then(resubmitted_rows);
        }
        Ok(Self {
            columns,
            items,
            next_item: 0,
            rows: Vec::new(),
            header_written: false,
        })
    }

    /// Whether the items' fields come from the server (`?fields=submitted`), not the file.
    fn fields_from_server(&self) -> bool {
        self.items.is_none()
    }

    /// The submitted fields of item `n` (rows are read forward only).
    fn item(&mut self, n: u64) -> Result<Option<Map<String, Value>>> {
        let Some((rows, defaults)) = self.items.as_mut() else {
            return Ok(None);
        };
        while let Some(row) = rows.next_row()? {
            let index = self.next_item;
            self.next_item += 1;
            if index == n {
                let mut fields = row.fields.unwrap_or_default();
                defaults.fill(&mut fields);
                return Ok(Some(fields));
            }
        }
        Ok(None)
    }

    fn row(&mut self, result: &Value, sink: &mut impl Write) -> Result<()> {
        let mut writer = csv::Writer::from_writer(std::mem::take(&mut self.rows));
        if !self.header_written {
            let mut header = self.columns.clone();
            header.extend(crate::rows::RESULT_COLUMNS.map(String::from));
            writer.write_record(&header).map_err(csv_error)?;
            self.header_written = true;
        }
        let item = result["item"].as_u64().unwrap_or(u64::MAX);
        // From the file or the server (whose may be another client's input: an operator sees
        // every batch), every cell is never a formula; submitted again, each is read as it was
        // written (`rows::Rows` takes the guard off a results file's cells).
        let fields = match self.item(item)? {
            Some(fields) => Some(fields),
            None => result["fields"].as_object().cloned(),
        };
        let mut record: Vec<String> = self
            .columns
            .iter()
            .map(|c| match (&fields, c.as_str()) {
                (_, "tenantUrl") if fields.is_none() => {
                    result["tenantUrl"].as_str().unwrap_or_default().to_owned()
                }
                (Some(f), c) => f.get(c).map(fields::text_of).unwrap_or_default(),
                (None, _) => String::new(),
            })
            .map(never_a_formula)
            .collect();
        let error = provisioner_shared::domain::error_cell(
            result["error"]["title"].as_str(),
            result["error"]["detail"].as_str(),
        );
        // The server's text may quote a template or its URL.
        let error = never_a_formula(crate::output::printable(&error).into_owned());
        record.extend([
            result["jobId"].as_str().unwrap_or_default().to_owned(),
            result["status"].as_str().unwrap_or_default().to_owned(),
            result["code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            error,
        ]);
        writer.write_record(&record).map_err(csv_error)?;
        self.rows = writer
            .into_inner()
            .map_err(|e| Failure::invalid(e.to_string()))?;
        sink.write_all(&self.rows)?;
        self.rows.clear();
        Ok(())
    }

    /// A header even when no item matched.
    fn finish(&mut self, sink: &mut impl Write) -> Result<()> {
        if !self.header_written {
            let mut header = self.columns.clone();
            header.extend(crate::rows::RESULT_COLUMNS.map(String::from));
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(&header).map_err(csv_error)?;
            sink.write_all(
                &writer
                    .into_inner()
                    .map_err(|e| Failure::invalid(e.to_string()))?,
            )?;
        }
        Ok(())
    }
}

fn csv_error(e: csv::Error) -> Failure {
    Failure::invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_of_nothing_says_which_items_it_looked_for() {
        let id = "01a238af-1228-7221-9a9e-808335bcd085";
        let done = json!({"status": "completed"});
        assert_eq!(
            nothing_to_retry(id, &[], &done),
            format!("nothing to retry: no item of batch {id} has failed")
        );
        assert_eq!(
            nothing_to_retry(id, &[503, 500, 429], &json!({"status": "running"})),
            format!(
                "nothing to retry: no item of batch {id} has failed with code 503, 500 or 429 \
                 (yet: the batch is still running)"
            )
        );
    }
}
