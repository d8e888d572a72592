//! Holds in Redis, shared by every replica that counts its limits there, reached through the
//! shared Redis layer ([`crate::redis_conn`]): one server or a Redis Cluster, plain or TLS, with
//! an ACL user and password, like the limiter.
//!
//! A hold is a hash (`record`, `state`, `deadline`, `lease`, `decided`) at
//! `tp:approval:{<tenant>}:hold:<id>`; a tenant's pending holds are a sorted set at
//! `tp:approval:{<tenant>}:pending`, scored by when each stops counting (its deadline, or its
//! owner's lease when that ends first), and its decided (or orphaned) ones another at
//! `tp:approval:{<tenant>}:decided`, scored by when each stops being kept, so that opening lets
//! the oldest go past [`DECIDED_PER_PENDING`] times the tenant's cap, as the in-memory store does
//! (an agent that opens holds and hangs up would otherwise fill Redis for a minute at whatever
//! rate it can send). A tenant's keys share the `{tenant}` hash tag, so each script touches one
//! Cluster slot. The global cap is one more sorted set,
//! `tp:approvals:{approvals}:pending` (members `<tenant>/<id>`, same scores): a single key, so on
//! a cluster it lives in one slot, on one master, which every replica's opening goes through
//! (one small script per hold opened, one renewal a second per waiting hold). It is kept apart
//! from the tenants' keys (a script cannot span two slots): a hold is entered there first and
//! taken out again if its tenant is full; an entry that outlives its hold (a replica killed
//! between the two steps) stops counting at its score, so the cap heals by itself.
//!
//! Every change of state is one script: opening checks the tenant's cap, a transition is a
//! compare-and-set that also orphans a hold whose owner's lease lapsed. A waiting replica looks
//! at its hold (and renews its lease) every [`super::CHECK_INTERVAL`], by polling: nothing here
//! depends on pub/sub, so it works the same on a cluster. Every call is time-boxed; an
//! unreachable Redis refuses (`approval_unavailable`), never forwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;

use super::store::{
    counts_until, retained_until, Caps, Change, Decided, HoldRecord, HoldState, HoldStatus,
    HoldStore, OpenError, Renewal, StoreUnavailable, Transition, DECIDED_PER_PENDING, RETAIN_MS,
};
use crate::redis_conn::{AsyncConn, RedisEndpoint, ScriptCall};

const GLOBAL_OPEN: &str = r#"
-- KEYS[1] the global set. ARGV: member, score, now ms, cap, ttl ms.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"#;

const OPEN: &str = r#"
-- KEYS[1] hold, KEYS[2] pending set, KEYS[3] decided set. ARGV: id, record, deadline ms, now ms,
-- cap, ttl ms, lease ms ('' for a hold without an owner), score, decided cap, hold key prefix.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
-- The tenant's oldest decided holds go first once it keeps too many (their keys share the
-- tenant's hash tag, so they are in this script's slot).
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[9]) + 1
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[3], over)
  for i = 1, #gone, 2 do redis.call('DEL', ARGV[10] .. gone[i]) end
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'state', 'pending', 'deadline', ARGV[3])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'lease', ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return 1
"#;

/// Enters a hold just decided (or orphaned) in its tenant's decided set, scored by when it
/// stops being kept, so opening can let the oldest go (KEEP and TRANSITION begin with it).
const DECIDED: &str = r#"
local function decided(set, id, now, keep)
  redis.call('ZADD', set, tonumber(now) + tonumber(keep), id)
  if redis.call('PTTL', set) < tonumber(keep) then redis.call('PEXPIRE', set, keep) end
end
"#;

const KEEP: &str = r#"
-- KEYS[1] hold, KEYS[2] pending set, KEYS[3] decided set. ARGV: id, now ms, lease ms, decided
-- json (if orphaned), how long (ms) an orphaned hold is kept (never longer than it already is).
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {0, {}} end
local code = 1
if st == 'pending' then
  local lease = redis.call('HGET', KEYS[1], 'lease')
  if lease then
    if tonumber(lease) < tonumber(ARGV[2]) then
      redis.call('HSET', KEYS[1], 'state', 'orphaned', 'decided', ARGV[4])
      redis.call('ZREM', KEYS[2], ARGV[1])
      if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
      decided(KEYS[3], ARGV[1], ARGV[2], ARGV[5])
      code = 2
    else
      redis.call('HSET', KEYS[1], 'lease', ARGV[3])
      local deadline = redis.call('HGET', KEYS[1], 'deadline')
      local score = ARGV[3]
      if tonumber(deadline) < tonumber(ARGV[3]) then score = deadline end
      redis.call('ZADD', KEYS[2], 'XX', score, ARGV[1])
    end
  end
