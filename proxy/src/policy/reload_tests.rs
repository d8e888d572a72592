//! A reload that reuses the previous engine's compiled tenants (`PolicyEngine::reload`) must
//! give exactly what a full load of the same directory gives: the same decisions for every
//! tenant, the same problems and warnings, and a refused edit keeps the previous engine. Two
//! differences: a tenant directory that held files in the previous engine and is now missing is
//! refused, and the directory left by a tenant a reload took out of the configuration is only
//! warned about; a full load knows neither.

use std::path::Path;
use std::sync::Arc;

use super::*;

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/schema.cedarschema"
);

fn tid(s: &str) -> TenantId {
    TenantId::new(s).expect("tenant id")
}

fn wid(s: &str) -> WorkloadId {
    WorkloadId::new(s).expect("workload id")
}

fn tenant(id: &str, plan: &str, workloads: &[&str]) -> TenantInfo {
    TenantInfo {
        id: tid(id),
        plan: plan.into(),
        region: "eu".into(),
        workloads: workloads.iter().map(|w| wid(w)).collect(),
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn permit(id: &str, principal: &str, host: &str) -> String {
    format!(
        "@id(\"{id}\")\npermit (principal{principal}, action == TenantProxy::Action::\"http\", resource)\nwhen {{ context.host == \"{host}\" }};\n"
    )
}

const HOSTS: [&str; 7] = [
    "g.example.com",
    "a.example.com",
    "b.example.com",
    "x.example.com",
    "i.example.com",
    "pro.example.com",
    "held.example.com",
];

/// Every question the comparison asks: each tenant ever configured, each workload (and one
/// that does not exist), each host, an allowed and a forbidden path.
fn decisions(engine: &PolicyEngine) -> Vec<(String, Decision, Option<String>)> {
    let mut out = Vec::new();
    for t in ["acme", "globex", "initech", "nobody"] {
        for w in ["bot", "agent", "ghost"] {
            for host in HOSTS {
                for path in ["/ok", "/blocked"] {
                    let facts = HttpRequestFacts {
                        scheme: "https",
                        host,
                        port: 443,
                        method: "POST",
                        path,
                        model: None,
                        provider: None,
                        run_signed: false,
                        scopes: &[],
                        route: None,
                        destination_region: None,
                        hour: 10,
                        weekday: "tue",
                    };
                    let d = engine.authorize_http(&tid(t), &wid(w), &facts);
                    let need = engine
                        .approval_need(&tid(t), &d.policy_ids)
                        .map(|n| format!("{n:?}"));
                    out.push((format!("{t}/{w} {host}{path}"), d, need));
                }
            }
        }
        out.push((
            format!("{t} policy count"),
            Decision::deny_with(engine.policy_count(&tid(t)).to_string()),
            None,
        ));
    }
    out
}

/// Reloads `dir` reusing `previous` and loads it from nothing; both must agree on everything.
/// Returns the reloaded engine, or `previous` when the edit was refused.
fn reload_matches_full_load(
    step: &str,
    dir: &Path,
    tenants: &[TenantInfo],
    previous: PolicyEngine,
) -> PolicyEngine {
    let incremental = PolicyEngine::check_after(dir, tenants, Some(&previous));
    let full = PolicyEngine::check(dir, tenants);
    assert_eq!(incremental.warnings, full.warnings, "{step}: warnings");
    match (incremental.result, full.result) {
        (Ok(incremental), Ok(full)) => {
            assert_eq!(
                decisions(&incremental),
                decisions(&full),
                "{step}: decisions"
            );
            incremental
        }
        (Err(incremental), Err(full)) => {
            assert_eq!(incremental, full, "{step}: problems");
            assert!(!incremental.is_empty(), "{step}");
            previous
        }
        (i, f) => panic!(
            "{step}: reload {:?} but full load {:?}",
            i.map(|_| "ok"),
            f.map(|_| "ok")
        ),
    }
}

fn compiled<'a>(engine: &'a PolicyEngine, t: &str) -> &'a Arc<CompiledTenant> {
    &engine.tenants.get(&tid(t)).expect("tenant").compiled
}

const GLOBAL: &str = r#"@id("g-allow")
permit (principal, action == TenantProxy::Action::"http", resource)
when { context.host == "g.example.com" };
@id("g-blocked")
forbid (principal, action == TenantProxy::Action::"http", resource)
when { context.path == "/blocked" };
@id("g-pro")
permit (principal, action == TenantProxy::Action::"http", resource)
when { principal.tenant.plan == "pro" && context.host == "pro.example.com" };
@id("g-never")
permit (principal, action == TenantProxy::Action::"http", resource) when { false };
"#;

