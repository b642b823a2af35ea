//! Tenants: lookup, lifecycle and audit events (here), a new tenant's insertion with its
//! configuration (`contents`), and reading a tenant a page at a time for Export Tenant
//! (`export`).

mod contents;
pub mod export;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

pub use self::contents::{Contents, insert};

/// Entries of one kind (users, objects) a row of `tenant_documents` holds at most: a tenant's
/// list is stored in parts of this many, and Export Tenant reads it a part at a time. The
/// schema says 200 too (`tenant_documents`' check, the `users` and `config_objects` views'
/// positions): `variants::an_import_larger_than_a_document_part_is_stored_in_parts_and_exported_whole`
/// fails when they disagree.
pub const PART_ENTRIES: usize = 200;
use crate::domain::{AuditAction, TenantStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub url: String,
    pub name: String,
    pub sip_domain: String,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
}

pub async fn find_by_url(
    exec: impl PgExecutor<'_>,
    url: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, url, name, sip_domain, status, created_at FROM tenants WHERE url = $1",
    )
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

/// Which keys of a new tenant others have.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// A tenant has its URL or its id: it exists.
    pub tenant: bool,
    /// A tenant has its URL (with `tenant` but not this, another URL has its id).
    pub url: bool,
    /// A tenant has its SIP domain.
    pub sip_domain: bool,
}

/// Which of the keys `id`, `url`, `sip_domain` of a new tenant existing tenants have.
pub async fn taken(
    exec: impl PgExecutor<'_>,
    id: Uuid,
    url: &str,
    sip_domain: &str,
) -> Result<Taken, sqlx::Error> {
    let (tenant, url_taken, domain): (bool, bool, bool) = sqlx::query_as(
        "SELECT coalesce(bool_or(id = $1 OR url = $2), false),
                coalesce(bool_or(url = $2), false),
                coalesce(bool_or(sip_domain = $3), false)
         FROM tenants WHERE id = $1 OR url = $2 OR sip_domain = $3",
    )
    .bind(id)
    .bind(url)
    .bind(sip_domain)
    .fetch_one(exec)
    .await?;
    Ok(Taken {
        tenant,
        url: url_taken,
        sip_domain: domain,
    })
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
    // The tenant's row first, as a range's create locks it before its insert: the other order
    // deadlocks with a create whose range overlaps one deleted here.
    sqlx::query("SELECT FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *conn)
        .await?;
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
        "SELECT id, url, name, sip_domain, status, created_at FROM tenants
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
