//! Reading the archive: the walked central directory decides which entries are read and how
//! many bytes each may yield; the ZIP library only decompresses them. Then each entry is parsed
//! into its typed structure (its bytes dropped once parsed), and the whole checked.

use std::{
    collections::BTreeMap,
    io::{self, Cursor, Read, Seek, SeekFrom},
};

use serde::de::DeserializeOwned;

use super::{
    ACCESS_NUMBERS, AUDIT, CALLING_LISTS, Contents, Costs, ENTRIES, Limits, MANIFEST, Manifest,
    OBJECTS, TENANT, Template, TemplateError, USERS, check, json,
    zipdir::{self, DirEntry},
};

type Entries = BTreeMap<String, Vec<u8>>;

/// What is built from an entry costs at most this many times its text: free-form JSON kept as
/// text, typed fields, vectors' spare capacity (measured: `tests/template_memory.rs`).
const BUILT_FACTOR: u64 = 4;
const SLACK: u64 = 1 << 20;
/// What the write of a read template builds costs at most this many times the text of the
/// entries it writes: the job's plan, a copy of those entries with new ids (what reading built,
/// `BUILT_FACTOR`), and the statement's parameters, that text again in the driver's argument
/// buffer and once more in its send buffer, each grown by doubling. Measured
/// (`tests/tests/worker_memory.rs`): a create of 56 MiB of the smallest objects held 400 MiB,
/// where its reading cost is 300 MiB and this adds 453 MiB.
const WRITE_FACTOR: u64 = BUILT_FACTOR + 4;

/// The compression methods the format's writer uses.
const STORED: u16 = 0;
const DEFLATED: u16 = 8;

/// The known entries of `dir`, after the checks that need no decompression. Every entry counts
/// against the size limits, known or not: here by the size it declares, and as it is read by
/// what it yields (`read_entries`).
fn wanted<'d>(dir: &'d [DirEntry], limits: &Limits) -> Result<Vec<&'d DirEntry>, TemplateError> {
    if let Some(link) = dir.iter().find(|e| e.symlink) {
        return Err(TemplateError::Symlink(link.name.clone()));
    }
    if let Some(big) = dir.iter().find(|e| e.size > limits.max_entry_bytes) {
        return Err(TemplateError::EntryTooLarge(
            big.name.clone(),
            limits.max_entry_bytes,
        ));
    }
    if dir.iter().map(|e| e.size).sum::<u64>() > limits.max_total_bytes {
        return Err(TemplateError::TotalTooLarge(limits.max_total_bytes));
    }
    let known: Vec<&DirEntry> = dir
        .iter()
        .filter(|e| ENTRIES.contains(&e.name.as_str()))
        .collect();
    // The ZIP library decompresses only what the format's writer makes.
    let unreadable = |e: &DirEntry| {
        if e.encrypted {
            Some("encrypted".to_owned())
        } else if ![STORED, DEFLATED].contains(&e.method) {
            Some(format!(
                "compression method {}; only stored ({STORED}) and deflate ({DEFLATED}) are read",
                e.method
            ))
        } else {
            None
        }
    };
    if let Some((e, why)) = known.iter().find_map(|e| unreadable(e).map(|why| (e, why))) {
        return Err(TemplateError::Unreadable(e.name.clone(), why));
    }
    Ok(known)
}

/// See `Template::costs`.
pub(super) fn costs(
    bytes: &[u8],
    limits: &Limits,
    contents: Contents,
) -> Result<Costs, TemplateError> {
    let dir = zipdir::walk(bytes, limits)?;
    let wanted = wanted(&dir, limits)?;
    let text: u64 = wanted.iter().map(|e| e.size).sum();
    // What create checks and keeps nothing of is built one element at a time: at most its text
    // once more (an element's strings and free-form text are no larger than their source). It is
    // not written either.
    let checked_only = |e: &DirEntry| {
        contents == Contents::ForCreate && [CALLING_LISTS, AUDIT].contains(&e.name.as_str())
    };
    let (kept, checked): (Vec<&DirEntry>, Vec<&DirEntry>) =
        wanted.iter().copied().partition(|e| !checked_only(e));
    let kept: u64 = kept.iter().map(|e| e.size).sum();
    let checked: u64 = checked.iter().map(|e| e.size).sum();
    Ok(Costs {
        reading: bytes.len() as u64 + text + kept * BUILT_FACTOR + checked + SLACK,
        writing: kept * WRITE_FACTOR,
    })
}

