//! Tenants and their configuration: users, objects, calling lists and audit history. Bulk
//! inserts go through `jsonb_to_recordset`, one round trip per table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgExecutor, types::Json};
use uuid::Uuid;

use crate::{
    domain::{AuditAction, TenantStatus},
    template::{AuditEntry, CallingListEntry, ObjectEntry, UserEntry},
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub url: String,
    pub name: String,
    pub sip_domain: String,
    pub status: TenantStatus,
    pub settings: Value,
    pub created_at: DateTime<Utc>,
}

pub async fn find_by_url(
    exec: impl PgExecutor<'_>,
    url: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, url, name, sip_domain, status, settings, created_at FROM tenants WHERE url = $1")
        .bind(url)
        .fetch_optional(exec)
        .await
}

pub async fn exists(exec: impl PgExecutor<'_>, url: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE url = $1)")
        .bind(url)
        .fetch_one(exec)
        .await
}

/// Inserts an Inactive tenant. A taken URL or SIP domain is a unique violation for the caller.
pub async fn insert(conn: &mut PgConnection, t: &TenantRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenants (id, url, name, sip_domain, status, settings, created_at)
         VALUES ($1, $2, $3, $4, 'Inactive', $5, $6)",
    )
    .bind(t.id)
    .bind(&t.url)
    .bind(&t.name)
    .bind(&t.sip_domain)
    .bind(&t.settings)
    .bind(t.created_at)
    .execute(conn)
    .await
    .map(drop)
}

#[derive(Serialize)]
struct UserRecord<'a> {
    id: Uuid,
    position: i32,
    login_id: &'a str,
    first_name: &'a str,
    last_name: &'a str,
    email: &'a str,
    roles: &'a [String],
    password_hash: Option<&'a str>,
    teams: &'a [Uuid],
}

pub async fn insert_users(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    users: &[UserEntry],
) -> Result<(), sqlx::Error> {
    let records: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| UserRecord {
            id: u.id,
            position: i as i32,
            login_id: &u.login_id,
            first_name: &u.first_name,
            last_name: &u.last_name,
            email: &u.email,
            roles: &u.roles,
            password_hash: u.password_hash.as_deref(),
            teams: &u.teams,
        })
        .collect();
    sqlx::query(
        "INSERT INTO users (id, tenant_id, position, login_id, first_name, last_name, email, roles, password_hash, teams)
         SELECT id, $1, position, login_id, first_name, last_name, email, roles, password_hash, teams
         FROM jsonb_to_recordset($2) AS x(id uuid, position int, login_id text, first_name text,
              last_name text, email text, roles jsonb, password_hash text, teams uuid[])",
    )
    .bind(tenant_id)
    .bind(Json(records))
    .execute(conn)
    .await
    .map(drop)
}

#[derive(Serialize)]
struct ObjectRecord<'a> {
    id: Uuid,
    position: i32,
    kind: &'a str,
    name: &'a str,
    data: &'a Map<String, Value>,
    refs: &'a [Uuid],
}

pub async fn insert_objects(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    objects: &[ObjectEntry],
) -> Result<(), sqlx::Error> {
    let records: Vec<_> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| ObjectRecord {
            id: o.id,
            position: i as i32,
            kind: &o.kind,
            name: &o.name,
            data: &o.data,
            refs: &o.refs,
        })
        .collect();
    sqlx::query(
        "INSERT INTO config_objects (id, tenant_id, position, kind, name, data, refs)
         SELECT id, $1, position, kind, name, data, refs
         FROM jsonb_to_recordset($2) AS x(id uuid, position int, kind text, name text, data jsonb, refs uuid[])",
    )
    .bind(tenant_id)
    .bind(Json(records))
    .execute(conn)
    .await
    .map(drop)
}

pub async fn insert_calling_lists(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    lists: &[CallingListEntry],
) -> Result<(), sqlx::Error> {
    let records: Vec<Value> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!({"id": l.id, "position": i, "name": l.name, "entries": l.entries}))
        .collect();
    sqlx::query(
        "INSERT INTO calling_lists (id, tenant_id, position, name, entries)
         SELECT id, $1, position, name, entries
         FROM jsonb_to_recordset($2) AS x(id uuid, position int, name text, entries jsonb)",
    )
    .bind(tenant_id)
    .bind(Json(records))
    .execute(conn)
    .await
    .map(drop)
}

