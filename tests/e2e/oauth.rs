//! OAuth2 token credentials end to end: the agent writes `Authorization: Bearer $CRED{gapi}`;
//! the proxy obtains an access token from the tenant's own token endpoint (a stand-in that
//! verifies the client secret or the service account's RS256 assertion itself and counts its
//! grants), caches it, refreshes it once when it expires, keeps tenants apart, drops it on
//! rotation, and refuses with `credential_unavailable` when none can be had, without slowing
//! other tenants. Neither the token nor the secret it was minted from reaches any sink.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use crate::support::*;

const ACME_SECRET: &str = "acme-client-secret-canary-9f3b21";
const GLOBEX_SECRET: &str = "globex-client-secret-canary-c07d5e";
const ROTATED_SECRET: &str = "acme-rotated-secret-canary-41aa0c";
const SA_EMAIL: &str = "agent@acme-project.iam.gserviceaccount.com";
const SA_KEY: &str = include_str!("../fixtures/oauth/test-service-account.pem");
const SA_PUBLIC: &str = include_str!("../fixtures/oauth/test-service-account.pub.pem");
const RUST_LOG: &str =
    "trace,pingora_proxy::proxy_h1=trace,pingora_core=trace,pingora_core::protocols::http::v1::client=trace,pingora=trace";

fn put(dir: &Path, tenant: &str, name: &str, kind: &str, value: &str) {
    put_bound(dir, tenant, name, kind, "127.0.0.1", value);
}

fn put_bound(dir: &Path, tenant: &str, name: &str, kind: &str, bind: &str, value: &str) {
    let args = [
        "cred",
        "--config",
        "tenant-proxy.toml",
        "put",
        "--tenant",
        tenant,
        "--name",
        name,
        "--bind",
        bind,
        "--in",
        "header",
        "--kind",
        kind,
    ];
    let (code, out) = proxy_cli(dir, &args, value);
    assert_eq!(code, 0, "cred put: {out}");
    assert!(!out.contains(value), "cred put printed the value: {out}");
}

fn client(endpoint: &TokenEndpoint, path: &str, id: &str, secret: &str) -> String {
    json!({"token_url": endpoint.url(path), "client_id": id, "client_secret": secret}).to_string()
}

fn service_account(endpoint: &TokenEndpoint) -> String {
    json!({
        "type": "service_account",
        "project_id": "acme-project",
        "private_key_id": "test-key-1",
        "private_key": SA_KEY,
        "client_email": SA_EMAIL,
        "token_uri": endpoint.url("/token"),
    })
    .to_string()
}

/// A proxy with a vault; `fill` writes its credentials. `token_timeout` bounds each grant.
fn start(token_timeout: Duration, env: &[(&str, &str)], fill: impl FnOnce(&Path)) -> Proxy {
    let mut spec = ProxySpec::default();
    spec.tenants.credentials = Some(config::Credentials {
        vault_file: Some("vault.json".into()),
        master_key_file: Some("master.key".into()),
        token_timeout: Some(token_timeout),
        ..Default::default()
    });
    spec.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Proxy::start_prepared(spec, |dir| {
        let (code, out) = proxy_cli(dir, &["cred", "init-master", "--out", "master.key"], "");
        assert_eq!(code, 0, "{out}");
        fill(dir);
    })
}

/// A GET through `port` to the origin's echo path, naming `handle` as the bearer token.
fn call(port: u16, origin: &Origin, token: Option<&str>, handle: &str) -> Response {
    forward_get(
        port,
        &format!("http://127.0.0.1:{}/public/echo/x", origin.port),
        token,
        &format!("Authorization: Bearer $CRED{{{handle}}}\r\n"),
    )
}

/// The bearer token the origin received on each request, in order.
fn bearers(origin: &Origin) -> Vec<String> {
    origin
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("<none>")
                .to_string()
        })
        .collect()
}

