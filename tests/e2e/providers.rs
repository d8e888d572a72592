//! Providers declared in the tenant file, against an origin serving shapes recorded from the real
//! servers: Azure OpenAI (deployment in the path, `api-key`, `api-version`, models from the
//! deployment mapping) called by the `openai` package's own `AzureOpenAI` client, and an
//! OpenAI-compatible server declared by host. Chat, streamed chat and embeddings are metered
//! exactly and priced in the provider's own table; a response of unknown shape is usage unknown
//! (counted, its reservation kept), never zero; policies see `context.provider`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::*;

const AZURE_KEY: &str = "azure-api-key-canary-6d02aa";

fn azure_proxy() -> Proxy {
    let mut spec = ProxySpec::default().with_prices();
    let mut azure = config::LlmProvider::new("azure_openai", &["127.0.0.1"], "azure_openai");
    azure.deployments = BTreeMap::from([
        ("prod-mini".to_string(), "gpt-35-turbo".to_string()),
        ("embed".to_string(), "text-embedding-3-small".to_string()),
    ]);
    spec.tenants.llm_providers.push(azure);
    // A day ceiling, so every call reserves before it goes and settles after.
    spec.tenant("acme").limits().cost_per_day_micros = Some(1_000_000);
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    // Declared providers are open (and vLLM closed to the free plan) by `context.provider`.
    spec.copies.push((
        "tests/fixtures/providers-policy.cedar",
        "policies/global/providers.cedar",
    ));
    Proxy::start_prepared(spec, |dir| {
        let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
        assert_eq!(code, 0, "{out}");
        let args = [
            "cred",
            "--config",
            "tenant-proxy.toml",
            "put",
            "--tenant",
            "acme",
            "--name",
            "azure",
            "--bind",
            "127.0.0.1",
            "--in",
            "header",
        ];
        let (code, out) = proxy_cli(dir, &args, AZURE_KEY);
        assert_eq!(code, 0, "{out}");
    })
}

#[test]
fn azure_openai_calls_from_the_openai_client_are_keyed_mapped_and_metered() {
    let origin = ShapesOrigin::start();
    let proxy = azure_proxy();
    let out = python(
        r#"
import os, httpx
from openai import AzureOpenAI
c = AzureOpenAI(azure_endpoint=os.environ["ENDPOINT"], api_key="$CRED{azure}", api_version="2024-06-01",
                http_client=httpx.Client(proxy=os.environ["PROXY"]), max_retries=0)
msgs = [{"role": "user", "content": "hi"}]
r = c.chat.completions.create(model="prod-mini", messages=msgs, max_tokens=20)
print("chat", r.choices[0].message.content, r.usage.prompt_tokens, r.usage.completion_tokens)
text = ""
for chunk in c.chat.completions.create(model="prod-mini", messages=msgs, max_tokens=20, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    assert chunk.usage is None, "the agent did not ask for the usage chunk"
print("stream", text)
e = c.embeddings.create(model="embed", input="hello")
print("embed", len(e.data[0].embedding), e.usage.prompt_tokens)
"#,
        &[
            ("ENDPOINT", format!("http://127.0.0.1:{}", origin.port)),
            ("PROXY", format!("http://127.0.0.1:{}", proxy.sidecar_port)),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "chat Hello from the recorded shape. 19 10",
            "stream Hello from the stream.",
            "embed 3 8",
        ]
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r["headers"]["api-key"], AZURE_KEY, "{r}");
        assert_eq!(r["query"], "api-version=2024-06-01", "{r}");
    }
    assert_eq!(
        seen[0]["path"],
        "/openai/deployments/prod-mini/chat/completions"
    );
    assert_eq!(seen[2]["path"], "/openai/deployments/embed/embeddings");
    // The proxy asked the stream for its usage (and took the chunk out again).
    assert!(seen[1]["body"].as_str().unwrap().contains("include_usage"));

    let recs = proxy.wait_audit_records("acme", 3);
    let by_path = |p: &str| {
        recs.iter()
            .find(|r| r["path"].as_str().unwrap().starts_with(p) && r["usage"].is_object())
            .unwrap_or_else(|| panic!("{p}: {recs:?}"))
            .clone()
    };
    let chat = by_path("/openai/deployments/prod-mini/chat");
    assert_eq!(
        chat["model"], "gpt-35-turbo",
        "the deployment's model, not the body's: {chat}"
    );
    assert_eq!(chat["usage"]["input_tokens"], 19);
    assert_eq!(chat["usage"]["cached_input_tokens"], 4);
    assert_eq!(chat["usage"]["output_tokens"], 10);
    // azure_openai's table: 15 uncached at 3, 4 cached at 1, 10 output at 5 micro-units.
    assert_eq!(
        chat["settled"]["cost_micros"],
        15 * 3 + 4 + 10 * 5,
        "{chat}"
    );
    let embed = by_path("/openai/deployments/embed");
    assert_eq!(embed["model"], "text-embedding-3-small");
    assert_eq!(embed["usage"]["input_tokens"], 8);
    assert_eq!(embed["usage"]["output_tokens"], 0);
    assert_eq!(embed["settled"]["cost_micros"], 8);
    assert_eq!(
        recs.iter()
            .filter(|r| r["usage"]["output_tokens"] == 10)
            .count(),
        2,
        "the stream was metered too: {recs:?}"
    );
    assert!(!proxy.log().contains(AZURE_KEY));
}

