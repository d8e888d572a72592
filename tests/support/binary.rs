//! The `tenant-proxy` binary under test, built from the current sources.
//!
//! `cargo test --test e2e` builds the test package and the libraries it links, not the proxy's
//! binary: a harness that started `target/debug/tenant-proxy` as it found it would test whatever
//! was built last. So the harness builds it itself, once per test run, with the cargo and the
//! profile that built the tests (the target directory comes from the same environment), and
//! starts the executable cargo reports. When nothing changed that takes well under a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `tenant-proxy` executable, built from the current sources on first use.
pub fn proxy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build)
}

/// `cargo build -p tenant-proxy --bin tenant-proxy` in the tests' profile; the executable's
/// path, from cargo's artifact messages.
fn build() -> PathBuf {
    // At run time cargo names itself in `CARGO`; a test binary run by hand uses the cargo it was
    // built with.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "tenant-proxy", "--bin", "tenant-proxy"])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(super::repo_root());
    // Cargo runs this test with the variables it sets for the test crate; left in place they
    // reach the build scripts, some of which (ring's) track them, and the next ordinary
    // `cargo build` would rebuild half the dependency tree because they are gone again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    // This executable is `<target>/<profile dir>/deps/<test>`.
    let exe = std::env::current_exe().unwrap();
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "building tenant-proxy for the end-to-end tests failed:\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tenant-proxy")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no tenant-proxy executable:\n{stderr}"))
}
