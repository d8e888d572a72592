//! In-memory counters for a single proxy: sharded locks (no global lock), GCRA for rates, plain
//! counters for concurrency, reserved-then-settled amounts for tokens and cost. Counters of
//! calendar windows and runs expire, so a long-lived proxy does not keep every run it ever saw.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    run_life_key, Admission, AdmitError, Charge, LimitBackend, LimitDeny, LimitKey, LimitKind,
    RateHeadline, RunClaim, RunLedger, RunSighting, Scope, Slot,
};
use super::{LimiterUnavailable, RunEnd, RunRegistry, QUOTA_KEPT_SECS};
use crate::clock::unix_ms;
use crate::ids::TenantId;

const SHARDS: usize = 64;
/// A shard is swept of expired counters when it has grown past this many (and then past twice
/// the size it had after the last sweep).
const SWEEP_FLOOR: usize = 1024;
/// How long a run's counters live after they were last reserved against, by default.
pub const DEFAULT_RUN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A counter's identity: what its Redis key name says (scope, kind, window), not the ceiling's
/// value, so a changed ceiling keeps what was spent. Looked up through [`CounterRef`], without
/// formatting the name or copying the ids (a request touches several counters three times).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CounterId {
    scope: Scope,
    slot: Slot,
}

/// A borrowed [`CounterId`]: it hashes and compares as the owned one does.
#[derive(Debug, Clone, Copy, Hash)]
struct CounterRef<'a> {
    scope: &'a Scope,
    slot: Slot,
}

impl hashbrown::Equivalent<CounterId> for CounterRef<'_> {
    fn equivalent(&self, key: &CounterId) -> bool {
        *self.scope == key.scope && self.slot == key.slot
    }
}

impl CounterRef<'_> {
    fn owned(self) -> CounterId {
        CounterId {
            scope: self.scope.clone(),
            slot: self.slot,
        }
    }
}

/// The counter `key` names (as its `Display` name does).
fn counter_of(key: &LimitKey) -> CounterRef<'_> {
    CounterRef {
        scope: &key.scope,
        slot: key.slot(),
    }
}

/// Counters by identity. foldhash, seeded per map: every part of an identity is a tenant,
/// workload or signed run id, none of which a caller picks freely, and SipHash over an id's
/// many small fields cost more than the formatting it replaced.
type Counters = hashbrown::HashMap<CounterId, State>;

#[derive(Debug)]
enum State {
    /// GCRA theoretical arrival time, in nanoseconds since `epoch`.
    Rate { tat: u64 },
    /// In-flight count.
    Concurrency { in_flight: u32 },
    /// Tokens used or reserved in minute `window` (of `epoch`).
    PerMinute { window: u64, used: u64 },
    /// Amount used or reserved in the window the key names, until `expires_ms` (unix).
    Quota { used: u64, expires_ms: i64 },
    /// When a run started (unix ms), until `expires_ms`.
    Started { at_ms: i64, expires_ms: i64 },
}

impl State {
    fn expired(&self, now_ms: i64) -> bool {
        match self {
            State::Quota { expires_ms, .. } | State::Started { expires_ms, .. } => {
                *expires_ms <= now_ms
            }
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    counters: Counters,
    sweep_at: usize,
}

/// A signed run's life record (see [`LimitBackend::sight_run`]).
#[derive(Debug, Default)]
struct RunLife {
    start_ms: Option<i64>,
    expires_ms: i64,
    requests: u64,
    refusals: u64,
    closed_ms: Option<i64>,
    summarized: bool,
    /// Dropped after this unix ms: `run_ttl` past the later of its expiry and last update.
    keep_until_ms: i64,
}

/// Counters in this process.
#[derive(Debug)]
pub struct MemoryBackend {
    shards: Vec<Mutex<Shard>>,
    epoch: Instant,
    run_ttl: Duration,
    runs: Mutex<RunLives>,
}

#[derive(Debug, Default)]
struct RunLives {
    lives: HashMap<String, RunLife>,
    sweep_at: usize,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(DEFAULT_RUN_TTL)
    }
}

/// The shard of a counter: foldhash with a seed fixed for the process (shards only spread
/// lock contention).
fn shard_of(counter: CounterRef<'_>) -> usize {
    static SEED: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    (SEED.get_or_init(Default::default).hash_one(counter) as usize) % SHARDS
}

/// GCRA parameters in nanoseconds: emission interval and tolerance.
fn gcra(per_period: u32, period_secs: u32, burst: u32) -> (u64, u64) {
    let interval = (u64::from(period_secs) * 1_000_000_000) / u64::from(per_period.max(1));
    let tolerance = interval * u64::from(burst.max(1) - 1);
    (interval, tolerance)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl MemoryBackend {
    /// Counters whose run keys live `run_ttl` after their last reservation.
    pub fn new(run_ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epoch: Instant::now(),
            run_ttl,
            runs: Mutex::new(RunLives::default()),
        }
    }

    /// The run's life record, created (and the map swept of expired ones) when missing.
    fn with_life<T>(
        &self,
        tenant: &TenantId,
        run: &str,
        now_ms: i64,
        f: impl FnOnce(&mut RunLife) -> T,
    ) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let key = run_life_key(tenant, run);
        if !runs.lives.contains_key(&key) && runs.lives.len() >= runs.sweep_at.max(SWEEP_FLOOR) {
            runs.lives.retain(|_, l| l.keep_until_ms > now_ms);
            runs.sweep_at = runs.lives.len() * 2;
        }
        let life = runs.lives.entry(key).or_default();
        let out = f(life);
        life.keep_until_ms = life
            .keep_until_ms
            .max(life.expires_ms.max(now_ms).saturating_add(ms(self.run_ttl)));
        out
    }

