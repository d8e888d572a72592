//! The admin listener: `/healthz` (alive), `/readyz` (configuration loaded, audit writable,
//! limiter reachable, every proxy listener accepting),
//! `/metrics` (Prometheus text), `/usage?tenant=T&period=day|month[&run=R]` (one tenant's spend
//! against its ceilings, for `tenant-proxy usage`), `POST /runs/close?tenant=T&run=R` (closes
//! one tenant's run and writes its summary, for `tenant-proxy run close`). It is an operator
//! port: bind it to loopback or a private network, and where anything untrusted shares the
//! network namespace (a sidecar's agent: loopback is no boundary there) configure `[admin]
//! token_file`: every endpoint but the probes then requires `Authorization: Bearer <token>`.
//!
//! Refusals use the proxy's JSON error shape (`{"error":{"code","message","request_id"}}`), and
//! a query parameter given twice is refused (`bad_request`) on every endpoint.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::audit::AuditSink;
use crate::config::admin_token::AdminToken;
use crate::error::{error_body, BrowserSign, Deny};
use crate::ids::{valid_run_id, TenantId, RUN_ID_RULE};
use crate::limits::report::{usage_report, ReportError, ReportPeriod};
use crate::limits::LimitBackend;
use crate::metrics::METRICS;
use crate::runs::{CloseError, RunTracker};
use crate::snapshot::SnapshotHandle;

/// Serves the admin endpoints.
#[derive(Debug)]
pub struct AdminApp {
    snapshot: Arc<SnapshotHandle>,
    audit: AuditSink,
    limits: Arc<dyn LimitBackend>,
    runs: Arc<RunTracker>,
    listeners: Listeners,
    drain: Arc<crate::drain::Drain>,
}

impl AdminApp {
    /// An admin app over the live snapshot and audit sink; `listeners` are the proxy listeners
    /// `/readyz` waits for.
    pub fn new(
        snapshot: Arc<SnapshotHandle>,
        audit: AuditSink,
        limits: Arc<dyn LimitBackend>,
        runs: Arc<RunTracker>,
        listeners: Vec<SocketAddr>,
        drain: Arc<crate::drain::Drain>,
    ) -> Self {
        Self {
            snapshot,
            audit,
            limits,
            runs,
            listeners: Listeners {
                addrs: listeners,
                all_up: AtomicBool::new(false),
            },
            drain,
        }
    }
}

/// The proxy listeners, and whether all of them have been seen accepting.
///
/// pingora binds each service's listeners on that service's own runtime, in no set order, so the
/// admin port can answer before a proxy port is bound. `/readyz` therefore connects to each
/// listener until all have accepted once: a client told "ready" never gets a refused
/// connection. After that the answer is remembered (listeners are not unbound while running).
#[derive(Debug)]
struct Listeners {
    addrs: Vec<SocketAddr>,
    all_up: AtomicBool,
}

impl Listeners {
    /// How long one probe connection may take: loopback answers in microseconds, and a probe
    /// must not make `/readyz` itself slow.
    const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

    async fn accepting(&self) -> bool {
        if self.all_up.load(Ordering::Acquire) {
            return true;
        }
        for addr in &self.addrs {
            let probe = tokio::time::timeout(
                Self::PROBE_TIMEOUT,
                tokio::net::TcpStream::connect(reachable(*addr)),
            );
            if !matches!(probe.await, Ok(Ok(_))) {
                return false;
            }
        }
        self.all_up.store(true, Ordering::Release);
        true
    }
}

/// Where to connect to reach a listener bound to `addr`: an unspecified address (`0.0.0.0`,
/// `[::]`) listens on loopback too.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

impl AdminApp {
    async fn usage(&self, query: &Query) -> Result<Vec<u8>, Deny> {
        query.only(&["tenant", "period", "run"])?;
        let tenant = query.tenant()?;
        let run = query.run()?;
        let period = match query.get("period") {
            None => ReportPeriod::Day,
            Some(p) => ReportPeriod::parse(p)
                .ok_or_else(|| Deny::BadRequest(format!("period `{p}` is not `day` or `month`")))?,
        };
        let snap = self.snapshot.load();
        let report = usage_report(
            &snap.tenants,
            self.limits.as_ref(),
            &tenant,
            period,
            run,
            crate::clock::unix_now_i64(),
        )
        .await
        .map_err(|e| match e {
            unknown @ ReportError::UnknownTenant(_) => Deny::AdminNotFound(unknown.to_string()),
            // An infrastructure failure, not the caller's: 503, as for every metered request.
            ReportError::Unavailable(e) => {
                tracing::warn!(error = %e, "admin /usage: the limit counters cannot be read");
                Deny::LimiterUnavailable
            }
        })?;
        serde_json::to_vec(&report).map_err(|_| Deny::Internal)
    }

