//! The admin listener: `/healthz` (alive), `/readyz` (configuration loaded and audit writable),
//! `/metrics` (Prometheus text), `/usage?tenant=T&period=day|month[&run=R]` (one tenant's spend
//! against its ceilings, for `tenant-proxy usage`). It is an operator port: bind it to loopback
//! or a private network.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::audit::AuditSink;
use crate::ids::TenantId;
use crate::limits::report::{usage_report, ReportPeriod};
use crate::limits::LimitBackend;
use crate::metrics::METRICS;
use crate::snapshot::SnapshotHandle;

/// Serves the admin endpoints.
#[derive(Debug)]
pub struct AdminApp {
    snapshot: Arc<SnapshotHandle>,
    audit: AuditSink,
    limits: Arc<dyn LimitBackend>,
}

impl AdminApp {
    /// An admin app over the live snapshot and audit sink.
    pub fn new(
        snapshot: Arc<SnapshotHandle>,
        audit: AuditSink,
        limits: Arc<dyn LimitBackend>,
    ) -> Self {
        Self {
            snapshot,
            audit,
            limits,
        }
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
                let ready = audit_ok && limiter_ok;
                let body = serde_json::json!({
                    "ready": ready,
                    "config_generation": snap.generation,
                    "tenants": snap.tenants.tenants.len(),
                    "audit_writable": audit_ok,
                    "limiter_connected": limiter_ok,
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
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
