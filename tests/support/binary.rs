//! The `tenant-proxy` binary under test, built from the current sources (see
//! `tenant_proxy_loadtest::build`, shared with the loadtest crate's tests).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `tenant-proxy` executable, built from the current sources on first use.
pub fn proxy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        tenant_proxy_loadtest::build::proxy_for_tests()
            .unwrap_or_else(|e| panic!("for the end-to-end tests: {e}"))
    })
}
