//! All SQL of the system. Free functions take an executor or a connection; callers own the
//! transaction.

pub mod access_numbers;
pub mod batches;
pub mod clients;
pub mod dashboard;
pub mod figures;
pub mod idempotency;
pub mod jobs;
pub mod locks;
pub mod outbox;
pub mod retention;
pub(crate) mod secrets;
pub mod templates;
pub mod tenants;

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    ConnectOptions, Connection, Executor, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

/// How a process wants its pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub application_name: &'static str,
    /// Sessions idle inside a transaction longer than this are ended by the server, so a hung
    /// or partitioned process never keeps a lock (see `session_settings`).
    pub idle_in_transaction_timeout: Option<Duration>,
    /// When the process watches its database (the worker), the silences it hears: the pool
    /// never uses a session opened before the last one again (see `Silences`).
    pub silences: Option<Silences>,
}

/// When this process's database last went silent: a probe of it sent then got no answer in
/// time. A session opened before that may have lost an answer for good: a middlebox that lost
/// the connection's state drops whatever comes, and the client, waiting to read, never learns
/// of it (sqlx's sockets have no keepalive). Such a session is closed, without a round trip,
/// when it comes back to its pool or is next taken from it; its statement's caller is released
/// by the worker's abandonment of the jobs in flight (`consumer::abandon_after_silences`).
#[derive(Debug, Clone, Default)]
pub struct Silences(Arc<Mutex<Option<Instant>>>);

impl Silences {
    /// A probe sent at `sent` went unanswered.
    pub fn record(&self, sent: Instant) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(Some(sent));
    }

    /// Whether a session `age` old was opened before the last silence began.
    pub fn predate(&self, age: Duration) -> bool {
        let Some(silence) = *self.0.lock().unwrap_or_else(|e| e.into_inner()) else {
            return false;
        };
        Instant::now()
            .checked_sub(age)
            .is_none_or(|opened| opened <= silence)
    }
}

/// Fails, naming `DATABASE_URL`, when the database `url` names does not exist: for an operator
/// command, which must not create one (with `DATABASE_URL` mistyped or not loaded, its client
/// would be made where no API reads). Other faults are left to `connect`, which retries them.
pub async fn require_database(url: &SecretString) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url.expose_secret())?;
    // While PostgreSQL is unreachable, tried for a minute, as `connect` does: what it answers
    // then decides (`connect` would make a missing database).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match PgConnection::connect_with(&options).await {
            Ok(session) => return Ok(session.close().await?),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                anyhow::bail!(
                    "the database {:?} does not exist: DATABASE_URL must name the API's \
                     database (these commands read the environment, not .env: `set -a; . \
                     ./.env; set +a` loads it); the API makes its database at its first start",
                    options
                        .get_database()
                        .unwrap_or_else(|| options.get_username())
                )
            }
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects, creating the database when it does not exist, and applies pending migrations.
/// While PostgreSQL is unreachable it keeps trying for a minute, so a process may start first.
pub async fn connect(url: &SecretString, config: &PoolConfig) -> anyhow::Result<PgPool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match try_connect(url, config).await {
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.downcast_ref::<sqlx::Error>().is_some_and(is_transient) =>
            {
                tracing::warn!(error = %e, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result,
        }
    }
}

