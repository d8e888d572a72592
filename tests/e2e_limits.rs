//! Rate and concurrency ceilings end to end (in-memory backend): fast 429s with `Retry-After`,
//! per-tenant counters that another tenant's traffic never moves, leases given back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step should panic

mod support;

use std::time::{Duration, Instant};

use support::*;

const LIMITS: &str = r#"
[tenants.acme.limits]
requests_per_minute = 5

[tenants.acme.workload_limits.researcher]
concurrency = 1
"#;

fn url(origin: &Origin, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", origin.port)
}

#[test]
fn tenant_rate_ceiling_refuses_fast_and_leaves_other_tenants_alone() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec {
        tenants_extra: LIMITS.into(),
        ..Default::default()
    });
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
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "{}",
        r.body_text()
    );
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
    assert_eq!(
        forward_get(proxy.sidecar_port, &url(&origin, "/acme/r"), None, "").status,
        429
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"tenant_proxy_requests_total{code="rate_limited",decision="deny",tenant="acme"} 2"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"code="rate_limited",decision="deny",tenant="globex""#));
}

#[test]
fn workload_concurrency_lease_is_returned_when_the_request_ends() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec {
        tenants_extra: LIMITS.replace("requests_per_minute = 5", "requests_per_minute = 100"),
        ..Default::default()
    });
    let researcher = token_for("acme", "researcher");
    let port = proxy.shared_port;
    let slow_url = url(&origin, "/slow/c");
    let tok = researcher.clone();
    let slow = std::thread::spawn(move || forward_get(port, &slow_url, Some(&tok), "").status);
    // Wait until the slow request is at the origin (holding its lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.matching("/slow/c").is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = forward_get(port, &url(&origin, "/acme/c"), Some(&researcher), "");
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "concurrency_limited"),
        "{}",
        r.body_text()
    );
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
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(
        forward_get(port, &url(&origin, "/acme/c2"), Some(&researcher), "").status,
        200,
        "lease given back"
    );
}
