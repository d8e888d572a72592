//! Run-level audit events end to end, against the real binary and the mock LLM upstream from
//! `loadtest/`: a signed run's first request writes one `run_started`, its summary (tokens,
//! cost, requests, wall time) is written once when its token expires or when an operator closes
//! it, a closed run's next request is refused with `run_closed`, one tenant cannot close
//! another's run, and two replicas sharing a real `redis-server` write each event once between
//! them. `audit verify` accepts every resulting directory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

use tenant_proxy::identity::token::RunBudget;

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;

/// A proxy with the test price table and an `llm` route to the mock; `limiter` counts its
/// limits (`None`: in memory).
fn llm_proxy(mock: u16, limiter: Option<&RedisServer>) -> Proxy {
    let mut spec = ProxySpec::default().with_prices();
    spec.llm_route(mock);
    if let Some(redis) = limiter {
        spec = spec.with_redis_limiter(redis.url(), Duration::from_millis(500));
    }
    Proxy::start(spec)
}

/// A token of `tenant`/`workload` for signed run `run`, with token and cost budgets (so the
/// limiter counts both) and `ttl_secs` to live.
fn run_token(
    tenant: &'static str,
    workload: &'static str,
    run: &'static str,
    ttl_secs: u64,
) -> String {
    token(TokenOpts {
        tenant,
        workload,
        run_id: Some(run),
        ttl_secs,
        run_budget: Some(RunBudget {
            tokens: Some(1_000_000),
            cost_micros: Some(1_000_000_000),
            ..RunBudget::default()
        }),
        ..Default::default()
    })
}

fn bearer(token: &str) -> String {
    format!("Proxy-Authorization: Bearer {token}\r\n")
}

/// The `event` records of `run` in `tenant`'s partition.
fn events(proxy: &Proxy, tenant: &str, event: &str, run: &str) -> Vec<serde_json::Value> {
    proxy
        .audit_records(tenant)
        .into_iter()
        .filter(|r| r["event"] == event && r["run_id"] == run)
        .collect()
}

