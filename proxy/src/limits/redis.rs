//! Counters in Redis, shared by every replica. One Lua script checks and updates every ceiling
//! of a request atomically (all of a tenant's keys share the `{tenant}` hash tag, so they live in
//! one Redis Cluster slot), using Redis's clock so replicas agree on time. Concurrency slots are
//! sorted-set members that expire, so a crashed replica cannot leak them. Every call is
//! time-boxed; when Redis cannot be reached the request is refused (`limiter_unavailable`), or,
//! when configured, checked against local counters instead (counted and logged).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::known_refusals::KnownRefusals;
use super::memory::MemoryBackend;
use super::redis_revocations::SharedRevocations;
use super::{
    run_life_key, Admission, AdmitError, Charge, LeaseRenewal, LimitBackend, LimitDeny, LimitKey,
    LimitKind, RateHeadline, RunClaim, RunLedger, RunSighting,
};
use super::{LimiterUnavailable, RunEnd, RunRegistry};
use crate::ids::TenantId;
use crate::metrics::METRICS;
use crate::redis_conn::local::{answer_within, LocalConns, Silence};
use crate::redis_conn::{AsyncConn, RedisEndpoint, ScriptCall};

const ADMIT: &str = r#"
-- Checks every key, then (only if all admit) updates every key. ARGV[1] lease id, ARGV[2] lease
-- ttl (ms), ARGV[3] run key ttl (s), ARGV[4] the latest time (Redis's, us; 0: none) at which the
-- admission may still apply; then per key: kind, a, b, c.
-- 1 rate: a = interval us, b = tolerance us (GCRA)
-- 2 concurrency: a = max (sorted set of leases scored by expiry)
-- 3 tokens per minute: a = ceiling, b = reservation (hash {w = minute, u = used})
-- 4 quota: a = ceiling, b = reservation, c = expire-at unix s (0: the run ttl)
-- 5 wall time: a = max s, c as for quotas (the run's start, us)
-- The answer is one string of integers, `1 a1 b1 a2 b2 …` (admitted: per key two figures) or
-- `0 i retry_us` (refused by key i): one bulk string costs the client far less to read than an
-- array. '%d' writes every figure as an integer, however large.
local function figures(list)
  for j = 1, #list do list[j] = string.format('%d', list[j]) end
  return table.concat(list, ' ')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
local runttl = tonumber(ARGV[3])
-- A call that runs after its caller gave up (Redis stalled, the call queued meanwhile) would
-- charge a request that was refused: it applies nothing ('2').
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return '2' end
local st = {}
for i = 1, #KEYS do
  local base = 4 + (i - 1) * 4
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  if kind == 1 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if now < tat - b then return figures({0, i, tat - b - now}) end
    st[i] = tat + a
  elseif kind == 2 then
    -- Read only: the checks write nothing (see the note on memory below).
    if redis.call('ZCOUNT', KEYS[i], '(' .. string.format('%d', math.floor(now / 1000)), '+inf') >= a then
      return figures({0, i, 1000000})
    end
  elseif kind == 3 then
    local w = math.floor(now / 60000000)
    local cur = redis.call('HMGET', KEYS[i], 'w', 'u')
    local used = 0
    if tonumber(cur[1]) == w then used = tonumber(cur[2]) or 0 end
    if used + b > a then return figures({0, i, (w + 1) * 60000000 - now}) end
    st[i] = used + b
  elseif kind == 4 then
    local used = tonumber(redis.call('GET', KEYS[i]) or 0)
    if used + b > a then return figures({0, i, 0}) end
  else
    local s = tonumber(redis.call('GET', KEYS[i]) or now)
    if now - s > a * 1000000 then return figures({0, i, 0}) end
    st[i] = s
  end
end
-- Memory: Redis refuses a write that may grow memory past `maxmemory` (noeviction) only until
-- the script's first write; after one, it lets every later write through, so that a script is
-- not cut halfway. So the checks above only read, and every key's first write below grows memory
-- (SET, ZADD, HSET, INCRBY): a Redis out of memory refuses the whole admission at its first
-- write, and nothing is counted (the request is refused `limiter_unavailable`).
-- c is the window's end on Redis's clock (the proxy translates its own). A counter is kept at
-- least an hour (QUOTA_KEPT_SECS) past its write as well, by Redis's clock: before the proxy
-- knows the offset, a proxy clock behind Redis's would have it deleted as it is written (an
-- EXPIREAT in the past), every call counted from zero.
local function expire(key, c)
  if c > 0 then
    redis.call('EXPIREAT', key, math.max(c, math.floor(now / 1000000) + 3600))
  else
    redis.call('EXPIRE', key, runttl)
  end
end
local out = {1}
for i = 1, #KEYS do
  local base = 4 + (i - 1) * 4
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local c = tonumber(ARGV[base + 4])
  if kind == 1 then
    redis.call('SET', KEYS[i], st[i], 'PX', math.ceil((st[i] - now) / 1000) + 1000)
    table.insert(out, math.floor((b + a - (st[i] - now)) / a))
    table.insert(out, st[i] - now)
  elseif kind == 2 then
    redis.call('ZADD', KEYS[i], now / 1000 + ttl, ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now / 1000)
    redis.call('PEXPIRE', KEYS[i], ttl)
    table.insert(out, -1)
    table.insert(out, 0)
  elseif kind == 3 then
    local w = math.floor(now / 60000000)
    redis.call('HSET', KEYS[i], 'w', w, 'u', st[i])
    redis.call('PEXPIRE', KEYS[i], 120000)
    table.insert(out, -1)
    table.insert(out, w)
  elseif kind == 4 then
    redis.call('INCRBY', KEYS[i], b)
    expire(KEYS[i], c)
    table.insert(out, -1)
    table.insert(out, 0)
  else
    redis.call('SET', KEYS[i], st[i])
    expire(KEYS[i], c)
    table.insert(out, -1)
    table.insert(out, 0)
  end
end
return figures(out)
"#;

const SETTLE: &str = r#"
-- Ends a request in one round trip. ARGV[1] lease id, ARGV[2] the latest time (Redis's, us; 0:
-- none) at which its corrections may still apply; then per key: kind, a, b. KEYS[1..n] (n the
-- number of triples) are the request's keys; KEYS[n + 1], present when a correction is asked,
-- is the settlement's marker.
-- 2 concurrency: remove the lease; 3 tokens per minute: a = minute of the reservation,
-- b = used - reserved; 4 quota: b = used - reserved. Counters never go below zero, and a counter
-- that expired meanwhile is not recreated.
-- Answers 1 (settled), 2 (too late: leases removed, nothing corrected), 3 (corrected before:
-- leases removed, nothing corrected again).
local n = (#ARGV - 2) / 3
-- Leases first: their removal frees memory, and once a script has written, a Redis out of
-- memory lets its later writes through, so a settlement (which corrects existing counters, and
-- mostly lowers them) is not refused and its call charged its whole reservation.
local corrects = false
for i = 1, n do
  if tonumber(ARGV[3 + (i - 1) * 3]) == 2 then
    redis.call('ZREM', KEYS[i], ARGV[1])
  else
    corrects = true
  end
end
if not corrects then return 1 end
-- Corrections apply once. A call can be sent twice: its connection cut after Redis ran it, the
-- client sends it again (the connection manager's second try, the cluster client's retries).
-- A lease is removed twice harmlessly; a correction, mostly giving back what a reservation did
-- not use, applied twice would count less than was spent. The marker says this one applied,
-- for as long as a second send may still apply: until the deadline (and a second past it);
-- after it, nothing is corrected (the reservations stand: counted over, never under).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[2])
if deadline > 0 and now > deadline then return 2 end
local keep = 600000
if deadline > 0 then keep = math.floor((deadline - now) / 1000) + 1000 end
if not redis.call('SET', KEYS[n + 1], '1', 'NX', 'PX', keep) then return 3 end
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  if kind == 2 then
    -- Removed above.
  elseif kind == 3 then
    if tonumber(redis.call('HGET', KEYS[i], 'w')) == a then
      local u = (tonumber(redis.call('HGET', KEYS[i], 'u')) or 0) + b
      if u < 0 then u = 0 end
      redis.call('HSET', KEYS[i], 'u', u)
    end
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], b) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
"#;

