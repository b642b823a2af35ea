//! Validated domain types. Once parsed, a value is valid everywhere it travels.

mod states;

pub use states::{AuditAction, BatchStatus, JobKind, JobStatus, TenantStatus};

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant URL: a DNS host name, stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantUrl(String);

impl TenantUrl {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let url = raw.to_ascii_lowercase();
        if url.is_empty() || url.len() > 253 {
            return Err("must be a host name of 1 to 253 characters");
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !url.split('.').all(label_ok) {
            return Err(
                "must be a host name: dot-separated labels of letters, digits and inner hyphens",
            );
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantUrl {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantUrl> for String {
    fn from(value: TenantUrl) -> Self {
        value.0
    }
}

impl fmt::Display for TenantUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Is `c` a control character or a Unicode format character (general category Cc or Cf: for
/// example U+202E RIGHT-TO-LEFT OVERRIDE or U+200B ZERO WIDTH SPACE), which text fields refuse?
pub fn is_hidden_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// Most characters of a repeated JSON member name quoted by [`member_given_twice`].
const SHOWN_MEMBER_NAME: usize = 64;

/// The fault of a JSON object naming member `name` twice (in a request body or in a template's
/// free-form JSON): parsers differ on which of the two counts, so neither does. The name is
/// quoted as JSON, cut to its first 64 characters.
pub fn member_given_twice(name: &str) -> String {
    let shown = match name.char_indices().nth(SHOWN_MEMBER_NAME) {
        Some((end, _)) => format!("{}...", serde_json::Value::from(&name[..end])),
        None => serde_json::Value::from(name).to_string(),
    };
    format!("the member {shown} is given twice")
}

/// A JSON number that is a whole number, written as an integer or as a float with no fraction
/// (JSON Schema's `integer` admits `5.0`). The API and the command line read numbers so alike.
pub fn whole_number(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// Is `s` an access number: 1 to 20 decimal digits?
pub fn is_access_number(s: &str) -> bool {
    (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A pragmatic e-mail check: one `@`, a non-empty local part without spaces, a dotted domain.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c.is_control())
        && domain.contains('.')
        && TenantUrl::parse(domain).is_ok()
}

/// The administrator a create request names. Its password travels sealed, never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    pub login_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

/// Where the worker finds the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TemplateSource {
    Url(String),
    /// A template in the store, by id (stored by the client, or uploaded with the request).
    Stored(String),
}

/// What a create-tenant job needs besides the password: stored in `jobs.params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTenantParams {
    pub tenant_name: String,
    /// The request's administrator; `None` (stream variant) keeps the template's users as they are.
    pub admin: Option<AdminSpec>,
    pub number_map: BTreeMap<String, String>,
    pub template: TemplateSource,
    pub lock_timeout: u32,
}

impl CreateTenantParams {
    /// The fields of the create (or batch item, its batch's defaults applied) that asked for
    /// this, by the contract's names: `tenantUrl` (`tenant_url`), the administrator's, the
    /// template's, `numberMap` (when it maps any number) and `lockTimeout`. Never the
    /// password, which the job keeps only sealed.
    pub fn submitted_fields(&self, tenant_url: &str) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut fields = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            fields.insert(k.to_owned(), v);
        };
        put("tenantUrl", tenant_url.into());
        put("tenantName", self.tenant_name.as_str().into());
        if let Some(admin) = &self.admin {
            put("firstName", admin.first_name.as_str().into());
            put("lastName", admin.last_name.as_str().into());
            put("loginId", admin.login_id.as_str().into());
            put("email", admin.email.as_str().into());
        }
        match &self.template {
            TemplateSource::Url(url) => put("templateUrl", url.as_str().into()),
            TemplateSource::Stored(id) => put("templateId", id.as_str().into()),
        }
        if !self.number_map.is_empty() {
            let map = self
                .number_map
                .iter()
                .map(|(from, to)| (from.clone(), Value::from(to.as_str())))
                .collect();
            put("numberMap", Value::Object(map));
        }
        put("lockTimeout", self.lock_timeout.into());
        fields
    }
}

/// The fields of a create or a batch item, in the order files name them: the columns of the
/// command line's CSV files, and of the results files the command line and the dashboard
/// write (without `password`), which submit again as they are.
pub const ITEM_FIELDS: [&str; 11] = [
    "tenantUrl",
    "tenantName",
    "firstName",
    "lastName",
    "loginId",
    "password",
    "email",
    "numberMap",
    "templateUrl",
    "templateId",
    "lockTimeout",
];

/// The columns a results file has after the item's fields: the command line reads past them
/// when a file names all four, so that a results file submits again.
pub const RESULT_COLUMNS: [&str; 4] = ["jobId", "status", "code", "error"];

/// A field's value as a CSV cell: text as it is, `numberMap` as `from:to;from:to`, a number as
/// written, nothing for `null`.
pub fn csv_cell(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

/// A job's error as a results file's `error` cell: `title: detail`, or the title alone.
pub fn error_cell(title: Option<&str>, detail: Option<&str>) -> String {
    match (title, detail) {
        (Some(t), Some(d)) => format!("{t}: {d}"),
        (Some(t), None) => t.to_owned(),
        _ => String::new(),
    }
}

/// `text` as a spreadsheet cell that never runs as a formula: a leading `=`, `+`, `-`, `@`, tab
/// or carriage return is prefixed with `'` (the dashboard's and the command line's CSV), and so
/// is a leading `'`, so that `as_written` gives every text back exactly.
pub fn never_a_formula(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) {
        format!("'{text}")
    } else {
        text
    }
}

/// A cell of a results file as the text it was made from by `never_a_formula` (its leading `'`
/// taken off), for a results file submitted again.
pub fn as_written(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

/// What an import-tenant job needs: the upload is its template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportTenantParams {
    pub lock_timeout: u32,
    /// The uploaded archive, in the template store.
    pub template_id: String,
}

/// Default and largest client `lockTimeout`, seconds.
pub const DEFAULT_LOCK_TIMEOUT: u32 = 120;
pub const MAX_LOCK_TIMEOUT: u32 = 3600;

/// The tenant a successful job made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantSummary {
    pub id: Uuid,
    pub url: String,
    pub name: String,
    #[schema(value_type = String)]
    pub status: TenantStatus,
}

/// Why a template access-number range was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SkipReason {
    AssignedToOtherTenant,
    OverlapsExistingRange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedRange {
    pub number: String,
    pub count: i32,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub title: String,
    pub detail: String,
}

/// `text` as PostgreSQL can store it, in `text` and in `jsonb`: a NUL character, which neither
/// holds, becomes U+FFFD. For messages that quote what a client sent (a template's value, an
/// entry's name): refused by the database, such a job's end could never be recorded.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// How many items of a batch are in each state; the parts add up to `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchCounts {
    pub total: i32,
    pub queued: i32,
    pub running: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub cancelled: i32,
}

