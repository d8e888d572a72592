//! `tenant-proxy policy check | test | explain`, shadow policies and data residency, against the
//! real binary, the repo's own policies and real origins on loopback.

use std::path::Path;

use crate::support::*;

/// A copy of the repo's policy directory to break on purpose.
fn repo_policies_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("policies"), dir.path());
    dir
}

fn policy_cli(args: &[&str]) -> (i32, String) {
    proxy_cli(&repo_root(), args, "")
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn policy_check_accepts_the_repo_policies() {
    for args in [
        &["policy", "check", "policies"][..],
        &[
            "policy",
            "check",
            "policies",
            "--config",
            "quickstart/tenant-proxy.toml",
        ][..],
    ] {
        let (code, out) = policy_cli(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(out.contains("ok: 2 tenant(s), 0 warning(s)"), "{out}");
    }
}

#[test]
fn policy_check_reports_errors_with_location_and_cedar_text() {
    let dir = repo_policies_copy();
    std::fs::write(
        dir.path().join("tenants/acme/broken.cedar"),
        "// a comment\npermit (principal, action == TenantProxy::Action::\"http\", resource)\n  when { context.no_such_field == 1 };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("global/syntax.cedar"),
        "permit (principal, action, resource)\nwhen { context.path like };\n",
    )
    .unwrap();
    let (code, out) = policy_cli(&["policy", "check", path_str(dir.path())]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tenants/acme/broken.cedar:3:"), "{out}");
    assert!(
        out.contains("no_such_field"),
        "cedar's own text names the attribute: {out}"
    );
    assert!(out.contains("global/syntax.cedar:2:"), "{out}");
    assert!(out.contains("2 error(s)"), "{out}");
}

#[test]
fn policy_check_warns_about_a_policy_that_can_never_apply() {
    let dir = repo_policies_copy();
    std::fs::write(
        dir.path().join("tenants/globex/impossible.cedar"),
        "// never true\n@id(\"never\")\npermit (principal, action == TenantProxy::Action::\"http\", resource)\n  when { false };\n",
    )
    .unwrap();
    let (code, out) = policy_cli(&["policy", "check", path_str(dir.path())]);
    assert_eq!(code, 0, "warnings alone do not fail: {out}");
    assert!(
        out.contains("warning: ") && out.contains("tenants/globex/impossible.cedar:"),
        "{out}"
    );
    assert!(out.contains("impossible"), "cedar's text: {out}");
    assert!(out.contains("1 warning(s)"), "{out}");
}

/// A global policy naming a workload the configuration does not have (a typo) never applies:
/// `policy check --config` and `check` both warn at it, as they do in a tenant's directory,
/// and neither fails for it.
#[test]
fn check_warns_about_a_global_policy_naming_no_workload() {
    let dir = tempfile::tempdir().unwrap();
    ProxySpec::default().write_in(dir.path());
    std::fs::write(
        dir.path().join("policies/global/typo.cedar"),
        "@id(\"no-admin-for-the-researcher\")\nforbid (principal == TenantProxy::Workload::\"acme/reseacher\", action == TenantProxy::Action::\"http\", resource)\n  when { context.path like \"/admin*\" };\n",
    )
    .unwrap();
    for args in [
        &["check", "--config", "tenant-proxy.toml"][..],
        &[
            "policy",
            "check",
            "policies",
            "--config",
            "tenant-proxy.toml",
        ][..],
    ] {
        let (code, out) = proxy_cli(dir.path(), args, "");
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(
            out.contains("`no-admin-for-the-researcher` names workload `reseacher`")
                && out.contains("never applies"),
            "{args:?}: {out}"
        );
    }
}

/// A tunnel is never held for approval, so a mark on a permit that allows one (a `connect` or
/// `connect_opaque` permit, or one with no action in its scope) is a load error, as on a
/// `forbid`, rather than a hold that silently never happens.
#[test]
fn policy_check_refuses_an_approval_mark_on_a_tunnel_permit() {
    for (name, scope) in [
        ("connect", r#"action == TenantProxy::Action::"connect""#),
        (
            "connect_opaque",
            r#"action == TenantProxy::Action::"connect_opaque""#,
        ),
        (
            "http and connect",
            r#"action in [TenantProxy::Action::"http", TenantProxy::Action::"connect"]"#,
        ),
        ("any action", "action"),
    ] {
        let dir = repo_policies_copy();
        std::fs::write(
            dir.path().join("tenants/globex/held-tunnel.cedar"),
            format!(
                "@id(\"globex-connect-needs-person\")\n@approval(\"required\")\npermit (principal in TenantProxy::Tenant::\"globex\", {scope}, resource)\n  when {{ resource == TenantProxy::Destination::\"pinned.example.com\" }};\n"
            ),
        )
        .unwrap();
        let (code, out) = policy_cli(&["policy", "check", path_str(dir.path())]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains("globex-connect-needs-person") && out.contains("`@approval`"),
            "{name}: {out}"
        );
    }
}

#[test]
fn the_repo_policies_pass_their_own_tests() {
    let (code, out) = policy_cli(&[
        "policy",
        "test",
        "policies",
        "--config",
        "quickstart/tenant-proxy.toml",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    for file in [
        "tests/global.json",
        "tests/acme.json",
        "tests/globex.json",
        "tests/mcp.json",
    ] {
        assert!(out.contains(file), "{file} ran: {out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_with_what_was_expected_and_got() {
    let dir = repo_policies_copy();
    let wrong = r#"[{
      "name": "globex may use any model (wrong)",
      "request": {
        "principal": "TenantProxy::Workload::\"globex/agent\"",
        "action": "TenantProxy::Action::\"http\"",
        "resource": "TenantProxy::Destination::\"api.openai.com\"",
        "context": {"scheme": "https", "host": "api.openai.com", "port": 443, "method": "POST",
                    "path": "/v1/chat/completions", "model": "gpt-4o", "run_signed": false, "scopes": [],
                    "hour": 10, "weekday": "tue"}
      },
      "entities": [],
      "decision": "allow",
      "reason": ["globex-openai"],
      "num_errors": 0
    }, {
      "name": "globex borrows acme's permit (wrong)",
      "request": {
        "principal": "TenantProxy::Workload::\"globex/agent\"",
        "action": "TenantProxy::Action::\"http\"",
        "resource": "TenantProxy::Destination::\"eu.api.openai.com\"",
        "context": {"scheme": "https", "host": "eu.api.openai.com", "port": 443, "method": "GET",
                    "path": "/v1/models", "run_signed": false, "scopes": [], "hour": 10, "weekday": "tue"}
      },
      "entities": [],
      "decision": "allow",
      "reason": ["acme-openai"],
      "num_errors": 0
    }]"#;
    std::fs::write(dir.path().join("tests/zz-wrong.json"), wrong).unwrap();
    let (code, out) = policy_cli(&[
        "policy",
        "test",
        path_str(dir.path()),
        "--config",
        "quickstart/tenant-proxy.toml",
    ]);
    assert_eq!(code, 1, "{out}");
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 2, "{out}");
    assert!(
        failed[0].contains("tests/zz-wrong.json")
            && failed[0].ends_with("globex may use any model (wrong)"),
        "{out}"
    );
    assert!(out.contains("expected: allow [globex-openai]"), "{out}");
    assert!(out.contains("got:      deny [free-plan-models]"), "{out}");
    // A case runs against its own tenant's set only: acme's permit never applies to globex.
    assert!(
        failed[1].ends_with("globex borrows acme's permit (wrong)"),
        "{out}"
    );
    assert!(out.contains("got:      deny []"), "{out}");
    assert!(out.contains(" 2 failed"), "{out}");
}

#[test]
fn without_a_configuration_cases_bring_their_own_entities() {
    let dir = repo_policies_copy();
    for f in std::fs::read_dir(dir.path().join("tests")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let case = |name: &str, entities: &str, decision: &str| {
        format!(
            r#"{{
      "name": "{name}",
      "request": {{
        "principal": "TenantProxy::Workload::\"globex/agent\"",
        "action": "TenantProxy::Action::\"http\"",
        "resource": "TenantProxy::Destination::\"api.openai.com\"",
        "context": {{"scheme": "https", "host": "api.openai.com", "port": 443, "method": "POST",
                    "path": "/v1/chat/completions", "model": "gpt-4o", "run_signed": false,
                    "scopes": [], "hour": 10, "weekday": "tue"}}
      }},
      "entities": {entities},
      "decision": "{decision}",
      "reason": ["free-plan-models"],
      "num_errors": 0
    }}"#
        )
    };
    let entities = r#"[
      {"uid": {"type": "TenantProxy::Tenant", "id": "globex"}, "attrs": {"plan": "free", "region": "us"}, "parents": []},
      {"uid": {"type": "TenantProxy::Workload", "id": "globex/agent"},
       "attrs": {"tenant": {"__entity": {"type": "TenantProxy::Tenant", "id": "globex"}}, "name": "agent"},
       "parents": [{"type": "TenantProxy::Tenant", "id": "globex"}]}
    ]"#;
    std::fs::write(
        dir.path().join("tests/own.json"),
        format!("[{}]", case("free plan, big model", entities, "deny")),
    )
    .unwrap();
    let (code, out) = policy_cli(&["policy", "test", path_str(dir.path())]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");

    // The same case without its entities cannot read the tenant's plan: an error, which denies
    // but does not match the expected deciding policy.
    std::fs::write(
        dir.path().join("tests/own.json"),
        format!("[{}]", case("no entities", "[]", "deny")),
    )
    .unwrap();
    let (code, out) = policy_cli(&["policy", "test", path_str(dir.path())]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error(s)"), "{out}");
}

/// The quickstart's policies (the repo's `policies/`), residency tags for the loopback origins
/// (`127.0.0.1` is EU, `localhost` is US), a route per region, and a mounted credential.
fn residency_spec(origin: &Origin) -> ProxySpec {
    let mut spec = ProxySpec {
        policies: "policies",
        ..Default::default()
    };
    let to_origin = format!("http://127.0.0.1:{}/", origin.port);
    for (name, prefix, region) in [("eu-llm", "/eu/", "eu"), ("us-llm", "/us/", "us")] {
        spec.tenants.routes.push(config::Route {
            region: Some(region.into()),
            ..config::Route::new(name, prefix, to_origin.clone())
        });
    }
    let regions = &mut spec.tenants.destination_regions;
    regions.insert(
        "eu".into(),
        vec!["127.0.0.1".into(), "eu.api.openai.com".into()],
    );
    regions.insert("us".into(), vec!["localhost".into(), "*.us.example".into()]);
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "openai",
        &["127.0.0.1/acme/"],
    ));
    spec
}

fn start_residency_proxy(origin: &Origin) -> Proxy {
    Proxy::start_prepared(residency_spec(origin), |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), "sk-explain-secret").unwrap();
    })
}