end
return {code, redis.call('HGETALL', KEYS[1])}
"#;

const TRANSITION: &str = r#"
-- KEYS[1] hold, KEYS[2] pending set, KEYS[3] decided set. ARGV: id, from, to, decided json, now
-- ms, before deadline, how long (ms) the hold is kept in its new state, and how long once
-- orphaned (never longer than it already is).
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {0, ''} end
if st ~= ARGV[2] then return {2, st} end
if st == 'pending' then
  local lease = redis.call('HGET', KEYS[1], 'lease')
  if lease and tonumber(lease) < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'state', 'orphaned', 'decided', ARGV[4])
    redis.call('ZREM', KEYS[2], ARGV[1])
    if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
    decided(KEYS[3], ARGV[1], ARGV[5], ARGV[8])
    return {4, 'orphaned'}
  end
end
if ARGV[6] == '1' and tonumber(ARGV[5]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then
  return {3, st}
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'decided', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] ~= 'pending' then
  if redis.call('PTTL', KEYS[1]) > tonumber(ARGV[7]) then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
  decided(KEYS[3], ARGV[1], ARGV[5], ARGV[7])
end
return {1, ARGV[3]}
"#;

/// The global cap's set (its own hash tag: see the module documentation).
const GLOBAL_KEY: &str = "tp:approvals:{approvals}:pending";

/// Holds in Redis.
#[derive(Debug)]
pub struct RedisHolds {
    conn: Arc<ArcSwapOption<AsyncConn>>,
    global_open: redis::Script,
    open: redis::Script,
    keep: redis::Script,
    transition: redis::Script,
    timeout: Duration,
}

fn hold_key(tenant: &str, id: &str) -> String {
    format!("tp:approval:{{{tenant}}}:hold:{id}")
}

fn pending_key(tenant: &str) -> String {
    format!("tp:approval:{{{tenant}}}:pending")
}

/// The tenant's decided holds, scored by when each stops being kept: the bound on how many a
/// tenant keeps ([`DECIDED_PER_PENDING`]) is enforced on it.
fn decided_key(tenant: &str) -> String {
    format!("tp:approval:{{{tenant}}}:decided")
}

fn global_member(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// A call of `script` on `keys`, which must share one hash tag (one Cluster slot).
fn prepare<'s>(
    script: &'s redis::Script,
    keys: &[&str],
) -> Result<ScriptCall<'s>, StoreUnavailable> {
    ScriptCall::new(script, keys).map_err(StoreUnavailable)
}

