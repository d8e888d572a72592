//! What happened to a request or a tunnel, written once: the [`Trail`] its phases fill in, the
//! refusal the client sees, and the record, metrics and log line it leaves.
//!
//! Every path ends here: requests (forward, route, inside tunnels), `CONNECT` tunnels, and
//! requests the front refused before pingora saw them. So a refusal has the same JSON shape,
//! the same reason code and the same counters whichever path refused it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::OrErr;
use tokio::io::AsyncWriteExt;

use crate::audit::{AuditDecision, AuditRecord, AuditSlot, TunnelFields};
use crate::context::TenantContext;
use crate::error::{error_body, Deny, ReasonCode};
use crate::limits::Charge;
use crate::logging::RequestLine;
use crate::mcp::list_filter::ListFilter;
use crate::mcp::McpExchange;
use crate::metrics::{Metrics, METRICS};
use crate::policy::shadow::ShadowDecision;
use crate::policy::Decision;
use crate::runs::RunTracker;
use crate::target::Destination;
use crate::usage::Usage;

/// How a request or tunnel ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still in progress. SECURITY: an outcome still pending when it is recorded is recorded as
    /// an internal error, never as allowed: only a forward whose upstream answer arrived (or a
    /// tunnel that opened) becomes [`Outcome::Forwarded`].
    Pending,
    /// Allowed: forwarded, or (a tunnel) opened.
    Forwarded,
    /// Refused by the proxy, before or after forwarding.
    Refused(Deny),
}

/// A tunnel's mode, once chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// TLS terminated; each request inside runs the pipeline.
    Intercept,
    /// Bytes relayed unread.
    Opaque,
    /// The client spoke plain HTTP/1.1 inside (undici's `ProxyAgent` for `http://` URLs); each
    /// request inside runs the pipeline as plain HTTP to the tunnel's authority.
    Plain,
}

impl TunnelMode {
    /// `intercept`, `opaque` or `plain`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelMode::Intercept => "intercept",
            TunnelMode::Opaque => "opaque",
            TunnelMode::Plain => "plain",
        }
    }
}

