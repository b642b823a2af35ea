//! Validation of a create-from-template request: every bad field is reported at once, by name.

use std::collections::{BTreeMap, HashSet};

use provisioner_shared::{
    db::templates::is_template_id,
    domain::{
        AdminSpec, CreateTenantParams, DEFAULT_LOCK_TIMEOUT, TemplateSource, TenantUrl,
        is_access_number, is_email, is_hidden_char,
    },
};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    error::FieldError,
    extract::{lock_timeout_from, whole_number},
};

const FIELDS: [&str; 11] = [
    "template",
    "templateId",
    "tenantName",
    "numberMap",
    "firstName",
    "lastName",
    "loginId",
    "password",
    "email",
    "templateUrl",
    "lockTimeout",
];

/// A valid request: what the job records, plus the password to seal.
#[derive(Debug)]
pub(crate) struct CreateRequest {
    pub(crate) tenant_url: TenantUrl,
    pub(crate) params: CreateTenantParams,
    pub(crate) password: SecretString,
}

/// How a create request carries its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateInput<'a> {
    /// JSON body: exactly one of `templateUrl` and `templateId`.
    Json,
    /// Form with a `template` file part, stored under this id: neither `templateUrl` nor
    /// `templateId` may be given.
    FormFile(&'a str),
    /// Form without a file part: exactly one of `templateUrl` and `templateId`.
    Form,
}

/// Where a create request names its tenant: the route's path, or a field of the body (a batch
/// item's `tenantUrl`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TenantUrlIn<'a> {
    /// The name errors give it (`tenant_url` for the path).
    pub(crate) field: &'static str,
    pub(crate) raw: &'a str,
}

/// Validates the path's tenant URL and the request's fields (a JSON object, or the form's
/// parts gathered into one).
pub(crate) fn create_request(
    raw_url: &str,
    body: &Map<String, Value>,
    input: TemplateInput<'_>,
) -> Result<CreateRequest, Vec<FieldError>> {
    let url = TenantUrlIn {
        field: "tenant_url",
        raw: raw_url,
    };
    create_fields(url, body, input, &[])
}

/// `create_request` for any body that holds a create's fields: `url` says where the tenant URL
/// comes from, and `extra` names the fields the body may hold besides a create's own (checked by
/// the caller; a batch item's `tenantUrl`). The rules and messages are the single create's.
pub(crate) fn create_fields(
    url: TenantUrlIn<'_>,
    body: &Map<String, Value>,
    input: TemplateInput<'_>,
    extra: &[&str],
) -> Result<CreateRequest, Vec<FieldError>> {
    let mut check = Checker {
        body,
        errors: Vec::new(),
    };
    let tenant_url = TenantUrl::parse(url.raw)
        .map_err(|m| check.errors.push(FieldError::new(url.field, m)))
        .ok();
    let tenant_name = check.text("tenantName", 255);
    let admin = check.admin();
    let template = check.template(input);
    let password = check.password();
    let lock_timeout = match body.get("lockTimeout") {
        None | Some(Value::Null) => DEFAULT_LOCK_TIMEOUT,
        Some(v) => lock_timeout_from(whole_number(v).and_then(|n| u64::try_from(n).ok()))
            .unwrap_or_else(|e| {
                check.errors.push(e);
                0
            }),
    };
    // The faults a body may hold without bound come last, so that the answer's first ones
    // (`MAX_REPORTED_ERRORS`) always name the fields above. `null` is no map, as for
    // `lockTimeout`.
    let number_map = body
        .get("numberMap")
        .filter(|v| !v.is_null())
        .map(|v| number_map(v, &mut check.errors))
        .unwrap_or_default();
    check.unknown_fields(input, extra);
    match (tenant_url, tenant_name, admin, template, password) {
        (Some(tenant_url), Some(tenant_name), Some(admin), Some(template), Some(password))
            if check.errors.is_empty() =>
        {
            Ok(CreateRequest {
                tenant_url,
                params: CreateTenantParams {
                    tenant_name,
                    admin: Some(admin),
                    number_map,
                    template,
                    lock_timeout,
                },
                password,
            })
        }
        _ => Err(check.errors),
    }
}

/// The body under validation and every problem found so far.
struct Checker<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

