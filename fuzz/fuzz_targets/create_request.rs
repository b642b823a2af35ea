//! Create-request validation on arbitrary input (first line: the path's tenant URL; then one
//! byte choosing JSON, form with file or form with URL; then a JSON object): it never panics, a
//! refusal names at least one field, and what it accepts obeys every documented rule.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use provisioner_api::fuzzing::create_request;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or((data, &[][..]), |i| (&data[..i], &data[i + 1..]));
    let Some((&input, json)) = rest.split_first() else {
        return;
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let raw_url = String::from_utf8_lossy(head);
    match create_request(&raw_url, &body, input) {
        Ok(accepted) => {
            let url = &accepted.tenant_url;
            assert!((1..=253).contains(&url.len()), "{url}");
            assert_eq!(*url, url.to_ascii_lowercase());
            assert!(accepted.lock_timeout <= 3600);
            let name = &accepted.tenant_name;
            assert!(!name.trim().is_empty() && name.chars().count() <= 255, "{name:?}");
            let digits = |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
            let mut targets = HashSet::new();
            for (from, to) in &accepted.number_map {
                assert!(digits(from) && digits(to), "{from} -> {to}");
                assert!(targets.insert(to), "{to} is the target of two keys");
            }
        }
        Err(fields) => assert!(!fields.is_empty()),
    }
});
