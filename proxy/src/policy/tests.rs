use std::path::{Path, PathBuf};

use super::*;

fn repo_policies() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).expect("tenant id")
}

fn wid(s: &str) -> WorkloadId {
    WorkloadId::new(s).expect("workload id")
}

/// The quickstart tenants.
fn tenants() -> Vec<TenantInfo> {
    let t = |id: &str, plan: &str, region: &str, workloads: &[&str]| TenantInfo {
        id: tid(id),
        plan: plan.into(),
        region: region.into(),
        workloads: workloads.iter().map(|w| wid(w)).collect(),
    };
    vec![
        t("acme", "pro", "eu", &["support-bot", "researcher"]),
        t("globex", "free", "us", &["agent"]),
    ]
}

fn facts<'a>(host: &'a str, path: &'a str, model: Option<&'a str>) -> HttpRequestFacts<'a> {
    HttpRequestFacts {
        scheme: "https",
        host,
        port: 443,
        method: "POST",
        path,
        model,
        provider: None,
        run_signed: false,
        scopes: &[],
        route: None,
        destination_region: None,
        hour: 10,
        weekday: "tue",
    }
}

/// The quickstart's `[destination_regions]`, as the proxy would put them in the context.
fn quickstart_region(host: &str) -> Option<&'static str> {
    match host {
        "eu.api.openai.com" | "llm.quickstart.test" | "127.0.0.1" | "localhost" => Some("eu"),
        "api.openai.com" | "api.anthropic.com" => Some("us"),
        _ => None,
    }
}

const HTTP: &str = r#"action == TenantProxy::Action::"http""#;

/// A policy directory holding the repo's schema and `files` (relative path, text).
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo_policies().join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .expect("copy schema");
    for sub in ["global", "tenants"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
    }
    for (rel, text) in files {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text.replace("HTTP", HTTP)).expect("write");
    }
    dir
}

fn load_ok(dir: &Path) -> PolicyEngine {
    match PolicyEngine::load(dir, &tenants()) {
        Ok(engine) => engine,
        Err(problems) => panic!("load failed: {problems:#?}"),
    }
}

fn problems_text(dir: &Path) -> String {
    let problems = PolicyEngine::load(dir, &tenants()).expect_err("load must fail");
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

struct Case<'a> {
    name: &'a str,
    tenant: &'a str,
    workload: &'a str,
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    model: Option<&'a str>,
    allowed: bool,
    ids: &'a [&'a str],
}

