//! Protocol hardening end to end, with raw bytes on sockets and capture upstreams that record
//! every request they receive: no smuggled request, no slow client and no malformed head gets
//! past or wears down the proxy, on the sidecar and token listeners and inside intercepted
//! tunnels.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenant_proxy_loadtest::tls::TestCa;

use crate::support::*;

/// Where a case's request goes: the request target and `Host` to write.
#[derive(Clone)]
struct Aim {
    /// Absolute-form URL (forward mode) or a path (inside a tunnel), without the case's path.
    base: String,
    host: String,
    /// Extra header lines on every request (a token).
    extra: String,
}

impl Aim {
    fn target(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// One malformed request: its bytes, and the refusal it must get. `closes`: the connection
/// must be closed after the refusal (and a request sent behind it never served).
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    code: &'static str,
    closes: bool,
}

/// A valid request sent right behind each malformed one, on the same connection: it must never
/// reach the upstream.
fn behind(aim: &Aim) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        aim.target("/acme/smuggled"),
        aim.host,
        aim.extra
    )
}

fn cases(aim: &Aim) -> Vec<Case> {
    let (h, x) = (&aim.host, &aim.extra);
    let post = |path: &str, headers: &str, body: &str| -> Vec<u8> {
        format!(
            "POST {} HTTP/1.1\r\nHost: {h}\r\n{x}{headers}\r\n{body}{}",
            aim.target(path),
            behind(aim)
        )
        .into_bytes()
    };
    let chunked = |path: &str, body: &str| post(path, "Transfer-Encoding: chunked\r\n", body);
    let case = |name, bytes, status, code, closes| Case {
        name,
        bytes,
        status,
        code,
        closes,
    };
    let mut many_headers = format!(
        "GET {} HTTP/1.1\r\nHost: {h}\r\n{x}",
        aim.target("/acme/proto-many")
    );
    for i in 0..120 {
        many_headers.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many_headers.push_str("\r\n");
    vec![
        case(
            "content-length and transfer-encoding",
            post(
                "/acme/proto-clte",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            400,
            "bad_framing",
            true,
        ),
        case(
            "transfer-encoding and content-length",
            post(
                "/acme/proto-tecl",
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            400,
            "bad_framing",
            true,
        ),
        case(
            "chunked, chunked",
            post("/acme/proto-cc", "Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            501,
            "unsupported_transfer_encoding",
            true,
        ),
        case(
            "gzip, chunked",
            post("/acme/proto-gz", "Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            501,
            "unsupported_transfer_encoding",
            true,
        ),
        case(
            "two transfer-encoding fields",
            post(
                "/acme/proto-tete",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            501,
            "unsupported_transfer_encoding",
            true,
        ),
        case(
            "http/1.0 with transfer-encoding",
            format!(
                "POST {} HTTP/1.0\r\nHost: {h}\r\n{x}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                aim.target("/acme/proto-10"),
                behind(aim)
            )
            .into_bytes(),
            400,
            "bad_framing",
            true,
        ),
        case(
            "bare LF in a chunk line",
            chunked("/acme/proto-lf", "2;ext\nxx\r\n45\r\n0\r\n\r\n"),
            400,
            "bad_framing",
            true,
        ),
        case(
            "bare LF after a chunk size",
            chunked("/acme/proto-lf2", "5\nhello\r\n0\r\n\r\n"),
            400,
            "bad_framing",
            true,
        ),
        case("chunk size zz", chunked("/acme/proto-zz", "zz\r\nhello\r\n0\r\n\r\n"), 400, "bad_framing", true),
        case("chunk size -5", chunked("/acme/proto-neg", "-5\r\nhello\r\n0\r\n\r\n"), 400, "bad_framing", true),
        case(
            "oversize chunk size",
            chunked("/acme/proto-big", "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            400,
            "bad_framing",
            true,
        ),
        case(
            "chunk data longer than its size",
            chunked("/acme/proto-long", "3\r\nhello\r\n0\r\n\r\n"),
            400,
            "bad_framing",
            true,
        ),
        case(
            "content-length twice",
            post("/acme/proto-clcl", "Content-Length: 2\r\nContent-Length: 2\r\n", "hi"),
            400,
            "bad_framing",
            true,
        ),
        case(
            "bare LF in the head",
            format!("GET {} HTTP/1.1\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-headlf")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        case(
            "obs-fold",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}X-A: a\r\n  folded\r\n\r\n", aim.target("/acme/proto-fold")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        case(
            "space before a colon",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}X-A : a\r\n\r\n", aim.target("/acme/proto-space")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        // `%66` is `f` to an upstream that decodes, but not to a policy on the path.
        case(
            "a percent-encoded letter in the path",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-%65nc")).into_bytes(),
            400,
            "bad_request",
            false,
        ),
        case(
            "an encoded backslash in the path",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/x%5c..%5cproto-bs")).into_bytes(),
            400,
            "bad_request",
            false,
        ),
        // Bytes httparse reads but no URI holds: refused by the front, not by pingora's bare 400.
        case(
            "angle brackets in the path",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-<b>")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        case(
            "a backtick in the path",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-`id`")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        case(
            "an angle bracket in the query",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-q?x=<b")).into_bytes(),
            400,
            "bad_request",
            true,
        ),
        // Methods are case-sensitive; an upstream that upper-cases them would run another.
        case(
            "a method in lower case",
            format!("delete {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n", aim.target("/acme/proto-lower")).into_bytes(),
            400,
            "bad_request",
            false,
        ),
        case("120 header fields", many_headers.into_bytes(), 431, "too_many_headers", true),
        case(
            "Connection: Host",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}Connection: Host\r\n\r\n", aim.target("/acme/proto-connhost")).into_bytes(),
            400,
            "bad_connection_header",
            false,
        ),
        case(
            "Connection: traceparent",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}Connection: keep-alive, traceparent\r\n\r\n", aim.target("/acme/proto-conntp")).into_bytes(),
            400,
            "bad_connection_header",
            false,
        ),
        case(
            "Connection: Authorization",
            format!("GET {} HTTP/1.1\r\nHost: {h}\r\n{x}Connection: authorization\r\nAuthorization: Bearer x\r\n\r\n", aim.target("/acme/proto-connauth")).into_bytes(),
            400,
            "bad_connection_header",
            false,
        ),
    ]
}

/// Writes `bytes` on `s` and reads one response; then whether the proxy closed the connection
/// (EOF within a few seconds, nothing more sent).
fn exchange<S: Read + Write>(mut s: S, bytes: &[u8]) -> (Response, bool) {
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    let mut reader = BufReader::new(s);
    let resp = read_response(&mut reader).unwrap();
    let mut rest = [0u8; 64];
    let closed = matches!(reader.read(&mut rest), Ok(0) | Err(_));
    (resp, closed)
}

fn plain(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Checks every case on fresh connections from `open`; returns (case name, request id) of each.
fn run_cases<S: Read + Write>(
    aim: &Aim,
    mut open: impl FnMut() -> S,
) -> Vec<(&'static str, String)> {
    let mut ids = Vec::new();
    for case in cases(aim) {
        let (resp, closed) = exchange(open(), &case.bytes);
        assert_eq!(
            (resp.status, resp.code().as_str()),
            (case.status, case.code),
            "{}: {}",
            case.name,
            resp.body_text()
        );
        let body = resp.json();
        assert_eq!(
            body["error"]["request_id"].as_str(),
            Some(resp.request_id().as_str()),
            "{}: the request id is in the body and the header",
            case.name
        );
        if case.closes {
            assert!(closed, "{}: the connection must be closed", case.name);
        }
        ids.push((case.name, resp.request_id()));
    }
    ids
}

/// Nothing a malformed request carried, or sent behind it, reached the upstream.
fn assert_nothing_smuggled(origin: &Origin) {
    let leaked: Vec<String> = origin
        .requests()
        .into_iter()
        .filter(|r| {
            r.target.contains("proto-")
                || r.target.contains("smuggled")
                || String::from_utf8_lossy(&r.body).contains("SMUGGLED")
        })
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(leaked.is_empty(), "reached the upstream: {leaked:?}");
}

/// A valid chunked request and two pipelined requests on one connection all reach the
/// upstream, framed as the client framed them (the strictness refuses only what is ambiguous).
fn assert_valid_requests_pass<S: Read + Write>(aim: &Aim, origin: &Origin, mut s: S) {
    let (h, x) = (&aim.host, &aim.extra);
    let pipelined = format!(
        "POST {} HTTP/1.1\r\nHost: {h}\r\n{x}Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
         GET {} HTTP/1.1\r\nHost: {h}\r\n{x}\r\n\
         POST {} HTTP/1.1\r\nHost: {h}\r\n{x}Content-Length: 4\r\n\r\nbody",
        aim.target("/acme/ok-chunked"),
        aim.target("/acme/ok-get"),
        aim.target("/acme/ok-post"),
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    for _ in 0..3 {
        let r = read_response(&mut reader).unwrap();
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let ok: Vec<(String, Vec<u8>)> = origin
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/acme/ok-"))
        .map(|r| (r.target, r.body))
        .collect();
    assert_eq!(
        ok,
        vec![
            ("/acme/ok-chunked".to_string(), b"hello world".to_vec()),
            ("/acme/ok-get".to_string(), Vec::new()),
            ("/acme/ok-post".to_string(), b"body".to_vec()),
        ]
    );
}

/// The default proxy with `configure`'s changes to its static file.
fn start(configure: impl FnOnce(&mut config::StaticFile)) -> Proxy {
    let mut spec = ProxySpec::default();
    configure(&mut spec.config);
    Proxy::start(spec)
}

#[test]
fn malformed_requests_are_refused_and_closed_on_the_sidecar_and_token_listeners() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let host = format!("127.0.0.1:{}", origin.port);
    let sidecar = Aim {
        base: format!("http://{host}"),
        host: host.clone(),
        extra: String::new(),
    };
    let ids = run_cases(&sidecar, || plain(proxy.sidecar_port));
    // The sidecar listener always knows its caller: every refusal is audited with its code.
    for ((name, id), case) in ids.iter().zip(cases(&sidecar)) {
        let rec = proxy.audit_record("acme", id);
        assert_eq!(rec["decision"], "deny", "{name}");
        assert_eq!(rec["reason"], case.code, "{name}");
        assert_eq!(rec["status"], case.status, "{name}");
    }

    let token = token_for("acme", "researcher");
    let shared = Aim {
        extra: format!("Proxy-Authorization: Bearer {token}\r\n"),
        ..sidecar.clone()
    };
    let ids = run_cases(&shared, || plain(proxy.shared_port));
    // A refused head that still carries one valid token is audited for that token's tenant,
    // whichever check refused it (a head the scanner gives up on included).
    for ((name, id), case) in ids.iter().zip(cases(&shared)) {
        let rec = proxy.audit_record("acme", id);
        assert_eq!(
            (rec["workload"].as_str(), rec["reason"].as_str()),
            (Some("researcher"), Some(case.code)),
            "{name}"
        );
    }
    // Route mode frames the same way.
    let route = Aim {
        base: String::new(),
        host: "proxy".into(),
        extra: String::new(),
    };
    let (resp, closed) = exchange(
        plain(proxy.sidecar_port),
        format!(
            "POST /up/acme/proto-route HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{}",
            behind(&route)
        )
        .as_bytes(),
    );
    resp.assert_refused(400, "bad_framing");
    assert!(closed);

    assert_nothing_smuggled(&origin);
    assert_valid_requests_pass(&sidecar, &origin, plain(proxy.sidecar_port));
}

/// A `CONNECT` whose target the proxy cannot read is refused as any malformed head is: with
/// the JSON body, and audited when the caller is known (here, the sidecar's binding).
#[test]
fn an_unreadable_connect_target_is_refused_and_audited() {
    let proxy = start(|_| {});
    for target in [
        "example.com",
        "example.com:0",
        "example.com:65536",
        "example..com:443",
        "example.com:443/x",
    ] {
        let r = raw_request(
            proxy.sidecar_port,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .unwrap();
        r.assert_refused(400, "bad_request");
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], "bad_request", "{target}: {rec}");
    }
}

/// A request that asks to switch protocols ends its connection whatever the answer (the front
/// reads what follows as the new protocol's): when the upstream does not switch, or the request
/// is refused, the response says `Connection: close`, so no client sends another request on it
/// that nobody would read.
#[test]
fn an_upgrade_that_is_not_switched_says_the_connection_closes() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let host = format!("127.0.0.1:{}", origin.port);
    for (url, status) in [
        (format!("http://{host}/acme/upgrade-not-switched"), 200),
        (
            format!("http://{host}/acme/upgrade-refused?_method=DELETE"),
            400,
        ),
    ] {
        let (resp, closed) = exchange(
            plain(proxy.sidecar_port),
            format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n").as_bytes(),
        );
        assert_eq!(resp.status, status, "{url}: {}", resp.body_text());
        assert_eq!(resp.header("connection"), Some("close"), "{url}");
        assert!(closed, "{url}");
    }
}

/// An upstream's `101` that does not complete the WebSocket handshake the request opened (an
/// endpoint that reflects a status, a backend that answers `101` to anything) is withheld as
/// `upstream_failed`: relayed, it would leave the client's next bytes unread by any check and
/// served by the upstream as a request no policy decided ("WebSocket smuggling"). A `101` to a
/// request that asked for no switch is withheld too.
#[test]
fn an_upstream_switch_that_completes_no_websocket_handshake_is_withheld() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let host = format!("127.0.0.1:{}", origin.port);
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let smuggled = format!("GET http://{host}/acme/admin-secret HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for (name, head) in [("websocket upgrade", upgrade), ("no upgrade asked", "")] {
        let mut s = plain(proxy.sidecar_port);
        let request =
            format!("GET http://{host}/acme/switch/x HTTP/1.1\r\nHost: {host}\r\n{head}\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let r = read_response(&mut reader).unwrap();
        r.assert_refused(502, "upstream_failed");
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["decision"], "deny", "{name}: {rec}");
        assert_eq!(rec["reason"], "upstream_failed", "{name}: {rec}");
        // What the client sends next never reaches the upstream as a request.
        let _ = s.write_all(smuggled.as_bytes());
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert!(
        !seen.iter().any(|t| t.contains("admin-secret")),
        "smuggled past the policy: {seen:?}"
    );
    // The mock, a WebSocket server, still switches: the handshake completes.
    let mock = start_mock();
    let mut s = plain(proxy.sidecar_port);
    let mock_host = format!("127.0.0.1:{mock}");
    s.write_all(
        format!("GET http://{mock_host}/acme/ws HTTP/1.1\r\nHost: {mock_host}\r\n{upgrade}\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// An upstream that sends an interim `100 Continue` and then closes has not answered: the client
/// gets the refusal after the interim answer (not an empty reply), and the record says 502.
#[test]
fn an_interim_answer_then_nothing_is_refused_after_it() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let host = format!("127.0.0.1:{}", origin.port);
    // A request before it leaves a pooled connection for it to reuse: a failure on a reused
    // connection is one pingora would try again on a new one.
    let warm = raw_request(
        proxy.sidecar_port,
        &format!(
            "GET http://{host}/acme/warm HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(warm.status, 200);
    let mut s = plain(proxy.sidecar_port);
    s.write_all(
        format!("GET http://{host}/acme/only100/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    let at = text
        .find("HTTP/1.1 502")
        .unwrap_or_else(|| panic!("no refusal: {text}"));
    assert!(text.contains("upstream_failed"), "{text}");
    // Once the interim answer went to the client the request is not tried again: one interim
    // answer, one request upstream.
    assert_eq!(text.matches("100 Continue").count(), 1, "{text}");
    assert_eq!(origin.matching("/acme/only100/x").len(), 1);
    // The proxy's own `100 Continue` (to a client that expects one) is no answer of the
    // upstream's: a request that fails on a reused connection is still tried again on a new one.
    let warm = raw_request(
        proxy.sidecar_port,
        &format!(
            "GET http://{host}/acme/warm2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(warm.status, 200);
    let _ = raw_request(
        proxy.sidecar_port,
        &format!("PUT http://{host}/acme/reset/expect HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{{\"a\":1}}"),
    );
    assert_eq!(
        origin.matching("/acme/reset/expect").len(),
        2,
        "tried again"
    );
    let final_response = read_response(&mut BufReader::new(&all[at..])).unwrap();
    let rec = proxy.audit_record("acme", &final_response.request_id());
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["reason"], "upstream_failed", "{rec}");
}

/// An HTTP/2 client cannot switch protocols: an upstream's `101` to its request is withheld as
/// `upstream_failed`, with the JSON body (not a bare stream reset) and its record.
#[test]
fn an_upstream_switch_to_an_http2_request_is_withheld() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(async {
        let send = h2_in_tunnel(&proxy, &authority).await;
        let mut send = send.ready().await.unwrap();
        let request = http::Request::get(format!("https://{authority}/v1/switch/h2"))
            .body(())
            .unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        (status, bytes)
    });
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed", "{body}");
    let id = body["error"]["request_id"].as_str().unwrap();
    let rec = proxy.audit_record("acme", id);
    assert_eq!(rec["reason"], "upstream_failed", "{rec}");
}

#[test]
fn absolute_form_targets_must_agree_with_host_and_name_it() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let url = format!("http://127.0.0.1:{}/acme/proto-abs", origin.port);
    let r = raw_request(
        proxy.sidecar_port,
        &format!("GET {url} HTTP/1.1\r\nHost: other.example\r\n\r\n"),
    )
    .unwrap();
    r.assert_refused(400, "host_mismatch");
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["reason"], "host_mismatch");
    let r = raw_request(proxy.sidecar_port, &format!("GET {url} HTTP/1.1\r\n\r\n")).unwrap();
    let body = r.assert_refused(400, "bad_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Host"),
        "{body}"
    );
    // A name with an empty label names no host; read with one dot stripped it would be checked
    // as one host (`localhost`) and connected to as another (`localhost.`).
    for host in ["localhost..", "local..host", ".localhost"] {
        let url = format!("http://{host}:{}/acme/proto-dots", origin.port);
        let r = raw_request(
            proxy.sidecar_port,
            &format!("GET {url} HTTP/1.1\r\nHost: {host}:{}\r\n\r\n", origin.port),
        )
        .unwrap();
        let body = r.assert_refused(400, "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("empty label"),
            "{host}: {body}"
        );
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], "bad_request", "{host}");
    }
    assert_nothing_smuggled(&origin);
}

#[test]
fn a_head_is_cut_at_its_size_cap_without_being_buffered_past_it() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let mut s = plain(proxy.sidecar_port);
    s.write_all(b"GET /acme/proto-huge HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        .unwrap();
    // Keep sending past the 32 KiB cap: the refusal arrives while the client is still writing.
    let pad = vec![b'a'; 8 * 1024];
    let mut sent = 0;
    let mut refused = false;
    while sent < 1024 * 1024 {
        if s.write_all(&pad).is_err() {
            refused = true;
            break;
        }
        sent += pad.len();
    }
    let mut reader = BufReader::new(s);
    let r = read_response(&mut reader).unwrap();
    r.assert_refused(431, "request_headers_too_large");
    assert!(refused || sent <= 1024 * 1024);
    assert_nothing_smuggled(&origin);
}

/// A TLS recording origin for `llm.test`, and a proxy that intercepts tunnels to it (its CA
/// made by `ca init`, the origin's CA trusted upstream).
fn intercepting_proxy() -> (Origin, Proxy) {
    intercepting_proxy_with(|_| {})
}

/// [`intercepting_proxy`], with the changes `configure` makes to the proxy's configuration.
fn intercepting_proxy_with(configure: impl FnOnce(&mut ProxySpec)) -> (Origin, Proxy) {
    let ca = TestCa::new("e2e protocol origin CA").unwrap();
    let origin = Origin::start_tls(&ca.server(&["llm.test"]).unwrap());
    let origin_ca = ca.cert_pem.clone();
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-https",
        ..Default::default()
    };
    spec.config.egress.connect_ports = Some(vec![origin.port]);
    spec.config
        .egress
        .hosts
        .insert("llm.test".into(), vec!["127.0.0.1".into()]);
    spec.config.upstream.extra_ca_files = vec!["origin-ca.pem".into()];
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    configure(&mut spec);
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("origin-ca.pem"), &origin_ca).unwrap();
        let (code, out) = proxy_cli(
            dir,
            &["ca", "init", "--out", "ca", "--permit", "llm.test"],
            "",
        );
        assert_eq!(code, 0, "{out}");
    });
    (origin, proxy)
}

/// Plain-HTTP requests inside an intercepted tunnel meet the same front.
#[test]
fn malformed_requests_inside_an_intercepted_tunnel_are_refused_and_closed() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let aim = Aim {
        base: String::new(),
        host: authority.clone(),
        extra: String::new(),
    };
    let ca_pem = std::fs::read_to_string(proxy.path("ca/ca.pem")).unwrap();
    let client = tenant_proxy_loadtest::tls::client_config(&ca_pem).unwrap();
    let open = || tunnel(proxy.sidecar_port, &authority, client.clone());
    let ids = run_cases(&aim, open);
    for (name, id) in &ids {
        let rec = proxy.audit_record("acme", id);
        assert_eq!(rec["decision"], "deny", "{name}");
        assert!(rec["tunnel"]["id"].is_string(), "{name}: {rec}");
    }
    assert_nothing_smuggled(&origin);
    assert_valid_requests_pass(&aim, &origin, open());
}

/// An HTTP/2 connection, as acme's sidecar, inside an intercepted tunnel to `authority`
/// (`llm.test:PORT`), trusting the proxy's CA. Call from within a Tokio runtime.
async fn h2_in_tunnel(proxy: &Proxy, authority: &str) -> h2::client::SendRequest<bytes::Bytes> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca_pem = std::fs::read_to_string(proxy.path("ca/ca.pem")).unwrap();
    let mut client = (*tenant_proxy_loadtest::tls::client_config(&ca_pem).unwrap()).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port))
        .await
        .unwrap();
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let name = rustls::pki_types::ServerName::try_from("llm.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    send
}

