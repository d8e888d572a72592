//! Transparent capture end to end, in a network namespace each test creates (the pod of the
//! sidecar shape): the proxy runs inside it as uid 1337 on a `kind = "transparent"` listener,
//! `tenant-proxy sidecar-init --apply` installs the capture rules there, and clients that know
//! nothing of any proxy (a Go program, curl `--noproxy '*'`, Python with no proxy settings)
//! call origins on the far end of a veth pair. Each call is captured, decided, substituted and
//! audited under the listener's binding; the proxy's own upstream connections are not captured.
//!
//! The tests skip, saying why, where namespaces cannot be created (no root, no `ip`).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use tenant_proxy_loadtest::tls::TestCa;

use crate::support::*;

const ACME_SECRET: &str = "sk-acme-live-capture-000000000000";
const GLOBEX_SECRET: &str = "sk-globex-live-capture-1111111111";
/// The uid the proxy runs as, which the capture rules let through (the manifests' too).
const PROXY_UID: &str = "1337";

/// Dropped in field order: the proxy stops before its namespace goes.
struct Capture {
    proxy: Proxy,
    ns: Netns,
    /// The loadtest mock, plain, on the veth's host end (IPv4 and IPv6).
    plain: u16,
    plain6: u16,
    /// The loadtest mock over TLS (certificate for llm.test).
    tls: u16,
    /// The loadtest mock over TLS on the IPv6 host end (certificate for llm6.test).
    tls6: u16,
    /// Echo servers: one policy lets pass opaquely, one it does not.
    echo_open: u16,
    echo_closed: u16,
    /// The interception CA plus the system roots (`tenant-proxy ca env`'s bundle).
    bundle: PathBuf,
}

/// What the mock reports for the `Authorization: Bearer {secret}` it received.
fn seen(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("Bearer {secret}").as_bytes()))
}

const CHAT: &str =
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":7}"#;

/// A line-echo server on `ip`; its port.
fn echo_on(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let _ = (&stream).write_all(format!("echo {line}").as_bytes());
                    line.clear();
                }
            });
        }
    });
    port
}

