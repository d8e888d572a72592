//! Cost ceilings, run budgets and mid-stream cuts end to end, with the in-memory limiter and
//! the mock LLM upstream from `loadtest/`: prices from a price table, refusals that name their
//! ceiling, streams cut with a final SSE error event that real SDKs understand, and
//! `tenant-proxy usage` reading one tenant's spend.

use std::time::Duration;

use crate::support::*;

/// A proxy with the test price table, an `llm` route to the mock, and the tenant settings
/// `configure` makes.
fn budget_proxy(mock: u16, configure: impl FnOnce(&mut ProxySpec)) -> Proxy {
    let mut spec = ProxySpec::default().with_prices();
    spec.llm_route(mock);
    configure(&mut spec);
    Proxy::start(spec)
}

#[test]
fn daily_cost_ceiling_refuses_with_the_ceiling_named_and_unpriced_models_are_refused() {
    let mock = start_mock();
    // 1 micro-unit an input token, 2 an output token (tests/fixtures/prices.toml).
    let proxy = budget_proxy(mock, |spec| {
        let acme = spec.tenant("acme");
        acme.limits().cost_per_day_micros = Some(400);
        acme.time_zone = Some("Europe/Berlin".into());
    });
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    // Reserved: one token a body byte plus 50 output tokens; settled: the mock's usage.
    let reserve = body.len() as u64 + 2 * 50;
    let first = llm_chat(proxy.sidecar_port, body, "");
    assert_eq!(first.status, 200, "{}", first.body_text());
    let rec = proxy.audit_record("acme", &first.request_id());
    let usage = &rec["usage"];
    let expected_cost =
        usage["input_tokens"].as_u64().unwrap() + 2 * usage["output_tokens"].as_u64().unwrap();
    assert_eq!(
        rec["reserved"]["cost_micros"].as_u64(),
        Some(reserve),
        "{rec}"
    );
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(expected_cost),
        "{rec}"
    );
    let mut spent = expected_cost;
    let mut refused = None;
    for _ in 0..10 {
        let r = llm_chat(proxy.sidecar_port, body, "");
        let rec = proxy.audit_record("acme", &r.request_id());
        if r.status == 200 {
            spent += rec["settled"]["cost_micros"].as_u64().unwrap();
            continue;
        }
        refused = Some((r, rec));
        break;
    }
    let (r, rec) = refused.expect("the day's ceiling refuses eventually");
    r.assert_refused(429, "budget_exhausted");
    assert_eq!(r.json()["error"]["ceiling"], "day");
    assert_eq!(r.json()["error"]["request_id"], r.request_id());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=25 * 3600).contains(&retry),
        "retry at Berlin midnight, not {retry}s"
    );
    assert_eq!(
        (rec["reason"].as_str(), rec["ceiling"].as_str()),
        (Some("budget_exhausted"), Some("day"))
    );
    assert!(
        spent + reserve > 400 && spent <= 400,
        "refused only when the reservation would cross: {spent}"
    );

    // A model missing from the price table is refused (the table says `refuse`), audited.
    let r = llm_chat(
        proxy.sidecar_port,
        r#"{"model":"mystery-1","messages":[]}"#,
        "",
    );
    r.assert_refused(403, "model_not_priced");
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["reason"],
        "model_not_priced"
    );

    // Cost is counted per tenant in metrics.
    let metrics = proxy.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tenant_proxy_llm_cost_micros_total{tenant=\"acme\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(),
        spent
    );
    assert!(!metrics.contains("tenant_proxy_llm_cost_micros_total{tenant=\"globex\"}"));
}

/// POSTs `body` to `path` on the shared listener with `bearer`'s token, the mock told to write
/// `tokens` tokens 1 ms apart: the status and what curl read as it streamed.
fn stream_as(proxy: &Proxy, bearer: &str, path: &str, body: &str, tokens: u32) -> (u16, String) {
    curl(&[
        "-N",
        "-H",
        &format!("Proxy-Authorization: Bearer {bearer}"),
        "-H",
        &format!("x-mock-output-tokens: {tokens}"),
        "-H",
        "x-mock-chunk-delay-ms: 1",
        "-H",
        "content-type: application/json",
        "--data",
        body,
        &format!("http://127.0.0.1:{}{path}", proxy.shared_port),
    ])
}

fn run_token(run_id: &'static str, budget: RunBudget) -> String {
    token(TokenOpts {
        run_id: Some(run_id),
        run_budget: Some(budget),
        ..Default::default()
    })
}

#[test]
fn a_stream_that_outruns_its_run_budget_is_cut_with_a_final_error_event() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().assumed_max_tokens = Some(100);
    });
    let budget = RunBudget {
        tokens: Some(600),
        ..RunBudget::default()
    };
    let bearer = run_token("run-stream", budget);
    // No max_tokens, and a model that would write 3000 tokens, one per event, 1 ms apart.
    let code = format!(
        r#"
import json, openai
client = openai.OpenAI(base_url="http://127.0.0.1:{port}/llm", api_key="unused",
    default_headers={{"Proxy-Authorization": "Bearer {bearer}", "x-mock-output-tokens": "3000", "x-mock-chunk-delay-ms": "1"}},
    max_retries=0)
chunks = 0
try:
    for event in client.chat.completions.create(model="gpt-4o-mini", stream=True,
            messages=[{{"role": "user", "content": "write forever"}}]):
        chunks += 1
    print(json.dumps({{"chunks": chunks, "error": None}}))
except openai.APIError as e:
    print(json.dumps({{"chunks": chunks, "error": str(e)}}))
"#,
        port = proxy.shared_port
    );
    let out: serde_json::Value = serde_json::from_str(python(&code, &[]).trim()).unwrap();
    let chunks = out["chunks"].as_u64().unwrap();
    assert!(
        chunks > 50 && chunks < 3000,
        "the stream ran, then was cut: {out}"
    );
    assert!(
        out["error"].as_str().unwrap().contains("budget"),
        "the SDK raised the cut: {out}"
    );

    // curl sees a complete chunked response that ends with the error event.
    let (status, body) = stream_as(
        &proxy,
        &bearer,
        "/llm/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        3000,
    );
    // The run has little left, so this one is either refused up front or cut at once.
    assert!(status == 200 || status == 429, "{status} {body}");
    if status == 200 {
        assert!(
            body.trim_end().ends_with('}') && body.contains("event: error"),
            "{body}"
        );
        assert!(!body.contains("[DONE]"), "{body}");
    }

    let recs = proxy.wait_audit_records("acme", 2);
    let cut = recs
        .iter()
        .find(|r| r["stream_cut"] == true)
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(
        (cut["reason"].as_str(), cut["ceiling"].as_str()),
        (Some("budget_exhausted"), Some("run"))
    );
    assert_eq!(cut["status"], 200);
    // The run never spent past its budget: every token settled is covered by it.
    let settled: u64 = recs
        .iter()
        .filter_map(|r| r["settled"]["tokens"].as_u64())
        .sum();
    assert!(settled <= 600, "run spent {settled} of 600: {recs:?}");
    assert!(proxy
        .metrics()
        .contains("tenant_proxy_stream_cuts_total{tenant=\"acme\"}"));

    // With the budget spent, the next call of the run is refused before it starts, and says
    // no retry will help; a header cannot move the call to a fresh run.
    let r = llm_chat(
        proxy.shared_port,
        r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[]}"#,
        &format!("Proxy-Authorization: Bearer {bearer}\r\nX-Run-Id: fresh-run\r\n"),
    );
    r.assert_refused(429, "budget_exhausted");
    assert_eq!(r.json()["error"]["ceiling"], "run");
    assert!(r.header("retry-after").is_none());
    // A new token for the same run cannot reset it either.
    let again = run_token(
        "run-stream",
        RunBudget {
            tokens: Some(600),
            ..RunBudget::default()
        },
    );
    let r = llm_chat(
        proxy.shared_port,
        r#"{"model":"gpt-4o-mini","max_tokens":100,"messages":[]}"#,
        &format!("Proxy-Authorization: Bearer {again}\r\n"),
    );
    assert_eq!(r.code(), "budget_exhausted");
}

