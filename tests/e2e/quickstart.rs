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
    // What `run` would refuse, `check` refuses too: a CA key of another CA, a CA file with no
    // certificate, a log level that is none (every line would go), in the file or `RUST_LOG`.
    let config = dir.path().join("quickstart/tenant-proxy.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    for (name, broken, env, says) in [
        (
            "another CA's key",
            good.replace("ca/ca-key.pem", "origin-ca/ca-key.pem"),
            None,
            "the key does not belong to the certificate",
        ),
        (
            "a CA file without a certificate",
            good.replace("\"origin-ca/ca.pem\"", "\"tenants.toml\""),
            None,
            "the CA file `quickstart/tenants.toml` holds no certificate",
        ),
        (
            "a misspelt log level",
            good.replace("level = \"info\"", "level = \"warning\""),
            None,
            "`warning` in the log filter",
        ),
        (
            "a misspelt RUST_LOG",
            good.clone(),
            Some("infoo"),
            "`infoo` in the log filter",
        ),
    ] {
        assert!(env.is_some() || broken != good, "{name}: the edit applies");
        std::fs::write(&config, &broken).unwrap();
        for command in ["check", "run"] {
            let mut cmd = Command::new(bin);
            cmd.args([command, "--config", "quickstart/tenant-proxy.toml"])
                .current_dir(dir.path());
            if let Some(filter) = env {
                cmd.env("RUST_LOG", filter);
            }
            let out = cmd.output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: {command}: {text}");
            assert!(text.contains(says), "{name}: {command}: {text}");
        }
    }
    std::fs::write(&config, &good).unwrap();
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

/// The quickstart as the README runs it, on ports the kernel picked: the shipped configuration
/// (listeners and mock ports rewritten, nothing else), the keys the script creates, the mock
/// plain and over TLS with its certificate from the quickstart's origin CA.
struct Quickstart {
    dir: tempfile::TempDir,
    sidecar: u16,
    shared: u16,
    /// The plain mock's port (18000 in the README).
    mock: u16,
    /// The TLS mock's port (18443 in the README).
    mock_tls: u16,
    child: std::process::Child,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Quickstart {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tracked(&repo_root(), dir.path());
        let bin = proxy_bin();
        let keys = Command::new("sh")
            .arg("scripts/quickstart-keys.sh")
            .arg(bin.parent().unwrap())
            .arg("quickstart")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            keys.status.success(),
            "{}",
            String::from_utf8_lossy(&keys.stderr)
        );

        // The mocks as scripts/quickstart.sh starts them (`mock` and `mock --tls --name
        // llm.quickstart.test --ca-cert … --ca-key …`: the same library calls).
        let mock = start_mock();
        let origin = dir.path().join("quickstart/origin-ca");
        let tls = tenant_proxy_loadtest::tls::server_config_from_ca_files(
            &origin.join("ca.pem"),
            &origin.join("ca-key.pem"),
            &["llm.quickstart.test".to_string()],
        )
        .unwrap();
        let mock_tls = start_mock_tls_config(tls);

        // Only the fixed ports change: the README's 8080/8081/9090 become port 0, its mock ports
        // the ports the mocks got.
        let edit = |rel: &str, pairs: &[(&str, String)]| {
            let path = dir.path().join(rel);
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in pairs {
                assert!(text.contains(from), "{rel} no longer holds `{from}`");
                text = text.replace(from, to);
            }
            std::fs::write(&path, text).unwrap();
        };
        edit(
            "quickstart/tenant-proxy.toml",
            &[
                ("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"".into()),
                ("\"127.0.0.1:8081\"", "\"127.0.0.1:0\"".into()),
                ("\"127.0.0.1:9090\"", "\"127.0.0.1:0\"".into()),
                (
                    "llm.quickstart.test:18000",
                    format!("llm.quickstart.test:{mock}"),
                ),
                (
                    "llm.quickstart.test:18443",
                    format!("llm.quickstart.test:{mock_tls}"),
                ),
                (
                    "connect_ports = [443, 18443]",
                    format!("connect_ports = [443, {mock_tls}]"),
                ),
            ],
        );
        edit(
            "quickstart/tenants.toml",
            &[(
                "llm.quickstart.test:18000",
                format!("llm.quickstart.test:{mock}"),
            )],
        );

        let ready_file = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let mut child = Command::new(bin)
            .args([
                "run",
                "--config",
                "quickstart/tenant-proxy.toml",
                "--ready-file",
            ])
            .arg(&ready_file)
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let ready = loop {
            if let Some(r) = config::Ready::read(&ready_file).unwrap() {
                break r;
            }
            let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
            assert!(child.try_wait().unwrap().is_none(), "proxy exited: {log}");
            assert!(std::time::Instant::now() < deadline, "not ready: {log}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Quickstart {
            sidecar: ready.port("sidecar-acme-support-bot").unwrap(),
            shared: ready.port("shared").unwrap(),
            mock,
            mock_tls,
            dir,
            child,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// `tenant-proxy ARGS` in the clone's root, as the README runs it; (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(proxy_bin())
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The record with the request id of `response` (curl `-i` output) in `tenant`'s partition.
    fn record_of(&self, tenant: &str, response: &str) -> serde_json::Value {
        let id = header_in(response, "x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {response}"));
        wait_record_in(&self.path("audit-data"), tenant, &id)
    }
}

/// The last value of header `name` in curl `-i` output (the tunnel's `200` comes first).
fn header_in(response: &str, name: &str) -> Option<String> {
    response
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
}

/// The JSON body at the end of curl `-i` output.
fn body_of(response: &str) -> serde_json::Value {
    let body = response.rsplit("\r\n\r\n").next().unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn readme_walkthrough_runs_as_written_including_intercepted_https() {
    let qs = Quickstart::start();
    let sidecar = format!("http://127.0.0.1:{}", qs.sidecar);
    let mock = format!("http://llm.quickstart.test:{}", qs.mock);
    let mock_tls = format!("https://llm.quickstart.test:{}", qs.mock_tls);
    let json = "content-type: application/json";

    // 1. acme's sidecar calls the mock by its quickstart name through the proxy.
    let (status, out) = curl(&[
        "-i",
        "-x",
        &sidecar,
        &format!("{mock}/v1/chat/completions"),
        "-H",
        json,
        "-d",
        CHAT,
    ]);
    assert_eq!(status, 200, "{out}");
    let rec = qs.record_of("acme", &out);
    assert_eq!(rec["workload"], "support-bot", "{rec}");
    assert!(
        rec["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0,
        "{rec}"
    );

    // Nothing bypasses: without the proxy the name does not resolve (curl exit 6, no answer).
    let direct = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("{mock}/v1/chat/completions"),
        ])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(6), "{direct:?}");

    // 2. Route mode.
    let (status, out) = curl(&[
        &format!("{sidecar}/openai/v1/chat/completions"),
        "-H",
        json,
        "-d",
        r#"{"model":"gpt-4o","messages":[]}"#,
    ]);
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("\"usage\""), "{out}");

