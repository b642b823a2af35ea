//! Uploaded templates, read into memory: each at most `PROVISIONER_TEMPLATE_MAX_BYTES` (`413`),
//! all uploads in flight within the process's memory budget (a request that cannot get its
//! share in time is `503` with `Retry-After`), hashed into their template-store id as the bytes
//! arrive. Nothing touches the disk: the bytes go to the template store with their job.

use std::time::Duration;

use axum::{body::Bytes, http::HeaderMap};
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use provisioner_shared::{
    budget::{MemoryBudget, Reserved},
    db::templates::hex_id,
};
use sha2::{Digest, Sha256};

use crate::{error::ApiError, extract::media_type};

/// How long an upload waits for its share of the budget before it is refused with `503`.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// The `Retry-After` of that refusal, seconds.
const RETRY_AFTER: u64 = 5;
/// The budget is taken in steps of this many bytes as a body of unknown length arrives.
const STEP: u64 = 1 << 20;

/// A template received with a request, in memory.
#[derive(Debug)]
pub(crate) struct Upload {
    /// Its id in the template store: the hex SHA-256 of `bytes`.
    pub(crate) id: String,
    pub(crate) bytes: Bytes,
    /// Its share of the memory budget, held while the bytes are.
    pub(crate) reserved: Reserved,
}

/// Reads `stream` into memory: more than `max` bytes is `413`. `expected` (a declared length)
/// is reserved before the first byte is read; a body longer than that takes more of the budget
/// as it arrives.
pub(crate) async fn read<S, E>(
    budget: &MemoryBudget,
    stream: S,
    expected: Option<u64>,
    max: u64,
) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    let expected = expected.unwrap_or(0).min(max);
    let mut reserved = budget.none();
    take(&mut reserved, expected).await?;
    read_within(reserved, stream, max).await
}

/// Reads `stream` into memory within `reserved` (already taken), which grows as the bytes pass
/// it: more than `max` bytes is `413`.
pub(crate) async fn read_within<S, E>(
    mut reserved: Reserved,
    mut stream: S,
    max: u64,
) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    let expected = reserved.bytes().min(max);
    let mut buffer = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Into::into)?;
        let len = (buffer.len() + chunk.len()) as u64;
        if len > max {
            return Err(too_large(max));
        }
        if len > reserved.bytes() {
            take(&mut reserved, (len + STEP).min(max)).await?;
        }
        hasher.update(&chunk);
        buffer.extend_from_slice(&chunk);
    }
    Ok(Upload {
        id: hex_id(&hasher.finalize()),
        bytes: buffer.freeze(),
        reserved,
    })
}

/// Grows `reserved` to `bytes`, waiting at most `BUDGET_WAIT`; `503` when it does not fit.
pub(crate) async fn take(reserved: &mut Reserved, bytes: u64) -> Result<(), ApiError> {
    if reserved.grow_within(bytes, BUDGET_WAIT).await {
        Ok(())
    } else {
        Err(ApiError::Busy {
            detail: "the server is receiving as many templates as its memory allows; retry later"
                .to_owned(),
            retry_after: RETRY_AFTER,
        })
    }
}

/// The request's declared body length; `413` at once when it is larger than `max`.
pub(crate) fn declared_length(headers: &HeaderMap, max: u64) -> Result<Option<u64>, ApiError> {
    match content_length(headers) {
        Some(n) if n > max => Err(too_large(max)),
        length => Ok(length),
    }
}

/// Whether the request declares a body of at most `bytes`.
pub(crate) fn declared_at_most(headers: &HeaderMap, bytes: u64) -> bool {
    content_length(headers).is_some_and(|n| n <= bytes)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A raw template body: `application/zip` (or the usual aliases), else `415`.
pub(crate) fn require_zip(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_str() {
        "application/zip" | "application/octet-stream" | "application/x-zip-compressed" => Ok(()),
        "" => Err(ApiError::UnsupportedMediaType(
            "Content-Type is missing; send application/zip".to_owned(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other} is not supported here; send application/zip"
        ))),
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!("the template is larger than {max} bytes"))
}
