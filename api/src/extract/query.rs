//! Reading single query parameters as text, whatever else the query holds.

use axum::http::Uri;
use provisioner_shared::domain::JobStatus;

use crate::error::FieldError;

/// The first value of query parameter `name`, percent-decoded; `None` when absent.
pub(crate) fn query_param(uri: &Uri, name: &str) -> Option<String> {
    first_value(uri, name, |_| true)
}

/// The query parameters read with [`optional_param`]: the OpenAPI document says of each that an
/// empty value is as if absent.
pub(crate) const EMPTY_IS_ABSENT: [&str; 7] = [
    "limit",
    "cursor",
    "status",
    "wait",
    "fields",
    "tenantUrl",
    "batchId",
];

/// Like [`query_param`], but an empty value (`?status=`, as a form or a URL template sends for
/// "none") counts as absent and hides no value given after it (`?limit=&limit=x` is `x`). Only
/// for filters, paging and waits, whose absence is harmless; a parameter that changes what a
/// request does (`keepAccessNumbers`, a retry's `code`) keeps an empty value as a fault.
pub(crate) fn optional_param(uri: &Uri, name: &str) -> Option<String> {
    debug_assert!(
        EMPTY_IS_ABSENT.contains(&name),
        "{name} is not in EMPTY_IS_ABSENT"
    );
    first_value(uri, name, |v| !v.is_empty())
}

fn first_value(uri: &Uri, name: &str, wanted: impl Fn(&str) -> bool) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == name && wanted(v))
        .map(|(_, v)| v.into_owned())
}

/// The name of the first query parameter whose name or value is not UTF-8 once percent-decoded
/// (shown as far as it can be), if any. Every reader of the query decodes with replacement
/// characters, which would make `?name=%FF` a name of its own: such a query is refused first.
/// (`+`, a space once decoded, changes nothing of that.)
pub(crate) fn undecodable_param(query: &str) -> Option<String> {
    use percent_encoding::percent_decode_str;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = percent_decode_str(name).decode_utf8().is_err()
            || percent_decode_str(value).decode_utf8().is_err();
        bad.then(|| {
            percent_decode_str(name)
                .decode_utf8_lossy()
                .replace('+', " ")
        })
    })
}

/// The name of the first query parameter given two different values, if any: which of the two
/// the client meant is not for the server to guess (as with a JSON member named twice). The
/// same value twice says one thing, and so does an empty value beside another for the
/// parameters whose empty value counts as absent (`EMPTY_IS_ABSENT`: `?limit=&limit=5` is 5); for any
/// other, an empty value is a value (`?keepAccessNumbers=&keepAccessNumbers=true` is refused).
pub(crate) fn ambiguous_param(query: &str) -> Option<String> {
    let mut seen: std::collections::HashMap<_, _> = std::collections::HashMap::new();
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, value)| !(value.is_empty() && EMPTY_IS_ABSENT.contains(&name.as_ref())))
        .find_map(|(name, value)| match seen.entry(name) {
            std::collections::hash_map::Entry::Occupied(first) => {
                (*first.get() != value).then(|| first.key().clone().into_owned())
            }
            std::collections::hash_map::Entry::Vacant(place) => {
                place.insert(value);
                None
            }
        })
}

/// Middleware of the API's routes (not the dashboard's pages, which answer faults as pages): `400`
/// for a query with a parameter whose name or value is not UTF-8 once percent-decoded (read with
/// replacement characters, `?name=%FF` would have named a template "\u{fffd}"), or given two
/// different values (`ambiguous_param`). It runs once the route and method matched and the token
/// was checked, so a wrong method is still `405` and a request without a token still `401`.
pub(crate) async fn refuse_undecodable_queries(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let query = request.uri().query();
    let fault = query
        .and_then(undecodable_param)
        .map(|name| (name, "is not UTF-8 once percent-decoded"))
        .or_else(|| {
            query
                .and_then(ambiguous_param)
                .map(|name| (name, "is given more than once, with different values"))
        });
    if let Some((name, problem)) = fault {
        return axum::response::IntoResponse::into_response(crate::error::ApiError::Validation(
            vec![FieldError::new(&crate::validate::shortened(&name), problem)],
        ));
    }
    next.run(request).await
}

/// `?status=`: one of the job statuses; a bad one adds its field error.
pub(crate) fn status_param(uri: &Uri, errors: &mut Vec<FieldError>) -> Option<JobStatus> {
    let raw = optional_param(uri, "status")?;
    JobStatus::parse(&raw).or_else(|| {
        errors.push(FieldError::new(
            "status",
            "must be queued, running, succeeded, failed or cancelled",
        ));
        None
    })
}

/// Longest long-poll (`?wait=`), seconds.
const MAX_POLL_WAIT: u64 = 60;

/// `?wait=N`: the long-poll's deadline from now, N clamped to 60 s (none: now); a value that is
/// not a non-negative integer adds its field error.
pub(crate) fn wait_deadline(uri: &Uri, errors: &mut Vec<FieldError>) -> tokio::time::Instant {
    let secs = optional_param(uri, "wait").map_or(0, |w| {
        super::clamped_seconds(&w, MAX_POLL_WAIT).unwrap_or_else(|| {
            errors.push(FieldError::new(
                "wait",
                "must be a non-negative integer of seconds",
            ));
            0
        })
    });
    tokio::time::Instant::now() + std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_undecodable_only_where_a_decoded_part_is_not_utf8() {
        assert_eq!(undecodable_param(""), None);
        assert_eq!(undecodable_param("name=caf%C3%A9+au+lait&x=%&y=%2"), None);
        assert_eq!(undecodable_param("a=1&name=%FF"), Some("name".into()));
        assert_eq!(
            undecodable_param("a=1&na%C3%A9=%C3"),
            Some("na\u{e9}".into())
        );
        assert_eq!(undecodable_param("%FFx=1"), Some("\u{fffd}x".into()));
        assert_eq!(undecodable_param("a+b%FF=1"), Some("a b\u{fffd}".into()));
    }

    #[test]
    fn a_query_is_ambiguous_only_where_a_name_has_two_different_values() {
        for fine in [
            "",
            "limit=5",
            "limit=&limit=5",
            "limit=5&limit=",
            "limit=5&limit=5",
            "status=queued&limit=5&cursor=",
            "a=1&b=1",
        ] {
            assert_eq!(ambiguous_param(fine), None, "{fine}");
        }
        assert_eq!(
            ambiguous_param("lockTimeout=1&lockTimeout=abc"),
            Some("lockTimeout".into())
        );
        assert_eq!(
            ambiguous_param("x=1&status=bogus&limit=&status=queued"),
            Some("status".into())
        );
        // Decoded before they are compared: `%71ueued` is `queued`, and `a+b` is `a b`.
        assert_eq!(ambiguous_param("status=queued&status=%71ueued"), None);
        assert_eq!(ambiguous_param("a%20b=1&a+b=2"), Some("a b".into()));
        // An empty value is a value but where it counts as absent.
        assert_eq!(
            ambiguous_param("keepAccessNumbers=true&keepAccessNumbers="),
            Some("keepAccessNumbers".into())
        );
        assert_eq!(ambiguous_param("code=&code=400"), Some("code".into()));
        assert_eq!(ambiguous_param("cursor=abc&cursor="), None);
    }
}
