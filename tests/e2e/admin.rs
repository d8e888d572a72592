//! The admin port's own guards, against the real binary: with `[admin] token_file` every
//! endpoint but the probes requires the token (missing, wrong and repeated `Authorization` are
//! refused with the proxy's JSON error shape), the CLI sends it, a rotated file is read on
//! reload, and the token is never logged; run ids are held to the token claim's rule before
//! anything reaches Redis or the audit trail.

use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "e2e-admin-token-3f9a1c0d7b2e";
const ROTATED: &str = "e2e-admin-token-rotated-51c8";

/// A proxy whose admin endpoints require [`TOKEN`] (the file `admin-token` next to its
/// configuration).
fn guarded(spec: ProxySpec) -> Proxy {
    let mut spec = spec;
    spec.config.admin.token_file = Some("admin-token".into());
    Proxy::start_prepared(spec, |dir| {
        std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    })
}

/// `method path` on the admin port with the extra header lines `headers` (each ending in CRLF).
fn admin(proxy: &Proxy, method: &str, path: &str, headers: &str) -> Response {
    raw_request_to(
        proxy.admin_addr(),
        &format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[test]
fn the_admin_token_guards_every_endpoint_but_the_probes() {
    let proxy = guarded(ProxySpec::default());

    // The probes answer without a token (the kubelet sends none), and with one.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(admin(&proxy, "GET", path, "").status, 200, "{path}");
        assert_eq!(
            admin(&proxy, "GET", path, &bearer(TOKEN)).status,
            200,
            "{path}"
        );
    }

    let guarded_calls = [
        ("GET", "/metrics"),
        ("GET", "/usage?tenant=acme"),
        ("POST", "/runs/close?tenant=acme&run=run-1"),
        ("GET", "/no-such-endpoint"),
    ];
    for (method, path) in guarded_calls {
        for (case, headers) in [
            ("missing", String::new()),
            ("wrong", bearer("e2e-admin-token-3f9a1c0d7b2f")),
            (
                "another scheme",
                "Authorization: Basic YWRtaW46YWRtaW4=\r\n".to_string(),
            ),
            ("empty", "Authorization: Bearer \r\n".to_string()),
        ] {
            let r = admin(&proxy, method, path, &headers);
            let refusal = r.assert_refused(401, "admin_unauthorized");
            assert_eq!(refusal["error"]["request_id"], r.request_id().as_str());
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer ")),
                "{case} {path}"
            );
        }
        // Two `Authorization` headers are refused, even when both carry the token.
        let twice = format!("{}{}", bearer(TOKEN), bearer(TOKEN));
        let refusal = admin(&proxy, method, path, &twice).assert_refused(400, "bad_request");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{refusal}"
        );
    }
    // Nothing was closed by the refused calls: a close with the token finds the run unseen.
    let closed = admin(
        &proxy,
        "POST",
        "/runs/close?tenant=acme&run=run-1",
        &bearer(TOKEN),
    );
    assert_eq!(closed.status, 200, "{}", closed.body_text());
    assert_eq!(closed.json()["closed"], "before_start");
    let metrics = admin(&proxy, "GET", "/metrics", &bearer(TOKEN));
    assert_eq!(metrics.status, 200);
    assert!(metrics.body_text().contains("tenant_proxy_"));
    assert_eq!(
        admin(&proxy, "GET", "/usage?tenant=acme", &bearer(TOKEN)).status,
        200
    );

    // The CLI reads the token from the configuration's token_file.
    let (code, out) = proxy.admin_cli(&["run", "close", "--tenant", "acme", "--run", "run-2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("before_start"), "{out}");
    // With the memory limiter, the closure lasts as long as this process: said so.
    assert!(
        out.contains("a restart forgets that it was closed"),
        "{out}"
    );
    let (code, out) = proxy.admin_cli(&["usage", "--tenant", "acme", "--json"]);
    assert_eq!(code, 0, "{out}");
    // `check` is quiet about a configured token.
    let out = check_ok(&proxy);
    assert!(!out.contains("requires no token"), "{out}");

    // A rotated token is read on reload: the old one stops working, the new one works.
    std::fs::write(proxy.path("admin-token"), format!("{ROTATED}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin(&proxy, "GET", "/metrics", &bearer(ROTATED)).status != 200 {
        assert!(Instant::now() < deadline, "the rotated token was not read");
        std::thread::sleep(Duration::from_millis(100));
    }
    admin(&proxy, "GET", "/metrics", &bearer(TOKEN)).assert_refused(401, "admin_unauthorized");
    // A file that goes bad keeps the last good token, and the rest of the reload still applies
    // (revocations and policy edits do not wait for the admin token to be fixed).
    std::fs::write(proxy.path("admin-token"), "short\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.log().contains("the admin token must be") {
        assert!(
            Instant::now() < deadline,
            "the bad token file was not reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        admin(&proxy, "GET", "/metrics", &bearer(ROTATED)).status,
        200
    );
    admin(&proxy, "GET", "/metrics", &bearer("short")).assert_refused(401, "admin_unauthorized");
    // ... but the kept token shows as a failed reload, as a rejected tenant file does (a token
    // rotated because it leaked is still valid), until the file is fixed.
    let ready: serde_json::Value =
        serde_json::from_slice(&admin(&proxy, "GET", "/readyz", "").body).unwrap();
    assert_eq!(
        (
            &ready["last_reload"]["ok"],
            &ready["last_reload"]["problems"]
        ),
        (&serde_json::json!(false), &serde_json::json!(1)),
        "{ready}"
    );
    let metrics = admin(&proxy, "GET", "/metrics", &bearer(ROTATED)).body_text();
    assert!(
        metrics.contains("\ntenant_proxy_config_last_reload_successful 0\n")
            && metric_sum(
                &metrics,
                "tenant_proxy_config_reloads_total",
                "result",
                "error"
            ) >= 1.0,
        "{metrics}"
    );
    std::fs::write(proxy.path("admin-token"), format!("{TOKEN}\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin(&proxy, "GET", "/metrics", &bearer(TOKEN)).status != 200 {
        assert!(Instant::now() < deadline, "the fixed token was not read");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready: serde_json::Value =
        serde_json::from_slice(&admin(&proxy, "GET", "/readyz", "").body).unwrap();
    assert_eq!(
        (
            &ready["last_reload"]["ok"],
            &ready["last_reload"]["problems"]
        ),
        (&serde_json::json!(true), &serde_json::json!(0)),
        "{ready}"
    );
    assert!(admin(&proxy, "GET", "/metrics", &bearer(TOKEN))
        .body_text()
        .contains("\ntenant_proxy_config_last_reload_successful 1\n"));

    let log = proxy.log();
    assert!(!log.contains(TOKEN) && !log.contains(ROTATED), "{log}");
}

/// What `tenant-proxy check` prints for `proxy`'s configuration, which it must accept.
fn check_ok(proxy: &Proxy) -> String {
    let config = proxy.path("tenant-proxy.toml");
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &["check", "--config", config.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{out}");
    out
}

#[test]
fn without_a_token_the_admin_port_is_open_and_check_warns() {
    let proxy = Proxy::start(ProxySpec::default());
    assert_eq!(admin(&proxy, "GET", "/metrics", "").status, 200);
    // Read endpoints answer GET and HEAD only.
    for (method, path) in [
        ("DELETE", "/metrics"),
        ("PUT", "/metrics"),
        ("POST", "/usage?tenant=acme"),
        ("POST", "/healthz"),
    ] {
        let r = admin(&proxy, method, path, "");
        r.assert_refused(405, "method_not_allowed");
    }
    let out = check_ok(&proxy);
    assert!(
        out.contains("warning: the admin port") && out.contains("token_file"),
        "{out}"
    );
    assert!(proxy.log().contains("requires no token"));
    // No day or month ceiling here, but signed runs are kept in memory too.
    assert!(
        out.contains(
            "warning: signed runs (their budgets, records and `run close`) are kept in memory"
        ),
        "{out}"
    );
    assert!(!out.contains("cost ceilings"), "{out}");
}

/// Day and month cost ceilings and signed runs kept in memory are forgotten at a restart:
/// `check` and `run` say so, naming the tenants; with the Redis limiter they do not.
#[test]
fn memory_counted_cost_ceilings_are_warned_about() {
    let mut spec = ProxySpec::default().with_prices();
    spec.tenant("globex").limits().cost_per_month_micros = Some(5_000_000);
    let proxy = Proxy::start(spec);
    let out = check_ok(&proxy);
    let line = out
        .lines()
        .find(|l| l.contains("kept in memory"))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(
        line.starts_with(
            "warning: day and month cost ceilings (globex) and signed runs (their budgets, records and `run close`) are kept in memory"
        ),
        "{line}"
    );
    assert!(line.contains("a closed run is served again"), "{line}");
    assert!(line.contains("backend = \"redis\""), "{line}");
    assert!(proxy.log().contains("kept in memory"));

    let redis = RedisServer::start();
    let mut spec = ProxySpec::default()
        .with_prices()
        .with_redis_limiter(redis.url(), Duration::from_secs(1));
    spec.tenant("globex").limits().cost_per_month_micros = Some(5_000_000);
    let proxy = Proxy::start(spec);
    let out = check_ok(&proxy);
    assert!(!out.contains("kept in memory"), "{out}");
}

#[test]
fn run_ids_outside_the_claim_rule_are_refused_and_reach_neither_redis_nor_the_audit() {
    let redis = RedisServer::start();
    let proxy =
        guarded(ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1)));
    let long = "r".repeat(129);
    let auth = bearer(TOKEN);
    for run in [
        "..%2F..%2Fetc%0Aevil%00x",
        "",
        "a%20b",
        "a%7Bb%7D",
        "%C3%A9",
        long.as_str(),
    ] {
        for (method, path) in [
            ("POST", format!("/runs/close?tenant=acme&run={run}")),
            ("GET", format!("/usage?tenant=acme&run={run}")),
        ] {
            let r = admin(&proxy, method, &path, &auth);
            let refusal = r.assert_refused(400, "bad_request");
            let message = refusal["error"]["message"].as_str().unwrap();
            assert!(message.contains("not a valid run id"), "{path}: {message}");
            assert!(!message.contains("etc"), "not echoed: {message}");
        }
    }
    // The rule is the token's: 128 characters and its punctuation pass.
    let ok = format!("A.b_c:d-{}", "r".repeat(120));
    let r = admin(
        &proxy,
        "GET",
        &format!("/usage?tenant=acme&run={ok}"),
        &auth,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    // Nothing of the refused ids was written: no run key, no audit record.
    assert!(
        redis.command("KEYS *").iter().all(|k| !k.contains(":run:")),
        "{:?}",
        redis.command("KEYS *")
    );
    assert!(proxy.audit_records("acme").is_empty());

    // The CLI holds the same rule before calling.
    let (code, out) = proxy.admin_cli(&["run", "close", "--tenant", "acme", "--run", "../../etc"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a valid run id"), "{out}");
}

#[test]
fn a_web_pages_requests_to_a_route_or_the_admin_port_are_refused_and_audited() {
    // A listener bound to one workload and an admin port without a token act for whoever
    // reaches them, and a page the host's browser opens reaches them (a form post, or a
    // rebound name). What a browser marks as a page's request is refused; an agent's request,
    // or a browser proxying through the listener, is not.
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    for (marker, header) in [
        ("origin", "Origin: https://evil.example\r\n"),
        ("origin", "Origin: null\r\n"),
        (
            "sec-fetch-site",
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n",
        ),
        ("sec-fetch-site", "Sec-Fetch-Site: same-site\r\n"),
        // After a rebinding the page is same-origin with the port; a GET sends no `Origin`.
        (
            "sec-fetch-site",
            "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n",
        ),
        (
            "origin",
            "Sec-Fetch-Site: none\r\nOrigin: http://127.0.0.1:3000\r\n",
        ),
    ] {
        let r = llm_chat(proxy.sidecar_port, body, header);
        let refusal = r.assert_refused(403, "browser_request");
        let message = refusal["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{marker}`")),
            "{header}: {message}"
        );
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], "browser_request", "{rec}");
        assert_eq!(rec["decision"], "deny", "{rec}");
    }
    // Typed into the address bar (`none`), or no marker at all: served.
    for header in ["Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n", ""] {
        let r = llm_chat(proxy.sidecar_port, body, header);
        assert_eq!(r.status, 200, "{header}: {}", r.body_text());
    }
    // A rebound name sends no marker over plain HTTP (a same-origin GET), only its own name:
    // the listener bound to a workload answers only to names no page can rebind.
    let get = |port: u16, host: &str, extra: &str| {
        raw_request(
            port,
            &format!(
                "GET /llm/models HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
            ),
        )
        .unwrap()
    };
    for host in ["rebind.evil.example:8080", "0.0.0.0:8080"] {
        let r = get(proxy.sidecar_port, host, "");
        let refusal = r.assert_refused(403, "browser_request");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`Host`"),
            "{refusal}"
        );
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], "browser_request", "{rec}");
    }
    for host in [
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
        "tenant-proxy",
    ] {
        assert_eq!(get(proxy.sidecar_port, host, "").status, 200, "{host}");
    }
    // A token is no page's to send: the shared listener's route answers any name.
    let token = token_for("globex", "agent");
    let r = get(
        proxy.shared_port,
        "rebind.evil.example:8080",
        &format!("Proxy-Authorization: Bearer {token}\r\n"),
    );
    assert_ne!(r.code(), "browser_request", "{}", r.body_text());
    // A browser that uses the listener as its proxy names the target: its pages' requests are
    // the agent's, decided as any other.
    let r = forward_get(
        proxy.sidecar_port,
        &format!("http://127.0.0.1:{mock}/v1/models"),
        None,
        "Origin: https://app.example\r\nSec-Fetch-Site: cross-site\r\n",
    );
    assert_ne!(r.code(), "browser_request", "{}", r.body_text());

    // The admin port: a page's post would close a run (CSRF), its reads after a rebinding
    // would read every tenant's spend. The probes answer anyone, as before.
    for header in [
        "Origin: https://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
    ] {
        for (method, path) in [
            ("POST", "/runs/close?tenant=acme&run=run-1"),
            ("GET", "/usage?tenant=acme"),
            ("GET", "/metrics"),
        ] {
            admin(&proxy, method, path, header).assert_refused(403, "browser_request");
        }
        assert_eq!(admin(&proxy, "GET", "/readyz", header).status, 200);
    }
    // Without a token, a rebound name is refused too (its reads carry no marker).
    let rebound = |method: &str, path: &str| {
        raw_request_to(
            proxy.admin_addr(),
            &format!("{method} {path} HTTP/1.1\r\nHost: rebind.evil.example:9090\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };
    for (method, path) in [
        ("GET", "/usage?tenant=acme"),
        ("GET", "/metrics"),
        ("POST", "/runs/close?tenant=acme&run=run-1"),
    ] {
        rebound(method, path).assert_refused(403, "browser_request");
    }
    assert_eq!(rebound("GET", "/readyz").status, 200);
    // The run was not closed: closing it now is the first close.
    let closed = admin(&proxy, "POST", "/runs/close?tenant=acme&run=run-1", "");
    assert_eq!(
        closed.json()["closed"],
        "before_start",
        "{}",
        closed.body_text()
    );
    assert_eq!(
        admin(&proxy, "GET", "/metrics", "Sec-Fetch-Site: none\r\n").status,
        200
    );
    // With a token the page is refused before the token is looked at (a page must not learn
    // whether one is configured).
    let guarded = guarded(ProxySpec::default());
    admin(
        &guarded,
        "GET",
        "/metrics",
        &format!("Origin: https://evil.example\r\n{}", bearer(TOKEN)),
    )
    .assert_refused(403, "browser_request");
    // With a token, any name: the token is what a page cannot send.
    let r = raw_request_to(
        guarded.admin_addr(),
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: tenant-proxy.monitoring.svc:9090\r\n{}Connection: close\r\n\r\n",
            bearer(TOKEN)
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
}

/// `[server] shutdown_delay`: after `SIGTERM` the proxy goes on serving, new connections
/// included, while `/readyz` answers 503 (`terminating`), so a load balancer stops sending it
/// connections before its listeners close; then it drains and exits as before.
#[test]
fn after_sigterm_it_serves_unready_for_the_shutdown_delay_then_drains() {
    let origin = Origin::start();
    let mut spec = ProxySpec::default();
    spec.config.server.shutdown_delay = Some(Duration::from_secs(2));
    spec.config.server.grace_period = Some(Duration::from_secs(1));
    let mut proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/during-delay", origin.port);
    let ready = admin(&proxy, "GET", "/readyz", "");
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    assert_eq!(ready.json()["terminating"], false);
    proxy.sigterm();
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(1);
    loop {
        let r = admin(&proxy, "GET", "/readyz", "");
        if r.status == 503 {
            assert_eq!(r.json()["terminating"], true, "{}", r.body_text());
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not ready, still serving: a new connection's request is served and audited.
    let r = forward_get(proxy.sidecar_port, &url, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(origin.matching("/acme/during-delay").len(), 1);
    // Then the drain: the listeners close and the process exits.
    let exited = proxy.wait_exit(Duration::from_secs(10));
    assert!(exited.is_some(), "{}", proxy.log());
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["reason"], "allowed", "{rec}");
}

/// An admin port listening on every address (the gateway shape's `0.0.0.0`) is called by the
/// CLI on loopback: it named `0.0.0.0` as `Host`, which the port refuses as a page's.
#[test]
fn the_cli_reaches_an_admin_port_that_listens_on_every_address() {
    let mut spec = ProxySpec::default();
    spec.config.admin.listen = Some("0.0.0.0:0".parse().unwrap());
    let proxy = Proxy::start(spec);
    // The address as the configuration gives it: every address, on the port it was given.
    let every = format!("0.0.0.0:{}", proxy.admin_addr().port());
    let config = proxy.path("tenant-proxy.toml");
    let config = config.to_str().unwrap();
    for args in [
        &["usage", "--tenant", "acme", "--json"][..],
        &["run", "close", "--tenant", "acme", "--run", "r-any"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--config", config, "--admin", &every]);
        let (code, out) = proxy_cli(proxy.path(".").as_path(), &all, "");
        assert_eq!(code, 0, "{args:?}: {out}");
    }
}

/// The admin port reads requests as strictly as the listeners (JSON refusals for heads a
/// lenient reader would take another way, the header deadline) and serves at most 64
/// connections at once, 16 from one address, a new one taking the slot of the one that
/// waited longest for a head: a loop of trickled heads once held any number of descriptors,
/// which every listener draws on, and held connections must not lock the probes out.
#[test]
fn the_admin_port_reads_heads_strictly_under_deadlines_and_a_connection_cap() {
    use std::io::{Read, Write};
    let mut spec = ProxySpec::default();
    spec.config.egress.client_header_timeout = Some(Duration::from_secs(2));
    let proxy = Proxy::start(spec);
    let raw = |bytes: &str| raw_request_to(proxy.admin_addr(), bytes).unwrap();
    // Heads a lenient reader serves: a bare LF, two framings; a folded line.
    for (head, code) in [
        ("GET /healthz HTTP/1.1\nHost: admin\n\n", "bad_request"),
        (
            "POST /runs/close?tenant=acme&run=r1 HTTP/1.1\r\nHost: admin\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_framing",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: admin\r\nX-A: a\r\n b\r\n\r\n",
            "bad_request",
        ),
    ] {
        let r = raw(head);
        assert_eq!(r.code(), code, "{head:?}: {}", r.body_text());
        assert!(r.status >= 400, "{head:?}");
    }
    // A well-formed request is served, and its connection kept.
    let r = raw("GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    // A head trickled past the deadline is cut with 408.
    let started = Instant::now();
    let mut slow = std::net::TcpStream::connect(proxy.admin_addr()).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut answer = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // One address holds at most 16 of the 64 connections: 40 held open from 127.0.0.1 (each
    // still sending its head) leave 16 open, each new one taking the slot of its address's
    // oldest waiting connection, closed without a word (a head that ran out of time would
    // have got its 408 instead); requests from there are served all the same, and from
    // another address (the kubelet's, Prometheus's) without touching them.
    let held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(proxy.admin_addr()).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let count_open = |held: &[std::net::TcpStream]| {
        let mut open = 0;
        for (i, mut s) in held.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 64];
            match s.read(&mut byte) {
                // Closed: with a FIN, or a reset when the proxy closed it before reading what
                // it had been sent (the kernel's answer to unread bytes), as timing has it.
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Ok(n) => panic!("{i}: {}", String::from_utf8_lossy(&byte[..n])),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{i}");
                    open += 1;
                }
            }
        }
        open
    };
    assert!(
        count_open(&held) <= 16,
        "one address held more than its share"
    );
    let from = |ip: [u8; 4]| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from((ip, 0)).into())
            .unwrap();
        socket.connect(&proxy.admin_addr().into()).unwrap();
        let mut s: std::net::TcpStream = socket.into();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        for _ in 0..3 {
            let answer = from(ip);
            assert!(answer.starts_with("HTTP/1.1 200"), "{ip:?}: {answer}");
        }
    }
    let still = count_open(&held);
    assert!(still <= 16, "{still}");
    drop(held);
    // An HTTP/1.0 request's connection ends with its response.
    let mut old = std::net::TcpStream::connect(proxy.admin_addr()).unwrap();
    old.write_all(b"GET /healthz HTTP/1.0\r\nHost: admin\r\n\r\n")
        .unwrap();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    assert!(old.read_to_string(&mut answer).is_ok(), "closed: {answer}");
    assert!(answer.contains(" 200 "), "{answer}");
}
