//! The documented shapes of the values the server checks: each rule is written once here, from
//! the same definitions the server uses (`TenantUrl`, `is_hidden_char`, the lock timeout bounds),
//! so the document states exactly what a request must satisfy. Routes name them with
//! `inline(...)` in `params` or `schema_with` on body fields.

use provisioner_shared::domain::{MAX_LOCK_TIMEOUT, is_hidden_char};
use utoipa::openapi::{
    ArrayBuilder, KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat, Type,
    schema::{AdditionalProperties, SchemaType},
};

/// 1 to 20 decimal digits.
pub(crate) const ACCESS_NUMBER: &str = "^[0-9]{1,20}$";

/// Longest text field of a create request (names and login id).
pub(crate) const MAX_TEXT: usize = 255;

/// One label of a host name.
macro_rules! host_label {
    () => {
        "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    };
}

/// A DNS host name as `TenantUrl` accepts it: dot-separated labels of 1-63 letters, digits and
/// inner hyphens, 1-253 characters in all (compared lower-case).
pub(crate) const HOST_NAME: &str = concat!("^", host_label!(), "(?:\\.", host_label!(), ")*$");

macro_rules! shape {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

shape!(
    /// A tenant URL in a path or query.
    HostName => host_name()
);
shape!(
    /// A job id.
    JobIdText => ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
);
shape!(
    /// HTTP status codes separated by commas (`400,409`).
    CodeList => pattern("^[1-5][0-9]{2}(,[1-5][0-9]{2})*$", 3, 399)
);
shape!(
    /// An access number.
    AccessNumberText => pattern(ACCESS_NUMBER, 1, 20)
);
shape!(
    /// `lockTimeout`: whole seconds, 0 to 3600.
    LockTimeoutSeconds => integer(0, Some(MAX_LOCK_TIMEOUT.into()))
);
shape!(
    /// A page size: any whole number from 1 (larger than the listing's maximum is clamped, however
    /// many digits it has).
    PageLimit => integer(1, None)
);
shape!(
    /// A wait in whole seconds (larger than the maximum is clamped, however many digits).
    WaitSeconds => integer(0, None)
);
shape!(
    /// The count of a range: 1 to 1,000,000 numbers.
    RangeCount => integer(1, Some(1_000_000))
);
shape!(
    /// `Idempotency-Key`: 1 to 255 visible ASCII characters (inner spaces allowed).
    IdempotencyKeyText => pattern("^[!-~](?:[ -~]{0,253}[!-~])?$", 1, 255)
);
shape!(
    /// A ZIP archive as the raw request body.
    ZipBody => zip()
);
shape!(
    /// A template's id in the store.
    TemplateIdText => template_id()
);
shape!(
    /// A stored template's label: text of 1 to 255 characters.
    TemplateName => text()
);

/// A template's id: the lower-case hex SHA-256 of its bytes.
pub(crate) fn template_id() -> RefOr<Schema> {
    pattern("^[0-9a-f]{64}$", 64, 64)
}

/// A ZIP archive (a request body or a form's file part).
pub(crate) fn zip() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/zip")
        .into()
}

/// A form's `numberMap` parts: `template:actual`, 1-20 digits each.
pub(crate) fn form_number_map() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(pattern("^[0-9]{1,20}:[0-9]{1,20}$", 3, 41))
        .into()
}

/// A form's `lockTimeout` part (a form part is never null).
pub(crate) fn form_lock_timeout() -> RefOr<Schema> {
    integer(0, Some(MAX_LOCK_TIMEOUT.into()))
}

/// A tenant URL.
pub(crate) fn host_name() -> RefOr<Schema> {
    pattern(HOST_NAME, 1, 253)
}

/// A required text field of at most `MAX_TEXT` characters: not blank, no control or Unicode
/// format characters.
pub(crate) fn text() -> RefOr<Schema> {
    text_of(MAX_TEXT)
}

/// Text of 1 to `max` characters, at least one of them not white space, none of them a control
/// or Unicode format character (general category Cc or Cf).
pub(crate) fn text_of(max: usize) -> RefOr<Schema> {
    text_builder(max).into()
}

