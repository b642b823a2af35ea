//! Free-form JSON inside a template (tenant settings, object data, calling-list entries, audit
//! details), kept as the text it came in (`JsonDoc`): checked once while read (nesting, and for
//! settings the request fields' string rules) but never built into a tree, so it costs what its
//! text costs. Lists a job does not import are read one element at a time, nothing of them kept.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value, value::RawValue};

use crate::domain::is_hidden_char;

/// Deepest nesting of a free-form value (the value itself is level 1).
pub const MAX_DEPTH: usize = 32;
/// Most elements of one array, or members of one object, in a free-form value. PostgreSQL builds
/// a `jsonb` value's array or object in one allocation, which cannot pass 1 GiB: an array of
/// more than 16.7 million elements (32 bytes each) or an object of more than 8.4 million members
/// (72 bytes each) fails there (`invalid memory alloc request size`), with an internal error
/// that would read as a database fault and be retried. Half of the smaller keeps such a template
/// a fault of the template, and leaves every value PostgreSQL stores well alone.
pub const MAX_ELEMENTS: usize = 4_000_000;
/// Longest settings key and string value, in characters, and largest settings text in bytes.
pub const MAX_SETTINGS_KEY: usize = 255;
pub const MAX_SETTINGS_VALUE: usize = 65_536;
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// A JSON document kept as text: an object, or for calling-list entries a list of objects.
#[derive(Debug, Clone)]
pub struct JsonDoc(Box<RawValue>);

impl JsonDoc {
    /// `{}`.
    pub fn empty_object() -> Self {
        Self(RawValue::from_string("{}".to_owned()).expect("valid JSON"))
    }

    /// `[]`.
    pub fn empty_list() -> Self {
        Self(RawValue::from_string("[]".to_owned()).expect("valid JSON"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The document as a tree (costs what a tree costs: only for small documents).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("a JsonDoc holds valid JSON")
    }

    fn from_serialize(value: &impl Serialize) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("JSON values serialize"))
    }

    /// The text of a `jsonb` value as the database prints it, made compact (the whitespace
    /// between tokens removed, as `serde_json` writes): what was checked on import, never
    /// built into a tree.
    pub fn from_database(mut text: String) -> Result<Self, serde_json::Error> {
        compact_json(&mut text);
        RawValue::from_string(text).map(Self)
    }
}

/// Removes the whitespace between the tokens of JSON `text` (as the database prints `jsonb`),
/// leaving what `serde_json` would write.
pub fn compact_json(text: &mut String) {
    let (mut in_string, mut escaped) = (false, false);
    text.retain(|c| {
        if in_string {
            (in_string, escaped) = match (escaped, c) {
                (true, _) => (true, false),
                (false, '\\') => (true, true),
                (false, '"') => (false, false),
                (false, _) => (true, false),
            };
            return true;
        }
        in_string = c == '"';
        !matches!(c, ' ' | '\t' | '\n' | '\r')
    });
}

impl Default for JsonDoc {
    fn default() -> Self {
        Self::empty_object()
    }
}

/// Equal when they hold the same JSON, whatever the spacing or member order.
impl PartialEq for JsonDoc {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl From<Map<String, Value>> for JsonDoc {
    fn from(map: Map<String, Value>) -> Self {
        Self::from_serialize(&map)
    }
}

impl From<Vec<Map<String, Value>>> for JsonDoc {
    fn from(list: Vec<Map<String, Value>>) -> Self {
        Self::from_serialize(&list)
    }
}

impl From<Box<RawValue>> for JsonDoc {
    /// Text read back from the database (a `jsonb` column), trusted as it was checked on import.
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl Serialize for JsonDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// What a document's top level must be, and which string rules hold inside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// An object whose keys and string values obey the request fields' rules.
    Settings,
    /// Any object.
    Object,
    /// A list of objects.
    Objects,
}

impl<'de> Deserialize<'de> for JsonDoc {
    /// Any object.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(d, Rules::Object, "a JSON object")
    }
}

