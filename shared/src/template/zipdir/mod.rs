//! The central directory, walked by hand under a byte budget before any ZIP library sees the
//! archive: the entry limit, duplicate names and disk numbers hold for every encoding (ZIP64 end
//! record and locator included), and counts that disagree with the records are refused.

use std::collections::{HashMap, HashSet};

mod record;

use self::record::record;
use super::{ENTRIES, Limits, TemplateError};

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const EOCD_LEN: usize = 22;
const LOCATOR64_LEN: usize = 20;
const EOCD64_LEN: usize = 56;

/// One central-directory record, as the reader will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirEntry {
    pub(super) name: String,
    /// Uncompressed size the directory declares; reading never yields more.
    pub(super) size: u64,
    pub(super) symlink: bool,
    /// The compression method the directory gives (0 stored, 8 deflate).
    pub(super) method: u16,
    pub(super) encrypted: bool,
}

/// Walks the central directory of `bytes`, refusing anything the limits or a single,
/// unambiguous reading of the archive do not allow.
pub(super) fn walk(bytes: &[u8], limits: &Limits) -> Result<Vec<DirEntry>, TemplateError> {
    walk_tail(bytes, 0, limits)
}

/// `walk` given only the archive's last bytes, `tail`, which start at offset `base`.
pub(super) fn walk_tail(
    tail: &[u8],
    base: u64,
    limits: &Limits,
) -> Result<Vec<DirEntry>, TemplateError> {
    let end = end_record(tail, base)?;
    if end.entries > limits.max_entries as u64 {
        return Err(TemplateError::TooManyEntries(
            end.entries,
            limits.max_entries,
        ));
    }
    if end.dir_size > limits.max_directory_bytes {
        return Err(TemplateError::DirectoryTooLarge(
            end.dir_size,
            limits.max_directory_bytes,
        ));
    }
    if end.dir_offset.checked_add(end.dir_size) != Some(end.dir_end) {
        return Err(malformed(
            "the central directory does not end where its end record begins",
        ));
    }
    let Some(start) = end.dir_offset.checked_sub(base) else {
        return Err(malformed(
            "the central directory starts before the bytes read",
        ));
    };
    let dir = &tail[start as usize..(end.dir_end - base) as usize];
    let mut at = 0;
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    let mut offsets = HashMap::new();
    // Each entry takes at least a local header and its compressed data before the directory;
    // entries whose spans add up to more overlap. Refusing them keeps an inflater's input, over
    // all entries, within the archive's size (overlapping entries could make it read the same
    // bytes once per entry).
    let mut spans: u64 = 0;
    while at < dir.len() {
        if entries.len() as u64 == end.entries {
            return Err(TemplateError::CountDisagrees {
                declared: end.entries,
                found: format!("more than {}", end.entries),
            });
        }
        let (record, len) = record(&dir[at..], end.dir_offset)?;
        at += len;
        if let Some(first) = offsets.insert(record.local_offset, record.entry.name.clone()) {
            return Err(TemplateError::SharedData(first, record.entry.name));
        }
        if base == 0 {
            // The whole archive is here: its local header must name the entry as the directory
            // does (a reader that goes by local headers would otherwise see another name).
            local_name_agrees(tail, &record)?;
        }
        spans = spans.saturating_add(30).saturating_add(record.compressed);
        if spans > end.dir_offset {
            return Err(malformed(
                "the entries' data add up to more than the archive holds: they overlap",
            ));
        }
        if !names.insert(record.entry.name.clone()) {
            return Err(TemplateError::DuplicateEntry(record.entry.name));
        }
        if let Some(entry) = taken_for_an_entry(&record.entry.name) {
            return Err(TemplateError::NameLikeEntry(record.entry.name, entry));
        }
        entries.push(record.entry);
    }
    if entries.len() as u64 != end.entries {
        return Err(TemplateError::CountDisagrees {
            declared: end.entries,
            found: entries.len().to_string(),
        });
    }
    Ok(entries)
}

/// The format's entry that `name` is not but that another reader would take it for: such a
/// name makes two readings of the archive. Readers differ in what they ignore: `\\` taken for
/// `/`, `.` parts and empty ones of a path (`./tenant.json`, as unzip extracts it), trailing
/// dots and spaces (as Windows drops them), and case letter by letter, Unicode's included
/// (`ſ` is an `s` in upper case, `İ` an `i` in lower case). Other names are ignored, however
/// alike.
fn taken_for_an_entry(name: &str) -> Option<String> {
    if ENTRIES.contains(&name) {
        return None;
    }
    let path = name.replace('\\', "/");
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let [last] = parts[..] else {
        return None;
    };
    let folded = last.trim_end_matches(['.', ' ']);
    ENTRIES
        .iter()
        .find(|entry| {
            folded.chars().count() == entry.len()
                && folded
                    .chars()
                    .zip(entry.chars())
                    .all(|(c, e)| same_letter(c, e))
        })
        .map(|entry| (*entry).to_owned())
}

/// Is `c` the letter `e` (lower-case ASCII) to a reader that ignores case?
fn same_letter(c: char, e: char) -> bool {
    c == e || c.to_lowercase().next() == Some(e) || c.to_uppercase().eq(e.to_uppercase())
}

