//! Node clients: scripts run with the npm packages of `examples/node` (undici), installed there
//! once per test run with `npm ci` from the committed lock file.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::repo_root;

/// `examples/node`, its packages installed (once per test binary).
pub fn node_examples_dir() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = repo_root().join("examples/node");
            if !dir.join("node_modules/undici/package.json").exists() {
                let out = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .output()
                    .expect("npm is installed (scripts/test.sh installs nodejs and npm)");
                assert!(
                    out.status.success(),
                    "npm ci in examples/node failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            dir
        })
        .clone()
}

/// Runs `node FILE` (relative to `examples/node`) with `env` (and no proxy variables of the
/// caller's); returns (exit code, stdout, stderr).
pub fn node(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let dir = node_examples_dir();
    let out = Command::new("node")
        .args(args)
        .current_dir(&dir)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
