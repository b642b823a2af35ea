//! Template format 1: a ZIP of JSON entries describing a tenant. Reading is safe against hostile
//! archives: nothing touches the disk; the central directory is walked by hand under a byte
//! budget before the ZIP library sees it (`zipdir`); entry count and uncompressed bytes are
//! bounded while reading (headers that lie are refused); free-form JSON is kept as checked text,
//! never built into a tree (`json`); every string obeys the request fields' rules (`check`).
//! Writing streams: a template is written front to back, its lists a page at a time (`writer`,
//! `zipout`).

mod archive;
mod check;
mod entries;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod upgrade;
mod writer;
mod zipdir;
mod zipout;

pub use archive::peek_tenant_url;
pub use check::{MAX_NUMBERS, MAX_RANGES, MAX_ROLES};
pub use entries::{
    AccessNumberEntry, AuditEntry, CallingListEntry, Manifest, ManifestSource, ObjectEntry,
    TenantEntry, UserEntry,
};
pub use json::{
    JsonDoc, MAX_DEPTH, MAX_ELEMENTS, MAX_SETTINGS_BYTES, MAX_SETTINGS_KEY, MAX_SETTINGS_VALUE,
    compact_json,
};
pub use writer::{Page, TemplateWriter};

pub const FORMAT: &str = "provisioner-tenant-template";
pub const FORMAT_VERSION: u32 = 1;

pub const MANIFEST: &str = "manifest.json";
pub const TENANT: &str = "tenant.json";
pub const USERS: &str = "users.json";
pub const OBJECTS: &str = "objects.json";
pub const ACCESS_NUMBERS: &str = "access_numbers.json";
pub const CALLING_LISTS: &str = "calling_lists.json";
pub const AUDIT: &str = "audit.json";

/// The entries the format names; an archive's other entries are ignored.
pub(crate) const ENTRIES: [&str; 7] = [
    MANIFEST,
    TENANT,
    USERS,
    OBJECTS,
    ACCESS_NUMBERS,
    CALLING_LISTS,
    AUDIT,
];

/// Bounds on what a template may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
    /// Largest central directory walked.
    pub max_directory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1_000,
            max_entry_bytes: 64 << 20,
            max_total_bytes: 256 << 20,
            max_directory_bytes: 1 << 20,
        }
    }
}

/// Why a template was refused; each is a code-400 job failure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("the template is not a ZIP archive: {0}")]
    NotZip(String),
    #[error("the template has {0} entries; at most {1} are allowed")]
    TooManyEntries(u64, usize),
    #[error("the template's central directory is {0} bytes; at most {1} are allowed")]
    DirectoryTooLarge(u64, u64),
    #[error("the archive's end record counts {0} entries on this disk but {1} in all")]
    CountsDiffer(u64, u64),
    #[error("the archive's end record declares {declared} entries but its directory holds {found}")]
    CountDisagrees { declared: u64, found: String },
    #[error("the archive's ZIP64 end record disagrees with its end record about the {0}")]
    Zip64Disagrees(&'static str),
    #[error("the archive spans several disks")]
    SpannedArchive,
    #[error("the archive is malformed: {0}")]
    Malformed(String),
    #[error("entries `{0}` and `{1}` share their data")]
    SharedData(String, String),
    #[error("entry `{0}` is larger than {1} bytes uncompressed")]
    EntryTooLarge(String, u64),
    #[error(
        "entry `{0}` would be larger than {1} bytes in an export: the database keeps its numbers exactly and writes them out in full (`1e300` takes 301 characters)"
    )]
    EntryTooLargeExported(String, u64),
    #[error(
        "the template's entries would be larger than {0} bytes in all in an export: the database keeps their numbers exactly and writes them out in full (`1e300` takes 301 characters)"
    )]
    TotalTooLargeExported(u64),
    #[error("entry `{0}` holds more or fewer bytes than its header says")]
    SizeLies(String),
    #[error("the template's entries are larger than {0} bytes uncompressed in all")]
    TotalTooLarge(u64),
    #[error("entry name `{0}` appears more than once")]
    DuplicateEntry(String),
    #[error(
        "entry name `{0}` is not the format's `{1}` but reads as it where case, `.` path parts or trailing dots and spaces are ignored"
    )]
    NameLikeEntry(String, String),
    #[error("entry name `{0}` is neither ASCII nor flagged UTF-8, or carries a second name")]
    UnsupportedName(String),
    #[error("entry name `{0}` is absolute, leaves the archive or holds control characters")]
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

