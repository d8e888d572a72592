//! The decision cache: a kept decision is the one Cedar gives, any field of the question that
//! changes gets a fresh one, tenants never share answers, a reload forgets them all, and the
//! bound holds.

use std::path::{Path, PathBuf};

use super::*;

fn tid(s: &str) -> TenantId {
    TenantId::new(s).expect("tenant id")
}

fn wid(s: &str) -> WorkloadId {
    WorkloadId::new(s).expect("workload id")
}

/// acme and globex, both with a workload called `agent`.
fn tenants() -> Vec<TenantInfo> {
    let t = |id: &str, plan: &str| TenantInfo {
        id: tid(id),
        plan: plan.into(),
        region: "eu".into(),
        workloads: vec![wid("agent"), wid("other")],
    };
    vec![t("acme", "pro"), t("globex", "free")]
}

/// A policy directory with the repo's schema and `files` (relative path, text).
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["global", "tenants"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
    }
    write_files(dir.path(), files);
    std::fs::copy(
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/schema.cedarschema"
        )),
        dir.path().join("schema.cedarschema"),
    )
    .expect("copy schema");
    dir
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

fn load(dir: &Path, entries: usize) -> PolicyEngine {
    match PolicyEngine::load(dir, &tenants()) {
        Ok(engine) => engine.with_decision_cache(entries, "enforced"),
        Err(problems) => panic!("load failed: {problems:#?}"),
    }
}

fn cache_len(engine: &PolicyEngine, tenant: &str) -> usize {
    engine
        .tenants
        .get(&tid(tenant))
        .and_then(|t| t.cache.as_ref())
        .map_or(0, |c| c.len())
}

/// One policy per context field (and per action, resource and connect question), each a
/// `forbid` that only that field's odd value triggers, beside permits for everything else.
const DISTINGUISHING: &str = r#"
@id("http-all") permit (principal, action == TenantProxy::Action::"http", resource);
@id("cred-all") permit (principal, action == TenantProxy::Action::"use_credential", resource);
@id("connect-all") permit (principal, action == TenantProxy::Action::"connect", resource);
@id("tool-all") permit (principal, action == TenantProxy::Action::"mcp_tool_call", resource);
@id("prompt-all") permit (principal, action == TenantProxy::Action::"mcp_prompt", resource);

@id("f-scheme") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.scheme == "http" };
@id("f-host") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.host == "odd.example" };
@id("f-port") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.port == 8443 };
@id("f-method") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.method == "DELETE" };
@id("f-path") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.path == "/odd" };
@id("f-model") forbid (principal, action == TenantProxy::Action::"http", resource) when { context has model && context.model == "odd" };
@id("f-provider") forbid (principal, action == TenantProxy::Action::"http", resource) when { context has provider && context.provider == "odd" };
@id("f-run-signed") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.run_signed };
@id("f-scopes") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.scopes.contains("odd") };
@id("f-route") forbid (principal, action == TenantProxy::Action::"http", resource) when { context has route && context.route == "odd" };
@id("f-region") forbid (principal, action == TenantProxy::Action::"http", resource) when { context has destination_region && context.destination_region == "odd" };
@id("f-hour") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.hour == 3 };
@id("f-weekday") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.weekday == "sun" };
@id("f-workload") forbid (principal == TenantProxy::Workload::"acme/other", action, resource);

@id("f-cred-name") forbid (principal, action == TenantProxy::Action::"use_credential", resource == TenantProxy::Credential::"odd");
@id("f-cred-position") forbid (principal, action == TenantProxy::Action::"use_credential", resource) when { context.position == "query" };
@id("f-cred-path") forbid (principal, action == TenantProxy::Action::"use_credential", resource) when { context.path == "/odd" };

@id("f-connect-host") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.host == "odd.example" };
@id("f-connect-port") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.port == 8443 };
@id("f-connect-signed") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.run_signed };
@id("f-connect-scopes") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.scopes.contains("odd") };
@id("f-connect-region") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context has destination_region && context.destination_region == "odd" };
@id("f-connect-hour") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.hour == 3 };
@id("f-connect-weekday") forbid (principal, action == TenantProxy::Action::"connect", resource) when { context.weekday == "sun" };

@id("f-mcp-server") forbid (principal, action == TenantProxy::Action::"mcp_tool_call", resource) when { context.server == "odd" };
@id("f-mcp-name") forbid (principal, action == TenantProxy::Action::"mcp_tool_call", resource == TenantProxy::McpTool::"odd");
@id("f-mcp-path") forbid (principal, action == TenantProxy::Action::"mcp_tool_call", resource) when { context.path == "/odd" };
"#;

