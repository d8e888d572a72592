//! OpenTelemetry traces: one span per request (and per tunnel), exported over OTLP/HTTP
//! (protobuf) to `[tracing] otlp_endpoint`, off unless that is set.
//!
//! The span carries the ids the proxy already uses ([`crate::trace::TraceContext`]): an incoming
//! `traceparent` is continued (its span is the parent; an unsampled parent is not exported), and
//! the `traceparent` sent upstream names this span. Its events are the phases the request went
//! through (identity, policy, credentials, limits, upstream, usage). Attributes are what the
//! audit record may hold and less: the tenant and workload ids, the listener, method, scheme,
//! host, port, the path without query values, the decision and refusal code, the status, the
//! model and token counts; never a secret, a credential name, a header, a query value or a body.
//!
//! Spans are batched and exported on the SDK's own thread: the request path only hands a
//! finished span over.

pub mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

pub use settings::{TracingSettings, TracingSpec};

use crate::trace::TraceContext;

/// The tracer, once export is configured (with its provider: dropping that stops the export).
static TRACER: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

/// Starts exporting to `settings.otlp_endpoint` (nothing when it is unset). Call once, at start,
/// outside any async runtime (the exporter's HTTP client is a blocking one, on the batch
/// processor's thread).
pub fn init(settings: &TracingSettings) -> anyhow::Result<()> {
    let Some(endpoint) = &settings.otlp_endpoint else {
        return Ok(());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(settings.timeout)
        .with_headers(Default::default())
        .build()?;
    let collector = settings
        .collector()
        .map(|(host, port)| format!("{host}:{port}"));
    let exporter = Reporting {
        inner: exporter,
        collector: collector.unwrap_or_default(),
        failing: AtomicBool::new(false),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("tenant-proxy");
    let _ = TRACER.set((provider, tracer));
    // Host and port only, never the URL (see `TracingSettings::from_spec`).
    if let Some((host, port)) = settings.collector() {
        tracing::info!(%host, port, "exporting traces over OTLP/HTTP");
    }
    Ok(())
}

/// The OTLP exporter, its failures counted (`tenant_proxy_trace_spans_unexported_total`) and
/// logged when exports start failing and when they work again: the SDK reports them only
/// through its own internal log, which this build leaves out, so a collector that refuses,
/// hangs or is gone lost every span unseen. Only the error's kind and the collector's host and
/// port are logged, never the error's text (it may quote the endpoint's URL).
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    collector: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                crate::metrics::METRICS.trace_spans_exported.inc_by(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(collector = %self.collector, "trace export works again");
                }
            }
            Err(e) => {
                crate::metrics::METRICS.trace_spans_unexported.inc_by(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    // (The HTTP client's timeout comes as an internal failure: told by its text,
                    // reqwest's `Debug` with `source: TimedOut`, which is not logged. Not by
                    // "timeout", which the collector's URL may hold.)
                    let kind = match e {
                        OTelSdkError::AlreadyShutdown => "already shut down",
                        OTelSdkError::Timeout(_) => "timed out",
                        OTelSdkError::InternalFailure(text)
                            if ["timedout", "timed out"]
                                .iter()
                                .any(|t| text.to_ascii_lowercase().contains(t)) =>
                        {
                            "timed out"
                        }
                        OTelSdkError::InternalFailure(_) => "refused or unreachable",
                    };
                    tracing::warn!(collector = %self.collector, error = kind, "cannot export traces; spans are lost until the collector takes them again (tenant_proxy_trace_spans_unexported_total)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Whether spans are exported at all (callers skip building one when not).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One finished request or tunnel, as its span.
#[derive(Debug)]
pub struct FinishedSpan<'a> {
    /// `GET`, `POST`, `CONNECT`, …
    pub name: String,
    /// The request's trace context (none: unidentified, a new trace).
    pub trace: Option<&'a TraceContext>,
    /// When it arrived and when it ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Phase events, in order.
    pub events: Vec<(&'static str, SystemTime, Vec<KeyValue>)>,
    /// Attributes (see the module documentation for what may go here).
    pub attributes: Vec<KeyValue>,
    /// The refusal code, when refused.
    pub refused: Option<&'static str>,
}

/// Hands `span` to the exporter (nothing when export is off).
pub fn emit(span: FinishedSpan<'_>) {
    let Some((_, tracer)) = TRACER.get() else {
        return;
    };
    let parent = span.trace.and_then(remote_parent);
    let mut builder = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Server)
        .with_start_time(span.start)
        .with_end_time(span.end)
        .with_attributes(span.attributes)
        .with_events(
            span.events
                .into_iter()
                .map(|(name, at, attributes)| {
                    opentelemetry::trace::Event::new(name, at, attributes, 0)
                })
                .collect(),
        );
    if let Some(trace) = span.trace {
        if let Some(id) = parse_span_id(&trace.span_id) {
            builder = builder.with_span_id(id);
        }
        if let Some(id) = parse_trace_id(&trace.trace_id) {
            builder = builder.with_trace_id(id);
        }
    }
    if let Some(code) = span.refused {
        builder = builder.with_status(Status::error(code));
    }
    let cx = match parent {
        Some(parent) => Context::new().with_remote_span_context(parent),
        None => Context::new(),
    };
    // The span was built finished (its end time is set): dropping it ends and exports it.
    let built = tracer.build_with_context(builder, &cx);
    // Counted as the sampler decided (`OTEL_TRACES_SAMPLER` included): the spans ended, beside
    // those exported and those whose export failed, show what a full export queue dropped
    // while the collector was slow.
    if opentelemetry::trace::Span::span_context(&built).is_sampled() {
        crate::metrics::METRICS.trace_spans_ended.inc();
    }
    drop(built);
}

/// The caller's span, when the trace was continued.
fn remote_parent(trace: &TraceContext) -> Option<SpanContext> {
    let parent = parse_span_id(trace.parent_span_id.as_deref()?)?;
    let trace_id = parse_trace_id(&trace.trace_id)?;
    Some(SpanContext::new(
        trace_id,
        parent,
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    ))
}

fn parse_trace_id(hex: &str) -> Option<TraceId> {
    u128::from_str_radix(hex, 16).ok().map(TraceId::from)
}

fn parse_span_id(hex: &str) -> Option<SpanId> {
    u64::from_str_radix(hex, 16).ok().map(SpanId::from)
}
