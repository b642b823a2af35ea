//! Pages of a listing: `limit` and `cursor` in, `{"items", "nextCursor"}` out. A cursor is the
//! last item's sort key as text, base64url-encoded so clients treat it as opaque.

use axum::http::Uri;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use utoipa::ToSchema;

use super::query_param;
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
        let limit = match query_param(uri, "limit").map(|l| clamped(&l)) {
            None => default,
            Some(Some(n)) if n >= 1 => n as i64,
            Some(_) => {
                let message = format!("must be an integer from 1 to {max}");
                errors.push(FieldError::new("limit", message));
                default
            }
        };
        let after = query_param(uri, "cursor").and_then(|c| {
            let text = URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
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
            URL_SAFE_NO_PAD.encode(key(rows.last().expect("a full page has a last item")))
        });
        Page {
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        }
    }
}

/// The error for a cursor this API did not issue.
pub(crate) fn not_a_cursor() -> FieldError {
    FieldError::new("cursor", "is not a cursor this API issued")
}
