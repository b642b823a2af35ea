//! More faults of a refused template than the first: the server's reader stops at the first
//! fault, so after it has refused a template whose archive is sound, each entry is parsed on
//! its own and each part (users with objects, access numbers, calling lists with audit) is
//! checked on its own by the same reader, so every faulty part is named in one run.

use std::io::{Cursor, Read};

use provisioner_shared::template::{
    self as format, AccessNumberEntry, AuditEntry, CallingListEntry, Contents, Limits, Manifest,
    ObjectEntry, Template, TenantEntry, UserEntry,
};
use serde::de::DeserializeOwned;

/// The entries of an archive whose directory the server's reader accepted, each parsed.
struct Parsed {
    manifest: Option<Manifest>,
    tenant: Option<TenantEntry>,
    users: Option<Vec<UserEntry>>,
    objects: Option<Vec<ObjectEntry>>,
    numbers: Option<Vec<AccessNumberEntry>>,
    lists: Option<Vec<CallingListEntry>>,
    audit: Option<Vec<AuditEntry>>,
}

fn entry<T: DeserializeOwned>(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limits: &Limits,
    faults: &mut Vec<String>,
) -> Option<T> {
    let Ok(mut file) = archive.by_name(name) else {
        return serde_json::from_str("[]").ok();
    };
    let mut body = Vec::new();
    if (&mut file)
        .take(limits.max_entry_bytes + 1)
        .read_to_end(&mut body)
        .is_err()
        || body.len() as u64 > limits.max_entry_bytes
    {
        return None;
    }
    serde_json::from_slice(&body)
        .map_err(|e| faults.push(format!("`{name}` is not valid: {e}")))
        .ok()
}

/// Every fault found besides (and including) those already known, in order, each once.
pub fn more(bytes: &[u8], db_version: i64, known: Vec<String>) -> Vec<String> {
    let mut faults = known;
    let limits = Limits::default();
    // Only an archive the server's reader walks safely is opened here.
    if Template::reading_cost(bytes, &limits, Contents::ForCreate).is_err() {
        return faults;
    }
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(bytes)) else {
        return faults;
    };
    let mut found = Vec::new();
    let parsed = Parsed {
        manifest: entry(&mut archive, format::MANIFEST, &limits, &mut found),
        tenant: entry(&mut archive, format::TENANT, &limits, &mut found),
        users: entry(&mut archive, format::USERS, &limits, &mut found),
        objects: entry(&mut archive, format::OBJECTS, &limits, &mut found),
        numbers: entry(&mut archive, format::ACCESS_NUMBERS, &limits, &mut found),
        lists: entry(&mut archive, format::CALLING_LISTS, &limits, &mut found),
        audit: entry(&mut archive, format::AUDIT, &limits, &mut found),
    };
    if let (Some(mut manifest), Some(tenant)) = (parsed.manifest, parsed.tenant) {
        manifest.db_version = db_version;
        let empty = Template {
            manifest,
            tenant,
            users: vec![],
            objects: vec![],
            access_numbers: vec![],
            calling_lists: vec![],
            audit: vec![],
        };
        let mut parts = vec![empty.clone()];
        if let (Some(users), Some(objects)) = (parsed.users, parsed.objects) {
            parts.push(Template {
                users,
                objects,
                ..empty.clone()
            });
        }
        if let Some(access_numbers) = parsed.numbers {
            parts.push(Template {
                access_numbers,
                ..empty.clone()
            });
        }
        if let (Some(calling_lists), Some(audit)) = (parsed.lists, parsed.audit) {
            parts.push(Template {
                calling_lists,
                audit,
                ..empty.clone()
            });
        }
        for part in parts {
            if let Err(e) = Template::read_for_create(&part.write(), &limits, db_version) {
                found.push(e.to_string());
            }
        }
    }
    for fault in found {
        if !faults.contains(&fault) {
            faults.push(fault);
        }
    }
    faults
}
