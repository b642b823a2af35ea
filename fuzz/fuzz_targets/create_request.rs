//! Create-request validation on arbitrary input: it never panics, a refusal names at least one
//! field, and what it accepts obeys every documented rule. (The body is
//! `provisioner_api::fuzzing::create_request_target`, whose unit test replays
//! `fuzz/seeds/create_request/`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner_api::fuzzing::create_request_target;

fuzz_target!(|data: &[u8]| create_request_target(data));