const SCOPES: &[String] = &[];

fn base_http() -> HttpRequestFacts<'static> {
    HttpRequestFacts {
        scheme: "https",
        host: "api.example",
        port: 443,
        method: "POST",
        path: "/v1/chat",
        model: Some("good"),
        provider: Some("openai"),
        run_signed: false,
        scopes: SCOPES,
        route: Some("main"),
        destination_region: Some("eu"),
        hour: 10,
        weekday: "tue",
    }
}

fn base_connect() -> ConnectFacts<'static> {
    ConnectFacts {
        host: "api.example",
        port: 443,
        run_signed: false,
        scopes: SCOPES,
        destination_region: Some("eu"),
        hour: 10,
        weekday: "tue",
    }
}

/// Every way of asking, so a matrix of facts runs through every action.
#[derive(Clone, Copy, Debug)]
enum Ask<'a> {
    Http(&'a str, HttpRequestFacts<'a>),
    Credential(&'a str, &'a str, &'a str, HttpRequestFacts<'a>),
    Connect(&'a str, ConnectQuestion, ConnectFacts<'a>),
    Mcp(&'a str, &'a str, ItemKind, &'a str, HttpRequestFacts<'a>),
}

fn ask(engine: &PolicyEngine, tenant: &str, a: Ask<'_>) -> Decision {
    let t = tid(tenant);
    match a {
        Ask::Http(w, http) => engine.authorize_http(&t, &wid(w), &http),
        Ask::Credential(w, name, position, http) => engine.authorize_credential(
            &t,
            &wid(w),
            &CredentialFacts {
                name,
                position,
                http: &http,
            },
        ),
        Ask::Connect(w, q, facts) => engine.authorize_connect(&t, &wid(w), q, &facts),
        Ask::Mcp(w, server, item, name, http) => engine.authorize_mcp(
            &t,
            &wid(w),
            &McpFacts {
                server,
                item,
                name,
                http: &http,
            },
        ),
    }
}

