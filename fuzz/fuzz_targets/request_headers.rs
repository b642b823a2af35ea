//! The `Prefer`, `Idempotency-Key` and cursor parsers on arbitrary bytes: they never panic, what
//! they accept obeys their rules, and cursors and job keys read back what they were made from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner_api::fuzzing::{
    MAX_PREFER_WAIT, decode_cursor, encode_cursor, idempotency_key, job_key, prefer_wait,
};

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Some(wait) = prefer_wait(&values) {
        assert!(wait <= MAX_PREFER_WAIT);
    }
    if let Some(key) = idempotency_key(data) {
        assert!((1..=255).contains(&key.len()));
        assert!(key.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(decode_cursor(&encode_cursor(text)).as_deref(), Some(text));
    if let Some(key) = decode_cursor(text) {
        let _ = job_key(&key);
    }
    if let Some((micros, id)) = job_key(text) {
        assert_eq!(job_key(&format!("{micros}|{id}")), Some((micros, id)));
    }
});