fn route_get(port: u16, path: &str, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    raw_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"),
    )
    .unwrap()
}

#[test]
fn residency_keeps_an_eu_tenant_on_eu_destinations() {
    let origin = Origin::start();
    let proxy = start_residency_proxy(&origin);
    let globex = token_for("globex", "agent");

    // acme is in region "eu": an EU-tagged host and an EU route are allowed.
    let ok = forward_get(
        proxy.sidecar_port,
        &format!("http://127.0.0.1:{}/eu-host", origin.port),
        None,
        "",
    );
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    let ok_route = route_get(proxy.sidecar_port, "/eu/eu-route", None);
    assert_eq!(ok_route.status, 200, "{}", ok_route.body_text());

    // A US-tagged host, and a US route to the very same origin, are refused before any dial.
    let denied = forward_get(
        proxy.sidecar_port,
        &format!("http://localhost:{}/us-host", origin.port),
        None,
        "",
    );
    denied.assert_refused(403, "policy_denied");
    let denied_route = route_get(proxy.sidecar_port, "/us/us-route", None);
    denied_route.assert_refused(403, "policy_denied");
    assert!(
        origin.matching("us-").is_empty(),
        "nothing reached the origin"
    );
    for r in [&denied, &denied_route] {
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["policy_ids"], serde_json::json!(["eu-data-residency"]));
        assert_eq!(rec["reason"], "policy_denied");
    }
    let rec = proxy.audit_record("acme", &ok.request_id());
    assert_eq!(rec["policy_ids"], serde_json::json!(["allow-local-mock"]));

    // globex is in region "us": the EU rule does not touch it.
    let us = route_get(proxy.shared_port, "/us/globex-us-route", Some(&globex));
    assert_eq!(us.status, 200, "{}", us.body_text());
    assert_eq!(origin.matching("globex-us-route").len(), 1);
}

