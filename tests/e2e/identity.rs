//! Workload identity end to end: every bad token is refused before anything is forwarded, and
//! nothing the agent writes can change the tenant.

use crate::support::*;

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

#[test]
fn token_matrix_refuses_bad_tokens_and_forwards_nothing() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let t = now();
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("missing", None, 407, "identity_required"),
        (
            "malformed",
            Some("not-a-jwt".into()),
            407,
            "identity_invalid",
        ),
        (
            "expired",
            Some(token(TokenOpts {
                issued_at: t - 600,
                ttl_secs: 300,
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "not yet valid",
            Some(token(TokenOpts {
                not_before: Some(t + 600),
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "issued in the future",
            Some(token(TokenOpts {
                issued_at: t + 600,
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "wrong signature",
            Some(token(TokenOpts {
                key: OTHER_KEY,
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "wrong audience",
            Some(token(TokenOpts {
                audience: "someone-else",
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "over-long-lived",
            Some(token(TokenOpts {
                ttl_secs: 2 * 3600,
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "revoked",
            Some(token(TokenOpts {
                jti: Some("revoked-jti-1"),
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "unknown tenant",
            Some(token(TokenOpts {
                tenant: "initech",
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
        (
            "unknown workload",
            Some(token(TokenOpts {
                workload: "ghost",
                ..Default::default()
            })),
            407,
            "identity_invalid",
        ),
    ];
    for (name, tok, status, code) in cases {
        let r = forward_get(
            proxy.shared_port,
            &url(&origin, &format!("/acme/{}", name.replace(' ', "-"))),
            tok.as_deref(),
            "",
        );
        assert_eq!(r.status, status, "{name}: {}", r.body_text());
        assert_eq!(r.code(), code, "{name}");
        assert_eq!(
            r.json()["error"]["request_id"],
            r.request_id(),
            "{name}: request id in body and header"
        );
        if status == 407 {
            let challenges = r
                .headers
                .get("proxy-authenticate")
                .cloned()
                .unwrap_or_default();
            assert!(
                challenges.iter().any(|c| c.starts_with("Basic")),
                "{name}: {challenges:?}"
            );
        }
    }
    assert_eq!(
        origin.count(),
        0,
        "nothing may reach the origin: {:?}",
        origin.requests()
    );

    // The same request with a valid token goes through (so the refusals above were the tokens).
    let ok = forward_get(
        proxy.shared_port,
        &url(&origin, "/acme/valid"),
        Some(&token(TokenOpts::default())),
        "",
    );
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    let es = token(TokenOpts {
        key: TEST_KEY_ES256,
        kid: Some("test-es"),
        ..Default::default()
    });
    assert_eq!(
        forward_get(
            proxy.shared_port,
            &url(&origin, "/acme/es256"),
            Some(&es),
            ""
        )
        .status,
        200
    );
    assert_eq!(origin.count(), 2);

    // The token never appears in the proxy's log.
    assert!(!proxy.log().contains(&es), "token leaked into the log");
}

#[test]
fn basic_auth_password_carries_the_token() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let tok = token_for("globex", "agent");
    let (status, body) = curl(&[
        "-x",
        &format!("http://agent:{tok}@127.0.0.1:{}", proxy.shared_port),
        &url(&origin, "/globex/hello"),
    ]);
    assert_eq!(status, 200, "{body}");
    // A user name that disagrees with the token's workload is refused.
    let (status, body) = curl(&[
        "-x",
        &format!("http://someone-else:{tok}@127.0.0.1:{}", proxy.shared_port),
        &url(&origin, "/globex/hello"),
    ]);
    assert_eq!(status, 407, "{body}");
    assert_eq!(origin.matching("/globex/hello").len(), 1);
    // The token is genuine, so its refusal is globex's to see.
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = refused["error"]["request_id"].as_str().unwrap();
    let record = proxy.audit_record("globex", id);
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    // A revoked token is audited as revoked in its tenant's partition whatever user name it is
    // presented with: picking one does not escape the record.
    let revoked = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        jti: Some("revoked-jti-1"),
        ..Default::default()
    });
    for user in ["agent", "someone-else", "x"] {
        let (status, body) = curl(&[
            "-x",
            &format!("http://{user}:{revoked}@127.0.0.1:{}", proxy.shared_port),
            &url(&origin, "/globex/hello"),
        ]);
        assert_eq!(status, 407, "{user}: {body}");
        let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = refused["error"]["request_id"].as_str().unwrap();
        let record = proxy.audit_record("globex", id);
        assert_eq!(record["reason"], "identity_invalid", "{user}: {record}");
        assert_eq!(record["workload"], "agent", "{user}: {record}");
    }
}

#[test]
fn spoofed_tenant_headers_change_nothing_and_are_stripped() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    // globex's workload claims to be acme in every header it can write.
    let tok = token_for("globex", "agent");
    // Also spelled with underscores, which servers reading headers CGI-style take for dashes.
    let spoof = "X-Tenant-Id: acme\r\nX-Workload-Id: bot\r\nX-Tenant: acme\r\nX_Tenant_Id: acme\r\nx_workload_id: bot\r\n";
    let denied = forward_get(
        proxy.shared_port,
        &url(&origin, "/acme/data"),
        Some(&tok),
        spoof,
    );
    assert_eq!(
        (denied.status, denied.code().as_str()),
        (403, "policy_denied"),
        "globex cannot reach acme's paths"
    );
    let rec = proxy.audit_record("globex", &denied.request_id());
    assert_eq!(rec["tenant"], "globex");
    assert!(proxy
        .audit_records("acme")
        .iter()
        .all(|r| r["request_id"] != denied.request_id().as_str()));

    let allowed = forward_get(
        proxy.shared_port,
        &url(&origin, "/globex/data"),
        Some(&tok),
        spoof,
    );
    assert_eq!(allowed.status, 200);
    let seen = origin.matching("/globex/data");
    assert_eq!(seen.len(), 1);
    for h in [
        "x-tenant-id",
        "x-workload-id",
        "x-tenant",
        "x_tenant_id",
        "x_workload_id",
        "proxy-authorization",
    ] {
        assert!(
            !seen[0].headers.contains_key(h),
            "{h} must be stripped: {:?}",
            seen[0].headers
        );
    }
    assert_eq!(origin.matching("/acme/data").len(), 0);

    // On the sidecar listener (bound to acme/bot) a Proxy-Authorization for globex is not an
    // identity source at all: the binding decides, and the header is stripped.
    let r = forward_get(
        proxy.sidecar_port,
        &url(&origin, "/acme/sidecar"),
        Some(&tok),
        "X-Tenant-Id: globex\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["workload"],
        "bot"
    );
    let seen = origin.matching("/acme/sidecar");
    assert!(!seen[0].headers.contains_key("proxy-authorization"));
    assert!(!seen[0].headers.contains_key("x-tenant-id"));
}

#[test]
fn a_refusal_keeps_the_connection_unless_a_body_is_left_unread() {
    use std::io::{BufRead, BufReader, Read, Write};
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let target = url(&origin, "/acme/x");
    let authority = target
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let conn = std::net::TcpStream::connect(("127.0.0.1", proxy.shared_port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    // No identity and no body: refused, and the same connection carries the next request.
    write!(writer, "GET {target} HTTP/1.1\r\nHost: {authority}\r\n\r\n").unwrap();
    read_response(&mut reader)
        .unwrap()
        .assert_refused(407, "identity_required");
    let bearer = token_for("acme", "bot");
    write!(
        writer,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {bearer}\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
    assert_eq!(origin.matching("/acme/x").len(), 1);

    // Refused before its body was read: the body is never read, the connection is closed.
    write!(
        writer,
        "POST {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 100000\r\n\r\n{}",
        "x".repeat(100)
    )
    .unwrap();
    let r = read_response(&mut reader).unwrap();
    r.assert_refused(407, "identity_required");
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed: {rest:?}"
    );
    assert!(reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true));
    assert_eq!(
        origin.matching("/acme/x").len(),
        1,
        "nothing else was forwarded"
    );
}

/// `tenant-proxy token keygen --kid KID --out OUT --jwks JWKS` in `dir`.
fn keygen(dir: &std::path::Path, kid: &str, out: &str, jwks: &str) -> (i32, String) {
    proxy_cli(
        dir,
        &[
            "token", "keygen", "--kid", kid, "--out", out, "--jwks", jwks,
        ],
        "",
    )
}

/// A platform signs its agents' tokens with its own issuer: the key `token keygen` writes is read
/// by OpenSSL and by PyJWT (Python `cryptography`), and a token `token mint` makes with every
/// documented claim verifies against the JWKS it wrote, in PyJWT too.
#[test]
fn generated_signing_keys_and_minted_tokens_work_with_other_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = keygen(dir.path(), "k1", "key.pem", "jwks.json");
    assert_eq!(code, 0, "{out}");
    // Running it again never replaces the key or its published half: not at the same file, and
    // not under a kid the JWKS already has (every token the old key signed would be refused).
    let key = std::fs::read(dir.path().join("key.pem")).unwrap();
    let jwks = std::fs::read(dir.path().join("jwks.json")).unwrap();
    for (kid, out_file, says) in [
        ("k2", "key.pem", "not overwriting a key"),
        ("k1", "key-2.pem", "kid `k1` is already in"),
    ] {
        let (code, out) = keygen(dir.path(), kid, out_file, "jwks.json");
        assert_eq!(code, 1, "{kid} {out_file}: {out}");
        assert!(out.contains(says), "{kid} {out_file}: {out}");
    }
    assert_eq!(std::fs::read(dir.path().join("key.pem")).unwrap(), key);
    assert_eq!(std::fs::read(dir.path().join("jwks.json")).unwrap(), jwks);
    assert!(!dir.path().join("key-2.pem").exists());
    let openssl = std::process::Command::new("openssl")
        .args(["pkey", "-in", "key.pem", "-noout"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    let (code, token) = proxy_cli(
        dir.path(),
        &[
            "token",
            "mint",
            "--key",
            "key.pem",
            "--kid",
            "k1",
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--ttl",
            "5m",
            "--run-id",
            "r-7",
            "--run-budget",
            r#"{"tokens":1000,"cost_micros":250000}"#,
            "--issuer",
            "platform",
            "--jti",
            "jti-7",
            "--not-before",
            "0s",
        ],
        "",
    );
    assert_eq!(code, 0, "{token}");
    let claims = python(
        r#"
import json, os, jwt
from cryptography.hazmat.primitives import serialization
serialization.load_pem_private_key(open(os.environ["DIR"] + "/key.pem", "rb").read(), None)
keys = json.load(open(os.environ["DIR"] + "/jwks.json"))["keys"]
key = jwt.PyJWK(keys[0])
claims = jwt.decode(os.environ["TOKEN"].strip(), key.key, algorithms=["EdDSA"],
                    audience="tenant-proxy", issuer="platform")
# And the key signs for PyJWT: the proxy's own verifier is what the other tests use.
jwt.encode({"sub": "x"}, open(os.environ["DIR"] + "/key.pem").read(), algorithm="EdDSA")
print(json.dumps(claims))
"#,
        &[
            ("DIR", dir.path().display().to_string()),
            ("TOKEN", token.clone()),
        ],
    );
    let claims: serde_json::Value = serde_json::from_str(claims.trim()).unwrap();
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["sub"], "bot");
    assert_eq!(claims["run_id"], "r-7");
    assert_eq!(claims["run_budget"]["tokens"], 1000);
    assert_eq!(claims["run_budget"]["cost_micros"], 250000);
    assert_eq!(claims["jti"], "jti-7");
    assert!(claims["nbf"].is_u64());

    // A budget with a misspelt member is refused, naming it.
    let (code, out) = proxy_cli(
        dir.path(),
        &[
            "token",
            "mint",
            "--key",
            "key.pem",
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--run-id",
            "r-7",
            "--run-budget",
            r#"{"tokns":1}"#,
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(out.contains("unknown field `tokns`"), "{out}");
}

/// `tenant-proxy check` loads what `run` loads: every broken mTLS file, an audit directory
/// that cannot be written and listeners fighting for a port fail it, each problem naming the
/// listener or field, and `run` refuses the same. A good configuration passes and `check`
/// leaves nothing in (or for) the audit directory.
#[test]
fn check_loads_mtls_files_and_the_audit_directory_as_run_does() {
    use tenant_proxy_loadtest::tls::TestCa;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mesh = TestCa::new("mesh CA").unwrap();
    let listener = mesh.server(&["127.0.0.1"]).unwrap();
    let workload = mesh
        .client("spiffe://mesh.test/tenant/acme/workload/bot")
        .unwrap();
    let files = [
        ("mesh-ca.pem", mesh.cert_pem.as_str()),
        ("listener.pem", &listener.cert),
        ("listener-key.pem", &listener.key),
        ("workload.pem", &workload.cert),
        ("workload-key.pem", &workload.key),
        ("not-pem.txt", "not a pem\n"),
        ("empty.pem", ""),
        ("a-file", "a file, not a directory\n"),
    ];
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    let tls = |cert: &str, key: &str, client_ca: &str| config::ListenerTls {
        cert: cert.into(),
        key: key.into(),
        client_ca: client_ca.into(),
        spiffe_id: "spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}".into(),
        trust_domain: "mesh.test".into(),
    };
    let write = |configure: &dyn Fn(&mut ProxySpec)| {
        let mut spec = ProxySpec::default();
        spec.config.listeners.push(config::Listener::mtls(
            "mesh",
            tls("listener.pem", "listener-key.pem", "mesh-ca.pem"),
        ));
        configure(&mut spec);
        spec.write_in(d);
    };
    let check = || proxy_cli(d, &["check", "--config", "tenant-proxy.toml"], "");

    write(&|_| {});
    let (code, out) = check();
    assert_eq!(code, 0, "{out}");
    assert!(
        !d.join("audit").exists(),
        "check created the audit directory"
    );
    std::fs::create_dir(d.join("audit")).unwrap();
    let (code, out) = check();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_dir(d.join("audit")).unwrap().count(),
        0,
        "check left a file in the audit directory"
    );

    type Configure = Box<dyn Fn(&mut ProxySpec)>;
    let mesh_tls = |cert: &'static str, key: &'static str, client_ca: &'static str| -> Configure {
        Box::new(move |spec: &mut ProxySpec| {
            spec.config.listener_mut("mesh").unwrap().tls = Some(tls(cert, key, client_ca));
        })
    };
    let cases: Vec<(&str, Configure, &[&str])> = vec![
        (
            "a key file that is not PEM",
            mesh_tls("listener.pem", "not-pem.txt", "mesh-ca.pem"),
            &[
                "listener[2].tls",
                "listener `mesh`",
                "not-pem.txt",
                "no private key",
            ],
        ),
        (
            "a key of another certificate",
            mesh_tls("listener.pem", "workload-key.pem", "mesh-ca.pem"),
            &[
                "listener[2].tls",
                "listener `mesh`",
                "workload-key.pem",
                "does not match",
            ],
        ),
        (
            "an empty client_ca",
            mesh_tls("listener.pem", "listener-key.pem", "empty.pem"),
            &["listener[2].tls", "empty.pem", "holds no certificate"],
        ),
        (
            "a workload certificate as client_ca",
            mesh_tls("listener.pem", "listener-key.pem", "workload.pem"),
            &["listener[2].tls", "workload.pem", "is not a CA certificate"],
        ),
        (
            "an audit directory that cannot be made",
            Box::new(|spec: &mut ProxySpec| spec.config.audit.dir = "a-file/audit".into()),
            &["audit.dir", "a-file", "is not writable"],
        ),
        (
            "a wildcard and a loopback listener on one port",
            Box::new(|spec: &mut ProxySpec| {
                spec.config.listener_mut(SIDECAR).unwrap().listen =
                    "0.0.0.0:44017".parse().unwrap();
                spec.config.listener_mut(SHARED).unwrap().listen =
                    "127.0.0.1:44017".parse().unwrap();
            }),
            &[
                "listener[1].listen",
                "`127.0.0.1:44017` overlaps `0.0.0.0:44017` of listener `sidecar`",
            ],
        ),
    ];
    for (name, configure, wants) in cases {
        write(&*configure);
        let (code, out) = check();
        assert_eq!(code, 1, "{name}: {out}");
        for want in wants {
            assert!(out.contains(want), "{name}: no `{want}` in {out}");
        }
        // `run` refuses the same configuration with the same problem, before binding anything.
        let (code, run_out) = proxy_cli(d, &["run", "--config", "tenant-proxy.toml"], "");
        assert_ne!(code, 0, "{name}: {run_out}");
        assert!(run_out.contains(wants[0]), "{name}: {run_out}");
    }
}

/// A listener whose binding is the caller's identity, on an address other hosts may reach,
/// makes `check` warn (and `run` log the same); on loopback, or for a token listener, it does
/// not.
#[test]
fn a_binding_listener_other_hosts_reach_is_warned_about() {
    const WARNING: &str = "takes its binding as the caller's identity";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |spec: &ProxySpec| {
        spec.write_in(d);
        let (code, out) = proxy_cli(d, &["check", "--config", "tenant-proxy.toml"], "");
        assert_eq!(code, 0, "{out}");
        out
    };
    let mut spec = ProxySpec::default();
    let out = check(&spec);
    assert!(!out.contains(WARNING), "{out}");

    // `check` binds nothing: the wildcard addresses are only written down.
    spec.config.listener_mut(SIDECAR).unwrap().listen = "0.0.0.0:44021".parse().unwrap();
    spec.config.listener_mut(SHARED).unwrap().listen = "[::]:44022".parse().unwrap();
    let out = check(&spec);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("warning: listener `sidecar` (0.0.0.0:44021)")
            && lines[0].contains("anyone who can reach that address acts as acme/bot"),
        "{out}"
    );

    let proxy = Proxy::start(ProxySpec::default());
    assert!(!proxy.log().contains(WARNING), "{}", proxy.log());
}

/// CLI arguments that would make something that cannot work, or that turns a protection off,
/// are refused with a message naming the problem (never a panic): a CA valid past what a date
/// can say, capture rules that exclude every address, a token expired when minted or living a
/// century.
#[test]
fn cli_arguments_that_cannot_work_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = keygen(dir.path(), "k1", "key.pem", "jwks.json");
    assert_eq!(code, 0, "{out}");
    let mint = |ttl: &str| {
        proxy_cli(
            dir.path(),
            &[
                "token",
                "mint",
                "--key",
                "key.pem",
                "--kid",
                "k1",
                "--tenant",
                "acme",
                "--workload",
                "bot",
                "--ttl",
                ttl,
            ],
            "",
        )
    };
    for (args, says) in [
        (
            vec!["ca", "init", "--out", "ca", "--days", "4294967295"],
            "at most 36500 days",
        ),
        (
            vec![
                "sidecar-init",
                "--port",
                "15001",
                "--proxy-uid",
                "1337",
                "--exclude-cidr",
                "0.0.0.0/0",
            ],
            "cover every address",
        ),
        (
            vec![
                "sidecar-init",
                "--port",
                "15001",
                "--proxy-uid",
                "1337",
                "--exclude-cidr",
                "::/0",
            ],
            "cover every address",
        ),
        (
            vec![
                "sidecar-init",
                "--port",
                "15001",
                "--proxy-uid",
                "1337",
                "--exclude-port",
                "0",
            ],
            "names no port",
        ),
    ] {
        let (code, out) = proxy_cli(dir.path(), &args, "");
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
        assert!(!out.contains("panicked"), "{args:?}: {out}");
    }
    // Ranges that together cover every address, and a key written where its JWKS goes.
    for (args, says) in [
        (
            vec![
                "sidecar-init",
                "--port",
                "15001",
                "--proxy-uid",
                "1337",
                "--exclude-cidr",
                "0.0.0.0/1",
                "--exclude-cidr",
                "128.0.0.0/1",
            ],
            "cover every address",
        ),
        (
            vec![
                "token",
                "keygen",
                "--kid",
                "k9",
                "--out",
                "same.json",
                "--jwks",
                "same.json",
            ],
            "name one file",
        ),
    ] {
        let (code, out) = proxy_cli(dir.path(), &args, "");
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    assert!(!dir.path().join("ca").exists());
    for ttl in ["0s", "999ms", "36500d"] {
        let (code, out) = mint(ttl);
        assert_eq!(code, 1, "{ttl}: {out}");
        assert!(
            out.contains("`--ttl` must be more than zero"),
            "{ttl}: {out}"
        );
    }
    let (code, out) = mint("5m");
    assert_eq!(code, 0, "{out}");
}

/// `token keygen` runs at once into one JWKS all land: each reads, changes and writes it back
/// under a lock, and the file is replaced whole.
/// A JWKS saved with a byte-order mark (Notepad's, PowerShell's UTF-8) is read by `keygen` as
/// the proxy reads it, and written back without one.
#[test]
fn keygen_adds_to_a_jwks_saved_with_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = keygen(dir.path(), "k1", "k1.pem", "jwks.json");
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(dir.path().join("jwks.json")).unwrap();
    std::fs::write(dir.path().join("jwks.json"), format!("\u{feff}{text}")).unwrap();
    let (code, out) = keygen(dir.path(), "k2", "k2.pem", "jwks.json");
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(dir.path().join("jwks.json")).unwrap();
    assert!(!text.starts_with('\u{feff}'));
    let jwks: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
}

#[test]
fn concurrent_keygens_into_one_jwks_all_land() {
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..6)
            .map(|i| {
                let dir = dir.path();
                s.spawn(move || {
                    let kid = format!("k{i}");
                    let out = format!("key{i}.pem");
                    keygen(dir, &kid, &out, "jwks.json")
                })
            })
            .collect();
        for run in runs {
            let (code, out) = run.join().unwrap();
            assert_eq!(code, 0, "{out}");
        }
    });
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap())
            .unwrap();
    let mut kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    kids.sort_unstable();
    assert_eq!(kids, ["k0", "k1", "k2", "k3", "k4", "k5"]);
}