#[test]
fn reload_reuses_only_what_did_not_change_and_matches_a_full_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    write(dir, "global/base.cedar", GLOBAL);
    let acme_own = format!(
        "{}@id(\"acme-held\")\n@approval(\"required\")\npermit (principal, action == TenantProxy::Action::\"http\", resource)\nwhen {{ context.host == \"held.example.com\" }};\n@id(\"acme-never\")\npermit (principal, action == TenantProxy::Action::\"http\", resource) when {{ false }};\n",
        permit("acme-a", "", "a.example.com")
    );
    write(dir, "tenants/acme/own.cedar", &acme_own);
    write(
        dir,
        "tenants/acme/extra.cedar",
        &permit("acme-extra", "", "i.example.com"),
    );
    write(
        dir,
        "tenants/globex/own.cedar",
        &permit("globex-x", "", "x.example.com"),
    );
    let mut tenants = vec![
        tenant("acme", "pro", &["bot", "agent"]),
        tenant("globex", "free", &["agent"]),
    ];
    let first = PolicyEngine::check(dir, &tenants);
    assert!(
        first.warnings.len() >= 2,
        "the impossible permits warn: {:?}",
        first.warnings
    );
    let mut engine = first.result.expect("first load");

    // Nothing changed: every tenant's compiled set is shared, and no cache comes along.
    let cached = engine.with_decision_cache(8, "enforced");
    let next = PolicyEngine::check_after(dir, &tenants, Some(&cached))
        .result
        .expect("reload");
    for t in ["acme", "globex"] {
        assert!(Arc::ptr_eq(compiled(&cached, t), compiled(&next, t)), "{t}");
        assert!(
            next.tenants[&tid(t)].cache.is_none(),
            "{t}: no cache carried over"
        );
    }
    engine = reload_matches_full_load("unchanged", dir, &tenants, next);

    // One tenant's file changed: only that tenant is recompiled.
    write(
        dir,
        "tenants/acme/own.cedar",
        &acme_own.replace("a.example.com", "b.example.com"),
    );
    let next = reload_matches_full_load("acme edited", dir, &tenants, engine);
    let globex = Arc::clone(compiled(&next, "globex"));
    let acme = Arc::clone(compiled(&next, "acme"));
    engine = next;
    let next = PolicyEngine::check_after(dir, &tenants, Some(&engine))
        .result
        .expect("reload");
    assert!(Arc::ptr_eq(&globex, compiled(&next, "globex")));
    assert!(Arc::ptr_eq(&acme, compiled(&next, "acme")));
    engine = next;

    // A global file changed: every tenant gets the new global policies.
    write(
        dir,
        "global/base.cedar",
        &GLOBAL.replace("g.example.com", "x.example.com"),
    );
    let next = reload_matches_full_load("global edited", dir, &tenants, engine);
    assert!(!Arc::ptr_eq(&globex, compiled(&next, "globex")));
    engine = next;

    // A tenant's configuration changed (its plan, which a global policy reads): recompiled.
    tenants[0].plan = "free".into();
    let acme = Arc::clone(compiled(&engine, "acme"));
    let next = reload_matches_full_load("acme plan changed", dir, &tenants, engine);
    assert!(!Arc::ptr_eq(&acme, compiled(&next, "acme")));
    engine = next;
    tenants[0].workloads.pop();
    engine = reload_matches_full_load("acme workload removed", dir, &tenants, engine);

    // The schema's bytes changed (a comment): nothing is reused.
    let schema = std::fs::read_to_string(SCHEMA).expect("schema");
    std::fs::write(
        dir.join("schema.cedarschema"),
        format!("{schema}\n// edited\n"),
    )
    .expect("schema");
    let globex = Arc::clone(compiled(&engine, "globex"));
    let next = reload_matches_full_load("schema edited", dir, &tenants, engine);
    assert!(!Arc::ptr_eq(&globex, compiled(&next, "globex")));
    engine = next;

    // A tenant added, without a directory and then with one.
    tenants.push(tenant("initech", "pro", &["bot"]));
    engine = reload_matches_full_load("initech added", dir, &tenants, engine);
    let next = PolicyEngine::check_after(dir, &tenants, Some(&engine))
        .result
        .expect("reload");
    assert!(
        Arc::ptr_eq(compiled(&engine, "initech"), compiled(&next, "initech")),
        "a tenant without a directory is reused too"
    );
    engine = next;
    write(
        dir,
        "tenants/initech/own.cedar",
        &permit("initech-i", "", "i.example.com"),
    );
    engine = reload_matches_full_load("initech policies added", dir, &tenants, engine);

    // A file deleted.
    std::fs::remove_file(dir.join("tenants/acme/extra.cedar")).expect("rm");
    engine = reload_matches_full_load("acme file deleted", dir, &tenants, engine);

    // A tenant removed while its directory stays (an operator cutting it off): the reload
    // applies, warning about the directory, where a full load (a start) refuses it; later
    // reloads tolerate the directory too. A directory for a tenant never configured is still
    // refused at a reload (most likely a typo, whose forbids would apply to no one).
    tenants.retain(|t| t.id.as_str() != "globex");
    let checked = PolicyEngine::check_after(dir, &tenants, Some(&engine));
    assert!(
        checked
            .warnings
            .iter()
            .any(|w| w.message.contains("no longer defines")),
        "{:?}",
        checked.warnings
    );
    engine = checked.result.expect("the removal applies");
    assert!(!engine.tenants.contains_key(&tid("globex")));
    assert!(PolicyEngine::check(dir, &tenants).result.is_err());
    let later = PolicyEngine::check_after(dir, &tenants, Some(&engine));
    engine = later
        .result
        .expect("a later reload tolerates the directory");
    write(
        dir,
        "tenants/acmee/typo.cedar",
        &permit("typo", "", "a.example.com"),
    );
    let typo = PolicyEngine::check_after(dir, &tenants, Some(&engine));
    let problems = typo
        .result
        .expect_err("a typo'd tenant directory is refused");
    assert!(
        problems.iter().any(|p| p
            .message
            .contains("`acmee`, which the configuration does not define")),
        "{problems:?}"
    );
    std::fs::remove_dir_all(dir.join("tenants/acmee")).expect("rm");
    std::fs::remove_dir_all(dir.join("tenants/globex")).expect("rm");
    engine = reload_matches_full_load("globex removed", dir, &tenants, engine);
    assert!(!engine.tenants.contains_key(&tid("globex")));

    // Invalid edits are refused with the full load's problems, and the previous engine stays.
    let good = std::fs::read_to_string(dir.join("tenants/acme/own.cedar")).expect("read");
    write(
        dir,
        "tenants/acme/own.cedar",
        &good.replace("context.host == \"b.example.com\"", "context.nope == 1"),
    );
    engine = reload_matches_full_load("acme invalid", dir, &tenants, engine);
    write(
        dir,
        "tenants/acme/own.cedar",
        &good.replace("permit (", "permit ((("),
    );
    engine = reload_matches_full_load("acme unparsable", dir, &tenants, engine);
    // A global policy taking the id of an unchanged tenant policy: refused, located in the
    // tenant's file as a full load locates it.
    write(dir, "tenants/acme/own.cedar", &good);
    write(
        dir,
        "global/late.cedar",
        &permit("initech-i", "", "g.example.com"),
    );
    engine = reload_matches_full_load("duplicate id", dir, &tenants, engine);
    std::fs::remove_file(dir.join("global/late.cedar")).expect("rm");
    engine = reload_matches_full_load("fixed", dir, &tenants, engine);
    assert!(
        engine
            .authorize_http(
                &tid("acme"),
                &wid("bot"),
                &HttpRequestFacts {
                    scheme: "https",
                    host: "b.example.com",
                    port: 443,
                    method: "GET",
                    path: "/ok",
                    model: None,
                    provider: None,
                    run_signed: false,
                    scopes: &[],
                    route: None,
                    destination_region: None,
                    hour: 10,
                    weekday: "tue",
                }
            )
            .allowed
    );

    // Another directory with the same bytes is compiled from nothing.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        dir.join("schema.cedarschema"),
        other.path().join("schema.cedarschema"),
    )
    .expect("schema");
    for sub in ["global", "tenants"] {
        std::fs::create_dir_all(other.path().join(sub)).expect("mkdir");
    }
    let next = reload_matches_full_load("other directory", other.path(), &tenants, engine);
    assert_eq!(next.policy_count(&tid("acme")), 0);
}

