//! The upgrade path of templates: one step per schema version that changed since the first, each
//! bringing a template's raw entries from one `dbVersion` to the next. Import Tenant walks the
//! steps from a template's version to the server's; create-from-template never does.
//!
//! Every migration adds a step here, even when the template format does not change (then the
//! step is `unchanged`), so that templates of every released version stay importable.

use std::collections::BTreeMap;

use super::TemplateError;

type Entries = BTreeMap<String, Vec<u8>>;
type Step = fn(&mut Entries) -> Result<(), TemplateError>;

/// (from dbVersion, to dbVersion, step), in order.
const STEPS: &[(i64, i64, Step)] = &[
    // 0002 added OAuth clients and job metrics: nothing a template holds.
    (20261130000001, 20261130000002, unchanged),
    // 0003 indexed active jobs by client.
    (20261130000002, 20261130000003, unchanged),
    // 20261202000001 counted worker panics and dated job messages: nothing a template holds.
    (20261130000003, 20261202000001, unchanged),
    // 20261202150000 keeps job figures for /metrics: nothing a template holds.
    (20261202000001, 20261202150000, unchanged),
    // 20261203000001 added the template store and batches: nothing a template holds.
    (20261202150000, 20261203000001, unchanged),
    // 20261204000001 indexed what retention purges: nothing a template holds.
    (20261203000001, 20261204000001, unchanged),
    // 20261205000001 kept the trace context of jobs, batches and outbox rows: nothing a
    // template holds.
    (20261204000001, 20261205000001, unchanged),
    // 20261206000001 kept the job figures by statement: nothing a template holds.
    (20261205000001, 20261206000001, unchanged),
    // 20261207000001 counted a batch's items at its commit: nothing a template holds.
    (20261206000001, 20261207000001, unchanged),
    // 20261208000001 announced changes to clients and tokens: nothing a template holds.
    (20261207000001, 20261208000001, unchanged),
    // 20261209000001 indexed active imports by URL: nothing a template holds.
    (20261208000001, 20261209000001, unchanged),
    // 20261210000001 indexed the access-number ranges in listing order: nothing a template
    // holds.
    (20261209000001, 20261210000001, unchanged),
    // 20261211000001 stored users and objects as documents: the template's entries, as they
    // are.
    (20261210000001, 20261211000001, unchanged),
    // 20261212000001 indexed job lists by status, dated replaced batch items' jobs and indexed
    // queued single jobs by client: nothing a template holds.
    (20261211000001, 20261212000001, unchanged),
    // 20261213000001 recorded each job's lane and each job queue's delivery horizon: nothing a
    // template holds.
    (20261212000001, 20261213000001, unchanged),
    // 20261214000001 indexed a URL's active jobs: nothing a template holds.
    (20261213000001, 20261214000001, unchanged),
    // 20261214000002 indexed the held batches in release order: nothing a template holds.
    (20261214000001, 20261214000002, unchanged),
    // 20261215000001 kept the held batch items by client: nothing a template holds.
    (20261214000002, 20261215000001, unchanged),
    // 20261216000001 kept when a put-off outbox row was first due: nothing a template holds.
    (20261215000001, 20261216000001, unchanged),
    // 20261217000001 put a client's backlog in tiers by rank: nothing a template holds.
    (20261216000001, 20261217000001, unchanged),
    // 20261218000001 counted the attempts handed back at shutdown: nothing a template holds.
    (20261217000001, 20261218000001, unchanged),
];

fn unchanged(_: &mut Entries) -> Result<(), TemplateError> {
    Ok(())
}

/// Brings `entries` from `from` to `to`, or says why it cannot.
pub fn upgrade(entries: &mut Entries, from: i64, to: i64) -> Result<(), TemplateError> {
    let refuse = || {
        TemplateError::Incompatible(
            "dbVersion",
            from.to_string(),
            format!("{to} or an older version this server can upgrade"),
        )
    };
    if from > to {
        return Err(refuse());
    }
    let mut at = from;
    while at != to {
        let (_, next, step) = STEPS.iter().find(|(f, ..)| *f == at).ok_or_else(refuse)?;
        step(entries)?;
        at = *next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_older_versions_upgrade_and_others_are_refused() {
        let mut entries = Entries::new();
        assert!(upgrade(&mut entries, 20261130000001, 20261130000003).is_ok());
        assert!(upgrade(&mut entries, 20261130000002, 20261130000002).is_ok());
        assert!(
            upgrade(&mut entries, 20261130000002, 20261130000001).is_err(),
            "newer"
        );
        assert!(
            upgrade(&mut entries, 20250101000000, 20261130000002).is_err(),
            "unknown"
        );
    }

    #[test]
    fn the_steps_end_at_the_newest_migration() {
        let newest = crate::db::MIGRATOR.iter().map(|m| m.version).max().unwrap();
        let first = crate::db::MIGRATOR.iter().map(|m| m.version).min().unwrap();
        assert_eq!(
            STEPS.last().map(|s| s.1),
            Some(newest),
            "a migration was added without its template upgrade step"
        );
        assert_eq!(STEPS.first().map(|s| s.0), Some(first));
    }
}
