//! HTTPS egress end to end: real clients through `HTTPS_PROXY` into intercepted tunnels, opaque
//! tunnels, refusals before and inside tunnels, WebSocket upgrades, mTLS identity, the SSRF
//! guard and cross-tenant isolation of tunnels.
//!
//! The upstream is the loadtest mock over TLS, with a certificate from a throwaway test CA that
//! the proxy trusts through `[upstream] extra_ca_files`. Its names (llm.test, ...) resolve to
//! 127.0.0.1 only through `[egress] hosts`, so nothing here leaves loopback.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenant_proxy_loadtest::tls::{PemPair, TestCa};

use crate::support::*;

/// Every name the mock answers for. `badcert.test` resolves to it too but is not on its
/// certificate: the proxy must refuse to talk to it.
const MOCK_NAMES: [&str; 3] = ["llm.test", "other.test", "pinned.test"];
const ACME_SECRET: &str = "sk-acme-live-0000000000000000";
const GLOBEX_SECRET: &str = "sk-globex-live-1111111111111111";

struct Https {
    proxy: Proxy,
    mock: u16,
    /// The test CA that signed the mock's certificate (what pinned clients trust).
    origin_ca: PathBuf,
    /// `tenant-proxy ca env`'s variables.
    trust: Vec<(String, String)>,
}

/// The interception CA, the test CA that signed the mock's certificate, every name the mock
/// answers for (resolved to loopback by `[egress] hosts`) and tunnels to its port, and one
/// mounted credential per tenant bound to `llm.test`; then `configure`'s changes.
fn start_https(configure: impl FnOnce(&mut ProxySpec)) -> Https {
    let ca = TestCa::new("tenant-proxy test origin CA").unwrap();
    let mut names: Vec<&str> = MOCK_NAMES.to_vec();
    names.push("127.0.0.1");
    let mock = start_mock_tls(&ca.server(&names).unwrap());
    let origin_ca_pem = ca.cert_pem.clone();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-https",
        ..Default::default()
    };
    spec.config.egress.connect_ports = Some(vec![443, mock]);
    for host in [
        "llm.test",
        "other.test",
        "pinned.test",
        "plain.test",
        "badcert.test",
    ] {
        spec.config
            .egress
            .hosts
            .insert(host.into(), vec!["127.0.0.1".into()]);
    }
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    for (tenant, name) in [
        ("acme", "openai"),
        ("acme", "acme_only"),
        ("globex", "openai"),
    ] {
        credentials
            .files
            .push(config::FileCredential::header(tenant, name, &["llm.test"]));
    }
    configure(&mut spec);
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("origin-ca.pem"), &origin_ca_pem).unwrap();
        let (code, out) = proxy_cli(
            dir,
            &[
                "ca",
                "init",
                "--out",
                "ca",
                "--name",
                "e2e interception CA",
                "--permit",
                "llm.test",
                "--permit",
                "other.test",
                "--permit",
                "badcert.test",
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
        for (tenant, name, value) in [
            ("acme", "openai", ACME_SECRET),
            ("acme", "acme_only", "sk-acme-only-2222"),
            ("globex", "openai", GLOBEX_SECRET),
        ] {
            std::fs::create_dir_all(dir.join("secrets").join(tenant)).unwrap();
            std::fs::write(dir.join("secrets").join(tenant).join(name), value).unwrap();
        }
    });
    let origin_ca = proxy.path("origin-ca.pem");
    let (code, out) = proxy_cli(proxy.dir.path(), &["ca", "env", "--ca", "ca/ca.pem"], "");
    assert_eq!(code, 0, "{out}");
    let trust = parse_exports(&out);
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
    ] {
        assert!(
            trust.iter().any(|(k, _)| k == var),
            "{var} missing from:\n{out}"
        );
    }
    Https {
        proxy,
        mock,
        origin_ca,
        trust,
    }
}

/// `export NAME='value'` lines, as `eval "$(tenant-proxy ca env ...)"` would set them.
fn parse_exports(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn trust_env(h: &Https) -> Vec<(&str, String)> {
    h.trust
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect()
}

/// What the mock reports for the `Authorization: Bearer {secret}` it received.
fn seen(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("Bearer {secret}").as_bytes()))
}

fn chat_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":7}}"#)
}

// ---------------------------------------------------------------------------------------------
// A hand-driven client, for what no stock client does on purpose (wrong SNI, wrong Host, raw
// upgrades, holding tunnels open).

/// Sends `CONNECT authority` on `port` with extra header lines; returns the socket and the
/// proxy's answer head (status and raw text, body included for refusals).
fn connect(port: u16, authority: &str, extra: &str) -> (TcpStream, u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut full = text;
    if status != 200 {
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        full.push_str(&rest);
    }
    (s, status, full)
}

fn refusal_json(text: &str) -> serde_json::Value {
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// TLS over an established tunnel, with `sni`, trusting only the CA in `ca_file`.
fn tls_over(sock: TcpStream, sni: &str, ca_file: &Path) -> std::io::Result<Tls> {
    let pem = std::fs::read_to_string(ca_file).unwrap();
    let config: Arc<rustls::ClientConfig> =
        tenant_proxy_loadtest::tls::client_config(&pem).unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // Drive the handshake now, so handshake failures surface here.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn request_over(tls: &mut Tls, raw: &str) -> Response {
    tls.write_all(raw.as_bytes()).unwrap();
    tls.flush().unwrap();
    read_response(&mut BufReader::new(tls)).unwrap()
}

fn intercepted(h: &Https, port: u16, authority: &str, extra: &str) -> Tls {
    let (sock, status, text) = connect(port, authority, extra);
    assert_eq!(status, 200, "{text}");
    let sni = authority.rsplit_once(':').unwrap().0;
    tls_over(sock, sni, &h.proxy.path("ca/ca.pem")).unwrap()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn real_clients_through_https_proxy_get_credentials_substituted_and_usage_metered() {
    let h = start_https(|_| {});
    let url = format!("https://llm.test:{}/v1/chat/completions", h.mock);
    let proxy_url = format!("http://127.0.0.1:{}", h.proxy.sidecar_port);
    let mut env = trust_env(&h);
    env.push(("HTTPS_PROXY", proxy_url.clone()));
    env.push(("URL", url.clone()));
    env.push(("BASE", format!("https://llm.test:{}/v1", h.mock)));
    let acme = seen(ACME_SECRET);

    // curl, with the bundle `ca env` wrote (CURL_CA_BUNDLE).
    let bundle = env
        .iter()
        .find(|(k, _)| *k == "CURL_CA_BUNDLE")
        .unwrap()
        .1
        .clone();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-D",
            "-",
            "-x",
            &proxy_url,
            "--cacert",
            &bundle,
        ])
        .args([
            "-H",
            "Authorization: Bearer $CRED{openai}",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", &chat_body("gpt-4o"), &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("x-mock-authorization-sha256: {acme}")),
        "curl got: {text}"
    );
    assert!(text.contains("chat.completion"), "{text}");

    // Python requests and httpx, from the environment alone.
    let py = python(
        r#"
import os, json, requests, httpx
h = {"Authorization": "Bearer $CRED{openai}"}
body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}
r = requests.post(os.environ["URL"], json=body, headers=h, timeout=20)
print("requests", r.status_code, r.headers.get("x-mock-authorization-sha256"), r.json()["usage"]["completion_tokens"])
with httpx.Client(timeout=20) as c:
    r = c.post(os.environ["URL"], json=body, headers=h)
    print("httpx", r.status_code, r.headers.get("x-mock-authorization-sha256"), r.json()["usage"]["completion_tokens"])
"#,
        &env,
    );
    assert!(py.contains(&format!("requests 200 {acme} 7")), "{py}");
    assert!(py.contains(&format!("httpx 200 {acme} 7")), "{py}");

    // The openai SDK: the agent only ever holds the handle.
    let py = python(
        r#"
import os, openai
client = openai.OpenAI(api_key="$CRED{openai}", base_url=os.environ["BASE"], max_retries=0)
raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=7)
c = raw.parse()
print("openai", raw.headers.get("x-mock-authorization-sha256"), c.usage.completion_tokens)
"#,
        &env,
    );
    assert!(py.contains(&format!("openai {acme} 7")), "{py}");

    // Node: core https over a CONNECT tunnel (what proxy agents do), trusting the CA through
    // NODE_EXTRA_CA_CERTS.
    let node = r#"
const http = require('http'), https = require('https'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY), target = new URL(process.env.URL);
const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: target.host});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log('connect', res.statusCode); process.exit(1); }
  const body = JSON.stringify({model: 'gpt-4o', messages: [{role: 'user', content: 'hi'}], max_tokens: 7});
  const r = https.request(target, {method: 'POST', headers: {'authorization': 'Bearer $CRED{openai}', 'content-type': 'application/json', 'content-length': Buffer.byteLength(body)},
    createConnection: () => tls.connect({socket, servername: target.hostname})}, (resp) => {
    let data = '';
    resp.on('data', (d) => data += d);
    resp.on('end', () => { console.log('node', resp.statusCode, resp.headers['x-mock-authorization-sha256'], JSON.parse(data).usage.completion_tokens); process.exit(0); });
  });
  r.on('error', (e) => { console.log('error', e.message); process.exit(1); });
  r.end(body);
});
req.on('error', (e) => { console.log('error', e.message); process.exit(1); });
req.end();
"#;
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(node)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("node 200 {acme} 7")),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every call was decided, substituted and metered like a plain one, inside its tunnel.
    let records = h.proxy.wait_audit_records("acme", 10);
    let calls: Vec<_> = records.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(calls.len(), 5, "{records:#?}");
    for r in &calls {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["host"], "llm.test", "{r}");
        assert_eq!(r["credentials"], serde_json::json!(["openai"]), "{r}");
        assert_eq!(r["usage"]["output_tokens"], 7, "{r}");
        assert_eq!(r["tunnel"]["mode"], "intercept", "{r}");
        let tunnel_id = r["tunnel"]["id"].as_str().unwrap();
        let opened = records
            .iter()
            .find(|t| t["request_id"] == tunnel_id)
            .unwrap_or_else(|| panic!("no record for tunnel {tunnel_id}"));
        assert_eq!(opened["method"], "CONNECT");
        assert_eq!(opened["decision"], "allow");
    }
    // One leaf minted for llm.test, then served from the cache to the other four tunnels.
    let metrics = h.proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_leaf_certificates_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenant_proxy_leaf_certificates_total{result=\"hit\"} 4"),
        "{metrics}"
    );
    assert!(!metrics.contains(ACME_SECRET));
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains(ACME_SECRET),
        "a secret reached the audit trail"
    );
    assert!(
        !h.proxy.log().contains(ACME_SECRET),
        "a secret reached the log"
    );
}