#[test]
fn explain_decides_tunnels_and_exits_2_for_unknown_identities() {
    let origin = Origin::start();
    let mut spec = residency_spec(&origin);
    spec.config.intercept = Some(config::Intercept::ca_in("ca"));
    let proxy = Proxy::start_prepared(spec, |dir| {
        let (code, out) = proxy_cli(dir, &["ca", "init", "--out", "ca"], "");
        assert_eq!(code, 0, "{out}");
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), "sk-explain-secret").unwrap();
    });
    let acme = |url: &str| {
        explain(
            &proxy,
            &[
                "--tenant",
                "acme",
                "--workload",
                "bot",
                "--method",
                "CONNECT",
                "--url",
                url,
            ],
        )
    };
    // `connect` permitted (acme-tunnels), no `connect_opaque`: intercepted.
    let open = acme("eu.api.openai.com:443");
    assert_eq!(open["decision"], "allow", "{open}");
    assert_eq!(open["tunnel"], "intercept");
    assert_eq!(open["policy_ids"], serde_json::json!(["acme-tunnels"]));
    // A forbid on `connect` decided, and is named.
    let us = acme("api.openai.com:443");
    assert_eq!(us["reason"], "policy_denied", "{us}");
    assert_eq!(us["message"], "forbidden by policy `eu-data-residency`");
    // Ports: outside `connect_ports`, and a plain-HTTP port (no `connect` needed).
    let port = acme("eu.api.openai.com:8443");
    assert_eq!(port["reason"], "connect_port_forbidden", "{port}");
    let plain = acme("eu.api.openai.com:80");
    assert_eq!(
        (plain["decision"].as_str(), plain["tunnel"].as_str()),
        (Some("allow"), Some("plain")),
        "{plain}"
    );
    // Through the running proxy, the same tunnel is refused the same way.
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &[
            "policy",
            "explain",
            "--config",
            "tenant-proxy.toml",
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--method",
            "CONNECT",
            "--url",
            "api.openai.com:443",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("decision:    deny") && out.contains("eu-data-residency"),
        "{out}"
    );

    // An unknown tenant or workload is not a decision: exit 2, the name in the message.
    for (tenant, workload, named) in [("acme", "ghost", "ghost"), ("initech", "bot", "initech")] {
        let (code, out) = proxy_cli(
            proxy.dir.path(),
            &[
                "policy",
                "explain",
                "--config",
                "tenant-proxy.toml",
                "--tenant",
                tenant,
                "--workload",
                workload,
                "--url",
                "http://127.0.0.1/x",
            ],
            "",
        );
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("unknown") && out.contains(named), "{out}");
        assert!(!out.contains("decision:"), "{out}");
    }
}

