//! AWS SigV4 end to end: the proxy signs Bedrock calls with the tenant's own `aws_sigv4`
//! credential (the agent holds no AWS secret), after every rewrite, and a Bedrock stand-in that
//! recomputes each signature with botocore accepts them; Bedrock's JSON and event-stream usage
//! is metered; tenants never sign with each other's keys.

use std::path::Path;

use serde_json::json;

use crate::support::*;

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const ACME_SECRET: &str = "acme-aws-secret-canary-5b1e0d";
const ACME_TOKEN: &str = "acme-session-token-canary-77c2";
const GLOBEX_SECRET: &str = "globex-aws-secret-canary-a41f";
const NOTE: &str = "note-value-canary-3e8d";

fn origin_keys() -> serde_json::Value {
    json!({
        "AKIDACME": {"secret": ACME_SECRET, "token": ACME_TOKEN},
        "AKIDGLOBEX": {"secret": GLOBEX_SECRET, "token": null},
    })
}

fn put(dir: &Path, tenant: &str, name: &str, kind: &str, positions: &str, value: &str) {
    let (code, out) = proxy_cli(
        dir,
        &[
            "cred",
            "--config",
            "tenant-proxy.toml",
            "put",
            "--tenant",
            tenant,
            "--name",
            name,
            "--bind",
            "127.0.0.1",
            "--in",
            positions,
            "--kind",
            kind,
        ],
        value,
    );
    assert_eq!(code, 0, "cred put: {out}");
    assert!(!out.contains(value), "cred put printed the value: {out}");
}

fn aws_key(id: &str, secret: &str, token: Option<&str>, region: &str) -> String {
    json!({"access_key_id": id, "secret_access_key": secret, "session_token": token, "region": region, "service": "bedrock"})
        .to_string()
}

/// acme: `aws` (temporary key) and a static `note` usable in bodies; globex: its own `aws`;
/// with `second`, acme also has `aws_eu`, scoped to the wrong region.
fn prepare(dir: &Path, second: bool) {
    let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
    assert_eq!(code, 0, "{out}");
    put(
        dir,
        "acme",
        "aws",
        "aws_sigv4",
        "header",
        &aws_key("AKIDACME", ACME_SECRET, Some(ACME_TOKEN), "us-east-1"),
    );
    put(dir, "acme", "note", "static", "body", NOTE);
    put(
        dir,
        "globex",
        "aws",
        "aws_sigv4",
        "header",
        &aws_key("AKIDGLOBEX", GLOBEX_SECRET, None, "us-east-1"),
    );
    if second {
        put(
            dir,
            "acme",
            "aws_eu",
            "aws_sigv4",
            "header",
            &aws_key("AKIDACME", ACME_SECRET, Some(ACME_TOKEN), "eu-west-1"),
        );
    }
}

/// A proxy with the vault [`prepare`] fills and the route `llm` (`/llm/`) to the Bedrock
/// stand-in, priced under `bedrock`; globex is on the pro plan here (the free plan's model
/// policy is checked in its own test).
fn start(origin: &BedrockOrigin, second: bool, pro_globex: bool) -> Proxy {
    start_with(origin, second, pro_globex, |_| {})
}

fn start_with(
    origin: &BedrockOrigin,
    second: bool,
    pro_globex: bool,
    adjust: impl FnOnce(&mut ProxySpec),
) -> Proxy {
    let mut spec = ProxySpec::default().with_prices();
    let mut route =
        config::Route::new("llm", "/llm/", format!("http://127.0.0.1:{}/", origin.port));
    route.provider = Some("bedrock".into());
    spec.tenants.routes.push(route);
    if pro_globex {
        spec.tenant("globex").plan = "pro".into();
    }
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        ..Default::default()
    });
    adjust(&mut spec);
    Proxy::start_prepared(spec, move |dir| prepare(dir, second))
}

