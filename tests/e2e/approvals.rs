//! Human approval holds end to end: a permit marked `@approval` holds what it allows until a
//! person of the tenant approves or denies it through the approvals API (its own listener,
//! approver tokens of the approvals audience). Real clients (curl, Python requests, the
//! `tenant-proxy approvals` CLI), a recording origin, a real `redis-server` for replicas.
//!
//! Policies (`tests/fixtures/policies-approvals`): `/pay/*` waits (30 s), `/pay/refund/*` is
//! forbidden, `/quick/*` waits 2 s, `/poll/*` answers 202 and is polled, `/finance/*` needs an
//! approver in group `finance`, `/maybe/*` is a shadow rule; on the MCP route `tools`, `add` is
//! free and `transfer` needs approval.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::config::{self, Approvals, LOOPBACK_ANY_PORT};
use crate::support::*;

/// The approval policies, the approvals API on a port of its own, and the MCP route `tools` to
/// an origin of its own (an MCP server is known by its address too, so it cannot be the origin
/// the other requests go to).
fn spec(_origin: u16) -> ProxySpec {
    spec_with_tools(Origin::start().port)
}

fn spec_with_tools(origin: u16) -> ProxySpec {
    let mut spec = ProxySpec {
        policies: "tests/fixtures/policies-approvals",
        ..Default::default()
    };
    spec.config.approvals = Some(Approvals::on(LOOPBACK_ANY_PORT));
    spec.tenants.routes.push(config::Route::new(
        "tools",
        "/tools/",
        format!("http://127.0.0.1:{origin}/"),
    ));
    spec.tenants.mcp = Some(config::Mcp {
        max_message_bytes: None,
        servers: vec![config::McpServer::by_route("tools", "tools")],
        ..Default::default()
    });
    spec
}

