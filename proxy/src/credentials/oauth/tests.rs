use super::*;

const KEY: &str = include_str!("../../../../tests/fixtures/oauth/test-service-account.pem");
const PUBLIC: &str = include_str!("../../../../tests/fixtures/oauth/test-service-account.pub.pem");

fn client(extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "token_url": "https://auth.example.com/oauth/token",
        "client_id": "acme-client",
        "client_secret": "canary-client-secret&=",
    });
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    v
}

fn form(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn client_credentials_use_basic_authentication_by_default_and_post_when_asked() {
    let v = client(serde_json::json!({"scope": "read write", "audience": "api"}));
    let source = TokenSource::client_credentials(v.to_string().as_bytes()).expect("parses");
    assert!(!format!("{source:?}").contains("canary"));
    assert_eq!(source.endpoint().host, "auth.example.com");
    assert_eq!(source.endpoint().port, 443);
    assert_eq!(source.endpoint().path_and_query, "/oauth/token");
    let req = source.grant_request(1_000).expect("request");
    assert!(!format!("{req:?}").contains("canary"));
    assert_eq!(
        form(&req.body),
        [
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("scope".into(), "read write".into()),
            ("audience".into(), "api".into()),
        ]
    );
    let auth = req.authorization.as_deref().expect("basic").to_string();
    let decoded = STANDARD
        .decode(auth.strip_prefix("Basic ").expect("basic"))
        .expect("base64");
    // RFC 6749 §2.3.1: the parts are form-encoded before the Basic encoding.
    assert_eq!(decoded, b"acme-client:canary-client-secret%26%3D");

    let post = client(serde_json::json!({"client_auth": "post"}));
    let source = TokenSource::client_credentials(post.to_string().as_bytes()).expect("parses");
    let req = source.grant_request(1_000).expect("request");
    assert!(req.authorization.is_none());
    let pairs = form(&req.body);
    assert!(pairs.contains(&("client_secret".into(), "canary-client-secret&=".into())));
    assert!(pairs.contains(&("client_id".into(), "acme-client".into())));
}

#[test]
fn bad_values_are_refused_without_quoting_them() {
    for (value, needle) in [
        (
            client(serde_json::json!({"token_url": "http://auth.example.com/t"})),
            "https",
        ),
        (
            client(serde_json::json!({"token_url": "ftp://auth.example.com/t"})),
            "https",
        ),
        (
            client(serde_json::json!({"token_url": "https://u:canary@auth.example.com/t"})),
            "user information",
        ),
        (
            client(serde_json::json!({"client_secret": ""})),
            "client_secret",
        ),
        (client(serde_json::json!({"unknown": "canary"})), "JSON"),
        (client(serde_json::json!({"client_auth": "canary"})), "JSON"),
    ] {
        let err =
            TokenSource::client_credentials(value.to_string().as_bytes()).expect_err("refused");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("canary"), "{err}");
    }
    // Plain http only toward loopback.
    for url in [
        "http://127.0.0.1:9/t",
        "http://localhost/t",
        "http://[::1]:8/t",
    ] {
        let v = client(serde_json::json!({"token_url": url}));
        let s = TokenSource::client_credentials(v.to_string().as_bytes()).expect(url);
        assert!(!s.endpoint().tls);
    }
    let not_json = TokenSource::client_credentials(b"canary-not-json").expect_err("refused");
    assert!(!not_json.contains("canary"), "{not_json}");
    let sa = serde_json::json!({"type": "service_account", "client_email": "a@b", "private_key": "canary-not-a-key"});
    let err = TokenSource::service_account(sa.to_string().as_bytes()).expect_err("refused");
    assert!(err.contains("RSA") && !err.contains("canary"), "{err}");
}