/// Each variant changes one thing of the question the base asks; every one has a forbid (or a
/// missing permit) of its own, so a stale answer shows.
fn variants<'a>(
    odd_scopes: &'a [String],
) -> Vec<(&'static str, Ask<'a>, Ask<'a>, Vec<&'static str>)> {
    let h = base_http();
    let c = base_connect();
    let http = |name, f: HttpRequestFacts<'a>, id| {
        (name, Ask::Http("agent", h), Ask::Http("agent", f), vec![id])
    };
    let cred = |name, n: &'a str, p: &'a str, f: HttpRequestFacts<'a>, id| {
        (
            name,
            Ask::Credential("agent", "key", "header", h),
            Ask::Credential("agent", n, p, f),
            vec![id],
        )
    };
    let connect = |name, q, f: ConnectFacts<'a>, ids: Vec<&'static str>| {
        (
            name,
            Ask::Connect("agent", ConnectQuestion::Open, c),
            Ask::Connect("agent", q, f),
            ids,
        )
    };
    let mcp = |name,
               server: &'a str,
               item,
               n: &'a str,
               f: HttpRequestFacts<'a>,
               ids: Vec<&'static str>| {
        (
            name,
            Ask::Mcp("agent", "docs", ItemKind::Tool, "search", h),
            Ask::Mcp("agent", server, item, n, f),
            ids,
        )
    };
    vec![
        http(
            "scheme",
            HttpRequestFacts {
                scheme: "http",
                ..h
            },
            "f-scheme",
        ),
        http(
            "host",
            HttpRequestFacts {
                host: "odd.example",
                ..h
            },
            "f-host",
        ),
        http(
            "host, spelled otherwise",
            HttpRequestFacts {
                host: "ODD.example.",
                ..h
            },
            "f-host",
        ),
        http("port", HttpRequestFacts { port: 8443, ..h }, "f-port"),
        http(
            "method",
            HttpRequestFacts {
                method: "DELETE",
                ..h
            },
            "f-method",
        ),
        http("path", HttpRequestFacts { path: "/odd", ..h }, "f-path"),
        http(
            "model",
            HttpRequestFacts {
                model: Some("odd"),
                ..h
            },
            "f-model",
        ),
        http(
            "provider",
            HttpRequestFacts {
                provider: Some("odd"),
                ..h
            },
            "f-provider",
        ),
        http(
            "run_signed",
            HttpRequestFacts {
                run_signed: true,
                ..h
            },
            "f-run-signed",
        ),
        http(
            "scopes",
            HttpRequestFacts {
                scopes: odd_scopes,
                ..h
            },
            "f-scopes",
        ),
        http(
            "route",
            HttpRequestFacts {
                route: Some("odd"),
                ..h
            },
            "f-route",
        ),
        http(
            "destination_region",
            HttpRequestFacts {
                destination_region: Some("odd"),
                ..h
            },
            "f-region",
        ),
        http("hour", HttpRequestFacts { hour: 3, ..h }, "f-hour"),
        http(
            "weekday",
            HttpRequestFacts {
                weekday: "sun",
                ..h
            },
            "f-weekday",
        ),
        (
            "workload",
            Ask::Http("agent", h),
            Ask::Http("other", h),
            vec!["f-workload"],
        ),
        (
            "action: http, then a credential",
            Ask::Http("agent", h),
            Ask::Credential("agent", "odd", "header", h),
            vec!["f-cred-name"],
        ),
        cred("credential name", "odd", "header", h, "f-cred-name"),
        cred("credential position", "key", "query", h, "f-cred-position"),
        cred(
            "credential's request",
            "key",
            "header",
            HttpRequestFacts { path: "/odd", ..h },
            "f-cred-path",
        ),
        connect("connect question", ConnectQuestion::Opaque, c, vec![]),
        connect(
            "connect host",
            ConnectQuestion::Open,
            ConnectFacts {
                host: "odd.example",
                ..c
            },
            vec!["f-connect-host"],
        ),
        connect(
            "connect port",
            ConnectQuestion::Open,
            ConnectFacts { port: 8443, ..c },
            vec!["f-connect-port"],
        ),
        connect(
            "connect run_signed",
            ConnectQuestion::Open,
            ConnectFacts {
                run_signed: true,
                ..c
            },
            vec!["f-connect-signed"],
        ),
        connect(
            "connect scopes",
            ConnectQuestion::Open,
            ConnectFacts {
                scopes: odd_scopes,
                ..c
            },
            vec!["f-connect-scopes"],
        ),
        connect(
            "connect destination_region",
            ConnectQuestion::Open,
            ConnectFacts {
                destination_region: Some("odd"),
                ..c
            },
            vec!["f-connect-region"],
        ),
        connect(
            "connect hour",
            ConnectQuestion::Open,
            ConnectFacts { hour: 3, ..c },
            vec!["f-connect-hour"],
        ),
        connect(
            "connect weekday",
            ConnectQuestion::Open,
            ConnectFacts {
                weekday: "sun",
                ..c
            },
            vec!["f-connect-weekday"],
        ),
        mcp(
            "mcp server",
            "odd",
            ItemKind::Tool,
            "search",
            h,
            vec!["f-mcp-server"],
        ),
        mcp(
            "mcp name",
            "docs",
            ItemKind::Tool,
            "odd",
            h,
            vec!["f-mcp-name"],
        ),
        // Same name, another action: no permit for resources.
        mcp("mcp item", "docs", ItemKind::Resource, "search", h, vec![]),
        mcp(
            "mcp request",
            "docs",
            ItemKind::Tool,
            "search",
            HttpRequestFacts { path: "/odd", ..h },
            vec!["f-mcp-path"],
        ),
    ]
}

#[test]
fn changing_any_single_field_gets_a_fresh_decision() {
    let dir = dir_with(&[("global/g.cedar", DISTINGUISHING)]);
    let cached = load(dir.path(), 4096);
    let plain = load(dir.path(), 0);
    let odd_scopes = ["odd".to_string()];
    let cases = variants(&odd_scopes);
    for (name, base, changed, ids) in cases {
        // The base is allowed and kept; asking it again is a hit that still allows.
        let first = ask(&cached, "acme", base);
        assert!(
            first.allowed && first.errors.is_empty(),
            "{name}: base {first:?}"
        );
        let kept = cache_len(&cached, "acme");
        assert!(kept > 0, "{name}: the base decision is kept");
        assert_eq!(ask(&cached, "acme", base), first, "{name}: base again");
        assert_eq!(
            cache_len(&cached, "acme"),
            kept,
            "{name}: a hit adds nothing"
        );
        // One field changed: the fresh decision, the same as without a cache, and kept anew.
        let got = ask(&cached, "acme", changed);
        let want = ask(&plain, "acme", changed);
        assert_eq!(got, want, "{name}");
        assert!(!got.allowed, "{name}: {got:?}");
        assert_eq!(got.policy_ids, ids, "{name}");
        assert!(got.errors.is_empty(), "{name}: {got:?}");
        assert_eq!(ask(&cached, "acme", changed), want, "{name}: changed again");
    }
}

