//! Credentials end to end: each tenant's `$CRED{}` handles resolve to its own secrets, only
//! toward bound destinations, and no secret leaks into logs, audit, metrics, errors or
//! responses.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

const ACME_OPENAI: &str = "sk-acme-canary-7f3a9c";
const GLOBEX_OPENAI: &str = "sk-globex-canary-41d2e8";
const GLOBEX_STRIPE: &str = "sk-stripe-canary-99aa01";

fn put(dir: &Path, tenant: &str, name: &str, bind: &str, positions: &str, value: &str) {
    let (code, out) = proxy_cli(
        dir,
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "put",
            "--tenant",
            tenant,
            "--name",
            name,
            "--bind",
            bind,
            "--in",
            positions,
        ],
        value,
    );
    assert_eq!(code, 0, "cred put: {out}");
    assert!(!out.contains(value), "cred put printed the value: {out}");
}

fn prepare_vault(dir: &Path) {
    let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
    assert_eq!(code, 0, "{out}");
    put(
        dir,
        "acme",
        "openai",
        "127.0.0.1/acme/",
        "header",
        ACME_OPENAI,
    );
    put(
        dir,
        "globex",
        "openai",
        "127.0.0.1/globex/",
        "header,body",
        GLOBEX_OPENAI,
    );
    put(
        dir,
        "globex",
        "stripe",
        "127.0.0.1/globex/pay/",
        "header",
        GLOBEX_STRIPE,
    );
    put(
        dir,
        "globex",
        "stripe_live",
        "127.0.0.1/globex/",
        "header",
        "sk-live-canary-0000",
    );
}

/// A proxy whose credentials come from the vault [`prepare_vault`] fills; the upstream read
/// timeout is `read_timeout`.
fn start(env: Vec<(String, String)>, read_timeout: Duration) -> Proxy {
    let mut spec = ProxySpec {
        env,
        ..Default::default()
    };
    spec.config.upstream.read_timeout = Some(read_timeout);
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        scan_body_max_bytes: Some(65536),
        ..Default::default()
    });
    Proxy::start_prepared(spec, prepare_vault)
}

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

fn auth(value: &str) -> String {
    format!("Authorization: Bearer {value}\r\n")
}

