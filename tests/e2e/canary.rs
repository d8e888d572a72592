//! The canary: a tenant credential `sk-CANARY-<random>` driven through every kind of answer a
//! careless or malformed upstream gives (2xx, 4xx, 5xx, timeout, refusals, malformed heads, a
//! WebSocket, SSE, gzip, JSON-escaped, re-cased and base64 echoes) with the proxy logging at
//! `trace` plus target-specific trace directives; then every sink is searched: the proxy's
//! stdout and stderr, the audit files, the audit Redis streams, `/metrics`, and every response
//! header and body the client got. Zero hits, in any of the canary's forms.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::support::*;

const RUST_LOG: &str =
    "trace,pingora_proxy::proxy_h1=trace,pingora_core=trace,pingora_core::protocols::http::v1::client=trace,pingora=trace,h2=trace";

fn canary() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("sk-CANARY-{:016x}", h.finish())
}

// ---------------------------------------------------------------------------------------------
// An upstream that echoes what it received in every awkward way. One request per connection.

/// Each request's target and headers, as the upstream received them.
type Seen = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

struct Hostile {
    port: u16,
    seen: Seen,
}

impl Hostile {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen2.clone();
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        Self { port, seen }
    }

    /// The headers the request to `path` arrived with.
    fn got(&self, path: &str) -> HashMap<String, String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| t.starts_with(path))
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("{path} never reached the upstream"))
    }
}

