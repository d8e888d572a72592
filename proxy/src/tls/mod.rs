//! TLS interception: the deployment's local CA and the clients that must trust it.
//!
//! - [`ca`]: `ca init` creates the CA (optionally name-constrained to the intercepted hosts);
//!   [`LocalCa`] loads and checks it; [`LeafMinter`] mints short-lived, memory-only leaves per
//!   host and caches them lock-free; [`TunnelCertResolver`] serves one tunnel and refuses an SNI
//!   other than the authorized CONNECT host.
//! - [`resume`]: TLS session resumption for new tunnels, with ticket keys per tenant workload
//!   and tenant snapshot.
//! - [`trust_env`]: `ca env` writes a system-roots-plus-CA bundle and prints the variables that
//!   make Python, Node, curl, Go, git, pip, uv and the AWS SDKs trust it.

pub mod ca;
pub mod pem;
pub mod resume;
pub mod settings;
pub mod trust_env;

pub use ca::{
    init, server_config, CaFiles, CaInitOptions, LeafMinter, LocalCa, MintError, TunnelCertResolver,
};
pub use settings::InterceptSettings;
pub use trust_env::Shell;
