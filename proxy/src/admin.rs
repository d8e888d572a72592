//! The admin listener: `/healthz` (alive), `/readyz` (configuration loaded and audit writable),
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::audit::AuditSink;
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
            _ => respond(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
