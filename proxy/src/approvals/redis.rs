//! Holds in Redis, shared by every replica that counts its limits there. A hold is a hash
//! (`record`, `state`, `decided`) at `tp:approval:{<tenant>}:hold:<id>`; a tenant's pending holds
//! are a sorted set by deadline at `tp:approval:{<tenant>}:pending`. Both keys of a tenant share
//! the `{tenant}` hash tag, so each script touches one Redis Cluster slot. Every change of state
//! is one script: opening checks the tenant's cap, a transition is a compare-and-set. Every call
//! is time-boxed; an unreachable Redis refuses (`approval_unavailable`), never forwards.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::store::{
    Change, Decided, HoldRecord, HoldState, HoldStatus, HoldStore, OpenError, StoreUnavailable,
    Transition, RETAIN_MS,
};

const OPEN: &str = r#"
-- KEYS[1] hold, KEYS[2] pending set. ARGV: id, record, deadline ms, now ms, cap, ttl ms.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'state', 'pending', 'deadline', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return 1
"#;

const TRANSITION: &str = r#"
-- KEYS[1] hold, KEYS[2] pending set. ARGV: id, from, to, decided json, now ms, before deadline.
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {0, ''} end
if st ~= ARGV[2] then return {2, st} end
if ARGV[6] == '1' and tonumber(ARGV[5]) > tonumber(redis.call('HGET', KEYS[1], 'deadline')) then
  return {3, st}
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'decided', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
return {1, ARGV[3]}
"#;

/// Holds in Redis.
#[derive(Debug)]
pub struct RedisHolds {
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    open: redis::Script,
    transition: redis::Script,
    timeout: Duration,
}

fn hold_key(tenant: &str, id: &str) -> String {
    format!("tp:approval:{{{tenant}}}:hold:{id}")
}

fn pending_key(tenant: &str) -> String {
    format!("tp:approval:{{{tenant}}}:pending")
}

impl RedisHolds {
    /// Holds at `url`, each call allowed `timeout`. The connection is made (and remade) on a
    /// thread of its own, so the proxy starts while Redis is down and refuses holds until it
    /// is up.
    pub fn start(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let conn: Arc<ArcSwapOption<ConnectionManager>> = Arc::new(ArcSwapOption::empty());
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
                    loop {
                        match ConnectionManager::new(client.clone()).await {
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
            open: redis::Script::new(OPEN),
            transition: redis::Script::new(TRANSITION),
            // Holds are not on the hot path; a slow Redis gets a little longer than counters.
            timeout: timeout.max(Duration::from_millis(500)),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, StoreUnavailable> {
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

    fn status(fields: std::collections::HashMap<String, String>) -> Option<HoldStatus> {
        let record: HoldRecord = serde_json::from_str(fields.get("record")?).ok()?;
        let state = HoldState::parse(fields.get("state")?)?;
        let decided = fields
            .get("decided")
            .and_then(|d| serde_json::from_str::<Decided>(d).ok());
        Some(HoldStatus {
            record,
            state,
            decided,
        })
    }
}

#[async_trait]
impl HoldStore for RedisHolds {
    async fn open(&self, record: &HoldRecord, max_per_tenant: usize) -> Result<(), OpenError> {
        let mut conn = self.connection().map_err(|e| OpenError::Unavailable(e.0))?;
        let json =
            serde_json::to_string(record).map_err(|e| OpenError::Unavailable(e.to_string()))?;
        let ttl = record
            .deadline_ms
            .saturating_sub(record.created_ms)
            .saturating_add(RETAIN_MS);
        let mut invocation = self.open.prepare_invoke();
        invocation
            .key(hold_key(&record.tenant, &record.id))
            .key(pending_key(&record.tenant))
            .arg(&record.id)
            .arg(json)
            .arg(record.deadline_ms)
            .arg(record.created_ms)
            .arg(max_per_tenant)
            .arg(ttl);
        let opened: i64 = self
            .timed(invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| OpenError::Unavailable(e.0))?;
        if opened == 1 {
            Ok(())
        } else {
            Err(OpenError::Full)
        }
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<HoldStatus>, StoreUnavailable> {
        let mut conn = self.connection()?;
        let fields: std::collections::HashMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(hold_key(tenant, id))
                    .query_async(&mut conn),
            )
            .await?;
        // SECURITY: the key names the tenant, and the record must too.
        Ok(Self::status(fields).filter(|h| h.record.tenant == tenant))
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
        let mut invocation = self.transition.prepare_invoke();
        invocation
            .key(hold_key(tenant, id))
            .key(pending_key(tenant))
            .arg(id)
            .arg(change.from.as_str())
            .arg(change.to.as_str())
            .arg(decided)
            .arg(change.decided.at_ms)
            .arg(if change.before_deadline { "1" } else { "0" });
        let (code, state): (i64, String) = self.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(match code {
            0 => Transition::Unknown,
            2 => match HoldState::parse(&state) {
                Some(s) => Transition::NotFrom(s),
                None => Transition::Unknown,
            },
            3 => Transition::Late,
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
                if h.state == HoldState::Pending {
                    out.push(h);
                }
            }
        }
        out.sort_by_key(|h| h.record.created_ms);
        Ok(out)
    }
}