/// A batch as clients see it: the body of `GET /configapi/v2/batches/{id}` and its events' `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub batch_id: Uuid,
    pub status: BatchStatus,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: BatchCounts,
}

/// A job as clients see it: the body of `GET /configapi/v2/jobs/{id}` and every event's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: Uuid,
    #[schema(value_type = String)]
    pub kind: JobKind,
    pub tenant_url: String,
    pub status: JobStatus,
    pub code: Option<i32>,
    pub error: Option<JobError>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tenant: Option<TenantSummary>,
    pub skipped_access_numbers: Vec<SkippedRange>,
    pub batch_id: Option<Uuid>,
    /// The item's 0-based position in its batch.
    pub batch_item: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_urls_are_host_names_stored_lower_case() {
        assert_eq!(
            TenantUrl::parse("Acme.Example.COM").unwrap().as_str(),
            "acme.example.com"
        );
        assert!(TenantUrl::parse("a").is_ok());
        for bad in [
            "",
            "-a.com",
            "a-.com",
            "a..com",
            "a_b.com",
            "a b",
            "ä.com",
            &"a".repeat(254),
        ] {
            assert!(TenantUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn access_numbers_are_one_to_twenty_digits() {
        assert!(is_access_number("0"));
        assert!(is_access_number(&"9".repeat(20)));
        assert!(!is_access_number(""));
        assert!(!is_access_number(&"9".repeat(21)));
        assert!(!is_access_number("+1415"));
    }

    #[test]
    fn emails() {
        assert!(is_email("ada@acme.example"));
        assert!(!is_email("ada"));
        assert!(!is_email("ada@localhost"));
        assert!(!is_email("a da@acme.example"));
        assert!(!is_email("@acme.example"));
    }
}
