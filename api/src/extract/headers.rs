//! Request headers several routes read: `Idempotency-Key`, `Prefer: wait` and the media type.

use std::convert::Infallible;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};

use crate::error::{ApiError, FieldError};

/// Longest `Prefer: wait`, seconds.
pub(crate) const MAX_PREFER_WAIT: u64 = 300;

/// `Idempotency-Key`, as sent. It is checked (1 to 255 visible ASCII characters) by `key()`,
/// which the submission calls after the request's own validation; a request refused for its
/// body reports the key's fault among the body's (`fault()`), every problem at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdempotencyKey(Option<Result<String, KeyFault>>);

/// What is wrong with the `Idempotency-Key` sent.
#[derive(Debug, Clone, Copy)]
enum KeyFault {
    Malformed,
    /// The header came more than once.
    Repeated,
}

impl IdempotencyKey {
    /// Was a key sent at all (valid or not)?
    pub(crate) fn is_present(&self) -> bool {
        self.0.is_some()
    }

    /// The key, if one was sent; a malformed one is a validation error.
    pub(crate) fn key(&self) -> Result<Option<&str>, ApiError> {
        if let Some(fault) = self.fault() {
            return Err(fault.into());
        }
        Ok(self.0.as_ref().and_then(|sent| sent.as_deref().ok()))
    }

    /// What is wrong with the key sent, if anything.
    pub(crate) fn fault(&self) -> Option<FieldError> {
        let message = match &self.0 {
            None | Some(Ok(_)) => return None,
            Some(Err(KeyFault::Malformed)) => {
                "must be 1 to 255 visible ASCII characters (spaces allowed inside)"
            }
            Some(Err(KeyFault::Repeated)) => "must be sent once",
        };
        Some(FieldError::new("Idempotency-Key", message))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let mut sent = parts.headers.get_all("idempotency-key").iter();
        let key = sent.next().map(|v| {
            idempotency_key(v.as_bytes())
                .map(str::to_owned)
                .ok_or(KeyFault::Malformed)
        });
        // Two keys: which one the client meant is not for the server to guess.
        let key = if sent.next().is_some() {
            Some(Err(KeyFault::Repeated))
        } else {
            key
        };
        Ok(Self(key))
    }
}

/// An `Idempotency-Key` value: 1 to 255 visible ASCII characters or spaces.
pub(crate) fn idempotency_key(raw: &[u8]) -> Option<&str> {
    let ok =
        (1..=255).contains(&raw.len()) && raw.iter().all(|&b| b.is_ascii_graphic() || b == b' ');
    ok.then(|| std::str::from_utf8(raw).ok()).flatten()
}

/// `Prefer: wait=N` (RFC 7240) in seconds, clamped to the maximum however many digits it has;
/// other preferences are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreferWait(pub(crate) Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for PreferWait {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let values = parts.headers.get_all("prefer");
        Ok(Self(prefer_wait(values.iter().map(|v| v.as_bytes()))))
    }
}

/// The first `wait=N` among `Prefer` header values (clamped to `MAX_PREFER_WAIT`); values that
/// are not visible ASCII text are ignored, as are other preferences.
pub(crate) fn prefer_wait<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<u64> {
    values
        .into_iter()
        .filter(|v| v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .filter_map(|v| std::str::from_utf8(v).ok())
        // Preferences are separated by commas; what follows a semicolon are a preference's
        // parameters (`handling=strict; wait=2` asks for strict handling, not a wait).
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.split(';').next())
        .find_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            name.trim().eq_ignore_ascii_case("wait").then_some(())?;
            clamped_seconds(value.trim().trim_matches('"'), MAX_PREFER_WAIT)
        })
}

/// A non-negative integer of seconds, at most `max` (any larger number, however many digits,
/// is `max`); `None` when `raw` is not such a number.
pub(crate) fn clamped_seconds(raw: &str, max: u64) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(raw.parse::<u64>().map_or(max, |n| n.min(max)))
}

/// The request's media type, lower-case, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> String {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::{clamped_seconds, idempotency_key, prefer_wait};

    #[test]
    fn prefer_wait_is_the_first_wait_preference_clamped() {
        assert_eq!(prefer_wait([&b"respond-async, wait=10"[..]]), Some(10));
        assert_eq!(prefer_wait([&b"wait=\"7\"; handling=lenient"[..]]), Some(7));
        assert_eq!(
            prefer_wait([&b"return=minimal"[..], b"WAIT = 99999"]),
            Some(300)
        );
        assert_eq!(prefer_wait([&b"wait=x"[..], b"wait=-1"]), None);
        assert_eq!(prefer_wait([&b"wait=5\xc3\xa9"[..]]), None);
        assert_eq!(prefer_wait([&b"handling=strict; wait=2"[..]]), None);
        assert_eq!(
            prefer_wait([&b"handling=strict; wait=2, wait=3"[..]]),
            Some(3)
        );
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_of_1_to_255() {
        assert_eq!(idempotency_key(b"order 42"), Some("order 42"));
        assert_eq!(idempotency_key(b""), None);
        assert_eq!(idempotency_key(&[b'k'; 256]), None);
        assert_eq!(idempotency_key(b"tab\tkey"), None);
        assert_eq!(idempotency_key("clé".as_bytes()), None);
    }

    #[test]
    fn waits_are_clamped_whatever_their_length() {
        assert_eq!(clamped_seconds("5", 60), Some(5));
        assert_eq!(clamped_seconds("61", 60), Some(60));
        assert_eq!(clamped_seconds(&"9".repeat(40), 60), Some(60));
        assert_eq!(clamped_seconds("-1", 60), None);
        assert_eq!(clamped_seconds("", 60), None);
        assert_eq!(clamped_seconds("1.5", 60), None);
    }
}
