//! A provisioner binary run as a child process with the test system's settings, its JSON log
//! lines (stdout and stderr) collected as they come.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
    task::JoinHandle,
};

use crate::TestApp;

/// What a child process keeps of the test's own environment; the rest is cleared, so what the
/// child does depends on the test alone (no proxy, no `PG*`, no `RABBITMQ_*` of the caller).
const KEPT: [&str; 2] = ["PATH", "HOME"];

/// A command for any program a test runs (`rabbitmqctl`, `kill`, `pg_dump`, `tmux`, the
/// command line...): nothing of the test's environment but `PATH` and `HOME`; the test adds
/// what the program needs.
pub fn tool(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.env_clear();
    for name in KEPT {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// `tool`, run by tokio.
pub fn tool_async(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::from(tool(program))
}

/// A command for `bin` (a `CARGO_BIN_EXE_*` path) that sees the app's variables and nothing of
/// the test's own environment but `PATH` and `HOME`, with backtraces on.
pub fn command(bin: &str, app: &TestApp) -> Command {
    let mut command = tool_async(bin);
    command.envs(&app.vars).env("RUST_BACKTRACE", "1");
    command
}

pub struct Proc {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    readers: Vec<JoinHandle<()>>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `bin` (a `CARGO_BIN_EXE_*` path) with the app's variables, then `extra`.
    pub fn spawn(bin: &str, app: &TestApp, extra: &[(&str, &str)], rust_log: &str) -> Self {
        Self::spawn_with(bin, app, extra, rust_log, |_| {})
    }

    /// `spawn`, with the command changed by `configure` first (a working directory, more
    /// variables).
    pub fn spawn_with(
        bin: &str,
        app: &TestApp,
        extra: &[(&str, &str)],
        rust_log: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = command(bin, app);
        command
            .envs(extra.iter().copied())
            .env("PROVISIONER_LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        configure(&mut command);
        let mut child = command.spawn().expect("the binary starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let readers = vec![
            forward(child.stdout.take().unwrap(), tx.clone()),
            forward(child.stderr.take().unwrap(), tx),
        ];
        Self {
            child,
            lines,
            readers,
            seen: vec![],
        }
    }

    /// Every line received so far.
    pub fn text(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// The JSON log records received so far.
    pub fn records(&mut self) -> Vec<Value> {
        self.text();
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the first record whose message is `message`.
    pub async fn wait_for(&mut self, message: &str) -> Value {
        self.wait_for_record(message, |r| r["message"] == message)
            .await
    }

    /// Waits for the first record that `matches` (`what` names it in a failure).
    pub async fn wait_for_record(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.records().into_iter().find(|r| matches(r)) {
                return r;
            }
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no `{what}` in time"))
                .unwrap_or_else(|| panic!("the process ended before `{what}`"));
            self.seen.push(line);
        }
    }

    /// Waits until `n` records whose message is `message` have come.
    pub async fn wait_for_count(&mut self, message: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self
            .records()
            .iter()
            .filter(|r| r["message"] == message)
            .count()
            < n
        {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("not {n} `{message}` in time"))
                .unwrap_or_else(|| panic!("the process ended before {n} `{message}`"));
            self.seen.push(line);
        }
    }

    /// The API's bound address, from its log.
    pub async fn api_addr(&mut self) -> std::net::SocketAddr {
        self.wait_for("provisioner API listening").await["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(
            tool("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to exit (and its output to be read).
    pub async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        self.text();
        status
    }
}

fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    })
}
