//! Bodies that hide the model: toward an LLM destination (a route with a provider, or a known
//! LLM API path on any host) a body is classified (UTF-8 BOM removed; gzip, deflate, br and
//! zstd decoded within `max_body_bytes`) or refused (415/400/413), never forwarded with its
//! model unseen. What the upstream receives is what was decided on: the decoded body, without
//! `Content-Encoding`. A recording origin shows what arrived; the audit record what was decided.
//!
//! Policies: the test set (`free-plan-models`: globex, on the free plan, may only name
//! `gpt-4o-mini*`) plus a permit for the origin's `/v1/` and `/audio/` paths in forward mode.

use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::*;

/// A 1 MiB body cap, so a bomb is cheap to build.
const CAP: usize = 1 << 20;

struct Env {
    proxy: Proxy,
    origin: Origin,
    globex: String,
}

fn start() -> Env {
    start_with(|_| {})
}

/// [`start`], with the changes `configure` makes to the proxy's configuration.
fn start_with(configure: impl FnOnce(&mut ProxySpec)) -> Env {
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_prices();
    spec.llm_route(origin.port).provider = Some("openai".into());
    // A cost ceiling, so an LLM call reserves before it is forwarded.
    spec.tenant("globex").limits().cost_per_day_micros = Some(1_000_000_000);
    spec.config.limits.max_body_bytes = Some(1_048_576);
    configure(&mut spec);
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::write(
                dir.join("policies/global/llm-paths.cedar"),
                "@id(\"origin-llm-paths\")\npermit (principal, action == TenantProxy::Action::\"http\", resource)\nwhen { context.host == \"127.0.0.1\" && (context.path like \"/v1/*\" || context.path like \"/audio/*\") };\n",
            )
            .unwrap();
    });
    Env {
        proxy,
        origin,
        globex: token_for("globex", "agent"),
    }
}

/// How the body reaches the LLM.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// `/llm/chat/completions`: a route with a provider.
    Route,
    /// `POST http://127.0.0.1:PORT/v1/chat/completions`: a known LLM API path, forward mode.
    Forward,
    /// `POST http://127.0.0.1:PORT{path}`, forward mode.
    ForwardTo(&'static str),
}

