//! Accepting a batch: the body is read as it arrives (NDJSON line by line, or one bounded JSON
//! document), every item is validated as a single create is, and valid items are inserted in
//! chunks into one transaction, so the API holds at most a chunk of items whatever the batch's
//! size. Any invalid item rolls everything back. The body's keyed digest makes an
//! `Idempotency-Key` replay answer the same batch.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::HeaderMap,
};
use futures_util::StreamExt;
use provisioner_shared::{
    db::{
        self,
        batches::{BatchRow, CreateError, NewItem},
        idempotency::KeyHolder,
    },
    domain::{TemplateSource, TenantUrl},
    seal::Digester,
    trace::TraceContext,
};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    slots::Slot,
    transaction,
    validate::{self, TemplateInput, TenantUrlIn},
};

/// Most item problems one answer lists.
pub(crate) const MAX_REPORTED_ERRORS: usize = 100;
/// Faults of a JSON body's frame reported with its items' at most.
const MAX_FRAME_ERRORS: usize = 10;
/// Most items a JSON body holds.
pub(crate) const JSON_MAX_ITEMS: usize = 1_000;
/// Largest JSON batch body.
const JSON_MAX_BYTES: usize = 8 << 20;
/// Largest NDJSON line (one item).
pub(crate) const LINE_MAX_BYTES: usize = 64 << 10;
/// Items inserted per statement.
const CHUNK: usize = 1_000;
/// NDJSON text of the items held before they are inserted, at most (then they are inserted
/// however few): 999 items of 64 KiB each held 3.5 times their 65 MB.
const CHUNK_BYTES: usize = 1 << 20;
/// What the items held before they are written take in memory: per byte of their NDJSON text,
/// parsed and checked (999 items of 64 KiB each took 3.5 times their text), and per item
/// besides (a small item's parameters, URL and sealed password take about 2.5 KiB whatever its
/// text).
const HELD_PER_BYTE: u64 = 4;
const HELD_PER_ITEM: u64 = 4 << 10;

/// How the batch's request ended.
pub(crate) enum Accepted {
    /// A new batch, committed.
    New(BatchRow),
    /// The batch an earlier request with the same key and body made.
    Replay(BatchRow),
}

/// One batch being accepted.
pub(crate) struct Intake<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    key: Option<&'a str>,
    id: Uuid,
    /// The request's trace context: the batch records it, its items' jobs continue it.
    trace: TraceContext,
    /// Opened with the first chunk, so a small batch holds no transaction while it is read.
    tx: Option<Transaction<'static, Postgres>>,
    /// Whether an NDJSON body is still arriving: a transaction opened meanwhile waits for the
    /// client, so it takes one of the server's slots for batches arriving first, held here.
    arriving: bool,
    slot: Option<Slot>,
    digester: Option<Digester>,
    /// Set when another request holds the key: the rest is only digested.
    replay: Option<BatchRow>,
    max_items: usize,
    items: usize,
    /// 128 bits of each tenant URL's SHA-256: duplicates found without keeping the URLs.
    urls: HashSet<u128>,
    errors: Vec<FieldError>,
    /// Faults of a JSON body's frame that leave its items readable (an unknown member, a
    /// default `tenantUrl`): reported with the items' own, all at once.
    frame_errors: Vec<FieldError>,
    invalid: usize,
    chunk: Vec<NewItem>,
    /// The NDJSON text of the items in `chunk`, and of the line being read.
    chunk_bytes: usize,
    line_bytes: usize,
    /// The request's one share of the memory budget: a JSON body's parse, then its held items;
    /// an NDJSON body's held items, and the line being parsed. One share, so that its parts
    /// never count as another request's against the client's half.
    held: Option<crate::upload::Share>,
    templates: BTreeSet<String>,
    /// Stored templates asked about, and whether the client may name them.
    visible: HashMap<String, bool>,
    /// The client's unfinished batch items when the request began: items past its cap are
    /// refused as they arrive (checked again under the admission lock at the end).
    unfinished_before: i64,
}

