//! One download per batch and template URL: the first item that needs the URL takes the fetch
//! lease and stores the bytes; every other item waits for them, or for the failure, which is
//! the same for all. Transient faults are counted for the whole batch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// What an item that needs a batch's template URL should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadState {
    /// Read this stored template.
    Ready(String),
    /// The download failed for good: the item fails with this code and detail.
    Failed { code: i32, detail: String },
    /// Fetch it now (this is attempt `attempt` for the batch), then report with
    /// `download_done` or `download_failed` under the same fetcher id.
    Fetch { attempt: i32 },
    /// Another item fetches it, or the next try is not due: look again at `until` at the latest.
    Wait { until: DateTime<Utc> },
}

/// Why a fetch failed.
#[derive(Debug, Clone)]
pub enum DownloadFailure {
    /// For good (a 4xx, not a template...): every item fails with `code`.
    Permanent { code: i32, detail: String },
    /// Worth another try after `retry_after`, unless the batch's attempts are spent.
    Transient {
        detail: String,
        retry_after: Duration,
    },
}

#[derive(sqlx::FromRow)]
struct Row {
    template_id: Option<String>,
    failure_code: Option<i32>,
    failure_detail: Option<String>,
    fetch_until: Option<DateTime<Utc>>,
    next_try_at: DateTime<Utc>,
    attempts: i32,
    now: DateTime<Utc>,
}