fn serve(stream: TcpStream, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        let mut body = vec![0; n];
        let _ = reader.read_exact(&mut body);
    }
    seen.lock().unwrap().push((target.clone(), headers.clone()));
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    let secret = auth.trim_start_matches("Bearer ").to_string();
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let plain = |status: &str, extra: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let echo = json(serde_json::json!({ "you_sent": auth }));
    let kind = target
        .trim_start_matches("/acme/")
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let response: Vec<u8> = match kind {
        "ok" => plain("200 OK", &format!("x-echo: {auth}\r\n"), &echo),
        "e404" => plain("404 Not Found", &format!("x-echo: {auth}\r\n"), &echo),
        "e500" => plain(
            "500 Internal Server Error",
            &format!("x-echo: {auth}\r\n"),
            &echo,
        ),
        "slow" => {
            std::thread::sleep(Duration::from_millis(2500));
            plain("200 OK", &format!("x-echo: {auth}\r\n"), &echo)
        }
        "reason" => plain(&format!("200 {auth}"), "", b"{}"),
        "nul" => format!("HTTP/1.1 200 OK\r\nx-echo: {auth}\0\r\ncontent-length: 2\r\n\r\n{{}}")
            .into_bytes(),
        "badstatus" => format!("HTTP/1.1 2OO {auth}\r\ncontent-length: 0\r\n\r\n").into_bytes(),
        "escaped" => {
            let all: String = auth
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            let some = auth.replace('-', "\\u002d").replace('C', "\\u0043");
            let body = format!(
                r#"{{"every":"{all}","some":"{some}","slash":"{}"}}"#,
                auth.replace('-', "\\/-")
            );
            plain(
                "200 OK",
                &format!("x-echo-escaped: {some}\r\n"),
                body.as_bytes(),
            )
        }
        "cased" => {
            let body = json(serde_json::json!({
                "upper": auth.to_uppercase(),
                "lower": auth.to_lowercase(),
                "percent": secret.bytes().map(|b| format!("%{b:02X}")).collect::<String>(),
            }));
            plain(
                "200 OK",
                &format!("x-echo-upper: {}\r\n", auth.to_uppercase()),
                &body,
            )
        }
        "b64" => {
            let mut forms = Vec::new();
            for prefix in ["", "u", "us", "user:"] {
                let text = format!("{prefix}{secret}");
                for e in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                    forms.push(e.encode(text.as_bytes()));
                }
            }
            let basic = STANDARD.encode(format!("user:{secret}"));
            plain(
                "200 OK",
                &format!("x-echo-basic: Basic {basic}\r\n"),
                &json(serde_json::json!({ "forms": forms })),
            )
        }
        "sse" => {
            let (a, b) = auth.split_at(auth.len() / 2);
            let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            let _ = out.write_all(chunk(&format!("data: {{\"auth\":\"{a}")).as_bytes());
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(150));
            let _ = out.write_all(chunk(&format!("{b}\"}}\n\n")).as_bytes());
            let escaped: String = auth
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            let _ =
                out.write_all(chunk(&format!("data: {{\"auth\":\"{escaped}\"}}\n\n")).as_bytes());
            let _ = out.write_all(b"0\r\n\r\n");
            return;
        }
        "gzip" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&echo).unwrap();
            let body = gz.finish().unwrap();
            plain("200 OK", "content-encoding: gzip\r\n", &body)
        }
        "tegzip" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&echo).unwrap();
            let body = gz.finish().unwrap();
            let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n".to_vec();
            r.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            r.extend_from_slice(&body);
            r.extend_from_slice(b"\r\n0\r\n\r\n");
            r
        }
        "nocontent" => {
            format!("HTTP/1.1 204 No Content\r\nx-echo: {auth}\r\ncontent-length: 0\r\n\r\n")
                .into_bytes()
        }
        "techunkid" => {
            // Framed in chunks, but declared `chunked, identity`: pingora frames by the last
            // coding, so the chunk framing (which splits the echo) would reach the scrubber,
            // and a client that undoes it would read the echo whole.
            let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked, identity\r\nconnection: close\r\n\r\n".to_vec();
            for piece in echo.chunks(3) {
                r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                r.extend_from_slice(piece);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }
        "ws" => {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-echo: {auth}\r\n\r\n"
            );
            let mut r = head.into_bytes();
            for payload in [
                json(serde_json::json!({ "auth": auth })),
                json(serde_json::json!({ "basic": STANDARD.encode(format!("user:{secret}")) })),
            ] {
                assert!(payload.len() < 126);
                r.push(0x81);
                r.push(payload.len() as u8);
                r.extend_from_slice(&payload);
            }
            if out.write_all(&r).is_err() {
                return;
            }
            let _ = out.flush();
            // Hold the connection until the client goes.
            let mut sink = [0u8; 256];
            out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
        "wsdeflate" => {
            // Switches on compression nobody offered, then sends a compressed echo (RSV1).
            let mut r = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nsec-websocket-extensions: permessage-deflate\r\n\r\n".to_vec();
            let mut z =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&json(serde_json::json!({ "auth": auth })))
                .unwrap();
            let payload = z.finish().unwrap();
            assert!(payload.len() < 126);
            r.push(0xC1);
            r.push(payload.len() as u8);
            r.extend_from_slice(&payload);
            let _ = out.write_all(&r);
            let _ = out.flush();
            return;
        }
        _ => plain("200 OK", "", b"{}"),
    };
    let _ = out.write_all(&response);
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// Where to look, and for what.

/// Every form of the secret a sink could hold: as written or re-cased, JSON- or percent-escaped
/// (decoded before searching), and the base64 runs that encode only its bits, at each alignment.
struct Forms {
    lower: String,
    base64_cores: Vec<String>,
}

impl Forms {
    fn of(secret: &str) -> Self {
        let mut cores = Vec::new();
        for align in 0..3 {
            for e in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let mut padded = vec![0u8; align];
                padded.extend_from_slice(secret.as_bytes());
                padded.extend_from_slice(&[0, 0]);
                let enc = e.encode(&padded);
                let first = (8 * align).div_ceil(6);
                let last = (8 * (align + secret.len())) / 6;
                cores.push(enc[first..last].to_string());
            }
        }
        Self {
            lower: secret.to_lowercase(),
            base64_cores: cores,
        }
    }

    /// Which forms `hay` holds (empty: none).
    fn found_in(&self, hay: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(hay);
        let mut found = Vec::new();
        if text.to_lowercase().contains(&self.lower) {
            found.push("as written".into());
        }
        if json_unescape(&text).to_lowercase().contains(&self.lower) {
            found.push("JSON-escaped".into());
        }
        if percent_decode(&text).to_lowercase().contains(&self.lower) {
            found.push("percent-encoded".into());
        }
        for core in &self.base64_cores {
            if text.contains(core.as_str()) {
                found.push(format!("base64 `{core}`"));
            }
        }
        found
    }
}