/// A tenant's directory moved away for a moment (a swap, a checkout in progress) must not
/// reload that tenant as global-only: the reload is refused, whatever else changed with it. A
/// first load cannot know, and an empty directory is how a tenant's own policies are removed.
#[test]
fn a_tenant_directory_that_held_policies_and_is_gone_is_refused_on_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    write(dir, "global/base.cedar", GLOBAL);
    write(
        dir,
        "tenants/acme/own.cedar",
        &permit("acme-a", "", "a.example.com"),
    );
    std::fs::create_dir_all(dir.join("tenants/globex")).expect("mkdir");
    let tenants = vec![
        tenant("acme", "pro", &["bot"]),
        tenant("globex", "free", &["agent"]),
        tenant("initech", "pro", &["bot"]),
    ];
    let engine = PolicyEngine::load(dir, &tenants).expect("load");

    std::fs::rename(dir.join("tenants/acme"), dir.join("acme.next")).expect("mv");
    std::fs::remove_dir(dir.join("tenants/globex")).expect("rmdir");
    let schema = std::fs::read_to_string(SCHEMA).expect("schema");
    for (step, schema) in [
        ("same schema", schema.clone()),
        ("schema edited", format!("{schema}\n// edited\n")),
    ] {
        std::fs::write(dir.join("schema.cedarschema"), schema).expect("schema");
        let problems = PolicyEngine::check_after(dir, &tenants, Some(&engine))
            .result
            .expect_err(step);
        assert_eq!(
            problems.len(),
            1,
            "{step}: only acme had files: {problems:#?}"
        );
        assert_eq!(problems[0].file, dir.join("tenants/acme"), "{step}");
        assert!(
            problems[0]
                .message
                .starts_with("the directory does not exist"),
            "{step}: {problems:#?}"
        );
        assert!(
            PolicyEngine::check(dir, &tenants).result.is_ok(),
            "{step}: a first load has nothing to compare with"
        );
    }

    std::fs::create_dir(dir.join("tenants/acme")).expect("mkdir");
    let emptied = PolicyEngine::check_after(dir, &tenants, Some(&engine))
        .result
        .expect("an empty directory removes acme's own policies");
    assert_eq!(
        emptied.policy_count(&tid("acme")),
        emptied.policy_count(&tid("globex"))
    );
    std::fs::remove_dir(dir.join("tenants/acme")).expect("rmdir");
    PolicyEngine::check_after(dir, &tenants, Some(&emptied))
        .result
        .expect("a directory with no files may go");
}

