//! In-memory counters for a single proxy: sharded locks (no global lock), GCRA for rates,
//! plain counters for concurrency.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Admission, AdmitError, LimitBackend, LimitDeny, LimitKey, LimitKind, RateHeadline};

const SHARDS: usize = 64;

#[derive(Debug)]
enum State {
    /// GCRA theoretical arrival time, in nanoseconds since `epoch`.
    Rate { tat: u64 },
    /// In-flight count.
    Concurrency { in_flight: u32 },
    /// Tokens used or reserved in minute `window`.
    Tokens { window: u64, used: u64 },
}

/// Counters in this process.
#[derive(Debug)]
pub struct MemoryBackend {
    shards: Vec<Mutex<HashMap<LimitKey, State>>>,
    epoch: Instant,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
        }
    }
}

fn shard_of(key: &LimitKey) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// GCRA parameters in nanoseconds: emission interval and tolerance.
fn gcra(per_period: u32, period_secs: u32, burst: u32) -> (u64, u64) {
    let interval = (u64::from(period_secs) * 1_000_000_000) / u64::from(per_period.max(1));
    let tolerance = interval * u64::from(burst.max(1) - 1);
    (interval, tolerance)
}

impl MemoryBackend {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[async_trait::async_trait]
impl LimitBackend for MemoryBackend {
    async fn admit(&self, keys: &[LimitKey], tokens: u64) -> Result<Admission, AdmitError> {
        self.admit_now(keys, tokens).map_err(AdmitError::Limited)
    }

    async fn settle(&self, admission: &Admission, used: u64) {
        self.settle_now(admission, used);
    }

