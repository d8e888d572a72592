//! Where holds live: in this process ([`MemoryHolds`]) or in Redis ([`super::redis::RedisHolds`])
//! when the limiter counts there, so every replica sees every hold. Every change of state is one
//! compare-and-set ([`HoldStore::transition`]): an approval racing a timeout, or two approvers
//! racing each other, end with exactly one winner.
//!
//! Holds are keyed by tenant first: a hold id is only ever looked up within the caller's own
//! tenant, so another tenant's hold is not there to be found.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How long a hold is kept after its deadline (a polling agent can still learn its outcome).
pub const RETAIN_MS: u64 = 10 * 60 * 1000;

/// What is held: enough for an approver to decide, never a secret (names of credentials, a
/// digest of the body, the path without its query values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The hold id (128 random bits, hex).
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// The workload that sent the request.
    pub workload: String,
    /// Its run.
    pub run_id: String,
    /// The held request's id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Path, query values removed.
    pub path: String,
    /// The model the body names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The MCP server, for a request to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server: Option<String>,
    /// The MCP tools the request calls (the whole batch waits together).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_tools: Vec<String>,
    /// SHA-256 of the body (for MCP, of the JSON-RPC carrying the tools' arguments), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// Credentials the request would use, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// The reservation its ceilings would take, in micro-units, when it is priced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost_micros: Option<u64>,
    /// The marked permits that asked for the hold.
    pub policy_ids: Vec<String>,
    /// Scopes an approver's token must carry, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// `wait` or `poll`.
    pub mode: String,
    /// Unix milliseconds it was held.
    pub created_ms: u64,
    /// Unix milliseconds after which it can no longer be approved.
    pub deadline_ms: u64,
    /// Digest of the request as held (method, target, headers but the proxy's own, body): a
    /// polling agent's repeat must match it. Not shown to approvers.
    #[serde(default)]
    pub request_digest: String,
}

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Waiting for a person.
    Pending,
    /// Approved; for a polled hold, not yet sent again by its agent.
    Approved,
    /// Denied.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// Ended undecided: the agent went away, or its proxy shut down.
    Cancelled,
    /// An approved polled hold whose request was forwarded (once).
    Forwarded,
}

impl HoldState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Pending => "pending",
            HoldState::Approved => "approved",
            HoldState::Denied => "denied",
            HoldState::Expired => "expired",
            HoldState::Cancelled => "cancelled",
            HoldState::Forwarded => "forwarded",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => HoldState::Pending,
            "approved" => HoldState::Approved,
            "denied" => HoldState::Denied,
            "expired" => HoldState::Expired,
            "cancelled" => HoldState::Cancelled,
            "forwarded" => HoldState::Forwarded,
            _ => return None,
        })
    }
}

/// Who decided, why and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Decided {
    /// The approver (`sub` of their token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// Their reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A hold and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldStatus {
    /// What is held.
    pub record: HoldRecord,
    /// Its state.
    pub state: HoldState,
    /// The decision, once there is one.
    pub decided: Option<Decided>,
}

/// What a compare-and-set came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Done: the hold as it is now.
    Done(Box<HoldStatus>),
    /// The hold was not in the expected state (its state).
    NotFrom(HoldState),
    /// A decision came after the hold's deadline.
    Late,
    /// No such hold of this tenant.
    Unknown,
}

/// Why a hold could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The tenant has its maximum of pending holds.
    Full,
    /// The store cannot be reached.
    Unavailable(String),
}

/// The store cannot be reached (why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hold store cannot be reached: {0}")]
pub struct StoreUnavailable(pub String);

/// Where holds live.
#[async_trait]
pub trait HoldStore: Send + Sync + std::fmt::Debug {
    /// Opens `record` as pending, unless its tenant already has `max_per_tenant` pending holds
    /// whose deadline is still ahead.
    async fn open(&self, record: &HoldRecord, max_per_tenant: usize) -> Result<(), OpenError>;
    /// The hold `id` of `tenant`.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<HoldStatus>, StoreUnavailable>;
    /// Moves hold `id` of `tenant` from `from` to `to` (recording `decided`), if it is in
    /// `from`; with `before_deadline`, only until the hold's deadline (`now_ms`).
    async fn transition(
        &self,
        tenant: &str,
        id: &str,
        change: Change,
    ) -> Result<Transition, StoreUnavailable>;
    /// `tenant`'s pending holds whose deadline is ahead of `now_ms`, oldest first.
    async fn pending(&self, tenant: &str, now_ms: u64)
        -> Result<Vec<HoldStatus>, StoreUnavailable>;
}

/// One compare-and-set.
#[derive(Debug, Clone)]
pub struct Change {
    /// The state the hold must be in.
    pub from: HoldState,
    /// The state it moves to.
    pub to: HoldState,
    /// Who decided, and why.
    pub decided: Decided,
    /// Refuse ([`Transition::Late`]) once the deadline passed (decisions by people).
    pub before_deadline: bool,
}

/// Holds in this process (single-process mode).
#[derive(Debug, Default)]
pub struct MemoryHolds {
    holds: Mutex<HashMap<(String, String), HoldStatus>>,
}

