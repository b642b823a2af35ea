//! Peak memory of reading hostile templates, measured on this test binary's own process
//! (`VmHWM`, reset through `/proc/self/clear_refs`). One test per binary run keeps the figure
//! clean: the cases run one after the other inside it.

use std::io::{Cursor, Write};

use provisioner_shared::template::{self, Limits, Template};

const DB: i64 = 7;
const MIB: u64 = 1 << 20;

/// Resident-set high-water mark of this process, bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn current_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resets the high-water mark to the current resident set.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9));
    for (name, body) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn manifest() -> Vec<u8> {
    format!(
        r#"{{"format": "{}", "formatVersion": 1, "dbVersion": {DB}, "exportedAt": "2026-11-30T10:00:00Z",
           "source": {{"tenantId": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "tenantUrl": "a.example.com", "tenantName": "A"}}}}"#,
        template::FORMAT
    )
    .into_bytes()
}

fn tenant() -> Vec<u8> {
    br#"{"id": "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10", "url": "a.example.com", "name": "A", "sipDomain": "a.example.com", "settings": {}}"#.to_vec()
}

/// `[0,0,0,...]` of about `bytes` bytes: the densest JSON there is.
fn dense_array(bytes: u64) -> String {
    let mut s = String::with_capacity(bytes as usize + 2);
    s.push('[');
    while (s.len() as u64) < bytes {
        s.push_str("0,");
    }
    s.push('0');
    s.push(']');
    s
}

fn uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The hostile and the large-but-ordinary templates measured, by name.
fn case(name: &str) -> (Vec<u8>, u64, bool) {
    let dense = || dense_array(16 * MIB);
    let (entry, body, import) = match name {
        // Object data (imported by both kinds) and audit details (imported only by Import
        // Tenant) of the densest JSON: 8 million values in 16 MiB.
        "dense-objects-create" | "dense-objects-import" => (
            template::OBJECTS,
            format!(
                r#"[{{"id": "{}", "kind": "team", "name": "t", "data": {{"a": {}}}}}]"#,
                uuid(1),
                dense()
            ),
            name.ends_with("import"),
        ),
        "dense-audit-create" | "dense-audit-import" => (
            template::AUDIT,
            format!(
                r#"[{{"at": "2026-11-30T10:00:00Z", "actor": "a", "action": "b", "object": "c", "details": {{"a": {}}}}}]"#,
                dense()
            ),
            name.ends_with("import"),
        ),
        // 100,000 small objects with a little data each: read whole.
        "many-objects-import" => {
            let objects: Vec<String> = (0..100_000)
                .map(|i| {
                    format!(
                        r#"{{"id": "{}", "kind": "skill", "name": "skill {i}", "data": {{"level": {i}, "tags": ["x"]}}, "refs": []}}"#,
                        uuid(i)
                    )
                })
                .collect();
            (template::OBJECTS, format!("[{}]", objects.join(",")), true)
        }
        other => panic!("no case {other}"),
    };
    let size = body.len() as u64;
    let archive = zip_of(&[
        (template::MANIFEST, manifest()),
        (template::TENANT, tenant()),
        (entry, body.into_bytes()),
    ]);
    (archive, size, import)
}

const CASES: [&str; 5] = [
    "dense-objects-create",
    "dense-objects-import",
    "dense-audit-create",
    "dense-audit-import",
    "many-objects-import",
];

/// Run in a child process per case (see below): prints `PEAK <bytes> <uncompressed> <said>`.
#[test]
#[ignore = "run in a child process by the measuring test"]
fn measure_one_case() {
    let Ok(name) = std::env::var("TEMPLATE_MEMORY_CASE") else {
        return;
    };
    let (archive, size, import) = case(&name);
    let limits = Limits::default();
    let before = current_rss();
    reset_peak();
    let read = if import {
        Template::read_upgrading(&archive, &limits, DB)
    } else {
        Template::read_for_create(&archive, &limits, DB)
    };
    let peak = peak_rss().saturating_sub(before);
    let said = match read {
        Ok(t) => format!(
            "read ({} objects, {} audit)",
            t.objects.len(),
            t.audit.len()
        ),
        Err(e) => format!("refused: {e}"),
    };
    println!("PEAK {peak} {size} {} {said}", archive.len());
}

#[test]
fn reading_a_template_costs_a_small_multiple_of_its_uncompressed_size() {
    let mut worst = 0f64;
    for name in CASES {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "measure_one_case",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TEMPLATE_MEMORY_CASE", name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("PEAK ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("{name}: no figure in {stdout}"));
        let mut parts = line.splitn(4, ' ');
        let mut num = || parts.next().unwrap().parse::<u64>().unwrap();
        let (peak, size, archive) = (num(), num(), num());
        let said = parts.next().unwrap_or_default();
        let ratio = peak as f64 / size as f64;
        worst = worst.max(ratio);
        println!(
            "{name}: archive {} KiB, uncompressed {} KiB, peak +{} KiB ({ratio:.1}x): {said}",
            archive / 1024,
            size / 1024,
            peak / 1024
        );
    }
    assert!(
        worst <= 3.0,
        "reading cost up to {worst:.1}x the template's uncompressed size"
    );
}
