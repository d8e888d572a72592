//! Where holds live: in this process ([`MemoryHolds`]) or in Redis ([`super::redis::RedisHolds`])
//! when the limiter counts there, so every replica sees every hold. Every change of state is one
//! compare-and-set ([`HoldStore::transition`]): an approval racing a timeout, or two approvers
//! racing each other, end with exactly one winner.
//!
//! Holds are keyed by tenant first: a hold id is only ever looked up within the caller's own
//! tenant, so another tenant's hold is not there to be found.
//!
//! A waiting hold has an **owner**: the replica whose connection the agent waits on. The owner
//! renews a lease on the hold while it waits ([`HoldStore::keep`]); once the lease has lapsed
//! (the replica was killed, or lost the store for longer than [`LEASE_MS`]) the hold is
//! **orphaned**: it no longer counts against the caps, is no longer listed, and an approval is
//! refused ([`Transition::Orphaned`]), since nobody would forward it. A polled hold has no
//! owner: any replica forwards its agent's repeat.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How long a hold is kept after its deadline, or after its decision when it was decided
/// before (a polling agent can still learn its outcome).
pub const RETAIN_MS: u64 = 10 * 60 * 1000;

/// How long a cancelled hold is kept: its agent went away, so nobody polls for it; an approver
/// who opens it a moment later is told it was resolved.
///
/// SECURITY: an agent can open and cancel holds as fast as it can send a request and hang up
/// (holds come before the ceilings, which a cancelled hold never reaches): kept to the
/// deadline, up to a day, they grew the store without a bound.
pub const CANCELLED_RETAIN_MS: u64 = 60 * 1000;

/// The most holds a tenant keeps after their decision (in either store), as a
/// multiple of its pending cap: past it, the ones kept the shortest go first (cancelled before
/// decided, then the oldest).
pub const DECIDED_PER_PENDING: usize = 4;

/// How long after its decision at `at_ms` a hold that is now `state` is kept.
pub fn retained_until(state: HoldState, at_ms: u64) -> u64 {
    let keep = match state {
        HoldState::Cancelled => CANCELLED_RETAIN_MS,
        _ => RETAIN_MS,
    };
    at_ms.saturating_add(keep)
}

/// How long an owner's lease on a waiting hold runs unless renewed (it is renewed at every
/// look, every [`super::CHECK_INTERVAL`]).
pub const LEASE_MS: u64 = 3000;

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
    /// The replica whose connection the agent waits on (a waiting hold); `None` for a polled
    /// hold, which any replica forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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
    /// An approved hold whose request was forwarded (once).
    Forwarded,
    /// Its owner went away while the agent waited (the lease lapsed): never forwarded.
    Orphaned,
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
            HoldState::Orphaned => "orphaned",
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
            "orphaned" => HoldState::Orphaned,
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
    /// Unix milliseconds until which its owner's lease runs (a waiting hold).
    pub lease_ms: Option<u64>,
}

impl HoldStatus {
    /// Until when it counts as pending (against the caps, in the list): its deadline, or its
    /// owner's lease when that ends first.
    pub fn counts_until(&self) -> u64 {
        counts_until(self.record.deadline_ms, self.lease_ms)
    }

    /// Until when it is kept: a pending hold until [`RETAIN_MS`] after its deadline, a
    /// decided one as [`retained_until`] says (never past that).
    pub fn kept_until(&self) -> u64 {
        let by_deadline = self.record.deadline_ms.saturating_add(RETAIN_MS);
        match (&self.decided, self.state) {
            (Some(d), state) if state != HoldState::Pending => {
                retained_until(state, d.at_ms).min(by_deadline)
            }
            _ => by_deadline,
        }
    }

    /// Whether it is pending but its owner's lease has lapsed at `now_ms`.
    pub fn lapsed(&self, now_ms: u64) -> bool {
        self.state == HoldState::Pending && self.lease_ms.is_some_and(|l| l < now_ms)
    }
}

/// A hold's deadline, or its lease when that ends first.
pub fn counts_until(deadline_ms: u64, lease_ms: Option<u64>) -> u64 {
    lease_ms.map_or(deadline_ms, |l| l.min(deadline_ms))
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
    /// The hold's owner went away (its lease lapsed): the hold is now orphaned, unchanged
    /// otherwise.
    Orphaned,
    /// No such hold of this tenant.
    Unknown,
}

