//! Rate and concurrency ceilings end to end (in-memory backend): fast 429s with `Retry-After`,
//! per-tenant counters that another tenant's traffic never moves, leases given back.

use std::time::{Duration, Instant};

use crate::support::*;

/// acme: `requests_per_minute` a minute for the tenant, one request at a time for its
/// `researcher`.
fn limits(requests_per_minute: u32) -> ProxySpec {
    let mut spec = ProxySpec::default();
    let acme = spec.tenant("acme");
    acme.limits().requests_per_minute = Some(requests_per_minute);
    acme.workload_limits("researcher").concurrency = Some(1);
    spec
}

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

#[test]
fn tenant_rate_ceiling_refuses_fast_and_leaves_other_tenants_alone() {
    let origin = Origin::start();
    let proxy = Proxy::start(limits(5));
    let acme = token_for("acme", "bot");
    let globex = token_for("globex", "agent");
    for i in 0..5 {
        let r = forward_get(proxy.shared_port, &url(&origin, "/acme/r"), Some(&acme), "");
        assert_eq!(r.status, 200, "request {i}: {}", r.body_text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str()),
            "request {i}"
        );
    }
    let started = Instant::now();
    let r = forward_get(proxy.shared_port, &url(&origin, "/acme/r"), Some(&acme), "");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a refusal is fast, never a stall"
    );
    r.assert_refused(429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(
        proxy.audit_record("acme", &r.request_id())["reason"],
        "rate_limited"
    );
    assert_eq!(
        origin.matching("/acme/r").len(),
        5,
        "the refused request was not forwarded"
    );

    // acme's exhausted allowance does not touch globex (no ceiling) nor acme's other listener
    // identity: the counter is the tenant's, whoever in it calls.
    for _ in 0..10 {
        assert_eq!(
            forward_get(
                proxy.shared_port,
                &url(&origin, "/globex/r"),
                Some(&globex),
                ""
            )
            .status,
            200
        );
    }
    let sidecar = forward_get(proxy.sidecar_port, &url(&origin, "/acme/r"), None, "");
    assert_eq!(sidecar.status, 429);
    // Metrics are updated when a request's logging phase runs, after its response: wait for
    // its audit record (written in the same step) before reading them.
    proxy.audit_record("acme", &sidecar.request_id());
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"tenant_proxy_requests_total{code="rate_limited",decision="deny",tenant="acme"} 2"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"code="rate_limited",decision="deny",tenant="globex""#));
}

