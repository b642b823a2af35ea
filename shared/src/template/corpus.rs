//! A corpus of crafted archives, built here byte by byte (stored entries): each bends one rule of
//! the central directory and is refused with its fault named. The first case proves the crafting
//! itself reads, in both the plain and the ZIP64 encodings.

use super::walk;
use crate::template::{Limits, MANIFEST, TENANT, Template, TemplateError};

const DB: i64 = 7;

#[derive(Clone)]
struct Entry {
    name: Vec<u8>,
    body: Vec<u8>,
    flags: u16,
    extra: Vec<u8>,
    disk: u16,
    unix_mode: Option<u32>,
    /// Point this record at another entry's data.
    same_data_as: Option<usize>,
}

fn entry(name: &str, body: &[u8]) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        body: body.to_vec(),
        flags: 0,
        extra: vec![],
        disk: 0,
        unix_mode: None,
        same_data_as: None,
    }
}

/// How to write the end of the archive.
#[derive(Clone, Default)]
struct End {
    on_disk: Option<u64>,
    total: Option<u64>,
    disk: u16,
    zip64: bool,
    /// ZIP64 only: the 16-bit "total entries" written instead of 0xFFFF.
    narrow_total: Option<u16>,
    locator_disks: Option<u32>,
    locator_offset: Option<u64>,
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn archive(entries: &[Entry], end: &End) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push(out.len() as u32);
        if e.same_data_as.is_some() {
            continue;
        }
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(e.flags.to_le_bytes());
        out.extend([0u8; 6]); // stored, time, date
        out.extend(crc32(&e.body).to_le_bytes());
        out.extend((e.body.len() as u32).to_le_bytes());
        out.extend((e.body.len() as u32).to_le_bytes());
        out.extend((e.name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(&e.name);
        out.extend(&e.body);
    }
    let dir_offset = out.len() as u64;
    for (i, e) in entries.iter().enumerate() {
        let offset = offsets[e.same_data_as.unwrap_or(i)];
        let data = &entries[e.same_data_as.unwrap_or(i)].body;
        out.extend(0x0201_4b50u32.to_le_bytes());
        let made_by: u16 = if e.unix_mode.is_some() {
            3 << 8 | 20
        } else {
            20
        };
        out.extend(made_by.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(e.flags.to_le_bytes());
        out.extend([0u8; 6]);
        out.extend(crc32(data).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((e.name.len() as u16).to_le_bytes());
        out.extend((e.extra.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(e.disk.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend((e.unix_mode.unwrap_or(0) << 16).to_le_bytes());
        out.extend(offset.to_le_bytes());
        out.extend(&e.name);
        out.extend(&e.extra);
    }
    let dir_size = out.len() as u64 - dir_offset;
    let n = entries.len() as u64;
    let (on_disk, total) = (end.on_disk.unwrap_or(n), end.total.unwrap_or(n));
    if end.zip64 {
        let record = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(u32::from(end.disk).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(on_disk.to_le_bytes());
        out.extend(total.to_le_bytes());
        out.extend(dir_size.to_le_bytes());
        out.extend(dir_offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(end.locator_offset.unwrap_or(record).to_le_bytes());
        out.extend(end.locator_disks.unwrap_or(1).to_le_bytes());
    }
    let narrow = |v: u64| if end.zip64 { 0xFFFF } else { v as u16 };
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(if end.zip64 { 0xFFFF } else { end.disk }.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(narrow(on_disk).to_le_bytes());
    out.extend(end.narrow_total.unwrap_or(narrow(total)).to_le_bytes());
    let wide = |v: u64| if end.zip64 { 0xFFFF_FFFF } else { v as u32 };
    out.extend(wide(dir_size).to_le_bytes());
    out.extend(wide(dir_offset).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn manifest() -> Vec<u8> {
    format!(
        r#"{{"format": "provisioner-tenant-template", "formatVersion": 1, "dbVersion": {DB}, "exportedAt": "2026-11-30T10:00:00Z",
           "source": {{"tenantId": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "tenantUrl": "a.example.com", "tenantName": "A"}}}}"#
    )
    .into_bytes()
}

fn tenant() -> Vec<u8> {
    br#"{"id": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "url": "a.example.com", "name": "A", "sipDomain": "a.example.com", "settings": {}}"#.to_vec()
}

fn good() -> Vec<Entry> {
    vec![entry(MANIFEST, &manifest()), entry(TENANT, &tenant())]
}

fn read(bytes: &[u8]) -> Result<Template, TemplateError> {
    Template::read(bytes, &Limits::default(), DB)
}

fn zip64() -> End {
    End {
        zip64: true,
        ..End::default()
    }
}

#[test]
fn the_crafted_archives_read_in_both_encodings() {
    for end in [End::default(), zip64()] {
        let t = read(&archive(&good(), &end)).unwrap();
        assert_eq!(t.tenant.url, "a.example.com");
    }
}

#[test]
fn counts_that_disagree_are_refused_in_both_encodings() {
    for base in [End::default(), zip64()] {
        let on_disk_differs = End {
            on_disk: Some(1),
            ..base.clone()
        };
        assert_eq!(
            read(&archive(&good(), &on_disk_differs)),
            Err(TemplateError::CountsDiffer(1, 2))
        );
        let fewer = End {
            on_disk: Some(1),
            total: Some(1),
            ..base.clone()
        };
        assert!(matches!(
            read(&archive(&good(), &fewer)),
            Err(TemplateError::CountDisagrees { declared: 1, .. })
        ));
        let more = End {
            on_disk: Some(5),
            total: Some(5),
            ..base
        };
        assert_eq!(
            read(&archive(&good(), &more)),
            Err(TemplateError::CountDisagrees {
                declared: 5,
                found: "2".into()
            })
        );
    }
}

#[test]
fn the_zip64_end_record_must_agree_with_the_end_record() {
    let end = End {
        narrow_total: Some(3),
        ..zip64()
    };
    assert_eq!(
        read(&archive(&good(), &end)),
        Err(TemplateError::Zip64Disagrees("total entries"))
    );
    let astray = End {
        locator_offset: Some(1 << 40),
        ..zip64()
    };
    assert!(matches!(
        read(&archive(&good(), &astray)),
        Err(TemplateError::Malformed(_))
    ));
}

#[test]
fn archives_on_several_disks_are_refused() {
    for end in [
        End {
            disk: 1,
            ..End::default()
        },
        End { disk: 1, ..zip64() },
        End {
            locator_disks: Some(2),
            ..zip64()
        },
    ] {
        assert_eq!(
            read(&archive(&good(), &end)),
            Err(TemplateError::SpannedArchive)
        );
    }
    let mut entries = good();
    entries[1].disk = 1;
    assert_eq!(
        read(&archive(&entries, &End::default())),
        Err(TemplateError::SpannedArchive)
    );
}

#[test]
fn duplicate_names_are_refused_in_every_encoding() {
    let dup = || {
        let mut e = good();
        e.push(entry(MANIFEST, br#"{"format": "other"}"#));
        e
    };
    for end in [End::default(), zip64()] {
        assert_eq!(
            read(&archive(&dup(), &end)),
            Err(TemplateError::DuplicateEntry(MANIFEST.into()))
        );
    }
    // The same name flagged UTF-8 once: the reader decodes both alike.
    let mut flagged = dup();
    flagged[2].flags = 1 << 11;
    assert_eq!(
        read(&archive(&flagged, &End::default())),
        Err(TemplateError::DuplicateEntry(MANIFEST.into()))
    );
    let mut cased = good();
    cased.push(entry("Manifest.JSON", b"{}"));
    assert_eq!(
        read(&archive(&cased, &End::default())),
        Err(TemplateError::NamesCollide(
            MANIFEST.into(),
            "Manifest.JSON".into()
        ))
    );
}

#[test]
fn thousands_of_same_name_records_are_refused_by_count_then_by_name() {
    let mut many = good();
    many.extend((0..5_000).map(|_| entry(TENANT, &tenant())));
    assert_eq!(
        read(&archive(&many, &zip64())),
        Err(TemplateError::TooManyEntries(5_002, 1_000))
    );
    let roomy = Limits {
        max_entries: 10_000,
        ..Limits::default()
    };
    assert_eq!(
        Template::read(&archive(&many, &zip64()), &roomy, DB),
        Err(TemplateError::DuplicateEntry(TENANT.into()))
    );
}

#[test]
fn a_huge_directory_is_refused_before_it_is_walked() {
    let mut many = good();
    many.extend((0..20_000).map(|i| entry(&format!("junk/{i:08}.txt"), b"")));
    // The end record claims few entries: the directory's size alone refuses it.
    let end = End {
        on_disk: Some(2),
        total: Some(2),
        ..End::default()
    };
    let bytes = archive(&many, &end);
    assert!(matches!(
        walk(&bytes, &Limits::default()),
        Err(TemplateError::DirectoryTooLarge(_, 1_048_576))
    ));
    // Within the size budget, the walk stops at the first record past the declared count.
    let roomy = Limits {
        max_directory_bytes: 16 << 20,
        ..Limits::default()
    };
    assert_eq!(
        walk(&bytes, &roomy),
        Err(TemplateError::CountDisagrees {
            declared: 2,
            found: "more than 2".into()
        })
    );
}

#[test]
fn names_the_reader_would_decode_otherwise_are_refused() {
    let mut cp437 = good();
    cp437.push(Entry {
        name: b"caf\x82.txt".to_vec(),
        ..entry("", b"")
    });
    assert!(matches!(
        read(&archive(&cp437, &End::default())),
        Err(TemplateError::UnsupportedName(_))
    ));
    let mut second_name = good();
    let mut unicode_path = vec![0x75, 0x70, 18, 0, 1, 0, 0, 0, 0];
    unicode_path.extend(b"manifest.json");
    second_name.push(Entry {
        extra: unicode_path,
        ..entry("other.json", b"{}")
    });
    assert_eq!(
        read(&archive(&second_name, &End::default())),
        Err(TemplateError::UnsupportedName("other.json".into()))
    );
    let mut hidden = good();
    hidden.push(Entry {
        flags: 1 << 11,
        ..entry("a\u{202e}b.json", b"{}")
    });
    assert!(matches!(
        read(&archive(&hidden, &End::default())),
        Err(TemplateError::UnsafeName(_))
    ));
}

#[test]
fn shared_data_symlinks_and_truncation_are_refused() {
    let mut shared = good();
    shared.push(Entry {
        same_data_as: Some(0),
        ..entry("copy.json", b"")
    });
    assert_eq!(
        read(&archive(&shared, &End::default())),
        Err(TemplateError::SharedData(
            MANIFEST.into(),
            "copy.json".into()
        ))
    );
    let mut link = good();
    link.push(Entry {
        unix_mode: Some(0o120777),
        ..entry("link", b"/etc/passwd")
    });
    assert_eq!(
        read(&archive(&link, &End::default())),
        Err(TemplateError::Symlink("link".into()))
    );
    let bytes = archive(&good(), &End::default());
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 1);
    assert!(matches!(read(&cut), Err(TemplateError::NotZip(_))));
    // The directory's size claims one byte less than its records take.
    let mut short = bytes.clone();
    let at = short.len() - 10;
    let size = u32::from_le_bytes(short[at..at + 4].try_into().unwrap()) - 1;
    short[at..at + 4].copy_from_slice(&size.to_le_bytes());
    assert!(matches!(read(&short), Err(TemplateError::Malformed(_))));
}
