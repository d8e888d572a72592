//! What the end-to-end tests run against, one module per concern: the proxy binary built from
//! the current sources ([`binary`]), a proxy process on ports it picked itself ([`proxy`]),
//! recording origins ([`origin`]), the loadtest mock ([`mock`]), the MCP server fixture
//! ([`mcp`]), a real `redis-server` ([`redis`]), network namespaces ([`netns`]), workload
//! tokens ([`tokens`]), an OAuth2 token endpoint ([`token_endpoint`]), a wall clock to step
//! ([`fake_clock`]), raw HTTP and real
//! clients ([`http`], [`node`]) and audit records ([`audit`]). The typed configuration files and
//! held ports come from the load generator's library, which uses them too. Everything listens on
//! 127.0.0.1 only (except the transparent-capture tests, on the private veth pair of a namespace
//! they create), and nothing binds a port only to let it go again.

mod audit;
mod bedrock;
mod binary;
mod fake_clock;
mod http;
mod mcp;
mod mock;
mod netns;
mod node;
mod origin;
mod proxy;
mod redis;
mod token_endpoint;
mod tokens;

use std::path::{Path, PathBuf};

pub use audit::*;
pub use bedrock::*;
pub use binary::*;
pub use fake_clock::*;
pub use http::*;
pub use mcp::*;
pub use mock::*;
pub use netns::*;
pub use node::*;
pub use origin::*;
pub use proxy::*;
pub use redis::*;
pub use tenant_proxy_loadtest::config;
pub use tenant_proxy_loadtest::ports::HeldPort;
pub use token_endpoint::*;
pub use tokens::*;

/// The repository root (the test package's manifest directory, in the running checkout).
pub fn repo_root() -> PathBuf {
    tenant_proxy_loadtest::build::package_dir(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, sorted (nothing when it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies the tree `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