fn json_unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        match rest
            .get(at + 2..at + 6)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
        {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 6..];
            }
            None => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out.replace("\\/", "/")
}

fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `raw` on a new connection and returns every byte the proxy answered until it closed.
fn exchange(port: u16, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn parsed(raw: &[u8]) -> Response {
    read_response(&mut BufReader::new(raw)).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(raw));
    })
}

/// The default proxy with credentials from the vault `vault.json` (master key `master.key`).
fn vault_spec() -> ProxySpec {
    let mut spec = ProxySpec::default();
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    spec
}

#[test]
fn the_canary_reaches_no_sink_at_any_log_level() {
    let secret = canary();
    let forms = Forms::of(&secret);
    let upstream = Hostile::start();
    let redis = RedisServer::start();
    let mut spec = vault_spec();
    spec.config.upstream.read_timeout = Some(Duration::from_secs(1));
    spec.config.audit.redis_url = Some(redis.url().into());
    spec.config.audit.redis_required = Some(true);
    spec.env = vec![("RUST_LOG".into(), RUST_LOG.into())];
    let proxy = Proxy::start_prepared(spec, |dir| {
        let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
        assert_eq!(code, 0, "{out}");
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
                "canary",
                "--bind",
                "127.0.0.1/acme/",
                "--in",
                "header",
            ],
            &secret,
        );
        assert_eq!(code, 0, "{out}");
    });
    let u = upstream.port;
    let get = |path: &str, extra: &str| {
        format!(
            "GET http://127.0.0.1:{u}{path} HTTP/1.1\r\nHost: 127.0.0.1:{u}\r\nAuthorization: Bearer $CRED{{canary}}\r\nAccept-Encoding: gzip, br\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    // (case, request, expected status, expected code or a text the body must hold)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("2xx echo", get("/acme/ok", ""), 200, "$CRED{canary}"),
        ("4xx echo", get("/acme/e404", ""), 404, "$CRED{canary}"),
        ("5xx echo", get("/acme/e500", ""), 500, "$CRED{canary}"),
        ("upstream timeout", get("/acme/slow", ""), 504, "upstream_timeout"),
        ("secret in the status reason", get("/acme/reason", ""), 200, "{}"),
        ("NUL in an echoed header", get("/acme/nul", ""), 502, "upstream_failed"),
        ("bad status line echoing", get("/acme/badstatus", ""), 502, "upstream_failed"),
        ("JSON-escaped echo", get("/acme/escaped", ""), 200, "$CRED{canary}"),
        ("re-cased and percent echo", get("/acme/cased", ""), 200, "$CRED{canary}"),
        ("base64 echo", get("/acme/b64", ""), 200, "\"forms\""),
        ("SSE echo split mid-secret", get("/acme/sse", ""), 200, "$CRED{canary}"),
        ("gzip echo", get("/acme/gzip", ""), 502, "upstream_encoded"),
        ("gzip transfer coding", get("/acme/tegzip", ""), 502, "upstream_encoded"),
        (
            "chunks declared chunked, identity",
            get("/acme/techunkid", ""),
            502,
            "upstream_encoded",
        ),
        (
            "refused: unbound host",
            format!("GET http://localhost:{u}/acme/ok HTTP/1.1\r\nHost: localhost:{u}\r\nAuthorization: Bearer $CRED{{canary}}\r\nConnection: close\r\n\r\n"),
            403,
            "credential_not_bound",
        ),
        (
            "refused: wrong position",
            get("/acme/ok", "X-Debug: $CRED{canary}\r\n"),
            403,
            "credential_position",
        ),
    ];
    let mut answers: Vec<(&str, Vec<u8>)> = Vec::new();
    for (case, raw, status, expect) in &cases {
        let bytes = exchange(proxy.sidecar_port, raw.as_bytes());
        let r = parsed(&bytes);
        assert_eq!(
            r.status,
            *status,
            "{case}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if expect.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            assert_eq!(r.code(), *expect, "{case}");
        } else {
            assert!(r.body_text().contains(expect), "{case}: {}", r.body_text());
        }
        answers.push((case, bytes));
    }

    // A 204 whose echo was scrubbed (which drops its declared length) is not framed as
    // chunked: it has no body, and a client would wait for one.
    let bytes = exchange(proxy.sidecar_port, get("/acme/nocontent", "").as_bytes());
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length: 0\r\n\r\n0"), "{head}");

    // The base64 echo still decodes; the secret is not in any of its forms.
    let b64 = parsed(&answers.iter().find(|(c, _)| *c == "base64 echo").unwrap().1);
    for form in b64.json()["forms"].as_array().unwrap() {
        let f = form.as_str().unwrap();
        let decoded = STANDARD
            .decode(f)
            .or_else(|_| URL_SAFE.decode(f))
            .or_else(|_| STANDARD_NO_PAD.decode(f))
            .or_else(|_| URL_SAFE_NO_PAD.decode(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(String::from_utf8_lossy(&decoded).contains("*****"), "{f}");
    }

    // WebSocket: the upgrade is answered and the upstream's frames arrive whole, their echoes
    // masked to the same length.
    let mut ws = TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        ws,
        "GET http://127.0.0.1:{u}/acme/ws HTTP/1.1\r\nHost: 127.0.0.1:{u}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer $CRED{{canary}}\r\n\r\n"
    )
    .unwrap();
    let mut ws_bytes = Vec::new();
    let mut buf = [0u8; 1024];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    while frames.len() < 2 {
        let n = ws.read(&mut buf).unwrap_or(0);
        assert!(
            n > 0,
            "websocket closed early: {}",
            String::from_utf8_lossy(&ws_bytes)
        );
        ws_bytes.extend_from_slice(&buf[..n]);
        frames.clear();
        if let Some(head_end) = ws_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut rest = &ws_bytes[head_end + 4..];
            while rest.len() >= 2 && rest.len() >= 2 + usize::from(rest[1] & 0x7f) {
                let len = usize::from(rest[1] & 0x7f);
                frames.push(rest[2..2 + len].to_vec());
                rest = &rest[2 + len..];
            }
        }
    }
    drop(ws);
    assert!(
        String::from_utf8_lossy(&ws_bytes).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&ws_bytes)
    );
    for f in &frames {
        let v: serde_json::Value = serde_json::from_slice(f).unwrap_or_else(|e| {
            panic!("frame no longer JSON ({e}): {}", String::from_utf8_lossy(f))
        });
        let masked = match v["basic"].as_str() {
            Some(b) => String::from_utf8_lossy(&STANDARD.decode(b).unwrap()).into_owned(),
            None => v.to_string(),
        };
        assert!(masked.contains("*****"), "{v}: {masked}");
    }
    answers.push(("WebSocket", ws_bytes));
    // An upstream that switches on compression anyway is refused before a frame passes.
    let deflate = exchange(
        proxy.sidecar_port,
        format!(
            "GET http://127.0.0.1:{u}/acme/wsdeflate HTTP/1.1\r\nHost: 127.0.0.1:{u}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer $CRED{{canary}}\r\n\r\n"
        )
        .as_bytes(),
    );
    let refused = parsed(&deflate);
    refused.assert_refused(502, "upstream_encoded");
    answers.push(("compressed WebSocket", deflate));

    // The secret did travel: the bound upstream got it, and asked for identity bodies.
    assert_eq!(
        upstream.got("/acme/ok")["authorization"],
        format!("Bearer {secret}")
    );
    assert_eq!(upstream.got("/acme/gzip")["accept-encoding"], "identity");
    assert!(!upstream
        .got("/acme/ws")
        .contains_key("sec-websocket-extensions"));

    // Every response header and body the client got.
    for (case, bytes) in &answers {
        let mut hays = vec![bytes.clone()];
        if let Ok(r) = read_response(&mut BufReader::new(&bytes[..])) {
            hays.push(r.body); // de-chunked
        }
        for hay in hays {
            let found = forms.found_in(&hay);
            assert!(
                found.is_empty(),
                "{case}: the client got the canary ({found:?}): {}",
                String::from_utf8_lossy(&hay)
            );
        }
    }

    // The audit trail: files and Redis streams.
    let records = proxy.wait_audit_records("acme", cases.len() + 1);
    assert!(records.iter().any(|r| r["reason"] == "upstream_encoded"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let streamed = redis.cli(&["XLEN", "tp:{acme}:audit"]);
        if streamed.trim().parse::<usize>().unwrap_or(0) >= records.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit stream got {streamed} records"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for key in redis.cli(&["KEYS", "*"]).lines() {
        let dump = match redis.cli(&["TYPE", key]).trim() {
            "stream" => redis.cli(&["XRANGE", key, "-", "+"]),
            _ => redis.cli(&["DUMP", key]),
        };
        let found = forms.found_in(dump.as_bytes());
        assert!(
            found.is_empty(),
            "redis `{key}` holds the canary ({found:?})"
        );
    }
    for file in walk(&proxy.path("audit")) {
        let found = forms.found_in(&std::fs::read(&file).unwrap());
        assert!(
            found.is_empty(),
            "{} holds the canary ({found:?})",
            file.display()
        );
    }

    // Metrics.
    let metrics = proxy.metrics();
    assert!(forms.found_in(metrics.as_bytes()).is_empty(), "{metrics}");
    assert!(
        metrics.contains(r#"tenant_proxy_credential_scrubbed_total{tenant="acme"}"#),
        "{metrics}"
    );

    // The log, stdout and stderr, at trace: it names the malformed answers, not their bytes.
    std::thread::sleep(Duration::from_millis(300));
    let log = proxy.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "verbose logging was on"
    );
    assert!(
        log.contains("upstream request failed") && log.contains("InvalidHTTPHeader"),
        "the failure is still logged: {log}"
    );
    let found = forms.found_in(log.as_bytes());
    assert!(
        found.is_empty(),
        "the log holds the canary ({found:?}):\n{log}"
    );
}

