//! The single catalogue of metrics. Label values are bounded: tenant ids (from configuration),
//! and enum codes. Never paths, hosts, models or other free text.

use std::sync::LazyLock;

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric tenant-proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by tenant, decision (`allow`/`deny`) and reason code.
    pub requests: IntCounterVec,
    /// Total time in the proxy by tenant.
    pub request_duration: HistogramVec,
    /// Time from upstream connect to response header by tenant.
    pub upstream_duration: HistogramVec,
    /// Upstream failures by tenant and code.
    pub upstream_errors: IntCounterVec,
    /// Config reloads by result (`ok`/`error`).
    pub config_reloads: IntCounterVec,
    /// Records waiting in the audit queue.
    pub audit_queue_depth: IntGauge,
    /// Records written.
    pub audit_records_written: IntCounter,
    /// Failed audit writes (each retried).
    pub audit_write_errors: IntCounter,
    /// 1 while the audit sink can write (its files, and the Redis Stream when required), 0 while
    /// it cannot and every new request is refused with `audit_unavailable`.
    pub audit_healthy: IntGauge,
    /// 1 when the last reload of every reloadable part (the tenant configuration with the admin
    /// token file, each mTLS listener's files) was applied (or none was tried yet), 0
    /// when one was rejected and that part's last good state is still in force.
    pub config_last_reload_successful: IntGauge,
    /// Cost ceilings of the loaded tenant configuration, by tenant and period (`day`, `month`),
    /// in micro-units of the price table's currency; a tenant without a ceiling has no series.
    pub cost_ceiling_micros: IntGaugeVec,
    /// Requests refused because the audit sink, or their tenant's partition, could not take a
    /// record, by tenant (`none` when refused before the tenant was known).
    pub audit_refusals: IntCounterVec,
    /// 1 while a tenant's audit partition cannot be written (its requests are refused), else 0.
    pub audit_partition_failing: IntGaugeVec,
    /// Records of a tenant held by the writer until its partition can be written again.
    pub audit_held_records: IntGaugeVec,
    /// Cedar evaluation time.
    pub policy_eval_duration: Histogram,
    /// Policy decisions answered from the tenant's decision cache (`hit`) or evaluated
    /// (`miss`), by tenant and policy set (`enforced`, `shadow`).
    pub policy_decision_cache: IntCounterVec,
    /// Credentials substituted into requests, by tenant.
    pub credential_substitutions: IntCounterVec,
    /// Secrets echoed by an upstream and replaced in the response, by tenant.
    pub credential_scrubbed: IntCounterVec,
    /// OAuth2 token grants, by tenant and outcome (`ok`, `failed`).
    pub credential_token_grants: IntCounterVec,
    /// LLM tokens read from responses, by tenant and kind (`input`, `cached_input`, `output`).
    pub llm_tokens: IntCounterVec,
    /// Calls LLM providers' hosted tools made (billed per call), by tenant and tool
    /// (`web_search`, `file_search`).
    pub llm_hosted_tool_calls: IntCounterVec,
    /// Limiter backend calls that failed or timed out.
    pub limiter_errors: IntCounter,
    /// Process log lines dropped because the log writer was behind (copied from the writer's
    /// own count when the metrics are rendered).
    pub log_lines_dropped: IntCounter,
    /// Spans in exports to the trace collector that failed (refused, timed out, unreachable).
    pub trace_spans_unexported: IntCounter,
    /// Sampled spans handed to the export queue.
    pub trace_spans_ended: IntCounter,
    /// Spans the trace collector took.
    pub trace_spans_exported: IntCounter,
    /// Refusal lines left out of the process log (one per tenant and reason per second).
    pub log_lines_suppressed: IntCounter,
    /// Admissions decided on local counters because the shared backend was unreachable.
    pub limiter_fallback: IntCounter,
    /// 1 while admissions are decided on local counters (the last shared call failed), else 0.
    pub limiter_fallback_active: IntGauge,
    /// LLM cost settled, by tenant, in micro-units of the price table's currency.
    pub llm_cost_micros: IntCounterVec,
    /// Streaming responses cut because a budget ran out, by tenant.
    pub stream_cuts: IntCounterVec,
    /// Successful LLM responses whose usage could not be read (an unknown shape, a malformed
    /// or truncated stream), by tenant: their reservation is kept, never settled as zero.
    pub llm_usage_unknown: IntCounterVec,
    /// `CONNECT` tunnels by tenant, mode (`intercept`, `opaque`, `none` when refused before a
    /// mode was chosen) and reason code.
    pub tunnels: IntCounterVec,
    /// Tunnels open now, by tenant.
    pub tunnels_open: IntGaugeVec,
    /// Bytes relayed through opaque tunnels, by tenant and direction (`up`, `down`).
    pub tunnel_bytes: IntCounterVec,
    /// Client TLS handshakes that failed inside intercepted tunnels, by tenant and reason
    /// (`client_refused`: usually a client that does not trust the proxy CA; `sni_mismatch`).
    pub tunnel_handshake_failures: IntCounterVec,
    /// Client TLS handshakes completed in intercepted tunnels, by tenant and kind (`full`,
    /// `resumed`).
    pub tunnel_tls_handshakes: IntCounterVec,
    /// Leaf certificates served from the cache or minted (`hit`, `miss`).
    pub leaf_certificates: IntCounterVec,
    /// mTLS handshakes refused (no, untrusted or expired client certificate).
    pub mtls_handshake_failures: IntCounter,
    /// Destinations refused by the egress (SSRF) guard, by tenant.
    pub egress_refusals: IntCounterVec,
    /// MCP `tools/call`s decided, by tenant and decision (`allow`, `deny`); never by tool name.
    pub mcp_tool_calls: IntCounterVec,
    /// Tools removed from MCP `tools/list` results, by tenant.
    pub mcp_tools_hidden: IntCounterVec,
    /// MCP resource reads and prompt gets decided, by tenant, kind (`resource`, `prompt`) and
    /// decision; never by URI or name.
    pub mcp_decisions: IntCounterVec,
    /// Resources (and templates) and prompts removed from MCP list results, by tenant and kind.
    pub mcp_hidden: IntCounterVec,
    /// Shadow (report-only) policy decisions by tenant and outcome (`agree`, `would_deny`,
    /// `would_allow`).
    pub shadow_decisions: IntCounterVec,
    /// Client connections open now, by listener name.
    pub connections_open: IntGaugeVec,
    /// Client connections open now, by tenant (once a connection's tenant is known).
    pub tenant_connections_open: IntGaugeVec,
    /// Client connections and requests refused by a connection or memory cap, by reason
    /// (`listener_cap`, `tenant_cap`, `body_memory`, `tenant_body_memory`).
    pub overload_refusals: IntCounterVec,
    /// Request body bytes held in memory by requests in flight.
    pub buffered_body_bytes: IntGauge,
    /// Requests this replica holds for approval now (waiting, or answered 202 and not yet
    /// decided), by tenant.
    pub approval_holds_pending: IntGaugeVec,
    /// Holds ended, by tenant and outcome (`granted`, `denied`, `expired`, `cancelled`,
    /// `would_hold` for shadow rules).
    pub approval_outcomes: IntCounterVec,
    /// Time from a hold to its decision (granted or denied), by tenant.
    pub approval_decision_duration: HistogramVec,
}