/// The local header of `record`'s entry, in `archive`, has the signature and the very name
/// the central directory gives it.
fn local_name_agrees(archive: &[u8], record: &record::Record) -> Result<(), TemplateError> {
    const LOCAL: u32 = 0x0403_4b50;
    let at = usize::try_from(record.local_offset).unwrap_or(usize::MAX);
    let header = at
        .checked_add(30)
        .and_then(|end| archive.get(at..end))
        .ok_or_else(|| malformed("an entry's local header lies past the archive's end"))?;
    if u32::from_le_bytes([header[0], header[1], header[2], header[3]]) != LOCAL {
        return Err(malformed(&format!(
            "the entry {} has no local header where the directory says",
            record.entry.name
        )));
    }
    let name_len = usize::from(u16::from_le_bytes([header[26], header[27]]));
    let name = archive.get(at + 30..at + 30 + name_len);
    if name != Some(record.entry.name.as_bytes()) {
        return Err(malformed(&format!(
            "the entry {} has another name in its local header",
            record.entry.name
        )));
    }
    Ok(())
}

/// What the end record(s) say about the directory.
struct End {
    entries: u64,
    dir_size: u64,
    dir_offset: u64,
    /// Where the directory must end: the ZIP64 end record, or the end record.
    dir_end: u64,
}

pub(super) fn malformed(what: &str) -> TemplateError {
    TemplateError::Malformed(what.to_owned())
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Finds the end record (the last one whose comment reaches exactly to the end of the
/// archive), and the ZIP64 end record when a locator precedes it. `bytes` starts at `base`.
fn end_record(bytes: &[u8], base: u64) -> Result<End, TemplateError> {
    let not_zip = || TemplateError::NotZip("no end of central directory record".to_owned());
    let last = bytes.len().checked_sub(EOCD_LEN).ok_or_else(not_zip)?;
    let first = last.saturating_sub(u16::MAX as usize);
    let at = (first..=last)
        .rev()
        .find(|&i| {
            u32_at(bytes, i) == EOCD && i + EOCD_LEN + u16_at(bytes, i + 20) as usize == bytes.len()
        })
        .ok_or_else(not_zip)?;
    let e = &bytes[at..];
    let (disk, dir_disk) = (u16_at(e, 4), u16_at(e, 6));
    let (on_disk, total) = (u16_at(e, 8), u16_at(e, 10));
    let (size, offset) = (u32_at(e, 12), u32_at(e, 16));
    let locator = at
        .checked_sub(LOCATOR64_LEN)
        .filter(|&l| u32_at(bytes, l) == LOCATOR64);
    let Some(locator) = locator else {
        if disk != 0 || dir_disk != 0 {
            return Err(TemplateError::SpannedArchive);
        }
        if on_disk != total {
            return Err(TemplateError::CountsDiffer(on_disk.into(), total.into()));
        }
        return Ok(End {
            entries: total.into(),
            dir_size: size.into(),
            dir_offset: offset.into(),
            dir_end: base + at as u64,
        });
    };
    let z = zip64_end(bytes, base, locator)?;
    // Fields of the end record that are not "see ZIP64" must agree with the ZIP64 record.
    let agrees = |narrow: u64, sentinel: u64, wide: u64| narrow == sentinel || narrow == wide;
    for (name, ok) in [
        ("disk number", agrees(disk.into(), 0xFFFF, z.disk)),
        (
            "directory disk",
            agrees(dir_disk.into(), 0xFFFF, z.dir_disk),
        ),
        (
            "entries on this disk",
            agrees(on_disk.into(), 0xFFFF, z.on_disk),
        ),
        ("total entries", agrees(total.into(), 0xFFFF, z.total)),
        ("directory size", agrees(size.into(), 0xFFFF_FFFF, z.size)),
        (
            "directory offset",
            agrees(offset.into(), 0xFFFF_FFFF, z.offset),
        ),
    ] {
        if !ok {
            return Err(TemplateError::Zip64Disagrees(name));
        }
    }
    if z.disk != 0 || z.dir_disk != 0 {
        return Err(TemplateError::SpannedArchive);
    }
    if z.on_disk != z.total {
        return Err(TemplateError::CountsDiffer(z.on_disk, z.total));
    }
    Ok(End {
        entries: z.total,
        dir_size: z.size,
        dir_offset: z.offset,
        dir_end: z.at,
    })
}

struct Zip64End {
    at: u64,
    disk: u64,
    dir_disk: u64,
    on_disk: u64,
    total: u64,
    size: u64,
    offset: u64,
}

/// The ZIP64 end record the locator at `locator` points to; it must end at the locator.
fn zip64_end(bytes: &[u8], base: u64, locator: usize) -> Result<Zip64End, TemplateError> {
    let l = &bytes[locator..];
    let (record_disk, at, disks) = (u32_at(l, 4), u64_at(l, 8), u32_at(l, 16));
    if record_disk != 0 || disks > 1 {
        return Err(TemplateError::SpannedArchive);
    }
    let fits = at
        .checked_sub(base)
        .and_then(|a| usize::try_from(a).ok())
        .filter(|&a| a.checked_add(EOCD64_LEN).is_some_and(|e| e <= locator));
    let Some(at) = fits else {
        return Err(malformed("the ZIP64 locator points outside the archive"));
    };
    let r = &bytes[at..];
    // The record's size is the archive's word: any value, so added with a check.
    let ends_at = u64_at(r, 4)
        .checked_add(12)
        .and_then(|size| (at as u64).checked_add(size));
    if u32_at(r, 0) != EOCD64 || ends_at != Some(locator as u64) {
        return Err(malformed("the ZIP64 end record is missing or misplaced"));
    }
    Ok(Zip64End {
        at: base + at as u64,
        disk: u32_at(r, 16).into(),
        dir_disk: u32_at(r, 20).into(),
        on_disk: u64_at(r, 24),
        total: u64_at(r, 32),
        size: u64_at(r, 40),
        offset: u64_at(r, 48),
    })
}

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod craft;