/// The namespace, origins, the proxy inside the namespace as uid 1337, and the capture rules
/// applied with `backend`; `None` (after saying why) where namespaces cannot be created.
fn start_capture(test: &str, backend: &str) -> Option<Capture> {
    let ns = Netns::create_or_skip(test)?;
    ns.hosts(&[
        ("llm.test", ns.host_ip),
        ("other.test", ns.host_ip),
        ("llm6.test", ns.host_ip6),
    ]);
    let ca = TestCa::new("tenant-proxy capture test origin CA").unwrap();
    let plain = start_mock_on(ns.host_ip);
    let plain6 = start_mock_on(ns.host_ip6);
    let tls = start_mock_tls_on(ns.host_ip, &ca.server(&["llm.test"]).unwrap());
    let tls6 = start_mock_tls_on(ns.host_ip6, &ca.server(&["llm6.test"]).unwrap());
    let (echo_open, echo_closed) = (echo_on(ns.host_ip), echo_on(ns.host_ip));
    let origin_ca_pem = ca.cert_pem.clone();

    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-https",
        ..Default::default()
    };
    spec.config.listeners.push(config::Listener::transparent(
        "capture",
        "[::]:0".parse().unwrap(),
        "acme",
        "bot",
    ));
    // The admin port on the namespace's veth address, so the harness reaches it from outside.
    spec.config.admin.listen = Some(SocketAddr::new(ns.ns_ip, 0));
    spec.config.egress.allow = vec![
        "127.0.0.1/32".into(),
        format!("{}/32", ns.host_ip),
        format!("{}/128", ns.host_ip6),
    ];
    spec.config.egress.connect_ports = Some(vec![443, tls, tls6, echo_open, echo_closed]);
    for (host, ip) in [
        ("llm.test", ns.host_ip),
        ("llm6.test", ns.host_ip6),
        // Resolves elsewhere than llm.test: a `Host: other.test` sent to llm.test's address
        // is a spoof.
        ("other.test", "127.0.0.1".parse().unwrap()),
    ] {
        spec.config
            .egress
            .hosts
            .insert(host.into(), vec![ip.to_string()]);
    }
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    for tenant in ["acme", "globex"] {
        credentials.files.push(config::FileCredential::header(
            tenant,
            "openai",
            &["llm.test", "llm6.test"],
        ));
    }
    spec.command_prefix = [
        "ip",
        "netns",
        "exec",
        &ns.name,
        "setpriv",
        "--reuid",
        PROXY_UID,
        "--regid",
        PROXY_UID,
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec();
    let host_ip = ns.host_ip;
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
                "e2e capture CA",
                "--permit",
                "llm.test",
                "--permit",
                "llm6.test",
            ],
            "",
        );
        assert_eq!(code, 0, "{out}");
        for (tenant, value) in [("acme", ACME_SECRET), ("globex", GLOBEX_SECRET)] {
            std::fs::create_dir_all(dir.join("secrets").join(tenant)).unwrap();
            std::fs::write(dir.join("secrets").join(tenant).join("openai"), value).unwrap();
        }
        // Plain HTTP to the test names, and the raw address for what is neither HTTP nor TLS
        // (opaque only on one port).
        std::fs::write(
            dir.join("policies/tenants/acme/capture.cedar"),
            format!(
                r#"@id("capture-plain")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"http", resource)
when {{
  context.scheme == "http" &&
  (resource == TenantProxy::Destination::"llm.test" ||
   resource == TenantProxy::Destination::"llm6.test" ||
   resource == TenantProxy::Destination::"other.test")
}};
@id("capture-raw")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"connect", resource)
when {{ resource == TenantProxy::Destination::"{host_ip}" }};
@id("capture-raw-opaque")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"connect_opaque", resource)
when {{ resource == TenantProxy::Destination::"{host_ip}" && context.port == {echo_open} }};
// TLS without SNI is decided on the address: relayed opaquely to the TLS origin's address.
@id("capture-no-sni-opaque")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"connect_opaque", resource)
when {{ resource == TenantProxy::Destination::"{host_ip}" && context.port == {tls} }};
// TLS over IPv6, by name.
@id("capture-tls6")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"connect", resource)
when {{ resource == TenantProxy::Destination::"llm6.test" }};
@id("capture-https6")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"http", resource)
when {{ context.scheme == "https" && resource == TenantProxy::Destination::"llm6.test" }};
"#
            ),
        )
        .unwrap();
        // The proxy runs as its own uid, like the sidecar.
        let status = Command::new("chown")
            .args(["-R", &format!("{PROXY_UID}:{PROXY_UID}")])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    });
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &[
            "ca",
            "env",
            "--ca",
            "ca/ca.pem",
            "--bundle-out",
            "bundle.pem",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    let bundle = proxy.path("bundle.pem");
    assert!(bundle.is_file(), "{out}");

    // The init container's step, in the namespace.
    let port = proxy.port("capture").to_string();
    let bin = proxy_bin().to_str().unwrap().to_string();
    let applied = ns
        .command(&[
            &bin,
            "sidecar-init",
            "--port",
            &port,
            "--proxy-uid",
            PROXY_UID,
            "--backend",
            backend,
            "--apply",
        ])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "sidecar-init --apply failed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    Some(Capture {
        proxy,
        ns,
        plain,
        plain6,
        tls,
        tls6,
        echo_open,
        echo_closed,
        bundle,
    })
}

/// curl inside the namespace, never through a proxy: (status, headers and body).
fn curl_in(c: &Capture, args: &[&str]) -> (u16, String) {
    let bundle = c.bundle.to_str().unwrap();
    let mut all = vec![
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "20",
        "-D",
        "-",
        "--cacert",
        bundle,
        "-w",
        "\nstatus=%{http_code}",
    ];
    all.extend_from_slice(args);
    let out = c.ns.command(&all).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .rsplit_once("status=")
        .and_then(|(_, s)| s.trim().parse().ok())
        .unwrap_or(0);
    (status, text + &String::from_utf8_lossy(&out.stderr))
}