fn run(engine: &PolicyEngine, cases: &[Case<'_>]) {
    for c in cases {
        let f = HttpRequestFacts {
            scheme: c.scheme,
            destination_region: quickstart_region(c.host),
            ..facts(c.host, c.path, c.model)
        };
        let d = engine.authorize_http(&tid(c.tenant), &wid(c.workload), &f);
        assert_eq!(d.allowed, c.allowed, "{}: {d:?}", c.name);
        assert_eq!(d.policy_ids, c.ids, "{}: {d:?}", c.name);
        assert!(d.errors.is_empty(), "{}: {d:?}", c.name);
    }
}

macro_rules! case {
    ($name:literal, $tenant:literal / $workload:literal, $scheme:expr, $host:expr, $path:expr, $model:expr, $allowed:expr, $ids:expr) => {
        Case {
            name: $name,
            tenant: $tenant,
            workload: $workload,
            scheme: $scheme,
            host: $host,
            path: $path,
            model: $model,
            allowed: $allowed,
            ids: $ids,
        }
    };
}

#[test]
fn quickstart_policies_decide_as_documented() {
    let engine = load_ok(&repo_policies());
    assert_eq!(engine.policy_count(&tid("acme")), 13);
    assert_eq!(engine.policy_count(&tid("globex")), 12);
    let chat = "/v1/chat/completions";
    let eu = "eu.api.openai.com";
    #[rustfmt::skip]
    let cases = [
        case!("acme openai eu", "acme"/"support-bot", "https", eu, chat, Some("gpt-4o"), true, &["acme-openai"]),
        case!("acme openai us", "acme"/"support-bot", "https", "api.openai.com", chat, Some("gpt-4o"), false, &["eu-data-residency"]),
        case!("acme anthropic us", "acme"/"researcher", "https", "api.anthropic.com", "/v1/messages", None, false, &["eu-data-residency"]),
        case!("acme plain http to openai", "acme"/"support-bot", "http", eu, chat, None, false, &[]),
        case!("acme untagged host", "acme"/"support-bot", "https", "attacker.example", "/", None, false, &["eu-data-residency"]),
        case!("acme researcher admin api", "acme"/"researcher", "https", eu, "/v1/organization/users", None, false, &["acme-researcher-no-admin"]),
        case!("acme bot admin api", "acme"/"support-bot", "https", eu, "/v1/organization/users", None, true, &["acme-openai"]),
        case!("globex mini model", "globex"/"agent", "https", "api.openai.com", chat, Some("gpt-4o-mini-2024-07-18"), true, &["globex-openai"]),
        case!("globex big model", "globex"/"agent", "https", "api.openai.com", chat, Some("gpt-4o"), false, &["free-plan-models"]),
        case!("globex no model", "globex"/"agent", "https", "api.openai.com", "/v1/models", None, true, &["globex-openai"]),
        case!("globex anthropic", "globex"/"agent", "https", "api.anthropic.com", "/v1/messages", None, false, &[]),
        case!("globex other host", "globex"/"agent", "https", "attacker.example", "/", None, false, &[]),
        case!("local mock, free plan", "globex"/"agent", "http", "127.0.0.1", chat, Some("gpt-4o-mini"), true, &["allow-local-mock"]),
        case!("local mock, free plan, big model", "globex"/"agent", "http", "127.0.0.1", chat, Some("gpt-4o"), false, &["free-plan-models"]),
        case!("local mock by name", "acme"/"support-bot", "http", "localhost", chat, Some("gpt-4o"), true, &["allow-local-mock"]),
        case!("quickstart mock name", "acme"/"support-bot", "http", "llm.quickstart.test", chat, Some("gpt-4o"), true, &["allow-local-mock"]),
        case!("quickstart mock name over https", "acme"/"support-bot", "https", "llm.quickstart.test", chat, Some("gpt-4o"), true, &["allow-local-mock"]),
        case!("quickstart mock name, free plan, big model", "globex"/"agent", "https", "llm.quickstart.test", chat, Some("gpt-4o"), false, &["free-plan-models"]),
        case!("a subdomain of the mock name", "globex"/"agent", "http", "x.llm.quickstart.test", chat, None, false, &[]),
        case!("metadata ip", "globex"/"agent", "http", "169.254.169.254", "/latest/meta-data", None, false, &["forbid-metadata"]),
        case!("metadata name, odd spelling", "globex"/"agent", "http", "Metadata.Google.Internal.", "/", None, false, &["forbid-metadata"]),
        case!("metadata from an eu tenant", "acme"/"support-bot", "http", "169.254.169.254", "/", None, false, &["eu-data-residency", "forbid-metadata"]),
    ];
    run(&engine, &cases);
}

#[test]
fn quickstart_tunnel_policies() {
    let engine = load_ok(&repo_policies());
    let eu = "eu.api.openai.com";
    #[rustfmt::skip]
    let cases = [
        ("acme openai eu tunnel", "acme", "support-bot", eu, 443, ConnectQuestion::Open, true, vec!["acme-tunnels"]),
        ("acme anthropic tunnel", "acme", "researcher", "api.anthropic.com", 443, ConnectQuestion::Open, false, vec!["eu-data-residency"]),
        ("acme other port", "acme", "support-bot", eu, 8443, ConnectQuestion::Open, false, vec![]),
        ("acme untagged host", "acme", "support-bot", "attacker.example", 443, ConnectQuestion::Open, false, vec!["eu-data-residency"]),
        ("acme opaque is never the default", "acme", "support-bot", eu, 443, ConnectQuestion::Opaque, false, vec![]),
        ("globex openai tunnel", "globex", "agent", "api.openai.com", 443, ConnectQuestion::Open, true, vec!["globex-tunnels"]),
        ("globex anthropic tunnel", "globex", "agent", "api.anthropic.com", 443, ConnectQuestion::Open, false, vec![]),
        ("metadata tunnel", "globex", "agent", "169.254.169.254", 443, ConnectQuestion::Open, false, vec!["forbid-metadata"]),
        ("quickstart tls mock tunnel", "acme", "support-bot", "llm.quickstart.test", 18443, ConnectQuestion::Open, true, vec!["allow-local-mock-tunnels"]),
        ("quickstart tls mock tunnel, globex", "globex", "agent", "llm.quickstart.test", 18443, ConnectQuestion::Open, true, vec!["allow-local-mock-tunnels"]),
        ("quickstart mock, opaque", "globex", "agent", "llm.quickstart.test", 18443, ConnectQuestion::Opaque, false, vec![]),
        ("loopback tunnel", "globex", "agent", "127.0.0.1", 18443, ConnectQuestion::Open, false, vec![]),
    ];
    for (name, tenant, workload, host, port, question, allowed, ids) in cases {
        let f = ConnectFacts {
            host,
            port,
            run_signed: false,
            scopes: &[],
            destination_region: quickstart_region(host),
            hour: 10,
            weekday: "tue",
        };
        let d = engine.authorize_connect(&tid(tenant), &wid(workload), question, &f);
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert_eq!(d.policy_ids, ids, "{name}: {d:?}");
        assert!(d.errors.is_empty(), "{name}: {d:?}");
    }
}

#[test]
fn quickstart_credential_policies() {
    let engine = load_ok(&repo_policies());
    let http = facts("api.stripe.com", "/v1/charges", None);
    #[rustfmt::skip]
    let cases = [
        ("acme live key", "acme", "support-bot", "stripe_live", true, vec!["credentials-by-binding"]),
        ("globex live key", "globex", "agent", "stripe_live", false, vec!["free-plan-no-live-payments"]),
        ("globex other key", "globex", "agent", "openai", true, vec!["credentials-by-binding"]),
    ];
    for (name, tenant, workload, cred, allowed, ids) in cases {
        let f = CredentialFacts {
            name: cred,
            position: "header",
            http: &http,
        };
        let d = engine.authorize_credential(&tid(tenant), &wid(workload), &f);
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert_eq!(d.policy_ids, ids, "{name}: {d:?}");
    }
}

#[test]
fn decisions_on_small_policy_sets() {
    let dir = dir_with(&[
        (
            "global/g.cedar",
            r#"@id("permit-example") permit (principal, HTTP, resource == TenantProxy::Destination::"example.com");
@id("permit-open") permit (principal, HTTP, resource == TenantProxy::Destination::"open.example");
@id("forbid-open-delete") forbid (principal, HTTP, resource) when { context.path like "/admin*" };
@id("free-models") forbid (principal, HTTP, resource)
  when { principal.tenant.plan == "free" && context has model && !(context.model like "small*") };"#,
        ),
        (
            "tenants/acme/a.cedar",
            r#"permit (principal == TenantProxy::Workload::"acme/researcher", HTTP, resource)
  when { context.host like "*.research.example" };"#,
        ),
    ]);
    let engine = load_ok(dir.path());
    #[rustfmt::skip]
    let cases = [
        case!("allow", "acme"/"support-bot", "https", "example.com", "/", None, true, &["permit-example"]),
        case!("default deny", "acme"/"support-bot", "https", "other.example", "/", None, false, &[]),
        case!("forbid beats permit", "acme"/"support-bot", "https", "open.example", "/admin/x", None, false, &["forbid-open-delete"]),
        case!("plan rule, allowed model", "globex"/"agent", "https", "example.com", "/", Some("small-1"), true, &["permit-example"]),
        case!("plan rule, other model", "globex"/"agent", "https", "example.com", "/", Some("large-1"), false, &["free-models"]),
        case!("plan rule, no model", "globex"/"agent", "https", "example.com", "/", None, true, &["permit-example"]),
        case!("plan rule, pro plan", "acme"/"support-bot", "https", "example.com", "/", Some("large-1"), true, &["permit-example"]),
        case!("default id, per workload", "acme"/"researcher", "https", "x.research.example", "/", None, true, &["tenants/acme/a.cedar#0"]),
        case!("per workload, other workload", "acme"/"support-bot", "https", "x.research.example", "/", None, false, &[]),
    ];
    run(&engine, &cases);
}

#[test]
fn optional_and_set_context_fields_reach_policies() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("route") permit (principal, HTTP, resource) when { context has route && context.route == "openai" };
@id("scope") permit (principal, HTTP, resource) when { context.scopes.contains("llm") && context.run_signed };
@id("port") forbid (principal, HTTP, resource) when { context.port == 8443 && context.method == "DELETE" };"#,
    )]);
    let engine = load_ok(dir.path());
    let scopes = ["llm".to_string()];
    #[rustfmt::skip]
    let cases = [
        ("route", facts("h", "/", None), Some("openai"), &[][..], false, 443, "POST", true, vec!["route"]),
        ("no route", facts("h", "/", None), None, &[][..], false, 443, "POST", false, vec![]),
        ("scope, signed", facts("h", "/", None), None, &scopes[..], true, 443, "POST", true, vec!["scope"]),
        ("scope, unsigned", facts("h", "/", None), None, &scopes[..], false, 443, "POST", false, vec![]),
        ("port and method", facts("h", "/", None), Some("openai"), &[][..], false, 8443, "DELETE", false, vec!["port"]),
    ];
    for (name, base, route, scopes, run_signed, port, method, allowed, ids) in cases {
        let f = HttpRequestFacts {
            route,
            scopes,
            run_signed,
            port,
            method,
            ..base
        };
        let d = engine.authorize_http(&tid("acme"), &wid("support-bot"), &f);
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert_eq!(d.policy_ids, ids, "{name}: {d:?}");
    }
}