use crate::ids::TENANT_NONE;

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    // Up to five minutes: LLM calls (a long generation, a reasoning model) take a minute or
    // more, and a p99 above the largest bucket reads as that bucket (an alert on it could
    // never fire).
    let latency_buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 120.0, 300.0,
    ];
    let m = Metrics {
        requests: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_requests_total",
                "Requests by tenant, decision and reason code",
            ),
            &["tenant", "decision", "code"],
        )?,
        request_duration: HistogramVec::new(
            HistogramOpts::new(
                "tenant_proxy_request_duration_seconds",
                "Total request time in the proxy",
            )
            .buckets(latency_buckets.clone()),
            &["tenant"],
        )?,
        upstream_duration: HistogramVec::new(
            HistogramOpts::new(
                "tenant_proxy_upstream_duration_seconds",
                "Upstream time to response header",
            )
            .buckets(latency_buckets),
            &["tenant"],
        )?,
        upstream_errors: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_upstream_errors_total",
                "Upstream failures by tenant and code",
            ),
            &["tenant", "code"],
        )?,
        config_reloads: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_config_reloads_total",
                "Tenant configuration reloads by result",
            ),
            &["result"],
        )?,
        audit_queue_depth: IntGauge::new(
            "tenant_proxy_audit_queue_depth",
            "Audit records waiting to be written",
        )?,
        audit_records_written: IntCounter::new(
            "tenant_proxy_audit_records_written_total",
            "Audit records written",
        )?,
        audit_write_errors: IntCounter::new(
            "tenant_proxy_audit_write_errors_total",
            "Failed audit writes (retried)",
        )?,
        audit_refusals: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_audit_refusals_total",
                "Requests refused because the audit sink or their tenant's partition could not take their record",
            ),
            &["tenant"],
        )?,
        audit_partition_failing: IntGaugeVec::new(
            Opts::new(
                "tenant_proxy_audit_partition_failing",
                "1 while a tenant's audit partition cannot be written",
            ),
            &["tenant"],
        )?,
        audit_held_records: IntGaugeVec::new(
            Opts::new(
                "tenant_proxy_audit_held_records",
                "Audit records held until the tenant's partition can be written again",
            ),
            &["tenant"],
        )?,
        audit_healthy: IntGauge::new(
            "tenant_proxy_audit_healthy",
            "1 while the audit sink can write, 0 while it cannot and requests are refused",
        )?,
        config_last_reload_successful: IntGauge::new(
            "tenant_proxy_config_last_reload_successful",
            "1 when the last reload of every reloadable part (tenant configuration, admin token file, mTLS files) was applied, 0 when one was rejected",
        )?,
        cost_ceiling_micros: IntGaugeVec::new(
            Opts::new(
                "tenant_proxy_cost_ceiling_micros",
                "Configured cost ceilings by tenant and period, in micro-units of the price table's currency",
            ),
            &["tenant", "period"],
        )?,
        policy_eval_duration: Histogram::with_opts(
            HistogramOpts::new("tenant_proxy_policy_eval_seconds", "Cedar evaluation time")
                .buckets(vec![
                    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005,
                ]),
        )?,
        policy_decision_cache: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_policy_decision_cache_total",
                "Policy decisions answered from the tenant's decision cache (hit) or evaluated (miss), by tenant and policy set",
            ),
            &["tenant", "set", "result"],
        )?,
        credential_substitutions: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_credential_substitutions_total",
                "Credentials substituted into requests",
            ),
            &["tenant"],
        )?,
        credential_token_grants: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_credential_token_grants_total",
                "OAuth2 token grants made for token credentials",
            ),
            &["tenant", "outcome"],
        )?,
        credential_scrubbed: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_credential_scrubbed_total",
                "Substituted secrets replaced in responses",
            ),
            &["tenant"],
        )?,
        llm_tokens: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_llm_tokens_total",
                "LLM tokens read from responses",
            ),
            &["tenant", "kind"],
        )?,
        llm_hosted_tool_calls: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_llm_hosted_tool_calls_total",
                "Calls LLM providers' hosted tools made (billed per call)",
            ),
            &["tenant", "tool"],
        )?,
        limiter_errors: IntCounter::new(
            "tenant_proxy_limiter_errors_total",
            "Limiter backend calls that failed or timed out",
        )?,
        log_lines_dropped: IntCounter::new(
            "tenant_proxy_log_lines_dropped_total",
            "Process log lines dropped because the log writer was behind",
        )?,
        trace_spans_unexported: IntCounter::new(
            "tenant_proxy_trace_spans_unexported_total",
            "Spans in exports the trace collector refused, did not answer in time, or could not be reached for",
        )?,
        trace_spans_ended: IntCounter::new(
            "tenant_proxy_trace_spans_ended_total",
            "Sampled spans handed to the export queue",
        )?,
        trace_spans_exported: IntCounter::new(
            "tenant_proxy_trace_spans_exported_total",
            "Spans the trace collector took",
        )?,
        log_lines_suppressed: IntCounter::new(
            "tenant_proxy_log_lines_suppressed_total",
            "Refusal lines left out of the process log: each worker logs one per tenant and reason per second (every refusal is audited)",
        )?,
        limiter_fallback: IntCounter::new(
            "tenant_proxy_limiter_fallback_total",
            "Admissions decided on local counters because the shared limiter was unreachable",
        )?,
        limiter_fallback_active: IntGauge::new(
            "tenant_proxy_limiter_fallback_active",
            "1 while admissions are decided on local counters because the shared limiter is unreachable",
        )?,
        llm_cost_micros: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_llm_cost_micros_total",
                "LLM cost settled, in micro-units of the price table's currency",
            ),
            &["tenant"],
        )?,
        stream_cuts: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_stream_cuts_total",
                "Streaming responses ended early because a budget ran out",
            ),
            &["tenant"],
        )?,
        llm_usage_unknown: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_llm_usage_unknown_total",
                "Successful LLM responses whose usage could not be read",
            ),
            &["tenant"],
        )?,
        tunnels: IntCounterVec::new(
            Opts::new("tenant_proxy_tunnels_total", "CONNECT tunnels by tenant, mode and reason code"),
            &["tenant", "mode", "code"],
        )?,
        tunnels_open: IntGaugeVec::new(
            Opts::new("tenant_proxy_tunnels_open", "Tunnels open now"),
            &["tenant"],
        )?,
        tunnel_bytes: IntCounterVec::new(
            Opts::new("tenant_proxy_tunnel_bytes_total", "Bytes relayed through opaque tunnels"),
            &["tenant", "direction"],
        )?,
        tunnel_handshake_failures: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_tunnel_handshake_failures_total",
                "Client TLS handshakes that failed in intercepted tunnels",
            ),
            &["tenant", "reason"],
        )?,
        tunnel_tls_handshakes: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_tunnel_tls_handshakes_total",
                "Client TLS handshakes completed in intercepted tunnels, full or resumed",
            ),
            &["tenant", "kind"],
        )?,
        leaf_certificates: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_leaf_certificates_total",
                "Interception leaf certificates served from cache (hit) or minted (miss)",
            ),
            &["result"],
        )?,
        mtls_handshake_failures: IntCounter::new(
            "tenant_proxy_mtls_handshake_failures_total",
            "mTLS handshakes refused",
        )?,
        egress_refusals: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_egress_refusals_total",
                "Destinations refused by the egress (SSRF) guard",
            ),
            &["tenant"],
        )?,
        mcp_tool_calls: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_mcp_tool_calls_total",
                "MCP tool calls decided, by decision",
            ),
            &["tenant", "decision"],
        )?,
        mcp_tools_hidden: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_mcp_tools_hidden_total",
                "Tools removed from MCP tools/list results",
            ),
            &["tenant"],
        )?,
        mcp_decisions: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_mcp_decisions_total",
                "MCP resource reads and prompt gets decided, by tenant, kind and decision",
            ),
            &["tenant", "kind", "decision"],
        )?,
        mcp_hidden: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_mcp_hidden_total",
                "MCP resources and prompts removed from list results, by tenant and kind",
            ),
            &["tenant", "kind"],
        )?,
        shadow_decisions: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_shadow_decisions_total",
                "Shadow policy decisions by tenant and outcome compared with the enforced one",
            ),
            &["tenant", "outcome"],
        )?,
        connections_open: IntGaugeVec::new(
            Opts::new("tenant_proxy_connections_open", "Client connections open now, by listener"),
            &["listener"],
        )?,
        tenant_connections_open: IntGaugeVec::new(
            Opts::new(
                "tenant_proxy_tenant_connections_open",
                "Client connections open now, by tenant (once its tenant is known)",
            ),
            &["tenant"],
        )?,
        overload_refusals: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_overload_refusals_total",
                "Connections and requests refused by a connection or memory cap, by reason",
            ),
            &["reason"],
        )?,
        buffered_body_bytes: IntGauge::new(
            "tenant_proxy_buffered_body_bytes",
            "Request body bytes held in memory by requests in flight",
        )?,
        approval_holds_pending: IntGaugeVec::new(
            Opts::new(
                "tenant_proxy_approval_holds_pending",
                "Requests this replica holds for approval now, by tenant",
            ),
            &["tenant"],
        )?,
        approval_outcomes: IntCounterVec::new(
            Opts::new(
                "tenant_proxy_approval_outcomes_total",
                "Approval holds ended, by tenant and outcome",
            ),
            &["tenant", "outcome"],
        )?,
        approval_decision_duration: HistogramVec::new(
            HistogramOpts::new(
                "tenant_proxy_approval_decision_seconds",
                "Time from a hold to a person's decision",
            )
            .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0]),
            &["tenant"],
        )?,
        registry,
    };
    for c in collectors(&m) {
        m.registry.register(c)?;
    }
    // Families whose only labels are enum codes have every series from the start, at zero, so
    // a dashboard or an alert on `rate()` sees them before their first event. (Families with a
    // tenant label cannot: tenant ids are open-ended.)
    for result in ["ok", "error"] {
        m.config_reloads.with_label_values(&[result]);
    }
    for result in ["hit", "miss"] {
        m.leaf_certificates.with_label_values(&[result]);
    }
    for reason in OVERLOAD_REASONS {
        m.overload_refusals.with_label_values(&[reason]);
    }
    Ok(m)
}