/// A ceiling in another API's spelling caps nothing: chat-completions servers ignore the
/// Responses API's `max_output_tokens` and Gemini's `generationConfig.maxOutputTokens`, so a
/// chat call that sets only those is reserved and guarded as one that sets no ceiling, and its
/// stream is cut at the run's budget instead of spending past it.
#[test]
fn a_ceiling_the_calls_api_does_not_read_does_not_cap_it() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().assumed_max_tokens = Some(100);
    });
    for (run, ceiling) in [
        ("run-foreign-responses", r#""max_output_tokens":1"#),
        (
            "run-foreign-gemini",
            r#""generationConfig":{"maxOutputTokens":1}"#,
        ),
    ] {
        let bearer = run_token(
            run,
            RunBudget {
                tokens: Some(600),
                ..RunBudget::default()
            },
        );
        // The mock ignores the field, as a chat server does, and writes 3000 tokens.
        let (status, body) = stream_as(
            &proxy,
            &bearer,
            "/llm/chat/completions",
            &format!(r#"{{"model":"gpt-4o-mini","stream":true,{ceiling},"messages":[]}}"#),
            3000,
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("event: error") && !body.contains("[DONE]"),
            "{ceiling}: the stream is cut at the run's budget: {body}"
        );
    }
    let recs = proxy.wait_audit_records("acme", 4);
    let requests: Vec<_> = recs.iter().filter(|r| r["event"] == "request").collect();
    assert_eq!(requests.len(), 2, "{recs:?}");
    for rec in requests {
        assert_eq!(rec["stream_cut"], true, "{rec}");
        assert!(
            rec["settled"]["tokens"].as_u64().unwrap() <= 600,
            "the run never spent past its budget: {rec}"
        );
    }
}

/// An answer the proxy has no usage reader for (Ollama's own `/api/chat` NDJSON stream) to a
/// call whose output nothing caps is bounded by its bytes (every token is at least one): it is
/// guarded and settled by them, so it is cut where the run's budget ends instead of running on
/// past it at the price of its reservation.
#[test]
fn an_answer_no_meter_reads_is_bounded_by_its_bytes() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        let route = spec.tenants.routes.iter_mut().find(|r| r.name == "llm");
        route.unwrap().provider = Some("openai".into());
        spec.tenant("acme").limits().assumed_max_tokens = Some(100);
    });
    let bearer = run_token(
        "run-ndjson",
        RunBudget {
            tokens: Some(2_000),
            ..RunBudget::default()
        },
    );
    // 3000 lines of about 80 bytes, 1 ms apart: far past what the run may spend.
    let (_, body) = stream_as(
        &proxy,
        &bearer,
        "/llm/api/chat",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
        3000,
    );
    assert!(
        body.contains("\"content\"") && !body.contains("\"done\":true"),
        "the stream ran, then was cut short: {body}"
    );
    let recs = proxy.wait_audit_records("acme", 2);
    let rec = recs
        .iter()
        .find(|r| r["event"] == "request")
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(rec["stream_cut"], true, "{rec}");
    assert_eq!(
        (rec["reason"].as_str(), rec["ceiling"].as_str()),
        (Some("budget_exhausted"), Some("run")),
        "{rec}"
    );
    // Settled by the bytes generated: up to the budget and the one line that crossed it (the
    // upstream generated it; the client did not get it).
    let settled = rec["settled"]["tokens"].as_u64().unwrap();
    assert!(
        settled > 1_000 && settled <= 2_000 + 100,
        "settled by the bytes generated: {rec}"
    );
    assert!(settled >= body.len() as u64, "{rec}");
}

/// `n` completions are each generated up to `max_tokens`: all of them are reserved, so one call
/// cannot overshoot a ceiling by a factor of `n`; with two ceilings, the larger is reserved.
#[test]
fn every_completion_and_the_larger_ceiling_are_reserved() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().tokens_per_minute = Some(100_000);
    });
    for (body, output) in [
        (
            r#"{"model":"gpt-4o-mini","max_tokens":450,"n":20,"messages":[]}"#,
            450 * 20,
        ),
        (
            r#"{"model":"gpt-4o-mini","max_tokens":1,"max_completion_tokens":5000,"messages":[]}"#,
            5000,
        ),
    ] {
        let r = llm_chat(proxy.sidecar_port, body, "");
        assert_eq!(r.status, 200, "{}", r.body_text());
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(
            rec["reserved"]["tokens"].as_u64(),
            Some(body.len() as u64 + output),
            "{rec}"
        );
    }
}

