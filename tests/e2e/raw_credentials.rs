//! The agent never authenticates upstream with its own key, and handles go only where
//! credentials go: every variant of issue 15's sections 1 and 2, each checked on what the
//! capture origin received and on the audit record.

use std::path::Path;

use crate::support::*;

const ACME_KEY: &str = "sk-acme-raw-5c1d9e";
const ACME_ECHO_KEY: &str = "sk-acme-echo-77b0a2";
const GLOBEX_KEY: &str = "sk-globex-raw-3f8e41";
const LITERAL: &str = "sk-LITERAL-agent-own-0042";

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
}

/// acme's keys are managed at 127.0.0.1; globex's only at `localhost`, so 127.0.0.1 is not a
/// managed destination for globex.
fn prepare(dir: &Path) {
    let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
    assert_eq!(code, 0, "{out}");
    put(
        dir,
        "acme",
        "openai",
        "127.0.0.1/acme/",
        "header,query,body",
        ACME_KEY,
    );
    put(
        dir,
        "acme",
        "echo",
        "127.0.0.1/acme/echo",
        "header",
        ACME_ECHO_KEY,
    );
    put(
        dir,
        "globex",
        "openai",
        "localhost/globex/",
        "header",
        GLOBEX_KEY,
    );
}

fn start(origin: &Origin, raw_credential: config::RawCredential) -> Proxy {
    let mut spec = ProxySpec::default();
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        scan_body_max_bytes: Some(65536),
        raw_credential: Some(raw_credential),
        ..Default::default()
    });
    spec.tenants.routes.push(config::Route::new(
        "up",
        "/up/",
        format!("http://127.0.0.1:{}/", origin.port),
    ));
    // An LLM API (OpenAI's paths) at the origin, open to every tenant.
    spec.llm_route(origin.port);
    Proxy::start_prepared(spec, prepare)
}

/// A request through `port` to `target` (absolute form, or origin form for routes) with extra
/// header lines and an optional `(content type, body)`.
fn send(
    port: u16,
    method: &str,
    target: &str,
    headers: &str,
    body: Option<(&str, &[u8])>,
) -> Response {
    let host = target
        .split("//")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("p")
        .to_string();
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}");
    if let Some((ct, b)) = body {
        raw.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    if let Some((_, b)) = body {
        bytes.extend_from_slice(b);
    }
    raw_request_bytes(port, &bytes).unwrap()
}

/// `data` gzip-compressed.
fn gzipped(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `data` brotli-compressed.
fn brotlied(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

/// Asserts a refusal, that nothing reached the origin on `path`, and the audit record's decision.
fn refused(
    proxy: &Proxy,
    origin: &Origin,
    tenant: &str,
    r: &Response,
    (status, code): (u16, &str),
    path: &str,
    case: &str,
) -> serde_json::Value {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{case}: {}",
        r.body_text()
    );
    assert!(
        origin.matching(path).is_empty(),
        "{case}: forwarded {:?}",
        origin.matching(path)
    );
    assert!(!r.body_text().contains("sk-"), "{case}: {}", r.body_text());
    let rec = proxy.audit_record(tenant, &r.request_id());
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("deny"), Some(code)),
        "{case}: {rec}"
    );
    rec
}