/// Every family, as the registry takes them.
fn collectors(m: &Metrics) -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(m.requests.clone()),
        Box::new(m.request_duration.clone()),
        Box::new(m.upstream_duration.clone()),
        Box::new(m.upstream_errors.clone()),
        Box::new(m.config_reloads.clone()),
        Box::new(m.audit_queue_depth.clone()),
        Box::new(m.audit_records_written.clone()),
        Box::new(m.audit_write_errors.clone()),
        Box::new(m.audit_refusals.clone()),
        Box::new(m.audit_healthy.clone()),
        Box::new(m.config_last_reload_successful.clone()),
        Box::new(m.cost_ceiling_micros.clone()),
        Box::new(m.audit_partition_failing.clone()),
        Box::new(m.audit_held_records.clone()),
        Box::new(m.policy_eval_duration.clone()),
        Box::new(m.policy_decision_cache.clone()),
        Box::new(m.credential_substitutions.clone()),
        Box::new(m.credential_scrubbed.clone()),
        Box::new(m.credential_token_grants.clone()),
        Box::new(m.llm_tokens.clone()),
        Box::new(m.llm_hosted_tool_calls.clone()),
        Box::new(m.limiter_errors.clone()),
        Box::new(m.log_lines_dropped.clone()),
        Box::new(m.trace_spans_unexported.clone()),
        Box::new(m.trace_spans_ended.clone()),
        Box::new(m.trace_spans_exported.clone()),
        Box::new(m.log_lines_suppressed.clone()),
        Box::new(m.limiter_fallback.clone()),
        Box::new(m.limiter_fallback_active.clone()),
        Box::new(m.llm_cost_micros.clone()),
        Box::new(m.stream_cuts.clone()),
        Box::new(m.llm_usage_unknown.clone()),
        Box::new(m.tunnels.clone()),
        Box::new(m.tunnels_open.clone()),
        Box::new(m.tunnel_bytes.clone()),
        Box::new(m.tunnel_handshake_failures.clone()),
        Box::new(m.tunnel_tls_handshakes.clone()),
        Box::new(m.leaf_certificates.clone()),
        Box::new(m.mtls_handshake_failures.clone()),
        Box::new(m.egress_refusals.clone()),
        Box::new(m.mcp_tool_calls.clone()),
        Box::new(m.mcp_tools_hidden.clone()),
        Box::new(m.mcp_decisions.clone()),
        Box::new(m.mcp_hidden.clone()),
        Box::new(m.shadow_decisions.clone()),
        Box::new(m.connections_open.clone()),
        Box::new(m.tenant_connections_open.clone()),
        Box::new(m.overload_refusals.clone()),
        Box::new(m.buffered_body_bytes.clone()),
        Box::new(m.approval_holds_pending.clone()),
        Box::new(m.approval_outcomes.clone()),
        Box::new(m.approval_decision_duration.clone()),
    ]
}

