//! Waiting for a batch or a job: long-polls until it ends, the wait runs out or Ctrl-C, with a
//! progress display; the final state goes to stdout and the exit code says how it ended.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    api::Api,
    exit::{Exit, Failure, Result},
    output::Output,
    output::printable,
    progress::{Counts, Progress},
};

/// How long one long-poll may hold: short on a terminal, so the bar moves.
fn poll_seconds() -> u64 {
    if std::io::stderr().is_terminal() {
        1
    } else {
        2
    }
}

/// What is being waited for: an id, parsed, so that only an id is ever put into a path.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Batch(Uuid),
    Job(Uuid),
}

impl Target {
    /// The batch `id` names, or `invalid` for a user's argument that is not an id.
    pub fn batch(id: &str) -> Result<Self> {
        Uuid::parse_str(id)
            .map(Self::Batch)
            .map_err(|_| Failure::invalid(format!("`{}` is not a batch id", shown(id))))
    }

    /// The job `id` names, or `invalid` for a user's argument that is not an id.
    pub fn job(id: &str) -> Result<Self> {
        Uuid::parse_str(id)
            .map(Self::Job)
            .map_err(|_| Failure::invalid(format!("`{}` is not a job id", shown(id))))
    }

    /// The batch or job (`field`: `batchId` or `jobId`) of an accepted submission, to wait for:
    /// the API's answer must name it by an id.
    pub fn answered(doc: &Value, field: &str) -> Result<Self> {
        let id = doc[field].as_str().and_then(|id| Uuid::parse_str(id).ok());
        match (id, field) {
            (Some(id), "batchId") => Ok(Self::Batch(id)),
            (Some(id), _) => Ok(Self::Job(id)),
            (None, _) => Err(Failure::new(
                Exit::Unreachable,
                format!(
                    "the API's answer has no `{field}` to wait for: {}",
                    shown(&doc[field].to_string())
                ),
            )),
        }
    }

    /// The resource's path.
    pub fn path(&self) -> String {
        match self {
            Self::Batch(id) => format!("/configapi/v2/batches/{id}"),
            Self::Job(id) => format!("/configapi/v2/jobs/{id}"),
        }
    }

    /// `batch ID` or `job ID`, to show.
    fn name(&self) -> String {
        match self {
            Self::Batch(id) => format!("batch {id}"),
            Self::Job(id) => format!("job {id}"),
        }
    }

    /// The command that waits again, to show.
    fn reattach(&self) -> String {
        match self {
            Self::Batch(id) => format!("provisioner batch wait {id}"),
            Self::Job(id) => format!("provisioner job wait {id}"),
        }
    }

    /// The counts to show and whether it has ended.
    fn read(&self, doc: &Value) -> (Counts, bool) {
        match self {
            Self::Batch(_) => (Counts::of(doc), doc["status"] != "running"),
            Self::Job(_) => {
                let status = doc["status"].as_str().unwrap_or_default();
                let one = |s: &str| u64::from(status == s);
                let counts = Counts {
                    total: 1,
                    queued: one("queued"),
                    running: one("running"),
                    succeeded: one("succeeded"),
                    failed: one("failed"),
                    cancelled: one("cancelled"),
                };
                (counts, counts.done() == 1)
            }
        }
    }

    /// The exit code of an ended batch or job.
    fn exit(&self, doc: &Value) -> Exit {
        match (self, doc["status"].as_str().unwrap_or_default()) {
            (_, "cancelled") => Exit::Cancelled,
            (Self::Job(_), "succeeded") => Exit::Ok,
            (Self::Job(_), _) => Exit::Failed,
            (Self::Batch(_), _) => {
                let c = Counts::of(doc);
                if c.failed > 0 {
                    Exit::Failed
                } else if c.cancelled > 0 {
                    Exit::Cancelled
                } else {
                    Exit::Ok
                }
            }
        }
    }
}

/// The `field` (`batchId` or `jobId`) of an accepted submission as a line to print, when the
/// command does not wait: the API's answer must name it; it is shown escaped, on one line.
pub fn answered_id(doc: &Value, field: &str) -> Result<String> {
    match doc[field].as_str() {
        Some(id) if !id.is_empty() => Ok(printable(id).replace('\n', "\\n")),
        _ => Err(Failure::new(
            Exit::Unreachable,
            format!(
                "the API's answer has no `{field}`: {}",
                shown(&doc[field].to_string())
            ),
        )),
    }
}

/// Most characters of a user's or the server's text quoted in a message.
const SHOWN_CHARS: usize = 100;

/// `text` (a user's argument or the server's) as it may be shown: escaped, on one line, its
/// first `SHOWN_CHARS` characters.
fn shown(text: &str) -> String {
    let cut = match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    };
    printable(&cut).replace('\n', "\\n")
}

/// Waits for `target` at most `timeout` seconds (forever without one).
pub async fn wait(api: &Api, target: Target, timeout: Option<u64>, out: &Output) -> Result<Exit> {
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut progress = Progress::new(target.name());
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut wait = 0;
    loop {
        let path = format!("{}?wait={wait}", target.path());
        let doc: Value = tokio::select! {
            doc = api.get::<Value>(&path) => match doc {
                Ok(doc) => doc,
                Err(mut e) => {
                    progress.finish();
                    // The work goes on without this command (an API restarting, a network
                    // fault): say how to wait again, as a timeout or an interrupt does.
                    if e.exit == Exit::Unreachable {
                        e.message = format!(
                            "{}; {} goes on without this command; to wait again: {}",
                            e.message,
                            target.name(),
                            target.reattach()
                        );
                    }
                    return Err(e);
                }
            },
            _ = &mut interrupt => {
                progress.finish();
                eprintln!(
                    "interrupted: {} goes on without this command; to wait again: {}",
                    target.name(),
                    target.reattach()
                );
                return Ok(Exit::Interrupted);
            }
        };
        let (counts, ended) = target.read(&doc);
        progress.update(&counts);
        if ended {
            progress.finish();
            out.final_state(&target.name(), &doc, &counts)?;
            return Ok(target.exit(&doc));
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            progress.finish();
            out.final_state(&target.name(), &doc, &counts)?;
            eprintln!(
                "the wait ran out after {} s; {} goes on; to wait again: {}",
                timeout.unwrap_or_default(),
                target.name(),
                target.reattach()
            );
            return Ok(Exit::TimedOut);
        }
        wait = left.map_or(poll_seconds(), |l| l.as_secs().min(poll_seconds()));
        if wait == 0 {
            // Less than a second left: a short pause, then one last look.
            tokio::time::sleep(left.unwrap_or_default()).await;
        }
    }
}
