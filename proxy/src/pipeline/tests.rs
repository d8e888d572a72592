//! The admission chain's ordering, on a real configuration snapshot with recording effects:
//! what is asked before what, where each refusal stops the chain, and that a refusal at any
//! step before the ceilings reserves no allowance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::admit::{self, Admitted, Ask, BodySource, Caller, DecideOnly, Effects, Grant};
use super::caps::{StreamSlots, TenantSlot};
use super::conn::{ConnFacts, Tunnel};
use super::record::{Trail, TunnelMode};
use crate::audit::AuditSlot;
use crate::body::BodyHold;
use crate::config::StaticConfig;
use crate::context::TenantContext;
use crate::egress::EgressException;
use crate::error::Deny;
use crate::identity::{IdentitySourceKind, ResolvedIdentity};
use crate::ids::{TenantId, WorkloadId};
use crate::limits::plan::Plan;
use crate::limits::Admission;
use crate::snapshot::Snapshot;
use crate::tls::ca::LeafMinter;

const POLICIES: &str = r#"
@id("ok-paths")
permit (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/ok/*" };

@id("ok-tunnels")
permit (principal, action == TenantProxy::Action::"connect", resource)
when {
  resource == TenantProxy::Destination::"ok.test" ||
  resource == TenantProxy::Destination::"api.openai.com"
};

@id("ok-opaque")
permit (principal, action == TenantProxy::Action::"connect_opaque", resource)
when {
  resource == TenantProxy::Destination::"ok.test" ||
  resource == TenantProxy::Destination::"api.openai.com"
};

@id("credentials")
permit (principal, action == TenantProxy::Action::"use_credential", resource);

@id("held-paths")
@approval("required")
permit (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/held/*" };

@id("maybe-held-paths")
@approval("shadow")
permit (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/shadow/*" };

@id("forbidden-held-paths")
forbid (principal, action == TenantProxy::Action::"http", resource)
when { context.path like "/held/forbidden/*" };
"#;

/// A configuration with tenant acme (workload bot, a request ceiling) and its policies, loaded
/// as `run` loads it.
fn configured() -> (tempfile::TempDir, StaticConfig, Arc<Snapshot>) {
    configured_with("")
}

/// [`configured`] with more of acme's `[limits]` (TOML lines).
fn configured_with(limits: &str) -> (tempfile::TempDir, StaticConfig, Arc<Snapshot>) {
    configured_with_secrets(limits, &[])
}

/// [`configured_with`], and acme's mounted credentials: (name, bound host, value) each.
fn configured_with_secrets(
    limits: &str,
    secrets: &[(&str, &str, &str)],
) -> (tempfile::TempDir, StaticConfig, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut limits = limits.to_string();
    if !secrets.is_empty() {
        std::fs::create_dir_all(d.join("secrets/acme")).unwrap();
        limits.push_str("[credentials]\nfiles_dir = \"secrets\"\n");
        for (name, host, value) in secrets {
            std::fs::write(d.join("secrets/acme").join(name), value).unwrap();
            limits.push_str(&format!(
                "[[credentials.file]]\ntenant = \"acme\"\nname = \"{name}\"\nbind = [\"{host}\"]\n"
            ));
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(d.join("policies/global")).unwrap();
    std::fs::create_dir_all(d.join("policies/tenants")).unwrap();
    std::fs::copy(
        root.join("policies/schema.cedarschema"),
        d.join("policies/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(d.join("policies/global/test.cedar"), POLICIES).unwrap();
    std::fs::write(
        d.join("tenants.toml"),
        format!("policy_dir = \"policies\"\n[tenants.acme]\nplan = \"pro\"\nregion = \"eu\"\nworkloads = [\"bot\"]\n[tenants.acme.limits]\nrequests_per_second = 100\n{limits}"),
    )
    .unwrap();
    std::fs::write(
        d.join("tenant-proxy.toml"),
        "tenants_file = \"tenants.toml\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nidentity = [\"binding\"]\nbinding = { tenant = \"acme\", workload = \"bot\" }\n[audit]\ndir = \"audit\"\n[egress]\nconnect_ports = [443]\n",
    )
    .unwrap();
    let config = StaticConfig::load(&d.join("tenant-proxy.toml")).unwrap();
    let snapshot = Arc::new(Snapshot::load(&config).unwrap());
    (dir, config, snapshot)
}

/// Effects that record what was asked of them, in order, and refuse at one named step.
struct Recording<'a> {
    config: &'a StaticConfig,
    calls: Mutex<Vec<&'static str>>,
    fail_at: Option<&'static str>,
    /// The configuration a reload brought while a request was held, if one did.
    reloaded: Option<Arc<Snapshot>>,
}

impl<'a> Recording<'a> {
    fn new(config: &'a StaticConfig, fail_at: Option<&'static str>) -> Self {
        Self {
            config,
            calls: Mutex::new(Vec::new()),
            fail_at,
            reloaded: None,
        }
    }

    fn step(&self, name: &'static str, deny: Deny) -> Result<(), Deny> {
        self.calls.lock().unwrap().push(name);
        if self.fail_at == Some(name) {
            Err(deny)
        } else {
            Ok(())
        }
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Effects for Recording<'_> {
    fn config(&self) -> &StaticConfig {
        self.config
    }
    fn reserve_audit(&self, _: Option<&TenantId>) -> Result<Option<AuditSlot>, Deny> {
        self.step("audit", Deny::AuditUnavailable).map(|_| None)
    }
    fn admit_tenant(&self, _: &mut Option<AuditSlot>, _: &TenantId) -> Result<(), Deny> {
        self.step("partition", Deny::AuditUnavailable)
    }
    fn count_connection(
        &self,
        _: Option<&ConnFacts>,
        _: &TenantId,
    ) -> Result<Option<TenantSlot>, Deny> {
        self.step("connection", Deny::ConnectionLimit(1))
            .map(|_| None)
    }
    fn count_stream(&self, _: Option<&Tunnel>, _: &TenantId) -> Result<Option<StreamSlots>, Deny> {
        self.step("connection", Deny::ConnectionLimit(1))
            .map(|_| None)
    }
    async fn sight_run(&self, _: &TenantContext, _: Duration) -> Result<(), Deny> {
        self.step("run", Deny::RunClosed)
    }
    async fn read_body(
        &self,
        _: &mut Session,
        _: &TenantId,
    ) -> Result<Option<(Bytes, Option<BodyHold>)>, Deny> {
        Ok(None)
    }
    fn open_tunnel(&self, _: &TenantId, max: u32) -> Result<Option<TenantSlot>, Deny> {
        self.step("tunnel_cap", Deny::TunnelLimit(max))
            .map(|_| None)
    }
    async fn resolve(
        &self,
        _: &str,
        port: u16,
        _: &[EgressException],
        _: &TenantContext,
        _: Option<SocketAddr>,
    ) -> Result<SocketAddr, Deny> {
        self.step("egress", Deny::DestinationForbidden("private".into()))
            .map(|_| SocketAddr::from(([192, 0, 2, 1], port)))
    }
    async fn reserve(&self, _: &Plan) -> Result<Option<Admission>, Deny> {
        self.step("limits", Deny::LimiterUnavailable).map(|_| None)
    }
    fn minter(&self) -> Option<Arc<LeafMinter>> {
        None
    }
    async fn access_token(
        &self,
        _: &TenantContext,
        _: &Arc<crate::credentials::Credential>,
        _: &Arc<crate::credentials::oauth::TokenSource>,
        _: &[EgressException],
        _: std::time::Duration,
    ) -> Result<
        crate::credentials::secret::SecretValue,
        crate::credentials::oauth::cache::TokenUnavailable,
    > {
        Err(crate::credentials::oauth::cache::TokenUnavailable(
            "no token endpoint in these tests".into(),
        ))
    }
    async fn hold(
        &self,
        ask: crate::approvals::HoldAsk<'_>,
        _: Option<&mut Session>,
    ) -> Result<crate::approvals::Granted, crate::approvals::HoldEnd> {
        self.calls.lock().unwrap().push("hold");
        assert_eq!(ask.need.policy_ids, ["held-paths"]);
        if self.fail_at == Some("hold") {
            return Err(crate::approvals::HoldEnd::Denied(
                "h1".into(),
                Some("alice".into()),
                "not today".into(),
            ));
        }
        Ok(crate::approvals::Granted {
            hold_id: "h1".into(),
            approver: Some("alice".into()),
        })
    }
    fn still_accepted(&self, _: &ResolvedIdentity) -> Result<(), Deny> {
        self.step(
            "rejudge",
            Deny::IdentityInvalid("the token has been revoked".into()),
        )
    }
    fn reloaded_since(&self, admitted: &Snapshot) -> Option<Arc<Snapshot>> {
        // The reload these tests make comes during a hold's wait (the body is read at once).
        if !self.calls().contains(&"hold") {
            return None;
        }
        self.reloaded
            .clone()
            .filter(|now| now.generation != admitted.generation)
    }
}

fn acme() -> Box<ResolvedIdentity> {
    Box::new(ResolvedIdentity {
        tenant: TenantId::new("acme").unwrap(),
        workload: WorkloadId::new("bot").unwrap(),
        source: IdentitySourceKind::Binding,
        token: None,
        certificate: None,
    })
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut h = RequestHeader::build(method, url.as_bytes(), None).unwrap();
    let host = url.split("//").nth(1).unwrap().split('/').next().unwrap();
    h.insert_header("host", host).unwrap();
    for (k, v) in headers {
        h.append_header(k.to_string(), *v).unwrap();
    }
    h
}

/// Runs an HTTP request through the chain: the refusal's code (or `allowed`) and the trail.
async fn http(
    fx: &dyn Effects,
    snapshot: &Arc<Snapshot>,
    header: &RequestHeader,
    body: Option<&str>,
) -> (String, Trail) {
    http_bytes(
        fx,
        snapshot,
        header,
        body.map(|b| Bytes::from(b.to_string())),
    )
    .await
}

/// [`http`] with a body that need not be text (a compressed one).
async fn http_bytes(
    fx: &dyn Effects,
    snapshot: &Arc<Snapshot>,
    header: &RequestHeader,
    body: Option<Bytes>,
) -> (String, Trail) {
    let mut trail = Trail::new(Arc::from("l"), String::new());
    let ask = Ask::Http {
        source: BodySource::Given(header, body),
        tunnel: None,
    };
    let got = admit::admit(
        fx,
        snapshot.clone(),
        Caller::Named(acme()),
        ask,
        &mut trail,
        &mut (),
    )
    .await;
    (code(&got), trail)
}

fn code(got: &Result<Admitted, Deny>) -> String {
    match got {
        Ok(_) => "allowed".into(),
        Err(d) => d.code().as_str().into(),
    }
}

#[tokio::test]
async fn an_allowed_request_goes_through_every_step_in_order() {
    let (_dir, config, snapshot) = configured();
    let fx = Recording::new(&config, None);
    let header = request("GET", "http://api.ok.test/ok/x", &[]);
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "allowed");
    // (A described request has no client connection to count; a tunnel's is counted below.)
    assert_eq!(
        fx.calls(),
        ["audit", "partition", "run", "egress", "limits"]
    );
    assert_eq!(
        trail.decision.as_ref().map(|d| d.policy_ids.clone()),
        Some(vec!["ok-paths".to_string()])
    );
}

#[tokio::test]
async fn each_refusal_stops_the_chain_and_reserves_no_allowance() {
    let (_dir, config, snapshot) = configured();
    let header = request("GET", "http://api.ok.test/ok/x", &[]);
    // (step that refuses, code, what must not have been asked)
    let cases = [
        (
            "audit",
            "audit_unavailable",
            vec!["partition", "run", "egress", "limits"],
        ),
        (
            "partition",
            "audit_unavailable",
            vec!["run", "egress", "limits"],
        ),
        ("run", "run_closed", vec!["egress", "limits"]),
        ("egress", "destination_forbidden", vec!["limits"]),
        ("limits", "limiter_unavailable", vec![]),
    ];
    for (step, want, never) in cases {
        let fx = Recording::new(&config, Some(step));
        let (code, _) = http(&fx, &snapshot, &header, None).await;
        assert_eq!(code, want, "refused at {step}");
        let calls = fx.calls();
        assert_eq!(calls.last(), Some(&step), "{step}: {calls:?}");
        for later in never {
            assert!(
                !calls.contains(&later),
                "{step} refused, yet {later} was asked: {calls:?}"
            );
        }
    }
}

#[tokio::test]
async fn what_is_refused_on_its_face_is_refused_before_any_name_is_resolved() {
    let (_dir, config, snapshot) = configured();
    let cases: [(&str, RequestHeader, Option<&str>); 5] = [
        (
            "policy",
            request("GET", "http://api.ok.test/no/x", &[]),
            None,
        ),
        (
            "connection header",
            request("GET", "http://api.ok.test/ok/x", &[("connection", "host")]),
            None,
        ),
        (
            "handle in host",
            {
                let mut h = request("GET", "http://api.ok.test/ok/x", &[]);
                h.insert_header("host", "$CRED{k}").unwrap();
                h
            },
            None,
        ),
        (
            "ambiguous body",
            request("POST", "http://api.ok.test/ok/x", &[]),
            Some(r#"{"model":"a","model":"b"}"#),
        ),
        (
            "connect method",
            request("CONNECT", "http://api.ok.test/ok/x", &[]),
            None,
        ),
    ];
    for (name, header, body) in cases {
        let fx = Recording::new(&config, None);
        let (code, _) = http(&fx, &snapshot, &header, body).await;
        assert_ne!(code, "allowed", "{name}");
        let calls = fx.calls();
        assert!(
            !calls.contains(&"egress") && !calls.contains(&"limits"),
            "{name} ({code}): {calls:?}"
        );
    }
}

/// A header the proxy decides on by its one value, given twice (or a type with two readings),
/// is refused before anything reads it; `Content-Encoding` is read on every line.
#[tokio::test]
async fn a_header_read_by_one_value_has_one_reading_and_every_coding_counts() {
    let (_dir, config, snapshot) =
        configured_with_secrets("", &[("openai", "api.ok.test", "sk-acme-canary-1")]);
    let post = |headers: &[(&str, &str)]| request("POST", "http://api.ok.test/ok/x", headers);
    let json = ("content-type", "application/json");
    for (name, header) in [
        (
            "two types",
            post(&[("content-type", "multipart/form-data; boundary=XX"), json]),
        ),
        (
            "a boundary twice",
            post(&[(
                "content-type",
                "multipart/form-data; boundary=XX; boundary=YY",
            )]),
        ),
        (
            "two types in one line",
            post(&[("content-type", "text/plain, application/json")]),
        ),
        (
            "two lengths",
            post(&[json, ("content-length", "17"), ("content-length", "17")]),
        ),
        ("two hosts", {
            let mut h = post(&[json]);
            h.append_header("host", "other.test").unwrap();
            h
        }),
    ] {
        let fx = Recording::new(&config, None);
        let (code, trail) = http(&fx, &snapshot, &header, Some(r#"{"api_key":"sk-own"}"#)).await;
        assert_eq!(code, "bad_request", "{name}");
        assert!(trail.decision.is_none(), "{name}: decided");
        assert!(!fx.calls().contains(&"egress"), "{name}: {:?}", fx.calls());
    }
    // A coding on a second line is a coding: the body cannot be scanned, toward a host where
    // acme's key is managed.
    let gzipped = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"a":1}"#).unwrap();
        Bytes::from(e.finish().unwrap())
    };
    for codings in [
        &[
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ][..],
        &[
            ("content-encoding", "gzip"),
            ("content-encoding", "identity"),
        ],
        &[("content-encoding", "identity, gzip")],
        &[("content-encoding", "gzip")],
    ] {
        let mut headers = vec![json];
        headers.extend_from_slice(codings);
        let fx = Recording::new(&config, None);
        let (code, _) = http_bytes(&fx, &snapshot, &post(&headers), Some(gzipped.clone())).await;
        assert_eq!(code, "credential_scan_incomplete", "{codings:?}");
    }
    let fx = Recording::new(&config, None);
    let header = post(&[json, ("content-encoding", "identity")]);
    let (code, _) = http(&fx, &snapshot, &header, Some(r#"{"a":1}"#)).await;
    assert_eq!(code, "allowed");
}

#[tokio::test]
async fn a_method_not_spelled_in_upper_case_is_refused_before_policy_and_egress() {
    let (_dir, config, snapshot) = configured();
    // An upstream that upper-cases methods would run what a policy on "DELETE" never saw.
    for method in ["delete", "Get", "pOsT", "GET!", "M.SEARCH", "1GET"] {
        let fx = Recording::new(&config, None);
        let header = request(method, "http://api.ok.test/ok/x", &[]);
        let (code, trail) = http(&fx, &snapshot, &header, None).await;
        assert_eq!(code, "bad_request", "{method}");
        assert!(trail.decision.is_none(), "{method}: decided");
        assert!(
            !fx.calls().contains(&"egress"),
            "{method}: {:?}",
            fx.calls()
        );
        // The record says what was sent.
        assert_eq!(trail.method, method);
    }
    for method in [
        "GET",
        "M-SEARCH",
        "PROPFIND",
        "BASELINE-CONTROL",
        "X_CUSTOM2",
    ] {
        let fx = Recording::new(&config, None);
        let header = request(method, "http://api.ok.test/ok/x", &[]);
        let (code, _) = http(&fx, &snapshot, &header, None).await;
        assert_ne!(code, "bad_request", "{method}");
    }
}

#[tokio::test]
async fn an_unknown_credential_is_refused_after_policy_and_egress_but_before_limits() {
    let (_dir, config, snapshot) = configured();
    let fx = Recording::new(&config, None);
    let header = request(
        "GET",
        "http://api.ok.test/ok/x",
        &[("authorization", "Bearer $CRED{nope}")],
    );
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "credential_unknown");
    assert!(!fx.calls().contains(&"limits"), "{:?}", fx.calls());
    assert_eq!(trail.credentials, ["nope"]);
}

#[tokio::test]
async fn a_marked_permit_holds_after_every_other_check_and_before_the_ceilings() {
    let (dir, config, snapshot) = configured();
    let header = request("POST", "http://api.ok.test/held/pay", &[]);
    let fx = Recording::new(&config, None);
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "allowed");
    assert_eq!(
        fx.calls(),
        [
            "audit",
            "partition",
            "run",
            "egress",
            "hold",
            "rejudge",
            // The run is sighted again: it may have been closed during the wait.
            "run",
            "limits"
        ]
    );
    let approval = trail.approval.expect("recorded");
    assert_eq!(
        (
            approval.hold_id.as_deref(),
            approval.outcome,
            approval.approver.as_deref()
        ),
        (Some("h1"), "granted", Some("alice"))
    );

    // Approved, but the identity lapsed during the wait (revoked, expired, its key pulled):
    // refused as a fresh request would be, nothing substituted, no allowance reserved.
    let fx = Recording::new(&config, Some("rejudge"));
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "identity_invalid");
    assert!(!fx.calls().contains(&"limits"), "{:?}", fx.calls());
    assert!(trail.credentials.is_empty(), "{:?}", trail.credentials);
    assert_eq!(trail.approval.map(|a| a.outcome), Some("granted"));

    // Approved after a reload that forbids nothing of it: decided again in full (its address
    // with the egress exceptions now, too), then admitted.
    let mut fx = Recording::new(&config, None);
    fx.reloaded = Some(Arc::new(Snapshot::load(&config).unwrap()));
    let (code, _) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "allowed");
    assert_eq!(
        fx.calls(),
        [
            "audit",
            "partition",
            "run",
            "egress",
            "hold",
            "rejudge",
            "run",
            "egress",
            "limits"
        ]
    );

    // Approved after a reload that declares its host an LLM provider's while a cost ceiling
    // applies: its body names no model, so it is work the proxy cannot meter now.
    let (dir2, config2, snapshot2) = configured_with("tokens_per_minute = 1000\n");
    let tenants = std::fs::read_to_string(dir2.path().join("tenants.toml")).unwrap();
    std::fs::write(
        dir2.path().join("tenants.toml"),
        format!("{tenants}[[llm_provider]]\nname = \"vllm\"\nhosts = [\"api.ok.test\"]\napi = \"openai_compatible\"\n"),
    )
    .unwrap();
    let mut fx = Recording::new(&config2, None);
    fx.reloaded = Some(Arc::new(Snapshot::load(&config2).unwrap()));
    let (code, _) = http(&fx, &snapshot2, &header, None).await;
    assert_eq!(code, "unmetered_call");
    assert!(!fx.calls().contains(&"limits"), "{:?}", fx.calls());

    // Approved, but a reload during the wait forbids it now: refused by the policy now.
    std::fs::write(
        dir.path().join("policies/global/later.cedar"),
        "@id(\"paying-stopped\")\nforbid (principal, action == TenantProxy::Action::\"http\", resource)\nwhen { context.path like \"/held/pay*\" };\n",
    )
    .unwrap();
    let mut fx = Recording::new(&config, None);
    fx.reloaded = Some(Arc::new(Snapshot::load(&config).unwrap()));
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "policy_denied");
    assert!(!fx.calls().contains(&"limits"), "{:?}", fx.calls());
    let decision = trail.decision.expect("decided");
    assert_eq!(decision.policy_ids, ["paying-stopped"]);

    // Denied: refused with the approver's reason, no allowance reserved.
    let fx = Recording::new(&config, Some("hold"));
    let (code, trail) = http(&fx, &snapshot, &header, None).await;
    assert_eq!(code, "approval_denied");
    assert!(!fx.calls().contains(&"limits"), "{:?}", fx.calls());
    assert_eq!(trail.approval.map(|a| a.outcome), Some("denied"));

    // A forbid still wins: nobody is asked.
    let forbidden = request("POST", "http://api.ok.test/held/forbidden/x", &[]);
    let fx = Recording::new(&config, None);
    let (code, trail) = http(&fx, &snapshot, &forbidden, None).await;
    assert_eq!(code, "policy_denied");
    assert!(!fx.calls().contains(&"hold"), "{:?}", fx.calls());
    assert!(trail.approval.is_none());

    // A refused credential is refused at once, not put to a person.
    let bad_cred = request(
        "POST",
        "http://api.ok.test/held/pay",
        &[("authorization", "Bearer $CRED{nope}")],
    );
    let fx = Recording::new(&config, None);
    let (code, _) = http(&fx, &snapshot, &bad_cred, None).await;
    assert_eq!(code, "credential_unknown");
    assert!(!fx.calls().contains(&"hold"), "{:?}", fx.calls());

    // Shadow: counted and recorded as "would hold", never held.
    let shadow = request("POST", "http://api.ok.test/shadow/pay", &[]);
    let fx = Recording::new(&config, None);
    let (code, trail) = http(&fx, &snapshot, &shadow, None).await;
    assert_eq!(code, "allowed");
    assert!(!fx.calls().contains(&"hold"), "{:?}", fx.calls());
    let approval = trail.approval.expect("recorded");
    assert_eq!((approval.hold_id, approval.outcome), (None, "would_hold"));
    assert_eq!(approval.policy_ids, ["maybe-held-paths"]);

    // Explain holds nothing, and says the request would be held.
    let explaining = DecideOnly {
        config: &config,
        now: crate::clock::unix_now_i64(),
        minter: None,
    };
    let (code, trail) = http(&explaining, &snapshot, &header, None).await;
    assert_eq!(code, "allowed");
    let approval = trail.approval.expect("named");
    assert_eq!((approval.hold_id, approval.outcome), (None, "required"));
}

/// Runs a `CONNECT` to `host:port` through the chain.
async fn connect(
    fx: &Recording<'_>,
    snapshot: &Arc<Snapshot>,
    header: &RequestHeader,
    host: &str,
    port: u16,
) -> (Result<Admitted, Deny>, Trail) {
    let ask = Ask::Connect {
        header,
        ssl: None,
        host,
        port,
        original: None,
    };
    let mut trail = Trail::new(Arc::from("l"), "CONNECT".into());
    let got = admit::admit(
        fx,
        snapshot.clone(),
        Caller::Named(acme()),
        ask,
        &mut trail,
        &mut (),
    )
    .await;
    (got, trail)
}

/// An opaque tunnel to an LLM API would carry calls no ceiling sees: while a token or cost
/// ceiling applies it must be intercepted (refused here, where no CA is configured), whatever
/// `connect_opaque` permits, unless the tenant allows unmetered work.
#[tokio::test]
async fn a_tunnel_to_an_llm_api_is_read_while_spend_is_capped() {
    let header = &RequestHeader::build("CONNECT", b"api.openai.com:443", None).unwrap();
    let mode = |limits: &'static str| async move {
        let (_dir, config, snapshot) = configured_with(limits);
        let fx = Recording::new(&config, None);
        let (got, trail) = connect(&fx, &snapshot, header, "api.openai.com", 443).await;
        match got {
            Ok(Admitted {
                grant: Grant::Tunnel(g),
                ..
            }) => Ok(g.mode),
            Err(deny) => Err((deny.code().as_str(), trail.tunnel_mode)),
            Ok(_) => panic!("not a tunnel"),
        }
    };
    assert_eq!(mode("").await, Ok(TunnelMode::Opaque));
    assert_eq!(
        mode("tokens_per_minute = 1000\n").await,
        Err(("unmetered_call", Some(TunnelMode::Intercept)))
    );
    assert_eq!(
        mode("tokens_per_minute = 1000\nunmetered_calls = \"allow\"\n").await,
        Ok(TunnelMode::Opaque)
    );
    // Another host under the same ceilings passes as policy says.
    let (_dir, config, snapshot) = configured_with("tokens_per_minute = 1000\n");
    let fx = Recording::new(&config, None);
    let ok = RequestHeader::build("CONNECT", b"ok.test:443", None).unwrap();
    let (got, _) = connect(&fx, &snapshot, &ok, "ok.test", 443).await;
    assert!(got.is_ok(), "{:?}", got.map(|_| ()));
}

/// A tunnel to a host the tenant's credentials are bound to carries answers that must be
/// scrubbed of them: intercepted whatever `connect_opaque` permits (refused here, where no CA
/// is configured), on any port; a credential bound elsewhere changes nothing.
#[tokio::test]
async fn a_tunnel_to_a_host_the_tenants_credentials_are_bound_to_is_read() {
    let header = RequestHeader::build("CONNECT", b"ok.test:443", None).unwrap();
    let mode = |secrets: &'static [(&'static str, &'static str, &'static str)]| {
        let header = &header;
        async move {
            let (_dir, config, snapshot) = configured_with_secrets("", secrets);
            let fx = Recording::new(&config, None);
            let (got, trail) = connect(&fx, &snapshot, header, "ok.test", 443).await;
            match got {
                Ok(Admitted {
                    grant: Grant::Tunnel(g),
                    ..
                }) => Ok(g.mode),
                Err(deny) => {
                    let (_, code, message) = deny.describe();
                    assert!(
                        message.contains("credentials are bound to this host"),
                        "{message}"
                    );
                    Err((code.as_str(), trail.tunnel_mode))
                }
                Ok(_) => panic!("not a tunnel"),
            }
        }
    };
    assert_eq!(mode(&[]).await, Ok(TunnelMode::Opaque));
    assert_eq!(
        mode(&[("other", "other.example", "sk-acme-other-1")]).await,
        Ok(TunnelMode::Opaque)
    );
    for bound in [
        &[("pinned", "ok.test", "sk-acme-pinned-1")][..],
        &[("pinned", "http://ok.test:8080/v1", "sk-acme-pinned-1")],
    ] {
        assert_eq!(
            mode(bound).await,
            Err(("interception_unavailable", Some(TunnelMode::Intercept))),
            "{bound:?}"
        );
    }
}

#[tokio::test]
async fn a_tunnel_is_decided_by_port_then_policy_then_cap_then_egress() {
    let (_dir, config, snapshot) = configured();
    let header = RequestHeader::build("CONNECT", b"ok.test:443", None).unwrap();
    let fx = Recording::new(&config, None);
    let (got, trail) = connect(&fx, &snapshot, &header, "ok.test", 443).await;
    match got {
        Ok(Admitted {
            grant: Grant::Tunnel(g),
            ..
        }) => assert_eq!(g.mode, TunnelMode::Opaque),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(trail.tunnel_mode, Some(TunnelMode::Opaque));
    assert_eq!(
        fx.calls(),
        [
            "audit",
            "partition",
            "connection",
            "run",
            "tunnel_cap",
            "egress"
        ]
    );
    let fx = Recording::new(&config, None);
    let (got, _) = connect(&fx, &snapshot, &header, "ok.test", 8443).await;
    assert_eq!(code(&got), "connect_port_forbidden");
    assert!(!fx.calls().contains(&"tunnel_cap"));
    let fx = Recording::new(&config, None);
    let (got, _) = connect(&fx, &snapshot, &header, "other.test", 443).await;
    assert_eq!(code(&got), "policy_denied");
    assert!(!fx.calls().contains(&"tunnel_cap") && !fx.calls().contains(&"egress"));
    let fx = Recording::new(&config, Some("connection"));
    let (got, _) = connect(&fx, &snapshot, &header, "ok.test", 443).await;
    assert_eq!(code(&got), "connection_limit");
    assert!(!fx.calls().contains(&"run") && !fx.calls().contains(&"egress"));
    let fx = Recording::new(&config, Some("tunnel_cap"));
    let (got, _) = connect(&fx, &snapshot, &header, "ok.test", 443).await;
    assert_eq!(code(&got), "tunnel_limit");
    assert!(!fx.calls().contains(&"egress"));
}

#[tokio::test]
async fn a_plain_http_tunnel_is_opened_on_port_80_without_a_decision_or_a_lookup() {
    let (_dir, config, snapshot) = configured();
    let header = RequestHeader::build("CONNECT", b"other.test:80", None).unwrap();
    let fx = Recording::new(&config, None);
    // No `connect` permit for other.test: each request inside will be decided as `http`.
    let (got, trail) = connect(&fx, &snapshot, &header, "other.test", 80).await;
    match got {
        Ok(Admitted {
            grant: Grant::Tunnel(g),
            permit,
            ..
        }) => {
            assert_eq!(g.mode, TunnelMode::Plain);
            assert!(g.minter.is_none());
            // SECURITY: the tunnel itself has no address to dial.
            assert!(permit.addr().is_err());
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(trail.tunnel_mode, Some(TunnelMode::Plain));
    assert!(trail.decision.is_none());
    assert_eq!(
        fx.calls(),
        ["audit", "partition", "connection", "run", "tunnel_cap"]
    );
    // The tenant's tunnel cap still applies.
    let fx = Recording::new(&config, Some("tunnel_cap"));
    let (got, _) = connect(&fx, &snapshot, &header, "other.test", 80).await;
    assert_eq!(code(&got), "tunnel_limit");
    // Port 8080 is neither a TLS port nor one a plain request could reach.
    let fx = Recording::new(&config, None);
    let (got, _) = connect(&fx, &snapshot, &header, "other.test", 8080).await;
    assert_eq!(code(&got), "connect_port_forbidden");
}

#[tokio::test]
async fn explain_decides_exactly_as_the_proxy_would() {
    let (_dir, config, snapshot) = configured();
    let cases: [(RequestHeader, Option<&str>); 4] = [
        (request("GET", "http://api.ok.test/ok/x", &[]), None),
        (request("GET", "http://api.ok.test/no/x", &[]), None),
        (
            request(
                "GET",
                "http://api.ok.test/ok/x",
                &[("authorization", "Bearer $CRED{nope}")],
            ),
            None,
        ),
        (
            request("POST", "http://api.ok.test/ok/x", &[]),
            Some(r#"{"model":"a","model":"b"}"#),
        ),
    ];
    for (header, body) in cases {
        let serving = Recording::new(&config, None);
        let (served, _) = http(&serving, &snapshot, &header, body).await;
        let explaining = DecideOnly {
            config: &config,
            now: crate::clock::unix_now_i64(),
            minter: None,
        };
        let (explained, _) = http(&explaining, &snapshot, &header, body).await;
        assert_eq!(served, explained, "{}", header.uri);
    }
}

#[tokio::test]
async fn explain_decides_the_same_as_a_proxy_answering_from_its_decision_cache() {
    let (_dir, config, cached) = configured();
    assert!(config.policy.decision_cache_entries > 0, "on by default");
    // `policy explain` loads its snapshot without a cache.
    let mut uncached_config = config.clone();
    uncached_config.policy.decision_cache_entries = 0;
    let uncached = Arc::new(Snapshot::load(&uncached_config).unwrap());
    let cases: [(RequestHeader, Option<&str>); 5] = [
        (request("GET", "http://api.ok.test/ok/x", &[]), None),
        (request("GET", "http://API.OK.test./ok/x", &[]), None),
        (request("GET", "http://api.ok.test/no/x", &[]), None),
        (
            request("DELETE", "http://api.ok.test/held/forbidden/x", &[]),
            None,
        ),
        (
            request(
                "GET",
                "http://api.ok.test/ok/x",
                &[("authorization", "Bearer $CRED{nope}")],
            ),
            None,
        ),
    ];
    let explaining = DecideOnly {
        config: &uncached_config,
        now: crate::clock::unix_now_i64(),
        minter: None,
    };
    for (header, body) in cases {
        let (explained, explained_trail) = http(&explaining, &uncached, &header, body).await;
        // Twice through the serving chain: the first fills the cache, the second is answered
        // from it. Both say what `explain` says, with the same policy ids.
        for round in ["miss", "hit"] {
            let serving = Recording::new(&config, None);
            let (served, trail) = http(&serving, &cached, &header, body).await;
            assert_eq!(served, explained, "{round}: {}", header.uri);
            assert_eq!(
                trail.decision, explained_trail.decision,
                "{round}: {}",
                header.uri
            );
        }
    }
}

/// An approval's digest names the scheme, host and port the held request went to, not only its
/// target: an HTTP/2 request inside a tunnel carries no `Host`, and an approval for one server
/// must not be spent on another port or scheme of the same name.
#[test]
fn an_approval_digest_is_bound_to_scheme_host_and_port() {
    use crate::target::Scheme;
    let headers = http::HeaderMap::new();
    let digest = |scheme, host: &str, port| {
        let destination = admit::tunnel_destination(scheme, host, port);
        crate::approvals::request_digest(
            "POST",
            &admit::approval_target(&destination, b"/mcp"),
            &headers,
            Some("body"),
        )
    };
    let held = digest(Scheme::Https, "tools.example", 37102);
    assert_eq!(held, digest(Scheme::Https, "tools.example", 37102));
    assert_ne!(
        held,
        digest(Scheme::Https, "tools.example", 37103),
        "another port"
    );
    assert_ne!(
        held,
        digest(Scheme::Http, "tools.example", 37102),
        "another scheme"
    );
    assert_ne!(
        held,
        digest(Scheme::Https, "other.example", 37102),
        "another host"
    );
}

/// What the client and the record are told when pingora gives up on the upstream: a connect
/// that failed never reached it; a connection that broke, or an answer that was not HTTP,
/// after the request was sent may have.
#[test]
fn upstream_errors_say_whether_the_request_may_have_reached_the_upstream() {
    use pingora::{Error, ErrorType};
    let up = |etype: ErrorType| Error::new_up(etype);
    let cases = [
        (
            up(ErrorType::ConnectRefused),
            false,
            Some(Deny::UpstreamUnreachable),
        ),
        // A retry's connect refused after the first connection broke.
        (
            up(ErrorType::ConnectRefused),
            true,
            Some(Deny::UpstreamUnreachable),
        ),
        (
            up(ErrorType::ConnectionClosed),
            false,
            Some(Deny::UpstreamUnreachable),
        ),
        (
            up(ErrorType::ConnectionClosed),
            true,
            Some(Deny::UpstreamFailed),
        ),
        (
            up(ErrorType::InvalidHTTPHeader),
            true,
            Some(Deny::UpstreamFailed),
        ),
        (up(ErrorType::ReadError), true, Some(Deny::UpstreamFailed)),
        (
            up(ErrorType::ReadTimedout),
            true,
            Some(Deny::UpstreamTimeout),
        ),
        (
            up(ErrorType::TLSHandshakeFailure),
            true,
            Some(Deny::UpstreamTls),
        ),
        (
            Error::new_down(ErrorType::ConnectionClosed),
            true,
            Some(Deny::ClientClosed),
        ),
    ];
    for (e, reached, want) in cases {
        assert_eq!(
            super::deny_for_error(&e, false, false, reached),
            want,
            "{e} reached={reached}"
        );
    }
    // An upgraded connection's end is its normal end, however the upstream ended it.
    let closed = up(ErrorType::ConnectionClosed);
    assert_eq!(super::deny_for_error(&closed, false, true, true), None);
}

/// An HTTP/2 request's cookie fields reach the HTTP/1.1 upstream as one `Cookie` line.
#[test]
fn split_cookies_are_joined_into_one_field() {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.append_header("cookie", "session=abc").unwrap();
    req.append_header("x-other", "1").unwrap();
    req.append_header("cookie", "csrf=xyz").unwrap();
    super::join_cookies(&mut req).unwrap();
    let cookies: Vec<&[u8]> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(cookies, [&b"session=abc; csrf=xyz"[..]]);
    // One field stays as it is; none stays none.
    let mut one = RequestHeader::build("GET", b"/", None).unwrap();
    one.append_header("cookie", "a=1").unwrap();
    super::join_cookies(&mut one).unwrap();
    assert_eq!(one.headers.get("cookie").unwrap().as_bytes(), b"a=1");
    let mut none = RequestHeader::build("GET", b"/", None).unwrap();
    super::join_cookies(&mut none).unwrap();
    assert!(none.headers.get("cookie").is_none());
}
