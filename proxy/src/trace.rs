//! W3C trace context: continue a valid incoming `traceparent`, or start a new trace.

/// The trace a request belongs to and the span the proxy opens for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The proxy's own span id (16 hex digits), sent upstream as the parent.
    pub span_id: String,
    /// The caller's span id, when the trace was continued.
    pub parent_span_id: Option<String>,
    /// Trace flags (sampled bit).
    pub flags: u8,
}

impl TraceContext {
    /// Continues `traceparent` when it is valid (version 00, or a later version read as 00
    /// reads it, as W3C Trace Context asks), else starts a new trace.
    pub fn continue_or_start(traceparent: Option<&[u8]>) -> Self {
        if let Some((trace_id, parent, flags)) = traceparent.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id: random_hex(8),
                parent_span_id: Some(parent),
                flags,
            };
        }
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            parent_span_id: None,
            flags: 1,
        }
    }

    /// The `traceparent` value to send upstream (this proxy's span as the parent).
    pub fn traceparent(&self) -> String {
        // Pieces pushed into a string sized once: every forwarded request writes one.
        let mut out = String::with_capacity(8 + self.trace_id.len() + self.span_id.len());
        out.push_str("00-");
        out.push_str(&self.trace_id);
        out.push('-');
        out.push_str(&self.span_id);
        out.push('-');
        crate::lower_hex::push(&mut out, &[self.flags]);
        out
    }
}

fn parse_traceparent(value: &[u8]) -> Option<(String, String, u8)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, len: usize| {
        p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // A later version may add fields after these four (read as 00 reads them); `ff` is no
    // version, and version 00 has exactly four.
    if !hex(version, 2)
        || version == "ff"
        || (version == "00" && parts.next().is_some())
        || !hex(trace_id, 32)
        || !hex(parent, 16)
        || !hex(flags, 2)
    {
        return None;
    }
    // All-zero ids are invalid per the spec.
    if trace_id.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_string(), parent.to_string(), flags))
}

/// `n` random bytes (at most 16) as lowercase hex.
pub fn random_hex(n: usize) -> String {
    // One draw of 128 bits (an array would be drawn byte by byte).
    let bytes = rand::random::<u128>().to_le_bytes();
    crate::lower_hex::of(&bytes[..n.min(16)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_valid_and_replaces_invalid() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::continue_or_start(Some(tp));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(
            t.traceparent(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id)
        );
        for flags in [0u8, 1, 0x0a, 0xff] {
            let t = TraceContext { flags, ..t.clone() };
            assert_eq!(
                t.traceparent(),
                format!("00-{}-{}-{flags:02x}", t.trace_id, t.span_id)
            );
        }

        // A later version is read as version 00 reads it, whatever fields follow.
        for later in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next",
        ] {
            let t = TraceContext::continue_or_start(Some(later));
            assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
            assert!(t
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        }

        for bad in [
            &b"garbage"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::continue_or_start(Some(bad));
            assert!(
                t.parent_span_id.is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(t.trace_id.len(), 32);
        }
    }

    #[test]
    fn random_ids_are_lowercase_hex_of_the_asked_length() {
        for (n, len) in [(16, 32), (8, 16), (1, 2), (20, 32)] {
            let id = random_hex(n);
            assert_eq!(id.len(), len);
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| random_hex(8)).collect();
        assert_eq!(ids.len(), 1000);
    }
}