/// Reads a document under `rules`; a fault names the `document`.
fn read<'de, D: Deserializer<'de>>(
    d: D,
    rules: Rules,
    document: &str,
) -> Result<JsonDoc, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    if rules == Rules::Settings && raw.get().len() > MAX_SETTINGS_BYTES {
        return Err(de::Error::custom(format!(
            "settings are larger than {MAX_SETTINGS_BYTES} bytes"
        )));
    }
    let mut text = serde_json::Deserializer::from_str(raw.get());
    let top = Scan { depth: 1, rules };
    match rules {
        Rules::Settings | Rules::Object => text.deserialize_map(top),
        Rules::Objects => text.deserialize_seq(top),
    }
    .map_err(|e| de::Error::custom(placed(&e, document)))?;
    let Growth { growth, spaces } = number_growth(raw.get())
        .map_err(|fault| de::Error::custom(format!("{fault} (in {document})")))?;
    // As the export writes them: without the whitespace, with the numbers written out.
    let exported = (raw.get().len() as u64 - spaces).saturating_add(growth);
    if rules == Rules::Settings && exported > MAX_SETTINGS_BYTES as u64 {
        return Err(de::Error::custom(format!(
            "settings are larger than {MAX_SETTINGS_BYTES} bytes once their numbers are written \
             out in full, as the database keeps and exports them (`1e300` takes 301 characters)"
        )));
    }
    GROWTH.with(|g| g.set(g.get().saturating_add(growth)));
    Ok(JsonDoc(raw))
}

/// Digits after the decimal point a number of `jsonb` may have (PostgreSQL's `numeric`).
const MAX_NUMERIC_SCALE: i64 = 16_383;
/// The exponent from which `numeric` refuses a number, whatever its digits (`INT_MAX / 2`).
const MAX_NUMERIC_EXPONENT: i64 = 1_073_741_823;

thread_local! {
    /// Bytes the numbers of the documents read on this thread gain once the database writes
    /// them out (`number_growth`), since `take_growth` last asked.
    static GROWTH: Cell<u64> = const { Cell::new(0) };
}

/// The growth counted on this thread since the last call (see `GROWTH`), counted from zero
/// again.
pub(super) fn take_growth() -> u64 {
    GROWTH.with(|g| g.replace(0))
}

/// How many bytes the numbers of the JSON `text` gain when the database writes them out:
/// `jsonb` keeps a number as PostgreSQL's `numeric`, exactly, and prints it without an
/// exponent (`1e300` as a 1 and 300 zeros, `1e-5` as `0.00001`). An export writes what the
/// database prints, so a template's documents take this much more room in the export of a
/// tenant made from it, and the export must still fit the limits it is read back under. A
/// number the database cannot store (more than `MAX_NUMERIC_SCALE` digits after the point,
/// counting what a negative exponent adds: `1e-16384` has 16,384) is a fault: stored, it would
/// fail every create that uses the template. (The reader already refuses a number beyond
/// `f64`'s range, `1e400`, so the digits before the point are few.)
fn number_growth(text: &str) -> Result<Growth, String> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string, mut growth, mut spaces) = (0, false, 0u64, 0u64);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if !(b == b'-' || b.is_ascii_digit()) {
            // Whitespace between tokens, which the database does not keep.
            spaces += u64::from(b.is_ascii_whitespace());
            i += 1;
            continue;
        }
        // A number: [-] digits [. digits] [e|E [+|-] digits].
        let start = i;
        let digits = |i: &mut usize| {
            let start = *i;
            while *i < bytes.len() && bytes[*i].is_ascii_digit() {
                *i += 1;
            }
            &text[start..*i]
        };
        let negative = b == b'-';
        i += usize::from(negative);
        let whole = digits(&mut i);
        let mut fraction = "";
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            fraction = digits(&mut i);
        }
        let mut exponent: i64 = 0;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            let minus = bytes.get(i) == Some(&b'-');
            i += usize::from(matches!(bytes.get(i), Some(b'+' | b'-')));
            let magnitude: i64 = digits(&mut i).parse().unwrap_or(i64::MAX);
            // `numeric` refuses such an exponent whatever the digits (`0e2000000000` too,
            // which the reader takes as 0).
            if magnitude >= MAX_NUMERIC_EXPONENT {
                return Err(format!(
                    "a number has an exponent of {MAX_NUMERIC_EXPONENT} or more, more than the database can store"
                ));
            }
            exponent = if minus { -magnitude } else { magnitude };
        }
        let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
        let scale = fraction_len.saturating_sub(exponent).max(0);
        if scale > MAX_NUMERIC_SCALE {
            return Err(format!(
                "a number has more than {MAX_NUMERIC_SCALE} digits after the decimal point, more than the database can store"
            ));
        }
        // As `numeric_out` prints it: the sign of a value other than zero, the digits before
        // the point (at least one), then the point and `scale` digits if any.
        let leading_zeros = whole
            .bytes()
            .chain(fraction.bytes())
            .take_while(|&d| d == b'0')
            .count();
        let significant = whole.len() + fraction.len() - leading_zeros;
        let before_point = if significant == 0 {
            1
        } else {
            let point = i64::try_from(whole.len()).unwrap_or(i64::MAX) - leading_zeros as i64;
            point.saturating_add(exponent).max(1)
        };
        let printed = i64::from(negative && significant > 0)
            + before_point
            + if scale > 0 { 1 + scale } else { 0 };
        let written = (i - start) as i64;
        growth = growth.saturating_add(u64::try_from(printed - written).unwrap_or(0));
    }
    Ok(Growth { growth, spaces })
}

