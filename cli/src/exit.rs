//! Exit codes and failures: every command ends in an `Exit`, and every error is a `Failure`
//! that says which exit code it means and what to print (never a secret).

use std::fmt;

use serde::Serialize;

use crate::output::printable;

/// The process exit codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; every item or job that was waited for succeeded.
    Ok = 0,
    /// Done with failed items, or a create refused at once (`409`).
    Failed = 1,
    /// The batch or job was cancelled.
    Cancelled = 2,
    /// The wait ran out (`--timeout`).
    TimedOut = 3,
    /// Invalid input: a bad file or argument, or a `400`, `404`, `413` or `422`.
    Invalid = 4,
    /// Authentication or permission refused.
    Refused = 5,
    /// The API could not be reached or answered 5xx (or kept answering `429`).
    Unreachable = 6,
    /// Ctrl-C while waiting: the work goes on without us.
    Interrupted = 130,
}

/// One problem of an input, as precise as known: the file line (or item), the field, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u64>,
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: None,
            item: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        } else if let Some(item) = self.item {
            write!(f, "item {item}: ")?;
        }
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a command stopped early.
#[derive(Debug, Clone)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub problems: Vec<Problem>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Exit::Invalid, message)
    }

    pub fn with_problems(mut self, problems: Vec<Problem>) -> Self {
        self.problems = problems;
        self
    }

    /// Prints the failure on stderr: plain lines, or one JSON document with `--json`, which
    /// also goes to stdout when the command printed nothing there (`--json` makes every
    /// command print one JSON document on stdout, its outcome, a failure included).
    pub fn report(&self, json: bool) {
        if json {
            let doc = serde_json::json!({
                "error": self.message,
                "exitCode": self.exit as i32,
                "problems": self.problems,
            });
            eprintln!("{doc}");
            if !crate::output::stdout_written() {
                // Nothing more can be said of a stdout that cannot be written.
                let _ = crate::output::print_line(&doc);
            }
        } else {
            eprintln!("error: {}", printable(&self.message));
            for p in &self.problems {
                eprintln!("  {}", printable(&p.to_string()));
            }
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::invalid(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