#[test]
fn business_hours_rules_read_the_local_clock() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, HTTP, resource);
@id("business-hours") forbid (principal, HTTP, resource)
  when { context.hour < 8 || context.hour >= 18 || ["sat", "sun"].contains(context.weekday) };"#,
    )]);
    let engine = load_ok(dir.path());
    #[rustfmt::skip]
    let cases = [
        ("weekday morning", 8, "mon", true, vec!["all"]),
        ("weekday evening", 18, "fri", false, vec!["business-hours"]),
        ("weekday night", 3, "wed", false, vec!["business-hours"]),
        ("weekend", 11, "sun", false, vec!["business-hours"]),
    ];
    for (name, hour, weekday, allowed, ids) in cases {
        let f = HttpRequestFacts {
            hour,
            weekday,
            ..facts("x.example", "/", None)
        };
        let d = engine.authorize_http(&tid("acme"), &wid("support-bot"), &f);
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert_eq!(d.policy_ids, ids, "{name}: {d:?}");
    }
}

#[test]
fn tenant_policies_never_apply_to_another_tenant() {
    let dir = dir_with(&[
        // Unconstrained principal: only tenant scoping keeps it away from globex.
        (
            "tenants/acme/a.cedar",
            r#"@id("acme-all") permit (principal, HTTP, resource);"#,
        ),
        (
            "tenants/globex/g.cedar",
            r#"@id("globex-forbid-all") forbid (principal, HTTP, resource);"#,
        ),
    ]);
    let engine = load_ok(dir.path());
    let f = facts("x.example", "/", None);
    let acme = engine.authorize_http(&tid("acme"), &wid("researcher"), &f);
    assert!(acme.allowed && acme.policy_ids == ["acme-all"], "{acme:?}");
    let globex = engine.authorize_http(&tid("globex"), &wid("agent"), &f);
    assert!(!globex.allowed, "{globex:?}");
    assert_eq!(globex.policy_ids, ["globex-forbid-all"]);
    assert_eq!(engine.policy_count(&tid("acme")), 1);
    assert_eq!(engine.policy_count(&tid("globex")), 1);
    assert_eq!(engine.policy_count(&tid("initech")), 0);
}