/// What a read builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// What create-from-template imports: calling lists and audit history are checked as Import
    /// Tenant checks them (shape and strings), one element at a time, never kept; the tenant's
    /// own URL, name and SIP domain are not checked (replaced).
    ForCreate,
    /// Everything (Import Tenant, or reading an export).
    All,
}

/// Upper bounds of the memory a template takes, in bytes (`Template::costs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    /// Reading it: the archive, each entry's text while it is parsed, what is built from it.
    pub reading: u64,
    /// Writing what was read as a tenant, besides: a job's plan and the statement's parameters.
    pub writing: u64,
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
    /// Reads everything of an archive whose format, format version and database version must
    /// equal the server's (`db_version`).
    pub fn read(bytes: &[u8], limits: &Limits, db_version: i64) -> Result<Self, TemplateError> {
        Self::read_exact(bytes, limits, db_version, Contents::All)
    }

    /// Reads what create-from-template imports (see `Contents::ForCreate`).
    pub fn read_for_create(
        bytes: &[u8],
        limits: &Limits,
        db_version: i64,
    ) -> Result<Self, TemplateError> {
        Self::read_exact(bytes, limits, db_version, Contents::ForCreate)
    }

    fn read_exact(
        bytes: &[u8],
        limits: &Limits,
        db_version: i64,
        contents: Contents,
    ) -> Result<Self, TemplateError> {
        let (manifest, entries) = archive::read_manifest(bytes, limits)?;
        if let Some(fault) = manifest.faults(Some(db_version)).into_iter().next() {
            return Err(fault);
        }
        archive::build(manifest, entries, limits, contents)
    }

    /// Reads everything of an archive for Import Tenant: an older database version is brought
    /// up to `db_version` when this server knows every step; a newer or unknown one is refused.
    pub fn read_upgrading(
        bytes: &[u8],
        limits: &Limits,
        db_version: i64,
    ) -> Result<Self, TemplateError> {
        let (mut manifest, mut entries) = archive::read_manifest(bytes, limits)?;
        if manifest.db_version != db_version {
            upgrade::upgrade(&mut entries, manifest.db_version, db_version)?;
            manifest.db_version = db_version;
        }
        archive::build(manifest, entries, limits, Contents::All)
    }

    /// Upper bounds of the memory reading `bytes` for `contents` may take, archive included, and
    /// writing what was read: known from the central directory alone, before anything is
    /// decompressed.
    pub fn costs(
        bytes: &[u8],
        limits: &Limits,
        contents: Contents,
    ) -> Result<Costs, TemplateError> {
        archive::costs(bytes, limits, contents)
    }

    /// Writes every entry as a ZIP archive (typed, never through an intermediate JSON tree).
    pub fn write(&self) -> Vec<u8> {
        let written = (|| {
            let mut out = TemplateWriter::new(Vec::new(), &self.manifest, &self.tenant)?;
            out.users(&self.users)?;
            out.objects(&self.objects)?;
            out.access_numbers(&self.access_numbers)?;
            out.calling_lists(&self.calling_lists)?;
            out.audit(&self.audit)?;
            out.finish()
        })();
        written.expect("writing to memory cannot fail")
    }
}

/// Does `count` numbers from `first` stay within `first`'s digit length?
pub fn range_fits(first: &str, count: i32) -> bool {
    let Ok(start) = first.parse::<u128>() else {
        return false;
    };
    let last = start + count.max(1) as u128 - 1;
    last < 10u128.pow(first.len() as u32)
}

#[cfg(test)]
mod contents_tests;
#[cfg(test)]
mod peek_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod writer_tests;