/// Reads the known entries' bytes: never more than their headers declare, nor the limits allow.
fn read_entries(bytes: &[u8], limits: &Limits) -> Result<Entries, TemplateError> {
    let dir = zipdir::walk(bytes, limits)?;
    let wanted = wanted(&dir, limits)?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| TemplateError::NotZip(e.to_string()))?;
    // The library must see the very directory walked above.
    if archive.len() != dir.len()
        || dir
            .iter()
            .any(|e| archive.index_for_name(&e.name).is_none())
    {
        return Err(TemplateError::Malformed(
            "the ZIP library reads another central directory than the one walked".to_owned(),
        ));
    }
    let mut out = BTreeMap::new();
    for e in wanted {
        let name = e.name.clone();
        let mut entry = archive
            .by_name(&name)
            .map_err(|err| TemplateError::Unreadable(name.clone(), err.to_string()))?;
        let mut body = Vec::with_capacity(e.size as usize);
        (&mut entry)
            .take(e.size + 1)
            .read_to_end(&mut body)
            .map_err(|err| TemplateError::Unreadable(name.clone(), err.to_string()))?;
        if body.len() as u64 != e.size {
            return Err(TemplateError::SizeLies(name));
        }
        out.insert(name, body);
    }
    // The other entries are never used, but an entry yielding more than it declares is refused
    // whatever its name: each is read into nothing, its bytes counted. The inflater's input in
    // all is at most the archive's size (the walk refuses compressed sizes that add up to more).
    // One that cannot be read (an unsupported method, encryption, corrupt data) is ignored, as
    // it is unused.
    for e in dir.iter().filter(|e| !ENTRIES.contains(&e.name.as_str())) {
        let Ok(mut entry) = archive.by_name(&e.name) else {
            continue;
        };
        if let Ok(n) = io::copy(&mut (&mut entry).take(e.size + 1), &mut io::sink())
            && n > e.size
        {
            return Err(TemplateError::SizeLies(e.name.clone()));
        }
    }
    Ok(out)
}

/// Reads the archive and its manifest, checking the format and format version.
pub(super) fn read_manifest(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Manifest, Entries), TemplateError> {
    let mut entries = read_entries(bytes, limits)?;
    let manifest: Manifest = parse(&mut entries, &mut Exported::new(limits), MANIFEST)?
        .ok_or(TemplateError::Missing(MANIFEST))?;
    if let Some(fault) = manifest.faults(None).into_iter().next() {
        return Err(fault);
    }
    Ok((manifest, entries))
}

