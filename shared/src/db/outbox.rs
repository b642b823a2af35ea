//! The transactional outbox: messages are written in the transaction that makes the state they
//! announce, and a relay publishes them after commit.

use std::time::Duration;

use sqlx::{
    Executor as _, PgConnection, PgPool, Postgres,
    postgres::{PgArguments, PgQueryResult},
    query::Query,
};

/// The outbox insert of the messages bound by [`bind_messages`] (`$1`-`$7`), with a condition
/// (`""` for none) its `SELECT` ends with.
macro_rules! insert_sql {
    ($condition:literal) => {
        concat!(
            "INSERT INTO outbox (exchange, routing_key, message_id, content_type, payload,
                                 available_at, traceparent)
             SELECT e, r, m, c, p, now() + make_interval(secs => d), tp
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::float8[],
                         $7::text[])
                  AS t(e, r, m, c, p, d, tp) ",
            $condition
        )
    };
}
pub(crate) use insert_sql;

/// `UPDATE` (a literal, or `concat!` of literals, whose parameters start at `$8`, ending before
/// its `RETURNING`) as one statement that also writes the messages bound by [`bind_messages`],
/// only if the update changed a row; it returns the number of rows changed. It sends no
/// notification: a transaction that notifies commits behind every other notifying
/// transaction's commit, its WAL flush included (PostgreSQL serialises them on one lock), so
/// the hot transitions are announced after their commit instead (`relay::Notifications::committed`).
/// It commits on its own outside a transaction. With `$more` (common table expressions, each
/// preceded by a comma, that may read `changed`) and `$also` (one more column of the answer, a
/// scalar subquery that may read them), the statement also does and answers that.
macro_rules! announced_update_sql {
    ($update:expr) => {
        $crate::db::outbox::announced_update_sql!($update, "", "NULL::bigint")
    };
    ($update:expr, $more:expr, $also:expr) => {
        concat!(
            "WITH changed AS (",
            $update,
            " RETURNING 1), inserted AS (",
            $crate::db::outbox::insert_sql!("WHERE EXISTS (SELECT FROM changed)"),
            ")",
            $more,
            " SELECT count(*), ",
            $also,
            " FROM changed"
        )
    };
}
pub(crate) use announced_update_sql;

/// The channel on which inserts are announced, so the writer's relay wakes at once (in-process
/// for the transitions announced after commit).
pub(crate) const NOTIFY_CHANNEL: &str = "provisioner_outbox";

/// What this process's announcements carry: the relay of the process that wrote the rows is
/// the one that wakes for them (see `relay::outbox_committed`).
pub(crate) fn writer_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    /// Publish no sooner than this after commit (delayed retries).
    pub delay: Duration,
    /// The W3C trace context the message carries as its `traceparent` header.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub attempts: i32,
    pub traceparent: Option<String>,
    /// When it became due: for a job message, when its job was sent (`jobs.sent_at`).
    pub available_at: chrono::DateTime<chrono::Utc>,
}

/// Inserts one message and wakes this process's relay, in one statement.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    msg: &OutboxMessage,
) -> Result<(), sqlx::Error> {
    insert_notifying(conn, std::slice::from_ref(msg), &[]).await
}

/// Inserts many messages in one statement (due at once, or after their delay).
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    msgs: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    insert_notifying(conn, msgs, &[]).await
}

/// Inserts `msgs`, wakes this process's relay and sends the `(channel, payload)`
/// notifications `also`, in one statement: one round trip however many messages a transition
/// writes.
pub(crate) async fn insert_notifying(
    conn: &mut PgConnection,
    msgs: &[OutboxMessage],
    also: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    if msgs.is_empty() && also.is_empty() {
        return Ok(());
    }
    let mut channels = Vec::with_capacity(also.len() + 1);
    let mut notes = Vec::with_capacity(also.len() + 1);
    if !msgs.is_empty() {
        channels.push(NOTIFY_CHANNEL);
        notes.push(writer_tag());
    }
    for (channel, payload) in also {
        channels.push(*channel);
        notes.push(*payload);
    }
    // A data-modifying CTE runs whether or not the query reads it.
    bind_messages(
        sqlx::query(concat!(
            "WITH inserted AS (",
            insert_sql!(""),
            ") SELECT pg_notify(channel, note) FROM UNNEST($8::text[], $9::text[]) AS n(channel, note)"
        )),
        msgs,
    )
    .bind(channels)
    .bind(notes)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Binds `$1`-`$7` of a statement made with [`insert_sql`]: the messages.
pub(crate) fn bind_messages<'q>(
    query: Query<'q, Postgres, PgArguments>,
    msgs: &'q [OutboxMessage],
) -> Query<'q, Postgres, PgArguments> {
    let column = |f: fn(&OutboxMessage) -> &str| msgs.iter().map(f).collect::<Vec<_>>();
    let payloads: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    let delays: Vec<f64> = msgs.iter().map(|m| m.delay.as_secs_f64()).collect();
    let traces: Vec<Option<&str>> = msgs.iter().map(|m| m.traceparent.as_deref()).collect();
    query
        .bind(column(|m| &m.exchange))
        .bind(column(|m| &m.routing_key))
        .bind(column(|m| &m.message_id))
        .bind(column(|m| &m.content_type))
        .bind(payloads)
        .bind(delays)
        .bind(traces)
}

