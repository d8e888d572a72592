//! The revocation list every replica shares: `tenant-proxy token revoke` writes a token id to
//! the limiter's Redis and every replica refuses the token within a refresh, while the
//! `revoked_jtis_file` stays a second source; a list that cannot be read fails closed.

use std::time::{Duration, Instant};

use crate::support::*;

/// Asserts that refusal `r` is audited in acme's partition (the revoked token was acme's), with
/// its code and the token's id, and in no other tenant's.
fn audited_for_acme(proxy: &Proxy, r: &Response, code: &str, jti: &str) {
    let id = r.request_id();
    let record = proxy.audit_record("acme", &id);
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("deny"), Some(code)),
        "{record}"
    );
    assert_eq!(record["workload"], "bot", "{record}");
    assert_eq!(record["token_id"], jti, "{record}");
    // Refused before its target was read, the request still names its method.
    assert!(
        ["GET", "CONNECT"].contains(&record["method"].as_str().unwrap()),
        "{record}"
    );
    assert!(proxy
        .audit_records("globex")
        .iter()
        .all(|other| other["request_id"] != id.as_str()));
}

fn status_with(proxy: &Proxy, origin: &Origin, token: &str) -> Response {
    forward_get(
        proxy.shared_port,
        &format!("http://127.0.0.1:{}/acme/rev", origin.port),
        Some(token),
        "",
    )
}

