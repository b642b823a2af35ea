//! Create tenant from template: the JSON and form-data variants of one route.

use std::collections::{BTreeMap, HashSet};

use axum::{
    Extension,
    extract::{FromRequest, Multipart, Request, State, multipart::Field},
    response::Response,
};
use provisioner_shared::db;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Caller,
    error::{ApiError, FieldError},
    extract::{JsonObject, PathText, media_type},
    form_window,
    openapi::shapes::{self, HostName, IdempotencyKeyText},
    submit::{Answer, JobTemplate, Submission, Submitted, submit},
    upload::{self, Upload},
    validate::{self, TemplateInput},
};

/// Create tenant from template (JSON): the fields of `CreateTenantFields` with exactly one of
/// `templateUrl` and `templateId`.
pub(super) struct CreateTenantRequest;

impl utoipa::PartialSchema for CreateTenantRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        exactly_one_of(CreateTenantFields::schema(), &["templateUrl", "templateId"])
    }
}

impl ToSchema for CreateTenantRequest {}

/// `fields`, with exactly one of `sources` required.
fn exactly_one_of(
    fields: utoipa::openapi::RefOr<utoipa::openapi::Schema>,
    sources: &[&str],
) -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::{AllOfBuilder, ObjectBuilder, OneOfBuilder};
    let one_source = sources.iter().fold(OneOfBuilder::new(), |one, field| {
        one.item(ObjectBuilder::new().required(*field))
    });
    AllOfBuilder::new().item(fields).item(one_source).into()
}

/// Create tenant from template (JSON): its fields.
#[expect(
    dead_code,
    reason = "documents the body that is read field by field, to name every bad field"
)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateTenantFields {
    #[schema(schema_with = shapes::text)]
    tenant_name: String,
    /// Template access number -> real access number (1-20 digits each; targets distinct).
    #[schema(schema_with = shapes::number_map)]
    number_map: Option<BTreeMap<String, String>>,
    #[schema(schema_with = shapes::text)]
    first_name: String,
    #[schema(schema_with = shapes::text)]
    last_name: String,
    #[schema(schema_with = shapes::text)]
    login_id: String,
    /// 8-256 characters; never stored or returned in plaintext.
    #[schema(schema_with = shapes::password)]
    password: String,
    #[schema(schema_with = shapes::email)]
    email: String,
    /// Absolute http(s) URL of the template ZIP; or give `templateId`.
    #[schema(schema_with = shapes::template_url)]
    template_url: Option<String>,
    /// A template of the store that this client stored; or give `templateUrl`.
    #[schema(schema_with = shapes::template_id)]
    template_id: Option<String>,
    /// Seconds to wait for the import lock, 0-3600 (default 120).
    #[schema(schema_with = shapes::lock_timeout)]
    lock_timeout: Option<u32>,
}

/// Create tenant from template (form data): the fields of `CreateTenantFormFields` with exactly
/// one of a `template` file part, `templateUrl` and `templateId`.
pub(super) struct CreateTenantForm;

impl utoipa::PartialSchema for CreateTenantForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        exactly_one_of(
            CreateTenantFormFields::schema(),
            &["template", "templateUrl", "templateId"],
        )
    }
}

impl ToSchema for CreateTenantForm {}

/// Create tenant from template (form data): the same fields, `numberMap` repeated as
/// `template:actual`, and one of a `template` file part, `templateUrl` and `templateId`.
#[expect(
    dead_code,
    reason = "documents the body that is read field by field, to name every bad field"
)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateTenantFormFields {
    #[schema(schema_with = shapes::text)]
    tenant_name: String,
    /// `template:actual`, repeated (1-20 digits each; targets distinct).
    #[schema(schema_with = shapes::form_number_map)]
    number_map: Option<Vec<String>>,
    #[schema(schema_with = shapes::text)]
    first_name: String,
    #[schema(schema_with = shapes::text)]
    last_name: String,
    #[schema(schema_with = shapes::text)]
    login_id: String,
    #[schema(schema_with = shapes::password)]
    password: String,
    #[schema(schema_with = shapes::email)]
    email: String,
    #[schema(schema_with = shapes::form_lock_timeout)]
    lock_timeout: Option<u32>,
    /// The template ZIP; exactly one of `template`, `templateUrl` and `templateId` is given.
    #[schema(schema_with = shapes::zip)]
    template: Option<Vec<u8>>,
    #[schema(schema_with = shapes::template_url)]
    template_url: Option<String>,
    #[schema(schema_with = shapes::template_id)]
    template_id: Option<String>,
}

