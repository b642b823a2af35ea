//! A corpus of crafted archives, built here byte by byte (stored entries): each bends one rule of
//! the central directory and is refused with its fault named. The first case proves the crafting
//! itself reads, in both the plain and the ZIP64 encodings.

use super::{
    craft::{End, Entry, archive, entry},
    walk,
};
use crate::template::{Limits, MANIFEST, TENANT, Template, TemplateError};

const DB: i64 = 7;

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

/// A ZIP64 end record whose size is the largest a field holds (the locator and the end record
/// otherwise right): refused as malformed, where adding to it overflowed.
#[test]
fn a_zip64_end_record_of_any_size_is_refused_without_overflow() {
    let mut bytes = Vec::new();
    // The ZIP64 end record at 0: signature, size u64::MAX, versions 45, then zeros.
    bytes.extend_from_slice(&0x0606_4b50_u32.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&[45, 0, 45, 0]);
    bytes.extend_from_slice(&[0; 40]);
    // The locator: on disk 0, the record at offset 0, one disk.
    bytes.extend_from_slice(&0x0706_4b50_u32.to_le_bytes());
    bytes.extend_from_slice(&0_u32.to_le_bytes());
    bytes.extend_from_slice(&0_u64.to_le_bytes());
    bytes.extend_from_slice(&1_u32.to_le_bytes());
    // The end record, every field saying "see ZIP64", no comment.
    bytes.extend_from_slice(&0x0605_4b50_u32.to_le_bytes());
    bytes.extend_from_slice(&[0xff; 16]);
    bytes.extend_from_slice(&[0, 0]);
    assert_eq!(bytes.len(), 98);
    assert!(
        matches!(read(&bytes), Err(TemplateError::Malformed(_))),
        "{:?}",
        read(&bytes)
    );
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
    // A name a reader ignoring case, or trailing dots and spaces, takes for one of the
    // format's entries: refused beside it and alone.
    for (name, like) in [
        ("Manifest.JSON", MANIFEST),
        ("Users.JSON", "users.json"),
        ("uſers.json", "users.json"),
        ("tenant.json ", TENANT),
        ("audit.json.", "audit.json"),
        ("audİt.json", "audit.json"),
        ("manıfest.json", MANIFEST),
        ("./tenant.json", TENANT),
        (".\\objects.json", "objects.json"),
        ("tenant.json/", TENANT),
    ] {
        let mut cased = good();
        let mut like_it = entry(name, b"[]");
        like_it.flags = 1 << 11;
        cased.push(like_it);
        assert_eq!(
            read(&archive(&cased, &End::default())),
            Err(TemplateError::NameLikeEntry(name.into(), like.into())),
            "{name}"
        );
    }
    // Other names that differ only in case, or in `\` for `/`, are harmless: ignored.
    let mut extras = good();
    for name in ["README.txt", "readme.txt", "notes/a.txt", "notes\\a.txt"] {
        extras.push(entry(name, b"hello"));
    }
    assert_eq!(
        read(&archive(&extras, &End::default())).unwrap().tenant.url,
        "a.example.com"
    );
    // The same extra twice is still two entries with one name.
    extras.push(entry("readme.txt", b"again"));
    assert_eq!(
        read(&archive(&extras, &End::default())),
        Err(TemplateError::DuplicateEntry("readme.txt".into()))
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
fn a_zip64_field_with_values_its_sentinels_do_not_stand_for_is_refused() {
    // Small sizes and offset in the record, others in a 24-byte ZIP64 field (which the ZIP
    // library would read instead): refused, as is a second ZIP64 field.
    let mut wide = vec![0x01, 0x00, 24, 0x00];
    wide.extend([0xFF; 24]);
    for extra in [
        wide,
        [vec![0x01, 0x00, 0, 0], vec![0x01, 0x00, 0, 0]].concat(),
    ] {
        let mut entries = good();
        entries.push(Entry {
            extra,
            ..entry("x.bin", b"abc")
        });
        assert_eq!(
            read(&archive(&entries, &End::default())),
            Err(TemplateError::Malformed(
                "`x.bin`: its ZIP64 field holds other values than those it stands for".into()
            ))
        );
    }
}

#[test]
fn entries_whose_data_overlap_are_refused() {
    // Each record alone fits before the directory; together they claim more than it holds.
    let plain = archive(&good(), &End::default());
    let end = plain.len() - 22;
    let dir_offset = u32::from_le_bytes(plain[end + 16..end + 20].try_into().unwrap());
    let mut overlapping = good();
    overlapping[0].declared_compressed = Some(dir_offset - 30);
    assert_eq!(
        read(&archive(&overlapping, &End::default())),
        Err(TemplateError::Malformed(
            "the entries' data add up to more than the archive holds: they overlap".into()
        ))
    );
}

#[test]
fn a_local_header_that_names_its_entry_otherwise_is_refused() {
    // A reader going by local headers would see a path escape, or another entry of the format.
    for (name, local) in [("notes.txt", "../../evil"), (TENANT, "TENANT.JSON")] {
        let mut entries = good();
        entries.push(Entry {
            local_name: Some(local.as_bytes().to_vec()),
            ..entry(name, b"{}")
        });
        if name == TENANT {
            entries.remove(1);
        }
        assert_eq!(
            read(&archive(&entries, &End::default())).map(|_| ()),
            Err(TemplateError::Malformed(format!(
                "the entry {name} has another name in its local header"
            ))),
            "{local}"
        );
    }
    // One that agrees, as every writer makes it, is read.
    let mut entries = good();
    entries.push(Entry {
        local_name: Some(b"notes.txt".to_vec()),
        ..entry("notes.txt", b"{}")
    });
    assert!(read(&archive(&entries, &End::default())).is_ok());
}

/// A WinZip AES extra field (AE-2, AES-256, stored inside) of `vendor`, "AE" when readable.
fn aes_field(vendor: &[u8; 2]) -> Vec<u8> {
    let mut field = vec![0x01, 0x99, 7, 0, 2, 0];
    field.extend(vendor);
    field.extend([3, 0, 0]);
    field
}

#[test]
fn an_entry_neither_stored_nor_deflated_or_an_encrypted_one_is_refused_by_name() {
    // bzip2, LZMA, Zstandard, an unassigned number: none is read.
    for method in [12u16, 14, 93, 1234] {
        let mut entries = good();
        entries[1].method = method;
        assert_eq!(
            read(&archive(&entries, &End::default())).map(|_| ()),
            Err(TemplateError::Unreadable(
                TENANT.into(),
                format!("compression method {method}; only stored (0) and deflate (8) are read")
            )),
            "{method}"
        );
    }
    // Encrypted, the traditional way or with WinZip's AES (which the ZIP library takes for
    // encryption whatever the flag and the method say).
    for (flags, method, extra) in [
        (1, 0, vec![]),
        (1, 99, aes_field(b"AE")),
        (0, 8, aes_field(b"AE")),
    ] {
        let mut encrypted = good();
        encrypted[0] = Entry {
            flags,
            method,
            extra,
            ..encrypted[0].clone()
        };
        assert_eq!(
            read(&archive(&encrypted, &End::default())).map(|_| ()),
            Err(TemplateError::Unreadable(
                MANIFEST.into(),
                "encrypted".into()
            )),
            "{method}"
        );
    }
}

#[test]
fn an_extra_field_the_zip_library_cannot_read_is_refused_by_name_on_any_entry() {
    // An entry of no part of the format is never decompressed: any method will do, AES
    // included, but not an extra field the ZIP library cannot read (with which it opens no
    // archive: it said "could not find EOCD").
    let mut entries = good();
    entries.push(Entry {
        method: 12,
        flags: 1,
        ..entry("notes.bz2", b"BZh")
    });
    entries.push(Entry {
        method: 99,
        flags: 1,
        extra: aes_field(b"AE"),
        ..entry("notes.aes", b"secret")
    });
    assert!(read(&archive(&entries, &End::default())).is_ok());
    let field = |id: u16, data: &[u8]| {
        let mut field = id.to_le_bytes().to_vec();
        field.extend((data.len() as u16).to_le_bytes());
        field.extend(data);
        field
    };
    let mut ntfs = vec![0, 0, 0, 0, 1, 0, 24, 0];
    ntfs.extend([0; 24]);
    // Times fields as the library reads them: NTFS's, and extended timestamps of one, two and
    // three times.
    let mut entries = good();
    for (i, extra) in [
        field(0x000a, &ntfs),
        field(0x5455, &[1, 0, 0, 0, 0]),
        field(0x5455, &[3, 0, 0, 0, 0, 0, 0, 0, 0]),
        field(0x5455, &[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ]
    .into_iter()
    .enumerate()
    {
        entries.push(Entry {
            extra,
            ..entry(&format!("notes{i}.txt"), b"{}")
        });
    }
    assert!(read(&archive(&entries, &End::default())).is_ok());
    let mut bad_ntfs = ntfs.clone();
    bad_ntfs[6] = 16;
    for (method, extra, why) in [
        (
            99,
            vec![],
            "it is AES-encrypted (method 99) without its AES encryption field",
        ),
        (
            0,
            aes_field(b"XX"),
            "its AES encryption field is not one the ZIP library reads",
        ),
        (
            0,
            field(0x000a, &bad_ntfs),
            "its NTFS times field is not one the ZIP library reads",
        ),
        (
            0,
            field(0x5455, &[3, 0, 0, 0, 0, 0, 0]),
            "its extended timestamp field is not one the ZIP library reads",
        ),
        (
            0,
            field(0x5455, &[8, 0, 0, 0, 0]),
            "its extended timestamp field is not one the ZIP library reads",
        ),
        (
            0,
            field(0x5455, &[]),
            "its extended timestamp field is not one the ZIP library reads",
        ),
    ] {
        let mut entries = good();
        entries.push(Entry {
            method,
            extra,
            ..entry("notes.txt", b"{}")
        });
        assert_eq!(
            read(&archive(&entries, &End::default())).map(|_| ()),
            Err(TemplateError::Malformed(format!("`notes.txt`: {why}")))
        );
    }
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