/// A call to the approvals API with `token`.
fn api(proxy: &Proxy, method: &str, path: &str, token: &str, body: Option<&str>) -> Response {
    let body = body.unwrap_or("");
    raw_request(
        proxy.approvals_port(),
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: approvals\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

/// Waits (10 s at most) until `tenant`'s approver sees `n` pending holds; them.
fn wait_holds(proxy: &Proxy, tenant: &str, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api(
            proxy,
            "GET",
            &format!("/v1/tenants/{tenant}/holds"),
            token,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let holds = r.json()["holds"].as_array().cloned().unwrap_or_default();
        if holds.len() >= n {
            return holds;
        }
        assert!(
            Instant::now() < deadline,
            "{tenant} has {} holds, expected {n}",
            holds.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs `body` to `url` through the acme sidecar listener with curl: (status, body).
fn acme_post(proxy: &Proxy, url: &str, body: &str) -> (u16, String) {
    curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", proxy.sidecar_port),
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

/// POSTs `body` to `url` as globex (a workload token on the shared listener) with curl.
fn globex_post(proxy: &Proxy, url: &str, body: &str) -> (u16, String) {
    let token = token_for("globex", "agent");
    curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", proxy.shared_port),
        "--proxy-header",
        &format!("Proxy-Authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

fn events(records: &[Value], kind: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["event"] == kind)
        .cloned()
        .collect()
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_held_request_is_forwarded_once_after_approval_exactly_as_held() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge?amount=42", origin.port);
    let body = r#"{"amount": 4200, "currency": "eur", "to": "acct_1"}"#;
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&proxy, &url, body));
        let holds = wait_holds(&proxy, "acme", &alice, 1);
        let hold = &holds[0];
        // What the approver sees: the request, never a secret or the query's values.
        assert_eq!(hold["method"], "POST");
        assert_eq!(hold["host"], "127.0.0.1");
        assert_eq!(hold["path"], "/pay/charge?amount");
        assert_eq!(hold["workload"], "bot");
        assert_eq!(hold["policy_ids"], json!(["payments-need-approval"]));
        assert!(hold["body_sha256"].as_str().unwrap().len() == 64);
        assert!(hold.get("request_digest").is_none(), "{hold}");
        // Held: the upstream has seen nothing.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(origin.count(), 0, "forwarded before approval");
        // The approver approves with the CLI.
        let token_file = proxy.path("alice.token");
        std::fs::write(&token_file, &alice).unwrap();
        let (status, out) = proxy_cli(
            proxy.dir.path(),
            &[
                "approvals",
                "--addr",
                &format!("127.0.0.1:{}", proxy.approvals_port()),
                "--tenant",
                "acme",
                "--token-file",
                token_file.to_str().unwrap(),
                "approve",
                hold["id"].as_str().unwrap(),
                "--reason",
                "invoice 77",
            ],
            "",
        );
        assert_eq!(status, 0, "{out}");
        assert!(out.contains("\"approved\""), "{out}");
        let (status, answer) = agent.join().unwrap();
        assert_eq!(status, 200, "{answer}");
    });
    // Forwarded once, exactly as held.
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/pay/charge?amount=42");
    assert_eq!(seen[0].body, body.as_bytes());
    // A second approval of the same hold is refused.
    let hold_id = {
        let records = proxy.wait_audit_records("acme", 3);
        events(&records, "approval_granted")[0]["hold_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let again = api(
        &proxy,
        "POST",
        &format!("/v1/tenants/acme/holds/{hold_id}/approve"),
        &alice,
        None,
    );
    again.assert_refused(409, "hold_resolved");
    // Nor can the same request ride on the spent hold (a waiting hold is never polled).
    let proxy_url = format!("http://127.0.0.1:{}", proxy.sidecar_port);
    let resend = |holds: &[&str]| {
        let holds: Vec<String> = holds
            .iter()
            .map(|h| format!("x-approval-hold: {h}"))
            .collect();
        let mut args = vec!["-x", &proxy_url, "-H", "content-type: application/json"];
        for h in &holds {
            args.extend(["-H", h.as_str()]);
        }
        args.extend(["--data-binary", body, &url]);
        curl(&args)
    };
    let (status, answer) = resend(&[&hold_id]);
    assert_eq!(
        (status, code_of(&answer).as_str()),
        (403, "approval_unknown")
    );
    // Two hold ids have no one reading: refused before anything is looked up.
    let (status, answer) = resend(&["other", &hold_id]);
    assert_eq!((status, code_of(&answer).as_str()), (400, "bad_request"));
    assert_eq!(origin.count(), 1);
    // Audited: requested, granted by alice, and the request record naming the hold.
    let records = proxy.wait_audit_records("acme", 3);
    let requested = events(&records, "approval_requested");
    let granted = events(&records, "approval_granted");
    assert_eq!(requested.len(), 1, "{records:#?}");
    assert_eq!(granted.len(), 1, "{records:#?}");
    assert_eq!(requested[0]["hold_id"], hold_id.as_str());
    assert_eq!(granted[0]["approver"], "alice");
    assert_eq!(granted[0]["reason"], "invoice 77");
    let request = records
        .iter()
        .find(|r| r["event"] == "request")
        .expect("request record");
    assert_eq!(request["reason"], "allowed");
    assert_eq!(request["approval"]["hold_id"], hold_id.as_str());
    assert_eq!(request["approval"]["outcome"], "granted");
    assert_eq!(request["approval"]["approver"], "alice");
    let metrics = proxy.metrics();
    assert!(
        metrics
            .contains(r#"tenant_proxy_approval_outcomes_total{outcome="granted",tenant="acme"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tenant_proxy_approval_holds_pending{tenant="acme"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tenant_proxy_approval_decision_seconds_count{tenant="acme"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_denied_hold_is_refused_with_the_approvers_reason_and_a_forbid_still_wins() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let bob = approver_token("acme", "bob", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&proxy, &url, r#"{"amount": 1}"#));
        let holds = wait_holds(&proxy, "acme", &bob, 1);
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/deny"),
            &bob,
            Some(r#"{"reason": "unknown payee"}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.json()["state"], "denied");
        let (status, body) = agent.join().unwrap();
        assert_eq!(status, 403, "{body}");
        assert_eq!(code_of(&body), "approval_denied");
        assert!(body.contains("unknown payee"), "{body}");
    });
    assert_eq!(origin.count(), 0);
    let records = proxy.wait_audit_records("acme", 3);
    let denied = events(&records, "approval_denied");
    assert_eq!(denied.len(), 1, "{records:#?}");
    assert_eq!(denied[0]["approver"], "bob");
    assert_eq!(denied[0]["reason"], "unknown payee");
    let request = records.iter().find(|r| r["event"] == "request").unwrap();
    assert_eq!(request["reason"], "approval_denied");
    assert_eq!(request["approval"]["outcome"], "denied");
    assert_eq!(request["approval"]["approver"], "bob");

    // A forbid wins over the marked permit: refused at once, nobody is asked.
    let (status, body) = acme_post(
        &proxy,
        &format!("http://127.0.0.1:{}/pay/refund/1", origin.port),
        "{}",
    );
    assert_eq!((status, code_of(&body).as_str()), (403, "policy_denied"));
    assert!(wait_holds(&proxy, "acme", &bob, 0).is_empty());
    assert_eq!(
        events(&proxy.audit_records("acme"), "approval_requested").len(),
        1
    );
}

#[test]
fn a_hold_nobody_decides_times_out_and_cannot_be_approved_late() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let (status, body) = acme_post(
        &proxy,
        &format!("http://127.0.0.1:{}/quick/send-email", origin.port),
        r#"{"to": "customer@example.com"}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(code_of(&body), "approval_timeout");
    assert_eq!(origin.count(), 0);
    let records = proxy.wait_audit_records("acme", 3);
    let expired = events(&records, "approval_expired");
    assert_eq!(expired.len(), 1, "{records:#?}");
    let id = expired[0]["hold_id"].as_str().unwrap();
    let late = api(
        &proxy,
        "POST",
        &format!("/v1/tenants/acme/holds/{id}/approve"),
        &alice,
        None,
    );
    let v = late.assert_refused(409, "hold_resolved");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    assert_eq!(origin.count(), 0);
}

/// A hold's deadline is a wall-clock time the replicas share; a wall clock stepped back an hour
/// while the request waits (NTP, a resumed VM) does not keep it (its pending slot, its body)
/// waiting an hour more: `/quick/` waits 2 s, and times out then.
#[test]
fn a_hold_times_out_on_time_when_the_clock_steps_back() {
    let origin = Origin::start();
    let clock = FakeClock::new();
    let mut spec = spec(origin.port);
    spec.env.extend(clock.env());
    let proxy = Proxy::start(spec);
    let started = Instant::now();
    let (status, body) = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            acme_post(
                &proxy,
                &format!("http://127.0.0.1:{}/quick/send-email", origin.port),
                r#"{"to": "customer@example.com"}"#,
            )
        });
        std::thread::sleep(Duration::from_millis(700));
        clock.step_to(-3600);
        waiting.join().unwrap()
    });
    assert_eq!(
        (status, code_of(&body).as_str()),
        (403, "approval_timeout"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "timed out after {:?}",
        started.elapsed()
    );
    assert_eq!(origin.count(), 0);
}

#[test]
fn shadow_rules_count_and_audit_would_hold_without_holding() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let (status, _) = acme_post(
        &proxy,
        &format!("http://127.0.0.1:{}/maybe/delete-repo", origin.port),
        "{}",
    );
    assert_eq!(status, 200);
    assert_eq!(origin.count(), 1);
    let records = proxy.wait_audit_records("acme", 1);
    assert!(events(&records, "approval_requested").is_empty());
    let request = &records[0];
    assert_eq!(request["approval"]["outcome"], "would_hold");
    assert_eq!(request["approval"]["policy_ids"], json!(["maybe-approval"]));
    assert!(request["approval"].get("hold_id").is_none());
    assert!(proxy
        .metrics()
        .contains(r#"tenant_proxy_approval_outcomes_total{outcome="would_hold",tenant="acme"} 1"#));
}

#[test]
fn approvers_act_on_their_own_tenant_only() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let acme_approver = approver_token("acme", "alice", &[]);
    let globex_approver = approver_token("globex", "mallory", &["finance"]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&proxy, &url, r#"{"amount": 9}"#));
        let holds = wait_holds(&proxy, "acme", &acme_approver, 1);
        let id = holds[0]["id"].as_str().unwrap();

        // globex's approver can neither list, read, approve nor deny acme's hold.
        for (method, path) in [
            ("GET", "/v1/tenants/acme/holds".to_string()),
            ("GET", format!("/v1/tenants/acme/holds/{id}")),
            ("POST", format!("/v1/tenants/acme/holds/{id}/approve")),
            ("POST", format!("/v1/tenants/acme/holds/{id}/deny")),
        ] {
            api(&proxy, method, &path, &globex_approver, None)
                .assert_refused(403, "approver_forbidden");
        }
        // Under its own tenant, acme's hold id names nothing.
        for (method, path) in [
            ("GET", format!("/v1/tenants/globex/holds/{id}")),
            ("POST", format!("/v1/tenants/globex/holds/{id}/approve")),
        ] {
            api(&proxy, method, &path, &globex_approver, None).assert_refused(404, "not_found");
        }
        let own = api(
            &proxy,
            "GET",
            "/v1/tenants/globex/holds",
            &globex_approver,
            None,
        );
        assert_eq!(own.json()["holds"], json!([]));
        // A workload token is no approver token, and an approver token is no workload token.
        api(
            &proxy,
            "GET",
            "/v1/tenants/acme/holds",
            &token_for("acme", "bot"),
            None,
        )
        .assert_refused(401, "approver_unauthenticated");
        forward_get(
            proxy.shared_port,
            &format!("http://127.0.0.1:{}/open/x", origin.port),
            Some(&acme_approver),
            "",
        )
        .assert_refused(407, "identity_invalid");
        // The hold is still pending, and acme's own approver decides it.
        assert_eq!(wait_holds(&proxy, "acme", &acme_approver, 1).len(), 1);
        api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &acme_approver,
            None,
        );
        assert_eq!(agent.join().unwrap().0, 200);
    });
    assert_eq!(origin.count(), 1);
    // The refusals are audited in globex's partition, naming the approver; acme's partition
    // has nothing of globex.
    let globex = proxy.wait_audit_records("globex", 4);
    let refused = events(&globex, "approval_refused");
    assert_eq!(refused.len(), 4, "{globex:#?}");
    assert!(refused.iter().all(|r| r["approver"] == "mallory"));
    let acme = proxy.audit_records("acme");
    assert!(
        acme.iter()
            .all(|r| r["event"] != "approval_refused" && !r.to_string().contains("mallory")),
        "{acme:#?}"
    );
    // The approval events are links of each tenant's chain like any record.
    let out = std::process::Command::new(proxy_bin())
        .args(["audit", "verify", proxy.path("audit").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An approver is one `Authorization` header: two (two approvers, or a valid token and
/// anything else, in either order) are refused before either is looked at, like two
/// `Proxy-Authorization` headers on the proxy listeners.
#[test]
fn a_repeated_authorization_header_is_refused_in_either_order() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let acme = approver_token("acme", "alice", &[]);
    let globex = approver_token("globex", "mallory", &["finance"]);
    let call = |method: &str, path: &str, authorizations: &[&str]| {
        let headers: String = authorizations
            .iter()
            .map(|a| format!("Authorization: {a}\r\n"))
            .collect();
        raw_request(
            proxy.approvals_port(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: approvals\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .unwrap()
    };
    let (acme, globex) = (format!("Bearer {acme}"), format!("Bearer {globex}"));
    let list = "/v1/tenants/globex/holds";
    // One header: globex's approver lists globex's holds.
    let own = call("GET", list, &[&globex]);
    assert_eq!(own.status, 200, "{}", own.body_text());
    let decide = "/v1/tenants/globex/holds/0123456789abcdef0123456789abcdef/approve";
    for (name, method, path, authorizations) in [
        (
            "globex first",
            "GET",
            list,
            [globex.as_str(), acme.as_str()],
        ),
        ("acme first", "GET", list, [acme.as_str(), globex.as_str()]),
        ("then garbage", "GET", list, [globex.as_str(), "garbage"]),
        ("garbage first", "GET", list, ["garbage", globex.as_str()]),
        (
            "the same token twice",
            "GET",
            list,
            [globex.as_str(), globex.as_str()],
        ),
        (
            "a decision",
            "POST",
            decide,
            [globex.as_str(), acme.as_str()],
        ),
    ] {
        let r = call(method, path, &authorizations);
        let body = r.assert_refused(401, "approver_unauthenticated");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("more than one `Authorization` header"),
            "{name}: {body}"
        );
        assert_eq!(
            body["error"]["request_id"].as_str(),
            Some(r.request_id().as_str()),
            "{name}: {body}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"tenant-proxy-approvals\""),
            "{name}"
        );
    }
    // No approver acted, so nothing is audited as one.
    for tenant in ["acme", "globex"] {
        let records = proxy.audit_records(tenant);
        assert!(
            events(&records, "approval_refused").is_empty(),
            "{records:#?}"
        );
    }
}

/// A hold can last long past its request's admission: once approved, the request is judged
/// again before any secret goes into it. A token revoked (or expired, its key pulled, its
/// workload removed) during the wait refuses it as a fresh request would be (`identity_invalid`,
/// audited with the approval it had), and nothing reaches the upstream.
#[test]
fn a_request_whose_token_was_revoked_while_held_is_refused_once_approved() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let approver = approver_token("globex", "gina", &[]);
    let agent_token = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        jti: Some("held-then-revoked"),
        ..Default::default()
    });
    let via = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "-x".to_string(),
            format!("http://127.0.0.1:{}", proxy.shared_port),
            "--proxy-header".to_string(),
            format!("Proxy-Authorization: Bearer {agent_token}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(url.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    };
    let pay = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    let open = format!("http://127.0.0.1:{}/open/check", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| {
            via(
                &pay,
                &[
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    r#"{"amount": 7}"#,
                ],
            )
        });
        let holds = wait_holds(&proxy, "globex", &approver, 1);
        // Revoked while it waits; a fresh request with the token is refused from then on.
        std::fs::write(
            proxy.path("revoked.txt"),
            "revoked-jti-1\nheld-then-revoked\n",
        )
        .unwrap();
        proxy.sighup();
        let deadline = Instant::now() + Duration::from_secs(20);
        while via(&open, &[]).0 != 407 {
            assert!(
                Instant::now() < deadline,
                "the revocation was never applied"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/globex/holds/{id}/approve"),
            &approver,
            Some("{}"),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (status, answer) = agent.join().unwrap();
        assert_eq!(status, 407, "{answer}");
        assert_eq!(code_of(&answer), "identity_invalid", "{answer}");
        assert!(answer.contains("revoked"), "{answer}");
    });
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/pay")),
        "the held request reached the upstream: {:?}",
        origin.requests()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let request = loop {
        let records = proxy.audit_records("globex");
        if let Some(r) = records
            .iter()
            .find(|r| r["event"] == "request" && r["path"] == "/pay/charge")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "{records:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(request["reason"], "identity_invalid", "{request}");
    assert_eq!(request["approval"]["outcome"], "granted", "{request}");
    assert_eq!(request["credentials"], json!([]), "{request}");
}

/// A signed run closed while one of its requests waits for approval: once approved, the request
/// is refused `run_closed` (as a fresh one is), never forwarded after the run's summary.
#[test]
fn a_request_whose_run_was_closed_while_held_is_refused_once_approved() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let approver = approver_token("globex", "gina", &[]);
    let agent_token = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        run_id: Some("run-held"),
        ..Default::default()
    });
    let pay = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.shared_port);
    let auth = format!("Proxy-Authorization: Bearer {agent_token}");
    std::thread::scope(|s| {
        let agent = s.spawn(|| {
            curl(&[
                "-x",
                &proxy_url,
                "--proxy-header",
                &auth,
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"amount": 7}"#,
                &pay,
            ])
        });
        let holds = wait_holds(&proxy, "globex", &approver, 1);
        let (code, out) =
            proxy.admin_cli(&["run", "close", "--tenant", "globex", "--run", "run-held"]);
        assert_eq!(code, 0, "{out}");
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/globex/holds/{id}/approve"),
            &approver,
            Some("{}"),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (status, answer) = agent.join().unwrap();
        assert_eq!(
            (status, code_of(&answer).as_str()),
            (403, "run_closed"),
            "{answer}"
        );
    });
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/pay")),
        "the held request reached the upstream: {:?}",
        origin.requests()
    );
    // A fresh request of the closed run is refused, and its record says where it went.
    let after = format!("http://127.0.0.1:{}/open/after?key=v", origin.port);
    let (status, answer) = curl(&["-x", &proxy_url, "--proxy-header", &auth, &after]);
    assert_eq!(
        (status, code_of(&answer).as_str()),
        (403, "run_closed"),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = proxy.audit_records("globex");
        if let Some(r) = records
            .iter()
            .find(|r| r["reason"] == "run_closed" && r["path"] == "/open/after?key")
        {
            assert_eq!(r["host"], "127.0.0.1", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "{records:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request whose body is still arriving when a reload forbids where it goes is decided under
/// the configuration it is complete under (nothing was decided before its body), and one of a
/// run closed, or of a token expired, meanwhile is refused: the agent chooses how long its body
/// takes.
#[test]
fn a_request_whose_body_arrives_after_a_reload_or_a_run_close_is_decided_then() {
    use std::io::{BufReader, Write};
    let origin = Origin::start();
    let mut spec = spec(origin.port);
    if let Some(token) = spec.tenants.token.as_mut() {
        token.leeway = Some(Duration::from_secs(1));
    }
    let proxy = Proxy::start(spec);
    let agent_token = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        run_id: Some("run-slow"),
        ..Default::default()
    });
    let body = r#"{"note":"slow"}"#;
    let head_with = |path: &str, agent_token: &str| {
        format!(
            "POST http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Bearer {agent_token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            &body[..4],
            port = origin.port,
        )
    };
    let head = |path: &str| head_with(path, &agent_token);
    let send_rest = |mut conn: std::net::TcpStream| {
        conn.write_all(&body.as_bytes()[4..]).unwrap();
        read_response(&mut BufReader::new(conn)).unwrap()
    };
    // A forbid added while the body arrives.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.shared_port)).unwrap();
    conn.write_all(head("/open/slow").as_bytes()).unwrap();
    let before = proxy.reloads_ok();
    std::fs::write(
        proxy.path("policies/global/later.cedar"),
        "@id(\"open-stopped\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { context.path like \"/open/slow*\" };\n",
    )
    .unwrap();
    proxy.wait_reload_after(before);
    let r = send_rest(conn);
    r.assert_refused(403, "policy_denied");
    // A run closed while the body arrives (after the second its streams are looked at in).
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.shared_port)).unwrap();
    conn.write_all(head("/open/fine").as_bytes()).unwrap();
    let (code, out) = proxy.admin_cli(&["run", "close", "--tenant", "globex", "--run", "run-slow"]);
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    let r = send_rest(conn);
    r.assert_refused(403, "run_closed");
    // A token that expires (past its leeway of a second) while the body arrives, no reload
    // meanwhile: refused, its tenant's secret never put in.
    let t = now();
    let expiring = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        issued_at: t - 299,
        ttl_secs: 300,
        ..Default::default()
    });
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", proxy.shared_port)).unwrap();
    conn.write_all(head_with("/open/expiring", &expiring).as_bytes())
        .unwrap();
    while now() <= t + 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = send_rest(conn);
    r.assert_refused(407, "identity_invalid");
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/open")),
        "a request went out: {:?}",
        origin.requests()
    );
}