/// Largest text part of a form; a longer one is a fault of its field.
const FORM_TEXT_LIMIT: usize = 64 << 10;
/// Most bytes a form's parts but its template may hold together, names included, kept or not:
/// the JSON variant's limit.
const FORM_TEXT_TOTAL: usize = 1 << 20;
/// What a part costs against `FORM_TEXT_TOTAL` besides its name and text.
const FORM_PART_COST: usize = 64;

/// `POST /configapi/v2/selfservice/tenant/{tenant_url}`, JSON or `multipart/form-data`.
#[utoipa::path(post, path = "/configapi/v2/selfservice/tenant/{tenant_url}", tag = "tenants",
    operation_id = "createTenantFromTemplate",
    params(("tenant_url" = inline(HostName), Path, description = "Host name of the new tenant"),
        ("Prefer" = Option<String>, Header, description = "wait=N (N <= 300): answer the job's final code if it ends in time"),
        ("Idempotency-Key" = inline(Option<IdempotencyKeyText>), Header, description = "Same key and body: the same job")),
    request_body(content((CreateTenantRequest = "application/json"), (CreateTenantForm = "multipart/form-data"))),
    responses(
        Submitted,
        (status = 400, description = "Invalid fields (all named; a templateId this client did not store among them), or under Prefer: wait a bad template"),
        (status = 409, description = "The tenant, or an active job for it, exists"),
        (status = 422, description = "The Idempotency-Key was used with another body, or for another kind of request (a batch's key for a create, a job's for a batch)"),
        (status = 413, description = "The request is larger than PROVISIONER_TEMPLATE_MAX_BYTES, or a form's parts besides its template pass 1 MiB together"),
        (status = 415, description = "Not JSON or form data"),
        (status = 500, description = "Under Prefer: wait, the job failed after retries"),
        (status = 503, description = "Under Prefer: wait, lock timeout; or the server is receiving as many templates as its memory allows, or this client's requests hold half of that memory (Retry-After)")))]
pub(super) async fn create_from_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathText(raw_url): PathText,
    answer: Answer,
    request: Request,
) -> Result<Response, ApiError> {
    if media_type(request.headers()) == "multipart/form-data" {
        return from_form(state, caller, raw_url, answer, request).await;
    }
    let JsonObject(fields, held) =
        JsonObject::read(request, &state, "application/json or multipart/form-data").await?;
    let request = match validate::create_request(&raw_url, &fields, TemplateInput::Json) {
        // Refused for its key alone: with the fields' other faults the store finds.
        Ok(_) if answer.idempotency_key.fault().is_some() => {
            drop(held);
            return Err(refused(&state, &caller, &fields, Vec::new(), &answer).await);
        }
        Ok(request) => request,
        Err(errors) => {
            drop(held);
            return Err(refused(&state, &caller, &fields, errors, &answer).await);
        }
    };
    // The digest covers the whole request, password included, keyed so it reveals nothing.
    let digest = state
        .sealer
        .digest(format!("{}\n{}", request.tenant_url, Value::Object(fields)).as_bytes());
    // The body's fields are gone: its share of the memory budget is not held through a wait.
    drop(held);
    let template = JobTemplate::of(&request, None);
    let sub = Submission::create(Uuid::now_v7(), request, digest, template);
    submit(&state, &caller, &answer, sub).await
}