/// Streams `body` from the mock (`tokens` deltas, `delay_ms` apart) through acme's sidecar,
/// reads `deltas` of them and hangs up.
fn read_deltas_then_leave(proxy: &Proxy, body: &str, tokens: u32, delay_ms: u32, deltas: usize) {
    use std::io::{BufRead, BufReader, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        sock,
        "POST /llm/chat/completions HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\nx-mock-output-tokens: {tokens}\r\nx-mock-chunk-delay-ms: {delay_ms}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(sock);
    let (mut line, mut read) = (String::new(), 0);
    while read < deltas {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        read += usize::from(line.contains("\"content\""));
    }
}

/// An answer to a call whose output no ceiling field caps is metered by reading it. An upstream
/// that compresses it anyway (the proxy asked for `identity`) would be settled at its
/// reservation however much it generated: while a token or cost ceiling applies such an answer
/// is withheld (`upstream_encoded`), and audited. A capped call's compressed answer, or one to a
/// tenant with no such ceiling, passes.
#[test]
fn a_compressed_answer_nothing_caps_is_withheld_while_a_ceiling_applies() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(10_000_000);
    });
    let gzip = "x-mock-content-encoding: gzip\r\n";
    let uncapped = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let r = llm_chat(proxy.sidecar_port, uncapped, gzip);
    r.assert_refused(502, "upstream_encoded");
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["reason"], "upstream_encoded", "{rec}");
    assert!(
        rec["settled"]["cost_micros"].as_u64().unwrap() > 0,
        "the upstream served it: {rec}"
    );
    // Capped: the ceiling bounds what it can cost, so it passes (settled at its reservation).
    let capped = r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[]}"#;
    let r = llm_chat(proxy.sidecar_port, capped, gzip);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // Not compressed: read and metered as usual.
    let r = llm_chat(proxy.sidecar_port, uncapped, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
}

/// An agent that hangs up on a stream just before its usage arrives was still served what it
/// read (and the provider bills it): the call keeps its whole reservation, it is not refunded.
#[test]
fn a_stream_the_client_leaves_before_its_usage_keeps_its_reservation() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().tokens_per_minute = Some(100_000);
    });
    let body = r#"{"model":"gpt-4o-mini","max_tokens":300,"stream":true,"messages":[]}"#;
    // Read the head and a few deltas, then hang up.
    read_deltas_then_leave(&proxy, body, 200, 5, 5);
    let recs = proxy.wait_audit_records("acme", 1);
    let rec = &recs[0];
    assert_eq!(rec["reason"], "client_closed", "{rec}");
    let reserved = rec["reserved"]["tokens"].as_u64().unwrap();
    assert!(reserved >= 300, "{rec}");
    assert_eq!(rec["settled"]["tokens"].as_u64(), Some(reserved), "{rec}");
}

/// `SIGTERM` with streams running: the proxy stops accepting, lets what finishes within the
/// drain time (`[server] grace_period`) finish, then cuts the rest. Every stream gets exactly
/// one record, the cut ones `shutdown` with their reservation settled (no usage arrived), and
/// the process exits soon after the drain time, its audit writer having written them all.
#[test]
fn streams_running_at_sigterm_finish_or_are_cut_and_each_is_recorded_and_settled() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::Instant;
    let mock = start_mock();
    let grace = Duration::from_secs(3);
    let mut proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().tokens_per_minute = Some(100_000);
        spec.config.server.grace_period = Some(grace);
    });
    let body = r#"{"model":"gpt-4o-mini","max_tokens":300,"stream":true,"messages":[]}"#;
    // A stream of `deltas` deltas 100 ms apart, read up to its first delta.
    let open = |deltas: u32| {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            sock,
            "POST /llm/chat/completions HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\nx-mock-output-tokens: {deltas}\r\nx-mock-chunk-delay-ms: 100\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(sock);
        let mut line = String::new();
        while !line.contains("\"content\"") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "no first delta");
        }
        reader
    };
    // A client half-way through its head, and one half-way through its body: the proxy cuts
    // both at the drain time, which is no fault of theirs.
    let mut half_head = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    half_head
        .write_all(b"POST /llm/chat/completions HTTP/1.1\r\nHost: llm\r\n")
        .unwrap();
    let mut half_body = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    write!(
        half_body,
        "POST /llm/chat/completions HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    // Three 10-second streams, and one of a second that finishes within the drain time (the
    // half-sent requests go first: on a loaded machine, sent last, one could still wait in the
    // listener's queue at the signal, where the drain closes it unseen).
    let long: Vec<_> = (0..3).map(|_| open(100)).collect();
    let short = open(10);
    // Every connection accepted before the signal.
    let accepted = Instant::now();
    while !proxy
        .metrics()
        .contains("tenant_proxy_connections_open{listener=\"sidecar\"} 6")
    {
        assert!(
            accepted.elapsed() < Duration::from_secs(10),
            "six connections never open: {}",
            proxy.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    proxy.sigterm();
    let sent = Instant::now();
    // Each stream read to its end: whether it finished (`[DONE]`) and when its last delta came.
    let read_out = |mut reader: BufReader<std::net::TcpStream>| {
        std::thread::spawn(move || {
            let (mut line, mut done, mut last) = (String::new(), false, sent);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return (done, last.duration_since(sent)),
                    Ok(_) => {
                        done |= line.contains("[DONE]");
                        if line.contains("\"content\"") {
                            last = Instant::now();
                        }
                    }
                }
            }
        })
    };
    let long: Vec<_> = long.into_iter().map(read_out).collect();
    let short = read_out(short);
    // New connections are refused once draining begins.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).is_err(),
        "a connection accepted while draining"
    );
    // Cut at the drain time; the test config gives the cut requests 1 s to record.
    let exited = proxy.wait_exit(grace + Duration::from_secs(3));
    let took = sent.elapsed();
    assert!(
        exited.is_some(),
        "still running {took:?} after SIGTERM; log:\n{}",
        proxy.log()
    );
    // Nothing listens any more, and the ready file no longer says otherwise.
    assert!(!proxy.path("ready.json").exists());
    let (short_done, _) = short.join().unwrap();
    assert!(
        short_done,
        "the short stream did not finish within the drain time"
    );
    for stream in long {
        let (done, last) = stream.join().unwrap();
        assert!(!done, "a 10-second stream finished");
        // It was served through the drain time, not dropped at the signal.
        assert!(
            last >= grace - Duration::from_millis(500),
            "last delta {last:?} after SIGTERM"
        );
    }
    let records: Vec<_> = proxy
        .audit_records("acme")
        .into_iter()
        .filter(|r| r["event"] == "request")
        .collect();
    let log = proxy.log();
    assert_eq!(records.len(), 6, "{records:#?}\n{log}");
    assert_eq!(
        records.iter().filter(|r| r["reason"] == "allowed").count(),
        1,
        "{records:#?}"
    );
    let cut: Vec<_> = records
        .iter()
        .filter(|r| r["reason"] == "shutdown")
        .collect();
    assert_eq!(cut.len(), 5, "{records:#?}");
    for rec in cut {
        assert_eq!(rec["decision"], "deny", "{rec}");
        if rec["reserved"].is_null() {
            // The half-sent requests: nothing reserved, nothing forwarded.
            continue;
        }
        let reserved = rec["reserved"]["tokens"].as_u64().unwrap();
        assert!(reserved >= 300, "{rec}");
        // Served and no usage reported: the whole reservation is spent, never refunded.
        assert_eq!(rec["settled"]["tokens"].as_u64(), Some(reserved), "{rec}");
    }
    // And its `request` log line (repeats of one reason may be summarized).
    assert!(log.contains(r#"reason="shutdown""#), "{log}");
}

/// A stream let finish past its reservation (`mid_stream = "finish"`, no `max_tokens`) whose
/// agent hangs up before the usage arrives is settled at its reservation plus the output the
/// proxy saw streamed past it, not at the reservation alone.
#[test]
fn a_stream_past_its_reservation_that_the_client_leaves_pays_for_what_it_streamed() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        let acme = spec.tenant("acme").limits();
        acme.tokens_per_minute = Some(1_000_000);
        acme.assumed_max_tokens = Some(20);
        acme.mid_stream = Some(config::MidStream::Finish);
    });
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    // 300 deltas (a token each), well past the 20 reserved, then hang up.
    read_deltas_then_leave(&proxy, body, 5000, 1, 300);
    let recs = proxy.wait_audit_records("acme", 1);
    let rec = &recs[0];
    assert_eq!(rec["reason"], "client_closed", "{rec}");
    assert!(rec["usage"].is_null(), "{rec}");
    let reserved = rec["reserved"]["tokens"].as_u64().unwrap();
    let settled = rec["settled"]["tokens"].as_u64().unwrap();
    assert_eq!(reserved, body.len() as u64 + 20, "{rec}");
    assert!(
        settled >= reserved + 300 - 20,
        "settled {settled} for 300 streamed tokens: {rec}"
    );
    assert!(
        rec["settled"]["cost_micros"].as_u64() > rec["reserved"]["cost_micros"].as_u64(),
        "{rec}"
    );
}