const RENEW: &str = r#"
-- Keeps a running request's concurrency leases. KEYS: the concurrency sets; ARGV[1] the lease
-- id, ARGV[2] lease ttl (ms). Each lease expires a ttl from now, and one that is gone is put
-- back: the request still runs, so its slot is still taken (Redis lost it: restarted without
-- persistence, flushed, failed over to a replica that missed it; or it expired during an
-- outage longer than the ttl). A released lease is not renewed: its request stops renewing
-- before it releases it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"#;

const READ: &str = r#"
-- What each key counts now. ARGV[i]: the key's kind (as for ADMIT).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local kind = tonumber(ARGV[i])
  local v = 0
  if kind == 2 then
    v = redis.call('ZCOUNT', KEYS[i], now / 1000, '+inf')
  elseif kind == 3 then
    local cur = redis.call('HMGET', KEYS[i], 'w', 'u')
    if tonumber(cur[1]) == math.floor(now / 60000000) then v = tonumber(cur[2]) or 0 end
  elseif kind == 4 then
    v = tonumber(redis.call('GET', KEYS[i]) or 0)
  elseif kind == 5 then
    local s = redis.call('GET', KEYS[i])
    if s then v = math.floor((now - tonumber(s)) / 1000000) end
  end
  table.insert(out, v)
end
return out
"#;

const SIGHT_RUN: &str = r#"
-- A request of a signed run. KEYS[1] the run's life hash; ARGV[1] its token's expiry (unix ms),
-- ARGV[2] run ttl (s), ARGV[3] the latest time (Redis's, us; 0: none) at which the sighting may
-- still apply. Returns {first, closed}, or {-1} (too late: nothing applied).
local t = redis.call('TIME')
-- A sighting that runs after its caller gave up (the request was refused) would take the run's
-- start, and the next request, the first one served, would not be the first: no `run_started`.
local deadline = tonumber(ARGV[3])
if deadline > 0 and tonumber(t[1]) * 1000000 + tonumber(t[2]) > deadline then return {-1} end
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = redis.call('HSETNX', KEYS[1], 'start_ms', now)
redis.call('HINCRBY', KEYS[1], 'requests', 1)
local exp = tonumber(ARGV[1])
if exp > tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or 0) then
  redis.call('HSET', KEYS[1], 'expires_ms', exp)
end
local keep = math.max(exp, now) + tonumber(ARGV[2]) * 1000
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or now + ttl < keep then redis.call('PEXPIREAT', KEYS[1], keep) end
return {first, redis.call('HEXISTS', KEYS[1], 'closed_ms')}
"#;

const END_RUN: &str = r#"
-- Claims a run's summary. KEYS[1] the life hash; ARGV[1] 'closed' or 'expired', ARGV[2] run
-- ttl (s), ARGV[3] the latest time (Redis's, us) at which the claim may still apply. Whether
-- the run has expired is Redis's clock's to say, the one clock every replica shares: by a
-- replica's own, one running ahead would summarize a run the others still serve. Returns
-- {0} taken, {2, expires_ms} not yet, {-1} too late (nothing applied, not even the close), or
-- {1, start_ms (-1: none), end_ms, requests, refusals}.
local t = redis.call('TIME')
-- A claim that runs after its caller gave up would mark the run summarized with no summary
-- ever written (the caller answered that it failed; its retry would find the claim taken).
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[3]) then return {-1} end
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'closed' then
  redis.call('HSETNX', KEYS[1], 'closed_ms', now)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < tonumber(ARGV[2]) * 1000 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 1000) end
end
if redis.call('HEXISTS', KEYS[1], 'summarized') == 1 then return {0} end
local v = redis.call('HMGET', KEYS[1], 'start_ms', 'expires_ms', 'requests', 'refusals', 'closed_ms')
local exp = tonumber(v[2] or 0)
if not v[5] and exp > now then return {2, exp} end
redis.call('HSET', KEYS[1], 'summarized', now)
return {1, tonumber(v[1] or -1), tonumber(v[5] or exp), tonumber(v[3] or 0), tonumber(v[4] or 0)}
"#;

const COUNT_REFUSAL: &str = r#"
-- A refused request of a signed run. KEYS[1] the run's life hash; ARGV[1] run ttl (s). A run
-- never sighted (its first request refused) gets its life hash here: it expires like any run's
-- (`EXPIRE .. NX` would need Redis 7), and one that has an expiry keeps it.
redis.call('HINCRBY', KEYS[1], 'refusals', 1)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 1
"#;

/// The readiness probe: Redis's clock, from a script that writes as admissions do. A Redis that
/// answers `TIME` may still refuse every admission: out of memory, a demoted master (a read-only
/// replica), an ACL user that may not run scripts or write the limiter's keys; such a replica
/// must not look ready. The key is written and deleted in one atomic step (no one ever sees
/// it); no tenant's keys have its name.
const PROBE: &str = r#"
redis.call('SET', KEYS[1], '1')
redis.call('DEL', KEYS[1])
return redis.call('TIME')
"#;

/// The key [`PROBE`] writes, under a hash tag of its own.
const PROBE_KEY: &str = "tp:{limiter}:probe";

/// Runs [`PROBE`] (`call`) within `wait`. An ACL user whose key patterns leave out the probe's
/// key is refused it (`NOPERM`): the replica is not ready, and the log says why once. (Falling
/// back to `TIME` made a replica whose user may touch no tenant's key look ready; the README
/// names the keys the user needs, the probe's among them.)
async fn probe_once(
    call: &ScriptCall<'_>,
    conn: &mut AsyncConn,
    wait: Duration,
) -> Option<redis::RedisResult<Vec<String>>> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let answer = answer_within(wait, call.run::<Vec<String>>(conn)).await;
    if let Some(Err(e)) = &answer {
        if e.code() == Some("NOPERM") {
            SAID.call_once(|| {
                tracing::error!(
                    "limiter: the redis user may not write `{PROBE_KEY}` (NOPERM): it needs the keys under `tp:` (see the README's ACL); not ready until it may"
                );
            });
        }
    }
    answer
}

/// Every script the backend runs.
const SCRIPTS: [&str; 8] = [
    PROBE,
    ADMIT,
    SETTLE,
    RENEW,
    READ,
    SIGHT_RUN,
    END_RUN,
    COUNT_REFUSAL,
];

/// Loads the scripts into Redis (every master of a cluster) before the backend reports ready.
/// Without this, a burst of first requests each meet `NOSCRIPT` and send the script's source
/// and their call again: three round trips each, at the moment the proxy is busiest. A failure
/// only logs: a call still loads its script when Redis answers `NOSCRIPT` (after a restart too).
async fn load_scripts(conn: &AsyncConn, timeout: Duration) {
    for source in SCRIPTS {
        let mut conn = conn.clone();
        let script = redis::Script::new(source);
        if !matches!(
            tokio::time::timeout(timeout, script.load_async(&mut conn)).await,
            Ok(Ok(_))
        ) {
            tracing::warn!("cannot load the limiter's scripts into redis yet; calls load them");
            return;
        }
    }
}