/// A Go program using the default HTTP client (no proxy in its environment): POSTs the chat
/// body to each URL with the credential handle; prints `go STATUS SHA` per URL.
fn go_client(dir: &Path) -> PathBuf {
    let src = dir.join("client.go");
    std::fs::write(
        &src,
        r#"package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
)

func main() {
	for _, url := range os.Args[1:] {
		req, _ := http.NewRequest("POST", url, strings.NewReader(os.Getenv("BODY")))
		req.Header.Set("Authorization", "Bearer $CRED{openai}")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println("go error", err)
			continue
		}
		resp.Body.Close()
		fmt.Println("go", resp.StatusCode, resp.Header.Get("x-mock-authorization-sha256"))
	}
}
"#,
    )
    .unwrap();
    let bin = dir.join("go-client");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .output()
        .expect("go is installed (scripts/test.sh installs golang-go)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn records_by_id(records: &[serde_json::Value], id: &str) -> serde_json::Value {
    records
        .iter()
        .find(|r| r["request_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no record {id} in {records:#?}"))
}

#[test]
fn proxy_unaware_clients_are_captured_decided_substituted_and_audited() {
    let Some(c) = start_capture(
        "transparent::proxy_unaware_clients_are_captured_decided_substituted_and_audited",
        "nft",
    ) else {
        return;
    };
    let acme = seen(ACME_SECRET);
    let plain_url = format!("http://llm.test:{}/v1/chat/completions", c.plain);
    let tls_url = format!("https://llm.test:{}/v1/chat/completions", c.tls);

    // curl, plain and TLS, with no proxy: the agent holds only the handle.
    for url in [&plain_url, &tls_url] {
        let (status, text) = curl_in(
            &c,
            &[
                "-H",
                "Authorization: Bearer $CRED{openai}",
                "-H",
                "Content-Type: application/json",
                "-d",
                CHAT,
                url,
            ],
        );
        assert_eq!(status, 200, "curl {url}: {text}");
        assert!(
            text.to_lowercase()
                .contains(&format!("x-mock-authorization-sha256: {acme}")),
            "curl {url}: {text}"
        );
    }

    // Python requests, no proxy settings; it trusts the bundle like the agent container does.
    let py = c.ns.run(&[
        "env",
        &format!("REQUESTS_CA_BUNDLE={}", c.bundle.display()),
        &format!("PLAIN={plain_url}"),
        &format!("TLS={tls_url}"),
        "python3",
        "-c",
        r#"
import os, requests
s = requests.Session()
s.trust_env = True
assert not requests.utils.get_environ_proxies(os.environ["TLS"]), "a proxy is configured"
h = {"Authorization": "Bearer $CRED{openai}"}
body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}
for name in ("PLAIN", "TLS"):
    r = s.post(os.environ[name], json=body, headers=h, timeout=20)
    print("python", name, r.status_code, r.headers.get("x-mock-authorization-sha256"))
"#,
    ]);
    for name in ["PLAIN", "TLS"] {
        assert!(py.contains(&format!("python {name} 200 {acme}")), "{py}");
    }

    // A Go program with the default client (Go never proxies anything here: no variables).
    let dir = tempfile::tempdir().unwrap();
    let go = go_client(dir.path());
    let out = c.ns.run(&[
        "env",
        &format!("SSL_CERT_FILE={}", c.bundle.display()),
        &format!("BODY={CHAT}"),
        go.to_str().unwrap(),
        &plain_url,
        &tls_url,
    ]);
    assert_eq!(
        out.lines()
            .filter(|l| *l == format!("go 200 {acme}"))
            .count(),
        2,
        "go: {out}"
    );

    // IPv6: redirected to [::1] and recovered with IP6T_SO_ORIGINAL_DST.
    let url6 = format!("http://llm6.test:{}/v1/chat/completions", c.plain6);
    let (status, text) = curl_in(
        &c,
        &[
            "-6",
            "-H",
            "Content-Type: application/json",
            "-d",
            CHAT,
            &url6,
        ],
    );
    assert_eq!(status, 200, "curl -6: {text}");

    // Identity is the listener's binding: a token for another tenant in captured traffic is
    // not believed, and acme's secret (never globex's) is what goes upstream.
    let globex_token = token_for("globex", "agent");
    let (status, text) = curl_in(
        &c,
        &[
            "-H",
            &format!("Proxy-Authorization: Bearer {globex_token}"),
            "-H",
            "Authorization: Bearer $CRED{openai}",
            "-H",
            "Content-Type: application/json",
            "-d",
            CHAT,
            &plain_url,
        ],
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.to_lowercase().contains(&acme), "{text}");
    assert!(
        !text.to_lowercase().contains(&seen(GLOBEX_SECRET)),
        "{text}"
    );

    // Policy decides captured calls like any other.
    let forbidden = format!("http://llm.test:{}/forbidden/x", c.plain);
    let (status, text) = curl_in(&c, &[&forbidden]);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("policy_denied"), "{text}");

    // No host spoofing: a `Host` that resolves elsewhere than the address dialed is refused.
    let (status, text) = curl_in(
        &c,
        &["-H", &format!("Host: other.test:{}", c.plain), &plain_url],
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("host_mismatch"), "{text}");
    let spoof_id = text
        .split("\"request_id\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();

    // Neither HTTP nor TLS: relayed where policy permits `connect_opaque` on the address and
    // port, refused (and audited) elsewhere.
    let raw = format!(
        r#"
import socket, sys
for port in ({open}, {closed}):
    s = socket.create_connection(("{ip}", port), timeout=10)
    s.sendall(b"HELLO\n")
    try:
        got = s.recv(100)
    except Exception as e:
        got = repr(e).encode()
    print(port, got)
"#,
        open = c.echo_open,
        closed = c.echo_closed,
        ip = c.ns.host_ip
    );
    let out = c.ns.run(&["python3", "-c", &raw]);
    assert!(
        out.contains(&format!("{} b'echo HELLO\\n'", c.echo_open)),
        "{out}"
    );
    assert!(out.contains(&format!("{} b''", c.echo_closed)), "{out}");

    // A connection made to the listener itself (not redirected: loopback is let through) has
    // nowhere to go: refused and audited, never served.
    let direct = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: llm.test\r\n\r\n")
try:
    got = s.recv(100)
except ConnectionResetError:
    got = b""
print("direct", got)
"#,
        port = c.proxy.port("capture")
    );
    let out = c.ns.run(&["python3", "-c", &direct]);
    assert!(out.contains("direct b''"), "{out}");

    // Everything is in acme's audit trail, under the capture listener.
    // 8 calls, 3 TLS connections, 2 refused requests, 2 raw connections and the direct one.
    let records = c.proxy.wait_audit_records("acme", 16);
    // (By status: a client that closes as soon as it has read its answer can race the
    // record's outcome to `client_closed`, as on any listener.)
    let posts: Vec<_> = records
        .iter()
        .filter(|r| r["method"] == "POST" && r["status"] == 200)
        .collect();
    assert_eq!(posts.len(), 8, "{records:#?}");
    for r in &posts {
        assert_eq!(r["listener"], "capture", "{r}");
        assert_eq!(r["workload"], "bot", "{r}");
        assert_eq!(r["usage"]["output_tokens"], 7, "{r}");
    }
    let substituted = posts
        .iter()
        .filter(|r| r["credentials"] == serde_json::json!(["openai"]))
        .count();
    assert_eq!(
        substituted, 7,
        "all but the IPv6 call carried the handle: {records:#?}"
    );
    let intercepted = posts
        .iter()
        .filter(|r| r["tunnel"]["mode"] == "intercept")
        .count();
    assert_eq!(intercepted, 3, "curl, Python and Go over TLS: {records:#?}");
    let spoof = records_by_id(&records, &spoof_id);
    assert_eq!(spoof["reason"], "host_mismatch", "{spoof}");
    let reasons: Vec<&str> = records
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"policy_denied"), "{reasons:?}");
    assert!(reasons.contains(&"interception_unavailable"), "{reasons:?}");
    // The direct connection, once: the readiness probe's connection (which sends nothing) has
    // no record.
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "destination_forbidden")
            .count(),
        1,
        "{reasons:?}"
    );
    let opaque = records
        .iter()
        .find(|r| r["tunnel"]["mode"] == "opaque")
        .unwrap_or_else(|| panic!("no opaque relay record: {records:#?}"));
    assert_eq!(opaque["host"], c.ns.host_ip.to_string(), "{opaque}");
    assert!(c.proxy.audit_records("globex").is_empty());
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(ACME_SECRET) && !c.proxy.log().contains(ACME_SECRET));
}

