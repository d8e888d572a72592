//! The provider registry is asked on every request (is this an LLM destination, whose prices,
//! which provider meters the response) and reads every LLM body: asking must not allocate, and
//! reading a body allocates only what walking its JSON takes anyway plus the model name it
//! returns. A counting global allocator measures it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tenant_proxy::body::llm_request;
use tenant_proxy::target::{Destination, Scheme};
use tenant_proxy::usage::providers::registry;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks(f: impl FnOnce()) -> u64 {
    let before = dhat::HeapStats::get().total_blocks;
    f();
    dhat::HeapStats::get().total_blocks - before
}

#[test]
fn registry_lookups_allocate_nothing_and_a_body_only_its_model() {
    let dest = |host: &str, path: &str| Destination {
        scheme: Scheme::Https,
        host: host.into(),
        port: 443,
        upstream_path: path.into(),
        audit_path: path.into(),
        route: None,
        internal: false,
        provider: None,
    };
    let known = dest("api.openai.com", "/v1/chat/completions?api-version=1");
    let gateway = dest("gw.example", "//V1/%63hat/Completions/");
    let other = dest("api.example.com", "/v1/users");
    let body = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"price is 5% off"}],"stream":true}"#;
    let _profiler = dhat::Profiler::builder().testing().build();
    // Warm up once (lazy statics), then measure.
    llm_request(body).unwrap();
    let asked = blocks(|| {
        for d in [&known, &gateway, &other] {
            std::hint::black_box(registry::is_llm_destination(d));
            std::hint::black_box(registry::for_destination(d));
            std::hint::black_box(registry::price_key(d));
        }
    });
    assert_eq!(asked, 0, "a registry lookup allocated");
    assert!(registry::is_llm_destination(&gateway));
    assert!(registry::for_destination(&known).is_some());
    assert!(!registry::is_llm_destination(&other));

    // serde_json's own cost of walking the body (its scratch buffer for nested values).
    let walking = blocks(|| {
        std::hint::black_box(serde_json::from_slice::<serde::de::IgnoredAny>(body).unwrap());
    });
    let mut read = None;
    let reading = blocks(|| read = Some(llm_request(body).unwrap()));
    let read = read.unwrap();
    assert_eq!(read.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(read.max_output_tokens, Some(5));
    assert_eq!(
        reading,
        walking + 1,
        "reading a body allocated more than walking it and its model name"
    );

    // The measurement can fail: a path longer than the stack buffer is normalized on the heap.
    let long = dest("gw.example", &format!("/{}/v1/messages", "x".repeat(600)));
    assert_eq!(
        blocks(|| {
            std::hint::black_box(registry::for_destination(&long));
        }),
        1
    );
}