impl RedisHolds {
    /// Holds at `endpoint`, each call allowed `timeout`. The connection is made (and remade)
    /// on a thread of its own, so the proxy starts while Redis is down and refuses holds until
    /// it is up.
    pub fn start(endpoint: RedisEndpoint, timeout: Duration) -> Result<Self, String> {
        // The connect itself may take longer than one call's budget (TLS, a cluster's slot map).
        let connect_timeout = timeout.max(Duration::from_secs(2));
        let conn: Arc<ArcSwapOption<AsyncConn>> = Arc::new(ArcSwapOption::empty());
        let slot = conn.clone();
        std::thread::Builder::new()
            .name("approvals-redis".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    tracing::error!("cannot start the approvals redis runtime");
                    return;
                };
                rt.block_on(async move {
                    // Once made, the connection reconnects by itself (a cluster connection
                    // also follows failovers); its driver lives on this runtime.
                    loop {
                        match endpoint.connect(connect_timeout).await {
                            Ok(m) => {
                                slot.store(Some(Arc::new(m)));
                                tracing::info!("approval holds connected to redis");
                                std::future::pending::<()>().await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "approval holds cannot reach redis; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            global_open: redis::Script::new(GLOBAL_OPEN),
            open: redis::Script::new(OPEN),
            keep: redis::Script::new(&format!("{DECIDED}{KEEP}")),
            transition: redis::Script::new(&format!("{DECIDED}{TRANSITION}")),
            // Holds are not on the hot path; a slow Redis gets a little longer than counters.
            timeout: timeout.max(Duration::from_millis(500)),
        })
    }

    fn connection(&self) -> Result<AsyncConn, StoreUnavailable> {
        self.conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| StoreUnavailable("not connected".into()))
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreUnavailable> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreUnavailable(e.to_string())),
            Err(_) => Err(StoreUnavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn status(fields: HashMap<String, String>) -> Option<HoldStatus> {
        let record: HoldRecord = serde_json::from_str(fields.get("record")?).ok()?;
        let state = HoldState::parse(fields.get("state")?)?;
        let decided = fields
            .get("decided")
            .and_then(|d| serde_json::from_str::<Decided>(d).ok());
        let lease_ms = fields.get("lease").and_then(|l| l.parse().ok());
        Some(HoldStatus {
            record,
            state,
            decided,
            lease_ms,
        })
    }

    /// Takes a hold out of the global set once it no longer counts (best effort: an entry
    /// left behind stops counting at its score).
    async fn leave_global(&self, tenant: &str, id: &str) {
        let Ok(mut conn) = self.connection() else {
            return;
        };
        let removed: Result<i64, _> = self
            .timed(
                redis::cmd("ZREM")
                    .arg(GLOBAL_KEY)
                    .arg(global_member(tenant, id))
                    .query_async(&mut conn),
            )
            .await;
        if let Err(e) = removed {
            tracing::debug!(error = %e, "cannot take a hold out of the global count");
        }
    }
}

#[async_trait]
impl HoldStore for RedisHolds {
    async fn open(
        &self,
        record: &HoldRecord,
        lease_ms: Option<u64>,
        caps: Caps,
    ) -> Result<(), OpenError> {
        let unavailable = |e: StoreUnavailable| OpenError::Unavailable(e.0);
        let mut conn = self.connection().map_err(unavailable)?;
        let json =
            serde_json::to_string(record).map_err(|e| OpenError::Unavailable(e.to_string()))?;
        let ttl = record
            .deadline_ms
            .saturating_sub(record.created_ms)
            .saturating_add(RETAIN_MS);
        let score = counts_until(record.deadline_ms, lease_ms);
        let member = global_member(&record.tenant, &record.id);
        let mut global = prepare(&self.global_open, &[GLOBAL_KEY]).map_err(unavailable)?;
        global
            .arg(&member)
            .arg(score)
            .arg(record.created_ms)
            .arg(caps.global)
            .arg(ttl);
        let entered: i64 = self
            .timed(global.run(&mut conn))
            .await
            .map_err(unavailable)?;
        if entered != 1 {
            return Err(OpenError::GlobalFull);
        }
        let (hold, pending, decided) = (
            hold_key(&record.tenant, &record.id),
            pending_key(&record.tenant),
            decided_key(&record.tenant),
        );
        let mut invocation =
            prepare(&self.open, &[&hold, &pending, &decided]).map_err(unavailable)?;
        invocation
            .arg(&record.id)
            .arg(json)
            .arg(record.deadline_ms)
            .arg(record.created_ms)
            .arg(caps.per_tenant)
            .arg(ttl)
            .arg(lease_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(score)
            .arg(caps.per_tenant.saturating_mul(DECIDED_PER_PENDING).max(1))
            .arg(hold_key(&record.tenant, ""));
        let opened = self.timed(invocation.run::<i64>(&mut conn)).await;
        match opened {
            Ok(1) => Ok(()),
            Ok(_) => {
                self.leave_global(&record.tenant, &record.id).await;
                Err(OpenError::TenantFull)
            }
            Err(e) => {
                self.leave_global(&record.tenant, &record.id).await;
                Err(OpenError::Unavailable(e.0))
            }
        }
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<HoldStatus>, StoreUnavailable> {
        let mut conn = self.connection()?;
        let fields: HashMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(hold_key(tenant, id))
                    .query_async(&mut conn),
            )
            .await?;
        // SECURITY: the key names the tenant, and the record must too.
        Ok(Self::status(fields).filter(|h| h.record.tenant == tenant))
    }

    async fn keep(
        &self,
        tenant: &str,
        id: &str,
        now_ms: u64,
        lease_ms: u64,
        renew_global: bool,
    ) -> Result<Renewal, StoreUnavailable> {
        let mut conn = self.connection()?;
        let orphaned = serde_json::to_string(&Decided {
            approver: None,
            reason: None,
            at_ms: now_ms,
        })
        .map_err(|e| StoreUnavailable(e.to_string()))?;
        let (hold, pending, decided) = (
            hold_key(tenant, id),
            pending_key(tenant),
            decided_key(tenant),
        );
        let mut invocation = prepare(&self.keep, &[&hold, &pending, &decided])?;
        invocation
            .arg(id)
            .arg(now_ms)
            .arg(lease_ms)
            .arg(orphaned)
            .arg(retained_until(HoldState::Orphaned, 0));
        let (code, fields): (i64, HashMap<String, String>) =
            self.timed(invocation.run(&mut conn)).await?;
        // SECURITY: the key names the tenant, and the record must too.
        let Some(status) = Self::status(fields).filter(|h| h.record.tenant == tenant) else {
            return Ok(Renewal::Unknown);
        };
        if code == 2 {
            self.leave_global(tenant, id).await;
            return Ok(Renewal::OrphanedNow(Box::new(status)));
        }
        if renew_global && status.state == HoldState::Pending && status.lease_ms.is_some() {
            let renewed: Result<i64, _> = self
                .timed(
                    redis::cmd("ZADD")
                        .arg(GLOBAL_KEY)
                        .arg("XX")
                        .arg(status.counts_until())
                        .arg(global_member(tenant, id))
                        .query_async(&mut conn),
                )
                .await;
            if let Err(e) = renewed {
                tracing::debug!(error = %e, "cannot renew a hold in the global count");
            }
        }
        Ok(Renewal::Held(Box::new(status)))
    }

    async fn transition(
        &self,
        tenant: &str,
        id: &str,
        change: Change,
    ) -> Result<Transition, StoreUnavailable> {
        let mut conn = self.connection()?;
        let decided =
            serde_json::to_string(&change.decided).map_err(|e| StoreUnavailable(e.to_string()))?;
        let (hold, pending, decided_set) = (
            hold_key(tenant, id),
            pending_key(tenant),
            decided_key(tenant),
        );
        let mut invocation = prepare(&self.transition, &[&hold, &pending, &decided_set])?;
        invocation
            .arg(id)
            .arg(change.from.as_str())
            .arg(change.to.as_str())
            .arg(decided)
            .arg(change.decided.at_ms)
            .arg(if change.before_deadline { "1" } else { "0" })
            .arg(retained_until(change.to, 0))
            .arg(retained_until(HoldState::Orphaned, 0));
        let (code, state): (i64, String) = self.timed(invocation.run(&mut conn)).await?;
        let left_pending = change.from == HoldState::Pending && matches!(code, 1 | 4);
        if left_pending {
            self.leave_global(tenant, id).await;
        }
        Ok(match code {
            0 => Transition::Unknown,
            2 => match HoldState::parse(&state) {
                Some(s) => Transition::NotFrom(s),
                None => Transition::Unknown,
            },
            3 => Transition::Late,
            4 => Transition::Orphaned,
            _ => match self.get(tenant, id).await? {
                Some(h) => Transition::Done(Box::new(h)),
                None => Transition::Unknown,
            },
        })
    }

    async fn pending(
        &self,
        tenant: &str,
        now_ms: u64,
    ) -> Result<Vec<HoldStatus>, StoreUnavailable> {
        let mut conn = self.connection()?;
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(pending_key(tenant))
                    .arg(format!("({now_ms}"))
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(h) = self.get(tenant, &id).await? {
                if h.state == HoldState::Pending && h.counts_until() > now_ms {
                    out.push(h);
                }
            }
        }
        out.sort_by_key(|h| h.record.created_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_conn::one_slot;

    #[test]
    fn a_tenants_keys_share_its_slot_and_the_global_set_has_its_own() {
        let (hold, pending, decided) = (
            hold_key("acme", "h1"),
            pending_key("acme"),
            decided_key("acme"),
        );
        assert_eq!(
            one_slot([hold.as_str(), pending.as_str(), decided.as_str()]),
            Ok(Some("acme"))
        );
        assert_eq!(one_slot([GLOBAL_KEY]), Ok(Some("approvals")));
        // A tenant named like the global set's tag shares its slot, never its key.
        assert_ne!(pending_key("approvals"), GLOBAL_KEY);
    }
}
