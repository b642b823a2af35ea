//! Which of two jobs for one tenant URL goes first. The API accepts a batch item whatever else
//! is queued for its tenant; the item's import then gives way to a create or an Import Tenant
//! job submitted before it that is still queued or running (its job ends with code 409).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A job for `tenant_url` (a single create, a batch item, an Import Tenant job) submitted before
/// the job `(created_at, job_id)` and still queued or running, if any: the oldest. Reads the
/// queued and running ranges of the URL's jobs (`jobs_by_tenant`, and the partial index of
/// active single creates), so its cost does not grow with the table or the URL's ended jobs.
pub async fn earlier_active_job(
    conn: &mut PgConnection,
    tenant_url: &str,
    created_at: DateTime<Utc>,
    job_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM (
             SELECT id, created_at FROM jobs
             WHERE tenant_url = $1 AND status IN ('queued', 'running')
               AND batch_id IS NULL AND kind = 'createTenant'
             UNION ALL
             SELECT id, created_at FROM jobs
             WHERE tenant_url = $1 AND status IN ('queued', 'running') AND batch_id IS NOT NULL
             UNION ALL
             SELECT id, created_at FROM jobs
             WHERE tenant_url = $1 AND status IN ('queued', 'running') AND kind = 'importTenant'
         ) active
         WHERE (created_at, id) < ($2, $3)
         ORDER BY created_at, id
         LIMIT 1",
    )
    .bind(tenant_url)
    .bind(created_at)
    .bind(job_id)
    .fetch_optional(conn)
    .await
}