async fn try_connect(url: &SecretString, config: &PoolConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose_secret())?
        .application_name(config.application_name)
        .log_statements(tracing::log::LevelFilter::Trace)
        .options(session_settings(config.idle_in_transaction_timeout));
    create_database_if_missing(&options).await?;
    let pool = pool_options(config.max_connections, config.silences.clone())
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// How long a silent peer of a session over TCP goes unnoticed by the server: probes after 10 s
/// without a byte either way, every 5 s, 3 unanswered (25 s). Only a session with nothing in
/// flight is probed: an answer the server sent and the network lost is retransmitted as long as
/// the kernel's default allows (no `tcp_user_timeout`), so a partition that heals within it
/// loses no answer the client waits for (its socket has no keepalive of its own: sqlx sets
/// none, and a client waiting for an answer from a server that gave up would wait for ever).
const TCP_KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// The settings every session of a pool starts with (startup options: no round trip). However a
/// process is lost, PostgreSQL ends its sessions and their transactions, which frees their
/// locks: a killed process's socket closes, and a session waiting for a lock notices within a
/// second (`client_connection_check_interval`); a partitioned one by the keepalives above when
/// its session waits for it; and a session idle inside a transaction (its process hung, or its
/// last answer lost) after `idle_in_transaction`.
fn session_settings(idle_in_transaction: Option<Duration>) -> Vec<(&'static str, String)> {
    let mut settings: Vec<(&'static str, String)> = TCP_KEEPALIVES
        .iter()
        .map(|&(name, value)| (name, value.to_owned()))
        .collect();
    settings.push(("client_connection_check_interval", "1000".to_owned()));
    if let Some(idle) = idle_in_transaction {
        settings.push((
            "idle_in_transaction_session_timeout",
            idle.as_millis().to_string(),
        ));
    }
    settings
}

/// A connection idle at least this long is tested (a round trip) before it is handed out.
const TEST_IDLE_AFTER: Duration = Duration::from_secs(1);
/// How long that test waits for its answer.
const TEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What every pool shares. sqlx tests each idle connection with a round trip before handing it
/// out (and again when it comes back): under load, a connection is idle for microseconds, and
/// that test doubled the round trips of every statement run on the pool. Only a connection idle
/// a second or more is tested now (one PostgreSQL may have closed while it sat, say across a
/// restart); the test on return stays (sqlx always makes it), so a connection broken while in
/// use is not handed out again either. The price: one used within a second of a restart fails
/// its statement at once (a transient error, retried like any other) instead of being replaced
/// before it. With `silences`, a session opened before the database's last silence is closed
/// instead, both when taken and when given back: the test on return would wait for ever for
/// the answer such a session lost, holding its place in the pool. A connection given back
/// drops the buffer space its largest message took.
fn pool_options(max_connections: u32, silences: Option<Silences>) -> PgPoolOptions {
    let distrusted = silences.clone();
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let distrusted = distrusted.as_ref().is_some_and(|s| s.predate(meta.age));
            Box::pin(async move {
                if distrusted {
                    return Ok(false);
                }
                if meta.idle_for < TEST_IDLE_AFTER {
                    return Ok(true);
                }
                // A connection the network lost without a word would never answer: after
                // `TEST_TIMEOUT` it is closed and a new one opened (all within the acquire's
                // timeout).
                match tokio::time::timeout(TEST_TIMEOUT, conn.ping()).await {
                    Ok(answer) => answer.map(|()| true),
                    Err(_) => Ok(false),
                }
            })
        });
    options.after_release(move |conn, meta| {
        // A connection keeps the buffers its largest message grew (a tenant's documents, a
        // stored template: tens of MiB), for as long as it lives; given back, its send buffer
        // is cut to its last messages' length, at most 8 KiB, and its spare receive space to
        // 8 KiB. That is a small reallocation at most releases (a fraction of a microsecond
        // beside the statement's round trip), and a large message after it grows the buffer
        // again by doubling.
        conn.shrink_buffers();
        let keep = silences.as_ref().is_none_or(|s| !s.predate(meta.age));
        Box::pin(async move { Ok(keep) })
    })
}

/// How long a session of a `generic_plan_pool` lives, and so its plans (checked as it is given
/// back, and every `GENERIC_PLAN_AGE` while it sits idle). Rare: each renewal takes a server
/// connection, which a full server may refuse for a while.
const GENERIC_PLAN_AGE: Duration = Duration::from_secs(600);

/// A small pool beside `pool`, to the same database, whose sessions always use the generic plan
/// of a prepared statement (`plan_cache_mode = force_generic_plan`): for a statement run
/// constantly whose best plan does not depend on its parameters, such as the one that records
/// creates, PostgreSQL otherwise plans it afresh at every execution (a custom plan looks
/// cheaper for arrays of a known length), and planning costs more than running it.
///
/// Such a plan is made from what the tables held when it was made, and kept. So that one made
/// while they were small does not scan them whole as they grow, the sessions plan without
/// sequential scans where an index serves (a lookup costs about the same on a small table), and
/// each is replaced after `GENERIC_PLAN_AGE`, its plans made again from the tables' sizes then.
pub fn generic_plan_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options()).clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ]);
    // The sessions start as `pool`'s do: a statement waiting on a lock ends once its client is
    // gone, instead of committing what nobody will hear of.
    pool_options(max_connections, None)
        .max_lifetime(GENERIC_PLAN_AGE)
        .connect_lazy_with(options)
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match admin.execute(sql.as_str()).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another replica created it first (PostgreSQL reports the race as either code).
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// The template `dbVersion`: the version of the newest applied migration.
pub async fn schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// Does the database answer? (Readiness probes.)
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// This process's clock at the precision PostgreSQL keeps (microseconds): for times a statement
/// writes whose event is built before it runs, so that the event and the row agree.
pub fn clock() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Is the error a violation of the named constraint or unique index?
pub fn violates(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.constraint() == Some(constraint))
}

/// Did PostgreSQL refuse a value: a data exception (SQLSTATE class 22: a NUL character for
/// `jsonb`, a number out of range) or a program limit (54: a value too large to index)?
pub fn refused_value(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e)
        if e.code().is_some_and(|c| c.starts_with("22") || c.starts_with("54")))
}

/// Is the error one that a retry may cure (connection lost, server shutting down, pool closed)?
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|c| {
            // connection exceptions, serialization failures/deadlocks, admin shutdown
            c.starts_with("08") || c == "40001" || c == "40P01" || c.starts_with("57P")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sessions_opened_before_the_last_silence_are_distrusted() {
        let silences = Silences::default();
        assert!(
            !silences.predate(Duration::from_secs(3600)),
            "no silence yet"
        );
        silences.record(Instant::now() - Duration::from_secs(5));
        assert!(silences.predate(Duration::from_secs(6)));
        assert!(!silences.predate(Duration::from_secs(4)));
        // An earlier silence recorded late does not move the last one back.
        silences.record(Instant::now() - Duration::from_secs(60));
        assert!(!silences.predate(Duration::from_secs(4)));
        assert!(silences.predate(Duration::from_secs(6)));
    }
}