/// Why a hold could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The tenant has its maximum of pending holds.
    TenantFull,
    /// Every tenant together has the maximum of pending holds.
    GlobalFull,
    /// The store cannot be reached.
    Unavailable(String),
}

/// The store cannot be reached (why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hold store cannot be reached: {0}")]
pub struct StoreUnavailable(pub String);

/// The caps a new hold must fit under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Pending holds of its tenant.
    pub per_tenant: usize,
    /// Pending holds of every tenant together (in Redis: of every replica sharing it).
    pub global: usize,
}

/// What a look at a waiting hold by its owner found ([`HoldStore::keep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The hold as it is (its lease renewed when it is still pending).
    Held(Box<HoldStatus>),
    /// The lease had already lapsed: this look marked the hold orphaned.
    OrphanedNow(Box<HoldStatus>),
    /// No such hold of this tenant.
    Unknown,
}

/// Where holds live.
#[async_trait]
pub trait HoldStore: Send + Sync + std::fmt::Debug {
    /// Opens `record` as pending (its owner's lease running until `lease_ms`, for a waiting
    /// hold), unless its tenant, or every tenant together, already has as many pending holds as
    /// `caps` allow (holds past their deadline or whose lease lapsed do not count).
    async fn open(
        &self,
        record: &HoldRecord,
        lease_ms: Option<u64>,
        caps: Caps,
    ) -> Result<(), OpenError>;
    /// The hold `id` of `tenant`.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<HoldStatus>, StoreUnavailable>;
    /// The owner's look at its waiting hold: renews its lease to `lease_ms` while it is pending
    /// and the lease has not lapsed at `now_ms` (a lapsed one orphans it). `renew_global` also
    /// renews its entry under the global cap (the Redis store does that less often than it
    /// looks).
    async fn keep(
        &self,
        tenant: &str,
        id: &str,
        now_ms: u64,
        lease_ms: u64,
        renew_global: bool,
    ) -> Result<Renewal, StoreUnavailable>;
    /// Moves hold `id` of `tenant` from `from` to `to` (recording `decided`), if it is in
    /// `from`; with `before_deadline`, only until the hold's deadline (`decided.at_ms`). A
    /// pending hold whose owner's lease lapsed before `decided.at_ms` is orphaned instead.
    async fn transition(
        &self,
        tenant: &str,
        id: &str,
        change: Change,
    ) -> Result<Transition, StoreUnavailable>;
    /// `tenant`'s pending holds whose deadline (and owner's lease) is ahead of `now_ms`, oldest
    /// first.
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

/// Marks a pending hold orphaned.
fn orphan(hold: &mut HoldStatus, at_ms: u64) {
    hold.state = HoldState::Orphaned;
    hold.decided = Some(Decided {
        approver: None,
        reason: None,
        at_ms,
    });
}

#[async_trait]
impl HoldStore for MemoryHolds {
    async fn open(
        &self,
        record: &HoldRecord,
        lease_ms: Option<u64>,
        caps: Caps,
    ) -> Result<(), OpenError> {
        let now = record.created_ms;
        let mut holds = self.lock();
        // Holds past their retention go; the map is bounded by the caps (pending holds), the
        // retention and the bound on each tenant's decided holds.
        holds.retain(|_, h| h.kept_until() > now);
        let decided_cap = caps.per_tenant.saturating_mul(DECIDED_PER_PENDING).max(1);
        // The ones kept the shortest go first, as in Redis: a cancelled hold (nobody polls for
        // it) before an approved one its agent may still be about to repeat.
        let mut decided: Vec<(u64, String)> = holds
            .values()
            .filter(|h| h.record.tenant == record.tenant && h.state != HoldState::Pending)
            .map(|h| (h.kept_until(), h.record.id.clone()))
            .collect();
        if decided.len() >= decided_cap {
            decided.sort_unstable();
            for (_, id) in &decided[..=decided.len() - decided_cap] {
                holds.remove(&(record.tenant.clone(), id.clone()));
            }
        }
        let counted = |h: &&HoldStatus| h.state == HoldState::Pending && h.counts_until() > now;
        let all = holds.values().filter(counted).count();
        let tenant = holds
            .values()
            .filter(counted)
            .filter(|h| h.record.tenant == record.tenant)
            .count();
        // The global cap first, as in Redis (where a hold enters the global set first).
        if all >= caps.global {
            return Err(OpenError::GlobalFull);
        }
        if tenant >= caps.per_tenant {
            return Err(OpenError::TenantFull);
        }
        holds.insert(
            (record.tenant.clone(), record.id.clone()),
            HoldStatus {
                record: record.clone(),
                state: HoldState::Pending,
                decided: None,
                lease_ms,
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

    async fn keep(
        &self,
        tenant: &str,
        id: &str,
        now_ms: u64,
        lease_ms: u64,
        _renew_global: bool,
    ) -> Result<Renewal, StoreUnavailable> {
        let mut holds = self.lock();
        let Some(hold) = holds.get_mut(&(tenant.to_string(), id.to_string())) else {
            return Ok(Renewal::Unknown);
        };
        if hold.lapsed(now_ms) {
            orphan(hold, now_ms);
            return Ok(Renewal::OrphanedNow(Box::new(hold.clone())));
        }
        if hold.state == HoldState::Pending && hold.lease_ms.is_some() {
            hold.lease_ms = Some(lease_ms);
        }
        Ok(Renewal::Held(Box::new(hold.clone())))
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
        if hold.lapsed(change.decided.at_ms) {
            orphan(hold, change.decided.at_ms);
            return Ok(Transition::Orphaned);
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
                    && h.counts_until() > now_ms
            })
            .cloned()
            .collect();
        out.sort_by_key(|h| h.record.created_ms);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_counts_until_its_deadline_or_its_lease_whichever_ends_first() {
        assert_eq!(counts_until(10, None), 10);
        assert_eq!(counts_until(10, Some(5)), 5);
        assert_eq!(counts_until(10, Some(50)), 10);
    }

    fn hold(tenant: &str, id: &str, created_ms: u64) -> HoldRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "tenant": tenant, "workload": "bot", "run_id": "r", "request_id": id,
            "method": "POST", "scheme": "https", "host": "api.example.com", "port": 443,
            "path": "/pay", "policy_ids": ["p"], "mode": "wait", "created_ms": created_ms,
            "deadline_ms": created_ms + 86_400_000, "request_digest": "d"
        }))
        .expect("a hold record")
    }

