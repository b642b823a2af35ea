//! Access-number ranges. Overlap between ranges of one digit length is impossible by the
//! `access_numbers_no_overlap` exclusion constraint; these functions apply the template rules
//! on top of it.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RangeRow {
    pub id: i64,
    pub number: String,
    pub count: i32,
    pub media: String,
    pub tenant_id: Option<Uuid>,
}

/// What happened to one range offered to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Created,
    AssignedExisting,
    AssignedToOtherTenant,
    OverlapsExistingRange,
}

/// Gives `tenant_id` the range `number` x `count` by the contract's rules: no overlap -> created;
/// exactly the same range unassigned -> assigned; exactly the same range owned -> skipped;
/// any other overlap -> skipped whole.
///
/// A skip is decided on the ranges as last committed, without locking them: every import of
/// a template whose ranges another tenant owns skips them, and a lock held to the end of each
/// of those transactions would make them commit one at a time. Only an assignment writes (and
/// so waits for a concurrent change of the same range, then decides again).
pub async fn place(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    number: &str,
    count: i32,
    media: &str,
) -> Result<Placement, sqlx::Error> {
    loop {
        let inserted = sqlx::query(
            "INSERT INTO access_numbers (number, count, media, tenant_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(number)
        .bind(count)
        .bind(media)
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Placement::Created);
        }
        let overlapping: Vec<RangeRow> = sqlx::query_as(
            "SELECT id, number, count, media, tenant_id FROM access_numbers
             WHERE digits = length($1) AND span && numrange($1::numeric, $1::numeric + $2)",
        )
        .bind(number)
        .bind(count)
        .fetch_all(&mut *conn)
        .await?;
        match overlapping.as_slice() {
            // The conflicting range went away between the two statements: try again.
            [] => continue,
            [same] if same.number == number && same.count == count => match same.tenant_id {
                None => {
                    let assigned = sqlx::query(
                        "UPDATE access_numbers SET tenant_id = $2 WHERE id = $1 AND tenant_id IS NULL",
                    )
                    .bind(same.id)
                    .bind(tenant_id)
                    .execute(&mut *conn)
                    .await?;
                    if assigned.rows_affected() == 1 {
                        return Ok(Placement::AssignedExisting);
                    }
                    // Taken or removed meanwhile: look again.
                }
                Some(owner) if owner == tenant_id => return Ok(Placement::OverlapsExistingRange),
                Some(_) => return Ok(Placement::AssignedToOtherTenant),
            },
            _ => return Ok(Placement::OverlapsExistingRange),
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListedRange {
    pub number: String,
    pub count: i32,
    pub media: String,
    pub tenant_url: Option<String>,
}

/// At most `limit` ranges ordered by digit length and first number, after the range that
/// starts at `after`; only one tenant's when `tenant_url` is set.
pub async fn list(
    exec: impl PgExecutor<'_>,
    tenant_url: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ListedRange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.number, a.count, a.media, t.url AS tenant_url
         FROM access_numbers a LEFT JOIN tenants t ON t.id = a.tenant_id
         WHERE ($1::text IS NULL OR t.url = $1)
           AND ($2::text IS NULL OR (a.digits, a.number) > (length($2), $2))
         ORDER BY a.digits, a.number
         LIMIT $3",
    )
    .bind(tenant_url)
    .bind(after)
    .bind(limit)
    .fetch_all(exec)
    .await
}

/// Creates a range for a tenant; `false` when it overlaps any existing range.
pub async fn create(
    conn: &mut PgConnection,
    number: &str,
    count: i32,
    media: &str,
    tenant_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO access_numbers (number, count, media, tenant_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(number)
    .bind(count)
    .bind(media)
    .bind(tenant_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Deletes the range that starts at `number` with exactly `count` numbers; returns it.
pub async fn delete(
    conn: &mut PgConnection,
    number: &str,
    count: i32,
) -> Result<Option<RangeRow>, sqlx::Error> {
    sqlx::query_as(
        "DELETE FROM access_numbers WHERE number = $1 AND count = $2
         RETURNING id, number, count, media, tenant_id",
    )
    .bind(number)
    .bind(count)
    .fetch_optional(conn)
    .await
}
