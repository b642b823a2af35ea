//! What commands print on stdout: plain lines for people, or one JSON document with `--json`.

use std::{fmt::Display, io::Write as _};

use serde_json::Value;

use crate::{
    exit::{Failure, Result},
    progress::Counts,
};

/// Writes `text` and a newline on stdout. A stdout its reader closed (`| head`) is an error
/// like any other (exit 4), not a panic.
pub fn print_line(text: impl Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::invalid(format!("cannot write to stdout: {e}")))
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `doc` with `--json`, else the text `text` makes of it.
    pub fn show(&self, doc: &Value, text: impl FnOnce(&Value) -> String) -> Result<()> {
        if self.json {
            print_line(doc)
        } else {
            print_line(text(doc))
        }
    }

    /// The final (or last seen) state of a waited-for batch or job.
    pub fn final_state(&self, name: &str, doc: &Value, counts: &Counts) -> Result<()> {
        self.show(doc, |doc| {
            let status = doc["status"].as_str().unwrap_or("unknown");
            if doc.get("counts").is_some() {
                format!(
                    "{name} {status}: total {}, {}",
                    counts.total,
                    counts.summary()
                )
            } else {
                job_line(doc)
            }
        })
    }
}

/// One line about a job: id, status, code, error, tenant.
pub fn job_line(job: &Value) -> String {
    let mut line = format!(
        "job {} {} {}",
        job["jobId"].as_str().unwrap_or_default(),
        job["tenantUrl"].as_str().unwrap_or_default(),
        job["status"].as_str().unwrap_or_default()
    );
    if let Some(code) = job["code"].as_i64() {
        line.push_str(&format!(" (code {code})"));
    }
    if let Some(title) = job["error"]["title"].as_str() {
        line.push_str(&format!(": {title}"));
        if let Some(detail) = job["error"]["detail"].as_str() {
            line.push_str(&format!(": {detail}"));
        }
    }
    line
}

/// One line about a batch: id, status, counts.
pub fn batch_line(batch: &Value) -> String {
    let counts = Counts::of(batch);
    format!(
        "{} {} {} total {}, {}",
        batch["batchId"].as_str().unwrap_or_default(),
        batch["status"].as_str().unwrap_or_default(),
        batch["createdAt"].as_str().unwrap_or_default(),
        counts.total,
        counts.summary()
    )
}