#[test]
fn http2_inside_an_intercepted_tunnel_runs_the_same_pipeline() {
    let h = start_https(|_| {});
    let bundle = h
        .trust
        .iter()
        .find(|(k, _)| k == "CURL_CA_BUNDLE")
        .unwrap()
        .1
        .clone();
    let proxy_url = format!("http://127.0.0.1:{}", h.proxy.sidecar_port);
    let run_as = |method: &str, path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-X",
                method,
                "--max-time",
                "20",
                "--http2",
                "-D",
                "-",
                "-x",
                &proxy_url,
            ])
            .args([
                "--cacert",
                &bundle,
                "-H",
                "Authorization: Bearer $CRED{openai}",
            ])
            .args(["-w", "\nversion=%{http_version}"])
            .arg(format!("https://llm.test:{}{path}", h.mock))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let run = |path: &str| run_as("GET", path);
    let out = run("/v1/models");
    assert!(out.contains("version=2"), "{out}");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("HTTP/2 200"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "x-mock-authorization-sha256: {}",
            seen(ACME_SECRET)
        )),
        "{out}"
    );
    let out = run("/forbidden/x");
    assert!(
        out.contains("HTTP/2 403") && out.contains("policy_denied"),
        "{out}"
    );
    // `:method` is case-sensitive in HTTP/2 as well: a lower-case one is refused, not decided.
    let out = run_as("delete", "/v1/models");
    assert!(
        out.contains("HTTP/2 400") && out.contains("bad_request"),
        "{out}"
    );
    let recs = h.proxy.wait_audit_records("acme", 4);
    let inner: Vec<_> = recs.iter().filter(|r| r["method"] == "GET").collect();
    assert_eq!(inner.len(), 2, "{recs:#?}");
    assert!(inner.iter().all(|r| r["tunnel"]["mode"] == "intercept"));
    assert_eq!(inner[0]["credentials"], serde_json::json!(["openai"]));
}

#[test]
fn tunnels_are_refused_before_any_byte_by_port_policy_identity_and_ca_scope() {
    let h = start_https(|_| {});
    let m = h.mock;

    // A port outside `connect_ports`.
    let (_, status, text) = connect(h.proxy.sidecar_port, "llm.test:8443", "");
    assert_eq!(status, 403, "{text}");
    assert_eq!(
        refusal_json(&text)["error"]["code"],
        "connect_port_forbidden",
        "{text}"
    );

    // Policy: globex may tunnel to llm.test only.
    let globex = format!(
        "Proxy-Authorization: Bearer {}\r\n",
        token_for("globex", "agent")
    );
    let (_, status, text) = connect(h.proxy.shared_port, &format!("other.test:{m}"), &globex);
    assert_eq!(status, 403, "{text}");
    let refusal = refusal_json(&text);
    assert_eq!(refusal["error"]["code"], "policy_denied", "{text}");
    let id = refusal["error"]["request_id"].as_str().unwrap().to_string();
    let rec = h.proxy.audit_record("globex", &id);
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["decision"], "deny");

    // No identity on the token listener: 407 with a challenge, before any lookup.
    let (_, status, text) = connect(h.proxy.shared_port, &format!("llm.test:{m}"), "");
    assert_eq!(status, 407, "{text}");
    assert!(text.to_lowercase().contains("proxy-authenticate"), "{text}");

    // Allowed by policy, but the interception CA is name-constrained away from the host.
    let (_, status, text) = connect(h.proxy.sidecar_port, &format!("plain.test:{m}"), "");
    assert_eq!(status, 403, "{text}");
    assert_eq!(
        refusal_json(&text)["error"]["code"],
        "interception_unavailable",
        "{text}"
    );

    // A malformed authority.
    let (_, status, text) = connect(h.proxy.sidecar_port, "llm.test", "");
    assert_eq!(status, 400, "{text}");
}

#[test]
fn requests_inside_a_tunnel_must_name_its_host_and_sni() {
    let h = start_https(|_| {});
    let m = h.mock;
    let authority = format!("llm.test:{m}");

    // SNI for another host than the CONNECT authority: no certificate, handshake refused.
    let (sock, status, text) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    assert!(tls_over(sock, "other.test", &h.proxy.path("ca/ca.pem")).is_err());

    // The right SNI, then a Host for another host: refused, the tunnel stays on its host.
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: other.test:{m}\r\n\r\n"),
    );
    r.assert_refused(400, "host_mismatch");
    // Keep-alive and pipelining: two requests written at once, answered in order.
    let two = format!(
        "GET /v1/a HTTP/1.1\r\nHost: {authority}\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    );
    tls.write_all(two.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(&mut tls);
    let a = read_response(&mut reader).unwrap();
    let b = read_response(&mut reader).unwrap();
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["path"], "/v1/a");
    assert_eq!(b.json()["path"], "/v1/b");

    let recs = h.proxy.wait_audit_records("acme", 5);
    assert!(
        recs.iter()
            .any(|r| r["method"] == "CONNECT" && r["reason"] == "host_mismatch"),
        "the SNI mismatch is audited: {recs:#?}"
    );

    // An upstream whose certificate does not match: 502 upstream_tls, never a downgrade.
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &format!("badcert.test:{m}"), "");
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: badcert.test:{m}\r\nConnection: close\r\n\r\n"),
    );
    r.assert_refused(502, "upstream_tls");
}

#[test]
fn opaque_tunnels_pass_bytes_and_are_audited_with_counts() {
    let h = start_https(|_| {});
    let url = format!("https://pinned.test:{}/pinned/echo", h.mock);
    // The client trusts only the origin's CA: the tunnel is not intercepted.
    let (status, body) = curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", h.proxy.sidecar_port),
        "--cacert",
        h.origin_ca.to_str().unwrap(),
        "-H",
        "Authorization: Bearer $CRED{openai}",
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Nothing inside an opaque tunnel is seen, so nothing is substituted.
    assert_eq!(echoed["headers"]["authorization"], "Bearer $CRED{openai}");
    let recs = h.proxy.wait_audit_records("acme", 1);
    let t = &recs[0];
    assert_eq!(t["method"], "CONNECT");
    assert_eq!(t["tunnel"]["mode"], "opaque", "{t}");
    assert_eq!(
        t["policy_ids"],
        serde_json::json!(["acme-tunnels", "acme-pinned-opaque"]),
        "{t}"
    );
    assert!(t["bytes_in"].as_u64().unwrap() > 200, "{t}");
    assert!(t["bytes_out"].as_u64().unwrap() > 500, "{t}");
}

/// A tunnel policy lets pass opaquely holds its client to the host it was decided on: a TLS
/// SNI naming another site at the same address (here `llm.test`, where acme's credentials are
/// bound and tunnels are intercepted) is cut before a byte reaches the server, recorded as
/// `host_mismatch`; plain HTTP inside is read as HTTP, each request decided on its own `Host`.
#[test]
fn an_opaque_tunnel_holds_its_client_to_the_tunnels_host() {
    let h = start_https(|_| {});
    let authority = format!("pinned.test:{}", h.mock);
    let (sock, status, text) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    assert!(
        tls_over(sock, "llm.test", &h.origin_ca).is_err(),
        "a ClientHello for another host passed the opaque tunnel"
    );
    let record = record_when_written(&h, |r| r["reason"] == "host_mismatch");
    assert_eq!(record["method"], "CONNECT", "{record}");
    assert_eq!(record["host"], "pinned.test", "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
    assert!(h.proxy.metrics().contains(
        r#"tenant_proxy_tunnel_handshake_failures_total{reason="sni_mismatch",tenant="acme"} 1"#
    ));

    // Its own name passes, upper case and with a trailing dot as well.
    for sni in ["pinned.test", "PINNED.test."] {
        let (sock, status, _) = connect(h.proxy.sidecar_port, &authority, "");
        assert_eq!(status, 200);
        let mut tls = tls_over(sock, sni, &h.origin_ca).unwrap();
        let r = request_over(
            &mut tls,
            &format!("GET /pinned/echo HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{sni}: {}", r.body_text());
    }

    // Plain HTTP inside: another host's `Host` is refused, and the tunnel's own host is asked
    // of the `http` policy (which permits it only over HTTPS).
    let plain_inside = |lead: &str, host: &str| {
        let (mut sock, status, _) = connect(h.proxy.sidecar_port, &authority, "");
        assert_eq!(status, 200);
        write!(
            sock,
            "{lead}GET /pinned/echo HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\r\n",
            h.mock
        )
        .unwrap();
        read_response(&mut BufReader::new(sock)).unwrap()
    };
    for (host, code) in [
        ("llm.test", "host_mismatch"),
        ("pinned.test", "policy_denied"),
    ] {
        let body = plain_inside("", host).json();
        assert_eq!(body["error"]["code"], code, "{host}: {body}");
    }
    // Whitespace before the method (which Python's `http.server` skips) is still HTTP, read as
    // such: refused by the front, never relayed unread.
    let r = plain_inside(" ", "llm.test");
    assert_eq!(r.status, 400, "{}", r.body_text());
    // A TLS alert record before the ClientHello (Go's server skips warning alerts, then serves
    // the hello's SNI) leaves no name the proxy can check: refused, nothing relayed.
    let (mut sock, status, _) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200);
    sock.write_all(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x5a])
        .unwrap();
    assert!(tls_over(sock, "llm.test", &h.origin_ca).is_err());
    let record = record_when_written(&h, |r| r["reason"] == "interception_unavailable");
    assert_eq!(record["host"], "pinned.test", "{record}");
}

