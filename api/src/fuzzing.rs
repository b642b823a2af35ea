//! Entry points for the cargo-fuzz targets in `fuzz/`: the create-request validator and the
//! `Prefer`, `Idempotency-Key` and cursor parsers, reachable from outside the crate only here.
//! Not an API: the rest of the crate stays private.

use std::collections::BTreeMap;

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
