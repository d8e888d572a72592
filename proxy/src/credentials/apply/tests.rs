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
                kind: crate::credentials::kind::Kind::Static,
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
        raw_target: path_and_query.as_bytes(),
        authority: None,
        headers: &h,
        path_and_query,
        body: body_bytes.as_ref(),
        content_type: body.map(|(ct, _)| ct),
        encoded: false,
    };
    apply(
        &set(),
        &CredentialSettings::default(),
        &tid(tenant),
        &req,
        100,
        &AccessTokens::default(),
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
            Some(("application/json", r#"{"api_key":"$CRED{openai}"}"#)),
            CredentialDeny::Position("openai".into(), "body".into()),
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
            CredentialDeny::Position("openai".into(), "path".into()),
        ),
        (
            "handle in unscanned body",
            "acme",
            "api.openai.com",
            vec![],
            Some(("text/plain", "$CRED{openai}")),
            CredentialDeny::Position("openai".into(), "body".into()),
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
        Some(("application/json", r#"{"api_key":"$CRED{search}"}"#)),
    )
    .expect("ok");
    let v: serde_json::Value =
        serde_json::from_slice(b.body.as_deref().expect("body")).expect("still JSON");
    assert_eq!(v["api_key"], "q\"k&=");
    // Anywhere but a credential parameter or field, a handle is refused: an upstream that reads
    // it (a search engine's query, a model's prompt) could hand the secret back in any form.
    let refused = |path: &str, body: Option<(&str, &str)>, place: &str| {
        assert_eq!(
            run("acme", "search.example", path, &[], body).err(),
            Some(CredentialDeny::Position("search".into(), place.into())),
            "{path} {body:?}"
        );
    };
    refused("/s?q=%24CRED%7Bsearch%7D", None, "query parameter `q`");
    // In a credential parameter, a handle beside anything else is the agent's own key there.
    for path in [
        "/s?key=x%24CRED%7Bsearch%7D",
        "/s?key=%24CRED%7Bsearch%7D%24CRED%7Bsearch%7D",
    ] {
        assert_eq!(
            run("acme", "search.example", path, &[], None).err(),
            Some(CredentialDeny::Raw("query parameter `key`".into())),
            "{path}"
        );
    }
    for (body, place) in [
        (r#"{"key":"$CRED{search}"}"#, "body field `key`"),
        (
            r#"{"messages":[{"content":"say $CRED{search} backwards"}]}"#,
            "body field `content`",
        ),
        (r#"{"api_key":["$CRED{search}"]}"#, "body"),
        (r#"["$CRED{search}"]"#, "body"),
        (
            r#"{"$CRED{search}":"x"}"#,
            "body field name `$CRED{search}`",
        ),
        (r#"{"model":1,"a":$CRED{search}}"#, "body"),
        // A credential field inside a message (a tool call's input the model reads back).
        (
            r#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","input":{"api_key":"$CRED{search}"}}]}]}"#,
            "nested body field `api_key`",
        ),
        (
            r#"{"cfg":{"api_key":"$CRED{search}"}}"#,
            "nested body field `api_key`",
        ),
    ] {
        refused("/s", Some(("application/json", body)), place);
    }
    refused(
        "/s",
        Some(("application/x-www-form-urlencoded", "q=%24CRED%7Bsearch%7D")),
        "body field `q`",
    );
    assert!(run(
        "acme",
        "search.example",
        "/s",
        &[],
        Some((
            "application/x-www-form-urlencoded",
            "q=x&api_key=%24CRED%7Bsearch%7D"
        )),
    )
    .is_ok());
    // A body that two readers would read differently is not substituted.
    let chat =
        r#"{"model":"m","messages":[{"role":"user","content":"say &api_key=$CRED{search}&"}]}"#;
    for (ct, body, place) in [
        (
            "application/x-www-form-urlencoded",
            chat,
            "form body that reads as JSON",
        ),
        (
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            chat,
            "form body that reads as JSON",
        ),
        (
            "application/x-www-form-urlencoded, application/json",
            chat,
            "body with more than one `Content-Type`",
        ),
        (
            "application/json, application/x-www-form-urlencoded",
            r#"{"x":"&prompt=","api_key":"$CRED{search}"}"#,
            "body with more than one `Content-Type`",
        ),
    ] {
        refused("/s", Some((ct, body)), place);
    }
    // Two `Content-Type` headers, the first taken for the body's type: the second is another
    // reading an upstream may choose.
    assert_eq!(
        run(
            "acme",
            "search.example",
            "/s",
            &[
                ("content-type", "application/json"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(("application/json", r#"{"api_key":"$CRED{search}"}"#)),
        )
        .err(),
        Some(CredentialDeny::Position(
            "search".into(),
            "body with more than one `Content-Type`".into()
        ))
    );
    // `$$CRED{` is the literal text `$CRED{` anywhere, never a handle out of place.
    let q = run(
        "acme",
        "search.example",
        "/s?q=%24%24CRED%7Bsearch%7D",
        &[],
        None,
    )
    .expect("q");
    assert_eq!(
        q.path_and_query.as_deref(),
        Some("/s?q=%24CRED%7Bsearch%7D")
    );
    let j = run(
        "acme",
        "search.example",
        "/s",
        &[],
        Some((
            "application/json",
            r#"{"messages":[{"content":"write $$CRED{search}"}],"$$CRED{k}":1}"#,
        )),
    )
    .expect("json");
    assert_eq!(
        j.body.as_deref(),
        Some(&br#"{"messages":[{"content":"write $CRED{search}"}],"$CRED{k}":1}"#[..])
    );
    let f = run(
        "acme",
        "search.example",
        "/s",
        &[],
        Some((
            "application/x-www-form-urlencoded",
            "a=1&api_key=%24CRED%7Bsearch%7D",
        )),
    )
    .expect("ok");
    assert_eq!(f.body.as_deref(), Some(&b"a=1&api_key=q%22k%26%3D"[..]));
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
        raw_target: b"/v1/x",
        authority: None,
        headers: &h,
        path_and_query: "/v1/x",
        body: None,
        content_type: None,
        encoded: false,
    };
    let denied = apply(
        &set(),
        &CredentialSettings::default(),
        &tid("acme"),
        &req,
        100,
        &AccessTokens::default(),
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
        raw_target: b"/v1/x",
        authority: None,
        headers: &h,
        path_and_query: "/v1/x",
        body: None,
        content_type: None,
        encoded: false,
    };
    let settings = CredentialSettings {
        raw_credential: RawCredentialMode::Strip,
        ..CredentialSettings::default()
    };
    let applied = apply(
        &set(),
        &settings,
        &tid("acme"),
        &req,
        100,
        &AccessTokens::default(),
        &mut |_, _| true,
    )
    .expect("stripped, not refused");
    assert_eq!(
        applied.remove_headers,
        vec![HeaderName::from_static("authorization")]
    );
    assert!(applied.set_headers.is_empty());
}

/// A substituted header holds a secret: it is marked sensitive (kept out of HTTP/2's HPACK
/// table, redacted in `Debug`).
#[test]
fn substituted_headers_are_sensitive() {
    let applied = run(
        "acme",
        "api.openai.com",
        "/v1/chat/completions",
        &[("authorization", "Bearer $CRED{openai}")],
        None,
    )
    .expect("applied");
    assert!(!applied.set_headers.is_empty());
    for (name, value) in &applied.set_headers {
        assert!(value.is_sensitive(), "{name}");
        assert_eq!(format!("{value:?}"), "Sensitive");
    }
}

/// OpenAI Realtime's browser authentication puts the key in a WebSocket subprotocol: toward a
/// managed host it is the agent's own key, refused (or stripped, the other subprotocols kept);
/// toward another host it passes.
#[test]
fn a_key_in_a_websocket_subprotocol_is_a_raw_credential() {
    let deny = Some(CredentialDeny::Raw(
        "header `sec-websocket-protocol`".into(),
    ));
    for (protocols, want) in [
        ("realtime, openai-insecure-api-key.sk-mine", deny.clone()),
        ("realtime,OpenAI-Insecure-API-Key.sk-mine", deny.clone()),
        ("token, sk-mine", deny.clone()),
        ("token,,sk-mine", deny.clone()),
        ("bearer, , sk-mine", deny.clone()),
        ("realtime, openai-beta.realtime-v1", None),
        ("realtime", None),
    ] {
        let got = run(
            "acme",
            "api.openai.com",
            "/v1/realtime?model=m",
            &[("sec-websocket-protocol", protocols)],
            None,
        );
        assert_eq!(got.err(), want, "{protocols}");
        // Not a managed host: the agent's own key is its own business.
        assert!(run(
            "acme",
            "example.com",
            "/v1/realtime",
            &[("sec-websocket-protocol", protocols)],
            None,
        )
        .is_ok());
    }
    // A server joins the header's lines into one list: a marker ending one line names the
    // first token of the next.
    for lines in [["token", "sk-mine"], ["realtime, bearer", "sk-mine"]] {
        let got = run(
            "acme",
            "api.openai.com",
            "/v1/realtime?model=m",
            &[
                ("sec-websocket-protocol", lines[0]),
                ("sec-websocket-protocol", lines[1]),
            ],
            None,
        );
        assert_eq!(got.err(), deny, "{lines:?}");
    }
    let h = headers(&[(
        "sec-websocket-protocol",
        "realtime, openai-insecure-api-key.sk-mine, openai-beta.realtime-v1",
    )]);
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host: "api.openai.com",
            port: 443,
            path: "/v1/realtime",
            method: "GET",
        },
        raw_target: b"/v1/realtime",
        authority: None,
        headers: &h,
        path_and_query: "/v1/realtime",
        body: None,
        content_type: None,
        encoded: false,
    };
    let settings = CredentialSettings {
        raw_credential: RawCredentialMode::Strip,
        ..CredentialSettings::default()
    };
    let applied = apply(
        &set(),
        &settings,
        &tid("acme"),
        &req,
        100,
        &AccessTokens::default(),
        &mut |_, _| true,
    )
    .expect("stripped");
    assert_eq!(
        applied.remove_headers,
        vec![HeaderName::from_static("sec-websocket-protocol")]
    );
    assert_eq!(
        applied.set_headers,
        vec![(
            HeaderName::from_static("sec-websocket-protocol"),
            HeaderValue::from_static("realtime, openai-beta.realtime-v1")
        )]
    );
}

fn raw(place: &str) -> Option<CredentialDeny> {
    Some(CredentialDeny::Raw(place.into()))
}

#[test]
#[allow(clippy::type_complexity)]
fn credential_positions_hold_one_handle_or_nothing() {
    let json = "application/json";
    let cases: Vec<(
        &str,
        &str,
        Vec<(&str, &str)>,
        Option<(&str, &str)>,
        Option<CredentialDeny>,
    )> = vec![
        (
            "literal first, handle second",
            "/v1/chat",
            vec![
                ("authorization", "Bearer sk-mine"),
                ("authorization", "Bearer $CRED{openai}"),
            ],
            None,
            Some(CredentialDeny::Repeated("header `authorization`".into())),
        ),
        (
            "handle first, literal second",
            "/v1/chat",
            vec![
                ("authorization", "Bearer $CRED{openai}"),
                ("authorization", "Bearer sk-mine"),
            ],
            None,
            Some(CredentialDeny::Repeated("header `authorization`".into())),
        ),
        (
            "two handles",
            "/v1/chat",
            vec![
                ("authorization", "Bearer $CRED{openai}"),
                ("authorization", "Bearer $CRED{openai}"),
            ],
            None,
            Some(CredentialDeny::Repeated("header `authorization`".into())),
        ),
        (
            "two spellings of one header",
            "/v1/chat",
            vec![("x-api-key", "$CRED{openai}"), ("x_api_key", "sk-mine")],
            None,
            Some(CredentialDeny::Repeated("header `x_api_key`".into())),
        ),
        (
            "a literal and a handle in one value",
            "/v1/chat",
            vec![("authorization", "Bearer sk-LITERAL $CRED{openai}")],
            None,
            raw("header `authorization`"),
        ),
        (
            "gemini header",
            "/v1/chat",
            vec![("x-goog-api-key", "AIza-mine")],
            None,
            raw("header `x-goog-api-key`"),
        ),
        (
            "body literal next to a header handle",
            "/v1/chat",
            vec![("authorization", "Bearer $CRED{openai}")],
            Some((json, r#"{"model":"m","api_key":"sk-mine"}"#)),
            raw("body field `api_key`"),
        ),
        (
            "body literal next to a body handle",
            "/v1/chat",
            vec![],
            Some((json, r#"{"x":"$CRED{openai}","api_key":"sk-mine"}"#)),
            raw("body field `api_key`"),
        ),
        (
            "JSON sent as text/plain",
            "/v1/chat",
            vec![],
            Some(("text/plain", r#"{"api_key":"sk-mine"}"#)),
            raw("body field `api_key`"),
        ),
        (
            "nested",
            "/v1/chat",
            vec![],
            Some((json, r#"{"config":{"api_key":"sk-mine"}}"#)),
            raw("body field `api_key`"),
        ),
        (
            "form",
            "/v1/chat",
            vec![],
            Some(("application/x-www-form-urlencoded", "a=1&api_key=sk-mine")),
            raw("body field `api_key`"),
        ),
        (
            "query api_key",
            "/v1/chat?api_key=sk-mine",
            vec![],
            None,
            raw("query parameter `api_key`"),
        ),
        (
            "query key (Gemini)",
            "/v1/chat?q=1&key=AIza-mine",
            vec![],
            None,
            raw("query parameter `key`"),
        ),
        (
            "query key encoded",
            "/v1/chat?k%65y=AIza-mine",
            vec![],
            None,
            raw("query parameter `key`"),
        ),
        (
            "query repeated",
            "/v1/chat?key=$CRED{openai}&key=x",
            vec![],
            None,
            Some(CredentialDeny::Repeated("query parameter `key`".into())),
        ),
        (
            "handle in Host",
            "/v1/chat",
            vec![("host", "$CRED{openai}")],
            None,
            Some(CredentialDeny::Position(
                "openai".into(),
                "header `host`".into(),
            )),
        ),
        (
            "handle in another header",
            "/v1/chat",
            vec![("x-debug", "see $CRED{openai}")],
            None,
            Some(CredentialDeny::Position(
                "openai".into(),
                "header `x-debug`".into(),
            )),
        ),
        (
            "unknown handle in another header",
            "/v1/chat",
            vec![("referer", "$CRED{nope}")],
            None,
            Some(CredentialDeny::Position(
                "nope".into(),
                "header `referer`".into(),
            )),
        ),
        (
            "one handle",
            "/v1/chat",
            vec![("authorization", "Bearer $CRED{openai}")],
            None,
            None,
        ),
        (
            "empty credential header",
            "/v1/chat",
            vec![("x-api-key", "")],
            None,
            None,
        ),
    ];
    for (name, path, hdrs, body, want) in cases {
        assert_eq!(
            run("acme", "api.openai.com", path, &hdrs, body).err(),
            want,
            "{name}"
        );
    }
    // The check is per tenant: api.stripe.com is managed for globex, not for acme.
    assert!(run(
        "acme",
        "api.stripe.com",
        "/v1/x?key=mine",
        &[("authorization", "Bearer mine")],
        None
    )
    .is_ok());
    assert_eq!(
        run("globex", "api.stripe.com", "/v1/x?key=mine", &[], None).err(),
        raw("query parameter `key`")
    );
    // Escapes alone in any header are unescaped, not refused.
    let a = run(
        "acme",
        "other.example",
        "/",
        &[("x-doc", "write $$CRED{name}")],
        None,
    )
    .expect("ok");
    assert_eq!(a.set_headers[0].1.as_bytes(), b"write $CRED{name}");
}

#[test]
fn authorities_and_unscannable_bodies() {
    for (target, authority, host, want) in [
        (
            "http://$CRED{openai}.example/x",
            None,
            None,
            Some("request target's authority"),
        ),
        (
            "http://%24CRED%7Bopenai%7D.example/x",
            None,
            None,
            Some("request target's authority"),
        ),
        ("/x", Some("a$CRED{openai}"), None, Some("`:authority`")),
        (
            "/x",
            None,
            Some(&b"$CRED{openai}"[..]),
            Some("header `host`"),
        ),
        (
            "http://a.example/$CRED{openai}",
            None,
            Some(&b"a.example"[..]),
            None,
        ),
    ] {
        assert_eq!(
            handle_in_authority(target.as_bytes(), authority, host),
            want.map(|p| CredentialDeny::Position("openai".into(), p.into())),
            "{target}"
        );
    }
    let h = headers(&[]);
    let big = Bytes::from(vec![b'a'; 70_000]);
    let parts = |host, body, encoding| RequestParts {
        target: Target {
            scheme: "https",
            host,
            port: 443,
            path: "/v1/x",
            method: "POST",
        },
        raw_target: b"/v1/x",
        authority: None,
        headers: &h,
        path_and_query: "/v1/x",
        body: Some(body),
        content_type: Some("text/plain"),
        encoded: encoding,
    };
    let settings = CredentialSettings {
        scan_body_max_bytes: 65_536,
        ..CredentialSettings::default()
    };
    let go = |p: &RequestParts<'_>| {
        apply(
            &set(),
            &settings,
            &tid("acme"),
            p,
            100,
            &AccessTokens::default(),
            &mut |_, _| true,
        )
    };
    assert_eq!(
        go(&parts("api.openai.com", &big, false)).err(),
        Some(CredentialDeny::ScanIncomplete(ScanGap::TooLarge(65_536)))
    );
    let small = Bytes::from_static(b"{}");
    assert_eq!(
        go(&parts("api.openai.com", &small, true)).err(),
        Some(CredentialDeny::ScanIncomplete(ScanGap::Encoded))
    );
    assert!(go(&parts("api.openai.com", &small, false)).is_ok());
    // Not managed: a large body passes, unless a handle hides anywhere in it.
    assert!(go(&parts("other.example", &big, false)).is_ok());
    let mut hidden = vec![b'a'; 70_000];
    hidden.extend_from_slice(b"$CRED{openai}");
    let hidden = Bytes::from(hidden);
    assert_eq!(
        go(&parts("other.example", &hidden, false)).err(),
        Some(CredentialDeny::Position("openai".into(), "body".into()))
    );
}

#[test]
fn strip_mode_strips_literals_in_every_position_and_keeps_handles() {
    let h = headers(&[
        ("authorization", "Bearer $CRED{openai}"),
        ("x-api-key", "sk-agent-own"),
    ]);
    let body =
        Bytes::from_static(br#"{"api_key":"$CRED{openai}","cfg":{"api_key":"sk-agent-own"}}"#);
    let req = RequestParts {
        target: Target {
            scheme: "https",
            host: "api.openai.com",
            port: 443,
            path: "/v1/x",
            method: "POST",
        },
        raw_target: b"/v1/x?key=sk-agent-own&q=1",
        authority: None,
        headers: &h,
        path_and_query: "/v1/x?key=sk-agent-own&q=1",
        body: Some(&body),
        content_type: Some("application/json"),
        encoded: false,
    };
    let settings = CredentialSettings {
        raw_credential: RawCredentialMode::Strip,
        ..CredentialSettings::default()
    };
    let a = apply(
        &set(),
        &settings,
        &tid("acme"),
        &req,
        100,
        &AccessTokens::default(),
        &mut |_, _| true,
    )
    .expect("stripped");
    assert_eq!(a.remove_headers, vec![HeaderName::from_static("x-api-key")]);
    assert_eq!(a.set_headers[0].1.as_bytes(), b"Bearer sk-acme");
    assert_eq!(a.path_and_query.as_deref(), Some("/v1/x?q=1"));
    assert_eq!(
        a.body.as_deref(),
        Some(&br#"{"api_key":"sk-acme","cfg":{"api_key":null}}"#[..])
    );
    // Repeated is refused even in strip mode: which value was meant is unknown.
    let h = headers(&[("authorization", "sk-a"), ("authorization", "sk-b")]);
    let req = RequestParts {
        headers: &h,
        body: None,
        ..req
    };
    assert_eq!(
        apply(
            &set(),
            &settings,
            &tid("acme"),
            &req,
            100,
            &AccessTokens::default(),
            &mut |_, _| true
        )
        .err(),
        Some(CredentialDeny::Repeated("header `authorization`".into()))
    );
}

/// Only `%` and two hex digits decode, as servers decode them: `%+4` is no escape (a
/// hand-written decoder read it as byte 4, since `from_str_radix` takes a leading `+`).
#[test]
fn percent_decoding_takes_only_two_hex_digits() {
    assert_eq!(percent_decode(b"%24CRED%7bkey%7D"), b"$CRED{key}");
    for kept in [&b"%+4x"[..], b"%-1", b"%4", b"%", b"%g0", b"100%"] {
        assert_eq!(
            percent_decode(kept),
            kept,
            "{:?}",
            String::from_utf8_lossy(kept)
        );
    }
    assert_eq!(percent_decode(b"a%+41%41"), b"a%+41A");
}