/// POSTs `body` as globex with extra header lines; the response.
fn post(env: &Env, way: Way, body: &[u8], headers: &str) -> Response {
    let target = match way {
        Way::Route => "/llm/chat/completions".to_string(),
        Way::Forward => format!("http://127.0.0.1:{}/v1/chat/completions", env.origin.port),
        Way::ForwardTo(path) => format!("http://127.0.0.1:{}{path}", env.origin.port),
    };
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        env.origin.port,
        env.globex,
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw_request_bytes(env.proxy.shared_port, &raw).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

const BOM: &[u8] = b"\xEF\xBB\xBF";
const BIG_MODEL: &[u8] = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const MINI: &[u8] =
    br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;

/// Every model a call uses is decided, not only the one it runs: a Realtime session's
/// transcription model, a Bedrock inline agent's collaborators', a gateway's fallback models.
/// One the policy refuses refuses the call (by the rule that refused it), and the record names
/// it.
#[test]
fn every_model_a_call_names_is_decided() {
    let env = start();
    for (name, body) in [
        (
            "a transcription model",
            &br#"{"model":"gpt-4o-mini","input_audio_transcription":{"model":"gpt-4o"}}"#[..],
        ),
        (
            "a collaborator's model",
            br#"{"foundationModel":"gpt-4o-mini","collaborators":[{"foundationModel":"gpt-4o-mini"},{"foundationModel":"gpt-4o"}]}"#,
        ),
        (
            "a collaborator's prompt override",
            br#"{"foundationModel":"gpt-4o-mini","collaborators":[{"promptOverrideConfiguration":{"promptConfigurations":[{"foundationModel":"gpt-4o"}]}}]}"#,
        ),
        // A gateway may answer with any model of its fallback list.
        (
            "OpenRouter's fallback list",
            br#"{"model":"gpt-4o-mini","models":["gpt-4o-mini","gpt-4o"],"max_tokens":5}"#,
        ),
        (
            "LiteLLM's fallbacks",
            br#"{"model":"gpt-4o-mini","fallbacks":["gpt-4o"],"max_tokens":5}"#,
        ),
    ] {
        let r = post(&env, Way::Route, body, "Content-Type: application/json\r\n");
        r.assert_refused(403, "policy_denied");
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(record["model"], "gpt-4o-mini", "{name}: {record}");
        assert_eq!(record["other_models"], serde_json::json!(["gpt-4o"]), "{name}: {record}");
        assert_eq!(
            record["policy_ids"],
            serde_json::json!(["free-plan-models"]),
            "{name}: {record}"
        );
    }
    assert_eq!(env.origin.count(), 0, "nothing refused was forwarded");
    // Models the plan allows pass, and the record lists them.
    let allowed = br#"{"model":"gpt-4o-mini","max_tokens":5,"input_audio_transcription":{"model":"gpt-4o-mini-transcribe"}}"#;
    let r = post(
        &env,
        Way::Route,
        allowed,
        "Content-Type: application/json\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let record = env.proxy.audit_record("globex", &r.request_id());
    assert_eq!(
        record["other_models"],
        serde_json::json!(["gpt-4o-mini-transcribe"]),
        "{record}"
    );
    assert_eq!(env.origin.count(), 1);
    // A call that names one model has no `other_models`.
    let r = post(&env, Way::Route, MINI, "Content-Type: application/json\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let record = env.proxy.audit_record("globex", &r.request_id());
    assert!(record.get("other_models").is_none(), "{record}");
}

/// A model a request addresses is decided whatever the request asks of it, not only for the
/// calls the proxy meters: a Gemini long-running generation or batch names its model in the path
/// (`…/models/{id}:{method}`), an Anthropic Message Batch in each of its requests. The tenant lets
/// such work through (`unmetered_calls = "allow"`), so only the policy stands between it and a
/// model its plan does not have.
#[test]
fn the_model_a_job_names_is_decided() {
    let env = start_with(|spec| {
        spec.tenants.llm_providers.push(config::LlmProvider::new(
            "gateway",
            &["127.0.0.1"],
            "openai_compatible",
        ));
        spec.tenant("globex").limits().unmetered_calls = Some(config::Unmetered::Allow);
    });
    let json = "Content-Type: application/json\r\n";
    for (path, body, model) in [
        (
            "/v1/models/gemini-2.5-pro:predictLongRunning",
            &br#"{"instances":[{"prompt":"x"}]}"#[..],
            Some("gemini-2.5-pro"),
        ),
        (
            "/v1/models/gemini-2.5-pro:batchGenerateContent",
            br#"{"batch":{}}"#,
            Some("gemini-2.5-pro"),
        ),
        (
            "/v1/messages/batches",
            br#"{"requests":[{"custom_id":"a","params":{"model":"gpt-4o-mini"}},{"custom_id":"b","params":{"model":"claude-3-opus"}}]}"#,
            None,
        ),
        // A job that names its model in its API's own field: Bedrock's batch inference.
        (
            "/v1/model-invocation-job",
            br#"{"jobName":"j","modelId":"anthropic.claude-3-opus-v1:0","inputDataConfig":{}}"#,
            Some("anthropic.claude-3-opus-v1:0"),
        ),
    ] {
        let r = post(&env, Way::ForwardTo(path), body, json);
        r.assert_refused(403, "policy_denied");
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(
            record["policy_ids"],
            serde_json::json!(["free-plan-models"]),
            "{path}: {record}"
        );
        match model {
            Some(model) => assert_eq!(record["model"], model, "{path}: {record}"),
            None => assert!(
                record["other_models"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == "claude-3-opus")),
                "{path}: {record}"
            ),
        }
    }
    // A decoy `model` beside the job's own field: which one runs is the server's choice.
    let r = post(
        &env,
        Way::ForwardTo("/v1/model-invocation-job"),
        br#"{"model":"gpt-4o-mini","modelId":"anthropic.claude-3-opus-v1:0"}"#,
        json,
    );
    r.assert_refused(400, "bad_request");
    assert_eq!(env.origin.count(), 0, "nothing refused was forwarded");
    // A batch of models the plan has goes on.
    let r = post(
        &env,
        Way::ForwardTo("/v1/messages/batches"),
        br#"{"requests":[{"custom_id":"a","params":{"model":"gpt-4o-mini"}}]}"#,
        json,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(env.origin.count(), 1);
    // The model a path addresses is for policy and the record: work the tenant lets through
    // unmetered (a long-running generation) and a token count (free) are not priced by it, so
    // a model the price table does not have is no refusal.
    for path in [
        "/v1/models/gpt-4o-mini-video-preview:predictLongRunning",
        "/v1/models/gpt-4o-mini-video-preview:countTokens",
    ] {
        let r = post(&env, Way::ForwardTo(path), br#"{"instances":[]}"#, json);
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(record["model"], "gpt-4o-mini-video-preview", "{record}");
    }
    assert_eq!(env.origin.count(), 3);
}

#[test]
fn a_hidden_model_is_seen_and_decided() {
    let env = start();
    for way in [Way::Route, Way::Forward] {
        // Each of these hid `gpt-4o` (not on globex's plan) and was forwarded with model null.
        let hidden: Vec<(&str, Vec<u8>, &str)> = vec![
            ("json behind a BOM", [BOM, BIG_MODEL].concat(), "Content-Type: application/json\r\n"),
            ("BOM as text/plain", [BOM, BIG_MODEL].concat(), "Content-Type: text/plain\r\n"),
            ("gzip", gzip(BIG_MODEL), "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"),
            ("deflate", deflate(BIG_MODEL), "Content-Encoding: deflate\r\n"),
            ("br", br(BIG_MODEL), "Content-Encoding: br\r\n"),
            ("zstd", zstd(BIG_MODEL), "Content-Encoding: zstd\r\n"),
            ("gzip inside br", br(&gzip(BIG_MODEL)), "Content-Encoding: gzip, br\r\n"),
            ("form", b"model=gpt-4o&prompt=hi".to_vec(), "Content-Type: application/x-www-form-urlencoded\r\n"),
            (
                "multipart",
                b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o\r\n--XX--\r\n".to_vec(),
                "Content-Type: multipart/form-data; boundary=XX\r\n",
            ),
        ];
        for (name, body, headers) in hidden {
            let r = post(&env, way, &body, headers);
            r.assert_refused(403, "policy_denied");
            let record = env.proxy.audit_record("globex", &r.request_id());
            assert_eq!(record["model"], "gpt-4o", "{way:?}, {name}: {record}");
            assert_eq!(
                record["policy_ids"],
                serde_json::json!(["free-plan-models"]),
                "{name}"
            );
        }
        assert_eq!(
            env.origin.count(),
            0,
            "{way:?}: nothing hidden was forwarded"
        );
    }
    // acme's partition holds none of it.
    assert!(env.proxy.audit_records("acme").is_empty());
}

/// The Audio API's paths are LLM calls on any host, as the chat and Images APIs' are: an
/// OpenAI-compatible server that no route or `[[llm_provider]]` declares still has the model
/// of its upload form read and decided, and the call reserved (globex has a cost ceiling).
#[test]
fn an_audio_calls_model_is_decided_on_any_host() {
    let env = start();
    let upload = |model: &str| {
        format!(
            "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--XX--\r\n"
        )
        .into_bytes()
    };
    let form = "Content-Type: multipart/form-data; boundary=XX\r\n";
    let json = "Content-Type: application/json\r\n";
    let speech = |model: &str| format!(r#"{{"model":"{model}","input":"hi","voice":"alloy"}}"#);
    for (path, dear, cheap, headers) in [
        (
            "/v1/audio/transcriptions",
            upload("gpt-4o"),
            upload("gpt-4o-mini"),
            form,
        ),
        (
            "/v1/audio/translations",
            upload("gpt-4o"),
            upload("gpt-4o-mini"),
            form,
        ),
        // Unversioned, as speech servers serve it too.
        (
            "/audio/transcriptions",
            upload("gpt-4o"),
            upload("gpt-4o-mini"),
            form,
        ),
        (
            "/v1/audio/speech",
            speech("gpt-4o").into_bytes(),
            speech("gpt-4o-mini").into_bytes(),
            json,
        ),
    ] {
        let r = post(&env, Way::ForwardTo(path), &dear, headers);
        r.assert_refused(403, "policy_denied");
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(
            (&record["model"], &record["policy_ids"]),
            (
                &Value::from("gpt-4o"),
                &serde_json::json!(["free-plan-models"])
            ),
            "{path}: {record}"
        );
        let r = post(&env, Way::ForwardTo(path), &cheap, headers);
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(record["model"], "gpt-4o-mini", "{path}: {record}");
        assert!(
            record["reserved"]["cost_micros"].as_u64().unwrap() > 0,
            "{path}: the call is reserved against the ceiling: {record}"
        );
    }
    assert_eq!(
        env.origin.count(),
        4,
        "only the allowed calls were forwarded"
    );
}

#[test]
fn what_is_forwarded_is_the_decoded_body_that_was_decided_on() {
    let env = start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "gzip",
            gzip(MINI),
            "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
        ),
        (
            "br",
            br(MINI),
            "Content-Type: application/json\r\nContent-Encoding: br\r\n",
        ),
        (
            "zstd",
            zstd(MINI),
            "Content-Type: application/json\r\nContent-Encoding: zstd\r\n",
        ),
        (
            "BOM",
            [BOM, MINI].concat(),
            "Content-Type: application/json\r\n",
        ),
    ];
    for way in [Way::Route, Way::Forward] {
        for (name, body, headers) in &cases {
            let before = env.origin.count();
            let r = post(&env, way, body, headers);
            assert_eq!(r.status, 200, "{way:?}, {name}: {}", r.body_text());
            let seen = env.origin.requests();
            assert_eq!(seen.len(), before + 1);
            let got = seen.last().unwrap();
            assert_eq!(got.target, "/v1/chat/completions", "{name}");
            assert_eq!(got.body, MINI, "{way:?}, {name}: decoded, BOM removed");
            assert!(
                !got.headers.contains_key("content-encoding"),
                "{name}: {:?}",
                got.headers
            );
            assert_eq!(
                got.headers["content-length"],
                MINI.len().to_string(),
                "{name}"
            );
            let record = env.proxy.audit_record("globex", &r.request_id());
            assert_eq!(record["model"], "gpt-4o-mini", "{name}");
            // Reserved before it was forwarded: a body byte a token, plus its max_tokens.
            assert_eq!(
                record["reserved"]["tokens"],
                MINI.len() as u64 + 5,
                "{name}: {record}"
            );
            assert_eq!(record["bytes_in"], MINI.len(), "{name}");
            assert_eq!(
                record["request_body_sha256"],
                hex::encode(Sha256::digest(MINI)),
                "{name}"
            );
        }
    }

    // The same with curl, forward mode: `--data-binary` of a gzip file.
    let file = env.proxy.path("mini.json.gz");
    std::fs::write(&file, gzip(MINI)).unwrap();
    let before = env.origin.count();
    let (status, body) = curl(&[
        "-x",
        &format!("http://127.0.0.1:{}", env.proxy.shared_port),
        "--proxy-header",
        &format!("Proxy-Authorization: Bearer {}", env.globex),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://127.0.0.1:{}/v1/chat/completions", env.origin.port),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.origin.requests()[before].body, MINI);
}

#[test]
fn a_body_that_cannot_be_read_is_refused_not_forwarded() {
    let env = start();
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(
        bomb.len() < CAP / 8,
        "the bomb itself is small: {}",
        bomb.len()
    );
    let mut corrupt = gzip(MINI);
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xFF;
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "not JSON",
            b"use gpt-4o please".to_vec(),
            "Content-Type: text/plain\r\n",
            415,
            "unsupported_media_type",
        ),
        (
            "no type",
            b"model: gpt-4o".to_vec(),
            "",
            415,
            "unsupported_media_type",
        ),
        (
            "unknown coding",
            MINI.to_vec(),
            "Content-Encoding: compress\r\n",
            415,
            "unsupported_media_type",
        ),
        (
            "corrupt gzip",
            corrupt,
            "Content-Encoding: gzip\r\n",
            400,
            "bad_request",
        ),
        (
            "says JSON, is not",
            b"model=gpt-4o".to_vec(),
            "Content-Type: application/json\r\n",
            400,
            "bad_request",
        ),
        (
            "model twice in a form",
            b"model=gpt-4o-mini&model=gpt-4o".to_vec(),
            "Content-Type: application/x-www-form-urlencoded\r\n",
            400,
            "bad_request",
        ),
        (
            "decompression bomb",
            bomb,
            "Content-Encoding: gzip\r\n",
            413,
            "request_body_too_large",
        ),
    ];
    for way in [Way::Route, Way::Forward] {
        for (name, body, headers, status, code) in &cases {
            let r = post(&env, way, body, headers);
            let refusal = r.assert_refused(*status, code);
            assert_eq!(refusal["error"]["request_id"], r.request_id().as_str());
            let record = env.proxy.audit_record("globex", &r.request_id());
            assert_eq!(record["reason"], *code, "{way:?}, {name}");
            assert_eq!(record["decision"], "deny", "{name}");
        }
    }
    assert_eq!(env.origin.count(), 0, "nothing unread was forwarded");
}

#[test]
fn other_destinations_get_their_bodies_unchanged() {
    let env = start();
    // Not an LLM destination (no provider, no LLM API path): the proxy does not decode.
    let gz = gzip(b"{\"any\":\"thing\"}");
    let mut raw = format!(
        "POST http://127.0.0.1:{port}/public/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Bearer {}\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env.globex,
        gz.len(),
        port = env.origin.port
    )
    .into_bytes();
    raw.extend_from_slice(&gz);
    let r = raw_request_bytes(env.proxy.shared_port, &raw).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let got = env.origin.requests().pop().unwrap();
    assert_eq!(got.body, gz);
    assert_eq!(got.headers["content-encoding"], "gzip");
    let record = env.proxy.audit_record("globex", &r.request_id());
    assert_eq!(record["model"], Value::Null);
}

/// A decoded body is held against the body memory at its decoded size: `gzip, gzip` makes a
/// few hundred bytes of a body near the cap, which counted its bytes on the wire, so one
/// tenant's requests held thousands of times its share. Past the share a body is refused
/// (`body_memory_limit`, audited, nothing forwarded); within it, served as before.
#[test]
fn a_decoded_body_is_held_at_its_decoded_size() {
    let env = start_with(|spec| {
        spec.config.limits.max_buffered_body_bytes_per_tenant = Some(1_048_576);
    });
    let body = format!(
        r#"{{"model":"gpt-4o-mini","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(700_000)
    );
    let twice = gzip(&gzip(body.as_bytes()));
    assert!(twice.len() < 4_000, "{}", twice.len());
    let post_to = |path: &str| {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Bearer {}\r\nContent-Encoding: gzip, gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            env.origin.port,
            env.globex,
            twice.len()
        )
        .into_bytes();
        raw.extend_from_slice(&twice);
        raw_request_bytes(env.proxy.shared_port, &raw).unwrap()
    };
    std::thread::scope(|s| {
        // The origin holds this one for 3 s, and with it 700 kB of globex's 1 MiB share.
        let first = s.spawn(|| post_to("/llm/slow/chat/completions"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while env.origin.count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the first call never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let r = post_to("/llm/chat/completions");
        let refusal = r.assert_refused(429, "body_memory_limit");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1048576 bytes"),
            "{refusal}"
        );
        let record = env.proxy.audit_record("globex", &r.request_id());
        assert_eq!(record["reason"], "body_memory_limit", "{record}");
        assert_eq!(env.origin.count(), 1, "nothing refused was forwarded");
        let first = first.join().unwrap();
        assert_eq!(first.status, 200, "{}", first.body_text());
    });
    assert!(env
        .proxy
        .metrics()
        .contains("tenant_proxy_overload_refusals_total{reason=\"tenant_body_memory\"} 1"));
    // Once the first call gave its share back, the same body is decoded, decided and forwarded.
    let r = post_to("/llm/chat/completions");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(env.origin.requests()[1].body, body.as_bytes());
}
