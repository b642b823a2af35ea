//! A create's fields as the command line and files give them: `FIELD=VALUE` options, CSV cells
//! (`numberMap` as `from:to;from:to`), defaults filled in, and the API's validation rules
//! (the same rules and messages as a single create), so a bad row is caught before anything
//! is sent.

use std::collections::HashSet;

use provisioner_shared::domain::{
    TenantUrl, is_access_number, is_email, is_hidden_char, whole_number,
};
use serde_json::{Map, Value};

use crate::exit::{Failure, Problem, Result};

/// The fields a create (or a batch item) may hold, in the order files name them.
pub use provisioner_shared::domain::ITEM_FIELDS as FIELDS;
/// A value as CSV text (the inverse of `cell`).
pub use provisioner_shared::domain::csv_cell as text_of;

/// Where the template of a create or batch comes from, as the options say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    Url(String),
    Id(String),
}

impl TemplateChoice {
    fn field(&self) -> (&'static str, &str) {
        match self {
            Self::Url(u) => ("templateUrl", u),
            Self::Id(i) => ("templateId", i),
        }
    }
}

/// Fields the options give: they fill what a row lacks.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub set: Map<String, Value>,
    pub template: Option<TemplateChoice>,
}

impl Defaults {
    /// Parses `FIELD=VALUE` options. A fault of one is the option's, reported once before any
    /// row is read (never with its value, which may be a password).
    pub fn from_options(set: &[String], template: Option<TemplateChoice>) -> Result<Self> {
        let mut fields = Map::new();
        let mut problems = Vec::new();
        for option in set {
            let Some((field, value)) = option.split_once('=').filter(|(f, _)| !f.trim().is_empty())
            else {
                problems.push(Problem::new("--set", "must be FIELD=VALUE"));
                continue;
            };
            let field = field.trim();
            let fault = |message: String| Problem::new(format!("--set {field}"), message);
            if field == "templateUrl" || field == "templateId" {
                problems.push(fault(
                    "give the template with --template-url, --template-id or --template".into(),
                ));
            } else if field == "tenantUrl" {
                problems.push(fault("each row names its own tenantUrl".into()));
            } else if !FIELDS.contains(&field) {
                problems.push(fault(unknown(field)));
            } else if fields
                .insert(field.to_owned(), cell(field, value))
                .is_some()
            {
                problems.push(fault("is set twice".into()));
            }
        }
        // The administrators' password may come from the environment, off the command line.
        if let Some(password) = std::env::var("PROVISIONER_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
        {
            fields.entry("password").or_insert(Value::String(password));
        }
        if problems.is_empty() {
            Ok(Self {
                set: fields,
                template,
            })
        } else {
            Err(
                Failure::invalid("invalid --set option; nothing was submitted")
                    .with_problems(problems),
            )
        }
    }

    /// Adds every field the item lacks; the template only when the item names none.
    pub fn fill(&self, item: &mut Map<String, Value>) {
        for (k, v) in &self.set {
            item.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let Some(choice) = &self.template
            && !item.contains_key("templateUrl")
            && !item.contains_key("templateId")
        {
            let (field, value) = choice.field();
            item.insert(field.to_owned(), Value::String(value.to_owned()));
        }
    }
}

/// Why `--set FIELD=...` names no field, and the fields it may name (the nearest first, when
/// one is a slip away: a letter left out, added, changed or a case).
fn unknown(field: &str) -> String {
    let settable: Vec<&str> = FIELDS
        .into_iter()
        .filter(|f| !matches!(*f, "tenantUrl" | "templateUrl" | "templateId"))
        .collect();
    let nearest = settable
        .iter()
        .map(|f| {
            (
                slips(&field.to_ascii_lowercase(), &f.to_ascii_lowercase()),
                f,
            )
        })
        .min()
        .filter(|(d, _)| *d <= 2);
    let list = settable.join(", ");
    match nearest {
        Some((_, f)) => format!("unknown field; did you mean {f}? (--set takes {list})"),
        None => format!("unknown field; --set takes {list}"),
    }
}

/// The edits (a character added, left out or changed) that turn `a` into `b`.
fn slips(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A textual value (a CSV cell or an option) as the JSON the API expects for `field`:
/// `numberMap` from `from:to;from:to`, `lockTimeout` a number when it is one.
pub fn cell(field: &str, text: &str) -> Value {
    match field {
        "numberMap" => {
            let mut map = Map::new();
            for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let (from, to) = pair.split_once(':').unwrap_or((pair, ""));
                map.insert(from.trim().to_owned(), Value::String(to.trim().to_owned()));
            }
            Value::Object(map)
        }
        "lockTimeout" => text
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => Value::String(text.to_owned()),
    }
}

/// Every problem of a create body (for a batch item, `tenantUrl` included), by field, with
/// the API's messages. `tenant_url` is given apart for a single create (its path).
pub fn check(item: &Map<String, Value>, batch_item: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, message: &str| problems.push(Problem::new(field, message));
    for key in item.keys() {
        let known = FIELDS.contains(&key.as_str()) && (batch_item || key != "tenantUrl");
        if !known {
            bad(key, "unknown field");
        }
    }
    if batch_item {
        match item.get("tenantUrl") {
            Some(Value::String(url)) => {
                if let Err(m) = TenantUrl::parse(url) {
                    bad("tenantUrl", m);
                }
            }
            None | Some(Value::Null) => bad("tenantUrl", "is required"),
            Some(_) => bad("tenantUrl", "must be a string"),
        }
    }
    for (field, max) in [
        ("tenantName", 255),
        ("firstName", 255),
        ("lastName", 255),
        ("loginId", 255),
        ("email", 254),
    ] {
        if let Some(problem) = text(item.get(field), max) {
            bad(field, &problem);
        } else if field == "email" && !item["email"].as_str().is_some_and(is_email) {
            bad("email", "must be a valid e-mail address");
        }
    }
    match item.get("password") {
        None | Some(Value::Null) => bad("password", "is required"),
        Some(Value::String(p)) if (8..=256).contains(&p.chars().count()) => {}
        Some(Value::String(_)) => bad("password", "must be 8 to 256 characters"),
        Some(_) => bad("password", "must be a string"),
    }
    template(item, &mut problems);
    // `null` is no map, as the API takes it.
    if let Some(map) = item.get("numberMap").filter(|v| !v.is_null()) {
        number_map(map, &mut problems);
    }
    match item.get("lockTimeout") {
        None | Some(Value::Null) => {}
        // As the API reads it: `30.0` is 30.
        Some(v) if whole_number(v).is_some_and(|n| (0..=3600).contains(&n)) => {}
        Some(_) => problems.push(Problem::new(
            "lockTimeout",
            "must be an integer from 0 to 3600",
        )),
    }
    problems
}

/// Why a required text field is not valid, if it is not.
fn text(value: Option<&Value>, max: usize) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some("is required".into()),
        Some(Value::String(s)) if s.trim().is_empty() => Some("must not be empty".into()),
        Some(Value::String(s)) if s.chars().count() > max => {
            Some(format!("must be at most {max} characters"))
        }
        Some(Value::String(s)) if s.chars().any(is_hidden_char) => {
            Some("must not contain control or Unicode format characters".into())
        }
        Some(Value::String(_)) => None,
        Some(_) => Some("must be a string".into()),
    }
}

