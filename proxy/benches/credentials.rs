//! Parse-and-substitute on typical header sets: with no handle (every request pays this) and
//! with one handle (calls that use a managed credential).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tenant_proxy::credentials::apply::{apply, AccessTokens, CredentialSettings, RequestParts};
use tenant_proxy::credentials::binding::Target;
use tenant_proxy::credentials::CredentialSet;
use tenant_proxy::ids::TenantId;

fn headers(auth: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.openai.com"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("authorization", auth),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    std::fs::write(
        dir.path().join("acme/openai"),
        "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz",
    )
    .unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let set = tenant_proxy::credentials::files::load(
        dir.path(),
        &[tenant_proxy::credentials::files::FileCredential {
            tenant: tenant.clone(),
            name: "openai".into(),
            bind: vec![tenant_proxy::credentials::binding::Binding::host(
                "api.openai.com",
            )],
            positions: vec![tenant_proxy::credentials::binding::Position::Header],
            expires: None,
            kind: tenant_proxy::credentials::kind::KindName::Static,
        }],
    )
    .unwrap();
    let empty = CredentialSet::default();
    let settings = CredentialSettings::default();
    let body = Bytes::from_static(br#"{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}"#);
    let target = Target {
        scheme: "https",
        host: "api.openai.com",
        port: 443,
        path: "/v1/chat/completions",
        method: "POST",
    };

    let plain = headers("Bearer sk-agent-owned-elsewhere");
    c.bench_function("apply/no handle", |b| {
        let req = RequestParts {
            target,
            raw_target: b"/v1/chat/completions",
            authority: None,
            headers: &plain,
            path_and_query: "/v1/chat/completions",
            body: Some(&body),
            content_type: Some("application/json"),
            encoded: false,
        };
        b.iter(|| {
            black_box(
                apply(
                    &empty,
                    &settings,
                    &tenant,
                    black_box(&req),
                    0,
                    &AccessTokens::default(),
                    &mut |_, _| true,
                )
                .unwrap(),
            )
        })
    });
    let with_handle = headers("Bearer $CRED{openai}");
    c.bench_function("apply/one header handle", |b| {
        let req = RequestParts {
            target,
            raw_target: b"/v1/chat/completions",
            authority: None,
            headers: &with_handle,
            path_and_query: "/v1/chat/completions",
            body: Some(&body),
            content_type: Some("application/json"),
            encoded: false,
        };
        b.iter(|| {
            black_box(
                apply(
                    &set,
                    &settings,
                    &tenant,
                    black_box(&req),
                    0,
                    &AccessTokens::default(),
                    &mut |_, _| true,
                )
                .unwrap(),
            )
        })
    });

    // A managed destination reads every body key for the agent's own key: a long conversation.
    let mut conversation = String::from(r#"{"model":"gpt-4o-mini","max_tokens":64,"messages":["#);
    for i in 0..200 {
        conversation.push_str(&format!(
            r#"{{"role":"user","content":"message {i}: some text with \"quotes\", \n breaks and a url https://x.example/?q=1&key=v"}},"#
        ));
    }
    conversation.push_str(r#"{"role":"user","content":"last"}]}"#);
    let long_body = Bytes::from(conversation);
    let with_handle = headers("Bearer $CRED{openai}");
    c.bench_function(
        &format!("apply/one handle, {} KiB JSON body", long_body.len() / 1024),
        |b| {
            let req = RequestParts {
                target,
                raw_target: b"/v1/chat/completions",
                authority: None,
                headers: &with_handle,
                path_and_query: "/v1/chat/completions",
                body: Some(&long_body),
                content_type: Some("application/json"),
                encoded: false,
            };
            b.iter(|| {
                black_box(
                    apply(
                        &set,
                        &settings,
                        &tenant,
                        black_box(&req),
                        0,
                        &AccessTokens::default(),
                        &mut |_, _| true,
                    )
                    .unwrap(),
                )
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
