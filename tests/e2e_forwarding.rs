//! Forward mode and route mode end to end, with real clients, and every bad input the core
//! pipeline must refuse before dialing the upstream.

mod support;

use support::*;

fn routes(origin: &Origin) -> String {
    format!(
        r#"
[[route]]
name = "up"
prefix = "/up/"
upstream = "http://127.0.0.1:{}/"
"#,
        origin.port
    )
}

fn start(origin: &Origin) -> Proxy {
    Proxy::start(ProxySpec {
        routes: routes(origin),
        limits: "max_body_bytes = 4096",
        ..Default::default()
    })
}

#[test]
fn curl_forward_and_route_mode_allowed_and_denied() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let tok = token_for("acme", "researcher");
    let proxy_url = format!("http://researcher:{tok}@127.0.0.1:{}", proxy.shared_port);

    // Forward mode through HTTP_PROXY-style -x, token in the proxy URL.
    let (status, body) = curl(&[
        "-x",
        &proxy_url,
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
    assert!(seen[0].headers.contains_key("traceparent"));

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
    assert_eq!(fwd["decision"], "allow");
    assert_eq!(fwd["policy_ids"], serde_json::json!(["acme-paths"]));
    assert!(
        !std::fs::read_to_string(support::walk(&proxy.path("audit"))[0].clone())
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
"#,
        &env,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["200", "403 policy_denied", "200", "403 policy_denied"],
        "{out}"
    );
    // The free-plan model rule decided the last refusal.
    let recs = proxy.wait_audit_records("globex", 4);
    let denied = recs.iter().find(|r| r["model"] == "gpt-4o").unwrap();
    assert_eq!(
        denied["policy_ids"],
        serde_json::json!(["free-plan-models"])
    );
    let posted = origin.matching("/globex/");
    assert_eq!(posted.len(), 2);
    assert!(
        String::from_utf8_lossy(&posted[0].body).contains("gpt-4o-mini"),
        "body forwarded intact"
    );
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
            405,
            "connect_unsupported",
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
            "dot segments",
            "GET /up/acme/../globex/x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".into(),
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
    let dead_port = free_port();
    let proxy = Proxy::start(ProxySpec {
        routes: routes(&origin),
        upstream: "read_timeout = \"1s\"",
        ..Default::default()
    });
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
            "upstream_unreachable",
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
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"tenant_proxy_upstream_errors_total{code="upstream_timeout",tenant="acme"} 1"#
        ),
        "{metrics}"
    );
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
