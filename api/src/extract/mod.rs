//! Typed extractors for what several routes read the same way: a tenant named in the path, the
//! lock timeout, `Idempotency-Key`, `Prefer: wait`, JSON object bodies, and pages of a listing.
//! Each parses in one place and rejects with an `ApiError` (problem+json).

mod headers;
mod json;
mod lock_timeout;
mod page;
mod path;
mod query;
mod tenant;
mod trace;

pub(crate) use headers::{
    IdempotencyKey, MAX_PREFER_WAIT, PreferWait, clamped_seconds, idempotency_key, media_type,
    prefer_wait,
};
pub(crate) use json::JsonObject;
pub(crate) use lock_timeout::{JobLockTimeout, RouteLockTimeout, lock_timeout_from};
pub(crate) use page::{
    Page, PageQuery, decode_cursor, encode_cursor, job_key, job_key_text, not_a_cursor,
    template_key, template_key_text,
};
pub(crate) use path::PathText;
pub(crate) use provisioner_shared::domain::whole_number;
pub(crate) use query::{
    EMPTY_IS_ABSENT, optional_param, query_param, refuse_undecodable_queries, status_param,
    wait_deadline,
};
pub(crate) use tenant::TenantPath;
pub(crate) use trace::{CallerTrace, RequestTrace, request_span, start as start_trace};