    /// [`LimitBackend::sight_run`] at `now_ms`.
    pub fn sight_run_at(
        &self,
        tenant: &TenantId,
        run: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> RunSighting {
        self.with_life(tenant, run, now_ms, |life| {
            life.requests += 1;
            life.expires_ms = life.expires_ms.max(expires_ms);
            let first = life.start_ms.is_none();
            if first {
                life.start_ms = Some(now_ms);
            }
            RunSighting {
                first,
                closed: life.closed_ms.is_some(),
            }
        })
    }

    /// Records that the run was closed (learned elsewhere: the shared backend this one stands
    /// in for while it does not answer), claiming nothing: its later sightings here say closed.
    pub fn record_closed_at(&self, tenant: &TenantId, run: &str, now_ms: i64) {
        self.with_life(tenant, run, now_ms, |life| {
            life.closed_ms.get_or_insert(now_ms);
        });
    }

    /// [`Self::record_closed_at`] now.
    pub fn record_closed(&self, tenant: &TenantId, run: &str) {
        self.record_closed_at(tenant, run, unix_ms());
    }

    /// [`LimitBackend::end_run`] at `now_ms`.
    pub fn end_run_at(&self, tenant: &TenantId, run: &str, end: RunEnd, now_ms: i64) -> RunClaim {
        self.with_life(tenant, run, now_ms, |life| {
            if end == RunEnd::Closed && life.closed_ms.is_none() {
                life.closed_ms = Some(now_ms);
            }
            if life.summarized {
                return RunClaim::Taken;
            }
            if life.closed_ms.is_none() && life.expires_ms > now_ms {
                return RunClaim::NotYet {
                    expires_ms: life.expires_ms,
                };
            }
            life.summarized = true;
            RunClaim::Claimed(RunLedger {
                start_ms: life.start_ms,
                end_ms: life.closed_ms.unwrap_or(life.expires_ms),
                requests: life.requests,
                refusals: life.refusals,
            })
        })
    }

    fn mono_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self, id: usize) -> MutexGuard<'_, Shard> {
        // A poisoned shard only means another thread panicked mid-update; counters stay usable.
        self.shards[id].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry_ms(&self, key: &LimitKey, now_ms: i64) -> i64 {
        match key.kind {
            LimitKind::Quota { window, .. } => {
                window
                    .expires_at()
                    .map_or(now_ms.saturating_add(ms(self.run_ttl)), |s| {
                        s.saturating_mul(1000)
                            .max(now_ms.saturating_add(QUOTA_KEPT_SECS * 1000))
                    })
            }
            _ => now_ms.saturating_add(ms(self.run_ttl)),
        }
    }
}

#[async_trait::async_trait]
impl LimitBackend for MemoryBackend {
    async fn admit(&self, keys: &[LimitKey], charge: Charge) -> Result<Admission, AdmitError> {
        self.admit_now(keys, charge).map_err(AdmitError::Limited)
    }

    async fn finish(&self, admission: Admission, used: Charge) {
        self.settle_now(&admission, used);
        self.release_now(&admission.leases);
    }

