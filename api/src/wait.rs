//! Waiting for a job to change, woken by the database's job notifications (with a polling
//! fallback), for `Prefer: wait` and long-polling.

use std::time::Duration;

use provisioner_shared::db::{self, jobs::JobRow};
use tokio::{sync::broadcast::error::RecvError, time::Instant};
use uuid::Uuid;

use crate::AppState;

/// Returns the job once `done` holds for it or `deadline` passes; `None` if it does not exist
/// for `owner` (`None`: any client's).
pub async fn until(
    state: &AppState,
    id: Uuid,
    owner: Option<&str>,
    deadline: Instant,
    done: impl Fn(&JobRow) -> bool,
) -> Result<Option<JobRow>, sqlx::Error> {
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let mut changes = state.notifications.subscribe();
    let id_text = id.to_string();
    loop {
        let Some(job) = db::jobs::find(&state.pool, id, owner).await? else {
            return Ok(None);
        };
        if done(&job) || Instant::now() >= deadline {
            return Ok(Some(job));
        }
        let poll = (Instant::now() + Duration::from_secs(2)).min(deadline);
        loop {
            tokio::select! {
                n = changes.recv() => match n {
                    Ok(n) if n.payload == id_text => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => { tokio::time::sleep_until(poll).await; break }
                },
                () = tokio::time::sleep_until(poll) => break,
            }
        }
    }
}
