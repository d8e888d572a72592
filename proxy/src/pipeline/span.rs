//! A finished [`Trail`] as its OpenTelemetry span ([`crate::otel`]): the attributes an operator
//! traces by, none of which may hold a secret, a header, a query value or a body.

use std::time::{Instant, SystemTime};

use opentelemetry::KeyValue;

use super::record::{Outcome, Trail};
use crate::otel::{self, FinishedSpan};

impl Trail {
    /// Hands this request's (or tunnel's) span to the exporter, when traces are exported.
    pub(super) fn export_span(&self, status: u16) {
        if !otel::enabled() {
            return;
        }
        let at = |i: Instant| self.started_at + i.saturating_duration_since(self.started);
        let mut events: Vec<(&'static str, SystemTime, Vec<KeyValue>)> = self
            .phases
            .iter()
            .map(|(name, i)| (*name, at(*i), Vec::new()))
            .collect();
        if let (Some(ready), answered) = self.upstream {
            let mut attributes = Vec::new();
            if let Some(answered) = answered {
                let ms = answered.saturating_duration_since(ready).as_secs_f64() * 1000.0;
                attributes.push(KeyValue::new("tenant_proxy.upstream.latency_ms", ms));
            }
            events.push(("upstream", at(ready), attributes));
        }
        let end = SystemTime::now();
        if let Some(u) = self.usage {
            events.push((
                "usage",
                end,
                vec![
                    KeyValue::new("gen_ai.usage.input_tokens", u.input_tokens as i64),
                    KeyValue::new("gen_ai.usage.output_tokens", u.output_tokens as i64),
                ],
            ));
        }
        let mut attributes = vec![
            KeyValue::new("tenant_proxy.request_id", self.request_id.to_string()),
            KeyValue::new("tenant_proxy.listener", self.listener.to_string()),
            KeyValue::new("http.request.method", self.method.clone()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if let Some(t) = &self.tenant {
            // Ids as configured: the same opaque labels metrics carry.
            attributes.push(KeyValue::new(
                "tenant_proxy.tenant",
                t.tenant.as_str().to_string(),
            ));
            attributes.push(KeyValue::new(
                "tenant_proxy.workload",
                t.workload.as_str().to_string(),
            ));
        }
        if let Some(d) = &self.destination {
            attributes.push(KeyValue::new("url.scheme", d.scheme.as_str()));
            attributes.push(KeyValue::new("server.address", d.host.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(d.port)));
            // SECURITY: the audit path, query values removed (they may carry secrets).
            attributes.push(KeyValue::new("url.path", d.audit_path.clone()));
            if let Some(route) = &d.route {
                attributes.push(KeyValue::new("tenant_proxy.route", route.clone()));
            }
        } else if let Some((host, port)) = &self.authority {
            attributes.push(KeyValue::new("server.address", host.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(*port)));
        }
        if let Some(model) = &self.model {
            attributes.push(KeyValue::new("gen_ai.request.model", model.clone()));
        }
        if let Some(mode) = self.tunnel_mode {
            attributes.push(KeyValue::new("tenant_proxy.tunnel.mode", mode.as_str()));
        }
        if let Some(tunnel) = &self.tunnel {
            attributes.push(KeyValue::new("tenant_proxy.tunnel.id", tunnel.to_string()));
        }
        let (decision, refused) = match &self.outcome {
            Outcome::Forwarded => ("allow", None),
            Outcome::Pending => ("deny", Some("internal")),
            Outcome::Refused(d) => ("deny", Some(d.code().as_str())),
        };
        attributes.push(KeyValue::new("tenant_proxy.decision", decision));
        attributes.push(KeyValue::new(
            "tenant_proxy.reason",
            refused.unwrap_or("allowed"),
        ));
        otel::emit(FinishedSpan {
            name: self.method.clone(),
            trace: self.tenant.as_ref().map(|t| &t.trace),
            start: self.started_at,
            end,
            events,
            attributes,
            refused,
        });
    }
}
