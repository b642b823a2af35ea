//! Which of two creates for one tenant URL goes first. The API accepts a batch item whatever
//! else is queued for its tenant; the item's import then gives way to a create submitted before
//! it that is still queued or running (its job ends with code 409).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A create that gives way to the creates of its tenant submitted before it: the job `id`,
/// submitted at `created_at`, for `tenant_url`.
#[derive(Debug, Clone, Copy)]
pub struct GivesWay<'a> {
    pub tenant_url: &'a str,
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A create for `gives_way`'s tenant (a single create or a batch item) submitted before it and
/// still queued or running, if any: the oldest. Reads the two partial indexes of active creates
/// by URL, so its cost does not grow with the table. Read under the tenant's lock, in a
/// statement of its own: its snapshot must not predate the lock.
pub async fn earlier_active_create(
    conn: &mut PgConnection,
    gives_way: GivesWay<'_>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM (
             SELECT id, created_at FROM jobs
             WHERE tenant_url = $1 AND status IN ('queued', 'running')
               AND batch_id IS NULL AND kind = 'createTenant'
             UNION ALL
             SELECT id, created_at FROM jobs
             WHERE tenant_url = $1 AND status IN ('queued', 'running') AND batch_id IS NOT NULL
         ) active
         WHERE (created_at, id) < ($2, $3)
         ORDER BY created_at, id
         LIMIT 1",
    )
    .bind(gives_way.tenant_url)
    .bind(gives_way.created_at)
    .bind(gives_way.id)
    .fetch_optional(conn)
    .await
}
