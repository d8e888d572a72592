//! Verification of minted, forged and malformed tokens, JWKS parsing and key generation.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::Value;

use super::mint::signing_key;
use super::*;
use crate::ids::{TenantId, WorkloadId};
use serde_json::json;
use TokenError::*;

const NOW: u64 = 1_800_000_000;
const AUD: &str = "tenant-proxy";

type Claims = serde_json::Map<String, Value>;

fn testdata(name: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/identity/testdata");
    let path = format!("{dir}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ed() -> String {
    testdata("ed25519-test.pem")
}

fn settings() -> TokenSettings {
    TokenSettings {
        audience: AUD.into(),
        issuer: None,
        max_lifetime: Duration::from_secs(3600),
        leeway: Duration::from_secs(30),
    }
}

fn verifier_with(settings: TokenSettings) -> TokenVerifier {
    let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks");
    TokenVerifier::new(settings, keys, HashSet::from(["revoked-1".to_string()]))
}

fn verifier() -> TokenVerifier {
    verifier_with(settings())
}

fn req() -> MintRequest {
    MintRequest {
        tenant: TenantId::new("acme").expect("id"),
        workload: WorkloadId::new("bot").expect("id"),
        audience: AUD.into(),
        issuer: None,
        ttl: Duration::from_secs(300),
        run_id: Some("run-1".into()),
        run_budget: Some(RunBudget {
            tokens: Some(1000),
            ..Default::default()
        }),
        scopes: vec!["llm".into(), "tools".into()],
        jti: None,
        kid: Some("test-ed".into()),
        now_unix: NOW,
        not_before: None,
    }
}

/// A token from `pem` for [`req`] changed by `edit`.
fn mint_with(pem: &str, edit: impl FnOnce(&mut MintRequest)) -> String {
    let mut r = req();
    edit(&mut r);
    mint(pem, &r).expect("mint")
}

/// A token from the Ed25519 test key for [`req`] changed by `edit`.
fn minted(edit: impl FnOnce(&mut MintRequest)) -> String {
    mint_with(&ed(), edit)
}

/// A token with exactly this header and payload JSON text, signed with `pem`.
fn raw_signed(pem: &str, header: &str, payload: &str) -> String {
    let (key, alg) = signing_key(pem).expect("key");
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign");
    format!("{message}.{sig}")
}

fn base_claims() -> Claims {
    let claims = json!({
        "tenant": "acme", "sub": "bot", "aud": AUD, "iat": NOW, "exp": NOW + 300,
        "jti": "j-1", "run_id": "run-1", "scope": "llm tools",
    });
    claims.as_object().cloned().unwrap_or_default()
}

/// Valid claims changed by `edit`, signed with the Ed25519 test key as `test-ed`.
fn claims_token(edit: impl FnOnce(&mut Claims)) -> String {
    let mut claims = base_claims();
    edit(&mut claims);
    let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"test-ed"}"#;
    raw_signed(&ed(), header, &Value::Object(claims).to_string())
}

fn with_claim(name: &str, value: Value) -> String {
    claims_token(|c| {
        c.insert(name.to_string(), value);
    })
}

fn without_claim(name: &str) -> String {
    claims_token(|c| {
        c.remove(name);
    })
}

/// Valid claims under `header`, with a signature that is not one.
fn forged(header: &str, sig: &str) -> String {
    let payload = Value::Object(base_claims()).to_string();
    let (h, p) = (
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
    );
    format!("{h}.{p}.{sig}")
}

/// Verifies and compares; a refusal must not echo any part of the token.
fn check(v: &TokenVerifier, name: &str, token: &str, now: u64, want: Result<(), TokenError>) {
    let got = v.verify(token, now);
    assert_eq!(
        got.as_ref().map(|_| ()).map_err(Clone::clone),
        want,
        "{name}"
    );
    if let Err(e) = got {
        for text in [e.to_string(), format!("{e:?}")] {
            for part in token.split('.').filter(|p| p.len() >= 8) {
                assert!(!text.contains(part), "{name}: {text}");
            }
        }
    }
}

#[test]
fn valid_tokens_carry_their_claims() {
    let v = verifier();
    let es = testdata("es256-test.pem");
    for (name, pem, kid) in [("eddsa", ed(), "test-ed"), ("es256", es, "test-es")] {
        let token = mint_with(&pem, |r| {
            r.kid = Some(kid.into());
            r.issuer = Some("issuer-1".into());
            r.jti = Some("jti-7".into());
            r.not_before = Some(NOW - 5);
        });
        let got = v
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = VerifiedToken {
            tenant: TenantId::new("acme").expect("id"),
            workload: WorkloadId::new("bot").expect("id"),
            run_id: Some("run-1".into()),
            run_budget: Some(RunBudget {
                tokens: Some(1000),
                ..Default::default()
            }),
            scopes: vec!["llm".into(), "tools".into()],
            initiator: None,
            correlation_id: None,
            jti: Some("jti-7".into()),
            expires_at: NOW + 300,
            accepted: got.accepted.clone(),
        };
        assert_eq!(got, want, "{name}");
    }

    let optional = claims_token(|c| {
        c.insert("initiator".into(), json!("cron"));
        c.insert("correlation_id".into(), json!("req-42"));
        let budget = json!({"tokens": 1, "tool_calls": 2, "wall_time_s": 3, "cost_micros": 4});
        c.insert("run_budget".into(), budget);
        c.insert("aud".into(), json!(["other", AUD]));
        c.insert("extra".into(), json!({"ignored": true}));
    });
    let got = v.verify(&optional, NOW).expect("valid");
    assert_eq!(got.initiator, Some(Initiator::Cron));
    assert_eq!(got.correlation_id.as_deref(), Some("req-42"));
    let budget = RunBudget {
        tokens: Some(1),
        tool_calls: Some(2),
        wall_time_s: Some(3),
        cost_micros: Some(4),
    };
    assert_eq!(got.run_budget, Some(budget));

    let jti = v.verify(&minted(|_| {}), NOW).expect("valid").jti;
    let is_hex128 = |j: &str| j.len() == 32 && j.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(jti.as_deref().is_some_and(is_hex128), "{jti:?}");
}