    // 3. A token for globex's agent.
    let (code, token, err) = qs.cli(&[
        "token",
        "mint",
        "--key",
        "quickstart/keys/dev-signing-key.pem",
        "--kid",
        "dev",
        "--tenant",
        "globex",
        "--workload",
        "agent",
        "--ttl",
        "5m",
    ]);
    assert_eq!(code, 0, "{err}");
    let globex = format!("http://agent:{}@127.0.0.1:{}", token.trim(), qs.shared);

    // The egress guard still checks: the mock's loopback address, which policy permits globex
    // (`allow-local-mock`), is refused; only the name on the mock's ports is an exception.
    let (status, out) = curl(&[
        "-x",
        &globex,
        &format!("http://127.0.0.1:{}/v1/chat/completions", qs.mock),
        "-H",
        json,
        "-d",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    ]);
    assert_eq!(status, 403, "{out}");
    assert!(out.contains("destination_forbidden"), "{out}");
    let (status, out) = curl(&[
        "-x",
        &globex,
        &format!("http://llm.quickstart.test:{}/", qs.shared),
    ]);
    assert_eq!(status, 403, "{out}");
    assert!(out.contains("destination_forbidden"), "{out}");

    // 4. The free plan may not use gpt-4o: refused by the named forbid.
    let (status, out) = curl(&[
        "-x",
        &globex,
        &format!("{mock}/v1/chat/completions"),
        "-H",
        json,
        "-d",
        r#"{"model":"gpt-4o","messages":[]}"#,
    ]);
    assert_eq!(status, 403, "{out}");
    assert!(
        out.contains("forbidden by policy `free-plan-models`"),
        "{out}"
    );

    // 5. Python requests with the proxy from the environment.
    let usage = python(
        &format!(
            "import requests; print(requests.post('{mock}/v1/chat/completions', json={{'model':'gpt-4o-mini','messages':[]}}).json()['usage'])"
        ),
        &[("http_proxy", globex.clone()), ("HTTP_PROXY", globex.clone())],
    );
    assert!(usage.contains("prompt_tokens"), "{usage}");

    // 6. A spoofed tenant header is stripped; globex's policies decide.
    let (status, out) = curl(&[
        "-x",
        &globex,
        &format!("{mock}/anything"),
        "-H",
        "X-Tenant-Id: acme",
    ]);
    assert_eq!(status, 200, "{out}");
    assert!(!out.to_ascii_lowercase().contains("x-tenant-id"), "{out}");

