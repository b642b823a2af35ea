//! A new tenant and its configuration (objects, users, calling lists, audit history), written
//! by one statement: the rows go to the database as `jsonb` records read by
//! `jsonb_to_recordset`, one round trip whatever the template holds. Export Tenant reads them
//! back a page at a time (`export`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::TenantRow;
use crate::template::{AuditEntry, CallingListEntry, JsonDoc, ObjectEntry, UserEntry};

/// What a new tenant holds besides its own row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Contents<'a> {
    pub objects: &'a [ObjectEntry],
    pub users: &'a [UserEntry],
    pub calling_lists: &'a [CallingListEntry],
    /// Inserted in this order (the log's ids follow it).
    pub audit: &'a [AuditEntry],
}

/// Inserts an Inactive tenant and `contents`, unless a tenant with its URL or id exists
/// (`false`: nothing inserted). A SIP domain another tenant has, a tenant inserted
/// concurrently, or a kept id another tenant uses is a unique violation for the caller.
///
/// One statement: each part's insert reads the tenant's from its common table expression, so
/// nothing of the contents is written when the tenant is not (the foreign keys are checked at
/// the statement's end, when the tenant's row is there).
pub async fn insert(
    conn: &mut PgConnection,
    tenant: &TenantRow,
    contents: Contents<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted: i64 = sqlx::query_scalar(
        "WITH tenant AS (
             INSERT INTO tenants (id, url, name, sip_domain, status, settings, created_at)
             SELECT $1, $2, $3, $4, 'Inactive', $5, $6
             WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE url = $2)
               AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = $1)
             RETURNING id
         ), objects AS (
             INSERT INTO config_objects (id, tenant_id, position, kind, name, data, refs)
             SELECT x.id, tenant.id, x.position, x.kind, x.name, x.data, x.refs
             FROM tenant, jsonb_to_recordset($7) AS x(id uuid, position int, kind text,
                  name text, data jsonb, refs uuid[])
         ), users AS (
             INSERT INTO users (id, tenant_id, position, login_id, first_name, last_name, email,
                                roles, password_hash, teams)
             SELECT x.id, tenant.id, x.position, x.login_id, x.first_name, x.last_name, x.email,
                    x.roles, x.password_hash, x.teams
             FROM tenant, jsonb_to_recordset($8) AS x(id uuid, position int, login_id text,
                  first_name text, last_name text, email text, roles jsonb, password_hash text,
                  teams uuid[])
         ), lists AS (
             INSERT INTO calling_lists (id, tenant_id, position, name, entries)
             SELECT x.id, tenant.id, x.position, x.name, x.entries
             FROM tenant, jsonb_to_recordset($9) AS x(id uuid, position int, name text,
                  entries jsonb)
         ), audit AS (
             INSERT INTO audit_log (tenant_id, at, actor, action, object, details)
             SELECT tenant.id, x.at, x.actor, x.action, x.object, x.details
             FROM tenant, jsonb_to_recordset($10) AS x(n int, at timestamptz, actor text,
                  action text, object text, details jsonb)
             ORDER BY x.n
         )
         SELECT count(*) FROM tenant",
    )
    .bind(tenant.id)
    .bind(&tenant.url)
    .bind(&tenant.name)
    .bind(&tenant.sip_domain)
    .bind(&tenant.settings)
    .bind(tenant.created_at)
    .bind(Json(objects(contents.objects)))
    .bind(Json(users(contents.users)))
    .bind(Json(calling_lists(contents.calling_lists)))
    .bind(Json(audit(contents.audit)))
    .fetch_one(conn)
    .await?;
    Ok(inserted == 1)
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

fn objects(objects: &[ObjectEntry]) -> Vec<ObjectRecord<'_>> {
    objects
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
        .collect()
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

fn users(users: &[UserEntry]) -> Vec<UserRecord<'_>> {
    users
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
        .collect()
}

/// Typed records: the entries' JSON text goes to the database as it is, never as a tree.
#[derive(Serialize)]
struct CallingListRecord<'a> {
    id: Uuid,
    position: usize,
    name: &'a str,
    entries: &'a JsonDoc,
}

fn calling_lists(lists: &[CallingListEntry]) -> Vec<CallingListRecord<'_>> {
    lists
        .iter()
        .enumerate()
        .map(|(i, l)| CallingListRecord {
            id: l.id,
            position: i,
            name: &l.name,
            entries: &l.entries,
        })
        .collect()
}

#[derive(Serialize)]
struct AuditRecord<'a> {
    n: usize,
    at: DateTime<Utc>,
    actor: &'a str,
    action: &'a str,
    object: &'a str,
    details: &'a JsonDoc,
}

fn audit(audit: &[AuditEntry]) -> Vec<AuditRecord<'_>> {
    audit
        .iter()
        .enumerate()
        .map(|(i, a)| AuditRecord {
            n: i,
            at: a.at,
            actor: &a.actor,
            action: &a.action,
            object: &a.object,
            details: &a.details,
        })
        .collect()
}