/// A response too large for the meter's copy (3 MB here) is still settled at the usage it
/// reports, not at a reservation that assumed far less output.
#[test]
fn a_response_past_the_copy_limit_is_settled_at_its_reported_usage() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(100_000_000);
    });
    let body = r#"{"model":"gpt-4o-mini","n":4,"messages":[]}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-content-bytes: 3000000\r\nx-mock-output-tokens: 640000\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 3_000_000);
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["usage"]["output_tokens"], 640_000, "{rec}");
    let input = rec["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(input + 2 * 640_000),
        "{rec}"
    );
    assert!(
        rec["reserved"]["cost_micros"].as_u64().unwrap() < 2 * 640_000,
        "the reservation assumed less: {rec}"
    );
}

/// The meter's copy of a JSON answer counts against the tenant's body memory share; one that
/// does not fit is not refused: its usage is read from the members that carry it, as past the
/// copy limit, and it is settled at that usage.
#[test]
fn a_response_past_the_body_memory_share_is_still_metered() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(100_000_000);
        spec.config.limits.max_body_bytes = Some(16_384);
        spec.config.limits.max_buffered_body_bytes_per_tenant = Some(32_768);
    });
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-content-bytes: 200000\r\nx-mock-output-tokens: 5000\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.body.len() > 200_000);
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["usage"]["output_tokens"], 5000, "{rec}");
    let input = rec["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(input + 2 * 5000),
        "{rec}"
    );
    // Nothing was refused for memory.
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_overload_refusals_total{reason=\"tenant_body_memory\"} 0"),
        "{metrics}"
    );
}

/// Prompt-cache writes are input: they count toward the token ceiling and cost their price
/// (here 3 micro-units a token against 1 for plain input), and a call's input is reserved at
/// that dearest price, since the agent decides what is written.
#[test]
fn prompt_cache_writes_are_charged_at_their_price() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(1_000_000);
    });
    let body = r#"{"model":"claude-cache-test","max_tokens":10,"messages":[]}"#;
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST /llm/messages HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-cache-write-tokens: 27000\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    let plain = r.json()["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(
        rec["usage"]["input_tokens"].as_u64(),
        Some(plain + 27_000),
        "{rec}"
    );
    assert_eq!(rec["usage"]["cache_write_input_tokens"], 27_000, "{rec}");
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(plain + 3 * 27_000 + 2 * 10),
        "{rec}"
    );
    assert_eq!(
        rec["settled"]["tokens"].as_u64(),
        Some(plain + 27_000 + 10),
        "{rec}"
    );
    assert_eq!(
        rec["reserved"]["cost_micros"].as_u64(),
        Some(3 * body.len() as u64 + 2 * 10),
        "{rec}"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics
            .contains(r#"tenant_proxy_llm_tokens_total{kind="cache_write",tenant="acme"} 27000"#),
        "{metrics}"
    );
}