/// Warns when Redis may evict keys (its `maxmemory-policy` is not `noeviction`): an evicted
/// counter starts from zero, so a day's or a run's spend is allowed again, with nothing else
/// showing it. A Redis that does not let the proxy read its configuration (a managed service,
/// an ACL without `CONFIG`) is not asked again.
async fn warn_if_evicting(conn: &AsyncConn, timeout: Duration) {
    let mut conn = conn.clone();
    let mut config = redis::cmd("CONFIG");
    config.arg("GET").arg("maxmemory-policy");
    let asked = config.query_async::<Vec<String>>(&mut conn);
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(answer)) => {
            if let Some(policy) = evicting_policy(&answer) {
                tracing::warn!(
                    policy,
                    "the limiter's redis may evict keys (maxmemory-policy is not noeviction): an evicted counter starts from zero and a tenant's day, month or run budget is spent again; set maxmemory-policy noeviction"
                );
            }
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "cannot read the limiter's redis maxmemory-policy; it must be noeviction");
        }
        Err(_) => {}
    }
}

/// The eviction policy a `CONFIG GET maxmemory-policy` answer names, when it may evict.
fn evicting_policy(answer: &[String]) -> Option<&str> {
    match answer {
        [name, policy] if name == "maxmemory-policy" && policy != "noeviction" => {
            Some(policy.as_str())
        }
        _ => None,
    }
}

/// Redis's clock as this replica sees it: the offset from the local monotonic clock, measured
/// by the probe (`TIME`, halfway through its round trip). Monotonic, so a step of this host's
/// wall clock (NTP, a VM resumed) does not move the deadlines it gives admissions (a step back
/// put them in Redis's past until the next probe, and every admission was refused
/// `limiter_unavailable` meanwhile). An admission carries the latest Redis time
/// at which it may still apply, so one that Redis runs only after a stall, when the proxy has
/// long refused the request, charges nothing: without it, a Redis paused for seconds ran every
/// queued admission on resuming and spent a tenant's day on refused requests.
#[derive(Debug)]
struct RedisClock {
    /// Redis time minus [`mono_us`], in microseconds ([`i64::MIN`]: not measured yet).
    offset_us: AtomicI64,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self {
            offset_us: AtomicI64::new(i64::MIN),
        }
    }
}

/// How late past the caller's own deadline an admission may still apply: the caller may take
/// an answer a little after its timeout (see [`answer_within`]), and the masters of a cluster
/// each have their own clock; a stall shorter than this still charges what it queued.
const LATE_ADMISSION_SLACK: Duration = Duration::from_secs(1);

impl RedisClock {
    fn measured(&self, sent_us: i64, redis_us: i64, answered_us: i64) {
        let offset = redis_us - (sent_us + (answered_us - sent_us) / 2);
        self.offset_us.store(offset, Ordering::Relaxed);
    }

    /// The latest Redis time (us) at which an admission sent now with `timeout` may apply; 0
    /// (none) until the offset is known.
    fn deadline(&self, timeout: Duration) -> i64 {
        self.after(timeout * 2 + LATE_ADMISSION_SLACK).unwrap_or(0)
    }

    /// Redis's clock minus this host's wall clock, in whole seconds (0 until measured): what
    /// puts a unix second of this host on Redis's clock. A day counter's expiry is the end of
    /// the proxy's day, which Redis must keep by its own clock (a proxy hours behind Redis would
    /// have the counter dropped before its day ends).
    fn wall_offset_secs(&self) -> i64 {
        self.after(Duration::ZERO)
            .map_or(0, |redis_now| (redis_now - unix_us()).div_euclid(1_000_000))
    }

    /// Redis's time (us) `wait` from now; `None` until the offset is known.
    fn after(&self, wait: Duration) -> Option<i64> {
        let offset = self.offset_us.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return None;
        }
        let wait = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 4);
        Some(mono_us().saturating_add(offset).saturating_add(wait))
    }
}

/// A run sighting decides whether a request is its run's first, and so writes `run_started`.
/// Applying it after its caller gave up is not the safe side, as it is for a charge (see
/// [`LATE_ADMISSION_SLACK`]): the request was refused, the next one is not the first, and the
/// event is lost. So a sighting applies only until twice `timeout` after it was sent, on Redis's
/// clock (as long as a caller whose own runtime was behind waits, see [`answer_within`], so a
/// busy proxy refuses no more of them than before), and its caller waits this much longer than
/// that for the answer: for its way back, and for the error of this replica's estimate of
/// Redis's clock (measured every second, halfway through a `TIME` round trip; on a cluster, on
/// one master, so another master's skew counts too). What remains: a sighting Redis ran in time
/// whose answer comes back later than this (Redis stalled right after running it, before
/// writing its answer; the connection cut between; clocks further apart). That run starts with
/// no `run_started`. A hung Redis refuses a signed run's request after twice `timeout` plus this.
const SIGHTING_ANSWER_GRACE: Duration = Duration::from_millis(25);

/// A claim on a run's summary applies only until `timeout` plus this after it was sent (on
/// Redis's clock), and its caller waits twice this past `timeout` for the answer: a claim that
/// applied after its caller gave up would leave the run summarized with no summary written (the
/// caller answered that it failed, and its retry finds the claim taken). Claims are not on a
/// request's path (an operator's close, the once-a-second expiry watcher), so they can wait: a
/// stall shorter than this only delays the claim, and clocks (a cluster's masters, this
/// replica's estimate) may be this far apart. What remains: an answer lost after Redis ran the
/// claim in time (the connection cut between), or later than this.
const CLAIM_SLACK: Duration = Duration::from_secs(1);

/// Microseconds since the first call, on the monotonic clock.
fn mono_us() -> i64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    i64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(i64::MAX)
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Redis's `TIME` answer in microseconds.
fn time_us(answer: &[String]) -> Option<i64> {
    match answer {
        [secs, micros] => Some(secs.parse::<i64>().ok()? * 1_000_000 + micros.parse::<i64>().ok()?),
        _ => None,
    }
}

/// How often the backend's own thread runs [`PROBE`], so that an idle replica notices an
/// outage (and its end) without a request paying for it, and knows Redis's clock.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Probes (or calls of one worker thread on its own connection) in a row that got no answer at
/// all (no reply within the timeout, as against an error reply or a refused connection) before
/// every connection to Redis (that thread's) is made anew. A connection whose replies have
/// fallen out of step with its calls (a reply cut short, a length no reply fills) never answers
/// again, and the connection manager remakes a connection only once it is closed: before, one
/// such reply kept every call refused `limiter_unavailable` until Redis closed the connection,
/// which by default it never does. A hung Redis meets new connections as hung, so remaking
/// them costs nothing there.
const SILENT_CALLS_BEFORE_RECONNECT: u32 = 5;

/// Whether Redis answers: `/readyz`'s `limiter_connected`. Every call and the [`PROBE`]
/// (every [`PROBE_INTERVAL`], from the backend's own thread; a cluster routes it to one master)
/// report their outcome. Redis answers while the latest outcome is an answer, or while some
/// call got one within [`RECENT_ANSWER`]: a cluster with one master hung still answers for the
/// tenants of the other masters' slots, so the replica stays ready for them (those slots'
/// tenants get what `on_unavailable` says), and only when every call and probe failed for that
/// long is the replica not ready.
#[derive(Debug, Default)]
struct Answering {
    /// The latest outcome was a failure.
    failing: AtomicBool,
    /// Unix ms of the last answer, written at most every [`ANSWER_STAMP_EVERY_MS`] (a store per
    /// call from every worker would make the threads fight over one cache line).
    answered_ms: AtomicI64,
}

/// How long after its last answer a Redis whose calls now fail still counts as answering.
const RECENT_ANSWER: Duration = Duration::from_millis(2500);
const ANSWER_STAMP_EVERY_MS: i64 = 100;

