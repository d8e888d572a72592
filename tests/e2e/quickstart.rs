//! The shipped configurations from a clean checkout: the quickstart's key script creates what
//! they need, and both the quickstart and the compose configuration then pass `check`.

use std::process::Command;

use crate::support::*;

/// Copies what a clean clone holds of the configurations, scripts and policies (generated keys
/// are never committed).
fn copy_tracked(root: &std::path::Path, to: &std::path::Path) {
    for rel in ["quickstart", "policies", "compose", "scripts"] {
        copy_dir(&root.join(rel), &to.join(rel));
    }
    // A developer's own generated keys must not make this test pass.
    for generated in [
        "quickstart/ca",
        "quickstart/keys/jwks.json",
        "quickstart/keys/dev-signing-key.pem",
        "quickstart/keys/master.key",
        "quickstart/keys/vault.json",
    ] {
        let p = to.join(generated);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else if p.exists() {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn key_script_then_check_passes_for_quickstart_and_compose() {
    let dir = tempfile::tempdir().unwrap();
    copy_tracked(&repo_root(), dir.path());
    let bin = proxy_bin();
    let bin_dir = bin.parent().unwrap();

    // Before the keys exist, check names what is missing rather than passing.
    let before = Command::new(bin)
        .args(["check", "--config", "quickstart/tenant-proxy.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!before.status.success());
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("ca init"),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );

    for _ in 0..2 {
        // Twice: the second run must find everything in place and change nothing.
        let keys = Command::new("sh")
            .arg("scripts/quickstart-keys.sh")
            .arg(bin_dir)
            .arg("quickstart")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            keys.status.success(),
            "{}",
            String::from_utf8_lossy(&keys.stderr)
        );
    }
    for config in ["quickstart/tenant-proxy.toml", "compose/tenant-proxy.toml"] {
        let out = Command::new(bin)
            .args(["check", "--config", config])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The demo credentials went into the vault, one per tenant, and no secret is in clear.
    let vault = std::fs::read_to_string(dir.path().join("quickstart/keys/vault.json")).unwrap();
    assert!(
        vault.contains("acme") && vault.contains("globex"),
        "{vault}"
    );
    assert!(
        !vault.contains("sk-quickstart"),
        "vault holds secrets in clear"
    );
}
