use std::collections::HashMap;

use super::*;
use crate::credentials::binding::{parse_binding, Binding};
use crate::credentials::secret::SecretValue;

fn tid(s: &str) -> TenantId {
    TenantId::new(s).expect("id")
}

fn set() -> CredentialSet {
    let mut set = CredentialSet::default();
    let cred = |tenant: &str,
                name: &str,
                value: &str,
                bind: Binding,
                positions: Vec<Position>,
                expires| {
        (
            name.to_string(),
            Arc::new(Credential {
                tenant: tid(tenant),
                name: name.into(),
                value: SecretValue::new(value.as_bytes().to_vec()),
                bindings: vec![bind],
                positions,
                expires_at: expires,
            }),
        )
    };
    set.insert_tenant(
        tid("acme"),
        HashMap::from([
            cred(
                "acme",
                "openai",
                "sk-acme",
                parse_binding("api.openai.com/v1/").expect("b"),
                vec![Position::Header, Position::Body],
                None,
            ),
            cred(
                "acme",
                "search",
                "q\"k&=",
                Binding::host("search.example"),
                vec![Position::Query, Position::Body],
                None,
            ),
            cred(
                "acme",
                "old",
                "sk-old",
                Binding::host("api.openai.com"),
                vec![Position::Header],
                Some(10),
            ),
        ]),
    );
    set.insert_tenant(
        tid("globex"),
        HashMap::from([
            cred(
                "globex",
                "openai",
                "sk-globex",
                Binding::host("api.openai.com"),
                vec![Position::Header],
                None,
            ),
            cred(
                "globex",
                "stripe",
                "sk-stripe",
                Binding::host("api.stripe.com"),
                vec![Position::Header],
                None,
            ),
        ]),
    );
    set
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn run(
    tenant: &str,
    host: &str,
    path_and_query: &str,
    hdrs: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Result<Applied, CredentialDeny> {
    let h = headers(hdrs);
    let body_bytes = body.map(|(_, b)| Bytes::from(b.to_string()));
    let path = path_and_query.split('?').next().unwrap_or("/");
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host,
            port: 443,
            path,
            method: "POST",
        },
        headers: &h,
        path_and_query,
        body: body_bytes.as_ref(),
        content_type: body.map(|(ct, _)| ct),
    };
    apply(
        &set(),
        &CredentialSettings::default(),
        &tid(tenant),
        &req,
        100,
        &mut |_, _| true,
    )
}

#[test]
fn substitutes_each_tenants_own_value() {
    let a = run(
        "acme",
        "api.openai.com",
        "/v1/chat",
        &[("authorization", "Bearer $CRED{openai}")],
        None,
    )
    .expect("ok");
    assert_eq!(a.set_headers[0].1.as_bytes(), b"Bearer sk-acme");
    let g = run(
        "globex",
        "api.openai.com",
        "/v1/chat",
        &[("authorization", "Bearer $CRED{openai}")],
        None,
    )
    .expect("ok");
    assert_eq!(g.set_headers[0].1.as_bytes(), b"Bearer sk-globex");
    assert_eq!(g.used.len(), 1);
}