impl Answering {
    fn mark(&self, answered: bool) {
        if answered {
            let now = unix_us() / 1000;
            if now - self.answered_ms.load(Ordering::Relaxed) >= ANSWER_STAMP_EVERY_MS {
                self.answered_ms.store(now, Ordering::Relaxed);
            }
        }
        if self.failing.load(Ordering::Relaxed) == answered {
            self.failing.store(!answered, Ordering::Relaxed);
            if answered {
                tracing::info!("limiter: redis answers again");
            } else {
                tracing::warn!("limiter: a redis call got no answer");
            }
        }
    }

    fn get(&self) -> bool {
        let recent = unix_us() / 1000 - self.answered_ms.load(Ordering::Relaxed)
            < i64::try_from(RECENT_ANSWER.as_millis()).unwrap_or(i64::MAX);
        !self.failing.load(Ordering::Relaxed) || recent
    }
}

/// Concurrency slots whose release failed (Redis did not answer when the request ended), released
/// again from the backend's own thread once Redis answers. Without it, a short outage during long
/// calls would keep a tenant at its concurrency ceiling until the slots' leases expire
/// (`lease_ttl`, minutes). Releasing a lease is idempotent (`ZREM` by its id), so a release
/// that did land but whose answer was lost is harmless to repeat. Reservations of tokens and
/// cost are not repeated: their settlement is not idempotent, and they stand (over-counted,
/// never under-counted) until their window ends.
#[derive(Debug, Default)]
struct PendingReleases(std::sync::Mutex<std::collections::VecDeque<PendingRelease>>);

/// One failed release: the lease keys, the lease id, and when its leases expire by themselves.
#[derive(Debug)]
struct PendingRelease {
    keys: Vec<String>,
    lease_id: String,
    expires: std::time::Instant,
    /// Not sent before then: the release of an admission that got no answer must come after
    /// the latest moment that admission could still apply (its deadline), or the admission,
    /// still queued in a stalled Redis, would take the slot after its release.
    not_before: std::time::Instant,
}

/// Most failed releases kept; older ones are left to expire (`lease_ttl`).
const MAX_PENDING_RELEASES: usize = 65_536;

impl PendingReleases {
    fn push(&self, release: PendingRelease) {
        let mut queue = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() >= MAX_PENDING_RELEASES {
            queue.pop_front();
        }
        queue.push_back(release);
    }

    /// Releases every pending lease on `conn`; the ones that fail again are kept for the next
    /// round, unless they have expired meanwhile.
    async fn retry(&self, conn: &mut AsyncConn, script: &redis::Script, timeout: Duration) {
        let pending: Vec<PendingRelease> = {
            let mut queue = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.drain(..).collect()
        };
        let now = std::time::Instant::now();
        for release in pending.into_iter().filter(|r| r.expires > now) {
            if release.not_before > now {
                self.push(release);
                continue;
            }
            let released = match ScriptCall::new(script, &release.keys) {
                Ok(mut call) => {
                    // Leases only: nothing is corrected, so no marker and no deadline.
                    call.arg(&release.lease_id).arg(0);
                    for _ in &release.keys {
                        call.arg(2).arg(0).arg(0);
                    }
                    matches!(
                        answer_within(timeout, call.run::<i64>(conn)).await,
                        Some(Ok(_))
                    )
                }
                // Keys of one tenant always share a slot; nothing to retry otherwise.
                Err(_) => true,
            };
            if released {
                tracing::info!(
                    leases = release.keys.len(),
                    "limiter: released slots whose release had failed"
                );
            } else {
                self.push(release);
            }
        }
    }
}

/// What to do when Redis cannot be reached (`[limiter] on_unavailable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Refuse with `limiter_unavailable` (503, `Retry-After`).
    #[default]
    FailClosed,
    /// Enforce the same ceilings on this replica's own counters (N replicas allow up to N×).
    LocalFallback,
}

/// How to reach Redis and what to do without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Where Redis is (one server or a cluster) and how to log in.
    pub endpoint: RedisEndpoint,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// How long a concurrency slot outlives a crashed replica.
    pub lease_ttl: Duration,
    /// How long a run's counters live after its last reservation.
    pub run_ttl: Duration,
    /// Behaviour when Redis is unreachable.
    pub on_unavailable: Unavailable,
}

