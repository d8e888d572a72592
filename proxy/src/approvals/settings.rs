//! `[approvals]` in the static file: where approvers reach the proxy, and the bounds on holds.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Problems;

/// `[approvals]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsSpec {
    /// Address of the approvals API (its own listener, never an agent listener).
    pub listen: String,
    /// The `aud` an approver token must carry (and only it).
    #[serde(default = "default_audience")]
    pub audience: String,
    /// How long a hold waits when its policy names no `@approval_timeout`.
    #[serde(default = "default_timeout")]
    pub default_timeout: String,
    /// Pending holds one tenant may have at once (across replicas sharing Redis).
    #[serde(default = "default_per_tenant")]
    pub max_pending_per_tenant: usize,
    /// Pending holds of every tenant together: across the replicas sharing Redis, or of this
    /// process in memory mode.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_audience() -> String {
    "tenant-proxy-approvals".into()
}
fn default_timeout() -> String {
    "5m".into()
}
fn default_per_tenant() -> usize {
    20
}
fn default_max_pending() -> usize {
    1000
}

/// `[approvals]`, validated.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// The approvals API's address.
    pub listen: SocketAddr,
    /// Approver tokens' audience.
    pub audience: String,
    /// Timeout of a hold whose policy names none.
    pub default_timeout: Duration,
    /// Pending holds per tenant.
    pub max_pending_per_tenant: usize,
    /// Pending holds of every tenant together (see [`ApprovalsSpec::max_pending`]).
    pub max_pending: usize,
}

impl ApprovalSettings {
    /// Validates `[approvals]`. The audience must not be the workload tokens' default: an
    /// approver token must never pass as a workload token, nor the other way round.
    pub fn from_spec(spec: ApprovalsSpec, p: &mut Problems<'_>) -> Self {
        let listen = spec.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            p.push(
                "approvals.listen",
                format!("`{}` is not an `ip:port` address", spec.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        if spec.audience.is_empty() {
            p.push("approvals.audience", "must not be empty");
        }
        if spec.audience == "tenant-proxy" {
            p.push(
                "approvals.audience",
                "must differ from the workload tokens' default audience `tenant-proxy`",
            );
        }
        let default_timeout = p.duration("approvals.default_timeout", &spec.default_timeout);
        if default_timeout < Duration::from_secs(1)
            || default_timeout > crate::policy::approval::MAX_TIMEOUT
        {
            p.push("approvals.default_timeout", "must be between 1s and 24h");
        }
        if spec.max_pending_per_tenant == 0 {
            p.push("approvals.max_pending_per_tenant", "must be at least 1");
        }
        if spec.max_pending == 0 {
            p.push("approvals.max_pending", "must be at least 1");
        }
        Self {
            listen,
            audience: spec.audience,
            default_timeout,
            max_pending_per_tenant: spec.max_pending_per_tenant,
            max_pending: spec.max_pending,
        }
    }
}