/// A tenant's reused policies come only from its own previous set: swapping two tenants'
/// files (same bytes, different owners) gives each the other's policies, as a full load does.
#[test]
fn reused_policies_never_cross_tenants() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    std::fs::create_dir_all(dir.join("global")).expect("mkdir");
    let a = permit("a-only", "", "a.example.com");
    let x = permit("x-only", "", "x.example.com");
    write(dir, "tenants/acme/own.cedar", &a);
    write(dir, "tenants/globex/own.cedar", &x);
    let tenants = vec![
        tenant("acme", "pro", &["bot"]),
        tenant("globex", "free", &["agent"]),
    ];
    let engine = PolicyEngine::check(dir, &tenants).result.expect("load");
    write(dir, "tenants/acme/own.cedar", &x);
    write(dir, "tenants/globex/own.cedar", &a);
    let engine = reload_matches_full_load("swapped", dir, &tenants, engine);
    let facts = |host| HttpRequestFacts {
        scheme: "https",
        host,
        port: 443,
        method: "GET",
        path: "/",
        model: None,
        provider: None,
        run_signed: false,
        scopes: &[],
        route: None,
        destination_region: None,
        hour: 10,
        weekday: "tue",
    };
    let acme = |h| engine.authorize_http(&tid("acme"), &wid("bot"), &facts(h));
    let globex = |h| engine.authorize_http(&tid("globex"), &wid("agent"), &facts(h));
    assert!(acme("x.example.com").allowed && !acme("a.example.com").allowed);
    assert!(globex("a.example.com").allowed && !globex("x.example.com").allowed);
}

