//! Run-level audit events for signed runs: `run_started` for a run's first request and
//! `run_summary` (tokens, cost, tool calls, requests, refusals, wall time) when its token expires
//! or an operator closes it.
//!
//! "First" and "once" are decided by the limiter backend, shared by every replica
//! ([`LimitBackend::sight_run`], [`LimitBackend::end_run`]), so replicas sharing Redis write one
//! event of each kind between them, into the tenant's own chained partition. Each replica keeps
//! a list of the runs it has seen, bounded per tenant (so one tenant starting runs without end
//! cannot push another's off it), and, once a second, claims the summary of those whose token
//! expired; a run seen by several replicas is summarized by whichever claims it first.
//! Shutdown summarizes nothing: a live run may go on through another replica.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::audit::{AuditSink, EventKind, RunEnd, RunEvent, RunTotals};
use crate::context::TenantContext;
use crate::ids::TenantId;
use crate::limits::{
    LimitBackend, LimitKey, LimitKind, Measure, RunClaim, RunLedger, RunRegistry, Scope, Window,
};

/// Runs of one tenant one replica watches for expiry at most, unless configured (`[limiter]
/// watched_runs_per_tenant`); past it, that tenant's new runs are not watched (another
/// replica, or a close, still summarizes them) and a warning is logged. Other tenants' runs are
/// not affected.
pub const MAX_WATCHED_PER_TENANT: usize = 10_000;
/// How often expired runs are looked for.
const TICK: Duration = Duration::from_secs(1);
/// The watch list is split in this many independently locked parts, so that requests of
/// different runs never wait on one lock (every signed request updates the list).
const SHARDS: usize = 64;

/// One part of the watch list: the runs whose (tenant, run id) hash to it.
#[derive(Debug, Default)]
struct Shard {
    runs: HashMap<(TenantId, String), Watch>,
}

/// The runs this replica watches for expiry, bounded per tenant. A run's requests take only
/// its part's lock; a new run also takes the lock of the tenants' counts, once.
///
/// (Each part held a share of a tenant's bound instead, so that no lock beyond the part's was
/// needed: a tenant's runs hash evenly over the parts only on average, and with a hash anyone
/// can compute, one tenant's 160 chosen run ids in one part, or 3 % of 10,000 ordinary ones,
/// went unwatched and got no `run_summary`.)
#[derive(Debug)]
struct WatchList {
    shards: Box<[Mutex<Shard>]>,
    per_tenant: usize,
    /// How many runs each tenant has on the list (locked after a part's lock, never before).
    counts: Mutex<HashMap<TenantId, usize>>,
}

impl WatchList {
    fn new(per_tenant: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_tenant: per_tenant.max(1),
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<TenantId, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a run added to `tenant`'s, unless it has `max` (`None`: no bound).
    fn count_in(&self, tenant: &TenantId, max: Option<usize>) -> bool {
        let mut counts = self.counts();
        let n = counts.entry(tenant.clone()).or_default();
        if max.is_some_and(|max| *n >= max) {
            return false;
        }
        *n += 1;
        true
    }

    fn count_out(&self, tenant: &TenantId) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(tenant);
            }
        }
    }

    /// The part of the list that holds `run` of `tenant`.
    fn shard(&self, tenant: &TenantId, run: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        (tenant.as_str(), run).hash(&mut h);
        let index = (h.finish() as usize) % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `run` of `tenant` until `expires_at` (or later, if it is watched already).
    /// False when the tenant is at its bound and the run is not watched.
    fn watch(&self, tenant: &TenantId, run: &str, workload: &str, expires_at: u64) -> bool {
        let mut shard = self.shard(tenant, run);
        let key = (tenant.clone(), run.to_string());
        if let Some(w) = shard.runs.get_mut(&key) {
            w.expires_at = w.expires_at.max(expires_at);
            return true;
        }
        if !self.count_in(tenant, Some(self.per_tenant)) {
            return false;
        }
        shard.runs.insert(
            key,
            Watch {
                workload: workload.to_string(),
                expires_at,
            },
        );
        true
    }

    /// Watches again a run taken off the list to be claimed (its claim failed): counted, not
    /// bounded, as it was on the list a moment ago.
    fn rewatch(&self, tenant: &TenantId, run: &str, watch: Watch) {
        let mut shard = self.shard(tenant, run);
        if shard
            .runs
            .insert((tenant.clone(), run.to_string()), watch)
            .is_none()
        {
            self.count_in(tenant, None);
        }
    }

    fn unwatch(&self, tenant: &TenantId, run: &str) -> Option<Watch> {
        let mut shard = self.shard(tenant, run);
        let removed = shard.runs.remove(&(tenant.clone(), run.to_string()))?;
        self.count_out(tenant);
        Some(removed)
    }

    /// The watched runs whose end is at or before `now`.
    fn due(&self, now: u64) -> Vec<((TenantId, String), Watch)> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            due.extend(
                shard
                    .runs
                    .iter()
                    .filter(|(_, w)| w.expires_at <= now)
                    .map(|(k, w)| (k.clone(), w.clone())),
            );
        }
        due
    }
}

