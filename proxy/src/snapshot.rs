//! The reloadable part of the configuration as one immutable value: tenants, routes, token keys
//! and revocations, and the compiled Cedar policies. A new snapshot is built completely (the same
//! checks `tenant-proxy check` runs) before it replaces the old one, so the proxy is never
//! half-configured.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::model::TenantConfig;
use crate::config::{ConfigProblem, StaticConfig};
use crate::credentials::CredentialSet;
use crate::identity::token::{KeySet, TokenSettings, TokenVerifier};
use crate::identity::IdentitySourceKind;
use crate::metrics::METRICS;
use crate::policy::{PolicyEngine, TenantInfo};

/// Everything a request needs that may change at runtime.
#[derive(Debug)]
pub struct Snapshot {
    /// Tenants, routes and header settings.
    pub tenants: TenantConfig,
    /// Token verifier, when tokens are configured.
    pub tokens: Option<TokenVerifier>,
    /// Compiled policies.
    pub policy: PolicyEngine,
    /// Compiled shadow (report-only) policies, when configured.
    pub shadow_policy: Option<PolicyEngine>,
    /// Every tenant's credentials (empty when none are configured).
    pub credentials: Arc<CredentialSet>,
    /// Increments with every successful load.
    pub generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    /// Loads and validates the tenant file, keys, revocations and policies. Returns every
    /// problem found.
    pub fn load(static_config: &StaticConfig) -> Result<Self, Vec<ConfigProblem>> {
        let tenants = TenantConfig::load(&static_config.tenants_file)?;
        let mut problems = Vec::new();

        for (i, listener) in static_config.listeners.iter().enumerate() {
            if let Some(b) = &listener.identity.binding {
                if !tenants.has_workload(&b.tenant, &b.workload) {
                    problems.push(ConfigProblem::at(
                        &static_config.path,
                        format!("listener[{i}].binding"),
                        format!(
                            "tenant `{}` has no workload `{}` in `{}`",
                            b.tenant,
                            b.workload,
                            tenants.path.display()
                        ),
                    ));
                }
            }
            if listener
                .identity
                .sources
                .contains(&IdentitySourceKind::Token)
                && tenants.token.is_none()
            {
                problems.push(ConfigProblem::at(
                    &static_config.path,
                    format!("listener[{i}].identity"),
                    format!(
                        "identity source `token` needs a `[token]` section in `{}`",
                        tenants.path.display()
                    ),
                ));
            }
        }

        let tokens = match &tenants.token {
            None => None,
            Some(t) => {
                let keys = std::fs::read_to_string(&t.jwks_file)
                    .map_err(|e| {
                        ConfigProblem::file(&t.jwks_file, format!("cannot read JWKS: {e}"))
                    })
                    .and_then(|text| {
                        KeySet::from_jwks_json(&text)
                            .map_err(|e| ConfigProblem::file(&t.jwks_file, e.to_string()))
                    });
                let revoked = match &t.revoked_jtis_file {
                    None => Ok(HashSet::new()),
                    Some(f) => read_revocations(f),
                };
                match (keys, revoked) {
                    (Ok(keys), Ok(revoked)) => {
                        let settings = TokenSettings {
                            audience: t.audience.clone(),
                            issuer: t.issuer.clone(),
                            max_lifetime: t.max_lifetime,
                            leeway: t.leeway,
                        };
                        Some(TokenVerifier::new(settings, keys, revoked))
                    }
                    (keys, revoked) => {
                        problems.extend(keys.err());
                        problems.extend(revoked.err());
                        None
                    }
                }
            }
        };

        let credentials = match &tenants.credential_source {
            None => Some(CredentialSet::default()),
            Some(source) => source
                .store()
                .load()
                .map_err(|e| problems.push(ConfigProblem::file(&e.path, e.message)))
                .ok(),
        };

        let infos = tenant_infos(&tenants);
        let policy = load_policies(&tenants.policy_dir, &infos, &mut problems);
        // The shadow set is held to the same checks: a broken one fails the load (or the
        // reload, which keeps the last good pair) rather than silently reporting nothing.
        let shadow_policy = tenants
            .shadow_policy_dir
            .as_ref()
            .map(|dir| load_policies(dir, &infos, &mut problems));

        // A shadow set that failed to load left problems, so it is never silently dropped here.
        match (policy, credentials) {
            (Some(policy), Some(credentials)) if problems.is_empty() => Ok(Snapshot {
                tenants,
                tokens,
                policy,
                shadow_policy: shadow_policy.flatten(),
                credentials: Arc::new(credentials),
                generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            }),
            _ => Err(problems),
        }
    }