#[test]
fn shape_algorithm_and_key_cases() {
    let good = minted(|_| {});
    let (head, rest) = good.split_once('.').unwrap_or_default();
    let (_, sig) = rest.split_once('.').unwrap_or_default();
    let other_tenant = minted(|r| r.tenant = TenantId::new("globex").expect("id"));
    let other_payload = other_tenant.split('.').nth(1).unwrap_or_default();
    let hs256 = {
        // The classic confusion attack: HMAC keyed with the public key's bytes.
        let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
        let x = jwks["keys"][0]["x"].as_str().unwrap_or_default();
        let secret = URL_SAFE_NO_PAD.decode(x).expect("b64");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-ed".into());
        let key = EncodingKey::from_secret(&secret);
        jsonwebtoken::encode(&header, &base_claims(), &key).expect("hs256")
    };
    let header = r#"{"alg":"EdDSA","kid":"test-ed"}"#;
    let dup = format!(
        r#"{{"tenant":"acme","tenant":"globex","sub":"bot","aud":"{AUD}","iat":{NOW},"exp":{}}}"#,
        NOW + 300
    );
    let dup_tenant = raw_signed(&ed(), header, &dup);
    let claims = Value::Object(base_claims()).to_string();
    let crit = raw_signed(
        &ed(),
        r#"{"alg":"EdDSA","kid":"test-ed","crit":["exp"]}"#,
        &claims,
    );
    let not_json = format!("{}.e30.e30", URL_SAFE_NO_PAD.encode("nope"));
    let es_under_ed = mint_with(&testdata("es256-test.pem"), |_| {});
    let other_key = mint_with(&testdata("other-ed25519.pem"), |_| {});

    #[rustfmt::skip]
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), Malformed),
        ("garbage", "abc".into(), Malformed),
        ("two parts", "a.b".into(), Malformed),
        ("four parts", format!("{good}.x"), Malformed),
        ("header not base64", format!("!!{good}"), Malformed),
        ("header not json", not_json, Malformed),
        ("header without alg", forged(r#"{"kid":"test-ed"}"#, "c2ln"), Malformed),
        ("signature missing", format!("{head}.{}.", other_payload), Malformed),
        ("signature not base64", format!("{good}!"), Malformed),
        ("too long", format!("{good}{}", "A".repeat(MAX_TOKEN_LEN)), Malformed),
        ("crit header", crit, Malformed),
        ("duplicate claim", dup_tenant, Malformed),
        ("alg none", forged(r#"{"alg":"none","kid":"test-ed"}"#, ""), UnsupportedAlgorithm),
        ("alg None, no kid", forged(r#"{"alg":"None"}"#, ""), UnsupportedAlgorithm),
        ("hs256 keyed with public key", hs256, UnsupportedAlgorithm),
        ("rs256", forged(r#"{"alg":"RS256","kid":"test-ed"}"#, "c2ln"), UnsupportedAlgorithm),
        ("es256 on ed key", forged(r#"{"alg":"ES256","kid":"test-ed"}"#, "c2ln"), UnsupportedAlgorithm),
        ("es256 key under ed kid", es_under_ed, UnsupportedAlgorithm),
        ("unknown kid", minted(|r| r.kid = Some("nope".into())), UnknownKey),
        ("no kid, two keys", minted(|r| r.kid = None), NoKeyId),
        ("other key, same kid", other_key, BadSignature),
        ("payload swapped", format!("{head}.{other_payload}.{sig}"), BadSignature),
    ];
    let v = verifier();
    check(&v, "valid", &good, NOW, Ok(()));
    for (name, token, want) in cases {
        check(&v, name, &token, NOW, Err(want));
    }
}

#[test]
fn time_cases() {
    let good = minted(|_| {});
    #[rustfmt::skip]
    let cases: Vec<(&str, String, u64, Result<(), TokenError>)> = vec![
        ("fresh", good.clone(), NOW, Ok(())),
        ("expired", good.clone(), NOW + 300 + 31, Err(Expired)),
        ("expired within leeway", good.clone(), NOW + 300 + 30, Ok(())),
        ("iat in future", good.clone(), NOW - 31, Err(NotYetValid)),
        ("iat in future within leeway", good.clone(), NOW - 30, Ok(())),
        ("nbf in future", minted(|r| r.not_before = Some(NOW + 31)), NOW, Err(NotYetValid)),
        ("nbf within leeway", minted(|r| r.not_before = Some(NOW + 30)), NOW, Ok(())),
        ("lifetime over max", minted(|r| r.ttl = Duration::from_secs(3601)), NOW, Err(LifetimeTooLong { max_secs: 3600 })),
        ("lifetime at max", minted(|r| r.ttl = Duration::from_secs(3600)), NOW, Ok(())),
        ("exp far future", with_claim("exp", json!(u64::MAX)), NOW, Err(LifetimeTooLong { max_secs: 3600 })),
        ("exp before iat", with_claim("exp", json!(NOW - 10)), NOW, Err(InvalidClaim("exp"))),
        ("exp before iat, later", with_claim("exp", json!(NOW - 10)), NOW + 21, Err(Expired)),
    ];
    let v = verifier();
    for (name, token, now, want) in cases {
        check(&v, name, &token, now, want);
    }
}

#[test]
fn a_revoked_token_is_refused_naming_whose_it_was() {
    let v = verifier();
    let token = minted(|r| r.jti = Some("revoked-1".into()));
    match v.verify(&token, NOW) {
        Err(TokenError::Revoked(claims)) => {
            assert_eq!(claims.jti.as_deref(), Some("revoked-1"));
            assert!(!claims.tenant.as_str().is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(v.is_revoked("revoked-1") && !v.is_revoked("jti-7"));
    // A revoked token with a broken claim is refused for the claim: only a token whose every
    // other check passed is attributed.
    let broken = claims_token(|c| {
        c.insert("jti".into(), json!("revoked-1"));
        c.insert("run_id".into(), json!("a b"));
    });
    assert_eq!(
        v.verify(&broken, NOW),
        Err(TokenError::InvalidClaim("run_id"))
    );
}

#[test]
fn claim_cases() {
    #[rustfmt::skip]
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("exp missing", without_claim("exp"), MissingClaim("exp")),
        ("exp null", with_claim("exp", Value::Null), MissingClaim("exp")),
        ("exp string", with_claim("exp", json!("soon")), InvalidClaim("exp")),
        ("exp negative", with_claim("exp", json!(-1)), InvalidClaim("exp")),
        ("exp fractional", with_claim("exp", json!(1_800_000_100.5)), InvalidClaim("exp")),
        ("iat missing", without_claim("iat"), MissingClaim("iat")),
        ("nbf string", with_claim("nbf", json!("x")), InvalidClaim("nbf")),
        ("wrong audience", minted(|r| r.audience = "other".into()), WrongAudience),
        ("audience list without ours", with_claim("aud", json!(["a", "b"])), WrongAudience),
        ("audience missing", without_claim("aud"), MissingClaim("aud")),
        ("audience a number", with_claim("aud", json!(7)), MissingClaim("aud")),
        ("jti a number", with_claim("jti", json!(1)), InvalidClaim("jti")),
        // Ids no `revoked_jtis_file` line can name exactly (see `valid_jti`).
        ("jti empty", with_claim("jti", json!("")), InvalidClaim("jti")),
        ("jti with a hash", with_claim("jti", json!("batch#7")), InvalidClaim("jti")),
        ("jti starting with a hash", with_claim("jti", json!("#7")), InvalidClaim("jti")),
        ("jti with a leading space", with_claim("jti", json!(" jti-7")), InvalidClaim("jti")),
        ("jti with a trailing space", with_claim("jti", json!("jti-7 ")), InvalidClaim("jti")),
        ("jti with a space inside", with_claim("jti", json!("jti 7")), InvalidClaim("jti")),
        ("jti with a tab", with_claim("jti", json!("jti\t7")), InvalidClaim("jti")),
        ("jti with a newline", with_claim("jti", json!("jti-7\nrevoked-1")), InvalidClaim("jti")),
        ("jti with a no-break space", with_claim("jti", json!("jti-7\u{a0}")), InvalidClaim("jti")),
        ("jti with a control character", with_claim("jti", json!("jti\u{7}7")), InvalidClaim("jti")),
        ("jti with a zero-width space", with_claim("jti", json!("jti-7\u{200b}")), InvalidClaim("jti")),
        ("jti with a byte-order mark", with_claim("jti", json!("\u{feff}jti-7")), InvalidClaim("jti")),
        ("jti not ASCII", with_claim("jti", json!("été-7")), InvalidClaim("jti")),
        ("tenant traversal", with_claim("tenant", json!("../x")), InvalidClaim("tenant")),
        ("tenant missing", without_claim("tenant"), MissingClaim("tenant")),
        ("tenant a number", with_claim("tenant", json!(1)), InvalidClaim("tenant")),
        ("sub uppercase", with_claim("sub", json!("Bot")), InvalidClaim("sub")),
        ("sub missing", without_claim("sub"), MissingClaim("sub")),
        ("run_id with space", with_claim("run_id", json!("a b")), InvalidClaim("run_id")),
        ("run_id empty", with_claim("run_id", json!("")), InvalidClaim("run_id")),
        ("run_id 129 chars", with_claim("run_id", json!("r".repeat(129))), InvalidClaim("run_id")),
        ("run_budget unknown field", with_claim("run_budget", json!({"usd": 2})), InvalidClaim("run_budget")),
        ("run_budget negative", with_claim("run_budget", json!({"tokens": -1})), InvalidClaim("run_budget")),
        ("run_budget a number", with_claim("run_budget", json!(5)), InvalidClaim("run_budget")),
        ("run_budget without run_id", claims_token(|c| {
            c.remove("run_id");
            c.insert("run_budget".into(), json!({"cost_micros": 1500}));
        }), InvalidClaim("run_budget")),
        ("scope with quote", with_claim("scope", json!("llm \"x")), InvalidClaim("scope")),
        ("scope a list", with_claim("scope", json!(["llm"])), InvalidClaim("scope")),
        ("initiator unknown", with_claim("initiator", json!("robot")), InvalidClaim("initiator")),
        ("correlation_id 129 chars", with_claim("correlation_id", json!("c".repeat(129))), InvalidClaim("correlation_id")),
        ("correlation_id newline", with_claim("correlation_id", json!("a\nb")), InvalidClaim("correlation_id")),
    ];
    let v = verifier();
    check(
        &v,
        "run_id 128 chars",
        &with_claim("run_id", json!("r".repeat(128))),
        NOW,
        Ok(()),
    );
    check(
        &v,
        "scope doubled space",
        &with_claim("scope", json!("a  b")),
        NOW,
        Ok(()),
    );
    for (name, token, want) in cases {
        check(&v, name, &token, NOW, Err(want));
    }
}

#[test]
fn issuer_cases() {
    let v = verifier_with(TokenSettings {
        issuer: Some("https://idp.example".into()),
        ..settings()
    });
    let iss = |iss: &str| minted(|r| r.issuer = Some(iss.into()));
    #[rustfmt::skip]
    let cases = [
        ("matching", iss("https://idp.example"), Ok(())),
        ("other", iss("https://evil.example"), Err(WrongIssuer)),
        ("missing", minted(|_| {}), Err(MissingClaim("iss"))),
        ("a number", with_claim("iss", json!(1)), Err(InvalidClaim("iss"))),
    ];
    for (name, token, want) in cases {
        check(&v, name, &token, NOW, want);
    }
    // Without a configured issuer any `iss` is accepted.
    check(&verifier(), "unchecked", &iss("anyone"), NOW, Ok(()));
}

#[test]
fn single_key_set_accepts_tokens_without_kid() {
    let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
    let only_ed = json!({ "keys": [jwks["keys"][0]] }).to_string();
    let keys = KeySet::from_jwks_json(&only_ed).expect("jwks");
    let v = TokenVerifier::new(settings(), keys, HashSet::new());
    check(&v, "ed, no kid", &minted(|r| r.kid = None), NOW, Ok(()));
    let es = mint_with(&testdata("es256-test.pem"), |r| r.kid = None);
    check(&v, "es, no kid", &es, NOW, Err(UnsupportedAlgorithm));
}

#[test]
fn generated_keys_round_trip() {
    for alg in [KeyAlgorithm::EdDSA, KeyAlgorithm::ES256] {
        let key = generate_key(alg, "fresh").expect("generate");
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(key.jwk["use"], "sig");
        let debug = format!("{key:?}");
        let body = key.private_pem.lines().nth(1).unwrap_or("missing");
        assert!(!debug.contains(body), "{debug}");
        let jwks = json!({ "keys": [key.jwk] }).to_string();
        let keys = KeySet::from_jwks_json(&jwks).expect("jwks");
        assert_eq!(keys.kids().collect::<Vec<_>>(), vec!["fresh"]);
        let v = TokenVerifier::new(settings(), keys, HashSet::new());
        // CRLF line endings, as a file edited on Windows has.
        let crlf = key.private_pem.replace('\n', "\r\n");
        for pem in [&key.private_pem, &crlf] {
            let token = mint_with(pem, |r| r.kid = Some("fresh".into()));
            check(&v, &format!("{alg:?}"), &token, NOW, Ok(()));
        }
    }
    let empty_kid = generate_key(KeyAlgorithm::EdDSA, "").err();
    assert_eq!(empty_kid, Some(MintError::InvalidRequest("kid")));
}

#[test]
fn mints_with_openssl_style_ed25519_keys() {
    // RFC 8410 section 10.3: PKCS#8 v1 without the public key, as OpenSSL writes it.
    let pem = "-----BEGIN PRIVATE KEY-----\n\
               MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
               -----END PRIVATE KEY-----\n";
    let spki = STANDARD
        .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
        .expect("b64");
    let x = URL_SAFE_NO_PAD.encode(&spki[12..]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "rfc", "x": x}]});
    let keys = KeySet::from_jwks_json(&jwks.to_string()).expect("jwks");
    let v = TokenVerifier::new(settings(), keys, HashSet::new());
    let token = mint_with(pem, |r| r.kid = Some("rfc".into()));
    check(&v, "rfc 8410 key", &token, NOW, Ok(()));
}

/// Every token id a token may carry is revoked by a `revoked_jtis_file` line holding exactly it
/// (the file read by `revocation_ids`, the ids ruled by `valid_jti`), and such a line revokes
/// nothing else.
#[test]
fn every_accepted_jti_is_revocable_by_its_own_line() {
    for jti in [
        "jti-7",
        "0b7f2c5e-9d3a-4c1e-8f6a-2b5d7e9c1a3f",
        "AT.aBc-_~+/=:;!$%&*()[]{}<>?@^|'\"`,.",
    ] {
        assert!(valid_jti(jti), "{jti}");
        let token = minted(|r| r.jti = Some(jti.into()));
        let file = format!("# revoked today\n{jti}\nother-1   # an id with a comment\n");
        let revoked = revocation_ids(&file);
        assert!(revoked.contains(jti), "{jti}: {revoked:?}");
        let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks");
        let v = TokenVerifier::new(settings(), keys, revoked);
        let got = v.verify(&token, NOW);
        assert!(matches!(got, Err(Revoked(_))), "{jti}: {got:?}");
        // The line names this id only: a token whose id is a prefix of it is not revoked.
        let prefix: String = jti.chars().take(jti.chars().count() - 1).collect();
        let other = minted(|r| r.jti = Some(prefix.clone()));
        assert!(v.verify(&other, NOW).is_ok(), "{prefix}");
    }
}

/// `check` warns about the lines that revoke another id than they show.
#[test]
fn misleading_revocation_lines_are_found() {
    let file = "# a comment\n\njti-1\njti-2 # revoked by Ann\njti-3\t# tab\nbatch#7\n  batch#8  # x\njti 9\n#jti-10\n";
    assert_eq!(
        misleading_revocation_lines(file),
        [
            "line 6: `batch#7`",
            "line 7: `batch#8  # x`",
            "line 8: `jti 9`"
        ]
    );
    assert_eq!(
        revocation_ids(file),
        HashSet::from(["jti-1", "jti-2", "jti-3", "batch", "jti 9"].map(String::from))
    );
}

/// A file saved with a byte-order mark (PowerShell 5, old Notepad) revokes its first id, and a
/// line whose id holds an invisible character revokes the id it shows too (and is warned at).
#[test]
fn invisible_characters_in_the_revocation_file_do_not_hide_an_id() {
    let file = "\u{feff}first-1\nsecond-2\u{200b}\nthird-3\u{a0}  # nbsp\n\u{2060}fourth-4\n";
    let ids = revocation_ids(file);
    for id in ["first-1", "second-2", "third-3", "fourth-4"] {
        assert!(ids.contains(id), "{id}: {ids:?}");
    }
    assert_eq!(
        misleading_revocation_lines(file),
        // (A no-break space at either end is trimmed like any whitespace.)
        ["line 2: `second-2\u{200b}`", "line 4: `\u{2060}fourth-4`"]
    );
    // Whatever else an id's line holds that no token id can (variation selectors, tag
    // characters, fillers, a Mongolian vowel separator), it revokes the id it shows; so does a
    // line ended by a lone CR.
    let odd = "a-1\u{180e}\nb-2\u{fe0f}\n\u{e0020}c-3\nd-4\u{3164}\re-5\u{34f}\r\nf-6";
    let odd_ids = revocation_ids(odd);
    for id in ["a-1", "b-2", "c-3", "d-4", "e-5", "f-6"] {
        assert!(odd_ids.contains(id), "{id}: {odd_ids:?}");
    }
    assert_eq!(misleading_revocation_lines(odd).len(), 5, "{odd:?}");
    let keys = KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks");
    let v = TokenVerifier::new(settings(), keys, ids);
    for id in ["first-1", "second-2"] {
        let token = minted(|r| r.jti = Some(id.into()));
        assert!(matches!(v.verify(&token, NOW), Err(Revoked(_))), "{id}");
    }
}

#[test]
fn mint_refusals() {
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
    let pem =
        |body: &str| format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----");
    let no_end = ed().replace("-----END PRIVATE KEY-----", "");
    #[rustfmt::skip]
    let bad_key: Vec<(&str, String)> = vec![
        ("not pem", "hello".into()),
        ("sec1 pem", sec1.into()),
        ("not base64", pem("!!")),
        ("not a key", pem("AAAA")),
        ("no end line", no_end),
    ];
    for (name, pem) in bad_key {
        assert_eq!(mint(&pem, &req()).err(), Some(MintError::BadKey), "{name}");
    }
    #[rustfmt::skip]
    let bad_request: Vec<(&str, MintRequest, &str)> = vec![
        ("run_id", MintRequest { run_id: Some("a/b".into()), ..req() }, "run_id"),
        ("scope", MintRequest { scopes: vec!["a b".into()], ..req() }, "scopes"),
        ("audience", MintRequest { audience: String::new(), ..req() }, "audience"),
        ("jti", MintRequest { jti: Some(String::new()), ..req() }, "jti"),
        ("jti with a hash", MintRequest { jti: Some("batch#7".into()), ..req() }, "jti"),
        ("jti with spaces", MintRequest { jti: Some(" jti-7 ".into()), ..req() }, "jti"),
        ("exp overflows", MintRequest { now_unix: u64::MAX, ..req() }, "ttl"),
    ];
    for (name, r, field) in bad_request {
        assert_eq!(
            mint(&ed(), &r).err(),
            Some(MintError::InvalidRequest(field)),
            "{name}"
        );
    }
}

/// A one-key JWKS: `base` with the members of `edit` set (a `null` removes one).
fn jwks_of(base: Value, edit: Value) -> String {
    let mut key = base;
    if let (Some(key), Some(edit)) = (key.as_object_mut(), edit.as_object()) {
        for (name, value) in edit {
            match value {
                Value::Null => key.remove(name),
                v => key.insert(name.clone(), v.clone()),
            };
        }
    }
    json!({ "keys": [key] }).to_string()
}

#[test]
fn jwks_cases() {
    use KeySetError::*;
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let okp = |edit: Value| {
        jwks_of(
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x}),
            edit,
        )
    };
    let ec = |edit: Value| {
        jwks_of(
            json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": x, "y": x}),
            edit,
        )
    };
    let a = || "a".to_string();
    let e = || "e".to_string();
    let two_a = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": x},
        {"kty": "EC", "crv": "P-256", "kid": "a", "x": x, "y": x},
    ]});
    let rsa = r#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB","alg":"RS256"}]}"#;
    #[rustfmt::skip]
    let cases: Vec<(&str, String, KeySetError)> = vec![
        ("not json", "{".into(), Parse { line: 1, column: 1 }),
        ("no keys member", "{}".into(), NotJwks),
        ("keys not a list", r#"{"keys":{}}"#.into(), NotJwks),
        ("top-level list", "[]".into(), NotJwks),
        ("entry not an object", r#"{"keys":["k"]}"#.into(), InvalidEntry { index: 0 }),
        ("missing kid", okp(json!({"kid": null})), MissingKid { index: 0 }),
        ("empty kid", okp(json!({"kid": ""})), MissingKid { index: 0 }),
        ("numeric kid", okp(json!({"kid": 5})), MissingKid { index: 0 }),
        ("duplicate kid", two_a.to_string(), DuplicateKid { kid: a() }),
        ("oct secret", okp(json!({"kty": "oct", "k": "c2VjcmV0"})), PrivateKey { kid: a() }),
        ("no kty", okp(json!({"kty": null})), UnsupportedKey { kid: a() }),
        ("okp with alg ES256", okp(json!({"alg": "ES256"})), AlgorithmMismatch { kid: a(), expected: "EdDSA" }),
        ("ec with alg RS256", ec(json!({"alg": "RS256"})), AlgorithmMismatch { kid: e(), expected: "ES256" }),
        ("ec with alg none", ec(json!({"alg": "none"})), AlgorithmMismatch { kid: e(), expected: "ES256" }),
        ("private okp", okp(json!({"d": x})), PrivateKey { kid: a() }),
        ("private ec", ec(json!({"d": x})), PrivateKey { kid: e() }),
        ("x too short", okp(json!({"x": "AAAA"})), InvalidKey { kid: a() }),
        ("x padded", okp(json!({"x": format!("{x}=")})), InvalidKey { kid: a() }),
        ("x missing", okp(json!({"x": null})), InvalidKey { kid: a() }),
        ("ec y missing", ec(json!({"y": null})), InvalidKey { kid: e() }),
    ];
    for (name, text, want) in cases {
        assert_eq!(
            KeySet::from_jwks_json(&text).err(),
            Some(want.clone()),
            "{name}"
        );
        // Messages name key ids, never key material.
        assert!(!want.to_string().contains(x), "{name}");
    }
    #[rustfmt::skip]
    let accepted = [
        ("okp without alg or use", okp(json!({}))),
        ("ec with alg", ec(json!({"alg": "ES256"}))),
        ("alg, use, key_ops", okp(json!({"alg": "EdDSA", "use": "sig", "key_ops": ["verify"]}))),
        ("spire's use", okp(json!({"use": "jwt-svid"}))),
    ];
    for (name, text) in accepted {
        assert!(KeySet::from_jwks_json(&text).is_ok(), "{name}");
        let with_bom = format!("\u{feff}{text}");
        assert!(
            KeySet::from_jwks_json(&with_bom).is_ok(),
            "{name} with a BOM"
        );
        assert!(
            KeySet::named_in(&with_bom).is_some_and(|k| !k.is_empty()),
            "{name}"
        );
    }
    // Keys of another type or use are left out (an identity provider's RSA keys beside its EC
    // ones), named for the warning; no token verifies with them.
    #[rustfmt::skip]
    let skipped = [
        ("rsa key", rsa.to_string(), "`r` (not Ed25519 or P-256)"),
        ("oct without k", okp(json!({"kty": "oct"})), "`a` (not Ed25519 or P-256)"),
        ("p-384", ec(json!({"crv": "P-384"})), "`e` (not Ed25519 or P-256)"),
        ("x25519", okp(json!({"crv": "X25519"})), "`a` (not Ed25519 or P-256)"),
        ("use enc", okp(json!({"use": "enc"})), "`a` (not for signatures)"),
        ("key_ops encrypt", okp(json!({"key_ops": ["encrypt"]})), "`a` (not for signatures)"),
    ];
    for (name, text, why) in skipped {
        let set = KeySet::from_jwks_json(&text).expect(name);
        assert!(set.is_empty(), "{name}");
        assert_eq!(set.skipped(), [why.to_string()], "{name}");
    }
    let mixed: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
    let mut entries = mixed["keys"].as_array().expect("keys").clone();
    entries.push(serde_json::from_str::<Value>(rsa).expect("rsa")["keys"][0].clone());
    let mixed = KeySet::from_jwks_json(&json!({ "keys": entries }).to_string()).expect("mixed");
    assert_eq!(mixed.kids().count(), 2);
    assert_eq!(mixed.skipped().len(), 1);
    let token = minted(|_| {});
    let v = TokenVerifier::new(settings(), mixed, HashSet::new());
    assert!(v.verify(&token, NOW).is_ok());
    // An empty set is a document (the loader decides whether to serve it), and refuses every
    // token.
    let empty = KeySet::from_jwks_json(r#"{"keys":[]}"#).expect("empty set");
    assert!(empty.is_empty());
    let v = TokenVerifier::new(settings(), empty, HashSet::new());
    assert_eq!(v.verify(&minted(|_| {}), NOW), Err(UnknownKey));
}

/// A token accepted once is judged again, against a verifier of a later snapshot (keys,
/// settings, revocations) and at a later time, exactly as a fresh presentation of it would be:
/// the same answer, with no signature verified again.
#[test]
fn recheck_judges_an_accepted_token_as_verify_would_now() {
    let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
    let es_only = json!({"keys": [jwks["keys"][1]]}).to_string();
    let rotated = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("key");
    let reused_kid = json!({"keys": [rotated.jwk, jwks["keys"][1]]}).to_string();
    let with = |jwks: &str, settings: TokenSettings, revoked: &[&str]| {
        let keys = KeySet::from_jwks_json(jwks).expect("jwks");
        let revoked = revoked.iter().map(|j| j.to_string()).collect();
        TokenVerifier::new(settings, keys, revoked)
    };
    let same = testdata("test-jwks.json");
    let issuer = |iss: &str| TokenSettings {
        issuer: Some(iss.into()),
        ..settings()
    };
    // Issued at NOW, expiring at NOW + 300, leeway 30 s.
    let token = minted(|r| {
        r.jti = Some("jti-open".into());
        r.issuer = Some("issuer-1".into());
    });
    let accepted = verifier().verify(&token, NOW).expect("valid");
    #[rustfmt::skip]
    let cases: Vec<(&str, TokenVerifier, u64, Result<(), TokenError>)> = vec![
        ("unchanged", with(&same, settings(), &[]), NOW + 10, Ok(())),
        ("past exp, within the leeway", with(&same, settings(), &[]), NOW + 320, Ok(())),
        ("past exp and the leeway", with(&same, settings(), &[]), NOW + 331, Err(Expired)),
        ("leeway shortened", with(&same, TokenSettings { leeway: Duration::ZERO, ..settings() }, &[]), NOW + 301, Err(Expired)),
        ("key removed", with(&es_only, settings(), &[]), NOW + 10, Err(UnknownKey)),
        ("no keys at all", with(r#"{"keys":[]}"#, settings(), &[]), NOW + 10, Err(UnknownKey)),
        ("kid now names another key", with(&reused_kid, settings(), &[]), NOW + 10, Err(BadSignature)),
        ("audience changed", with(&same, TokenSettings { audience: "other".into(), ..settings() }, &[]), NOW + 10, Err(WrongAudience)),
        ("issuer now required, matching", with(&same, issuer("issuer-1"), &[]), NOW + 10, Ok(())),
        ("issuer changed", with(&same, issuer("issuer-2"), &[]), NOW + 10, Err(WrongIssuer)),
        ("max lifetime lowered", with(&same, TokenSettings { max_lifetime: Duration::from_secs(60), ..settings() }, &[]), NOW + 10, Err(LifetimeTooLong { max_secs: 60 })),
        ("revoked", with(&same, settings(), &["jti-open"]), NOW + 10, Err(Revoked(Box::new(accepted.clone())))),
    ];
    for (name, now_verifier, at, want) in cases {
        let fresh = now_verifier.verify(&token, at).map(|_| ());
        assert_eq!(fresh, want, "{name}: a fresh presentation");
        assert_eq!(now_verifier.recheck(&accepted, at), want, "{name}: recheck");
    }
    // A token that was never verified names no key.
    let described = VerifiedToken {
        accepted: Accepted::default(),
        ..accepted
    };
    assert_eq!(verifier().recheck(&described, NOW), Err(NoKeyId));
}

#[test]
fn debug_output_hides_keys() {
    let text = testdata("test-jwks.json");
    let jwks: Value = serde_json::from_str(&text).expect("json");
    let keys = KeySet::from_jwks_json(&text).expect("jwks");
    let debug = format!("{:?}", TokenVerifier::new(settings(), keys, HashSet::new()));
    assert!(
        debug.contains("test-ed") && debug.contains("test-es"),
        "{debug}"
    );
    for key in jwks["keys"].as_array().into_iter().flatten() {
        let x = key["x"].as_str().unwrap_or("missing");
        assert!(!debug.contains(x), "{debug}");
    }
}

#[test]
#[ignore = "rewrites the key fixtures; run once with --ignored"]
fn write_fixtures() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/identity/testdata");
    let write = |name: &str, text: &str| {
        std::fs::write(format!("{dir}/{name}"), text).expect("write");
    };
    let ed = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("ed");
    let es = generate_key(KeyAlgorithm::ES256, "test-es").expect("es");
    let other = generate_key(KeyAlgorithm::EdDSA, "test-ed").expect("other");
    std::fs::create_dir_all(dir).expect("dir");
    write("ed25519-test.pem", &ed.private_pem);
    write("es256-test.pem", &es.private_pem);
    write("other-ed25519.pem", &other.private_pem);
    let jwks = json!({ "keys": [ed.jwk, es.jwk] });
    write(
        "test-jwks.json",
        &format!("{}\n", serde_json::to_string_pretty(&jwks).expect("json")),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(512)))]

    #[test]
    fn fuzz_verify_never_panics_on_any_string(token in any::<String>()) {
        let _ = verifier().verify(&token, NOW);
    }

    #[test]
    fn fuzz_verify_refuses_unsigned_structured_garbage(
        header in prop_oneof![
            Just(br#"{"alg":"EdDSA","kid":"test-ed"}"#.to_vec()),
            Just(br#"{"alg":"ES256","kid":"test-es"}"#.to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ],
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        sig in proptest::collection::vec(any::<u8>(), 0..80),
        now in any::<u64>(),
    ) {
        let [h, p, s] = [header, payload, sig].map(|b| URL_SAFE_NO_PAD.encode(b));
        let token = format!("{h}.{p}.{s}");
        prop_assert!(verifier().verify(&token, now).is_err());
    }

    #[test]
    fn fuzz_signed_claims_never_panic(
        exp in any::<u64>(),
        iat in any::<u64>(),
        nbf in proptest::option::of(any::<u64>()),
        now in any::<u64>(),
        tenant in "[a-z./]{0,8}",
        scope in any::<String>(),
    ) {
        let token = claims_token(|c| {
            c.insert("exp".into(), json!(exp));
            c.insert("iat".into(), json!(iat));
            c.insert("tenant".into(), json!(tenant));
            c.insert("scope".into(), json!(scope));
            if let Some(nbf) = nbf {
                c.insert("nbf".into(), json!(nbf));
            }
        });
        let _ = verifier().verify(&token, now);
    }

    #[test]
    fn fuzz_jwks_parser_never_panics(text in any::<String>()) {
        let _ = KeySet::from_jwks_json(&text);
    }
}

#[test]
fn tightening_only_pulls_keys_and_adds_revocations() {
    let v = verifier();
    let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
    let only_es =
        KeySet::from_jwks_json(&json!({ "keys": [jwks["keys"][1]] }).to_string()).expect("jwks");
    let fresh = generate_key(KeyAlgorithm::EdDSA, "other").expect("generate");
    let unrelated =
        KeySet::from_jwks_json(&json!({ "keys": [fresh.jwk] }).to_string()).expect("jwks");
    let revoked = HashSet::from(["revoked-2".to_string()]);
    // Nothing new: nothing to apply.
    assert!(v.tightened(None, None).is_none());
    assert!(v
        .tightened(
            Some(&KeySet::from_jwks_json(&testdata("test-jwks.json")).expect("jwks")),
            Some(&HashSet::from(["revoked-1".to_string()]))
        )
        .is_none());
    assert!(v.tightened(Some(&only_es), None).is_some());
    assert!(v.tightened(None, Some(&revoked)).is_some());
    let t = v
        .tightened(Some(&only_es), Some(&revoked))
        .expect("tighter");
    let es = |jti: &str| {
        let jti = jti.to_string();
        mint_with(&testdata("es256-test.pem"), move |r| {
            r.kid = Some("test-es".into());
            r.jti = Some(jti);
        })
    };
    // Only the keys the new set still holds.
    check(&t, "ed key pulled", &minted(|_| {}), NOW, Err(UnknownKey));
    check(&t, "es key kept", &es("fresh"), NOW, Ok(()));
    // Nothing it refused is accepted: the old revocation stays, the new one is added.
    for jti in ["revoked-1", "revoked-2"] {
        assert!(
            matches!(t.verify(&es(jti), NOW), Err(TokenError::Revoked(_))),
            "{jti}"
        );
    }
    // A key the old set did not trust is never added by a rejected reload.
    let u = v.tightened(Some(&unrelated), None).expect("tighter");
    check(&u, "no key left", &es("fresh"), NOW, Err(UnknownKey));
}

/// A JWKS that cannot be taken whole (an entry the proxy rejects) still says which keys it no
/// longer names: they stop verifying at once, as a pull from a valid file does.
#[test]
fn a_rejected_jwks_still_names_the_keys_it_keeps() {
    let v = verifier();
    let jwks: Value = serde_json::from_str(&testdata("test-jwks.json")).expect("json");
    let (ed, es) = (jwks["keys"][0].clone(), jwks["keys"][1].clone());
    let mut broken_es = es.clone();
    broken_es["x"] = json!("AAAA");
    let mut private_ed = ed.clone();
    private_ed["d"] = ed["x"].clone();
    let rsa = json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "d": "AQAB"});
    let fresh = generate_key(KeyAlgorithm::EdDSA, "k2").expect("generate");
    let kept = |doc: Value| {
        let text = doc.to_string();
        assert!(KeySet::from_jwks_json(&text).is_err(), "{text}");
        let named = KeySet::named_in(&text).expect("a jwks");
        let mut kids: Vec<String> = v.tightened(Some(&named), None).map_or_else(
            || vec!["test-ed".into(), "test-es".into()],
            |t| t.keys().kids().map(String::from).collect(),
        );
        kids.sort();
        kids
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("ed pulled, an unusable key added", json!({"keys": [fresh.jwk.clone(), es.clone(), rsa.clone()]}), vec!["test-es"]),
        ("es made malformed", json!({"keys": [ed.clone(), broken_es.clone()]}), vec!["test-ed"]),
        ("ed now with private material", json!({"keys": [private_ed, es.clone()]}), vec!["test-es"]),
        ("es twice", json!({"keys": [ed.clone(), es.clone(), es.clone()]}), vec!["test-ed"]),
        ("an entry with no kid", json!({"keys": [ed.clone(), es.clone(), {"kty": "OKP"}]}), vec!["test-ed", "test-es"]),
    ];
    for (name, doc, want) in cases {
        assert_eq!(kept(doc), want, "{name}");
    }
    // Text that is no JWKS tells nothing: the keys stay.
    for text in ["{\"keys\": [", "[]", ""] {
        assert!(KeySet::named_in(text).is_none(), "{text}");
    }
}