/// `cred put` reads the value from a pipe or a file only: at a terminal it would be echoed as
/// it is typed or pasted (and kept in the scrollback), so a terminal is refused and nothing is
/// stored. (`script` gives the command a pseudo-terminal.)
#[test]
fn cred_put_refuses_a_terminal_as_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = proxy_cli(
        dir.path(),
        &["cred", "init-master", "--out", "master.key"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let mut spec = ProxySpec::default();
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    spec.write_in(dir.path());
    // The same command with a pipe stores the value.
    put(
        dir.path(),
        "acme",
        "piped",
        "api.example.com",
        "header",
        "sk-piped-1",
    );
    let stored = std::fs::read(dir.path().join("vault.json")).unwrap();
    let command = format!(
        "{} cred --config tenant-proxy.toml put --tenant acme --name k --bind api.example.com",
        proxy_bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("standard input is a terminal"), "{text}");
    assert_eq!(
        std::fs::read(dir.path().join("vault.json")).unwrap(),
        stored,
        "nothing stored"
    );
}

#[test]
fn each_tenant_gets_its_own_secret_and_never_another() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let globex = token_for("globex", "agent");

    let a = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/llm"),
        None,
        &auth("$CRED{openai}"),
    );
    assert_eq!(a.status, 200, "{}", a.body_text());
    let g = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/llm"),
        Some(&globex),
        &auth("$CRED{openai}"),
    );
    assert_eq!(g.status, 200, "{}", g.body_text());
    assert_eq!(
        origin.matching("/acme/llm")[0].headers["authorization"],
        format!("Bearer {ACME_OPENAI}")
    );
    assert_eq!(
        origin.matching("/globex/llm")[0].headers["authorization"],
        format!("Bearer {GLOBEX_OPENAI}")
    );

    // acme cannot name globex's credentials in any spelling.
    let spellings = [
        ("$CRED{stripe}", "credential_unknown"),
        ("$CRED{globex.stripe}", "credential_unknown"),
        ("$CRED{globex/stripe}", "credential_malformed"),
        ("$CRED{../globex/stripe}", "credential_malformed"),
        ("$CRED{STRIPE}", "credential_unknown"),
        ("$CRED{stripe }", "credential_malformed"),
    ];
    for (handle, code) in spellings {
        let r = forward_get(
            proxy.sidecar_port,
            &url(&origin, "/acme/pay"),
            None,
            &auth(handle),
        );
        assert_eq!(r.code(), code, "{handle}: {}", r.body_text());
        assert!(!r.body_text().contains(GLOBEX_STRIPE));
    }
    assert_eq!(origin.matching("/acme/pay").len(), 0);
    for r in origin.requests() {
        let all = format!("{:?}", r.headers);
        assert!(
            !(all.contains(ACME_OPENAI) && all.contains(GLOBEX_OPENAI)),
            "values mixed: {all}"
        );
    }
    let rec = proxy.audit_record("acme", &a.request_id());
    assert_eq!(rec["credentials"], serde_json::json!(["openai"]));
    assert!(proxy
        .metrics()
        .contains(r#"tenant_proxy_credential_substitutions_total{tenant="acme"} 1"#));
}

#[test]
fn exfiltration_attempts_are_refused_before_dialing() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let globex = token_for("globex", "agent");
    let o = origin.port;
    let cases: Vec<(&str, String, Option<&str>, String, u16, &str)> = vec![
        // Policy allows /acme/* on any host; the credential is bound to 127.0.0.1 only.
        (
            "unbound host",
            format!("http://localhost:{o}/acme/x"),
            None,
            auth("$CRED{openai}"),
            403,
            "credential_not_bound",
        ),
        // Policy allows /public/*; the credential is bound to 127.0.0.1/acme/ only.
        (
            "bound host, other path",
            url(&origin, "/public/x"),
            None,
            auth("$CRED{openai}"),
            403,
            "credential_not_bound",
        ),
        (
            "agent's own key",
            url(&origin, "/acme/x"),
            None,
            auth("sk-agent-own"),
            403,
            "raw_credential",
        ),
        (
            "query toward header-only",
            url(&origin, "/acme/x?key=$CRED{openai}"),
            None,
            String::new(),
            403,
            "credential_position",
        ),
        (
            "stripe on the wrong path",
            url(&origin, "/globex/llm"),
            Some(globex.as_str()),
            auth("$CRED{stripe}"),
            403,
            "credential_not_bound",
        ),
    ];
    for (name, target, tok, extra, status, code) in cases {
        let r = forward_get(
            if tok.is_some() {
                proxy.shared_port
            } else {
                proxy.sidecar_port
            },
            &target,
            tok,
            &extra,
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{name}: {}",
            r.body_text()
        );
    }
    // In the body toward a credential allowed in headers only.
    let body = r#"{"model":"gpt-4o-mini","key":"$CRED{openai}"}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST http://127.0.0.1:{o}/acme/body HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.code(), "credential_position", "{}", r.body_text());
    assert_eq!(
        origin.count(),
        0,
        "nothing forwarded: {:?}",
        origin.requests()
    );
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        rec["credentials"],
        serde_json::json!(["openai"]),
        "the handle name, never the value"
    );

    // Allowed in the body for globex: substituted in a credential field, JSON stays valid,
    // Content-Length fixed.
    let post = |body: &str| {
        raw_request(
            proxy.shared_port,
            &format!(
                "POST http://127.0.0.1:{o}/globex/body HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nProxy-Authorization: Bearer {globex}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let r = post(r#"{"model":"gpt-4o-mini","api_key":"$CRED{openai}"}"#);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got: serde_json::Value =
        serde_json::from_slice(&origin.matching("/globex/body")[0].body).unwrap();
    assert_eq!(got["api_key"], GLOBEX_OPENAI);
    // Anywhere else in the body (a prompt the model could be asked to spell backwards), refused.
    for body in [
        r#"{"model":"gpt-4o-mini","api":"$CRED{openai}"}"#,
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"reverse $CRED{openai}"}]}"#,
    ] {
        let r = post(body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "credential_position"),
            "{body}: {}",
            r.body_text()
        );
    }
    assert_eq!(
        origin.matching("/globex/body").len(),
        1,
        "nothing more forwarded"
    );
}

