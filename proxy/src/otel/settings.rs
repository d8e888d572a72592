//! `[tracing]` in the static file: where spans are exported (OTLP over HTTP, protobuf). Absent or
//! without `otlp_endpoint`: nothing is exported.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::Problems;

/// `[tracing]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (default `tenant-proxy`).
    pub service_name: Option<String>,
    /// How long one export may take (default `5s`).
    pub timeout: Option<String>,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingSettings {
    /// Where spans go; `None`: tracing export is off.
    pub otlp_endpoint: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Export timeout.
    pub timeout: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "tenant-proxy".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl TracingSettings {
    /// Validates `[tracing]`: the endpoint is an `http://` URL with a host (this build's exporter
    /// speaks plain HTTP: run a collector next to the proxy, as an agent or sidecar).
    pub fn from_spec(spec: TracingSpec, p: &mut Problems<'_>) -> Self {
        let defaults = Self::default();
        let otlp_endpoint = spec.otlp_endpoint.filter(|e| {
            let ok = e
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if !ok {
                p.push(
                    "tracing.otlp_endpoint",
                    format!("`{e}` is not an `http://HOST:PORT/v1/traces` URL (OTLP over HTTP; TLS to the collector is not supported: run a collector next to the proxy)"),
                );
            }
            ok
        });
        let service_name = spec.service_name.unwrap_or(defaults.service_name);
        if service_name.is_empty() {
            p.push("tracing.service_name", "must not be empty");
        }
        let timeout = match spec.timeout {
            Some(t) => p.duration("tracing.timeout", &t),
            None => defaults.timeout,
        };
        Self {
            otlp_endpoint,
            service_name,
            timeout,
        }
    }
}
