//! What commands print on stdout: plain lines for people, or one JSON document with `--json`.

use std::{
    borrow::Cow,
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

/// Set once anything was written on stdout.
static STDOUT_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has left: nothing more is worth writing there.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Whether the command wrote anything on stdout (a document, a line, results).
pub fn stdout_written() -> bool {
    STDOUT_WRITTEN.load(Ordering::Relaxed)
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
        if !buf.is_empty() {
            STDOUT_WRITTEN.store(true, Ordering::Relaxed);
        }
        Self::unless_closed(|| io::stdout().lock().write(buf), buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::unless_closed(|| io::stdout().lock().flush().map(|()| 0), 0).map(|_| ())
    }
}

/// `text` with the characters a terminal would act on escaped as `\u{1b}`: control characters
/// but line feeds and tabs (escape sequences can recolour the terminal, set its title or write
/// its clipboard) and the bidirectional overrides (which reorder what is shown). Text that the
/// server or a template gave (a tenant URL, an error's detail quoting a template's entry name)
/// is then shown, never acted on.
pub fn printable(text: &str) -> Cow<'_, str> {
    let acts = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts(c) {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Writes text for people and a newline on stdout, `printable`.
pub fn print_text(text: impl Display) -> Result<()> {
    print_line(printable(&text.to_string()))
}

/// Writes `text` and a newline on stdout (see `Stdout`), as it is: JSON documents (whose
/// strings escape control characters) and the caller's own text.
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
            print_text(text(doc))
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

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_what_a_terminal_acts_on_and_nothing_else() {
        assert_eq!(
            printable("a tenant\tURL\nnext line é"),
            "a tenant\tURL\nnext line é"
        );
        assert_eq!(
            printable("x\u{1b}[31mRED\u{1b}]52;c;cHduZWQ=\u{7}"),
            "x\\u{1b}[31mRED\\u{1b}]52;c;cHduZWQ=\\u{7}"
        );
        assert_eq!(
            printable("8-bit \u{9b}CSI, \r, right-to-left \u{202e}txt.exe"),
            "8-bit \\u{9b}CSI, \\u{d}, right-to-left \\u{202e}txt.exe"
        );
    }
}