    /// Closes the run named by the query: `tenant` and `run` are both required, and only that
    /// tenant's run of that id is touched (run ids are per tenant).
    async fn close_run(&self, query: &Query) -> Result<Vec<u8>, Deny> {
        query.only(&["tenant", "run"])?;
        let tenant = query.tenant()?;
        let run = query
            .run()?
            .ok_or_else(|| Deny::BadRequest("`run` is required".into()))?;
        if !self.snapshot.load().tenants.tenants.contains_key(&tenant) {
            return Err(Deny::AdminNotFound(format!("no tenant `{tenant}`")));
        }
        let closed = self.runs.close(&tenant, run).await.map_err(|e| match e {
            CloseError::AuditUnavailable => Deny::AuditUnavailable,
            CloseError::Limiter(_) => Deny::LimiterUnavailable,
        })?;
        Ok(
            serde_json::json!({ "tenant": tenant.as_str(), "run": run, "closed": closed })
                .to_string()
                .into_bytes(),
        )
    }
}

/// An admin request's query parameters, each named at most once.
///
/// SECURITY: a repeated parameter is refused rather than resolved by position: with
/// `tenant=globex&tenant=acme`, a check that reads the first and an action that reads the last
/// would act on another tenant than the one checked (or than the operator meant).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `query` (names and values percent-decoded, so `%74enant` is `tenant` too).
    fn parse(query: &str) -> Result<Self, Deny> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == *k) {
                return Err(Deny::BadRequest(format!(
                    "parameter `{k}` is given more than once"
                )));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses any parameter not in `known`.
    fn only(&self, known: &[&str]) -> Result<(), Deny> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(Deny::BadRequest(format!("unknown parameter `{k}`"))),
            None => Ok(()),
        }
    }

    /// The required `tenant` parameter, validated.
    fn tenant(&self) -> Result<TenantId, Deny> {
        let t = self
            .get("tenant")
            .ok_or_else(|| Deny::BadRequest("`tenant` is required".into()))?;
        TenantId::new(t).map_err(|e| Deny::BadRequest(e.to_string()))
    }

    /// The `run` parameter, if given, validated with the rule a token's `run_id` follows.
    /// SECURITY: a run id goes into Redis keys and audit records; nothing else reaches them, and
    /// what is refused is not echoed (it may be hostile and long).
    fn run(&self) -> Result<Option<&str>, Deny> {
        match self.get("run") {
            None => Ok(None),
            Some(run) if valid_run_id(run) => Ok(Some(run)),
            Some(_) => Err(Deny::BadRequest(format!(
                "`run` is not a valid run id: {RUN_ID_RULE}"
            ))),
        }
    }
}

/// Checks the admin token on a request, when one is configured.
///
/// SECURITY: exactly one `Authorization` header, `Bearer <token>` (scheme in any case), compared
/// in constant time; a second header is refused rather than one of them chosen (a proxy in
/// front and the proxy here could read different ones). Nothing of what was sent is echoed.
fn authenticate(token: Option<&AdminToken>, headers: &http::HeaderMap) -> Result<(), Deny> {
    let Some(token) = token else {
        return Ok(());
    };
    let value = crate::identity::sole_header(headers, http::header::AUTHORIZATION)
        .map_err(|_| Deny::BadRequest("`Authorization` is given more than once".into()))?
        .ok_or_else(|| Deny::AdminUnauthorized("no admin token was sent".into()))?;
    let presented = value
        .to_str()
        .ok()
        .and_then(crate::identity::bearer_token)
        .ok_or_else(|| Deny::AdminUnauthorized("`Authorization` is not `Bearer <token>`".into()))?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Deny::AdminUnauthorized(
            "the admin token is not valid".into(),
        ))
    }
}