/// A run this replica has seen and will summarize once its token expired.
#[derive(Debug, Clone)]
struct Watch {
    workload: String,
    /// Unix second the run ends: its token's expiry plus the verifier's leeway.
    expires_at: u64,
}

/// Writes run-level events; one per process, shared by every listener and the admin port.
#[derive(Debug)]
pub struct RunTracker {
    /// The run counters (its tokens, cost and tool calls, for the summary).
    counters: Arc<dyn LimitBackend>,
    /// The runs' life records.
    registry: Arc<dyn RunRegistry>,
    audit: AuditSink,
    watched: WatchList,
}

/// Why a request of a signed run is refused before it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunRefusal {
    /// The run was closed (`tenant-proxy run close`).
    #[error("this run was closed")]
    Closed,
    /// The run's life record cannot be read or written.
    #[error("the limit counters cannot be reached")]
    LimiterUnavailable,
    /// The `run_started` record has no audit slot.
    #[error("the audit log cannot record the run's start")]
    AuditUnavailable,
}

/// Why a run could not be closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The audit queue cannot take the summary.
    #[error("the audit sink cannot take the run summary; try again")]
    AuditUnavailable,
    /// The limiter backend did not answer.
    #[error(transparent)]
    Limiter(#[from] crate::limits::LimiterUnavailable),
}

/// What a claim on a run's summary came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    /// This caller claimed it and wrote it.
    Written,
    /// This caller claimed it, but no request of the run was ever seen: nothing to write.
    NeverStarted,
    /// Not this caller's to write: summarized already, or (for an expiry) still live through
    /// a later token.
    NotOurs,
}

/// What closing a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// The run is closed and its summary was written now.
    Summarized,
    /// The run is closed; it had already been summarized (expired, or closed before).
    AlreadyEnded,
    /// The run is closed before any request of it was seen: there is nothing to summarize,
    /// and its requests are refused from the first.
    BeforeStart,
}

impl RunTracker {
    /// A tracker over the process's limiter and audit sink, watching at most
    /// `watched_per_tenant` runs of each tenant.
    pub fn new(
        counters: Arc<dyn LimitBackend>,
        registry: Arc<dyn RunRegistry>,
        audit: AuditSink,
        watched_per_tenant: usize,
    ) -> Self {
        Self {
            counters,
            registry,
            audit,
            watched: WatchList::new(watched_per_tenant),
        }
    }