/// Hosted tool calls are billed per call on top of the tokens: a call whose response reports
/// web or file searches is settled at each one's price more (the model's `web_search` and
/// `file_search`), counts them in its audit record and metric, and the tenant's spend shows it.
/// Anthropic reports its searches in the usage; the Responses API as output items.
#[test]
fn hosted_tool_calls_are_charged_at_their_price() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(1_000_000);
    });
    let call = |path: &str, body: &str, web: u64, file: u64| {
        raw_request(
            proxy.sidecar_port,
            &format!(
                "POST /llm/{path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nx-mock-web-searches: {web}\r\nx-mock-file-searches: {file}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .unwrap()
    };
    let messages = r#"{"model":"claude-cache-test","max_tokens":10,"messages":[],"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}]}"#;
    let r = call("messages", messages, 3, 0);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    let input = r.json()["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(rec["usage"]["web_searches"], 3, "{rec}");
    assert!(rec["usage"].get("file_searches").is_none(), "{rec}");
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(input + 2 * 10 + 3 * 1_000),
        "{rec}"
    );
    // Searches are no tokens.
    assert_eq!(rec["settled"]["tokens"].as_u64(), Some(input + 10), "{rec}");
    // A call that searched nothing shows no searches.
    let none = call("messages", messages, 0, 0);
    let rec = proxy.audit_record("acme", &none.request_id());
    assert!(rec["usage"].get("web_searches").is_none(), "{rec}");
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(input + 2 * 10),
        "{rec}"
    );
    // The Responses API: each `web_search_call` item at gpt-4o-mini's `web_search` (1,000),
    // each `file_search_call` at its `file_search` (300).
    let responses = r#"{"model":"gpt-4o-mini","max_output_tokens":7,"input":"hi","tools":[{"type":"web_search"},{"type":"file_search","vector_store_ids":["vs_1"]}]}"#;
    let r = call("responses", responses, 2, 3);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    let responses_input = r.json()["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(rec["usage"]["web_searches"], 2, "{rec}");
    assert_eq!(rec["usage"]["file_searches"], 3, "{rec}");
    let responses_cost = responses_input + 2 * 7 + 2 * 1_000 + 3 * 300;
    assert_eq!(
        rec["settled"]["cost_micros"].as_u64(),
        Some(responses_cost),
        "{rec}"
    );
    assert_eq!(
        rec["settled"]["tokens"].as_u64(),
        Some(responses_input + 7),
        "{rec}"
    );
    let metrics = proxy.metrics();
    for series in [
        r#"tenant_proxy_llm_hosted_tool_calls_total{tenant="acme",tool="web_search"} 5"#,
        r#"tenant_proxy_llm_hosted_tool_calls_total{tenant="acme",tool="file_search"} 3"#,
    ] {
        assert!(metrics.contains(series), "{series}: {metrics}");
    }
    assert!(
        metrics.contains(&format!(
            r#"tenant_proxy_llm_cost_micros_total{{tenant="acme"}} {}"#,
            2 * (input + 20) + 3_000 + responses_cost
        )),
        "{metrics}"
    );
}

#[test]
fn a_stream_within_its_budget_is_extended_and_finishes() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().assumed_max_tokens = Some(50);
    });
    let bearer = run_token(
        "run-long",
        RunBudget {
            tokens: Some(100_000),
            ..RunBudget::default()
        },
    );
    let (status, body) = stream_as(
        &proxy,
        &bearer,
        "/llm/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        400,
    );
    assert_eq!(status, 200);
    assert!(
        body.contains("[DONE]") && !body.contains("event: error"),
        "{body}"
    );
    assert_eq!(body.matches("\"content\"").count(), 400);
    // The run's `run_started` event, then the request's record.
    let recs = proxy.wait_audit_records("acme", 2);
    let rec = recs.iter().find(|r| r["event"] == "request").unwrap();
    assert_eq!(rec["reason"], "allowed");
    // 400 output tokens outran the 50 reserved: extensions were reserved as it streamed, and
    // the call settled at its real usage.
    assert!(rec["reserved"]["tokens"].as_u64().unwrap() > 400, "{rec}");
    assert_eq!(
        rec["settled"]["tokens"],
        rec["usage"]["input_tokens"].as_u64().unwrap() + 400
    );
}

/// A proxy routing LLM calls to `mock`, priced, counting in `limiter` (`memory`, or `redis`
/// on `redis`), acme's calls without `max_tokens` reserving `assumed` output tokens under a day
/// ceiling of `day_micros`.
fn day_capped_proxy(
    mock: u16,
    limiter: &str,
    redis: &RedisServer,
    assumed: u64,
    day_micros: u64,
) -> Proxy {
    let mut spec = ProxySpec::default().with_prices();
    if limiter == "redis" {
        spec = spec.with_redis_limiter(redis.url(), Duration::from_secs(1));
    }
    spec.llm_route(mock);
    let acme = spec.tenant("acme").limits();
    acme.assumed_max_tokens = Some(assumed);
    acme.cost_per_day_micros = Some(day_micros);
    Proxy::start(spec)
}

/// A stream that arrives faster than the guard's extensions are answered ends with an
/// extension still being asked for. It is reserved on the counters all the same, so the
/// settlement waits for its answer and takes it into account: the tenant's counter holds exactly
/// what the records say was settled, never a step more. Redis answers after a round trip, so
/// there a stream written at once always ends with one in flight.
#[test]
fn an_extension_asked_for_as_a_stream_ends_is_settled_with_it() {
    let mock = start_mock();
    let redis = RedisServer::start();
    for limiter in ["memory", "redis"] {
        let proxy = day_capped_proxy(mock, limiter, &redis, 50, 50_000_000);
        let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
        let mut settled = 0;
        for _ in 0..3 {
            let r = llm_chat(
                proxy.sidecar_port,
                body,
                "x-mock-output-tokens: 400\r\nx-mock-stream-whole: 1\r\n",
            );
            assert_eq!(r.status, 200, "{limiter}");
            assert!(r.body_text().contains("[DONE]"), "{}", r.body_text());
            let rec = proxy.audit_record("acme", &r.request_id());
            assert_eq!(rec["reason"], "allowed", "{rec}");
            assert_eq!(rec["usage"]["output_tokens"], 400, "{rec}");
            settled += rec["settled"]["cost_micros"].as_u64().unwrap();
        }
        let (code, out) = proxy.admin_cli(&["usage", "--tenant", "acme", "--json"]);
        assert_eq!(code, 0, "{out}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let used = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scope"] == "tenant" && r["measure"] == "cost_micros")
            .and_then(|r| r["used"].as_u64());
        assert_eq!(used, Some(settled), "{limiter}: {report}");
    }
}

/// The stream `r` was cut for budget: before its head left (pingora sends the head with the
/// first chunk), refused whole; after, ended with the error event and never `[DONE]`. `what`
/// names the case in failures.
fn assert_stream_cut(r: &Response, what: &str) {
    let text = r.body_text();
    match r.status {
        429 => {
            r.assert_refused(429, "budget_exhausted");
        }
        200 => assert!(
            text.contains("budget_exhausted") && !text.contains("[DONE]"),
            "{what}: the stream must be cut: {}",
            &text[text.len().saturating_sub(400)..]
        ),
        other => panic!("{what}: {other} {text}"),
    }
}

/// An upstream that sends a whole answer at once (a buffering gateway) far past what a call
/// without `max_tokens` reserved: the chunk waits for an extension that covers it, and a ceiling
/// with no room for one cuts the stream there. Passed on while the extension was still being
/// asked for, such an answer reached the client whole, whatever the ceiling.
#[test]
fn a_whole_answer_at_once_is_cut_at_the_ceiling_not_passed_over_it() {
    let mock = start_mock();
    let redis = RedisServer::start();
    for limiter in ["memory", "redis"] {
        let proxy = day_capped_proxy(mock, limiter, &redis, 20, 3_000);
        let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
        let r = llm_chat(
            proxy.sidecar_port,
            body,
            "x-mock-output-tokens: 20000\r\nx-mock-stream-whole: 1\r\n",
        );
        let text = r.body_text();
        assert_stream_cut(&r, limiter);
        // The ceiling (3,000 micro-units: 1,500 output tokens at most) stopped what
        // the client was given: well short of the answer's 20,000 events.
        let events = text.matches("data: ").count();
        assert!(events < 10_000, "{limiter}: {events} events passed");
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["stream_cut"], true, "{limiter}: {rec}");
        assert_eq!(rec["ceiling"], "day", "{limiter}: {rec}");
    }
}

