//! Connections captured by a transparent listener ([`crate::transparent`]), served on the
//! paths every other connection takes:
//!
//! - plaintext HTTP: the strict front and the admission chain, the destination being the
//!   address the client dialed with its `Host` (which must resolve to that address);
//! - TLS: decided like a `CONNECT` to the ClientHello's SNI (or, without one, the address) on
//!   the dialed port, the SNI resolving to the dialed address; then intercepted or relayed;
//! - anything else: relayed only where policy permits `connect_opaque` to the address.
//!
//! Identity is the listener's binding. A connection whose original destination cannot be
//! recovered, or is the listener itself (not redirected, or a loop), is refused and audited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::head::ConnectHead;
use super::{EgressApp, Opened};
use crate::clock::unix_now;
use crate::error::Deny;
use crate::identity::{self, Presented};
use crate::pipeline::conn::{Conn, ConnFacts};
use crate::pipeline::record::Trail;
use crate::pipeline::PLAIN_KEEPALIVE_SECS;
use crate::transparent::original::is_loop;
use crate::transparent::sniff::{sniff, Sniffed};

/// Why a connection that starts with a PROXY protocol header is refused.
pub(super) const PROXY_HEADER: &str = "the client sent a PROXY protocol header, which a server that takes it strips before reading the rest (a ClientHello, a request) unchecked; no client of this proxy has one to send";

/// How long a captured client may take to send its first byte before it is taken for a
/// protocol in which the server speaks first (and decided as one that is neither HTTP nor TLS).
pub(super) const FIRST_BYTE_WAIT: Duration = Duration::from_secs(1);

impl EgressApp {
    /// Serves one captured connection.
    pub(super) async fn captured(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let digest = stream.get_socket_digest();
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let original = digest.as_ref().and_then(|d| inet(d.original_dst()));
        let local = digest.as_ref().and_then(|d| inet(d.local_addr()));
        let original = match (original, local) {
            (Some(original), Some(local)) if !is_loop(original, local) => Ok(original),
            (original, _) => Err(original),
        };
        let egress = &self.shared.config.egress;
        // A client that closes without sending a byte asked for nothing (the readiness probe
        // connects to every listener once): no record.
        let Some((sniffed, early)) = sniff(
            &mut stream,
            Vec::new(),
            FIRST_BYTE_WAIT,
            egress.client_header_timeout,
        )
        .await
        else {
            return;
        };
        let original = match original {
            Ok(original) => original,
            // SECURITY: a connection that was not redirected (or one redirected back to the
            // listener) has nowhere to go but here: refused, never served as some guess.
            Err(original) => {
                let why = match original {
                    Some(_) => "it was made to this proxy itself, not redirected to it",
                    None => "its original destination cannot be recovered",
                };
                let deny = Deny::DestinationForbidden(why.into());
                self.refuse_captured(original, deny).await;
                return;
            }
        };
        let address = original.ip().to_canonical().to_string();
        let (host, opened) = match sniffed {
            Sniffed::Http => {
                let facts = ConnFacts {
                    original: Some(original),
                    ..ConnFacts::default()
                };
                let mut conn = Conn::new(stream, &early, self.front_limits(), facts);
                let idle = egress.client_header_timeout;
                match conn.next_head(idle).await {
                    Ok(None) => {}
                    Err(violation) => {
                        self.refuse_front(&mut conn, self.front_refusal(violation))
                            .await
                    }
                    Ok(Some(head)) if head.connect => {
                        self.refuse_front(&mut conn, Deny::ConnectUnsupported).await
                    }
                    Ok(Some(_)) => {
                        let idle = Duration::from_secs(PLAIN_KEEPALIVE_SECS);
                        self.serve_http1(Box::new(conn), idle, shutdown).await
                    }
                }
                return;
            }
            Sniffed::Tls { sni } => (sni.unwrap_or(address), Opened::CapturedTls(original)),
            Sniffed::Other => (address, Opened::CapturedOther(original)),
            Sniffed::UnreadableTls => {
                let deny = Deny::InterceptionUnavailable(
                    "the captured client's TLS handshake is no ClientHello this proxy can read (malformed, over 16 KiB, another TLS record first, an SNI that is no host name, or an encrypted inner hello): its server name cannot be checked".into(),
                );
                self.refuse_captured(Some(original), deny).await;
                return;
            }
            Sniffed::ProxyHeader => {
                self.refuse_captured(
                    Some(original),
                    Deny::InterceptionUnavailable(PROXY_HEADER.into()),
                )
                .await;
                return;
            }
            Sniffed::StalledTls => {
                self.refuse_captured(Some(original), Deny::RequestTimeout)
                    .await;
                return;
            }
        };
        let head = match connect_head(&host, original.port()) {
            Ok(head) => head,
            Err(deny) => {
                self.refuse_captured(Some(original), deny).await;
                return;
            }
        };
        self.tunnel(stream, head, early.into(), opened, shutdown)
            .await
    }

