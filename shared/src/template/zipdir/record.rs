//! One central-directory record: its name as the reader will decode it, its sizes and offset
//! (ZIP64 extra field included), its disk, and whether it is a symbolic link.

use super::{DirEntry, malformed, u16_at, u32_at, u64_at};
use crate::{domain::is_hidden_char, template::TemplateError};

const CENTRAL: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
/// General-purpose flag bit 11: the name is UTF-8.
const UTF8_NAME: u16 = 1 << 11;
/// General-purpose flag bit 0: the data is encrypted.
const ENCRYPTED: u16 = 1;
/// WinZip's AES encryption: the compression method, and the extra field that goes with it.
const AES: u16 = 99;
const AES_FIELD: u16 = 0x9901;
/// Extra fields of file times: NTFS's, and the extended timestamp of Unix tools.
const NTFS_TIMES: u16 = 0x000a;
const UNIX_TIMES: u16 = 0x5455;

pub(super) struct Record {
    pub(super) entry: DirEntry,
    pub(super) local_offset: u64,
    /// Bytes of compressed data the record declares.
    pub(super) compressed: u64,
}

/// Parses the record at the start of `b`; returns it and its length.
pub(super) fn record(b: &[u8], dir_offset: u64) -> Result<(Record, usize), TemplateError> {
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
    let mut zip64_seen = false;
    let mut aes_seen = false;
    for (id, data) in
        extra_fields(extra).map_err(|m| TemplateError::Malformed(format!("`{name}`: {m}")))?
    {
        match id {
            0x0001 => {
                // Exactly the values its sentinels stand for, once: a reader that takes more
                // (the ZIP library takes all three 8-byte values from a field of 24 bytes or
                // more, whatever the sentinels) would see other sizes and offsets than checked.
                let expected = [size, compressed, local_offset]
                    .iter()
                    .filter(|v| **v == 0xFFFF_FFFF)
                    .count()
                    * 8
                    + if disk == 0xFFFF { 4 } else { 0 };
                if zip64_seen || data.len() != expected {
                    return Err(TemplateError::Malformed(format!(
                        "`{name}`: its ZIP64 field holds other values than those it stands for"
                    )));
                }
                zip64_seen = true;
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
            // The fields the ZIP library reads, as it reads them: it opens no archive with one
            // it cannot read (and says "could not find EOCD").
            AES_FIELD => {
                let readable = data.len() == 7
                    && [1, 2].contains(&u16_at(data, 0))
                    && &data[2..4] == b"AE"
                    && (1..=3).contains(&data[4]);
                if !readable {
                    return Err(unread_field(&name, "AES encryption"));
                }
                aes_seen = true;
            }
            NTFS_TIMES if data.len() != 32 || u16_at(data, 4) != 1 || u16_at(data, 6) != 24 => {
                return Err(unread_field(&name, "NTFS times"));
            }
            UNIX_TIMES => {
                let readable = data.first().is_some_and(|&flags| {
                    flags & 0b1111_1000 == 0
                        && (data.len() == 5 || data.len() == 1 + 4 * flags.count_ones() as usize)
                });
                if !readable {
                    return Err(unread_field(&name, "extended timestamp"));
                }
            }
            _ => {}
        }
    }
    let method = u16_at(b, 10);
    if method == AES && !aes_seen {
        return Err(TemplateError::Malformed(format!(
            "`{name}`: it is AES-encrypted (method 99) without its AES encryption field"
        )));
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
        method,
        // The ZIP library takes an AES field for encryption whatever the flags say.
        encrypted: flags & ENCRYPTED != 0 || aes_seen,
    };
    Ok((
        Record {
            entry,
            local_offset,
            compressed,
        },
        len,
    ))
}

fn unread_field(name: &str, field: &str) -> TemplateError {
    TemplateError::Malformed(format!(
        "`{name}`: its {field} field is not one the ZIP library reads"
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
        // Anywhere in the name, as the contract says, not only as a path segment.
        || name.contains("..")
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
