//! Access-number ranges. Overlap between ranges of one digit length is impossible by the
//! `access_numbers_no_overlap` exclusion constraint; these functions apply the template rules
//! on top of it.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::template::AccessNumberEntry;

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
async fn place(
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

/// Gives `tenant_id` every range of `ranges` by the rules of [`place`], in their order, with
/// one statement for all of them where [`place`] makes one or two per range (a standard
/// template's five ranges, once another tenant owns them, took ten round trips).
///
/// The statement reads the ranges each offered one overlaps (as last committed, locking
/// none), inserts those that overlap none, in the plan's order, and says what it found. It
/// writes nothing when a range needs [`place`]'s care: an identical unassigned range to assign,
/// or an overlapped range that another transaction may be changing (its row's `xmax` is a
/// transaction not older than the statement's snapshot: a release, delete or lock that may be
/// under way), whose outcome [`place`]'s insert waits for; then every range is placed by
/// [`place`], in order, as before. So are the ranges of a plan that overlap each other (the
/// statement could not tell which of them a conflict was with). A range that another
/// transaction inserted after the read (the insert waited for it and found the conflict) is
/// decided again by [`place`]. The skips are decided as of the statement's start, even when
/// its insert then waits for another transaction.
pub async fn place_all(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ranges: &[AccessNumberEntry],
) -> Result<Vec<Placement>, sqlx::Error> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    if !pairwise_disjoint(ranges) {
        return one_at_a_time(conn, tenant_id, ranges).await;
    }
    let column = |f: fn(&AccessNumberEntry) -> &str| ranges.iter().map(f).collect::<Vec<_>>();
    let counts: Vec<i32> = ranges.iter().map(|r| r.count).collect();
    let decided: Vec<Decided> = sqlx::query_as(
        "WITH offered AS (
             SELECT * FROM UNNEST($2::text[], $3::int[], $4::text[])
                      WITH ORDINALITY AS o(number, count, media, i)
         ), seen AS (
             SELECT o.i, count(a.id) AS overlaps,
                    bool_and(a.number = o.number AND a.count = o.count) AS same,
                    (array_agg(a.tenant_id))[1] AS owner,
                    coalesce(bool_or(a.xmax <> '0'::xid AND age(a.xmax) <= age(xid(
                        pg_snapshot_xmin(pg_current_snapshot())))), false) AS contested
             FROM offered o
             LEFT JOIN access_numbers a
               ON a.digits = length(o.number)
              AND a.span && numrange(o.number::numeric, o.number::numeric + o.count)
             GROUP BY o.i
         ), alone AS (
             SELECT EXISTS (SELECT FROM seen s
                            WHERE s.contested OR (s.overlaps = 1 AND s.same AND s.owner IS NULL))
                    AS needed
         ), created AS (
             INSERT INTO access_numbers (number, count, media, tenant_id)
             SELECT o.number, o.count, o.media, $1
             FROM offered o JOIN seen s USING (i)
             WHERE s.overlaps = 0 AND NOT (SELECT needed FROM alone)
             ORDER BY o.i
             ON CONFLICT DO NOTHING
             RETURNING number, count
         )
         SELECT s.overlaps, s.same, s.owner, (SELECT needed FROM alone) AS alone,
                EXISTS (SELECT FROM created c WHERE (c.number, c.count) = (o.number, o.count))
                    AS created
         FROM offered o JOIN seen s USING (i) ORDER BY o.i",
    )
    .bind(tenant_id)
    .bind(column(|r| &r.number))
    .bind(counts)
    .bind(column(|r| &r.media))
    .fetch_all(&mut *conn)
    .await?;
    if decided.len() != ranges.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the placement of {} access-number ranges answered {} rows",
            ranges.len(),
            decided.len()
        )));
    }
    if decided.iter().any(|d| d.alone) {
        return one_at_a_time(conn, tenant_id, ranges).await;
    }
    let mut placed = Vec::with_capacity(ranges.len());
    for (range, d) in ranges.iter().zip(decided) {
        let decision = match (d.overlaps, d.same, d.owner) {
            _ if d.created => Some(Placement::Created),
            // Inserted by another transaction since the read.
            (0, ..) => None,
            (1, Some(true), Some(owner)) if owner == tenant_id => {
                Some(Placement::OverlapsExistingRange)
            }
            (1, Some(true), Some(_)) => Some(Placement::AssignedToOtherTenant),
            // Unassigned: such a plan is `alone` (placed above); should one come here, `place`.
            (1, Some(true), None) => None,
            _ => Some(Placement::OverlapsExistingRange),
        };
        placed.push(match decision {
            Some(p) => p,
            None => place(conn, tenant_id, &range.number, range.count, &range.media).await?,
        });
    }
    Ok(placed)
}

/// Every range of `ranges` by [`place`], in order.
async fn one_at_a_time(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ranges: &[AccessNumberEntry],
) -> Result<Vec<Placement>, sqlx::Error> {
    let mut placed = Vec::with_capacity(ranges.len());
    for r in ranges {
        placed.push(place(conn, tenant_id, &r.number, r.count, &r.media).await?);
    }
    Ok(placed)
}

