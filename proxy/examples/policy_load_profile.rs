//! Where loading many tenants' policies goes, phase by phase: time and live heap bytes (counted
//! by dhat, so the allocator's retained free memory does not blur them; times are slower than
//! with the proxy's allocator, compare them with each other).
//!
//! `cargo run --release --example policy_load_profile -- 2000` (tenants of 20 policies each,
//! generated as the loadtest's `tenants` report does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use tenant_proxy::ids::{TenantId, WorkloadId};
use tenant_proxy::policy::{PolicyEngine, TenantInfo};
use tenant_proxy_loadtest::scale;

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn live_mib() -> f64 {
    dhat::HeapStats::get().curr_bytes as f64 / 1048576.0
}

/// Prints how long since `started` and the live heap now and since `base_mib`.
fn step(name: &str, started: Instant, base_mib: f64) {
    let live = live_mib();
    println!(
        "{name:<48} {:>8.3} s  live heap {live:>8.1} MiB ({:+.1})",
        started.elapsed().as_secs_f64(),
        live - base_mib
    );
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n: usize = std::env::args().nth(1).map_or(2000, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policies = dir.path().join("policies");
    scale::copy_schema_and_global(&repo, &policies).unwrap();
    let mut file = tenant_proxy_loadtest::config::TenantFile::new(&policies);
    scale::add_tenants(&mut file, n, 20).unwrap();
    let infos: Vec<TenantInfo> = (0..n)
        .map(|i| TenantInfo {
            id: TenantId::new(&scale::tenant_id(i)).unwrap(),
            plan: "pro".into(),
            region: "eu".into(),
            workloads: vec![WorkloadId::new("bot").unwrap()],
        })
        .collect();
    println!("{n} tenants × 20 policies");

    // The phases of a load, one at a time, with cedar directly.
    let base = live_mib();
    let t = Instant::now();
    let schema_text = std::fs::read_to_string(policies.join("schema.cedarschema")).unwrap();
    let (schema, _) = Schema::from_cedarschema_str(&schema_text).unwrap();
    let validator = Validator::new(schema);
    let texts: Vec<String> = (0..n)
        .map(|i| std::fs::read_to_string(policies.join(format!("tenants/t{i}/own.cedar"))).unwrap())
        .collect();
    step("schema and files read", t, base);
    let t = Instant::now();
    let own: Vec<PolicySet> = texts
        .iter()
        .map(|s| PolicySet::from_str(s).unwrap())
        .collect();
    step("parsed (PolicySet::from_str)", t, base);
    let t = Instant::now();
    for s in &own {
        assert!(validator
            .validate(s, ValidationMode::Strict)
            .validation_passed());
    }
    step("strictly validated", t, base);
    let t = Instant::now();
    let mut global = PolicySet::new();
    for f in ["base", "mcp", "residency"] {
        let text = std::fs::read_to_string(policies.join(format!("global/{f}.cedar"))).unwrap();
        for (i, p) in PolicySet::from_str(&text).unwrap().policies().enumerate() {
            global
                .add(p.new_id(PolicyId::new(format!("{f}#{i}"))))
                .unwrap();
        }
    }
    let combined: Vec<PolicySet> = own
        .iter()
        .map(|own| {
            let mut set = PolicySet::new();
            for p in global.policies().chain(own.policies()) {
                set.add(p.clone()).unwrap();
            }
            set
        })
        .collect();
    step("per-tenant sets built (global + own)", t, base);
    drop(own);
    step("  parsed sets dropped", t, base);
    drop((combined, texts, validator));

    // The engine: a full load, a reload with nothing changed, a reload after one tenant's file
    // changed; each reload while the previous engine lives, as in the proxy.
    let base = live_mib();
    let t = Instant::now();
    let engine = PolicyEngine::check(&policies, &infos).result.unwrap();
    step("PolicyEngine::check (full load)", t, base);
    println!(
        "  {:.1} KiB per tenant",
        (live_mib() - base) * 1024.0 / n as f64
    );
    let t = Instant::now();
    let engine = engine.with_decision_cache(1000, "enforced");
    step("  + empty decision caches", t, base);
    let t = Instant::now();
    let unchanged = PolicyEngine::check_after(&policies, &infos, Some(&engine))
        .result
        .unwrap();
    step("reload, nothing changed", t, base);
    drop(unchanged);
    let own = policies.join("tenants/t0/own.cedar");
    let mut text = std::fs::read_to_string(&own).unwrap();
    text.push_str("@id(\"t0-more\")\npermit (principal, action == TenantProxy::Action::\"http\", resource) when { context.host == \"more.example.com\" };\n");
    std::fs::write(&own, text).unwrap();
    let t = Instant::now();
    let one_changed = PolicyEngine::check_after(&policies, &infos, Some(&engine))
        .result
        .unwrap();
    step("reload, one tenant's file changed", t, base);
    let t = Instant::now();
    let full = PolicyEngine::check(&policies, &infos).result.unwrap();
    step("full load while the first lives", t, base);
    drop((engine, one_changed, full));
}
