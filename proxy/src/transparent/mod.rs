//! Transparent capture: connections the kernel redirected to a `kind = "transparent"` listener
//! (nftables/iptables `REDIRECT` in the pod's network namespace), from clients that know nothing
//! of the proxy.
//!
//! - [`original`]: the destination the client dialed (`SO_ORIGINAL_DST`, IPv4 and IPv6);
//! - [`sniff`]: what the client speaks first: a TLS ClientHello (its SNI), an HTTP request
//!   head, or anything else;
//! - [`rules`]: the capture rules `tenant-proxy sidecar-init` prints or applies.
//!
//! The connection itself is served by the tunnel module on the paths every other connection
//! takes: plaintext HTTP through the strict front and the admission chain (the destination is
//! the original address, the `Host` must resolve to it), TLS like a `CONNECT` tunnel to the SNI
//! (which must resolve to the original address), anything else only where policy lets it pass
//! opaquely. Identity is the listener's binding, never anything in the captured bytes.

pub mod original;
pub mod rules;
pub mod sniff;