fn template(item: &Map<String, Value>, problems: &mut Vec<Problem>) {
    match (item.get("templateUrl"), item.get("templateId")) {
        (Some(url), None) => {
            let ok = url.as_str().is_some_and(|u| {
                url::Url::parse(u).is_ok_and(|p| {
                    matches!(p.scheme(), "http" | "https")
                        && p.host().is_some()
                        && p.username().is_empty()
                        && p.password().is_none()
                })
            });
            if !ok {
                problems.push(Problem::new(
                    "templateUrl",
                    "must be an absolute http or https URL without credentials",
                ));
            }
        }
        (None, Some(id)) => {
            let ok = id.as_str().is_some_and(|i| {
                i.len() == 64 && i.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if !ok {
                problems.push(Problem::new(
                    "templateId",
                    "must be a template id: the 64 lower-case hex digits of its SHA-256",
                ));
            }
        }
        (url, _) => {
            let message = if url.is_some() {
                "give templateUrl or templateId, not both"
            } else {
                "one of templateUrl and templateId is required (or --template-url, \
                 --template-id, --template)"
            };
            for field in ["templateUrl", "templateId"] {
                problems.push(Problem::new(field, message));
            }
        }
    }
}

fn number_map(value: &Value, problems: &mut Vec<Problem>) {
    let Value::Object(map) = value else {
        problems.push(Problem::new(
            "numberMap",
            "must be an object of template number to real number",
        ));
        return;
    };
    let mut targets = HashSet::new();
    for (key, value) in map {
        // The field is `numberMap`; the message names the key.
        let field = "numberMap";
        if !is_access_number(key) {
            problems.push(Problem::new(
                field,
                format!("key {key:?}: keys must be strings of 1 to 20 digits"),
            ));
            continue;
        }
        match value.as_str() {
            Some(v) if is_access_number(v) => {
                if !targets.insert(v) {
                    problems.push(Problem::new(
                        field,
                        format!("key {key:?}: {v} is the target of more than one key"),
                    ));
                }
            }
            _ => problems.push(Problem::new(
                field,
                format!("key {key:?}: values must be strings of 1 to 20 digits"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn every_bad_field_of_an_item_is_reported() {
        let item = json!({"tenantUrl": "bad_host", "tenantName": " ", "password": "short",
            "email": "nope", "templateUrl": "ftp://x", "lockTimeout": 4000,
            "numberMap": {"1a": "2"}, "colour": "red"});
        let problems = check(item.as_object().unwrap(), true);
        for f in [
            "tenantUrl",
            "tenantName",
            "firstName",
            "lastName",
            "loginId",
            "password",
            "email",
            "templateUrl",
            "lockTimeout",
            "numberMap",
            "colour",
        ] {
            assert!(fields(&problems).contains(&f), "{f}: {problems:?}");
        }
    }

    #[test]
    fn a_null_number_map_or_lock_timeout_is_as_if_absent() {
        let item = json!({"tenantUrl": "acme.example.com", "tenantName": "Acme",
            "firstName": "Ann", "lastName": "Lee", "loginId": "ann", "password": "long enough",
            "email": "a@b.example", "templateUrl": "https://t.example/t.zip",
            "numberMap": null, "lockTimeout": null});
        let problems = check(item.as_object().unwrap(), true);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_lock_timeout_is_read_as_the_api_reads_it() {
        let item = |lock: Value| {
            json!({"tenantUrl": "acme.example.com", "tenantName": "Acme",
                "firstName": "Ann", "lastName": "Lee", "loginId": "ann", "password": "long enough",
                "email": "a@b.example", "templateUrl": "https://t.example/t.zip",
                "lockTimeout": lock})
        };
        for ok in [json!(0), json!(30), json!(30.0), json!(3600)] {
            let problems = check(item(ok.clone()).as_object().unwrap(), true);
            assert!(problems.is_empty(), "{ok}: {problems:?}");
        }
        for bad in [json!(-1), json!(30.5), json!(3601), json!("30")] {
            let problems = check(item(bad.clone()).as_object().unwrap(), true);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].field, "lockTimeout", "{bad}");
        }
    }

    #[test]
    fn options_fill_only_what_a_row_lacks_and_cells_convert() {
        let defaults = Defaults::from_options(
            &[
                "loginId=admin".into(),
                "numberMap=100:4155550100; 200:4155550200".into(),
            ],
            Some(TemplateChoice::Id("a".repeat(64))),
        )
        .unwrap();
        let mut item = json!({"loginId": "own", "templateUrl": "https://t.example/x.zip"})
            .as_object()
            .unwrap()
            .clone();
        defaults.fill(&mut item);
        assert_eq!(item["loginId"], "own");
        assert!(!item.contains_key("templateId"));
        assert_eq!(
            item["numberMap"],
            json!({"100": "4155550100", "200": "4155550200"})
        );
        assert_eq!(text_of(&item["numberMap"]), "100:4155550100;200:4155550200");
        assert_eq!(cell("lockTimeout", "30"), json!(30));
        assert!(Defaults::from_options(&["templateUrl=x".into()], None).is_err());
    }

    #[test]
    fn an_unknown_set_field_is_a_fault_of_the_option_not_of_each_row() {
        let Err(failure) = Defaults::from_options(&["passwrd=correct horse".into()], None) else {
            panic!("an unknown --set field was taken");
        };
        assert_eq!(failure.exit, crate::exit::Exit::Invalid);
        assert!(
            failure.message.contains("nothing was submitted"),
            "{}",
            failure.message
        );
        let shown: Vec<String> = failure.problems.iter().map(Problem::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("--set passwrd: unknown field") && shown[0].contains("password"),
            "{shown:?}"
        );
        assert!(
            !shown[0].contains("correct horse"),
            "the value is never shown: {shown:?}"
        );
    }
}
