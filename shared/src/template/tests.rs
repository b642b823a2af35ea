//! Hostile and malformed archives: each is refused with its own error, never a crash.

use std::io::{Cursor, Write};

use serde_json::json;

use super::*;

const DB: i64 = 7;

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn manifest(format_version: u32, db_version: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "format": FORMAT, "formatVersion": format_version, "dbVersion": db_version,
        "exportedAt": "2026-11-30T10:00:00Z",
        "source": {"tenantId": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "tenantUrl": "a.example.com", "tenantName": "A"}
    }))
    .unwrap()
}

fn tenant() -> Vec<u8> {
    br#"{"id": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "url": "a.example.com", "name": "A", "sipDomain": "a.example.com", "settings": {}}"#.to_vec()
}

fn read(bytes: &[u8]) -> Result<Template, TemplateError> {
    Template::read(bytes, &Limits::default(), DB)
}

#[test]
fn a_minimal_template_reads_and_round_trips() {
    let t = read(&zip_of(&[
        (MANIFEST, &manifest(1, DB)),
        (TENANT, &tenant()),
    ]))
    .unwrap();
    assert!(t.users.is_empty() && t.objects.is_empty());
    assert_eq!(read(&t.write()).unwrap(), t);
}

#[test]
fn not_a_zip_is_refused() {
    assert!(matches!(
        read(b"PK\x03\x04 definitely not"),
        Err(TemplateError::NotZip(_))
    ));
    assert!(matches!(read(b"<html>"), Err(TemplateError::NotZip(_))));
    assert!(matches!(read(b""), Err(TemplateError::NotZip(_))));
}

#[test]
fn manifest_problems_are_refused() {
    assert_eq!(
        read(&zip_of(&[(TENANT, &tenant())])),
        Err(TemplateError::Missing(MANIFEST))
    );
    assert!(matches!(
        read(&zip_of(&[(MANIFEST, b"{nope")])),
        Err(TemplateError::InvalidEntry(MANIFEST, _))
    ));
    assert!(matches!(
        read(&zip_of(&[
            (MANIFEST, &manifest(2, DB)),
            (TENANT, &tenant())
        ])),
        Err(TemplateError::Incompatible("formatVersion", ..))
    ));
    assert!(matches!(
        read(&zip_of(&[
            (MANIFEST, &manifest(1, DB - 1)),
            (TENANT, &tenant())
        ])),
        Err(TemplateError::Incompatible("dbVersion", ..))
    ));
    let other = String::from_utf8(manifest(1, DB))
        .unwrap()
        .replace(FORMAT, "something-else");
    assert!(matches!(
        read(&zip_of(&[
            (MANIFEST, other.as_bytes()),
            (TENANT, &tenant())
        ])),
        Err(TemplateError::Incompatible("format", ..))
    ));
}