#[test]
fn canary_secret_appears_nowhere_but_the_bound_upstream() {
    let origin = Origin::start();
    // Debug logging on: the secret must still stay out of every log line.
    let proxy = start(
        vec![("RUST_LOG".into(), "debug".into())],
        Duration::from_secs(1),
    );
    // Nothing listens there: the upstream is unreachable.
    let closed = HeldPort::closed().unwrap();
    let dead = closed.port;
    let paths = [
        ("success", url(&origin, "/acme/ok"), 200),
        ("echoing upstream", url(&origin, "/acme/echo/x"), 200),
        ("upstream 4xx echoing", url(&origin, "/acme/e404/x"), 404),
        (
            "refusal",
            format!("http://localhost:{}/acme/x", origin.port),
            403,
        ),
        ("5xx reset", url(&origin, "/acme/reset/x"), 502),
        ("timeout", url(&origin, "/acme/slow/x"), 504),
        (
            "unreachable",
            format!("http://127.0.0.1:{dead}/acme/x"),
            502,
        ),
    ];
    let mut responses = Vec::new();
    for (name, target, status) in &paths {
        let r = forward_get(proxy.sidecar_port, target, None, &auth("$CRED{openai}"));
        assert_eq!(r.status, *status, "{name}: {}", r.body_text());
        responses.push((name, r));
    }
    for (name, r) in &responses {
        let everything = format!("{:?}{}", r.headers, r.body_text());
        assert!(
            !everything.contains(ACME_OPENAI),
            "{name}: the response carries the secret: {everything}"
        );
    }
    // The echoing upstream saw the secret (it was bound), but the agent sees the handle.
    let (_, echo) = &responses[1];
    assert_eq!(echo.status, 200);
    assert!(
        echo.body_text().contains("$CRED{openai}"),
        "{}",
        echo.body_text()
    );
    assert_eq!(echo.header("x-echo"), Some("Bearer $CRED{openai}"));
    // An upstream that keeps what it was sent shows the key to a later request that used no
    // handle: every response from where the tenant's keys are bound is scrubbed of them all.
    let logged = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/logged/x"),
        None,
        "",
    );
    assert_eq!(logged.status, 200, "{}", logged.body_text());
    assert_eq!(
        logged.json()["last_key"],
        "Bearer $CRED{openai}",
        "{}",
        logged.body_text()
    );
    let asked = origin.matching("/acme/logged/x");
    assert_eq!(
        asked[0].headers.get("accept-encoding").map(String::as_str),
        Some("identity"),
        "asked in a form that can be scrubbed"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = proxy.log();
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(!log.contains(ACME_OPENAI), "the log has the secret");
    for file in walk(&proxy.path("audit")) {
        assert!(
            !std::fs::read_to_string(&file)
                .unwrap()
                .contains(ACME_OPENAI),
            "{}",
            file.display()
        );
    }
    let metrics = proxy.metrics();
    assert!(!metrics.contains(ACME_OPENAI));
    assert!(
        // The echoes above (4), and the logged key shown to a later request.
        metrics.contains(r#"tenant_proxy_credential_scrubbed_total{tenant="acme"} 5"#),
        "{metrics}"
    );
}

#[test]
fn rotation_under_load_never_fails_or_mixes_values() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let values = ["sk-rot-v1-aaaa", "sk-rot-v2-bbbb", "sk-rot-v3-cccc"];
    put(
        proxy.dir.path(),
        "acme",
        "rotating",
        "127.0.0.1/acme/",
        "header",
        values[0],
    );
    let port = proxy.sidecar_port;
    let target = url(&origin, "/acme/rot");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, target) = (stop.clone(), target.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    statuses
                        .push(forward_get(port, &target, None, &auth("$CRED{rotating}")).status);
                }
                statuses
            })
        })
        .collect();
    // Wait for the first value to be live (the reload after the put above), then rotate.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !origin
        .matching("/acme/rot")
        .iter()
        .any(|r| r.headers["authorization"].contains(values[0]))
    {
        assert!(Instant::now() < deadline, "first value never used");
        std::thread::sleep(Duration::from_millis(20));
    }
    for v in &values[1..] {
        std::thread::sleep(Duration::from_millis(400));
        put(
            proxy.dir.path(),
            "acme",
            "rotating",
            "127.0.0.1/acme/",
            "header",
            v,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !origin
        .matching("/acme/rot")
        .iter()
        .any(|r| r.headers["authorization"].contains(values[2]))
    {
        assert!(Instant::now() < deadline, "last value never used");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let per_worker: Vec<Vec<u16>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = per_worker.iter().map(Vec::len).sum();
    assert!(total > 20, "load ran: {total} requests");
    for statuses in &per_worker {
        // Requests before the first reload may see `credential_unknown`; none after it may fail.
        let first_ok = statuses
            .iter()
            .position(|s| *s == 200)
            .expect("each worker got through");
        let failed: Vec<&u16> = statuses[first_ok..].iter().filter(|s| **s != 200).collect();
        assert!(
            failed.is_empty(),
            "requests failed during rotation: {failed:?}"
        );
    }
    for r in origin.matching("/acme/rot") {
        let v = r.headers["authorization"]
            .trim_start_matches("Bearer ")
            .to_string();
        assert!(values.contains(&v.as_str()), "mixed or partial value `{v}`");
    }
}

#[test]
fn tampered_vault_or_wrong_master_key_fails_check_and_reload_keeps_last_good() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let check = || {
        proxy_cli(
            proxy.dir.path(),
            &["check", "--config", "tenant-proxy.toml"],
            "",
        )
    };
    assert_eq!(check().0, 0, "{}", check().1);

    // Rebind acme's credential by editing the file: authentication fails.
    let vault = proxy.path("vault.json");
    let good = std::fs::read_to_string(&vault).unwrap();
    std::fs::write(
        &vault,
        good.replacen("\"127.0.0.1\"", "\"attacker.example\"", 1),
    )
    .unwrap();
    let (code, out) = check();
    assert_eq!(code, 1);
    assert!(out.contains("failed authentication"), "{out}");
    // The running proxy rejected the reload and still uses the last good vault.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.metrics().lines().any(|l| {
        l.starts_with(r#"tenant_proxy_config_reloads_total{result="error"}"#) && !l.ends_with(" 0")
    }) {
        assert!(Instant::now() < deadline, "reload not attempted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/still"),
        None,
        &auth("$CRED{openai}"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        origin.matching("/acme/still")[0].headers["authorization"],
        format!("Bearer {ACME_OPENAI}")
    );
    std::fs::write(&vault, &good).unwrap();

    // A different master key.
    let (code, _) = proxy_cli(
        proxy.dir.path(),
        &["cred", "init-master", "--out", "other.key"],
        "",
    );
    assert_eq!(code, 0);
    let mut other_key = proxy.tenants().clone();
    other_key.credentials().master_key_file = Some("other.key".into());
    proxy.write_tenants(&other_key);
    let (code, out) = check();
    assert_eq!(code, 1);
    assert!(out.contains("master key does not open this vault"), "{out}");
    // `cred list` shows names and fingerprints, never values.
    proxy.write_tenants(proxy.tenants());
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "list",
            "--tenant",
            "globex",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("openai") && out.contains("stripe") && out.contains("sha256:"),
        "{out}"
    );
    assert!(!out.contains(GLOBEX_OPENAI) && !out.contains(GLOBEX_STRIPE));
}

