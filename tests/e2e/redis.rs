//! The Redis limiter against a real `redis-server`: two proxies enforce one tenant ceiling
//! together, keys carry the tenant hash tag, Redis down means a fast fail-closed refusal, and
//! service comes back by itself when Redis does.

use std::time::{Duration, Instant};

use crate::support::*;

/// (A stopped server refuses connections at once, so the timeout bounds only a hung one; a
/// short one turns a loaded machine's slow answers into `limiter_unavailable`.)
fn proxy_with_redis(redis: &RedisServer) -> Proxy {
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    let acme = spec.tenant("acme").limits();
    acme.requests_per_minute = Some(6);
    acme.concurrency = Some(10);
    Proxy::start(spec)
}

#[test]
fn replicas_share_one_ceiling_and_fail_closed_without_redis() {
    let mut redis = RedisServer::start();
    let origin = Origin::start();
    let (a, b) = (proxy_with_redis(&redis), proxy_with_redis(&redis));
    let url = format!("http://127.0.0.1:{}/acme/shared", origin.port);

    // Eight calls spread over two replicas against a ceiling of six: exactly six pass.
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            forward_get(
                if i % 2 == 0 {
                    a.sidecar_port
                } else {
                    b.sidecar_port
                },
                &url,
                None,
                "",
            )
            .status
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(origin.matching("/acme/shared").len(), 6);

    // Every key carries the tenant as a hash tag; globex (no ceilings) has none; leases were
    // given back.
    // Leases are returned in each request's logging phase, which then writes its audit record.
    a.wait_audit_records("acme", 4);
    b.wait_audit_records("acme", 4);
    let keys = redis.command("KEYS *");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("tp:{acme}:")),
        "{keys:?}"
    );
    assert_eq!(redis.command("ZCARD tp:{acme}:conc"), vec!["0".to_string()]);
    assert_eq!(
        forward_get(
            a.shared_port,
            &format!("http://127.0.0.1:{}/globex/x", origin.port),
            Some(&token_for("globex", "agent")),
            ""
        )
        .status,
        200
    );
    assert!(redis
        .command("KEYS *")
        .iter()
        .all(|k| k.starts_with("tp:{acme}:")));

    // A replica Redis has refused nothing yet: a and b remember acme's rate refusals until the
    // moment Redis named, and refuse acme for rate meanwhile, Redis or not.
    let c = proxy_with_redis(&redis);

    // Redis stops: refusals are immediate 503s with Retry-After, nothing is forwarded.
    redis.stop();
    forward_get(a.sidecar_port, &url, None, "").assert_refused(429, "rate_limited");
    let before = origin.count();
    let started = Instant::now();
    let r = forward_get(c.sidecar_port, &url, None, "");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no stall: {:?}",
        started.elapsed()
    );
    r.assert_refused(503, "limiter_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(origin.count(), before);
    assert_eq!(
        c.audit_record("acme", &r.request_id())["reason"],
        "limiter_unavailable"
    );
    assert!(c.metrics().contains("tenant_proxy_limiter_errors_total"));

    // Redis comes back (empty): every replica recovers without a restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in [a.sidecar_port, b.sidecar_port, c.sidecar_port] {
        while forward_get(p, &url, None, "").status != 200 {
            assert!(Instant::now() < deadline, "no recovery");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `/readyz`'s status and body.
/// The deadline an admission carries is Redis's time by the monotonic clock: a proxy whose wall
/// clock steps back an hour (NTP, a VM resumed) goes on admitting at once (the deadline was
/// put an hour into Redis's past until the next probe, and every call refused
/// `limiter_unavailable`); one that steps forward charges nothing late.
#[test]
fn a_step_of_the_wall_clock_refuses_nothing_for_redis() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let clock = FakeClock::new();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    spec.tenant("acme").limits().requests_per_minute = Some(1000);
    spec.env.extend(clock.env());
    let proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/step", origin.port);
    // A probe has measured Redis's clock (readiness waits for it).
    assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
    for step in [-3_600, 3_600] {
        clock.step_to(step);
        for _ in 0..5 {
            let r = forward_get(proxy.sidecar_port, &url, None, "");
            assert_eq!(
                r.status,
                200,
                "after a step of {step:+} s: {}",
                r.body_text()
            );
        }
    }
}

fn readiness(proxy: &Proxy) -> (u16, serde_json::Value) {
    let r = raw_request_to(
        proxy.admin_addr(),
        "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    (r.status, r.json())
}

/// Waits (at most 10 s) until `/readyz` answers `status`, and returns its body.
fn wait_readiness(proxy: &Proxy, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, body) = readiness(proxy);
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stays {now}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readiness_and_usage_follow_redis_under_fail_closed() {
    let mut redis = RedisServer::start();
    let proxy = proxy_with_redis(&redis);
    let (status, body) = readiness(&proxy);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limiter_connected"], true, "{body}");
    let usage = |p: &Proxy| {
        raw_request_to(
            p.admin_addr(),
            "GET /usage?tenant=acme&run=run-1 HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
    };
    assert_eq!(usage(&proxy).status, 200);

    // Redis stops and no request comes: the probe notices within seconds.
    redis.stop();
    let started = Instant::now();
    let body = wait_readiness(&proxy, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["limiter_connected"], false, "{body}");
    assert_eq!(body["audit_writable"], true, "{body}");
    // Usage cannot be read: the counters' fault, not the caller's.
    let r = usage(&proxy);
    r.assert_refused(503, "limiter_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // An unknown tenant is still the caller's (and needs no Redis to tell).
    raw_request_to(
        proxy.admin_addr(),
        "GET /usage?tenant=nobody HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .assert_refused(404, "not_found");

    // Redis comes back: ready again without a request or a restart.
    redis.restart();
    let body = wait_readiness(&proxy, 200);
    assert_eq!(body["limiter_connected"], true, "{body}");
    assert_eq!(usage(&proxy).status, 200);
}

/// Every connection the proxy holds (one per worker thread, the admin port's, the probe's)
/// dies with the server it was made to. Once Redis answers again, none of them may cost a
/// request: the call that finds its connection dead is sent again on the new one.
#[test]
fn once_redis_is_back_no_call_is_refused_for_a_connection_the_old_server_closed() {
    let mut redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    spec.tenant("acme").limits().concurrency = Some(10);
    let proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/conns", origin.port);
    let statuses = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| forward_get(proxy.sidecar_port, &url, None, "").status)
            .collect()
    };
    let usage = || {
        raw_request_to(
            proxy.admin_addr(),
            "GET /usage?tenant=acme HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .status
    };
    // A thread's own connection is made in the background after its first call: several
    // rounds, so that every worker and the admin port have theirs.
    for _ in 0..3 {
        assert!(statuses(10).iter().all(|s| *s == 200));
        assert_eq!(usage(), 200);
        std::thread::sleep(Duration::from_millis(200));
    }

    // An outage with traffic: every connection fails and its remaking fails too.
    redis.stop();
    wait_readiness(&proxy, 503);
    assert!(statuses(10).iter().all(|s| *s == 503));
    assert_eq!(usage(), 503);
    // Longer than a connection's own attempts to remake itself, which now have failed.
    std::thread::sleep(Duration::from_secs(1));

    redis.restart();
    wait_readiness(&proxy, 200);
    let after: Vec<u16> = (0..4).flat_map(|_| statuses(10)).collect();
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
    assert_eq!(usage(), 200);
    assert_eq!(origin.count(), 30 + 40);
}

/// Calls that end while Redis is down cannot give their concurrency slots back then; the slots
/// are released once Redis answers again, not minutes later when their leases expire
/// (`lease_ttl`, 5 min by default), so a short outage does not lock the tenant out.
#[test]
fn slots_whose_release_failed_are_released_once_redis_answers() {
    let mut redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    spec.config.limiter.on_unavailable = Some(config::OnUnavailable::FailClosed);
    spec.tenant("acme").limits().concurrency = Some(2);
    let proxy = Proxy::start(spec);
    let slow = format!("http://127.0.0.1:{}/acme/slow/x", origin.port);
    let quick = format!("http://127.0.0.1:{}/acme/x", origin.port);
    let port = proxy.sidecar_port;
    // Two calls take both slots.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let slow = slow.clone();
            std::thread::spawn(move || forward_get(port, &slow, None, "").status)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.matching("/acme/slow/").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow calls were not admitted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Redis goes down with their leases saved, and comes back with them: the calls ended
    // while it was down, so nothing released them then.
    assert_eq!(redis.command("SAVE"), ["OK"]);
    redis.stop();
    let statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, [200, 200]);
    // Down past the settlements' time box (1 s): they have failed for good.
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let leases = redis.command("KEYS *conc*");
    assert!(
        !leases.is_empty(),
        "the leases came back with Redis: {leases:?}"
    );
    let back = Instant::now();
    loop {
        let r = forward_get(port, &quick, None, "");
        if r.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "still refused {:?} after Redis came back: {}",
            back.elapsed(),
            r.body_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every lease is gone from Redis, the two failed releases included. (A slot is given back
    // in its request's last phase, just after the answer, so the quick calls' own slots and any
    // admission Redis applied after the proxy gave up on it are waited for here too.)
    while redis.command("ZCARD tp:{acme}:conc") != ["0"] {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "slots still held {:?} after Redis came back",
            back.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both slots are free: two slow calls at once pass.
    let both: Vec<u16> = all_at_once(2, &[port], |p| forward_get(p, &slow, None, ""))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(both, [200, 200]);
}

#[test]
fn local_fallback_keeps_enforcing_per_replica_and_is_counted() {
    let mut redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_millis(100));
    spec.config.limiter.on_unavailable = Some(config::OnUnavailable::LocalFallback);
    spec.tenant("acme").limits().requests_per_minute = Some(3);
    let proxy = Proxy::start(spec);
    redis.stop();
    // The replica serves from its own counters: still ready, but not connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readiness(&proxy);
        assert_eq!(status, 200, "{body}");
        if body["limiter_connected"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{}/acme/fb", origin.port);
    let statuses: Vec<u16> = (0..5)
        .map(|_| forward_get(proxy.sidecar_port, &url, None, "").status)
        .collect();
    // The local counters enforce the same ceiling on this replica. Over it, calls are refused
    // before their admission, as with the memory limiter (a flood during an outage costs no
    // admission per refused request): the three admitted were the admissions counted.
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    // Metrics are counted in each request's logging phase, which writes its audit record.
    proxy.wait_audit_records("acme", 5);
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("tenant_proxy_limiter_fallback_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"tenant_proxy_requests_total{code="rate_limited",decision="deny",tenant="acme"} 2"#
    ));
    assert!(proxy.log().contains("enforcing local counters"));

    // Redis is back (empty): the shared counters decide again at once, whatever the local ones
    // counted during the outage (they would refuse acme for most of a minute).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while readiness(&proxy).1["limiter_connected"] != true {
        assert!(Instant::now() < deadline, "Redis not seen again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = forward_get(proxy.sidecar_port, &url, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn replicas_share_one_token_ceiling() {
    let redis = RedisServer::start();
    let mock = start_mock();
    let start = || {
        let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(2));
        spec.llm_route(mock);
        spec.tenant("acme").limits().tokens_per_minute = Some(600);
        Proxy::start(spec)
    };
    let (a, b) = (start(), start());
    let body = r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[]}"#;
    let statuses: Vec<u16> = all_at_once(32, &[a.sidecar_port, b.sidecar_port], |p| {
        llm_chat(p, body, "")
    })
    .iter()
    .map(|r| r.status)
    .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let mut recs = a.wait_audit_records("acme", 16);
    recs.extend(b.wait_audit_records("acme", 16));
    let spent = tokens_spent(&recs);
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    println!("two replicas, 32 concurrent calls, ceiling 600 tokens/min: {admitted} admitted, {spent} tokens spent");
    assert!(
        admitted > 0 && spent <= 600,
        "{admitted} admitted, {spent} spent"
    );
    // The minute's counter expires, two minutes after its minute's first admission at most (it
    // is given its expiry once a minute, not at every admission).
    let keys = redis.command("KEYS *");
    let minute = keys
        .iter()
        .find(|k| k.starts_with("tp:{acme}:") && k.contains("tpm"))
        .unwrap_or_else(|| panic!("{keys:?}"));
    let ttl: i64 = redis.command(&format!("PTTL {minute}"))[0].parse().unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{minute} expires in {ttl} ms");
}

/// Prices calls; acme (whose days are New York's) and globex may each spend 2000 micro-units a
/// day.
fn new_york_cost_ceilings(tenants: &mut config::TenantFile) {
    tenants.prices_file = Some("prices.toml".into());
    tenants.tenant("acme").time_zone = Some("America/New_York".into());
    for tenant in ["acme", "globex"] {
        tenants.tenant(tenant).limits().cost_per_day_micros = Some(2000);
    }
}

/// A settlement whose connection was cut after Redis ran it is sent again (the connection
/// manager's second try): it gives back what the reservation did not use once, not twice, so
/// the day's counter is what the call cost (before, twice the unused reservation came off and
/// a tenant's spend went uncounted, past its ceiling).
#[test]
fn a_settlement_sent_twice_corrects_the_counters_once() {
    let redis = RedisServer::start();
    let cutter = RedisRelay::start(&redis);
    cutter.cut_settlements(1);
    let mock = start_mock();
    let mut spec = ProxySpec::default()
        .with_prices()
        .with_redis_limiter(cutter.url(), Duration::from_secs(2));
    spec.llm_route(mock);
    new_york_cost_ceilings(&mut spec.tenants);
    let proxy = Proxy::start(spec);
    // Reserves max_tokens' worth (about 1,000 micro-units of the 2,000 a day), costs a few.
    let body = r#"{"model":"gpt-4o-mini","max_tokens":500,"messages":[{"role":"user","content":"hello"}]}"#;
    let r = llm_chat(proxy.sidecar_port, body, "x-mock-output-tokens: 1\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let recs = proxy.wait_audit_records("acme", 1);
    let spent = cost_spent(&recs);
    assert!(spent > 0 && spent < 100, "{spent}");
    // Settlements sent (a second send counted again), and a moment for the last one to run.
    let settled = |sends: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cutter.sent() < sends {
            assert!(
                Instant::now() < deadline,
                "{} of {sends} settlement sends",
                cutter.sent()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    settled(2);
    assert_eq!(cutter.cut(), 1, "the first send's answer was cut");
    let keys = redis.command("KEYS tp:{acme}:cost:d*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let counted = redis.command(&format!("GET {}", keys[0]));
    assert_eq!(counted, vec![spent.to_string()], "counted once");
    // The counter stays right: a second call still sees the first one's spend.
    let r = llm_chat(proxy.sidecar_port, body, "x-mock-output-tokens: 1\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let recs = proxy.wait_audit_records("acme", 2);
    settled(3);
    let counted = redis.command(&format!("GET {}", keys[0]));
    assert_eq!(counted, vec![cost_spent(&recs).to_string()]);
}

#[test]
fn replicas_never_overshoot_a_cost_ceiling_under_64_concurrent_calls() {
    let redis = RedisServer::start();
    let mock = start_mock();
    let start = || {
        let mut spec = ProxySpec::default()
            .with_prices()
            .with_redis_limiter(redis.url(), Duration::from_secs(2));
        spec.llm_route(mock);
        new_york_cost_ceilings(&mut spec.tenants);
        Proxy::start(spec)
    };
    let (a, b) = (start(), start());
    // With max_tokens every reservation bounds its call's real cost, so the ceiling holds exactly.
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hello"}]}"#;
    let responses = all_at_once(64, &[a.sidecar_port, b.sidecar_port], |p| {
        llm_chat(p, body, "")
    });
    let admitted = responses.iter().filter(|r| r.status == 200).count();
    for r in responses.iter().filter(|r| r.status != 200) {
        r.assert_refused(429, "budget_exhausted");
        assert_eq!(r.json()["error"]["ceiling"], "day");
    }
    let mut recs = a.wait_audit_records("acme", 32);
    recs.extend(b.wait_audit_records("acme", 32));
    let spent = cost_spent(&recs);
    println!("two replicas, 64 concurrent calls, ceiling 2000 micro-units/day: {admitted} admitted, {spent} spent");
    assert!(
        admitted > 0 && spent <= 2000,
        "{admitted} admitted, {spent} spent"
    );

    // What Redis counts is what the calls settled at, under acme's own New York day.
    let keys = redis.command("KEYS *");
    let day_key = keys
        .iter()
        .find(|k| k.starts_with("tp:{acme}:cost:d"))
        .unwrap_or_else(|| panic!("{keys:?}"));
    assert_eq!(
        redis.command(&format!("GET {day_key}")),
        vec![spent.to_string()]
    );
    assert!(
        keys.iter().all(|k| k.starts_with("tp:{acme}:")),
        "globex untouched: {keys:?}"
    );
    let ttl: i64 = redis.command(&format!("TTL {day_key}"))[0].parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 26 * 3600,
        "the day's counter expires after the day: {ttl}"
    );

    // `tenant-proxy usage` reads the same counter from Redis, with no proxy needed; globex reads 0.
    drop((a, b));
    let dir = tempfile::tempdir().unwrap();
    // Nothing binds these addresses: `usage` reads Redis, not a running proxy.
    let mut config = config::StaticFile::new("tenants.toml", "audit");
    config.admin.listen = Some(config::LOOPBACK_ANY_PORT);
    config
        .listeners
        .push(config::Listener::bound("s", "acme", "bot"));
    config.limiter = config::Limiter::redis(redis.url(), Duration::from_millis(500));
    config.write(&dir.path().join("tenant-proxy.toml")).unwrap();
    let mut tenants = standard_tenants();
    new_york_cost_ceilings(&mut tenants);
    tenants.write(&dir.path().join("tenants.toml")).unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/prices.toml"),
        dir.path().join("prices.toml"),
    )
    .unwrap();
    let config = dir.path().join("tenant-proxy.toml");
    let config = config.to_str().unwrap();
    let usage = |tenant: &str| {
        let (code, out) = proxy_cli(
            dir.path(),
            &["usage", "--config", config, "--tenant", tenant, "--json"],
            "",
        );
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scope"] == "tenant" && r["measure"] == "cost_micros")
            .map(|r| r["used"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(usage("acme"), spent);
    assert_eq!(usage("globex"), 0);
}

#[test]
fn daily_cost_rolls_over_at_local_midnight_and_the_month_carries_on() {
    use tenant_proxy::ids::{TenantId, WorkloadId};
    use tenant_proxy::limits::calendar::TenantCalendar;
    use tenant_proxy::limits::redis::{RedisBackend, RedisSettings, Unavailable};
    use tenant_proxy::limits::{
        keys_for, AdmitError, CallKind, Ceilings, Charge, LimitBackend, Subject,
    };

    let redis = RedisServer::start();
    let backend = RedisBackend::start(RedisSettings {
        endpoint: tenant_proxy::redis_conn::RedisEndpoint::from_url(&redis.url()).unwrap(),
        timeout: Duration::from_millis(500),
        lease_ttl: Duration::from_secs(60),
        run_ttl: Duration::from_secs(3600),
        on_unavailable: Unavailable::FailClosed,
    })
    .unwrap();
    let cal = TenantCalendar::new("Asia/Tokyo").unwrap();
    let ceilings = Ceilings {
        cost_per_day_micros: Some(1_000),
        cost_per_month_micros: Some(1_500),
        ..Default::default()
    };
    let (t, w) = (
        TenantId::new("acme").unwrap(),
        WorkloadId::new("bot").unwrap(),
    );
    let who = Subject {
        tenant: &t,
        workload: &w,
        run: None,
    };
    let cost = |n| Charge {
        cost_micros: n,
        ..Charge::default()
    };
    // The last second of a day in Tokyo and then its midnight (15:00Z), not at a month's end,
    // and in the future, since Redis drops a window's counter soon after the window ends. A
    // day's key is named by its local date, so the rollover is a new key starting from zero.
    let mut midnight = cal.day(tenant_proxy::clock::unix_now_i64()).ends_at;
    if cal.month(midnight).id != cal.month(midnight - 1).id {
        midnight = cal.day(midnight).ends_at;
    }
    assert_eq!(midnight % 86_400, 15 * 3_600, "Tokyo midnight is 15:00Z");
    let before = midnight - 1;
    let (day_id, month_id) = (cal.day(before).id, cal.month(before).id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        while !backend.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let day1 = keys_for(who, &ceilings, None, &cal, before, CallKind::Llm);
        let a = backend
            .admit(&day1, cost(900))
            .await
            .expect("the day's first call");
        backend.finish(a, cost(1_000)).await;
        match backend.admit(&day1, cost(1)).await {
            Err(AdmitError::Limited(d)) => assert!(
                d.key.to_string().ends_with(&format!(":cost:d{day_id}")),
                "{d:?}"
            ),
            other => panic!("day spent, got {other:?}"),
        }
        let day2 = keys_for(who, &ceilings, None, &cal, midnight, CallKind::Llm);
        let b = backend
            .admit(&day2, cost(500))
            .await
            .expect("a new day in Tokyo");
        backend.finish(b, cost(500)).await;
        match backend.admit(&day2, cost(1)).await {
            Err(AdmitError::Limited(d)) => assert!(
                d.key.to_string().ends_with(&format!(":cost:m{month_id}")),
                "{d:?}"
            ),
            other => panic!("the month is spent, got {other:?}"),
        }
        assert_eq!(backend.read(&day2).await.unwrap(), vec![500, 1_500]);
    });
}

/// The statuses of `n` GETs of `url` sent at once through the listener on `port`.
fn at_once(n: usize, port: u16, url: &str) -> Vec<u16> {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..n)
            .map(|_| s.spawn(|| forward_get(port, url, None, "").status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// Admissions that Redis runs only after a stall, when the proxy has long refused their
/// requests, charge nothing: no concurrency slot stays held and no allowance is spent.
#[test]
fn admissions_queued_during_a_redis_stall_charge_nothing() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_millis(200));
    let acme = spec.tenant("acme").limits();
    acme.requests_per_minute = Some(20);
    acme.concurrency = Some(10);
    let proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/stall", origin.port);
    // The proxy learns Redis's clock from its probe (every second).
    std::thread::sleep(Duration::from_millis(2500));
    // Redis stalls for three seconds; twelve requests arrive meanwhile, are refused, and their
    // admissions wait in Redis's queue.
    redis.command("CLIENT PAUSE 3000 ALL");
    let refused = at_once(12, proxy.sidecar_port, &url);
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    std::thread::sleep(Duration::from_millis(3500));
    // Redis ran them on resuming: none took a slot, none spent the minute's twenty requests.
    assert_eq!(redis.command("ZCARD tp:{acme}:conc"), ["0"]);
    let after: Vec<u16> = (0..20)
        .map(|_| forward_get(proxy.sidecar_port, &url, None, "").status)
        .collect();
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
    assert_eq!(origin.matching("/acme/stall").len(), 20);
}

/// A request that runs longer than `lease_ttl` keeps its concurrency slot: its lease is renewed
/// while it runs, and released when it ends.
#[test]
fn a_request_longer_than_its_lease_keeps_its_slot() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    spec.config.limiter.lease_ttl = Some(Duration::from_secs(2));
    spec.tenant("acme").limits().concurrency = Some(1);
    let proxy = Proxy::start(spec);
    let port = proxy.sidecar_port;
    let base = format!("http://127.0.0.1:{}/acme", origin.port);
    std::thread::scope(|s| {
        // The origin takes three seconds to answer `/slow/`: a second and a half past the lease.
        let long = s.spawn(|| forward_get(port, &format!("{base}/slow/long"), None, "").status);
        std::thread::sleep(Duration::from_millis(2500));
        let during = forward_get(port, &format!("{base}/during"), None, "");
        during.assert_refused(429, "concurrency_limited");
        assert_eq!(long.join().unwrap(), 200);
    });
    // Ended: the slot is free again (once the request's last phase gave it back, just after
    // its answer), and no lease is left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while forward_get(port, &format!("{base}/after"), None, "").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while redis.command("ZCARD tp:{acme}:conc") != ["0"] {
        assert!(
            std::time::Instant::now() < deadline,
            "a lease was left behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(origin.matching("/acme/during").is_empty());
}

/// A Redis out of memory (`maxmemory` reached, `noeviction`) refuses an admission whole: the
/// request is refused `limiter_unavailable` and nothing of it is counted, whichever ceilings
/// the tenant has (a lease check used to write first, which let the rest of the script through).
#[test]
fn a_redis_out_of_memory_refuses_an_admission_whole() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
    let acme = spec.tenant("acme").limits();
    acme.requests_per_minute = Some(1000);
    acme.concurrency = Some(10);
    let proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/oom", origin.port);
    assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
    let counters = || -> Vec<(String, Vec<String>)> {
        let mut keys = redis.command("KEYS tp:{acme}:*");
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let value = match redis.command(&format!("TYPE {k}"))[0].as_str() {
                    "zset" => redis.command(&format!("ZCARD {k}")),
                    "hash" => redis.command(&format!("HGETALL {k}")),
                    _ => redis.command(&format!("GET {k}")),
                };
                (k, value)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.command("ZCARD tp:{acme}:conc") != ["0"] {
        assert!(
            Instant::now() < deadline,
            "the first request's slot was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = counters();
    redis.command("CONFIG SET maxmemory-policy noeviction");
    redis.command("CONFIG SET maxmemory 1");
    let r = forward_get(proxy.sidecar_port, &url, None, "");
    r.assert_refused(503, "limiter_unavailable");
    assert_eq!(counters(), before);
    assert_eq!(origin.matching("/acme/oom").len(), 1);
    // Redis still answers `TIME`, but refuses every admission: the replica is not ready, so a
    // load balancer moves its traffic to one that can serve it, and is ready again once Redis
    // takes writes.
    let body = wait_readiness(&proxy, 503);
    assert_eq!(body["limiter_connected"], false, "{body}");
    redis.command("CONFIG SET maxmemory 0");
    wait_readiness(&proxy, 200);
    assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
}

/// Replies out of step with their calls (a bulk length no reply fills, as from a reply cut
/// short) leave a connection that never answers again, and the connection manager remakes only
/// a closed one: the limiter makes every connection anew once its probes go unanswered, and
/// serves again (before, every call was refused until Redis closed the connections).
#[test]
fn connections_whose_replies_fell_out_of_step_are_made_anew() {
    let redis = RedisServer::start();
    let relay = RedisRelay::start(&redis);
    let mut spec = ProxySpec::default().with_redis_limiter(relay.url(), Duration::from_secs(1));
    spec.tenant("acme").limits().requests_per_minute = Some(1000);
    let proxy = Proxy::start(spec);
    let origin = Origin::start();
    let url = format!("http://127.0.0.1:{}/acme/steps", origin.port);
    // Every worker thread makes its own connection on its first call: all of them are open
    // before the replies go out of step.
    for _ in 0..3 {
        for _ in 0..20 {
            assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    relay.put_replies_out_of_step();
    let r = forward_get(proxy.sidecar_port, &url, None, "");
    r.assert_refused(503, "limiter_unavailable");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if forward_get(proxy.sidecar_port, &url, None, "").status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", proxy.log());
    }
    assert!(
        proxy.log().contains("making every connection anew"),
        "{}",
        proxy.log()
    );
}

/// The same on one worker's own connection, while the probe's shared one answers: that worker
/// makes its connection anew after five calls in a row without a reply (before, every request
/// it served was refused for good while `/readyz` said ready).
#[test]
fn a_workers_connection_whose_replies_fell_out_of_step_is_made_anew() {
    let redis = RedisServer::start();
    let relay = RedisRelay::start(&redis);
    let mut spec = ProxySpec::default().with_redis_limiter(relay.url(), Duration::from_millis(300));
    spec.config.server.threads = Some(1);
    spec.tenant("acme").limits().requests_per_minute = Some(1000);
    let proxy = Proxy::start(spec);
    let origin = Origin::start();
    let url = format!("http://127.0.0.1:{}/acme/one-worker", origin.port);
    for _ in 0..3 {
        for _ in 0..10 {
            assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    relay.put_reply_out_of_step_for(b"tp:{acme}:");
    let r = forward_get(proxy.sidecar_port, &url, None, "");
    r.assert_refused(503, "limiter_unavailable");
    let deadline = Instant::now() + Duration::from_secs(30);
    while forward_get(proxy.sidecar_port, &url, None, "").status != 200 {
        assert!(Instant::now() < deadline, "{}", proxy.log());
    }
    let log = proxy.log();
    assert!(
        log.contains("a worker's redis connection has not answered its calls"),
        "{log}"
    );
    assert!(
        !log.contains("making every connection anew"),
        "the probe's answered: {log}"
    );
}

/// A Redis that may evict keys would drop counters (a day's spend allowed again): the proxy says
/// so when it connects; the harness's `noeviction` Redis gets no such line.
#[test]
fn a_redis_that_may_evict_keys_is_warned_about() {
    let warning = "may evict keys (maxmemory-policy is not noeviction)";
    let evicting = RedisServer::start_with(
        vec!["--maxmemory-policy".into(), "allkeys-lru".into()],
        Vec::new(),
    );
    let keeping = RedisServer::start();
    let started = |redis: &RedisServer| {
        Proxy::start(ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1)))
    };
    let (warned, quiet) = (started(&evicting), started(&keeping));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned.log().contains(warning) {
        assert!(Instant::now() < deadline, "{}", warned.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(warned.log().contains("allkeys-lru"));
    assert!(quiet.log().contains("limiter connected to redis"));
    assert!(!quiet.log().contains(warning), "{}", quiet.log());
}

/// A Redis that answers but refuses writes is no limiter: a demoted master (now a read-only
/// replica) and an ACL user that lost its right to run scripts make the replica unready, as a
/// Redis that is down does, and ready again once they are undone.
#[test]
fn a_redis_that_answers_but_refuses_admissions_is_not_ready() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let proxy = proxy_with_redis(&redis);
    wait_readiness(&proxy, 200);
    let url = format!("http://127.0.0.1:{}/acme/refused", origin.port);
    let nowhere = HeldPort::closed().unwrap();
    for (break_it, mend) in [
        (
            format!("REPLICAOF 127.0.0.1 {}", nowhere.port),
            "REPLICAOF NO ONE".to_string(),
        ),
        (
            "ACL SETUSER default -@scripting".into(),
            "ACL SETUSER default +@all".into(),
        ),
        // Keys the shared revocation list lives under left out: token requests would be
        // refused (the list not read recently), so the replica is not ready either.
        (
            "ACL SETUSER default resetkeys ~tp:{acme}:* ~tp:{globex}:* ~tp:{limiter}:*".into(),
            "ACL SETUSER default resetkeys ~*".into(),
        ),
    ] {
        redis.command(&break_it);
        let body = wait_readiness(&proxy, 503);
        assert_eq!(body["limiter_connected"], false, "{break_it}: {body}");
        // A token request (its revocations checked) is refused whichever it is.
        let token = token_for("acme", "researcher");
        let r = forward_get(proxy.shared_port, &url, Some(&token), "");
        r.assert_refused(503, "limiter_unavailable");
        redis.command(&mend);
        wait_readiness(&proxy, 200);
    }
    assert!(origin.matching("/acme/refused").is_empty());
    assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
    // An ACL that leaves out the probe's key is outside the README's (`~tp:*`): not ready, and
    // the log says why (a probe that fell back to `TIME` made a user that may write no tenant's
    // key look ready).
    redis.command("ACL SETUSER default resetkeys ~tp:{acme}:* ~tp:{globex}:* ~tp:{revocations}:*");
    wait_readiness(&proxy, 503);
    assert!(proxy.log().contains("may not write `tp:{limiter}:probe`"));
    redis.command("ACL SETUSER default resetkeys ~*");
    wait_readiness(&proxy, 200);
}

/// A stall short enough that Redis still applies the admissions the proxy gave up on: their
/// concurrency slots are released once Redis answers and their deadline has passed, so the
/// tenant is not locked out for `lease_ttl`.
#[test]
fn a_short_stall_leaves_no_slot_held() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_millis(200));
    spec.tenant("acme").limits().concurrency = Some(4);
    let proxy = Proxy::start(spec);
    let url = format!("http://127.0.0.1:{}/acme/short-stall", origin.port);
    assert_eq!(forward_get(proxy.sidecar_port, &url, None, "").status, 200);
    redis.command("CLIENT PAUSE 700 ALL");
    let refused = at_once(6, proxy.sidecar_port, &url);
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    // Applied on resuming (within their deadline), then released: well before `lease_ttl`.
    let deadline = Instant::now() + Duration::from_secs(8);
    while redis.command("ZCARD tp:{acme}:conc") != ["0"] {
        assert!(
            Instant::now() < deadline,
            "slots of refused requests stay held"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after: Vec<u16> = (0..4)
        .map(|_| forward_get(proxy.sidecar_port, &url, None, "").status)
        .collect();
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
}

/// The limiter's Redis is the proxy's own, like its listeners: a tenant's request never reaches
/// it, even where an egress exception covers its address (here all of 127.0.0.1), so no tenant
/// can write there (Redis runs an HTTP request line as an inline command).
#[test]
fn the_limiters_redis_is_never_a_destination() {
    let redis = RedisServer::start();
    let proxy = proxy_with_redis(&redis);
    proxy.assert_refused_as_itself(&format!("http://127.0.0.1:{}/acme/pwned", redis.port));
    assert_eq!(redis.cli(&["EXISTS", "/acme/pwned"]).trim(), "0");
}

/// The commands Redis runs while `during` runs (its `MONITOR` feed, scripts' own calls
/// included), one line each.
fn redis_commands_during(redis: &RedisServer, during: impl FnOnce()) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut monitor = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut feed = BufReader::new(monitor.try_clone().unwrap());
    let mut ok = String::new();
    feed.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim_end(), "+OK");
    during();
    // A command appears in the feed as it runs; once it is quiet for a moment, all have.
    monitor
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut lines = Vec::new();
    let mut line = String::new();
    while feed.read_line(&mut line).is_ok_and(|n| n > 0) {
        lines.push(std::mem::take(&mut line));
    }
    lines
}

/// A tenant flooding past its request rate is refused by the replica that Redis refused it
/// through, without a Redis call per request, until the moment Redis named: a flood cannot
/// load the Redis every tenant of every replica shares. Each refusal is still a 429 with
/// `Retry-After`, audited, and consumes nothing; other tenants' admissions still go to Redis;
/// another replica learns the refusal from Redis itself; and the tenant is admitted again once
/// the moment passes.
#[test]
fn a_rate_flood_is_refused_without_asking_redis_until_redis_would_admit_again() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let spec = || {
        let mut spec = ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_secs(1));
        spec.tenant("acme").limits().requests_per_minute = Some(6);
        spec.tenant("globex").limits().requests_per_minute = Some(600);
        spec
    };
    let (a, b) = (Proxy::start(spec()), Proxy::start(spec()));
    let url = format!("http://127.0.0.1:{}/acme/flood", origin.port);
    for i in 0..6 {
        let r = forward_get(a.sidecar_port, &url, None, "");
        assert_eq!(r.status, 200, "call {i}: {}", r.body_text());
    }
    // Redis refuses the seventh (an admission of its own: the replica had nothing to go by).
    forward_get(a.sidecar_port, &url, None, "").assert_refused(429, "rate_limited");
    a.wait_audit_records("acme", 7);

    let globex = token_for("globex", "agent");
    let globex_url = format!("http://127.0.0.1:{}/globex/calm", origin.port);
    let mut refusals = Vec::new();
    let commands = redis_commands_during(&redis, || {
        for _ in 0..20 {
            refusals.push(forward_get(a.sidecar_port, &url, None, ""));
        }
        let calm = forward_get(a.shared_port, &globex_url, Some(&globex), "");
        assert_eq!(calm.status, 200, "{}", calm.body_text());
        a.wait_audit_records("globex", 1);
    });
    for r in &refusals {
        r.assert_refused(429, "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "retry-after {retry}");
        assert_eq!(
            a.audit_record("acme", &r.request_id())["reason"],
            "rate_limited"
        );
    }
    assert!(
        !commands.iter().any(|c| c.contains("{acme}")),
        "the flood reached Redis: {commands:?}"
    );
    assert!(
        commands.iter().any(|c| c.contains("tp:{globex}:")),
        "globex's admission goes to Redis as before: {commands:?}"
    );
    assert_eq!(origin.matching("/acme/flood").len(), 6, "nothing forwarded");

    // The other replica has not been refused: it asks Redis, which refuses it too.
    let commands = redis_commands_during(&redis, || {
        forward_get(b.sidecar_port, &url, None, "").assert_refused(429, "rate_limited");
    });
    assert!(
        commands.iter().any(|c| c.contains("tp:{acme}:")),
        "{commands:?}"
    );

    // Once the moment Redis named has passed, acme is admitted again: the refusals consumed
    // nothing (six a minute: one every ten seconds).
    let last = refusals.last().unwrap();
    let retry: u64 = last.header("retry-after").unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_secs(retry));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = forward_get(a.sidecar_port, &url, None, "");
        if r.status == 200 {
            break;
        }
        r.assert_refused(429, "rate_limited");
        assert!(
            Instant::now() < deadline,
            "not admitted again after its Retry-After"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(origin.matching("/acme/flood").len(), 7);
}