impl<'a> Intake<'a> {
    pub(crate) fn new(
        state: &'a AppState,
        caller: &'a Caller,
        key: Option<&'a str>,
        max_items: usize,
        trace: TraceContext,
    ) -> Self {
        Self {
            state,
            caller,
            key,
            id: Uuid::now_v7(),
            trace,
            tx: None,
            arriving: false,
            slot: None,
            digester: Some(state.sealer.digester()),
            replay: None,
            max_items,
            items: 0,
            urls: HashSet::new(),
            errors: Vec::new(),
            frame_errors: Vec::new(),
            invalid: 0,
            chunk: Vec::new(),
            chunk_bytes: 0,
            line_bytes: 0,
            held: None,
            templates: BTreeSet::new(),
            visible: HashMap::new(),
            unfinished_before: 0,
        }
    }

    /// Before the body is read: looks for a batch this client made with the same key, and reads
    /// how many unfinished batch items the client has (its held items and its items in flight).
    pub(crate) async fn start(&mut self) -> Result<(), ApiError> {
        self.check_replay().await?;
        if self.replay.is_none() {
            self.unfinished_before =
                db::batches::unfinished_items(&self.state.pool, &self.caller.client_id).await?;
        }
        Ok(())
    }

    /// Looks for a batch this client made with the same key; found, the body is only digested.
    /// A key the client gave a job (a single create, an import) is `422`: a key names one
    /// request, whatever its route.
    async fn check_replay(&mut self) -> Result<(), ApiError> {
        let Some(key) = self.key else {
            return Ok(());
        };
        let (pool, client) = (&self.state.pool, &self.caller.client_id);
        self.replay = db::batches::find_by_idempotency_key(pool, client, key).await?;
        if self.replay.is_none()
            && db::idempotency::key_taken(pool, KeyHolder::Job, client, key).await?
        {
            return Err(ApiError::key_reused());
        }
        Ok(())
    }

    fn digest(&mut self, bytes: &[u8]) {
        if let Some(d) = &mut self.digester {
            d.update(bytes);
        }
    }

    /// Reads an NDJSON body: one item per non-blank line. Items are written as chunks fill, in a
    /// transaction that waits for the client between chunks: opening it takes a slot of the
    /// server's bound on such batches (`503` with `Retry-After` past it), so a few slow senders
    /// never hold the database pool that every other route needs.
    pub(crate) async fn ndjson(&mut self, body: Body) -> Result<(), ApiError> {
        let mut lines = Lines::new(body, self.state.settings.batch_max_bytes);
        self.arriving = true;
        let read = self.read_lines(&mut lines).await;
        self.arriving = false;
        read
    }