/// POSTs `body` to `/llm{path}` on `port` with extra header lines.
fn post(port: u16, path: &str, body: &str, extra: &str) -> Response {
    raw_request(
        port,
        &format!(
            "POST /llm{path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

fn converse_path() -> String {
    format!("/model/{}/converse", MODEL.replace(':', "%3A"))
}

const CONVERSE: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":50}}"#;

#[test]
fn boto3_calls_are_signed_by_the_proxy_verified_by_botocore_and_metered() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start(&origin, false, true);
    // The agent has no AWS credentials at all: boto3 sends its calls unsigned.
    let out = python(
        r#"
import os, json, boto3
from botocore import UNSIGNED
from botocore.config import Config
c = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=os.environ["ENDPOINT"],
                 config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
m = os.environ["MODEL"]
msgs = [{"role": "user", "content": [{"text": "hi"}]}]
r = c.converse(modelId=m, messages=msgs, inferenceConfig={"maxTokens": 50})
print("converse", r["output"]["message"]["content"][0]["text"], r["usage"]["inputTokens"], r["usage"]["outputTokens"])
r = c.converse_stream(modelId=m, messages=msgs, inferenceConfig={"maxTokens": 50})
text, usage = "", None
for e in r["stream"]:
    if "contentBlockDelta" in e:
        text += e["contentBlockDelta"]["delta"]["text"]
    if "metadata" in e:
        usage = e["metadata"]["usage"]
print("converse_stream", text, usage["inputTokens"], usage["outputTokens"])
body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 40, "messages": [{"role": "user", "content": "hi"}]})
r = c.invoke_model(modelId=m, body=body)
print("invoke", json.loads(r["body"].read())["usage"]["output_tokens"])
r = c.invoke_model_with_response_stream(modelId=m, body=body)
kinds = [json.loads(e["chunk"]["bytes"])["type"] for e in r["body"]]
print("invoke_stream", ",".join(kinds))
"#,
        &[
            (
                "ENDPOINT",
                format!("http://127.0.0.1:{}/llm", proxy.sidecar_port),
            ),
            ("MODEL", MODEL.to_string()),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "converse signed ok 11 7",
            "converse_stream signed ok 11 7",
            "invoke 7",
            "invoke_stream message_start,content_block_delta,message_delta,message_stop",
        ],
        "boto3 parsed every response, the event streams' CRCs included"
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        assert_eq!(
            r["ok"], true,
            "botocore rejected the proxy's signature: {r}"
        );
        assert_eq!(r["akid"], "AKIDACME", "{r}");
        assert_eq!(r["headers"]["x-amz-security-token"], ACME_TOKEN, "{r}");
    }
    // Each call metered with the exact usage, the model as Bedrock names it (from the path).
    let recs = proxy.wait_audit_records("acme", 4);
    for rec in &recs {
        assert_eq!(rec["model"], MODEL, "{rec}");
        assert_eq!(rec["usage"]["input_tokens"], 11, "{rec}");
        assert_eq!(rec["usage"]["output_tokens"], 7, "{rec}");
        assert_eq!(rec["credentials"], json!(["aws"]), "{rec}");
    }
    // Priced under `bedrock`: 11 input at 1, 7 output at 2 micro-units.
    assert_eq!(cost_spent(&recs), 4 * 25, "{recs:?}");
    // The secret is nowhere the proxy writes.
    let sinks = format!(
        "{}{}{}",
        proxy.log(),
        proxy.metrics(),
        serde_json::to_string(&recs).unwrap()
    );
    for canary in [ACME_SECRET, ACME_TOKEN] {
        assert!(!sinks.contains(canary), "{canary} leaked");
    }
}

#[test]
fn each_tenant_signs_with_its_own_key_and_never_another() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start(&origin, false, true);
    let globex = token_for("globex", "agent");
    let auth = format!("Proxy-Authorization: Bearer {globex}\r\n");

    let g = post(proxy.shared_port, &converse_path(), CONVERSE, &auth);
    assert_eq!(g.status, 200, "{}", g.body_text());
    let g_named = post(
        proxy.shared_port,
        &converse_path(),
        CONVERSE,
        &format!("{auth}Authorization: $CRED{{aws}}\r\n"),
    );
    assert_eq!(g_named.status, 200, "{}", g_named.body_text());
    let a = post(proxy.sidecar_port, &converse_path(), CONVERSE, "");
    assert_eq!(a.status, 200, "{}", a.body_text());
    let seen = origin.requests();
    let akids: Vec<&str> = seen.iter().map(|r| r["akid"].as_str().unwrap()).collect();
    assert_eq!(akids, ["AKIDGLOBEX", "AKIDGLOBEX", "AKIDACME"]);
    assert!(seen.iter().all(|r| r["ok"] == true), "{seen:?}");
    assert!(seen[0]["headers"].get("x-amz-security-token").is_none());

    // globex cannot name acme's credentials in any spelling.
    for (handle, status, code) in [
        ("$CRED{acme.aws}", 403, "credential_unknown"),
        ("$CRED{acme/aws}", 400, "credential_malformed"),
        ("$CRED{AWS}", 403, "credential_unknown"),
        ("$CRED{note}", 403, "credential_unknown"),
    ] {
        let r = post(
            proxy.shared_port,
            &converse_path(),
            CONVERSE,
            &format!("{auth}Authorization: {handle}\r\n"),
        );
        r.assert_refused(status, code);
    }
    assert_eq!(
        origin.requests().len(),
        3,
        "nothing refused reached the origin"
    );
    // Refusals and usage stay in each tenant's own partition.
    let g_recs = proxy.wait_audit_records("globex", 6);
    assert!(g_recs.iter().all(|r| r["tenant"] == "globex"));
    let sinks = format!("{}{}", proxy.log(), proxy.metrics());
    for canary in [ACME_SECRET, ACME_TOKEN, GLOBEX_SECRET] {
        assert!(!sinks.contains(canary), "{canary} leaked");
        assert!(!g_recs.iter().any(|r| r.to_string().contains(canary)));
    }
}

