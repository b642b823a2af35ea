//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>): parsed from a
//! request, generated when a request has none (or a malformed one), and formatted for the
//! job's row, its broker message and its CloudEvents.

use std::fmt;

use rand::RngCore;

/// Longest `traceparent` header value read: a future version may append fields, but not this
/// many.
const MAX_HEADER_LEN: usize = 512;

/// One span's place in a trace: the trace id, the span's id and the trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// A new trace (a random trace id and span id), sampled.
    pub fn new_root() -> Self {
        let mut rng = rand::thread_rng();
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        // All zeros is invalid; the chance is nil, but the loop makes it impossible.
        while trace_id == [0; 16] {
            rng.fill_bytes(&mut trace_id);
        }
        while span_id == [0; 8] {
            rng.fill_bytes(&mut span_id);
        }
        Self {
            trace_id,
            span_id,
            flags: 0x01,
        }
    }

    /// A new span in the same trace (same trace id and flags, a new random span id).
    pub fn child(&self) -> Self {
        let mut rng = rand::thread_rng();
        let mut span_id = [0u8; 8];
        while span_id == [0; 8] || span_id == self.span_id {
            rng.fill_bytes(&mut span_id);
        }
        Self { span_id, ..*self }
    }

    /// The span a request continues: a child of its valid `traceparent`, else a new trace.
    pub fn continue_from(header: Option<&[u8]>) -> Self {
        header
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(Self::parse)
            .map_or_else(Self::new_root, |parent| parent.child())
    }

    /// Parses a `traceparent` value; `None` when it is malformed. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; a higher version (not `ff`) may append `-`-separated
    /// fields, which are ignored, as the recommendation asks. Hex is lowercase; all-zero ids are
    /// invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']);
        if value.len() < 55 || value.len() > MAX_HEADER_LEN || !value.is_ascii() {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value.as_bytes()[55] != b'-' {
            return None;
        }
        let b = value.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&value[3..35])?;
        let span_id = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            // Only the `sampled` flag is defined; others are not passed on.
            flags: flags & 0x01,
        })
    }

    /// A context from its parts; `None` when an id is all zeros (invalid).
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self {
            trace_id,
            span_id,
            flags: u8::from(sampled),
        })
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The trace id as 32 lowercase hex digits (how logs show it).
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        to_hex(&self.span_id)
    }
}

/// The `traceparent` form, version `00`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// The trace id of a stored `traceparent` (for log fields); `None` when it is not one.
pub fn trace_id_of(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(TraceContext::parse)
        .map(|t| t.trace_id_hex())
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_version_00() {
        let t = TraceContext::parse(VALID).expect("valid");
        assert_eq!(t.to_string(), VALID);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert!(t.sampled());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "not a traceparent at all, but long enough to be looked at closely",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let t =
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-whatever")
                .expect("valid");
        // Written back as version 00, with only the flags it knows.
        assert_eq!(t.to_string(), VALID);
    }

    #[test]
    fn a_request_continues_a_valid_trace_and_starts_one_otherwise() {
        let parent = TraceContext::parse(VALID).expect("valid");
        let child = TraceContext::continue_from(Some(VALID.as_bytes()));
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        let a = TraceContext::continue_from(Some(b"garbage"));
        let b = TraceContext::continue_from(None);
        assert_ne!(a.trace_id(), parent.trace_id());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(TraceContext::parse(&a.to_string()).is_some());
    }
}