#[test]
#[allow(clippy::type_complexity)]
fn refusals() {
    let cases: Vec<(
        &str,
        &str,
        &str,
        Vec<(&str, &str)>,
        Option<(&str, &str)>,
        CredentialDeny,
    )> = vec![
        (
            "unknown",
            "acme",
            "api.openai.com",
            vec![("authorization", "Bearer $CRED{nope}")],
            None,
            CredentialDeny::Unknown("nope".into()),
        ),
        (
            "another tenant's name",
            "acme",
            "api.stripe.com",
            vec![("authorization", "$CRED{stripe}")],
            None,
            CredentialDeny::Unknown("stripe".into()),
        ),
        (
            "unbound host",
            "acme",
            "attacker.example",
            vec![("authorization", "Bearer $CRED{openai}")],
            None,
            CredentialDeny::NotBound("openai".into()),
        ),
        (
            "bound host, other path",
            "acme",
            "api.openai.com",
            vec![("authorization", "Bearer $CRED{openai}")],
            None,
            CredentialDeny::NotBound("openai".into()),
        ),
        (
            "expired",
            "acme",
            "api.openai.com",
            vec![("authorization", "$CRED{old}")],
            None,
            CredentialDeny::Expired("old".into()),
        ),
        (
            "header-only in body",
            "globex",
            "api.openai.com",
            vec![],
            Some(("application/json", r#"{"k":"$CRED{openai}"}"#)),
            CredentialDeny::Position("openai".into(), "body"),
        ),
        (
            "malformed",
            "acme",
            "api.openai.com",
            vec![("authorization", "Bearer $CRED{open ai}")],
            None,
            CredentialDeny::Malformed("header"),
        ),
        (
            "raw key to managed host",
            "acme",
            "api.openai.com",
            vec![("authorization", "Bearer sk-mine")],
            None,
            CredentialDeny::Raw("header `authorization`".into()),
        ),
        (
            "raw key in body",
            "acme",
            "api.openai.com",
            vec![],
            Some(("application/json", r#"{"api_key":"sk-mine"}"#)),
            CredentialDeny::Raw("body field `api_key`".into()),
        ),
        (
            "handle in path",
            "acme",
            "api.openai.com",
            vec![],
            None,
            CredentialDeny::Position("openai".into(), "path"),
        ),
        (
            "handle in unscanned body",
            "acme",
            "api.openai.com",
            vec![],
            Some(("text/plain", "$CRED{openai}")),
            CredentialDeny::Position("openai".into(), "body"),
        ),
    ];
    for (name, tenant, host, hdrs, body, want) in cases {
        let path = match name {
            "bound host, other path" => "/v2/chat",
            "handle in path" => "/v1/$CRED{openai}/x",
            _ => "/v1/chat",
        };
        assert_eq!(
            run(tenant, host, path, &hdrs, body).err(),
            Some(want),
            "{name}"
        );
    }
    // Raw keys toward hosts the proxy does not manage are the agent's business.
    assert!(run(
        "acme",
        "other.example",
        "/",
        &[("authorization", "Bearer mine")],
        None
    )
    .is_ok());
}

#[test]
fn query_and_body_substitution_encode_values() {
    let a = run(
        "acme",
        "search.example",
        "/s?q=x&key=%24CRED%7Bsearch%7D",
        &[],
        None,
    )
    .expect("ok");
    assert_eq!(a.path_and_query.as_deref(), Some("/s?q=x&key=q%22k%26%3D"));
    let b = run(
        "acme",
        "search.example",
        "/s",
        &[],
        Some(("application/json", r#"{"key":"$CRED{search}"}"#)),
    )
    .expect("ok");
    let v: serde_json::Value =
        serde_json::from_slice(b.body.as_deref().expect("body")).expect("still JSON");
    assert_eq!(v["key"], "q\"k&=");
    let f = run(
        "acme",
        "search.example",
        "/s",
        &[],
        Some((
            "application/x-www-form-urlencoded",
            "a=1&key=%24CRED%7Bsearch%7D",
        )),
    )
    .expect("ok");
    assert_eq!(f.body.as_deref(), Some(&b"a=1&key=q%22k%26%3D"[..]));
}

#[test]
fn policy_denial_and_no_work_without_handles() {
    let h = headers(&[("authorization", "Bearer $CRED{openai}")]);
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host: "api.openai.com",
            port: 443,
            path: "/v1/x",
            method: "POST",
        },
        headers: &h,
        path_and_query: "/v1/x",
        body: None,
        content_type: None,
    };
    let denied = apply(
        &set(),
        &CredentialSettings::default(),
        &tid("acme"),
        &req,
        100,
        &mut |_, _| false,
    );
    assert_eq!(
        denied.err(),
        Some(CredentialDeny::PolicyDenied("openai".into()))
    );
    let plain = run(
        "acme",
        "other.example",
        "/a?b=c",
        &[("accept", "*/*")],
        Some(("application/json", "{}")),
    )
    .expect("ok");
    assert!(
        plain.is_empty()
            && plain.set_headers.is_empty()
            && plain.path_and_query.is_none()
            && plain.body.is_none()
    );
}

#[test]
fn strip_mode_removes_agent_keys_instead_of_refusing() {
    let h = headers(&[("authorization", "Bearer sk-agent-own"), ("accept", "*/*")]);
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host: "api.openai.com",
            port: 443,
            path: "/v1/x",
            method: "POST",
        },
        headers: &h,
        path_and_query: "/v1/x",
        body: None,
        content_type: None,
    };
    let settings = CredentialSettings {
        raw_credential: RawCredentialMode::Strip,
        ..CredentialSettings::default()
    };
    let applied = apply(&set(), &settings, &tid("acme"), &req, 100, &mut |_, _| true)
        .expect("stripped, not refused");
    assert_eq!(
        applied.remove_headers,
        vec![HeaderName::from_static("authorization")]
    );
    assert!(applied.set_headers.is_empty());
}