    fn already_over(&self, rate_keys: &dyn Fn() -> Vec<LimitKey>) -> Option<LimitDeny> {
        let now = self.mono_nanos();
        for key in &rate_keys() {
            let LimitKind::Rate {
                per_period,
                period_secs,
                burst,
            } = key.kind
            else {
                continue;
            };
            let counter = counter_of(key);
            let tat = match self.lock(shard_of(counter)).counters.get(&counter) {
                Some(State::Rate { tat }) => *tat,
                _ => continue,
            };
            // The same test `admit_at` makes, without moving the arrival time.
            let (_, tolerance) = gcra(per_period, period_secs, burst);
            let allow_at = tat.saturating_sub(tolerance);
            if now < allow_at {
                return Some(LimitDeny::for_key(
                    key,
                    unix_ms().div_euclid(1000),
                    Duration::from_nanos(allow_at - now),
                ));
            }
        }
        None
    }

    async fn read(&self, keys: &[LimitKey]) -> Result<Vec<u64>, LimiterUnavailable> {
        let now_ms = unix_ms();
        let window = self.mono_nanos() / 60_000_000_000;
        Ok(keys
            .iter()
            .map(|key| {
                let counter = counter_of(key);
                let shard = self.lock(shard_of(counter));
                match shard.counters.get(&counter) {
                    Some(State::Concurrency { in_flight }) => u64::from(*in_flight),
                    Some(State::PerMinute { window: w, used }) if *w == window => *used,
                    Some(s @ State::Quota { used, .. }) if !s.expired(now_ms) => *used,
                    Some(s @ State::Started { at_ms, .. }) if !s.expired(now_ms) => {
                        u64::try_from((now_ms - at_ms) / 1000).unwrap_or(0)
                    }
                    _ => 0,
                }
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl RunRegistry for MemoryBackend {
    async fn sight_run(
        &self,
        tenant: &TenantId,
        run: &str,
        expires_ms: i64,
    ) -> Result<RunSighting, LimiterUnavailable> {
        Ok(self.sight_run_at(tenant, run, expires_ms, unix_ms()))
    }

    async fn count_refusal(&self, tenant: &TenantId, run: &str) {
        self.with_life(tenant, run, unix_ms(), |life| life.refusals += 1);
    }

    async fn end_run(
        &self,
        tenant: &TenantId,
        run: &str,
        end: RunEnd,
    ) -> Result<RunClaim, LimiterUnavailable> {
        Ok(self.end_run_at(tenant, run, end, unix_ms()))
    }

    async fn run_closed(&self, tenant: &TenantId, run: &str) -> Result<bool, LimiterUnavailable> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(runs
            .lives
            .get(&run_life_key(tenant, run))
            .is_some_and(|life| life.closed_ms.is_some()))
    }
}

impl MemoryBackend {
    /// Synchronous admit (no I/O) at the current time.
    pub fn admit_now(&self, keys: &[LimitKey], charge: Charge) -> Result<Admission, LimitDeny> {
        self.admit_at(keys, charge, unix_ms())
    }

    /// Checks all keys, then commits all, as of unix time `now_ms` (calendar windows are in the
    /// keys; `now_ms` decides wall time and expiry).
    pub fn admit_at(
        &self,
        keys: &[LimitKey],
        charge: Charge,
        now_ms: i64,
    ) -> Result<Admission, LimitDeny> {
        let now = self.mono_nanos();
        let minute = now / 60_000_000_000;
        let counters: Vec<CounterRef<'_>> = keys.iter().map(counter_of).collect();
        // Lock the shards involved in index order (no deadlock), decide, then commit.
        let mut shard_ids: Vec<usize> = counters.iter().map(|c| shard_of(*c)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = shard_ids
            .into_iter()
            .map(|id| (id, self.lock(id)))
            .collect();
        let mut updates: Vec<(usize, State)> = Vec::with_capacity(keys.len());
        let mut admission = Admission::default();
        let deny = |key: &LimitKey, estimate: Duration| {
            LimitDeny::for_key(key, now_ms.div_euclid(1000), estimate)
        };
        for (i, key) in keys.iter().enumerate() {
            let counter = counters[i];
            let id = shard_of(counter);
            let Some((_, shard)) = guards.iter().find(|(s, _)| *s == id) else {
                continue;
            };
            let current = shard.counters.get(&counter).filter(|s| !s.expired(now_ms));
            match key.kind {
                LimitKind::Rate {
                    per_period,
                    period_secs,
                    burst,
                } => {
                    let (interval, tolerance) = gcra(per_period, period_secs, burst);
                    let tat = match current {
                        Some(State::Rate { tat }) => (*tat).max(now),
                        _ => now,
                    };
                    let allow_at = tat.saturating_sub(tolerance);
                    if now < allow_at {
                        return Err(deny(key, Duration::from_nanos(allow_at - now)));
                    }
                    let new_tat = tat + interval;
                    let remaining = u32::try_from(
                        (tolerance + interval).saturating_sub(new_tat - now) / interval.max(1),
                    )
                    .unwrap_or(0);
                    if admission.headline.is_none_or(|h| remaining < h.remaining) {
                        admission.headline = Some(RateHeadline {
                            limit: per_period,
                            remaining,
                            reset_secs: super::whole_secs_up(Duration::from_nanos(new_tat - now)),
                        });
                    }
                    updates.push((i, State::Rate { tat: new_tat }));
                }
                LimitKind::Concurrency { max } => {
                    let in_flight = match current {
                        Some(State::Concurrency { in_flight }) => *in_flight,
                        _ => 0,
                    };
                    if in_flight >= max {
                        return Err(deny(key, Duration::from_secs(1)));
                    }
                    updates.push((
                        i,
                        State::Concurrency {
                            in_flight: in_flight + 1,
                        },
                    ));
                    admission.leases.push(key.clone());
                }
                LimitKind::TokensPerMinute { ceiling } => {
                    let used = match current {
                        Some(State::PerMinute { window, used }) if *window == minute => *used,
                        _ => 0,
                    };
                    if used.saturating_add(charge.tokens) > ceiling {
                        let next = (minute + 1) * 60_000_000_000;
                        return Err(deny(key, Duration::from_nanos(next - now)));
                    }
                    updates.push((
                        i,
                        State::PerMinute {
                            window: minute,
                            used: used + charge.tokens,
                        },
                    ));
                    admission.meter(key, minute, charge);
                }
                LimitKind::Quota {
                    measure, ceiling, ..
                } => {
                    let used = match current {
                        Some(State::Quota { used, .. }) => *used,
                        _ => 0,
                    };
                    let amount = charge.of(measure);
                    if used.saturating_add(amount) > ceiling {
                        return Err(deny(key, Duration::ZERO));
                    }
                    updates.push((
                        i,
                        State::Quota {
                            used: used + amount,
                            expires_ms: self.expiry_ms(key, now_ms),
                        },
                    ));
                    admission.meter(key, 0, charge);
                }
                LimitKind::WallTime { max_secs } => {
                    let at_ms = match current {
                        Some(State::Started { at_ms, .. }) => *at_ms,
                        _ => now_ms,
                    };
                    let limit_ms = i64::try_from(max_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                    if now_ms.saturating_sub(at_ms) > limit_ms {
                        return Err(deny(key, Duration::ZERO));
                    }
                    updates.push((
                        i,
                        State::Started {
                            at_ms,
                            expires_ms: self.expiry_ms(key, now_ms),
                        },
                    ));
                }
            }
        }
        for (i, state) in updates {
            let counter = counters[i];
            let id = shard_of(counter);
            if let Some((_, shard)) = guards.iter_mut().find(|(s, _)| *s == id) {
                match shard.counters.get_mut(&counter) {
                    Some(held) => *held = state,
                    None => {
                        shard.counters.insert(counter.owned(), state);
                    }
                }
                if shard.counters.len() >= shard.sweep_at.max(SWEEP_FLOOR) {
                    shard.counters.retain(|_, s| !s.expired(now_ms));
                    shard.sweep_at = shard.counters.len() * 2;
                }
            }
        }
        admission.reserved = charge;
        Ok(admission)
    }

    /// Settles reservations to `used`. A per-minute reservation is settled only in its own
    /// minute (a later minute starts afresh).
    pub fn settle_now(&self, admission: &Admission, used: Charge) {
        for m in &admission.metered {
            let Some(measure) = m.key.kind.measure() else {
                continue;
            };
            let counter = counter_of(&m.key);
            let mut shard = self.lock(shard_of(counter));
            let settle = |u: &mut u64| {
                *u = u
                    .saturating_add(used.of(measure))
                    .saturating_sub(m.reserved);
            };
            match shard.counters.get_mut(&counter) {
                Some(State::PerMinute { window, used: u }) if *window == m.window => settle(u),
                Some(State::Quota { used: u, .. }) => settle(u),
                _ => {}
            }
        }
    }

    /// Gives back concurrency slots.
    pub fn release_now(&self, leases: &[LimitKey]) {
        for key in leases {
            let counter = counter_of(key);
            let mut shard = self.lock(shard_of(counter));
            if let Some(State::Concurrency { in_flight }) = shard.counters.get_mut(&counter) {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::token::RunBudget;
    use crate::ids::{TenantId, WorkloadId};
    use crate::limits::calendar::TenantCalendar;
    use crate::limits::{keys_for, CallKind, Ceilings, Measure, Scope, Subject, Window};

    /// 2026-11-22T23:30:00Z.
    const NOW: i64 = 1_795_390_200;

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).expect("id")
    }

    /// Keys as of the real current time: the tests that use them admit with `admit_now`, and a
    /// quota key is only valid until the end of its calendar period (keys built for a fixed
    /// date would expire once that date has passed).
    fn keys(tenant: &str, c: &Ceilings, call: CallKind) -> Vec<LimitKey> {
        let (t, w) = (tid(tenant), WorkloadId::new("bot").expect("id"));
        let who = Subject {
            tenant: &t,
            workload: &w,
            run: None,
        };
        keys_for(
            who,
            c,
            None,
            &TenantCalendar::utc(),
            crate::clock::unix_now_i64(),
            call,
        )
    }

    fn tokens(n: u64) -> Charge {
        Charge {
            tokens: n,
            ..Charge::default()
        }
    }

    #[test]
    fn rate_with_burst_then_refusal_with_retry_after() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            requests_per_second: Some(2),
            burst: Some(3),
            ..Default::default()
        };
        let keys = keys("acme", &c, CallKind::Tool);
        for i in 0..3 {
            assert!(
                m.admit_now(&keys, Charge::default()).is_ok(),
                "burst request {i}"
            );
        }
        let deny = m
            .admit_now(&keys, Charge::default())
            .expect_err("over the burst");
        let retry = deny.retry_after.expect("rates say when");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_millis(500),
            "{deny:?}"
        );
        assert_eq!(deny.key.scope, Scope::Tenant(tid("acme")));
    }

    #[test]
    fn already_over_reads_the_rate_without_consuming_and_only_for_its_tenant() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            requests_per_second: Some(1),
            burst: Some(2),
            ..Default::default()
        };
        let acme = keys("acme", &c, CallKind::Tool);
        let globex = keys("globex", &c, CallKind::Tool);
        // Never seen, then within the burst: not over, and asking uses nothing.
        for _ in 0..5 {
            assert_eq!(m.already_over(&|| acme.clone()), None);
        }
        assert!(m.admit_now(&acme, Charge::default()).is_ok());
        assert_eq!(m.already_over(&|| acme.clone()), None);
        assert!(m.admit_now(&acme, Charge::default()).is_ok());
        // Burst spent: over, with the same ceiling and a retry time as the full check.
        let over = m.already_over(&|| acme.clone()).expect("over the burst");
        let full = m
            .admit_now(&acme, Charge::default())
            .expect_err("the full check agrees");
        assert_eq!(over.key, full.key);
        assert!(over.retry_after.is_some_and(|r| r > Duration::ZERO));
        // Another tenant with the same ceilings is untouched.
        assert_eq!(m.already_over(&|| globex.clone()), None);
        assert!(m.admit_now(&globex, Charge::default()).is_ok());
        // Only rate keys are read: a concurrency ceiling at its maximum is left to the full check.
        let conc = keys(
            "initech",
            &Ceilings {
                concurrency: Some(1),
                ..Default::default()
            },
            CallKind::Tool,
        );
        let held = m.admit_now(&conc, Charge::default()).expect("first slot");
        assert_eq!(m.already_over(&|| conc.clone()), None);
        m.release_now(&held.leases);
    }

    #[test]
    fn concurrency_leases_and_all_or_nothing() {
        let m = MemoryBackend::default();
        let tenant = Ceilings {
            concurrency: Some(2),
            ..Default::default()
        };
        let workload = Ceilings {
            concurrency: Some(1),
            ..Default::default()
        };
        let acme = tid("acme");
        let (bot, other) = (
            WorkloadId::new("bot").expect("id"),
            WorkloadId::new("other").expect("id"),
        );
        let cal = TenantCalendar::utc();
        let who = |w| Subject {
            tenant: &acme,
            workload: w,
            run: None,
        };
        let keys_bot = keys_for(
            who(&bot),
            &tenant,
            Some(&workload),
            &cal,
            crate::clock::unix_now_i64(),
            CallKind::Tool,
        );
        let a = m.admit_now(&keys_bot, Charge::default()).expect("first");
        // The workload ceiling refuses; the tenant slot it would have taken is not consumed.
        assert!(m.admit_now(&keys_bot, Charge::default()).is_err());
        let keys_other = keys_for(
            who(&other),
            &tenant,
            None,
            &cal,
            crate::clock::unix_now_i64(),
            CallKind::Tool,
        );
        let b = m
            .admit_now(&keys_other, Charge::default())
            .expect("tenant has one slot left");
        assert!(
            m.admit_now(&keys_other, Charge::default()).is_err(),
            "tenant full"
        );
        m.release_now(&a.leases);
        assert!(
            m.admit_now(&keys_other, Charge::default()).is_ok(),
            "slot given back"
        );
        m.release_now(&b.leases);
    }

    #[test]
    fn tokens_reserve_then_settle() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            tokens_per_minute: Some(200),
            ..Default::default()
        };
        let llm = keys("acme", &c, CallKind::Llm);
        let a = m.admit_now(&llm, tokens(150)).expect("150 of 200");
        assert!(
            m.admit_now(&llm, tokens(150)).is_err(),
            "reserved, not yet settled"
        );
        m.settle_now(&a, tokens(26));
        let b = m
            .admit_now(&llm, tokens(150))
            .expect("26 + 150 fits after settling");
        m.settle_now(&b, tokens(26));
        let deny = m.admit_now(&llm, tokens(150)).expect_err("52 + 150 > 200");
        assert!(deny
            .retry_after
            .is_some_and(|r| r <= Duration::from_secs(60)));
        // A non-LLM call has no token key at all.
        assert!(keys("acme", &c, CallKind::Tool).is_empty());
    }

