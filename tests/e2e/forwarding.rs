//! Forward mode and route mode end to end, with real clients, and every bad input the core
//! pipeline must refuse before dialing the upstream.

use std::time::{Duration, Instant};

use crate::support::*;
use tenant_proxy_loadtest::tls::TestCa;

/// The default spec with the route `up` (`/up/`) to `origin`.
fn with_route(origin: &Origin) -> ProxySpec {
    let mut spec = ProxySpec::default();
    spec.tenants.routes.push(config::Route::new(
        "up",
        "/up/",
        format!("http://127.0.0.1:{}/", origin.port),
    ));
    spec
}

fn start(origin: &Origin) -> Proxy {
    let mut spec = with_route(origin);
    spec.config.limits.max_body_bytes = Some(4096);
    Proxy::start(spec)
}

#[test]
fn curl_forward_and_route_mode_allowed_and_denied() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let tok = token_for("acme", "researcher");
    let proxy_url = format!("http://researcher:{tok}@127.0.0.1:{}", proxy.shared_port);

    // Forward mode through HTTP_PROXY-style -x, token in the proxy URL.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, body) = curl(&[
        "-x",
        &proxy_url,
        "-H",
        &format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01"),
        "-H",
        "baggage: tenant=acme,user=alice",
        &format!("http://127.0.0.1:{}/acme/fwd?q=secret", origin.port),
    ]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(&[
        "-x",
        &proxy_url,
        &format!("http://127.0.0.1:{}/globex/fwd", origin.port),
    ]);
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "policy_denied");

    // Route mode on the sidecar listener: /up/acme/x -> origin /acme/x.
    let (status, body) = curl(&[&format!(
        "http://127.0.0.1:{}/up/acme/route",
        proxy.sidecar_port
    )]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(&[&format!(
        "http://127.0.0.1:{}/up/forbidden/route",
        proxy.sidecar_port
    )]);
    assert_eq!(status, 403, "{body}");

    let seen = origin.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        vec!["/acme/fwd?q=secret", "/acme/route"],
        "only allowed calls reach the origin, in origin-form"
    );
    assert_eq!(
        seen[0].headers["host"],
        format!("127.0.0.1:{}", origin.port)
    );
    // The trace continues (same trace id, the proxy's span as parent); baggage, which has no
    // integrity and may name tenants, does not reach an external host.
    assert!(
        seen[0].headers["traceparent"].starts_with(&format!("00-{trace_id}-")),
        "{:?}",
        seen[0].headers
    );
    assert!(!seen[0].headers["traceparent"].contains("00f067aa0ba902b7"));
    assert!(!seen[0].headers.contains_key("baggage"));

    // The audit record keeps the query key, never its value.
    let recs = proxy.wait_audit_records("acme", 4);
    let fwd = recs
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/acme/fwd"))
        })
        .unwrap();
    assert_eq!(fwd["path"], "/acme/fwd?q");
    assert_eq!(fwd["workload"], "researcher");
    assert_eq!(fwd["trace_id"], trace_id);
    assert_eq!(fwd["decision"], "allow");
    assert_eq!(fwd["policy_ids"], serde_json::json!(["acme-paths"]));
    assert!(
        !std::fs::read_to_string(crate::support::walk(&proxy.path("audit"))[0].clone())
            .unwrap()
            .contains("secret")
    );
    let route = recs
        .iter()
        .find(|r| r["route"] == "up" && r["decision"] == "deny")
        .unwrap();
    assert_eq!(route["reason"], "policy_denied");
    assert_eq!(route["policy_ids"], serde_json::json!(["forbidden-paths"]));
}