/// `tenant-proxy token revoke` of `jti` for an hour, with `proxy`'s configuration.
fn revoke(proxy: &Proxy, jti: &str) {
    let config = proxy.path("tenant-proxy.toml");
    let (code, out) = proxy_cli(
        proxy.dir.path(),
        &[
            "token",
            "revoke",
            "--config",
            config.to_str().unwrap(),
            "--jti",
            jti,
            "--keep",
            "1h",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_revocation_in_redis_reaches_every_replica_and_the_file_still_counts() {
    let mut redis = RedisServer::start();
    let origin = Origin::start();
    let start = || {
        Proxy::start(
            ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_millis(200)),
        )
    };
    let (a, b) = (start(), start());
    let doomed = token(TokenOpts {
        jti: Some("shared-revoke-1"),
        ..Default::default()
    });
    let kept = token(TokenOpts {
        jti: Some("kept-1"),
        ..Default::default()
    });
    let in_file = token(TokenOpts {
        jti: Some("revoked-jti-1"),
        ..Default::default()
    });
    for p in [&a, &b] {
        assert_eq!(status_with(p, &origin, &doomed).status, 200);
        let r = status_with(p, &origin, &in_file);
        r.assert_refused(407, "identity_invalid");
        audited_for_acme(p, &r, "identity_invalid", "revoked-jti-1");
    }

    revoke(&a, "shared-revoke-1");
    let score: u64 = redis.command("ZSCORE tp:{revocations}:jtis shared-revoke-1")[0]
        .parse()
        .unwrap();
    assert!(score > now() + 3000 && score <= now() + 3600, "{score}");

    // Both replicas refuse it within a refresh (one second), without a reload.
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in [&a, &b] {
        loop {
            let r = status_with(p, &origin, &doomed);
            if r.status == 407 {
                r.assert_refused(407, "identity_invalid");
                assert!(r.body_text().contains("revoked"), "{}", r.body_text());
                audited_for_acme(p, &r, "identity_invalid", "shared-revoke-1");
                break;
            }
            assert_eq!(r.status, 200);
            assert!(Instant::now() < deadline, "the revocation never arrived");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Other tokens are untouched; the file's revocation still holds.
        assert_eq!(status_with(p, &origin, &kept).status, 200);
        status_with(p, &origin, &in_file).assert_refused(407, "identity_invalid");
    }

    // Redis goes away: once the list is stale, token requests fail closed (the bound listener
    // has no token and is served as long as nothing else needs Redis).
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = status_with(&a, &origin, &kept);
        if r.status == 503 {
            r.assert_refused(503, "limiter_unavailable");
            audited_for_acme(&a, &r, "limiter_unavailable", "kept-1");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(Instant::now() < deadline, "a stale list was still trusted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.log().contains("the revocation list is stale"));
    let before = origin.count();
    // Redis is back (empty): the list is read again and the kept token passes again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_with(&a, &origin, &kept).status != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(origin.count() > before);
}

/// A replica that misses the moment Redis comes back empty (paused, or busy) must still see the
/// revocations written after it: the list's version is never given twice, so a later list is
/// never mistaken for the one the replica holds.
#[test]
fn a_revocation_after_redis_lost_its_data_reaches_a_replica_that_missed_the_loss() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let a = Proxy::start(
        ProxySpec::default().with_redis_limiter(redis.url(), Duration::from_millis(200)),
    );
    let refused_within = |jti: &'static str, what: &str| {
        let t = token(TokenOpts {
            jti: Some(jti),
            ..Default::default()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = status_with(&a, &origin, &t);
            if r.status == 407 {
                r.assert_refused(407, "identity_invalid");
                return;
            }
            assert_eq!(r.status, 200);
            assert!(
                Instant::now() < deadline,
                "{what}: the revocation never arrived"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    revoke(&a, "before-the-loss");
    refused_within("before-the-loss", "first revocation");
    // The replica sleeps through the loss: Redis comes back empty and gets one revocation,
    // which a counted version would number as the replica's own.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &a.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    redis.command("FLUSHALL");
    revoke(&a, "after-the-loss");
    signal("-CONT");
    refused_within("after-the-loss", "revocation after the loss");
}

/// A response that streams for long (an LLM's SSE answer) is judged again as it passes: once
/// its token is revoked it ends within a reload and a second, with an SSE error event saying
/// why, and its record says it was ended so. A stream asked for with another token runs on.
#[test]
fn a_stream_running_when_its_token_is_revoked_ends_with_an_event_saying_why() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mock = start_mock();
    let mut spec = ProxySpec::default();
    spec.llm_route(mock);
    let proxy = Proxy::start(spec);
    // A stream of 60 deltas 100 ms apart, read up to its first delta: the reader, and the
    // request id from its head.
    let open = |bearer: &str| {
        let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", proxy.shared_port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            sock,
            "POST /llm/chat/completions HTTP/1.1\r\nHost: llm\r\nProxy-Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\nx-mock-output-tokens: 60\r\nx-mock-chunk-delay-ms: 100\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(sock);
        let (mut line, mut request_id) = (String::new(), String::new());
        while !line.contains("\"content\"") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "no first delta");
            if let Some(id) = line.to_ascii_lowercase().strip_prefix("x-request-id:") {
                request_id = id.trim().to_string();
            }
            assert!(
                !line.starts_with("HTTP/1.1 ") || line.contains(" 200 "),
                "{line}"
            );
        }
        (reader, request_id)
    };
    // Everything the stream still sends, to its end.
    let rest = |mut reader: BufReader<std::net::TcpStream>| {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    };
    let doomed = token(TokenOpts {
        jti: Some("stream-revoked"),
        ..Default::default()
    });
    let kept = token(TokenOpts {
        jti: Some("stream-kept"),
        ..Default::default()
    });
    let (doomed_stream, id) = open(&doomed);
    let (kept_stream, kept_id) = open(&kept);
    std::fs::write(proxy.path("revoked.txt"), "revoked-jti-1\nstream-revoked\n").unwrap();
    proxy.sighup();
    let revoked_at = Instant::now();
    let text = rest(doomed_stream);
    assert!(
        revoked_at.elapsed() < Duration::from_secs(4),
        "the stream ran on for {:?} after its token was revoked",
        revoked_at.elapsed()
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"code\":\"identity_invalid\""), "{text}");
    assert!(text.contains(&id), "the event names the request: {text}");
    let record = proxy.audit_record("acme", &id);
    assert_eq!(record["ended"], "token_revoked", "{record}");
    assert_eq!(record["reason"], "identity_invalid", "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
    // The other token's stream was not touched.
    let text = rest(kept_stream);
    assert!(text.contains("[DONE]"), "{text}");
    let record = proxy.audit_record("acme", &kept_id);
    assert!(record["ended"].is_null(), "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
}