#[test]
fn workloads_are_scoped_by_tenant() {
    // Both tenants have a workload called `agent`; acme's policy names only its own.
    let mut ts = tenants();
    ts[0].workloads.push(wid("agent"));
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("acme-agent") permit (principal == TenantProxy::Workload::"acme/agent", HTTP, resource);"#,
    )]);
    let engine = PolicyEngine::load(dir.path(), &ts).expect("load");
    let f = facts("x.example", "/", None);
    assert!(
        engine
            .authorize_http(&tid("acme"), &wid("agent"), &f)
            .allowed
    );
    assert!(
        !engine
            .authorize_http(&tid("globex"), &wid("agent"), &f)
            .allowed
    );
}

#[test]
fn unknown_principals_deny_with_an_error() {
    let dir = dir_with(&[("global/g.cedar", r#"permit (principal, HTTP, resource);"#)]);
    let engine = load_ok(dir.path());
    let f = facts("x.example", "/", None);
    #[rustfmt::skip]
    let cases = [
        ("unknown tenant", "initech", "agent", "unknown tenant `initech`"),
        ("unknown workload", "acme", "ghost", "unknown workload `ghost`"),
        ("another tenant's workload", "acme", "agent", "unknown workload `agent`"),
    ];
    for (name, tenant, workload, want) in cases {
        let d = engine.authorize_http(&tid(tenant), &wid(workload), &f);
        assert!(!d.allowed, "{name}: {d:?}");
        assert!(d.errors.iter().any(|e| e.contains(want)), "{name}: {d:?}");
        let cred = CredentialFacts {
            name: "k",
            position: "header",
            http: &f,
        };
        assert!(
            !engine
                .authorize_credential(&tid(tenant), &wid(workload), &cred)
                .allowed
        );
    }
}

#[test]
fn evaluation_errors_deny() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, HTTP, resource);
@id("overflow") forbid (principal, HTTP, resource) when { context.port * 9223372036854775807 > 0 };"#,
    )]);
    // Loading proves the erroring policy passes strict validation.
    let engine = load_ok(dir.path());
    let d = engine.authorize_http(
        &tid("acme"),
        &wid("support-bot"),
        &facts("x.example", "/", None),
    );
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.errors.iter().any(|e| e.contains("overflow")),
        "the error names the policy: {d:?}"
    );
    // Cedar itself would have allowed (the permit is the reason it reports), but the error
    // decided the denial: the failed policy is named, never the permit.
    assert_eq!(d.policy_ids, ["overflow"]);
}