/// A ceiling field is the agent's word: a server may not read it (Ollama's OpenAI API ignores
/// `max_completion_tokens` and takes `max_tokens: 0` for no limit; the mock's
/// `x-mock-output-tokens` stands for such a server). A capped stream whose upstream runs past
/// its ceiling is guarded as an uncapped one is and cut at the day's ceiling; trusted, one such
/// stream spent twice the day. An honest capped stream is not held up.
#[test]
fn a_capped_stream_whose_upstream_ignores_the_cap_is_cut_at_the_ceiling() {
    let mock = start_mock();
    let redis = RedisServer::start();
    for limiter in ["memory", "redis"] {
        for (body, extra) in [
            (
                r#"{"model":"gpt-4o-mini","stream":true,"max_completion_tokens":5,"messages":[]}"#,
                "",
            ),
            (
                r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":0,"messages":[]}"#,
                "",
            ),
            // A server that batches many tokens in each delta is counted by its bytes.
            (
                r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":20,"messages":[]}"#,
                "x-mock-tokens-per-delta: 40\r\n",
            ),
        ] {
            // A day of its own for each (the first spends it): 600 micro-units, about 1,000
            // output tokens.
            redis.command("FLUSHALL");
            let proxy = day_capped_proxy(mock, limiter, &redis, 200, 600);
            let r = llm_chat(
                proxy.sidecar_port,
                body,
                &format!("x-mock-output-tokens: 20000\r\n{extra}"),
            );
            let text = r.body_text();
            assert_stream_cut(&r, &format!("{limiter} {body}"));
            // About 1,000 output tokens (250 words) to the day's ceiling: what passed is
            // bounded by it (and what the guard trusts a capped stream with).
            let words = text.matches("mock.").count();
            assert!(words < 400, "{limiter} {body}: {words} words passed");
            let rec = proxy.audit_record("acme", &r.request_id());
            assert_eq!(rec["stream_cut"], true, "{limiter} {body}: {rec}");
        }
        // A stream that stops at its ceiling (the mock's default: `max_tokens` tokens) ends
        // whole, however close to it its estimate runs.
        redis.command("FLUSHALL");
        let proxy = day_capped_proxy(mock, limiter, &redis, 200, 600);
        let honest = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":40,"messages":[]}"#;
        let r = llm_chat(proxy.sidecar_port, honest, "");
        assert_eq!(r.status, 200, "{limiter}: {}", r.body_text());
        assert!(
            r.body_text().contains("[DONE]"),
            "{limiter}: {}",
            r.body_text()
        );
        // Nor does it reserve a step ahead (which would hold budget other calls need): what
        // it reserved is its body and its ceiling.
        let rec = proxy.audit_record("acme", &r.request_id());
        let reserved = rec["reserved"]["tokens"].as_u64().unwrap();
        assert!(
            reserved <= honest.len() as u64 + 40,
            "{limiter}: reserved {reserved}: {rec}"
        );
    }
}

/// A reload that lowers the day's ceiling governs a stream already open: its next extensions
/// are asked against the new ceiling, and it is cut, as a fresh call is refused.
#[test]
fn a_ceiling_lowered_by_a_reload_cuts_a_stream_already_open() {
    let mock = start_mock();
    let redis = RedisServer::start();
    let proxy = day_capped_proxy(mock, "memory", &redis, 200, 1_000_000);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    std::thread::scope(|s| {
        let stream = s.spawn(|| {
            llm_chat(
                proxy.sidecar_port,
                body,
                "x-mock-output-tokens: 4000\r\nx-mock-chunk-delay-ms: 2\r\n",
            )
        });
        std::thread::sleep(Duration::from_millis(800));
        let before = proxy.reloads_ok();
        let mut lowered = proxy.tenants().clone();
        lowered.tenant("acme").limits().cost_per_day_micros = Some(1);
        proxy.write_tenants(&lowered);
        proxy.wait_reload_after(before);
        let r = stream.join().unwrap();
        let text = r.body_text();
        assert_eq!(r.status, 200, "{text}");
        assert!(
            text.contains("budget_exhausted") && !text.contains("[DONE]"),
            "the stream must be cut: {}",
            &text[text.len().saturating_sub(400)..]
        );
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["stream_cut"], true, "{rec}");
    });
}

#[test]
fn run_tool_calls_and_wall_time_are_per_run_and_only_from_signed_tokens() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let url = format!("http://127.0.0.1:{}/acme/tool", origin.port);
    let tools = run_token(
        "run-tools",
        RunBudget {
            tool_calls: Some(2),
            ..RunBudget::default()
        },
    );
    for _ in 0..2 {
        assert_eq!(
            forward_get(proxy.shared_port, &url, Some(&tools), "").status,
            200
        );
    }
    let r = forward_get(proxy.shared_port, &url, Some(&tools), "");
    r.assert_refused(429, "budget_exhausted");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 tool calls"));
    // Another run of the same workload has its own budget.
    let other = run_token(
        "run-other",
        RunBudget {
            tool_calls: Some(2),
            ..RunBudget::default()
        },
    );
    assert_eq!(
        forward_get(proxy.shared_port, &url, Some(&other), "").status,
        200
    );
    // A token without a run budget, and the sidecar (no token at all), are not run-limited.
    let plain = token(TokenOpts {
        run_id: Some("run-tools"),
        ..Default::default()
    });
    assert_eq!(
        forward_get(proxy.shared_port, &url, Some(&plain), "").status,
        200
    );
    assert_eq!(
        forward_get(proxy.sidecar_port, &url, None, "X-Run-Id: run-tools\r\n").status,
        200
    );

    let timed = run_token(
        "run-timed",
        RunBudget {
            wall_time_s: Some(1),
            ..RunBudget::default()
        },
    );
    assert_eq!(
        forward_get(proxy.shared_port, &url, Some(&timed), "").status,
        200
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = forward_get(proxy.shared_port, &url, Some(&timed), "");
    r.assert_refused(429, "budget_exhausted");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wall-time"));
    // 8 requests, and `run_started` of run-tools, run-other and run-timed.
    let recs = proxy.wait_audit_records("acme", 11);
    assert_eq!(
        recs.iter().filter(|r| r["ceiling"] == "run").count(),
        2,
        "{recs:?}"
    );
}

