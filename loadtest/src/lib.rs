//! Load-testing support for tenant-proxy: a fast mock OpenAI/Anthropic-compatible upstream
//! ([`mock`], over TLS with a throwaway CA from [`tls`]), a keep-alive HTTP/1.1 load client
//! ([`client`]) and one for streams that times their first event ([`stream_client`]); the
//! proxy's configuration files as typed values ([`config`]), many generated tenants
//! ([`scale`]), loopback ports held without listening ([`ports`]) and the proxy binary built for
//! tests ([`build`]), shared with the end-to-end tests and the benches.

pub mod build;
pub mod client;
pub mod config;
pub mod http1;
pub mod mock;
pub mod ports;
pub mod scale;
pub mod stream_client;
pub mod tls;
