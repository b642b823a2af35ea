//! The template reader on arbitrary bytes: it never panics, and a template it accepts, written
//! again, reads back equal. (The body is `provisioner_shared::template::fuzzing::template_read`,
//! whose unit test replays `fuzz/seeds/template_read/`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner_shared::template::fuzzing::template_read;

fuzz_target!(|data: &[u8]| template_read(data));