#[test]
fn python_requests_and_httpx_through_http_proxy() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let tok = token_for("globex", "agent");
    let env = [
        (
            "HTTP_PROXY",
            format!("http://agent:{tok}@127.0.0.1:{}", proxy.shared_port),
        ),
        ("ORIGIN", format!("http://127.0.0.1:{}", origin.port)),
    ];
    let out = python(
        r#"
import os, requests, httpx
o = os.environ["ORIGIN"]
r = requests.post(o + "/globex/requests", json={"model": "gpt-4o-mini", "messages": []}, timeout=20)
print(r.status_code)
r = requests.get(o + "/acme/requests", timeout=20)
print(r.status_code, r.json()["error"]["code"])
with httpx.Client(timeout=20) as c:  # httpx reads HTTP_PROXY from the environment
    print(c.post(o + "/globex/httpx", json={"model": "gpt-4o-mini"}).status_code)
    r = c.post(o + "/globex/httpx", json={"model": "gpt-4o"})
    print(r.status_code, r.json()["error"]["code"])
    # Hiding the model from policy: a JSON body labelled text/plain is read all the same, and
    # a model given twice (upstream parsers keep the last) is refused, not forwarded.
    r = c.post(o + "/globex/plain", content='{"model":"gpt-4o"}', headers={"content-type": "text/plain"})
    print(r.status_code, r.json()["error"]["code"])
    r = c.post(o + "/globex/dup", content='{"model":"gpt-4o-mini","model":"gpt-4o"}', headers={"content-type": "application/json"})
    print(r.status_code, r.json()["error"]["code"])
    # Servers that match names ignoring case (Go's encoding/json: Ollama, LocalAI) read `Model`:
    # so does the policy, and beside `model` it is a model given twice.
    r = c.post(o + "/globex/fold", content='{"Model":"gpt-4o"}', headers={"content-type": "application/json"})
    print(r.status_code, r.json()["error"]["code"])
    r = c.post(o + "/globex/fold", content='{"model":"gpt-4o-mini","Model":"gpt-4o"}', headers={"content-type": "application/json"})
    print(r.status_code, r.json()["error"]["code"])
"#,
        &env,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "200",
            "403 policy_denied",
            "200",
            "403 policy_denied",
            "403 policy_denied",
            "400 bad_request",
            "403 policy_denied",
            "400 bad_request"
        ],
        "{out}"
    );
    // The free-plan model rule decided the model refusals, whatever the content type said or
    // the case the name was spelt in.
    let recs = proxy.wait_audit_records("globex", 8);
    let denied: Vec<_> = recs.iter().filter(|r| r["model"] == "gpt-4o").collect();
    assert_eq!(denied.len(), 3, "{recs:?}");
    for d in denied {
        assert_eq!(d["policy_ids"], serde_json::json!(["free-plan-models"]));
    }
    assert!(recs.iter().any(|r| r["reason"] == "bad_request"));
    let posted = origin.matching("/globex/");
    assert_eq!(posted.len(), 2);
    assert!(
        String::from_utf8_lossy(&posted[0].body).contains("gpt-4o-mini"),
        "body forwarded intact"
    );
    // requests and httpx ask for gzip; LLM calls ask upstream for `identity` so usage can be
    // metered (without the header an upstream may pick any coding).
    for p in &posted {
        assert_eq!(
            p.headers.get("accept-encoding").map(String::as_str),
            Some("identity"),
            "{:?}",
            p.headers
        );
    }
}

