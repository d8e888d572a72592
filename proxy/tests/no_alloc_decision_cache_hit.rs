//! A question the tenant's decision cache already holds is answered without evaluating Cedar
//! and without allocating for the key: the only allocations of a hit are the returned
//! decision's own (its list of policy ids). A counting global allocator measures it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tenant_proxy::ids::{TenantId, WorkloadId};
use tenant_proxy::policy::{
    ConnectFacts, ConnectQuestion, CredentialFacts, Decision, HttpRequestFacts, ItemKind, McpFacts,
    PolicyEngine, TenantInfo,
};

/// One way of asking an engine, by name.
type Ask<'a> = (&'static str, &'a dyn Fn(&PolicyEngine) -> Decision);

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks(f: impl FnOnce() -> Decision) -> (u64, Decision) {
    let before = dhat::HeapStats::get().total_blocks;
    let d = f();
    (dhat::HeapStats::get().total_blocks - before, d)
}

#[test]
fn a_hit_allocates_only_the_decision_it_returns() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let tenant = |id: &str, plan: &str, workload: &str| TenantInfo {
        id: TenantId::new(id).unwrap(),
        plan: plan.into(),
        region: "eu".into(),
        workloads: vec![WorkloadId::new(workload).unwrap()],
    };
    let tenants = [
        tenant("acme", "pro", "support-bot"),
        tenant("globex", "free", "agent"),
    ];
    let cached = PolicyEngine::load(&repo, &tenants)
        .unwrap()
        .with_decision_cache(4096, "enforced");
    let plain = PolicyEngine::load(&repo, &tenants).unwrap();
    let (tenant, workload) = (&tenants[0].id, &tenants[0].workloads[0]);
    let scopes = vec!["llm".to_string()];
    let http = HttpRequestFacts {
        scheme: "https",
        // Already normal, as target parsing leaves it (a host to lowercase is copied once
        // before the lookup, cached or not).
        host: "eu.api.openai.com",
        port: 443,
        method: "POST",
        path: "/v1/chat/completions",
        model: Some("gpt-4o-mini"),
        provider: Some("openai"),
        run_signed: true,
        scopes: &scopes,
        route: Some("openai"),
        destination_region: Some("eu"),
        hour: 10,
        weekday: "tue",
    };
    let connect = ConnectFacts {
        host: "eu.api.openai.com",
        port: 443,
        run_signed: true,
        scopes: &scopes,
        destination_region: Some("eu"),
        hour: 10,
        weekday: "tue",
    };
    let asks: [Ask<'_>; 4] = [
        ("http", &|e| e.authorize_http(tenant, workload, &http)),
        ("use_credential", &|e| {
            let f = CredentialFacts {
                name: "openai",
                position: "header",
                http: &http,
            };
            e.authorize_credential(tenant, workload, &f)
        }),
        ("connect", &|e| {
            e.authorize_connect(tenant, workload, ConnectQuestion::Open, &connect)
        }),
        ("mcp", &|e| {
            let f = McpFacts {
                server: "docs",
                item: ItemKind::Tool,
                name: "search",
                http: &http,
            };
            e.authorize_mcp(tenant, workload, &f)
        }),
    ];
    let _profiler = dhat::Profiler::builder().testing().build();
    for (name, ask) in asks {
        // The first asks Cedar (and keeps the answer, and makes the metric series).
        let first = ask(&cached);
        assert!(first.errors.is_empty(), "{name}: {first:?}");
        let (hit, again) = blocks(|| ask(&cached));
        assert_eq!(again, first, "{name}");
        // A `Vec` and one `String` per policy id: the decision handed back, nothing else.
        let returned = u64::from(!again.policy_ids.is_empty()) + again.policy_ids.len() as u64;
        eprintln!("{name}: a hit allocated {hit} blocks (its decision: {returned})");
        assert!(
            hit <= returned,
            "{name}: {hit} allocations, {returned} expected"
        );
        // Without a cache the same question builds and evaluates a Cedar request: many more.
        let (evaluated, fresh) = blocks(|| ask(&plain));
        assert_eq!(fresh, first, "{name}");
        assert!(
            evaluated > 20 + hit,
            "{name}: {evaluated} allocations uncached"
        );
    }
}