#[test]
#[allow(clippy::type_complexity)]
fn load_problems_are_reported_with_location() {
    #[rustfmt::skip]
    let cases: &[(&str, &[(&str, &str)], &[&str])] = &[
        (
            "syntax error",
            &[("global/bad.cedar", "permit (principal, action, resource)\nwhen { context.path like };")],
            &["global/bad.cedar:2:"],
        ),
        (
            "schema violation",
            &[("tenants/acme/v.cedar", "// comment\npermit (principal, HTTP, resource)\n  when { context.nope == 1 };")],
            &["tenants/acme/v.cedar:3:10:", "nope"],
        ),
        (
            "type error",
            &[("global/t.cedar", "permit (principal, HTTP, resource) when { context.port == \"443\" };")],
            &["global/t.cedar:1:"],
        ),
        (
            "unknown tenant dir",
            &[("tenants/initech/a.cedar", "")],
            &["tenants/initech: ", "`initech`, which the configuration does not define"],
        ),
        ("invalid tenant dir", &[("tenants/Bad Name/a.cedar", "")], &["not a valid tenant id"]),
        (
            "policy file directly under tenants",
            &[("tenants/acme.cedar", "")],
            &["tenants/acme.cedar: ", "applies to no tenant"],
        ),
        (
            "subdirectory of global",
            &[("global/more/x.cedar", "")],
            &["global/more: subdirectories are not read"],
        ),
        (
            "duplicate id across global and tenant",
            &[
                ("global/a.cedar", r#"@id("x") permit (principal, HTTP, resource);"#),
                ("tenants/acme/b.cedar", "\n\n  @id(\"x\") permit (principal, HTTP, resource);"),
            ],
            &["tenants/acme/b.cedar:3:3: policy id `x` is already used in"],
        ),
        (
            "duplicate id in one file",
            &[("global/a.cedar", "@id(\"x\") permit (principal, HTTP, resource);\n@id(\"x\") forbid (principal, HTTP, resource);")],
            &["global/a.cedar:2:1: policy id `x` is already used"],
        ),
        (
            "id equal to another policy's default id",
            &[("global/a.cedar", "permit (principal, HTTP, resource);\n@id(\"global/a.cedar#0\") forbid (principal, HTTP, resource);")],
            &["policy id `global/a.cedar#0` is already used"],
        ),
        ("empty id", &[("global/a.cedar", "@id permit (principal, HTTP, resource);")], &["`@id` needs a value"]),
        (
            // What a file rewritten in place holds for a moment: never taken for "no policies".
            "empty file",
            &[("global/a.cedar", "@id(\"x\") permit (principal, HTTP, resource);"), ("tenants/acme/f.cedar", " \n")],
            &["tenants/acme/f.cedar: cannot read: the file holds no policy"],
        ),
        (
            // The same, stopped after the file's header comment.
            "comments only",
            &[("global/a.cedar", "@id(\"x\") permit (principal, HTTP, resource);"), ("tenants/acme/f.cedar", "// acme's forbids\n  // reviewed by security\n\n")],
            &["tenants/acme/f.cedar: cannot read: the file holds no policy"],
        ),
        (
            "template",
            &[("global/a.cedar", "@id(\"t\") permit (principal == ?principal, HTTP, resource);")],
            &["`t` is a template"],
        ),
    ];
    for (name, files, wants) in cases {
        let dir = dir_with(files);
        let text = problems_text(dir.path());
        for want in *wants {
            assert!(text.contains(want), "{name}: want `{want}` in:\n{text}");
        }
    }
}

#[test]
fn every_problem_is_reported_once() {
    let dir = dir_with(&[
        (
            "global/a.cedar",
            "permit (principal, HTTP, resource) when { context.nope };",
        ),
        (
            "global/b.cedar",
            "permit (principal, action, resource) when {",
        ),
        (
            "tenants/acme/c.cedar",
            "forbid (principal, HTTP, resource) when { principal.nope };",
        ),
        ("tenants/initech/d.cedar", ""),
    ]);
    let problems = PolicyEngine::load(dir.path(), &tenants()).expect_err("broken");
    let files: Vec<String> = problems
        .iter()
        .map(|p| {
            p.file
                .strip_prefix(dir.path())
                .expect("inside")
                .display()
                .to_string()
        })
        .collect();
    // The global validation error is found for both tenants but reported once.
    assert_eq!(
        files,
        [
            "global/b.cedar",
            "tenants/initech",
            "global/a.cedar",
            "tenants/acme/c.cedar"
        ],
        "{problems:#?}"
    );
    assert!(problems.iter().all(|p| p.message.len() > 10));
}

#[test]
fn schema_problems_are_reported() {
    let empty = dir_with(&[]);
    std::fs::remove_file(empty.path().join("schema.cedarschema")).expect("rm");
    let problems = PolicyEngine::load(empty.path(), &tenants()).expect_err("no schema");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0]
        .to_string()
        .contains("schema.cedarschema: cannot read the schema"));

    let dir = dir_with(&[]);
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "namespace TenantProxy {\n  entity Tenant = { plan: Strin };\n}",
    )
    .expect("write");
    let text = problems_text(dir.path());
    assert!(text.contains("schema.cedarschema:2:"), "{text}");

    let dir = dir_with(&[]);
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "namespace TenantProxy { entity Tenant = { plan: String, region: String }; entity Workload in [Tenant] = { tenant: Tenant, name: String }; entity Destination; }",
    )
    .expect("write");
    let text = problems_text(dir.path());
    assert!(
        text.contains("does not declare action `TenantProxy::Action::\"http\"`"),
        "{text}"
    );
}

/// A schema whose contexts say otherwise than what the proxy sends is refused: policies would be
/// validated (and `policy test` cases built) against types no request has.
#[test]
fn a_schema_that_does_not_describe_the_requests_is_a_problem() {
    let shipped =
        std::fs::read_to_string(repo_policies().join("schema.cedarschema")).expect("schema");
    #[rustfmt::skip]
    let edits = [
        ("a field of another type", "    run_signed: Bool,        // the run id came from a signed token", "    run_signed: String,", "Action::\"http\""),
        ("a connect field of another type", "    port: Long,              // the CONNECT port", "    port: String, //", "Action::\"connect\""),
        ("a required field never sent", "    path: String,            // upstream path without the query", "    path: String, team: String,", "Action::\"http\""),
        ("an optional field it sends, undeclared", "    provider?: String,", "", "Action::\"http\""),
        ("an optional field it never sends", "    route?: String,          // only when the request came through a route-mode route", "    route?: String, user_agent?: String,", "`user_agent` in the context of action `http`"),
        ("an attribute of an entity it never sets", "  entity Destination;", "  entity Destination = { risk?: String };", "`risk` on `Destination`"),
        ("a tenant attribute it never sets", "    region: String,\n  };", "    region: String,\n    team?: String,\n  };", "`team` on `Tenant`"),
        ("a parent it never sets", "  entity Destination;", "  entity DestGroup;\n  entity Destination in [DestGroup];", "member of `DestGroup`"),
        ("tags it never sets", "  entity Destination;", "  entity Destination tags String;", "tags on `Destination`"),
        ("an action it never asks", "  entity Destination;", "  entity Destination;\n  action http_write appliesTo { principal: [Workload], resource: [Destination] };", "action `http_write`"),
    ];
    for (name, from, to, action) in edits {
        assert!(shipped.contains(from), "{name}: the shipped schema changed");
        let dir = dir_with(&[]);
        std::fs::write(
            dir.path().join("schema.cedarschema"),
            shipped.replacen(from, to, 1),
        )
        .expect("write");
        let problems = PolicyEngine::load(dir.path(), &tenants()).expect_err(name);
        assert!(
            problems
                .iter()
                .any(|p| p.file.ends_with("schema.cedarschema")
                    && (p
                        .message
                        .contains("the schema does not describe what the proxy sends")
                        || p.message.contains("which the proxy never"))
                    && p.message.contains(action)),
            "{name}: {problems:#?}"
        );
    }
}