/// Redis-backed counters.
#[derive(Debug)]
pub struct RedisBackend {
    /// The connection made (and remade) by the backend's own thread: readiness, the revocation
    /// list, and calls from a runtime whose own connection is not made yet.
    conn: Arc<ArcSwapOption<AsyncConn>>,
    /// Whether Redis answered the last call or probe.
    answering: Arc<Answering>,
    /// Redis's clock, for the admissions' deadlines.
    clock: Arc<RedisClock>,
    /// A connection per calling runtime thread, so a call does not cross threads.
    local: Arc<LocalConns>,
    admit_script: redis::Script,
    settle_script: redis::Script,
    /// Shared with the renewal tasks.
    renew_script: Arc<redis::Script>,
    read_script: redis::Script,
    sight_run_script: redis::Script,
    end_run_script: redis::Script,
    count_refusal_script: redis::Script,
    settings: RedisSettings,
    fallback: MemoryBackend,
    revocations: Arc<SharedRevocations>,
    /// Concurrency slots to release again once Redis answers.
    pending: Arc<PendingReleases>,
    /// Rate refusals Redis gave, answered here until they pass (see [`KnownRefusals`]).
    known_refusals: KnownRefusals,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The script's number for a kind (see `ADMIT`).
fn kind_code(kind: &LimitKind) -> u8 {
    match kind {
        LimitKind::Rate { .. } => 1,
        LimitKind::Concurrency { .. } => 2,
        LimitKind::TokensPerMinute { .. } => 3,
        LimitKind::Quota { .. } => 4,
        LimitKind::WallTime { .. } => 5,
    }
}

impl RedisBackend {
    /// A backend for `settings.endpoint`. The connection is made (and remade) by a background
    /// thread, so the proxy starts even while Redis is down, refusing or falling back until it
    /// is up.
    pub fn start(settings: RedisSettings) -> Result<Self, String> {
        let endpoint = settings.endpoint.clone();
        // The connect itself may take longer than one call's budget (TLS, a cluster's slot map).
        let connect_timeout = settings.timeout.max(Duration::from_secs(2));
        let conn: Arc<ArcSwapOption<AsyncConn>> = Arc::new(ArcSwapOption::empty());
        let slot = conn.clone();
        let revocations = Arc::new(SharedRevocations::new(settings.on_unavailable));
        let refresher = revocations
            .clone()
            .keep_fresh(conn.clone(), settings.timeout);
        let (first_read, read_timeout) = (revocations.clone(), connect_timeout);
        let answering = Arc::new(Answering::default());
        let (probed, probe_timeout) = (answering.clone(), settings.timeout);
        let clock = Arc::new(RedisClock::default());
        let clocked = clock.clone();
        let pending = Arc::new(PendingReleases::default());
        let releases = pending.clone();
        let local: Arc<LocalConns> = Arc::default();
        let locals = local.clone();
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
                rt.spawn(refresher);
                rt.block_on(async move {
                    // The connection reconnects by itself once established (a cluster
                    // connection also follows failovers); its driver lives on this runtime,
                    // which stays up for the life of the process.
                    loop {
                        match endpoint.connect(connect_timeout).await {
                            Ok(m) => {
                                // Read the revocation list before serving: until it has been
                                // read, token requests fail closed.
                                if let Err(e) = first_read.refresh(&m, read_timeout).await {
                                    tracing::warn!(error = %e, "cannot read the shared revocation list");
                                }
                                load_scripts(&m, read_timeout).await;
                                warn_if_evicting(&m, read_timeout).await;
                                let mut probe = m.clone();
                                let probe_script = redis::Script::new(PROBE);
                                let Ok(time) = ScriptCall::new(&probe_script, &[PROBE_KEY]) else {
                                    unreachable!("one key has one slot");
                                };
                                // Redis's clock is known before the first admission: until
                                // then an admission carries no deadline.
                                let sent = mono_us();
                                if let Some(Ok(answer)) =
                                    probe_once(&time, &mut probe, read_timeout).await
                                {
                                    if let Some(redis_us) = time_us(&answer) {
                                        clocked.measured(sent, redis_us, mono_us());
                                    }
                                }
                                slot.store(Some(Arc::new(m)));
                                probed.mark(true);
                                tracing::info!("limiter connected to redis");
                                let settle = redis::Script::new(SETTLE);
                                let mut silent = 0;
                                loop {
                                    tokio::time::sleep(PROBE_INTERVAL).await;
                                    let sent = mono_us();
                                    let answer =
                                        probe_once(&time, &mut probe, probe_timeout).await;
                                    silent = if answer.is_none() { silent + 1 } else { 0 };
                                    if silent >= SILENT_CALLS_BEFORE_RECONNECT {
                                        tracing::warn!(
                                            probes = silent,
                                            "the limiter's redis connection has not answered its probes; making every connection anew"
                                        );
                                        locals.forget_all();
                                        break;
                                    }
                                    let answered = matches!(answer, Some(Ok(_)));
                                    if let Some(redis_us) =
                                        answer.and_then(Result::ok).as_deref().and_then(time_us)
                                    {
                                        clocked.measured(sent, redis_us, mono_us());
                                    }
                                    probed.mark(answered);
                                    if answered {
                                        releases.retry(&mut probe, &settle, probe_timeout).await;
                                    }
                                }
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
            answering,
            clock,
            local,
            admit_script: redis::Script::new(ADMIT),
            settle_script: redis::Script::new(SETTLE),
            renew_script: Arc::new(redis::Script::new(RENEW)),
            read_script: redis::Script::new(READ),
            sight_run_script: redis::Script::new(SIGHT_RUN),
            end_run_script: redis::Script::new(END_RUN),
            count_refusal_script: redis::Script::new(COUNT_REFUSAL),
            fallback: MemoryBackend::new(settings.run_ttl),
            revocations,
            settings,
            pending,
            known_refusals: KnownRefusals::default(),
        })
    }

    /// The shared revocation list, kept fresh from this backend's Redis.
    pub fn revocations(&self) -> Arc<SharedRevocations> {
        self.revocations.clone()
    }

    /// The connection a call from this thread uses: its runtime's own once made (with what
    /// counts its calls without a reply), the shared one until then. `None` while the backend
    /// has not reached Redis yet.
    fn conn_here(&self) -> Option<(AsyncConn, Option<Silence>)> {
        // Only once the shared connection is up (the backend is ready) are local ones made.
        let shared = self.conn.load_full()?;
        let connect_timeout = self.settings.timeout.max(Duration::from_secs(2));
        Some(
            match self.local.here(&self.settings.endpoint, connect_timeout) {
                Some((conn, silence)) => (conn, Some(silence)),
                None => ((*shared).clone(), None),
            },
        )
    }

    /// Runs one script call, time-boxed (see [`answer_within`]). The call's keys share one
    /// hash tag (one Cluster slot): [`ScriptCall::new`] checked them.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &ScriptCall<'_>,
    ) -> Result<T, LimiterUnavailable> {
        self.invoke_within(call, self.settings.timeout).await
    }

    /// [`Self::invoke`], waiting up to `wait` for the answer.
    async fn invoke_within<T: redis::FromRedisValue>(
        &self,
        call: &ScriptCall<'_>,
        wait: Duration,
    ) -> Result<T, LimiterUnavailable> {
        let (mut conn, own) = self
            .conn_here()
            .ok_or_else(|| LimiterUnavailable("not connected".into()))?;
        let answer = answer_within(wait, call.run::<T>(&mut conn)).await;
        self.answering.mark(matches!(answer, Some(Ok(_))));
        let which = match &own {
            Some(_) => "this runtime's connection",
            None => "the shared connection",
        };
        if own.as_ref().is_some_and(|own| {
            self.local
                .note_reply(own, answer.is_some(), SILENT_CALLS_BEFORE_RECONNECT)
        }) {
            tracing::warn!(
                calls = SILENT_CALLS_BEFORE_RECONNECT,
                "a worker's redis connection has not answered its calls; making it anew"
            );
        }
        match answer {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(LimiterUnavailable(format!("{e} ({which})"))),
            None => Err(LimiterUnavailable(format!(
                "no answer within {wait:?} ({which})"
            ))),
        }
    }

    /// Keeps what this replica learned of a run's closure (its own close, a sighting or a read
    /// that said closed) in the local record it falls back on, so that a closed run stays
    /// refused here while Redis does not answer. A closure only another replica saw is not
    /// known here then.
    fn learned_closed(&self, tenant: &TenantId, run: &str) {
        if self.settings.on_unavailable == Unavailable::LocalFallback {
            self.fallback.record_closed(tenant, run);
        }
    }

    /// A run sighting on Redis. One that reached Redis after its deadline applied nothing and
    /// fails as a call with no answer does (see [`SIGHTING_ANSWER_GRACE`]).
    async fn sight_run_redis(
        &self,
        tenant: &TenantId,
        run: &str,
        expires_ms: i64,
    ) -> Result<RunSighting, LimiterUnavailable> {
        let mut invocation = ScriptCall::new(&self.sight_run_script, &[run_life_key(tenant, run)])
            .map_err(LimiterUnavailable)?;
        invocation
            .arg(expires_ms)
            .arg(self.settings.run_ttl.as_secs().max(1))
            .arg(self.clock.after(self.settings.timeout * 2).unwrap_or(0));
        let reply: Vec<i64> = self
            .invoke_within(
                &invocation,
                self.settings.timeout * 2 + SIGHTING_ANSWER_GRACE,
            )
            .await?;
        match reply.first() {
            Some(-1) => Err(LimiterUnavailable(format!(
                "the run sighting reached redis more than {:?} after it was sent; nothing was recorded",
                self.settings.timeout * 2
            ))),
            first => Ok(RunSighting {
                first: first == Some(&1),
                closed: reply.get(1) == Some(&1),
            }),
        }
    }

    async fn admit_redis(
        &self,
        keys: &[LimitKey],
        lease_id: &str,
        charge: Charge,
    ) -> Result<Vec<i64>, LimiterUnavailable> {
        let names: Vec<String> = keys.iter().map(LimitKey::redis_name).collect();
        let mut invocation =
            ScriptCall::new(&self.admit_script, &names).map_err(LimiterUnavailable)?;
        invocation
            .arg(lease_id)
            .arg(millis(self.settings.lease_ttl))
            .arg(self.settings.run_ttl.as_secs().max(1))
            .arg(self.clock.deadline(self.settings.timeout));
        // Read once for all the keys (two clock reads).
        let to_redis_secs = self.clock.wall_offset_secs();
        for key in keys {
            invocation.arg(kind_code(&key.kind));
            match key.kind {
                LimitKind::Rate {
                    per_period,
                    period_secs,
                    burst,
                } => {
                    let interval =
                        u64::from(period_secs) * 1_000_000 / u64::from(per_period.max(1));
                    invocation
                        .arg(interval)
                        .arg(interval * u64::from(burst.max(1) - 1))
                        .arg(0);
                }
                LimitKind::Concurrency { max } => {
                    invocation.arg(max).arg(0).arg(0);
                }
                LimitKind::TokensPerMinute { ceiling } => {
                    invocation.arg(ceiling).arg(charge.tokens).arg(0);
                }
                LimitKind::Quota {
                    measure,
                    window,
                    ceiling,
                } => {
                    invocation
                        .arg(ceiling)
                        .arg(charge.of(measure))
                        .arg(window.expires_at().map_or(0, |at| at + to_redis_secs));
                }
                LimitKind::WallTime { max_secs } => {
                    invocation.arg(max_secs).arg(0).arg(0);
                }
            }
        }
        let reply: String = self.invoke(&invocation).await?;
        figures(&reply)
    }

    /// An admission that got no answer may still be waiting in a stalled Redis, and apply up
    /// to its deadline: its leases (if any) are released once Redis answers and that deadline
    /// has passed, so a short stall does not leave a tenant locked out for `lease_ttl`. (Its
    /// reservations, if it applied, stand until their window ends: over-counted, never under.)
    fn release_if_late(&self, keys: &[LimitKey], lease_id: &str) {
        let leases: Vec<String> = keys
            .iter()
            .filter(|k| matches!(k.kind, LimitKind::Concurrency { .. }))
            .map(LimitKey::redis_name)
            .collect();
        if leases.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        self.pending.push(PendingRelease {
            keys: leases,
            lease_id: lease_id.to_string(),
            expires: now + self.settings.lease_ttl,
            not_before: now + self.settings.timeout * 2 + LATE_ADMISSION_SLACK,
        });
    }

    /// Renews `admission`'s concurrency leases every third of `lease_ttl` until the admission
    /// is dropped: a lease is there for a replica that crashes, and without renewal a request
    /// that runs longer than `lease_ttl` (a long stream, an event stream, a WebSocket) would stop
    /// counting while it still runs. A renewal that fails is tried again at the next turn.
    fn renew_while_running(&self, admission: &Admission) -> Option<LeaseRenewal> {
        if admission.leases.is_empty() {
            return None;
        }
        let (mut conn, _) = self.conn_here()?;
        let names: Vec<String> = admission.leases.iter().map(LimitKey::redis_name).collect();
        let script = self.renew_script.clone();
        let lease_id = admission.lease_id.clone();
        let (ttl, timeout) = (self.settings.lease_ttl, self.settings.timeout);
        let in_flight = Arc::new(tokio::sync::Mutex::new(()));
        let held = in_flight.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let _renewing = held.lock().await;
                let Ok(mut call) = ScriptCall::new(&script, &names) else {
                    return;
                };
                call.arg(&lease_id).arg(millis(ttl));
                if !matches!(
                    answer_within(timeout, call.run::<i64>(&mut conn)).await,
                    Some(Ok(_))
                ) {
                    METRICS.limiter_errors.inc();
                    tracing::warn!(
                        "cannot renew a running request's concurrency lease; trying again"
                    );
                }
            }
        });
        Some(LeaseRenewal::new(task.abort_handle(), in_flight))
    }