/// `text_of(max)`, or null.
pub(crate) fn nullable_text(max: usize) -> RefOr<Schema> {
    text_builder(max)
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .into()
}

fn text_builder(max: usize) -> ObjectBuilder {
    let hidden = class(is_hidden_char);
    let blank = class(char::is_whitespace);
    pattern_builder(
        &format!("^[^{hidden}]*[^{hidden}{blank}][^{hidden}]*$"),
        1,
        max,
    )
}

/// An e-mail address as `is_email` accepts it: a local part of 1-64 characters without white
/// space or `@` (the document states visible ASCII; the server also takes other non-space
/// characters), `@`, a host name of at least two labels.
pub(crate) fn email() -> RefOr<Schema> {
    let pattern = concat!(
        "^[!-?A-~]{1,64}@",
        host_label!(),
        "(?:\\.",
        host_label!(),
        ")+$"
    );
    self::pattern(pattern, 3, 254)
}

/// An absolute http or https URL without credentials. The document states the usual forms (a
/// host name whose labels start with a letter, or an IPv4 address; a port; a path and a query of
/// RFC 3986's characters and percent-escapes, as signed links carry), each of which the server
/// accepts; the server accepts every URL the WHATWG rules parse with such a scheme and a host.
pub(crate) fn template_url() -> RefOr<Schema> {
    // Letters, digits and single inner hyphens, at most 63: no `--`, so no `xn--` label,
    // which the server decodes as punycode and may refuse.
    let label = "[A-Za-z](?:-?[A-Za-z0-9]){0,31}";
    let octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let port =
        "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    let escape = "%[0-9A-Fa-f]{2}";
    let path = format!("(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|{escape})");
    let query = format!("(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|{escape})");
    let pattern = format!(
        "^[Hh][Tt][Tt][Pp][Ss]?://(?:{label}(?:\\.{label})*|(?:{octet}\\.){{3}}{octet})\
         (?::{port})?(?:/{path}*)?(?:\\?{query}*)?$"
    );
    self::pattern(&pattern, 8, 2048)
}

/// A create request's password: 8 to 256 characters.
pub(crate) fn password() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(8))
        .max_length(Some(256))
        .into()
}

/// `numberMap`: template number -> real number, both 1-20 digits (targets distinct, which a
/// schema cannot say; the description does).
pub(crate) fn number_map() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Template access number -> real access number (1-20 digits each); no two keys may map to the same number; null: none",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ACCESS_NUMBER)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(pattern(
            ACCESS_NUMBER,
            1,
            20,
        ))))
        .into()
}

/// The create request's optional `lockTimeout` (null: the default).
pub(crate) fn lock_timeout() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .minimum(Some(0))
        .maximum(Some(MAX_LOCK_TIMEOUT))
        .into()
}

fn pattern(pattern: &str, min: usize, max: usize) -> RefOr<Schema> {
    pattern_builder(pattern, min, max).into()
}

fn pattern_builder(pattern: &str, min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
}

/// An integer without a format (so no width is implied) from `min`, up to `max` if given.
fn integer(min: i64, max: Option<i64>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(max)
        .into()
}

/// A regular-expression character class (without brackets) of the Basic Multilingual Plane
/// characters for which `pick` holds, as `\uXXXX` ranges.
fn class(pick: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, (from, to): (u32, u32)| {
        out.push_str(&format!("\\u{from:04X}"));
        if to > from {
            out.push_str(&format!("-\\u{to:04X}"));
        }
    };
    for c in (0..=0xFFFF_u32)
        .filter_map(char::from_u32)
        .filter(|&c| pick(c))
    {
        let n = u32::from(c);
        run = match run {
            Some((from, to)) if to + 1 == n => Some((from, n)),
            Some(done) => {
                flush(&mut out, done);
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    if let Some(done) = run {
        flush(&mut out, done);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_ranges_of_the_picked_characters() {
        assert_eq!(
            class(|c| ('a'..='c').contains(&c) || c == 'x'),
            "\\u0061-\\u0063\\u0078"
        );
        let hidden = class(is_hidden_char);
        assert!(hidden.starts_with("\\u0000-\\u001F"), "{hidden}");
        assert!(hidden.contains("\\u202A-\\u202E"), "{hidden}");
    }
}
