//! The central directory, walked by hand under a byte budget before any ZIP library sees the
//! archive: the entry limit, duplicate names and disk numbers hold for every encoding (ZIP64 end
//! record and locator included), and counts that disagree with the records are refused.

use std::collections::HashMap;

use super::{Limits, TemplateError};
use crate::domain::is_hidden_char;

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const EOCD_LEN: usize = 22;
const LOCATOR64_LEN: usize = 20;
const EOCD64_LEN: usize = 56;
const CENTRAL_LEN: usize = 46;
/// General-purpose flag bit 11: the name is UTF-8.
const UTF8_NAME: u16 = 1 << 11;

/// One central-directory record, as the reader will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirEntry {
    pub(super) name: String,
    /// Uncompressed size the directory declares; reading never yields more.
    pub(super) size: u64,
    pub(super) symlink: bool,
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
    let mut folded: HashMap<String, String> = HashMap::new();
    let mut offsets = HashMap::new();
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
        let key = record.entry.name.to_lowercase().replace('\\', "/");
        if let Some(other) = folded.insert(key, record.entry.name.clone()) {
            return Err(if other == record.entry.name {
                TemplateError::DuplicateEntry(other)
            } else {
                TemplateError::NamesCollide(other, record.entry.name)
            });
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

/// What the end record(s) say about the directory.
struct End {
    entries: u64,
    dir_size: u64,
    dir_offset: u64,
    /// Where the directory must end: the ZIP64 end record, or the end record.
    dir_end: u64,
}

fn malformed(what: &str) -> TemplateError {
    TemplateError::Malformed(what.to_owned())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
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
    if u32_at(r, 0) != EOCD64 || (at as u64).checked_add(12 + u64_at(r, 4)) != Some(locator as u64)
    {
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

struct Record {
    entry: DirEntry,
    local_offset: u64,
}

/// Parses the record at the start of `b`; returns it and its length.
fn record(b: &[u8], dir_offset: u64) -> Result<(Record, usize), TemplateError> {
    if b.len() < CENTRAL_LEN || u32_at(b, 0) != CENTRAL {
        return Err(malformed(
            "a central directory record is truncated or has no signature",
        ));
    }
    let (made_by, flags) = (u16_at(b, 4), u16_at(b, 8));
    let (name_len, extra_len, comment_len) = (
        u16_at(b, 28) as usize,
        u16_at(b, 30) as usize,
        u16_at(b, 32) as usize,
    );
    let len = CENTRAL_LEN + name_len + extra_len + comment_len;
    if b.len() < len {
        return Err(malformed(
            "a central directory record runs past the directory",
        ));
    }
    let raw_name = &b[CENTRAL_LEN..CENTRAL_LEN + name_len];
    let name = decode_name(raw_name, flags)?;
    let extra = &b[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
    let mut size = u64::from(u32_at(b, 24));
    let mut compressed = u64::from(u32_at(b, 20));
    let mut disk = u64::from(u16_at(b, 34));
    let mut local_offset = u64::from(u32_at(b, 42));
    for (id, data) in
        extra_fields(extra).map_err(|m| TemplateError::Malformed(format!("`{name}`: {m}")))?
    {
        match id {
            0x0001 => {
                let mut fields = data.chunks(8);
                let mut wide = |narrow: &mut u64, sentinel: u64, len: usize| {
                    if *narrow == sentinel {
                        match fields.next().filter(|f| f.len() >= len) {
                            Some(f) if len == 8 => *narrow = u64_at(f, 0),
                            Some(f) => *narrow = u32_at(f, 0).into(),
                            None => return false,
                        }
                    }
                    true
                };
                let ok = wide(&mut size, 0xFFFF_FFFF, 8)
                    && wide(&mut compressed, 0xFFFF_FFFF, 8)
                    && wide(&mut local_offset, 0xFFFF_FFFF, 8)
                    && wide(&mut disk, 0xFFFF, 4);
                if !ok {
                    return Err(TemplateError::Malformed(format!(
                        "`{name}`: its ZIP64 field lacks a size or offset it stands for"
                    )));
                }
            }
            0x7075 | 0x6375 => return Err(TemplateError::UnsupportedName(name)),
            _ => {}
        }
    }
    if disk != 0 {
        return Err(TemplateError::SpannedArchive);
    }
    if local_offset.saturating_add(30).saturating_add(compressed) > dir_offset {
        return Err(TemplateError::Malformed(format!(
            "`{name}`: its data lies outside the archive's entries"
        )));
    }
    check_name(&name)?;
    // Unix mode in the high half of the external attributes, when made on Unix.
    let mode = u32_at(b, 38) >> 16;
    let symlink = made_by >> 8 == 3 && mode & 0o170000 == 0o120000;
    let entry = DirEntry {
        name,
        size,
        symlink,
    };
    Ok((
        Record {
            entry,
            local_offset,
        },
        len,
    ))
}

/// The name as the reader will decode it: UTF-8 when flagged, else plain ASCII (other code
/// page 437 names are refused: they would decode differently by tool).
fn decode_name(raw: &[u8], flags: u16) -> Result<String, TemplateError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    if flags & UTF8_NAME == 0 && !raw.is_ascii() {
        return Err(TemplateError::UnsupportedName(lossy()));
    }
    String::from_utf8(raw.to_vec()).map_err(|_| TemplateError::UnsupportedName(lossy()))
}

fn check_name(name: &str) -> Result<(), TemplateError> {
    if name.is_empty()
        || name.starts_with('/')
        || name.starts_with('\\')
        || name.split(['/', '\\']).any(|p| p == "..")
        || name.contains(':')
        || name.chars().any(is_hidden_char)
    {
        return Err(TemplateError::UnsafeName(name.to_owned()));
    }
    Ok(())
}

/// The (id, data) pairs of an extra-field block.
fn extra_fields(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, &'static str> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err("its extra fields are truncated");
        }
        let (id, len) = (u16_at(b, 0), u16_at(b, 2) as usize);
        let data = b
            .get(4..4 + len)
            .ok_or("an extra field runs past its block")?;
        out.push((id, data));
        b = &b[4 + len..];
    }
    Ok(out)
}

#[cfg(test)]
#[path = "corpus.rs"]
mod corpus;