/// A create refused for `errors`, with a `templateId` the client cannot name and a malformed
/// `Idempotency-Key` among them: every problem is reported at once, though the id is otherwise
/// checked as the job is recorded (in the same statement). Looked up only for a request already
/// refused.
async fn refused(
    state: &AppState,
    caller: &Caller,
    fields: &Map<String, Value>,
    mut errors: Vec<FieldError>,
    answer: &Answer,
) -> ApiError {
    errors.extend(answer.idempotency_key.fault());
    if let Some(Value::String(id)) = fields.get("templateId")
        && !errors.iter().any(|e| e.field == "templateId")
    {
        match db::templates::find(&state.pool, id, caller.viewer()).await {
            Ok(Some(_)) => {}
            Ok(None) => errors.push(FieldError::template_not_stored(id)),
            Err(e) => return e.into(),
        }
    }
    ApiError::Validation(errors)
}

/// The form variant: parts as the original, the template file read into memory and stored in
/// the template store with its job.
async fn from_form(
    state: AppState,
    caller: Caller,
    raw_url: String,
    answer: Answer,
    request: Request,
) -> Result<Response, ApiError> {
    let form = read_form(&state, &caller, request).await?;
    let input = match &form.upload {
        Some(upload) => TemplateInput::FormFile(&upload.id),
        None => TemplateInput::Form,
    };
    let request = match validate::create_request(&raw_url, &form.fields, input) {
        Ok(request) if form.problems.is_empty() && answer.idempotency_key.fault().is_none() => {
            request
        }
        Ok(_) => return Err(refused(&state, &caller, &form.fields, form.problems, &answer).await),
        Err(errors) => {
            let errors = form.with_problems(errors);
            return Err(refused(&state, &caller, &form.fields, errors, &answer).await);
        }
    };
    let file_digest = form.upload.as_ref().map_or("", |u| u.id.as_str());
    let digest = state.sealer.digest(
        format!(
            "{}\n{}\n{file_digest}",
            request.tenant_url,
            Value::Object(form.fields)
        )
        .as_bytes(),
    );
    let template = JobTemplate::of(&request, form.upload);
    let sub = Submission::create(Uuid::now_v7(), request, digest, template);
    submit(&state, &caller, &answer, sub).await
}

/// A form's text parts gathered as the JSON variant's fields, its template file, and the faults
/// of its parts (reported with the fields' own, all at once).
#[derive(Default)]
struct Form {
    fields: Map<String, Value>,
    upload: Option<Upload>,
    problems: Vec<FieldError>,
    /// The faults already noted (each is reported once, however many parts repeat it).
    noted: HashSet<(String, String)>,
    /// Every part name seen, and those whose only value was dropped (too long, not text).
    seen: HashSet<String>,
    dropped: HashSet<String>,
}

impl Form {
    fn fault(&mut self, field: &str, message: impl Into<String>) {
        let message = message.into();
        if self.noted.insert((field.to_owned(), message.clone())) {
            self.problems.push(FieldError::new(field, message));
        }
    }

    /// The form's faults, then the fields' own `errors`, but for fields whose value was dropped
    /// (a part too long or not text is not also "required").
    fn with_problems(&self, errors: Vec<FieldError>) -> Vec<FieldError> {
        let mut all = self.problems.clone();
        all.extend(
            errors
                .into_iter()
                .filter(|e| !self.dropped.contains(&e.field)),
        );
        all
    }
}