#[test]
fn policy_can_forbid_a_bound_credential() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let globex = token_for("globex", "agent");
    // Bound to this destination, but the global policy forbids `stripe_live` on the free plan.
    let r = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/pay/x"),
        Some(&globex),
        &auth("$CRED{stripe_live}"),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "credential_denied"),
        "{}",
        r.body_text()
    );
    assert!(r.body_text().contains("stripe_live") && !r.body_text().contains("sk-live-canary"));
    let ok = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/pay/x"),
        Some(&globex),
        &auth("$CRED{stripe}"),
    );
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    assert_eq!(origin.count(), 1);
}

#[test]
fn mounted_secret_files_backend_reloads_values() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "openai",
        &["127.0.0.1/acme/"],
    ));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), "sk-mounted-v1\n").unwrap();
    });
    let r = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/m1"),
        None,
        &auth("$CRED{openai}"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        origin.matching("/acme/m1")[0].headers["authorization"],
        "Bearer sk-mounted-v1"
    );
    // Kubernetes updates a mounted Secret by swapping files: the next request uses the new value.
    let tmp = proxy.path("secrets/acme/.openai.new");
    std::fs::write(&tmp, "sk-mounted-v2").unwrap();
    std::fs::rename(&tmp, proxy.path("secrets/acme/openai")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = forward_get(
            proxy.sidecar_port,
            &url(&origin, "/acme/m2"),
            None,
            &auth("$CRED{openai}"),
        );
        assert_eq!(r.status, 200);
        if origin.matching("/acme/m2").last().unwrap().headers["authorization"]
            == "Bearer sk-mounted-v2"
        {
            break;
        }
        assert!(Instant::now() < deadline, "rotated file never picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn expiry_startup_failure_and_master_rotation() {
    let origin = Origin::start();
    let proxy = start(vec![], Duration::from_secs(10));
    let dir = proxy.dir.path();
    let (code, out) = proxy_cli(
        dir,
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "put",
            "--tenant",
            "acme",
            "--name",
            "short",
            "--bind",
            "127.0.0.1",
            "--expires",
            "2s",
        ],
        "sk-short-lived",
    );
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_ok = false;
    loop {
        let r = forward_get(
            proxy.sidecar_port,
            &url(&origin, "/acme/exp"),
            None,
            &auth("$CRED{short}"),
        );
        saw_ok |= r.status == 200;
        if r.code() == "credential_expired" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never expired: {}",
            r.body_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_ok, "usable before it expired");

    // Rotating the master key: the vault opens with the new key only, values unchanged.
    let (code, out) = proxy_cli(
        dir,
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "rotate-master",
            "--new-key-file",
            "master-2.key",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = proxy_cli(dir, &["check", "--config", "tenant-proxy.toml"], "");
    assert_eq!(code, 1, "old key no longer opens the vault: {out}");
    let mut rotated = proxy.tenants().clone();
    rotated.credentials().master_key_file = Some("master-2.key".into());
    proxy.write_tenants(&rotated);
    let (code, out) = proxy_cli(dir, &["check", "--config", "tenant-proxy.toml"], "");
    assert_eq!(code, 0, "{out}");
    // A key file is never written over: not by a second rotation to it, not by `init-master`.
    let key_before = std::fs::read(proxy.path("master-2.key")).unwrap();
    for args in [
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "rotate-master",
            "--new-key-file",
            "master-2.key",
        ][..],
        &["cred", "init-master", "--out", "master-2.key"],
    ] {
        let (code, out) = proxy_cli(dir, args, "");
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains("not overwriting a key"), "{args:?}: {out}");
    }
    assert_eq!(
        std::fs::read(proxy.path("master-2.key")).unwrap(),
        key_before
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = forward_get(
            proxy.sidecar_port,
            &url(&origin, "/acme/rotated"),
            None,
            &auth("$CRED{openai}"),
        );
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.body_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        origin.matching("/acme/rotated").last().unwrap().headers["authorization"],
        format!("Bearer {ACME_OPENAI}")
    );

    // A tampered vault stops `run` before it binds anything.
    let vault = std::fs::read_to_string(proxy.path("vault.json")).unwrap();
    std::fs::write(
        proxy.path("vault.json"),
        vault.replacen("\"header\"", "\"body\"", 1),
    )
    .unwrap();
    let (code, out) = proxy_cli(dir, &["run", "--config", "tenant-proxy.toml"], "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("failed authentication"), "{out}");
}