/// The `Bearer` scheme is matched in any case (RFC 9110), as on the proxy listeners and the
/// admin port; another scheme, or no token, is still refused.
#[test]
fn the_bearer_scheme_is_read_in_any_case() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let token = approver_token("globex", "mallory", &[]);
    let list = |authorization: &str| {
        raw_request(
            proxy.approvals_port(),
            &format!(
                "GET /v1/tenants/globex/holds HTTP/1.1\r\nHost: approvals\r\nAuthorization: {authorization}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .unwrap()
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = list(&format!("{scheme} {token}"));
        assert_eq!(r.status, 200, "{scheme}: {}", r.body_text());
    }
    for refused in [
        format!("Basic {token}"),
        "Bearer ".to_string(),
        token.clone(),
    ] {
        list(&refused).assert_refused(401, "approver_unauthenticated");
    }
}

#[test]
fn a_hold_naming_a_group_is_decided_only_by_an_approver_in_it() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let outsider = approver_token("acme", "alice", &["ops"]);
    let finance = approver_token("acme", "carol", &["finance"]);
    let url = format!("http://127.0.0.1:{}/finance/wire", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&proxy, &url, "{}"));
        let holds = wait_holds(&proxy, "acme", &outsider, 1);
        assert_eq!(holds[0]["approvers"], json!(["finance"]));
        let id = holds[0]["id"].as_str().unwrap();
        let path = format!("/v1/tenants/acme/holds/{id}/approve");
        api(&proxy, "POST", &path, &outsider, None).assert_refused(403, "approver_forbidden");
        assert_eq!(api(&proxy, "POST", &path, &finance, None).status, 200);
        assert_eq!(agent.join().unwrap().0, 200);
    });
    assert_eq!(origin.count(), 1);
}

