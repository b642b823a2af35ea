//! The import lock: PostgreSQL advisory transaction locks with namespaced 64-bit keys computed in
//! SQL, so an operator can take the same lock by hand.

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use uuid::Uuid;

/// One advisory lock key of the contract.
#[derive(Debug, Clone, Copy)]
pub enum LockKey<'a> {
    /// `hashtextextended('provisioner:import', 0)`: one import at a time cluster-wide.
    Global,
    /// `hashtextextended('provisioner:tenant:' || url, 0)`.
    Tenant(&'a str),
}

impl LockKey<'_> {
    fn text(&self) -> String {
        match self {
            LockKey::Global => "provisioner:import".to_owned(),
            LockKey::Tenant(url) => format!("provisioner:tenant:{}", url.to_ascii_lowercase()),
        }
    }
}

/// Takes `keys` in order inside the current transaction, waiting `wait` in all (zero: do not
/// wait). Returns `false` when the wait ran out; the transaction is then aborted and must be
/// rolled back. The wait bound covers only these locks: `lock_timeout` is reset afterwards.
pub async fn acquire(
    conn: &mut PgConnection,
    keys: &[LockKey<'_>],
    wait: Duration,
) -> Result<bool, sqlx::Error> {
    let deadline = Instant::now() + wait;
    // The common case, a free lock, costs one statement: the timeout is set only to wait.
    let mut keys = keys.iter().peekable();
    while let Some(key) = keys.peek() {
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key.text())
                .fetch_one(&mut *conn)
                .await?;
        if !got {
            break;
        }
        keys.next();
    }
    if keys.peek().is_none() {
        return Ok(true);
    }
    if wait.is_zero() {
        // The busy key was just tried.
        return Ok(false);
    }
    for key in keys {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let remaining_ms = remaining.as_millis();
        if remaining_ms == 0 {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(key.text())
                    .fetch_one(&mut *conn)
                    .await?;
            if !got {
                return Ok(false);
            }
            continue;
        }
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{remaining_ms}ms"))
            .execute(&mut *conn)
            .await?;
        let taken = sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key.text())
            .execute(&mut *conn)
            .await;
        match taken {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    sqlx::query("SET LOCAL lock_timeout TO DEFAULT")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// For a job tried before its claim: locks the job's row, if it is still queued at `version`,
/// then tries `key` (no wait), in one statement of the current transaction. `None`: the job
/// changed since it was read (claimed, cancelled); `Some(false)`: the lock is busy (the
/// transaction must then be rolled back). Holding the row until the transaction ends makes a
/// claim, a cancel or another try of the job that comes during the write wait for it and then
/// find the job ended (or queued still, if the try rolls back), instead of taking the job over
/// while its import runs. One key: a try is made only under the tenant lock mode.
pub async fn try_for_queued_job(
    conn: &mut PgConnection,
    job: Uuid,
    version: i32,
    key: LockKey<'_>,
) -> Result<Option<bool>, sqlx::Error> {
    // The row is locked (by the materialized expression) before the lock is tried, and the lock
    // is tried only for a row it returns.
    sqlx::query_scalar(
        "WITH job AS MATERIALIZED (
             SELECT id FROM jobs WHERE id = $1 AND status = 'queued' AND version = $2
             FOR NO KEY UPDATE)
         SELECT pg_try_advisory_xact_lock(hashtextextended($3, 0)) FROM job",
    )
    .bind(job)
    .bind(version)
    .bind(key.text())
    .fetch_optional(conn)
    .await
}

/// Runs a statement in the lock holder's transaction, so the server's idle-in-transaction
/// timeout does not end it (and its locks) while its holder works on another connection.
pub async fn keep_alive(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(drop)
}