    async fn read_lines(&mut self, lines: &mut Lines) -> Result<(), ApiError> {
        while let Some(line) = lines.next(&mut |b| self.digest(b)).await? {
            if self.replay.is_some() {
                continue;
            }
            match line {
                Line::Text(number, text) => {
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    // The line's parse, counted until the item is checked and kept.
                    let parsed = text.len() as u64 * crate::upload::JSON_PARSED_PER_BYTE;
                    self.count_held(parsed).await?;
                    let fields = match crate::strict_json::parse(&text) {
                        Ok(Value::Object(fields)) => Ok(fields),
                        Ok(_) => Err(FieldError::new("", "an item must be a JSON object")),
                        Err(e) => Err(FieldError::new("", format!("not valid JSON: {e}"))),
                    };
                    self.line_bytes = text.len();
                    drop(text);
                    self.item(Some(number), fields).await?;
                    self.count_held(0).await?;
                }
                Line::TooLong(number) => {
                    let e = FieldError::new(
                        "",
                        format!("an item may be at most {LINE_MAX_BYTES} bytes"),
                    );
                    self.item(Some(number), Err(e)).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads a JSON body: `{"defaults": {...}, "items": [...]}`, within the client's part of the
    /// memory budget (`upload::read_json`), held until the intake ends.
    pub(crate) async fn json(&mut self, headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
        // The NDJSON bound too, when it is the smaller.
        let max = (JSON_MAX_BYTES as u64).min(self.state.settings.batch_max_bytes);
        let (bytes, held) = crate::upload::read_json(
            &self.state.template_budget,
            &self.caller.client_id,
            headers,
            body,
            max,
            &if max < JSON_MAX_BYTES as u64 {
                format!("a batch body may be at most {max} bytes")
            } else {
                format!("a JSON batch body may be at most {max} bytes; send NDJSON for more")
            },
        )
        .await?;
        self.held = Some(held);
        self.read_document(bytes).await?;
        // The document is gone: what is left to count are the items kept until they are
        // written (as many as the body's text).
        let items = self.chunk.len() as u64 * HELD_PER_ITEM;
        let text =
            self.held.as_ref().map_or(0, |h| h.bytes()) / crate::upload::JSON_PARSED_PER_BYTE;
        if let Some(held) = self.held.as_mut() {
            held.shrink_to(text * HELD_PER_BYTE + items);
        }
        Ok(())
    }

    /// Sets the request's share to its held items (`chunk_bytes` of NDJSON text) and `more`
    /// bytes besides: grown, waiting as the budget says (`503` when it does not come), or given
    /// back. A JSON body's share is its own (`json`).
    async fn count_held(&mut self, more: u64) -> Result<(), ApiError> {
        let needed = self.chunk_bytes as u64 * HELD_PER_BYTE
            + self.chunk.len() as u64 * HELD_PER_ITEM
            + more;
        let held = self
            .held
            .get_or_insert_with(|| self.state.template_budget.none(&self.caller.client_id));
        if needed > held.bytes() {
            crate::upload::take_for_json(held, needed).await
        } else {
            held.shrink_to(needed);
            Ok(())
        }
    }

    /// The items of a JSON body read whole.
    async fn read_document(&mut self, bytes: Bytes) -> Result<(), ApiError> {
        self.digest(&bytes);
        if self.replay.is_some() {
            return Ok(());
        }
        let Value::Object(mut doc) = crate::strict_json::parse(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?
        else {
            return Err(FieldError::new("", "the body must be a JSON object").into());
        };
        drop(bytes);
        let mut problems = Vec::new();
        for key in doc
            .keys()
            .filter(|k| !matches!(k.as_str(), "defaults" | "items"))
        {
            problems.push(FieldError::new(
                &crate::validate::shortened(key),
                "unknown field",
            ));
        }
        let mut defaults = match doc.remove("defaults") {
            None | Some(Value::Null) => None,
            Some(Value::Object(d)) => Some(d),
            Some(_) => {
                problems.push(FieldError::new("defaults", "must be an object"));
                None
            }
        };
        // Reported, and left out: the items are still checked without it.
        let mut frame_errors = std::mem::take(&mut problems);
        if defaults
            .as_mut()
            .and_then(|d| d.remove("tenantUrl"))
            .is_some()
        {
            frame_errors.insert(
                0,
                FieldError::new("defaults.tenantUrl", "each item names its own tenantUrl"),
            );
        }
        let items = match doc.remove("items") {
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) => {
                problems.push(FieldError::new("items", "must hold at least one item"));
                Vec::new()
            }
            None | Some(Value::Null) => {
                problems.push(FieldError::new("items", "is required"));
                Vec::new()
            }
            Some(_) => {
                problems.push(FieldError::new("items", "must be an array"));
                Vec::new()
            }
        };
        if !problems.is_empty() || frame_errors.iter().any(|e| e.field == "defaults") {
            frame_errors.extend(problems);
            frame_errors.truncate(MAX_FRAME_ERRORS);
            return Err(ApiError::Validation(frame_errors));
        }
        // A few, so that the items' own still show.
        frame_errors.truncate(MAX_FRAME_ERRORS);
        self.frame_errors = frame_errors;
        let limit = JSON_MAX_ITEMS.min(self.max_items);
        if items.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "a JSON body holds at most {limit} items; send NDJSON for more"
            )));
        }
        for item in items {
            let fields = match item {
                Value::Object(fields) => Ok(with_defaults(defaults.as_ref(), fields)),
                _ => Err(FieldError::new("", "an item must be a JSON object")),
            };
            self.item(None, fields).await?;
        }
        Ok(())
    }