#[test]
fn a_cached_decision_equals_the_uncached_one() {
    let dir = dir_with(&[("global/g.cedar", DISTINGUISHING)]);
    let cached = load(dir.path(), 4096);
    let plain = load(dir.path(), 0);
    assert_eq!(cache_len(&plain, "acme"), 0);
    let odd_scopes = ["odd".to_string()];
    let matrix: Vec<Ask<'_>> = variants(&odd_scopes)
        .into_iter()
        .flat_map(|(_, base, changed, _)| [base, changed])
        .collect();
    // Twice round: the first asks Cedar and keeps, the second answers from the cache.
    for round in ["miss", "hit"] {
        for a in &matrix {
            for tenant in ["acme", "globex"] {
                let got = ask(&cached, tenant, *a);
                let want = ask(&plain, tenant, *a);
                assert_eq!(got, want, "{round}: {tenant} {a:?}");
            }
        }
    }
    assert!(
        cache_len(&cached, "acme") > 20,
        "{}",
        cache_len(&cached, "acme")
    );
    assert_eq!(cache_len(&plain, "acme"), 0, "0 entries: no cache at all");
    // Unknown principals deny with an error, cached or not, and nothing is kept for them.
    let before = cache_len(&cached, "acme");
    for (tenant, workload) in [("acme", "ghost"), ("initech", "agent")] {
        let d = cached.authorize_http(&tid(tenant), &wid(workload), &base_http());
        assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");
    }
    assert_eq!(cache_len(&cached, "acme"), before);
}

#[test]
fn a_hit_answers_from_the_cache_under_the_normalized_host() {
    let dir = dir_with(&[("global/g.cedar", DISTINGUISHING)]);
    let engine = load(dir.path(), 4096);
    let facts = base_http();
    let first = engine.authorize_http(&tid("acme"), &wid("agent"), &facts);
    assert!(first.allowed, "{first:?}");
    // Plant another answer under the same question: a hit returns it, which shows the lookup
    // goes through the cache (and with the host as Cedar sees it).
    let set = engine.tenants.get(&tid("acme")).expect("acme");
    let cache = set.cache.as_ref().expect("cache on");
    let planted = Decision {
        allowed: false,
        policy_ids: vec!["planted".into()],
        errors: Vec::new(),
    };
    cache.keep(
        &cache::Asked {
            workload: "agent",
            question: Question::Http(facts),
        },
        &planted,
    );
    for host in ["api.example", "API.Example.", "api.example."] {
        let f = HttpRequestFacts { host, ..facts };
        assert_eq!(
            engine.authorize_http(&tid("acme"), &wid("agent"), &f),
            planted,
            "{host}"
        );
    }
    // Another workload's same question is not answered by it.
    assert_ne!(
        engine.authorize_http(&tid("acme"), &wid("other"), &facts),
        planted
    );
}

#[test]
fn one_tenants_cached_allow_never_answers_another() {
    let dir = dir_with(&[
        (
            "tenants/acme/a.cedar",
            r#"@id("acme-all") permit (principal, action, resource);"#,
        ),
        (
            "tenants/globex/g.cedar",
            r#"@id("globex-none") forbid (principal, action, resource);
@id("globex-all") permit (principal, action, resource);"#,
        ),
    ]);
    let engine = load(dir.path(), 4096);
    let odd_scopes = ["odd".to_string()];
    let matrix: Vec<Ask<'_>> = variants(&odd_scopes)
        .into_iter()
        .map(|(_, base, _, _)| base)
        .collect();
    for a in &matrix {
        // Same workload name, same facts: acme's allow is kept, globex still gets its deny,
        // whichever asks first.
        for order in [["acme", "globex"], ["globex", "acme"]] {
            for tenant in order {
                let d = ask(&engine, tenant, *a);
                match tenant {
                    "acme" => assert!(d.allowed && d.policy_ids == ["acme-all"], "{a:?}: {d:?}"),
                    _ => assert!(
                        !d.allowed && d.policy_ids == ["globex-none"],
                        "{a:?}: {d:?}"
                    ),
                }
            }
        }
    }
    let (acme, globex) = (cache_len(&engine, "acme"), cache_len(&engine, "globex"));
    assert!(
        acme > 0 && globex > 0,
        "each tenant keeps its own: {acme} {globex}"
    );
}