    /// Records a request of a signed run: writes `run_started` if it is the run's first, and
    /// refuses it if the run was closed. Unsigned runs are single requests and have no events.
    ///
    /// SECURITY: the event's audit slot is reserved before the backend is asked, so a first
    /// request is never admitted without its `run_started` record; without a backend answer the
    /// request is refused (`limiter_unavailable`), never admitted unaccounted.
    ///
    /// The run ends the token verifier's leeway after its token's expiry: the token is accepted
    /// that long. Every admission path (requests, and `CONNECT` tunnels, whose opaque bytes no
    /// later request would check) calls this.
    pub async fn sight(&self, tenant: &TenantContext, leeway: Duration) -> Result<(), RunRefusal> {
        let (true, Some(expires_at)) = (tenant.run.signed, tenant.run.expires_at) else {
            return Ok(());
        };
        let slot = self
            .audit
            .reserve_for(&tenant.tenant)
            .map_err(|_| RunRefusal::AuditUnavailable)?;
        let ends_at = crate::identity::token::accepted_until(expires_at, leeway);
        let expires_ms = i64::try_from(ends_at.saturating_mul(1000)).unwrap_or(i64::MAX);
        let sighting = self
            .registry
            .sight_run(&tenant.tenant, &tenant.run.id, expires_ms)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "limiter unavailable for a run's record; refusing");
                RunRefusal::LimiterUnavailable
            })?;
        // A closed run (also one closed before its first request) is refused before it is
        // watched or said to start: it would start with no summary ever to follow.
        if sighting.closed {
            return Err(RunRefusal::Closed);
        }
        self.watch(tenant, ends_at);
        if sighting.first {
            slot.emit(RunEvent {
                event: EventKind::RunStarted,
                time: crate::clock::rfc3339(SystemTime::now()),
                tenant: tenant.tenant.to_string(),
                workload: Some(tenant.workload.to_string()),
                run_id: tenant.run.id.clone(),
                expires_at: Some(expires_at),
                budget: Some(tenant.budget.clone().unwrap_or_default()),
                request_id: Some(tenant.request_id.to_string()),
                totals: None,
            });
        }
        Ok(())
    }

    /// Whether `run` of `tenant` was closed, as every replica sharing the backend sees it (read
    /// only).
    pub async fn is_closed(
        &self,
        tenant: &TenantId,
        run: &str,
    ) -> Result<bool, crate::limits::LimiterUnavailable> {
        self.registry.run_closed(tenant, run).await
    }

    /// Counts a refused request of a signed run for its summary.
    pub async fn count_refusal(&self, tenant: &TenantContext) {
        if tenant.run.signed {
            self.registry
                .count_refusal(&tenant.tenant, &tenant.run.id)
                .await;
        }
    }

    /// Closes `run` of `tenant` (only that tenant's run of that id): its later requests are
    /// refused with `run_closed`, and its summary is written now unless it was written before.
    pub async fn close(&self, tenant: &TenantId, run: &str) -> Result<Closed, CloseError> {
        let watch = self.unwatch(tenant, run);
        let outcome = self
            .summarize(tenant, run, watch.as_ref(), RunEnd::Closed)
            .await;
        match outcome {
            Ok(Summary::Written) => Ok(Closed::Summarized),
            Ok(Summary::NeverStarted) => Ok(Closed::BeforeStart),
            Ok(Summary::NotOurs) => Ok(Closed::AlreadyEnded),
            Err(e) => {
                if let Some(w) = watch {
                    self.rewatch(tenant, run, w);
                }
                Err(e)
            }
        }
    }

    /// Summarizes every watched run whose token has expired, once a second, until the process
    /// ends. Call it once, on a runtime that lives as long as the proxy.
    pub async fn watch_expiries(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.summarize_expired(crate::clock::unix_now()).await;
        }
    }

    /// One pass over the watched runs whose token expired by `now` (unix seconds).
    async fn summarize_expired(&self, now: u64) {
        for ((tenant, run), watch) in self.watched.due(now) {
            // On failure the run stays watched and is tried again next tick.
            if let Err(e) = self
                .summarize(&tenant, &run, Some(&watch), RunEnd::Expired)
                .await
            {
                tracing::warn!(tenant = %tenant, error = %e, "run summary postponed");
            }
        }
    }

    /// Claims the run's summary and writes it.
    async fn summarize(
        &self,
        tenant: &TenantId,
        run: &str,
        watch: Option<&Watch>,
        end: RunEnd,
    ) -> Result<Summary, CloseError> {
        // Slot and counters first: once the claim is taken, nothing may stop the event.
        let slot = self
            .audit
            .reserve_for(tenant)
            .map_err(|_| CloseError::AuditUnavailable)?;
        let keys: Vec<LimitKey> = [Measure::Tokens, Measure::Cost, Measure::ToolCalls]
            .into_iter()
            .map(|measure| LimitKey {
                scope: Scope::Run(tenant.clone(), run.to_string()),
                kind: LimitKind::Quota {
                    measure,
                    window: Window::Run,
                    // The key does not carry its ceiling: any value reads the run's counter.
                    ceiling: 0,
                },
            })
            .collect();
        let used = self.counters.read(&keys).await?;
        let claim = self
            .registry
            .end_run(tenant, run, end)
            .await
            .map_err(CloseError::Limiter)?;
        let ledger = match claim {
            RunClaim::Claimed(ledger) => ledger,
            RunClaim::Taken => {
                self.unwatch(tenant, run);
                return Ok(Summary::NotOurs);
            }
            RunClaim::NotYet { expires_ms } => {
                // A later token of the run (seen by any replica) moved its end.
                if let Some(w) = watch {
                    let expires_at = u64::try_from(expires_ms / 1000).unwrap_or(u64::MAX);
                    self.rewatch(
                        tenant,
                        run,
                        Watch {
                            expires_at: expires_at.max(w.expires_at),
                            workload: w.workload.clone(),
                        },
                    );
                }
                return Ok(Summary::NotOurs);
            }
        };
        self.unwatch(tenant, run);
        if ledger.start_ms.is_none() {
            return Ok(Summary::NeverStarted);
        }
        slot.emit(RunEvent {
            event: EventKind::RunSummary,
            time: crate::clock::rfc3339(SystemTime::now()),
            tenant: tenant.to_string(),
            workload: watch.map(|w| w.workload.clone()),
            run_id: run.to_string(),
            expires_at: None,
            budget: None,
            request_id: None,
            totals: Some(totals(end, &ledger, &used)),
        });
        Ok(Summary::Written)
    }

    fn watch(&self, tenant: &TenantContext, expires_at: u64) {
        let watched = self.watched.watch(
            &tenant.tenant,
            &tenant.run.id,
            tenant.workload.as_str(),
            expires_at,
        );
        // A tenant mints run ids at will: one line per tenant a second, the rest counted.
        let key = crate::logging::LineKey::Tenant(tenant.tenant.as_str());
        if let Some(suppressed) = (!watched)
            .then(|| crate::logging::sample_line(key, "runs_unwatched"))
            .flatten()
        {
            tracing::warn!(
                tenant = %tenant.tenant,
                run_id = %tenant.run.id,
                suppressed,
                "this tenant has too many live runs to watch; this run's summary is left to another replica or a close"
            );
        }
    }

    fn rewatch(&self, tenant: &TenantId, run: &str, watch: Watch) {
        self.watched.rewatch(tenant, run, watch);
    }

    fn unwatch(&self, tenant: &TenantId, run: &str) -> Option<Watch> {
        self.watched.unwatch(tenant, run)
    }
}