/// Reads every part; the `template` file part into memory, the whole form within the upload
/// budget (the template keeps the form's share while it is held). A part at
/// fault (a name given twice, a number mapped twice, text too long or not UTF-8) is noted and
/// the reading goes on, so every fault is reported at once. The other parts' bytes, kept or
/// not, are at most `FORM_TEXT_TOTAL` together (`413` as soon as they pass it, as a JSON body
/// past its limit), so a form's memory and reading time besides its template are bounded.
async fn read_form(state: &AppState, caller: &Caller, request: Request) -> Result<Form, ApiError> {
    let max = state.settings.template_max_bytes;
    // A form declared larger than `max` is `413` before a byte is read; its length bounds the
    // file's, reserved before reading.
    let length = upload::declared_length(request.headers(), max)?;
    // The whole form is reserved before a byte is read, not only its template: the parser
    // buffers whatever comes before the first boundary, and a part's headers, until it finds
    // their end (up to the body limit), so every byte it may hold is within the budget. A form
    // of unknown length reserves the most a template may be.
    let mut reserved = state.template_budget.none(&caller.client_id);
    upload::take(&mut reserved, length.unwrap_or(max)).await?;
    let mut reserved = Some(reserved);
    // The parser's search for each part's headers is bounded in bytes and reads: its time
    // would grow with the square of headers sent in small pieces (`form_window`).
    let window = form_window::Window::default();
    let request = request.map(|body| axum::body::Body::new(window.guard(body)));
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut form = Form::default();
    let mut number_map = Map::new();
    let mut read = 0;
    loop {
        window.open();
        let next = multipart.next_field().await;
        window.close();
        let Some(field) = next? else { break };
        let name = field.name().unwrap_or_default().to_owned();
        let shown = validate::shortened(&name);
        // Every part costs its name and a little more, so many empty parts are bounded too.
        read += name.len() + FORM_PART_COST;
        if read > FORM_TEXT_TOTAL {
            return Err(text_too_large());
        }
        let first = form.seen.insert(name.clone());
        if name == "template" && first {
            let reserved = reserved.take().expect("one template part is read");
            form.upload = Some(upload::read_within(reserved, field, max).await?);
            continue;
        }
        let text = form_text(field, FORM_TEXT_TOTAL - read).await?;
        read += text.bytes();
        if name == "numberMap" {
            if let Text::Kept(pair) = text {
                let (key, value) = match pair.split_once(':') {
                    Some((from, to)) => {
                        (from.trim().to_owned(), Value::String(to.trim().to_owned()))
                    }
                    None => (pair, Value::Null),
                };
                if number_map.contains_key(&key) {
                    let shown_key = validate::shortened(&key);
                    form.fault(
                        "numberMap",
                        format!("key {shown_key:?} is mapped more than once"),
                    );
                } else {
                    number_map.insert(key, value);
                }
                continue;
            }
        } else if !first {
            form.fault(&shown, "appears more than once");
            continue;
        }
        let fault = match text {
            Text::Kept(text) => {
                let value = match name.as_str() {
                    "lockTimeout" => text
                        .trim()
                        .parse::<u64>()
                        .map_or(Value::String(text), Value::from),
                    _ => Value::String(text),
                };
                form.fields.insert(name, value);
                continue;
            }
            Text::TooLong(_) => format!("is larger than {FORM_TEXT_LIMIT} bytes"),
            Text::NotUtf8(_) => "is not UTF-8 text".to_owned(),
        };
        form.fault(&shown, fault);
        // Its only value is gone (a number map keeps its other parts' keys).
        if name != "numberMap" {
            form.dropped.insert(name);
        }
    }
    if !number_map.is_empty() {
        form.fields
            .insert("numberMap".to_owned(), Value::Object(number_map));
    }
    Ok(form)
}

/// A text part as read.
enum Text {
    Kept(String),
    /// Longer than `FORM_TEXT_LIMIT` (this many bytes), read and dropped.
    TooLong(usize),
    /// Not UTF-8 (this many bytes).
    NotUtf8(usize),
}

impl Text {
    fn bytes(&self) -> usize {
        match self {
            Self::Kept(text) => text.len(),
            Self::TooLong(n) | Self::NotUtf8(n) => *n,
        }
    }
}

/// A text part, read chunk by chunk: one longer than `FORM_TEXT_LIMIT` is read to its end and
/// dropped; one that takes the form past the `room` it has left is `413` at once.
async fn form_text(mut field: Field<'_>, room: usize) -> Result<Text, ApiError> {
    let mut bytes = Vec::new();
    let mut dropped = 0;
    while let Some(chunk) = field.chunk().await? {
        let total = bytes.len() + dropped + chunk.len();
        if total > room {
            return Err(text_too_large());
        }
        if total > FORM_TEXT_LIMIT {
            dropped = total;
            bytes = Vec::new();
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if dropped > 0 {
        return Ok(Text::TooLong(dropped));
    }
    let len = bytes.len();
    Ok(String::from_utf8(bytes).map_or(Text::NotUtf8(len), Text::Kept))
}

fn text_too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "a form's parts but its template may have at most {FORM_TEXT_TOTAL} bytes together"
    ))
}