#[test]
fn service_account_assertions_are_rs256_signed_for_the_token_endpoint() {
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": KEY,
        "client_email": "agent@p.iam.gserviceaccount.com",
        "client_id": "123",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let source = TokenSource::service_account(sa.to_string().as_bytes()).expect("parses");
    assert!(source.is_service_account());
    assert!(!format!("{source:?}").contains("PRIVATE"));
    let now = jsonwebtoken::get_current_timestamp();
    let req = source.grant_request(now).expect("request");
    assert!(req.authorization.is_none());
    let pairs = form(&req.body);
    assert_eq!(pairs[0].1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let assertion = &pairs[1].1;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["https://oauth2.googleapis.com/token"]);
    validation.set_issuer(&["agent@p.iam.gserviceaccount.com"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).expect("public key");
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
        .expect("the assertion verifies with the key's public half");
    assert_eq!(data.header.kid.as_deref(), Some("kid-1"));
    assert_eq!(data.claims["scope"], GOOGLE_DEFAULT_SCOPE);
    assert_eq!(
        data.claims["exp"].as_u64(),
        Some(now + ASSERTION_LIFETIME_SECS)
    );
    // Another key does not verify it.
    let other = rcgen::KeyPair::generate().expect("key");
    let wrong =
        jsonwebtoken::DecodingKey::from_ec_pem(other.public_key_pem().as_bytes()).expect("ec key");
    let mut ec = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    ec.validate_aud = false;
    assert!(jsonwebtoken::decode::<serde_json::Value>(assertion, &wrong, &ec).is_err());
}

#[test]
fn token_answers_are_read_strictly() {
    let t = parse_answer(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#)
        .expect("token");
    assert_eq!(t.value.expose(), b"ya29.abc");
    assert_eq!(t.lifetime, Duration::from_secs(3599));
    assert!(!format!("{t:?}").contains("ya29"));
    let t = parse_answer(br#"{"access_token":"tok-0001","expires_in":"60"}"#).expect("string");
    assert_eq!(t.lifetime, Duration::from_secs(60));
    let t = parse_answer(br#"{"access_token":"tok-0001"}"#).expect("no expiry");
    assert_eq!(t.lifetime, DEFAULT_LIFETIME);
    for bad in [
        &br#"{"access_token":""}"#[..],
        br#"{"access_token":"a b"}"#,
        br#"{"access_token":"a\r\nX-Evil: 1"}"#,
        br#"{"access_token":"tok-0001","expires_in":-1}"#,
        br#"{"access_token":"tok-0001","expires_in":0}"#,
        br#"{"access_token":"tok-0001","expires_in":4}"#,
        br#"{"access_token":"e","expires_in":3600}"#,
        br#"{"access_token":"tok-001","expires_in":3600}"#,
        br#"{"error":"invalid_client canary"}"#,
        b"canary",
    ] {
        let err = parse_answer(bad).expect_err("refused");
        assert!(!err.contains("canary"), "{err}");
    }
}

#[test]
fn a_lifetime_of_any_size_is_bounded_before_it_meets_a_clock() {
    let day = MAX_LIFETIME;
    for (expires_in, want) in [
        // 2^64-1 and 2^63-1, as numbers and as strings; past 64 bits; a day and a second more.
        ("18446744073709551615", day),
        ("\"18446744073709551615\"", day),
        ("9223372036854775807", day),
        ("\"9223372036854775807\"", day),
        ("184467440737095516150000", day),
        ("\"184467440737095516150000\"", day),
        ("1e300", day),
        ("86401", day),
        ("86400", day),
        ("3600", Duration::from_secs(3600)),
        ("\" 60 \"", Duration::from_secs(60)),
        ("5", Duration::from_secs(5)),
    ] {
        let body = format!(r#"{{"access_token":"tok-0001","expires_in":{expires_in}}}"#);
        let t = parse_answer(body.as_bytes()).expect(expires_in);
        assert_eq!(t.lifetime, want, "{expires_in}");
        // What the cache does with it: an expiry on the clock, never an overflow.
        let now = std::time::Instant::now();
        assert!(now.checked_add(t.lifetime).is_some(), "{expires_in}");
    }
    for bad in [
        "-1", "1.5", "\"-1\"", "\"1e3\"", "\"\"", "\"12a\"", "true", "[1]",
    ] {
        let body = format!(r#"{{"access_token":"tok-0001","expires_in":{bad}}}"#);
        assert!(parse_answer(body.as_bytes()).is_err(), "{bad}");
    }
}
