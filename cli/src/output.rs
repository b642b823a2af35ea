//! What commands print on stdout: plain lines for people, or one JSON document with `--json`.

use std::{
    fmt::Display,
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

use serde_json::Value;

use crate::{
    exit::{Failure, Result},
    progress::Counts,
};

/// Set once stdout's reader has left (`provisioner batch list | head -1`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has left: nothing more is worth writing there.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Stdout, whose reader may leave early: from then on what is written is dropped without an
/// error, and the command ends with its own exit code (the contract has none for it), where
/// printing panicked. Other write errors are errors.
pub struct Stdout;

impl Stdout {
    fn unless_closed(op: impl FnOnce() -> io::Result<usize>, len: usize) -> io::Result<usize> {
        if stdout_closed() {
            return Ok(len);
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
                Ok(len)
            }
            other => other,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::unless_closed(|| io::stdout().lock().write(buf), buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::unless_closed(|| io::stdout().lock().flush().map(|()| 0), 0).map(|_| ())
    }
}

/// Writes `text` and a newline on stdout (see `Stdout`).
pub fn print_line(text: impl Display) -> Result<()> {
    writeln!(Stdout, "{text}")
        .and_then(|()| Stdout.flush())
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