/// What the record, metrics and log line of one request (or tunnel) are made of, filled in by
/// the phases as they learn it. Starts knowing nothing: no tenant, no decision, pending.
#[derive(Debug)]
pub struct Trail {
    /// This request's id (the `CONNECT`'s for a tunnel).
    pub request_id: Arc<str>,
    /// When it arrived.
    pub started: Instant,
    /// When it arrived, by the wall clock (its span's start).
    pub started_at: SystemTime,
    /// The phases it passed, in order, and when (its span's events).
    pub phases: Vec<(&'static str, Instant)>,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The method (`CONNECT` for a tunnel).
    pub method: String,
    /// The tenant context, once identity was resolved.
    pub tenant: Option<Arc<TenantContext>>,
    /// The audit slot reserved for the record.
    pub slot: Option<AuditSlot>,
    /// Where the request goes, once parsed.
    pub destination: Option<Destination>,
    /// A tunnel's authority (`host`, `port`).
    pub authority: Option<(String, u16)>,
    /// The enforced decision (the `http` or `connect` question, and any MCP questions).
    pub decision: Option<Decision>,
    /// The version of the policy set that made `decision` (see `PolicyEngine::version`).
    pub policy_version: Option<Arc<str>>,
    /// What the shadow policies would have decided.
    pub shadow: Option<ShadowDecision>,
    /// The model the body names.
    pub model: Option<String>,
    /// The other models it names, each decided as `model` is.
    pub other_models: Vec<String>,
    /// Credentials used, or the one refused (names only).
    pub credentials: Vec<String>,
    /// SHA-256 of the body as forwarded.
    pub body_sha256: Option<String>,
    /// The upstream's own id for the request (see [`upstream_request_id`]).
    pub upstream_request_id: Option<String>,
    /// Bytes from the client (body, or a tunnel's bytes up).
    pub bytes_in: u64,
    /// Bytes to the client (body, or a tunnel's bytes down).
    pub bytes_out: u64,
    /// The tunnel this request came through (its id), or this tunnel's own id.
    pub tunnel: Option<Arc<str>>,
    /// A tunnel's mode, once chosen (for a request inside a tunnel: that tunnel's).
    pub tunnel_mode: Option<TunnelMode>,
    /// For a request to an MCP server: what it uses.
    pub mcp: Option<McpExchange>,
    /// LLM usage read from the response.
    pub usage: Option<Usage>,
    /// What was reserved against ceilings.
    pub reserved: Option<Charge>,
    /// What it was settled at.
    pub settled: Option<Charge>,
    /// When the upstream connection was ready, and when its answer arrived.
    pub upstream: (Option<Instant>, Option<Instant>),
    /// The status the upstream answered with (before anything the proxy did to the response).
    pub upstream_status: Option<http::StatusCode>,
    /// The approval hold the request went through (or would have, for a shadow rule).
    pub approval: Option<crate::audit::ApprovalFields>,
    /// Why the proxy ended this relay (an opaque tunnel, an upgraded connection), when it did.
    pub ended: Option<super::lapse::Ended>,
    /// The outcome.
    pub outcome: Outcome,
}

impl Trail {
    /// A trail for a request that just arrived on `listener`.
    pub fn new(listener: Arc<str>, method: String) -> Self {
        Self {
            request_id: crate::trace::random_hex(16).into(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            phases: Vec::new(),
            listener,
            method,
            tenant: None,
            slot: None,
            destination: None,
            authority: None,
            decision: None,
            policy_version: None,
            shadow: None,
            model: None,
            other_models: Vec::new(),
            credentials: Vec::new(),
            body_sha256: None,
            upstream_request_id: None,
            bytes_in: 0,
            bytes_out: 0,
            tunnel: None,
            tunnel_mode: None,
            mcp: None,
            usage: None,
            reserved: None,
            settled: None,
            upstream: (None, None),
            upstream_status: None,
            approval: None,
            ended: None,
            outcome: Outcome::Pending,
        }
    }

    /// The tenant label for metrics and logs.
    pub fn tenant_label(&self) -> &str {
        Metrics::tenant_label(self.tenant.as_ref().map(|t| t.tenant.as_str()))
    }

    /// Keeps the enforced decision and the version of the policy set (of `snapshot`, for the
    /// trail's tenant) that made it.
    pub fn decided(&mut self, decision: Decision, snapshot: &crate::snapshot::Snapshot) {
        self.policy_version = self
            .tenant
            .as_ref()
            .and_then(|t| snapshot.policy.version(&t.tenant));
        self.decision = Some(decision);
    }

    /// Notes that the request passed `phase` (identity, policy, credentials, limits) now.
    pub fn mark(&mut self, phase: &'static str) {
        self.phases.push((phase, Instant::now()));
    }

    /// Whether the upstream switched protocols (a WebSocket): the exchange then runs until
    /// either side closes.
    pub fn upgraded(&self) -> bool {
        self.upstream_status == Some(http::StatusCode::SWITCHING_PROTOCOLS)
    }

    /// Records the refusal `deny` as the outcome.
    pub fn refuse(&mut self, deny: Deny) {
        self.outcome = Outcome::Refused(deny);
    }

    /// Whether this request's (or tunnel's) log line is written: always when it was let
    /// through; for a refusal, the first of its tenant and reason in this second on this worker
    /// (see [`crate::logging::refusal_line`]). Inside, the lines left out since the previous
    /// one, when there were any (the line's `suppressed` field).
    fn log_line(
        &self,
        tenant_label: &str,
        reason: ReasonCode,
        now: Instant,
    ) -> Option<Option<u64>> {
        if matches!(self.outcome, Outcome::Forwarded) {
            return Some(None);
        }
        let left_out = crate::logging::refusal_line(tenant_label, reason.as_str(), now)?;
        Some((left_out > 0).then_some(left_out))
    }

    fn decision_and_reason(&self) -> (AuditDecision, ReasonCode) {
        match &self.outcome {
            Outcome::Forwarded => (AuditDecision::Allow, ReasonCode::Allowed),
            Outcome::Pending => (AuditDecision::Deny, ReasonCode::Internal),
            Outcome::Refused(d) => (AuditDecision::Deny, d.code()),
        }
    }

    /// Ends the trail of a request: counts a refused request of a signed run for its summary,
    /// then writes the record, the metrics and the log line. `list_filter` is the response's
    /// MCP list filter (what it hid).
    pub async fn finish_request(
        &mut self,
        runs: &RunTracker,
        status: u16,
        list_filter: Option<&ListFilter>,
    ) {
        self.count_run_refusal(runs).await;
        let (decision, reason) = self.decision_and_reason();
        // Borrowed from a handle of its own (a reference count, not a copy of the label):
        // `self` is still written below.
        let tenant = self.tenant.clone();
        let tenant_label = Metrics::tenant_label(tenant.as_ref().map(|t| t.tenant.as_str()));
        let decision_label = decision.as_str();
        METRICS
            .requests
            .with_label_values(&[tenant_label, decision_label, reason.as_str()])
            .inc();
        let elapsed = self.started.elapsed();
        METRICS
            .request_duration
            .with_label_values(&[tenant_label])
            .observe(elapsed.as_secs_f64());
        let upstream = match self.upstream {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        if let Some(u) = upstream {
            METRICS
                .upstream_duration
                .with_label_values(&[tenant_label])
                .observe(u.as_secs_f64());
        }
        if let Some(cost) = self.settled.map(|c| c.cost_micros).filter(|c| *c > 0) {
            crate::metrics::add_saturating(
                &METRICS.llm_cost_micros.with_label_values(&[tenant_label]),
                cost,
            );
        }
        crate::mcp::observe_hidden(tenant_label, list_filter);
        self.export_span(status);
        let stream_cut = matches!(self.outcome, Outcome::Refused(Deny::StreamCut(_)));
        if stream_cut {
            METRICS.stream_cuts.with_label_values(&[tenant_label]).inc();
        }
        if let Some(u) = self.usage {
            for (kind, n) in [
                ("input", u.input_tokens),
                ("cached_input", u.cached_input_tokens),
                ("cache_write", u.cache_write_input_tokens),
                ("output", u.output_tokens),
            ] {
                // Upstream-reported: saturates rather than wraps.
                crate::metrics::add_saturating(
                    &METRICS.llm_tokens.with_label_values(&[tenant_label, kind]),
                    n,
                );
            }
            let hosted = u.hosted_calls;
            for (tool, n) in [
                ("web_search", hosted.web_searches),
                ("file_search", hosted.file_searches),
            ] {
                if n > 0 {
                    crate::metrics::add_saturating(
                        &METRICS
                            .llm_hosted_tool_calls
                            .with_label_values(&[tenant_label, tool]),
                        n,
                    );
                }
            }
        }
        if matches!(
            reason,
            ReasonCode::UpstreamUnreachable
                | ReasonCode::UpstreamFailed
                | ReasonCode::UpstreamTimeout
                | ReasonCode::UpstreamTls
        ) {
            METRICS
                .upstream_errors
                .with_label_values(&[tenant_label, reason.as_str()])
                .inc();
        }
        // Once per request, after every question (`http`, MCP items) was put to it.
        if let Some(shadow) = &self.shadow {
            shadow.observe(tenant_label);
        }
        let dest = self.destination.as_ref();
        if let Some(suppressed) = self.log_line(tenant_label, reason, self.started + elapsed) {
            crate::logging::log_request(&RequestLine {
                request_id: &self.request_id,
                tenant: tenant_label,
                workload: self.tenant.as_ref().map_or("-", |t| t.workload.as_str()),
                listener: &self.listener,
                method: &self.method,
                host: dest.map_or("-", |d| d.host.as_str()),
                path: dest.map_or("-", |d| d.audit_path.as_str()),
                decision: decision_label,
                reason: reason.as_str(),
                status,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                suppressed,
            });
        }
        let ceiling = match &self.outcome {
            Outcome::Refused(d) => d.ceiling(),
            _ => None,
        };
        let Some((slot, base)) = self.base_record(decision, reason, status) else {
            return;
        };
        // The trail ends here (its slot is spent): what the record keeps is moved out of it
        // rather than copied.
        let (scheme, port, host, path, route) = match self.destination.take() {
            Some(d) => (
                Some(d.scheme.as_str()),
                Some(d.port),
                Some(d.host),
                Some(d.audit_path),
                d.route,
            ),
            None => (None, None, None, None, None),
        };
        slot.emit(AuditRecord {
            scheme,
            host,
            port,
            path,
            route,
            model: self.model.take(),
            other_models: std::mem::take(&mut self.other_models),
            credentials: std::mem::take(&mut self.credentials),
            usage: self.usage,
            reserved: self.reserved,
            settled: self.settled,
            ceiling,
            stream_cut,
            ended: self.ended.map(super::lapse::Ended::as_str),
            tunnel: self.tunnel.as_ref().map(|id| TunnelFields {
                id: id.to_string(),
                mode: self.tunnel_mode.unwrap_or(TunnelMode::Intercept).as_str(),
            }),
            mcp: self
                .mcp
                .as_ref()
                .map(|m| crate::mcp::audit_fields(m, list_filter)),
            approval: self.approval.take(),
            upstream_latency_ms: upstream.map(|u| u.as_secs_f64() * 1000.0),
            upstream_request_id: self.upstream_request_id.take(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            request_body_sha256: self.body_sha256.take(),
            ..base
        });
    }

    /// Ends the trail of a `CONNECT` tunnel (refused, opened, or closed after an opaque
    /// relay): counts a refused tunnel of a signed run, then writes the tunnel's record,
    /// metrics and log line.
    pub async fn finish_tunnel(&mut self, runs: &RunTracker, status: u16) {
        self.count_run_refusal(runs).await;
        let (decision, reason) = self.decision_and_reason();
        let tenant = self.tenant.clone();
        let tenant_label = Metrics::tenant_label(tenant.as_ref().map(|t| t.tenant.as_str()));
        let mode = self.tunnel_mode.map_or("none", TunnelMode::as_str);
        METRICS
            .tunnels
            .with_label_values(&[tenant_label, mode, reason.as_str()])
            .inc();
        if let Some(shadow) = &self.shadow {
            shadow.observe(tenant_label);
        }
        self.export_span(status);
        let (host, port) = self
            .authority
            .clone()
            .map_or((None, None), |(h, p)| (Some(h), Some(p)));
        if let Some(suppressed) = self.log_line(tenant_label, reason, Instant::now()) {
            tracing::info!(
                request_id = %self.request_id,
                tenant = tenant_label,
                listener = %self.listener,
                method = "CONNECT",
                host = host.as_deref().unwrap_or("-"),
                port = port.unwrap_or(0),
                mode,
                reason = reason.as_str(),
                status,
                suppressed,
                "tunnel"
            );
        }
        let tunnel = self.tunnel_mode.map(|mode| TunnelFields {
            id: self.request_id.to_string(),
            mode: mode.as_str(),
        });
        let (bytes_in, bytes_out) = (self.bytes_in, self.bytes_out);
        let Some((slot, base)) = self.base_record(decision, reason, status) else {
            return;
        };
        slot.emit(AuditRecord {
            host,
            port,
            tunnel,
            bytes_in,
            bytes_out,
            ended: self.ended.map(super::lapse::Ended::as_str),
            ..base
        });
    }

    /// Counts a refusal in its signed run's summary, on every path alike.
    async fn count_run_refusal(&self, runs: &RunTracker) {
        if let (Outcome::Refused(_), Some(tenant)) = (&self.outcome, &self.tenant) {
            runs.count_refusal(tenant).await;
        }
    }

    /// The record's common fields and the slot to write it into. Records exist only where a
    /// tenant is known: an unidentified caller has no partition. Taking the slot ends the
    /// trail, so what the record keeps (method, policy ids) is moved out of it.
    fn base_record(
        &mut self,
        decision: AuditDecision,
        reason: ReasonCode,
        status: u16,
    ) -> Option<(AuditSlot, AuditRecord)> {
        let (Some(tenant), Some(slot)) = (self.tenant.clone(), self.slot.take()) else {
            return None;
        };
        let (policy_ids, policy_errors) = self
            .decision
            .take()
            .map(|p| (p.policy_ids, p.errors))
            .unwrap_or_default();
        let base = AuditRecord {
            policy_ids,
            policy_version: self.policy_version.take(),
            policy_errors,
            shadow: self.shadow.take(),
            ..AuditRecord::of(
                &tenant,
                &self.listener,
                std::mem::take(&mut self.method),
                self.started.elapsed(),
                decision,
                reason,
                status,
            )
        };
        Some((slot, base))
    }
}

/// The parts of the JSON refusal for `deny`: status, headers and body.
fn refusal_parts(
    deny: &Deny,
    request_id: &str,
) -> (u16, Vec<(http::HeaderName, http::HeaderValue)>, Vec<u8>) {
    use http::HeaderValue;
    let (status, code, message) = deny.describe();
    let body = error_body(code, &message, request_id, deny.ceiling());
    let mut headers = Vec::with_capacity(6);
    headers.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    headers.push((http::header::CONTENT_LENGTH, HeaderValue::from(body.len())));
    // Request ids are the proxy's own hex; the body carries the id in any case.
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.push((http::HeaderName::from_static("x-request-id"), id));
    }
    headers.extend(deny.extra_headers(status));
    (status, headers, body)
}

/// The JSON refusal for `deny` as a response: head and body.
pub fn refusal_response(
    deny: &Deny,
    request_id: &str,
) -> pingora::Result<(ResponseHeader, Vec<u8>)> {
    let (status, headers, body) = refusal_parts(deny, request_id);
    // Built as `http` parts, without pingora's case map: pingora then writes each name as it
    // titles it, exactly what the map would have held for these names, and a refusal skips
    // filling a second map (and pingora's round trip of every name through its titled bytes).
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status).or_err(
        pingora::ErrorType::InvalidHTTPHeader,
        "invalid refusal status",
    )?;
    // Room for the headers pingora adds when it writes the response (`Date`, `Connection`).
    parts.headers.reserve(headers.len() + 2);
    for (name, value) in headers {
        parts.headers.append(name, value);
    }
    let resp = ResponseHeader::from(parts);
    Ok((resp, body))
}

/// Writes the JSON refusal on a raw connection (one no HTTP session runs on: a `CONNECT`, a
/// head the front refused) and closes it; returns the status.
pub async fn write_refusal(stream: &mut Stream, deny: &Deny, request_id: &str) -> u16 {
    let (status, headers, body) = refusal_parts(deny, request_id);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
    status
}

/// The upstream's own id for a request: its response's `x-request-id` (OpenAI's; Anthropic's
/// `request-id` reaches the client as it is), which the proxy's own id replaces in that header.
/// Kept, as `x-upstream-request-id` and in the record, when it looks like an id: at most 128
/// letters, digits and `-_.:` (the record is the proxy's; it takes no text an upstream chose).
pub fn upstream_request_id(headers: &http::HeaderMap) -> Option<&str> {
    let id = crate::header_names::sole(headers, "x-request-id")
        .ok()
        .flatten()?
        .to_str()
        .ok()?;
    let fits = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    fits.then_some(id)
}

#[cfg(test)]
mod tests {
    /// The upstream's id is kept when it looks like one; anything else, or two of them, not.
    #[test]
    fn an_upstreams_request_id_is_kept_when_it_is_an_id() {
        let with = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append("x-request-id", http::HeaderValue::from_str(v).unwrap());
            }
            upstream_request_id(&h).map(str::to_string)
        };
        assert_eq!(
            with(&["req_8c1f2e-A.b:9"]).as_deref(),
            Some("req_8c1f2e-A.b:9")
        );
        let long = "a".repeat(129);
        for bad in ["", "req 1", "sk-live\"x", "<script>", long.as_str(), "é"] {
            if http::HeaderValue::from_str(bad).is_ok() {
                assert_eq!(with(&[bad]), None, "{bad}");
            }
        }
        assert_eq!(with(&["a", "b"]), None);
        assert_eq!(with(&[]), None);
    }