/// Every `reason` of `tenant_proxy_overload_refusals_total`.
pub const OVERLOAD_REASONS: [&str; 4] = [
    "listener_cap",
    "tenant_cap",
    "body_memory",
    "tenant_body_memory",
];

/// The process-wide metrics.
#[allow(clippy::expect_used)] // Metric definitions are static; a failure is a programming error caught by every test.
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are valid"));

impl Metrics {
    /// The tenant label for a request (a fixed value when no tenant was identified).
    pub fn tenant_label(tenant: Option<&str>) -> &str {
        tenant.unwrap_or(TENANT_NONE)
    }

    /// Publishes the cost ceilings of a newly loaded tenant configuration, `(tenant, per day,
    /// per month)`, replacing the previous set so a removed tenant or ceiling leaves no series.
    pub fn publish_cost_ceilings<'a>(
        &self,
        ceilings: impl IntoIterator<Item = (&'a str, Option<u64>, Option<u64>)>,
    ) {
        self.cost_ceiling_micros.reset();
        for (tenant, day, month) in ceilings {
            for (period, value) in [("day", day), ("month", month)] {
                if let Some(v) = value {
                    self.cost_ceiling_micros
                        .with_label_values(&[tenant, period])
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// Drops the series of every tenant `is_served` says is no longer served, so a deployment
    /// that adds and removes tenants does not export (and keep in memory) their series until a
    /// restart. Called with each configuration a reload loads.
    ///
    /// A gauge still above zero (a connection, tunnel or hold of the removed tenant still open, a
    /// partition still failing) is kept: removing it would bring it back below zero when the
    /// thing it counts ends. A removed tenant's request still in flight recreates its counters
    /// from zero, which the next reload drops again.
    pub fn forget_tenants(&self, is_served: impl Fn(&str) -> bool) {
        let keep = |tenant: &str| tenant == TENANT_NONE || is_served(tenant);
        for family in self.tenant_families() {
            family.forget(&keep);
        }
    }

    /// Every family labelled by tenant (a unit test checks none is missing).
    fn tenant_families(&self) -> [&dyn TenantSeries; 32] {
        [
            &self.requests,
            &self.request_duration,
            &self.upstream_duration,
            &self.upstream_errors,
            &self.cost_ceiling_micros,
            &self.audit_refusals,
            &self.audit_partition_failing,
            &self.audit_held_records,
            &self.policy_decision_cache,
            &self.credential_substitutions,
            &self.credential_scrubbed,
            &self.credential_token_grants,
            &self.llm_tokens,
            &self.llm_hosted_tool_calls,
            &self.llm_cost_micros,
            &self.stream_cuts,
            &self.llm_usage_unknown,
            &self.tunnels,
            &self.tunnels_open,
            &self.tunnel_bytes,
            &self.tunnel_handshake_failures,
            &self.tunnel_tls_handshakes,
            &self.egress_refusals,
            &self.mcp_tool_calls,
            &self.mcp_tools_hidden,
            &self.mcp_decisions,
            &self.mcp_hidden,
            &self.shadow_decisions,
            &self.tenant_connections_open,
            &self.approval_holds_pending,
            &self.approval_outcomes,
            &self.approval_decision_duration,
        ]
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = crate::logging::dropped_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let suppressed = crate::logging::suppressed_lines();
        self.log_lines_suppressed
            .inc_by(suppressed.saturating_sub(self.log_lines_suppressed.get()));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// A family whose series can be dropped by their `tenant` label.
trait TenantSeries {
    fn forget(&self, keep: &dyn Fn(&str) -> bool);
    #[cfg(test)]
    fn name(&self) -> String;
}

impl<T: MetricVecBuilder> TenantSeries for MetricVec<T> {
    fn forget(&self, keep: &dyn Fn(&str) -> bool) {
        use prometheus::core::Collector as _;
        for family in self.collect() {
            for series in family.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = series
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let gone = labels.get("tenant").is_some_and(|tenant| !keep(tenant));
                // 0 for a counter's or a histogram's series.
                let open = series.get_gauge().get_value() != 0.0;
                if gone && !open {
                    // Err only when the series is already gone (a concurrent sweep).
                    let _ = self.remove(&labels);
                }
            }
        }
    }

    #[cfg(test)]
    fn name(&self) -> String {
        use prometheus::core::Collector as _;
        self.desc().iter().map(|d| d.fq_name.clone()).collect()
    }
}

/// Adds `n` to `counter`, stopping at `u64::MAX` instead of wrapping to a small number.
///
/// SECURITY: counters fed from numbers an upstream reports (tokens, hosted tool calls, the cost
/// computed from them) would otherwise go backwards by one report of `u64::MAX`, hiding a
/// tenant's usage from every rate and alert computed on them. (A concurrent add between the
/// read and the add can still pass the top; only a hostile report comes near it.)
pub fn add_saturating(counter: &IntCounter, n: u64) {
    let room = u64::MAX - counter.get();
    counter.inc_by(n.min(room));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that reports `u64::MAX` tokens leaves the counter at its top, not one below
    /// where it was.
    #[test]
    fn counters_fed_by_upstreams_saturate() {
        let c = IntCounter::new("t", "t").expect("counter");
        add_saturating(&c, 5001);
        add_saturating(&c, u64::MAX);
        assert_eq!(c.get(), u64::MAX);
        add_saturating(&c, 7);
        assert_eq!(c.get(), u64::MAX);
    }

    #[test]
    fn enum_labelled_families_have_every_series_at_zero_from_the_start() {
        let m = build().expect("metrics");
        let text = String::from_utf8(m.render()).expect("utf8");
        for series in [
            r#"tenant_proxy_config_reloads_total{result="ok"} 0"#,
            r#"tenant_proxy_config_reloads_total{result="error"} 0"#,
            r#"tenant_proxy_leaf_certificates_total{result="hit"} 0"#,
            r#"tenant_proxy_leaf_certificates_total{result="miss"} 0"#,
            r#"tenant_proxy_overload_refusals_total{reason="listener_cap"} 0"#,
            r#"tenant_proxy_overload_refusals_total{reason="tenant_cap"} 0"#,
            r#"tenant_proxy_overload_refusals_total{reason="body_memory"} 0"#,
            r#"tenant_proxy_overload_refusals_total{reason="tenant_body_memory"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn cost_ceilings_are_replaced_not_accumulated() {
        // A registry of its own: the process-wide one is shared with tests running in parallel.
        let m = build().expect("metrics");
        m.publish_cost_ceilings([
            ("acme", Some(20_000_000), Some(300_000_000)),
            ("globex", Some(1_000_000), None),
            ("initech", None, None),
        ]);
        let text = String::from_utf8(m.render()).expect("utf8");
        for line in [
            r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="acme"} 20000000"#,
            r#"tenant_proxy_cost_ceiling_micros{period="month",tenant="acme"} 300000000"#,
            r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="globex"} 1000000"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains(r#"period="month",tenant="globex""#),
            "{text}"
        );
        assert!(!text.contains("initech"), "no ceiling, no series: {text}");

        // A reload that drops acme's ceilings and changes globex's: nothing stale remains.
        m.publish_cost_ceilings([("acme", None, None), ("globex", Some(2_000_000), None)]);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(!text.contains(r#"tenant="acme""#), "{text}");
        assert!(
            text.contains(
                r#"tenant_proxy_cost_ceiling_micros{period="day",tenant="globex"} 2000000"#
            ),
            "{text}"
        );
    }

    /// A reload that removes a tenant drops its series from every family labelled by tenant,
    /// keeps the served tenants' and the unidentified (`none`) ones, and keeps a gauge of the
    /// removed tenant that still counts something open.
    #[test]
    fn a_removed_tenants_series_are_dropped() {
        let m = build().expect("metrics");
        for tenant in ["acme", "gone", TENANT_NONE] {
            m.requests.with_label_values(&[tenant, "allow", "ok"]).inc();
            m.request_duration
                .with_label_values(&[tenant])
                .observe(0.01);
            m.llm_cost_micros.with_label_values(&[tenant]).inc_by(5);
            m.tunnels_open.with_label_values(&[tenant]).set(0);
        }
        m.tenant_connections_open
            .with_label_values(&["gone"])
            .set(1);
        m.forget_tenants(|tenant| tenant == "acme");
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains(r#"tenant_proxy_tenant_connections_open{tenant="gone"} 1"#),
            "an open connection's gauge stays: {text}"
        );
        let gone: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains(r#"tenant="gone""#)
                    && !l.starts_with("tenant_proxy_tenant_connections_open")
            })
            .collect();
        assert!(gone.is_empty(), "{gone:?}");
        for tenant in ["acme", TENANT_NONE] {
            for family in [
                "requests_total",
                "request_duration_seconds_count",
                "llm_cost_micros_total",
                "tunnels_open",
            ] {
                let prefix = format!("tenant_proxy_{family}{{");
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(&prefix)
                            && l.contains(&format!(r#"tenant="{tenant}""#))),
                    "{family} of {tenant} kept: {text}"
                );
            }
        }
        // Once the connection closes, the next reload drops its gauge too.
        m.tenant_connections_open
            .with_label_values(&["gone"])
            .set(0);
        m.forget_tenants(|tenant| tenant == "acme");
        assert!(!String::from_utf8(m.render())
            .expect("utf8")
            .contains(r#"tenant="gone""#));
    }

    /// `tenant_families` names every registered family with a `tenant` label.
    #[test]
    fn every_tenant_labelled_family_can_be_forgotten() {
        let m = build().expect("metrics");
        let labelled: std::collections::BTreeSet<String> = collectors(&m)
            .iter()
            .flat_map(|c| c.desc().into_iter())
            .filter(|d| d.variable_labels.iter().any(|l| l == "tenant"))
            .map(|d| d.fq_name.clone())
            .collect();
        let forgettable: std::collections::BTreeSet<String> =
            m.tenant_families().iter().map(|f| f.name()).collect();
        assert_eq!(labelled, forgettable);
    }

    #[test]
    fn renders_catalogue() {
        METRICS.config_reloads.with_label_values(&["ok"]).inc();
        let text = String::from_utf8(METRICS.render()).expect("utf8");
        assert!(
            text.contains("tenant_proxy_config_reloads_total{result=\"ok\"}"),
            "{text}"
        );
    }
}