/// A tenant flooding the proxy is refused for rate on every call, and every refusal is audited,
/// but the process log (shared by every tenant) gets a sample: one line per tenant and reason per
/// second from each worker, saying how many refusals it stands for. The rest are counted, never
/// lost track of, and no other tenant's line is crowded out.
#[test]
fn a_flood_of_refusals_is_sampled_in_the_log_and_audited_in_full() {
    let origin = Origin::start();
    let proxy = Proxy::start(limits(5));
    let (acme, globex) = (token_for("acme", "bot"), token_for("globex", "agent"));
    let flood = 300;
    let started = Instant::now();
    let mut refused = 0;
    for _ in 0..5 + flood {
        let r = forward_get(proxy.shared_port, &url(&origin, "/acme/r"), Some(&acme), "");
        if r.status == 429 {
            refused += 1;
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(refused, flood);
    let quiet: Vec<String> = (0..10)
        .map(|_| {
            let r = forward_get(
                proxy.shared_port,
                &url(&origin, "/globex/r"),
                Some(&globex),
                "",
            );
            assert_eq!(r.status, 200);
            r.request_id()
        })
        .collect();

    let records = proxy.wait_audit_records("acme", 5 + flood);
    let audited = records
        .iter()
        .filter(|r| r["reason"] == "rate_limited")
        .count();
    assert_eq!(audited, flood, "every refusal has its record");
    proxy.wait_audit_records("globex", 10);

    let log = proxy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"tenant="acme""#) && l.contains(r#"reason="rate_limited""#))
        .collect();
    // The shared listener has two workers (the harness's `threads = 2`).
    assert!(!lines.is_empty(), "the flood is in the log:\n{log}");
    assert!(
        lines.len() as u64 <= 2 * (seconds + 1),
        "{} refusal lines in {seconds} s:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let left_out = |line: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix("suppressed="))
            .map_or(0, |n| n.parse().unwrap())
    };
    let reported: u64 = lines.iter().map(|l| left_out(l)).sum();
    let metrics = proxy.metrics();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenant_proxy_log_lines_suppressed_total "))
        .expect("the suppressed-lines metric")
        .parse()
        .unwrap();
    // Each refusal is either a line or counted as left out; a line reports what its worker
    // left out before it (the last second's count waits for the next line).
    assert_eq!(lines.len() as u64 + counted, flood as u64, "{metrics}");
    assert!(
        reported <= counted,
        "{reported} reported, {counted} counted"
    );
    for id in &quiet {
        assert!(
            log.contains(id.as_str()),
            "globex's request {id} is in the log"
        );
    }
    // Allowed requests are always logged, and say nothing of suppression.
    let allowed = log
        .lines()
        .filter(|l| l.contains(r#"tenant="acme""#) && l.contains(r#"reason="allowed""#))
        .collect::<Vec<_>>();
    assert_eq!(allowed.len(), 5, "{}", allowed.join("\n"));
    assert!(allowed.iter().all(|l| !l.contains("suppressed")));
}

#[test]
fn a_noisy_neighbour_saturating_its_ceilings_leaves_another_tenants_allowance_whole() {
    let origin = Origin::start();
    // Both tenants have the same ceilings; acme's agent runs away, globex behaves.
    let mut spec = ProxySpec::default();
    for tenant in ["acme", "globex"] {
        let limits = spec.tenant(tenant).limits();
        limits.requests_per_minute = Some(20);
        limits.concurrency = Some(2);
    }
    let proxy = Proxy::start(spec);
    let port = proxy.shared_port;
    let (acme, globex) = (token_for("acme", "bot"), token_for("globex", "agent"));
    let acme_url = url(&origin, "/acme/noise");
    let globex_url = url(&origin, "/globex/quiet");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (noise, quiet) = std::thread::scope(|s| {
        let noisy: Vec<_> = (0..6)
            .map(|_| {
                let (acme, acme_url, stop) = (&acme, &acme_url, &stop);
                s.spawn(move || {
                    let mut statuses = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && statuses.len() < 400 {
                        statuses.push(forward_get(port, acme_url, Some(acme), "").status);
                    }
                    statuses
                })
            })
            .collect();
        // globex makes its 20 calls while acme is being refused around it.
        let quiet: Vec<Response> = (0..20)
            .map(|_| forward_get(port, &globex_url, Some(&globex), ""))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let noise: Vec<u16> = noisy.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (noise, quiet)
    });
    let acme_ok = noise.iter().filter(|s| **s == 200).count();
    assert!(
        acme_ok <= 20,
        "acme stays within its own ceiling: {acme_ok}"
    );
    assert!(
        noise.len() > 40 && noise.iter().all(|s| *s == 200 || *s == 429),
        "{noise:?}"
    );
    // Every globex call succeeded, and its allowance counted only its own calls.
    for (i, r) in quiet.iter().enumerate() {
        assert_eq!(r.status, 200, "globex call {i}: {}", r.body_text());
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((19 - i).to_string().as_str()),
            "globex call {i}"
        );
    }
    assert_eq!(origin.matching("/globex/quiet").len(), 20);
    assert_eq!(origin.matching("/acme/noise").len(), acme_ok);
}

#[test]
fn workload_concurrency_lease_is_returned_when_the_request_ends() {
    let origin = Origin::start();
    let proxy = Proxy::start(limits(100));
    let researcher = token_for("acme", "researcher");
    let port = proxy.shared_port;
    let slow_url = url(&origin, "/slow/c");
    let tok = researcher.clone();
    let slow = std::thread::spawn(move || forward_get(port, &slow_url, Some(&tok), ""));
    // Wait until the slow request is at the origin (holding its lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.matching("/slow/c").is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = forward_get(port, &url(&origin, "/acme/c"), Some(&researcher), "");
    r.assert_refused(429, "concurrency_limited");
    // Another workload of the same tenant has no workload ceiling.
    assert_eq!(
        forward_get(
            port,
            &url(&origin, "/acme/c"),
            Some(&token_for("acme", "bot")),
            ""
        )
        .status,
        200
    );
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200);
    // The lease is given back in the request's logging phase, which also writes its audit record.
    proxy.audit_record("acme", &slow.request_id());
    assert_eq!(
        forward_get(port, &url(&origin, "/acme/c2"), Some(&researcher), "").status,
        200,
        "lease given back"
    );
}

/// A proxy with the `llm` route to the mock and acme's ceilings `acme`.
fn llm_proxy(mock: u16, acme: config::Ceilings) -> Proxy {
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    spec.tenant("acme").limits = Some(acme);
    Proxy::start(spec)
}

#[test]
fn token_ceiling_reserves_before_and_settles_after() {
    let mock = start_mock();
    // No max_tokens: each call reserves one token per body byte (37) plus 150 (the assumed
    // ceiling) but really uses about 30 (the mock answers 16 completion tokens), which
    // settlement gives back.
    let proxy = llm_proxy(
        mock,
        config::Ceilings {
            tokens_per_minute: Some(400),
            assumed_max_tokens: Some(150),
            ..Default::default()
        },
    );
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = llm_chat(proxy.sidecar_port, body, "");
        // Settlement runs in the logging phase, just before the audit record is written.
        proxy.audit_record("acme", &r.request_id());
        statuses.push(r.status);
    }
    // Without settlement only 2 calls would fit (2 x 187 = 374; a third would reach 561).
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        allowed >= 5,
        "settlement returned unused reservations: {statuses:?}"
    );
    let r = llm_chat(
        proxy.sidecar_port,
        r#"{"model":"gpt-4o-mini","max_tokens":1000,"messages":[]}"#,
        "",
    );
    r.assert_refused(429, "token_limit");
    assert!(r.header("retry-after").is_some());
    let recs = proxy.wait_audit_records("acme", 7);
    let ok = recs.iter().find(|r| r["decision"] == "allow").unwrap();
    assert_eq!(ok["reserved"]["tokens"].as_u64(), Some(187), "{ok}");
    assert!(ok["usage"]["output_tokens"].as_u64().unwrap() == 16, "{ok}");
    // A call without a model is counted as a call, never as tokens.
    let tool = forward_get(
        proxy.sidecar_port,
        &format!("http://127.0.0.1:{mock}/acme/tool"),
        None,
        "",
    );
    assert_eq!(tool.status, 200);
}

#[test]
fn sixty_four_concurrent_calls_never_overshoot_the_token_ceiling() {
    let mock = start_mock();
    let proxy = llm_proxy(
        mock,
        config::Ceilings {
            tokens_per_minute: Some(1000),
            ..Default::default()
        },
    );
    let port = proxy.sidecar_port;
    let body = r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[]}"#;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|_| s.spawn(|| llm_chat(port, body, "").status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        allowed > 0 && statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let recs = proxy.wait_audit_records("acme", 64);
    let spent = tokens_spent(&recs);
    println!(
        "64 concurrent calls, ceiling 1000 tokens/min: {allowed} admitted, {spent} tokens spent"
    );
    assert!(
        spent <= 1000,
        "overshoot: {spent} tokens spent against a ceiling of 1000"
    );
}