#[test]
fn repeated_credential_headers_are_refused_in_either_order() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let cases = [
        (
            "literal first, handle second",
            format!("Authorization: Bearer {LITERAL}\r\nAuthorization: Bearer $CRED{{openai}}\r\n"),
        ),
        (
            "handle first, literal second",
            format!("Authorization: Bearer $CRED{{openai}}\r\nAuthorization: Bearer {LITERAL}\r\n"),
        ),
        (
            "two handles",
            "Authorization: Bearer $CRED{openai}\r\nAuthorization: Bearer $CRED{openai}\r\n".into(),
        ),
        (
            "two spellings of x-api-key",
            format!("x-api-key: $CRED{{openai}}\r\nX_Api_Key: {LITERAL}\r\n"),
        ),
    ];
    for (i, (case, headers)) in cases.iter().enumerate() {
        let path = format!("/acme/rep{i}");
        let r = send(
            proxy.sidecar_port,
            "GET",
            &url(&origin, &path),
            headers,
            None,
        );
        let rec = refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (400, "credential_repeated"),
            &path,
            case,
        );
        assert_eq!(
            rec["credentials"],
            serde_json::json!([]),
            "{case}: not a use"
        );
    }
    // One handle: the origin gets exactly the substituted value.
    let r = send(
        proxy.sidecar_port,
        "GET",
        &url(&origin, "/acme/one"),
        "Authorization: Bearer $CRED{openai}\r\n",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        origin.matching("/acme/one")[0].headers["authorization"],
        format!("Bearer {ACME_KEY}")
    );
    assert!(proxy
        .metrics()
        .contains(r#"tenant_proxy_credential_substitutions_total{tenant="acme"} 1"#));
}

#[test]
fn literal_keys_are_refused_whatever_else_the_request_holds() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let handle_header = "Authorization: Bearer $CRED{openai}\r\n";
    let json = "application/json";
    let lit = LITERAL;
    let multipart = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b0undary\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\n{lit}\r\n--b0undary--\r\n"
    );
    let cases: Vec<(&str, &str, String, Option<(&str, String)>, u16, &str)> = vec![
        (
            "a literal and a handle in one value",
            "",
            format!("Authorization: Bearer {lit} $CRED{{openai}}\r\n"),
            None,
            403,
            "raw_credential",
        ),
        (
            "x-api-key literal beside an Authorization handle",
            "",
            format!("{handle_header}x-api-key: {lit}\r\n"),
            None,
            403,
            "raw_credential",
        ),
        (
            "top-level api_key with handles elsewhere",
            "",
            handle_header.into(),
            Some((
                json,
                format!(r#"{{"model":"m","note":"$CRED{{openai}}","api_key":"{lit}"}}"#),
            )),
            403,
            "raw_credential",
        ),
        (
            "the same JSON as text/plain",
            "",
            handle_header.into(),
            Some((
                "text/plain",
                format!(r#"{{"model":"m","api_key":"{lit}"}}"#),
            )),
            403,
            "raw_credential",
        ),
        (
            "nested field",
            "",
            handle_header.into(),
            Some((json, format!(r#"{{"config":{{"api_key":"{lit}"}}}}"#))),
            403,
            "raw_credential",
        ),
        (
            "escaped, re-cased field name",
            "",
            String::new(),
            Some((json, format!(r#"{{"x":[{{"API\u005fKEY":"{lit}"}}]}}"#))),
            403,
            "raw_credential",
        ),
        (
            "handle and literal under one name",
            "",
            String::new(),
            Some((
                json,
                format!(r#"{{"api_key":"$CRED{{openai}}","api_key":"{lit}"}}"#),
            )),
            400,
            "credential_repeated",
        ),
        (
            "form body",
            "",
            handle_header.into(),
            Some((
                "application/x-www-form-urlencoded",
                format!("a=1&api_key={lit}"),
            )),
            403,
            "raw_credential",
        ),
        (
            "multipart field",
            "",
            handle_header.into(),
            Some(("multipart/form-data; boundary=b0undary", multipart)),
            403,
            "raw_credential",
        ),
        (
            "query api_key",
            "?api_key=",
            handle_header.into(),
            None,
            403,
            "raw_credential",
        ),
        (
            "query key (Gemini)",
            "?alt=sse&key=",
            String::new(),
            None,
            403,
            "raw_credential",
        ),
        (
            "query key behind a semicolon",
            "?alt=sse;key=",
            String::new(),
            None,
            403,
            "raw_credential",
        ),
    ];
    for (i, (case, query, headers, body, status, code)) in cases.iter().enumerate() {
        let path = format!("/acme/lit{i}");
        let target = if query.is_empty() {
            url(&origin, &path)
        } else {
            url(&origin, &format!("{path}{query}{lit}"))
        };
        let method = if body.is_some() { "POST" } else { "GET" };
        let r = send(
            proxy.sidecar_port,
            method,
            &target,
            headers,
            body.as_ref().map(|(ct, b)| (*ct, b.as_bytes())),
        );
        refused(&proxy, &origin, "acme", &r, (*status, code), &path, case);
    }
    assert_eq!(origin.count(), 0, "{:?}", origin.requests());
    assert!(!proxy
        .metrics()
        .contains(r#"tenant_proxy_credential_substitutions_total{tenant="acme"}"#));

    // The check is per tenant: 127.0.0.1 is no managed destination of globex, whose agent may
    // send its own key there (its business); acme's may not.
    let globex = token_for("globex", "agent");
    let r = send(
        proxy.shared_port,
        "GET",
        &url(&origin, &format!("/globex/own?key={lit}")),
        &format!("Proxy-Authorization: Bearer {globex}\r\nAuthorization: Bearer {lit}\r\n"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got = &origin.matching("/globex/own")[0];
    assert_eq!(got.headers["authorization"], format!("Bearer {lit}"));
    assert!(got.target.ends_with(&format!("key={lit}")));
}

#[test]
fn strip_mode_forwards_the_handle_and_drops_every_literal() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Strip);
    let body = format!(
        r#"{{"model":"m","auth_token":"$CRED{{openai}}","config":{{"api_key":"{LITERAL}"}}}}"#
    );
    let r = send(
        proxy.sidecar_port,
        "POST",
        &url(&origin, &format!("/acme/strip?q=1&key={LITERAL}")),
        &format!("Authorization: Bearer $CRED{{openai}}\r\nx-api-key: {LITERAL}\r\n"),
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got = &origin.matching("/acme/strip")[0];
    assert_eq!(got.target, "/acme/strip?q=1");
    assert_eq!(got.headers["authorization"], format!("Bearer {ACME_KEY}"));
    assert!(!got.headers.contains_key("x-api-key"), "{:?}", got.headers);
    let sent: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(sent["auth_token"], ACME_KEY);
    assert_eq!(sent["config"]["api_key"], serde_json::Value::Null);
    assert!(!format!("{got:?}").contains(LITERAL));
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["credentials"], serde_json::json!(["openai"]));
    // Repeated headers are refused even here: which value was meant is unknown.
    let r = send(
        proxy.sidecar_port,
        "GET",
        &url(&origin, "/acme/strip-rep"),
        &format!("Authorization: Bearer {LITERAL}\r\nAuthorization: Bearer $CRED{{openai}}\r\n"),
        None,
    );
    refused(
        &proxy,
        &origin,
        "acme",
        &r,
        (400, "credential_repeated"),
        "/acme/strip-rep",
        "strip repeated",
    );
}

#[test]
fn handles_never_go_in_the_authority_or_other_headers() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let o = origin.port;
    let cases: Vec<(&str, String, &str)> = vec![
        // Route mode: the Host header is not used for routing, so it reaches the check.
        (
            "Host in route mode",
            "GET /up/acme/host HTTP/1.1\r\nHost: $CRED{openai}\r\nConnection: close\r\n\r\n".into(),
            "/acme/host",
        ),
        (
            "Host with a port in route mode",
            "GET /up/acme/host2 HTTP/1.1\r\nHost: x$CRED{openai}:80\r\nConnection: close\r\n\r\n".into(),
            "/acme/host2",
        ),
        (
            "another header",
            format!("GET http://127.0.0.1:{o}/acme/hdr HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nX-Debug: $CRED{{openai}}\r\nConnection: close\r\n\r\n"),
            "/acme/hdr",
        ),
        (
            "a header an upstream logs",
            format!("GET http://127.0.0.1:{o}/acme/ref HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nReferer: https://x.example/?k=$CRED{{openai}}\r\nConnection: close\r\n\r\n"),
            "/acme/ref",
        ),
    ];
    for (case, raw, path) in &cases {
        let r = raw_request(proxy.sidecar_port, raw).unwrap();
        let rec = refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (403, "credential_position"),
            path,
            case,
        );
        assert_eq!(rec["credentials"], serde_json::json!(["openai"]), "{case}");
    }
    // A handle in the target's authority: pingora's HTTP/1 parser refuses such a target with
    // a bare 400 before the pipeline runs (the pipeline's own check, for any front that lets it
    // through, is unit-tested in credentials::apply); either way nothing is forwarded.
    for raw in [
        "GET http://%24CRED%7Bopenai%7D.example/acme/auth HTTP/1.1\r\nHost: %24CRED%7Bopenai%7D.example\r\nConnection: close\r\n\r\n".to_string(),
        format!("GET http://%24CRED%7Bopenai%7D@127.0.0.1:{o}/acme/auth HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nConnection: close\r\n\r\n"),
    ] {
        let r = raw_request(proxy.sidecar_port, &raw).unwrap();
        assert!(
            r.status == 400 || (r.status == 403 && r.code() == "credential_position"),
            "{raw}: {} {}",
            r.status,
            r.body_text()
        );
    }
    assert!(origin.matching("/acme/auth").is_empty());
    assert!(
        !proxy
            .metrics()
            .contains(r#"tenant_proxy_credential_substitutions_total{tenant="acme"}"#),
        "no handle in a wrong position counts as a substitution"
    );
    // A credential header in route mode works (the control for the Host case).
    let r = raw_request(
        proxy.sidecar_port,
        "GET /up/acme/route-ok HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer $CRED{openai}\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        origin.matching("/acme/route-ok")[0].headers["authorization"],
        format!("Bearer {ACME_KEY}")
    );
}

#[test]
fn bodies_too_large_to_scan_are_refused_toward_managed_hosts() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let mut hidden = vec![b'a'; 65_536];
    hidden.extend_from_slice(b" $CRED{openai} ");
    hidden.resize(70_000, b'a');
    let plain = vec![b'a'; 70_000];
    for (case, body, path) in [
        ("a handle past the scan limit", &hidden, "/acme/big1"),
        ("no handle at all", &plain, "/acme/big2"),
    ] {
        let r = send(
            proxy.sidecar_port,
            "POST",
            &url(&origin, path),
            "",
            Some(("text/plain", body)),
        );
        refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (413, "credential_scan_incomplete"),
            path,
            case,
        );
    }
    // An encoded body's bytes are not what the upstream reads.
    let r = send(
        proxy.sidecar_port,
        "POST",
        &url(&origin, "/acme/gz"),
        "Content-Encoding: gzip\r\n",
        Some(("application/json", &gzipped(br#"{"a":1}"#))),
    );
    refused(
        &proxy,
        &origin,
        "acme",
        &r,
        (415, "credential_scan_incomplete"),
        "/acme/gz",
        "encoded",
    );
    // Toward a destination whose keys are not managed (for globex, 127.0.0.1), the same body
    // goes through; one with a handle anywhere in it does not.
    let globex = token_for("globex", "agent");
    let auth = format!("Proxy-Authorization: Bearer {globex}\r\n");
    let r = send(
        proxy.shared_port,
        "POST",
        &url(&origin, "/globex/big"),
        &auth,
        Some(("text/plain", &plain)),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(origin.matching("/globex/big")[0].body.len(), 70_000);
    let r = send(
        proxy.shared_port,
        "POST",
        &url(&origin, "/globex/big-handle"),
        &auth,
        Some(("text/plain", &hidden)),
    );
    refused(
        &proxy,
        &origin,
        "globex",
        &r,
        (403, "credential_position"),
        "/globex/big-handle",
        "unmanaged, handle",
    );
}

#[test]
fn a_header_the_proxy_decides_on_is_read_on_every_line_or_refused_when_repeated() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let own = format!(r#"{{"api_key":"{LITERAL}"}}"#);
    // A coding on any line of `Content-Encoding` is a coding: the body as sent is not what
    // the upstream reads, whichever line the proxy would have looked at first.
    let (gzip, br) = (gzipped(br#"{"a":1}"#), brotlied(br#"{"a":1}"#));
    for (case, codings, path, body) in [
        (
            "identity then gzip",
            "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",
            "/acme/ce1",
            &gzip,
        ),
        (
            "gzip then identity",
            "Content-Encoding: gzip\r\nContent-Encoding: identity\r\n",
            "/acme/ce2",
            &gzip,
        ),
        (
            "empty then br",
            "Content-Encoding: \r\nContent-Encoding: br\r\n",
            "/acme/ce3",
            &br,
        ),
    ] {
        let r = send(
            proxy.sidecar_port,
            "POST",
            &url(&origin, path),
            codings,
            Some(("application/json", body)),
        );
        refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (415, "credential_scan_incomplete"),
            path,
            case,
        );
    }
    // A type given twice, or with two readings, is refused whoever's destination it is: the
    // proxy would check the body as one type while the upstream parses it as the other.
    for (case, extra, content_type, path) in [
        (
            "multipart, then JSON",
            "Content-Type: multipart/form-data; boundary=XX\r\n",
            "application/json",
            "/acme/ct1",
        ),
        (
            "JSON, then a form",
            "Content-Type: application/json\r\n",
            "application/x-www-form-urlencoded",
            "/acme/ct2",
        ),
        (
            "a boundary twice",
            "",
            "multipart/form-data; boundary=XX; boundary=YY",
            "/acme/ct3",
        ),
        (
            "two types in one line",
            "",
            "multipart/form-data; boundary=XX, application/json",
            "/acme/ct4",
        ),
    ] {
        let r = send(
            proxy.sidecar_port,
            "POST",
            &url(&origin, path),
            extra,
            Some((content_type, own.as_bytes())),
        );
        refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (400, "bad_request"),
            path,
            case,
        );
    }
    // One line of each passes as before.
    let r = send(
        proxy.sidecar_port,
        "POST",
        &url(&origin, "/acme/ok"),
        "Content-Encoding: identity\r\n",
        Some(("application/json", br#"{"api_key":"$CRED{openai}"}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got = origin.matching("/acme/ok");
    assert_eq!(
        got[0].body,
        format!(r#"{{"api_key":"{ACME_KEY}"}}"#).as_bytes()
    );
}

#[test]
fn a_body_is_read_by_every_reader_whatever_its_type_declares() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let json = format!(r#"{{"model":"gpt-4o","messages":[],"api_key":"{LITERAL}"}}"#);
    let form = format!("model=gpt-4o&api_key={LITERAL}");
    let part = |name: &str| {
        format!("--XX\r\nContent-Disposition: form-data; {name}\r\n\r\n{LITERAL}\r\n--XX--\r\n")
    };
    let multipart = "multipart/form-data; boundary=XX";
    for (case, target, content_type, body, path) in [
        (
            "JSON declared multipart",
            url(&origin, "/acme/mp1"),
            multipart,
            json.clone(),
            "/acme/mp1",
        ),
        (
            "JSON declared multipart, to an LLM API",
            "/llm/chat/completions".to_string(),
            multipart,
            json.clone(),
            "/v1/chat/completions",
        ),
        (
            "a form declared multipart",
            url(&origin, "/acme/mp2"),
            multipart,
            form.clone(),
            "/acme/mp2",
        ),
        (
            "a part named the RFC 2231 way",
            url(&origin, "/acme/mp3"),
            multipart,
            part("name*=UTF-8''api_key"),
            "/acme/mp3",
        ),
        (
            "a part named twice",
            url(&origin, "/acme/mp4"),
            multipart,
            part("name=\"file\"; name*=UTF-8''api%5Fkey"),
            "/acme/mp4",
        ),
        (
            "multipart declared as text",
            url(&origin, "/acme/mp5"),
            "text/plain",
            part("name=\"api_key\""),
            "/acme/mp5",
        ),
    ] {
        let r = send(
            proxy.sidecar_port,
            "POST",
            &target,
            "",
            Some((content_type, body.as_bytes())),
        );
        refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (403, "raw_credential"),
            path,
            case,
        );
    }
    assert!(origin.matching(LITERAL).is_empty());
    assert!(!origin
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(LITERAL)));
}

#[test]
fn binding_prefixes_match_whole_path_segments() {
    let origin = Origin::start();
    let proxy = start(&origin, config::RawCredential::Refuse);
    let auth = "Authorization: Bearer $CRED{echo}\r\n";
    for path in ["/acme/echo", "/acme/echo/x"] {
        let r = send(proxy.sidecar_port, "GET", &url(&origin, path), auth, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        assert_eq!(
            origin.requests().last().unwrap().headers["authorization"],
            format!("Bearer {ACME_ECHO_KEY}")
        );
    }
    for path in ["/acme/echoXYZ", "/acme/echo.json"] {
        let r = send(proxy.sidecar_port, "GET", &url(&origin, path), auth, None);
        let rec = refused(
            &proxy,
            &origin,
            "acme",
            &r,
            (403, "credential_not_bound"),
            path,
            path,
        );
        assert_eq!(rec["credentials"], serde_json::json!(["echo"]));
    }
}

#[test]
fn cred_list_shows_every_field_of_every_binding() {
    let dir = tempfile::tempdir().unwrap();
    // `cred` binds nothing: any address will do.
    let mut static_file = config::StaticFile::new("tenants.toml", "audit");
    static_file.listeners.push(config::Listener {
        listen: "127.0.0.1:1".parse().unwrap(),
        ..config::Listener::bound("s", "acme", "bot")
    });
    static_file
        .write(&dir.path().join("tenant-proxy.toml"))
        .unwrap();
    copy_dir(
        &repo_root().join("tests/fixtures/policies"),
        &dir.path().join("policies"),
    );
    std::fs::copy(
        repo_root().join("policies/schema.cedarschema"),
        dir.path().join("policies/schema.cedarschema"),
    )
    .unwrap();
    let mut tenants = standard_tenants();
    tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    tenants.write(&dir.path().join("tenants.toml")).unwrap();
    let (code, out) = proxy_cli(
        dir.path(),
        &["cred", "init-master", "--out", "master.key"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    put(
        dir.path(),
        "acme",
        "openai",
        "POST https://api.openai.com:443/v1/,*.openai.azure.com",
        "header",
        ACME_KEY,
    );
    let (code, out) = proxy_cli(
        dir.path(),
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "list",
            "--tenant",
            "acme",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("bind scheme=https host=api.openai.com port=443 paths=/v1/ methods=POST"),
        "{out}"
    );
    assert!(
        out.contains("bind scheme=any host=*.openai.azure.com port=any paths=any methods=any"),
        "{out}"
    );
    assert!(!out.contains(ACME_KEY), "{out}");
    // globex's list shows none of acme's.
    let (code, out) = proxy_cli(
        dir.path(),
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
    assert!(!out.contains("openai"), "{out}");
}
