//! Rate refusals the shared counters gave, remembered until the moment they named, so that a
//! tenant flooding past its request rate is refused by this replica without a Redis call per
//! request. Without it, every refused request of a flood costs a full admission and a script
//! call, and Redis's one thread is shared by every tenant of every replica: a flooding tenant
//! would slow everyone's admissions.
//!
//! Sound because a rate counter (GCRA) only moves forward: its arrival time grows with every
//! admission, by any replica, and nothing lowers it (a refusal writes nothing, settlements never
//! touch rate keys). So a request Redis refused, saying "not before `retry`", would be refused
//! by Redis too until then. The moment is counted from when the call was *sent*, which is before
//! Redis read its clock: the remembered refusal never outlasts Redis's own. A changed ceiling
//! is another key here (the key includes its rate), so a reload that raises it is not held back
//! by a refusal under the old one. What this replica cannot know is a counter lost in Redis (a
//! flush, a restart without persistence): a remembered refusal then stands until its moment,
//! which is the `Retry-After` the client was already given.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{LimitKey, LimitKind};

const SHARDS: usize = 16;
/// At most this many remembered refusals per shard. Past it, those that have passed are swept
/// (at most every [`SWEEP_INTERVAL`]), and if the shard is still full a new refusal is not
/// remembered (its requests keep asking Redis, which stays correct): the map cannot grow with
/// the number of run ids a tenant mints, nor a flood of them cost a sweep each.
const SHARD_CAPACITY: usize = 4096;
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Shard {
    moments: HashMap<LimitKey, Instant>,
    /// No sweep before this: nothing remembered passes earlier, or one was just made.
    next_sweep: Instant,
}

/// Rate keys refused by the shared counters, each with the moment it admits again.
#[derive(Debug)]
pub struct KnownRefusals {
    shards: Vec<Mutex<Shard>>,
    hasher: hashbrown::DefaultHashBuilder,
    epoch: Instant,
    /// The latest remembered moment, in nanoseconds since `epoch`: once it has passed, every
    /// remembered refusal has, and a request does not even build its keys.
    latest: AtomicU64,
}

impl Default for KnownRefusals {
    fn default() -> Self {
        let epoch = Instant::now();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        moments: HashMap::new(),
                        next_sweep: epoch,
                    })
                })
                .collect(),
            hasher: Default::default(),
            epoch,
            latest: AtomicU64::new(0),
        }
    }
}

impl KnownRefusals {
    fn shard(&self, key: &LimitKey) -> MutexGuard<'_, Shard> {
        let id = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-update; entries stay usable.
        self.shards[id].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Remembers that `key` (a rate key) admits nothing before `until`. Other kinds are not
    /// remembered: a spent budget or a held slot can come back (a settlement, a release).
    pub fn remember(&self, key: &LimitKey, until: Instant, now: Instant) {
        if !matches!(key.kind, LimitKind::Rate { .. }) || until <= now {
            return;
        }
        let mut shard = self.shard(key);
        if shard.moments.len() >= SHARD_CAPACITY && !shard.moments.contains_key(key) {
            if now < shard.next_sweep {
                return;
            }
            shard.moments.retain(|_, moment| *moment > now);
            let first_to_pass = shard.moments.values().min().copied().unwrap_or(now);
            shard.next_sweep = first_to_pass.max(now + SWEEP_INTERVAL);
            if shard.moments.len() >= SHARD_CAPACITY {
                return;
            }
        }
        let moment = shard.moments.entry(key.clone()).or_insert(until);
        // Two refusals of one key name two moments; the later is the true one.
        *moment = (*moment).max(until);
        self.latest.fetch_max(self.nanos(until), Ordering::Relaxed);
    }