    async fn release(&self, admission: &Admission) {
        self.release_now(&admission.leases);
    }
}

impl MemoryBackend {
    /// Synchronous admit (no I/O): checks all keys, then commits all.
    pub fn admit_now(&self, keys: &[LimitKey], tokens: u64) -> Result<Admission, LimitDeny> {
        let now = self.now();
        let window = now / 60_000_000_000;
        // Lock the shards involved in index order (no deadlock), decide, then commit.
        let mut shard_ids: Vec<usize> = keys.iter().map(shard_of).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, HashMap<LimitKey, State>>)> =
            Vec::new();
        for id in shard_ids {
            // A poisoned shard only means another thread panicked mid-update; counters stay usable.
            let guard = self.shards[id].lock().unwrap_or_else(|p| p.into_inner());
            guards.push((id, guard));
        }
        let mut updates: Vec<(usize, LimitKey, State)> = Vec::with_capacity(keys.len());
        let mut admission = Admission::default();
        for key in keys {
            let id = shard_of(key);
            let Some((_, shard)) = guards.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            match key.kind {
                LimitKind::Rate {
                    per_period,
                    period_secs,
                    burst,
                } => {
                    let (interval, tolerance) = gcra(per_period, period_secs, burst);
                    let tat = match shard.get(key) {
                        Some(State::Rate { tat }) => (*tat).max(now),
                        _ => now,
                    };
                    let allow_at = tat.saturating_sub(tolerance);
                    if now < allow_at {
                        return Err(LimitDeny {
                            key: key.clone(),
                            retry_after: Duration::from_nanos(allow_at - now),
                        });
                    }
                    let new_tat = tat + interval;
                    let remaining = u32::try_from(
                        (tolerance + interval).saturating_sub(new_tat - now) / interval.max(1),
                    )
                    .unwrap_or(0);
                    let headline = RateHeadline {
                        limit: per_period,
                        remaining,
                        reset_secs: Duration::from_nanos(new_tat - now).as_secs().max(1),
                    };
                    if admission.headline.is_none_or(|h| remaining < h.remaining) {
                        admission.headline = Some(headline);
                    }
                    updates.push((id, key.clone(), State::Rate { tat: new_tat }));
                }
                LimitKind::Concurrency { max } => {
                    let in_flight = match shard.get(key) {
                        Some(State::Concurrency { in_flight }) => *in_flight,
                        _ => 0,
                    };
                    if in_flight >= max {
                        return Err(LimitDeny {
                            key: key.clone(),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    updates.push((
                        id,
                        key.clone(),
                        State::Concurrency {
                            in_flight: in_flight + 1,
                        },
                    ));
                    admission.leases.push(key.clone());
                }
                LimitKind::Tokens { per_minute } => {
                    let used = match shard.get(key) {
                        Some(State::Tokens { window: w, used }) if *w == window => *used,
                        _ => 0,
                    };
                    if used + tokens > per_minute {
                        let next = (window + 1) * 60_000_000_000;
                        return Err(LimitDeny {
                            key: key.clone(),
                            retry_after: Duration::from_nanos(next - now),
                        });
                    }
                    updates.push((
                        id,
                        key.clone(),
                        State::Tokens {
                            window,
                            used: used + tokens,
                        },
                    ));
                    admission.token_windows.push((key.clone(), window));
                    admission.reserved_tokens = tokens;
                }
            }
        }
        for (id, key, state) in updates {
            if let Some((_, shard)) = guards.iter_mut().find(|(i, _)| *i == id) {
                shard.insert(key, state);
            }
        }
        Ok(admission)
    }

    /// Settles token reservations made in their window; a later window starts afresh.
    pub fn settle_now(&self, admission: &Admission, used: u64) {
        for (key, window) in &admission.token_windows {
            let mut shard = self.shards[shard_of(key)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(State::Tokens { window: w, used: u }) = shard.get_mut(key) {
                if w == window {
                    *u = (*u + used).saturating_sub(admission.reserved_tokens);
                }
            }
        }
    }

    /// Gives back concurrency slots.
    pub fn release_now(&self, leases: &[LimitKey]) {
        for key in leases {
            let mut shard = self.shards[shard_of(key)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(State::Concurrency { in_flight }) = shard.get_mut(key) {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{TenantId, WorkloadId};
    use crate::limits::{keys_for, Ceilings, Scope};

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).expect("id")
    }

    #[test]
    fn rate_with_burst_then_refusal_with_retry_after() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            requests_per_second: Some(2),
            burst: Some(3),
            ..Default::default()
        };
        let keys = keys_for(
            &tid("acme"),
            &WorkloadId::new("bot").expect("id"),
            &c,
            None,
            false,
        );
        for i in 0..3 {
            assert!(m.admit_now(&keys, 0).is_ok(), "burst request {i}");
        }
        let deny = m.admit_now(&keys, 0).expect_err("over the burst");
        assert!(
            deny.retry_after > Duration::ZERO && deny.retry_after <= Duration::from_millis(500),
            "{deny:?}"
        );
        assert_eq!(deny.key.scope, Scope::Tenant(tid("acme")));
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
        let bot = WorkloadId::new("bot").expect("id");
        let other = WorkloadId::new("other").expect("id");
        let keys_bot = keys_for(&tid("acme"), &bot, &tenant, Some(&workload), false);
        let a = m.admit_now(&keys_bot, 0).expect("first");
        // The workload ceiling refuses; the tenant slot it would have taken is not consumed.
        assert!(m.admit_now(&keys_bot, 0).is_err());
        let keys_other = keys_for(&tid("acme"), &other, &tenant, None, false);
        let b = m
            .admit_now(&keys_other, 0)
            .expect("tenant has one slot left");
        assert!(m.admit_now(&keys_other, 0).is_err(), "tenant full");
        m.release_now(&a.leases);
        assert!(m.admit_now(&keys_other, 0).is_ok(), "slot given back");
        m.release_now(&b.leases);
    }

    #[test]
    fn tokens_reserve_then_settle() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            tokens_per_minute: Some(200),
            ..Default::default()
        };
        let keys = keys_for(
            &tid("acme"),
            &WorkloadId::new("bot").expect("id"),
            &c,
            None,
            true,
        );
        let a = m.admit_now(&keys, 150).expect("150 of 200");
        assert!(
            m.admit_now(&keys, 150).is_err(),
            "reserved, not yet settled"
        );
        m.settle_now(&a, 26);
        let b = m
            .admit_now(&keys, 150)
            .expect("26 + 150 fits after settling");
        m.settle_now(&b, 26);
        let deny = m.admit_now(&keys, 150).expect_err("52 + 150 > 200");
        assert!(deny.retry_after <= Duration::from_secs(60));
        // A non-LLM call has no token key at all.
        assert!(keys_for(
            &tid("acme"),
            &WorkloadId::new("bot").expect("id"),
            &c,
            None,
            false
        )
        .is_empty());
    }

    #[test]
    fn tenants_never_share_counters() {
        let m = MemoryBackend::default();
        let c = Ceilings {
            requests_per_second: Some(1),
            ..Default::default()
        };
        let w = WorkloadId::new("bot").expect("id");
        let acme = keys_for(&tid("acme"), &w, &c, None, false);
        let globex = keys_for(&tid("globex"), &w, &c, None, false);
        assert!(m.admit_now(&acme, 0).is_ok());
        assert!(m.admit_now(&acme, 0).is_err(), "acme exhausted");
        assert!(m.admit_now(&globex, 0).is_ok(), "globex untouched by acme");
        assert_eq!(acme[0].to_string(), "tp:{acme}:rate_s");
    }

    #[test]
    fn concurrent_admissions_never_overshoot() {
        let m = std::sync::Arc::new(MemoryBackend::default());
        let c = Ceilings {
            requests_per_minute: Some(50),
            ..Default::default()
        };
        let keys = keys_for(
            &tid("acme"),
            &WorkloadId::new("bot").expect("id"),
            &c,
            None,
            false,
        );
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..100).filter(|_| m.admit_now(&keys, 0).is_ok()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 50);
    }
}
