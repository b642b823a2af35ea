//! The `Prefer`, `Idempotency-Key` and cursor parsers on arbitrary bytes: they never panic, what
//! they accept obeys their rules, and cursors and job keys read back what they were made from.
//! (The body is `provisioner_api::fuzzing::request_headers_target`, whose unit test replays
//! `fuzz/seeds/request_headers/`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner_api::fuzzing::request_headers_target;

fuzz_target!(|data: &[u8]| request_headers_target(data));