#[test]
fn the_per_tenant_cap_refuses_more_holds_with_approval_capacity() {
    let origin = Origin::start();
    let mut spec = spec(origin.port);
    spec.config.approvals = Some(Approvals {
        max_pending_per_tenant: Some(2),
        ..Approvals::on(LOOPBACK_ANY_PORT)
    });
    let proxy = Proxy::start(spec);
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agents: Vec<_> = (0..2)
            .map(|i| {
                let (proxy, url) = (&proxy, &url);
                s.spawn(move || acme_post(proxy, url, &format!(r#"{{"n": {i}}}"#)))
            })
            .collect();
        let holds = wait_holds(&proxy, "acme", &alice, 2);
        let (status, body) = acme_post(&proxy, &url, r#"{"n": 3}"#);
        assert_eq!(status, 429, "{body}");
        assert_eq!(code_of(&body), "approval_capacity");
        // Another tenant's cap is its own.
        let mallory = approver_token("globex", "mallory", &[]);
        let globex = s.spawn(|| globex_post(&proxy, &url, r#"{"n": 4}"#));
        let globex_holds = wait_holds(&proxy, "globex", &mallory, 1);
        for (tenant, token, hold) in holds
            .iter()
            .map(|h| ("acme", &alice, h))
            .chain(globex_holds.iter().map(|h| ("globex", &mallory, h)))
        {
            let id = hold["id"].as_str().unwrap();
            let r = api(
                &proxy,
                "POST",
                &format!("/v1/tenants/{tenant}/holds/{id}/deny"),
                token,
                Some(r#"{"reason": "cap test"}"#),
            );
            assert_eq!(r.status, 200, "{}", r.body_text());
        }
        for agent in agents {
            assert_eq!(code_of(&agent.join().unwrap().1), "approval_denied");
        }
        assert_eq!(code_of(&globex.join().unwrap().1), "approval_denied");
    });
    assert_eq!(origin.count(), 0);
}

/// What Python requests got: status, the `x-approval-hold` header, the body.
fn python_post(proxy: &Proxy, url: &str, body: &str, hold: Option<&str>) -> (u16, String, Value) {
    let out = python(
        r#"
import json, os, requests
headers = {"content-type": "application/json"}
if os.environ.get("HOLD"):
    headers["x-approval-hold"] = os.environ["HOLD"]
proxy = os.environ["PROXY"]
r = requests.post(os.environ["URL"], data=os.environ["BODY"], headers=headers,
                  proxies={"http": proxy}, timeout=20)
print(json.dumps({"status": r.status_code, "hold": r.headers.get("x-approval-hold", ""), "body": r.text}))
"#,
        &[
            ("PROXY", format!("http://127.0.0.1:{}", proxy.sidecar_port)),
            ("URL", url.to_string()),
            ("BODY", body.to_string()),
            ("HOLD", hold.unwrap_or("").to_string()),
        ],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap_or(Value::Null);
    (
        v["status"].as_u64().unwrap() as u16,
        v["hold"].as_str().unwrap().to_string(),
        body,
    )
}

#[test]
fn a_polled_hold_answers_202_and_forwards_the_same_request_once_approved() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/poll/delete-repo", origin.port);
    let body = r#"{"repo": "acme/site"}"#;
    let (status, hold, answer) = python_post(&proxy, &url, body, None);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["error"]["code"], "approval_pending");
    assert_eq!(hold.len(), 32);
    // Polling: still pending.
    let (status, _, _) = python_post(&proxy, &url, body, Some(&hold));
    assert_eq!(status, 202);
    // Another request cannot ride on the hold.
    let (status, _, answer) = python_post(&proxy, &url, r#"{"repo": "acme/prod"}"#, Some(&hold));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("approval_unknown"))
    );
    assert_eq!(origin.count(), 0);
    let r = api(
        &proxy,
        "POST",
        &format!("/v1/tenants/acme/holds/{hold}/approve"),
        &alice,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let (status, _, _) = python_post(&proxy, &url, body, Some(&hold));
    assert_eq!(status, 200);
    // Once: the approval is spent.
    let (status, _, answer) = python_post(&proxy, &url, body, Some(&hold));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("approval_unknown"))
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    assert!(
        !seen[0].headers.contains_key("x-approval-hold"),
        "the hold id is the proxy's: {:?}",
        seen[0].headers
    );
}

/// POSTs a JSON-RPC body to the MCP route through the acme sidecar with curl.
fn mcp_post(proxy: &Proxy, body: &str) -> (u16, String) {
    curl(&[
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "--data-binary",
        body,
        &format!("http://127.0.0.1:{}/tools/mcp", proxy.sidecar_port),
    ])
}

#[test]
fn an_mcp_batch_with_a_marked_tool_waits_whole_and_the_rest_goes_at_once() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec_with_tools(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let call = |id: u32, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"amount": 5}}})
    };
    // `add` alone is not held.
    let (status, body) = mcp_post(&proxy, &call(1, "add").to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(origin.count(), 1);
    let batch = json!([call(2, "add"), call(3, "transfer")]).to_string();
    std::thread::scope(|s| {
        let agent = s.spawn(|| mcp_post(&proxy, &batch));
        let holds = wait_holds(&proxy, "acme", &alice, 1);
        assert_eq!(holds[0]["mcp_server"], "tools");
        assert_eq!(holds[0]["mcp_tools"], json!(["add", "transfer"]));
        assert_eq!(
            holds[0]["policy_ids"],
            json!(["mcp-transfer-needs-approval"])
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(origin.count(), 1, "no part of the batch went ahead");
        let id = holds[0]["id"].as_str().unwrap();
        api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &alice,
            None,
        );
        assert_eq!(agent.join().unwrap().0, 200);
    });
    let seen = origin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, batch.as_bytes());
}