#[test]
fn entries_of_the_wrong_shape_are_refused() {
    let m = manifest(1, DB);
    let cases: [(&str, &[u8]); 4] = [
        (USERS, br#"{"not": "a list"}"#),
        (OBJECTS, br#"[{"id": "x", "kind": "team", "name": "t"}]"#),
        (
            ACCESS_NUMBERS,
            br#"[{"number": 12, "count": 1, "media": "VOICE"}]"#,
        ),
        (
            AUDIT,
            br#"[{"at": "yesterday", "actor": "a", "action": "b", "object": "c"}]"#,
        ),
    ];
    for (name, body) in cases {
        let err = read(&zip_of(&[
            (MANIFEST, &m),
            (TENANT, &tenant()),
            (name, body),
        ]))
        .unwrap_err();
        assert!(
            matches!(err, TemplateError::InvalidEntry(n, _) if n == name),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn dangling_references_and_bad_numbers_are_invalid_content() {
    let m = manifest(1, DB);
    let dangling = br#"[{"id": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f11", "kind": "service", "name": "s", "refs": ["0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f12"]}]"#;
    assert!(matches!(
        read(&zip_of(&[
            (MANIFEST, &m),
            (TENANT, &tenant()),
            (OBJECTS, dangling)
        ])),
        Err(TemplateError::InvalidContent(_))
    ));
    for numbers in [
        &br#"[{"number": "99", "count": 5, "media": "VOICE"}]"#[..],
        br#"[{"number": "1", "count": 0, "media": "VOICE"}]"#,
        br#"[{"number": "1a", "count": 1, "media": "VOICE"}]"#,
    ] {
        assert!(matches!(
            read(&zip_of(&[
                (MANIFEST, &m),
                (TENANT, &tenant()),
                (ACCESS_NUMBERS, numbers)
            ])),
            Err(TemplateError::InvalidContent(_))
        ));
    }
    let plain = br#"[{"id": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f11", "loginId": "a", "firstName": "a", "lastName": "b", "email": "a@b.c", "passwordHash": "plaintext"}]"#;
    assert!(matches!(
        read(&zip_of(&[
            (MANIFEST, &m),
            (TENANT, &tenant()),
            (USERS, plain)
        ])),
        Err(TemplateError::InvalidContent(_))
    ));
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..1001).map(|i| format!("junk/{i}.txt")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    assert_eq!(
        read(&zip_of(&entries)),
        Err(TemplateError::TooManyEntries(1001, 1000))
    );
}

#[test]
fn unsafe_names_are_refused() {
    for name in [
        "../manifest.json",
        "/etc/passwd",
        "a/../../b.json",
        "C:\\evil.json",
        "..\\x.json",
        // The contract refuses a name that contains `..` anywhere, not only as a segment.
        "notes..json",
        "a/..hidden",
    ] {
        let err = read(&zip_of(&[(name, b"{}"), (MANIFEST, &manifest(1, DB))])).unwrap_err();
        assert_eq!(err, TemplateError::UnsafeName(name.to_owned()));
    }
}

#[test]
fn duplicate_entries_are_refused() {
    // The writer refuses duplicates, so rename one entry in the finished bytes.
    let bytes = zip_of(&[
        (MANIFEST, &manifest(1, DB)),
        ("manifesX.json", &manifest(1, DB)),
        (TENANT, &tenant()),
    ]);
    let patched = replace_all(&bytes, b"manifesX.json", MANIFEST.as_bytes());
    assert_eq!(
        read(&patched),
        Err(TemplateError::DuplicateEntry(MANIFEST.to_owned()))
    );
}

#[test]
fn a_bomb_is_stopped_at_the_entry_limit_while_reading() {
    let limits = Limits {
        max_entries: 10,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    let zeros = vec![b' '; (1 << 20) + 1];
    let bytes = zip_of(&[(MANIFEST, &manifest(1, DB)), (USERS, &zeros)]);
    assert!(bytes.len() < 10_000, "the bomb is small on the wire");
    assert_eq!(
        Template::read(&bytes, &limits, DB),
        Err(TemplateError::EntryTooLarge(USERS.to_owned(), 1 << 20))
    );
}

#[test]
fn the_total_limit_counts_every_entry_read() {
    let limits = Limits {
        max_entries: 10,
        max_entry_bytes: 1 << 20,
        max_total_bytes: (3 << 19) + 10,
        ..Limits::default()
    };
    let big = vec![b' '; 1 << 19];
    let bytes = zip_of(&[
        (MANIFEST, &manifest(1, DB)),
        (USERS, &big),
        (OBJECTS, &big),
        (AUDIT, &big),
        (TENANT, &tenant()),
    ]);
    assert_eq!(
        Template::read(&bytes, &limits, DB),
        Err(TemplateError::TotalTooLarge(limits.max_total_bytes))
    );
}

#[test]
fn size_headers_that_lie_do_not_raise_the_limit() {
    // Entries of 2 MiB whose headers claim 10 bytes: reading never yields more than the header
    // says, and the lie is refused, whatever the compression.
    let limits = Limits {
        max_entries: 10,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Deflated,
    ] {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(MANIFEST, options).unwrap();
        zip.write_all(&manifest(1, DB)).unwrap();
        zip.start_file(USERS, options).unwrap();
        zip.write_all(&vec![b' '; 2 << 20]).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let size = (2u32 << 20).to_le_bytes();
        let patched = replace_all(&bytes, &size, &10u32.to_le_bytes());
        let err = Template::read(&patched, &limits, DB).unwrap_err();
        // Stored: the data ends (checksum wrong) after 10 bytes; deflated: an 11th byte comes.
        assert!(
            matches!(&err, TemplateError::Unreadable(n, _) | TemplateError::SizeLies(n) if n == USERS),
            "{method:?}: {err:?}"
        );
        if method == zip::CompressionMethod::Deflated {
            assert_eq!(err, TemplateError::SizeLies(USERS.to_owned()));
        }
    }
}

#[test]
fn other_harmless_entries_are_ignored() {
    let t = read(&zip_of(&[
        (MANIFEST, &manifest(1, DB)),
        (TENANT, &tenant()),
        ("README.txt", b"hello"),
        ("extra/notes.json", b"["),
    ]))
    .unwrap();
    assert_eq!(t.tenant.url, "a.example.com");
}

#[test]
fn entries_the_template_does_not_use_count_against_the_limits_too() {
    let limits = Limits {
        max_entry_bytes: 1 << 20,
        max_total_bytes: 3 << 19,
        ..Limits::default()
    };
    let zeros = vec![0u8; 1 << 20];
    let base = [(MANIFEST, manifest(1, DB)), (TENANT, tenant())];
    let with = |extra: &[(&str, &[u8])]| {
        let mut entries: Vec<(&str, &[u8])> =
            base.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        entries.extend_from_slice(extra);
        zip_of(&entries)
    };
    // Over the limit of one entry, under an ignored name.
    let big = vec![0u8; (1 << 20) + 1];
    assert_eq!(
        Template::read(&with(&[("pad.bin", &big)]), &limits, DB).unwrap_err(),
        TemplateError::EntryTooLarge("pad.bin".to_owned(), 1 << 20)
    );
    // Each within it, together over the total.
    assert_eq!(
        Template::read(&with(&[("a.bin", &zeros), ("b.bin", &zeros)]), &limits, DB).unwrap_err(),
        TemplateError::TotalTooLarge(3 << 19)
    );
    // One whose header understates what it yields.
    let bytes = with(&[("pad.bin", &zeros)]);
    let size = (1u32 << 20).to_le_bytes();
    let patched = replace_all(&bytes, &size, &10u32.to_le_bytes());
    assert_eq!(
        Template::read(&patched, &limits, DB).unwrap_err(),
        TemplateError::SizeLies("pad.bin".to_owned())
    );
    // Within the limits, it is ignored.
    assert!(Template::read(&bytes, &limits, DB).is_ok());
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}
