//! `[limits]` in the static file: what one request, one connection and the whole process may
//! hold, enforced by the front before anything is forwarded.

use std::time::Duration;

use serde::Deserialize;

use super::head::HARD_MAX_HEADERS;
use crate::problems::Problems;

/// `[limits]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimitsSpec {
    /// Largest request head, request line to blank line (431 above it, never buffered past).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in a request head (431 above it; at most 256).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Largest request body (413 above it, before any upstream is dialed).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// From the end of a request head to the end of its body (408 and close after it).
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout: String,
    /// Request body bytes all requests in flight may hold together (503 `overloaded` above it).
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    /// Request body bytes one tenant's requests in flight may hold together (429
    /// `body_memory_limit` above it); unset: a quarter of `max_buffered_body_bytes`, and at
    /// least `max_body_bytes`.
    #[serde(default)]
    pub max_buffered_body_bytes_per_tenant: Option<u64>,
    /// Open client connections per listener (503 `overloaded` above it).
    #[serde(default = "default_max_connections_per_listener")]
    pub max_connections_per_listener: u32,
    /// Open client connections per tenant (429 `connection_limit` above it).
    #[serde(default = "default_max_connections_per_tenant")]
    pub max_connections_per_tenant: u32,
}

impl Default for RequestLimitsSpec {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            client_body_timeout: default_client_body_timeout(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            max_buffered_body_bytes_per_tenant: None,
            max_connections_per_listener: default_max_connections_per_listener(),
            max_connections_per_tenant: default_max_connections_per_tenant(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_client_body_timeout() -> String {
    "30s".into()
}
fn default_max_buffered_body_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_connections_per_listener() -> u32 {
    10_000
}
fn default_max_connections_per_tenant() -> u32 {
    2_000
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// From the end of a head to the end of its body.
    pub client_body_timeout: Duration,
    /// Body bytes all requests in flight may hold together.
    pub max_buffered_body_bytes: u64,
    /// Body bytes one tenant's requests in flight may hold together.
    pub max_buffered_body_bytes_per_tenant: u64,
    /// Open client connections per listener.
    pub max_connections_per_listener: u32,
    /// Open client connections per tenant.
    pub max_connections_per_tenant: u32,
}

impl RequestLimits {
    /// What a connection's requests are read under, its heads within `header_timeout`.
    pub fn front(&self, header_timeout: Duration) -> super::FrontLimits {
        super::FrontLimits {
            head: super::HeadLimits {
                max_bytes: self.max_header_bytes,
                max_headers: self.max_headers,
            },
            header_timeout,
            body_timeout: self.client_body_timeout,
            max_body_bytes: u64::try_from(self.max_body_bytes).unwrap_or(u64::MAX),
        }
    }

    /// Validates `[limits]`, recording each problem at its field.
    pub fn from_spec(spec: &RequestLimitsSpec, p: &mut Problems<'_>) -> Self {
        if spec.max_header_bytes < 1024 {
            p.push("limits.max_header_bytes", "must be at least 1024");
        }
        if spec.max_headers == 0 || spec.max_headers > HARD_MAX_HEADERS {
            p.push("limits.max_headers", "must be between 1 and 256");
        }
        if spec.max_buffered_body_bytes < spec.max_body_bytes as u64 {
            p.push(
                "limits.max_buffered_body_bytes",
                "must be at least `max_body_bytes` (or no body of the largest size could ever be held)",
            );
        }
        if spec
            .max_buffered_body_bytes_per_tenant
            .is_some_and(|n| n < spec.max_body_bytes as u64)
        {
            p.push(
                "limits.max_buffered_body_bytes_per_tenant",
                "must be at least `max_body_bytes` (or no body of the largest size could ever be held)",
            );
        }
        for (field, n) in [
            (
                "max_connections_per_listener",
                spec.max_connections_per_listener,
            ),
            (
                "max_connections_per_tenant",
                spec.max_connections_per_tenant,
            ),
        ] {
            if n == 0 {
                p.push(format!("limits.{field}"), "must be at least 1");
            }
        }
        RequestLimits {
            max_header_bytes: spec.max_header_bytes,
            max_headers: spec.max_headers.clamp(1, HARD_MAX_HEADERS),
            max_body_bytes: spec.max_body_bytes,
            client_body_timeout: p
                .positive_duration("limits.client_body_timeout", &spec.client_body_timeout),
            max_buffered_body_bytes: spec.max_buffered_body_bytes,
            // SECURITY: by default no tenant may hold more than a quarter of the body memory,
            // so one tenant's slow uploads cannot refuse every other tenant's bodies.
            max_buffered_body_bytes_per_tenant: spec
                .max_buffered_body_bytes_per_tenant
                .unwrap_or((spec.max_buffered_body_bytes / 4).max(spec.max_body_bytes as u64)),
            max_connections_per_listener: spec.max_connections_per_listener,
            max_connections_per_tenant: spec.max_connections_per_tenant,
        }
    }
}
