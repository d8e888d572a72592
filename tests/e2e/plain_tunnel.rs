//! Plain HTTP inside `CONNECT`: clients that tunnel `http://` URLs (undici's `ProxyAgent` and
//! `EnvHttpProxyAgent` with their default options) are served through the same pipeline as a
//! forward request (the tunnel's identity, the `http` decision, credentials, audit), and the
//! front's framing checks hold inside such tunnels too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const ACME_SECRET: &str = "sk-acme-plain-tunnel-5e1d";
const GLOBEX_SECRET: &str = "sk-globex-plain-tunnel-77c0";

/// A proxy whose egress exceptions name `origin`'s port for 127.0.0.1 (so plain tunnels may
/// reach it), with a credential `openai` per tenant bound to 127.0.0.1.
fn start(origin: &Origin) -> Proxy {
    let mut spec = ProxySpec::default();
    spec.config
        .egress
        .allow
        .push(format!("127.0.0.1:{}", origin.port));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    for tenant in ["acme", "globex"] {
        credentials.files.push(config::FileCredential::header(
            tenant,
            "openai",
            &["127.0.0.1"],
        ));
    }
    Proxy::start_prepared(spec, |dir| {
        for (tenant, value) in [("acme", ACME_SECRET), ("globex", GLOBEX_SECRET)] {
            std::fs::create_dir_all(dir.join("secrets").join(tenant)).unwrap();
            std::fs::write(dir.join("secrets").join(tenant).join("openai"), value).unwrap();
        }
    })
}

/// Opens a tunnel to `authority` on `port`; the stream and the response head (with the body
/// of a refusal).
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
    let mut text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        text.push_str(&rest);
    }
    (s, status, text)
}

/// Everything the server sends until it closes (or 15 s pass).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a response read off a tunnel.
fn body_json(text: &str) -> serde_json::Value {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// undici with default options: `ProxyAgent` given the proxy's URL, or `EnvHttpProxyAgent`
/// reading `HTTP_PROXY`. Prints the status and body.
const UNDICI: &str = r#"
const { ProxyAgent, EnvHttpProxyAgent, request } = require('undici');
(async () => {
  const dispatcher = process.env.MODE === 'env'
    ? new EnvHttpProxyAgent()
    : new ProxyAgent(process.env.PROXY_URL);
  const res = await request(process.env.TARGET, {
    dispatcher,
    headers: { authorization: 'Bearer $CRED{openai}' },
  });
  console.log(JSON.stringify({ status: res.statusCode, body: await res.body.text() }));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn undici_proxy_agents_reach_http_urls_through_plain_tunnels() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let o = origin.port;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.sidecar_port);
    for (mode, path) in [
        ("proxy-agent", "/public/undici-agent"),
        ("env", "/public/undici-env"),
    ] {
        let target = format!("http://127.0.0.1:{o}{path}");
        let (code, out, err) = node(
            &["-e", UNDICI],
            &[
                ("MODE", mode.into()),
                ("PROXY_URL", proxy_url.clone()),
                ("HTTP_PROXY", proxy_url.clone()),
                ("TARGET", target),
            ],
        );
        assert_eq!(code, 0, "{mode}: {out}{err}");
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(got["status"], 200, "{mode}: {out}");
        let seen = origin.matching(path);
        assert_eq!(seen.len(), 1, "{mode}");
        assert_eq!(
            seen[0].headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {ACME_SECRET}").as_str()),
            "{mode}: the handle is substituted with acme's own secret"
        );
    }
    // Each request has its own record under the tunnel's identity, naming the plain tunnel it
    // came through; each tunnel has its record too.
    let recs = proxy.wait_audit_records("acme", 4);
    let inner: Vec<_> = recs.iter().filter(|r| r["method"] == "GET").collect();
    assert_eq!(inner.len(), 2, "{recs:#?}");
    for r in &inner {
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["workload"], "bot");
        assert_eq!(r["scheme"], "http");
        assert_eq!(r["port"], o);
        assert_eq!(r["decision"], "allow");
        assert_eq!(r["credentials"], serde_json::json!(["openai"]));
        assert_eq!(r["tunnel"]["mode"], "plain", "{r}");
        let tunnel = r["tunnel"]["id"].as_str().unwrap();
        let opened = recs
            .iter()
            .find(|t| t["request_id"] == tunnel)
            .unwrap_or_else(|| panic!("no record of tunnel {tunnel}: {recs:#?}"));
        assert_eq!(opened["method"], "CONNECT");
        assert_eq!(opened["tunnel"]["mode"], "plain");
    }
    let all = serde_json::to_string(&recs).unwrap();
    assert!(
        !all.contains(ACME_SECRET),
        "a secret reached the audit trail"
    );
    assert!(proxy.audit_records("globex").is_empty());
}

