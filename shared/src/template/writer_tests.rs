//! The streamed writer: its archive reads back, its entries are the bytes the ZIP library and
//! `serde_json::to_writer_pretty` write for the whole lists, paging changes nothing, and it
//! holds no more than a few pages' worth however much goes through it.

use std::io::{self, Cursor, Read, Write};

use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::*;

const DB: i64 = 7;

fn doc(v: serde_json::Value) -> JsonDoc {
    v.as_object().unwrap().clone().into()
}

fn sample(users: usize, audit: usize) -> Template {
    let id = Uuid::from_u128(1);
    let team = Uuid::from_u128(2);
    Template {
        manifest: Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            db_version: DB,
            exported_at: Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap(),
            source: ManifestSource {
                tenant_id: id,
                tenant_url: "a.example.com".into(),
                tenant_name: "A".into(),
            },
        },
        tenant: TenantEntry {
            id,
            url: "a.example.com".into(),
            name: "A".into(),
            sip_domain: "a.example.com".into(),
            settings: doc(json!({"timezone": "Europe/London", "nested": {"deep": [1, 2]}})),
        },
        users: (0..users)
            .map(|i| UserEntry {
                id: Uuid::from_u128(100 + i as u128),
                login_id: format!("user{i}"),
                first_name: "Grace".into(),
                last_name: "Hopper".into(),
                email: format!("u{i}@a.example"),
                roles: vec!["agent".into()],
                password_hash: None,
                teams: vec![team],
            })
            .collect(),
        objects: vec![ObjectEntry {
            id: team,
            kind: "team".into(),
            name: "Tier 1".into(),
            data: doc(json!({"size": 5, "tags": ["a", "b"]})),
            refs: vec![],
        }],
        access_numbers: vec![],
        calling_lists: vec![CallingListEntry {
            id: Uuid::from_u128(3),
            name: "Leads".into(),
            entries: vec![json!({"phone": "4155550000"}).as_object().unwrap().clone()].into(),
        }],
        audit: (0..audit)
            .map(|i| AuditEntry {
                at: Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap(),
                actor: "ops".into(),
                action: "update".into(),
                object: format!("service:{i}"),
                details: doc(json!({"n": i})),
            })
            .collect(),
    }
}

/// The archive the ZIP library writes with each entry whole, as pretty JSON.
fn reference(t: &Template) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let entries: [(&str, serde_json::Result<Vec<u8>>); 7] = [
        (MANIFEST, serde_json::to_vec_pretty(&t.manifest)),
        (TENANT, serde_json::to_vec_pretty(&t.tenant)),
        (USERS, serde_json::to_vec_pretty(&t.users)),
        (OBJECTS, serde_json::to_vec_pretty(&t.objects)),
        (ACCESS_NUMBERS, serde_json::to_vec_pretty(&t.access_numbers)),
        (CALLING_LISTS, serde_json::to_vec_pretty(&t.calling_lists)),
        (AUDIT, serde_json::to_vec_pretty(&t.audit)),
    ];
    for (name, body) in entries {
        zip.start_file(name, options).unwrap();
        zip.write_all(&body.unwrap()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Every entry of an archive, by name in archive order, through the ZIP library.
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(archive)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut e = zip.by_index(i).unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            (e.name().to_owned(), body)
        })
        .collect()
}

/// Writes `t` with each list in pages of `per_page` items.
fn paged(t: &Template, per_page: usize) -> Vec<u8> {
    let mut w = TemplateWriter::new(Vec::new(), &t.manifest, &t.tenant).unwrap();
    for chunk in t.users.chunks(per_page) {
        w.users(chunk).unwrap();
    }
    w.objects(&t.objects).unwrap();
    // Access numbers never given: written empty, in their place.
    for chunk in t.calling_lists.chunks(per_page) {
        w.calling_lists(chunk).unwrap();
    }
    for chunk in t.audit.chunks(per_page) {
        w.page(&Page::Audit(chunk.to_vec())).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn a_written_template_reads_back_whole_with_the_entries_of_whole_lists() {
    let t = sample(5, 7);
    let written = t.write();
    assert_eq!(Template::read(&written, &Limits::default(), DB).unwrap(), t);
    let (ours, theirs) = (entries(&written), entries(&reference(&t)));
    let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    // Every entry of the format, in its order.
    assert_eq!(names, super::ENTRIES);
    assert_eq!(
        ours, theirs,
        "each entry holds the very bytes of the whole list"
    );
}

#[test]
fn writing_in_pages_of_any_size_makes_the_same_archive() {
    let t = sample(9, 23);
    let whole = t.write();
    for per_page in [1, 2, 5, 100] {
        assert_eq!(paged(&t, per_page), whole, "pages of {per_page}");
    }
    let empty = sample(0, 0);
    assert_eq!(paged(&empty, 3), empty.write());
    assert!(
        entries(&empty.write())
            .iter()
            .any(|(n, body)| n == USERS && body == b"[]")
    );
}

#[test]
fn lists_out_of_archive_order_are_refused() {
    let t = sample(1, 1);
    let mut w = TemplateWriter::new(Vec::new(), &t.manifest, &t.tenant).unwrap();
    w.audit(&t.audit).unwrap();
    assert!(w.users(&t.users).is_err());
}

#[test]
fn database_text_is_made_compact_outside_strings_only() {
    let d = JsonDoc::from_database(
        r#"{"a": 1, "b": [true, null], "c": "x y, \"q: r\" \\", "d": {"e": "\t"}}"#.to_owned(),
    )
    .unwrap();
    assert_eq!(
        d.get(),
        r#"{"a":1,"b":[true,null],"c":"x y, \"q: r\" \\","d":{"e":"\t"}}"#
    );
    assert!(JsonDoc::from_database("{\"a\": ".to_owned()).is_err());
}

/// Counts what it is given and keeps none of it.
struct Meter {
    written: u64,
}

impl Write for Meter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_writer_passes_pages_on_as_they_come_instead_of_holding_the_archive() {
    // Details that do not compress much, as real data.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        (0..32)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'0' + (state % 75) as u8)
            })
            .filter(|c| *c != '\\')
            .collect::<String>()
    };
    let t = sample(0, 0);
    let mut w = TemplateWriter::new(Meter { written: 0 }, &t.manifest, &t.tenant).unwrap();
    let (mut given, mut since_output, mut most_held, mut last_out) = (0u64, 0u64, 0u64, 0u64);
    for page in 0..400 {
        let items: Vec<AuditEntry> = (0..100)
            .map(|i| AuditEntry {
                at: Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap(),
                actor: "ops".into(),
                action: "update".into(),
                object: format!("o{page}-{i}"),
                details: doc(json!({"noise": noise()})),
            })
            .collect();
        let size = serde_json::to_vec_pretty(&items).unwrap().len() as u64;
        w.audit(&items).unwrap();
        given += size;
        since_output += size;
        let out = w.written();
        if out > last_out {
            (last_out, since_output) = (out, 0);
        }
        most_held = most_held.max(since_output);
    }
    let out = w.finish().unwrap().written;
    assert!(given > 4 << 20, "{given} bytes went through");
    assert!(
        most_held < 2 << 20,
        "up to {most_held} bytes of {given} went in before anything came out ({out} in all)"
    );
}
