//! Which of two jobs for one tenant URL goes first. The API accepts a batch item whatever else
//! is queued for its tenant; the item's import then gives way to a create or an Import Tenant
//! job submitted before it that is still queued or running (its job ends with code 409).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A job for `tenant_url` (a single create, a batch item, an Import Tenant job) submitted before
/// the job `(created_at, job_id)` and still queued or running, if any: the oldest. Reads the
/// URL's entries in `jobs_active_by_url` (its queued and running jobs) and nothing else, so its
/// cost does not grow with the table, the batch items queued or the URL's ended jobs.
pub async fn earlier_active_job(
    conn: &mut PgConnection,
    tenant_url: &str,
    created_at: DateTime<Utc>,
    job_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    // Every job is a create (single or a batch item's) or an Import Tenant job: all the URL's
    // active jobs count, found by one scan of the partial index (a union of one scan per kind
    // made three).
    sqlx::query_scalar(
        "SELECT id FROM jobs
         WHERE tenant_url = $1 AND status IN ('queued', 'running')
           AND (created_at, id) < ($2, $3)
         ORDER BY created_at, id
         LIMIT 1",
    )
    .bind(tenant_url)
    .bind(created_at)
    .bind(job_id)
    .fetch_optional(conn)
    .await
}
