//! A batch item's template named by URL: one download for the whole batch, pinned in the
//! template store. The first item that needs it fetches it; the others wait for its bytes, or
//! for its failure, which every item of the batch then shares. A transient fault is tried again
//! (with backoff) at most `PROVISIONER_JOB_MAX_ATTEMPTS` times for the batch, not per item.

use std::time::Duration;

use provisioner_shared::db::{
    self,
    batches::{DownloadFailure, DownloadState},
};
use uuid::Uuid;

use super::{Context, JobFailure};
use crate::fetch::FetchError;

/// Longest pause between two looks at a download another item makes.
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// The stored template batch `batch` pinned for `url` (downloading it if this item is first).
pub(super) async fn resolve(ctx: &Context, batch: Uuid, url: &str) -> Result<String, JobFailure> {
    if let Some(id) = ctx.recent.pin(batch, url) {
        return Ok(id);
    }
    let fetcher = Uuid::new_v4();
    // A fetcher that dies is replaced once its lease runs out.
    let lease = ctx.settings.template_timeout + Duration::from_secs(10);
    let max_attempts = i32::try_from(ctx.settings.job_max_attempts).unwrap_or(i32::MAX);
    loop {
        let mut tx = ctx.pool.begin().await.map_err(db_fault)?;
        let state = db::batches::download_state(&mut tx, batch, url, fetcher, lease, max_attempts)
            .await
            .map_err(db_fault)?;
        tx.commit().await.map_err(db_fault)?;
        let state = match state {
            DownloadState::Fetch { attempt } => fetch(ctx, batch, url, fetcher, attempt).await?,
            other => other,
        };
        match state {
            DownloadState::Ready(id) => {
                ctx.recent.keep_pin(batch, url, &id);
                return Ok(id);
            }
            DownloadState::Failed { code, detail } => return Err(failure(code, detail)),
            DownloadState::Wait { until } => {
                let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(left.clamp(Duration::from_millis(20), LOOK_AGAIN)).await;
            }
            DownloadState::Fetch { .. } => unreachable!("fetch reports Ready, Failed or Wait"),
        }
    }
}

/// Downloads `url` for the batch and records the outcome every item will see.
async fn fetch(
    ctx: &Context,
    batch: Uuid,
    url: &str,
    fetcher: Uuid,
    attempt: i32,
) -> Result<DownloadState, JobFailure> {
    let max_attempts = i32::try_from(ctx.settings.job_max_attempts).unwrap_or(i32::MAX);
    match ctx.fetcher.get(url).await {
        Ok(bytes) => {
            let id = db::templates::content_id(&bytes);
            let mut tx = ctx.pool.begin().await.map_err(db_fault)?;
            db::templates::put(&mut tx, &id, &bytes)
                .await
                .map_err(db_fault)?;
            let state = db::batches::download_done(&mut tx, batch, url, fetcher, &id)
                .await
                .map_err(db_fault)?;
            tx.commit().await.map_err(db_fault)?;
            tracing::info!(batch.id = %batch, template.id = %id, "batch template downloaded");
            Ok(state)
        }
        Err(e) => {
            let failure = match e {
                FetchError::Permanent(detail) => DownloadFailure::Permanent { code: 400, detail },
                FetchError::Transient(detail) => {
                    let exponent = u32::try_from(attempt.saturating_sub(1))
                        .unwrap_or(0)
                        .min(16);
                    DownloadFailure::Transient {
                        detail,
                        retry_after: ctx.settings.retry_base_delay * 2u32.pow(exponent),
                    }
                }
            };
            let mut tx = ctx.pool.begin().await.map_err(db_fault)?;
            let state =
                db::batches::download_failed(&mut tx, batch, url, fetcher, &failure, max_attempts)
                    .await
                    .map_err(db_fault)?;
            tx.commit().await.map_err(db_fault)?;
            Ok(state)
        }
    }
}

/// The failure every item naming a URL that failed for good ends with.
fn failure(code: i32, detail: String) -> JobFailure {
    match code {
        400 => JobFailure::BadTemplate(detail),
        _ => JobFailure::Internal(detail),
    }
}

/// A database fault while the download is coordinated: transient.
fn db_fault(e: sqlx::Error) -> JobFailure {
    JobFailure::fault("the batch's template download could not be recorded", e)
}