/// A client's text quoted in an answer (a field name, a key): at most 64 characters of it.
pub(crate) fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl Checker<'_> {
    fn unknown_fields(&mut self, input: TemplateInput<'_>, extra: &[&str]) {
        let json = input == TemplateInput::Json;
        for key in self.body.keys().filter(|k| {
            let known = FIELDS.contains(&k.as_str()) || extra.contains(&k.as_str());
            !known || (json && *k == "template")
        }) {
            self.errors
                .push(FieldError::new(&shortened(key), "unknown field"));
        }
    }

    /// A required, non-empty string of at most `max` characters without control characters.
    fn text(&mut self, field: &'static str, max: usize) -> Option<String> {
        let problem = match self.body.get(field) {
            None | Some(Value::Null) => "is required".to_owned(),
            Some(Value::String(s)) => match text_problem(s, max) {
                None => return Some(s.clone()),
                Some(problem) => problem,
            },
            Some(_) => "must be a string".to_owned(),
        };
        self.errors.push(FieldError::new(field, problem));
        None
    }

    /// The administrator's names, login and e-mail (every field checked).
    fn admin(&mut self) -> Option<AdminSpec> {
        let first_name = self.text("firstName", 255);
        let last_name = self.text("lastName", 255);
        let login_id = self.text("loginId", 255);
        let email = self.text("email", 254);
        if email.as_deref().is_some_and(|e| !is_email(e)) {
            self.errors
                .push(FieldError::new("email", "must be a valid e-mail address"));
        }
        Some(AdminSpec {
            login_id: login_id?,
            first_name: first_name?,
            last_name: last_name?,
            email: email?,
        })
    }

    fn password(&mut self) -> Option<SecretString> {
        let problem = match self.body.get("password") {
            None | Some(Value::Null) => "is required",
            Some(Value::String(p)) if (8..=256).contains(&p.chars().count()) => {
                return Some(SecretString::from(p.clone()));
            }
            Some(Value::String(_)) => "must be 8 to 256 characters",
            Some(_) => "must be a string",
        };
        self.errors.push(FieldError::new("password", problem));
        None
    }

    fn template(&mut self, input: TemplateInput<'_>) -> Option<TemplateSource> {
        template_choice(self.body, input, &mut self.errors)
    }
}

/// Why `text` is not a valid text field of at most `max` characters (not blank, no control or
/// Unicode format character); `None` when it is.
pub(crate) fn text_problem(text: &str, max: usize) -> Option<String> {
    if text.trim().is_empty() {
        Some("must not be empty".to_owned())
    } else if text.chars().count() > max {
        Some(format!("must be at most {max} characters"))
    } else if text.chars().any(is_hidden_char) {
        Some("must not contain control or Unicode format characters".to_owned())
    } else {
        None
    }
}

