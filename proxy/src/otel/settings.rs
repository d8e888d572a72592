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
    /// The collector's host and port (80 when the URL names none), which the egress guard
    /// refuses as a destination.
    pub fn collector(&self) -> Option<(String, u16)> {
        let uri = self.otlp_endpoint.as_ref()?.parse::<http::Uri>().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        Some((host.to_string(), uri.port_u16().unwrap_or(80)))
    }

    /// Validates `[tracing]`: the endpoint is an `http://` URL with a host (this build's exporter
    /// speaks plain HTTP: run a collector next to the proxy, as an agent or sidecar).
    pub fn from_spec(spec: TracingSpec, p: &mut Problems<'_>) -> Self {
        let defaults = Self::default();
        // SECURITY: the endpoint is never quoted (it may hold a password or a key); user info
        // and a query are refused, so the one logged at start (host and port) hides nothing.
        let otlp_endpoint = spec.otlp_endpoint.filter(|e| {
            let uri = e.parse::<http::Uri>().ok();
            let ok = uri.as_ref().is_some_and(|u| {
                u.scheme_str() == Some("http")
                    && u.host().is_some()
                    && !u.authority().is_some_and(|a| a.as_str().contains('@'))
                    && u.query().is_none()
            });
            if !ok {
                p.push(
                    "tracing.otlp_endpoint",
                    "is not an `http://HOST:PORT/v1/traces` URL without user info or query (OTLP over HTTP; TLS to the collector is not supported: run a collector next to the proxy)",
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_collector_is_the_endpoints_host_and_port() {
        let with = |e: &str| TracingSettings {
            otlp_endpoint: Some(e.into()),
            ..TracingSettings::default()
        };
        assert_eq!(
            with("http://otel.internal:4318/v1/traces").collector(),
            Some(("otel.internal".into(), 4318))
        );
        assert_eq!(
            with("http://[::1]/v1/traces").collector(),
            Some(("::1".into(), 80))
        );
        assert_eq!(TracingSettings::default().collector(), None);
    }

    /// An endpoint with user info or a query is refused, and the refusal never quotes it.
    #[test]
    fn an_endpoint_with_a_secret_in_it_is_refused_without_quoting_it() {
        for bad in [
            "http://user:sk-otel-secret@otel.internal:4318/v1/traces",
            "http://otel.internal:4318/v1/traces?api_key=sk-otel-secret",
            "https://otel.internal/v1/traces",
        ] {
            let path = std::path::Path::new("tenant-proxy.toml");
            let mut p = crate::problems::Problems::new(path);
            let spec = TracingSpec {
                otlp_endpoint: Some(bad.into()),
                ..TracingSpec::default()
            };
            let settings = TracingSettings::from_spec(spec, &mut p);
            assert_eq!(settings.otlp_endpoint, None, "{bad}");
            let text = format!("{:?}", p.checked(()).into_result().expect_err(bad));
            assert!(text.contains("tracing.otlp_endpoint"), "{bad}: {text}");
            assert!(!text.contains("sk-otel-secret"), "{bad}: {text}");
        }
    }
}
