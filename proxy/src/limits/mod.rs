//! Request-rate and concurrency ceilings per tenant and per workload.
//!
//! Each ceiling is a [`LimitKey`] (always carrying the tenant, so one tenant's traffic can never
//! move another's counters) checked by a [`LimitBackend`]. A request is admitted only if every
//! ceiling that applies to it admits it; the check and the update are one atomic step per
//! request, so concurrent requests cannot overshoot. The in-memory backend ([`memory`]) serves a
//! single proxy; a shared backend for replicas implements the same trait.

pub mod memory;
pub mod redis;

use std::fmt;
use std::time::Duration;

use crate::ids::{TenantId, WorkloadId};

/// Ceilings for one scope (a tenant's aggregate, or one workload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceilings {
    /// Sustained requests per second.
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once above the per-second rate (default: the per-second rate).
    pub burst: Option<u32>,
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
    /// LLM tokens (input + output) per minute, reserved before a call and settled after it.
    pub tokens_per_minute: Option<u64>,
    /// Output tokens to reserve for an LLM call that sets no `max_tokens` (default 1024).
    pub assumed_max_tokens: Option<u64>,
}

impl Ceilings {
    /// Whether no ceiling is set.
    pub fn is_empty(&self) -> bool {
        self.requests_per_second.is_none()
            && self.requests_per_minute.is_none()
            && self.concurrency.is_none()
            && self.tokens_per_minute.is_none()
    }

    /// Checks values are usable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("requests_per_second", self.requests_per_second),
            ("burst", self.burst),
            ("requests_per_minute", self.requests_per_minute),
            ("concurrency", self.concurrency),
            (
                "tokens_per_minute",
                self.tokens_per_minute
                    .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            ),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "`{name}` must be at least 1 (omit it for no ceiling)"
                ));
            }
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            return Err("`burst` needs `requests_per_second`".into());
        }
        Ok(())
    }
}

/// What a counter is scoped to. Every key names its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// All of a tenant's workloads together.
    Tenant(TenantId),
    /// One workload of a tenant.
    Workload(TenantId, WorkloadId),
}

/// One ceiling to check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitKey {
    /// Whose counter.
    pub scope: Scope,
    /// Which kind.
    pub kind: LimitKind,
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Redis-style key shape: the tenant as a hash tag so one tenant's keys share a slot.
        match &self.scope {
            Scope::Tenant(t) => write!(f, "tp:{{{t}}}:{}", self.kind.as_str()),
            Scope::Workload(t, w) => write!(f, "tp:{{{t}}}:w:{w}:{}", self.kind.as_str()),
        }
    }
}

/// Kinds of ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// GCRA with this many requests per `period`, `burst` at once.
    Rate {
        /// Requests per period.
        per_period: u32,
        /// Period in seconds (1 or 60).
        period_secs: u32,
        /// Burst.
        burst: u32,
    },
    /// In-flight requests.
    Concurrency {
        /// Most at once.
        max: u32,
    },
    /// LLM tokens per calendar minute (reserved, then settled to actual usage).
    Tokens {
        /// Most per minute.
        per_minute: u64,
    },
}

impl LimitKind {
    fn as_str(&self) -> &'static str {
        match self {
            LimitKind::Rate { period_secs: 1, .. } => "rate_s",
            LimitKind::Rate { .. } => "rate_m",
            LimitKind::Concurrency { .. } => "conc",
            LimitKind::Tokens { .. } => "tpm",
        }
    }
}

/// The ceilings that apply to one request.
pub fn keys_for(
    tenant: &TenantId,
    workload: &WorkloadId,
    tenant_ceilings: &Ceilings,
    workload_ceilings: Option<&Ceilings>,
    llm_call: bool,
) -> Vec<LimitKey> {
    let mut keys = Vec::new();
    let mut push = |scope: Scope, c: &Ceilings| {
        if let Some(rps) = c.requests_per_second {
            keys.push(LimitKey {
                scope: scope.clone(),
                kind: LimitKind::Rate {
                    per_period: rps,
                    period_secs: 1,
                    burst: c.burst.unwrap_or(rps),
                },
            });
        }
        if let Some(rpm) = c.requests_per_minute {
            keys.push(LimitKey {
                scope: scope.clone(),
                kind: LimitKind::Rate {
                    per_period: rpm,
                    period_secs: 60,
                    burst: rpm,
                },
            });
        }
        if let Some(max) = c.concurrency {
            keys.push(LimitKey {
                scope: scope.clone(),
                kind: LimitKind::Concurrency { max },
            });
        }
        if let (Some(per_minute), true) = (c.tokens_per_minute, llm_call) {
            keys.push(LimitKey {
                scope,
                kind: LimitKind::Tokens { per_minute },
            });
        }
    };
    push(Scope::Tenant(tenant.clone()), tenant_ceilings);
    if let Some(w) = workload_ceilings {
        push(Scope::Workload(tenant.clone(), workload.clone()), w);
    }
    keys
}

/// A refusal: which ceiling, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDeny {
    /// The ceiling that refused.
    pub key: LimitKey,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    /// A ceiling refused it.
    Limited(LimitDeny),
    /// The counters could not be reached in time (fail closed).
    Unavailable,
}

/// What an admitted request holds until it ends.
#[derive(Debug, Default)]
pub struct Admission {
    /// Concurrency slots to give back.
    pub leases: Vec<LimitKey>,
    /// The id the backend knows these leases by.
    pub lease_id: String,
    /// The tightest rate ceiling: (limit, remaining, reset) for `X-RateLimit-*`.
    pub headline: Option<RateHeadline>,
    /// Token ceilings reserved against, with the minute window of the reservation.
    pub token_windows: Vec<(LimitKey, u64)>,
    /// Tokens reserved on each of them.
    pub reserved_tokens: u64,
}

/// Values for the `X-RateLimit-*` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeadline {
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Reset` (seconds until the bucket is full again).
    pub reset_secs: u64,
}

/// A place counters live.
#[async_trait::async_trait]
pub trait LimitBackend: Send + Sync + fmt::Debug {
    /// Checks every key and, only if all admit, updates all of them, in one atomic step;
    /// `tokens` is reserved on every token ceiling.
    async fn admit(&self, keys: &[LimitKey], tokens: u64) -> Result<Admission, AdmitError>;
    /// Settles token reservations to what the call really used (`used` may be below or above).
    async fn settle(&self, admission: &Admission, used: u64);
    /// Gives back the concurrency slots of a finished request.
    async fn release(&self, admission: &Admission);
    /// Ends a request: settles its token reservations and gives back its slots. Backends that
    /// can do both in one round trip override this.
    async fn finish(&self, admission: &Admission, used: u64) {
        self.settle(admission, used).await;
        self.release(admission).await;
    }
    /// Whether the backend has ever been reachable (readiness).
    fn is_ready(&self) -> bool {
        true
    }
}