/// What [`place_all`]'s statement found for one offered range, and whether it created it.
#[derive(sqlx::FromRow)]
struct Decided {
    /// Ranges it overlaps, as last committed when the statement began.
    overlaps: i64,
    /// Whether the one it overlaps (if one) is the same range.
    same: Option<bool>,
    /// That range's tenant.
    owner: Option<Uuid>,
    /// Some range of the plan needs [`place`]: the statement wrote nothing.
    alone: bool,
    created: bool,
}

/// Do no two of `ranges` share a number? (Only ranges of one digit length can: `0100` and
/// `100` are different numbers.) `false` too for a range that is not a well-formed number
/// and count, which the sequential path leaves to the database's checks.
fn pairwise_disjoint(ranges: &[AccessNumberEntry]) -> bool {
    let mut spans = Vec::with_capacity(ranges.len());
    for r in ranges {
        let well_formed = (1..=20).contains(&r.number.len())
            && r.number.bytes().all(|b| b.is_ascii_digit())
            && r.count >= 1;
        let Some(start) = well_formed.then(|| r.number.parse::<u128>().ok()).flatten() else {
            return false;
        };
        spans.push((r.number.len(), start, start + r.count as u128));
    }
    spans.sort_unstable();
    spans
        .windows(2)
        .all(|w| w[0].0 != w[1].0 || w[0].2 <= w[1].1)
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
///
/// One statement per case, without `$n IS NULL OR ...`: a plan kept for such a statement
/// cannot use the order's index for the cursor, and would walk every range from the first for
/// each page. Every range's pages walk `access_numbers_in_order` from the cursor; one
/// tenant's ranges are few, read through `access_numbers_tenant` and sorted.
pub async fn list(
    exec: impl PgExecutor<'_>,
    tenant_url: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ListedRange>, sqlx::Error> {
    const COLUMNS: &str = "SELECT a.number, a.count, a.media, t.url AS tenant_url
         FROM access_numbers a LEFT JOIN tenants t ON t.id = a.tenant_id";
    const ORDER: &str = "ORDER BY a.digits, a.number LIMIT $1";
    const AFTER: &str = "(a.digits, a.number) > (length($2), $2)";
    let tenant = |n: u8| format!("a.tenant_id = (SELECT id FROM tenants WHERE url = ${n})");
    // Parameters: the limit, then the cursor if any, then the tenant if any.
    let text = match (tenant_url, after) {
        (None, None) => format!("{COLUMNS} {ORDER}"),
        (None, Some(_)) => format!("{COLUMNS} WHERE {AFTER} {ORDER}"),
        (Some(_), None) => format!("{COLUMNS} WHERE {} {ORDER}", tenant(2)),
        (Some(_), Some(_)) => format!("{COLUMNS} WHERE {} AND {AFTER} {ORDER}", tenant(3)),
    };
    let mut query = sqlx::query_as(&text).bind(limit);
    if let Some(after) = after {
        query = query.bind(after);
    }
    if let Some(url) = tenant_url {
        query = query.bind(url);
    }
    query.fetch_all(exec).await
}

/// What a tenant holds: its ranges, and their numbers in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Holding {
    pub ranges: i64,
    pub numbers: i64,
}

/// What tenant `tenant_id` holds, its row locked until the transaction ends (`None`: it is gone):
/// two requests adding ranges to one tenant count one after the other, so a cap holds exactly.
/// `FOR NO KEY UPDATE`: the foreign keys of ranges inserted meanwhile do not wait for it; a
/// tenant's delete locks the row before its ranges (`tenants::delete`), in the same order.
pub async fn holding_locked(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> Result<Option<Holding>, sqlx::Error> {
    let found = sqlx::query("SELECT FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    if found.rows_affected() == 0 {
        return Ok(None);
    }
    // A statement of its own: it reads what committed while the lock was awaited.
    sqlx::query_as(
        "SELECT count(*) AS ranges, coalesce(sum(count), 0)::bigint AS numbers
         FROM access_numbers WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(&mut *conn)
    .await
    .map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[(&str, i32)]) -> Vec<AccessNumberEntry> {
        list.iter()
            .map(|(number, count)| AccessNumberEntry {
                number: (*number).to_owned(),
                count: *count,
                media: "VOICE".to_owned(),
            })
            .collect()
    }

    #[test]
    fn ranges_that_share_no_number_are_disjoint_whatever_their_order() {
        assert!(pairwise_disjoint(&ranges(&[
            ("3000", 10),
            ("1000", 10),
            ("1010", 5)
        ])));
        assert!(pairwise_disjoint(&ranges(&[
            ("100", 10),
            ("0100", 10),
            ("1000", 1)
        ])));
        assert!(pairwise_disjoint(&ranges(&[("99999999999999999999", 1)])));
    }

    #[test]
    fn ranges_that_share_a_number_or_are_malformed_are_not() {
        assert!(!pairwise_disjoint(&ranges(&[
            ("1000", 10),
            ("3000", 1),
            ("1009", 1)
        ])));
        assert!(!pairwise_disjoint(&ranges(&[("2000", 10), ("2000", 10)])));
        assert!(!pairwise_disjoint(&ranges(&[("12a4", 1)])));
        assert!(!pairwise_disjoint(&ranges(&[("1234", 0)])));
        assert!(!pairwise_disjoint(&ranges(&[("", 1)])));
        assert!(!pairwise_disjoint(&ranges(&[("123456789012345678901", 1)])));
    }
}
