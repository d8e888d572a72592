//! The revocation list every replica shares: revoked token ids (`jti`) in Redis, beside the
//! limit counters, added by `tenant-proxy token revoke` and read by every replica sharing the
//! limiter. The `[token] revoked_jtis_file` stays a second source: a token is refused when
//! either names its id.
//!
//! The list is the sorted set `tp:{revocations}:jtis` (member: the jti; score: the unix second
//! after which the entry may go, the latest expiry a token with that id can have) and a version
//! `tp:{revocations}:version` each revocation sets to the time it wrote, both under one hash tag (one
//! Cluster slot). Each replica keeps the whole list in memory and refreshes it every
//! [`REFRESH`] in the background (one script call that returns the list only when its version
//! moved), so the hot path reads a local set and never waits on Redis. A list that could not be
//! refreshed for [`STALE_AFTER`] is stale: with `on_unavailable = "fail_closed"` token requests
//! are then refused (`limiter_unavailable`), as a revocation issued meanwhile could not be seen;
//! with `local_fallback` the last list read keeps being used.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::redis::Unavailable;
use super::LimiterUnavailable;
use crate::clock::unix_ms;
use crate::redis_conn::{AsyncConn, ScriptCall};

/// The sorted set of revoked ids.
pub const REVOKED_KEY: &str = "tp:{revocations}:jtis";
/// Set by every revocation to a value never given before (the write's time), so a refresh
/// fetches the list only when it changed, also after Redis lost its data.
pub const VERSION_KEY: &str = "tp:{revocations}:version";
/// How often each replica reads the list.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long without a successful read before the list counts as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

const READ: &str = r#"
-- KEYS[1] the revoked set, KEYS[2] its version; ARGV[1] the version the caller has.
-- Drops entries past their keep time; returns {version} when unchanged, else {version, ids...}.
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. t[1])
local v = tonumber(redis.call('GET', KEYS[2]) or 0)
if v == tonumber(ARGV[1]) then return {v} end
local out = {v}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do table.insert(out, id) end
return out
"#;

const REVOKE: &str = r#"
-- KEYS[1] the revoked set, KEYS[2] its version; ARGV[1] the id, ARGV[2] keep until (unix s).
-- An id already revoked keeps the later of its two keep times. The new version is the time of
-- this write in microseconds (one more than the last version when the clock is behind it), not
-- a count: a Redis that lost its data (a restart without persistence, a flush, a failover to a
-- replica that missed writes) would count again from 0 and give a later list a version a
-- replica already holds, which would then never fetch it. A time is not given twice.
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or 0)
if v <= last then v = last + 1 end
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or 0)
if tonumber(ARGV[2]) > cur then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('SET', KEYS[2], string.format('%d', v))
return v
"#;

/// The shared revocation list as this replica last read it.
#[derive(Debug)]
pub struct SharedRevocations {
    ids: ArcSwap<HashSet<String>>,
    /// The version of `ids` (-1: never read).
    version: AtomicI64,
    /// Unix ms of the last successful read (0: never).
    read_at_ms: AtomicI64,
    on_unavailable: Unavailable,
}

impl SharedRevocations {
    /// An empty list, not yet read.
    pub fn new(on_unavailable: Unavailable) -> Self {
        Self {
            ids: ArcSwap::from_pointee(HashSet::new()),
            version: AtomicI64::new(-1),
            read_at_ms: AtomicI64::new(0),
            on_unavailable,
        }
    }

    /// Whether `jti` is revoked; an error when the list is stale and the limiter fails closed.
    pub fn is_revoked(&self, jti: &str) -> Result<bool, LimiterUnavailable> {
        let age = unix_ms().saturating_sub(self.read_at_ms.load(Ordering::Acquire));
        let stale = age > i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
        // SECURITY: a revocation issued while the list cannot be read would go unseen.
        if stale && self.on_unavailable == Unavailable::FailClosed {
            return Err(LimiterUnavailable(
                "the shared revocation list has not been read recently".into(),
            ));
        }
        Ok(self.ids.load().contains(jti))
    }