/// A host that keeps what it is sent (the recording origin's `/logged/`), over TLS as
/// `kept.test`, where acme's credential `kept` is bound and policy would let a tunnel pass
/// opaquely: what it kept from a substituted request must come back scrubbed, so the tunnel is
/// intercepted anyway.
#[test]
fn a_tunnel_to_a_host_the_tenants_credentials_are_bound_to_is_read_not_relayed() {
    const KEPT_SECRET: &str = "sk-acme-kept-canary-3b91";
    let ca = TestCa::new("kept origin CA").unwrap();
    let origin = Origin::start_tls(&ca.server(&["kept.test"]).unwrap());
    let origin_ca_pem = ca.cert_pem.clone();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-https",
        ..Default::default()
    };
    spec.config.egress.connect_ports = Some(vec![443, origin.port]);
    spec.config
        .egress
        .hosts
        .insert("kept.test".into(), vec!["127.0.0.1".into()]);
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "kept",
        &["kept.test"],
    ));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("origin-ca.pem"), &origin_ca_pem).unwrap();
        let args = [
            "ca",
            "init",
            "--out",
            "ca",
            "--name",
            "e2e CA",
            "--permit",
            "kept.test",
        ];
        let (code, out) = proxy_cli(dir, &args, "");
        assert_eq!(code, 0, "{out}");
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/kept"), KEPT_SECRET).unwrap();
        std::fs::write(
            dir.join("policies/tenants/acme/kept.cedar"),
            r#"
@id("acme-kept")
permit (principal in TenantProxy::Tenant::"acme", action, resource)
when { resource == TenantProxy::Destination::"kept.test" };
"#,
        )
        .unwrap();
    });
    let authority = format!("kept.test:{}", origin.port);
    // A request that carries the key (forward mode, to `https://`): the origin keeps it.
    let r = forward_get(
        proxy.sidecar_port,
        &format!("https://{authority}/x/echo/1"),
        None,
        "Authorization: Bearer $CRED{kept}\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        origin.requests()[0].headers["authorization"],
        format!("Bearer {KEPT_SECRET}")
    );
    // The same host through a tunnel policy lets pass opaquely: intercepted all the same, so
    // what the host kept comes back as the handle, to a client that trusts the proxy's CA.
    let (sock, status, text) = connect(proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    let mut tls = tls_over(sock, "kept.test", &proxy.path("ca/ca.pem"))
        .expect("the tunnel is intercepted: the proxy's leaf, not the origin's certificate");
    let kept = request_over(
        &mut tls,
        &format!("GET /x/logged/2 HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(kept.status, 200, "{}", kept.body_text());
    assert_eq!(kept.json()["last_key"], "Bearer $CRED{kept}");
    assert!(!kept.body_text().contains(KEPT_SECRET));
    let recs = proxy.wait_audit_records("acme", 3);
    let tunnel = recs
        .iter()
        .find(|r| r["method"] == "CONNECT")
        .expect("the tunnel's record");
    assert_eq!(tunnel["tunnel"]["mode"], "intercept", "{tunnel}");
    // A client that trusts only the origin (certificate pinning) cannot have it relayed unread.
    let (sock, status, text) = connect(proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    assert!(tls_over(sock, "kept.test", &proxy.path("origin-ca.pem")).is_err());
}

#[test]
fn websocket_upgrades_pass_inside_an_intercepted_tunnel_after_authorization() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let head = websocket_upgrade(&mut tls, &authority).to_lowercase();
    assert!(
        head.contains(&format!(
            "x-mock-authorization-sha256: {}",
            seen(ACME_SECRET)
        )),
        "{head}"
    );
    // A masked text frame "ping" (the mock echoes bytes back as they are).
    let frame = [
        0x81u8,
        0x84,
        1,
        2,
        3,
        4,
        b'p' ^ 1,
        b'i' ^ 2,
        b'n' ^ 3,
        b'g' ^ 4,
    ];
    tls.write_all(&frame).unwrap();
    tls.flush().unwrap();
    let mut back = [0u8; 10];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(back, frame);
    // Once closed, its record counts the frames each way, the client's too: what an agent sends
    // over a WebSocket is as visible in the audit trail as a request body.
    drop(tls);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let records = h.proxy.audit_records("acme");
        if let Some(r) = records.iter().find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/realtime"))
        }) {
            break r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{records:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(record["status"], 101, "{record}");
    // The session's model is in its URL: the policy decided on it, the record names it.
    assert_eq!(record["model"], "gpt-4o-realtime", "{record}");
    // However the client hung up (here without a TLS close_notify), that is how a WebSocket
    // ends: allowed, not a refusal.
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["reason"], "allowed", "{record}");
    // The upgrade's own 7-byte ping frame, then the 10-byte one above.
    assert_eq!(record["bytes_in"], 17, "{record}");
    assert!(record["bytes_out"].as_u64().unwrap() >= 17, "{record}");

    // The same upgrade to a forbidden path is refused before it reaches the origin.
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let r = request_over(
        &mut tls,
        &format!("GET /forbidden/ws HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    );
    r.assert_refused(403, "policy_denied");
}

/// Two tenants intercepting the same host are served leaves of their own: a leaf another
/// tenant's tunnel made would come from the cache, faster, and tell a tenant where the others
/// go. Each tenant's later tunnels are served its own cached leaf.
#[test]
fn tenants_are_served_leaves_of_their_own() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let leaf_of = |port: u16, extra: &str| {
        let tls = intercepted(&h, port, &authority, extra);
        tls.conn.peer_certificates().unwrap()[0].to_vec()
    };
    let globex = format!(
        "Proxy-Authorization: Bearer {}\r\n",
        token_for("globex", "agent")
    );
    let acme_first = leaf_of(h.proxy.sidecar_port, "");
    let globex_first = leaf_of(h.proxy.shared_port, &globex);
    assert!(acme_first != globex_first, "globex was served acme's leaf");
    assert!(leaf_of(h.proxy.sidecar_port, "") == acme_first);
    assert!(leaf_of(h.proxy.shared_port, &globex) == globex_first);
    let metrics = h.proxy.metrics();
    for (result, n) in [("miss", 2), ("hit", 2)] {
        assert!(
            metrics.contains(&format!(
                "tenant_proxy_leaf_certificates_total{{result=\"{result}\"}} {n}"
            )),
            "{metrics}"
        );
    }
}

#[test]
fn a_tunnel_never_carries_another_tenants_identity_or_credentials() {
    let h = start_https(|_| {});
    let m = h.mock;
    let authority = format!("llm.test:{m}");
    let globex = format!(
        "Proxy-Authorization: Bearer {}\r\n",
        token_for("globex", "agent")
    );
    let acme_token = token_for("acme", "bot");
    let mut tls = intercepted(&h, h.proxy.shared_port, &authority, &globex);

    // Inside globex's tunnel, an acme token in the request changes nothing: globex's secret.
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {acme_token}\r\nAuthorization: Bearer $CRED{{openai}}\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        r.header("x-mock-authorization-sha256"),
        Some(seen(GLOBEX_SECRET).as_str())
    );
    assert!(
        !r.body_text().contains(&acme_token),
        "the token is not forwarded"
    );
    // acme's own credential name does not exist for globex.
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer $CRED{{acme_only}}\r\n\r\n"),
    );
    r.assert_refused(403, "credential_unknown");
    // And globex's plan rules apply inside its tunnel.
    let body = chat_body("gpt-4o");
    let r = request_over(
        &mut tls,
        &format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    r.assert_refused(403, "policy_denied");

    let globex_recs = h.proxy.wait_audit_records("globex", 4);
    assert!(globex_recs.iter().all(|r| r["tenant"] == "globex"));
    assert!(
        h.proxy.audit_records("acme").is_empty(),
        "nothing of globex's tunnel is in acme's partition"
    );
}

#[test]
fn an_inner_proxy_authorization_never_decides_who_a_sidecar_tunnel_belongs_to() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    // The sidecar listener is acme/bot's; inside its tunnel the agent writes globex's valid
    // token, then a garbage one, as the inner request's Proxy-Authorization.
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let globex = token_for("globex", "agent");
    let mut ids = Vec::new();
    for inner in [format!("Bearer {globex}"), "Bearer not-a-token".to_string()] {
        let r = request_over(
            &mut tls,
            &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {inner}\r\nAuthorization: Bearer $CRED{{openai}}\r\n\r\n"),
        );
        // acme's secret, acme's decision: the inner header is neither an identity nor an error.
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(
            r.header("x-mock-authorization-sha256"),
            Some(seen(ACME_SECRET).as_str())
        );
        assert!(
            !r.body_text().contains(&globex),
            "the inner token is stripped"
        );
        ids.push(r.request_id());
    }
    // acme_only exists for acme alone: reachable from acme's tunnel whatever the inner token says.
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {globex}\r\nAuthorization: Bearer $CRED{{acme_only}}\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    ids.push(r.request_id());
    for id in &ids {
        let rec = h.proxy.audit_record("acme", id);
        assert_eq!(
            (rec["tenant"].as_str(), rec["workload"].as_str()),
            (Some("acme"), Some("bot"))
        );
    }
    assert!(
        h.proxy.audit_records("globex").is_empty(),
        "nothing of acme's tunnel is in globex's partition"
    );
}

/// Sends GET /v1/models inside `tls` every 200 ms until it is refused (20 s at most): what a
/// tunnel answers once a reload (or the clock) no longer accepts its identity.
fn until_refused(tls: &mut Tls, authority: &str) -> Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = request_over(
            tls,
            &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
        );
        if r.status != 200 {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnel was never refused"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that `r`, refused inside a tunnel, is `identity_invalid` saying `why`, and that the
/// refusal is audited in acme's partition as a request of that tunnel.
fn assert_tunnel_refused(h: &Https, r: &Response, why: &str) {
    let body = r.assert_refused(407, "identity_invalid");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{body}");
    let record = h.proxy.audit_record("acme", &r.request_id());
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    assert_eq!(record["workload"], "bot", "{record}");
    assert_eq!(record["tunnel"]["mode"], "intercept", "{record}");
}

/// A token of acme/bot signed with `private_pem` under `kid`.
fn token_signed_by(private_pem: &str, kid: &str) -> String {
    use tenant_proxy::identity::token::{mint, MintRequest};
    use tenant_proxy::ids::{TenantId, WorkloadId};
    let req = MintRequest {
        tenant: TenantId::new("acme").unwrap(),
        workload: WorkloadId::new("bot").unwrap(),
        audience: "tenant-proxy".into(),
        issuer: None,
        ttl: Duration::from_secs(300),
        run_id: None,
        run_budget: None,
        scopes: Vec::new(),
        jti: None,
        kid: Some(kid.into()),
        now_unix: now(),
        not_before: None,
    };
    mint(private_pem, &req).unwrap()
}

#[test]
fn a_key_pulled_or_replaced_in_the_jwks_reaches_the_tunnels_it_opened() {
    use tenant_proxy::identity::token::{generate_key, KeyAlgorithm};
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let auth = |t: &str| format!("Proxy-Authorization: Bearer {t}\r\n");
    let by_ed_token = token_for("acme", "bot");
    let by_es_token = token(TokenOpts {
        key: TEST_KEY_ES256,
        kid: Some("test-es"),
        ..Default::default()
    });
    let mut by_ed = intercepted(&h, h.proxy.shared_port, &authority, &auth(&by_ed_token));
    let mut by_es = intercepted(&h, h.proxy.shared_port, &authority, &auth(&by_es_token));
    let get = format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(request_over(&mut by_ed, &get).status, 200);
    assert_eq!(request_over(&mut by_es, &get).status, 200);
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.proxy.path("jwks.json")).unwrap()).unwrap();
    let publish = |keys: serde_json::Value| {
        let doc = serde_json::json!({ "keys": keys }).to_string();
        std::fs::write(h.proxy.path("jwks.json"), doc).unwrap();
        h.proxy.sighup();
    };

    // 1. `test-ed` is pulled: its tunnel's next request is refused as a fresh one would be,
    // and audited; the tunnel of the key that stays is served.
    let es_jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "test-es")
        .unwrap()
        .clone();
    publish(serde_json::json!([es_jwk]));
    assert_tunnel_refused(&h, &until_refused(&mut by_ed, &authority), "unknown key");
    let (_, status, text) = connect(h.proxy.shared_port, &authority, &auth(&by_ed_token));
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("unknown key"), "{text}");
    assert_eq!(request_over(&mut by_es, &get).status, 200);

    // 2. `test-es` now names another key (a rotation that kept the id): the tunnels its old
    // key's tokens opened are refused, as fresh requests (the signature does not verify).
    let rotated = generate_key(KeyAlgorithm::ES256, "test-es").unwrap();
    publish(serde_json::json!([rotated.jwk]));
    assert_tunnel_refused(
        &h,
        &until_refused(&mut by_es, &authority),
        "signature is invalid",
    );
    let (_, status, text) = connect(h.proxy.shared_port, &authority, &auth(&by_es_token));
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("signature is invalid"), "{text}");

    // 3. The only key is pulled, with none in its place: the empty set is taken at the reload
    // (not refused, which would keep the pulled key working) and every token is refused.
    let by_new_token = token_signed_by(&rotated.private_pem, "test-es");
    let mut by_new = intercepted(&h, h.proxy.shared_port, &authority, &auth(&by_new_token));
    assert_eq!(request_over(&mut by_new, &get).status, 200);
    publish(serde_json::json!([]));
    assert_tunnel_refused(&h, &until_refused(&mut by_new, &authority), "unknown key");
    let (_, status, text) = connect(h.proxy.shared_port, &authority, &auth(&by_new_token));
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("unknown key"), "{text}");
    // A listener bound to its workload needs no token and is served throughout.
    let mut sidecar = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    assert_eq!(request_over(&mut sidecar, &get).status, 200);
}