/// Waits until `tenant`'s partitions (of every proxy given) hold a `run_summary` of `run`.
fn wait_summary(proxies: &[&Proxy], tenant: &str, run: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = proxies
            .iter()
            .flat_map(|p| events(p, tenant, "run_summary", run))
            .next()
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no run_summary of {run} for {tenant}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tenant-proxy audit verify DIR`: exit code and output.
fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(proxy_bin())
        .args(["audit", "verify", dir.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What the request records of `run` in `tenant`'s partition say it used: (tokens, cost).
fn spent(proxy: &Proxy, tenant: &str, run: &str) -> (u64, u64) {
    let recs: Vec<_> = proxy
        .audit_records(tenant)
        .into_iter()
        .filter(|r| r["event"] == "request" && r["run_id"] == run)
        .collect();
    let tokens = recs
        .iter()
        .filter_map(|r| r["settled"]["tokens"].as_u64())
        .sum();
    (tokens, cost_spent(&recs))
}

#[test]
fn a_run_starts_once_and_is_summarized_once_its_token_expired() {
    let mock = start_mock();
    let proxy = llm_proxy(mock, None);
    let t = run_token("acme", "bot", "run-expiring", 3);
    let expires_at = now() + 3;
    let first = llm_chat(proxy.shared_port, CHAT, &bearer(&t));
    assert_eq!(first.status, 200, "{}", first.body_text());
    let second = llm_chat(proxy.shared_port, CHAT, &bearer(&t));
    assert_eq!(second.status, 200, "{}", second.body_text());
    proxy.audit_record("acme", &second.request_id());

    let started = events(&proxy, "acme", "run_started", "run-expiring");
    assert_eq!(started.len(), 1, "{started:?}");
    let s = &started[0];
    assert_eq!(s["tenant"], "acme");
    assert_eq!(s["workload"], "bot");
    assert_eq!(s["request_id"], first.request_id().as_str());
    assert_eq!(s["budget"]["tokens"], 1_000_000);
    assert!(
        s["expires_at"].as_u64().unwrap().abs_diff(expires_at) <= 1,
        "{s}"
    );
    // Chained like any record, and placed before the request it started.
    let recs = proxy.audit_records("acme");
    let first_rec = recs
        .iter()
        .find(|r| r["event"] == "request" && r["request_id"] == first.request_id().as_str())
        .unwrap();
    assert!(s["seq"].as_u64().unwrap() < first_rec["seq"].as_u64().unwrap());

    let summary = wait_summary(&[&proxy], "acme", "run-expiring");
    let (tokens, cost) = spent(&proxy, "acme", "run-expiring");
    assert!(tokens > 0 && cost > 0);
    assert_eq!(summary["ended"], "expired", "{summary}");
    assert_eq!(summary["tokens"], tokens, "{summary}");
    assert_eq!(summary["cost_micros"], cost, "{summary}");
    assert_eq!(summary["requests"], 2, "{summary}");
    assert_eq!(summary["refusals"], 0, "{summary}");
    assert_eq!(summary["workload"], "bot");
    // From the first request to the token's expiry plus the 5 s leeway the verifier allows.
    let wall = summary["wall_time_s"].as_u64().unwrap();
    assert!((6..=9).contains(&wall), "{summary}");
    assert_eq!(
        events(&proxy, "acme", "run_summary", "run-expiring").len(),
        1
    );
    // Nothing of acme's run went to another tenant's partition.
    assert!(proxy.audit_records("globex").is_empty());
    // The tenant's export carries its run events like its other records.
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &["audit", "export", "--dir", "audit", "--tenant", "acme"],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(r#""event":"run_started""#).count(), 1, "{out}");
    assert_eq!(out.matches(r#""event":"run_summary""#).count(), 1, "{out}");

    let (code, out) = verify(&proxy.path("audit"));
    assert_eq!(code, 0, "{out}");
}

/// POSTs `/runs/close` on the admin port.
fn admin_close(proxy: &Proxy, query: &str) -> Response {
    raw_request(
        proxy.admin_port,
        &format!("POST /runs/close?{query} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .unwrap()
}

#[test]
fn closing_a_run_summarizes_it_at_once_and_refuses_its_next_request_in_that_tenant_only() {
    let mock = start_mock();
    let proxy = llm_proxy(mock, None);
    let acme = run_token("acme", "bot", "run-shared-id", 300);
    let r = llm_chat(proxy.shared_port, CHAT, &bearer(&acme));
    assert_eq!(r.status, 200, "{}", r.body_text());
    proxy.audit_record("acme", &r.request_id());

    // globex names acme's run id: it closes globex's run of that id, nothing of acme's.
    let wrong = admin_close(&proxy, "tenant=globex&run=run-shared-id");
    assert_eq!(wrong.status, 200, "{}", wrong.body_text());
    let r = llm_chat(proxy.shared_port, CHAT, &bearer(&acme));
    assert_eq!(r.status, 200, "{}", r.body_text());
    proxy.audit_record("acme", &r.request_id());
    assert!(events(&proxy, "acme", "run_summary", "run-shared-id").is_empty());
    assert!(proxy
        .audit_records("globex")
        .iter()
        .all(|r| r["tenant"] == "globex"));
    // globex's own run of that id was closed before it started: its first request is refused.
    let globex = run_token("globex", "agent", "run-shared-id", 300);
    let g = llm_chat(proxy.shared_port, CHAT, &bearer(&globex));
    g.assert_refused(403, "run_closed");

    // A refusal of the run is counted in its summary. (Each request's settlement and counts
    // are done once its record is written: waiting for the record orders them before the close.)
    let unpriced = llm_chat(
        proxy.shared_port,
        r#"{"model":"not-in-the-price-table","max_tokens":5,"messages":[]}"#,
        &bearer(&acme),
    );
    unpriced.assert_refused(403, "model_not_priced");
    proxy.audit_record("acme", &unpriced.request_id());
    // A tunnel of the run refused (a port no policy opens) is one of its refusals too.
    let tunnel = raw_request(
        proxy.shared_port,
        &format!("CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nProxy-Authorization: Bearer {acme}\r\n\r\n"),
    )
    .unwrap();
    tunnel.assert_refused(403, "connect_port_forbidden");
    proxy.audit_record("acme", &tunnel.request_id());

    // The CLI closes acme's run through the admin port (the configuration asks for port 0, so
    // the bound address is given with --admin): the summary is written at once.
    let (code, out) =
        proxy.admin_cli(&["run", "close", "--tenant", "acme", "--run", "run-shared-id"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"summarized\""), "{out}");
    let summary = wait_summary(&[&proxy], "acme", "run-shared-id");
    let (tokens, cost) = spent(&proxy, "acme", "run-shared-id");
    assert_eq!(summary["ended"], "closed", "{summary}");
    assert_eq!(summary["tokens"], tokens, "{summary}");
    assert_eq!(summary["cost_micros"], cost, "{summary}");
    assert_eq!(summary["requests"], 4, "{summary}");
    assert_eq!(summary["refusals"], 2, "{summary}");

    // The run's next request is refused with a stable code, and audited.
    let refused = llm_chat(proxy.shared_port, CHAT, &bearer(&acme));
    refused.assert_refused(403, "run_closed");
    let rec = proxy.audit_record("acme", &refused.request_id());
    assert_eq!(rec["reason"], "run_closed");
    assert_eq!(rec["decision"], "deny");
    // A new token for the closed run does not reopen it; another run of acme goes on.
    let again = run_token("acme", "bot", "run-shared-id", 600);
    llm_chat(proxy.shared_port, CHAT, &bearer(&again)).assert_refused(403, "run_closed");
    // Nor does a tunnel: an opaque one would carry no request to refuse later.
    raw_request(
        proxy.shared_port,
        &format!(
            "CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n{}\r\n",
            bearer(&again)
        ),
    )
    .unwrap()
    .assert_refused(403, "run_closed");
    let other = run_token("acme", "bot", "run-other", 300);
    assert_eq!(
        llm_chat(proxy.shared_port, CHAT, &bearer(&other)).status,
        200
    );

    // Closing again writes no second summary.
    let twice = admin_close(&proxy, "tenant=acme&run=run-shared-id");
    assert_eq!(twice.status, 200);
    assert_eq!(twice.json()["closed"], "already_ended");
    assert_eq!(
        events(&proxy, "acme", "run_summary", "run-shared-id").len(),
        1
    );
    assert_eq!(
        events(&proxy, "acme", "run_started", "run-shared-id").len(),
        1
    );
    assert!(events(&proxy, "globex", "run_summary", "run-shared-id").is_empty());

    // Bad calls change nothing.
    assert_eq!(admin_close(&proxy, "tenant=nobody&run=x").status, 404);
    assert_eq!(admin_close(&proxy, "run=x").status, 400);
    let get = raw_request(
        proxy.admin_port,
        "GET /runs/close?tenant=acme&run=run-other HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(get.status, 405);
    assert_eq!(
        llm_chat(proxy.shared_port, CHAT, &bearer(&other)).status,
        200
    );

    let (code, out) = verify(&proxy.path("audit"));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn replicas_sharing_redis_write_one_run_started_and_one_run_summary_between_them() {
    let redis = RedisServer::start();
    let mock = start_mock();
    let a = llm_proxy(mock, Some(&redis));
    let b = llm_proxy(mock, Some(&redis));
    let t = run_token("acme", "bot", "run-replicated", 3);
    for p in [&a, &b, &a, &b] {
        let r = llm_chat(p.shared_port, CHAT, &bearer(&t));
        assert_eq!(r.status, 200, "{}", r.body_text());
        p.audit_record("acme", &r.request_id());
    }
    let started: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|p| events(p, "acme", "run_started", "run-replicated"))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");

    let summary = wait_summary(&[&a, &b], "acme", "run-replicated");
    let (ta, ca) = spent(&a, "acme", "run-replicated");
    let (tb, cb) = spent(&b, "acme", "run-replicated");
    assert_eq!(summary["tokens"], ta + tb, "{summary}");
    assert_eq!(summary["cost_micros"], ca + cb, "{summary}");
    assert_eq!(summary["requests"], 4, "{summary}");
    // Both replicas watch the run and try each second: give the other one a few tries.
    std::thread::sleep(Duration::from_secs(3));
    let summaries: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|p| events(p, "acme", "run_summary", "run-replicated"))
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    // The run's life record sits under the tenant's hash tag, and expires.
    let ttl: i64 = redis.command("PTTL tp:{acme}:run:run-replicated:life")[0]
        .parse()
        .unwrap();
    assert!(ttl > 0, "{ttl}");
    for p in [&a, &b] {
        let (code, out) = verify(&p.path("audit"));
        assert_eq!(code, 0, "{out}");
    }
}

/// A run closed before its first request never starts: its requests are refused `run_closed`,
/// and no `run_started` is written (no `run_summary` could ever follow it).
#[test]
fn a_run_closed_before_its_first_request_never_starts() {
    let mock = start_mock();
    let proxy = llm_proxy(mock, None);
    let closed = admin_close(&proxy, "tenant=acme&run=run-future");
    assert_eq!(
        closed.json()["closed"],
        "before_start",
        "{}",
        closed.body_text()
    );
    let token = run_token("acme", "bot", "run-future", 300);
    let refused = llm_chat(proxy.shared_port, CHAT, &bearer(&token));
    refused.assert_refused(403, "run_closed");
    assert_eq!(
        proxy.audit_record("acme", &refused.request_id())["reason"],
        "run_closed"
    );
    assert!(events(&proxy, "acme", "run_started", "run-future").is_empty());
    assert!(events(&proxy, "acme", "run_summary", "run-future").is_empty());
}

/// The first request of a run that meets a Redis stall is refused (`limiter_unavailable`), and
/// its sighting, which Redis runs only once the stall ends, records nothing: the run's next
/// request is its first, and writes `run_started`. (The late sighting used to take the run's
/// start, so no request was ever the first and no `run_started` was written.)
#[test]
fn a_first_request_refused_during_a_redis_stall_leaves_the_run_to_start_with_the_next() {
    let redis = RedisServer::start();
    let mock = start_mock();
    let proxy = llm_proxy(mock, Some(&redis));
    let t = run_token("acme", "bot", "run-stalled", 300);
    // The proxy knows Redis's clock (read on connecting, then every second).
    std::thread::sleep(Duration::from_millis(1500));
    // Redis stalls for 1.8 s, longer than a sighting may apply (twice the calls' timeout, 500
    // ms): the request is refused, and its sighting waits in Redis's queue.
    redis.command("CLIENT PAUSE 1800 ALL");
    let refused = llm_chat(proxy.shared_port, CHAT, &bearer(&t));
    refused.assert_refused(503, "limiter_unavailable");
    proxy.audit_record("acme", &refused.request_id());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        redis.command("HEXISTS tp:{acme}:run:run-stalled:life start_ms"),
        ["0"],
        "the refused request's sighting started the run"
    );
    let served = llm_chat(proxy.shared_port, CHAT, &bearer(&t));
    assert_eq!(served.status, 200, "{}", served.body_text());
    proxy.audit_record("acme", &served.request_id());
    let started = events(&proxy, "acme", "run_started", "run-stalled");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["request_id"], served.request_id().as_str());
}