/// What `number_growth` found in a document.
#[derive(Debug, PartialEq, Eq)]
struct Growth {
    /// Bytes its numbers gain once written out in full.
    growth: u64,
    /// Bytes of whitespace between its tokens, which the database drops.
    spaces: u64,
}

/// A fault found inside a document, said where it is: its place counts from the document's own
/// text, not from the entry around it, so the document is named with it.
fn placed(fault: &serde_json::Error, document: &str) -> String {
    if fault.line() == 0 {
        return format!("{fault} (in {document})");
    }
    let text = fault.to_string();
    let at = format!(" at line {} column {}", fault.line(), fault.column());
    let what = text.strip_suffix(&at).unwrap_or(&text);
    format!(
        "{what} (in {document}, at line {} column {} of it)",
        fault.line(),
        fault.column()
    )
}

/// `deserialize_with` for tenant settings.
pub(super) fn settings<'de, D: Deserializer<'de>>(d: D) -> Result<JsonDoc, D::Error> {
    read(d, Rules::Settings, "the tenant's settings")
}

/// `deserialize_with` for calling-list entries.
pub(super) fn objects<'de, D: Deserializer<'de>>(d: D) -> Result<JsonDoc, D::Error> {
    read(d, Rules::Objects, "a calling list's entries")
}

/// `deserialize_with` for an object's data.
pub(super) fn object_data<'de, D: Deserializer<'de>>(d: D) -> Result<JsonDoc, D::Error> {
    read(d, Rules::Object, "an object's data")
}

/// `deserialize_with` for an audit entry's details.
pub(super) fn audit_details<'de, D: Deserializer<'de>>(d: D) -> Result<JsonDoc, D::Error> {
    read(d, Rules::Object, "an audit entry's details")
}

/// Checks one value at `depth`, building nothing.
#[derive(Clone, Copy)]
struct Scan {
    depth: usize,
    rules: Rules,
}

impl Scan {
    fn text<E: de::Error>(&self, s: &str, max: usize, what: &str) -> Result<(), E> {
        if self.rules != Rules::Settings {
            // Free-form text is free but for the one character `jsonb` cannot hold: stored, the
            // template would fail every create that uses it.
            if s.contains('\0') {
                return Err(E::custom(format!(
                    "a {what} contains the character U+0000, which the database cannot store"
                )));
            }
            return Ok(());
        }
        if s.chars().count() > max {
            return Err(E::custom(format!(
                "a settings {what} is longer than {max} characters"
            )));
        }
        if s.chars().any(is_hidden_char) {
            return Err(E::custom(format!(
                "a settings {what} contains control or Unicode format characters"
            )));
        }
        Ok(())
    }

    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "a value nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let rules = if self.rules == Rules::Objects {
            Rules::Object
        } else {
            self.rules
        };
        Ok(Self {
            depth: self.depth + 1,
            rules,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.rules == Rules::Objects {
            // The elements of a list of objects.
            return d.deserialize_map(self);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self.rules {
            Rules::Objects => "a list of JSON objects",
            _ => "a JSON value",
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.text(v, MAX_SETTINGS_VALUE, "value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = if self.rules == Rules::Objects {
            Scan {
                depth: self.depth + 1,
                rules: Rules::Objects,
            }
        } else {
            self.deeper()?
        };
        let mut elements = 0;
        while seq.next_element_seed(inner)?.is_some() {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(de::Error::custom(format!(
                    "an array holds more than {MAX_ELEMENTS} elements"
                )));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        // The names seen in this object (borrowed from the text where they have no escapes): a
        // name given twice is a fault, since `jsonb` would keep the last of the two where the
        // template's author may have meant the first.
        let mut names = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            inner.text(&key, MAX_SETTINGS_KEY, "key")?;
            if names.contains(&key) {
                return Err(de::Error::custom(crate::domain::member_given_twice(&key)));
            }
            map.next_value_seed(inner)?;
            names.insert(key);
            if names.len() > MAX_ELEMENTS {
                return Err(de::Error::custom(format!(
                    "an object has more than {MAX_ELEMENTS} members"
                )));
            }
        }
        Ok(())
    }
}

/// `T` read only from a JSON object. Serde's derived structs also take an array of their fields
/// in order (`["templates", 1, 7, ...]` for a manifest), which the format does not allow: every
/// entry, every element of a list entry and every record within them is an object.
#[derive(Debug)]
pub(super) struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

/// `deserialize_with` for a record within an entry (a manifest's `source`): an object only.
pub(super) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Object::deserialize(d).map(|Object(t)| t)
}

/// `deserialize_with`-like reading of a list entry: a list of objects, each `T`.
pub(super) fn objects_of<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let list = Vec::<Object<T>>::deserialize(d)?;
    Ok(list.into_iter().map(|Object(t)| t).collect())
}