    #[test]
    fn tenants_never_share_counters() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            requests_per_second: Some(1),
            cost_per_day_micros: Some(100),
            ..Default::default()
        };
        let acme = keys("acme", &c, CallKind::Llm);
        let globex = keys("globex", &c, CallKind::Llm);
        let cost = Charge {
            cost_micros: 100,
            ..Charge::default()
        };
        assert!(m.admit_now(&acme, cost).is_ok());
        assert!(
            m.admit_now(&acme, Charge::default()).is_err(),
            "acme exhausted"
        );
        assert!(
            m.admit_now(&globex, cost).is_ok(),
            "globex untouched by acme"
        );
        assert_eq!(acme[0].to_string(), "tp:{acme}:rate_s");
        let read = futures_read(&m, &globex);
        assert_eq!(read, vec![0, 100]);
    }

    /// A counter is found by the identity its key name spells (two keys share a counter exactly
    /// when they share a name), through a borrowed key that hashes as the owned one; the
    /// ceiling's value is not part of it.
    #[test]
    fn counters_are_identified_as_their_key_names_are() {
        use hashbrown::Equivalent;
        let every = Ceilings {
            requests_per_second: Some(5),
            requests_per_minute: Some(50),
            concurrency: Some(2),
            tokens_per_minute: Some(1_000),
            cost_per_day_micros: Some(10),
            cost_per_month_micros: Some(100),
            ..Default::default()
        };
        let mut all = keys("acme", &every, CallKind::Llm);
        all.extend(keys("acme", &every, CallKind::Tool));
        all.extend(keys("globex", &every, CallKind::Llm));
        assert!(all.len() > 8, "{all:?}");
        let hasher = hashbrown::DefaultHashBuilder::default();
        for a in &all {
            let counter = counter_of(a);
            assert_eq!(
                hasher.hash_one(counter),
                hasher.hash_one(counter.owned()),
                "{a}"
            );
            for b in &all {
                assert_eq!(
                    counter.equivalent(&counter_of(b).owned()),
                    a.to_string() == b.to_string(),
                    "{a} against {b}"
                );
            }
        }
        // A changed ceiling is the same counter.
        let tighter = Ceilings {
            requests_per_second: Some(1),
            requests_per_minute: Some(7),
            concurrency: Some(1),
            tokens_per_minute: Some(3),
            cost_per_day_micros: Some(1),
            cost_per_month_micros: Some(2),
            ..Default::default()
        };
        let mut counters = Counters::default();
        for key in &all {
            counters.insert(counter_of(key).owned(), State::Concurrency { in_flight: 0 });
        }
        for key in keys("acme", &tighter, CallKind::Llm) {
            assert!(counters.get(&counter_of(&key)).is_some(), "{key}");
        }
    }

    fn futures_read(m: &MemoryBackend, keys: &[LimitKey]) -> Vec<u64> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .block_on(m.read(keys))
            .expect("read")
    }

    #[test]
    fn concurrent_admissions_never_overshoot() {
        let m = std::sync::Arc::new(MemoryBackend::default());
        let c = Ceilings {
            requests_per_minute: Some(50),
            cost_per_month_micros: Some(1_000),
            ..Default::default()
        };
        let keys = keys("acme", &c, CallKind::Llm);
        let charge = Charge {
            cost_micros: 7,
            ..Charge::default()
        };
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .filter(|_| m.admit_now(&keys, charge).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 50, "the request rate binds first (50 × 7 < 1000)");
    }

    #[test]
    fn daily_cost_rolls_over_at_local_midnight_and_the_month_does_not() {
        let m = MemoryBackend::default();
        let cal = TenantCalendar::new("Asia/Tokyo").expect("tz");
        let c = Ceilings {
            cost_per_day_micros: Some(1_000),
            cost_per_month_micros: Some(1_500),
            ..Default::default()
        };
        let (t, w) = (tid("acme"), WorkloadId::new("bot").expect("id"));
        let who = Subject {
            tenant: &t,
            workload: &w,
            run: None,
        };
        // 2026-11-22T14:59:59Z is 23:59:59 in Tokyo; one second later it is the 23rd there.
        let before = 1_795_359_599;
        let cost = |n| Charge {
            cost_micros: n,
            ..Charge::default()
        };
        let day1 = keys_for(who, &c, None, &cal, before, CallKind::Llm);
        m.admit_at(&day1, cost(1_000), before * 1000)
            .expect("the whole day");
        let deny = m
            .admit_at(&day1, cost(1), before * 1000)
            .expect_err("day spent");
        assert!(matches!(
            deny.key.kind,
            LimitKind::Quota {
                window: Window::Day(_),
                measure: Measure::Cost,
                ..
            }
        ));
        assert_eq!(
            deny.retry_after,
            Some(Duration::from_secs(1)),
            "midnight is a second away"
        );
        let day2 = keys_for(who, &c, None, &cal, before + 1, CallKind::Llm);
        m.admit_at(&day2, cost(500), (before + 1) * 1000)
            .expect("a new day");
        let deny = m
            .admit_at(&day2, cost(1), (before + 1) * 1000)
            .expect_err("but the month is spent");
        assert!(matches!(
            deny.key.kind,
            LimitKind::Quota {
                window: Window::Month(_),
                ..
            }
        ));
    }

    #[test]
    fn run_budgets_count_tool_calls_and_wall_time_per_run() {
        let m = MemoryBackend::default();
        let budget = RunBudget {
            tool_calls: Some(2),
            wall_time_s: Some(60),
            ..RunBudget::default()
        };
        let (t, w) = (tid("acme"), WorkloadId::new("bot").expect("id"));
        let run = |id| Subject {
            tenant: &t,
            workload: &w,
            run: Some((id, &budget)),
        };
        let cal = TenantCalendar::utc();
        let start = NOW * 1000;
        let k1 = keys_for(
            run("r1"),
            &Ceilings::default(),
            None,
            &cal,
            NOW,
            CallKind::Tool,
        );
        let one = Charge {
            tool_calls: 1,
            ..Charge::default()
        };
        m.admit_at(&k1, one, start).expect("first tool call");
        m.admit_at(&k1, one, start).expect("second tool call");
        let deny = m
            .admit_at(&k1, one, start)
            .expect_err("third is over the run's two");
        assert_eq!(deny.retry_after, None, "a run's budget does not come back");
        // Another run has its own budget; the first run's wall time runs from its first call.
        let k2 = keys_for(
            run("r2"),
            &Ceilings::default(),
            None,
            &cal,
            NOW,
            CallKind::Tool,
        );
        m.admit_at(&k2, one, start + 60_000).expect("r2 starts now");
        let deny = m
            .admit_at(&k1, Charge::default(), start + 60_001)
            .expect_err("r1 is past 60 s");
        assert!(matches!(deny.key.kind, LimitKind::WallTime { .. }));
        m.admit_at(&k2, Charge::default(), start + 60_001)
            .expect("r2 is young");
    }

    #[test]
    fn expired_counters_are_swept() {
        let m = MemoryBackend::new(Duration::from_secs(1));
        let budget = RunBudget {
            tool_calls: Some(5),
            ..RunBudget::default()
        };
        let (t, w) = (tid("acme"), WorkloadId::new("bot").expect("id"));
        let cal = TenantCalendar::utc();
        let one = Charge {
            tool_calls: 1,
            ..Charge::default()
        };
        // Three times what the shards hold before they sweep: unswept, all of them would stay.
        let total = 3 * SWEEP_FLOOR * SHARDS;
        for i in 0..total {
            let id = format!("run-{i}");
            let who = Subject {
                tenant: &t,
                workload: &w,
                run: Some((&id, &budget)),
            };
            let keys = keys_for(who, &Ceilings::default(), None, &cal, NOW, CallKind::Tool);
            // Each run is seen once, two seconds after the previous: all earlier ones expired.
            m.admit_at(&keys, one, (NOW + 2 * i as i64) * 1000)
                .expect("admit");
        }
        let held: usize = (0..SHARDS).map(|i| m.lock(i).counters.len()).sum();
        // A shard sweeps when it reaches the floor, so none holds much more than that.
        assert!(
            held <= SWEEP_FLOOR * SHARDS + SHARDS,
            "{held} of {total} counters held"
        );
    }

    #[test]
    fn a_run_starts_once_and_is_summarized_once_after_its_latest_expiry() {
        let m = MemoryBackend::new(Duration::from_secs(60));
        let (acme, globex) = (tid("acme"), tid("globex"));
        let at = |s: i64| (NOW + s) * 1000;
        let first = m.sight_run_at(&acme, "r1", at(10), at(0));
        assert_eq!(
            first,
            RunSighting {
                first: true,
                closed: false
            }
        );
        assert!(!m.sight_run_at(&acme, "r1", at(20), at(1)).first);
        // The same run id under another tenant is another run.
        assert!(m.sight_run_at(&globex, "r1", at(10), at(1)).first);
        m.with_life(&acme, "r1", at(1), |l| l.refusals += 1);
        // A later token of the run moved its expiry: not over at the first token's expiry.
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Expired, at(11)),
            RunClaim::NotYet { expires_ms: at(20) }
        );
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Expired, at(21)),
            RunClaim::Claimed(RunLedger {
                start_ms: Some(at(0)),
                end_ms: at(20),
                requests: 2,
                refusals: 1,
            })
        );
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Expired, at(22)),
            RunClaim::Taken
        );
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Closed, at(22)),
            RunClaim::Taken
        );
    }

    #[test]
    fn closing_ends_a_live_run_at_once_and_refuses_its_later_requests() {
        let m = MemoryBackend::new(Duration::from_secs(60));
        let (acme, globex) = (tid("acme"), tid("globex"));
        let at = |s: i64| (NOW + s) * 1000;
        m.sight_run_at(&acme, "r1", at(100), at(0));
        // Closing globex's `r1` touches nothing of acme's.
        assert!(matches!(
            m.end_run_at(&globex, "r1", RunEnd::Closed, at(1)),
            RunClaim::Claimed(RunLedger {
                start_ms: None,
                requests: 0,
                ..
            })
        ));
        assert!(!m.sight_run_at(&acme, "r1", at(100), at(2)).closed);
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Closed, at(3)),
            RunClaim::Claimed(RunLedger {
                start_ms: Some(at(0)),
                end_ms: at(3),
                requests: 2,
                refusals: 0,
            })
        );
        assert!(m.sight_run_at(&acme, "r1", at(100), at(4)).closed);
        // A close learned elsewhere (the shared backend this one stands in for) refuses the
        // run's later sightings, and another tenant's run of that id is not touched.
        m.record_closed_at(&acme, "r2", at(4));
        assert!(m.sight_run_at(&acme, "r2", at(100), at(5)).closed);
        assert!(!m.sight_run_at(&globex, "r2", at(100), at(5)).closed);
        // Its expiry later finds it already summarized.
        assert_eq!(
            m.end_run_at(&acme, "r1", RunEnd::Expired, at(101)),
            RunClaim::Taken
        );
    }
}