/// Parses the entries into a template (each entry's bytes dropped once parsed) and checks it.
pub(super) fn build(
    manifest: Manifest,
    mut entries: Entries,
    limits: &Limits,
    contents: Contents,
) -> Result<Template, TemplateError> {
    let sizes = &mut Exported::new(limits);
    let tenant = parse(&mut entries, sizes, TENANT)?.ok_or(TemplateError::Missing(TENANT))?;
    let users = parse_list(&mut entries, sizes, USERS)?.unwrap_or_default();
    let objects = parse_list(&mut entries, sizes, OBJECTS)?.unwrap_or_default();
    let access_numbers = parse_list(&mut entries, sizes, ACCESS_NUMBERS)?.unwrap_or_default();
    let mut deferred = None;
    let (calling_lists, audit) = match contents {
        Contents::All => (
            parse_list(&mut entries, sizes, CALLING_LISTS)?.unwrap_or_default(),
            parse_list(&mut entries, sizes, AUDIT)?.unwrap_or_default(),
        ),
        Contents::ForCreate => {
            // Their shapes now, as every entry is parsed before any rule is checked; their
            // strings' first fault after the rest's, where Import Tenant checks them.
            let mut ids = std::collections::HashSet::new();
            let lists = check_each(&mut entries, CALLING_LISTS, |i, l| {
                check::calling_list(i, l).and_then(|()| check::calling_list_once(&mut ids, l))
            })?;
            let audit = check_each(&mut entries, AUDIT, check::audit_entry)?;
            deferred = lists.or(audit);
            (Vec::new(), Vec::new())
        }
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
    template.check(contents == Contents::All)?;
    deferred.map_or(Ok(template), Err)
}

/// The sizes of the entries a template's tenant exports: each entry's text, with what its
/// numbers gain once the database writes them out (`json::take_growth`). An export is read
/// back under the same limits as the template, so the template must fit them as exported.
struct Exported {
    limits: Limits,
    total: u64,
}

impl Exported {
    fn new(limits: &Limits) -> Self {
        Self {
            limits: *limits,
            total: 0,
        }
    }

    /// Counts entry `name` of `text` bytes whose numbers gain `growth`.
    fn count(&mut self, name: &str, text: usize, growth: u64) -> Result<(), TemplateError> {
        let size = (text as u64).saturating_add(growth);
        self.total = self.total.saturating_add(size);
        if size > self.limits.max_entry_bytes {
            return Err(TemplateError::EntryTooLargeExported(
                name.to_owned(),
                self.limits.max_entry_bytes,
            ));
        }
        if self.total > self.limits.max_total_bytes {
            return Err(TemplateError::TotalTooLargeExported(
                self.limits.max_total_bytes,
            ));
        }
        Ok(())
    }
}

/// An entry that is one object.
fn parse<T: DeserializeOwned>(
    entries: &mut Entries,
    sizes: &mut Exported,
    name: &'static str,
) -> Result<Option<T>, TemplateError> {
    read(entries, sizes, name, |de| json::object(de))
}

/// An entry that is a list of objects.
fn parse_list<T: DeserializeOwned>(
    entries: &mut Entries,
    sizes: &mut Exported,
    name: &'static str,
) -> Result<Option<Vec<T>>, TemplateError> {
    read(entries, sizes, name, |de| json::objects_of(de))
}

fn read<T>(
    entries: &mut Entries,
    sizes: &mut Exported,
    name: &'static str,
    value: impl FnOnce(
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
    ) -> serde_json::Result<T>,
) -> Result<Option<T>, TemplateError> {
    let Some(body) = entries.remove(name) else {
        return Ok(None);
    };
    json::take_growth();
    let mut de = serde_json::Deserializer::from_slice(&body);
    let parsed = value(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| TemplateError::InvalidEntry(name, e.to_string()))?;
    sizes.count(name, body.len(), json::take_growth())?;
    Ok(Some(parsed))
}

/// Checks a list the job does not import, one element built at a time: its shape (a fault is
/// returned at once) and the rules of `check`, whose first fault is given back to be reported
/// in its turn.
fn check_each<T: DeserializeOwned>(
    entries: &mut Entries,
    name: &'static str,
    mut check: impl FnMut(usize, &T) -> Result<(), TemplateError>,
) -> Result<Option<TemplateError>, TemplateError> {
    let Some(body) = entries.remove(name) else {
        return Ok(None);
    };
    let mut first = None;
    json::check_list(&body, |i, element: T| {
        if first.is_none() {
            first = check(i, &element).err();
        }
    })
    .map_err(|e| TemplateError::InvalidEntry(name, e.to_string()))?;
    Ok(first)
}

/// Most bytes of the archive's tail `peek_tenant_url` reads to find the central directory.
fn peek_tail(limits: &Limits) -> u64 {
    limits.max_directory_bytes + (u16::MAX as u64) + 22 + 20 + (64 << 10)
}
/// Most uncompressed bytes of `tenant.json` `peek_tenant_url` reads.
pub const PEEK_MAX_BYTES: u64 = 1 << 20;

/// The URL in `tenant.json`, when the archive says so within a bounded read: at most the tail
/// holding the central directory, and the first `PEEK_MAX_BYTES` of `tenant.json`, streamed
/// (nothing else is decompressed, nothing is built but the URL).
pub fn peek_tenant_url<R: Read + Seek>(mut file: R, limits: &Limits) -> Option<String> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    let tail_len = len.min(peek_tail(limits));
    file.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    (&mut file).take(tail_len).read_to_end(&mut tail).ok()?;
    let dir = zipdir::walk_tail(&tail, len - tail_len, limits).ok()?;
    let tenant = dir.iter().find(|e| e.name == TENANT)?;
    let mut archive = zip::ZipArchive::new(file).ok()?;
    if archive.len() != dir.len() {
        return None;
    }
    let entry = archive.by_name(&tenant.name).ok()?;
    url_of(entry.take(PEEK_MAX_BYTES))
}

/// Streams a `tenant.json` object until its `url` member, ignoring everything before it.
fn url_of(reader: impl Read) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;

    #[derive(serde::Deserialize)]
    #[serde(field_identifier, rename_all = "lowercase")]
    enum Key {
        Url,
        #[serde(other)]
        Other,
    }
    // Stopping at `url` leaves the object unfinished, which serde_json reports as an error once
    // the visitor returned: the visitor keeps what it found in `found` instead.
    struct Url<'a>(&'a Cell<Option<String>>);
    impl<'de> Visitor<'de> for Url<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("tenant.json")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Url => return map.next_value().map(|url| self.0.set(Some(url))),
                    Key::Other => map.next_value::<IgnoredAny>().map(drop)?,
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Url<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let _ = Url(&found).deserialize(&mut de);
    found.into_inner()
}
