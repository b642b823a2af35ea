//! A tenant's configuration: users, objects, calling lists and audit history, written in bulk
//! through `jsonb_to_recordset` (one round trip per table); Export Tenant reads them back a
//! page at a time (`export`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::template::{AuditEntry, CallingListEntry, JsonDoc, ObjectEntry, UserEntry};

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
    if users.is_empty() {
        return Ok(());
    }
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
    data: &'a JsonDoc,
    refs: &'a [Uuid],
}

pub async fn insert_objects(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    objects: &[ObjectEntry],
) -> Result<(), sqlx::Error> {
    if objects.is_empty() {
        return Ok(());
    }
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
    if lists.is_empty() {
        return Ok(());
    }
    // Typed records: the entries' JSON text goes to the database as it is, never as a tree.
    #[derive(Serialize)]
    struct Record<'a> {
        id: Uuid,
        position: usize,
        name: &'a str,
        entries: &'a JsonDoc,
    }
    let records: Vec<Record> = lists
        .iter()
        .enumerate()
        .map(|(i, l)| Record {
            id: l.id,
            position: i,
            name: &l.name,
            entries: &l.entries,
        })
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
    if audit.is_empty() {
        return Ok(());
    }
    #[derive(Serialize)]
    struct Record<'a> {
        n: usize,
        at: DateTime<Utc>,
        actor: &'a str,
        action: &'a str,
        object: &'a str,
        details: &'a JsonDoc,
    }
    let records: Vec<Record> = audit
        .iter()
        .enumerate()
        .map(|(i, a)| Record {
            n: i,
            at: a.at,
            actor: &a.actor,
            action: &a.action,
            object: &a.object,
            details: &a.details,
        })
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