    /// Validates one item and queues it for insertion.
    async fn item(
        &mut self,
        line: Option<u64>,
        fields: Result<Map<String, Value>, FieldError>,
    ) -> Result<(), ApiError> {
        let index = self.items;
        self.items += 1;
        if self.items > self.max_items {
            return Err(too_many(self.max_items, "a batch"));
        }
        // The rest of the body is not read once the items so far pass the client's cap.
        let cap = i64::from(self.state.settings.client_max_batch_items);
        let items = i64::try_from(self.items).unwrap_or(i64::MAX);
        let unfinished = self.unfinished_before.saturating_add(items);
        if unfinished > cap {
            return Err(over_cap(unfinished, cap, "this batch would give"));
        }
        // Named for the item's other problems' sake: every one is reported at once, as for a
        // single create.
        let named_template = fields
            .as_ref()
            .ok()
            .and_then(|f| f.get("templateId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut checked = fields
            .map_err(|e| vec![e])
            .and_then(|fields| self.check(fields));
        match &mut checked {
            Ok(request) => {
                if let TemplateSource::Stored(id) = &request.params.template
                    && !self.visible(id).await?
                {
                    checked = Err(vec![FieldError::template_not_stored(id)]);
                }
            }
            Err(errors) => {
                // Looked up only while the item's problems can still be reported.
                if let Some(id) = named_template
                    && self.errors.len() < MAX_REPORTED_ERRORS
                    && !errors.iter().any(|e| e.field == "templateId")
                    && !self.visible(&id).await?
                {
                    errors.push(FieldError::template_not_stored(&id));
                }
            }
        }
        let request = match checked {
            Ok(request) => request,
            Err(errors) => {
                self.invalid += 1;
                let room = MAX_REPORTED_ERRORS.saturating_sub(self.errors.len());
                self.errors
                    .extend(errors.into_iter().take(room).map(|e| e.at(index, line)));
                self.chunk.clear();
                self.chunk_bytes = 0;
                return Ok(());
            }
        };
        if self.invalid > 0 || !self.frame_errors.is_empty() {
            // Nothing will be created: only validation goes on.
            return Ok(());
        }
        let job_id = Uuid::now_v7();
        let sealed_password = self.state.sealer.seal(
            request.password.expose_secret().as_bytes(),
            job_id.as_bytes(),
        );
        let template_id = match &request.params.template {
            TemplateSource::Stored(id) => {
                self.templates.insert(id.clone());
                Some(id.clone())
            }
            TemplateSource::Url(_) => None,
        };
        self.chunk.push(NewItem {
            job_id,
            item: i32::try_from(index).expect("items are capped far below i32::MAX"),
            tenant_url: request.tenant_url.to_string(),
            params: serde_json::to_value(&request.params).expect("params serialize"),
            sealed_password,
            template_id,
        });
        // An NDJSON item's text; its share is counted by the line's reader (`count_held`).
        self.chunk_bytes += std::mem::take(&mut self.line_bytes);
        if self.chunk.len() >= CHUNK || self.chunk_bytes >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether the client may name stored template `id` (asked once per id and batch).
    async fn visible(&mut self, id: &str) -> Result<bool, ApiError> {
        if let Some(known) = self.visible.get(id) {
            return Ok(*known);
        }
        // On the batch's own connection once it has one: a second one per intake could
        // exhaust the pool under concurrent intakes.
        let seen = match self.tx.as_mut() {
            Some(tx) => db::templates::lock_visible(tx, id, self.caller.viewer()).await?,
            None => {
                let mut conn = self.state.pool.acquire().await?;
                db::templates::lock_visible(&mut conn, id, self.caller.viewer()).await?
            }
        };
        self.visible.insert(id.to_owned(), seen);
        Ok(seen)
    }

    /// One item's checks: those of a single create, plus its `tenantUrl`, distinct in the batch.
    fn check(
        &mut self,
        mut fields: Map<String, Value>,
    ) -> Result<validate::CreateRequest, Vec<FieldError>> {
        let url = fields.remove("tenantUrl");
        let (raw_url, url_problem) = match &url {
            Some(Value::String(s)) => (s.as_str(), None),
            None | Some(Value::Null) => ("", Some("is required")),
            Some(_) => ("", Some("must be a string")),
        };
        let url_in = TenantUrlIn {
            field: "tenantUrl",
            raw: raw_url,
        };
        let result = validate::create_fields(url_in, &fields, TemplateInput::Json, &[]);
        let mut errors: Vec<FieldError> = match &result {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| match (e.field.as_str(), url_problem) {
                    ("tenantUrl", Some(problem)) => FieldError::new("tenantUrl", problem),
                    _ => e.clone(),
                })
                .collect(),
        };
        // Whatever else is wrong with the item: every problem is named at once.
        if let Ok(tenant_url) = TenantUrl::parse(raw_url) {
            let digest = Sha256::digest(tenant_url.as_str().as_bytes());
            let short = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
            if !self.urls.insert(short) {
                // First: the faults after it may be many (unknown fields, `numberMap` keys), and
                // an item's faults are cut at the answer's room.
                errors.insert(
                    0,
                    FieldError::new(
                        "tenantUrl",
                        format!(
                            "{tenant_url} is named by an earlier item; tenant URLs must be distinct"
                        ),
                    ),
                );
            }
        }
        match result {
            Ok(request) if errors.is_empty() => Ok(request),
            _ => Err(errors),
        }
    }

    /// Inserts the queued items (opening the batch with the first chunk).
    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.chunk.is_empty() || self.replay.is_some() {
            return Ok(());
        }
        if self.tx.is_none() {
            if self.arriving {
                self.slot = Some(
                    self.state
                        .batch_intakes
                        .take(&self.caller.client_id, Duration::MAX)
                        .await?,
                );
            }
            let mut tx = self.state.pool.begin().await?;
            let created = db::batches::create(
                &mut tx,
                self.id,
                &self.caller.client_id,
                self.key,
                &self.trace,
            )
            .await;
            match created {
                Ok(()) => self.tx = Some(tx),
                Err(CreateError::IdempotencyKeyTaken) => {
                    drop(tx);
                    // The rest of the body is only digested: it holds no connection.
                    self.slot = None;
                    // A concurrent request with the key committed first: answer its batch.
                    self.check_replay().await?;
                    self.chunk.clear();
                    self.chunk_bytes = 0;
                    return Ok(());
                }
                Err(CreateError::Database(e)) => return Err(e.into()),
            }
        }
        let tx = self.tx.as_mut().expect("opened above");
        let client = &self.caller.client_id;
        db::batches::insert_items(tx, self.id, client, &self.chunk, &self.trace).await?;
        self.chunk.clear();
        self.chunk_bytes = 0;
        Ok(())
    }

    /// After the whole body: commits the batch, or answers the problems found.
    pub(crate) async fn finish(mut self) -> Result<Accepted, ApiError> {
        let digest = self.digester.take().expect("digested once").finish();
        if let Some(batch) = self.replay.take() {
            return replayed(batch, &digest);
        }
        // The frame's faults first, then the items' (at most `MAX_REPORTED_ERRORS` in all).
        let mut errors = std::mem::take(&mut self.frame_errors);
        let room = MAX_REPORTED_ERRORS.saturating_sub(errors.len());
        errors.extend(std::mem::take(&mut self.errors).into_iter().take(room));
        if self.invalid > 0 {
            return Err(ApiError::InvalidItems {
                errors,
                invalid: self.invalid,
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        if self.items == 0 {
            return Err(FieldError::new("items", "a batch holds at least one item").into());
        }
        self.flush().await?;
        if let Some(batch) = self.replay.take() {
            return replayed(batch, &digest);
        }
        let mut tx = self
            .tx
            .take()
            .expect("a valid non-empty batch has a transaction");
        let admitted = self.admit(&mut tx, &digest).await;
        let batch = transaction::end(tx, admitted).await?;
        tracing::info!(batch.id = %batch.id, items = batch.total, "batch accepted");
        Ok(Accepted::New(batch))
    }

    /// Under the client's admission lock, checks the client's cap and the templates named, and
    /// completes the batch in `tx`.
    async fn admit(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        digest: &str,
    ) -> Result<BatchRow, ApiError> {
        let client = &self.caller.client_id;
        db::batches::lock_admission(tx, client).await?;
        let cap = i64::from(self.state.settings.client_max_batch_items);
        // This batch's items are inserted already: they count among the unfinished.
        let unfinished = db::batches::unfinished_items(&mut **tx, client).await?;
        if unfinished > cap {
            return Err(over_cap(unfinished, cap, "this batch would give"));
        }
        // The templates named by id stay until the pins hold them; one removed meanwhile (its
        // client deleted it) is the request's problem.
        for id in &self.templates {
            if !db::templates::lock_visible(tx, id, self.caller.viewer()).await? {
                return Err(FieldError::template_not_stored(id).into());
            }
        }
        let templates: Vec<String> = self.templates.iter().cloned().collect();
        db::batches::pin_templates(tx, self.id, &templates).await?;
        let batch = db::batches::set_digest(tx, self.id, digest).await?;
        db::batches::count_items(tx, self.id).await?;
        Ok(batch)
    }
}

/// The earlier batch, if this request is the same as the one that made it.
fn replayed(batch: BatchRow, digest: &str) -> Result<Accepted, ApiError> {
    if batch.request_digest.as_deref() == Some(digest) {
        Ok(Accepted::Replay(batch))
    } else {
        Err(ApiError::key_reused())
    }
}

/// `429`: `what` (a batch, a retry) the client `unfinished` batch items, past its `cap`.
pub(crate) fn over_cap(unfinished: i64, cap: i64, what: &str) -> ApiError {
    ApiError::TooManyRequests {
        detail: format!(
            "{what} the client {unfinished} unfinished batch items; its limit is {cap}; \
             retry when some have ended"
        ),
        retry_after: 30,
    }
}

/// `413` for an NDJSON batch body declared longer than `max` bytes, before any of it is read.
pub(crate) fn refuse_declared_ndjson(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    crate::upload::declared_length(headers, max)
        .map(drop)
        .map_err(|_| ndjson_too_large(max))
}

/// `413` for an NDJSON batch body past `max` bytes.
fn ndjson_too_large(max: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!("an NDJSON batch may have at most {max} bytes"))
}

fn too_many(max: usize, what: &str) -> ApiError {
    ApiError::PayloadTooLarge(format!("{what} holds at most {max} items"))
}

/// An item's fields over the defaults; an item naming `templateUrl` or `templateId` replaces
/// the defaults' choice of template.
fn with_defaults(
    defaults: Option<&Map<String, Value>>,
    item: Map<String, Value>,
) -> Map<String, Value> {
    let Some(defaults) = defaults else {
        return item;
    };
    let names_template = item.contains_key("templateUrl") || item.contains_key("templateId");
    let mut merged: Map<String, Value> = defaults
        .iter()
        .filter(|(k, _)| !(names_template && matches!(k.as_str(), "templateUrl" | "templateId")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merged.extend(item);
    merged
}

/// One line of an NDJSON body.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The 1-based line number and its bytes (without the newline).
    Text(u64, Vec<u8>),
    /// A line longer than `LINE_MAX_BYTES`, skipped.
    TooLong(u64),
}

/// Splits a body into lines as it arrives, holding at most one line (bounded) at a time.
struct Lines {
    stream: axum::body::BodyDataStream,
    buf: Vec<u8>,
    /// Where the next line starts in `buf` (the lines before it were handed out; they are
    /// dropped once per chunk, not once per line, so a chunk of many short lines costs its
    /// length, not its length times its lines).
    start: usize,
    /// Bytes of `buf` already searched for a newline (an index into it).
    searched: usize,
    /// Inside a line past the limit: its bytes are dropped until its newline.
    skipping: bool,
    number: u64,
    ended: bool,
    /// Bytes of the body received so far, and the most it may have.
    arrived: u64,
    max_bytes: u64,
    /// Bytes moved within `buf` so far (the tests' measure of the work done).
    #[cfg(test)]
    shifted: usize,
}

impl Lines {
    /// The lines of `body`, which may have at most `max_bytes` (`413` past them).
    fn new(body: Body, max_bytes: u64) -> Self {
        Self {
            stream: body.into_data_stream(),
            buf: Vec::new(),
            start: 0,
            searched: 0,
            skipping: false,
            number: 0,
            ended: false,
            arrived: 0,
            max_bytes,
            #[cfg(test)]
            shifted: 0,
        }
    }

    /// The next line; `seen` gets every byte of the body once, in order.
    async fn next(&mut self, seen: &mut impl FnMut(&[u8])) -> Result<Option<Line>, ApiError> {
        loop {
            if let Some(pos) = self.buf[self.searched..].iter().position(|b| *b == b'\n') {
                let end = self.searched + pos;
                let line = self.start..end;
                self.start = end + 1;
                self.searched = self.start;
                self.number += 1;
                // Past the limit, however it arrived (its newline in the same chunk or not).
                if std::mem::take(&mut self.skipping) || line.len() > LINE_MAX_BYTES {
                    return Ok(Some(Line::TooLong(self.number)));
                }
                return Ok(Some(Line::Text(self.number, self.buf[line].to_vec())));
            }
            #[cfg(test)]
            {
                self.shifted += self.buf.len() - self.start;
            }
            self.buf.drain(..self.start);
            self.start = 0;
            self.searched = self.buf.len();
            if self.buf.len() > LINE_MAX_BYTES {
                self.buf.clear();
                self.searched = 0;
                self.skipping = true;
            }
            if self.ended {
                if self.buf.is_empty() && !self.skipping {
                    return Ok(None);
                }
                self.number += 1;
                let line = std::mem::take(&mut self.buf);
                self.searched = 0;
                if std::mem::take(&mut self.skipping) || line.len() > LINE_MAX_BYTES {
                    return Ok(Some(Line::TooLong(self.number)));
                }
                return Ok(Some(Line::Text(self.number, line)));
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    self.arrived += chunk.len() as u64;
                    if self.arrived > self.max_bytes {
                        return Err(ndjson_too_large(self.max_bytes));
                    }
                    seen(&chunk);
                    self.buf.extend_from_slice(&chunk);
                }
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(parts: Vec<&'static [u8]>) -> (Vec<Line>, Vec<u8>) {
        let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
        let mut lines = Lines::new(Body::from_stream(stream), u64::MAX);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while let Some(line) = lines
            .next(&mut |b: &[u8]| seen.extend_from_slice(b))
            .await
            .unwrap()
        {
            out.push(line);
        }
        (out, seen)
    }

    #[tokio::test]
    async fn a_body_past_its_bytes_is_refused_as_the_byte_past_them_arrives() {
        let read = |max: u64| async move {
            let stream = futures_util::stream::iter(
                [&b"{}\n{}"[..], b"\n", b"{}\n"].map(Ok::<_, std::io::Error>),
            );
            let mut lines = Lines::new(Body::from_stream(stream), max);
            let mut n = 0;
            loop {
                match lines.next(&mut |_| {}).await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => return Ok(n),
                    Err(e) => return Err((n, e)),
                }
            }
        };
        assert_eq!(read(9).await.unwrap(), 3);
        let (before, e) = read(8).await.unwrap_err();
        // The two lines of the first 6 bytes were read; the chunk past 8 is refused.
        assert_eq!(before, 2);
        assert!(
            matches!(&e, ApiError::PayloadTooLarge(m) if m == "an NDJSON batch may have at most 8 bytes"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn lines_are_split_across_chunks_numbered_and_every_byte_is_seen() {
        let (lines, seen) =
            lines_of(vec![b"{\"a\"", b":1}\n\n  \n{\"b\":2}", b"\n{\"c\":3}"]).await;
        assert_eq!(
            lines,
            vec![
                Line::Text(1, b"{\"a\":1}".to_vec()),
                Line::Text(2, b"".to_vec()),
                Line::Text(3, b"  ".to_vec()),
                Line::Text(4, b"{\"b\":2}".to_vec()),
                Line::Text(5, b"{\"c\":3}".to_vec()),
            ]
        );
        assert_eq!(seen, b"{\"a\":1}\n\n  \n{\"b\":2}\n{\"c\":3}");
    }

    #[tokio::test]
    async fn an_overlong_line_is_reported_by_number_without_being_kept() {
        let long: &'static [u8] = Box::leak(vec![b'x'; LINE_MAX_BYTES + 10].into_boxed_slice());
        let (lines, _) = lines_of(vec![b"{}\n", long, long, b"\n{}\n", long]).await;
        assert_eq!(
            lines,
            vec![
                Line::Text(1, b"{}".to_vec()),
                Line::TooLong(2),
                Line::Text(3, b"{}".to_vec()),
                Line::TooLong(4),
            ]
        );
    }

    #[tokio::test]
    async fn many_short_lines_in_one_chunk_cost_their_length() {
        // 100,000 blank lines and one item in a single chunk, then a line split across two
        // chunks: the buffer moves fewer bytes than the body has (dropping each line from the
        // front of the buffer moved the rest every time: about 5 * 10^9 bytes here).
        let mut body = vec![b'\n'; 100_000];
        body.extend_from_slice(b"{}\n{\"a\"");
        let body: &'static [u8] = Box::leak(body.into_boxed_slice());
        let stream =
            futures_util::stream::iter([body, b":1}\n"].into_iter().map(Ok::<_, std::io::Error>));
        let mut lines = Lines::new(Body::from_stream(stream), u64::MAX);
        let mut out = Vec::new();
        while let Some(line) = lines.next(&mut |_: &[u8]| {}).await.unwrap() {
            out.push(line);
        }
        assert_eq!(out.len(), 100_002);
        assert_eq!(out[100_000], Line::Text(100_001, b"{}".to_vec()));
        assert_eq!(out[100_001], Line::Text(100_002, b"{\"a\":1}".to_vec()));
        assert!(lines.shifted < body.len(), "{} bytes moved", lines.shifted);
    }

    #[tokio::test]
    async fn a_line_past_the_limit_is_too_long_even_when_it_arrives_whole() {
        let mut body = vec![b'x'; LINE_MAX_BYTES + 1];
        body.extend_from_slice(b"\n{}\n");
        body.extend_from_slice(&vec![b'y'; LINE_MAX_BYTES]);
        body.extend_from_slice(b"\n");
        body.extend_from_slice(&vec![b'z'; LINE_MAX_BYTES + 1]);
        let body: &'static [u8] = Box::leak(body.into_boxed_slice());
        let (lines, _) = lines_of(vec![body]).await;
        assert_eq!(
            lines,
            vec![
                Line::TooLong(1),
                Line::Text(2, b"{}".to_vec()),
                Line::Text(3, vec![b'y'; LINE_MAX_BYTES]),
                Line::TooLong(4),
            ]
        );
    }

    #[test]
    fn an_item_naming_a_template_replaces_the_defaults_choice() {
        let defaults = serde_json::json!({"templateUrl": "https://t/a.zip", "tenantName": "D"});
        let defaults = defaults.as_object().unwrap();
        let item = serde_json::json!({"templateId": "ab", "tenantName": "I"});
        let merged = with_defaults(Some(defaults), item.as_object().unwrap().clone());
        assert_eq!(merged.get("templateUrl"), None);
        assert_eq!(merged["templateId"], "ab");
        assert_eq!(merged["tenantName"], "I");
        let plain = serde_json::json!({"lastName": "L"});
        let merged = with_defaults(Some(defaults), plain.as_object().unwrap().clone());
        assert_eq!(merged["templateUrl"], "https://t/a.zip");
        // An item's own value overrides the default's, `null` too (then judged as the item's).
        let nulls = serde_json::json!({"templateId": null, "tenantName": null});
        let merged = with_defaults(Some(defaults), nulls.as_object().unwrap().clone());
        assert_eq!(merged.get("templateUrl"), None);
        assert_eq!(merged["templateId"], serde_json::Value::Null);
        assert_eq!(merged["tenantName"], serde_json::Value::Null);
    }
}