pub async fn insert_audit(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    audit: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    let records: Vec<Value> = audit
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"n": i, "at": a.at, "actor": a.actor, "action": a.action, "object": a.object, "details": a.details}))
        .collect();
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, at, actor, action, object, details)
         SELECT $1, at, actor, action, object, details
         FROM jsonb_to_recordset($2) AS x(n int, at timestamptz, actor text, action text, object text, details jsonb)
         ORDER BY n",
    )
    .bind(tenant_id)
    .bind(Json(records))
    .execute(conn)
    .await
    .map(drop)
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    login_id: String,
    first_name: String,
    last_name: String,
    email: String,
    roles: Json<Vec<String>>,
    password_hash: Option<String>,
    teams: Vec<Uuid>,
}

pub async fn users(
    exec: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<UserEntry>, sqlx::Error> {
    let rows: Vec<UserRow> = sqlx::query_as(
        "SELECT id, login_id, first_name, last_name, email, roles, password_hash, teams
         FROM users WHERE tenant_id = $1 ORDER BY position, login_id",
    )
    .bind(tenant_id)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|u| UserEntry {
            id: u.id,
            login_id: u.login_id,
            first_name: u.first_name,
            last_name: u.last_name,
            email: u.email,
            roles: u.roles.0,
            password_hash: u.password_hash,
            teams: u.teams,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct ObjectRow {
    id: Uuid,
    kind: String,
    name: String,
    data: Json<Map<String, Value>>,
    refs: Vec<Uuid>,
}

pub async fn objects(
    exec: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<ObjectEntry>, sqlx::Error> {
    let rows: Vec<ObjectRow> = sqlx::query_as(
        "SELECT id, kind, name, data, refs FROM config_objects WHERE tenant_id = $1 ORDER BY position, id",
    )
    .bind(tenant_id)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|o| ObjectEntry {
            id: o.id,
            kind: o.kind,
            name: o.name,
            data: o.data.0,
            refs: o.refs,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct CallingListRow {
    id: Uuid,
    name: String,
    entries: Json<Vec<Map<String, Value>>>,
}

pub async fn calling_lists(
    exec: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<CallingListEntry>, sqlx::Error> {
    let rows: Vec<CallingListRow> = sqlx::query_as(
        "SELECT id, name, entries FROM calling_lists WHERE tenant_id = $1 ORDER BY position, id",
    )
    .bind(tenant_id)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|l| CallingListEntry {
            id: l.id,
            name: l.name,
            entries: l.entries.0,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    at: DateTime<Utc>,
    actor: String,
    action: String,
    object: String,
    details: Json<Map<String, Value>>,
}

pub async fn audit(
    exec: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT at, actor, action, object, details FROM audit_log WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(tenant_id)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|a| AuditEntry {
            at: a.at,
            actor: a.actor,
            action: a.action,
            object: a.object,
            details: a.details.0,
        })
        .collect())
}

/// Moves the tenant from `from` to `to`; `false` if it was not in `from`.
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    from: TenantStatus,
    to: TenantStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE tenants SET status = $3 WHERE id = $1 AND status = $2")
        .bind(id)
        .bind(from)
        .bind(to)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What happens to a deleted tenant's access numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumbersOnDelete {
    Delete,
    KeepUnassigned,
}

/// Deletes the tenant with its configuration, calling lists and history.
pub async fn delete(
    conn: &mut PgConnection,
    id: Uuid,
    numbers: NumbersOnDelete,
) -> Result<(), sqlx::Error> {
    let sql = match numbers {
        NumbersOnDelete::Delete => "DELETE FROM access_numbers WHERE tenant_id = $1",
        NumbersOnDelete::KeepUnassigned => {
            "UPDATE access_numbers SET tenant_id = NULL WHERE tenant_id = $1"
        }
    };
    sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Tenants ordered by URL, after `after` (exclusive).
pub async fn list(
    exec: impl PgExecutor<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TenantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, url, name, sip_domain, status, settings, created_at FROM tenants
         WHERE $1::text IS NULL OR url > $1 ORDER BY url LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(exec)
    .await
}

/// Appends one entry to the tenant's audit history.
pub async fn audit_event(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    actor: &str,
    action: AuditAction,
    object: &str,
    details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_log (tenant_id, at, actor, action, object, details) VALUES ($1, now(), $2, $3, $4, $5)")
        .bind(tenant_id)
        .bind(actor)
        .bind(action)
        .bind(object)
        .bind(details)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn url_of(exec: impl PgExecutor<'_>, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT url FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

pub async fn id_exists(exec: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(id)
        .fetch_one(exec)
        .await
}