/// A TLS client in the namespace that sends a ClientHello without SNI to `ip:port`, verifying
/// the server against `ca` (the origin's CA, not the interception CA): `tls ok <status line>`
/// when the handshake and a request went through, `tls refused <why>` otherwise.
fn no_sni_client(c: &Capture, ip: IpAddr, port: u16, ca: &Path) -> String {
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{ca}")
ctx.check_hostname = False  # no name to check: no SNI is sent
try:
    s = socket.create_connection(("{ip}", {port}), timeout=10)
    t = ctx.wrap_socket(s, server_hostname=None)
    t.sendall(b"GET /v1/models HTTP/1.1\r\nHost: llm.test\r\nConnection: close\r\n\r\n")
    print("tls ok", t.recv(200).split(b"\r\n")[0].decode())
except Exception as e:
    print("tls refused", type(e).__name__)
"#,
        ca = ca.display()
    );
    c.ns.run(&["python3", "-c", &script])
}

#[test]
fn captured_tls_without_sni_is_decided_on_the_address_and_tls_over_ipv6_is_intercepted() {
    let Some(c) = start_capture(
        "transparent::captured_tls_without_sni_is_decided_on_the_address_and_tls_over_ipv6_is_intercepted",
        "nft",
    ) else {
        return;
    };
    let origin_ca = c.proxy.path("origin-ca.pem");
    // No SNI, to an address whose port policy lets pass opaquely: relayed untouched (the
    // client verifies the origin's own certificate, so nothing was intercepted).
    let out = no_sni_client(&c, c.ns.host_ip, c.tls, &origin_ca);
    assert!(out.contains("tls ok HTTP/1.1 200"), "{out}");
    // No SNI, to an IPv6 address policy does not permit (only the name llm6.test is): refused
    // on the address, though llm6.test's origin listens there.
    let out = no_sni_client(&c, c.ns.host_ip6, c.tls6, &origin_ca);
    assert!(out.contains("tls refused"), "{out}");

    // TLS over IPv6 with SNI: captured, SNI checked against the original [v6] address,
    // intercepted, substituted.
    let url6 = format!("https://llm6.test:{}/v1/chat/completions", c.tls6);
    let (status, text) = curl_in(
        &c,
        &[
            "-6",
            "-H",
            "Authorization: Bearer $CRED{openai}",
            "-H",
            "Content-Type: application/json",
            "-d",
            CHAT,
            &url6,
        ],
    );
    assert_eq!(status, 200, "curl -6 https: {text}");
    assert!(text.to_lowercase().contains(&seen(ACME_SECRET)), "{text}");
    // An SNI that is not what the IPv6 address it was sent to serves (llm.test resolves to
    // the IPv4 host end) is refused.
    let spoof = format!("https://llm.test:{}/v1/chat/completions", c.tls6);
    let (status, text) = curl_in(
        &c,
        &[
            "-6",
            "--connect-to",
            &format!("llm.test:{}:[{}]:{}", c.tls6, c.ns.host_ip6, c.tls6),
            &spoof,
        ],
    );
    assert_eq!(status, 0, "the tunnel is closed before any TLS: {text}");

    let records = c.proxy.wait_audit_records("acme", 4);
    // The opaque relay was decided on the address and port, with no name.
    let opaque = records
        .iter()
        .find(|r| r["tunnel"]["mode"] == "opaque" && r["port"] == c.tls)
        .unwrap_or_else(|| panic!("no opaque relay to the TLS port: {records:#?}"));
    assert_eq!(opaque["host"], c.ns.host_ip.to_string(), "{opaque}");
    assert!(
        opaque["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("capture-no-sni-opaque")),
        "{opaque}"
    );
    // The refused one names the IPv6 address it was decided on.
    let v6 = c.ns.host_ip6.to_string();
    let refused = records
        .iter()
        .find(|r| r["host"] == v6.as_str())
        .unwrap_or_else(|| panic!("no record of {v6}: {records:#?}"));
    assert_eq!(
        (refused["reason"].as_str(), refused["port"].as_u64()),
        (Some("policy_denied"), Some(u64::from(c.tls6))),
        "{refused}"
    );
    assert_eq!(refused["listener"], "capture", "{refused}");
    // The SNI spoof over IPv6 is refused as a host mismatch.
    let spoofed = records
        .iter()
        .find(|r| r["host"] == "llm.test" && r["port"] == c.tls6)
        .unwrap_or_else(|| panic!("no record of the spoof: {records:#?}"));
    assert_eq!(spoofed["reason"], "host_mismatch", "{spoofed}");
    // The IPv6 request went through interception with the credential.
    let post = records
        .iter()
        .find(|r| r["method"] == "POST" && r["host"] == "llm6.test")
        .unwrap_or_else(|| panic!("no IPv6 TLS request: {records:#?}"));
    assert_eq!(post["status"], 200, "{post}");
    assert_eq!(post["tunnel"]["mode"], "intercept", "{post}");
    assert_eq!(post["credentials"], serde_json::json!(["openai"]), "{post}");
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(ACME_SECRET));
}

