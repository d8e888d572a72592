//! Counters in Redis, shared by every replica. One Lua script checks and updates every ceiling
//! of a request atomically (all of a tenant's keys share the `{tenant}` hash tag, so they live in
//! one Redis Cluster slot), using Redis's clock so replicas agree on time. Concurrency slots are
//! sorted-set members that expire, so a crashed replica cannot leak them. Every call is
//! time-boxed; when Redis cannot be reached the request is refused (`limiter_unavailable`), or,
//! when configured, checked against local counters instead (counted and logged).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use super::memory::MemoryBackend;
use super::{Admission, AdmitError, LimitBackend, LimitDeny, LimitKey, LimitKind, RateHeadline};
use crate::metrics::METRICS;

const ADMIT: &str = r#"
-- ARGV[1] lease id, ARGV[2] lease ttl (ms); then per key: kind, a, b
-- kind 1 = rate (a = interval us, b = tolerance us); kind 2 = concurrency (a = max);
-- kind 3 = tokens per minute (a = ceiling, b = reservation), a hash {w = minute, u = used}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
local tats = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 3
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  if kind == 1 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if now < tat - b then return {0, i, tat - b - now} end
    tats[i] = tat + a
  elseif kind == 2 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now / 1000)
    if redis.call('ZCARD', KEYS[i]) >= a then return {0, i, 1000000} end
  else
    local w = math.floor(now / 60000000)
    local cur = redis.call('HMGET', KEYS[i], 'w', 'u')
    local used = 0
    if tonumber(cur[1]) == w then used = tonumber(cur[2]) or 0 end
    if used + b > a then return {0, i, (w + 1) * 60000000 - now} end
    tats[i] = used + b
  end
end
local out = {1}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 3
  local kind = tonumber(ARGV[base + 1])
  if kind == 1 then
    local a = tonumber(ARGV[base + 2])
    local b = tonumber(ARGV[base + 3])
    redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
    table.insert(out, math.floor((b + a - (tats[i] - now)) / a))
    table.insert(out, tats[i] - now)
  elseif kind == 2 then
    redis.call('ZADD', KEYS[i], now / 1000 + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], ttl)
    table.insert(out, -1)
    table.insert(out, 0)
  else
    local w = math.floor(now / 60000000)
    redis.call('HSET', KEYS[i], 'w', w, 'u', tats[i])
    redis.call('PEXPIRE', KEYS[i], 120000)
    table.insert(out, -1)
    table.insert(out, w)
  end
end
return out
"#;

const SETTLE: &str = r#"
-- Ends a request in one round trip. ARGV[1] window of the token reservation, ARGV[2] used -
-- reserved (may be negative), ARGV[3] lease id, ARGV[4] how many of KEYS are token ceilings
-- (the rest are concurrency sets to remove the lease from).
local tokens = tonumber(ARGV[4])
for i = 1, #KEYS do
  if i <= tokens then
    if tonumber(redis.call('HGET', KEYS[i], 'w')) == tonumber(ARGV[1]) then
      local u = (tonumber(redis.call('HGET', KEYS[i], 'u')) or 0) + tonumber(ARGV[2])
      if u < 0 then u = 0 end
      redis.call('HSET', KEYS[i], 'u', u)
    end
  else
    redis.call('ZREM', KEYS[i], ARGV[3])
  end
end
return 1
"#;

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Refuse with `limiter_unavailable` (503, `Retry-After`).
    FailClosed,
    /// Enforce the same ceilings on this replica's own counters (N replicas allow up to N×).
    LocalFallback,
}

/// Redis-backed counters.
#[derive(Debug)]
pub struct RedisBackend {
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    script: redis::Script,
    settle_script: redis::Script,
    timeout: Duration,
    lease_ttl: Duration,
    on_unavailable: Unavailable,
    fallback: MemoryBackend,
}