#[test]
fn malformed_targets_are_refused_before_dialing() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let p = proxy.sidecar_port;
    let o = origin.port;

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("unroutable path", "GET /nowhere/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".into(), 404, "route_not_found"),
        (
            "connect",
            format!("CONNECT 127.0.0.1:{o} HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n"),
            403,
            "connect_port_forbidden",
        ),
        (
            "oversized headers",
            format!(
                "GET http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(40 * 1024)
            ),
            431,
            "request_headers_too_large",
        ),
        // The decision is on the request line: headers that make an upstream run another
        // method or path, or that servers reading `_` as `-` take for ones the proxy acts on.
        (
            "a method override",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nX-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "a path override",
            format!(
                "GET http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nX-Original-URL: /admin\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "a method override in the query",
            format!(
                "POST http://127.0.0.1:{o}/acme/x?_method=DELETE HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "a method override in a form",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 24\r\nConnection: close\r\n\r\ntitle=x&_method=DELETE&y"
            ),
            400,
            "bad_request",
        ),
        (
            "an overlong UTF-8 `..` in the path",
            format!(
                "GET http://127.0.0.1:{o}/acme/%C0%AE%C0%AE/admin HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "a double-encoded `..` in the path",
            format!(
                "GET http://127.0.0.1:{o}/acme/%252E%252E/admin HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "a method override in a form, in another case (ASP.NET Core)",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 24\r\nConnection: close\r\n\r\ntitle=x&_METHOD=DELETE&y"
            ),
            400,
            "bad_request",
        ),
        (
            "a proxy token spelt with `_`",
            format!(
                "GET http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nProxy_Authorization: Bearer secret\r\nConnection: close\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            "body over cap",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
                "b".repeat(5000)
            ),
            413,
            "request_body_too_large",
        ),
        (
            "chunked body over cap",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1388\r\n{}\r\n0\r\n\r\n",
                "c".repeat(5000)
            ),
            413,
            "request_body_too_large",
        ),
        (
            // Only the size line: refused at once, not after waiting for data that never comes.
            "chunk size over cap, no data",
            format!(
                "POST http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nFFFFFFFFFFF\r\n"
            ),
            413,
            "request_body_too_large",
        ),
        (
            "dot segments",
            "GET /up/acme/../globex/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "empty path segment",
            format!("GET http://127.0.0.1:{o}/acme//x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nConnection: close\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            "path parameter",
            format!("GET http://127.0.0.1:{o}/acme/..;/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nConnection: close\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            "port out of range",
            "GET http://127.0.0.1:65616/acme/x HTTP/1.1\r\nHost: 127.0.0.1:65616\r\nConnection: close\r\n\r\n".into(),
            400,
            "bad_request",
        ),
    ];
    for (name, raw, status, code) in cases {
        let r = raw_request(p, &raw).unwrap();
        assert_eq!(r.status, status, "{name}: {}", r.body_text());
        assert!(
            !r.body.is_empty(),
            "{name}: empty body, headers {:?}",
            r.headers
        );
        assert_eq!(r.code(), code, "{name}");
        // Every one of these has a tenant (the sidecar listener) and so an audit record.
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], code, "{name}");
        assert_eq!(rec["decision"], "deny");
    }
    // An absolute URI whose `Host` disagrees: pingora's HTTP/1 parser itself rejects it with a
    // bare 400 before any proxy phase runs (see README, "Refusals"), so there is no JSON body
    // and no tenant context to audit. What matters: it is refused and nothing is forwarded.
    let r = raw_request(
        p,
        &format!("GET http://127.0.0.1:{o}/acme/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        origin.count(),
        0,
        "nothing forwarded: {:?}",
        origin.requests()
    );

    // A chunked body under the cap is forwarded whole.
    let r = raw_request(
        p,
        &format!("POST http://127.0.0.1:{o}/acme/chunked HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.matching("/acme/chunked")[0].body, b"hello world");
}

#[test]
fn upstream_failures_map_to_502_and_504() {
    let origin = Origin::start();
    // Nothing listens there: the upstream is unreachable.
    let closed = HeldPort::closed().unwrap();
    let dead_port = closed.port;
    let mut spec = with_route(&origin);
    spec.config.upstream.read_timeout = Some(Duration::from_secs(1));
    let proxy = Proxy::start(spec);
    let p = proxy.sidecar_port;
    let cases = [
        (
            "refused",
            format!("http://127.0.0.1:{dead_port}/acme/x"),
            502,
            "upstream_unreachable",
        ),
        (
            "reset",
            format!("http://127.0.0.1:{}/reset/x", origin.port),
            502,
            "upstream_failed",
        ),
        (
            "timeout",
            format!("http://127.0.0.1:{}/slow/x", origin.port),
            504,
            "upstream_timeout",
        ),
    ];
    for (name, url, status, code) in cases {
        let r = forward_get(p, &url, None, "");
        assert_eq!(r.status, status, "{name}: {}", r.body_text());
        assert_eq!(r.code(), code, "{name}");
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], code, "{name}");
    }
    // A POST that reset is not retried: the origin saw it exactly once.
    let r = raw_request(
        p,
        &format!(
            "POST http://127.0.0.1:{o}/reset/post HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            o = origin.port
        ),
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        origin.matching("/reset/post").len(),
        1,
        "non-idempotent request retried"
    );
    // It reached the origin: the record says so.
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["reason"], "upstream_failed", "{rec}");
    // The connect that failed, and the two resets after the request went out, apart. A
    // request is counted once its response is written, so the last one may still be counting.
    let expected = [
        ("upstream_timeout", 1),
        ("upstream_unreachable", 1),
        ("upstream_failed", 2),
    ]
    .map(|(code, n)| {
        format!(r#"tenant_proxy_upstream_errors_total{{code="{code}",tenant="acme"}} {n}"#)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = proxy.metrics();
        if expected.iter().all(|line| metrics.contains(line.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "{expected:?}: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn policy_evaluation_error_denies() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let tok = token_for("evalerr", "agent");
    let r = forward_get(
        proxy.shared_port,
        &format!("http://127.0.0.1:{}/anything", origin.port),
        Some(&tok),
        "",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "policy_denied"),
        "{}",
        r.body_text()
    );
    let rec = proxy.audit_record("evalerr", &r.request_id());
    assert!(
        !rec["policy_errors"].as_array().unwrap().is_empty(),
        "{rec}"
    );
    assert_eq!(origin.count(), 0);
}

/// A TLS origin (Python's http.server behind `ssl`) with a certificate from a test CA made with
/// the openssl CLI.
struct TlsOrigin {
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_origin() -> TlsOrigin {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tenant-proxy test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let script = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"tls": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("leaf.pem", "leaf.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("port");
    TlsOrigin {
        port,
        ca: d.join("ca.pem"),
        _dir: dir,
        child,
    }
}

#[test]
fn route_to_tls_origin_verifies_with_extra_ca() {
    let origin = tls_origin();
    let mut spec = ProxySpec::default();
    spec.tenants.routes.push(config::Route::new(
        "tls",
        "/tls/",
        format!("https://127.0.0.1:{}/", origin.port),
    ));
    let untrusted_spec = ProxySpec {
        tenants: spec.tenants.clone(),
        ..ProxySpec::default()
    };

    // Trusted: system roots plus the test CA. The proxy writes the two as one bundle for
    // pingora, in its temp directory, and removes it once read: nothing piles up per start.
    spec.config.upstream.read_timeout = Some(Duration::from_secs(5));
    spec.config.upstream.extra_ca_files = vec![origin.ca.clone()];
    let temp = tempfile::tempdir().unwrap();
    spec.env
        .push(("TMPDIR".into(), temp.path().display().to_string()));
    let proxy = Proxy::start(spec);
    let r = raw_request(
        proxy.sidecar_port,
        "GET /tls/acme/secure HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["path"], "/acme/secure");
    assert_eq!(r.json()["tls"], true);
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["scheme"],
        "https"
    );
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the temp directory: {left:?}");

    // Not trusted: a 502 `upstream_tls`, never a fallback to plain text.
    let untrusted = Proxy::start(untrusted_spec);
    let r = raw_request(
        untrusted.sidecar_port,
        "GET /tls/acme/secure HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_tls"),
        "{}",
        r.body_text()
    );
    assert_eq!(
        untrusted.audit_record("acme", &r.request_id())["reason"],
        "upstream_tls"
    );
}

#[test]
fn a_policy_refusal_names_the_deciding_forbid_and_nothing_of_another_tenant() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let o = origin.port;
    let get = |tenant: &'static str, workload: &'static str, path: &str| {
        forward_get(
            proxy.shared_port,
            &format!("http://127.0.0.1:{o}{path}"),
            Some(&token_for(tenant, workload)),
            "",
        )
    };
    // A global forbid decided: it is named; the code stays `policy_denied`.
    let r = get("acme", "bot", "/forbidden/x");
    let body = r.assert_refused(403, "policy_denied");
    assert_eq!(
        body["error"]["message"],
        "forbidden by policy `forbidden-paths`"
    );
    // No permit matched: said so, and acme's permit (`acme-paths`) for the path globex asked
    // for is never named to globex, nor is any other tenant's policy.
    let r = get("globex", "agent", "/acme/x");
    let body = r.assert_refused(403, "policy_denied");
    assert_eq!(
        body["error"]["message"],
        "no policy allows this workload to make this request"
    );
    // evalerr's own forbid errors at evaluation: that denies, and says so without details.
    let r = get("evalerr", "agent", "/anything");
    let body = r.assert_refused(403, "policy_denied");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("could not be evaluated"), "{message}");
    // Its audit record names the policy that failed as the one that decided, never the permit
    // that Cedar would have allowed by.
    let rec = proxy.audit_record("evalerr", &r.request_id());
    assert_eq!(
        rec["policy_ids"],
        serde_json::json!(["evalerr-overflow"]),
        "{rec}"
    );
    assert!(
        rec["policy_errors"]
            .to_string()
            .contains("evalerr-overflow"),
        "{rec}"
    );
    for tenant_policy in [
        "acme-paths",
        "globex-paths",
        "evalerr-overflow",
        "evalerr-all",
    ] {
        for (tenant, workload, path) in [
            ("acme", "bot", "/forbidden/x"),
            ("globex", "agent", "/acme/x"),
            ("evalerr", "agent", "/anything"),
        ] {
            let text = get(tenant, workload, path).body_text();
            assert!(!text.contains(tenant_policy), "{tenant}: {text}");
        }
    }
    assert_eq!(origin.count(), 0);
}

#[test]
fn run_prints_each_listener_with_its_identity_mode_and_the_admin_url() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let log = proxy.log();
    let line = |needle: String| {
        assert!(
            log.lines().any(|l| l.contains(&needle)),
            "no line with `{needle}`:\n{log}"
        );
    };
    line(format!(
        "http://127.0.0.1:{}  identity: binding (acme/bot)",
        proxy.sidecar_port
    ));
    line(format!(
        "http://127.0.0.1:{}  identity: token",
        proxy.shared_port
    ));
    line(format!(
        "http://127.0.0.1:{}  (/healthz /readyz /metrics)",
        proxy.admin_port
    ));
}

/// Trailers do not pass (pingora's HTTP/1 client reads none), so the `Trailer` field that
/// announces them is removed too: a client would wait for fields that never come.
#[test]
fn a_trailer_field_is_not_passed_on_for_trailers_that_never_come() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let tok = token_for("acme", "researcher");
    let url = format!("http://127.0.0.1:{}/acme/trailers/x", origin.port);
    let r = forward_get(proxy.shared_port, &url, Some(&tok), "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "hello");
    assert_eq!(r.header("trailer"), None, "{:?}", r.headers);
    assert_eq!(r.header("grpc-status"), None, "{:?}", r.headers);
}

/// A host with `_` cannot be verified over TLS (no certificate may name it), and pingora would
/// verify the name with its first `_` turned into `-`, another host: such an upstream is
/// refused `upstream_tls` before any byte is sent, even when that other host's certificate is
/// what answers.
#[test]
fn an_upstream_name_with_an_underscore_is_never_verified_as_another() {
    let ca = TestCa::new("e2e underscore origin CA").unwrap();
    let origin = Origin::start_tls(&ca.server(&["api-x.t.test"]).unwrap());
    let mut spec = ProxySpec::default();
    for host in ["api_x.t.test", "api-x.t.test"] {
        spec.config
            .egress
            .hosts
            .insert(host.into(), vec!["127.0.0.1".into()]);
        let name = host.replace('.', "-");
        spec.tenants.routes.push(config::Route::new(
            &name,
            &format!("/{name}/"),
            format!("https://{host}:{}/", origin.port),
        ));
    }
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    let ca_pem = ca.cert_pem.clone();
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("origin-ca.pem"), &ca_pem).unwrap();
        std::fs::write(
            dir.join("policies/global/t-test.cedar"),
            "@id(\"t-test\")\npermit (principal, action == TenantProxy::Action::\"http\", resource)\nwhen { context.host like \"*.t.test\" };\n",
        )
        .unwrap();
    });
    let get = |route: &str| {
        raw_request(
            proxy.sidecar_port,
            &format!("GET /{route}/acme/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };
    // The certificate's own name is served.
    let r = get("api-x-t-test");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.count(), 1);
    // The name with `_` is refused, and nothing reaches the origin.
    let r = get("api_x-t-test");
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_tls"),
        "{}",
        r.body_text()
    );
    assert_eq!(origin.count(), 1, "nothing was sent to the other host");
    let record = proxy.audit_record("acme", &r.request_id());
    assert_eq!(record["reason"], "upstream_tls", "{record}");
}