/// A policy in one tenant's directory whose principal is another tenant (or its workload) can
/// never apply: the load warns at it, names both tenants, and keeps it out of nothing else.
#[test]
fn a_policy_naming_another_tenant_in_a_tenants_directory_warns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    write(dir, "global/base.cedar", GLOBAL);
    write(
        dir,
        "tenants/acme/own.cedar",
        "@id(\"acme-own\")\npermit (principal in TenantProxy::Tenant::\"acme\", action == TenantProxy::Action::\"http\", resource);\n\
         @id(\"meant-for-globex\")\nforbid (principal in TenantProxy::Tenant::\"globex\", action == TenantProxy::Action::\"http\", resource);\n\
         @id(\"globex-workload\")\nforbid (principal == TenantProxy::Workload::\"globex/agent\", action == TenantProxy::Action::\"http\", resource);\n\
         @id(\"acme-workload\")\nforbid (principal == TenantProxy::Workload::\"acme/bot\", action == TenantProxy::Action::\"http\", resource) when { context.host == \"x\" };\n",
    );
    let tenants = vec![
        tenant("acme", "pro", &["bot"]),
        tenant("globex", "free", &["agent"]),
    ];
    let checked = PolicyEngine::check(dir, &tenants);
    let foreign: Vec<&PolicyProblem> = checked
        .warnings
        .iter()
        .filter(|w| w.message.contains("never applies"))
        .collect();
    assert_eq!(foreign.len(), 2, "{:?}", checked.warnings);
    assert!(
        foreign[0].message.contains("`meant-for-globex`"),
        "{foreign:?}"
    );
    assert!(
        foreign[0].message.contains("tenants/globex/"),
        "{foreign:?}"
    );
    assert_eq!(foreign[0].line, Some(4), "{foreign:?}");
    assert!(
        foreign[1].message.contains("`globex-workload`"),
        "{foreign:?}"
    );
    assert_eq!(foreign[1].line, Some(6), "{foreign:?}");
    assert!(checked.result.is_ok(), "a warning, not a load problem");
}

/// A global policy whose principal no request can be is warned at: a workload id without its
/// tenant, and, when the configuration names the tenants' workloads, a tenant or a workload it
/// does not have. Without them (`policy check DIR`), only what the ids alone show.
#[test]
fn a_global_policy_naming_no_tenant_or_workload_warns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    std::fs::create_dir_all(dir.join("tenants")).expect("mkdir");
    write(
        dir,
        "global/base.cedar",
        &format!(
            "{GLOBAL}\n\
             @id(\"typo\")\nforbid (principal == TenantProxy::Workload::\"acme/reseacher\", action == TenantProxy::Action::\"http\", resource);\n\
             @id(\"case\")\nforbid (principal in TenantProxy::Tenant::\"Acme\", action == TenantProxy::Action::\"http\", resource);\n\
             @id(\"no-tenant\")\nforbid (principal == TenantProxy::Workload::\"support-bot\", action == TenantProxy::Action::\"http\", resource);\n\
             @id(\"gone\")\nforbid (principal == TenantProxy::Workload::\"initech/bot\", action == TenantProxy::Action::\"http\", resource);\n\
             @id(\"fine\")\nforbid (principal == TenantProxy::Workload::\"acme/bot\", action == TenantProxy::Action::\"http\", resource) when {{ context.host == \"x\" }};\n\
             @id(\"fine-tenant\")\nforbid (principal in TenantProxy::Tenant::\"globex\", action == TenantProxy::Action::\"http\", resource) when {{ context.host == \"x\" }};\n"
        ),
    );
    let never = |tenants: &[TenantInfo]| {
        let checked = PolicyEngine::check(dir, tenants);
        assert!(checked.result.is_ok(), "{:?}", checked.result.err());
        let mut ids: Vec<String> = checked
            .warnings
            .iter()
            .filter(|w| w.message.contains("never applies"))
            .map(|w| {
                let id = w.message.split('`').nth(1).unwrap_or_default();
                format!("{id}@{}", w.line.unwrap_or(0))
            })
            .collect();
        ids.sort();
        ids
    };
    let configured = vec![
        tenant("acme", "pro", &["bot"]),
        tenant("globex", "free", &["agent"]),
    ];
    // The policies follow the global ones and a blank line, two lines each (`@id`, then the
    // principal), warned at the principal's id.
    let base = GLOBAL.lines().count() + 1;
    let line = |n: usize| base + 2 + 2 * n;
    assert_eq!(
        never(&configured),
        [
            format!("case@{}", line(1)),
            format!("gone@{}", line(3)),
            format!("no-tenant@{}", line(2)),
            format!("typo@{}", line(0)),
        ]
    );
    let from_dirs = vec![tenant("acme", "", &[]), tenant("globex", "", &[])];
    assert_eq!(never(&from_dirs), [format!("no-tenant@{}", line(2))]);
}