impl RedisBackend {
    /// A backend for `url`. The connection is made (and remade) by a background thread, so the
    /// proxy starts even while Redis is down, refusing or falling back until it is up.
    pub fn start(
        url: &str,
        timeout: Duration,
        lease_ttl: Duration,
        on_unavailable: Unavailable,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let conn: Arc<ArcSwapOption<ConnectionManager>> = Arc::new(ArcSwapOption::empty());
        let slot = conn.clone();
        std::thread::Builder::new()
            .name("redis".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    tracing::error!("cannot start the redis runtime");
                    return;
                };
                rt.block_on(async move {
                    // The connection manager reconnects by itself once established; its driver
                    // lives on this runtime, which stays up for the life of the process.
                    loop {
                        match ConnectionManager::new(client.clone()).await {
                            Ok(m) => {
                                slot.store(Some(Arc::new(m)));
                                tracing::info!("limiter connected to redis");
                                std::future::pending::<()>().await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "limiter cannot reach redis; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            script: redis::Script::new(ADMIT),
            settle_script: redis::Script::new(SETTLE),
            timeout,
            lease_ttl,
            on_unavailable,
            fallback: MemoryBackend::default(),
        })
    }

    async fn admit_redis(
        &self,
        keys: &[LimitKey],
        lease_id: &str,
        tokens: u64,
    ) -> Result<Vec<i64>, String> {
        let conn = self
            .conn
            .load_full()
            .ok_or_else(|| "not connected".to_string())?;
        let mut conn = (*conn).clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(lease_id)
            .arg(u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX));
        for key in keys {
            invocation.key(key.to_string());
            match key.kind {
                LimitKind::Rate {
                    per_period,
                    period_secs,
                    burst,
                } => {
                    let interval =
                        u64::from(period_secs) * 1_000_000 / u64::from(per_period.max(1));
                    invocation
                        .arg(1)
                        .arg(interval)
                        .arg(interval * u64::from(burst.max(1) - 1));
                }
                LimitKind::Concurrency { max } => {
                    invocation.arg(2).arg(max).arg(0);
                }
                LimitKind::Tokens { per_minute } => {
                    invocation.arg(3).arg(per_minute).arg(tokens);
                }
            }
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[async_trait::async_trait]
impl LimitBackend for RedisBackend {
    async fn admit(&self, keys: &[LimitKey], tokens: u64) -> Result<Admission, AdmitError> {
        let lease_id = crate::trace::random_hex(16);
        match self.admit_redis(keys, &lease_id, tokens).await {
            Ok(reply) => decode(keys, &reply, lease_id, tokens),
            Err(e) => {
                METRICS.limiter_errors.inc();
                match self.on_unavailable {
                    // SECURITY: without the shared counters nothing is admitted unchecked.
                    Unavailable::FailClosed => {
                        tracing::warn!(error = %e, "limiter unavailable; refusing");
                        Err(AdmitError::Unavailable)
                    }
                    Unavailable::LocalFallback => {
                        METRICS.limiter_fallback.inc();
                        tracing::warn!(error = %e, "limiter unavailable; enforcing local counters");
                        self.fallback
                            .admit_now(keys, tokens)
                            .map_err(AdmitError::Limited)
                    }
                }
            }
        }
    }

    async fn settle(&self, admission: &Admission, used: u64) {
        self.finish_redis(admission, used, false).await;
    }

    async fn finish(&self, admission: &Admission, used: u64) {
        self.finish_redis(admission, used, true).await;
    }

    fn is_ready(&self) -> bool {
        self.conn.load().is_some()
    }

    async fn release(&self, admission: &Admission) {
        let none = Admission {
            leases: admission.leases.clone(),
            lease_id: admission.lease_id.clone(),
            ..Admission::default()
        };
        self.finish_redis(&none, 0, true).await;
    }
}

impl RedisBackend {
    /// Settles token reservations and (when `release`) removes leases, in one script call.
    async fn finish_redis(&self, admission: &Admission, used: u64, release: bool) {
        let leases: &[LimitKey] = if release { &admission.leases } else { &[] };
        if admission.token_windows.is_empty() && leases.is_empty() {
            return;
        }
        // A slot or reservation taken from the local fallback goes back there (harmless if it
        // was Redis's).
        self.fallback.settle_now(admission, used);
        self.fallback.release_now(leases);
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*conn).clone();
        let delta = i128::from(used) - i128::from(admission.reserved_tokens);
        let window = admission.token_windows.first().map_or(0, |(_, w)| *w);
        let mut invocation = self.settle_script.prepare_invoke();
        invocation
            .arg(window)
            .arg(i64::try_from(delta).unwrap_or(0))
            .arg(&admission.lease_id)
            .arg(admission.token_windows.len());
        for (key, _) in &admission.token_windows {
            invocation.key(key.to_string());
        }
        for key in leases {
            invocation.key(key.to_string());
        }
        // On failure a reservation stands until its window ends and a slot until its lease
        // expires: spend is over-, never under-counted.
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                METRICS.limiter_errors.inc();
                tracing::warn!(error = %e, "limiter settlement failed; reservations stand until they expire");
            }
            Err(_) => {
                METRICS.limiter_errors.inc();
                tracing::warn!(
                    "limiter settlement timed out; reservations stand until they expire"
                );
            }
        }
    }
}

fn decode(
    keys: &[LimitKey],
    reply: &[i64],
    lease_id: String,
    tokens: u64,
) -> Result<Admission, AdmitError> {
    match reply.first() {
        Some(1) => {
            let mut admission = Admission {
                lease_id,
                ..Admission::default()
            };
            for (i, key) in keys.iter().enumerate() {
                let remaining = reply.get(1 + 2 * i).copied().unwrap_or(0);
                let reset_us = reply.get(2 + 2 * i).copied().unwrap_or(0);
                match key.kind {
                    LimitKind::Rate { per_period, .. } => {
                        let remaining = u32::try_from(remaining.max(0)).unwrap_or(0);
                        let reset_secs =
                            (u64::try_from(reset_us.max(0)).unwrap_or(0) / 1_000_000).max(1);
                        if admission.headline.is_none_or(|h| remaining < h.remaining) {
                            admission.headline = Some(RateHeadline {
                                limit: per_period,
                                remaining,
                                reset_secs,
                            });
                        }
                    }
                    LimitKind::Concurrency { .. } => admission.leases.push(key.clone()),
                    LimitKind::Tokens { .. } => {
                        admission
                            .token_windows
                            .push((key.clone(), u64::try_from(reset_us.max(0)).unwrap_or(0)));
                        admission.reserved_tokens = tokens;
                    }
                }
            }
            Ok(admission)
        }
        Some(0) => {
            let index = reply
                .get(1)
                .and_then(|i| usize::try_from(*i).ok())
                .unwrap_or(1);
            let retry_us = u64::try_from(reply.get(2).copied().unwrap_or(1_000_000).max(0))
                .unwrap_or(1_000_000);
            let key = keys
                .get(index.saturating_sub(1))
                .cloned()
                .ok_or(AdmitError::Unavailable)?;
            Err(AdmitError::Limited(LimitDeny {
                key,
                retry_after: Duration::from_micros(retry_us),
            }))
        }
        // An answer we do not understand admits nothing.
        _ => Err(AdmitError::Unavailable),
    }
}
