//! Pages of a listing: `limit` and `cursor` in, `{"items", "nextCursor"}` out. A cursor is the
//! last item's sort key as text, base64url-encoded so clients treat it as opaque.

use axum::http::Uri;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::optional_param;
use crate::error::FieldError;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// One page of a listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub(crate) next_cursor: Option<String>,
}

/// `?limit=` (1 to 500, default 50, larger values clamped however many digits they have) and `?cursor=` (decoded to the sort
/// key it carries).
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub(crate) limit: i64,
    pub(crate) after: Option<String>,
}

impl PageQuery {
    /// Reads both parameters (`limit` 1 to 500, default 50); each bad one adds its field error.
    pub(crate) fn read(uri: &Uri, errors: &mut Vec<FieldError>) -> Self {
        Self::read_with(uri, errors, DEFAULT_LIMIT, MAX_LIMIT)
    }

    /// Reads both parameters with a listing's own default and largest `limit`.
    pub(crate) fn read_with(
        uri: &Uri,
        errors: &mut Vec<FieldError>,
        default: i64,
        max: i64,
    ) -> Self {
        let clamped = |raw: &str| super::clamped_seconds(raw, max.unsigned_abs());
        let limit = match optional_param(uri, "limit").map(|l| clamped(&l)) {
            None => default,
            Some(Some(n)) if n >= 1 => n as i64,
            Some(_) => {
                let message = format!("must be an integer from 1 to {max}");
                errors.push(FieldError::new("limit", message));
                default
            }
        };
        let after = optional_param(uri, "cursor").and_then(|c| {
            let text = decode_cursor(&c);
            if text.is_none() {
                errors.push(not_a_cursor());
            }
            text
        });
        Self { limit, after }
    }

    /// How many rows to fetch: one more than a page, to learn whether another page follows.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page of `rows` (fetched with `fetch()`), its cursor made from the last item's key.
    pub(crate) fn page<R, T>(
        &self,
        mut rows: Vec<R>,
        key: impl Fn(&R) -> String,
        item: impl FnMut(R) -> T,
    ) -> Page<T> {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let next_cursor = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            encode_cursor(&key(rows.last().expect("a full page has a last item")))
        });
        Page {
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        }
    }
}

/// A cursor for the sort key `key`.
pub(crate) fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The sort key a cursor carries; `None` for text no cursor is.
pub(crate) fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    // No key this API issues holds a NUL, which PostgreSQL's text refuses.
    String::from_utf8(bytes)
        .ok()
        .filter(|text| !text.contains('\0'))
}

/// The job listing's sort key as text: creation time in microseconds and id.
pub(crate) fn job_key_text(created_at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}|{id}", created_at.timestamp_micros())
}

/// A job listing's sort key read back from `job_key_text`.
pub(crate) fn job_key(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// The template listing's sort key as text: the keep's creation time in microseconds, the
/// template id and the client id (last, so it may hold any character).
pub(crate) fn template_key_text(
    created_at: DateTime<Utc>,
    template_id: &str,
    client_id: &str,
) -> String {
    format!(
        "{}|{template_id}|{client_id}",
        created_at.timestamp_micros()
    )
}

/// A template listing's sort key read back from `template_key_text`.
pub(crate) fn template_key(text: &str) -> Option<(DateTime<Utc>, String, String)> {
    let mut parts = text.splitn(3, '|');
    let micros = parts.next()?.parse().ok()?;
    let template_id = parts.next()?.to_owned();
    let client_id = parts.next()?.to_owned();
    Some((
        DateTime::from_timestamp_micros(micros)?,
        template_id,
        client_id,
    ))
}

/// The error for a cursor this API did not issue.
pub(crate) fn not_a_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor this API issued")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(query: &str) -> (PageQuery, Vec<FieldError>) {
        let uri: Uri = format!("/x?{query}").parse().unwrap();
        let mut errors = Vec::new();
        (PageQuery::read(&uri, &mut errors), errors)
    }

    #[test]
    fn limits_of_any_size_are_clamped_and_zero_is_refused() {
        assert_eq!(read("limit=7").0.limit, 7);
        assert_eq!(read("limit=501").0.limit, MAX_LIMIT);
        assert_eq!(
            read(&format!("limit={}", "9".repeat(30))).0.limit,
            MAX_LIMIT
        );
        for bad in ["limit=0", "limit=-1", "limit=1.5"] {
            assert_eq!(read(bad).1.len(), 1, "{bad}");
        }
        // Empty is absent (a URL template's `?limit=&cursor=`): the default, the first page.
        let (empty, errors) = read("limit=&cursor=");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(empty.limit, DEFAULT_LIMIT);
        // An empty value hides no value given after it.
        assert_eq!(read("limit=&limit=x").1.len(), 1);
        assert_eq!(read("limit=&limit=7").0.limit, 7);
    }

    #[test]
    fn cursors_and_job_keys_read_back_what_they_were_made_from() {
        let key = job_key_text(
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            Uuid::nil(),
        );
        assert_eq!(
            decode_cursor(&encode_cursor(&key)).as_deref(),
            Some(key.as_str())
        );
        let (at, id) = job_key(&key).unwrap();
        assert_eq!(
            (at.timestamp_micros(), id),
            (1_700_000_000_123_456, Uuid::nil())
        );
        assert_eq!(decode_cursor("not base64!"), None);
        assert_eq!(decode_cursor(&encode_cursor("1|x|\0")), None);
        assert_eq!(job_key("12|not-a-uuid"), None);
        let key = template_key_text(
            DateTime::from_timestamp_micros(7).unwrap(),
            "ab",
            "client|with|bars",
        );
        let (at, template, client) = template_key(&key).unwrap();
        assert_eq!(
            (at.timestamp_micros(), template.as_str(), client.as_str()),
            (7, "ab", "client|with|bars")
        );
        assert_eq!(template_key("12|ab"), None);
    }
}
