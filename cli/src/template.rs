//! `template pack | check | upload | list`: building a format-1 ZIP from a folder, the
//! server's own checks offline (`provisioner_shared::template`, the code the workers run), and
//! the template store.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use provisioner_shared::template::{
    self as format, AccessNumberEntry, AuditEntry, CallingListEntry, Limits, Manifest, ObjectEntry,
    Template, TemplateError, TenantEntry, UserEntry,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    api::{Api, success_json},
    exit::{Failure, Problem, Result},
    faults,
    output::{Output, print_line},
};

/// The `dbVersion` of the newest migration this program was built with.
pub const DB_VERSION: i64 = {
    match i64::from_str_radix(env!("PROVISIONER_DB_VERSION"), 10) {
        Ok(v) => v,
        Err(_) => panic!("PROVISIONER_DB_VERSION is a number"),
    }
};

/// Largest template file read (the server refuses larger ones anyway).
const MAX_TEMPLATE_FILE: u64 = 256 << 20;

/// The bytes of a template file, bounded; a folder is refused with the command that packs it.
pub fn read_zip(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        let zip = path
            .file_name()
            .map_or_else(|| "FILE".into(), |n| n.to_string_lossy());
        return Err(Failure::invalid(format!(
            "{shown} is a folder, not a template ZIP: pack it first with \
             `provisioner template pack {shown} -o {zip}.zip` and give the ZIP",
            shown = path.display()
        )));
    }
    let named = |e: std::io::Error| Failure::invalid(format!("{}: {e}", path.display()));
    let file = fs::File::open(path).map_err(named)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEMPLATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(named)?;
    if bytes.len() as u64 > MAX_TEMPLATE_FILE {
        return Err(Failure::invalid(format!(
            "{}: larger than {MAX_TEMPLATE_FILE} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The lower-case hex SHA-256 of `bytes`: a template's id in the store.
pub fn template_id(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn counts(t: &Template) -> Value {
    json!({"users": t.users.len(), "objects": t.objects.len(), "accessNumbers": t.access_numbers.len()})
}

/// One entry file of the folder, parsed as its type; a missing list is empty.
fn entry<T: DeserializeOwned>(dir: &Path, name: &str, problems: &mut Vec<Problem>) -> Option<T> {
    let path = dir.join(name);
    let text = match fs::read(&path) {
        Ok(text) if text.len() as u64 > Limits::default().max_entry_bytes => {
            problems.push(Problem::new(name, "is larger than 64 MiB"));
            return None;
        }
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return serde_json::from_str("[]").ok();
        }
        Err(e) => {
            problems.push(Problem::new(name, e.to_string()));
            return None;
        }
    };
    serde_json::from_slice(&text)
        .map_err(|e| problems.push(Problem::new(name, e.to_string())))
        .ok()
}

/// The folder's manifest, with what it leaves out filled in: the format, the `dbVersion` of
/// this build (or `--db-version`), the time of packing and the source tenant.
fn manifest(
    dir: &Path,
    tenant: &TenantEntry,
    db_version: i64,
    problems: &mut Vec<Problem>,
) -> Option<Manifest> {
    let path = dir.join(format::MANIFEST);
    let mut doc = match fs::read(&path) {
        Ok(text) => match serde_json::from_slice::<Value>(&text) {
            Ok(Value::Object(doc)) => doc,
            Ok(_) => {
                problems.push(Problem::new(format::MANIFEST, "must be a JSON object"));
                return None;
            }
            Err(e) => {
                problems.push(Problem::new(format::MANIFEST, e.to_string()));
                return None;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => {
            problems.push(Problem::new(format::MANIFEST, e.to_string()));
            return None;
        }
    };
    doc.entry("format").or_insert(json!(format::FORMAT));
    doc.entry("formatVersion")
        .or_insert(json!(format::FORMAT_VERSION));
    doc.entry("dbVersion").or_insert(json!(db_version));
    doc.entry("exportedAt").or_insert(json!(newest_change(dir)));
    doc.entry("source").or_insert(json!({
        "tenantId": tenant.id, "tenantUrl": tenant.url, "tenantName": tenant.name
    }));
    serde_json::from_value(Value::Object(doc))
        .map_err(|e| problems.push(Problem::new(format::MANIFEST, e.to_string())))
        .ok()
}

/// When the folder's entries last changed (to the second; now if unknown): the default
/// `exportedAt`, so packing the same folder again gives the same bytes and the same template id
/// (and a batch submitted with it again reattaches).
fn newest_change(dir: &Path) -> DateTime<Utc> {
    let newest = [
        format::MANIFEST,
        format::TENANT,
        format::USERS,
        format::OBJECTS,
        format::ACCESS_NUMBERS,
        format::CALLING_LISTS,
        format::AUDIT,
    ]
    .iter()
    .filter_map(|name| fs::metadata(dir.join(name)).ok()?.modified().ok())
    .max();
    let at = newest.map_or_else(Utc::now, DateTime::<Utc>::from);
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// `template pack DIR -o FILE.zip`.
pub fn pack(dir: &Path, out_path: &Path, db_version: Option<i64>, out: &Output) -> Result<()> {
    if !dir.is_dir() {
        return Err(Failure::invalid(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let mut problems = Vec::new();
    let tenant_path = dir.join(format::TENANT);
    let tenant: Option<TenantEntry> = if tenant_path.exists() {
        entry(dir, format::TENANT, &mut problems)
    } else {
        problems.push(Problem::new(format::TENANT, "is missing"));
        None
    };
    let users: Option<Vec<UserEntry>> = entry(dir, format::USERS, &mut problems);
    let objects: Option<Vec<ObjectEntry>> = entry(dir, format::OBJECTS, &mut problems);
    let numbers: Option<Vec<AccessNumberEntry>> = entry(dir, format::ACCESS_NUMBERS, &mut problems);
    let lists: Option<Vec<CallingListEntry>> = entry(dir, format::CALLING_LISTS, &mut problems);
    let audit: Option<Vec<AuditEntry>> = entry(dir, format::AUDIT, &mut problems);
    let manifest = tenant
        .as_ref()
        .and_then(|t| manifest(dir, t, db_version.unwrap_or(DB_VERSION), &mut problems));
    let (
        Some(manifest),
        Some(tenant),
        Some(users),
        Some(objects),
        Some(access_numbers),
        Some(calling_lists),
        Some(audit),
    ) = (manifest, tenant, users, objects, numbers, lists, audit)
    else {
        return Err(Failure::invalid(format!(
            "{}: the template's entries are not valid",
            dir.display()
        ))
        .with_problems(problems));
    };
    let template = Template {
        manifest,
        tenant,
        users,
        objects,
        access_numbers,
        calling_lists,
        audit,
    };
    let bytes = template.write();
    let version = template.manifest.db_version;
    let checked = Template::read(&bytes, &Limits::default(), version).map_err(|e| {
        let problems = faults::more(&bytes, version, vec![e.to_string()])
            .into_iter()
            .map(|f| Problem::new("", f))
            .collect();
        Failure::invalid(format!("{}: the template would be refused", dir.display()))
            .with_problems(problems)
    })?;
    write_atomically(out_path, &bytes)?;
    let doc = json!({
        "file": out_path.display().to_string(),
        "bytes": bytes.len(),
        "templateId": template_id(&bytes),
        "dbVersion": checked.manifest.db_version,
        "counts": counts(&checked),
    });
    out.show(&doc, |d| {
        format!(
            "{} ({} bytes, dbVersion {}, templateId {})",
            d["file"].as_str().unwrap_or_default(),
            d["bytes"],
            d["dbVersion"],
            d["templateId"].as_str().unwrap_or_default()
        )
    })?;
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("zip.part");
    fs::write(&tmp, bytes).map_err(|e| Failure::invalid(format!("{}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))
}

/// `template check FILE.zip`: every fault create-from-template would find, offline.
pub fn check(path: &Path, db_version: Option<i64>, max_bytes: u64, out: &Output) -> Result<()> {
    let wanted = db_version.unwrap_or(DB_VERSION);
    let refused = |faults: &[String]| -> Result<()> {
        // The check's outcome is the command's output: with `--json` on stdout too, as a valid
        // template's is (the failure goes to stderr, as every command's).
        if out.json {
            print_line(json!({"file": path.display().to_string(), "valid": false,
                "dbVersion": wanted, "faults": faults}))?;
        }
        Ok(())
    };
    let bytes = match read_zip(path) {
        Ok(bytes) => bytes,
        Err(failure) => {
            refused(std::slice::from_ref(&failure.message))?;
            return Err(failure);
        }
    };
    let limits = Limits::default();
    let too_large = too_large(bytes.len(), max_bytes);
    let faults = match Template::read_for_create(&bytes, &limits, wanted) {
        Ok(_) if too_large.is_some() => vec![],
        Ok(t) => {
            let doc = json!({"file": path.display().to_string(), "valid": true, "dbVersion": wanted,
                "templateId": template_id(&bytes), "counts": counts(&t)});
            out.show(&doc, |d| format!("{}: valid for dbVersion {wanted} ({} users, {} objects, {} access-number ranges)",
                path.display(), d["counts"]["users"], d["counts"]["objects"], d["counts"]["accessNumbers"]))?;
            return Ok(());
        }
        // A template of another database version: its content is checked too, as its own.
        Err(TemplateError::Incompatible("dbVersion", found, _)) => {
            let fault = format!("the manifest's dbVersion is {found}; the server accepts {wanted}");
            match found.parse::<i64>() {
                Ok(found) => match Template::read_for_create(&bytes, &limits, found) {
                    Ok(_) => vec![fault],
                    Err(e) => faults::more(&bytes, found, vec![fault, e.to_string()]),
                },
                Err(_) => vec![fault],
            }
        }
        Err(e) => faults::more(&bytes, wanted, vec![e.to_string()]),
    };
    let faults: Vec<String> = too_large.into_iter().chain(faults).collect();
    refused(&faults)?;
    let problems = faults.into_iter().map(|f| Problem::new("", f)).collect();
    Err(Failure::invalid(format!(
        "{}: the template would be refused (code 400)",
        path.display()
    ))
    .with_problems(problems))
}

/// The fault of a template file of `len` bytes where the server takes at most `max`.
fn too_large(len: usize, max: u64) -> Option<String> {
    (len as u64 > max).then(|| {
        format!(
            "the file is {len} bytes, more than the server's {max} (PROVISIONER_TEMPLATE_MAX_BYTES; \
             --max-bytes for another): an upload answers 413 and a download ends with code 400"
        )
    })
}

/// Stores a template file; the store's answer (`templateId`, `name`, ...).
pub async fn store(api: &Api, path: &Path, name: Option<&str>) -> Result<Value> {
    let bytes = read_zip(path)?;
    let mut url = api.url("/configapi/v2/templates");
    if let Some(name) = name {
        url.query_pairs_mut().append_pair("name", name);
    }
    let response = api
        .send(|http| {
            http.request(Method::POST, url.clone())
                .header("content-type", "application/zip")
                .body(bytes.clone())
        })
        .await?;
    success_json(response).await
}

/// `template upload FILE.zip [--name L]`: prints the id.
pub async fn upload(api: &Api, path: &Path, name: Option<&str>, out: &Output) -> Result<()> {
    let template = store(api, path, name).await?;
    out.show(&template, |t| {
        t["templateId"].as_str().unwrap_or_default().to_owned()
    })?;
    Ok(())
}

/// `template delete ID`: prints nothing; exit 4 for an id this client does not store.
pub async fn delete(api: &Api, id: &str) -> Result<()> {
    if id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Failure::invalid(format!(
            "{id:?} is not a template id (64 lower-case hex digits)"
        )));
    }
    let url = api.url(&format!("/configapi/v2/templates/{id}"));
    let response = api.send(|http| http.delete(url.clone())).await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(crate::api::answer_failure(response).await)
    }
}

/// `template list`.
pub async fn list(api: &Api, out: &Output) -> Result<()> {
    let items = api.list_all("/configapi/v2/templates").await?;
    if out.json {
        crate::output::print_line(json!({"items": items}))?;
    } else {
        for t in &items {
            crate::output::print_text(format_args!(
                "{} {} {} bytes dbVersion {} {}",
                t["templateId"].as_str().unwrap_or_default(),
                t["name"].as_str().unwrap_or("-"),
                t["bytes"],
                t["dbVersion"],
                t["createdAt"].as_str().unwrap_or_default()
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exit::Exit, scratch};

    #[test]
    fn a_folder_given_for_a_template_zip_is_named_with_the_command_that_packs_it() {
        let dir = scratch::folder("small");
        let shown = dir.display().to_string();
        let pack = format!("provisioner template pack {shown} -o small.zip");
        // `template upload`, `--template` of create and batch submit read it so; `template check` too.
        let read = read_zip(&dir).err();
        let checked = check(&dir, None, u64::MAX, &Output { json: false }).err();
        for failure in [read, checked] {
            let failure = failure.expect("a folder is refused");
            assert_eq!(failure.exit, Exit::Invalid);
            assert!(
                failure.message.starts_with(&format!("{shown} is a folder"))
                    && failure.message.contains(&pack),
                "{}",
                failure.message
            );
        }
    }
}