    /// Whether the list was ever read (readiness: token requests fail closed until it was).
    pub fn has_been_read(&self) -> bool {
        self.read_at_ms.load(Ordering::Acquire) > 0
    }

    /// Whether the list was read within [`STALE_AFTER`]: under `fail_closed` token requests are
    /// refused otherwise, so a replica whose list cannot be read (an ACL that leaves out its
    /// key, the master of its slot down) is not ready.
    pub fn is_fresh(&self) -> bool {
        let age = unix_ms().saturating_sub(self.read_at_ms.load(Ordering::Acquire));
        self.has_been_read() && age <= i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX)
    }

    /// Reads the list once through `conn`, within `timeout`.
    pub async fn refresh(&self, conn: &AsyncConn, timeout: Duration) -> Result<(), String> {
        let mut conn = conn.clone();
        let script = redis::Script::new(READ);
        let mut call = ScriptCall::new(&script, &[REVOKED_KEY, VERSION_KEY])?;
        call.arg(self.version.load(Ordering::Acquire));
        let reply: Vec<redis::Value> =
            match tokio::time::timeout(timeout, call.run(&mut conn)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {timeout:?}")),
            };
        let mut items = reply.into_iter();
        let version: i64 = items
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| e.to_string())?
            .ok_or("an empty answer")?;
        if version != self.version.load(Ordering::Acquire) {
            let ids = items
                .map(|v| redis::from_redis_value::<String>(v).map_err(|e| e.to_string()))
                .collect::<Result<HashSet<_>, _>>()?;
            self.ids.store(Arc::new(ids));
            self.version.store(version, Ordering::Release);
        }
        self.read_at_ms.store(unix_ms(), Ordering::Release);
        Ok(())
    }

    /// Reads the list every [`REFRESH`] for as long as the process lives (on the limiter's
    /// runtime), logging a failure once per outage.
    pub async fn keep_fresh(
        self: Arc<Self>,
        conn: Arc<arc_swap::ArcSwapOption<AsyncConn>>,
        timeout: Duration,
    ) {
        let mut failing = false;
        loop {
            let result = match conn.load_full() {
                Some(c) => self.refresh(&c, timeout).await,
                None => Err("not connected".into()),
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the shared revocation list is read again");
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the shared revocation list");
                }
                _ => {}
            }
            tokio::time::sleep(REFRESH).await;
        }
    }
}

/// Adds `jti` to the shared list until `keep_until` (unix s: the latest expiry a token with
/// that id can have); the new version.
pub async fn revoke(conn: &AsyncConn, jti: &str, keep_until: i64) -> Result<i64, String> {
    let mut conn = conn.clone();
    let script = redis::Script::new(REVOKE);
    let mut call = ScriptCall::new(&script, &[REVOKED_KEY, VERSION_KEY])?;
    call.arg(jti).arg(keep_until);
    call.run(&mut conn).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_conn::one_slot;

    #[test]
    fn a_list_never_read_is_stale_and_fails_closed_unless_told_to_fall_back() {
        let closed = SharedRevocations::new(Unavailable::FailClosed);
        assert!(closed.is_revoked("x").is_err());
        let fallback = SharedRevocations::new(Unavailable::LocalFallback);
        assert_eq!(fallback.is_revoked("x"), Ok(false));
        // Read just now: fresh.
        closed.read_at_ms.store(unix_ms(), Ordering::Release);
        closed
            .ids
            .store(Arc::new(HashSet::from(["gone".to_string()])));
        assert_eq!(closed.is_revoked("gone"), Ok(true));
        assert_eq!(closed.is_revoked("other"), Ok(false));
    }

    #[test]
    fn both_keys_share_one_slot() {
        assert_eq!(
            one_slot([REVOKED_KEY, VERSION_KEY]),
            Ok(Some("revocations"))
        );
    }
}
