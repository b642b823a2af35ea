//! Template format 1: a ZIP of JSON entries describing a tenant. Reading is safe against hostile
//! archives: nothing touches the disk, entry count and uncompressed bytes are bounded while
//! reading (headers can lie), names are checked, duplicates refused.

use std::{
    collections::{BTreeMap, HashSet},
    io::{Cursor, Read, Write},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::is_access_number;

pub const FORMAT: &str = "provisioner-tenant-template";
pub const FORMAT_VERSION: u32 = 1;

pub const MANIFEST: &str = "manifest.json";
pub const TENANT: &str = "tenant.json";
pub const USERS: &str = "users.json";
pub const OBJECTS: &str = "objects.json";
pub const ACCESS_NUMBERS: &str = "access_numbers.json";
pub const CALLING_LISTS: &str = "calling_lists.json";
pub const AUDIT: &str = "audit.json";

/// Bounds on what a template may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1_000,
            max_entry_bytes: 64 << 20,
            max_total_bytes: 256 << 20,
        }
    }
}

/// Why a template was refused; each is a code-400 job failure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("the template is not a ZIP archive: {0}")]
    NotZip(String),
    #[error("the template has {0} entries; at most {1} are allowed")]
    TooManyEntries(usize, usize),
    #[error("entry `{0}` is larger than {1} bytes uncompressed")]
    EntryTooLarge(String, u64),
    #[error("the template's entries are larger than {0} bytes uncompressed in all")]
    TotalTooLarge(u64),
    #[error("entry name `{0}` appears more than once")]
    DuplicateEntry(String),
    #[error("the archive lists {listed} entries under only {distinct} distinct names")]
    RepeatedNames { listed: usize, distinct: usize },
    #[error("entry name `{0}` is absolute or leaves the archive")]
    UnsafeName(String),
    #[error("entry `{0}` is a symbolic link")]
    Symlink(String),
    #[error("entry `{0}` cannot be read: {1}")]
    Unreadable(String, String),
    #[error("the template has no `{0}`")]
    Missing(&'static str),
    #[error("`{0}` is not valid: {1}")]
    InvalidEntry(&'static str, String),
    #[error("the manifest's {0} is {1}; this server accepts {2}")]
    Incompatible(&'static str, String, String),
    #[error("invalid content: {0}")]
    InvalidContent(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub db_version: i64,
    pub exported_at: DateTime<Utc>,
    pub source: ManifestSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSource {
    pub tenant_id: Uuid,
    pub tenant_url: String,
    pub tenant_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantEntry {
    pub id: Uuid,
    pub url: String,
    pub name: String,
    pub sip_domain: String,
    #[serde(default)]
    pub settings: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntry {
    pub id: Uuid,
    pub login_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub teams: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub refs: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessNumberEntry {
    pub number: String,
    pub count: i32,
    pub media: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallingListEntry {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub entries: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub object: String,
    #[serde(default)]
    pub details: Map<String, Value>,
}

/// A whole template, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub manifest: Manifest,
    pub tenant: TenantEntry,
    pub users: Vec<UserEntry>,
    pub objects: Vec<ObjectEntry>,
    pub access_numbers: Vec<AccessNumberEntry>,
    pub calling_lists: Vec<CallingListEntry>,
    pub audit: Vec<AuditEntry>,
}

impl Template {
    /// Parses and checks an archive for create-from-template: its format, format version and
    /// database version must equal the server's (`db_version`).
    pub fn read(bytes: &[u8], limits: &Limits, db_version: i64) -> Result<Self, TemplateError> {
        let (manifest, entries) = read_manifest(bytes, limits)?;
        if manifest.db_version != db_version {
            let v = manifest.db_version.to_string();
            return Err(TemplateError::Incompatible(
                "dbVersion",
                v,
                db_version.to_string(),
            ));
        }
        Self::from_entries(manifest, entries)
    }

    /// Parses and checks an archive for Import Tenant: an older database version is brought up to
    /// `db_version` when this server knows every step; a newer or unknown one is refused.
    pub fn read_upgrading(
        bytes: &[u8],
        limits: &Limits,
        db_version: i64,
    ) -> Result<Self, TemplateError> {
        let (mut manifest, mut entries) = read_manifest(bytes, limits)?;
        if manifest.db_version != db_version {
            upgrade::upgrade(&mut entries, manifest.db_version, db_version)?;
            manifest.db_version = db_version;
        }
        Self::from_entries(manifest, entries)
    }

    fn from_entries(
        manifest: Manifest,
        mut entries: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, TemplateError> {
        let template = Template {
            manifest,
            tenant: parse(&mut entries, TENANT)?.ok_or(TemplateError::Missing(TENANT))?,
            users: parse(&mut entries, USERS)?.unwrap_or_default(),
            objects: parse(&mut entries, OBJECTS)?.unwrap_or_default(),
            access_numbers: parse(&mut entries, ACCESS_NUMBERS)?.unwrap_or_default(),
            calling_lists: parse(&mut entries, CALLING_LISTS)?.unwrap_or_default(),
            audit: parse(&mut entries, AUDIT)?.unwrap_or_default(),
        };
        template.check()?;
        Ok(template)
    }

    /// Checks what serde cannot: unique ids and login ids, references that resolve, sane
    /// numbers and password hashes.
    fn check(&self) -> Result<(), TemplateError> {
        let bad = |m: String| Err(TemplateError::InvalidContent(m));
        let mut object_ids = HashSet::new();
        for o in &self.objects {
            if !object_ids.insert(o.id) {
                return bad(format!("object id {} appears twice", o.id));
            }
        }
        for o in &self.objects {
            if let Some(r) = o.refs.iter().find(|r| !object_ids.contains(r)) {
                return bad(format!("object {} refers to unknown object {r}", o.id));
            }
        }
        let (mut user_ids, mut logins) = (HashSet::new(), HashSet::new());
        for u in &self.users {
            if !user_ids.insert(u.id) {
                return bad(format!("user id {} appears twice", u.id));
            }
            if u.login_id.is_empty() || !logins.insert(u.login_id.as_str()) {
                return bad(format!(
                    "login id `{}` is empty or appears twice",
                    u.login_id
                ));
            }
            if let Some(t) = u.teams.iter().find(|t| !object_ids.contains(t)) {
                return bad(format!("user `{}` is in unknown team {t}", u.login_id));
            }
            if u.password_hash
                .as_deref()
                .is_some_and(|h| !h.starts_with("$argon2id$"))
            {
                return bad(format!(
                    "user `{}` has a password hash that is not Argon2id",
                    u.login_id
                ));
            }
        }
        let mut firsts = HashSet::new();
        for n in &self.access_numbers {
            if !is_access_number(&n.number) || !(1..=1_000_000).contains(&n.count) {
                return bad(format!(
                    "access number range {} x {} is not 1-20 digits with a count of 1 to 1000000",
                    n.number, n.count
                ));
            }
            if !range_fits(&n.number, n.count) {
                return bad(format!(
                    "access number range {} x {} runs past its digit length",
                    n.number, n.count
                ));
            }
            if !firsts.insert(n.number.as_str()) {
                return bad(format!("access number {} starts two ranges", n.number));
            }
        }
        Ok(())
    }

    /// Writes every entry as a ZIP archive.
    pub fn write(&self) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut put = |name: &str, value: Value| {
            zip.start_file(name, options)
                .expect("writing to memory cannot fail");
            let body = serde_json::to_vec_pretty(&value).expect("serializes");
            zip.write_all(&body).expect("writing to memory cannot fail");
        };
        put(MANIFEST, json(&self.manifest));
        put(TENANT, json(&self.tenant));
        put(USERS, json(&self.users));
        put(OBJECTS, json(&self.objects));
        put(ACCESS_NUMBERS, json(&self.access_numbers));
        put(CALLING_LISTS, json(&self.calling_lists));
        put(AUDIT, json(&self.audit));
        zip.finish()
            .expect("writing to memory cannot fail")
            .into_inner()
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("template entries serialize")
}

/// Reads the archive and its manifest, checking the format and format version.
fn read_manifest(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), TemplateError> {
    let mut entries = read_entries(bytes, limits)?;
    let manifest: Manifest =
        parse(&mut entries, MANIFEST)?.ok_or(TemplateError::Missing(MANIFEST))?;
    if manifest.format != FORMAT {
        return Err(TemplateError::Incompatible(
            "format",
            manifest.format,
            FORMAT.to_owned(),
        ));
    }
    if manifest.format_version != FORMAT_VERSION {
        let v = manifest.format_version.to_string();
        return Err(TemplateError::Incompatible(
            "formatVersion",
            v,
            FORMAT_VERSION.to_string(),
        ));
    }
    Ok((manifest, entries))
}

/// The URL in `tenant.json`, when the archive is readable enough to say.
pub fn peek_tenant_url(bytes: &[u8], limits: &Limits) -> Option<String> {
    let mut entries = read_entries(bytes, limits).ok()?;
    let tenant: TenantEntry = parse(&mut entries, TENANT).ok()??;
    Some(tenant.url)
}

/// Does `count` numbers from `first` stay within `first`'s digit length?
pub fn range_fits(first: &str, count: i32) -> bool {
    let Ok(start) = first.parse::<u128>() else {
        return false;
    };
    let last = start + count.max(1) as u128 - 1;
    last < 10u128.pow(first.len() as u32)
}

/// Reads the known entries' bytes, enforcing every limit while reading.
fn read_entries(bytes: &[u8], limits: &Limits) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| TemplateError::NotZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(TemplateError::TooManyEntries(
            archive.len(),
            limits.max_entries,
        ));
    }
    // The reader keeps one entry per name; the central directory's own count reveals any
    // duplicate it folded away.
    match declared_entries(bytes) {
        Some(n) if n as usize > limits.max_entries => {
            return Err(TemplateError::TooManyEntries(
                n as usize,
                limits.max_entries,
            ));
        }
        Some(n) if n as usize != archive.len() => {
            return Err(TemplateError::RepeatedNames {
                listed: n as usize,
                distinct: archive.len(),
            });
        }
        _ => {}
    }
    let mut seen = HashSet::new();
    let mut wanted = Vec::new();
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| TemplateError::NotZip(e.to_string()))?;
        let name = entry.name().to_owned();
        if name.starts_with('/')
            || name.starts_with('\\')
            || name.split(['/', '\\']).any(|p| p == "..")
            || name.contains(':')
        {
            return Err(TemplateError::UnsafeName(name));
        }
        if !seen.insert(name.clone()) {
            return Err(TemplateError::DuplicateEntry(name));
        }
        if entry.is_symlink() {
            return Err(TemplateError::Symlink(name));
        }
        if KNOWN.contains(&name.as_str()) {
            wanted.push(i);
        }
    }
    let mut total = 0u64;
    let mut out = BTreeMap::new();
    for i in wanted {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| TemplateError::NotZip(e.to_string()))?;
        let name = entry.name().to_owned();
        let budget = limits.max_entry_bytes.min(limits.max_total_bytes - total);
        let mut body = Vec::new();
        (&mut entry)
            .take(budget + 1)
            .read_to_end(&mut body)
            .map_err(|e| TemplateError::Unreadable(name.clone(), e.to_string()))?;
        if body.len() as u64 > budget {
            return Err(if budget < limits.max_entry_bytes {
                TemplateError::TotalTooLarge(limits.max_total_bytes)
            } else {
                TemplateError::EntryTooLarge(name, limits.max_entry_bytes)
            });
        }
        total += body.len() as u64;
        out.insert(name, body);
    }
    Ok(out)
}

/// The entry count in the end-of-central-directory record (`None` for ZIP64, whose count the
/// reader checks itself).
fn declared_entries(bytes: &[u8]) -> Option<u16> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    let tail_start = bytes.len().saturating_sub(22 + u16::MAX as usize);
    let at = bytes[tail_start..].windows(4).rposition(|w| w == EOCD)? + tail_start;
    let total = bytes.get(at + 10..at + 12)?;
    let n = u16::from_le_bytes([total[0], total[1]]);
    (n != u16::MAX).then_some(n)
}

const KNOWN: [&str; 7] = [
    MANIFEST,
    TENANT,
    USERS,
    OBJECTS,
    ACCESS_NUMBERS,
    CALLING_LISTS,
    AUDIT,
];

fn parse<T: DeserializeOwned>(
    entries: &mut BTreeMap<String, Vec<u8>>,
    name: &'static str,
) -> Result<Option<T>, TemplateError> {
    entries
        .remove(name)
        .map(|body| {
            serde_json::from_slice(&body)
                .map_err(|e| TemplateError::InvalidEntry(name, e.to_string()))
        })
        .transpose()
}

#[cfg(test)]
mod tests;
mod upgrade;