/// Each HTTP/2 stream in flight beyond a tunnel's first counts as a connection of its tenant
/// (and of its listener), as it holds an upstream connection of its own: one client connection
/// cannot carry more requests at once than the tenant's cap allows connections, and a tunnel
/// with one request in flight counts as one connection, over HTTP/2 as over HTTP/1.1. A stream
/// that ends gives its slot back.
#[test]
fn http2_streams_in_flight_count_against_the_tenant_s_connections() {
    let (origin, proxy) = intercepting_proxy_with(|spec| {
        spec.config.limits.max_connections_per_tenant = Some(3);
    });
    let authority = format!("llm.test:{}", origin.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let send = h2_in_tunnel(&proxy, &authority).await;
        // The tunnel is one of acme's three, and covers one request in flight (as an HTTP/1.1
        // tunnel's connection does); of three streams waiting for a slow answer (the origin
        // sleeps 3 s), the second and third are the other two.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut send = send.clone().ready().await.unwrap();
            let request = http::Request::post(format!("https://{authority}/slow/held"))
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            let (response, mut stream) = send.send_request(request, false).unwrap();
            stream
                .send_data(bytes::Bytes::from_static(b"{}"), true)
                .unwrap();
            held.push(response);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let get = |send: h2::client::SendRequest<bytes::Bytes>| {
            let authority = authority.clone();
            async move {
                let mut send = send.ready().await.unwrap();
                let request = http::Request::get(format!("https://{authority}/v1/after"))
                    .body(())
                    .unwrap();
                let (response, _) = send.send_request(request, true).unwrap();
                let (status, id, body) = h2_answer(response).await;
                (status, id, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, id, body) = get(send.clone()).await;
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("\"connection_limit\""), "{body}");
        let rec = proxy.audit_record("acme", &id);
        assert_eq!(rec["reason"], "connection_limit", "{rec}");
        // Once the held streams end, their slots are free again.
        for response in held {
            assert_eq!(response.await.unwrap().status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, body) = get(send.clone()).await;
        assert_eq!(status, 200, "{body}");
    });
    assert!(origin.matching("/v1/after").len() == 1);
}

/// An HTTP/2 answer read whole: its status, request id and body.
async fn h2_answer(response: h2::client::ResponseFuture) -> (u16, String, Vec<u8>) {
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut answer = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        answer.flow_control().release_capacity(chunk.len()).unwrap();
        body.extend_from_slice(&chunk);
    }
    (status, id, body)
}

