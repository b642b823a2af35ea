//! Helpers for tests of the `provisioner` command line: the real program run as a child process
//! against a `TestApp`, with its own state folder, and every output checked for secrets.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

use crate::{BOOTSTRAP_ID, BOOTSTRAP_SECRET, TestApp};

/// The repository's root (examples, README).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch folder, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("provisioner-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name`; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How one run ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// Asserts the exit code, showing both outputs when it differs.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        self
    }
}

/// The program, its connection and the secrets none of its outputs may show.
pub struct Cli {
    pub bin: PathBuf,
    pub api: String,
    pub client_id: String,
    pub client_secret: String,
    pub state: Scratch,
    /// Strings that must never appear on stdout or stderr.
    pub secrets: Vec<String>,
}

impl Cli {
    /// The program at `bin` (`env!("CARGO_BIN_EXE_test-provisioner")`) as the bootstrap client.
    pub fn new(bin: &str, app: &TestApp) -> Self {
        Self {
            bin: PathBuf::from(bin),
            api: format!("http://{}", app.addr),
            client_id: BOOTSTRAP_ID.to_owned(),
            client_secret: BOOTSTRAP_SECRET.to_owned(),
            state: Scratch::new(),
            secrets: vec![BOOTSTRAP_SECRET.to_owned()],
        }
    }

    /// The command with the connection in the environment and a clean state folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = crate::process::tool_async(&self.bin);
        command
            .args(args)
            .current_dir(repo())
            .env("PROVISIONER_API_URL", &self.api)
            .env("PROVISIONER_CLIENT_ID", &self.client_id)
            .env("PROVISIONER_CLIENT_SECRET", &self.client_secret)
            .env("PROVISIONER_STATE_DIR", &self.state.0)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs the command to its end (at most 120 s); no secret may show in its outputs.
    pub async fn run(&self, args: &[&str]) -> Outcome {
        let child = self.command(args).spawn().expect("the program starts");
        self.finish(child, args).await
    }

    /// Waits for a started child and checks its outputs.
    pub async fn finish(&self, child: tokio::process::Child, args: &[&str]) -> Outcome {
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("provisioner {args:?} did not end within 120 s"))
            .unwrap();
        let outcome = Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.assert_no_secret(&outcome.stdout);
        self.assert_no_secret(&outcome.stderr);
        outcome
    }

    pub fn assert_no_secret(&self, text: &str) {
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret was printed: {text}"
            );
        }
    }
}