/// A reload during a hold decides the request again as a fresh one would be, on every
/// question, not only its `http` one: a forbid on an MCP tool the held batch calls, added while
/// it waits, refuses it once approved, and nothing reaches the server.
#[test]
fn an_mcp_tool_forbidden_by_a_reload_while_held_is_refused_once_approved() {
    let origin = Origin::start();
    let proxy = Proxy::start(spec_with_tools(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let call = |id: u32, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"amount": 5}}})
    };
    let batch = json!([call(1, "add"), call(2, "transfer")]).to_string();
    let before = proxy.reloads_ok();
    std::thread::scope(|s| {
        let agent = s.spawn(|| mcp_post(&proxy, &batch));
        let holds = wait_holds(&proxy, "acme", &alice, 1);
        std::fs::write(
            proxy.path("policies/global/later.cedar"),
            "@id(\"add-stopped\")\nforbid (principal, action == TenantProxy::Action::\"mcp_tool_call\", resource == TenantProxy::McpTool::\"add\");\n",
        )
        .unwrap();
        proxy.wait_reload_after(before);
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &alice,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (status, body) = agent.join().unwrap();
        assert_eq!(
            (status, code_of(&body).as_str()),
            (403, "tool_denied"),
            "{body}"
        );
    });
    assert_eq!(origin.count(), 0, "nothing of the batch went out");
    // The record is written once the response is: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let records = proxy.audit_records("acme");
        if let Some(r) = records
            .into_iter()
            .find(|r| r["approval"]["outcome"] == "granted")
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no record of the approved request"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(record["decision"], "deny", "{record:#}");
    assert_eq!(record["policy_ids"], json!(["add-stopped"]), "{record:#}");
}