    /// Records the refusal of a captured connection refused before the admission chain (no
    /// bytes are written: the client speaks no HTTP to the proxy). The caller is the listener's
    /// binding, so the record goes to its tenant.
    async fn refuse_captured(&self, original: Option<SocketAddr>, deny: Deny) {
        let mut trail = Trail::new(Arc::from(self.listener.name.as_str()), "CONNECT".into());
        trail.authority = original.map(|a| (a.ip().to_canonical().to_string(), a.port()));
        let snapshot = self.shared.snapshot.load();
        let who = identity::resolve(
            &self.listener.identity,
            &snapshot.tenants,
            snapshot.tokens.as_ref(),
            Presented {
                proxy_authorization: None,
                proxy_authorization_repeated: false,
                peer: None,
            },
            unix_now(),
        );
        if let Ok(who) = who {
            // SECURITY: a failing partition's tenant gets no slot (and so no record held in memory)
            // for a refusal, as in the pipeline: holding one per refused head would let a tenant
            // fill the proxy's memory while its partition cannot be written.
            trail.slot = self.shared.audit.reserve_for(&who.tenant).ok();
            let tenant = crate::context::TenantContext::new(who, trail.request_id.clone(), None);
            trail.tenant = Some(Arc::new(tenant));
        }
        // A captured client can be refused at will: sampled per tenant (or listener, when the
        // binding names none) like the tunnel line that follows.
        let key = match &trail.tenant {
            Some(t) => crate::logging::LineKey::Tenant(t.tenant.as_str()),
            None => crate::logging::LineKey::Listener(&self.listener.name),
        };
        if let Some(suppressed) = crate::logging::sample_line(key, "captured_refused") {
            tracing::info!(listener = %self.listener.name, tenant = trail.tenant_label(), request_id = %trail.request_id, refusal = %deny.code(), suppressed, "captured connection refused");
        }
        trail.refuse(deny);
        trail.finish_tunnel(&self.shared.runs, 0).await;
    }
}

/// The `CONNECT` a captured TLS (or other) connection is decided as: to `host` on the dialed
/// port, with no headers (nothing in captured traffic is believed about identity).
///
/// SECURITY: the name is normalized as a `CONNECT` target's is (a trailing dot dropped, an
/// address in its canonical text), so that every check after this one (the tenant's bound
/// hosts, MCP servers, LLM hosts, the record) sees the name policy decides on: rustls keeps an
/// SNI's trailing dot, and `llm.test.` was not a host the tenant's credentials are bound to.
fn connect_head(host: &str, port: u16) -> Result<ConnectHead, Deny> {
    let host = crate::target::normalize_host(host)?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let header = RequestHeader::build("CONNECT", authority.as_bytes(), Some(0))
        .map_err(|_| Deny::Internal)?;
    Ok(ConnectHead { host, port, header })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::connect_head;

    /// A captured ClientHello's name is decided (and compared with the tenant's bound hosts,
    /// MCP servers and LLM hosts) as a `CONNECT` target's would be: rustls keeps an SNI's
    /// trailing dot, and `llm.test.` passed for a host no credential was bound to.
    #[test]
    fn a_captured_name_is_normalized_as_a_connect_target_is() {
        for (sni, host) in [
            ("llm.test.", "llm.test"),
            ("LLM.Test", "llm.test"),
            ("10.0.0.1", "10.0.0.1"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
        ] {
            let head = connect_head(sni, 443).unwrap();
            assert_eq!(head.host, host, "{sni}");
            assert_eq!(head.port, 443);
        }
        assert!(connect_head("a..b", 443).is_err());
        let v6 = connect_head("::1", 8443).unwrap();
        assert_eq!(v6.host, "::1");
    }
}