/// A policy directory without `global/` or `tenants/`, or not there at all, is a problem: one
/// moved away for a moment (a directory swapped, a checkout in progress) must not load as no
/// policies, its forbids dropped. A tenant without a directory of its own is fine.
#[test]
fn a_missing_global_or_tenants_directory_is_a_problem() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("g") permit (principal, HTTP, resource);"#,
    )]);
    load_ok(dir.path());
    for missing in ["global", "tenants"] {
        let away = dir.path().join(format!("{missing}.next"));
        std::fs::rename(dir.path().join(missing), &away).expect("mv");
        let problems = PolicyEngine::load(dir.path(), &tenants()).expect_err(missing);
        assert_eq!(problems.len(), 1, "{missing}: {problems:#?}");
        assert_eq!(problems[0].file, dir.path().join(missing));
        assert!(
            problems[0]
                .message
                .starts_with("the directory does not exist"),
            "{missing}: {problems:#?}"
        );
        std::fs::rename(&away, dir.path().join(missing)).expect("mv back");
    }
    let nowhere = dir.path().join("nowhere");
    let problems = PolicyEngine::load(&nowhere, &tenants()).expect_err("no directory");
    assert_eq!(
        problems.len(),
        1,
        "one problem, not one per part: {problems:#?}"
    );
    assert_eq!(problems[0].file, nowhere);
    assert!(problems[0]
        .message
        .starts_with("the directory does not exist"));
    let file = dir.path().join("schema.cedarschema");
    let problems = PolicyEngine::load(&file, &tenants()).expect_err("a file");
    assert_eq!(
        (problems.len(), problems[0].message.as_str()),
        (1, "not a directory")
    );
}

#[test]
fn non_policy_files_are_ignored_and_tenants_without_a_directory_get_global_only() {
    let dir = dir_with(&[
        (
            "global/g.cedar",
            r#"@id("g") permit (principal, HTTP, resource);"#,
        ),
        ("global/README.md", "not cedar"),
        ("global/.g.cedar.swp", "not cedar"),
        ("tests/case.json", "{}"),
        ("tenants/notes.txt", "not cedar"),
        (
            "tenants/acme/a.cedar",
            r#"@id("a") permit (principal, HTTP, resource);"#,
        ),
    ]);
    let engine = load_ok(dir.path());
    assert_eq!(engine.policy_count(&tid("acme")), 2);
    assert_eq!(engine.policy_count(&tid("globex")), 1);
    let debug = format!("{engine:?}");
    assert!(
        debug.contains("tenants: 2") && debug.contains("policies_in_all_sets: 3"),
        "{debug}"
    );
}

#[test]
fn tenants_that_do_not_fit_are_problems() {
    let dir = dir_with(&[]);
    let mut twice = tenants();
    twice.push(twice[0].clone());
    let problems = PolicyEngine::load(dir.path(), &twice).expect_err("duplicate tenant");
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("tenant `acme` is listed twice")),
        "{problems:?}"
    );
    let mut dup_workload = tenants();
    dup_workload[1].workloads.push(wid("agent"));
    let problems = PolicyEngine::load(dir.path(), &dup_workload).expect_err("duplicate workload");
    assert!(
        problems
            .iter()
            .any(|p| p.message == "workload `agent` of tenant `globex` is listed twice"),
        "{problems:?}"
    );
}

