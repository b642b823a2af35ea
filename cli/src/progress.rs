//! Progress of a wait on stderr: a live bar (`indicatif`) with the counts, rate and ETA on a
//! terminal; one plain line at most every 5 s otherwise (`--json` too: its document is the final
//! state, on stdout).

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Least time between two plain progress lines.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// A batch's (or job's) counts as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn of(batch: &Value) -> Self {
        let c = &batch["counts"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        Self {
            total: n("total"),
            queued: n("queued"),
            running: n("running"),
            succeeded: n("succeeded"),
            failed: n("failed"),
            cancelled: n("cancelled"),
        }
    }

    pub fn done(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }

    pub fn summary(&self) -> String {
        format!(
            "succeeded {}, failed {}, running {}, queued {}, cancelled {}",
            self.succeeded, self.failed, self.running, self.queued, self.cancelled
        )
    }
}

enum Mode {
    Bar(ProgressBar),
    Lines { last: Option<Instant> },
}

/// What a wait shows while it waits.
pub struct Progress {
    mode: Mode,
    what: String,
    started: Instant,
    first_done: Option<u64>,
}

impl Progress {
    /// A display for waiting on `what` (for example `batch 5c1e...`).
    pub fn new(what: String) -> Self {
        let mode = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(what.clone());
            // Ticking starts with the first counts (see `update`).
            Mode::Bar(bar)
        } else {
            Mode::Lines { last: None }
        };
        Self {
            mode,
            what,
            started: Instant::now(),
            first_done: None,
        }
    }

    pub fn update(&mut self, counts: &Counts) {
        let first_update = self.first_done.is_none();
        let first = *self.first_done.get_or_insert(counts.done());
        // Items done since the wait began, per second: those done before it are no rate.
        let rate = |started: Instant| {
            counts.done().saturating_sub(first) as f64 / started.elapsed().as_secs_f64().max(0.001)
        };
        match &mut self.mode {
            Mode::Bar(bar) => {
                bar.set_length(counts.total);
                bar.set_position(counts.done());
                if first_update {
                    // The bar's estimate of what is left starts from the items already done,
                    // not from zero: the position above reached its estimator (a bar that
                    // ticks on its own does not pass positions to it), and the reset keeps it
                    // but forgets the rate of that jump. Then it ticks on its own.
                    bar.reset_eta();
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
                bar.set_message(format!(
                    "succeeded {} failed {} running {} queued {} {:.1}/s",
                    counts.succeeded,
                    counts.failed,
                    counts.running,
                    counts.queued,
                    rate(self.started)
                ));
            }
            Mode::Lines { last } => {
                if last.is_some_and(|t| t.elapsed() < LINE_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                let elapsed = self.started.elapsed().as_secs_f64();
                let rate = rate(self.started);
                let left = counts.total.saturating_sub(counts.done());
                let eta = if rate > 0.0 && elapsed >= 1.0 {
                    format!("ETA {}s", (left as f64 / rate).ceil() as u64)
                } else {
                    "ETA unknown".to_owned()
                };
                eprintln!(
                    "{}: {}/{} done ({}), {rate:.1}/s, {eta}",
                    self.what,
                    counts.done(),
                    counts.total,
                    counts.summary()
                );
            }
        }
    }

    /// Stops drawing (the bar stays as it was last drawn).
    pub fn finish(&mut self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.abandon();
        }
    }
}
