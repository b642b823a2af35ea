//! Validation of a create-from-template request: every bad field is reported at once, by name.

use std::collections::{BTreeMap, HashSet};

use provisioner_shared::domain::{
    AdminSpec, CreateTenantParams, DEFAULT_LOCK_TIMEOUT, MAX_LOCK_TIMEOUT, TemplateSource,
    TenantUrl, is_access_number, is_email,
};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::error::FieldError;

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
pub struct CreateRequest {
    pub tenant_url: TenantUrl,
    pub params: CreateTenantParams,
    pub password: SecretString,
}

/// Where a create request's template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateInput {
    /// JSON body: `templateUrl` is required.
    Json,
    /// Form with a `template` file part: `templateUrl` must be absent.
    FormFile,
    /// Form without a file part: `templateUrl` is required.
    FormUrl,
}

/// Validates the path's tenant URL and the request's fields (a JSON object, or the form's
/// parts gathered into one).
pub fn create_request(
    raw_url: &str,
    body: &Map<String, Value>,
    input: TemplateInput,
) -> Result<CreateRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let tenant_url = TenantUrl::parse(raw_url)
        .map_err(|m| errors.push(FieldError::new("tenant_url", m)))
        .ok();
    for key in body.keys().filter(|k| {
        !FIELDS.contains(&k.as_str()) || (input == TemplateInput::Json && *k == "template")
    }) {
        errors.push(FieldError::new(key, "unknown field"));
    }
    let mut text = |field: &'static str, max: usize| -> Option<String> {
        match body.get(field) {
            None | Some(Value::Null) => errors.push(FieldError::new(field, "is required")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                errors.push(FieldError::new(field, "must not be empty"))
            }
            Some(Value::String(s)) if s.chars().count() > max => errors.push(FieldError::new(
                field,
                format!("must be at most {max} characters"),
            )),
            Some(Value::String(s)) if s.chars().any(char::is_control) => errors.push(
                FieldError::new(field, "must not contain control characters"),
            ),
            Some(Value::String(s)) => return Some(s.clone()),
            Some(_) => errors.push(FieldError::new(field, "must be a string")),
        }
        None
    };
    let tenant_name = text("tenantName", 255);
    let first_name = text("firstName", 255);
    let last_name = text("lastName", 255);
    let login_id = text("loginId", 255);
    let email = text("email", 254);
    let template_url = match input {
        TemplateInput::FormFile => None,
        TemplateInput::Json | TemplateInput::FormUrl => text("templateUrl", 2048),
    };
    let password = match body.get("password") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("password", "is required"));
            None
        }
        Some(Value::String(p)) if (8..=256).contains(&p.chars().count()) => {
            Some(SecretString::from(p.clone()))
        }
        Some(Value::String(_)) => {
            errors.push(FieldError::new("password", "must be 8 to 256 characters"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("password", "must be a string"));
            None
        }
    };
    if let Some(e) = &email {
        if !is_email(e) {
            errors.push(FieldError::new("email", "must be a valid e-mail address"));
        }
    }
    let template = match (input, template_url) {
        (TemplateInput::FormFile, _) if body.contains_key("templateUrl") => {
            errors.push(FieldError::new(
                "templateUrl",
                "give either a template file or templateUrl, not both",
            ));
            None
        }
        (TemplateInput::FormFile, _) => Some(TemplateSource::Upload),
        (_, Some(u)) => match check_template_url(&u) {
            Ok(()) => Some(TemplateSource::Url(u)),
            Err(m) => {
                errors.push(FieldError::new("templateUrl", m));
                None
            }
        },
        (_, None) => None,
    };
    let number_map = body
        .get("numberMap")
        .map(|v| number_map(v, &mut errors))
        .unwrap_or_default();
    let lock_timeout = match body.get("lockTimeout") {
        None | Some(Value::Null) => DEFAULT_LOCK_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(MAX_LOCK_TIMEOUT) => n as u32,
            _ => {
                errors.push(FieldError::new(
                    "lockTimeout",
                    format!("must be an integer from 0 to {MAX_LOCK_TIMEOUT}"),
                ));
                0
            }
        },
    };
    match (
        tenant_url,
        tenant_name,
        first_name,
        last_name,
        login_id,
        email,
        template,
        password,
    ) {
        (
            Some(tenant_url),
            Some(tenant_name),
            Some(first_name),
            Some(last_name),
            Some(login_id),
            Some(email),
            Some(template),
            Some(password),
        ) if errors.is_empty() => Ok(CreateRequest {
            tenant_url,
            params: CreateTenantParams {
                tenant_name,
                admin: Some(AdminSpec {
                    login_id,
                    first_name,
                    last_name,
                    email,
                }),
                number_map,
                template,
                lock_timeout,
            },
            password,
        }),
        _ => Err(errors),
    }
}

/// An absolute http(s) URL with a host and no credentials.
pub fn check_template_url(raw: &str) -> Result<(), &'static str> {
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
}