#[test]
fn built_requests_conform_to_the_schema() {
    let text = std::fs::read_to_string(repo_policies().join("schema.cedarschema")).expect("schema");
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).expect("schema parses");
    let engine = load_ok(&repo_policies());
    let (_, principal) = engine
        .lookup(&tid("acme"), &wid("support-bot"))
        .expect("known");
    assert_eq!(
        principal.to_string(),
        r#"TenantProxy::Workload::"acme/support-bot""#
    );
    let scopes = vec!["llm".to_string(), "admin".to_string()];
    let full = HttpRequestFacts {
        model: Some("gpt-4o"),
        provider: None,
        route: Some("openai"),
        destination_region: Some("eu"),
        scopes: &scopes,
        run_signed: true,
        ..facts("API.openai.com", "/v1/chat/completions", None)
    };
    for (name, f) in [
        ("all fields", full),
        ("optional fields absent", facts("h", "/", None)),
    ] {
        let request = engine
            .http_request(principal, &f, Some(&schema))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "all fields" {
            assert_eq!(
                request.resource().map(ToString::to_string).as_deref(),
                Some(r#"TenantProxy::Destination::"api.openai.com""#)
            );
        }
        let cred = CredentialFacts {
            name: "openai",
            position: "query",
            http: &f,
        };
        engine
            .credential_request(principal, &cred, Some(&schema))
            .unwrap_or_else(|e| panic!("{name}, credential: {e}"));
    }
    for region in [Some("eu"), None] {
        let f = ConnectFacts {
            host: "eu.api.openai.com",
            port: 443,
            run_signed: true,
            scopes: &scopes,
            destination_region: region,
            hour: 23,
            weekday: "sun",
        };
        for question in [ConnectQuestion::Open, ConnectQuestion::Opaque] {
            engine
                .connect_request(principal, question, &f, Some(&schema))
                .unwrap_or_else(|e| panic!("connect {region:?}: {e}"));
        }
    }
}

#[test]
fn problem_display_and_sharing() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<PolicyEngine>();
    let p = |line, column| PolicyProblem {
        file: PathBuf::from("global/a.cedar"),
        line,
        column,
        message: "unexpected token `}`".into(),
    };
    assert_eq!(
        p(Some(2), Some(5)).to_string(),
        "global/a.cedar:2:5: unexpected token `}`"
    );
    assert_eq!(
        p(Some(2), None).to_string(),
        "global/a.cedar:2: unexpected token `}`"
    );
    assert_eq!(
        p(None, None).to_string(),
        "global/a.cedar: unexpected token `}`"
    );
}

#[test]
fn host_normalization() {
    #[rustfmt::skip]
    let cases = [
        ("already normal", "api.openai.com", "api.openai.com"),
        ("upper case", "API.OpenAI.com", "api.openai.com"),
        ("trailing dot", "metadata.google.internal.", "metadata.google.internal"),
        ("ip", "169.254.169.254", "169.254.169.254"),
    ];
    for (name, input, want) in cases {
        assert_eq!(normalize_host(input), want, "{name}");
    }
}

#[test]
fn mcp_requests_conform_to_the_schema() {
    let text = std::fs::read_to_string(repo_policies().join("schema.cedarschema")).expect("schema");
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).expect("schema parses");
    let engine = load_ok(&repo_policies());
    let (_, principal) = engine
        .lookup(&tid("acme"), &wid("support-bot"))
        .expect("known");
    let scopes = vec!["tools".to_string()];
    let full = HttpRequestFacts {
        model: Some("ignored"),
        provider: None,
        route: Some("docs-mcp"),
        scopes: &scopes,
        ..facts("MCP.example.com", "/mcp", None)
    };
    for (name, http) in [
        ("all fields", full),
        ("optional fields absent", facts("h", "/", None)),
    ] {
        for (item, id, want) in [
            (
                ItemKind::Tool,
                "search_données",
                r#"TenantProxy::McpTool::"search_données""#,
            ),
            (
                ItemKind::Resource,
                "docs://handbook/{page}",
                r#"TenantProxy::McpResource::"docs://handbook/{page}""#,
            ),
            (
                ItemKind::Prompt,
                "summarize",
                r#"TenantProxy::McpPrompt::"summarize""#,
            ),
        ] {
            let asked = McpFacts {
                server: "docs",
                item,
                name: id,
                http: &http,
            };
            let request = engine
                .mcp_request(principal, &asked, Some(&schema))
                .unwrap_or_else(|e| panic!("{name}, {item:?}: {e}"));
            assert_eq!(
                request.resource().map(ToString::to_string).as_deref(),
                Some(want),
                "{name}"
            );
        }
    }
}

#[test]
fn mcp_resource_and_prompt_decisions_are_their_own() {
    let dir = dir_with(&[(
        "tenants/acme/mcp.cedar",
        r#"
@id("acme-public-docs")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"mcp_resource", resource)
when { context.server == "docs" && context.uri like "docs://public/*" };
@id("acme-summarize")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"mcp_prompt", resource == TenantProxy::McpPrompt::"summarize");
@id("acme-tool-named-like-a-prompt")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"mcp_tool_call", resource == TenantProxy::McpTool::"exfiltrate");
"#,
    )]);
    let engine = load_ok(dir.path());
    let http = facts("mcp.example.com", "/mcp", None);
    let ask = |tenant: &str, item: ItemKind, name: &str| {
        engine.authorize_mcp(
            &tid(tenant),
            &wid(if tenant == "acme" {
                "support-bot"
            } else {
                "agent"
            }),
            &McpFacts {
                server: "docs",
                item,
                name,
                http: &http,
            },
        )
    };
    #[rustfmt::skip]
    let cases = [
        ("public resource", ask("acme", ItemKind::Resource, "docs://public/a.md"), true, vec!["acme-public-docs"]),
        ("private resource", ask("acme", ItemKind::Resource, "docs://private/a.md"), false, vec![]),
        ("prompt", ask("acme", ItemKind::Prompt, "summarize"), true, vec!["acme-summarize"]),
        ("other prompt", ask("acme", ItemKind::Prompt, "exfiltrate"), false, vec![]),
        ("a tool permit is not a prompt permit", ask("acme", ItemKind::Tool, "exfiltrate"), true, vec!["acme-tool-named-like-a-prompt"]),
        ("a prompt permit is not a tool permit", ask("acme", ItemKind::Tool, "summarize"), false, vec![]),
        ("not for globex", ask("globex", ItemKind::Resource, "docs://public/a.md"), false, vec![]),
    ];
    for (name, decision, allowed, ids) in cases {
        assert_eq!(decision.allowed, allowed, "{name}: {decision:?}");
        assert_eq!(decision.policy_ids, ids, "{name}");
    }
}