/// The upstream gets the body that was decided on, once: an HTTP/2 request that ends with a
/// trailers frame (pingora hands its end over separately) was forwarded with its body twice,
/// joined into form pairs nothing decided on (`…&_` + `method=DELETE…` is `_method=DELETE`).
#[test]
fn an_http2_request_ending_in_trailers_forwards_its_body_once() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let body = b"method=DELETE&a=1&_";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, id) = runtime.block_on(async {
        let send = h2_in_tunnel(&proxy, &authority).await;
        let mut send = send.ready().await.unwrap();
        let request = http::Request::post(format!("https://{authority}/v1/form"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(())
            .unwrap();
        let (response, mut stream) = send.send_request(request, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(body), false)
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("1"));
        stream.send_trailers(trailers).unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let mut answer = response.into_body();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk.unwrap();
            answer.flow_control().release_capacity(chunk.len()).unwrap();
        }
        (status, id)
    });
    assert_eq!(status, 200);
    let got = origin.matching("/v1/form");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body,
        body,
        "{}",
        String::from_utf8_lossy(&got[0].body)
    );
    let rec = proxy.audit_record("acme", &id);
    assert_eq!(rec["bytes_in"], body.len(), "{rec}");
}

/// An HTTP/2 body that ends unread is recorded for what ended it: a client that resets its
/// stream in the middle of its body abandoned the upload, as an HTTP/1 client that closes does
/// (`client_closed`); a body longer than its `content-length` breaks the protocol, and the
/// proxy's HTTP/2 layer resets the stream (`bad_request`). Nothing is forwarded either way.
#[test]
fn an_http2_body_that_ends_unread_is_recorded_for_what_ended_it() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (path, length, data, reset, reason) in [
        (
            "/v1/abandoned",
            "1000",
            &b"{\"a\":"[..],
            true,
            "client_closed",
        ),
        (
            "/v1/longer",
            "3",
            b"{\"a\":1,\"b\":2}",
            false,
            "bad_request",
        ),
    ] {
        runtime.block_on(async {
            let send = h2_in_tunnel(&proxy, &authority).await;
            let mut send = send.ready().await.unwrap();
            let request = http::Request::post(format!("https://{authority}{path}"))
                .header("content-type", "application/json")
                .header("content-length", length)
                .body(())
                .unwrap();
            let (response, mut stream) = send.send_request(request, false).unwrap();
            stream
                .send_data(bytes::Bytes::from_static(data), !reset)
                .unwrap();
            if reset {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                stream.send_reset(h2::Reason::CANCEL);
            } else {
                let _ = response.await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let rec = loop {
            let records = proxy.audit_records("acme");
            if let Some(rec) = records.into_iter().find(|r| r["path"] == path) {
                break rec;
            }
            assert!(std::time::Instant::now() < deadline, "no record of {path}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(rec["reason"], reason, "{rec}");
        assert!(origin.matching(path).is_empty());
    }
}

/// HTTP/2 streams inside an intercepted tunnel meet the checks HTTP/1 requests meet in the
/// front: a `CONNECT` stream is refused `connect_unsupported` (not pingora's bare 405), and a
/// head with more fields than `max_headers` (HPACK makes a repeated field about a byte) is
/// refused `too_many_headers`, each with its JSON body and record.
#[test]
fn http2_streams_meet_the_front_s_checks() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = runtime.block_on(async {
        let send = h2_in_tunnel(&proxy, &authority).await;
        let connect = http::Request::connect(authority.as_str()).body(()).unwrap();
        let mut many = http::Request::get(format!("https://{authority}/v1/many-headers"));
        for _ in 0..150 {
            many = many.header("x-dup", "v");
        }
        let mut answers = Vec::new();
        for request in [connect, many.body(()).unwrap()] {
            let mut send = send.clone().ready().await.unwrap();
            let (response, _) = send.send_request(request, true).unwrap();
            let (status, id, body) = h2_answer(response).await;
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            answers.push((status, id, body));
        }
        answers
    });
    for ((status, id, body), (want_status, code)) in answers
        .iter()
        .zip([(405, "connect_unsupported"), (431, "too_many_headers")])
    {
        assert_eq!(
            (*status, body["error"]["code"].as_str()),
            (want_status, Some(code)),
            "{body}"
        );
        assert_eq!(body["error"]["request_id"].as_str(), Some(id.as_str()));
        let rec = proxy.audit_record("acme", id);
        assert_eq!(rec["reason"], code, "{rec}");
        assert_eq!(rec["tunnel"]["mode"], "intercept", "{rec}");
    }
    assert!(origin.matching("/v1/many-headers").is_empty());
}

/// The same over HTTP/2 inside a tunnel: a stream refused before its body is read (a `//` path)
/// while its client still has more body to send than the stream's window takes. The proxy
/// answers, then reads (and discards) the rest, giving the stream window, so a client that
/// finishes sending before it reads (httpx, curl) is not left waiting for window.
#[test]
fn an_http2_client_still_sending_its_body_is_given_window_after_a_refusal() {
    let (origin, proxy) = intercepting_proxy();
    let authority = format!("llm.test:{}", origin.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, sent) = runtime.block_on(async {
        let send = h2_in_tunnel(&proxy, &authority).await;
        let mut send = send.ready().await.unwrap();
        let request = http::Request::post(format!("https://{authority}/v1//refused"))
            .header("content-type", "application/octet-stream")
            .body(())
            .unwrap();
        let (response, mut stream) = send.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let mut answer = response.into_body();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk.unwrap();
            answer.flow_control().release_capacity(chunk.len()).unwrap();
        }
        // Four times the default 64 KiB window, sent as the proxy gives window for it.
        let mut left = 256 * 1024;
        while left > 0 {
            stream.reserve_capacity(left);
            let granted = tokio::time::timeout(
                Duration::from_secs(4),
                std::future::poll_fn(|cx| stream.poll_capacity(cx)),
            )
            .await;
            let Ok(Some(Ok(n))) = granted else {
                break;
            };
            let n = n.min(left);
            left -= n;
            stream
                .send_data(bytes::Bytes::from(vec![b'x'; n]), left == 0)
                .unwrap();
        }
        (status, 256 * 1024 - left)
    });
    assert_eq!(status, 400);
    assert_eq!(
        sent,
        256 * 1024,
        "the proxy gave no window for the rest of the body"
    );
    assert!(origin.matching("/refused").is_empty());
}

/// An upgrade request with a body: the body goes upstream once, and the client's own bytes are
/// never replaced by copies of it (each later call of the body filter handed the body over
/// again, in place of the WebSocket frames). The mock answers 101 at once and echoes every byte
/// it gets. Pingora may end such a connection right after the 101 when the upstream switches
/// before the request's body is sent (an upgrade request with a body is unusual; the README
/// says so under *Bodies*): then nothing is echoed, and nothing unchecked went upstream either.
#[test]
fn an_upgrade_request_with_a_body_never_sends_the_body_twice() {
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    let mut s = plain(proxy.sidecar_port);
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET /llm/ws HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 9\r\n\r\nBODY-ONCE"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Reads what arrives until the connection closes or 3 s pass.
    let mut drain = |s: &mut TcpStream, seen: &mut Vec<u8>, until: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !seen.windows(until.len()).any(|w| w == until) {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    };
    drain(&mut s, &mut seen, b"101 Switching Protocols");
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    for frame in [&b"FRAME-ONE"[..], b"FRAME-TWO"] {
        let _ = s.write_all(frame);
        drain(&mut s, &mut seen, frame);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.matches("BODY-ONCE").count() <= 1, "{text}");
    // Whatever came back after a frame is that frame, never the body again.
    if let Some(at) = text.find("FRAME-ONE") {
        assert!(!text[at..].contains("BODY-ONCE"), "{text}");
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// An intercepted tunnel to `authority` on the proxy's `port`, TLS established.
fn tunnel(port: u16, authority: &str, client: Arc<rustls::ClientConfig>) -> Tls {
    let mut s = plain(port);
    write!(
        s,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let sni = authority.rsplit_once(':').unwrap().0.to_string();
    let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

#[test]
fn slow_heads_and_bodies_are_cut_at_their_deadlines_while_others_are_served() {
    let origin = Origin::start();
    let proxy = start(|config| {
        config.limits.client_body_timeout = Some(Duration::from_secs(2));
        config.egress.client_header_timeout = Some(Duration::from_secs(2));
    });
    let started = Instant::now();
    // A few hundred slowloris connections: each trickles a head, a line at a time.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = plain(proxy.sidecar_port);
            s.write_all(b"GET /acme/proto-slow HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Slow bodies: a head, then a byte now and then.
    let mut bodies: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = plain(proxy.sidecar_port);
            s.write_all(
                format!(
                    "POST http://127.0.0.1:{}/acme/proto-slowbody HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 100\r\n\r\na",
                    origin.port, origin.port
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    // Meanwhile, normal requests are served.
    for i in 0..5 {
        let r = forward_get(
            proxy.sidecar_port,
            &format!("http://127.0.0.1:{}/acme/normal-{i}", origin.port),
            None,
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        // Each slow client keeps trickling: a deadline is not an idle timer.
        for s in slow.iter_mut().chain(bodies.iter_mut()) {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every slow connection gets 408 and is closed at its deadline, however much it trickled.
    for s in slow.into_iter().chain(bodies) {
        let mut reader = BufReader::new(s);
        let r = read_response(&mut reader).unwrap();
        r.assert_refused(408, "request_timeout");
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed at the deadline, not held: {:?}",
        started.elapsed()
    );
    assert_eq!(origin.matching("proto-").len(), 0);
    assert_eq!(origin.matching("/acme/normal-").len(), 5);
}

/// One tenant's slow uploads hold at most its share of the body memory: its next body is
/// refused before it is read (429 `body_memory_limit`, audited), while another tenant's body is
/// read and forwarded. Without the share, acme's four uploads would hold all of it and globex
/// would be refused `overloaded`.
#[test]
fn one_tenants_uploads_cannot_take_every_tenants_body_memory() {
    let origin = Origin::start();
    let proxy = start(|config| {
        config.limits = config::RequestLimits {
            max_body_bytes: Some(65536),
            max_buffered_body_bytes: Some(262_144),
            max_buffered_body_bytes_per_tenant: Some(131_072),
            client_body_timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        }
    });
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", origin.port);
    let upload = |path: &str| {
        format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 65536\r\n\r\npartial",
            url(path),
            origin.port
        )
    };
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..4 {
        let mut s = plain(proxy.sidecar_port);
        s.write_all(upload(&format!("/acme/held-{i}")).as_bytes())
            .unwrap();
        if i < 2 {
            // Held: the proxy waits for the rest of the body.
            std::thread::sleep(Duration::from_millis(300));
            held.push(s);
            continue;
        }
        let r = read_response(&mut BufReader::new(s)).unwrap();
        let body = r.assert_refused(429, "body_memory_limit");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("131072 bytes"),
            "{body}"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        refused.push(r.request_id());
    }
    let globex = token_for("globex", "agent");
    let r = raw_request(
        proxy.shared_port,
        &format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {globex}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
            url("/globex/upload"),
            origin.port
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.matching("/globex/upload")[0].body, b"0123456789");
    assert!(origin.matching("/acme/held-").is_empty());
    assert!(proxy
        .metrics()
        .contains("tenant_proxy_overload_refusals_total{reason=\"tenant_body_memory\"} 2"));
    for id in &refused {
        let rec = proxy.audit_record("acme", id);
        assert_eq!(rec["reason"], "body_memory_limit", "{rec}");
    }
    drop(held);
}

#[test]
fn bodies_in_memory_and_connections_are_capped() {
    let origin = Origin::start();
    let proxy = start(|config| {
        config.limits = config::RequestLimits {
            max_body_bytes: Some(65536),
            max_buffered_body_bytes: Some(131_072),
            // The process's bound is under test here; one tenant may take all of it.
            max_buffered_body_bytes_per_tenant: Some(131_072),
            max_connections_per_tenant: Some(3),
            max_connections_per_listener: Some(40),
            client_body_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        }
    });
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", origin.port);
    // Two uploads of 64 KiB that have not finished hold the whole body budget...
    let held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = plain(proxy.sidecar_port);
            s.write_all(
                format!(
                    "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 65536\r\n\r\npartial",
                    url(&format!("/acme/held-{i}")),
                    origin.port
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...so a third is refused before its body is read, and says when to come back.
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 10\r\n\r\n0123456789",
            url("/acme/third"),
            origin.port
        ),
    )
    .unwrap();
    r.assert_refused(503, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(proxy
        .metrics()
        .contains("tenant_proxy_overload_refusals_total{reason=\"body_memory\"} 1"));
    drop(held);

    // A tenant's connections are capped (the held uploads gave theirs back when they closed);
    // another tenant's are not.
    std::thread::sleep(Duration::from_millis(300));
    let acme = token_for("acme", "researcher");
    let globex = token_for("globex", "agent");
    let keep = |tok: &str, path: &str| {
        let mut s = plain(proxy.shared_port);
        s.write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {tok}\r\n\r\n",
                url(path),
                origin.port
            )
            .as_bytes(),
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let r = read_response(&mut reader).unwrap();
        (r, reader)
    };
    let open: Vec<_> = (0..3)
        .map(|i| keep(&acme, &format!("/acme/conn-{i}")))
        .collect();
    for (r, _) in &open {
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let (r, _) = keep(&acme, "/acme/conn-over");
    r.assert_refused(429, "connection_limit");
    let (r, _) = keep(&globex, "/globex/conn");
    assert_ne!(
        r.code(),
        "connection_limit",
        "globex never counts against acme's connections"
    );
    // A client that holds both tenants' tokens and one pool: globex's requests on acme's three
    // connections count them against globex as well, so its own fourth is over its cap.
    let mut open = open;
    for (i, (_, reader)) in open.iter_mut().enumerate() {
        reader
            .get_mut()
            .write_all(
                format!(
                    "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {globex}\r\n\r\n",
                    url(&format!("/globex/pooled-{i}")),
                    origin.port
                )
                .as_bytes(),
            )
            .unwrap();
        let r = read_response(reader).unwrap();
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    std::thread::sleep(Duration::from_millis(300));
    let (r, _) = keep(&globex, "/globex/conn-over");
    r.assert_refused(429, "connection_limit");
    drop(open);
    std::thread::sleep(Duration::from_millis(300));
    let (r, _) = keep(&acme, "/acme/conn-after");
    assert_eq!(r.status, 200, "slots come back when connections close");
}

#[test]
fn a_request_that_ends_after_admission_is_never_recorded_as_allowed() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    // The client goes away while the upstream is still working on its request.
    let mut s = plain(proxy.sidecar_port);
    s.write_all(
        format!(
            "GET http://127.0.0.1:{}/slow/gone HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            origin.port, origin.port
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    // The upstream resets the connection without answering.
    let r = forward_get(
        proxy.sidecar_port,
        &format!("http://127.0.0.1:{}/reset/now", origin.port),
        None,
        "",
    );
    r.assert_refused(502, "upstream_failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = proxy.audit_records("acme");
        let gone = recs.iter().find(|r| r["path"] == "/slow/gone");
        let reset = recs.iter().find(|r| r["path"] == "/reset/now");
        if let (Some(gone), Some(reset)) = (gone, reset) {
            assert_eq!(gone["decision"], "deny", "{gone}");
            assert_eq!(gone["reason"], "client_closed", "{gone}");
            assert_eq!(reset["decision"], "deny", "{reset}");
            assert_eq!(
                (reset["reason"].as_str(), reset["status"].as_u64()),
                (Some("upstream_failed"), Some(502))
            );
            break;
        }
        assert!(Instant::now() < deadline, "records: {recs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request refused before its body is read (no identity on the token listener) while the
/// client is still sending a large body: the client reads the JSON refusal, not a reset. The
/// proxy reads and discards the rest of the body (bounded) before it closes, since closing with
/// unread bytes resets the connection; nothing reaches the upstream.
#[test]
fn a_client_still_sending_its_body_reads_a_refusal_made_before_it() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let body = vec![b'x'; 3 << 20];
    let mut s = plain(proxy.shared_port);
    write!(
        s,
        "POST http://127.0.0.1:{o}/upload HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len(),
        o = origin.port
    )
    .unwrap();
    // The refusal is written (and, without the drain, the connection closed) before the body.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body)
        .expect("the proxy reset the connection under the upload");
    let mut reader = std::io::BufReader::new(s);
    let r = read_response(&mut reader).expect("no refusal to read");
    r.assert_refused(407, "identity_required");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(origin.count(), 0);
}

/// A client that goes away in the middle of its body (a cancelled upload) is recorded as
/// `client_closed`, with no status (nobody was answered), not as a malformed request: whether it
/// closes, half-closes or resets its connection, with a declared length or chunked. Nothing
/// reaches the upstream.
#[test]
fn an_upload_the_client_abandons_is_recorded_as_client_closed() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let before = origin.count();
    let cases: [(&str, &str, &str, u8); 4] = [
        (
            "/gone/closed",
            "Content-Length: 1000\r\n",
            "only a little",
            0,
        ),
        ("/gone/half", "Content-Length: 1000\r\n", "only a little", 1),
        (
            "/gone/reset",
            "Content-Length: 1000\r\n",
            "only a little",
            2,
        ),
        (
            "/gone/chunked",
            "Transfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n",
            0,
        ),
    ];
    for (path, framing, sent, how) in cases {
        let mut s = plain(proxy.sidecar_port);
        write!(
            s,
            "POST http://127.0.0.1:{o}{path} HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Type: text/plain\r\n{framing}\r\n{sent}",
            o = origin.port
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        match how {
            0 => drop(s),
            1 => {
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
            }
            _ => {
                // SO_LINGER 0: the close sends a reset.
                let reset = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &reset)
                    .unwrap();
                drop(s);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = proxy.audit_records("acme");
        let found: Vec<_> = cases
            .iter()
            .filter_map(|(path, ..)| recs.iter().find(|r| r["path"] == *path))
            .collect();
        if found.len() == cases.len() {
            for rec in found {
                assert_eq!(rec["decision"], "deny", "{rec}");
                assert_eq!(rec["reason"], "client_closed", "{rec}");
                assert_eq!(rec["status"].as_u64().unwrap_or(0), 0, "{rec}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "records: {recs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(origin.count(), before, "nothing reached the upstream");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_a_short_one_is_named() {
    // Started the way many hosts start services: a soft limit of 256 under a hard one of 4096.
    let spec = ProxySpec {
        command_prefix: ["prlimit", "--nofile=256:4096", "--"]
            .map(String::from)
            .to_vec(),
        ..ProxySpec::default()
    };
    let proxy = Proxy::start(spec);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let figures: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(figures, ["4096", "4096"], "{open_files}");
    let log = proxy.log();
    assert!(
        log.contains("raised the open-file limit") && log.contains("from=256"),
        "{log}"
    );
    // 4096 is below two descriptors for each of the 10,000 connections per listener allowed.
    assert!(
        log.contains("the open-file limit is below what the connection caps allow"),
        "{log}"
    );
    // The raised limit serves: the proxy answers on it.
    let r = forward_get(proxy.sidecar_port, "http://127.0.0.1:1/", None, "");
    assert!(
        r.status >= 400 && r.json()["error"]["code"].is_string(),
        "{}",
        r.status
    );
}

#[test]
fn a_taken_port_ends_the_process_at_once_with_one_line_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    copy_dir(
        &root.join("tests/fixtures/policies"),
        &dir.path().join("policies"),
    );
    std::fs::copy(
        root.join("policies/schema.cedarschema"),
        dir.path().join("policies/schema.cedarschema"),
    )
    .unwrap();
    // The listener asks for the port another socket holds.
    let mut config = config::StaticFile::new("tenants.toml", "audit");
    config.admin.listen = Some(config::LOOPBACK_ANY_PORT);
    config.listeners.push(config::Listener {
        listen: addr,
        ..config::Listener::bound(SIDECAR, "acme", "bot")
    });
    config.write(&dir.path().join("tenant-proxy.toml")).unwrap();
    standard_tenants()
        .write(&dir.path().join("tenants.toml"))
        .unwrap();
    // (The binary is built first, outside the measured time.)
    let binary = proxy_bin();
    let started = Instant::now();
    let out = std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(dir.path().join("tenant-proxy.toml"))
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(&addr.to_string()), "{stderr}");
    assert!(
        !dir.path().join("audit").exists(),
        "nothing started before the bind failed"
    );
}

/// A client that waits for `100 Continue` before it sends its body (curl does for large ones)
/// is told to go on, and the body goes upstream whole with its head, without `Expect`. One that
/// is refused before its body is read gets the refusal instead.
#[test]
fn a_client_that_expects_100_continue_is_told_to_send_its_body() {
    let origin = Origin::start();
    let proxy = start(|_| {});
    let host = format!("127.0.0.1:{}", origin.port);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST http://{host}/acme/expect HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{\"a\":\"xyz\"}").unwrap();
    let r = read_response(&mut BufReader::new(&mut s)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = origin.matching("/acme/expect");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"{\"a\":\"xyz\"}");
    assert!(
        !seen[0].headers.contains_key("expect"),
        "{:?}",
        seen[0].headers
    );
    // The `100` did not close the connection: a request refused once its whole body was read
    // leaves it open too, as without `Expect`, and the next request is served on it.
    assert_eq!(
        r.header("connection"),
        Some("keep-alive"),
        "{:?}",
        r.headers
    );
    write!(
        s,
        "POST http://{host}/globex/expect HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    .unwrap();
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{}").unwrap();
    let r = read_response(&mut BufReader::new(&mut s)).unwrap();
    r.assert_refused(403, "policy_denied");
    assert_eq!(
        r.header("connection"),
        Some("keep-alive"),
        "{:?}",
        r.headers
    );
    write!(
        s,
        "GET http://{host}/acme/after HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(&mut s)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());

    // Refused before its body is read (too large): the final status, no `100`.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST http://{host}/acme/expect HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(&mut s)).unwrap();
    assert_eq!(r.status, 413, "{}", r.body_text());
}