    // 7. Credentials: acme's key reaches the bound host and path (`/v1`), the echo comes back
    //    as the handle.
    let (status, out) = curl(&[
        "-i",
        "-x",
        &sidecar,
        &format!("{mock}/v1/models"),
        "-H",
        "Authorization: Bearer $CRED{openai}",
    ]);
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        header_in(&out, "x-mock-authorization-sha256").as_deref(),
        Some(sha256_hex("Bearer sk-quickstart-acme-demo").as_str()),
        "{out}"
    );
    assert!(
        out.contains("$CRED{openai}") && !out.contains("sk-quickstart"),
        "{out}"
    );
    // The handle toward a path the key is not bound to, and an agent's own key: refused.
    let (status, out) = curl(&[
        "-x",
        &sidecar,
        &format!("{mock}/anything"),
        "-H",
        "Authorization: Bearer $CRED{openai}",
    ]);
    assert_eq!(status, 403, "{out}");
    assert!(out.contains("credential_not_bound"), "{out}");
    let (status, out) = curl(&[
        "-x",
        &sidecar,
        &format!("{mock}/v1/models"),
        "-H",
        "Authorization: Bearer sk-my-own",
    ]);
    assert_eq!(status, 403, "{out}");
    assert!(out.contains("raw_credential"), "{out}");

    // 8. HTTPS, intercepted: curl trusts the interception CA, the proxy verifies the mock's
    //    certificate against the origin CA, substitutes acme's key and meters the usage.
    let (status, out) = curl(&[
        "-i",
        "--cacert",
        qs.path("quickstart/ca/ca.pem").to_str().unwrap(),
        "-x",
        &sidecar,
        &format!("{mock_tls}/v1/chat/completions"),
        "-H",
        json,
        "-H",
        "Authorization: Bearer $CRED{openai}",
        "-d",
        CHAT,
    ]);
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        header_in(&out, "x-mock-authorization-sha256").as_deref(),
        Some(sha256_hex("Bearer sk-quickstart-acme-demo").as_str()),
        "{out}"
    );
    assert!(
        body_of(&out)["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{out}"
    );
    let rec = qs.record_of("acme", &out);
    assert_eq!(rec["tenant"], "acme", "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["credentials"], serde_json::json!(["openai"]), "{rec}");
    assert_eq!(rec["tunnel"]["mode"], "intercept", "{rec}");
    assert_eq!(rec["model"], "gpt-4o", "{rec}");
    assert!(
        rec["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0
            && rec["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "{rec}"
    );
    // The same tunnel for globex: its own key, in its own partition.
    let (status, out) = curl(&[
        "-i",
        "--cacert",
        qs.path("quickstart/ca/ca.pem").to_str().unwrap(),
        "-x",
        &globex,
        &format!("{mock_tls}/v1/chat/completions"),
        "-H",
        json,
        "-H",
        "Authorization: Bearer $CRED{openai}",
        "-d",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    ]);
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        header_in(&out, "x-mock-authorization-sha256").as_deref(),
        Some(sha256_hex("Bearer sk-quickstart-globex-demo").as_str()),
        "{out}"
    );
    let rec = qs.record_of("globex", &out);
    assert_eq!(rec["tenant"], "globex", "{rec}");
    assert_eq!(rec["credentials"], serde_json::json!(["openai"]), "{rec}");
    // Without trusting the interception CA, curl refuses the proxy's leaf (exit 60).
    let untrusting = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-x",
            &sidecar,
            &format!("{mock_tls}/v1/models"),
        ])
        .env("CURL_CA_BUNDLE", qs.path("quickstart/origin-ca/ca.pem"))
        .output()
        .unwrap();
    assert_eq!(untrusting.status.code(), Some(60), "{untrusting:?}");

    // 9. A tunnel the policies refuse (acme is in the EU), and the metadata endpoint.
    let (status, out) = curl(&["-i", "-x", &sidecar, "https://example.com/"]);
    assert!(out.contains("403"), "{status} {out}");
    // The refusal's body (curl does not show a refused tunnel's) names the policy.
    let refused = raw_request(
        qs.sidecar,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .unwrap();
    refused.assert_refused(403, "policy_denied");
    assert!(
        refused
            .body_text()
            .contains("forbidden by policy `eu-data-residency`"),
        "{}",
        refused.body_text()
    );
    let (status, out) = curl(&["-x", &sidecar, "http://169.254.169.254/latest/meta-data"]);
    assert_eq!(status, 403, "{out}");
    // acme is in the EU: the residency rule refuses too, and the message names both forbids.
    assert!(
        out.contains("forbidden by policies `eu-data-residency`, `forbid-metadata`"),
        "{out}"
    );

    // 10. The audit trail verifies, explain and the policy tests run.
    let records = records_in(&qs.path("audit-data"), "globex");
    assert!(!records.is_empty());
    let (code, out, err) = qs.cli(&["audit", "verify", "audit-data"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(qs.path("body.json"), r#"{"model":"gpt-4o","messages":[]}"#).unwrap();
    let (code, out, err) = qs.cli(&[
        "policy",
        "explain",
        "--config",
        "quickstart/tenant-proxy.toml",
        "--tenant",
        "globex",
        "--workload",
        "agent",
        "--method",
        "POST",
        "--url",
        "https://llm.quickstart.test/v1/chat/completions",
        "--body",
        "body.json",
    ]);
    assert!(out.contains("free-plan-models"), "{code} {out}{err}");
    let (code, out, err) = qs.cli(&[
        "policy",
        "test",
        "policies",
        "--config",
        "quickstart/tenant-proxy.toml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
}
