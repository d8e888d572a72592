//! Substitution is on every request's path: a request that carries no handle must not allocate.
//! A counting global allocator measures it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tenant_proxy::credentials::apply::{apply, AccessTokens, CredentialSettings, RequestParts};
use tenant_proxy::credentials::binding::Target;
use tenant_proxy::credentials::CredentialSet;
use tenant_proxy::ids::TenantId;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn typical_request_without_handles_allocates_nothing() {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "api.openai.com"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-stainless-lang", "python"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", "Bearer sk-not-managed-here"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"price is 5% off"}]}"#,
    );
    let set = CredentialSet::default();
    let settings = CredentialSettings::default();
    let tenant = TenantId::new("acme").unwrap();
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host: "api.openai.com",
            port: 443,
            path: "/v1/chat/completions",
            method: "POST",
        },
        raw_target: b"/v1/chat/completions?api-version=2024-10-01&q=a%20b",
        authority: None,
        headers: &headers,
        path_and_query: "/v1/chat/completions?api-version=2024-10-01&q=a%20b",
        body: Some(&body),
        content_type: Some("application/json"),
        encoded: false,
    };
    let mut authorize = |_: &_, _| true;
    let tokens = AccessTokens::default();
    let _profiler = dhat::Profiler::builder().testing().build();
    // Warm up once (lazy statics), then measure.
    apply(&set, &settings, &tenant, &req, 0, &tokens, &mut authorize).unwrap();
    let before = dhat::HeapStats::get().total_blocks;
    let applied = apply(&set, &settings, &tenant, &req, 0, &tokens, &mut authorize).unwrap();
    let after = dhat::HeapStats::get().total_blocks;
    assert!(applied.is_empty());
    assert_eq!(
        after - before,
        0,
        "apply() allocated on a request without handles"
    );

    // The measurement can fail: a request with a handle does allocate.
    let mut with_handle = headers.clone();
    with_handle.insert(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("$CRED{nope}"),
    );
    let req = RequestParts {
        headers: &with_handle,
        ..req
    };
    let before = dhat::HeapStats::get().total_blocks;
    assert!(apply(&set, &settings, &tenant, &req, 0, &tokens, &mut authorize).is_err());
    assert!(dhat::HeapStats::get().total_blocks > before);
}
