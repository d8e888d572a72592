use std::path::Path;

use super::*;

fn tenants() -> Vec<TenantInfo> {
    let t = |id: &str, plan: &str, workloads: &[&str]| TenantInfo {
        id: TenantId::new(id).expect("id"),
        plan: plan.into(),
        region: "eu".into(),
        workloads: workloads
            .iter()
            .map(|w| WorkloadId::new(w).expect("id"))
            .collect(),
    };
    vec![
        t("acme", "pro", &["bot", "researcher"]),
        t("globex", "free", &["agent"]),
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
        run_signed: false,
        scopes: &[],
        route: None,
    }
}

fn repo_policies() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

/// A policy dir with the repo's schema and the given files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo_policies().join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .expect("schema");
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

fn id(s: &str) -> TenantId {
    TenantId::new(s).expect("id")
}
fn wl(s: &str) -> WorkloadId {
    WorkloadId::new(s).expect("id")
}

#[test]
fn quickstart_policies() {
    let engine = PolicyEngine::load(repo_policies(), &tenants()).expect("repo policies load");
    let cases = [
        (
            "acme allowed host",
            "acme",
            "bot",
            "api.openai.com",
            "/v1/chat/completions",
            Some("gpt-4o"),
            true,
            vec!["acme-llm-providers"],
        ),
        (
            "acme other host",
            "acme",
            "bot",
            "attacker.example",
            "/",
            None,
            false,
            vec![],
        ),
        (
            "acme researcher admin",
            "acme",
            "researcher",
            "api.openai.com",
            "/v1/organization/users",
            None,
            false,
            vec!["acme-researcher-no-admin"],
        ),
        (
            "globex mini model",
            "globex",
            "agent",
            "api.openai.com",
            "/v1/chat/completions",
            Some("gpt-4o-mini"),
            true,
            vec!["globex-openai"],
        ),
        (
            "globex big model",
            "globex",
            "agent",
            "api.openai.com",
            "/v1/chat/completions",
            Some("gpt-4o"),
            false,
            vec!["free-plan-models"],
        ),
        (
            "globex anthropic",
            "globex",
            "agent",
            "api.anthropic.com",
            "/v1/messages",
            None,
            false,
            vec![],
        ),
        (
            "metadata",
            "acme",
            "bot",
            "169.254.169.254",
            "/",
            None,
            false,
            vec!["forbid-metadata"],
        ),
        (
            "local mock",
            "globex",
            "agent",
            "127.0.0.1",
            "/v1/chat/completions",
            Some("gpt-4o-mini"),
            true,
            vec!["allow-local-mock"],
        ),
    ];
    for (name, tenant, workload, host, path, model, allowed, ids) in cases {
        let d = engine.authorize_http(&id(tenant), &wl(workload), &facts(host, path, model));
        assert_eq!(d.allowed, allowed, "{name}: {d:?}");
        assert_eq!(d.policy_ids, ids, "{name}");
        assert!(d.errors.is_empty(), "{name}: {d:?}");
    }
}

#[test]
fn tenant_policies_never_apply_to_another_tenant() {
    let dir = dir_with(&[(
        "tenants/acme/a.cedar",
        r#"@id("acme-all") permit (principal, action == TenantProxy::Action::"http", resource);"#,
    )]);
    let engine = PolicyEngine::load(dir.path(), &tenants()).expect("load");
    // The policy has an unconstrained principal, yet globex never sees it.
    assert!(
        engine
            .authorize_http(&id("acme"), &wl("bot"), &facts("x.example", "/", None))
            .allowed
    );
    let d = engine.authorize_http(&id("globex"), &wl("agent"), &facts("x.example", "/", None));
    assert!(!d.allowed && d.policy_ids.is_empty(), "{d:?}");
    assert_eq!(
        (
            engine.policy_count(&id("acme")),
            engine.policy_count(&id("globex"))
        ),
        (1, 0)
    );
    // Unknown tenant and workload deny.
    assert!(
        !engine
            .authorize_http(&id("initech"), &wl("bot"), &facts("x.example", "/", None))
            .allowed
    );
    assert!(
        !engine
            .authorize_http(&id("acme"), &wl("ghost"), &facts("x.example", "/", None))
            .allowed
    );
}

#[test]
fn evaluation_errors_deny() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, action == TenantProxy::Action::"http", resource);
@id("overflow") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.port * 9223372036854775807 > 0 };"#,
    )]);
    let engine = PolicyEngine::load(dir.path(), &tenants()).expect("passes strict validation");
    let d = engine.authorize_http(&id("acme"), &wl("bot"), &facts("x.example", "/", None));
    assert!(!d.allowed, "{d:?}");
    assert!(!d.errors.is_empty());
}

#[test]
#[allow(clippy::type_complexity)]
fn load_problems_are_reported_with_location() {
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        ("syntax error", &[("global/bad.cedar", "permit (principal, action, resource)\nwhen { context.path like };")], "global/bad.cedar:2:"),
        (
            "schema violation",
            &[("tenants/acme/v.cedar", "permit (principal, action == TenantProxy::Action::\"http\", resource)\nwhen { context.nope == 1 };")],
            "tenants/acme/v.cedar:2:",
        ),
        ("unknown tenant dir", &[("tenants/initech/a.cedar", "")], "initech"),
        ("invalid tenant dir", &[("tenants/Bad Name/a.cedar", "")], "not a valid tenant id"),
        (
            "duplicate id",
            &[
                ("global/a.cedar", r#"@id("x") permit (principal, action == TenantProxy::Action::"http", resource);"#),
                ("tenants/acme/b.cedar", r#"@id("x") permit (principal, action == TenantProxy::Action::"http", resource);"#),
            ],
            "used twice",
        ),
    ];
    for (name, files, want) in cases {
        let dir = dir_with(files);
        let problems = PolicyEngine::load(dir.path(), &tenants()).expect_err(name);
        let text = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains(want), "{name}: {text}");
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let problems = PolicyEngine::load(empty.path(), &tenants()).expect_err("no schema");
    assert!(problems[0].to_string().contains("schema"), "{problems:?}");
}

#[test]
fn ids_default_to_file_and_index() {
    let dir = dir_with(&[(
        "global/two.cedar",
        "permit (principal, action == TenantProxy::Action::\"http\", resource) when { context.path == \"/a\" };\npermit (principal, action == TenantProxy::Action::\"http\", resource) when { context.path == \"/b\" };",
    )]);
    let engine = PolicyEngine::load(dir.path(), &tenants()).expect("load");
    let d = engine.authorize_http(&id("acme"), &wl("bot"), &facts("x", "/b", None));
    assert_eq!(d.policy_ids, vec!["global/two.cedar#1"]);
}

#[test]
fn built_context_conforms_to_schema() {
    let text = std::fs::read_to_string(repo_policies().join("schema.cedarschema")).expect("schema");
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).expect("schema parses");
    let scopes = vec!["llm".to_string()];
    let f = HttpRequestFacts {
        model: Some("m"),
        route: Some("r"),
        scopes: &scopes,
        ..facts("h", "/", None)
    };
    let principal = EntityUid::from_str("TenantProxy::Workload::\"acme/bot\"").expect("uid");
    let action = EntityUid::from_str("TenantProxy::Action::\"http\"").expect("uid");
    let resource = EntityUid::from_str("TenantProxy::Destination::\"h\"").expect("uid");
    let context = Context::from_pairs(http_context(&f)).expect("context");
    Request::new(principal, action, resource, context, Some(&schema))
        .expect("request validates against the schema");
}
