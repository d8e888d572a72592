//! Load-testing support for tenant-proxy: a fast mock OpenAI/Anthropic-compatible upstream
//! ([`mock`], over TLS with a throwaway CA from [`tls`]) and a keep-alive HTTP/1.1 load client
//! ([`client`]); the proxy's configuration files as typed values ([`config`]) and loopback ports
//! held without listening ([`ports`]), shared with the end-to-end tests.

pub mod client;
pub mod config;
pub mod http1;
pub mod mock;
pub mod ports;
pub mod tls;
