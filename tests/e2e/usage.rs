//! Usage metering end to end against the mock LLM upstream from `loadtest/`: JSON, SSE and
//! Anthropic responses pass through unchanged and their token counts land in the audit record
//! and the tenant's metrics.

use crate::support::*;

fn post(proxy_port: u16, mock: u16, path: &str, body: &str) -> Response {
    raw_request(
        proxy_port,
        &format!(
            "POST http://127.0.0.1:{mock}{path} HTTP/1.1\r\nHost: 127.0.0.1:{mock}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

#[test]
fn json_sse_and_anthropic_usage_is_metered_per_tenant() {
    let mock = start_mock();
    // The test policies open the `llm` route to every tenant.
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    let call = |path: &str, body: &str| {
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let json = call(
        "/llm/chat/completions",
        r#"{"model":"gpt-4o-mini","max_tokens":7,"messages":[]}"#,
    );
    assert_eq!(json.status, 200, "{}", json.body_text());
    assert_eq!(
        json.json()["usage"]["completion_tokens"],
        7,
        "the client gets the upstream's body unchanged"
    );
    let sse = call(
        "/llm/chat/completions",
        r#"{"model":"gpt-4o-mini","max_tokens":9,"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    );
    assert_eq!(sse.status, 200);
    assert!(
        sse.body_text().ends_with("data: [DONE]\n\n"),
        "{}",
        sse.body_text()
    );
    let anthropic = call(
        "/llm/messages",
        r#"{"model":"claude-3-5-haiku","max_tokens":11,"messages":[]}"#,
    );
    assert_eq!(anthropic.status, 200);

    for (r, output) in [(&json, 7), (&sse, 9), (&anthropic, 11)] {
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["usage"]["output_tokens"], output, "{rec}");
        assert!(rec["usage"]["input_tokens"].as_u64().unwrap() > 0, "{rec}");
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(r#"tenant_proxy_llm_tokens_total{kind="output",tenant="acme"} 27"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"tenant_proxy_llm_tokens_total{kind="output",tenant="globex""#));

    // A call that names no model is a plain tool call: counted, not metered.
    let tool = post(proxy.sidecar_port, mock, "/acme/tool", "{}");
    let rec = proxy.audit_record("acme", &tool.request_id());
    assert!(rec["usage"].is_null(), "{rec}");
}

/// The proxy's id names every response (`x-request-id`); the upstream's own id, which its
/// support asks for, moves to `x-upstream-request-id` and the record when it looks like an id.
#[test]
fn an_upstreams_request_id_reaches_the_client_and_the_record() {
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    let call = |id: &str| {
        let body = r#"{"model":"gpt-4o-mini","max_tokens":3,"messages":[]}"#;
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-request-id: {id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let r = call("req_8c1f2e90ab");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-upstream-request-id"), Some("req_8c1f2e90ab"));
    let ours = r.request_id();
    assert_ne!(ours, "req_8c1f2e90ab");
    let rec = proxy.audit_record("acme", &ours);
    assert_eq!(rec["upstream_request_id"], "req_8c1f2e90ab", "{rec}");
    // Text that is not an id is neither passed on under our name nor recorded, and an upstream
    // cannot write that name itself.
    let r = call("see <b>this</b>\r\nx-upstream-request-id: spoofed");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-upstream-request-id"), None);
    let rec = proxy.audit_record("acme", &r.request_id());
    assert!(rec.get("upstream_request_id").is_none(), "{rec}");
}

#[test]
fn streams_are_metered_even_when_the_agent_did_not_ask_for_usage() {
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    let call_ending = |body: &str, line_end: &str| {
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-sse-line-end: {line_end}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let call = |body: &str| call_ending(body, "lf");
    // Not asked: the proxy asks the upstream, meters, and hides the extra event, whatever ends
    // the stream's lines (the event-stream format allows `\n`, `\r\n` and a bare `\r`).
    for (line_end, end) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
        let quiet = call_ending(
            r#"{"model":"gpt-4o-mini","max_tokens":5,"stream":true,"messages":[]}"#,
            line_end,
        );
        assert_eq!(quiet.status, 200);
        let text = quiet.body_text();
        assert!(
            text.ends_with(&format!("data: [DONE]{end}{end}")) && !text.contains("\"usage\""),
            "{line_end}: {text:?}"
        );
        assert_eq!(
            text.matches("chat.completion.chunk").count(),
            6,
            "{line_end}: every other event passes: {text:?}"
        );
        assert_eq!(
            proxy.audit_record("acme", &quiet.request_id())["usage"]["output_tokens"],
            5,
            "{line_end}"
        );
    }
    // Asked: the agent gets its usage event, untouched.
    let asked = call(
        r#"{"model":"gpt-4o-mini","max_tokens":6,"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    );
    assert!(
        asked.body_text().contains("\"usage\""),
        "{}",
        asked.body_text()
    );
    assert_eq!(
        proxy.audit_record("acme", &asked.request_id())["usage"]["output_tokens"],
        6
    );
}

/// Claude on Vertex AI (`…/publishers/anthropic/models/{model}:rawPredict`) is Anthropic's API
/// with the model in the path: metered and priced as a call under a token ceiling. Another
/// partner model's `rawPredict`, whose API the proxy does not read, is refused there instead of
/// passing the ceiling unseen.
#[test]
fn claude_on_vertex_is_metered_and_unread_partner_models_are_refused_under_ceilings() {
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    spec.tenant("acme").limits().tokens_per_minute = Some(100_000);
    let proxy = Proxy::start(spec);
    let vertex = "/llm/projects/p1/locations/us-east5/publishers";
    let body = r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":13,"messages":[]}"#;
    let call = |path: &str| {
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST {vertex}{path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let claude = call("/anthropic/models/claude-sonnet-4%4020250514:rawPredict");
    assert_eq!(claude.status, 200, "{}", claude.body_text());
    let rec = proxy.audit_record("acme", &claude.request_id());
    assert_eq!(rec["model"], "claude-sonnet-4@20250514", "{rec}");
    assert_eq!(rec["usage"]["output_tokens"], 13, "{rec}");
    assert_eq!(
        rec["reserved"]["tokens"].as_u64(),
        Some(body.len() as u64 + 13),
        "{rec}"
    );
    let used = rec["usage"]["input_tokens"].as_u64().unwrap() + 13;
    assert_eq!(rec["settled"]["tokens"].as_u64(), Some(used), "{rec}");

    let other = call("/mistralai/models/mistral-large:rawPredict");
    other.assert_refused(403, "unmetered_call");
    assert!(other.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("a partner model call"));
}