/// A refusal in the proxy's JSON error shape (`{"error":{"code","message","request_id"}}`),
/// with its request id in `x-request-id` too.
fn json_error(deny: &Deny) -> Response<Vec<u8>> {
    let (status, code, message) = deny.describe();
    let request_id = crate::trace::random_hex(16);
    let mut resp = respond(
        status,
        "application/json",
        error_body(code, &message, &request_id, None),
    );
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // `Retry-After` on 503, `WWW-Authenticate` on 401.
    for (name, value) in deny.extra_headers(status) {
        resp.headers_mut().append(name, value);
    }
    resp
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let probe = matches!(path.as_str(), "/healthz" | "/readyz");
        // The probes answer anyone (the kubelet sends no token); everything else, unknown paths
        // included, is authenticated before anything of the request is looked at.
        if !probe {
            // Before the token: a page must not learn whether one is configured, and without
            // one this is the only check (see `front::browser_marker`).
            if let Some(marker) = crate::front::browser_marker(&req.headers) {
                return json_error(&Deny::BrowserRequest(BrowserSign::Marked(marker)));
            }
            let snap = self.snapshot.load();
            // Without a token the port acts for whoever reaches it: a page rebound to it sends
            // its own name (see `front::unrebindable_host`). A token is no page's to send.
            let host = req
                .headers
                .get(http::header::HOST)
                .map(http::HeaderValue::as_bytes)
                .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
            if snap.admin_token.is_none() && !host.is_some_and(crate::front::unrebindable_host) {
                return json_error(&Deny::BrowserRequest(BrowserSign::RebindableHost));
            }
            if let Err(deny) = authenticate(snap.admin_token.as_ref(), &req.headers) {
                return json_error(&deny);
            }
        }
        let query = match Query::parse(req.uri.query().unwrap_or("")) {
            Ok(q) => q,
            Err(deny) => return json_error(&deny),
        };
        let is_post = req.method == http::Method::POST;
        // The read endpoints answer GET and HEAD only, as `/runs/close` answers POST only.
        let is_read = matches!(req.method, http::Method::GET | http::Method::HEAD);
        let reads = matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/metrics" | "/usage"
        );
        if reads && !is_read {
            return json_error(&Deny::MethodNotAllowed("use GET".into()));
        }
        match path.as_str() {
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => self.readiness().await,
            "/metrics" => respond(200, "text/plain; version=0.0.4", METRICS.render()),
            "/usage" => match self.usage(&query).await {
                Ok(report) => respond(200, "application/json", report),
                Err(deny) => json_error(&deny),
            },
            "/runs/close" if is_post => match self.close_run(&query).await {
                Ok(body) => respond(200, "application/json", body),
                Err(deny) => json_error(&deny),
            },
            "/runs/close" => json_error(&Deny::MethodNotAllowed("use POST".into())),
            _ => json_error(&Deny::AdminNotFound(format!("no admin endpoint `{path}`"))),
        }
    }
}