#[test]
fn iptables_rules_capture_too_and_leave_the_proxy_uncaptured() {
    let Some(c) = start_capture(
        "transparent::iptables_rules_capture_too_and_leave_the_proxy_uncaptured",
        "iptables",
    ) else {
        return;
    };
    let acme = seen(ACME_SECRET);
    for url in [
        format!("http://llm.test:{}/v1/chat/completions", c.plain),
        format!("https://llm.test:{}/v1/chat/completions", c.tls),
    ] {
        let (status, text) = curl_in(
            &c,
            &[
                "-H",
                "Authorization: Bearer $CRED{openai}",
                "-H",
                "Content-Type: application/json",
                "-d",
                CHAT,
                &url,
            ],
        );
        assert_eq!(status, 200, "curl {url}: {text}");
        assert!(text.to_lowercase().contains(&acme), "{text}");
    }
    // The rules are the ones printed: the proxy's uid and loopback let through, the rest
    // redirected.
    let rules = c.ns.run(&["iptables-save", "-t", "nat"]);
    assert!(rules.contains("--uid-owner 1337 -j RETURN"), "{rules}");
    assert!(
        rules.contains(&format!("--to-ports {}", c.proxy.port("capture"))),
        "{rules}"
    );
    let records = c.proxy.wait_audit_records("acme", 3);
    assert!(
        records.iter().all(|r| r["listener"] == "capture"),
        "{records:#?}"
    );
}

