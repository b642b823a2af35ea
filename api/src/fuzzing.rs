//! Entry points for the cargo-fuzz targets in `fuzz/`: the create-request validator and the
//! `Prefer`, `Idempotency-Key` and cursor parsers, reachable from outside the crate only here,
//! and the targets' bodies (`create_request_target`, `request_headers_target`), whose unit tests
//! replay the committed seeds and crash reproducers (`fuzz/seeds/TARGET/`). Not an API: the rest
//! of the crate stays private.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use crate::{extract, validate};

/// What a create request that passed validation asks for.
#[derive(Debug)]
pub struct Accepted {
    pub tenant_url: String,
    pub tenant_name: String,
    pub lock_timeout: u32,
    pub number_map: BTreeMap<String, String>,
}

/// A stored template's id, as a form's file part is named.
const FORM_FILE_ID: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a create request's template comes from: 0 JSON, 1 form with a file, else form without.
pub fn create_request(
    raw_url: &str,
    body: &Map<String, Value>,
    input: u8,
) -> Result<Accepted, Vec<String>> {
    let input = match input {
        0 => validate::TemplateInput::Json,
        1 => validate::TemplateInput::FormFile(FORM_FILE_ID),
        _ => validate::TemplateInput::Form,
    };
    validate::create_request(raw_url, body, input)
        .map(|r| Accepted {
            tenant_url: r.tenant_url.as_str().to_owned(),
            tenant_name: r.params.tenant_name,
            lock_timeout: r.params.lock_timeout,
            number_map: r.params.number_map,
        })
        .map_err(|errors| errors.into_iter().map(|e| e.field).collect())
}

/// The wait a request's `Prefer` header values ask for.
pub fn prefer_wait(values: &[&[u8]]) -> Option<u64> {
    extract::prefer_wait(values.iter().copied())
}

/// The longest `Prefer: wait`.
pub const MAX_PREFER_WAIT: u64 = extract::MAX_PREFER_WAIT;

/// An `Idempotency-Key` header value, if valid.
pub fn idempotency_key(raw: &[u8]) -> Option<String> {
    extract::idempotency_key(raw).map(str::to_owned)
}

/// The sort key a listing cursor carries.
pub fn decode_cursor(cursor: &str) -> Option<String> {
    extract::decode_cursor(cursor)
}

/// The cursor for a sort key.
pub fn encode_cursor(key: &str) -> String {
    extract::encode_cursor(key)
}

/// A job listing's sort key (microseconds, id) read from its text.
pub fn job_key(text: &str) -> Option<(i64, String)> {
    extract::job_key(text).map(|(at, id)| (at.timestamp_micros(), id.to_string()))
}

/// The `create_request` target: create-request validation on arbitrary input (first line: the
/// path's tenant URL; then one byte choosing JSON, form with file or form with URL; then a JSON
/// object). It never panics, a refusal names at least one field, and what it accepts obeys every
/// documented rule.
pub fn create_request_target(data: &[u8]) {
    let (head, rest) = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or((data, &[][..]), |i| (&data[..i], &data[i + 1..]));
    let Some((&input, json)) = rest.split_first() else {
        return;
    };
    let Ok(Value::Object(body)) = crate::strict_json::parse(json) else {
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
            assert!(
                !name.trim().is_empty() && name.chars().count() <= 255,
                "{name:?}"
            );
            let digits =
                |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
            let mut targets = HashSet::new();
            for (from, to) in &accepted.number_map {
                assert!(digits(from) && digits(to), "{from} -> {to}");
                assert!(targets.insert(to), "{to} is the target of two keys");
            }
        }
        Err(fields) => assert!(!fields.is_empty()),
    }
}

/// The `request_headers` target: the `Prefer`, `Idempotency-Key` and cursor parsers on arbitrary
/// bytes. They never panic, what they accept obeys their rules, and cursors and job keys read
/// back what they were made from.
pub fn request_headers_target(data: &[u8]) {
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
    // Every key without a NUL (which no issued key holds) reads back as it was made.
    let issuable = (!text.contains('\0')).then_some(text);
    assert_eq!(decode_cursor(&encode_cursor(text)).as_deref(), issuable);
    if let Some(key) = decode_cursor(text) {
        let _ = job_key(&key);
    }
    if let Some((micros, id)) = job_key(text) {
        assert_eq!(job_key(&format!("{micros}|{id}")), Some((micros, id)));
    }
}

#[cfg(test)]
mod tests {
    use provisioner_shared::template::fuzzing::seeds;

    /// Replays every committed seed and crash reproducer of `target` through `body`.
    fn replay(target: &str, body: fn(&[u8])) {
        let seeds = seeds(target);
        assert!(seeds.len() >= 4, "{target}: {} seeds", seeds.len());
        for (name, data) in seeds {
            let run = std::panic::catch_unwind(|| body(&data));
            assert!(run.is_ok(), "{target}: seed {name} panicked");
        }
    }

    #[test]
    fn the_create_request_seeds_pass_the_target() {
        replay("create_request", super::create_request_target);
    }

    #[test]
    fn the_request_headers_seeds_pass_the_target() {
        replay("request_headers", super::request_headers_target);
    }
}
