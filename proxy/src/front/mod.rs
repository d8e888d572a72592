//! The HTTP/1 front: every byte a client sends is framed and checked here before pingora
//! parses it.
//!
//! An egress proxy that frames a request differently from its upstream decides one request
//! while the upstream executes another. pingora 0.9's parser is lenient in exactly the places
//! that allow that (see [`head`]), so tenant-proxy reads each request head itself, strictly,
//! and hands pingora one checked request at a time ([`conn::FrontConn`]). The same front serves
//! every HTTP/1 path: plain listeners, mTLS listeners and requests inside intercepted tunnels.
//!
//! - [`head`]: request heads (RFC 9112), incremental and bounded;
//! - [`chunked`]: chunked body framing, checked byte by byte;
//! - [`conn`]: the connection wrapper pingora reads through, with the head and body deadlines;
//! - [`listen`]: the listening sockets, bound before anything starts, with connection caps.

pub mod chunked;
pub mod conn;
pub mod head;
pub mod listen;
pub mod settings;

pub use conn::{FrontConn, FrontLimits, Violation};
pub use head::{Framing, Head, HeadError, HeadLimits};
pub use settings::RequestLimits;

/// The `Connection` options a client may not nominate: hop-by-hop removal of these would change
/// what the proxy decided on (the destination, the body's framing, the identity, the trace) or
/// what it substituted (credentials) between the decision and the upstream. Every provider's
/// key headers are protected too (see [`nominated_protected`]).
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "authorization",
    "proxy-authorization",
    "cookie",
    "traceparent",
    "tracestate",
    "baggage",
    "content-type",
    "content-encoding",
    "x-request-id",
];

/// The first protected header a `Connection` field nominates, if any (see [`PROTECTED`], and
/// every provider's key headers); other options (`close`, `keep-alive`, `upgrade`, custom
/// hop-by-hop fields) are fine.
pub fn nominated_protected<'a>(
    connection_values: impl Iterator<Item = &'a [u8]>,
) -> Option<&'static str> {
    connection_values
        .flat_map(head::connection_options)
        .find_map(|option| {
            PROTECTED
                .iter()
                .find(|p| p.as_bytes().eq_ignore_ascii_case(option))
                .copied()
                .or_else(|| crate::usage::providers::registry::key_header(option))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_headers_cannot_be_nominated_hop_by_hop() {
        for (values, want) in [
            (vec![&b"close"[..]], None),
            (vec![b"keep-alive, Upgrade"], None),
            (vec![b"Host"], Some("host")),
            (vec![b"close", b" , TraceParent "], Some("traceparent")),
            (
                vec![b"x-custom, proxy-authorization"],
                Some("proxy-authorization"),
            ),
            (vec![b"Content-Length"], Some("content-length")),
            // Every provider's key headers.
            (vec![b"X-Api-Key"], Some("x-api-key")),
            (vec![b"api-key"], Some("api-key")),
            (vec![b"x-goog-api-key"], Some("x-goog-api-key")),
        ] {
            assert_eq!(nominated_protected(values.into_iter()), want);
        }
    }
}
