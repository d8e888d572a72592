//! Production Redis: TLS (`rediss://`) with the deployment's own CA, an ACL user whose password
//! comes from a file or the environment, and the whole URL from the environment
//! (`redis_url_env`). A wrong password or an untrusted server fails closed, and the password
//! shows up in no log, metric or error body.

use std::time::Duration;

use tenant_proxy_loadtest::tls::TestCa;

use crate::support::*;

pub(crate) const PASSWORD: &str = "s3cret-redis-pw-7f3a";

/// The CA's PEM and a TLS `redis-server` whose certificate it issued, whose only login is
/// `proxy`/[`PASSWORD`].
pub(crate) fn tls_redis() -> (String, RedisServer) {
    let ca = TestCa::new("redis test CA").unwrap();
    let pair = ca.server(&["127.0.0.1", "localhost"]).unwrap();
    let server = RedisServer::start_tls(
        &pair.cert,
        &pair.key,
        &ca.cert_pem,
        Some(("proxy", PASSWORD)),
    );
    (ca.cert_pem, server)
}

fn assert_no_password(proxy: &Proxy) {
    assert!(
        !proxy.log().contains(PASSWORD),
        "the log shows the password"
    );
    assert!(!proxy.metrics().contains(PASSWORD));
}

#[test]
fn rediss_with_a_private_ca_an_acl_user_and_urls_from_the_environment() {
    let (ca_pem, redis) = tls_redis();
    let files = tempfile::tempdir().unwrap();
    let (ca_file, password_file) = (files.path().join("ca.pem"), files.path().join("redis-pw"));
    std::fs::write(&ca_file, &ca_pem).unwrap();
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let origin = Origin::start();

    let mut spec = ProxySpec::default().with_redis_limiter(
        format!("rediss://127.0.0.1:{}", redis.port),
        Duration::from_millis(500),
    );
    let limiter = &mut spec.config.limiter;
    limiter.redis_username = Some("proxy".into());
    limiter.redis_password_file = Some(password_file);
    limiter.redis_ca_file = Some(ca_file.clone());
    // The audit stream's URL, password included, comes from the environment (a Secret).
    let audit = &mut spec.config.audit;
    audit.redis_url_env = Some("TP_TEST_AUDIT_REDIS_URL".into());
    audit.redis_ca_file = Some(ca_file);
    audit.redis_required = Some(true);
    spec.env.push((
        "TP_TEST_AUDIT_REDIS_URL".into(),
        format!("rediss://proxy:{PASSWORD}@127.0.0.1:{}", redis.port),
    ));
    spec.tenant("acme").limits().requests_per_minute = Some(3);
    let proxy = Proxy::start(spec);

    let url = format!("http://127.0.0.1:{}/acme/tls", origin.port);
    let statuses: Vec<u16> = (0..5)
        .map(|_| forward_get(proxy.sidecar_port, &url, None, "").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The counters are in the TLS server, under acme's tag.
    let keys = redis.cli(&["KEYS", "tp:{acme}:*"]);
    assert!(keys.contains("tp:{acme}:rate_m"), "{keys}");
    // Every record reached acme's stream over TLS, logged in as `proxy`.
    proxy.wait_audit_records("acme", 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis.cli(&["XLEN", "tp:{acme}:audit"]).trim() != "5" {
        assert!(
            std::time::Instant::now() < deadline,
            "stream: {}",
            redis.cli(&["XLEN", "tp:{acme}:audit"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        redis.cli(&["ACL", "LOG"]).trim().is_empty(),
        "no failed login"
    );
    assert_no_password(&proxy);
}

#[test]
fn a_wrong_password_or_an_untrusted_server_fails_closed() {
    let origin = Origin::start();
    let url = format!("http://127.0.0.1:{}/acme/x", origin.port);

    // A plain server with an ACL user; the proxy's password (from the environment) is wrong.
    let acl = RedisServer::start_with_acl("proxy", PASSWORD);
    let mut spec = ProxySpec::default().with_redis_limiter(acl.url(), Duration::from_millis(200));
    spec.config.limiter.redis_username = Some("proxy".into());
    spec.config.limiter.redis_password_env = Some("TP_TEST_REDIS_PASSWORD".into());
    spec.env
        .push(("TP_TEST_REDIS_PASSWORD".into(), format!("{PASSWORD}-wrong")));
    spec.tenant("acme").limits().requests_per_minute = Some(100);
    let wrong = Proxy::start_unready(spec);
    assert_eq!(wrong.readyz(), 503, "never ready without its limiter");
    let r = forward_get(wrong.sidecar_port, &url, None, "");
    r.assert_refused(503, "limiter_unavailable");
    assert!(!r.body_text().contains(PASSWORD));
    assert!(
        acl.cli(&["ACL", "LOG"]).contains("proxy"),
        "the failed login is logged by redis"
    );
    assert!(!wrong.log().contains(&format!("{PASSWORD}-wrong")));

    // A TLS server whose CA the proxy was not given: the system roots do not trust it.
    let (_ca, tls) = tls_redis();
    let mut spec = ProxySpec::default().with_redis_limiter(
        format!("rediss://127.0.0.1:{}", tls.port),
        Duration::from_millis(200),
    );
    spec.config.limiter.redis_username = Some("proxy".into());
    spec.config.limiter.redis_password_env = Some("TP_TEST_REDIS_PASSWORD".into());
    spec.env
        .push(("TP_TEST_REDIS_PASSWORD".into(), PASSWORD.into()));
    spec.tenant("acme").limits().requests_per_minute = Some(100);
    let untrusted = Proxy::start_unready(spec);
    assert_eq!(untrusted.readyz(), 503, "never ready without its limiter");
    let r = forward_get(untrusted.sidecar_port, &url, None, "");
    r.assert_refused(503, "limiter_unavailable");
    assert_eq!(origin.count(), 0, "nothing was forwarded unchecked");
    assert_no_password(&untrusted);
    assert!(tls.cli(&["KEYS", "*"]).trim().is_empty());
}