    /// The token verifier's clock-skew allowance: a token is accepted that long past its expiry.
    pub fn token_leeway(&self) -> std::time::Duration {
        self.tenants
            .token
            .as_ref()
            .map_or(std::time::Duration::ZERO, |t| t.leeway)
    }

    /// Files whose change should trigger a reload.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.tenants.path.clone(), self.tenants.policy_dir.clone()];
        paths.extend(self.tenants.shadow_policy_dir.clone());
        if let Some(t) = &self.tenants.token {
            paths.push(t.jwks_file.clone());
            if let Some(r) = &t.revoked_jtis_file {
                paths.push(r.clone());
            }
        }
        if let Some(source) = &self.tenants.credential_source {
            paths.extend(source.store().watched_paths());
        }
        paths
    }
}

/// Loads one policy directory, adding its problems to `problems`.
fn load_policies(
    dir: &Path,
    infos: &[TenantInfo],
    problems: &mut Vec<ConfigProblem>,
) -> Option<PolicyEngine> {
    match PolicyEngine::load(dir, infos) {
        Ok(p) => Some(p),
        Err(errors) => {
            problems.extend(errors.into_iter().map(|p| ConfigProblem {
                file: p.file.clone(),
                location: match (p.line, p.column) {
                    (Some(l), Some(c)) => Some(format!("{l}:{c}")),
                    (Some(l), None) => Some(l.to_string()),
                    _ => None,
                },
                message: p.message.clone(),
            }));
            None
        }
    }
}

/// The tenants as the policy engine sees them (the entities it builds come from these).
pub fn tenant_infos(tenants: &TenantConfig) -> Vec<TenantInfo> {
    tenants
        .tenants
        .iter()
        .map(|(id, t)| TenantInfo {
            id: id.clone(),
            plan: t.plan.clone(),
            region: t.region.clone(),
            workloads: t.workloads.clone(),
        })
        .collect()
}

fn read_revocations(path: &Path) -> Result<HashSet<String>, ConfigProblem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigProblem::file(path, format!("cannot read revocation list: {e}")))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Publishes what the metrics show of a snapshot about to be served: its cost ceilings.
fn publish_metrics(snapshot: &Snapshot) {
    METRICS.publish_cost_ceilings(snapshot.tenants.tenants.iter().map(|(id, t)| {
        (
            id.as_str(),
            t.limits.cost_per_day_micros,
            t.limits.cost_per_month_micros,
        )
    }));
}

/// The current snapshot, swapped atomically on reload.
#[derive(Debug)]
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    static_config: Arc<StaticConfig>,
}

impl SnapshotHandle {
    /// Wraps the first snapshot.
    pub fn new(static_config: Arc<StaticConfig>, first: Snapshot) -> Self {
        publish_metrics(&first);
        METRICS.config_last_reload_successful.set(1);
        Self {
            current: ArcSwap::from_pointee(first),
            static_config,
        }
    }

    /// The snapshot requests use now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rebuilds the snapshot; on failure the last good one stays and the problems are returned.
    pub fn reload(&self) -> Result<u64, Vec<ConfigProblem>> {
        match Snapshot::load(&self.static_config) {
            Ok(next) => {
                let generation = next.generation;
                publish_metrics(&next);
                self.current.store(Arc::new(next));
                METRICS.config_reloads.with_label_values(&["ok"]).inc();
                METRICS.config_last_reload_successful.set(1);
                tracing::info!(generation, "tenant configuration reloaded");
                Ok(generation)
            }
            Err(problems) => {
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                METRICS.config_last_reload_successful.set(0);
                for p in &problems {
                    tracing::error!(problem = %p, "reload rejected; keeping the last good configuration");
                }
                Err(problems)
            }
        }
    }
}
