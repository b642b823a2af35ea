//! Every fault of a refused template, not only the first: the server's reader stops at the
//! first fault, so after it has refused a template whose archive is sound, each entry is parsed
//! on its own, the manifest's format and versions are each checked, and the entries that parse
//! are checked together by the same rules (`Template::faults`), which go on past a fault: every
//! faulty element is named in one run (up to `MOST`).

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

/// Most faults of the template's rules one check names.
const MOST: usize = 100;

/// Every fault found besides (and including) those already known, in order, each once.
pub fn more(bytes: &[u8], db_version: i64, known: Vec<String>) -> Vec<String> {
    let mut faults = known;
    let limits = Limits::default();
    // Only an archive the server's reader walks safely is opened here.
    if Template::costs(bytes, &limits, Contents::ForCreate).is_err() {
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
    if let Some(manifest) = &parsed.manifest {
        found.extend(
            manifest
                .faults(Some(db_version))
                .iter()
                .map(ToString::to_string),
        );
    }
    if let (Some(mut manifest), Some(tenant)) = (parsed.manifest, parsed.tenant) {
        manifest.db_version = db_version;
        // Users name objects (teams): without the objects they are not judged.
        let (users, objects) = match parsed.objects {
            Some(objects) => (parsed.users.unwrap_or_default(), objects),
            None => (Vec::new(), Vec::new()),
        };
        let template = Template {
            manifest,
            tenant,
            users,
            objects,
            access_numbers: parsed.numbers.unwrap_or_default(),
            calling_lists: parsed.lists.unwrap_or_default(),
            audit: parsed.audit.unwrap_or_default(),
        };
        found.extend(template.faults(false, MOST).iter().map(ToString::to_string));
    }
    for fault in found {
        if !faults.contains(&fault) {
            faults.push(fault);
        }
    }
    faults
}
