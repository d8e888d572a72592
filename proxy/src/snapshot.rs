//! The reloadable part of the configuration as one immutable value: tenants, routes, token keys
//! and revocations, and the compiled Cedar policies. A new snapshot is built completely (the same
//! checks `tenant-proxy check` runs) before it replaces the old one, so the proxy is never
//! half-configured.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::admin_token::AdminToken;
use crate::config::{ConfigProblem, StaticConfig, TenantConfig};
use crate::credentials::CredentialSet;
use crate::identity::token::{KeySet, KeySetError, TokenConfig, TokenVerifier};
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
    pub policy: Arc<PolicyEngine>,
    /// Compiled shadow (report-only) policies, when configured.
    pub shadow_policy: Option<Arc<PolicyEngine>>,
    /// Every tenant's credentials (empty when none are configured).
    pub credentials: Arc<CredentialSet>,
    /// The token the admin endpoints require (`[admin] token_file`), read with every load.
    pub admin_token: Option<AdminToken>,
    /// Increments with every successful load.
    pub generation: u64,
    /// Parts of this load that could not be read and kept their last good state instead (the
    /// admin token file at a reload): the load applied, but the reload is reported as failed
    /// until a later one reads them.
    pub kept_previous: Vec<String>,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    /// The warnings `check` prints and `run` logs for the tenant file's secret files that users
    /// other than their owner can read (see [`crate::config::readable_secret_warning`]): the
    /// vault's master key or each mounted credential, and the MCP session key (whoever reads it
    /// can seal a session id of any tenant's).
    pub fn readable_secret_warnings(&self) -> Vec<String> {
        let mut files: Vec<(&str, std::path::PathBuf)> = Vec::new();
        match &self.tenants.credential_source {
            Some(crate::credentials::CredentialSource::Vault(store)) => {
                if let crate::credentials::vault::MasterKeySource::File(f) = &store.master {
                    files.push(("the vault's master key", f.clone()));
                }
            }
            // Each mounted credential is a tenant's secret in plain text.
            Some(crate::credentials::CredentialSource::Files(store)) => {
                for c in &store.declared {
                    let path = crate::credentials::files::value_path(&store.dir, c);
                    files.push(("a mounted credential", path));
                }
            }
            None => {}
        }
        if let Some(f) = &self.tenants.mcp.session_key.file {
            files.push(("the MCP session key", f.clone()));
        }
        files
            .into_iter()
            .filter_map(|(what, path)| crate::config::readable_secret_warning(what, &path))
            .collect()
    }

    /// The warning `check` prints and `run` logs when day or month cost ceilings are counted in
    /// this process's memory: a restart (a deploy, a crash) starts them at zero again, so a
    /// tenant can spend its month's budget again after each one.
    pub fn memory_limiter_warning(
        &self,
        limiter: &crate::limits::settings::LimiterSettings,
    ) -> Option<String> {
        if !matches!(
            limiter,
            crate::limits::settings::LimiterSettings::Memory { .. }
        ) {
            return None;
        }
        let periodic = |c: &crate::limits::Ceilings| {
            c.cost_per_day_micros.is_some() || c.cost_per_month_micros.is_some()
        };
        let tenants: Vec<&str> = self
            .tenants
            .tenants
            .iter()
            .filter(|(_, t)| periodic(&t.limits) || t.workload_limits.values().any(periodic))
            .map(|(id, _)| id.as_str())
            .collect();
        // Signed runs (from tokens) are in memory too: their budgets, records and closures.
        let runs = self.tenants.token.is_some();
        if tenants.is_empty() && !runs {
            return None;
        }
        let shown = match tenants.len() {
            n if n > 3 => format!("{} and {} more", tenants[..3].join(", "), n - 3),
            _ => tenants.join(", "),
        };
        let what = match (tenants.is_empty(), runs) {
            (false, true) => format!(
                "day and month cost ceilings ({shown}) and signed runs (their budgets, records and `run close`) are"
            ),
            (false, false) => format!("day and month cost ceilings ({shown}) are"),
            (true, _) => "signed runs (their budgets, records and `run close`) are".to_string(),
        };
        Some(format!(
            "{what} kept in memory (`[limiter] backend = \"memory\"`): a restart forgets them (ceilings start at zero, a closed run is served again), and each replica keeps its own; use `backend = \"redis\"` to keep them"
        ))
    }

    /// The warning `check` prints and `run` logs when replicas share a Redis limiter (so run
    /// behind one load balancer) but seal MCP session ids each with a key of its own: a session
    /// opened through one replica would be refused by the others.
    pub fn mcp_session_key_warning(
        &self,
        limiter: &crate::limits::settings::LimiterSettings,
    ) -> Option<String> {
        let mcp = &self.tenants.mcp;
        let shared = !matches!(
            limiter,
            crate::limits::settings::LimiterSettings::Memory { .. }
        );
        (shared && !mcp.servers.is_empty() && mcp.session_key.file.is_none()).then(|| {
            "MCP session ids are sealed with a key of this process (`[mcp] session_key_file` is not set): a session opened through one replica is refused by the others (`mcp_session_unknown`), and every session ends at a restart; give replicas one shared key".to_string()
        })
    }

    /// The warning `check` prints and `run` logs for lines of `[token] revoked_jtis_file` that do
    /// not revoke what they seem to name: an id with a `#` in it (the line is cut at the `#`, so
    /// `batch#7` revokes `batch`), or with whitespace or a control character inside. No token
    /// with such an id is accepted (see [`crate::identity::token::valid_jti`]), so the token
    /// such a line was written for is refused anyway; the line itself is a mistake to fix.
    pub fn revocation_file_warning(&self) -> Option<String> {
        let path = self.tenants.token.as_ref()?.revoked_jtis_file.as_deref()?;
        let text = revocation_text(path).ok()?;
        let odd = crate::identity::token::misleading_revocation_lines(&text);
        (!odd.is_empty()).then(|| {
            format!(
                "`revoked_jtis_file` `{}` has lines that revoke no token as written ({}): each line is cut at its first `#` and trimmed, and {}",
                path.display(),
                odd.join(", "),
                crate::identity::token::JTI_RULE
            )
        })
    }

    /// The warning `check` prints and `run` logs for JWKS entries left out as keys the proxy
    /// does not verify with (see [`KeySet::from_jwks_json`]).
    pub fn jwks_warning(&self) -> Option<String> {
        let (config, tokens) = (self.tenants.token.as_ref()?, self.tokens.as_ref()?);
        skipped_keys_warning(&config.jwks_file, tokens.keys())
    }

    /// Loads and validates the tenant file, keys, revocations and policies. Returns every
    /// problem found.
    pub fn load(static_config: &StaticConfig) -> Result<Self, Vec<ConfigProblem>> {
        Self::reload(static_config, None)
    }

    /// What [`Self::load`] does, reusing what `previous` compiled of the policies wherever
    /// their inputs did not change (see [`PolicyEngine::reload`]); the result is the same.
    pub fn reload(
        static_config: &StaticConfig,
        previous: Option<&Snapshot>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        Self::check(
            &static_config.tenants_file,
            Some(static_config),
            previous,
            &mut problems,
        )
        .ok_or(problems)
    }

    /// Runs every stage of a load, each with what the stages before it left valid, and adds
    /// every problem to `problems`: the tenant file; the static file's references into it (when
    /// `static_config` could be read); then the token keys and revocations, the credentials and
    /// the policies. A stage that cannot run at all (the tenant file does not parse) is
    /// reported as not checked. The snapshot is built only when `problems` is empty at the end
    /// (problems of an earlier stage passed in, such as the static file's, count too). The
    /// policies of `previous` are reused where their inputs are unchanged.
    pub fn check(
        tenants_file: &Path,
        static_config: Option<&StaticConfig>,
        previous: Option<&Snapshot>,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<Self> {
        let tenants = match TenantConfig::check(tenants_file) {
            Ok(checked) => {
                problems.extend(checked.problems);
                checked.value
            }
            Err(unreadable) => {
                problems.extend(unreadable);
                problems.push(ConfigProblem::file(
                    tenants_file,
                    "the token keys, credentials and policies it names were not checked: the file \
                     could not be read or parsed (above)",
                ));
                return None;
            }
        };
        if let Some(static_config) = static_config {
            check_listener_references(static_config, &tenants, previous.is_some(), problems);
        }
        // Read with the tenant file, so that a reload (a rotated Secret, SIGHUP) reads it again.
        // At a reload, a file that went bad keeps the last good token without failing the
        // reload: the revocations, key removals and policy edits it carries must not wait for
        // the admin port's token to be fixed.
        // SECURITY: the kept token is reported (metrics, `/readyz`) as a failed reload: a token
        // rotated because it leaked stays valid until the file is fixed, and that must show.
        let mut kept_previous = Vec::new();
        let admin_token = static_config
            .and_then(|s| s.admin_token_file.as_deref())
            .and_then(|f| match (AdminToken::read(f), previous) {
                (Ok(token), _) => Some(token),
                (Err(problem), Some(previous)) if previous.admin_token.is_some() => {
                    tracing::error!(
                        %problem,
                        "the admin token file cannot be used; the admin port keeps the last good token"
                    );
                    kept_previous.push(problem.to_string());
                    previous.admin_token.clone()
                }
                (Err(problem), _) => {
                    problems.push(problem);
                    None
                }
            });
        let tokens = tenants
            .token
            .as_ref()
            .and_then(|t| load_tokens(t, previous.is_some(), problems));
        let credentials = match &tenants.credential_source {
            None => Some(CredentialSet::default()),
            Some(source) => source
                .store()
                .load()
                .map_err(|e| problems.push(ConfigProblem::file(&e.path, e.message)))
                .ok(),
        };
        let infos = tenant_infos(&tenants);
        // Each load gets new, empty decision caches (none without a static file: nothing
        // serves from a snapshot checked alone).
        let cache_entries = static_config.map_or(0, |s| s.policy.decision_cache_entries);
        let policy = load_policies(
            &tenants.policy_dir,
            &infos,
            previous.map(|p| &*p.policy),
            problems,
        )
        .map(|engine| Arc::new(engine.with_decision_cache(cache_entries, "enforced")));
        // The shadow set is held to the same checks: a broken one fails the load (or the
        // reload, which keeps the last good pair) rather than silently reporting nothing.
        let shadow_policy = match &tenants.shadow_policy_dir {
            None => Some(None),
            Some(dir) => load_policies(
                dir,
                &infos,
                previous.and_then(|p| p.shadow_policy.as_deref()),
                problems,
            )
            .map(|engine| {
                Some(Arc::new(
                    engine.with_decision_cache(cache_entries, "shadow"),
                ))
            }),
        };
        // A piece that failed left a problem, so nothing is silently dropped here.
        match (policy, shadow_policy, credentials) {
            (Some(policy), Some(shadow_policy), Some(credentials)) if problems.is_empty() => {
                Some(Snapshot {
                    tenants,
                    tokens,
                    policy,
                    shadow_policy,
                    credentials: Arc::new(credentials),
                    admin_token,
                    generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
                    kept_previous,
                })
            }
            _ => None,
        }
    }

    /// After a rejected reload: this snapshot with the token changes that only tighten applied
    /// (token ids added to the revocation file, keys pulled from, replaced in or made unusable
    /// in the JWKS), when those files can be read (the JWKS as JSON with a `keys` array, though
    /// an entry of it may be rejected) and change something. A problem elsewhere (a policy typo, a bad
    /// credential file) must not keep a revoked token or a pulled key working until it is fixed.
    fn tightened(&self) -> Option<Snapshot> {
        let (config, verifier) = (self.tenants.token.as_ref()?, self.tokens.as_ref()?);
        let keys = crate::whole_file::read_to_string(&config.jwks_file)
            .ok()
            .and_then(|text| KeySet::named_in(&text));
        let revoked = config
            .revoked_jtis_file
            .as_deref()
            .and_then(|f| read_revocations(f).ok());
        let tokens = verifier.tightened(keys.as_ref(), revoked.as_ref())?;
        Some(Snapshot {
            tenants: self.tenants.clone(),
            tokens: Some(tokens),
            policy: Arc::clone(&self.policy),
            shadow_policy: self.shadow_policy.clone(),
            credentials: Arc::clone(&self.credentials),
            admin_token: self.admin_token.clone(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            // The rejected reload this follows is what is reported.
            kept_previous: Vec::new(),
        })
    }

    /// The token verifier's clock-skew allowance: a token is accepted that long past its expiry.
    pub fn token_leeway(&self) -> std::time::Duration {
        self.tenants
            .token
            .as_ref()
            .map_or(std::time::Duration::ZERO, |t| t.leeway)
    }

    /// Files and directories whose change should trigger a reload: those this snapshot was read
    /// from.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = named_paths(&self.tenants);
        paths.extend(self.admin_token.as_ref().map(|t| t.path().to_path_buf()));
        paths
    }
}