impl AdminApp {
    /// `/readyz`: 200 when every listener accepts, the audit sink can write and the limiter can
    /// serve (see [`LimitBackend::is_ready`]); 503 with the failing part otherwise.
    /// `limiter_connected` is whether the limiter's backend answers now, which under
    /// `local_fallback` may be false on a ready replica. It carries the last reload's result
    /// (`last_reload: {ok, at, problems}`, `problems` a count), which does not change the
    /// status. SECURITY: this answer needs no token, so it holds counts and booleans only: a
    /// problem's text names tenants, policies and files, and is in the log. A tenant whose own audit partition
    /// fails does not make the replica unready (the other tenants are served); the count of
    /// such partitions is reported.
    async fn readiness(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        let audit_ok = self.audit.is_healthy();
        let limiter_ok = self.limits.is_ready();
        let limiter_connected = self.limits.is_connected();
        let listening = self.listeners.accepting().await;
        let terminating = self.drain.is_terminating();
        let ready = audit_ok && limiter_ok && listening && !terminating;
        let body = serde_json::json!({
            "ready": ready,
            "config_generation": snap.generation,
            "tenants": snap.tenants.tenants.len(),
            "audit_writable": audit_ok,
            // How many tenants' partitions fail (those tenants are refused, the others
            // served); the metrics name them, this answer does not.
            "audit_partitions_failing": self.audit.failing_partitions(),
            "limiter_connected": limiter_connected,
            "listeners_accepting": listening,
            // A shutdown signal came: still serving (`shutdown_delay`) or draining.
            "terminating": terminating,
            // A rejected reload leaves the last good configuration serving: still ready, but
            // visibly not running what is on disk.
            "last_reload": self.snapshot.last_reload().summary(),
        });
        respond(
            if ready { 200 } else { 503 },
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_refused_however_it_is_spelled() {
        for query in [
            "tenant=globex&tenant=acme&run=r",
            "tenant=acme&run=r&tenant=acme",
            "tenant=acme&%74enant=globex&run=r",
            "run=a&run=b&tenant=acme",
            "tenant=acme&run=r&x&x",
        ] {
            match Query::parse(query) {
                Err(Deny::BadRequest(why)) => assert!(why.contains("more than once"), "{why}"),
                other => panic!("{query}: {other:?}"),
            }
        }
        let q = Query::parse("tenant=acme&run=r%2D1").unwrap();
        assert_eq!(q.tenant().unwrap().as_str(), "acme");
        assert_eq!(q.get("run"), Some("r-1"));
        assert!(q.only(&["tenant", "run"]).is_ok());
        assert!(matches!(q.only(&["tenant"]), Err(Deny::BadRequest(_))));
        assert!(matches!(
            Query::parse("tenant=../x").unwrap().tenant(),
            Err(Deny::BadRequest(_))
        ));
    }

    #[test]
    fn run_ids_follow_the_token_claims_rule() {
        let q = Query::parse("run=run-42").unwrap();
        assert_eq!(q.run().unwrap(), Some("run-42"));
        assert_eq!(Query::default().run().unwrap(), None);
        let long = format!("run={}", "r".repeat(129));
        for query in [
            "run=",
            "run=..%2F..%2Fetc%0Aevil%00x",
            "run=a%20b",
            "run=a%7Bb%7D",
            "run=%C3%A9",
            long.as_str(),
        ] {
            match Query::parse(query).unwrap().run() {
                Err(Deny::BadRequest(why)) => {
                    assert!(why.contains("not a valid run id"), "{why}");
                    // What was sent is not echoed.
                    assert!(!why.contains("etc") && !why.contains("rrrr"), "{why}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_admin_token_is_required_once_and_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-admin-token-0123\n").unwrap();
        let token = AdminToken::read(&file).unwrap();
        let headers = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let unauthorized = |d: &Result<(), Deny>| matches!(d, Err(Deny::AdminUnauthorized(_)));
        type Expect = fn(&Result<(), Deny>) -> bool;
        let cases: &[(&str, &[&str], Expect)] = &[
            ("right", &["Bearer s3cret-admin-token-0123"], Result::is_ok),
            (
                "scheme in any case",
                &["bEARER  s3cret-admin-token-0123 "],
                Result::is_ok,
            ),
            ("missing", &[], unauthorized),
            ("wrong", &["Bearer s3cret-admin-token-0124"], unauthorized),
            (
                "prefix of it",
                &["Bearer s3cret-admin-token-012"],
                unauthorized,
            ),
            ("empty bearer", &["Bearer "], unauthorized),
            ("no scheme", &["s3cret-admin-token-0123"], unauthorized),
            (
                "basic",
                &["Basic czNjcmV0LWFkbWluLXRva2VuLTAxMjM="],
                unauthorized,
            ),
            (
                "given twice, both right",
                &[
                    "Bearer s3cret-admin-token-0123",
                    "Bearer s3cret-admin-token-0123",
                ],
                |d| matches!(d, Err(Deny::BadRequest(why)) if why.contains("more than once")),
            ),
            (
                "given twice, one wrong",
                &["Bearer wrong", "Bearer s3cret-admin-token-0123"],
                |d| matches!(d, Err(Deny::BadRequest(_))),
            ),
        ];
        for (name, values, expect) in cases {
            let outcome = authenticate(Some(&token), &headers(values));
            assert!(expect(&outcome), "{name}: {outcome:?}");
            if let Err(deny) = outcome {
                let (_, _, message) = deny.describe();
                assert!(!message.contains("s3cret"), "{name}: {message}");
            }
        }
        // Without a configured token nothing is asked for.
        assert!(authenticate(None, &headers(&[])).is_ok());
        assert!(authenticate(None, &headers(&["Bearer anything"])).is_ok());
    }

    #[test]
    fn an_unauthorized_refusal_asks_for_a_bearer_token() {
        let resp = json_error(&Deny::AdminUnauthorized("no admin token was sent".into()));
        assert_eq!(resp.status(), 401);
        assert!(resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ")));
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"]["code"], "admin_unauthorized");
        let resp = json_error(&Deny::LimiterUnavailable);
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key(http::header::RETRY_AFTER));
    }

    #[test]
    fn errors_have_the_proxys_shape() {
        let resp = json_error(&Deny::BadRequest(
            "parameter `tenant` is given more than once".into(),
        ));
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v["error"]["message"].as_str().unwrap().contains("`tenant`"));
        let id = resp
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(v["error"]["request_id"], id);
    }

    #[tokio::test]
    async fn listeners_are_ready_only_once_all_accept() {
        let bound = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = bound.local_addr().unwrap();
        // A port nothing listens on: bind, note it, close.
        let down = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let listeners = Listeners {
            addrs: vec![up, down],
            all_up: AtomicBool::new(false),
        };
        assert!(!listeners.accepting().await, "one listener is not bound");
        let listeners = Listeners {
            addrs: vec![SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), up.port())],
            all_up: AtomicBool::new(false),
        };
        assert!(listeners.accepting().await, "0.0.0.0 is probed on loopback");
        assert!(listeners.all_up.load(Ordering::Acquire));
    }
}
