//! The pure functions every allowed request runs, one bench each: target parsing, body
//! classification, the Cedar `http` decision (at 10 and 10,000 tenants with 20 policies each:
//! a tenant's decision evaluates the global policies and its own, so its cost must not grow
//! with the number of tenants; evaluated, and answered from the tenant's decision cache), usage
//! parsing and the audit record's serialization. Figures are kept in loadtest/README.md.
//! `cargo bench -p tenant-proxy --bench hot_path`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use tenant_proxy::audit::chain::{seal, ChainHead};
use tenant_proxy::audit::{AuditDecision, AuditRecord};
use tenant_proxy::body::{classify, BodyDestination};
use tenant_proxy::config::StaticConfig;
use tenant_proxy::context::TenantContext;
use tenant_proxy::identity::{IdentitySourceKind, ResolvedIdentity};
use tenant_proxy::ids::{TenantId, WorkloadId};
use tenant_proxy::pipeline::decide::Asking;
use tenant_proxy::reason::ReasonCode;
use tenant_proxy::snapshot::Snapshot;
use tenant_proxy::usage::providers::registry;
use tenant_proxy::usage::UsageMeter;
use tenant_proxy_loadtest::config::{Listener, Route, StaticFile, TenantFile};
use tenant_proxy_loadtest::scale;

const BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":"You are a helpful assistant for a load test."},{"role":"user","content":"Summarise the benefits of per-tenant egress policy for AI agents in one short sentence, and mention audit trails and budgets."}]}"#;

const RESPONSE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Per-tenant policy keeps each agent to its own budget and leaves an audit trail."},"finish_reason":"stop"}],"usage":{"prompt_tokens":70,"completion_tokens":16,"total_tokens":86}}"#;

/// Policies per tenant.
const PER_TENANT: usize = 20;

/// A configuration with `tenants` tenants (`t0`…) of 20 policies each beside the repo's global
/// policies, in `dir` (generated as the loadtest's `tenants` report does).
fn config_with_tenants(dir: &Path, tenants: usize) -> StaticConfig {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policies = dir.join("policies");
    scale::copy_schema_and_global(&repo, &policies).unwrap();
    let mut file = TenantFile::new(&policies);
    file.routes.push(Route {
        provider: Some("openai".into()),
        ..Route::new("openai", "/openai/", "http://127.0.0.1:18000/")
    });
    file.destination_regions
        .insert("eu".into(), vec!["127.0.0.1".into()]);
    scale::add_tenants(&mut file, tenants, PER_TENANT).unwrap();
    file.write(&dir.join("tenants.toml")).unwrap();
    let mut config = StaticFile::new("tenants.toml", "audit");
    config.listeners = vec![Listener::bound("l", "t0", "bot")];
    config.write(&dir.join("tenant-proxy.toml")).unwrap();
    StaticConfig::load(&dir.join("tenant-proxy.toml")).unwrap()
}

fn tenant(id: &str) -> TenantContext {
    TenantContext::new(
        ResolvedIdentity {
            tenant: TenantId::new(id).unwrap(),
            workload: WorkloadId::new("bot").unwrap(),
            source: IdentitySourceKind::Binding,
            token: None,
            certificate: None,
        },
        Arc::from("req-1"),
        None,
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_tenants(dir.path(), 10);
    let snapshot = Snapshot::load(&config).unwrap();
    let routes = &snapshot.tenants.routes;

    c.bench_function("target/route", |b| {
        b.iter(|| {
            tenant_proxy::target::resolve(
                black_box(b"/openai/v1/chat/completions"),
                Some(b"127.0.0.1:8080"),
                routes,
            )
            .unwrap()
        })
    });
    c.bench_function("target/forward", |b| {
        b.iter(|| {
            tenant_proxy::target::resolve(
                black_box(b"http://api.openai.com/v1/chat/completions"),
                Some(b"api.openai.com"),
                routes,
            )
            .unwrap()
        })
    });

    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = Bytes::from_static(BODY.as_bytes());
    c.bench_function("body/classify_chat", |b| {
        b.iter(|| {
            classify(
                black_box(body.clone()),
                &headers,
                BodyDestination::Llm,
                8 << 20,
            )
            .unwrap()
        })
    });

    let dest = tenant_proxy::target::resolve(
        b"/openai/v1/chat/completions",
        Some(b"127.0.0.1:8080"),
        routes,
    )
    .unwrap();
    let provider = registry::for_destination(&dest);
    c.bench_function("usage/json_response", |b| {
        b.iter(|| {
            let mut meter = UsageMeter::for_response("application/json", provider).unwrap();
            meter.feed(black_box(RESPONSE.as_bytes()));
            meter.finish().unwrap()
        })
    });

    let t5 = tenant("t5");
    let method = http::Method::POST;
    let (decision, _) = Asking::new(&snapshot, &t5, &dest, &method, Some("gpt-4o-mini"), 0).http();
    // The line the audit writer writes for one request: the record's JSON, chained (`seq`,
    // `prev`) and hashed.
    c.bench_function("audit/record_line", |b| {
        let record = AuditRecord {
            policy_ids: decision.policy_ids.clone(),
            model: Some("gpt-4o-mini".into()),
            request_body_sha256: Some("ab".repeat(32)),
            ..AuditRecord::of(
                &t5,
                "l",
                "POST".into(),
                Duration::from_micros(900),
                AuditDecision::Allow,
                ReasonCode::Allowed,
                200,
            )
        };
        b.iter(|| seal(black_box(&record), ChainHead::EMPTY).unwrap())
    });

    // The decision at 10 and at 10,000 tenants: it must stay flat. Evaluated by Cedar (the
    // decision cache off), and answered from the tenant's decision cache (the same question
    // asked again, as agents do).
    for tenants in [10, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_with_tenants(dir.path(), tenants);
        let cached = Snapshot::load(&config).unwrap();
        config.policy.decision_cache_entries = 0;
        let started = Instant::now();
        let uncached = Snapshot::load(&config).unwrap();
        eprintln!(
            "load of {tenants} tenants × {PER_TENANT} policies: {:?}",
            started.elapsed()
        );
        let who = tenant("t5");
        let hit = tenant_proxy::target::Destination {
            host: "h7.example.com".into(),
            ..dest.clone()
        };
        for (name, snapshot) in [
            ("http_decision", &uncached),
            ("http_decision_cached", &cached),
        ] {
            let ask = || {
                Asking::new(
                    snapshot,
                    black_box(&who),
                    &hit,
                    &method,
                    Some("gpt-4o-mini"),
                    0,
                )
                .http()
            };
            // Both answer the same (the cached one from its second asking on).
            assert_eq!(
                ask().0,
                Asking::new(&uncached, &who, &hit, &method, Some("gpt-4o-mini"), 0)
                    .http()
                    .0
            );
            c.bench_function(&format!("policy/{name}/{tenants}_tenants"), |b| b.iter(ask));
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
