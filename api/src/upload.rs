//! Streaming an uploaded template to the shared upload directory, with a byte cap and a digest.

use std::path::PathBuf;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use provisioner_shared::uploads;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::error::ApiError;

/// A template written to the upload directory for job `job_id`.
#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
}

/// Writes `stream` to the job's upload file; more than `max` bytes is 413 and leaves nothing.
pub(crate) async fn save<S, E>(
    dir: &std::path::Path,
    job_id: Uuid,
    mut stream: S,
    max: u64,
) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    // Templates may carry password hashes: only this service's user may read them.
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(anyhow::Error::from)?;
    let path = uploads::path(dir, job_id);
    let partial = path.with_extension("zip.part");
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .await
        .map_err(anyhow::Error::from)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Into::into)?;
            bytes += chunk.len() as u64;
            if bytes > max {
                return Err(too_large(max));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
        }
        file.flush().await.map_err(anyhow::Error::from)?;
        file.sync_all().await.map_err(anyhow::Error::from)?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(anyhow::Error::from)?;
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Upload { path, sha256 })
}

fn too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!("the template is larger than {max} bytes"))
}