    /// An agent that opens holds and hangs up at once (each cancelled) cannot grow the store:
    /// cancelled holds go after a minute, and a tenant keeps a bounded number of decided ones,
    /// the oldest going first; another tenant's are not touched.
    #[tokio::test]
    async fn decided_holds_are_bounded_per_tenant_and_cancelled_ones_go_soon() {
        let store = MemoryHolds::default();
        let caps = Caps {
            per_tenant: 5,
            global: 1000,
        };
        let cancel = |at_ms| Change {
            from: HoldState::Pending,
            to: HoldState::Cancelled,
            decided: Decided {
                approver: None,
                reason: None,
                at_ms,
            },
            before_deadline: false,
        };
        store
            .open(&hold("globex", "g1", 1), None, caps)
            .await
            .unwrap();
        for n in 0..100u64 {
            let id = format!("a{n}");
            store
                .open(&hold("acme", &id, 10 + n), None, caps)
                .await
                .unwrap();
            let done = store.transition("acme", &id, cancel(10 + n)).await.unwrap();
            assert!(matches!(done, Transition::Done(_)), "{done:?}");
        }
        let bound = caps.per_tenant * DECIDED_PER_PENDING;
        let acme = |store: &MemoryHolds| store.lock().keys().filter(|(t, _)| t == "acme").count();
        assert!(acme(&store) <= bound, "{} kept", acme(&store));
        // The newest are the ones kept; the oldest went.
        assert!(store.get("acme", "a99").await.unwrap().is_some());
        assert!(store.get("acme", "a0").await.unwrap().is_none());
        // A minute after, every cancelled hold is gone; globex's pending hold stays.
        let later = 200 + CANCELLED_RETAIN_MS;
        store
            .open(&hold("acme", "late", later), None, caps)
            .await
            .unwrap();
        assert_eq!(acme(&store), 1, "only the new one");
        assert!(store.get("globex", "g1").await.unwrap().is_some());
    }
}
