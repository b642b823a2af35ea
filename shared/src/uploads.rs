//! Uploaded templates, kept as files named after their job in a directory that the API and every
//! worker share, and removed once no job needs them.

use std::path::{Path, PathBuf};

use uuid::Uuid;

pub fn path(dir: &Path, job_id: Uuid) -> PathBuf {
    dir.join(format!("{job_id}.zip"))
}

/// Removes the job's upload, if any.
pub async fn remove(dir: &Path, job_id: Uuid) {
    match tokio::fs::remove_file(path(dir, job_id)).await {
        Ok(()) => tracing::debug!(job.id = %job_id, "uploaded template removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(job.id = %job_id, error = %e, "cannot remove uploaded template"),
    }
}

/// Job ids of uploads older than `age` (candidates for the orphan sweep).
pub async fn older_than(dir: &Path, age: std::time::Duration) -> std::io::Result<Vec<Uuid>> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".zip"))
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        let modified = entry.metadata().await?.modified()?;
        if modified.elapsed().unwrap_or_default() > age {
            out.push(id);
        }
    }
    Ok(out)
}