/// Reads `body` as a JSON list of elements of the shape `T`, one element built at a time, each
/// handed to `each` with its position and dropped: nothing of the list is kept.
pub(super) fn check_list<T>(body: &[u8], mut each: impl FnMut(usize, T)) -> serde_json::Result<()>
where
    T: for<'de> Deserialize<'de>,
{
    struct Elements<'c, T, C: FnMut(usize, T)> {
        each: &'c mut C,
        element: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>, C: FnMut(usize, T)> Visitor<'de> for Elements<'_, T, C> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(Object(element)) = seq.next_element::<Object<T>>()? {
                (self.each)(i, element);
                i += 1;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_seq(Elements {
        each: &mut each,
        element: PhantomData,
    })?;
    de.end()
}

/// `deserialize_with` for a user's roles: at most `check::MAX_ROLES` + 1 are built (one more
/// than allowed, so the check names the breach).
pub(super) fn roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Roles;
    impl<'de> Visitor<'de> for Roles {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of roles")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(role) = seq.next_element::<String>()? {
                if out.len() > super::check::MAX_ROLES {
                    return Err(de::Error::custom(format!(
                        "a user has more than {} roles",
                        super::check::MAX_ROLES
                    )));
                }
                out.push(role);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_grow_by_what_the_database_prints_of_them() {
        // Each number beside the length PostgreSQL 15 prints it with (`('{"n": N}'::jsonb ->
        // 'n')::text`), as measured.
        for (number, printed) in [
            ("1e300", 301),
            ("1e-5", 7),
            ("1.50", 4),
            ("-0", 1),
            ("-0.0", 3),
            ("0.000", 5),
            ("1.0e2", 3),
            ("1.23e1", 4),
            ("123.456e-2", 7),
            ("-1.5e-7", 11),
            ("0e10", 1),
            ("100", 3),
            ("1E+3", 4),
            ("0.001e3", 1),
            ("0.05", 4),
            ("12345678901234567890.125", 24),
            ("-2.5E+3", 5),
            ("1e-16383", 16_385),
        ] {
            let text = format!(r#"{{"n":{number},"s":"1e300"}}"#);
            let growth = (printed as usize).saturating_sub(number.len()) as u64;
            assert_eq!(
                number_growth(&text).map(|g| g.growth),
                Ok(growth),
                "{number}"
            );
        }
        let many = format!("[ {} ]", ["1e300"; 10].join(",\n"));
        assert_eq!(
            number_growth(&many),
            Ok(Growth {
                growth: 10 * 296,
                spaces: 11
            })
        );
        // An exponent `numeric` refuses, whatever the digits; the reader takes `0e2000000000`.
        for number in [
            "0e2000000000",
            "-0e99999999999999999999",
            "1e1073741823",
            "0E-1073741823",
        ] {
            let err = number_growth(&format!("[{number}]")).unwrap_err();
            assert!(err.contains("exponent"), "{number}: {err}");
        }
        assert!(number_growth("[0e1073741822]").is_ok());
    }
}