#[test]
fn a_malformed_echo_at_the_default_level_logs_what_failed_and_no_secret() {
    let secret = canary();
    let upstream = Hostile::start();
    let proxy = Proxy::start_prepared(vault_spec(), |dir| {
        let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
        assert_eq!(code, 0, "{out}");
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
                "canary",
                "--bind",
                "127.0.0.1/acme/",
                "--in",
                "header",
            ],
            &secret,
        );
        assert_eq!(code, 0, "{out}");
    });
    let u = upstream.port;
    for path in ["/acme/nul", "/acme/badstatus"] {
        let r = forward_get(
            proxy.sidecar_port,
            &format!("http://127.0.0.1:{u}{path}"),
            None,
            "Authorization: Bearer $CRED{canary}\r\n",
        );
        // The upstream got the request (and the secret): the refusal says so.
        r.assert_refused(502, "upstream_failed");
        assert_eq!(
            upstream.got(path)["authorization"],
            format!("Bearer {secret}")
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = proxy.log();
    assert!(log.contains("upstream request failed"), "{log}");
    assert!(
        !log.contains("Fail to proxy"),
        "pingora's own line is suppressed: {log}"
    );
    let found = Forms::of(&secret).found_in(log.as_bytes());
    assert!(
        found.is_empty(),
        "the log holds the canary ({found:?}):\n{log}"
    );
}

/// The process holds every tenant's secrets: it writes no core file (its core size limit is 0,
/// however it was started), so a crash cannot put them on disk.
#[test]
fn a_crash_cannot_write_the_secrets_to_a_core_file() {
    let proxy = Proxy::start(ProxySpec {
        command_prefix: ["prlimit", "--core=unlimited:unlimited", "--"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "soft and hard: {core}");
}