#[test]
fn a_tunnel_opened_within_the_leeway_is_served_as_long_as_its_token_is_accepted() {
    let h = start_https(|spec| {
        if let Some(token) = spec.tenants.token.as_mut() {
            token.leeway = Some(Duration::from_secs(30));
        }
    });
    let authority = format!("llm.test:{}", h.mock);
    // Expired 20 s ago: a leeway of 30 s (the default) accepts it for 10 s more, in a fresh
    // request (the `CONNECT`) and inside the tunnel it opened alike.
    let t = now();
    let late = token(TokenOpts {
        issued_at: t - 320,
        ttl_secs: 300,
        ..Default::default()
    });
    let auth = format!("Proxy-Authorization: Bearer {late}\r\n");
    let mut tls = intercepted(&h, h.proxy.shared_port, &authority, &auth);
    let get = format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let r = request_over(&mut tls, &get);
    assert_eq!(r.status, 200, "{}", r.body_text());
    // Past the leeway both are refused.
    while now() <= t + 11 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_tunnel_refused(&h, &request_over(&mut tls, &get), "expired");
    let (_, status, text) = connect(h.proxy.shared_port, &authority, &auth);
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("expired"), "{text}");
}

/// Waits (20 s at most) until the proxy closes `tls`, a relay with nothing more to say: a read
/// ends (EOF, or the reset of a connection cut).
fn until_closed(tls: &mut Tls) {
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 64];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
            Ok(n) => panic!("the relay sent {n} unexpected bytes"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay was never ended"
        );
    }
}

/// The record of acme's tunnel or request `id`, once written (10 s at most).
fn record_when_written(h: &Https, id: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = h.proxy.audit_records("acme");
        if let Some(r) = records.iter().find(|r| id(r)) {
            return r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{records:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An opaque tunnel (its bytes relayed unread) has no inner request to refuse: it ends once its
/// identity would no longer be accepted (revoked, expired past the leeway, its key pulled), and
/// its record says why, where before it relayed on while a fresh request with its token was
/// refused.
#[test]
fn an_opaque_tunnel_ends_when_its_identity_is_no_longer_accepted() {
    let h = start_https(|spec| {
        if let Some(token) = spec.tenants.token.as_mut() {
            token.leeway = Some(Duration::from_secs(1));
        }
    });
    let authority = format!("pinned.test:{}", h.mock);
    // An opaque tunnel that works: TLS to the origin itself through it.
    let open = |token: &str| {
        let auth = format!("Proxy-Authorization: Bearer {token}\r\n");
        let (sock, status, text) = connect(h.proxy.shared_port, &authority, &auth);
        assert_eq!(status, 200, "{text}");
        let mut tls = tls_over(sock, "pinned.test", &h.origin_ca).unwrap();
        let r = request_over(
            &mut tls,
            &format!("GET /pinned/echo HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        tls
    };

    // 1. Revoked in the file while open: the relay ends within a reload and a second.
    let revoked = token(TokenOpts {
        jti: Some("opaque-revoked"),
        ..Default::default()
    });
    let mut tls = open(&revoked);
    std::fs::write(
        h.proxy.path("revoked.txt"),
        "revoked-jti-1\nopaque-revoked\n",
    )
    .unwrap();
    h.proxy.sighup();
    until_closed(&mut tls);
    let record = record_when_written(&h, |r| r["ended"] == "token_revoked");
    assert_eq!(record["method"], "CONNECT", "{record}");
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    assert_eq!(record["ended"], "token_revoked", "{record}");
    assert!(record["bytes_out"].as_u64().unwrap() > 0, "{record}");
    let (_, status, _) = connect(
        h.proxy.shared_port,
        &authority,
        &format!("Proxy-Authorization: Bearer {revoked}\r\n"),
    );
    assert_eq!(status, 407);

    // 2. Expired: a token that expires in 3 s (leeway 1 s) ends its relay then, not later.
    let t = now();
    let short = token(TokenOpts {
        issued_at: t - 297,
        ttl_secs: 300,
        jti: Some("opaque-expiring"),
        ..Default::default()
    });
    let mut tls = open(&short);
    until_closed(&mut tls);
    assert!(now() >= t + 4, "ended before its token expired");
    let record = record_when_written(&h, |r| r["ended"] == "token_expired");
    assert_eq!(record["tunnel"]["mode"], "opaque", "{record}");
    assert_eq!(record["reason"], "identity_invalid", "{record}");
}

/// An upgraded connection (a WebSocket) relays with no request to judge: it ends once its
/// identity would no longer be accepted (here its key is pulled from the JWKS), and its record
/// says why; the WebSocket of a listener bound to its workload is untouched.
#[test]
fn a_websocket_ends_when_its_identity_is_no_longer_accepted() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let by_token = token(TokenOpts {
        jti: Some("ws-1"),
        ..Default::default()
    });
    let auth = format!("Proxy-Authorization: Bearer {by_token}\r\n");
    let mut ws = intercepted(&h, h.proxy.shared_port, &authority, &auth);
    websocket_upgrade(&mut ws, &authority);
    let mut bound = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    websocket_upgrade(&mut bound, &authority);

    // `test-ed`, the key that signed the token, is pulled. Both WebSockets keep talking (a
    // frame every 200 ms, so that neither goes quiet): the token's ends, its record says why,
    // and the sidecar's (its listener is its identity) goes on.
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.proxy.path("jwks.json")).unwrap()).unwrap();
    let others: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] != "test-ed")
        .cloned()
        .collect();
    std::fs::write(
        h.proxy.path("jwks.json"),
        serde_json::json!({ "keys": others }).to_string(),
    )
    .unwrap();
    h.proxy.sighup();
    until_websocket_ends(&mut ws, Some(&mut bound));
    let record = record_when_written(&h, |r| r["ended"].is_string());
    assert_eq!(record["status"], 101, "{record}");
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    assert_eq!(record["ended"], "identity_withdrawn", "{record}");
    assert_eq!(record["tunnel"]["mode"], "intercept", "{record}");
    assert!(
        websocket_ping(&mut bound),
        "the sidecar's WebSocket was ended"
    );
}