#[test]
fn sidecar_init_prints_rules_for_both_families_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = proxy_cli(
        dir.path(),
        &[
            "sidecar-init",
            "--port",
            "15001",
            "--proxy-uid",
            "1337",
            "--exclude-cidr",
            "10.96.0.0/12",
            "--exclude-cidr",
            "fd00::/8",
            "--exclude-port",
            "22",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    for line in [
        "meta skuid 1337 return",
        "ip daddr 127.0.0.0/8 return",
        "ip6 daddr ::1 return",
        "ip daddr 10.96.0.0/12 return",
        "ip6 daddr fd00::/8 return",
        "tcp dport 22 return",
        "redirect to :15001",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    let (code, out) = proxy_cli(
        dir.path(),
        &[
            "sidecar-init",
            "--port",
            "15001",
            "--proxy-uid",
            "1337",
            "--backend",
            "iptables",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("# iptables-restore --noflush")
            && out.contains("# ip6tables-restore --noflush"),
        "{out}"
    );
    for bad in [
        &[
            "sidecar-init",
            "--port",
            "15001",
            "--proxy-uid",
            "1337",
            "--exclude-cidr",
            "10.0.0.0/33",
        ][..],
        &["sidecar-init", "--port", "0", "--proxy-uid", "1337"],
        &["sidecar-init", "--port", "15001"],
    ] {
        let (code, out) = proxy_cli(dir.path(), bad, "");
        assert_ne!(code, 0, "{bad:?}: {out}");
    }
}