/// The template a create (or a batch item, defaults applied) names: exactly one of
/// `templateUrl` and `templateId`, or in a form a `template` file part and neither. A field
/// counts as given whatever its value (`null` too, as the OpenAPI document's `oneOf` counts it:
/// a body the document refuses is refused). A problem names every field of the choice at fault
/// (`template` too, in a form). Problems go to `errors`. Whether the client may use a
/// `templateId` is the store's to say, when the job is recorded.
pub(crate) fn template_choice(
    body: &Map<String, Value>,
    input: TemplateInput<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<TemplateSource> {
    let given = |field: &str| body.contains_key(field);
    let (url, id) = (given("templateUrl"), given("templateId"));
    let mut refuse = |fields: &[&str], message: &str| {
        for field in fields {
            errors.push(FieldError::new(field, message));
        }
        None
    };
    match (input, url, id) {
        (TemplateInput::FormFile(stored), false, false) => {
            Some(TemplateSource::Stored(stored.to_owned()))
        }
        (TemplateInput::FormFile(_), ..) => {
            let fields: Vec<&str> = ["template", "templateUrl", "templateId"]
                .into_iter()
                .filter(|f| *f == "template" || given(f))
                .collect();
            refuse(
                &fields,
                "give one of a template file, templateUrl and templateId, not more",
            )
        }
        (_, true, false) => template_url(body, errors).map(TemplateSource::Url),
        (_, false, true) => template_id(body, errors).map(TemplateSource::Stored),
        (_, true, true) => refuse(
            &["templateUrl", "templateId"],
            "give templateUrl or templateId, not both",
        ),
        (TemplateInput::Json, false, false) => refuse(
            &["templateUrl", "templateId"],
            "one of templateUrl and templateId is required",
        ),
        (TemplateInput::Form, false, false) => refuse(
            &["template", "templateUrl", "templateId"],
            "one of a template file, templateUrl and templateId is required",
        ),
    }
}

fn template_url(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let problem = match body.get("templateUrl") {
        Some(Value::String(url)) => match text_problem(url, 2048) {
            Some(problem) => problem,
            None => match check_template_url(url) {
                Ok(()) => return Some(url.clone()),
                Err(m) => m.to_owned(),
            },
        },
        _ => "must be a string".to_owned(),
    };
    errors.push(FieldError::new("templateUrl", problem));
    None
}

fn template_id(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get("templateId") {
        Some(Value::String(id)) if is_template_id(id) => return Some(id.clone()),
        Some(Value::String(_)) => errors.push(FieldError::new(
            "templateId",
            "must be a template id: the 64 lower-case hex digits of its SHA-256",
        )),
        _ => errors.push(FieldError::new("templateId", "must be a string")),
    }
    None
}

/// An absolute http(s) URL with a host and no credentials.
fn check_template_url(raw: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute http or https URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an absolute http or https URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    Ok(())
}

fn number_map(value: &Value, errors: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    let Value::Object(map) = value else {
        errors.push(FieldError::new(
            "numberMap",
            "must be an object of template number to real number",
        ));
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let mut targets = HashSet::new();
    for (key, value) in map {
        // The field is `numberMap`; the message names the key.
        let field = "numberMap";
        if !is_access_number(key) {
            errors.push(FieldError::new(
                field,
                format!(
                    "key {:?}: keys must be strings of 1 to 20 digits",
                    shortened(key)
                ),
            ));
            continue;
        }
        match value.as_str() {
            Some(v) if is_access_number(v) => {
                if !targets.insert(v.to_owned()) {
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "key {:?}: {v} is the target of more than one key",
                            shortened(key)
                        ),
                    ));
                }
                out.insert(key.clone(), v.to_owned());
            }
            _ => errors.push(FieldError::new(
                field,
                format!(
                    "key {:?}: values must be strings of 1 to 20 digits",
                    shortened(key)
                ),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let errors = create_request(
            "bad_host",
            &body(json!({"tenantName": 3, "password": "short", "email": "nope", "templateUrl": "ftp://x/y",
                          "lockTimeout": 3601, "numberMap": {"12a": "1", "1": "2", "2": "2"}, "status": "x"})),
            TemplateInput::Json,
        )
        .unwrap_err();
        let fields: HashSet<_> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "tenant_url",
            "tenantName",
            "firstName",
            "lastName",
            "loginId",
            "password",
            "email",
            "templateUrl",
            "lockTimeout",
            "numberMap",
            "status",
        ] {
            assert!(fields.contains(f), "{f} not reported: {errors:?}");
        }
        assert!(
            errors
                .iter()
                .any(|e| e.field == "numberMap" && e.message.contains("more than one key")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_named_fields_faults_come_before_those_without_bound() {
        let mut fields = body(
            json!({"email": "nope", "password": "short", "lockTimeout": -1,
            "numberMap": {"x": "1"}}),
        );
        for i in 0..150 {
            fields.insert(format!("zz{i}"), json!(1));
        }
        let errors = create_request("acme.example.com", &fields, TemplateInput::Json).unwrap_err();
        let first: Vec<&str> = fields_of(&errors[..crate::intake::MAX_REPORTED_ERRORS]);
        for f in [
            "email",
            "password",
            "lockTimeout",
            "numberMap",
            "templateUrl",
        ] {
            assert!(first.contains(&f), "{f} not among the first: {first:?}");
        }
        let unknown = errors
            .iter()
            .filter(|e| e.message == "unknown field")
            .count();
        assert_eq!(unknown, 150);
    }

    fn fields_of(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    const ID: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_null_number_map_or_lock_timeout_is_as_if_absent() {
        let request = create_request(
            "acme.example.com",
            &body(
                json!({"tenantName": "Acme", "firstName": "Ann", "lastName": "Lee",
                          "loginId": "ann", "password": "long enough", "email": "a@b.example",
                          "templateUrl": "https://t.example/t.zip", "numberMap": null,
                          "lockTimeout": null}),
            ),
            TemplateInput::Json,
        )
        .unwrap_or_else(|e| panic!("valid: {:?}", fields_of(&e)));
        assert!(request.params.number_map.is_empty());
        assert_eq!(request.params.lock_timeout, DEFAULT_LOCK_TIMEOUT);
    }

    #[test]
    fn exactly_one_template_source_is_required_and_both_fields_are_named() {
        let choose = |v: Value, input| {
            let mut errors = Vec::new();
            let source = template_choice(&body(v), input, &mut errors);
            (source, errors)
        };
        let (source, errors) = choose(json!({"templateId": ID}), TemplateInput::Json);
        assert_eq!(
            source,
            Some(TemplateSource::Stored(ID.to_owned())),
            "{errors:?}"
        );
        let (source, _) = choose(
            json!({"templateUrl": "https://t.example/t.zip"}),
            TemplateInput::Form,
        );
        assert_eq!(
            source,
            Some(TemplateSource::Url("https://t.example/t.zip".to_owned()))
        );
        let (source, _) = choose(json!({}), TemplateInput::FormFile(ID));
        assert_eq!(source, Some(TemplateSource::Stored(ID.to_owned())));
        // Every field of the choice at fault is named, the form's file part too.
        let both = || json!({"templateId": ID, "templateUrl": "https://t.example/t.zip"});
        for (v, input, fields) in [
            (
                json!({}),
                TemplateInput::Json,
                &["templateUrl", "templateId"][..],
            ),
            (
                json!({"templateId": ID, "templateUrl": null}),
                TemplateInput::Json,
                &["templateUrl", "templateId"],
            ),
            (both(), TemplateInput::Json, &["templateUrl", "templateId"]),
            (
                json!({}),
                TemplateInput::Form,
                &["template", "templateUrl", "templateId"],
            ),
            (
                json!({"templateId": ID}),
                TemplateInput::FormFile(ID),
                &["template", "templateId"],
            ),
            (
                both(),
                TemplateInput::FormFile(ID),
                &["template", "templateUrl", "templateId"],
            ),
        ] {
            let (source, errors) = choose(v.clone(), input);
            assert_eq!(source, None, "{v}");
            assert_eq!(fields_of(&errors), fields, "{v}");
        }
        for bad in [
            json!(ID.to_uppercase()),
            json!(&ID[1..]),
            json!(7),
            Value::Null,
        ] {
            let (source, errors) = choose(json!({"templateId": bad}), TemplateInput::Json);
            assert_eq!(
                (source, fields_of(&errors)),
                (None, vec!["templateId"]),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_body_may_carry_the_extra_fields_its_caller_allows() {
        let item = body(
            json!({"tenantUrl": "acme.example.com", "tenantName": "Acme", "firstName": "A",
            "lastName": "L", "loginId": "admin", "password": "correct horse", "email": "a@acme.example",
            "templateId": ID}),
        );
        let url = TenantUrlIn {
            field: "tenantUrl",
            raw: "acme.example.com",
        };
        let request = create_fields(url, &item, TemplateInput::Json, &["tenantUrl"]).unwrap();
        assert_eq!(
            request.params.template,
            TemplateSource::Stored(ID.to_owned())
        );
        let errors = create_request("acme.example.com", &item, TemplateInput::Json).unwrap_err();
        assert_eq!(
            fields_of(&errors),
            ["tenantUrl"],
            "unknown to a single create"
        );
        let url = TenantUrlIn {
            field: "tenantUrl",
            raw: "bad_host",
        };
        let errors = create_fields(url, &item, TemplateInput::Json, &["tenantUrl"]).unwrap_err();
        assert_eq!(fields_of(&errors), ["tenantUrl"]);
    }

    #[test]
    fn control_and_unicode_format_characters_are_refused() {
        for bad in [
            "Acme\u{202e}troppuS",
            "Ac\u{200b}me",
            "Acme\u{0007}",
            "\u{feff}Acme",
        ] {
            let errors = create_request(
                "acme.example.com",
                &body(
                    json!({"tenantName": bad, "firstName": "A", "lastName": "L", "loginId": "admin",
                              "password": "correct horse", "email": "a@acme.example",
                              "templateUrl": "https://t.example/t.zip"}),
                ),
                TemplateInput::Json,
            )
            .unwrap_err();
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert_eq!(errors[0].field, "tenantName");
        }
    }
}