#[test]
fn usage_cli_reports_spend_of_one_tenant_from_the_running_proxy() {
    let mock = start_mock();
    let proxy = budget_proxy(mock, |spec| {
        let acme = spec.tenant("acme").limits();
        acme.cost_per_day_micros = Some(1_000_000);
        acme.cost_per_month_micros = Some(5_000_000);
        acme.concurrency = Some(8);
        spec.tenant("globex").limits().cost_per_day_micros = Some(1_000_000);
    });
    let body = r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[]}"#;
    let r = llm_chat(proxy.sidecar_port, body, "");
    assert_eq!(r.status, 200);
    let rec = proxy.audit_record("acme", &r.request_id());
    let cost = rec["settled"]["cost_micros"].as_u64().unwrap();
    assert!(cost > 0);

    // The memory limiter's counters are read through the running proxy's admin port.
    let (code, out) = proxy.admin_cli(&["usage", "--tenant", "acme", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |scope: &str, measure: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scope"] == scope && r["measure"] == measure)
            .cloned()
            .unwrap_or_else(|| panic!("no {scope} {measure} in {report}"))
    };
    assert_eq!(row("tenant", "cost_micros")["used"].as_u64(), Some(cost));
    assert_eq!(
        row("tenant", "cost_micros")["ceiling"].as_u64(),
        Some(1_000_000)
    );
    assert_eq!(
        row("tenant", "in_flight")["used"].as_u64(),
        Some(0),
        "the lease was returned"
    );
    assert_eq!(report["currency"], "USD");

    // The month view, as a table.
    let (code, out) = proxy.admin_cli(&["usage", "--tenant", "acme", "--period", "month"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tenant acme  month") && out.contains("USD"),
        "{out}"
    );

    // Acme's spend never shows as globex's.
    let (code, out) = proxy.admin_cli(&["usage", "--tenant", "globex", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["used"] == 0),
        "{report}"
    );

    let (code, out) = proxy.admin_cli(&["usage", "--tenant", "nobody"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not configured"), "{out}");

    // Without --admin the command goes where the configuration says (port 0 here: nothing
    // listens) and fails with the address it tried, never with someone else's counters.
    let config = proxy.path("tenant-proxy.toml");
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--tenant",
            "acme",
        ],
        "",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("127.0.0.1:0"), "{out}");
}

/// A request to `path` on the `llm` route, on the sidecar (acme's `bot`) or, with `bearer`, on
/// the token listener; `extra` header lines (`"Name: value\r\n"` each).
fn llm_post(proxy: &Proxy, path: &str, body: &str, bearer: Option<&str>, extra: &str) -> Response {
    let (port, auth) = match bearer {
        Some(t) => (
            proxy.shared_port,
            format!("Proxy-Authorization: Bearer {t}\r\n"),
        ),
        None => (proxy.sidecar_port, String::new()),
    };
    raw_request(
        port,
        &format!(
            "POST /llm/{path} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

/// Work whose tokens and cost no response shows the proxy (a batch job, an Assistants run, a
/// WebSocket session) would pass every token and cost ceiling unseen: while one applies it is
/// refused with `unmetered_call`, audited and never sent, unless the workload allows it; reads
/// of the same resources pass, and so does everything when no ceiling caps spend.
#[test]
fn work_the_proxy_cannot_meter_is_refused_while_spend_is_capped() {
    use tenant_proxy_loadtest::config::Unmetered;
    let origin = Origin::start();
    let proxy = budget_proxy(origin.port, |spec| {
        let acme = spec.tenant("acme");
        acme.limits().tokens_per_minute = Some(100_000);
        acme.workload_limits("researcher").unmetered_calls = Some(Unmetered::Allow);
        // globex caps only its request rate: nothing to skip.
        spec.tenant("globex").limits().requests_per_minute = Some(1_000);
    });
    let batch =
        r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#;
    for (path, what) in [
        ("batches", "a batch job"),
        ("threads/thread_1/runs", "an Assistants run"),
        ("fine_tuning/jobs", "a fine-tuning job"),
    ] {
        let r = llm_post(&proxy, path, batch, None, "");
        r.assert_refused(403, "unmetered_call");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(what), "{message}");
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(
            (rec["decision"].as_str(), rec["reason"].as_str()),
            (Some("deny"), Some("unmetered_call")),
            "{rec}"
        );
    }
    // Endpoints found spending unmetered under a cost ceiling, on any host, and a call asking
    // for an answer no reader knows (`alt=proto`). (This route names no provider: its other
    // paths are no LLM API's, see `registry::work`.)
    for (path, body, what) in [
        (
            "agents/completions",
            r#"{"agent_id":"ag_1","messages":[]}"#,
            "an agent run",
        ),
        (
            "conversations",
            r#"{"agent_id":"ag_1","inputs":"hi"}"#,
            "an agent conversation",
        ),
        (
            "conversations/conv_1",
            r#"{"inputs":"more"}"#,
            "an agent conversation",
        ),
        (
            "chatkit/sessions",
            r#"{"workflow":{"id":"wf_1"}}"#,
            "a ChatKit session",
        ),
        (
            "fine_tuning/alpha/graders/run",
            r#"{"grader":{"type":"score_model","model":"gpt-4o"}}"#,
            "a grader run",
        ),
        (
            "fine-tunes",
            r#"{"model":"gpt-4o-mini","training_file":"file-1"}"#,
            "a fine-tuning job",
        ),
        (
            "chat/completions?alt=proto",
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            "a call whose answer format",
        ),
    ] {
        let r = llm_post(&proxy, path, body, None, "");
        r.assert_refused(403, "unmetered_call");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(what), "{path}: {message}");
    }
    // A response run in the background answers before it spends, one a gateway merges
    // `extra_body` into too; hosted tools billed per image, container or grounded prompt spend
    // what no response shows; a Gemini context cache is billed per hour stored.
    for (path, body, what) in [
        (
            "responses",
            r#"{"model":"gpt-4o-mini","background":true,"input":"hi"}"#,
            "a background response",
        ),
        (
            "responses",
            r#"{"model":"gpt-4o-mini","input":"hi","extra_body":{"background":true}}"#,
            "a background response",
        ),
        (
            "responses",
            r#"{"model":"gpt-4o-mini","input":"draw","tools":[{"type":"image_generation","model":"gpt-image-1"}]}"#,
            "the image generation tool",
        ),
        (
            "responses",
            r#"{"model":"gpt-4o-mini","input":"run","tools":[{"type":"code_interpreter","container":{"type":"auto"}}]}"#,
            "the code interpreter tool",
        ),
        (
            "v1beta/models/gemini-2.5-flash:generateContent",
            r#"{"contents":[],"tools":[{"google_search":{}}]}"#,
            "grounding with Google Search",
        ),
        (
            "v1beta/cachedContents",
            r#"{"model":"models/gemini-2.5-pro","ttl":"2592000s","contents":[]}"#,
            "a context cache",
        ),
        // A model that searches on every call, asked for no search in its body, or one a
        // gateway may answer with instead.
        (
            "chat/completions",
            r#"{"model":"gpt-4o-mini-search-preview","messages":[]}"#,
            "a chat search model",
        ),
        (
            "chat/completions",
            r#"{"model":"gpt-4o-mini","fallbacks":["gpt-4o-search-preview"],"messages":[]}"#,
            "a chat search model",
        ),
    ] {
        let r = llm_post(&proxy, path, body, None, "");
        r.assert_refused(403, "unmetered_call");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(what), "{path}: {message}");
    }
    // A WebSocket session toward an LLM API, on a path that is a call otherwise too.
    let r = raw_request(
        proxy.sidecar_port,
        "GET /llm/responses HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    r.assert_refused(403, "unmetered_call");
    assert_eq!(origin.count(), 0, "nothing refused reached the upstream");

    // An offer to switch to another protocol is no WebSocket: `h2c`, which Java's HttpClient and
    // `curl --http2` send with every plain-text call, or an `Upgrade` that `Connection` does not
    // nominate. The offer is declined (dropped, never sent on) and the call is an ordinary one,
    // metered; its connection stays usable.
    let chat = r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", proxy.sidecar_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(sock.try_clone().unwrap());
    for offer in [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "Upgrade: websocket\r\n",
        "Connection: keep-alive, Upgrade\r\nUpgrade: websocket, h2c\r\n",
    ] {
        use std::io::Write;
        write!(
            sock,
            "POST /llm/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n{offer}Content-Length: {}\r\n\r\n{chat}",
            chat.len()
        )
        .unwrap();
        let r = read_response(&mut reader).unwrap();
        assert_eq!(r.status, 200, "{offer}: {}", r.body_text());
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["decision"], "allow", "{rec}");
        assert!(rec["reserved"]["tokens"].as_u64().unwrap() > 0, "{rec}");
    }
    let sent = origin.requests();
    assert_eq!(sent.len(), 3, "{sent:?}");
    for req in sent {
        assert!(!req.headers.contains_key("upgrade"), "{:?}", req.headers);
        assert!(
            !req.headers.contains_key("http2-settings"),
            "{:?}",
            req.headers
        );
    }

    // Reading, listing and cancelling start nothing.
    let get = raw_request(
        proxy.sidecar_port,
        "GET /llm/batches/batch_1 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(get.status, 200, "{}", get.body_text());
    let cancel = llm_post(&proxy, "batches/batch_1/cancel", "{}", None, "");
    assert_eq!(cancel.status, 200, "{}", cancel.body_text());
    // The same response in the foreground is a call, metered.
    let foreground = r#"{"model":"gpt-4o-mini","background":false,"input":"hi"}"#;
    let r = llm_post(&proxy, "responses", foreground, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    // The workload that allows unmetered work gets through, counted as a call.
    let researcher = token(TokenOpts {
        workload: "researcher",
        ..Default::default()
    });
    let allowed = llm_post(&proxy, "batches", batch, Some(&researcher), "");
    assert_eq!(allowed.status, 200, "{}", allowed.body_text());
    // A tenant whose spend is not capped has nothing to skip.
    let globex = token(TokenOpts {
        tenant: "globex",
        workload: "agent",
        ..Default::default()
    });
    let open = llm_post(&proxy, "batches", batch, Some(&globex), "");
    assert_eq!(open.status, 200, "{}", open.body_text());
    assert_eq!(origin.matching("/v1/batches").len(), 4);
    assert_eq!(origin.matching("/v1/responses").len(), 1);
}

/// Toward an LLM API (here a route that names its provider), a request that is no call, no
/// known unmetered work and not known to be free is refused as unmetered work while spend is
/// capped when its body names no model (the next endpoint a provider adds that spends); one that
/// names a model is an LLM call, reserved and metered; a file upload passes.
#[test]
fn an_llm_apis_unknown_requests_are_metered_or_refused_under_a_cost_ceiling() {
    let origin = Origin::start();
    let proxy = budget_proxy(origin.port, |spec| {
        let route = spec.tenants.routes.iter_mut().find(|r| r.name == "llm");
        route.unwrap().provider = Some("openai".into());
        spec.tenant("acme").limits().cost_per_day_micros = Some(10_000_000);
    });
    let r = llm_post(&proxy, "some_new_job", r#"{"input":"hi"}"#, None, "");
    r.assert_refused(403, "unmetered_call");
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(rec["reason"], "unmetered_call", "{rec}");
    assert_eq!(origin.count(), 0, "nothing refused was forwarded");
    let named = llm_post(
        &proxy,
        "some_new_job",
        r#"{"model":"gpt-4o-mini","input":"hi"}"#,
        None,
        "",
    );
    assert_eq!(named.status, 200, "{}", named.body_text());
    let rec = proxy.audit_record("acme", &named.request_id());
    assert!(
        rec["reserved"]["cost_micros"].as_u64().unwrap() > 0,
        "{rec}"
    );
    let upload = llm_post(&proxy, "files", r#"{"purpose":"batch"}"#, None, "");
    assert_eq!(upload.status, 200, "{}", upload.body_text());
    assert_eq!(origin.count(), 2);
}

/// A chat completion that names no model (a server with a default one picks it) is still an
/// LLM call: its tokens are reserved and settled from the usage it reports, and a price table
/// that refuses unknown models refuses it.
#[test]
fn a_chat_that_names_no_model_is_metered_and_priced_as_an_unknown_model() {
    let mock = start_mock();
    // Without a price table: tokens only.
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    spec.tenant("acme").limits().tokens_per_minute = Some(100_000);
    let proxy = Proxy::start(spec);
    let body = r#"{"max_tokens":40,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = llm_post(&proxy, "chat/completions", body, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    assert_eq!(
        rec["reserved"]["tokens"].as_u64(),
        Some(body.len() as u64 + 40),
        "{rec}"
    );
    let usage = &rec["usage"];
    let used = usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    assert_eq!(rec["settled"]["tokens"].as_u64(), Some(used), "{rec}");
    // Streamed, the proxy asks for its usage as for any chat completion.
    let stream = r#"{"stream":true,"max_tokens":30,"messages":[]}"#;
    let r = llm_post(&proxy, "chat/completions", stream, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(!r.body_text().contains("\"usage\""), "{}", r.body_text());
    let rec = proxy.audit_record("acme", &r.request_id());
    assert!(rec["usage"]["output_tokens"].as_u64().is_some(), "{rec}");
    // The test price table refuses unknown models: a call naming none is one.
    drop(proxy);
    let proxy = budget_proxy(mock, |spec| {
        spec.tenant("acme").limits().cost_per_day_micros = Some(1_000_000);
    });
    let r = llm_post(&proxy, "chat/completions", body, None, "");
    r.assert_refused(403, "model_not_priced");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("names no model"));
}