#[test]
fn fifty_concurrent_calls_cause_one_grant_and_tenants_never_share_tokens() {
    let endpoint = TokenEndpoint::start(&json!({
        // A slow grant, so that the fifty calls all wait on the same one.
        "acme-client": {"secret": ACME_SECRET, "delay": 0.5},
        "globex-client": {"secret": GLOBEX_SECRET},
        SA_EMAIL: {"public_key": SA_PUBLIC},
    }));
    let origin = Origin::start();
    let proxy = start(Duration::from_secs(10), &[("RUST_LOG", RUST_LOG)], |dir| {
        let acme = client(&endpoint, "/token", "acme-client", ACME_SECRET);
        put(dir, "acme", "gapi", "oauth2_client_credentials", &acme);
        put(
            dir,
            "acme",
            "gcp",
            "google_service_account",
            &service_account(&endpoint),
        );
        let globex = client(&endpoint, "/token", "globex-client", GLOBEX_SECRET);
        put(dir, "globex", "gapi", "oauth2_client_credentials", &globex);
    });

    let answers = all_at_once(50, &[proxy.sidecar_port], |port| {
        call(port, &origin, None, "gapi")
    });
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body_text());
    }
    let granted = endpoint.granted("acme-client");
    assert_eq!(
        granted.len(),
        1,
        "one grant for fifty calls: {:?}",
        endpoint.grants()
    );
    let acme_token = granted[0]["token"].as_str().unwrap().to_string();
    let seen = bearers(&origin);
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|b| *b == acme_token), "{seen:?}");
    // The origin echoed the token back: the agent sees the handle, never the token.
    for a in &answers {
        assert_eq!(a.header("x-echo"), Some("Bearer $CRED{gapi}"));
        assert!(!a.body_text().contains(&acme_token));
    }

    // globex's credential of the same name: its own client, its own grant, its own token.
    let globex = token_for("globex", "agent");
    let g = call(proxy.shared_port, &origin, Some(&globex), "gapi");
    assert_eq!(g.status, 200, "{}", g.body_text());
    let g_granted = endpoint.granted("globex-client");
    assert_eq!(g_granted.len(), 1);
    let globex_token = g_granted[0]["token"].as_str().unwrap().to_string();
    assert_ne!(globex_token, acme_token);
    assert_eq!(bearers(&origin).last().unwrap(), &globex_token);
    // globex cannot reach acme's service account by any name.
    for handle in ["gcp", "acme.gcp"] {
        call(proxy.shared_port, &origin, Some(&globex), handle)
            .assert_refused(403, "credential_unknown");
    }
    assert!(endpoint.granted(SA_EMAIL).is_empty());

    // The service account: a JWT bearer grant the endpoint verified with the key's public half.
    let s = call(proxy.sidecar_port, &origin, None, "gcp");
    assert_eq!(s.status, 200, "{}", s.body_text());
    let sa = endpoint.granted(SA_EMAIL);
    assert_eq!(sa.len(), 1, "{:?}", endpoint.grants());
    assert_eq!(
        sa[0]["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(
        bearers(&origin).last().unwrap(),
        sa[0]["token"].as_str().unwrap()
    );
    assert!(endpoint.grants().iter().all(|g| g["ok"] == true));

    // Counted per tenant; records name the credential, never a token.
    let metrics = proxy.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_proxy_credential_token_grants_total",
            "tenant",
            "acme"
        ),
        2.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_proxy_credential_token_grants_total",
            "tenant",
            "globex"
        ),
        1.0
    );
    let recs = proxy.wait_audit_records("acme", 51);
    assert!(recs.iter().any(|r| r["credentials"] == json!(["gapi"])));
    let g_recs = proxy.wait_audit_records("globex", 3);
    // Every sink, at trace level: the log, the metrics, both tenants' audit records.
    let sinks = format!(
        "{}{}{}{}",
        proxy.log(),
        metrics,
        serde_json::to_string(&recs).unwrap(),
        serde_json::to_string(&g_recs).unwrap()
    );
    let sa_token = sa[0]["token"].as_str().unwrap();
    let key_body = SA_KEY.lines().nth(1).unwrap();
    // The secrets and tokens themselves, and the Basic credentials the grants carried.
    let basic = |id: &str, secret: &str| STANDARD.encode(format!("{id}:{secret}"));
    let encoded = [
        basic("acme-client", ACME_SECRET),
        basic("globex-client", GLOBEX_SECRET),
        STANDARD.encode(&acme_token),
        STANDARD.encode(ACME_SECRET),
    ];
    let plain = [
        ACME_SECRET,
        GLOBEX_SECRET,
        &acme_token,
        &globex_token,
        sa_token,
        key_body,
    ];
    for canary in plain
        .iter()
        .copied()
        .chain(encoded.iter().map(String::as_str))
    {
        assert!(!sinks.contains(canary), "{canary} leaked");
    }
}