/// Vault edits run one at a time: edits made at once all land, and a `cred rm` that reports a
/// key removed is never undone by a `cred put` (of another tenant's key) running beside it.
#[test]
fn concurrent_vault_edits_all_land_and_a_removal_stays_removed() {
    let proxy = start(vec![], Duration::from_secs(10));
    let dir = proxy.dir.path();
    let bind = "127.0.0.1/x/";
    std::thread::scope(|s| {
        let edits: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let name = format!("parallel{i}");
                    put(
                        dir,
                        "acme",
                        &name,
                        bind,
                        "header",
                        &format!("sk-parallel-{i}"),
                    );
                })
            })
            .collect();
        for edit in edits {
            edit.join().unwrap();
        }
    });
    let cli = |args: &[&str]| {
        let (code, out) = proxy_cli(dir, args, "");
        assert_eq!(code, 0, "{args:?}: {out}");
        out
    };
    let list = || {
        cli(&[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "list",
            "--tenant",
            "acme",
        ])
    };
    let listed = list();
    for i in 0..8 {
        assert!(listed.contains(&format!("parallel{i}\t")), "{listed}");
    }
    for round in 0..6 {
        put(
            dir,
            "acme",
            "leaked",
            bind,
            "header",
            &format!("sk-leaked-{round}"),
        );
        std::thread::scope(|s| {
            let other = s.spawn(|| {
                put(
                    dir,
                    "globex",
                    &format!("other{round}"),
                    bind,
                    "header",
                    "sk-other-1",
                )
            });
            cli(&[
                "cred",
                "--config",
                "tenant-proxy.toml",
                "rm",
                "--tenant",
                "acme",
                "--name",
                "leaked",
            ]);
            other.join().unwrap();
        });
        assert!(
            !list().contains("leaked\t"),
            "round {round}: the removal was undone"
        );
    }
}
