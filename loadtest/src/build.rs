//! The `tenant-proxy` binary built from the current sources, for tests that start it (the
//! end-to-end tests in `tests/` and this crate's own).
//!
//! `cargo test` builds the test package and the libraries it links, not the proxy's binary: a
//! test that started `target/debug/tenant-proxy` as it found it would test whatever was built
//! last. So tests build it themselves, once per test binary, with the cargo and the profile that
//! built them (the target directory comes from the same environment), and start the executable
//! cargo reports. When nothing changed that takes well under a second.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of the package cargo runs (a test, `cargo run`): `CARGO_MANIFEST_DIR` at run
/// time, else `compiled_in` (the caller's `env!("CARGO_MANIFEST_DIR")`, for an executable run
/// by hand). Two checkouts sharing one target directory may share one build, and then the
/// compiled-in directory is the other checkout's.
pub fn package_dir(compiled_in: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(compiled_in), PathBuf::from)
}

/// `cargo build -p tenant-proxy --bin tenant-proxy` in the profile of the running test
/// executable, from the workspace root; the executable's path, from cargo's artifact messages.
pub fn proxy_for_tests() -> Result<PathBuf, String> {
    // At run time cargo names itself in `CARGO`; a test binary run by hand uses the cargo it was
    // built with.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    // Any member of the workspace finds it; the running test's is this checkout's.
    let member = package_dir(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "tenant-proxy", "--bin", "tenant-proxy"])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(&member);
    // Cargo runs a test with the variables it sets for the test crate; left in place they reach
    // the build scripts, some of which (ring's) track them, and the next ordinary `cargo build`
    // would rebuild half the dependency tree because they are gone again.
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
    // A test executable is `<target>/<profile dir>/deps/<test>`.
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .ok_or_else(|| format!("no profile directory above {}", exe.display()))?
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
    let out = cmd.output().map_err(|e| format!("running cargo: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("building tenant-proxy failed:\n{stderr}"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tenant-proxy")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo reported no tenant-proxy executable:\n{stderr}"))
}
