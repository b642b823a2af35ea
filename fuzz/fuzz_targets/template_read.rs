//! The template reader on arbitrary bytes: it never panics, and a template it accepts, written
//! again, reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner_shared::template::{Limits, Template, peek_tenant_url};

/// The schema version the seeds carry (the newest migration when they were made).
const DB_VERSION: i64 = 20261130000003;

fuzz_target!(|data: &[u8]| {
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
});
