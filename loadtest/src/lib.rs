//! Load-testing support for tenant-proxy: a fast mock OpenAI/Anthropic-compatible upstream
//! ([`mock`], over TLS with a throwaway CA from [`tls`]) and a keep-alive HTTP/1.1 load client
//! ([`client`]).

pub mod client;
pub mod http1;
pub mod mock;
pub mod tls;