#[test]
fn mcp_tool_decisions() {
    let dir = dir_with(&[
        (
            "global/mcp.cedar",
            r#"
@id("mcp-read-tools")
permit (principal, action == TenantProxy::Action::"mcp_tool_call", resource)
when { context.server == "docs" && context.tool like "read_*" };
@id("mcp-no-wipe")
forbid (principal, action == TenantProxy::Action::"mcp_tool_call", resource == TenantProxy::McpTool::"read_wipe");
"#,
        ),
        (
            "tenants/acme/mcp.cedar",
            r#"
@id("acme-write")
permit (principal in TenantProxy::Tenant::"acme", action == TenantProxy::Action::"mcp_tool_call", resource == TenantProxy::McpTool::"write_page");
"#,
        ),
    ]);
    let engine = load_ok(dir.path());
    let http = facts("mcp.example.com", "/mcp", None);
    let ask = |tenant: &str, workload: &str, server: &str, tool: &str| {
        engine.authorize_mcp(
            &tid(tenant),
            &wid(workload),
            &McpFacts {
                server,
                item: ItemKind::Tool,
                name: tool,
                http: &http,
            },
        )
    };
    #[rustfmt::skip]
    let cases = [
        ("global permit", ask("acme", "support-bot", "docs", "read_page"), true, vec!["mcp-read-tools"]),
        ("other server", ask("acme", "support-bot", "tickets", "read_page"), false, vec![]),
        ("forbid wins", ask("acme", "support-bot", "docs", "read_wipe"), false, vec!["mcp-no-wipe"]),
        ("acme's own permit", ask("acme", "researcher", "docs", "write_page"), true, vec!["acme-write"]),
        ("not for globex", ask("globex", "agent", "docs", "write_page"), false, vec![]),
        ("globex reads", ask("globex", "agent", "docs", "read_page"), true, vec!["mcp-read-tools"]),
        ("unknown workload", ask("globex", "support-bot", "docs", "read_page"), false, vec![]),
    ];
    for (name, decision, allowed, ids) in cases {
        assert_eq!(decision.allowed, allowed, "{name}: {decision:?}");
        assert_eq!(decision.policy_ids, ids, "{name}");
    }
}

/// A tenant's policy-set version names the files its set was compiled from: the same files
/// give the same version in another directory (another replica, a restart), an edit of the
/// tenant's own files (a comment too) changes its version only, an edit of a global file
/// changes every tenant's.
#[test]
fn a_sets_version_follows_its_files_and_only_them() {
    let files = [
        (
            "global/base.cedar",
            "@id(\"g\")\npermit (principal, HTTP, resource);\n",
        ),
        (
            "tenants/acme/own.cedar",
            "@id(\"a\")\nforbid (principal, HTTP, resource) when { context.host == \"x\" };\n",
        ),
    ];
    let (one, two) = (dir_with(&files), dir_with(&files));
    let versions = |dir: &Path| {
        let engine = load_ok(dir);
        let v = |t: &str| engine.version(&TenantId::new(t).unwrap()).expect("version");
        (v("acme"), v("globex"))
    };
    let (acme, globex) = versions(one.path());
    assert_eq!(acme.len(), 16, "{acme}");
    assert!(acme.bytes().all(|b| b.is_ascii_hexdigit()), "{acme}");
    assert_ne!(acme, globex, "each tenant's set is its own");
    assert_eq!(
        versions(two.path()),
        (acme.clone(), globex.clone()),
        "same files, same versions"
    );

    let own = one.path().join("tenants/acme/own.cedar");
    let text = std::fs::read_to_string(&own).unwrap();
    std::fs::write(&own, format!("// reviewed\n{text}")).unwrap();
    let (acme_after, globex_after) = versions(one.path());
    assert_ne!(acme_after, acme, "a comment is an edit");
    assert_eq!(globex_after, globex, "globex's files did not change");

    let global = one.path().join("global/base.cedar");
    let text = std::fs::read_to_string(&global).unwrap();
    std::fs::write(&global, format!("{text}\n")).unwrap();
    let (acme_last, globex_last) = versions(one.path());
    assert_ne!(acme_last, acme_after);
    assert_ne!(globex_last, globex);
}
