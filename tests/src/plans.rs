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