/// Upgrades an intercepted connection to a WebSocket to the mock, and checks a frame comes back;
/// the 101's head.
fn websocket_upgrade(tls: &mut Tls, authority: &str) -> String {
    let upgrade = format!(
        "GET /v1/realtime?model=gpt-4o-realtime HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer $CRED{{openai}}\r\n\r\n"
    );
    tls.write_all(upgrade.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    assert!(websocket_ping(tls), "no frame came back");
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends a frame on an upgraded connection; whether the mock's echo came back.
fn websocket_ping(tls: &mut Tls) -> bool {
    let frame = [0x81u8, 0x81, 1, 2, 3, 4, b'q' ^ 1];
    let mut back = [0u8; 7];
    tls.write_all(&frame).is_ok()
        && tls.flush().is_ok()
        && tls.read_exact(&mut back).is_ok()
        && back == frame
}

/// Keeps the WebSockets talking (a frame every 200 ms, so that neither goes quiet) until
/// `ending` ends; `kept`, if given, must keep working meanwhile.
fn until_websocket_ends(ending: &mut Tls, mut kept: Option<&mut Tls>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while websocket_ping(ending) {
        assert!(
            std::time::Instant::now() < deadline,
            "the WebSocket was never ended"
        );
        if let Some(kept) = kept.as_deref_mut() {
            assert!(websocket_ping(kept), "the other WebSocket was ended");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An emergency forbid reaches the relays already open: after the reload, an opaque tunnel and a
/// WebSocket whose own question (`connect_opaque`, `http`) the policy now refuses end within a
/// second, their records saying `ended: policy_withdrawn`; a fresh one is refused.
#[test]
fn a_reload_that_forbids_a_relay_ends_it() {
    let h = start_https(|_| {});
    let pinned = format!("pinned.test:{}", h.mock);
    let llm = format!("llm.test:{}", h.mock);
    let bearer = token(TokenOpts::default());
    let auth = format!("Proxy-Authorization: Bearer {bearer}\r\n");
    let (sock, status, text) = connect(h.proxy.shared_port, &pinned, &auth);
    assert_eq!(status, 200, "{text}");
    let mut opaque = tls_over(sock, "pinned.test", &h.origin_ca).unwrap();
    let r = request_over(
        &mut opaque,
        &format!("GET /pinned/echo HTTP/1.1\r\nHost: {pinned}\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let mut ws = intercepted(&h, h.proxy.sidecar_port, &llm, "");
    websocket_upgrade(&mut ws, &llm);

    std::fs::write(
        h.proxy.path("policies/tenants/acme/zz-emergency.cedar"),
        r#"@id("emergency")
forbid (principal, action in [TenantProxy::Action::"connect", TenantProxy::Action::"connect_opaque", TenantProxy::Action::"http"], resource)
when { context.host == "pinned.test" || context.host == "llm.test" };
"#,
    )
    .unwrap();
    h.proxy.sighup();
    until_closed(&mut opaque);
    until_websocket_ends(&mut ws, None);
    let tunnel = record_when_written(&h, |r| r["method"] == "CONNECT" && r["ended"].is_string());
    assert_eq!(tunnel["ended"], "policy_withdrawn", "{tunnel}");
    assert_eq!(tunnel["reason"], "policy_denied", "{tunnel}");
    assert_eq!(tunnel["tunnel"]["mode"], "opaque", "{tunnel}");
    let upgrade = record_when_written(&h, |r| r["status"] == 101 && r["ended"].is_string());
    assert_eq!(upgrade["ended"], "policy_withdrawn", "{upgrade}");
    assert_eq!(upgrade["reason"], "policy_denied", "{upgrade}");
    let (_, status, _) = connect(h.proxy.shared_port, &pinned, &auth);
    assert_eq!(status, 403, "a fresh tunnel is refused");
}

/// An emergency forbid on `connect` reaches an intercepted tunnel already open: once the reload
/// applies, its next request is refused `policy_denied` (nothing reaches the host), as a fresh
/// `CONNECT` is, and its record names the forbid; a WebSocket open inside a tunnel to the host
/// ends (`policy_withdrawn`).
#[test]
fn a_reload_that_forbids_connect_refuses_the_requests_of_open_intercepted_tunnels() {
    let h = start_https(|_| {});
    let llm = format!("llm.test:{}", h.mock);
    let models = |tls: &mut Tls, n: u32| {
        request_over(
            tls,
            &format!("GET /v1/models?n={n} HTTP/1.1\r\nHost: {llm}\r\nAuthorization: Bearer $CRED{{openai}}\r\n\r\n"),
        )
    };
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &llm, "");
    let r = models(&mut tls, 0);
    assert_eq!(r.status, 200, "{}", r.body_text());
    // A WebSocket opened inside another tunnel to the host: a relay, with no request to refuse.
    let mut ws = intercepted(&h, h.proxy.sidecar_port, &llm, "");
    websocket_upgrade(&mut ws, &llm);

    std::fs::write(
        h.proxy.path("policies/tenants/acme/zz-emergency.cedar"),
        r#"@id("emergency-connect")
forbid (principal, action == TenantProxy::Action::"connect", resource)
when { context.host == "llm.test" };
"#,
    )
    .unwrap();
    h.proxy.sighup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    let refused = loop {
        let r = models(&mut tls, n);
        if r.status != 200 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the open tunnel kept serving"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    refused.assert_refused(403, "policy_denied");
    let record = record_when_written(&h, |r| {
        r["reason"] == "policy_denied" && r["method"] == "GET"
    });
    assert_eq!(record["tunnel"]["mode"], "intercept", "{record}");
    assert!(
        record.to_string().contains("emergency-connect"),
        "the record names the forbid: {record}"
    );
    let (_, status, _) = connect(h.proxy.sidecar_port, &llm, "");
    assert_eq!(status, 403, "a fresh tunnel is refused");
    // The WebSocket ends too, its record saying why.
    until_websocket_ends(&mut ws, None);
    let upgrade = record_when_written(&h, |r| r["status"] == 101 && r["ended"].is_string());
    assert_eq!(upgrade["ended"], "policy_withdrawn", "{upgrade}");
    assert_eq!(upgrade["reason"], "policy_denied", "{upgrade}");
    // It names the forbid that ended it, and the policy set that has it.
    assert!(
        upgrade["policy_ids"]
            .to_string()
            .contains("emergency-connect"),
        "{upgrade}"
    );
    assert_eq!(
        upgrade["policy_version"], record["policy_version"],
        "{upgrade}"
    );
}

/// A reload that withdraws what let a relay open, other than a policy, reaches it too: acme's
/// egress exception withdrawn ends its opaque tunnel and its WebSocket to a loopback address
/// (`ended: egress_withdrawn`); a credential bound by reload to an opaque tunnel's host ends it
/// (`ended: interception_required`), since its answers must now be scrubbed.
#[test]
fn a_reload_that_withdraws_an_exception_or_the_opaque_passage_ends_the_relay() {
    let h = start_https(|spec| {
        spec.config.egress.allow = Vec::new();
        spec.tenants.tenant("acme").egress_allow = vec!["127.0.0.1/32".into()];
    });
    let pinned = format!("pinned.test:{}", h.mock);
    let llm = format!("llm.test:{}", h.mock);
    let bearer = token(TokenOpts::default());
    let auth = format!("Proxy-Authorization: Bearer {bearer}\r\n");
    let open_opaque = || {
        let (sock, status, text) = connect(h.proxy.shared_port, &pinned, &auth);
        assert_eq!(status, 200, "{text}");
        let mut opaque = tls_over(sock, "pinned.test", &h.origin_ca).unwrap();
        let r = request_over(
            &mut opaque,
            &format!("GET /pinned/echo HTTP/1.1\r\nHost: {pinned}\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        opaque
    };
    let mut opaque = open_opaque();
    let mut ws = intercepted(&h, h.proxy.sidecar_port, &llm, "");
    websocket_upgrade(&mut ws, &llm);

    let mut tenants = h.proxy.tenants().clone();
    tenants.tenant("acme").egress_allow.clear();
    h.proxy.write_tenants(&tenants);
    until_closed(&mut opaque);
    until_websocket_ends(&mut ws, None);
    let tunnel = record_when_written(&h, |r| r["method"] == "CONNECT" && r["ended"].is_string());
    assert_eq!(tunnel["ended"], "egress_withdrawn", "{tunnel}");
    assert_eq!(tunnel["reason"], "destination_forbidden", "{tunnel}");
    let upgrade = record_when_written(&h, |r| r["status"] == 101 && r["ended"].is_string());
    assert_eq!(upgrade["ended"], "egress_withdrawn", "{upgrade}");
    assert_eq!(upgrade["reason"], "destination_forbidden", "{upgrade}");
    let (_, status, _) = connect(h.proxy.shared_port, &pinned, &auth);
    assert_eq!(status, 403, "a fresh tunnel is refused");

    // The exception back, an opaque tunnel again; then a key of acme's bound to its host.
    tenants.tenant("acme").egress_allow = vec!["127.0.0.1/32".into()];
    h.proxy.write_tenants(&tenants);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while connect(h.proxy.shared_port, &pinned, &auth).1 != 200 {
        assert!(std::time::Instant::now() < deadline, "exception never back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut opaque = open_opaque();
    std::fs::write(h.proxy.path("secrets/acme/pinned_key"), "sk-pinned-3333").unwrap();
    tenants
        .credentials()
        .files
        .push(config::FileCredential::header(
            "acme",
            "pinned_key",
            &["pinned.test"],
        ));
    h.proxy.write_tenants(&tenants);
    until_closed(&mut opaque);
    let ended: Vec<_> = h
        .proxy
        .audit_records("acme")
        .into_iter()
        .filter(|r| r["method"] == "CONNECT" && r["ended"].is_string())
        .collect();
    let tunnel = record_when_written(&h, |r| {
        r["method"] == "CONNECT" && r["ended"] == "interception_required"
    });
    assert_eq!(tunnel["reason"], "interception_unavailable", "{tunnel}");
    assert_eq!(tunnel["tunnel"]["mode"], "opaque", "{tunnel}");
    assert!(ended.len() <= 2, "{ended:#?}");
}

/// `tenant-proxy run close` reaches what a signed run has open: its WebSocket ends (its record
/// saying `ended: run_closed`), as does its streamed answer, with an SSE event saying why; the
/// same tenant's other run goes on.
#[test]
fn closing_a_run_ends_its_websockets_and_streams_already_open() {
    use std::io::BufRead;
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let run_token = |run: &'static str| {
        token(TokenOpts {
            run_id: Some(run),
            ..Default::default()
        })
    };
    let (closing, other) = (run_token("run-to-close"), run_token("run-kept"));
    let auth = |t: &str| format!("Proxy-Authorization: Bearer {t}\r\n");
    let mut ws = intercepted(&h, h.proxy.shared_port, &authority, &auth(&closing));
    websocket_upgrade(&mut ws, &authority);
    let mut kept = intercepted(&h, h.proxy.shared_port, &authority, &auth(&other));
    websocket_upgrade(&mut kept, &authority);
    // A stream of the run (60 deltas 100 ms apart) in its own tunnel, read to its first delta.
    let mut stream = intercepted(&h, h.proxy.shared_port, &authority, &auth(&closing));
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer $CRED{{openai}}\r\nContent-Type: application/json\r\nx-mock-output-tokens: 60\r\nx-mock-chunk-delay-ms: 100\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    while !line.contains("\"content\"") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no first delta");
        assert!(
            !line.starts_with("HTTP/1.1 ") || line.contains(" 200 "),
            "{line}"
        );
    }

    let (code, out) =
        h.proxy
            .admin_cli(&["run", "close", "--tenant", "acme", "--run", "run-to-close"]);
    assert_eq!(code, 0, "{out}");
    until_websocket_ends(&mut ws, Some(&mut kept));
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(!rest.contains("[DONE]"), "{rest}");
    assert!(rest.contains("\"code\":\"run_closed\""), "{rest}");
    let ws_record = record_when_written(&h, |r| r["status"] == 101 && r["ended"].is_string());
    assert_eq!(ws_record["ended"], "run_closed", "{ws_record}");
    assert_eq!(ws_record["reason"], "run_closed", "{ws_record}");
    assert_eq!(ws_record["run_id"], "run-to-close", "{ws_record}");
    let stream_record =
        record_when_written(&h, |r| r["status"] == 200 && r["ended"] == "run_closed");
    assert_eq!(stream_record["run_id"], "run-to-close", "{stream_record}");
    assert_eq!(stream_record["decision"], "deny", "{stream_record}");
    assert!(
        websocket_ping(&mut kept),
        "the other run's WebSocket was ended"
    );
}

#[test]
fn tunnels_per_tenant_are_capped() {
    let h = start_https(|spec| spec.tenant("acme").max_tunnels = Some(1));
    let authority = format!("llm.test:{}", h.mock);
    let first = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let (_, status, text) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 429, "{text}");
    assert_eq!(refusal_json(&text)["error"]["code"], "tunnel_limit");
    // Another tenant is not affected by acme's open tunnel.
    let globex = format!(
        "Proxy-Authorization: Bearer {}\r\n",
        token_for("globex", "agent")
    );
    let _other = intercepted(&h, h.proxy.shared_port, &authority, &globex);
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status, _) = connect(h.proxy.sidecar_port, &authority, "");
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_tunnels_are_closed() {
    let h = start_https(|spec| {
        spec.config.egress.tunnel_idle_timeout = Some(Duration::from_secs(1));
    });
    let authority = format!("llm.test:{}", h.mock);
    let mut tls = intercepted(&h, h.proxy.sidecar_port, &authority, "");
    let r = request_over(
        &mut tls,
        &format!("GET /v1/a HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    // Nothing for longer than the idle timeout: the proxy closes the tunnel.
    std::thread::sleep(Duration::from_millis(2500));
    let mut buf = [0u8; 1];
    let waited = std::time::Instant::now();
    let read = tls.read(&mut buf);
    // Closed (EOF or a reset), not our own read timeout running out.
    assert!(waited.elapsed() < Duration::from_secs(5), "{read:?}");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // An opaque tunnel with no traffic is closed too.
    let (mut sock, status, text) =
        connect(h.proxy.sidecar_port, &format!("pinned.test:{}", h.mock), "");
    assert_eq!(status, 200, "{text}");
    let started = std::time::Instant::now();
    assert_eq!(sock.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// An opaque tunnel still open when the drain time ends is cut, and its record says so
/// (`shutdown`, as for the HTTP requests cut then), not `allowed` as if either side had closed it.
#[test]
fn an_opaque_tunnel_cut_at_shutdown_is_recorded_as_cut() {
    let grace = Duration::from_secs(1);
    let mut h = start_https(|spec| spec.config.server.grace_period = Some(grace));
    let (mut sock, status, text) =
        connect(h.proxy.sidecar_port, &format!("pinned.test:{}", h.mock), "");
    assert_eq!(status, 200, "{text}");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    h.proxy.sigterm();
    assert!(
        h.proxy.wait_exit(grace + Duration::from_secs(5)).is_some(),
        "still running; log:\n{}",
        h.proxy.log()
    );
    let mut buf = [0u8; 1];
    assert!(matches!(sock.read(&mut buf), Ok(0) | Err(_)));
    let records = h.proxy.audit_records("acme");
    let tunnel: Vec<_> = records
        .iter()
        .filter(|r| r["method"] == "CONNECT")
        .collect();
    assert_eq!(tunnel.len(), 1, "{records:#?}");
    assert_eq!(tunnel[0]["tunnel"]["mode"], "opaque", "{}", tunnel[0]);
    assert_eq!(tunnel[0]["reason"], "shutdown", "{}", tunnel[0]);
    assert_eq!(tunnel[0]["decision"], "deny", "{}", tunnel[0]);
}

// ---------------------------------------------------------------------------------------------
// TLS session resumption: a new tunnel resumes its workload's session, never another's.

/// A Python `ssl` (OpenSSL) client: `tunnel(port, authority, sni, session, token)` opens a
/// tunnel, handshakes (offering `session`), sends one request with the `openai` handle and
/// returns what came back and the session to offer next. One context per TLS version: Python
/// offers a session only on the context that made it.
const PY_TUNNELS: &str = r#"
import json, os, socket, ssl
CA = os.environ["CA"]
def context(tls12):
    ctx = ssl.create_default_context(cafile=CA)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx
def tunnel(ctx, port, authority, sni, session=None, token=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    auth = f"Proxy-Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise Exception("closed before the CONNECT answer")
        head += b
    assert head.split()[1] == b"200", head
    t = ctx.wrap_socket(s, server_hostname=sni, session=session)
    t.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer $CRED{{openai}}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        try:
            chunk = t.recv(65536)
        except (ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        data += chunk
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    out = {
        "reused": t.session_reused,
        "version": t.version(),
        "status": int(lines[0].split()[1]),
        "auth": headers.get("x-mock-authorization-sha256"),
        "request_id": headers.get("x-request-id"),
    }
    session = t.session
    t.close()
    return out, session
"#;

/// Runs `steps` (Python using [`PY_TUNNELS`]), which prints one JSON object per line.
fn py_tunnels(h: &Https, steps: &str, env: &[(&str, String)]) -> Vec<serde_json::Value> {
    let mut env = env.to_vec();
    env.push(("CA", h.proxy.path("ca/ca.pem").display().to_string()));
    python(&format!("{PY_TUNNELS}\n{steps}"), &env)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A rustls client trusting the interception CA, with its own session store: rustls resumes
/// only sessions stored under the same config, so every tunnel of one "client" uses it.
fn resuming_client(h: &Https) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read_to_string(h.proxy.path("ca/ca.pem")).unwrap();
    let mut config =
        rustls::ClientConfig::clone(&tenant_proxy_loadtest::tls::client_config(&pem).unwrap());
    config.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(16),
    ));
    Arc::new(config)
}

/// TLS with `client` over an established tunnel, with `sni`.
fn tls_with(
    sock: TcpStream,
    sni: &str,
    client: &Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// One request with the `openai` handle in a tunnel with `client` to `llm.test` on the sidecar
/// listener; the handshake's kind and the response.
fn resumable_request(
    h: &Https,
    client: &Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, Response) {
    let authority = format!("llm.test:{}", h.mock);
    let (sock, status, text) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    let mut tls = tls_with(sock, "llm.test", client).unwrap();
    let kind = tls.conn.handshake_kind().unwrap();
    let r = request_over(
        &mut tls,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer $CRED{{openai}}\r\n\r\n"),
    );
    (kind, r)
}

fn handshakes(h: &Https, tenant: &str, kind: &str) -> f64 {
    let metrics = h.proxy.metrics();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tenant_proxy_tunnel_tls_handshakes_total{")
                && l.contains(&format!("tenant=\"{tenant}\""))
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_new_tunnel_resumes_its_tls_session_and_its_requests_run_the_same_pipeline() {
    let h = start_https(|_| {});
    let port = h.proxy.sidecar_port;
    let authority = format!("llm.test:{}", h.mock);
    let out = py_tunnels(
        &h,
        &format!(
            r#"
for tls12 in (False, True):
    ctx = context(tls12)
    first, session = tunnel(ctx, {port}, "{authority}", "llm.test")
    print(json.dumps(first))
    second, _ = tunnel(ctx, {port}, "{authority}", "llm.test", session)
    print(json.dumps(second))
"#
        ),
        &[],
    );
    assert_eq!(out.len(), 4, "{out:?}");
    let acme = seen(ACME_SECRET);
    for (i, r) in out.iter().enumerate() {
        let version = if i < 2 { "TLSv1.3" } else { "TLSv1.2" };
        assert_eq!(r["version"], version, "{r}");
        assert_eq!(r["reused"], i % 2 == 1, "the second tunnel resumes: {r}");
        // Resumed or not, the request was decided and the tenant's secret substituted.
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["auth"], acme.as_str(), "{r}");
        let rec = h
            .proxy
            .audit_record("acme", r["request_id"].as_str().unwrap());
        assert_eq!(
            (&rec["workload"], &rec["reason"], &rec["tunnel"]["mode"]),
            (&"bot".into(), &"allowed".into(), &"intercept".into()),
            "{rec}"
        );
        assert_eq!(rec["credentials"], serde_json::json!(["openai"]), "{rec}");
        // Each tunnel has its own record, resumed or not.
        let tunnel = rec["tunnel"]["id"].as_str().unwrap();
        let opened = h.proxy.audit_record("acme", tunnel);
        assert_eq!(
            (&opened["method"], &opened["status"], &opened["reason"]),
            (&"CONNECT".into(), &200.into(), &"allowed".into()),
            "{opened}"
        );
    }
    assert_eq!(handshakes(&h, "acme", "full"), 2.0);
    assert_eq!(handshakes(&h, "acme", "resumed"), 2.0);
}

#[test]
fn a_session_presented_in_a_tunnel_to_another_host_is_refused_like_any_sni_mismatch() {
    let h = start_https(|_| {});
    let other = format!("other.test:{}", h.mock);
    let client = resuming_client(&h);
    let (kind, r) = resumable_request(&h, &client);
    assert_eq!((kind, r.status), (rustls::HandshakeKind::Full, 200));
    // The session is good: it resumes in a tunnel to its own host.
    let (kind, r) = resumable_request(&h, &client);
    assert_eq!((kind, r.status), (rustls::HandshakeKind::Resumed, 200));

    // The session's SNI (llm.test) in a tunnel CONNECTed to other.test: refused at the
    // handshake, nothing read from the client, nothing forwarded.
    let (sock, status, text) = connect(h.proxy.sidecar_port, &other, "");
    assert_eq!(status, 200, "{text}");
    assert!(tls_with(sock, "llm.test", &client).is_err());
    // The same without a session to offer, for comparison.
    let (sock, status, text) = connect(h.proxy.sidecar_port, &other, "");
    assert_eq!(status, 200, "{text}");
    assert!(tls_over(sock, "llm.test", &h.proxy.path("ca/ca.pem")).is_err());

    // Both audited alike: the tunnel's own record, `host_mismatch`, no request inside.
    let recs = h.proxy.wait_audit_records("acme", 6);
    let refused: Vec<_> = recs.iter().filter(|r| r["host"] == "other.test").collect();
    assert_eq!(refused.len(), 2, "{recs:#?}");
    let shape = |r: &serde_json::Value| {
        (
            r["method"].clone(),
            r["reason"].clone(),
            r["decision"].clone(),
            r["status"].clone(),
        )
    };
    assert_eq!(shape(refused[0]), shape(refused[1]));
    assert_eq!(
        shape(refused[0]),
        (
            "CONNECT".into(),
            "host_mismatch".into(),
            "deny".into(),
            0.into()
        ),
        "{:#?}",
        refused[0]
    );
    assert_eq!(
        recs.iter().filter(|r| r["method"] != "CONNECT").count(),
        2,
        "only the two requests through llm.test tunnels reached the pipeline: {recs:#?}"
    );
    let failures = metric_sum(
        &h.proxy.metrics(),
        "tenant_proxy_tunnel_handshake_failures_total",
        "reason",
        "sni_mismatch",
    );
    assert_eq!(failures, 2.0);
}

/// A client that does not trust the proxy's CA fails its handshake inside an intercepted tunnel:
/// the tunnel's record says so (`ended: client_tls_failed`), so it is not read as a tunnel that
/// was used and closed.
#[test]
fn a_tunnel_whose_client_refused_the_proxy_ca_is_recorded_so() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let (sock, status, text) = connect(h.proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
    assert!(
        tls_over(sock, "llm.test", &h.origin_ca).is_err(),
        "the client trusted the proxy's leaf without its CA"
    );
    let record = record_when_written(&h, |r| r["method"] == "CONNECT");
    assert_eq!(record["tunnel"]["mode"], "intercept", "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["ended"], "client_tls_failed", "{record}");
}

#[test]
fn tls_sessions_never_resume_across_tenants_or_workloads() {
    let h = start_https(|_| {});
    let authority = format!("llm.test:{}", h.mock);
    let (sidecar, shared) = (h.proxy.sidecar_port, h.proxy.shared_port);
    let env = [
        ("GLOBEX", token_for("globex", "agent")),
        ("RESEARCHER", token_for("acme", "researcher")),
        ("BOT", token_for("acme", "bot")),
    ];
    // Every attempt offers a session acme/bot's tunnel just issued.
    let out = py_tunnels(
        &h,
        &format!(
            r#"
ctx = context(False)
def fresh_session():
    _, session = tunnel(ctx, {sidecar}, "{authority}", "llm.test")
    return session
for who in ("GLOBEX", "RESEARCHER", "BOT"):
    r, _ = tunnel(ctx, {shared}, "{authority}", "llm.test", fresh_session(), os.environ[who])
    r["who"] = who
    print(json.dumps(r))
"#
        ),
        &env,
    );
    let by = |who: &str| out.iter().find(|r| r["who"] == who).unwrap().clone();
    let globex = by("GLOBEX");
    // Another tenant: a full handshake, and its tunnel works as its own (its secret).
    assert_eq!(globex["reused"], false, "{globex}");
    assert_eq!(globex["status"], 200, "{globex}");
    assert_eq!(globex["auth"], seen(GLOBEX_SECRET).as_str(), "{globex}");
    // Another workload of the same tenant: a full handshake too.
    let researcher = by("RESEARCHER");
    assert_eq!(researcher["reused"], false, "{researcher}");
    assert_eq!(researcher["status"], 200, "{researcher}");
    // The same workload through another listener: the session is its own, so it resumes.
    let bot = by("BOT");
    assert_eq!(bot["reused"], true, "{bot}");
    assert_eq!(bot["status"], 200, "{bot}");
    assert_eq!(bot["auth"], seen(ACME_SECRET).as_str(), "{bot}");

    assert_eq!(handshakes(&h, "globex", "resumed"), 0.0);
    assert_eq!(handshakes(&h, "globex", "full"), 1.0);
    assert!(
        h.proxy
            .audit_records("globex")
            .iter()
            .all(|r| r["tenant"] == "globex" && r["reason"] == "allowed"),
        "globex's tunnel and request are its own"
    );
}

#[test]
fn no_tls_session_resumes_after_a_tenant_reload() {
    let h = start_https(|_| {});
    let client = resuming_client(&h);
    let (kind, _) = resumable_request(&h, &client);
    assert_eq!(kind, rustls::HandshakeKind::Full);
    let (kind, _) = resumable_request(&h, &client);
    assert_eq!(kind, rustls::HandshakeKind::Resumed);

    // A reload (the same files: a new snapshot all the same) drops every session.
    h.proxy.sighup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric_sum(
        &h.proxy.metrics(),
        "tenant_proxy_config_reloads_total",
        "result",
        "ok",
    ) < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (kind, r) = resumable_request(&h, &client);
    assert_eq!(kind, rustls::HandshakeKind::Full, "the old session is gone");
    assert_eq!(r.status, 200);
    // Sessions of the new snapshot resume again.
    let (kind, r) = resumable_request(&h, &client);
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert_eq!(r.status, 200);
}

#[test]
fn a_zero_session_lifetime_turns_resumption_off() {
    let h = start_https(|spec| {
        if let Some(i) = spec.config.intercept.as_mut() {
            i.session_lifetime = Some(Duration::ZERO);
        }
    });
    let client = resuming_client(&h);
    for _ in 0..2 {
        let (kind, r) = resumable_request(&h, &client);
        assert_eq!((kind, r.status), (rustls::HandshakeKind::Full, 200));
    }
    assert_eq!(handshakes(&h, "acme", "full"), 2.0);
}

// ---------------------------------------------------------------------------------------------
// mTLS listener: SPIFFE ID → tenant and workload.

struct Mesh {
    h: Https,
    port: u16,
    dir: tempfile::TempDir,
}

fn start_mesh() -> Mesh {
    let mesh = TestCa::new("mesh CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pair: &PemPair| {
        std::fs::write(dir.path().join(format!("{name}.pem")), &pair.cert).unwrap();
        std::fs::write(dir.path().join(format!("{name}-key.pem")), &pair.key).unwrap();
    };
    std::fs::write(dir.path().join("mesh-ca.pem"), &mesh.cert_pem).unwrap();
    // What clients trust the listener's certificate with (the bundle file may change).
    std::fs::write(dir.path().join("proxy-ca.pem"), &mesh.cert_pem).unwrap();
    write("listener", &mesh.server(&["127.0.0.1"]).unwrap());
    write(
        "acme-bot",
        &mesh
            .client("spiffe://mesh.test/tenant/acme/workload/bot")
            .unwrap(),
    );
    write(
        "foreign",
        &mesh
            .client("spiffe://elsewhere.test/tenant/acme/workload/bot")
            .unwrap(),
    );
    write(
        "unknown",
        &mesh
            .client("spiffe://mesh.test/tenant/acme/workload/ghost")
            .unwrap(),
    );
    let rogue = TestCa::new("rogue CA").unwrap();
    std::fs::write(dir.path().join("rogue-ca.pem"), &rogue.cert_pem).unwrap();
    write(
        "rogue",
        &rogue
            .client("spiffe://mesh.test/tenant/acme/workload/bot")
            .unwrap(),
    );
    let d = dir.path();
    let tls = config::ListenerTls {
        cert: d.join("listener.pem"),
        key: d.join("listener-key.pem"),
        client_ca: d.join("mesh-ca.pem"),
        spiffe_id: "spiffe://{trust_domain}/tenant/{tenant}/workload/{workload}".into(),
        trust_domain: "mesh.test".into(),
    };
    let h = start_https(|spec| {
        spec.config
            .listeners
            .push(config::Listener::mtls("mesh", tls))
    });
    let port = h.proxy.port("mesh");
    Mesh { h, port, dir }
}

impl Mesh {
    fn curl(&self, client: &str, url: &str) -> (u16, String) {
        let d = self.dir.path();
        let bundle = self
            .h
            .trust
            .iter()
            .find(|(k, _)| k == "CURL_CA_BUNDLE")
            .unwrap()
            .1
            .clone();
        let mut args = vec![
            "-x".to_string(),
            format!("https://127.0.0.1:{}", self.port),
            "--proxy-cacert".into(),
            format!("{}/proxy-ca.pem", d.display()),
            "--cacert".into(),
            bundle,
        ];
        if !client.is_empty() {
            args.extend([
                "--proxy-cert".into(),
                format!("{}/{client}.pem", d.display()),
                "--proxy-key".into(),
                format!("{}/{client}-key.pem", d.display()),
            ]);
        }
        if url.starts_with("https://") {
            // The credential is bound to llm.test; sent anywhere else it would be refused.
            args.extend(["-H".into(), "Authorization: Bearer $CRED{openai}".into()]);
        }
        args.extend(["-D".into(), "-".into(), url.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    }
}

#[test]
fn mtls_spiffe_identity_for_tunnels_and_refusals_at_the_handshake() {
    let mesh = start_mesh();
    let url = format!("https://llm.test:{}/v1/models", mesh.h.mock);

    // A workload certificate from the mesh: its tunnel is acme/bot, with acme's secret.
    let (status, out) = mesh.curl("acme-bot", &url);
    assert_eq!(status, 200, "{out}");
    assert!(
        out.contains(&format!(
            "x-mock-authorization-sha256: {}",
            seen(ACME_SECRET)
        )),
        "{out}"
    );
    let recs = mesh.h.proxy.wait_audit_records("acme", 2);
    assert!(
        recs.iter().all(|r| r["identity_source"] == "mtls"),
        "{recs:#?}"
    );
    assert!(recs.iter().all(|r| r["workload"] == "bot"), "{recs:#?}");

    // Forward mode on the same listener: same identity, from the certificate alone.
    let origin = Origin::start();
    let (status, out) = mesh.curl(
        "acme-bot",
        &format!("http://127.0.0.1:{}/public/m", origin.port),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(origin.count(), 1);
    let recs = mesh.h.proxy.wait_audit_records("acme", 3);
    assert!(
        recs.iter().all(|r| r["identity_source"] == "mtls"),
        "{recs:#?}"
    );

    // Another trust domain, a workload that does not exist: refused per request.
    for client in ["foreign", "unknown"] {
        let (status, out) = mesh.curl(client, &url);
        assert!(status == 0 || status >= 400, "{client}: {status} {out}");
        assert!(
            out.contains("identity_invalid") || status == 0,
            "{client}: {out}"
        );
    }
    // No certificate, or one from another CA: the handshake itself fails.
    for client in ["", "rogue"] {
        let (status, out) = mesh.curl(client, &url);
        assert_eq!(status, 0, "{client:?}: {out}");
    }
    // Nothing but the accepted workload's calls was audited as acme.
    let recs = mesh.h.proxy.audit_records("acme");
    assert_eq!(
        recs.iter().filter(|r| r["decision"] == "allow").count(),
        3,
        "{recs:#?}"
    );
    assert!(mesh.h.proxy.metrics().contains("mtls_handshake_failures"));

    // The mTLS listener's requests meet the same strict front: an ambiguously framed request
    // is refused, audited for the certificate's workload, and the connection closed; nothing
    // reaches the origin.
    let smuggle = format!(
        "POST http://127.0.0.1:{o}/public/smuggle HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET http://127.0.0.1:{o}/public/behind HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n",
        o = origin.port
    );
    let mut tls = mesh.tls("acme-bot");
    tls.write_all(smuggle.as_bytes()).unwrap();
    let mut reader = BufReader::new(tls);
    let r = read_response(&mut reader).unwrap();
    r.assert_refused(400, "bad_framing");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "closed after the refusal: {}",
        String::from_utf8_lossy(&rest)
    );
    let rec = mesh.h.proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        (rec["identity_source"].as_str(), rec["reason"].as_str()),
        (Some("mtls"), Some("bad_framing"))
    );
    assert_eq!(
        origin.count(),
        1,
        "only the one allowed request ever reached the origin"
    );
}

/// A keep-alive connection is as good as its client certificate, judged at every request: once
/// the client trust bundle is replaced by one that does not verify it, the next request on the
/// open connection is refused, audited for the workload the certificate named, and the
/// connection closed (the client connects again with a certificate the bundle trusts).
#[test]
fn an_open_mtls_connection_loses_its_identity_with_its_ca() {
    let mesh = start_mesh();
    let origin = Origin::start();
    let get = |path: &str| {
        format!(
            "GET http://127.0.0.1:{o}{path} HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n",
            o = origin.port
        )
    };
    let mut conn = BufReader::new(mesh.tls("acme-bot"));
    conn.get_mut()
        .write_all(get("/public/before").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut conn).unwrap().status, 200);

    // The bundle now trusts another CA only.
    let d = mesh.dir.path();
    std::fs::copy(d.join("rogue-ca.pem"), d.join("mesh-ca.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !mesh.h.proxy.log().contains("mTLS configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    conn.get_mut()
        .write_all(get("/public/after").as_bytes())
        .unwrap();
    let r = read_response(&mut conn).unwrap();
    let body = r.assert_refused(407, "identity_invalid");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no longer trusted")),
        "{body}"
    );
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the refusal");
    assert_eq!(origin.count(), 1);
    let rec = mesh.h.proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        (
            rec["workload"].as_str(),
            rec["identity_source"].as_str(),
            rec["reason"].as_str()
        ),
        (Some("bot"), Some("mtls"), Some("identity_invalid"))
    );
}

/// The value of the unlabelled counter `family` in `metrics`.
fn counter(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(family)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{family}` in:\n{metrics}"))
}

/// A connection closed before its first byte (`/readyz`'s probe of every listener, a load
/// balancer's TCP check, a port scan) is not a failed handshake: nothing is counted or logged.
#[test]
fn probes_that_send_nothing_are_not_failed_mtls_handshakes() {
    let mesh = start_mesh();
    let failures = || {
        counter(
            &mesh.h.proxy.metrics(),
            "tenant_proxy_mtls_handshake_failures_total",
        )
    };
    assert_eq!(mesh.h.proxy.readyz(), 200);
    for _ in 0..20 {
        drop(TcpStream::connect(("127.0.0.1", mesh.port)).unwrap());
    }
    // What a failed handshake is still counts: plain bytes where a ClientHello is due.
    let mut s = TcpStream::connect(("127.0.0.1", mesh.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = s.read_to_end(&mut Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failures() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed handshake was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(failures(), 1.0, "probes were counted as failed handshakes");
}

/// Anyone who reaches the mTLS listener can fail a handshake, before any identity and as often
/// as they like. Each failure is counted, but the log gets a sample: one line per listener a
/// second on each worker, the rest counted as suppressed, so such a flood cannot fill the log
/// queue and push other lines out.
#[test]
fn a_burst_of_failed_mtls_handshakes_writes_a_bounded_number_of_lines() {
    let mesh = start_mesh();
    let failures_before = counter(
        &mesh.h.proxy.metrics(),
        "tenant_proxy_mtls_handshake_failures_total",
    );
    const BURST: usize = 300;
    let started = std::time::Instant::now();
    for _ in 0..BURST {
        // Plain HTTP where a TLS ClientHello is due: the handshake fails at its first record.
        let mut s = TcpStream::connect(("127.0.0.1", mesh.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        // The proxy closes the connection once the handshake has failed.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // Counted once the handshake's error is back on the proxy's side, which may be a moment
    // after the client saw the connection close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = mesh.h.proxy.metrics();
        let failures =
            counter(&metrics, "tenant_proxy_mtls_handshake_failures_total") - failures_before;
        if failures >= BURST as f64 {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{failures} counted");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = mesh.h.proxy.log();
    let lines = log.matches("mTLS handshake refused").count() as u64;
    // The test proxy has 2 worker threads per listener: at most one line each a second (and
    // one more each for a second the burst straddles).
    assert!(
        lines >= 1 && lines <= 2 * (seconds + 1),
        "{lines} lines in {seconds} s:\n{log}"
    );
    assert!(
        counter(&metrics, "tenant_proxy_log_lines_suppressed_total")
            >= (BURST as u64 - lines) as f64,
        "{metrics}"
    );
    // The line still says where and why.
    let line = log
        .lines()
        .find(|l| l.contains("mTLS handshake refused"))
        .unwrap();
    assert!(
        line.contains("listener=mesh") && line.contains("error="),
        "{line}"
    );
}

/// `/readyz`'s `last_reload`.
fn last_reload(proxy: &Proxy) -> serde_json::Value {
    raw_request_to(
        proxy.admin_addr(),
        "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .json()["last_reload"]
        .clone()
}

/// A client trust bundle replaced by a broken file keeps the previous bundle (so every CA the
/// edit meant to remove) trusted; that must be alertable like a rejected tenant file: counted
/// as a failed reload, `config_last_reload_successful` 0 and `/readyz` saying so, until a
/// good bundle is read. An emptied bundle trusts no one.
#[test]
fn a_broken_client_bundle_shows_as_a_failed_reload_until_fixed() {
    let mesh = start_mesh();
    let proxy = &mesh.h.proxy;
    let url = format!("https://llm.test:{}/v1/models", mesh.h.mock);
    let errors = |m: &str| metric_sum(m, "tenant_proxy_config_reloads_total", "result", "error");
    let errors_before = errors(&proxy.metrics());

    let d = mesh.dir.path();
    let good = std::fs::read(d.join("mesh-ca.pem")).unwrap();
    std::fs::write(
        d.join("mesh-ca.tmp"),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::rename(d.join("mesh-ca.tmp"), d.join("mesh-ca.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !proxy
        .metrics()
        .contains("\ntenant_proxy_config_last_reload_successful 0\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload does not show:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(errors(&proxy.metrics()) > errors_before);
    let last = last_reload(proxy);
    assert_eq!(
        (&last["ok"], &last["problems"]),
        (&serde_json::json!(false), &serde_json::json!(1)),
        "{last}"
    );
    assert!(proxy.log().contains("mTLS configuration not reloaded"));
    // The previous bundle still serves.
    let (status, out) = mesh.curl("acme-bot", &url);
    assert_eq!(status, 200, "{out}");

    // Fixed: the next reload clears it.
    std::fs::write(d.join("mesh-ca.tmp"), &good).unwrap();
    std::fs::rename(d.join("mesh-ca.tmp"), d.join("mesh-ca.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !proxy
        .metrics()
        .contains("\ntenant_proxy_config_last_reload_successful 1\n")
    {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = last_reload(proxy);
    assert_eq!(
        (&last["ok"], &last["problems"]),
        (&serde_json::json!(true), &serde_json::json!(0)),
        "{last}"
    );
    let (status, out) = mesh.curl("acme-bot", &url);
    assert_eq!(status, 200, "{out}");

    // Emptied (every CA pulled after a compromise): no one is trusted until a CA is published,
    // as an emptied JWKS refuses every token, and the reload shows as failed.
    std::fs::write(d.join("mesh-ca.tmp"), "# pulled\n").unwrap();
    std::fs::rename(d.join("mesh-ca.tmp"), d.join("mesh-ca.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mesh.curl("acme-bot", &url).0 == 200 {
        assert!(std::time::Instant::now() < deadline, "still trusted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proxy
        .metrics()
        .contains("\ntenant_proxy_config_last_reload_successful 0\n"));
}

impl Mesh {
    /// A TLS connection to the mTLS listener with `client`'s certificate.
    fn tls(&self, client: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let d = self.dir.path();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(d.join("mesh-ca.pem")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(d.join(format!("{client}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(d.join(format!("{client}-key.pem"))).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let sock = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls
    }
}

// ---------------------------------------------------------------------------------------------
// The SSRF guard.

/// A proxy whose policies permit everything, with exactly the `[egress]` table given (not
/// even the harness's loopback exception).
fn open_proxy(egress: config::Egress) -> Proxy {
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-open",
        ..Default::default()
    };
    spec.config.egress = egress;
    Proxy::start(spec)
}

/// `[egress] hosts`: static answers by name.
fn answers(names: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    names
        .iter()
        .map(|(name, ips)| {
            (
                (*name).to_string(),
                ips.iter().map(|ip| (*ip).to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn every_spelling_of_loopback_is_refused_after_resolution_without_traffic() {
    let origin = Origin::start();
    let o = origin.port;
    // Policy permits everything: only the egress guard stands between the agent and loopback.
    let proxy = open_proxy(config::Egress {
        connect_ports: Some(vec![443]),
        ..Default::default()
    });
    for host in [
        "127.0.0.1".to_string(),
        "2130706433".into(),
        "0x7f000001".into(),
        "127.1".into(),
        "0177.0.0.1".into(),
        "[::ffff:127.0.0.1]".into(),
        "[::1]".into(),
        "localhost".into(),
        format!("127.0.0.1:{}", proxy.admin_port),
    ] {
        let authority = if host.contains(':') && !host.starts_with('[') {
            host.clone()
        } else {
            format!("{host}:{o}")
        };
        let r = forward_get(
            proxy.sidecar_port,
            &format!("http://{authority}/x"),
            None,
            "",
        );
        let body = r.assert_refused(403, "destination_forbidden");
        let message = body["error"]["message"].as_str().unwrap().to_string();
        assert!(
            !message.contains("127.0.0.1"),
            "the address is not disclosed: {message}"
        );
    }
    assert_eq!(origin.count(), 0, "nothing reached the loopback origin");
    let recs = proxy.wait_audit_records("acme", 9);
    assert!(recs.iter().all(|r| r["reason"] == "destination_forbidden"));
    // The policy and the record see the address, never the spelling: a `forbid` on
    // `127.0.0.1` or `::1` is one on all of them.
    // (Sorted: each request's record is written once it is answered, on whichever worker
    // served its connection, so two in a row may be written in either order.)
    let mut hosts: Vec<&str> = recs.iter().map(|r| r["host"].as_str().unwrap()).collect();
    hosts.sort_unstable();
    assert_eq!(
        hosts,
        [
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "::1",
            "localhost",
        ],
        "{recs:?}"
    );
}

#[test]
fn injected_answers_for_private_ranges_are_refused_on_every_path() {
    let origin = Origin::start();
    let o = origin.port;
    let proxy = open_proxy(config::Egress {
        connect_ports: Some(vec![443, o]),
        hosts: answers(&[
            ("meta.test", &["169.254.169.254"]),
            ("ten.test", &["10.1.2.3"]),
            ("cgnat.test", &["100.64.0.1"]),
            ("ula.test", &["fc00::1"]),
            ("linklocal6.test", &["fe80::1"]),
            ("mapped.test", &["::ffff:10.0.0.1"]),
            ("nat64.test", &["64:ff9b::a00:1"]),
            ("sixtofour.test", &["2002:a00:1::1"]),
            ("teredo.test", &["2001:0:4136:e378:8000:63bf:f5ff:fffe"]),
            ("mcast.test", &["224.0.0.1"]),
            ("zero.test", &["0.0.0.0"]),
            ("mixed.test", &["93.184.216.34", "192.168.1.1"]),
            ("loop.test", &["127.0.0.1"]),
        ]),
        ..Default::default()
    });
    let names = [
        "meta.test",
        "ten.test",
        "cgnat.test",
        "ula.test",
        "linklocal6.test",
        "mapped.test",
        "nat64.test",
        "sixtofour.test",
        "teredo.test",
        "mcast.test",
        "zero.test",
        "mixed.test",
        "loop.test",
    ];
    for name in names {
        // Plain forward mode.
        let r = forward_get(
            proxy.sidecar_port,
            &format!("http://{name}:{o}/x"),
            None,
            "",
        );
        r.assert_refused(403, "destination_forbidden");
        // And a tunnel, refused before `200 Connection established`.
        let (_, status, text) = connect(proxy.sidecar_port, &format!("{name}:{o}"), "");
        assert_eq!(status, 403, "{name}: {text}");
        assert_eq!(
            refusal_json(&text)["error"]["code"],
            "destination_forbidden",
            "{name}"
        );
    }
    // A name that does not resolve is unreachable, not forbidden.
    let r = forward_get(
        proxy.sidecar_port,
        "http://does-not-exist.invalid/x",
        None,
        "",
    );
    r.assert_refused(502, "upstream_unreachable");
    assert_eq!(origin.count(), 0);
    // Each refusal is counted once, whichever path it came by: 13 requests and 13 tunnels.
    let metrics = proxy.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_proxy_egress_refusals_total",
            "tenant",
            "acme"
        ),
        (2 * names.len()) as f64,
        "{metrics}"
    );
}

#[test]
fn explicit_exceptions_open_exactly_what_they_name() {
    let origin = Origin::start();
    let o = origin.port;
    // A host:port exception: this name on this port, nothing else.
    let proxy = open_proxy(config::Egress {
        hosts: answers(&[("svc.internal", &["127.0.0.1"])]),
        allow: vec![format!("svc.internal:{o}")],
        ..Default::default()
    });
    let ok = forward_get(
        proxy.sidecar_port,
        &format!("http://svc.internal:{o}/acme/a"),
        None,
        "",
    );
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    forward_get(
        proxy.sidecar_port,
        &format!("http://127.0.0.1:{o}/acme/b"),
        None,
        "",
    )
    .assert_refused(403, "destination_forbidden");
    assert_eq!(origin.count(), 1);
}
