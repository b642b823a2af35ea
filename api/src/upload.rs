//! Uploaded templates, read into memory: each at most `PROVISIONER_TEMPLATE_MAX_BYTES` (`413`),
//! all uploads in flight within the process's memory budget (a request that cannot get its
//! share in time is `503` with `Retry-After`), hashed into their template-store id as the bytes
//! arrive. Nothing touches the disk: the bytes go to the template store with their job.
//!
//! One client's requests hold at most half of the budget together (any one of them alone may
//! hold more): an upload reserves its declared length before its first byte, so a client's slow
//! uploads would otherwise hold the whole budget, and every other client's uploads, for as long
//! as their bodies may take. Past its half a client's request is `503` at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

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
    pub(crate) reserved: Share,
}

/// The API's memory budget for templates, with each client's part of it.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    budget: MemoryBudget,
    /// Bytes held by each client's requests; a client's entry goes with its last share.
    clients: Arc<Mutex<HashMap<String, u64>>>,
    per_client: u64,
}

/// A request's share of the budget, counted to its client; given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    reserved: Reserved,
    budget: Budget,
    client: String,
    /// The bytes counted to the client for this share.
    counted: u64,
}

impl Budget {
    pub(crate) fn new(bytes: u64) -> Self {
        Self {
            budget: MemoryBudget::new(bytes),
            clients: Arc::default(),
            per_client: bytes / 2,
        }
    }

    /// A share of nothing for `client`'s request, to be grown with `take`.
    pub(crate) fn none(&self, client: &str) -> Share {
        Share {
            reserved: self.budget.none(),
            budget: self.clone(),
            client: client.to_owned(),
            counted: 0,
        }
    }

    /// The bytes reserved now (for `/metrics`).
    pub(crate) fn in_use_bytes(&self) -> u64 {
        self.budget.in_use_bytes()
    }
}

impl Share {
    pub(crate) fn bytes(&self) -> u64 {
        self.reserved.bytes()
    }

    /// Counts this share as `bytes` to its client, unless the client's other requests hold
    /// some and all together would pass its half of the budget.
    fn count(&mut self, bytes: u64) -> Result<(), ApiError> {
        if bytes <= self.counted {
            return Ok(());
        }
        let mut clients = self.budget.clients.lock().expect("client shares");
        let held = clients.entry(self.client.clone()).or_insert(0);
        let others = *held - self.counted;
        if others > 0 && others + bytes > self.budget.per_client {
            return Err(ApiError::Busy {
                detail: "this client's requests hold as much of the server's memory for \
                         templates as one client may; retry later"
                    .to_owned(),
                retry_after: RETRY_AFTER,
            });
        }
        *held = others + bytes;
        self.counted = bytes;
        Ok(())
    }

