//! The body of the `template_read` cargo-fuzz target (`fuzz/`), here so that `cargo test`
//! replays its seeds and reproducers (`fuzz/seeds/template_read/`) through the same code. Not an
//! API.

use super::{Limits, Template, peek_tenant_url};

/// The schema version the seeds carry (the newest migration when they were made).
pub const DB_VERSION: i64 = 20261130000003;

/// Reads `data` every way a job or the API does, within small limits: it never panics, and a
/// template it accepts, written again, reads back equal.
pub fn template_read(data: &[u8]) {
    let limits = Limits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_directory_bytes: 1 << 20,
    };
    let _ = peek_tenant_url(std::io::Cursor::new(data), &limits);
    let _ = Template::read_for_create(data, &limits, DB_VERSION);
    let _ = Template::read_upgrading(data, &limits, DB_VERSION);
    if let Ok(template) = Template::read(data, &limits, DB_VERSION) {
        let again = Template::read(&template.write(), &Limits::default(), DB_VERSION)
            .expect("a template written from an accepted one reads back");
        assert_eq!(again, template);
    }
}

/// The committed seeds and crash reproducers of cargo-fuzz target `target`
/// (`fuzz/seeds/TARGET/*`), by file name, for the unit tests that replay them.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                data,
            )
        })
        .collect();
    seeds.sort();
    seeds
}

#[cfg(test)]
mod tests {
    /// Every committed seed and crash reproducer of the target passes it.
    #[test]
    fn the_fuzz_seeds_pass_the_target() {
        let seeds = super::seeds("template_read");
        assert!(seeds.len() >= 4, "{} seeds", seeds.len());
        for (name, data) in seeds {
            let run = std::panic::catch_unwind(|| super::template_read(&data));
            assert!(run.is_ok(), "seed {name} panicked");
        }
    }
}