/// Locks up to `limit` due messages, oldest first, skipping those another relay holds.
pub(crate) async fn lock_due(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, exchange, routing_key, message_id, content_type, payload, attempts, traceparent,
                available_at
         FROM outbox WHERE available_at <= now()
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub(crate) async fn delete(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<PgQueryResult, sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await
}

/// What [`vacuum`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vacuumed {
    /// The table was vacuumed (or another vacuum was at work on it: skipped without waiting).
    Done,
    /// Nothing to do: another process vacuumed it within the interval asked, and no cut was
    /// due.
    Nothing,
    /// This session's user may not vacuum it (it owns neither the table nor the database).
    NotAllowed,
}

/// What a relay asks of [`vacuum`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct VacuumAsk {
    /// Reclaim the dead rows, unless any process vacuumed the table within this interval.
    pub(crate) reclaim: Option<Duration>,
    /// Also cut the table's empty end, if it is larger than this many bytes and holds no row
    /// now (a backlog's leftover on an idle system).
    pub(crate) trim_above: Option<i64>,
}

/// Reclaims the outbox's dead rows. Every message's row is deleted within milliseconds of its
/// commit, and autovacuum visits a database at most once a minute, so without this every relay
/// pass walks the dead entries of the minute (see docs/performance.md, "The outbox's dead
/// rows").
///
/// Runs outside any transaction (as `VACUUM` must); `SKIP_LOCKED` passes when another vacuum of
/// the table is at work. Only a cut (`trim_above`) removes the table's empty end, for which
/// PostgreSQL takes the lock every writer of the outbox queues behind (only if it is free,
/// trying for up to 5 s meanwhile, and giving it up as soon as anyone waits): so only for a
/// large table that is empty at that moment. PostgreSQL says why it skipped a table with a
/// `WARNING`; the session hears errors only while it vacuums, so a skip is not logged every
/// second, and a session that failed meanwhile is closed rather than handed out with that
/// setting.
pub(crate) async fn vacuum(pool: &PgPool, ask: VacuumAsk) -> Result<Vacuumed, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (allowed, recent, trim): (bool, bool, bool) = sqlx::query_as(
        "SELECT pg_has_role(c.relowner, 'USAGE')
                OR pg_has_role((SELECT datdba FROM pg_database
                                WHERE datname = current_database()), 'USAGE'),
                coalesce(greatest(s.last_vacuum, s.last_autovacuum)
                         > now() - make_interval(secs => $1), false),
                $2::bigint IS NOT NULL AND pg_relation_size(c.oid) > $2
                AND NOT EXISTS (SELECT 1 FROM outbox)
         FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE c.oid = 'outbox'::regclass",
    )
    .bind(ask.reclaim.map_or(0.0, |d| d.as_secs_f64()))
    .bind(ask.trim_above)
    .fetch_one(&mut *conn)
    .await?;
    if !allowed {
        return Ok(Vacuumed::NotAllowed);
    }
    if !trim && (ask.reclaim.is_none() || recent) {
        return Ok(Vacuumed::Nothing);
    }
    match vacuum_quietly(&mut conn, trim).await {
        Ok(()) => Ok(Vacuumed::Done),
        Err(e) => {
            let _ = conn.close().await;
            Err(e)
        }
    }
}

/// The vacuum, with the session's `WARNING`s unheard meanwhile. Statements without parameters,
/// so sent as simple queries: `VACUUM` runs outside any transaction.
async fn vacuum_quietly(conn: &mut PgConnection, truncate: bool) -> Result<(), sqlx::Error> {
    conn.execute("SET client_min_messages = error").await?;
    conn.execute(if truncate {
        "VACUUM (SKIP_LOCKED) outbox"
    } else {
        "VACUUM (SKIP_LOCKED, TRUNCATE false) outbox"
    })
    .await?;
    conn.execute("RESET client_min_messages").await.map(drop)
}

/// Leaves a message that the broker did not confirm for a later try.
pub(crate) async fn postpone(
    conn: &mut PgConnection,
    id: i64,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1,
                due_at = coalesce(due_at, available_at),
                available_at = now() + make_interval(secs => $2)
         WHERE id = $1",
    )
    .bind(id)
    .bind(delay.as_secs_f64())
    .execute(conn)
    .await
    .map(drop)
}

/// Age in seconds of the oldest message due and not published (0 when none): the relay's lag.
/// A message put off after a failed try counts from when it was first due, not from its next
/// try (which a broker that keeps refusing moves on and on).
pub async fn lag_seconds(conn: &mut PgConnection) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - least(
             (SELECT min(available_at) FROM outbox WHERE available_at <= now()),
             (SELECT min(due_at) FROM outbox WHERE due_at IS NOT NULL)))::float8, 0)",
    )
    .fetch_one(conn)
    .await
}