fn redis_spec(origin: u16, redis: &RedisServer) -> ProxySpec {
    spec(origin).with_redis_limiter(redis.url(), Duration::from_millis(500))
}

/// Two replicas sharing `redis_url` (one server or a cluster): a hold made by one is seen,
/// capped and approved through the other, and the agent waiting on the first is released.
fn replicas_share_holds(redis_url: String) {
    let origin = Origin::start();
    let capped = || {
        let mut spec =
            spec(origin.port).with_redis_limiter(redis_url.clone(), Duration::from_millis(500));
        spec.config.approvals = Some(Approvals {
            max_pending_per_tenant: Some(1),
            ..Approvals::on(LOOPBACK_ANY_PORT)
        });
        spec
    };
    let a = Proxy::start(capped());
    let b = Proxy::start(capped());
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&a, &url, r#"{"amount": 3}"#));
        // Replica B sees the hold replica A made, and approves it.
        let holds = wait_holds(&b, "acme", &alice, 1);
        let id = holds[0]["id"].as_str().unwrap();
        // The per-tenant cap is shared: acme's hold on A leaves no room on B.
        let (status, body) = acme_post(&b, &url, r#"{"amount": 4}"#);
        assert_eq!(
            (status, code_of(&body).as_str()),
            (429, "approval_capacity")
        );
        let r = api(
            &b,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &alice,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        // The agent waiting on A is released.
        assert_eq!(agent.join().unwrap().0, 200);
    });
    assert_eq!(origin.count(), 1);
    // The decision is audited where it was made, the hold and the request where they were.
    let on_a = a.wait_audit_records("acme", 2);
    assert_eq!(events(&on_a, "approval_requested").len(), 1);
    let on_b = b.wait_audit_records("acme", 2);
    assert_eq!(events(&on_b, "approval_granted")[0]["approver"], "alice");
}

#[test]
fn a_hold_made_by_one_replica_is_approved_through_another() {
    let redis = RedisServer::start();
    replicas_share_holds(redis.url());
}

#[test]
fn replicas_on_a_redis_cluster_share_holds_like_on_one_server() {
    let cluster = RedisCluster::start();
    replicas_share_holds(cluster.url());
    // acme's hold keys are in acme's slot, on the master serving it.
    let keys = cluster.all_keys();
    let master = cluster.master_of("{acme}");
    let holds: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("tp:approval:{acme}:hold:"))
        .collect();
    assert_eq!(holds.len(), 1, "{keys:?}");
    assert_eq!(cluster.master_of(holds[0]), master);
}

