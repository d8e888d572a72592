//! What a change reloads: the files and directories the configuration names now, by path, and
//! what their symlinks lead to now. A reload that moves a path, a directory replaced by rename
//! and a symlink flipped to a new release are each followed by the edits made after them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

fn wait_for(what: &str, proxy: &Proxy, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reloads the proxy logged as applied so far.
fn reloads(proxy: &Proxy) -> usize {
    proxy.log().matches("tenant configuration reloaded").count()
}

/// Reloads the proxy rejected so far.
fn rejected(proxy: &Proxy) -> f64 {
    proxy
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(r#"tenant_proxy_config_reloads_total{result="error"} "#))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Writes `text` to `path` whole (another file, then renamed over it), as README asks.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A forbid of everything acme asks.
const ACME_BLOCKED: &str = r#"@id("acme-blocked")
forbid (principal in TenantProxy::Tenant::"acme", action, resource);
"#;

/// acme's `GET /acme/<n>` on the sidecar listener: its status.
fn acme_status(proxy: &Proxy, origin: &Origin, n: &str) -> u16 {
    forward_get(
        proxy.sidecar_port,
        &url(origin, &format!("/acme/{n}")),
        None,
        "",
    )
    .status
}

/// After a reload that moves `policy_dir` and `revoked_jtis_file` (in the tenant file), an edit
/// of the new policy directory and a token id added to the new revocation file apply without a
/// SIGHUP: the paths watched are those the configuration names now, not those it named at start.
#[test]
fn paths_a_reload_moves_to_are_watched_from_then_on() {
    let origin = Origin::start();
    let proxy = Proxy::start_prepared(ProxySpec::default(), |dir| {
        // Each in a directory of its own, where nothing else is watched.
        std::fs::create_dir_all(dir.join("v2/keys")).unwrap();
        copy_dir(&dir.join("policies"), &dir.join("v2/policies"));
        std::fs::write(dir.join("v2/keys/revoked.txt"), "# revoked\n").unwrap();
    });
    let tok = token(TokenOpts {
        jti: Some("revoked-in-the-moved-file"),
        ..Default::default()
    });
    let shared = |n: &str| {
        forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/acme/{n}")),
            Some(&tok),
            "",
        )
        .status
    };
    assert_eq!(shared("before"), 200);

    let before = reloads(&proxy);
    let mut tenants = proxy.tenants().clone();
    tenants.policy_dir = "v2/policies".into();
    tenants.token.as_mut().unwrap().revoked_jtis_file = Some("v2/keys/revoked.txt".into());
    proxy.write_tenants(&tenants);
    wait_for("the reload that moves the paths", &proxy, || {
        reloads(&proxy) > before
    });
    assert_eq!(shared("moved"), 200);

    replace(
        &proxy.path("v2/policies/tenants/acme/blocked.cedar"),
        ACME_BLOCKED,
    );
    wait_for("the forbid in the moved policy directory", &proxy, || {
        acme_status(&proxy, &origin, "blocked") == 403
    });
    std::fs::remove_file(proxy.path("v2/policies/tenants/acme/blocked.cedar")).unwrap();
    wait_for("the forbid removed", &proxy, || {
        acme_status(&proxy, &origin, "unblocked") == 200
    });

    replace(
        &proxy.path("v2/keys/revoked.txt"),
        "revoked-in-the-moved-file\n",
    );
    wait_for("the revocation in the moved file", &proxy, || {
        shared("revoked") == 407
    });
}

/// A reload rejected for what a moved path holds (a broken policy in the new directory) still
/// watches that path: the fix made there applies.
#[test]
fn a_path_a_rejected_reload_names_is_watched_too() {
    let origin = Origin::start();
    let proxy = Proxy::start_prepared(ProxySpec::default(), |dir| {
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        copy_dir(&dir.join("policies"), &dir.join("v2/policies"));
        let acme = dir.join("v2/policies/tenants/acme");
        std::fs::write(acme.join("blocked.cedar"), ACME_BLOCKED).unwrap();
        std::fs::write(
            acme.join("broken.cedar"),
            "permit (principal, action, resource) when {",
        )
        .unwrap();
    });
    let failed = rejected(&proxy);
    let mut tenants = proxy.tenants().clone();
    tenants.policy_dir = "v2/policies".into();
    proxy.write_tenants(&tenants);
    wait_for("the rejected reload", &proxy, || rejected(&proxy) > failed);
    assert_eq!(acme_status(&proxy, &origin, "kept"), 200);

    std::fs::remove_file(proxy.path("v2/policies/tenants/acme/broken.cedar")).unwrap();
    wait_for("the fix in the new directory", &proxy, || {
        acme_status(&proxy, &origin, "fixed") == 403
    });
}

/// A policy directory replaced by rename (`mv policies policies.old; mv policies.new policies`),
/// even one missing for a while in between, is watched as the new directory: edits made in it
/// afterwards apply.
#[test]
fn a_policy_directory_replaced_by_rename_keeps_being_watched() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    // Away from the tenant file, whose directory is watched anyway.
    spec.tenants.policy_dir = "conf/policies".into();
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::rename(dir.join("policies"), dir.join("conf/policies")).unwrap();
    });
    assert_eq!(acme_status(&proxy, &origin, "start"), 200);
    copy_dir(
        &proxy.path("conf/policies"),
        &proxy.path("conf/policies.new"),
    );

    // Moved away: the reload that follows finds no policies and is rejected.
    let failed = rejected(&proxy);
    std::fs::rename(proxy.path("conf/policies"), proxy.path("conf/policies.old")).unwrap();
    wait_for("the rejected reload", &proxy, || rejected(&proxy) > failed);
    assert_eq!(acme_status(&proxy, &origin, "kept"), 200);

    // Back, as another directory: it is read, and watched from then on.
    let before = reloads(&proxy);
    std::fs::rename(proxy.path("conf/policies.new"), proxy.path("conf/policies")).unwrap();
    wait_for("the reload of the new directory", &proxy, || {
        reloads(&proxy) > before
    });
    replace(
        &proxy.path("conf/policies/tenants/acme/blocked.cedar"),
        ACME_BLOCKED,
    );
    wait_for("the forbid in the new directory", &proxy, || {
        acme_status(&proxy, &origin, "blocked") == 403
    });

    // Swapped at once this time: the same.
    copy_dir(
        &proxy.path("conf/policies.old"),
        &proxy.path("conf/policies.next"),
    );
    std::fs::remove_dir_all(proxy.path("conf/policies.old")).unwrap();
    std::fs::rename(proxy.path("conf/policies"), proxy.path("conf/policies.old")).unwrap();
    std::fs::rename(
        proxy.path("conf/policies.next"),
        proxy.path("conf/policies"),
    )
    .unwrap();
    wait_for("the swapped directory, without the forbid", &proxy, || {
        acme_status(&proxy, &origin, "swapped") == 200
    });
    replace(
        &proxy.path("conf/policies/tenants/acme/blocked.cedar"),
        ACME_BLOCKED,
    );
    wait_for("the forbid in the swapped directory", &proxy, || {
        acme_status(&proxy, &origin, "blocked-again") == 403
    });
}