#[test]
fn a_reload_forgets_every_cached_decision() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, action, resource);"#,
    )]);
    let before = load(dir.path(), 4096);
    let odd_scopes = ["odd".to_string()];
    let matrix: Vec<Ask<'_>> = variants(&odd_scopes)
        .into_iter()
        .map(|(_, base, _, _)| base)
        .collect();
    for a in &matrix {
        assert!(ask(&before, "acme", *a).allowed, "{a:?}");
        assert!(ask(&before, "acme", *a).allowed, "{a:?} kept");
    }
    write_files(
        dir.path(),
        &[(
            "global/stop.cedar",
            r#"@id("stop") forbid (principal, action, resource);"#,
        )],
    );
    // What a reload does: a new engine from the changed files, its caches empty.
    let after = load(dir.path(), 4096);
    assert_eq!(cache_len(&after, "acme"), 0);
    for a in &matrix {
        let d = ask(&after, "acme", *a);
        assert!(!d.allowed && d.policy_ids == ["stop"], "{a:?}: {d:?}");
    }
    // The old engine (requests still in flight hold it) keeps answering as it did.
    assert!(ask(&before, "acme", matrix[0]).allowed);
}

#[test]
fn decisions_with_errors_are_never_kept() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, action, resource);
@id("overflow") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.port * 9223372036854775807 > 0 };"#,
    )]);
    let engine = load(dir.path(), 4096);
    for _ in 0..3 {
        let d = engine.authorize_http(&tid("acme"), &wid("agent"), &base_http());
        assert!(!d.allowed && !d.errors.is_empty(), "{d:?}");
        assert_eq!(cache_len(&engine, "acme"), 0);
    }
    // A clean decision of the same tenant is kept.
    let d = ask(
        &engine,
        "acme",
        Ask::Connect("agent", ConnectQuestion::Open, base_connect()),
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(cache_len(&engine, "acme"), 1);
}

#[test]
fn each_tenants_cache_stays_within_its_bound() {
    let dir = dir_with(&[(
        "global/g.cedar",
        r#"@id("all") permit (principal, action == TenantProxy::Action::"http", resource);
@id("odd") forbid (principal, action == TenantProxy::Action::"http", resource) when { context.path like "/odd/*" };"#,
    )]);
    for limit in [1, 31, 100, 1000] {
        let engine = load(dir.path(), limit);
        let acme = engine
            .tenants
            .get(&tid("acme"))
            .and_then(|t| t.cache.as_ref());
        assert_eq!(acme.map(|c| c.limit()), Some(limit));
        // globex asks one question, then acme floods its own cache with distinct paths.
        let globex_facts = base_http();
        assert!(
            engine
                .authorize_http(&tid("globex"), &wid("agent"), &globex_facts)
                .allowed
        );
        for i in 0..(3 * limit).max(100) {
            let path = format!("/odd/{i}");
            let f = HttpRequestFacts {
                path: &path,
                ..base_http()
            };
            let d = engine.authorize_http(&tid("acme"), &wid("agent"), &f);
            assert!(!d.allowed && d.policy_ids == ["odd"], "{d:?}");
            let len = cache_len(&engine, "acme");
            assert!(len <= limit, "limit {limit}: {len} entries after {i}");
        }
        let len = cache_len(&engine, "acme");
        assert!(
            len >= limit / 2,
            "limit {limit}: the cache is used, {len} entries"
        );
        // Only acme's own entries were evicted.
        assert_eq!(cache_len(&engine, "globex"), 1, "limit {limit}");
    }
    // 0 turns the cache off: nothing is kept, decisions are the same.
    let off = load(dir.path(), 0);
    assert!(off.tenants.values().all(|t| t.cache.is_none()));
    let d = off.authorize_http(&tid("acme"), &wid("agent"), &base_http());
    assert!(d.allowed && d.policy_ids == ["all"], "{d:?}");
}

#[test]
fn long_questions_are_answered_but_not_kept() {
    let dir = dir_with(&[("global/g.cedar", DISTINGUISHING)]);
    let cached = load(dir.path(), 4096);
    let plain = load(dir.path(), 0);
    let long = format!("/{}", "a".repeat(cache::MAX_KEPT_QUESTION_BYTES));
    let odd = format!("/odd{}", "b".repeat(cache::MAX_KEPT_QUESTION_BYTES));
    for path in [&long, &odd] {
        let f = HttpRequestFacts {
            path,
            ..base_http()
        };
        for _ in 0..2 {
            let got = cached.authorize_http(&tid("acme"), &wid("agent"), &f);
            assert_eq!(got, plain.authorize_http(&tid("acme"), &wid("agent"), &f));
        }
    }
    assert_eq!(cache_len(&cached, "acme"), 0, "nothing that long is kept");
    // Just under the bound is kept.
    let short = format!("/{}", "a".repeat(900));
    let f = HttpRequestFacts {
        path: &short,
        ..base_http()
    };
    assert!(
        cached
            .authorize_http(&tid("acme"), &wid("agent"), &f)
            .allowed
    );
    assert_eq!(cache_len(&cached, "acme"), 1);
}
