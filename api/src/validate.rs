//! Validation of a create-from-template request: every bad field is reported at once, by name.

use std::collections::{BTreeMap, HashSet};

use provisioner_shared::domain::{
    AdminSpec, CreateTenantParams, DEFAULT_LOCK_TIMEOUT, TemplateSource, TenantUrl,
    is_access_number, is_email, is_hidden_char,
};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    error::FieldError,
    extract::{lock_timeout_from, whole_number},
};

const FIELDS: [&str; 10] = [
    "template",
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

/// Where a create request's template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateInput {
    /// JSON body: `templateUrl` is required.
    Json,
    /// Form with a `template` file part: `templateUrl` must be absent.
    FormFile,
    /// Form without a file part: `templateUrl` is required.
    FormUrl,
}

/// Validates the path's tenant URL and the request's fields (a JSON object, or the form's
/// parts gathered into one).
pub(crate) fn create_request(
    raw_url: &str,
    body: &Map<String, Value>,
    input: TemplateInput,
) -> Result<CreateRequest, Vec<FieldError>> {
    let mut check = Checker {
        body,
        errors: Vec::new(),
    };
    let tenant_url = TenantUrl::parse(raw_url)
        .map_err(|m| check.errors.push(FieldError::new("tenant_url", m)))
        .ok();
    check.unknown_fields(input);
    let tenant_name = check.text("tenantName", 255);
    let admin = check.admin();
    let template = check.template(input);
    let password = check.password();
    let number_map = body
        .get("numberMap")
        .map(|v| number_map(v, &mut check.errors))
        .unwrap_or_default();
    let lock_timeout = match body.get("lockTimeout") {
        None | Some(Value::Null) => DEFAULT_LOCK_TIMEOUT,
        Some(v) => lock_timeout_from(whole_number(v).and_then(|n| u64::try_from(n).ok()))
            .unwrap_or_else(|e| {
                check.errors.push(e);
                0
            }),
    };
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

impl Checker<'_> {
    fn unknown_fields(&mut self, input: TemplateInput) {
        for key in self.body.keys().filter(|k| {
            !FIELDS.contains(&k.as_str()) || (input == TemplateInput::Json && *k == "template")
        }) {
            self.errors.push(FieldError::new(key, "unknown field"));
        }
    }

    /// A required, non-empty string of at most `max` characters without control characters.
    fn text(&mut self, field: &'static str, max: usize) -> Option<String> {
        let problem = match self.body.get(field) {
            None | Some(Value::Null) => "is required".to_owned(),
            Some(Value::String(s)) if s.trim().is_empty() => "must not be empty".to_owned(),
            Some(Value::String(s)) if s.chars().count() > max => {
                format!("must be at most {max} characters")
            }
            Some(Value::String(s)) if s.chars().any(is_hidden_char) => {
                "must not contain control or Unicode format characters".to_owned()
            }
            Some(Value::String(s)) => return Some(s.clone()),
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

    /// The uploaded file, or `templateUrl`, as `input` demands.
    fn template(&mut self, input: TemplateInput) -> Option<TemplateSource> {
        if input == TemplateInput::FormFile {
            if self.body.contains_key("templateUrl") {
                self.errors.push(FieldError::new(
                    "templateUrl",
                    "give either a template file or templateUrl, not both",
                ));
                return None;
            }
            return Some(TemplateSource::Stored(String::new()));
        }
        let url = self.text("templateUrl", 2048)?;
        match check_template_url(&url) {
            Ok(()) => Some(TemplateSource::Url(url)),
            Err(m) => {
                self.errors.push(FieldError::new("templateUrl", m));
                None
            }
        }
    }
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
        let field = format!("numberMap.{key}");
        if !is_access_number(key) {
            errors.push(FieldError::new(
                &field,
                "keys must be strings of 1 to 20 digits",
            ));
            continue;
        }
        match value.as_str() {
            Some(v) if is_access_number(v) => {
                if !targets.insert(v.to_owned()) {
                    errors.push(FieldError::new(
                        &field,
                        format!("{v} is the target of more than one key"),
                    ));
                }
                out.insert(key.clone(), v.to_owned());
            }
            _ => errors.push(FieldError::new(
                &field,
                "values must be strings of 1 to 20 digits",
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
            "numberMap.12a",
            "status",
        ] {
            assert!(fields.contains(f), "{f} not reported: {errors:?}");
        }
        assert!(fields.contains("numberMap.1") || fields.contains("numberMap.2"));
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