#[test]
fn signatures_cover_rewritten_bodies_and_the_verifier_rejects_tampering_and_wrong_regions() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start(&origin, true, true);

    // Two signing credentials are bound here: an unsigned request must name one.
    post(proxy.sidecar_port, &converse_path(), CONVERSE, "")
        .assert_refused(403, "credential_position");
    // The body is rewritten (a static handle substituted, in a credential field: a handle in
    // the prompt is refused) before it is signed.
    let with_note = CONVERSE.replace("{\"messages\"", "{\"api_key\":\"$CRED{note}\",\"messages\"");
    assert_ne!(with_note, CONVERSE);
    post(
        proxy.sidecar_port,
        &converse_path(),
        &CONVERSE.replace("\"hi\"", "\"$CRED{note}\""),
        "Authorization: $CRED{aws}\r\n",
    )
    .assert_refused(403, "credential_position");
    let r = post(
        proxy.sidecar_port,
        &converse_path(),
        &with_note,
        "Authorization: $CRED{aws}\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let signed = origin.requests().pop().unwrap();
    assert_eq!(signed["ok"], true, "{signed}");
    assert!(signed["body"].as_str().unwrap().contains(NOTE), "{signed}");
    // A key scoped to another region: the verifier refuses it as Bedrock would.
    let r = post(
        proxy.sidecar_port,
        &converse_path(),
        CONVERSE,
        "Authorization: $CRED{aws_eu}\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert_eq!(
        origin.requests().pop().unwrap()["error"],
        "InvalidSignatureException"
    );

    // The verifier is not a rubber stamp: the proxy's signed request replayed with a changed
    // body (hash left, then hash fixed) is refused.
    let headers = signed["headers"].as_object().unwrap();
    let replay = |body: &str, sha: Option<String>| {
        let mut head = format!("POST {} HTTP/1.1\r\n", signed["path"].as_str().unwrap());
        for (k, v) in headers {
            let v = match (k.as_str(), &sha) {
                ("x-amz-content-sha256", Some(s)) => s.clone(),
                ("content-length", _) => body.len().to_string(),
                ("connection", _) => continue,
                _ => v.as_str().unwrap().to_string(),
            };
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        raw_request(
            origin.port,
            &format!("{head}Connection: close\r\n\r\n{body}"),
        )
        .unwrap()
    };
    let same = replay(signed["body"].as_str().unwrap(), None);
    assert_eq!(
        same.status,
        200,
        "the untouched replay verifies: {}",
        same.body_text()
    );
    let tampered = signed["body"]
        .as_str()
        .unwrap()
        .replace("maxTokens\":50", "maxTokens\":5000");
    assert_eq!(replay(&tampered, None).status, 400);
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(tampered.as_bytes()))
    };
    assert_eq!(replay(&tampered, Some(sha)).status, 403);
    let errors: Vec<String> = origin
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        errors,
        ["InvalidSignatureException", "XAmzContentSHA256Mismatch"]
    );

    // The agent's own signature or session token toward the managed host is a raw credential;
    // a signing credential is never written into a request as text.
    let before = origin.requests().len();
    for (extra, code) in [
        ("Authorization: AWS4-HMAC-SHA256 Credential=AKIDAGENT/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00\r\n", "raw_credential"),
        ("X-Amz-Security-Token: agent-token\r\n", "raw_credential"),
        ("X-Api-Key: $CRED{aws}\r\n", "credential_position"),
        ("Authorization: Bearer $CRED{aws}\r\n", "credential_position"),
    ] {
        post(proxy.sidecar_port, &converse_path(), CONVERSE, extra).assert_refused(403, code);
    }
    let in_body = CONVERSE.replace("\"hi\"", "\"$CRED{aws}\"");
    post(
        proxy.sidecar_port,
        &converse_path(),
        &in_body,
        "Authorization: $CRED{aws}\r\n",
    )
    .assert_refused(403, "credential_position");
    assert_eq!(
        origin.requests().len(),
        before,
        "no refused request reached the origin"
    );
}

