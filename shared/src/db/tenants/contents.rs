//! A new tenant and its configuration (objects, users, calling lists, audit history), written
//! by one statement, one round trip whatever the template holds: objects and users as
//! documents (`tenant_documents`: parts of `PART_ENTRIES` entries, each a `jsonb` array of
//! the entries as the template writes them), calling lists and history as rows from `jsonb`
//! records read by `jsonb_to_recordset`. Export Tenant reads them back a page at a time
//! (`export`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::{PART_ENTRIES, TenantRow};
use crate::template::{AuditEntry, CallingListEntry, JsonDoc, ObjectEntry, UserEntry};

/// What a new tenant holds besides its own row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Contents<'a> {
    /// The tenant's settings as the template writes them (`None`: `{}`): stored from their
    /// text, so a number no `f64` holds (`18446744073709551617`) is kept exactly.
    pub settings: Option<&'a JsonDoc>,
    pub objects: &'a [ObjectEntry],
    pub users: &'a [UserEntry],
    pub calling_lists: &'a [CallingListEntry],
    /// Inserted in this order (the log's ids follow it).
    pub audit: &'a [AuditEntry],
}

/// Inserts an Inactive tenant and `contents`, unless a tenant with its URL or id exists
/// (`false`: nothing inserted). A SIP domain another tenant has or a tenant inserted
/// concurrently is a unique violation for the caller. The ids of the contents are the
/// tenant's own: another tenant may hold the same.
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
             SELECT $1, $2, $3, $4, 'Inactive', $5::jsonb, $6
             WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE url = $2)
               AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = $1)
             RETURNING id
         ), documents AS (
             INSERT INTO tenant_documents (tenant_id, kind, part, entries)
             SELECT tenant.id, 'objects', p.n - 1, p.entries
             FROM tenant, unnest($7::jsonb[]) WITH ORDINALITY AS p(entries, n)
             UNION ALL
             SELECT tenant.id, 'users', p.n - 1, p.entries
             FROM tenant, unnest($8::jsonb[]) WITH ORDINALITY AS p(entries, n)
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
    .bind(contents.settings.map_or("{}", JsonDoc::get))
    .bind(tenant.created_at)
    .bind(parts(contents.objects))
    .bind(parts(contents.users))
    .bind(Json(calling_lists(contents.calling_lists)))
    .bind(Json(audit(contents.audit)))
    .fetch_one(conn)
    .await?;
    Ok(inserted == 1)
}

/// A kind's entries in parts of `PART_ENTRIES`, each a JSON array of the entries as the
/// template writes them.
fn parts<T: Serialize>(entries: &[T]) -> Vec<Json<&[T]>> {
    entries.chunks(PART_ENTRIES).map(Json).collect()
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