/// The summary's figures: the ledger's, and the counters read as tokens, cost, tool calls.
fn totals(end: RunEnd, ledger: &RunLedger, used: &[u64]) -> RunTotals {
    let wall_ms = ledger
        .start_ms
        .map_or(0, |start| ledger.end_ms.saturating_sub(start).max(0));
    RunTotals {
        ended: end,
        ended_at: u64::try_from(ledger.end_ms / 1000).unwrap_or(0),
        tokens: used.first().copied().unwrap_or(0),
        cost_micros: used.get(1).copied().unwrap_or(0),
        tool_calls: used.get(2).copied().unwrap_or(0),
        requests: ledger.requests,
        refusals: ledger.refusals,
        wall_time_s: u64::try_from(wall_ms / 1000).unwrap_or(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    #[test]
    fn one_tenant_starting_runs_without_end_leaves_room_for_the_others() {
        let list = WatchList::new(640);
        let (noisy, quiet) = (tenant("noisy"), tenant("quiet"));
        let watched = (0..50_000)
            .filter(|i| list.watch(&noisy, &format!("run-{i}"), "bot", 100))
            .count();
        // The tenant's bound, and no more.
        assert_eq!(watched, 640);
        for i in 0..100 {
            assert!(
                list.watch(&quiet, &format!("run-{i}"), "bot", 100),
                "the quiet tenant's run {i} was pushed off"
            );
        }
        assert_eq!(list.due(100).len(), 640 + 100);
        // Unwatching (summarized, closed) frees the tenant's room again.
        for ((t, run), _) in list.due(100) {
            if t == noisy {
                assert!(list.unwatch(&t, &run).is_some());
            }
        }
        assert_eq!(list.due(100).len(), 100);
        let again = (0..50_000)
            .filter(|i| list.watch(&noisy, &format!("again-{i}"), "bot", 100))
            .count();
        assert_eq!(again, 640);
    }

    /// The bound is the tenant's, whichever parts its runs hash to: runs chosen to fall in one
    /// part are all watched up to it, and a bound under the number of parts holds as well.
    #[test]
    fn the_bound_is_the_tenants_whichever_part_its_runs_fall_in() {
        let list = WatchList::new(640);
        let acme = tenant("acme");
        let same_part: Vec<String> = (0..)
            .map(|i| format!("x{i}"))
            .filter(|run| {
                let mut h = DefaultHasher::new();
                (acme.as_str(), run.as_str()).hash(&mut h);
                (h.finish() as usize).is_multiple_of(SHARDS)
            })
            .take(640)
            .collect();
        for run in &same_part {
            assert!(list.watch(&acme, run, "bot", 100), "{run}");
        }
        assert!(!list.watch(&acme, "one-more", "bot", 100));
        let small = WatchList::new(10);
        let watched = (0..1000)
            .filter(|i| small.watch(&acme, &format!("r{i}"), "bot", 100))
            .count();
        assert_eq!(watched, 10);
    }

    #[test]
    fn expiry_is_the_latest_token_seen() {
        let list = WatchList::new(64);
        let t = tenant("acme");
        assert!(list.watch(&t, "r", "bot", 10));
        assert!(list.watch(&t, "r", "bot", 5));
        assert!(list.due(9).is_empty());
        assert_eq!(list.due(10).len(), 1);
        assert_eq!(list.unwatch(&t, "r").unwrap().expires_at, 10);
        assert!(list.unwatch(&t, "r").is_none());
    }
}