fn explain(proxy: &Proxy, args: &[&str]) -> serde_json::Value {
    let config = proxy.path("tenant-proxy.toml");
    let mut all = vec!["policy", "explain", "--config", path_str(&config), "--json"];
    all.extend_from_slice(args);
    let (code, out) = proxy_cli(proxy.dir.path(), &all, "");
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn explain_decides_as_the_running_proxy() {
    let origin = Origin::start();
    let proxy = start_residency_proxy(&origin);
    let globex = token_for("globex", "agent");
    let base = format!("http://127.0.0.1:{}", origin.port);
    let body_file = proxy.path("big-model.json");
    std::fs::write(&body_file, r#"{"model":"gpt-4o","messages":[]}"#).unwrap();

    // Each case: the explanation, and the same request through the running proxy.
    let allowed = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            &format!("{base}/x1"),
        ],
    );
    let sent = forward_get(proxy.sidecar_port, &format!("{base}/x1"), None, "");
    assert_eq!(
        (allowed["decision"].as_str(), sent.status),
        (Some("allow"), 200)
    );
    assert_eq!(allowed["facts"]["destination_region"], "eu");
    assert_eq!(
        allowed["policy_ids"],
        proxy.audit_record("acme", &sent.request_id())["policy_ids"]
    );

    let url = format!("http://localhost:{}/x2", origin.port);
    let residency = explain(
        &proxy,
        &["--tenant", "acme", "--workload", "bot", "--url", &url],
    );
    let sent = forward_get(proxy.sidecar_port, &url, None, "");
    sent.assert_refused(403, "policy_denied");
    assert_eq!(residency["decision"], "deny");
    assert_eq!(residency["reason"], "policy_denied");
    assert_eq!(
        residency["policy_ids"],
        serde_json::json!(["eu-data-residency"])
    );
    assert_eq!(
        residency["policy_ids"],
        proxy.audit_record("acme", &sent.request_id())["policy_ids"]
    );

    // A method in lower case is refused as the proxy refuses it, not read as `DELETE`.
    let lower_url = format!("{base}/x-lower");
    let lower = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--method",
            "delete",
            "--url",
            &lower_url,
        ],
    );
    let sent = raw_request(
        proxy.sidecar_port,
        &format!(
            "delete {lower_url} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            origin.port
        ),
    )
    .unwrap();
    sent.assert_refused(400, "bad_request");
    assert_eq!(
        (lower["decision"].as_str(), lower["reason"].as_str()),
        (Some("deny"), Some("bad_request")),
        "{lower}"
    );

    // The model is read from the body as the proxy reads it (JSON content type only).
    let big = explain(
        &proxy,
        &[
            "--tenant",
            "globex",
            "--workload",
            "agent",
            "--method",
            "POST",
            "--url",
            &format!("{base}/v1/chat/completions"),
            "--body",
            path_str(&body_file),
            "--header",
            "content-type: application/json",
        ],
    );
    let sent = raw_request(
        proxy.shared_port,
        &format!(
            "POST {base}/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {globex}\r\ncontent-type: application/json\r\ncontent-length: 32\r\nConnection: close\r\n\r\n{{\"model\":\"gpt-4o\",\"messages\":[]}}",
            origin.port
        ),
    )
    .unwrap();
    sent.assert_refused(403, "policy_denied");
    assert_eq!(big["facts"]["model"], "gpt-4o");
    assert_eq!(big["policy_ids"], serde_json::json!(["free-plan-models"]));
    let unlabelled = explain(
        &proxy,
        &[
            "--tenant",
            "globex",
            "--workload",
            "agent",
            "--method",
            "POST",
            "--url",
            &format!("{base}/v1/chat/completions"),
            "--body",
            path_str(&body_file),
        ],
    );
    // Without a JSON content type the body is read all the same, as the proxy reads it (a
    // content type must not hide the model from policy).
    assert_eq!(unlabelled["facts"]["model"], "gpt-4o");
    assert_eq!(unlabelled["decision"], "deny");
    assert_eq!(
        unlabelled["policy_ids"],
        serde_json::json!(["free-plan-models"])
    );

    // Route mode: the route's name and its own region reach the policies.
    let route = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            "/us/v1/models",
        ],
    );
    assert_eq!(route["facts"]["route"], "us-llm");
    assert_eq!(route["facts"]["destination_region"], "us");
    assert_eq!(
        route["policy_ids"],
        serde_json::json!(["eu-data-residency"])
    );

    // Credentials: each `use_credential` decision, names only, never the value.
    let handle = "authorization: Bearer $CRED{openai}";
    let cred = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            &format!("{base}/acme/c1"),
            "--header",
            handle,
        ],
    );
    assert_eq!(cred["decision"], "allow");
    assert_eq!(cred["credentials"][0]["name"], "openai");
    assert_eq!(cred["credentials"][0]["position"], "header");
    assert_eq!(
        cred["credentials"][0]["policy_ids"],
        serde_json::json!(["credentials-by-binding"])
    );
    assert!(!cred.to_string().contains("sk-explain-secret"));
    let unbound = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            &format!("{base}/other/c2"),
            "--header",
            handle,
        ],
    );
    let sent = forward_get(
        proxy.sidecar_port,
        &format!("{base}/other/c2"),
        None,
        "authorization: Bearer $CRED{openai}\r\n",
    );
    let code = sent.code();
    assert_eq!(unbound["decision"], "deny");
    assert_eq!(
        unbound["reason"],
        code.as_str(),
        "same refusal as the proxy"
    );

    // The local clock (`hour`, `weekday`) at a chosen time, in the tenant's zone (UTC here).
    let at = explain(
        &proxy,
        &[
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            &format!("{base}/x"),
            "--at",
            "2026-11-28T03:15:00Z",
        ],
    );
    assert_eq!(
        (
            at["facts"]["hour"].as_u64(),
            at["facts"]["weekday"].as_str()
        ),
        (Some(3), Some("sat"))
    );

    // The text form names the decision and the deciding policy.
    let config = proxy.path("tenant-proxy.toml");
    let (code, text) = proxy_cli(
        proxy.dir.path(),
        &[
            "policy",
            "explain",
            "--config",
            path_str(&config),
            "--tenant",
            "acme",
            "--workload",
            "bot",
            "--url",
            &url,
        ],
        "",
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("decision:    deny"), "{text}");
    assert!(text.contains("policies:    eu-data-residency"), "{text}");
}