    /// The first of `rate_keys` (built only while some refusal is remembered) refused until a
    /// moment after `now`, and how long until then.
    pub fn refusal(
        &self,
        rate_keys: &dyn Fn() -> Vec<LimitKey>,
        now: Instant,
    ) -> Option<(LimitKey, Duration)> {
        if self.nanos(now) >= self.latest.load(Ordering::Relaxed) {
            return None;
        }
        for key in rate_keys() {
            let mut shard = self.shard(&key);
            match shard.moments.get(&key) {
                Some(until) if *until > now => {
                    let wait = *until - now;
                    drop(shard);
                    return Some((key, wait));
                }
                Some(_) => {
                    shard.moments.remove(&key);
                }
                None => {}
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::{TenantId, WorkloadId};
    use crate::limits::Scope;

    fn rate(scope: Scope, per_period: u32) -> LimitKey {
        LimitKey {
            scope,
            kind: LimitKind::Rate {
                per_period,
                period_secs: 60,
                burst: 1,
            },
        }
    }

    fn tenant(name: &str) -> Scope {
        Scope::Tenant(TenantId::new(name).unwrap())
    }

    #[test]
    fn a_refusal_stands_for_its_own_key_until_its_moment_and_not_after() {
        let known = KnownRefusals::default();
        let now = Instant::now();
        let acme = rate(tenant("acme"), 5);
        let globex = rate(tenant("globex"), 5);
        // Nothing remembered: the keys are not even built.
        assert_eq!(known.refusal(&|| unreachable!("no keys built"), now), None);
        known.remember(&acme, now + Duration::from_secs(2), now);
        assert_eq!(
            known.refusal(&|| vec![acme.clone()], now + Duration::from_millis(500)),
            Some((acme.clone(), Duration::from_millis(1500)))
        );
        // Another tenant's key with the same ceiling, and acme's workload key, are not refused.
        let workload = rate(
            Scope::Workload(
                TenantId::new("acme").unwrap(),
                WorkloadId::new("bot").unwrap(),
            ),
            5,
        );
        assert_eq!(
            known.refusal(&|| vec![globex.clone(), workload.clone()], now),
            None
        );
        // A changed ceiling is another key: a raised one is not held back by the old refusal.
        assert_eq!(known.refusal(&|| vec![rate(tenant("acme"), 50)], now), None);
        // At its moment, the refusal is over, and forgotten when next asked (while another
        // still stands).
        known.remember(&globex, now + Duration::from_secs(5), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(known.refusal(&|| vec![acme.clone()], later), None);
        assert!(!known.shard(&acme).moments.contains_key(&acme));
        // Once every moment has passed, requests build no keys.
        let last = now + Duration::from_secs(5);
        assert_eq!(known.refusal(&|| unreachable!("no keys built"), last), None);
    }

    #[test]
    fn the_later_of_two_moments_stands_and_other_kinds_are_never_remembered() {
        let known = KnownRefusals::default();
        let now = Instant::now();
        let acme = rate(tenant("acme"), 5);
        known.remember(&acme, now + Duration::from_secs(3), now);
        known.remember(&acme, now + Duration::from_secs(1), now);
        let found = known.refusal(&|| vec![acme.clone()], now + Duration::from_secs(2));
        assert_eq!(found, Some((acme, Duration::from_secs(1))));
        // A concurrency slot or a budget can come back at any moment: never remembered.
        let slots = LimitKey {
            scope: tenant("acme"),
            kind: LimitKind::Concurrency { max: 1 },
        };
        known.remember(&slots, now + Duration::from_secs(60), now);
        assert_eq!(known.refusal(&|| vec![slots.clone()], now), None);
        // A moment already past is not remembered either.
        let past = rate(tenant("initech"), 5);
        known.remember(&past, now, now);
        assert_eq!(known.refusal(&|| vec![past.clone()], now), None);
    }

    #[test]
    fn a_full_shard_sweeps_what_has_passed_and_otherwise_remembers_nothing_more() {
        let known = KnownRefusals::default();
        let now = Instant::now();
        let run = |i: usize| {
            rate(
                Scope::Run(TenantId::new("acme").unwrap(), format!("r{i}")),
                5,
            )
        };
        // Twice the capacity in refusals that stand a minute: every shard fills, and stops there.
        let total = SHARDS * SHARD_CAPACITY * 2;
        for i in 0..total {
            known.remember(&run(i), now + Duration::from_secs(60), now);
        }
        let held: usize = known
            .shards
            .iter()
            .map(|s| s.lock().unwrap().moments.len())
            .sum();
        assert_eq!(held, SHARDS * SHARD_CAPACITY);
        let fresh = run(total + 1);
        known.remember(&fresh, now + Duration::from_secs(1), now);
        assert_eq!(known.refusal(&|| vec![fresh.clone()], now), None);
        // Once they have passed, a full shard sweeps them and makes room.
        let later = now + Duration::from_secs(61);
        known.remember(&fresh, later + Duration::from_secs(1), later);
        assert!(known.refusal(&|| vec![fresh.clone()], later).is_some());
    }
}