/// A `policy_dir` that is a symlink to a release directory, flipped to a new release
/// (`ln -sfn rel-2 current.tmp; mv -T current.tmp current`), reloads with the new release, and
/// edits of the new release apply afterwards.
#[test]
fn a_policy_directory_symlink_flipped_to_a_new_release_reloads() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    spec.tenants.policy_dir = "releases/current".into();
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("releases")).unwrap();
        std::fs::rename(dir.join("policies"), dir.join("releases/rel-1")).unwrap();
        std::os::unix::fs::symlink("rel-1", dir.join("releases/current")).unwrap();
    });
    assert_eq!(acme_status(&proxy, &origin, "rel-1"), 200);

    copy_dir(&proxy.path("releases/rel-1"), &proxy.path("releases/rel-2"));
    std::fs::write(
        proxy.path("releases/rel-2/tenants/acme/blocked.cedar"),
        ACME_BLOCKED,
    )
    .unwrap();
    std::os::unix::fs::symlink("rel-2", proxy.path("releases/current.tmp")).unwrap();
    std::fs::rename(
        proxy.path("releases/current.tmp"),
        proxy.path("releases/current"),
    )
    .unwrap();
    wait_for("the flip to rel-2", &proxy, || {
        acme_status(&proxy, &origin, "rel-2") == 403
    });

    std::fs::remove_file(proxy.path("releases/rel-2/tenants/acme/blocked.cedar")).unwrap();
    wait_for("the edit of rel-2", &proxy, || {
        acme_status(&proxy, &origin, "rel-2-edited") == 200
    });
}

/// A `revoked_jtis_file` that is a symlink into another directory (where a secret store keeps
/// the real file) reloads when the file it leads to is replaced.
#[test]
fn a_revocation_file_linked_into_another_directory_reloads() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    // Away from the tenant file and the process log: a write to the log is no change.
    spec.tenants.token.as_mut().unwrap().revoked_jtis_file = Some("keys/revoked.txt".into());
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        std::fs::rename(dir.join("revoked.txt"), dir.join("secrets/revoked.txt")).unwrap();
        std::os::unix::fs::symlink("../secrets/revoked.txt", dir.join("keys/revoked.txt")).unwrap();
    });
    let tok = token(TokenOpts {
        jti: Some("revoked-through-the-link"),
        ..Default::default()
    });
    let status = |n: &str| {
        forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/acme/{n}")),
            Some(&tok),
            "",
        )
        .status
    };
    assert_eq!(status("before"), 200);
    replace(
        &proxy.path("secrets/revoked.txt"),
        "revoked-through-the-link\n",
    );
    wait_for("the revocation", &proxy, || status("after") == 407);
}

/// A FIFO where the revocation list was (a moment's mistake, or planted) is refused as a
/// reload problem at once: the reloads go on, and the list put back is applied (before, the
/// reload thread waited on the FIFO for ever and no revocation was applied again while
/// `/readyz` still said the last reload was fine).
#[test]
fn a_fifo_in_place_of_the_revocation_list_stops_no_reload() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let tok = token(TokenOpts {
        jti: Some("revoked-after-the-fifo"),
        ..Default::default()
    });
    let status = |n: &str| {
        forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/acme/{n}")),
            Some(&tok),
            "",
        )
        .status
    };
    assert_eq!(status("before"), 200);
    let list = proxy.path("revoked.txt");
    std::fs::remove_file(&list).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&list)
        .status()
        .unwrap()
        .success());
    proxy.sighup();
    wait_for("the FIFO refused as a reload problem", &proxy, || {
        proxy.log().contains("not a regular file")
    });
    std::fs::remove_file(&list).unwrap();
    replace(&list, "revoked-after-the-fifo\n");
    proxy.sighup();
    wait_for("the revocation", &proxy, || status("after") == 407);
}
