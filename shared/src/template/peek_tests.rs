//! Import Tenant's URL peek reads a bounded part of the archive, whatever its size.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use super::{Limits, TENANT, peek_tenant_url};

const ID: &str = "0b8f7a52-2f61-4a55-9a39-2f4d2a6e8f10";

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn the_url_peek_reads_a_bounded_part_of_a_hostile_archive() {
    // 48 MiB of incompressible filler, a tenant.json whose URL follows 8 MiB of settings, and
    // a tenant.json whose URL comes first: the peek reads the directory and at most 1 MiB of
    // tenant.json, whatever the archive's size.
    let mut noise = vec![0u8; 48 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let late = format!(
        r#"{{"id": "{ID}", "settings": {{"a": "{}"}}, "url": "late.example.com"}}"#,
        "v".repeat(8 << 20)
    );
    let early =
        format!(r#"{{"id": "{ID}", "url": "a.example.com", "settings": {{}}}}"#).into_bytes();
    for (body, expect) in [
        (late.into_bytes(), None),
        (early, Some("a.example.com".to_owned())),
    ] {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("filler.bin", stored).unwrap();
        zip.write_all(&noise).unwrap();
        zip.start_file(TENANT, stored).unwrap();
        zip.write_all(&body).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let mut file = Counting {
            inner: Cursor::new(&bytes),
            read: 0,
        };
        assert_eq!(peek_tenant_url(&mut file, &Limits::default()), expect);
        let bound = Limits::default().max_directory_bytes + (2 << 20);
        assert!(
            file.read <= bound,
            "the peek read {} of {} bytes; at most {bound} allowed",
            file.read,
            bytes.len()
        );
    }
}