/// Where the download of `url` for `batch_id` stands; takes the fetch lease (for `lease`) for
/// `fetcher` when a try is due and nobody holds it. The caller commits right after.
pub async fn download_state(
    conn: &mut PgConnection,
    batch_id: Uuid,
    url: &str,
    fetcher: Uuid,
    lease: Duration,
    max_attempts: i32,
) -> Result<DownloadState, sqlx::Error> {
    sqlx::query(
        "INSERT INTO batch_downloads (batch_id, url) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(batch_id)
    .bind(url)
    .execute(&mut *conn)
    .await?;
    let row: Row = sqlx::query_as(
        "SELECT template_id, failure_code, failure_detail, fetch_until, next_try_at, attempts,
                now() AS now
         FROM batch_downloads WHERE batch_id = $1 AND url = $2 FOR UPDATE",
    )
    .bind(batch_id)
    .bind(url)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(id) = row.template_id {
        return Ok(DownloadState::Ready(id));
    }
    if let Some(code) = row.failure_code {
        return Ok(DownloadState::Failed {
            code,
            detail: row.failure_detail.unwrap_or_default(),
        });
    }
    if let Some(until) = row.fetch_until.filter(|u| *u > row.now) {
        return Ok(DownloadState::Wait { until });
    }
    if row.next_try_at > row.now {
        return Ok(DownloadState::Wait {
            until: row.next_try_at,
        });
    }
    if row.attempts >= max_attempts {
        // The last attempt's fetcher did not report within its lease (it died, or stalled):
        // nobody will; fail for all.
        let detail = out_of_attempts(row.attempts, "it did not end within its lease");
        record_failure(conn, batch_id, url, 500, &detail).await?;
        return Ok(DownloadState::Failed { code: 500, detail });
    }
    let attempt: i32 = sqlx::query_scalar(
        "UPDATE batch_downloads SET fetcher = $3, attempts = attempts + 1,
                fetch_until = now() + make_interval(secs => $4)
         WHERE batch_id = $1 AND url = $2 RETURNING attempts",
    )
    .bind(batch_id)
    .bind(url)
    .bind(fetcher)
    .bind(lease.as_secs_f64())
    .fetch_one(&mut *conn)
    .await?;
    Ok(DownloadState::Fetch { attempt })
}

/// The fetch by `fetcher` succeeded: the bytes are stored as `template_id` (the caller stored
/// them in this transaction) and pinned to the batch.
pub async fn download_done(
    conn: &mut PgConnection,
    batch_id: Uuid,
    url: &str,
    fetcher: Uuid,
    template_id: &str,
) -> Result<DownloadState, sqlx::Error> {
    let recorded = sqlx::query(
        "UPDATE batch_downloads SET template_id = $3, fetcher = NULL, fetch_until = NULL
         WHERE batch_id = $1 AND url = $2 AND fetcher = $4
           AND template_id IS NULL AND failure_code IS NULL",
    )
    .bind(batch_id)
    .bind(url)
    .bind(template_id)
    .bind(fetcher)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if recorded == 0 {
        // This fetcher's lease ran out and another took over: its outcome stands.
        return current(conn, batch_id, url).await;
    }
    super::pin_templates(conn, batch_id, &[template_id.to_owned()]).await?;
    Ok(DownloadState::Ready(template_id.to_owned()))
}

/// The outcome recorded for `url`, or a short wait when it is still being fetched.
async fn current(
    conn: &mut PgConnection,
    batch_id: Uuid,
    url: &str,
) -> Result<DownloadState, sqlx::Error> {
    let row: Row = sqlx::query_as(
        "SELECT template_id, failure_code, failure_detail, fetch_until, next_try_at, attempts,
                now() AS now
         FROM batch_downloads WHERE batch_id = $1 AND url = $2",
    )
    .bind(batch_id)
    .bind(url)
    .fetch_one(conn)
    .await?;
    Ok(match (row.template_id, row.failure_code) {
        (Some(id), _) => DownloadState::Ready(id),
        (None, Some(code)) => DownloadState::Failed {
            code,
            detail: row.failure_detail.unwrap_or_default(),
        },
        (None, None) => DownloadState::Wait {
            until: row.fetch_until.unwrap_or(row.next_try_at).max(row.now),
        },
    })
}

/// The fetch by `fetcher` failed: for good, or for now (the batch's last attempt makes it
/// final, code 500). Returns the state every item now sees.
pub async fn download_failed(
    conn: &mut PgConnection,
    batch_id: Uuid,
    url: &str,
    fetcher: Uuid,
    failure: &DownloadFailure,
    max_attempts: i32,
) -> Result<DownloadState, sqlx::Error> {
    // The attempts made, this one included (a fetcher whose lease ran out counts its own).
    let holds: Option<i32> = sqlx::query_scalar(
        "SELECT attempts FROM batch_downloads WHERE batch_id = $1 AND url = $2 AND fetcher = $3
           AND template_id IS NULL AND failure_code IS NULL
         FOR UPDATE",
    )
    .bind(batch_id)
    .bind(url)
    .bind(fetcher)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(attempts) = holds else {
        // This fetcher's lease ran out and another took over: its outcome stands.
        return current(conn, batch_id, url).await;
    };
    match failure {
        DownloadFailure::Permanent { code, detail } => {
            record_failure(conn, batch_id, url, *code, detail).await?;
            Ok(DownloadState::Failed {
                code: *code,
                detail: detail.clone(),
            })
        }
        DownloadFailure::Transient {
            detail,
            retry_after,
        } => {
            let until: Option<DateTime<Utc>> = sqlx::query_scalar(
                "UPDATE batch_downloads SET fetcher = NULL, fetch_until = NULL,
                        next_try_at = now() + make_interval(secs => $3)
                 WHERE batch_id = $1 AND url = $2 AND attempts < $4
                 RETURNING next_try_at",
            )
            .bind(batch_id)
            .bind(url)
            .bind(retry_after.as_secs_f64())
            .bind(max_attempts)
            .fetch_optional(&mut *conn)
            .await?;
            match until {
                Some(until) => Ok(DownloadState::Wait { until }),
                None => {
                    let detail = out_of_attempts(attempts, detail);
                    record_failure(conn, batch_id, url, 500, &detail).await?;
                    Ok(DownloadState::Failed { code: 500, detail })
                }
            }
        }
    }
}

/// The fault of a download out of attempts, as a single create's last transient fault says it:
/// how many were made, and the last one's fault.
fn out_of_attempts(attempts: i32, last: &str) -> String {
    format!(
        "the batch's template download failed {attempts} times with transient faults; the last: {last}"
    )
}

async fn record_failure(
    conn: &mut PgConnection,
    batch_id: Uuid,
    url: &str,
    code: i32,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batch_downloads SET failure_code = $3, failure_detail = $4, fetcher = NULL,
                fetch_until = NULL
         WHERE batch_id = $1 AND url = $2",
    )
    .bind(batch_id)
    .bind(url)
    .bind(code)
    .bind(crate::domain::storable(detail))
    .execute(conn)
    .await
    .map(drop)
}