/// The tenant file and the files and directories it names.
fn named_paths(tenants: &TenantConfig) -> Vec<PathBuf> {
    let mut paths = vec![tenants.path.clone(), tenants.policy_dir.clone()];
    paths.extend(tenants.shadow_policy_dir.clone());
    paths.extend(tenants.prices_path.clone());
    if let Some(t) = &tenants.token {
        paths.push(t.jwks_file.clone());
        if let Some(r) = &t.revoked_jtis_file {
            paths.push(r.clone());
        }
    }
    if let Some(source) = &tenants.credential_source {
        paths.extend(source.store().watched_paths());
    }
    paths
}

/// The static file's references into the tenant file: each listener's bound workload exists,
/// and a listener that accepts tokens has a `[token]` section to verify them with.
///
/// At a reload (`reloading`) a bound workload (or its tenant) taken out of the tenant file is
/// not a problem but the operator cutting it off: the reload applies, and the listener refuses
/// every request it would have served as that workload (`identity_invalid`) until the workload
/// returns. Refusing the reload instead would keep serving the workload the operator removed.
/// At startup (and in `tenant-proxy check`) it is still a problem: a listener bound to nothing
/// is almost always a typo.
fn check_listener_references(
    static_config: &StaticConfig,
    tenants: &TenantConfig,
    reloading: bool,
    problems: &mut Vec<ConfigProblem>,
) {
    for (i, listener) in static_config.listeners.iter().enumerate() {
        if let Some(b) = &listener.identity.binding {
            if tenants.has_workload(&b.tenant, &b.workload) {
                // Bound to a workload the tenant file has.
            } else if reloading {
                tracing::warn!(
                    listener = %listener.name,
                    tenant = %b.tenant,
                    workload = %b.workload,
                    "the workload this listener is bound to is no longer in the tenant file: once \
                     this reload applies, the listener refuses every request it would serve as \
                     that workload (identity_invalid) until the workload returns"
                );
            } else {
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
}

/// The token verifier: the JWKS and the revocation list, both read (and both reported).
///
/// An empty key set is accepted at a reload (`reloading`) and refused at startup (and by
/// `tenant-proxy check`). SECURITY: at a reload it is the operator pulling the last key after a
/// compromise; keeping the old set instead would keep accepting the compromised key, so the
/// empty set is served and every token refused (fail closed). At startup it is far more likely
/// a mistake (the wrong file), and a proxy that starts refusing every token would hide it.
fn load_tokens(
    config: &TokenConfig,
    reloading: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<TokenVerifier> {
    let keys = crate::whole_file::read_to_string(&config.jwks_file)
        .map_err(|e| ConfigProblem::file(&config.jwks_file, format!("cannot read JWKS: {e}")))
        .and_then(|text| {
            KeySet::from_jwks_json(&text)
                .map_err(|e| ConfigProblem::file(&config.jwks_file, e.to_string()))
        })
        .and_then(|keys| match (keys.is_empty(), reloading) {
            (false, _) => {
                if reloading {
                    if let Some(warning) = skipped_keys_warning(&config.jwks_file, &keys) {
                        tracing::warn!("{warning}");
                    }
                }
                Ok(keys)
            }
            (true, true) => {
                tracing::warn!(
                    file = %config.jwks_file.display(),
                    "the JWKS has no keys: every token is refused until keys are published"
                );
                Ok(keys)
            }
            (true, false) if keys.skipped().is_empty() => Err(ConfigProblem::file(
                &config.jwks_file,
                KeySetError::Empty.to_string(),
            )),
            (true, false) => Err(ConfigProblem::file(
                &config.jwks_file,
                format!(
                    "the JWKS has no Ed25519 or P-256 signing key (left out: {}): the proxy \
                     verifies EdDSA and ES256 tokens only",
                    keys.skipped().join(", ")
                ),
            )),
        });
    let revoked = match &config.revoked_jtis_file {
        None => Ok(HashSet::new()),
        Some(f) => read_revocations(f),
    };
    match (keys, revoked) {
        (Ok(keys), Ok(revoked)) => Some(TokenVerifier::new(
            config.verifier_settings(),
            keys,
            revoked,
        )),
        (keys, revoked) => {
            problems.extend(keys.err());
            problems.extend(revoked.err());
            None
        }
    }
}

/// Loads one policy directory, reusing what `previous` compiled where nothing changed, adding
/// its problems to `problems`.
fn load_policies(
    dir: &Path,
    infos: &[TenantInfo],
    previous: Option<&PolicyEngine>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<PolicyEngine> {
    match PolicyEngine::reload(dir, infos, previous) {
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

/// The warning for a JWKS's entries left out: no token verifies with them.
fn skipped_keys_warning(jwks_file: &Path, keys: &KeySet) -> Option<String> {
    (!keys.skipped().is_empty()).then(|| {
        format!(
            "`jwks_file` `{}` has keys the proxy does not verify with, left out: {}; tokens \
             signed with them are refused (the proxy verifies EdDSA and ES256 tokens only)",
            jwks_file.display(),
            keys.skipped().join(", ")
        )
    })
}

fn read_revocations(path: &Path) -> Result<HashSet<String>, ConfigProblem> {
    let text = revocation_text(path)
        .map_err(|e| ConfigProblem::file(path, format!("cannot read revocation list: {e}")))?;
    Ok(crate::identity::token::revocation_ids(&text))
}

/// The text of a revocation file. SECURITY: a byte that is not UTF-8 (a comment saved by an
/// editor in Latin-1 or Windows-1252) must not void the file and with it every revocation added
/// since: token ids are printable ASCII ([`crate::identity::token::valid_jti`]), so such a byte
/// is read as U+FFFD, which no id holds, and every line naming an id still revokes it.
fn revocation_text(path: &Path) -> std::io::Result<String> {
    let bytes = crate::whole_file::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Publishes what the metrics show of a snapshot about to be served: its cost ceilings, and no
/// series of a tenant it no longer serves.
fn publish_metrics(snapshot: &Snapshot) {
    let tenants = &snapshot.tenants.tenants;
    let served: HashSet<&str> = tenants.keys().map(|id| id.as_str()).collect();
    METRICS.forget_tenants(|tenant| served.contains(tenant));
    METRICS.publish_cost_ceilings(tenants.iter().map(|(id, t)| {
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
    reloads: Arc<ReloadStatus>,
    /// Access tokens of token credentials: kept across reloads for the credentials whose value
    /// did not change, dropped for the ones rotated or removed.
    pub tokens: crate::credentials::oauth::cache::TokenCache,
    /// What responses are scrubbed of, per tenant and host: its credentials' values and tokens,
    /// and the values a reload or a refresh retired (the token cache retires into the same).
    pub echoes: crate::credentials::echoes::Echoes,
    /// The static file's digest when it was read at start (see [`static_file_digest`]).
    static_digest: Option<[u8; 32]>,
}

/// The SHA-256 of the static file as it is now (`None` when it cannot be read).
fn static_file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    crate::whole_file::read(path)
        .ok()
        .map(|b| sha2::Sha256::digest(b).into())
}

pub use crate::reload_status::{LastReload, ReloadStatus, TENANT_CONFIGURATION};

impl SnapshotHandle {
    /// Wraps the first snapshot.
    pub fn new(static_config: Arc<StaticConfig>, first: Snapshot) -> Self {
        publish_metrics(&first);
        let retired = Arc::new(crate::credentials::echoes::Retired::default());
        Self {
            current: ArcSwap::from_pointee(first),
            reloads: Arc::new(ReloadStatus::new()),
            tokens: crate::credentials::oauth::cache::TokenCache::new(retired.clone()),
            echoes: crate::credentials::echoes::Echoes::new(retired),
            static_digest: static_file_digest(&static_config.path),
            static_config,
        }
    }

    /// Whether the static file differs from what was read at start: a reload does not read it
    /// (it holds listeners, limits, egress and audit settings that need a restart), so an edit
    /// of it would otherwise look applied.
    pub fn static_file_changed(&self) -> bool {
        self.static_digest.is_some()
            && static_file_digest(&self.static_config.path) != self.static_digest
    }

    /// The result of the last reload of every part together (see [`ReloadStatus`]).
    pub fn last_reload(&self) -> LastReload {
        self.reloads.combined()
    }

    /// Where the parts that reload on their own (mTLS files) record their reloads.
    pub fn reload_status(&self) -> Arc<ReloadStatus> {
        self.reloads.clone()
    }

    /// The snapshot requests use now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Files and directories whose change should trigger a reload, as the configuration names
    /// them now: those the current snapshot was read from, and those the tenant file names now
    /// (when it can be read). They differ after a rejected reload, such as one that moved
    /// `policy_dir` to a directory whose policies do not load yet: fixing those must reload,
    /// and the current snapshot's token files still apply what they revoke (see
    /// [`Snapshot::tightened`]).
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.load().watched_paths();
        paths.push(self.static_config.tenants_file.clone());
        if let Ok(now) = TenantConfig::check(&self.static_config.tenants_file) {
            paths.extend(named_paths(&now.value));
        }
        paths.extend(self.static_config.admin_token_file.clone());
        paths.sort();
        paths.dedup();
        paths
    }

    /// Rebuilds the snapshot; on failure the last good one stays and the problems are returned.
    pub fn reload(&self) -> Result<u64, Vec<ConfigProblem>> {
        if self.static_file_changed() {
            tracing::warn!(
                file = %self.static_config.path.display(),
                "the static file changed since start and is not reloaded: its settings (listeners, limits, egress, upstream, audit, log) apply at the next restart; reloads read the tenant file and what it names"
            );
        }
        // The current snapshot lends the policies it compiled; the new one shares the unchanged
        // tenants' compiled sets but none of their decision caches.
        let current = self.current.load_full();
        match Snapshot::reload(&self.static_config, Some(&current)) {
            Ok(next) => {
                let generation = next.generation;
                publish_metrics(&next);
                // SECURITY: a value rotated, rebound or removed is still looked for in the
                // responses of the hosts it was bound to (they may have kept it), for a while.
                self.echoes.retired().changed(
                    &current.credentials,
                    &next.credentials,
                    std::time::Instant::now(),
                );
                // SECURITY: tokens minted from a rotated, rebound or removed value go with it
                // (they are only looked for in responses of the hosts they went to, until they
                // expire).
                self.tokens.keep_only(&next.credentials);
                let kept = next.kept_previous.clone();
                self.current.store(Arc::new(next));
                if kept.is_empty() {
                    tracing::info!(generation, "tenant configuration reloaded");
                } else {
                    tracing::error!(
                        generation,
                        "tenant configuration reloaded except the admin token file; the reload counts as failed until it is fixed"
                    );
                }
                self.reloads.record(TENANT_CONFIGURATION, kept);
                Ok(generation)
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "reload rejected; keeping the last good configuration");
                }
                // SECURITY: revocations and pulled keys apply even so.
                if let Some(tighter) = current.tightened() {
                    tracing::warn!(
                        generation = tighter.generation,
                        "reload rejected, but its new token revocations and key removals apply"
                    );
                    self.current.store(Arc::new(tighter));
                }
                let lines = problems.iter().map(ToString::to_string).collect();
                self.reloads.record(TENANT_CONFIGURATION, lines);
                Err(problems)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_file_with_bytes_that_are_not_utf8_still_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(
            &path,
            b"jti-1  # laptop of J\xfcrgen (stolen)\n\xff\xfe\njti-2\r\nbad\xe9id\n",
        )
        .unwrap();
        let ids = read_revocations(&path).expect("read");
        assert!(ids.contains("jti-1") && ids.contains("jti-2"), "{ids:?}");
        // A foreign byte in an id is read as U+FFFD, which no token id holds.
        assert!(ids.contains("bad\u{fffd}id"), "{ids:?}");
        std::fs::remove_file(&path).unwrap();
        assert!(
            read_revocations(&path).is_err(),
            "a missing file is still a problem"
        );
    }

    #[test]
    fn readiness_sees_a_count_of_reload_problems_never_their_text() {
        let failed = LastReload::now(vec![
            "policies/tenants/globex/new.cedar:2:1: for policy `globex-secret-rule`, …".into(),
            "tenants.toml: tenant `initech` …".into(),
        ]);
        let summary = failed.summary();
        assert_eq!(summary["ok"], false);
        assert_eq!(summary["problems"], 2);
        assert!(summary["at"].as_str().unwrap().ends_with('Z'));
        let text = summary.to_string();
        for secret in ["globex", "initech", "cedar", "tenants.toml"] {
            assert!(!text.contains(secret), "{text}");
        }
        let applied = LastReload::now(Vec::new()).summary();
        assert_eq!(
            (&applied["ok"], &applied["problems"]),
            (&true.into(), &0.into())
        );
    }

    #[test]
    fn a_parts_failed_reload_shows_until_that_part_reloads() {
        let status = ReloadStatus::new();
        assert!(status.combined().ok);
        let mesh = "listener `mesh` TLS files";
        status.record(mesh, vec!["client-ca.pem holds no certificate".into()]);
        let last = status.combined();
        assert_eq!((last.ok, last.problems.len()), (false, 1));
        // Another part's good reload does not clear it.
        status.record(TENANT_CONFIGURATION, Vec::new());
        assert!(!status.combined().ok);
        status.record(TENANT_CONFIGURATION, vec!["admin token".into()]);
        assert_eq!(status.combined().problems.len(), 2);
        // That part's own good reload does.
        status.record(mesh, Vec::new());
        let last = status.combined();
        assert_eq!((last.ok, last.problems.len()), (false, 1));
        status.record(TENANT_CONFIGURATION, Vec::new());
        let applied = status.combined().summary();
        assert_eq!(
            (&applied["ok"], &applied["problems"]),
            (&true.into(), &0.into())
        );
    }
}