#[test]
fn the_global_cap_counts_every_replicas_holds_of_every_tenant() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let capped = || {
        let mut spec = redis_spec(origin.port, &redis);
        spec.config.approvals = Some(Approvals {
            max_pending: Some(1),
            ..Approvals::on(LOOPBACK_ANY_PORT)
        });
        spec
    };
    let a = Proxy::start(capped());
    let b = Proxy::start(capped());
    let alice = approver_token("acme", "alice", &[]);
    let mallory = approver_token("globex", "mallory", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&a, &url, r#"{"amount": 1}"#));
        let holds = wait_holds(&b, "acme", &alice, 1);
        // acme's one hold on A fills the global cap: globex on B (another tenant, another
        // replica, its own per-tenant cap untouched) is refused.
        let (status, body) = globex_post(&b, &url, r#"{"amount": 2}"#);
        assert_eq!(
            (status, code_of(&body).as_str()),
            (429, "approval_capacity"),
            "{body}"
        );
        assert!(body.contains("the proxy already holds 1"), "{body}");
        assert!(wait_holds(&b, "globex", &mallory, 0).is_empty());
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &b,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/deny"),
            &alice,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(code_of(&agent.join().unwrap().1), "approval_denied");
        // Decided, it frees the room: globex's request is held now.
        let globex = s.spawn(|| globex_post(&b, &url, r#"{"amount": 3}"#));
        let g = wait_holds(&a, "globex", &mallory, 1);
        let id = g[0]["id"].as_str().unwrap();
        let r = api(
            &a,
            "POST",
            &format!("/v1/tenants/globex/holds/{id}/approve"),
            &mallory,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(globex.join().unwrap().0, 200);
    });
    assert_eq!(origin.count(), 1);
    // The refusal is recorded in globex's partition on B.
    let refused = b
        .wait_audit_records("globex", 1)
        .into_iter()
        .find(|r| r["event"] == "request" && r["reason"] == "approval_capacity");
    assert!(refused.is_some(), "{:#?}", b.audit_records("globex"));
}

#[test]
fn a_hold_whose_replica_was_killed_is_orphaned_and_cannot_be_approved() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let capped = || {
        let mut spec = redis_spec(origin.port, &redis);
        spec.config.approvals = Some(Approvals {
            max_pending_per_tenant: Some(1),
            ..Approvals::on(LOOPBACK_ANY_PORT)
        });
        spec
    };
    let a = Proxy::start(capped());
    let b = Proxy::start(capped());
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    let id = std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&a, &url, r#"{"amount": 5}"#));
        let holds = wait_holds(&b, "acme", &alice, 1);
        let id = holds[0]["id"].as_str().unwrap().to_string();
        assert!(
            holds[0]["owner"].as_str().is_some_and(|o| !o.is_empty()),
            "{holds:?}"
        );
        // The replica the agent waits on dies without a word (no shutdown, no cancel).
        std::process::Command::new("kill")
            .args(["-KILL", &a.pid().to_string()])
            .status()
            .unwrap();
        let (status, _) = agent.join().unwrap();
        assert_ne!(status, 200);
        id
    });
    // Its lease lapses: the hold drops out of the list (and of the caps) within the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wait_holds(&b, "acme", &alice, 0).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the orphaned hold is still listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Shown as orphaned, and an approval is refused clearly.
    let got = api(
        &b,
        "GET",
        &format!("/v1/tenants/acme/holds/{id}"),
        &alice,
        None,
    );
    assert_eq!(got.json()["state"], "orphaned", "{}", got.body_text());
    let path = format!("/v1/tenants/acme/holds/{id}/approve");
    let v = api(&b, "POST", &path, &alice, None).assert_refused(410, "hold_orphaned");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("went away"),
        "{v}"
    );
    api(&b, "POST", &path, &alice, None).assert_refused(410, "hold_orphaned");
    // The orphan no longer takes acme's one place: a new hold on B is made (and denied).
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&b, &url, r#"{"amount": 6}"#));
        let holds = wait_holds(&b, "acme", &alice, 1);
        let fresh = holds[0]["id"].as_str().unwrap();
        assert_ne!(fresh, id);
        api(
            &b,
            "POST",
            &format!("/v1/tenants/acme/holds/{fresh}/deny"),
            &alice,
            None,
        );
        assert_eq!(code_of(&agent.join().unwrap().1), "approval_denied");
    });
    // Nothing was forwarded, ever.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(origin.count(), 0);
    // Audited on B, naming the approver who tried.
    let records = b.wait_audit_records("acme", 1);
    let orphaned = events(&records, "approval_orphaned");
    assert_eq!(orphaned.len(), 1, "{records:#?}");
    assert_eq!(orphaned[0]["hold_id"], id.as_str());
    assert_eq!(orphaned[0]["approver"], "alice");
    assert!(b
        .metrics()
        .contains(r#"tenant_proxy_approval_outcomes_total{outcome="orphaned",tenant="acme"} 1"#));
}

#[test]
fn a_restart_with_holds_pending_refuses_the_waiting_agents_and_forwards_nothing_unapproved() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    // Waiting holds are cancelled as soon as shutdown starts; their refusals are written while
    // the proxy still serves, within its grace period (no grace at all would end the
    // connections first).
    let mut spec = redis_spec(origin.port, &redis);
    spec.config.server.grace_period = Some(Duration::from_secs(1));
    let first = Proxy::start(spec);
    let alice = approver_token("acme", "alice", &[]);
    let pay = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    let poll = format!("http://127.0.0.1:{}/poll/delete-repo", origin.port);
    let poll_body = r#"{"repo": "acme/site"}"#;
    let (status, polled, _) = python_post(&first, &poll, poll_body, None);
    assert_eq!(status, 202);
    let waiting_hold = std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&first, &pay, r#"{"amount": 8}"#));
        let holds = wait_holds(&first, "acme", &alice, 2);
        let waiting = holds.iter().find(|h| h["mode"] == "wait").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        // The proxy is stopped: the waiting agent gets a clear refusal.
        std::process::Command::new("kill")
            .args(["-TERM", &first.pid().to_string()])
            .status()
            .unwrap();
        let (status, body) = agent.join().unwrap();
        assert_eq!(status, 503, "{body}\n{}", first.log());
        assert_eq!(code_of(&body), "approval_unavailable");
        waiting
    });
    // Two holds requested, the polled request answered 202, the waiting one cancelled and
    // refused: written as the stopped process flushes its queue.
    let records = first.wait_audit_records("acme", 5);
    assert_eq!(
        events(&records, "approval_cancelled").len(),
        1,
        "{records:#?}"
    );
    let refused = records
        .iter()
        .find(|r| r["event"] == "request" && r["reason"] == "approval_unavailable")
        .expect("the waiting request's record");
    assert_eq!(refused["approval"]["outcome"], "cancelled");
    drop(first);
    let second = Proxy::start(redis_spec(origin.port, &redis));
    // The cancelled hold cannot be approved; the polled one still can.
    api(
        &second,
        "POST",
        &format!("/v1/tenants/acme/holds/{waiting_hold}/approve"),
        &alice,
        None,
    )
    .assert_refused(409, "hold_resolved");
    let pending = wait_holds(&second, "acme", &alice, 1);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"], polled.as_str());
    assert_eq!(origin.count(), 0, "nothing forwarded unapproved");
    let (status, _, _) = python_post(&second, &poll, poll_body, Some(&polled));
    assert_eq!(status, 202, "still pending after the restart");
    api(
        &second,
        "POST",
        &format!("/v1/tenants/acme/holds/{polled}/approve"),
        &alice,
        None,
    );
    let (status, _, _) = python_post(&second, &poll, poll_body, Some(&polled));
    assert_eq!(status, 200);
    assert_eq!(origin.count(), 1);
}

#[test]
fn without_an_approvals_listener_a_marked_request_is_refused() {
    let origin = Origin::start();
    let mut spec = spec(origin.port);
    spec.config.approvals = None;
    let proxy = Proxy::start(spec);
    let (status, body) = acme_post(
        &proxy,
        &format!("http://127.0.0.1:{}/pay/charge", origin.port),
        "{}",
    );
    assert_eq!(
        (status, code_of(&body).as_str()),
        (503, "approval_unavailable")
    );
    assert_eq!(origin.count(), 0);
}

const BANK_SECRET: &str = "sk-bank-canary-5c1e0d77";
const PLAIN_SECRET: &str = "sk-plain-canary-0b9f21";

/// The approval policies with two acme credentials from files: `bank` (its use needs an
/// approval) and `plain`.
fn start_with_credentials(origin: u16) -> Proxy {
    let mut spec = spec(origin);
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "bank",
        &["127.0.0.1/open/bank/"],
    ));
    credentials.files.push(config::FileCredential::header(
        "acme",
        "plain",
        &["127.0.0.1/open/"],
    ));
    Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/bank"), BANK_SECRET).unwrap();
        std::fs::write(dir.join("secrets/acme/plain"), PLAIN_SECRET).unwrap();
    })
}

/// POSTs to `url` through the acme sidecar with `Authorization: Bearer {handle}`.
fn acme_post_with(proxy: &Proxy, url: &str, handle: &str) -> (u16, String) {
    curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", proxy.sidecar_port),
        "-H",
        &format!("Authorization: Bearer {handle}"),
        "--data-binary",
        r#"{"to": "acct_9", "amount": 100}"#,
        url,
    ])
}