    use super::*;

    #[test]
    fn a_refusals_head_is_written_as_pingoras_case_map_wrote_it() {
        for deny in [
            Deny::Overloaded("client connections"),
            Deny::IdentityRequired,
            Deny::ApprovalPending("h-1".into()),
            Deny::AuditUnavailable,
        ] {
            let (resp, _) = refusal_response(&deny, "req-9").expect("builds");
            let (status, headers, _) = refusal_parts(&deny, "req-9");
            let mut mapped = ResponseHeader::build(status, None).expect("builds");
            for (name, value) in headers {
                mapped.append_header(name, value).expect("appends");
            }
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            resp.header_to_h1_wire(&mut ours);
            mapped.header_to_h1_wire(&mut theirs);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap(),
                "{deny:?}"
            );
            assert_eq!(resp.status, mapped.status);
        }
        let (resp, _) = refusal_response(&Deny::IdentityRequired, "req-9").expect("builds");
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(
            wire.starts_with("Content-Type: application/json\r\nContent-Length: "),
            "{wire}"
        );
        assert!(wire.contains("\r\nx-request-id: req-9\r\n"), "{wire}");
        assert_eq!(wire.matches("proxy-authenticate: ").count(), 2, "{wire}");
    }

    #[test]
    fn a_refusal_carries_its_code_request_id_and_extra_headers() {
        let (resp, body) =
            refusal_response(&Deny::Overloaded("client connections"), "req-9").expect("builds");
        assert_eq!(resp.status.as_u16(), 503);
        assert_eq!(
            resp.headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(
            resp.headers.get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"req-9"[..])
        );
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "overloaded");
        assert_eq!(v["error"]["request_id"], "req-9");
    }

    #[test]
    fn a_pending_outcome_is_recorded_as_an_internal_error() {
        let t = Trail::new(Arc::from("l"), "GET".into());
        assert_eq!(
            t.decision_and_reason(),
            (AuditDecision::Deny, ReasonCode::Internal)
        );
    }
}
