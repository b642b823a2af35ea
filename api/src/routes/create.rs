//! Create tenant from template: the JSON and form-data variants of one route.

use std::collections::BTreeMap;

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

/// Largest text part of a form.
const FORM_TEXT_LIMIT: usize = 64 << 10;

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
        (status = 422, description = "The Idempotency-Key was used with another body"),
        (status = 413, description = "The template is too large"),
        (status = 415, description = "Not JSON or form data"),
        (status = 500, description = "Under Prefer: wait, the job failed after retries"),
        (status = 503, description = "Under Prefer: wait, lock timeout; or the server is receiving as many templates as its memory allows (Retry-After)")))]
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
    let JsonObject(fields) = JsonObject::from_request(request, &state).await?;
    let request = match validate::create_request(&raw_url, &fields, TemplateInput::Json) {
        Ok(request) => request,
        Err(errors) => return Err(refused(&state, &caller, &fields, errors).await),
    };
    // The digest covers the whole request, password included, keyed so it reveals nothing.
    let digest = state
        .sealer
        .digest(format!("{}\n{}", request.tenant_url, Value::Object(fields)).as_bytes());
    let template = JobTemplate::of(&request, None);
    let sub = Submission::create(Uuid::now_v7(), request, digest, template);
    submit(&state, &caller, &answer, sub).await
}

/// A create refused for `errors`, a `templateId` the client cannot name among them: every
/// problem is reported at once, though the id is otherwise checked as the job is recorded (in
/// the same statement). Looked up only for a request already refused.
async fn refused(
    state: &AppState,
    caller: &Caller,
    fields: &Map<String, Value>,
    mut errors: Vec<FieldError>,
) -> ApiError {
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
    let form = read_form(&state, request).await?;
    let input = match &form.upload {
        Some(upload) => TemplateInput::FormFile(&upload.id),
        None => TemplateInput::Form,
    };
    let request = match validate::create_request(&raw_url, &form.fields, input) {
        Ok(request) => request,
        Err(errors) => return Err(refused(&state, &caller, &form.fields, errors).await),
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

/// A form's text parts gathered as the JSON variant's fields, and its template file.
struct Form {
    fields: Map<String, Value>,
    upload: Option<Upload>,
}

/// Reads every part; the `template` file part into memory, within the upload budget.
async fn read_form(state: &AppState, request: Request) -> Result<Form, ApiError> {
    let max = state.settings.template_max_bytes;
    // A form declared larger than `max` is `413` before a byte is read; its length bounds the
    // file's, reserved before reading.
    let length = upload::declared_length(request.headers(), max)?;
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut form = Form {
        fields: Map::new(),
        upload: None,
    };
    let mut number_map = Map::new();
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "template" if form.upload.is_none() => {
                let budget = &state.template_budget;
                form.upload = Some(upload::read(budget, field, length, max).await?);
            }
            "numberMap" => {
                let pair = form_text(field).await?;
                let (key, value) = match pair.split_once(':') {
                    Some((from, to)) => {
                        (from.trim().to_owned(), Value::String(to.trim().to_owned()))
                    }
                    None => (pair, Value::Null),
                };
                if number_map.contains_key(&key) {
                    return Err(FieldError::new(
                        "numberMap",
                        format!(
                            "key {:?} is mapped more than once",
                            validate::shortened(&key)
                        ),
                    )
                    .into());
                }
                number_map.insert(key, value);
            }
            _ if form.fields.contains_key(&name) || name == "template" => {
                return Err(
                    FieldError::new(&validate::shortened(&name), "appears more than once").into(),
                );
            }
            _ => {
                let text = form_text(field).await?;
                let value = match name.as_str() {
                    "lockTimeout" => text
                        .trim()
                        .parse::<u64>()
                        .map_or(Value::String(text), Value::from),
                    _ => Value::String(text),
                };
                form.fields.insert(name, value);
            }
        }
    }
    if !number_map.is_empty() {
        form.fields
            .insert("numberMap".to_owned(), Value::Object(number_map));
    }
    Ok(form)
}

/// A text part, read chunk by chunk: past `FORM_TEXT_LIMIT` bytes it is `413` before more is read.
async fn form_text(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        if bytes.len() + chunk.len() > FORM_TEXT_LIMIT {
            return Err(ApiError::PayloadTooLarge(format!(
                "form part `{name}` is larger than {FORM_TEXT_LIMIT} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest(format!("form part `{name}` is not UTF-8 text")))
}