#[test]
fn a_corrupt_event_stream_is_usage_unknown_and_keeps_its_reservation() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start(&origin, false, true);
    let path = format!("/model/{}/converse-stream", MODEL.replace(':', "%3A"));
    let ok = post(proxy.sidecar_port, &path, CONVERSE, "");
    assert_eq!(ok.status, 200);
    let bad = post(proxy.sidecar_port, &path, CONVERSE, "X-Test-Corrupt: 1\r\n");
    assert_eq!(bad.status, 200);
    // Every byte passed through unchanged: the same frames, the last one's CRC still broken.
    assert_eq!(ok.body.len(), bad.body.len());
    assert_eq!(ok.body[..ok.body.len() - 1], bad.body[..bad.body.len() - 1]);
    assert_eq!(
        ok.body[ok.body.len() - 1] ^ 0xff,
        bad.body[bad.body.len() - 1]
    );
    let good_rec = proxy.audit_record("acme", &ok.request_id());
    assert_eq!(good_rec["usage"]["output_tokens"], 7, "{good_rec}");
    let bad_rec = proxy.audit_record("acme", &bad.request_id());
    assert!(bad_rec["usage"].is_null(), "{bad_rec}");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_llm_usage_unknown_total{tenant=\"acme\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("tenant_proxy_llm_usage_unknown_total{tenant=\"globex\"}"));
}

#[test]
fn the_free_plan_model_policy_applies_to_bedrock_models() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start(&origin, false, false);
    let globex = token_for("globex", "agent");
    let r = post(
        proxy.shared_port,
        &converse_path(),
        CONVERSE,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
    );
    r.assert_refused(403, "policy_denied");
    assert!(origin.requests().is_empty());
    let rec = proxy.audit_record("globex", &r.request_id());
    assert_eq!(rec["model"], MODEL, "{rec}");
    // Bedrock serves the path's model whatever the body names: a free-plan model named in the
    // body changes neither the policy's answer nor the model audited (and priced).
    let body = CONVERSE.replacen('{', r#"{"model":"gpt-4o-mini","#, 1);
    let r = post(
        proxy.shared_port,
        &converse_path(),
        &body,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
    );
    r.assert_refused(403, "policy_denied");
    assert!(origin.requests().is_empty());
    let rec = proxy.audit_record("globex", &r.request_id());
    assert_eq!(rec["model"], MODEL, "{rec}");
    // Every operation on the model is decided on it, not only the metered calls: a token count
    // (free, so never refused for the tenant's ceilings) is refused by the plan's rule too.
    let count = format!("/model/{}/count-tokens", MODEL.replace(':', "%3A"));
    let r = post(
        proxy.shared_port,
        &count,
        r#"{"input":{"converse":{"messages":[]}}}"#,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
    );
    r.assert_refused(403, "policy_denied");
    assert!(origin.requests().is_empty());
    let rec = proxy.audit_record("globex", &r.request_id());
    assert_eq!(rec["model"], MODEL, "{rec}");
    assert_eq!(
        rec["policy_ids"],
        serde_json::json!(["free-plan-models"]),
        "{rec}"
    );
}