#[test]
fn plain_tunnels_keep_identity_policy_ports_and_framing() {
    let origin = Origin::start();
    let other = Origin::start();
    let proxy = start(&origin);
    let o = origin.port;

    // A port no plain request could reach (not 80, named by no egress exception) and not a
    // TLS port either: refused before any byte is tunnelled.
    let (_, status, text) = connect(proxy.sidecar_port, &format!("127.0.0.1:{}", other.port), "");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("connect_port_forbidden"), "{text}");

    // Inside a plain tunnel, policy decides each request: `/forbidden/` is refused, with its
    // record, and reaches nobody.
    let (mut s, status, text) = connect(proxy.sidecar_port, &format!("127.0.0.1:{o}"), "");
    assert_eq!(status, 200, "{text}");
    write!(
        s,
        "GET /forbidden/x HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nAuthorization: Bearer $CRED{{openai}}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let text = read_all(&mut s);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let refusal = body_json(&text);
    assert_eq!(refusal["error"]["code"], "policy_denied", "{text}");
    let id = refusal["error"]["request_id"].as_str().unwrap();
    let rec = proxy.audit_record("acme", id);
    assert_eq!(
        (rec["decision"].as_str(), rec["tunnel"]["mode"].as_str()),
        (Some("deny"), Some("plain"))
    );
    assert!(origin.matching("/forbidden/").is_empty());

    // An identity the inner request presents is ignored: the tunnel's (acme, on the sidecar)
    // is used, and a token for globex changes nothing.
    let globex = token_for("globex", "agent");
    let (mut s, status, _) = connect(proxy.sidecar_port, &format!("127.0.0.1:{o}"), "");
    assert_eq!(status, 200);
    write!(
        s,
        "GET /public/who HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nProxy-Authorization: Bearer {globex}\r\nAuthorization: Bearer $CRED{{openai}}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let text = read_all(&mut s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = origin.matching("/public/who");
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {ACME_SECRET}").as_str())
    );
    assert!(!seen[0].headers.contains_key("proxy-authorization"));

    // A request for another authority than the tunnel's is refused.
    let (mut s, _, _) = connect(proxy.sidecar_port, &format!("127.0.0.1:{o}"), "");
    write!(
        s,
        "GET /public/elsewhere HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        other.port
    )
    .unwrap();
    let text = read_all(&mut s);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert_eq!(other.count(), 0);

    // Request smuggling inside a plain tunnel: both framings, a duplicated chunked coding and a
    // second request hidden in a body are refused by the front before pingora or the origin
    // see them.
    let smuggles = [
        ("bad_framing", format!("POST /public/s1 HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/hidden1 HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n")),
        ("unsupported_transfer_encoding", format!("POST /public/s2 HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\nGET /public/hidden2 HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n")),
        ("bad_framing", format!("POST /public/s3 HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n")),
    ];
    for (want, raw) in &smuggles {
        let (mut s, status, _) = connect(proxy.sidecar_port, &format!("127.0.0.1:{o}"), "");
        assert_eq!(status, 200);
        s.write_all(raw.as_bytes()).unwrap();
        let text = read_all(&mut s);
        assert!(
            text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 501"),
            "{raw:?}: {text}"
        );
        assert_eq!(body_json(&text)["error"]["code"], *want, "{raw:?}: {text}");
    }
    assert!(
        origin.matching("/public/s").is_empty(),
        "{:?}",
        origin.requests()
    );
    assert!(origin.matching("/public/hidden").is_empty());

    // TLS on a port opened for plain HTTP only: `connect_ports` governs TLS, so the tunnel is
    // closed at the first byte of the ClientHello, and recorded.
    let (mut s, status, _) = connect(proxy.sidecar_port, &format!("127.0.0.1:{o}"), "");
    assert_eq!(status, 200);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let text = read_all(&mut s);
    assert!(text.is_empty(), "{text}");
    let recs = proxy.wait_audit_records("acme", 1);
    let refused = || {
        proxy.audit_records("acme").into_iter().any(|r| {
            r["method"] == "CONNECT"
                && r["reason"] == "connect_port_forbidden"
                && r["tunnel"]["mode"] == "plain"
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !refused() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused(), "{recs:#?}");
    assert!(proxy.audit_records("globex").is_empty());
}

#[test]
fn a_revocation_reaches_the_requests_of_a_tunnel_already_open() {
    let origin = Origin::start();
    let proxy = start(&origin);
    let o = origin.port;
    let token = token(TokenOpts {
        jti: Some("revoked-while-open"),
        ..Default::default()
    });
    let auth = format!("Proxy-Authorization: Bearer {token}\r\n");
    let (mut s, status, text) = connect(proxy.shared_port, &format!("127.0.0.1:{o}"), &auth);
    assert_eq!(status, 200, "{text}");
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut get = |path: &str| {
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        read_response(&mut reader).unwrap()
    };
    assert_eq!(get("/public/before-revoke").status, 200);

    // The token's id is added to the revocation file and the proxy reloads: the tunnel it
    // opened serves no more requests, and each refusal is audited in acme's partition.
    std::fs::write(
        proxy.path("revoked.txt"),
        "revoked-jti-1\nrevoked-while-open\n",
    )
    .unwrap();
    proxy.sighup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut served_before_reload = 0;
    let refused = loop {
        let r = get("/public/after-revoke");
        if r.status != 200 {
            break r;
        }
        served_before_reload += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never reached the tunnel"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    refused.assert_refused(407, "identity_invalid");
    assert!(
        refused.body_text().contains("revoked"),
        "{}",
        refused.body_text()
    );
    let record = proxy.audit_record("acme", &refused.request_id());
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    assert_eq!(record["tunnel"]["mode"], "plain", "{record}");
    // The refused request never reached the origin.
    assert_eq!(
        origin.matching("/public/after-revoke").len(),
        served_before_reload
    );
}

/// A plain tunnel needs no `connect` permit, but a `connect` forbid that matches it refuses it,
/// audited as a policy denial naming the forbid; without one it opens as before.
#[test]
fn a_connect_forbid_refuses_a_plain_tunnel() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    spec.config
        .egress
        .allow
        .push(format!("127.0.0.1:{}", origin.port));
    let port = origin.port;
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(
            dir.join("policies/global/no-globex-tunnels.cedar"),
            format!(
                "@id(\"no-globex-plain-tunnels\")\nforbid (principal in TenantProxy::Tenant::\"globex\", action == TenantProxy::Action::\"connect\", resource)\nwhen {{ context.port == {port} }};\n"
            ),
        )
        .unwrap();
    });
    let authority = format!("127.0.0.1:{port}");
    let globex = token_for("globex", "agent");
    let (_, status, text) = connect(
        proxy.shared_port,
        &authority,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
    );
    assert_eq!(status, 403, "{text}");
    let refusal = body_json(&text);
    assert_eq!(refusal["error"]["code"], "policy_denied", "{text}");
    let record = proxy.audit_record("globex", refusal["error"]["request_id"].as_str().unwrap());
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(
        record["policy_ids"][0], "no-globex-plain-tunnels",
        "{record}"
    );
    // acme matches no forbid: its plain tunnel opens with no `connect` permit.
    let (_, status, text) = connect(proxy.sidecar_port, &authority, "");
    assert_eq!(status, 200, "{text}");
}