    /// Settles reservations and removes leases, in one script call.
    async fn finish_redis(&self, admission: &Admission, used: Charge) {
        if admission.metered.is_empty() && admission.leases.is_empty() {
            return;
        }
        let metered: Vec<_> = admission
            .metered
            .iter()
            .filter_map(|m| m.key.kind.measure().map(|measure| (m, measure)))
            .collect();
        let marker = metered
            .first()
            .map(|(m, _)| settle_marker(m.key.scope.tenant(), &admission.lease_id));
        let names: Vec<String> = metered
            .iter()
            .map(|(m, _)| m.key.redis_name())
            .chain(admission.leases.iter().map(LimitKey::redis_name))
            .chain(marker)
            .collect();
        // On failure a reservation stands until its window ends and a slot until its lease
        // expires: spend is over-, never under-counted.
        let result = match ScriptCall::new(&self.settle_script, &names).map_err(LimiterUnavailable)
        {
            Ok(mut invocation) => {
                invocation
                    .arg(&admission.lease_id)
                    .arg(self.clock.after(SETTLE_APPLIES_WITHIN).unwrap_or(0));
                for (m, measure) in &metered {
                    let delta =
                        i64::try_from(i128::from(used.of(*measure)) - i128::from(m.reserved))
                            .unwrap_or(0);
                    invocation
                        .arg(kind_code(&m.key.kind))
                        .arg(m.window)
                        .arg(delta);
                }
                for _ in &admission.leases {
                    invocation.arg(2).arg(0).arg(0);
                }
                self.invoke::<i64>(&invocation).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            METRICS.limiter_errors.inc();
            tracing::warn!(error = %e, "limiter settlement failed; reservations stand until their window ends, slots are released once redis answers");
            if !admission.leases.is_empty() {
                self.pending.push(PendingRelease {
                    keys: admission.leases.iter().map(LimitKey::redis_name).collect(),
                    lease_id: admission.lease_id.clone(),
                    expires: std::time::Instant::now() + self.settings.lease_ttl,
                    not_before: std::time::Instant::now(),
                });
            }
        }
    }
}

/// How long after it is sent a settlement may still correct counters (on Redis's clock). A
/// settlement sent twice (see `SETTLE`) corrects once: its marker lives this long and a second
/// past it. Longer than any call's time box, so that only a Redis stalled this long drops a
/// correction (the reservations then stand: over-counted); short, because every settled
/// request leaves its marker in Redis for that time.
const SETTLE_APPLIES_WITHIN: Duration = Duration::from_secs(10);

/// The key that marks a settlement applied (see `SETTLE`): the tenant's hash tag, so that it
/// shares the request's keys' cluster slot.
fn settle_marker(tenant: &TenantId, lease_id: &str) -> String {
    format!("tp:{{{tenant}}}:settled:{lease_id}")
}

/// What a call's time box may run past its `timeout`: a starved runtime's late wake-up and
/// the turns it then gives the call (see [`answer_within`]).
const ANSWER_SLACK: Duration = Duration::from_millis(10);

#[async_trait::async_trait]
impl LimitBackend for RedisBackend {
    fn answer_within(&self) -> Duration {
        // A call waits its timeout, and once more when the runtime was behind.
        self.settings.timeout.saturating_mul(2) + ANSWER_SLACK
    }

    async fn admit(&self, keys: &[LimitKey], charge: Charge) -> Result<Admission, AdmitError> {
        let lease_id = crate::trace::random_hex(16);
        let sent = std::time::Instant::now();
        let result = self.admit_redis(keys, &lease_id, charge).await;
        // Only a call that ran out of time may still be waiting in Redis. One that failed at
        // once (not connected, refused, an error answer) never applies, and queueing its release
        // would let a tenant flooding an outage push others' pending releases out of the queue.
        if result.is_err() && sent.elapsed() >= self.settings.timeout {
            self.release_if_late(keys, &lease_id);
        }
        match result {
            Ok(reply) => {
                METRICS.limiter_fallback_active.set(0);
                let mut admission = match decode(keys, &reply, lease_id, charge) {
                    Ok(admission) => admission,
                    Err(AdmitError::Limited(deny)) => {
                        // Counted from when the call was sent, before Redis read its clock.
                        if let Some(wait) = deny.retry_after {
                            let now = std::time::Instant::now();
                            self.known_refusals.remember(&deny.key, sent + wait, now);
                        }
                        return Err(AdmitError::Limited(deny));
                    }
                    Err(e) => return Err(e),
                };
                admission.renewal = self.renew_while_running(&admission);
                Ok(admission)
            }
            Err(e) => {
                METRICS.limiter_errors.inc();
                match self.settings.on_unavailable {
                    // SECURITY: without the shared counters nothing is admitted unchecked.
                    Unavailable::FailClosed => {
                        tracing::warn!(error = %e, "limiter unavailable; refusing");
                        Err(AdmitError::Unavailable)
                    }
                    Unavailable::LocalFallback => {
                        METRICS.limiter_fallback.inc();
                        METRICS.limiter_fallback_active.set(1);
                        tracing::warn!(error = %e, "limiter unavailable; enforcing local counters");
                        let mut admission = self
                            .fallback
                            .admit_now(keys, charge)
                            .map_err(AdmitError::Limited)?;
                        admission.local = true;
                        Ok(admission)
                    }
                }
            }
        }
    }