    /// Gives back all of this share but `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        self.reserved.shrink_to(bytes);
        let kept = self.reserved.bytes();
        if kept < self.counted {
            self.uncount_to(kept);
        }
    }

    /// Counts this share as `bytes` again, fewer than counted (its growth failed).
    fn uncount_to(&mut self, bytes: u64) {
        let mut clients = self.budget.clients.lock().expect("client shares");
        if let Some(held) = clients.get_mut(&self.client) {
            *held -= self.counted - bytes;
        }
        self.counted = bytes;
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut clients = self.budget.clients.lock().expect("client shares");
        if let Some(held) = clients.get_mut(&self.client) {
            *held -= self.counted;
            if *held == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// Reads `stream` into memory: more than `max` bytes is `413`. `expected` (a declared length)
/// is reserved before the first byte is read; a body longer than that takes more of the budget
/// as it arrives.
pub(crate) async fn read<S, E>(
    budget: &Budget,
    client: &str,
    stream: S,
    expected: Option<u64>,
    max: u64,
) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    let expected = expected.unwrap_or(0).min(max);
    let mut reserved = budget.none(client);
    take(&mut reserved, expected).await?;
    read_within(reserved, stream, max).await
}

/// Reads `stream` into memory within `reserved` (already taken), which grows as the bytes pass
/// it: more than `max` bytes is `413`.
pub(crate) async fn read_within<S, E>(
    mut reserved: Share,
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

/// Grows `share` to `bytes`, waiting at most `BUDGET_WAIT`; `503` when it does not fit, or
/// at once when its client's other requests hold their half of the budget.
pub(crate) async fn take(share: &mut Share, bytes: u64) -> Result<(), ApiError> {
    let before = share.counted;
    share.count(bytes)?;
    if share.reserved.grow_within(bytes, BUDGET_WAIT).await {
        Ok(())
    } else {
        share.uncount_to(before);
        Err(ApiError::Busy {
            detail: "the server is receiving as many templates as its memory allows; retry later"
                .to_owned(),
            retry_after: RETRY_AFTER,
        })
    }
}

/// What a JSON document may take in memory once parsed, per byte of its text, at most: a parsed
/// value is 32 bytes, `[0,0,...]` spends two bytes of text on each, and arrays grow by doubling.
/// An 8 MiB array of zeros took about 200 MB.
pub(crate) const JSON_PARSED_PER_BYTE: u64 = 32;
/// The least a JSON body's share grows by as its bytes arrive.
const JSON_STEP: u64 = 64 << 10;

/// Reads a JSON body of at most `max` bytes (else `413`) within `client`'s part of the budget:
/// its bytes as they arrive (a slow sender holds what it sent, not what it declared), then, once
/// it has arrived, what parsing it may take (`JSON_PARSED_PER_BYTE` a byte; `413` when that is
/// more than half the budget: no one body holds every other client's share). The share is to be held while the
/// parsed document is. Bodies read whole were held outside the budget: 150 connections each
/// sending most of an 8 MiB JSON batch took 1.3 GB, and parsing one took 200 MB more.
pub(crate) async fn read_json(
    budget: &Budget,
    client: &str,
    headers: &HeaderMap,
    body: axum::body::Body,
    max: u64,
    past_max: &str,
) -> Result<(Bytes, Share), ApiError> {
    let too_large = || ApiError::PayloadTooLarge(past_max.to_owned());
    declared_length(headers, max).map_err(|_| too_large())?;
    let mut share = budget.none(client);
    let mut covered = 0;
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let len = (buffer.len() + chunk.len()) as u64;
        if len > max {
            return Err(too_large());
        }
        if len > covered {
            covered = (len * 2).max(JSON_STEP).min(max);
            take_for_json(&mut share, covered).await?;
        }
        buffer.extend_from_slice(&chunk);
    }
    let parsed = (buffer.len() as u64).saturating_mul(JSON_PARSED_PER_BYTE);
    if parsed > budget.per_client {
        // Its parse would hold more than one client's part of the budget.
        return Err(ApiError::PayloadTooLarge(format!(
            "a JSON body of {} bytes needs more memory to read than this server gives one \
             client; send a smaller one (or NDJSON, for a batch)",
            buffer.len()
        )));
    }
    take_for_json(&mut share, parsed.max(covered)).await?;
    Ok((buffer.freeze(), share))
}

/// `take` of `bytes` for a JSON text or its parse, with a refusal that says so.
pub(crate) async fn take_for_json(share: &mut Share, bytes: u64) -> Result<(), ApiError> {
    take(share, bytes).await.map_err(|e| match e {
        ApiError::Busy { retry_after, .. } => ApiError::Busy {
            detail: "the server holds as many request bodies and templates as its memory \
                     allows, or this client's requests hold half of that memory; retry later"
                .to_owned(),
            retry_after,
        },
        other => other,
    })
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn refusal(taken: Option<Result<(), ApiError>>) -> String {
        match taken {
            Some(Err(ApiError::Busy {
                detail,
                retry_after: 5,
            })) => detail,
            other => panic!("not refused at once: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_holds_at_most_half_the_budget_beside_its_other_requests() {
        let budget = Budget::new(4 * MIB);
        let mut first = budget.none("a");
        take(&mut first, 3 * MIB / 2).await.unwrap();
        // The client's second request would pass its half: refused at once, not after a wait.
        let mut second = budget.none("a");
        let detail = refusal(take(&mut second, 3 * MIB / 2).now_or_never());
        assert!(detail.contains("this client's requests"), "{detail}");
        assert_eq!(second.counted, 0, "a refused growth counts nothing");
        // Another client's fits beside it.
        let mut other = budget.none("b");
        take(&mut other, 3 * MIB / 2).await.unwrap();
        // A request alone may hold more than half, as its bytes arrive.
        drop((first, second));
        let mut alone = budget.none("a");
        take(&mut alone, MIB).await.unwrap();
        take(&mut alone, 5 * MIB / 2).await.unwrap();
        assert_eq!(budget.in_use_bytes(), 4 * MIB);
        drop((alone, other));
        assert!(
            budget.clients.lock().unwrap().is_empty(),
            "entries go with their shares"
        );
        assert_eq!(budget.in_use_bytes(), 0);
    }

    /// A body whose first `sent` bytes arrived and whose rest never does.
    fn stalled_body(sent: usize) -> axum::body::Body {
        let first = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(Bytes::from(vec![b' '; sent]))
        });
        axum::body::Body::from_stream(first.chain(futures_util::stream::pending()))
    }

    fn declaring(length: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::CONTENT_LENGTH, length.into());
        headers
    }

    /// A JSON body holds what it sent while it arrives, not what it declared nor what its
    /// parse may take: 150 bodies declared at 8 MiB and left unfinished each reserved 256 MiB.
    #[tokio::test]
    async fn a_slow_json_body_holds_what_it_sent_not_what_it_declared() {
        let budget = Budget::new(512 * MIB);
        let reading = tokio::spawn({
            let budget = budget.clone();
            async move {
                read_json(
                    &budget,
                    "a",
                    &declaring(8 * MIB),
                    stalled_body(MIB as usize),
                    8 * MIB,
                    "big",
                )
                .await
                .map(drop)
            }
        });
        let mut held = 0;
        for _ in 0..10_000 {
            held = budget.in_use_bytes();
            if held > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(held, 2 * MIB, "twice what arrived");
        reading.abort();
        assert!(reading.await.unwrap_err().is_cancelled());
        assert_eq!(budget.in_use_bytes(), 0, "given back with the request");
    }

    /// Once arrived, a JSON body holds what parsing it may take, 32 bytes a byte of text, but
    /// never more than half the budget: one body does not hold every other client's share.
    #[tokio::test]
    async fn an_arrived_json_body_holds_its_parse_up_to_half_the_budget() {
        let budget = Budget::new(512 * MIB);
        let body = axum::body::Body::from(vec![b' '; MIB as usize]);
        let (bytes, share) = read_json(&budget, "a", &HeaderMap::new(), body, 8 * MIB, "big")
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, MIB);
        assert_eq!(share.bytes(), 32 * MIB);
        drop(share);
        // A parse that would take more than a client's half is refused.
        let small = Budget::new(16 * MIB);
        let body = axum::body::Body::from(vec![b' '; MIB as usize]);
        match read_json(&small, "a", &HeaderMap::new(), body, 8 * MIB, "big").await {
            Err(ApiError::PayloadTooLarge(detail)) => {
                assert!(
                    detail.contains("than this server gives one client"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(small.in_use_bytes(), 0);
        // Past the limit: 413, whatever it declared.
        let body = axum::body::Body::from(vec![b' '; 2 * MIB as usize]);
        assert!(matches!(
            read_json(&budget, "a", &HeaderMap::new(), body, MIB, "big").await,
            Err(ApiError::PayloadTooLarge(d)) if d == "big"
        ));
        assert!(matches!(
            read_json(&budget, "a", &declaring(2 * MIB), stalled_body(1), MIB, "big").await,
            Err(ApiError::PayloadTooLarge(d)) if d == "big"
        ));
    }

    #[tokio::test]
    async fn a_growth_the_budget_cannot_hold_is_uncounted() {
        let budget = Budget::new(2 * MIB);
        let mut other = budget.none("b");
        take(&mut other, 3 * MIB / 2).await.unwrap();
        let mut share = budget.none("a");
        take(&mut share, MIB / 4).await.unwrap();
        tokio::time::pause();
        // The budget has half a MiB left: waited for, then refused; the client is counted as
        // before.
        let detail = match take(&mut share, MIB).await {
            Err(ApiError::Busy { detail, .. }) => detail,
            other => panic!("{other:?}"),
        };
        assert!(
            detail.contains("as many templates as its memory allows"),
            "{detail}"
        );
        assert_eq!(budget.clients.lock().unwrap()["a"], MIB / 4);
    }
}