#[test]
fn an_expired_token_is_refreshed_by_one_grant_and_a_rotated_secret_drops_its_token() {
    let endpoint = TokenEndpoint::start(&json!({
        "acme-client": {"secret": ACME_SECRET, "expires_in": 6, "delay": 0.3},
        "acme-long": {"secret": ACME_SECRET},
        "acme-rotated": {"secret": ROTATED_SECRET},
    }));
    let origin = Origin::start();
    let proxy = start(Duration::from_secs(10), &[], |dir| {
        let acme = client(&endpoint, "/token", "acme-client", ACME_SECRET);
        put(dir, "acme", "gapi", "oauth2_client_credentials", &acme);
        let long = client(&endpoint, "/token", "acme-long", ACME_SECRET);
        put(dir, "acme", "long", "oauth2_client_credentials", &long);
    });
    let first = call(proxy.sidecar_port, &origin, None, "gapi");
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(endpoint.granted("acme-client").len(), 1);
    // Due for refresh (a quarter of its 6 s lifetime early, at 4.5 s): ten calls at once, one
    // refresh (whose token is fresh for the next 4.5 s, however slowly the ten arrive).
    std::thread::sleep(Duration::from_millis(4700));
    let answers = all_at_once(10, &[proxy.sidecar_port], |port| {
        call(port, &origin, None, "gapi")
    });
    assert!(answers.iter().all(|a| a.status == 200));
    let granted = endpoint.granted("acme-client");
    assert_eq!(granted.len(), 2, "one refresh: {granted:?}");
    let seen = bearers(&origin);
    assert_eq!(seen[0], granted[0]["token"].as_str().unwrap());
    assert!(
        seen[1..]
            .iter()
            .all(|b| b == granted[1]["token"].as_str().unwrap()),
        "every later call used the refreshed token: {seen:?}"
    );

    // Rotation: `long` holds a token for an hour; a new value (another client) goes into the
    // vault. The first request after the reload is served with a token minted from the new
    // value, never the old value's (still unexpired) one.
    let r = call(proxy.sidecar_port, &origin, None, "long");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let old_token = endpoint.granted("acme-long")[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bearers(&origin).last().unwrap(), &old_token);
    let rotated = client(&endpoint, "/token", "acme-rotated", ROTATED_SECRET);
    put(
        &proxy.path(""),
        "acme",
        "long",
        "oauth2_client_credentials",
        &rotated,
    );
    proxy.sighup();
    // Until the reload lands the old value (and its token) is still the credential; from the
    // first request after it, only the new value's token is sent. (A request admitted under the
    // old snapshot just before the swap may still be served from the old value: until the new
    // value's token is seen, any of the old value's is accepted.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_token = loop {
        let r = call(proxy.sidecar_port, &origin, None, "long");
        assert_eq!(r.status, 200, "{}", r.body_text());
        let sent = bearers(&origin).last().unwrap().clone();
        let from_rotated = endpoint
            .granted("acme-rotated")
            .iter()
            .any(|g| g["token"].as_str() == Some(sent.as_str()));
        if from_rotated {
            break sent;
        }
        let from_old_value = endpoint
            .granted("acme-long")
            .iter()
            .any(|g| g["token"].as_str() == Some(sent.as_str()));
        assert!(
            from_old_value,
            "a token from neither value was sent: {sent}"
        );
        assert!(
            Instant::now() < deadline,
            "the old value's token was still sent after the reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rotated_grants = endpoint.granted("acme-rotated");
    assert_eq!(rotated_grants.len(), 1, "{:?}", endpoint.grants());
    assert_eq!(new_token, rotated_grants[0]["token"].as_str().unwrap());
    for _ in 0..3 {
        let r = call(proxy.sidecar_port, &origin, None, "long");
        assert_eq!(r.status, 200);
        assert_eq!(bearers(&origin).last().unwrap(), &new_token);
    }
    assert_eq!(endpoint.granted("acme-long").len(), 1);
}

#[test]
fn a_failing_token_endpoint_refuses_its_tenant_with_503_and_leaves_others_alone() {
    let endpoint = TokenEndpoint::start(&json!({
        "acme-client": {"secret": ACME_SECRET},
        "globex-client": {"secret": GLOBEX_SECRET},
    }));
    let origin = Origin::start();
    // A port with nothing behind it (held, never listening).
    let closed = HeldPort::closed().unwrap();
    let proxy = start(Duration::from_secs(2), &[], |dir| {
        // acme: one endpoint that hangs, one that refuses the client, one that is down, and
        // one whose secret is wrong.
        let slow = client(&endpoint, "/slow/token", "acme-client", ACME_SECRET);
        put(dir, "acme", "slow", "oauth2_client_credentials", &slow);
        let denied = client(&endpoint, "/deny/token", "acme-client", ACME_SECRET);
        put(dir, "acme", "denied", "oauth2_client_credentials", &denied);
        let down = json!({"token_url": format!("http://127.0.0.1:{}/token", closed.port), "client_id": "acme-client", "client_secret": ACME_SECRET}).to_string();
        put(dir, "acme", "down", "oauth2_client_credentials", &down);
        let wrong = client(&endpoint, "/token", "acme-client", "not-the-secret");
        put(dir, "acme", "wrong", "oauth2_client_credentials", &wrong);
        let globex = client(&endpoint, "/token", "globex-client", GLOBEX_SECRET);
        put(dir, "globex", "gapi", "oauth2_client_credentials", &globex);
    });
    let globex = token_for("globex", "agent");

    // While acme's grant hangs, globex's calls are served.
    let sidecar = proxy.sidecar_port;
    std::thread::scope(|s| {
        let stuck = s.spawn(|| call(sidecar, &origin, None, "slow"));
        for _ in 0..3 {
            let g = call(proxy.shared_port, &origin, Some(&globex), "gapi");
            assert_eq!(g.status, 200, "{}", g.body_text());
        }
        assert!(
            !stuck.is_finished(),
            "acme's call was still waiting on its token endpoint"
        );
        let r = stuck.join().unwrap();
        let body = r.assert_refused(503, "credential_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`slow`") && message.contains("did not answer"),
            "{message}"
        );
    });
    assert_eq!(endpoint.granted("globex-client").len(), 1);

    for (handle, why) in [
        ("denied", "answered 401"),
        ("down", "could not be reached"),
        ("wrong", "answered 401"),
    ] {
        let r = call(proxy.sidecar_port, &origin, None, handle);
        let body = r.assert_refused(503, "credential_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{handle}: {message}");
        assert!(!message.contains(ACME_SECRET), "{message}");
        // Audited in acme's partition, naming the credential.
        let rec = proxy.audit_record("acme", &r.request_id());
        assert_eq!(rec["reason"], "credential_unavailable", "{rec}");
        assert_eq!(rec["credentials"], json!([handle]), "{rec}");
    }
    // Nothing was forwarded without its token.
    assert!(bearers(&origin)
        .iter()
        .all(|b| b.starts_with("tok-globex-client-")));
    let metrics = proxy.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "tenant_proxy_credential_token_grants_total",
            "tenant",
            "acme"
        ),
        4.0,
        "four failed grants"
    );
    assert!(!proxy.log().contains(ACME_SECRET));
}