    async fn finish(&self, mut admission: Admission, used: Charge) {
        if admission.local {
            self.fallback.finish(admission, used).await;
        } else {
            // No renewal may reach Redis after the release (it would bring the lease back).
            if let Some(renewal) = admission.renewal.take() {
                renewal.stop().await;
            }
            self.finish_redis(&admission, used).await;
        }
    }

    fn already_over(&self, rate_keys: &dyn Fn() -> Vec<LimitKey>) -> Option<LimitDeny> {
        let now = std::time::Instant::now();
        if let Some((key, wait)) = self.known_refusals.refusal(rate_keys, now) {
            return Some(LimitDeny::for_key(&key, crate::clock::unix_now_i64(), wait));
        }
        // While Redis does not answer and this replica admits on its own counters, those know
        // their refusals as the memory limiter does. Not once Redis answers again: what the
        // local counters counted during the outage is never the shared counters' word.
        if self.settings.on_unavailable == Unavailable::LocalFallback && !self.answering.get() {
            return self.fallback.already_over(rate_keys);
        }
        None
    }

    async fn read(&self, keys: &[LimitKey]) -> Result<Vec<u64>, LimiterUnavailable> {
        let names: Vec<String> = keys.iter().map(LimitKey::redis_name).collect();
        let mut invocation =
            ScriptCall::new(&self.read_script, &names).map_err(LimiterUnavailable)?;
        for key in keys {
            invocation.arg(kind_code(&key.kind));
        }
        let values: Vec<i64> = self.invoke(&invocation).await?;
        Ok(values
            .into_iter()
            .map(|v| u64::try_from(v).unwrap_or(0))
            .collect())
    }

