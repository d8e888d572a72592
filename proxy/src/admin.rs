//! The admin listener: `/healthz` (alive), `/readyz` (configuration loaded, audit writable,
//! limiter connected, every proxy listener accepting),
//! `/metrics` (Prometheus text), `/usage?tenant=T&period=day|month[&run=R]` (one tenant's spend
//! against its ceilings, for `tenant-proxy usage`), `POST /runs/close?tenant=T&run=R` (closes
//! one tenant's run and writes its summary, for `tenant-proxy run close`). It is an operator port: bind it to loopback
//! or a private network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::audit::AuditSink;
use crate::ids::TenantId;
use crate::limits::report::{usage_report, ReportPeriod};
use crate::limits::LimitBackend;
use crate::metrics::METRICS;
use crate::runs::RunTracker;
use crate::snapshot::SnapshotHandle;

/// Serves the admin endpoints.
#[derive(Debug)]
pub struct AdminApp {
    snapshot: Arc<SnapshotHandle>,
    audit: AuditSink,
    limits: Arc<dyn LimitBackend>,
    runs: Arc<RunTracker>,
    listeners: Listeners,
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
    async fn usage(&self, query: &str) -> Result<Vec<u8>, String> {
        let mut tenant = None;
        let mut period = ReportPeriod::Day;
        let mut run = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "tenant" => tenant = Some(TenantId::new(&v).map_err(|e| e.to_string())?),
                "period" => {
                    period = ReportPeriod::parse(&v)
                        .ok_or_else(|| format!("period `{v}` is not `day` or `month`"))?;
                }
                "run" => run = Some(v.into_owned()),
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        let tenant = tenant.ok_or("`tenant` is required")?;
        let snap = self.snapshot.load();
        let report = usage_report(
            &snap.tenants,
            self.limits.as_ref(),
            &tenant,
            period,
            run.as_deref(),
            crate::limits::unix_now(),
        )
        .await?;
        serde_json::to_vec(&report).map_err(|e| e.to_string())
    }
}

impl AdminApp {
    /// Closes the run named by the query: `tenant` and `run` are both required, and only that
    /// tenant's run of that id is touched (run ids are per tenant).
    async fn close_run(&self, query: &str) -> Response<Vec<u8>> {
        let mut tenant = None;
        let mut run = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "tenant" => match TenantId::new(&v) {
                    Ok(t) => tenant = Some(t),
                    Err(e) => return json_error(400, &e.to_string()),
                },
                "run" if !v.is_empty() => run = Some(v.into_owned()),
                "run" => return json_error(400, "`run` is empty"),
                other => return json_error(400, &format!("unknown parameter `{other}`")),
            }
        }
        let (Some(tenant), Some(run)) = (tenant, run) else {
            return json_error(400, "`tenant` and `run` are required");
        };
        if !self.snapshot.load().tenants.tenants.contains_key(&tenant) {
            return json_error(404, &format!("no tenant `{tenant}`"));
        }
        match self.runs.close(&tenant, &run).await {
            Ok(closed) => respond(
                200,
                "application/json",
                serde_json::json!({ "tenant": tenant.as_str(), "run": run, "closed": closed })
                    .to_string()
                    .into_bytes(),
            ),
            Err(e) => json_error(503, &e.to_string()),
        }
    }
}

fn json_error(status: u16, why: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::json!({ "error": why }).to_string().into_bytes(),
    )
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
        match session.req_header().uri.path() {
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let snap = self.snapshot.load();
                let audit_ok = self.audit.is_healthy();
                let limiter_ok = self.limits.is_ready();
                let listening = self.listeners.accepting().await;
                let ready = audit_ok && limiter_ok && listening;
                let body = serde_json::json!({
                    "ready": ready,
                    "config_generation": snap.generation,
                    "tenants": snap.tenants.tenants.len(),
                    "audit_writable": audit_ok,
                    "limiter_connected": limiter_ok,
                    "listeners_accepting": listening,
                });
                respond(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            "/metrics" => respond(200, "text/plain; version=0.0.4", METRICS.render()),
            "/usage" => {
                let query = session.req_header().uri.query().unwrap_or("");
                match self.usage(query).await {
                    Ok(report) => respond(200, "application/json", report),
                    Err(why) => respond(
                        400,
                        "application/json",
                        serde_json::json!({ "error": why }).to_string().into_bytes(),
                    ),
                }
            }
            "/runs/close" if session.req_header().method == http::Method::POST => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                self.close_run(&query).await
            }
            "/runs/close" => json_error(405, "use POST"),
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