impl MemoryHolds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), HoldStatus>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl HoldStore for MemoryHolds {
    async fn open(&self, record: &HoldRecord, max_per_tenant: usize) -> Result<(), OpenError> {
        let now = record.created_ms;
        let mut holds = self.lock();
        // Holds past their retention go; the map is bounded by the caps and the retention.
        holds.retain(|_, h| h.record.deadline_ms.saturating_add(RETAIN_MS) > now);
        let pending = holds
            .values()
            .filter(|h| {
                h.record.tenant == record.tenant
                    && h.state == HoldState::Pending
                    && h.record.deadline_ms > now
            })
            .count();
        if pending >= max_per_tenant {
            return Err(OpenError::Full);
        }
        holds.insert(
            (record.tenant.clone(), record.id.clone()),
            HoldStatus {
                record: record.clone(),
                state: HoldState::Pending,
                decided: None,
            },
        );
        Ok(())
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<HoldStatus>, StoreUnavailable> {
        Ok(self
            .lock()
            .get(&(tenant.to_string(), id.to_string()))
            .cloned())
    }

    async fn transition(
        &self,
        tenant: &str,
        id: &str,
        change: Change,
    ) -> Result<Transition, StoreUnavailable> {
        let mut holds = self.lock();
        let Some(hold) = holds.get_mut(&(tenant.to_string(), id.to_string())) else {
            return Ok(Transition::Unknown);
        };
        if hold.state != change.from {
            return Ok(Transition::NotFrom(hold.state));
        }
        if change.before_deadline && change.decided.at_ms > hold.record.deadline_ms {
            return Ok(Transition::Late);
        }
        hold.state = change.to;
        hold.decided = Some(change.decided);
        Ok(Transition::Done(Box::new(hold.clone())))
    }

    async fn pending(
        &self,
        tenant: &str,
        now_ms: u64,
    ) -> Result<Vec<HoldStatus>, StoreUnavailable> {
        let mut out: Vec<HoldStatus> = self
            .lock()
            .values()
            .filter(|h| {
                h.record.tenant == tenant
                    && h.state == HoldState::Pending
                    && h.record.deadline_ms > now_ms
            })
            .cloned()
            .collect();
        out.sort_by_key(|h| h.record.created_ms);
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(tenant: &str, id: &str, created_ms: u64) -> HoldRecord {
        HoldRecord {
            id: id.into(),
            tenant: tenant.into(),
            workload: "bot".into(),
            run_id: "run".into(),
            request_id: "req".into(),
            method: "POST".into(),
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: 80,
            path: "/pay".into(),
            model: None,
            mcp_server: None,
            mcp_tools: Vec::new(),
            body_sha256: None,
            credentials: Vec::new(),
            estimated_cost_micros: None,
            policy_ids: vec!["p".into()],
            approvers: Vec::new(),
            mode: "wait".into(),
            created_ms,
            deadline_ms: created_ms + 10_000,
            request_digest: "d".into(),
        }
    }

    fn decide(from: HoldState, to: HoldState, at_ms: u64) -> Change {
        Change {
            from,
            to,
            decided: Decided {
                approver: Some("alice".into()),
                reason: None,
                at_ms,
            },
            before_deadline: true,
        }
    }

    /// The contract every store keeps (the Redis store runs it in the e2e suite).
    pub(crate) async fn contract(store: &dyn HoldStore) {
        let now = 1_000_000;
        store
            .open(&record("acme", "h1", now), 2)
            .await
            .expect("opens");
        store
            .open(&record("acme", "h2", now), 2)
            .await
            .expect("opens");
        assert_eq!(
            store.open(&record("acme", "h3", now), 2).await,
            Err(OpenError::Full),
            "per-tenant cap"
        );
        store
            .open(&record("globex", "g1", now), 2)
            .await
            .expect("another tenant's cap is its own");
        // Tenant first: acme's id is not found under globex.
        assert_eq!(store.get("globex", "h1").await, Ok(None));
        assert_eq!(
            store
                .transition(
                    "globex",
                    "h1",
                    decide(HoldState::Pending, HoldState::Approved, now)
                )
                .await,
            Ok(Transition::Unknown)
        );
        let pending = store.pending("acme", now).await.expect("lists");
        assert_eq!(pending.len(), 2);
        assert!(pending.iter().all(|h| h.record.tenant == "acme"));
        // One winner.
        let won = store
            .transition(
                "acme",
                "h1",
                decide(HoldState::Pending, HoldState::Approved, now + 1),
            )
            .await
            .expect("reachable");
        assert!(matches!(won, Transition::Done(ref h) if h.state == HoldState::Approved));
        assert_eq!(
            store
                .transition(
                    "acme",
                    "h1",
                    decide(HoldState::Pending, HoldState::Denied, now + 2)
                )
                .await,
            Ok(Transition::NotFrom(HoldState::Approved))
        );
        // Late decisions are refused; the hold stays pending for its waiter to expire.
        assert_eq!(
            store
                .transition(
                    "acme",
                    "h2",
                    decide(HoldState::Pending, HoldState::Approved, now + 20_000)
                )
                .await,
            Ok(Transition::Late)
        );
        let got = store
            .get("acme", "h1")
            .await
            .expect("reachable")
            .expect("kept");
        assert_eq!(got.state, HoldState::Approved);
        assert_eq!(
            got.decided.and_then(|d| d.approver),
            Some("alice".to_string())
        );
        // A decided hold no longer counts against the cap.
        store
            .open(&record("acme", "h4", now), 2)
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        contract(&MemoryHolds::default()).await;
    }
}