#[test]
fn a_credential_use_marked_for_approval_is_substituted_only_once_approved() {
    let origin = Origin::start();
    let proxy = start_with_credentials(origin.port);
    let alice = approver_token("acme", "alice", &[]);
    let bank_url = format!("http://127.0.0.1:{}/open/bank/transfer", origin.port);
    // An unmarked credential goes out at once.
    let (status, body) = acme_post_with(
        &proxy,
        &format!("http://127.0.0.1:{}/open/plain/x", origin.port),
        "$CRED{plain}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        origin.matching("/open/plain/x")[0].headers["authorization"],
        format!("Bearer {PLAIN_SECRET}")
    );
    // The bank key's use is held: nothing reaches the origin, the approver sees its name only.
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post_with(&proxy, &bank_url, "$CRED{bank}"));
        let holds = wait_holds(&proxy, "acme", &alice, 1);
        assert_eq!(holds[0]["credentials"], json!(["bank"]));
        assert_eq!(holds[0]["policy_ids"], json!(["bank-key-needs-approval"]));
        assert!(!holds[0].to_string().contains(BANK_SECRET));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            origin.matching("/open/bank/").is_empty(),
            "forwarded before approval"
        );
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &alice,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (status, body) = agent.join().unwrap();
        assert_eq!(status, 200, "{body}");
    });
    // Approved: forwarded once, the secret substituted then.
    let seen = origin.matching("/open/bank/transfer");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {BANK_SECRET}")
    );
    // Denied: refused with the reason, and the secret never leaves.
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post_with(&proxy, &bank_url, "$CRED{bank}"));
        let holds = wait_holds(&proxy, "acme", &alice, 1);
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &proxy,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/deny"),
            &alice,
            Some(r#"{"reason": "not this payee"}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (status, body) = agent.join().unwrap();
        assert_eq!((status, code_of(&body).as_str()), (403, "approval_denied"));
        assert!(
            body.contains("not this payee") && !body.contains(BANK_SECRET),
            "{body}"
        );
    });
    assert_eq!(origin.matching("/open/bank/transfer").len(), 1);
    // Audited: two holds, one granted, one denied; the request records name the credential;
    // no secret anywhere in the trail or the log.
    let records = proxy.wait_audit_records("acme", 7);
    assert_eq!(
        events(&records, "approval_requested").len(),
        2,
        "{records:#?}"
    );
    assert_eq!(events(&records, "approval_granted").len(), 1);
    assert_eq!(events(&records, "approval_denied").len(), 1);
    let granted = records
        .iter()
        .find(|r| r["event"] == "request" && r["approval"]["outcome"] == "granted")
        .expect("the approved request's record");
    assert_eq!(granted["credentials"], json!(["bank"]));
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(BANK_SECRET) && !all.contains(PLAIN_SECRET));
    assert!(!proxy.log().contains(BANK_SECRET));
}

#[test]
fn holds_live_in_a_tls_redis_with_an_acl_user_like_the_limiters_counters() {
    let (ca_pem, redis) = crate::redis_tls::tls_redis();
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("redis-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let origin = Origin::start();
    let start = || {
        let mut spec = spec(origin.port).with_redis_limiter(
            format!("rediss://127.0.0.1:{}", redis.port),
            Duration::from_millis(500),
        );
        let env = "TP_TEST_REDIS_PASSWORD";
        spec.env
            .push((env.into(), crate::redis_tls::PASSWORD.to_string()));
        spec.config.limiter.redis_username = Some("proxy".into());
        spec.config.limiter.redis_password_env = Some(env.into());
        spec.config.limiter.redis_ca_file = Some(ca_file.clone());
        Proxy::start(spec)
    };
    let (a, b) = (start(), start());
    let alice = approver_token("acme", "alice", &[]);
    let url = format!("http://127.0.0.1:{}/pay/charge", origin.port);
    std::thread::scope(|s| {
        let agent = s.spawn(|| acme_post(&a, &url, r#"{"amount": 11}"#));
        let holds = wait_holds(&b, "acme", &alice, 1);
        let id = holds[0]["id"].as_str().unwrap();
        let r = api(
            &b,
            "POST",
            &format!("/v1/tenants/acme/holds/{id}/approve"),
            &alice,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(agent.join().unwrap().0, 200);
    });
    assert_eq!(origin.count(), 1);
    for proxy in [&a, &b] {
        assert!(!proxy.log().contains(crate::redis_tls::PASSWORD));
    }
}

/// One tenant's approver trickling request bodies from several addresses of its host (any
/// `127.x.y.z`) does not lock another tenant's approvers out of the API: a connection still
/// sending its body waits as one still sending its head does, and gives its slot up to a new
/// connection (before, it counted as being served and every slot was held).
#[test]
fn bodies_trickled_from_many_addresses_lock_no_approver_out() {
    use std::io::Write as _;
    let origin = Origin::start();
    let proxy = Proxy::start(spec(origin.port));
    let alice = approver_token("acme", "alice", &[]);
    let bob = approver_token("globex", "bob", &[]);
    let url = format!("http://127.0.0.1:{}/poll/delete-repo", origin.port);
    let (status, hold, answer) = python_post(&proxy, &url, r#"{"repo": "acme/site"}"#, None);
    assert_eq!(status, 202, "{answer}");
    let api_addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.approvals_port()));
    let mut trickled = Vec::new();
    for last in 2..=5u8 {
        for _ in 0..16 {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&std::net::SocketAddr::from(([127, 0, 0, last], 0)).into())
                .unwrap();
            socket.connect(&api_addr.into()).unwrap();
            let mut s: std::net::TcpStream = socket.into();
            s.write_all(
                format!(
                    "POST /v1/tenants/acme/holds/{hold}/approve HTTP/1.1\r\nHost: approvals\r\nAuthorization: Bearer {alice}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .unwrap();
            trickled.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let r = api(&proxy, "GET", "/v1/tenants/globex/holds", &bob, None);
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    // A body over the ports' limit is refused before the client is asked to send it.
    let r = raw_request(
        proxy.approvals_port(),
        &format!(
            "POST /v1/tenants/acme/holds/{hold}/approve HTTP/1.1\r\nHost: approvals\r\nAuthorization: Bearer {alice}\r\nExpect: 100-continue\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.body_text());
    // The hold was not approved by any of the bodies that never ended.
    let holds = wait_holds(&proxy, "acme", &alice, 1);
    assert_eq!(holds[0]["id"], hold.as_str(), "{holds:?}");
    drop(trickled);
}