/// Azure OpenAI's v1 API (`/openai/v1/…`) and its Responses API serve the deployment the
/// body's `model` names: the call is the model that deployment maps to, for policy and prices,
/// as one named in the path is (else an agent names a cheaper or allowed model there).
#[test]
fn azure_v1_calls_are_the_model_the_bodys_deployment_maps_to() {
    let origin = ShapesOrigin::start();
    let proxy = azure_proxy();
    let out = python(
        r#"
import os, httpx
c = httpx.Client(proxy=os.environ["PROXY"])
for path in ["/openai/v1/chat/completions", "/openai/v1/chat/completions?api-version=preview"]:
    r = c.post(os.environ["ENDPOINT"] + path, headers={"api-key": "$CRED{azure}"},
               json={"model": "prod-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
    print(r.status_code)
"#,
        &[
            ("ENDPOINT", format!("http://127.0.0.1:{}", origin.port)),
            ("PROXY", format!("http://127.0.0.1:{}", proxy.sidecar_port)),
        ],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200", "200"]);
    let recs = proxy.wait_audit_records("acme", 2);
    for rec in &recs {
        assert_eq!(
            rec["model"], "gpt-35-turbo",
            "the deployment's model: {rec}"
        );
        // azure_openai's table prices gpt-35-turbo (see the test above): 15 × 3 + 4 + 10 × 5.
        assert_eq!(rec["settled"]["cost_micros"], 15 * 3 + 4 + 10 * 5, "{rec}");
    }
}

#[test]
fn azure_raw_keys_unmapped_deployments_and_unknown_shapes_fail_closed() {
    let origin = ShapesOrigin::start();
    let proxy = azure_proxy();
    let post = |path: &str, extra: &str, body: &str| {
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST http://127.0.0.1:{}{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                origin.port,
                origin.port,
                body.len()
            ),
        )
        .unwrap()
    };
    let chat = r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[]}"#;
    let path = "/openai/deployments/prod-mini/chat/completions?api-version=2024-06-01";
    // The agent's own key in `api-key` (a credential position) toward the managed host.
    post(path, "api-key: sk-agent-own-key-0000000000\r\n", chat)
        .assert_refused(403, "raw_credential");
    // An unmapped deployment is its own model: not in the price table, so refused, whatever
    // model the body claims.
    post(
        "/openai/deployments/big-one/chat/completions?api-version=2024-06-01",
        "api-key: $CRED{azure}\r\n",
        chat,
    )
    .assert_refused(403, "model_not_priced");
    // The same path in another case is the same deployment's call: its model is read from the
    // path spelled that way, never taken from the body, even one that names a priced model.
    // (Doubled slashes are refused earlier.)
    post(
        "/OpenAI/Deployments/big-one/chat/completions?api-version=2024-06-01",
        "api-key: $CRED{azure}\r\n",
        r#"{"model":"gpt-35-turbo","max_tokens":20,"messages":[]}"#,
    )
    .assert_refused(403, "model_not_priced");
    assert!(origin.requests().is_empty(), "nothing refused was sent");

    // A 200 whose body reports no usage: usage unknown, counted, and the reservation stays
    // charged (never settled as zero).
    let r = post(
        path,
        "api-key: $CRED{azure}\r\nx-test-shape: unknown\r\n",
        chat,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    assert!(rec["usage"].is_null(), "{rec}");
    let reserved = rec["reserved"]["cost_micros"].as_u64().unwrap();
    assert!(reserved > 0, "{rec}");
    assert_ne!(
        rec["settled"]["cost_micros"], 0,
        "never settled as zero: {rec}"
    );
    // So is one whose body no meter reads (not JSON, SSE or an event stream).
    let r = post(
        path,
        "api-key: $CRED{azure}\r\nx-test-shape: text\r\n",
        chat,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    assert!(rec["usage"].is_null(), "{rec}");
    assert_eq!(rec["settled"], rec["reserved"], "{rec}");
    let metrics = proxy.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_proxy_llm_usage_unknown_total",
            "tenant",
            "acme"
        ),
        2.0
    );
}

#[test]
fn an_openai_compatible_host_from_config_is_metered_priced_and_named_to_policies() {
    let origin = ShapesOrigin::start();
    let mut spec = ProxySpec::default().with_prices();
    spec.tenants.llm_providers.push(config::LlmProvider::new(
        "vllm",
        &["127.0.0.1"],
        "openai_compatible",
    ));
    spec.copies.push((
        "tests/fixtures/providers-policy.cedar",
        "policies/global/providers.cedar",
    ));
    let proxy = Proxy::start(spec);
    let model = "meta-llama/Llama-3.1-8B-Instruct";
    let body = json!({"model": model, "max_tokens": 20, "messages": []}).to_string();
    let call = |port: u16, extra: &str, path: &str, body: &str| {
        raw_request(
            port,
            &format!(
                "POST http://127.0.0.1:{}{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                origin.port,
                origin.port,
                body.len()
            ),
        )
        .unwrap()
    };
    let r = call(proxy.sidecar_port, "", "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["model"], model);
    assert_eq!(rec["usage"]["input_tokens"], 19);
    // vllm's table: 15 uncached + 4 cached input at 2 (no cached price), 10 output at 4.
    assert_eq!(rec["settled"]["cost_micros"], 19 * 2 + 10 * 4, "{rec}");
    let embed = json!({"model": model, "input": "hello"}).to_string();
    let e = call(proxy.sidecar_port, "", "/v1/embeddings", &embed);
    assert_eq!(e.status, 200);
    let rec = proxy.audit_record("acme", &e.request_id());
    assert_eq!(rec["usage"]["input_tokens"], 8, "{rec}");
    assert_eq!(rec["settled"]["cost_micros"], 16, "{rec}");

    // `context.provider` is `vllm`: globex (free plan) may not use it at all, by provider.
    let globex = token_for("globex", "agent");
    call(
        proxy.shared_port,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}).to_string(),
    )
    .assert_refused(403, "policy_denied");
    assert_eq!(origin.requests().len(), 2);
}
