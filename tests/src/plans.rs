//! What a query's plan read, from `EXPLAIN (ANALYZE, FORMAT JSON)`: for tests that a query's
//! cost does not grow with the table.

use serde_json::Value;

/// Rows and index entries a plan read from `relation`: what each of its scans returned, and
/// what their filters removed, over every loop.
pub fn rows_read(plan: &Value, relation: &str) -> f64 {
    let mut read = 0.0;
    let mut nodes = vec![plan[0]["Plan"].clone()];
    while let Some(node) = nodes.pop() {
        if let Some(children) = node["Plans"].as_array() {
            nodes.extend(children.iter().cloned());
        }
        if node["Relation Name"] == relation {
            let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
            for field in [
                "Actual Rows",
                "Rows Removed by Filter",
                "Rows Removed by Index Recheck",
            ] {
                read += node[field].as_f64().unwrap_or(0.0) * loops;
            }
        }
    }
    read
}

/// Rows this session's transaction has read so far from `tables`: by sequential scans, and
/// index entries returned by their indexes. A session's counts of earlier transactions may not
/// have been sent to the statistics yet, so a statement's reads are the difference of two calls
/// within one transaction.
pub async fn rows_read_in_transaction(conn: &mut sqlx::PgConnection, tables: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT ((SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables
                  WHERE relname = ANY($1))
               + (SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)
                  FROM pg_index
                  WHERE indrelid = ANY(SELECT oid FROM pg_class
                                       WHERE relname = ANY($1) AND relkind = 'r'
                                         AND relnamespace = 'public'::regnamespace)))::bigint",
    )
    .bind(tables)
    .fetch_one(conn)
    .await
    .unwrap()
}