/// A policy that can never apply for a reason `check` can see is warned at: a workload its
/// tenant does not have, and a host, scheme or method compared in a case no request has (hosts
/// and schemes are lower case, methods upper case, when policies see them). The same in the
/// global files; a policy that can apply is not warned at.
#[test]
fn a_policy_that_never_applies_for_a_typo_or_a_case_warns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::copy(SCHEMA, dir.join("schema.cedarschema")).expect("schema");
    write(
        dir,
        "global/base.cedar",
        &format!(
            "{GLOBAL}\n@id(\"global-scheme\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when {{ context.scheme != \"HTTPS\" }};\n"
        ),
    );
    write(
        dir,
        "tenants/acme/own.cedar",
        "@id(\"typo\")\nforbid (principal == TenantProxy::Workload::\"acme/bott\", action == TenantProxy::Action::\"http\", resource);\n\
         @id(\"upper-host\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource == TenantProxy::Destination::\"API.example.com\");\n\
         @id(\"lower-method\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { [\"GET\", \"delete\"].contains(context.method) };\n\
         @id(\"like-host\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { context.host like \"*.Example.com\" };\n\
         @id(\"cond-resource\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { resource == TenantProxy::Destination::\"API.OpenAI.com\" && context.method == \"POST\" };\n\
         @id(\"trailing-dot\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { context.host == \"api.openai.com.\" };\n\
         @id(\"with-port\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource == TenantProxy::Destination::\"api.openai.com:443\");\n\
         @id(\"weekend\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { [\"Sat\", \"Sun\"].contains(context.weekday) };\n\
         @id(\"hour-24\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { context.hour == 24 };\n\
         @id(\"hour-ge\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { 24 <= context.hour };\n\
         @id(\"short-ip\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource) when { context.host == \"127.1\" };\n\
         @id(\"not-upper\")\npermit (principal, action == TenantProxy::Action::\"http\", resource) when { context.host != \"API.example.com\" && context.weekday == \"sat\" && context.hour == 23 };\n\
         @id(\"fine\")\nforbid (principal == TenantProxy::Workload::\"acme/bot\", action == TenantProxy::Action::\"http\", resource) when { context.method == \"DELETE\" && context.host == \"api.example.com\" };\n",
    );
    let tenants = vec![tenant("acme", "pro", &["bot"])];
    let checked = PolicyEngine::check(dir, &tenants);
    let warned: Vec<(String, Option<usize>)> = checked
        .warnings
        .iter()
        .map(|w| (w.message.clone(), w.line))
        .collect();
    let at = |id: &str| {
        warned
            .iter()
            .filter(|(m, _)| m.contains(&format!("`{id}`")))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(at("typo").len(), 1, "{warned:?}");
    assert!(at("typo")[0].0.contains("workload `bott`"), "{warned:?}");
    assert_eq!(at("typo")[0].1, Some(2), "{warned:?}");
    assert!(
        at("upper-host")[0].0.contains("\"API.example.com\""),
        "{warned:?}"
    );
    assert!(at("lower-method")[0].0.contains("\"delete\""), "{warned:?}");
    assert_eq!(at("lower-method").len(), 1, "GET is fine: {warned:?}");
    assert!(at("like-host")[0].0.contains("Example.com"), "{warned:?}");
    assert!(at("global-scheme")[0].0.contains("\"HTTPS\""), "{warned:?}");
    for (id, literal, why) in [
        ("cond-resource", "\"API.OpenAI.com\"", "lower case"),
        ("trailing-dot", "\"api.openai.com.\"", "no trailing dot"),
        ("with-port", "\"api.openai.com:443\"", "no port"),
        ("hour-24", "24", "0 to 23"),
        ("hour-ge", "24", "0 to 23"),
        ("short-ip", "\"127.1\"", "`127.0.0.1`"),
    ] {
        let found = at(id);
        assert_eq!(found.len(), 1, "{id}: {warned:?}");
        assert!(
            found[0].0.contains(literal)
                && found[0].0.contains(why)
                && found[0].0.ends_with("that comparison never holds"),
            "{id}: {found:?}"
        );
    }
    assert_eq!(at("weekend").len(), 2, "Sat and Sun: {warned:?}");
    let not_upper = at("not-upper");
    assert_eq!(not_upper.len(), 1, "{warned:?}");
    assert!(
        not_upper[0].0.ends_with("that comparison always holds"),
        "{not_upper:?}"
    );
    assert!(at("fine").is_empty(), "{warned:?}");
    assert!(checked.result.is_ok(), "warnings, not load problems");
}