    /// Under `fail_closed`, whether Redis answers now: every metered request is refused while it
    /// does not, so the replica is not ready (every replica sharing this Redis goes unready
    /// with it; see the README's *Limits*). Under `local_fallback` the replica serves from its
    /// own counters, so it stays ready once Redis was reached (the revocation list read) once.
    fn is_ready(&self) -> bool {
        match self.settings.on_unavailable {
            Unavailable::FailClosed => self.is_connected(),
            Unavailable::LocalFallback => {
                self.conn.load().is_some() && self.revocations.has_been_read()
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.conn.load().is_some() && self.revocations.is_fresh() && self.answering.get()
    }
}

#[async_trait::async_trait]
impl RunRegistry for RedisBackend {
    async fn sight_run(
        &self,
        tenant: &TenantId,
        run: &str,
        expires_ms: i64,
    ) -> Result<RunSighting, LimiterUnavailable> {
        match self.sight_run_redis(tenant, run, expires_ms).await {
            Ok(sighting) => {
                if sighting.closed {
                    self.learned_closed(tenant, run);
                }
                Ok(sighting)
            }
            Err(e) => {
                METRICS.limiter_errors.inc();
                match self.settings.on_unavailable {
                    Unavailable::FailClosed => Err(e),
                    // The replica's own record: run events may then repeat across replicas.
                    Unavailable::LocalFallback => {
                        self.fallback.sight_run(tenant, run, expires_ms).await
                    }
                }
            }
        }
    }

    async fn count_refusal(&self, tenant: &TenantId, run: &str) {
        if self.conn.load().is_none() {
            return;
        }
        let counted =
            match ScriptCall::new(&self.count_refusal_script, &[run_life_key(tenant, run)]) {
                Ok(mut invocation) => {
                    invocation.arg(self.settings.run_ttl.as_secs().max(1));
                    self.invoke::<i64>(&invocation).await.is_ok()
                }
                Err(_) => false,
            };
        if !counted {
            METRICS.limiter_errors.inc();
        }
    }

    async fn run_closed(&self, tenant: &TenantId, run: &str) -> Result<bool, LimiterUnavailable> {
        let answer = match self.conn_here() {
            Some((mut conn, _)) => {
                let mut cmd = redis::cmd("HEXISTS");
                cmd.arg(run_life_key(tenant, run)).arg("closed_ms");
                let exists = cmd.query_async::<i64>(&mut conn);
                answer_within(self.settings.timeout, exists).await
            }
            None => None,
        };
        match answer {
            Some(Ok(exists)) => {
                self.answering.mark(true);
                if exists == 1 {
                    self.learned_closed(tenant, run);
                }
                Ok(exists == 1)
            }
            failed => {
                self.answering.mark(false);
                METRICS.limiter_errors.inc();
                match self.settings.on_unavailable {
                    Unavailable::FailClosed => Err(LimiterUnavailable(match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "no answer".into(),
                    })),
                    Unavailable::LocalFallback => self.fallback.run_closed(tenant, run).await,
                }
            }
        }
    }

    async fn end_run(
        &self,
        tenant: &TenantId,
        run: &str,
        end: RunEnd,
    ) -> Result<RunClaim, LimiterUnavailable> {
        // SECURITY (audit): a claim applies only until its deadline, and its caller waits past
        // it (see [`CLAIM_SLACK`]): a claim is either answered or never applied, so a summary is
        // not lost to a claim that landed after its caller gave up. Without Redis's clock there
        // is no deadline, and no claim is sent.
        let deadline = self
            .clock
            .after(self.settings.timeout + CLAIM_SLACK)
            .ok_or_else(|| {
                LimiterUnavailable("redis's clock is not known yet; no run is claimed".into())
            })?;
        let mut invocation = ScriptCall::new(&self.end_run_script, &[run_life_key(tenant, run)])
            .map_err(LimiterUnavailable)?;
        invocation
            .arg(match end {
                RunEnd::Closed => "closed",
                RunEnd::Expired => "expired",
            })
            .arg(self.settings.run_ttl.as_secs().max(1))
            .arg(deadline);
        let reply: Vec<i64> = self
            .invoke_within(&invocation, self.settings.timeout + CLAIM_SLACK * 2)
            .await?;
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        // Every answer but a late one marked the run closed.
        if end == RunEnd::Closed && reply.first().is_some_and(|r| *r >= 0) {
            self.learned_closed(tenant, run);
        }
        match reply.first() {
            Some(-1) => Err(LimiterUnavailable(format!(
                "the run claim reached redis more than {:?} after it was sent; nothing was claimed",
                self.settings.timeout + CLAIM_SLACK
            ))),
            Some(0) => Ok(RunClaim::Taken),
            Some(2) => Ok(RunClaim::NotYet { expires_ms: at(1) }),
            Some(1) => Ok(RunClaim::Claimed(RunLedger {
                start_ms: Some(at(1)).filter(|s| *s >= 0),
                end_ms: at(2),
                requests: u64::try_from(at(3)).unwrap_or(0),
                refusals: u64::try_from(at(4)).unwrap_or(0),
            })),
            _ => Err(LimiterUnavailable(
                "unexpected answer to the run claim".into(),
            )),
        }
    }
}

/// `ADMIT`'s answer: its figures as one string of integers (a Redis array of integers costs the
/// client several times more to parse). Anything else admits nothing.
fn figures(reply: &str) -> Result<Vec<i64>, LimiterUnavailable> {
    reply
        .split(' ')
        .map(|n| n.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| LimiterUnavailable("unexpected answer to the admission".into()))
}

fn decode(
    keys: &[LimitKey],
    reply: &[i64],
    lease_id: String,
    charge: Charge,
) -> Result<Admission, AdmitError> {
    // SECURITY: only the script's own answers are read: admitted with two figures a key, or
    // refused by one of the keys. Anything else (a bare `1` from whatever answered, an answer
    // cut short) admits nothing: a figure filled in here would admit with nothing counted.
    match reply.first() {
        Some(1) if reply.len() == 1 + 2 * keys.len() => {
            let mut admission = Admission {
                lease_id,
                reserved: charge,
                ..Admission::default()
            };
            for (i, key) in keys.iter().enumerate() {
                let (remaining, second) = (reply[1 + 2 * i], reply[2 + 2 * i]);
                match key.kind {
                    LimitKind::Rate { per_period, .. } => {
                        let remaining = u32::try_from(remaining.max(0)).unwrap_or(0);
                        let reset_secs = super::whole_secs_up(Duration::from_micros(
                            u64::try_from(second.max(0)).unwrap_or(0),
                        ));
                        if admission.headline.is_none_or(|h| remaining < h.remaining) {
                            admission.headline = Some(RateHeadline {
                                limit: per_period,
                                remaining,
                                reset_secs,
                            });
                        }
                    }
                    LimitKind::Concurrency { .. } => admission.leases.push(key.clone()),
                    LimitKind::TokensPerMinute { .. } => {
                        admission.meter(key, u64::try_from(second.max(0)).unwrap_or(0), charge)
                    }
                    LimitKind::Quota { .. } => admission.meter(key, 0, charge),
                    LimitKind::WallTime { .. } => {}
                }
            }
            Ok(admission)
        }
        Some(0) if reply.len() == 3 => {
            let key = usize::try_from(reply[1])
                .ok()
                .and_then(|index| keys.get(index.checked_sub(1)?))
                .ok_or(AdmitError::Unavailable)?;
            let retry_us = u64::try_from(reply[2].max(0)).unwrap_or(1_000_000);
            Err(AdmitError::Limited(LimitDeny::for_key(
                key,
                crate::clock::unix_now_i64(),
                Duration::from_micros(retry_us),
            )))
        }
        // An answer we do not understand admits nothing.
        _ => Err(AdmitError::Unavailable),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redis_answers_while_some_call_got_an_answer_lately() {
        let a = Answering::default();
        a.mark(true);
        assert!(a.get());
        // One master hung: its calls fail, the others' are answered.
        a.mark(false);
        assert!(a.get(), "an answer a moment ago");
        a.mark(true);
        a.mark(false);
        assert!(a.get());
        // Every call failed for longer than the window: not answering.
        a.answered_ms.store(
            unix_us() / 1000 - i64::try_from(RECENT_ANSWER.as_millis()).unwrap() - 1,
            Ordering::Relaxed,
        );
        assert!(!a.get());
        // The first answer makes it answering again at once.
        a.mark(true);
        assert!(a.get());
    }

    /// The script keeps a counter the hour [`crate::limits::QUOTA_KEPT_SECS`] says past its write.
    #[test]
    fn the_admit_script_keeps_a_counter_as_long_as_the_proxy_says() {
        let kept = format!(
            "math.floor(now / 1000000) + {})",
            crate::limits::QUOTA_KEPT_SECS
        );
        assert!(ADMIT.contains(&kept), "{kept}");
    }

    /// A day counter's expiry is the proxy's day end, on Redis's clock: three hours ahead of
    /// the proxy's, Redis keeps it three hours longer than the local time says.
    #[test]
    fn a_windows_expiry_is_put_on_redis_clock() {
        let clock = RedisClock::default();
        assert_eq!(clock.wall_offset_secs(), 0, "not measured yet");
        let sent = mono_us();
        clock.measured(sent, unix_us() + 10_800_000_000 + 500, sent + 1000);
        assert!((1_010_799..=1_010_800).contains(&(1_000_000 + clock.wall_offset_secs())));
        clock.measured(sent, unix_us() - 10_800_000_000 + 500, sent + 1000);
        assert!((989_199..=989_200).contains(&(1_000_000 + clock.wall_offset_secs())));
    }

    /// Only the admission script's own answers admit or refuse: whatever else answered (a bare
    /// `1` from a server that is not Redis, an answer cut short, an index out of range) admits
    /// nothing.
    #[test]
    fn an_answer_not_shaped_as_the_scripts_admits_nothing() {
        let acme = TenantId::new("acme").unwrap();
        let keys = [
            LimitKey {
                scope: super::super::Scope::Tenant(acme.clone()),
                kind: LimitKind::Rate {
                    per_period: 10,
                    period_secs: 60,
                    burst: 10,
                },
            },
            LimitKey {
                scope: super::super::Scope::Tenant(acme),
                kind: LimitKind::Concurrency { max: 3 },
            },
        ];
        let decoded = |reply: &[i64]| decode(&keys, reply, "lease".into(), Charge::default());
        let admitted = decoded(&[1, 9, 6_000_000, -1, 0]).unwrap();
        assert_eq!(admitted.leases.len(), 1);
        assert_eq!(admitted.headline.unwrap().remaining, 9);
        assert!(matches!(
            decoded(&[0, 2, 1_000_000]),
            Err(AdmitError::Limited(_))
        ));
        for garbage in [
            &[1][..],
            &[1, 9, 6_000_000],
            &[1, 9, 6_000_000, -1, 0, 7],
            &[0],
            &[0, 2],
            &[0, 3, 1_000_000],
            &[0, 0, 1_000_000],
            &[0, -1, 1_000_000],
            &[2],
            &[],
        ] {
            assert!(
                matches!(decoded(garbage), Err(AdmitError::Unavailable)),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn only_a_policy_that_may_evict_is_warned_about() {
        let answer = |p: &str| vec!["maxmemory-policy".to_string(), p.to_string()];
        assert_eq!(evicting_policy(&answer("noeviction")), None);
        assert_eq!(evicting_policy(&answer("allkeys-lru")), Some("allkeys-lru"));
        assert_eq!(
            evicting_policy(&answer("volatile-ttl")),
            Some("volatile-ttl")
        );
        assert_eq!(evicting_policy(&[]), None);
    }

    /// A settlement's marker is the tenant's, so it shares the request's keys' cluster slot.
    #[test]
    fn a_settlements_marker_has_its_tenants_hash_tag() {
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(settle_marker(&acme, "00ff"), "tp:{acme}:settled:00ff");
    }

    #[test]
    fn an_admission_may_apply_until_its_deadline_on_redis_clock() {
        let clock = RedisClock::default();
        // Not measured yet: no deadline.
        assert_eq!(clock.deadline(Duration::from_millis(50)), 0);
        assert_eq!(clock.after(Duration::from_millis(50)), None);
        // Redis's clock an hour ahead of this one.
        let sent = mono_us();
        clock.measured(sent, unix_us() + 3_600_000_000 + 500, sent + 1000);
        let deadline = clock.deadline(Duration::from_millis(50));
        let expected = unix_us() + 3_600_000_000 + 1_100_000;
        assert!(
            (deadline - expected).abs() < 50_000,
            "{deadline} {expected}"
        );
        // A run's sighting: twice the call's timeout, no slack.
        let tight = clock.after(Duration::from_millis(100)).unwrap();
        let expected = unix_us() + 3_600_000_000 + 100_500;
        assert!((tight - expected).abs() < 50_000, "{tight} {expected}");
        assert_eq!(time_us(&["12".into(), "345".into()]), Some(12_000_345));
        assert_eq!(time_us(&["12".into()]), None);
    }
}
