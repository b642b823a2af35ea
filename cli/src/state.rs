//! What this program remembers of the batches it submitted, so `batch results --format csv`
//! can put each item's submitted fields beside its result: the file (by path and SHA-256) and
//! the options, never a password. Kept in `PROVISIONER_STATE_DIR`, else
//! `$XDG_STATE_HOME/provisioner`, else `~/.local/state/provisioner`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fields::{Defaults, TemplateChoice};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    pub file: PathBuf,
    pub file_sha256: String,
    /// `--set` fields, `password` left out.
    pub set: Map<String, Value>,
    pub template_url: Option<String>,
    pub template_id: Option<String>,
}

impl Submission {
    pub fn new(file: PathBuf, file_sha256: String, defaults: &Defaults) -> Self {
        let mut set = defaults.set.clone();
        set.remove("password");
        let (template_url, template_id) = match &defaults.template {
            Some(TemplateChoice::Url(u)) => (Some(u.clone()), None),
            Some(TemplateChoice::Id(i)) => (None, Some(i.clone())),
            None => (None, None),
        };
        Self {
            file,
            file_sha256,
            set,
            template_url,
            template_id,
        }
    }

    pub fn defaults(&self) -> Defaults {
        let template = match (&self.template_url, &self.template_id) {
            (Some(u), _) => Some(TemplateChoice::Url(u.clone())),
            (None, Some(i)) => Some(TemplateChoice::Id(i.clone())),
            _ => None,
        };
        Defaults {
            set: self.set.clone(),
            template,
        }
    }
}

fn dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("PROVISIONER_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("provisioner")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/provisioner")))
}

fn record_path(batch_id: &str) -> Option<PathBuf> {
    // Batch ids are UUIDs; anything else is never a file name here.
    uuid::Uuid::parse_str(batch_id).ok()?;
    Some(dir()?.join("batches").join(format!("{batch_id}.json")))
}

/// Remembers a submission; a failure only warns (the batch exists either way).
pub fn remember(batch_id: &str, submission: &Submission) {
    let Some(path) = record_path(batch_id) else {
        return;
    };
    let written = (|| -> std::io::Result<()> {
        fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        let text = serde_json::to_vec_pretty(submission).map_err(std::io::Error::other)?;
        fs::write(&path, text)
    })();
    if let Err(e) = written {
        eprintln!(
            "warning: could not remember the submission in {}: {e}",
            path.display()
        );
    }
}

pub fn recall(batch_id: &str) -> Option<Submission> {
    let text = fs::read(record_path(batch_id)?).ok()?;
    serde_json::from_slice(&text).ok()
}
