//! What the limits read of the configuration: `[limiter]` in the static file (where counters
//! live) and each tenant's `limits` and `workload_limits` in the tenant file (the ceilings).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::redis::{RedisSettings, Unavailable};
use super::Ceilings;
use crate::ids::WorkloadId;
use crate::problems::Problems;
use crate::redis_conn::settings::{RedisEndpointSpec, RedisUrlSpec};
use crate::redis_conn::RedisEndpoint;

/// `[limiter]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterSpec {
    /// `memory` (default: this process only) or `redis` (shared by replicas).
    #[serde(default)]
    pub backend: LimiterBackend,
    /// For the `redis` backend: `redis://host:port/db`, `rediss://…`, a cluster as
    /// `redis+cluster://h1:p1,h2:p2` or a list of seed nodes (see [`crate::redis_conn::settings`]).
    pub redis_url: Option<RedisUrlSpec>,
    /// The environment variable that holds the URL instead of `redis_url`.
    pub redis_url_env: Option<String>,
    /// Redis ACL user.
    pub redis_username: Option<String>,
    /// File holding the Redis password.
    pub redis_password_file: Option<std::path::PathBuf>,
    /// Environment variable holding the Redis password.
    pub redis_password_env: Option<String>,
    /// PEM of the CA that signs the Redis servers' certificates (`rediss://`).
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Longest wait for one Redis call (default `50ms`).
    pub timeout: Option<String>,
    /// How long a concurrency slot outlives a crashed replica (default `5m`).
    pub lease_ttl: Option<String>,
    /// `fail_closed` (default: refuse with `limiter_unavailable`) or `local_fallback`.
    #[serde(default)]
    pub on_unavailable: Unavailable,
    /// How long a run's counters (tokens, cost, tool calls, start) live after its last
    /// reservation (default `168h`).
    pub run_ttl: Option<String>,
    /// Signed runs of one tenant this replica watches for their summary at once (default
    /// 10 000).
    pub watched_runs_per_tenant: Option<usize>,
}

impl LimiterSpec {
    /// The Redis keys of `[limiter]`.
    pub fn redis_endpoint(&self) -> RedisEndpointSpec {
        RedisEndpointSpec {
            url: self.redis_url.clone(),
            url_env: self.redis_url_env.clone(),
            username: self.redis_username.clone(),
            password_file: self.redis_password_file.clone(),
            password_env: self.redis_password_env.clone(),
            ca_file: self.redis_ca_file.clone(),
        }
    }
}

/// `[limiter] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterBackend {
    /// Counters in this process.
    #[default]
    Memory,
    /// Counters in Redis, shared by replicas.
    Redis,
}

/// Where limit counters live.
#[derive(Debug, Clone)]
pub enum LimiterSettings {
    /// Counters in this process.
    Memory {
        /// How long a run's counters live after its last reservation.
        run_ttl: std::time::Duration,
    },
    /// Counters in Redis.
    Redis(RedisSettings),
}

impl LimiterSettings {
    /// Validates `[limiter]` (all but `watched_runs_per_tenant`, which the run tracker reads).
    pub fn from_spec(spec: &LimiterSpec, p: &mut Problems<'_>) -> Self {
        let run_ttl = p.duration("limiter.run_ttl", spec.run_ttl.as_deref().unwrap_or("168h"));
        match spec.backend {
            LimiterBackend::Memory => LimiterSettings::Memory { run_ttl },
            LimiterBackend::Redis => {
                let endpoint = spec.redis_endpoint().validate("limiter", p);
                LimiterSettings::Redis(RedisSettings {
                    // A placeholder when invalid (the problem is recorded; never served).
                    endpoint: endpoint.unwrap_or_else(RedisEndpoint::unusable),
                    timeout: p.positive_duration(
                        "limiter.timeout",
                        spec.timeout.as_deref().unwrap_or("50ms"),
                    ),
                    lease_ttl: p.positive_duration(
                        "limiter.lease_ttl",
                        spec.lease_ttl.as_deref().unwrap_or("5m"),
                    ),
                    run_ttl,
                    on_unavailable: spec.on_unavailable,
                })
            }
        }
    }
}

/// One tenant's ceilings, validated: on the tenant as a whole, and on those of its workloads
/// that have their own.
#[derive(Debug, Clone, Default)]
pub struct TenantCeilings {
    /// `[tenants.<id>.limits]`.
    pub tenant: Ceilings,
    /// `[tenants.<id>.workload_limits.<workload>]`, each naming a workload of the tenant.
    pub workloads: HashMap<WorkloadId, Ceilings>,
}

impl TenantCeilings {
    /// Validates tenant `id`'s ceilings against its `workloads`; `has_prices` says whether a
    /// price table is configured (cost ceilings need one).
    pub fn from_spec(
        id: &str,
        limits: Option<Ceilings>,
        workload_limits: BTreeMap<String, Ceilings>,
        workloads: &[WorkloadId],
        has_prices: bool,
        p: &mut Problems<'_>,
    ) -> Self {
        let tenant = limits.unwrap_or_default();
        if let Err(e) = tenant.validate() {
            p.push(format!("tenants.{id}.limits"), e);
        }
        let has_cost = tenant.has_cost() || workload_limits.values().any(Ceilings::has_cost);
        if has_cost && !has_prices {
            p.push(
                format!("tenants.{id}.limits"),
                "cost ceilings need a price table: set `prices_file`",
            );
        }
        let mut by_workload = HashMap::new();
        for (w, c) in workload_limits {
            let at = format!("tenants.{id}.workload_limits.{w}");
            match WorkloadId::new(&w) {
                Ok(wid) if workloads.contains(&wid) => {
                    if let Err(e) = c.validate() {
                        p.push(at, e);
                    }
                    by_workload.insert(wid, c);
                }
                _ => p.push(at, format!("`{w}` is not a workload of `{id}`")),
            }
        }
        Self {
            tenant,
            workloads: by_workload,
        }
    }
}