#[test]
fn a_lifetime_of_any_size_is_served_bounded_and_audited() {
    // Token endpoints that answer `expires_in` of 2^64-1 (a number, a string) or 2^63-1: the
    // number is theirs to choose, and no clock can add it to the present.
    let endpoint = TokenEndpoint::start(&json!({
        "acme-huge": {"secret": ACME_SECRET, "expires_in": u64::MAX},
        "acme-hugestr": {"secret": ACME_SECRET, "expires_in": u64::MAX.to_string()},
        "acme-big63": {"secret": ACME_SECRET, "expires_in": i64::MAX},
    }));
    let origin = Origin::start();
    let names = ["huge", "hugestr", "big63"];
    let proxy = start(Duration::from_secs(10), &[], |dir| {
        for name in names {
            let value = client(&endpoint, "/token", &format!("acme-{name}"), ACME_SECRET);
            put(dir, "acme", name, "oauth2_client_credentials", &value);
        }
    });
    let mut ids = Vec::new();
    for name in names {
        // Served, and the token kept: the second call is answered from the cache.
        for _ in 0..2 {
            let r = call(proxy.sidecar_port, &origin, None, name);
            assert_eq!(r.status, 200, "{name}: {}", r.body_text());
            ids.push((name, r.request_id()));
        }
        let granted = endpoint.granted(&format!("acme-{name}"));
        assert_eq!(granted.len(), 1, "{name}: {granted:?}");
        assert_eq!(
            bearers(&origin).last().unwrap(),
            granted[0]["token"].as_str().unwrap()
        );
    }
    for (name, id) in ids {
        let rec = proxy.audit_record("acme", &id);
        assert_eq!(rec["decision"], "allow", "{rec}");
        assert_eq!(rec["credentials"], json!([name]), "{rec}");
    }
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

/// Waits for a reload of the tenant configuration after `before` of them were logged.
fn reloaded_after(proxy: &Proxy, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.log().matches("tenant configuration reloaded").count() <= before {
        assert!(Instant::now() < deadline, "no reload: {}", proxy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What an upstream that keeps what it is sent (`/logged/`: the last `Authorization` it got)
/// shows a later request that carries no secret, through `url`'s host.
fn kept(proxy: &Proxy, url: &str) -> String {
    let r = forward_get(proxy.sidecar_port, url, None, "");
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.json()["last_key"].as_str().unwrap().to_string()
}

#[test]
fn a_host_that_keeps_what_it_is_sent_never_shows_a_token_or_a_value_it_lately_had() {
    const KEY_V1: &str = "sk-acme-key-v1-canary-51e0";
    const KEY_V2: &str = "sk-acme-key-v2-canary-a9c3";
    const GONE: &str = "sk-acme-gone-canary-07d4";
    let endpoint = TokenEndpoint::start(&json!({
        "acme-client": {"secret": ACME_SECRET},
        "acme-rotated": {"secret": ROTATED_SECRET},
    }));
    let origin = Origin::start();
    let proxy = start(Duration::from_secs(10), &[], |dir| {
        let acme = client(&endpoint, "/token", "acme-client", ACME_SECRET);
        put(dir, "acme", "gapi", "oauth2_client_credentials", &acme);
        put(dir, "acme", "key", "static", KEY_V1);
        // The only credential bound to `localhost`: once it is removed, nothing is.
        put_bound(dir, "acme", "gone", "static", "localhost", GONE);
    });
    let here = |path: &str| format!("http://127.0.0.1:{}{path}", origin.port);
    let local = |path: &str| format!("http://localhost:{}{path}", origin.port);
    let bearer = |handle: &str| format!("Authorization: Bearer $CRED{{{handle}}}\r\n");

    // The current access token, sent by a request that used it, shown to one that did not.
    let r = call(proxy.sidecar_port, &origin, None, "gapi");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let token = endpoint.granted("acme-client")[0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bearers(&origin).last().unwrap(), &token);
    assert_eq!(
        kept(&proxy, &here("/public/logged/x")),
        "Bearer $CRED{gapi}"
    );

    // A static value rotated: the old value, still in the upstream's log, is not shown.
    let r = forward_get(
        proxy.sidecar_port,
        &here("/public/echo/x"),
        None,
        &bearer("key"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(bearers(&origin).last().unwrap(), KEY_V1);
    let before = proxy.log().matches("tenant configuration reloaded").count();
    put(&proxy.path(""), "acme", "key", "static", KEY_V2);
    proxy.sighup();
    reloaded_after(&proxy, before);
    assert_eq!(kept(&proxy, &here("/public/logged/x")), "Bearer $CRED{key}");

    // A token credential rotated: the token minted from the old value is dropped, never sent
    // again, but still looked for until it expires.
    let r = call(proxy.sidecar_port, &origin, None, "gapi");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(bearers(&origin).last().unwrap(), &token);
    let before = proxy.log().matches("tenant configuration reloaded").count();
    let rotated = client(&endpoint, "/token", "acme-rotated", ROTATED_SECRET);
    put(
        &proxy.path(""),
        "acme",
        "gapi",
        "oauth2_client_credentials",
        &rotated,
    );
    proxy.sighup();
    reloaded_after(&proxy, before);
    assert_eq!(
        kept(&proxy, &here("/public/logged/x")),
        "Bearer $CRED{gapi}"
    );

    // A token credential bound elsewhere, its value unchanged: the token the old host was sent
    // (and keeps) is still looked for there, and the new host gets a token of its own.
    let r = call(proxy.sidecar_port, &origin, None, "gapi");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let sent = bearers(&origin).last().unwrap().clone();
    let before = proxy.log().matches("tenant configuration reloaded").count();
    put_bound(
        &proxy.path(""),
        "acme",
        "gapi",
        "oauth2_client_credentials",
        "localhost",
        &rotated,
    );
    proxy.sighup();
    reloaded_after(&proxy, before);
    assert_eq!(
        kept(&proxy, &here("/public/logged/x")),
        "Bearer $CRED{gapi}"
    );
    let r = forward_get(
        proxy.sidecar_port,
        &local("/acme/echo/x"),
        None,
        &bearer("gapi"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_ne!(
        bearers(&origin).last().unwrap(),
        &sent,
        "a token of its own"
    );

    // A credential removed, and with it the last one bound to its host: that host's answers
    // are still scrubbed of it (and asked for in a form that can be).
    let r = forward_get(
        proxy.sidecar_port,
        &local("/acme/echo/x"),
        None,
        &bearer("gone"),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(bearers(&origin).last().unwrap(), GONE);
    let before = proxy.log().matches("tenant configuration reloaded").count();
    let args = [
        "cred",
        "--config",
        "tenant-proxy.toml",
        "rm",
        "--tenant",
        "acme",
        "--name",
        "gone",
    ];
    let (code, out) = proxy_cli(&proxy.path(""), &args, "");
    assert_eq!(code, 0, "{out}");
    proxy.sighup();
    reloaded_after(&proxy, before);
    forward_get(
        proxy.sidecar_port,
        &local("/acme/echo/x"),
        None,
        &bearer("gone"),
    )
    .assert_refused(403, "credential_unknown");
    assert_eq!(kept(&proxy, &local("/acme/logged/x")), "Bearer $CRED{gone}");
    let asked = origin.matching("/acme/logged/x");
    assert_eq!(
        asked[0].headers.get("accept-encoding").map(String::as_str),
        Some("identity")
    );

    // Nothing of it reached a sink either.
    let log = proxy.log();
    for secret in [
        token.as_str(),
        KEY_V1,
        KEY_V2,
        GONE,
        ACME_SECRET,
        ROTATED_SECRET,
    ] {
        assert!(!log.contains(secret), "the log has {secret}");
    }
}