#[test]
fn a_shadow_policy_set_changes_no_response_and_is_audited() {
    let origin = Origin::start();
    let mut spec = residency_spec(&origin);
    spec.tenants.shadow_policy_dir = Some("shadow".into());
    // The tunnel's host resolves to loopback without DNS.
    spec.config
        .egress
        .hosts
        .insert("eu.api.openai.com".into(), vec!["127.0.0.1".into()]);
    let deny_all = "@id(\"shadow-deny-all\")\nforbid (principal, action, resource);\n";
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), "sk-explain-secret").unwrap();
        std::fs::create_dir_all(dir.join("shadow/global")).unwrap();
        std::fs::create_dir_all(dir.join("shadow/tenants")).unwrap();
        std::fs::copy(
            repo_root().join("policies/schema.cedarschema"),
            dir.join("shadow/schema.cedarschema"),
        )
        .unwrap();
        std::fs::write(dir.join("shadow/global/deny.cedar"), deny_all).unwrap();
    });
    let base = format!("http://127.0.0.1:{}", origin.port);

    // Enforced allow, shadow deny: the request is served all the same.
    let served = forward_get(proxy.sidecar_port, &format!("{base}/s1"), None, "");
    assert_eq!(served.status, 200, "{}", served.body_text());
    assert_eq!(origin.matching("/s1").len(), 1);
    let rec = proxy.audit_record("acme", &served.request_id());
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["policy_ids"], serde_json::json!(["allow-local-mock"]));
    assert_eq!(
        rec["shadow"],
        serde_json::json!({"decision": "deny", "policy_ids": ["shadow-deny-all"], "outcome": "would_deny"})
    );

    // Enforced deny, shadow deny: refused exactly as without the shadow set.
    let refused = forward_get(
        proxy.sidecar_port,
        &format!("http://localhost:{}/s2", origin.port),
        None,
        "",
    );
    refused.assert_refused(403, "policy_denied");
    let rec = proxy.audit_record("acme", &refused.request_id());
    assert_eq!(rec["policy_ids"], serde_json::json!(["eu-data-residency"]));
    assert_eq!(rec["shadow"]["outcome"], "agree");

    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"tenant_proxy_shadow_decisions_total{outcome="would_deny",tenant="acme"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tenant_proxy_shadow_decisions_total{outcome="agree",tenant="acme"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(
            r#"tenant_proxy_shadow_decisions_total{outcome="would_deny",tenant="globex""#
        ),
        "another tenant's series stays untouched: {metrics}"
    );

    // Tunnels are asked too: an allowed `CONNECT` (refused later for want of an interception
    // CA) records the shadow's would-be denial next to the enforced decision.
    let connect = raw_request(
        proxy.sidecar_port,
        "CONNECT eu.api.openai.com:443 HTTP/1.1\r\nHost: eu.api.openai.com:443\r\n\r\n",
    )
    .unwrap();
    let rec = proxy.audit_record("acme", &connect.request_id());
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["policy_ids"], serde_json::json!(["acme-tunnels"]));
    assert_eq!(rec["shadow"]["outcome"], "would_deny", "{rec}");

    // The shadow set reloads with the enforced one: a permit-all shadow now agrees.
    std::fs::write(
        proxy.path("shadow/global/deny.cedar"),
        "@id(\"shadow-allow-all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    proxy.sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = forward_get(proxy.sidecar_port, &format!("{base}/s3"), None, "");
        assert_eq!(r.status, 200);
        let rec = proxy.audit_record("acme", &r.request_id());
        if rec["shadow"]["outcome"] == "agree" {
            assert_eq!(
                rec["shadow"]["policy_ids"],
                serde_json::json!(["shadow-allow-all"])
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shadow reload never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A broken shadow set is rejected like a broken enforced one: the last good pair stays.
    std::fs::write(
        proxy.path("shadow/global/broken.cedar"),
        "permit (principal",
    )
    .unwrap();
    proxy.sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !proxy.metrics().lines().any(|l| {
        l.starts_with(r#"tenant_proxy_config_reloads_total{result="error"}"#) && !l.ends_with(" 0")
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken shadow set was never rejected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        proxy.log().contains("shadow/global/broken.cedar"),
        "the problem names the file"
    );
    let r = forward_get(proxy.sidecar_port, &format!("{base}/s4"), None, "");
    assert_eq!(r.status, 200);
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        rec["shadow"]["policy_ids"],
        serde_json::json!(["shadow-allow-all"])
    );
}

/// An error quoting what someone else wrote (here a configuration file named with a terminal
/// escape and a bidi control) is printed escaped: a `usage` answer from a fake admin port
/// quoted by a parse error drove the terminal.
#[test]
fn errors_quoting_others_text_are_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let name = "conf\u{1b}]0;PWNED\u{7}\u{202e}.toml";
    let (code, out) = proxy_cli(dir.path(), &["check", "--config", name], "");
    assert_ne!(code, 0, "{out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{202e}') && !out.contains('\u{7}'),
        "{out:?}"
    );
    assert!(out.contains("\\u{001b}]0;PWNED"), "{out:?}");
}