/// An OpenAI call and a Bedrock call draw from one day budget: the ceiling is set so that both
/// fit and a third call's reservation does not, which only holds when both were counted.
#[test]
fn one_day_budget_across_openai_and_bedrock() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let chat = r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[]}"#;
    // Reserved: a token a body byte (1 micro-unit) plus the ceiling's output (2 each); settled:
    // 11 input and 7 output tokens, 25 micro-units, for either provider.
    let reserve_chat = chat.len() as u64 + 2 * 10;
    let reserve_converse = CONVERSE.len() as u64 + 2 * 50;
    let ceiling = 25 + reserve_converse;
    assert!(reserve_chat <= ceiling);
    let proxy = start_with(&origin, false, true, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(ceiling);
        // One route to both APIs: each call is priced by its model, in its provider's table.
        spec.tenants.routes.last_mut().unwrap().provider = None;
    });
    let openai = post(proxy.sidecar_port, "/v1/chat/completions", chat, "");
    assert_eq!(openai.status, 200, "{}", openai.body_text());
    let bedrock = post(proxy.sidecar_port, &converse_path(), CONVERSE, "");
    assert_eq!(bedrock.status, 200, "{}", bedrock.body_text());
    for (r, reserved, model) in [
        (&openai, reserve_chat, "gpt-4o-mini"),
        (&bedrock, reserve_converse, MODEL),
    ] {
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["model"], model, "{rec}");
        assert_eq!(rec["reserved"]["cost_micros"], reserved, "{rec}");
        assert_eq!(rec["settled"]["cost_micros"], 25, "{rec}");
    }
    // 50 spent: another Bedrock call's reservation no longer fits.
    let third = post(proxy.sidecar_port, &converse_path(), CONVERSE, "");
    third.assert_refused(429, "budget_exhausted");
    assert_eq!(third.json()["error"]["ceiling"], "day");
    assert_eq!(origin.requests().len(), 2, "the refused call was not sent");
    // globex's budget is its own.
    let globex = token_for("globex", "agent");
    let g = post(
        proxy.shared_port,
        &converse_path(),
        CONVERSE,
        &format!("Proxy-Authorization: Bearer {globex}\r\n"),
    );
    assert_eq!(g.status, 200, "{}", g.body_text());
}

/// The mounted-files backend takes `kind = "aws_sigv4"`: the file holds the key, the proxy signs.
/// A file that is not a key refuses the load at `check`, naming the file, never its content.
#[test]
fn mounted_aws_keys_sign_and_malformed_ones_are_rejected_without_their_value() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let mut spec = ProxySpec::default().with_prices();
    spec.tenants.routes.push(config::Route::new(
        "llm",
        "/llm/",
        format!("http://127.0.0.1:{}/", origin.port),
    ));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    let mut aws = config::FileCredential::header("acme", "aws", &["127.0.0.1"]);
    aws.kind = Some("aws_sigv4".into());
    credentials.files.push(aws);
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(
            dir.join("secrets/acme/aws"),
            aws_key("AKIDACME", ACME_SECRET, Some(ACME_TOKEN), "us-east-1"),
        )
        .unwrap();
    });
    let r = post(proxy.sidecar_port, &converse_path(), CONVERSE, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = origin.requests();
    assert_eq!(
        (seen[0]["ok"].as_bool(), seen[0]["akid"].as_str()),
        (Some(true), Some("AKIDACME"))
    );

    // A value that is not a key (here a static-looking secret): `check` names the file.
    std::fs::write(proxy.path("secrets/acme/aws"), "sk-not-an-aws-key-canary").unwrap();
    let (code, out) = proxy_cli(
        &proxy.path(""),
        &["check", "--config", "tenant-proxy.toml"],
        "",
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("secrets/acme/aws") && out.contains("aws_sigv4"),
        "{out}"
    );
    assert!(!out.contains("canary"), "the value leaked: {out}");
}

/// A request to an MCP server with a session parameter in its query is signed over the path
/// the server gets (its own session id), not the sealed one the agent sent: the session id is
/// opened before the signature, never after it.
#[test]
fn an_mcp_request_is_signed_over_the_opened_session_path() {
    let origin = BedrockOrigin::start(&origin_keys(), None);
    let proxy = start_with(&origin, false, true, |spec| {
        spec.tenants.routes.push(config::Route::new(
            "tools",
            "/tools/",
            // (Under `/acme/`, which acme's `http` policy permits.)
            format!("http://127.0.0.1:{}/acme/", origin.port),
        ));
        spec.tenants.mcp = Some(config::Mcp {
            max_message_bytes: Some(65536),
            servers: vec![config::McpServer::by_route("tools", "tools")],
            session_key_file: Some("mcp-session.key".into()),
        });
        // Any file of at least 32 bytes is a session key; the test seals with it too.
        spec.copies
            .push(("tests/fixtures/prices.toml", "mcp-session.key"));
    });
    let key = tenant_proxy::mcp::session::SessionKey::read(&proxy.path("mcp-session.key"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sealed = key.binding("acme", "bot", "tools").seal("s-1");
    let body = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST /tools/mcp?session_id={sealed} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nAuthorization: $CRED{{aws}}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    let got = origin
        .requests()
        .pop()
        .unwrap_or_else(|| panic!("nothing arrived: {} {}", r.status, r.body_text()));
    assert_eq!(got["path"], "/acme/mcp?session_id=s-1", "{got}");
    assert_eq!(got["ok"], true, "{got}: {}", r.body_text());
}
