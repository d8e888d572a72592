//! Human approval holds. A request that a marked permit allowed (see
//! [`crate::policy::approval`]) is held here instead of forwarded, until a person of its tenant
//! approves or denies it through the approvals API ([`api`]) or its timeout passes.
//!
//! - **wait** (default): the request waits on its connection; its body stays in memory, counted
//!   against `[limits] max_buffered_body_bytes` like any body in flight. Approved, it goes on
//!   through the rest of the chain exactly as held: credentials are substituted and ceilings
//!   reserved only then.
//! - **poll**: the agent is answered `202` with the hold id in `x-approval-hold` at once, and
//!   sends the same request again with that header; the repeat must match the held request
//!   (method, target, headers but the proxy's own, body: one digest), and an approved hold is
//!   forwarded once.
//!
//! Bounds: a per-request timeout (`@approval_timeout` or `[approvals] default_timeout`), a cap
//! on one tenant's pending holds and a cap on every tenant's together, both kept by the store
//! (so shared by the replicas of one Redis); over a cap the request is refused
//! `approval_capacity`. Holds live in Redis when the limiter does ([`redis`]), so a hold made
//! by one replica is approved through any other; the waiting replica looks at its hold every
//! [`CHECK_INTERVAL`], renewing its lease on it ([`store::LEASE_MS`]): a hold whose replica
//! was killed is orphaned once the lease lapses, and can no longer be approved. At shutdown
//! every waiting hold is cancelled and its agent refused (`approval_unavailable`): nothing held
//! by a stopped process is forwarded later.
//!
//! Every hold is audited in its tenant's partition: `approval_requested`, then
//! `approval_granted` / `approval_denied` (naming the approver) / `approval_expired` /
//! `approval_cancelled` / `approval_orphaned`; the request's own record names the hold.

pub mod api;
pub mod redis;
pub mod settings;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::audit::{ApprovalEvent, AuditSink, EventKind};
use crate::context::TenantContext;
use crate::metrics::METRICS;
use crate::policy::approval::{ApprovalNeed, HoldMode};
pub use settings::{ApprovalSettings, ApprovalsSpec};
use store::{
    Caps, Change, Decided, HoldRecord, HoldState, HoldStore, OpenError, Renewal, Transition,
    LEASE_MS,
};

/// The header a polling agent names its hold with (removed before anything goes upstream).
pub const HOLD_HEADER: &str = "x-approval-hold";

/// How often a waiting request looks at its hold (and renews its lease on it).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Every how many looks a waiting hold's entry under the global cap is renewed (about once a
/// second: that entry lives on one key every replica shares).
const GLOBAL_RENEWAL_LOOKS: u32 = 5;

/// What a held request is, for the approver and the record.
#[derive(Debug, Clone, Default)]
pub struct HeldRequest {
    /// Method.
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path without query values.
    pub path: String,
    /// Model.
    pub model: Option<String>,
    /// MCP server.
    pub mcp_server: Option<String>,
    /// MCP tools called.
    pub mcp_tools: Vec<String>,
    /// Body digest.
    pub body_sha256: Option<String>,
    /// Credentials it would use.
    pub credentials: Vec<String>,
    /// Reservation its ceilings would take.
    pub estimated_cost_micros: Option<u64>,
    /// Digest of the whole request (see [`request_digest`]).
    pub digest: String,
}

/// A request that needs approval.
#[derive(Debug)]
pub struct HoldAsk<'a> {
    /// Who sent it.
    pub tenant: &'a TenantContext,
    /// What the marked permits ask for.
    pub need: &'a ApprovalNeed,
    /// What it is.
    pub request: HeldRequest,
    /// The hold id a polling agent sent (`x-approval-hold`).
    pub presented: Option<String>,
}

/// An approved hold: the request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The hold.
    pub hold_id: String,
    /// Who approved.
    pub approver: Option<String>,
}

/// How a hold ended without approval (or, polled, is still pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    /// Answered 202: still pending (poll mode).
    Pending(String),
    /// Denied (hold, approver, reason).
    Denied(String, Option<String>, String),
    /// Timed out (hold, timeout in seconds).
    Expired(String, u64),
    /// A cap was reached (whose, the cap).
    Capacity(&'static str, usize),
    /// Holds cannot be kept now (why).
    Unavailable(String),
    /// The presented hold id names no hold of this workload for this request.
    Unknown,
    /// The agent went away while waiting (hold).
    ClientGone(String),
    /// The proxy is shutting down (hold).
    ShuttingDown(String),
}

impl HoldEnd {
    /// The hold this end concerns, when there is one.
    pub fn hold_id(&self) -> Option<&str> {
        match self {
            HoldEnd::Pending(h)
            | HoldEnd::Denied(h, ..)
            | HoldEnd::Expired(h, _)
            | HoldEnd::ClientGone(h)
            | HoldEnd::ShuttingDown(h) => Some(h),
            _ => None,
        }
    }

    /// The request record's `approval.outcome`.
    pub fn outcome(&self) -> &'static str {
        match self {
            HoldEnd::Pending(_) => "pending",
            HoldEnd::Denied(..) => "denied",
            HoldEnd::Expired(..) => "expired",
            HoldEnd::ClientGone(_) | HoldEnd::ShuttingDown(_) => "cancelled",
            HoldEnd::Capacity(..) | HoldEnd::Unavailable(_) | HoldEnd::Unknown => "refused",
        }
    }
}

/// Whether `hold` answers a polled repeat, at unix ms `now`, by `workload` of the request whose
/// digest is `digest`: only a polled hold (a waiting one is forwarded by its waiter), of the
/// workload that was held, for exactly the request that was held, and only while it is kept.
fn answers_repeat(hold: &HoldRecord, workload: &str, digest: &str, now: u64) -> bool {
    hold.mode == HoldMode::Poll.as_str()
        && hold.workload == workload
        && hold.request_digest == digest
        && now < hold.deadline_ms.saturating_add(store::RETAIN_MS)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The digest a polled repeat must match: method, target, every header but those the proxy
/// consumes itself (identity, the hold id, hop-by-hop), sorted, and the body's digest.
pub fn request_digest(
    method: &str,
    target: &str,
    headers: &http::HeaderMap,
    body_sha256: Option<&str>,
) -> String {
    const OWN: [&str; 6] = [
        "proxy-authorization",
        HOLD_HEADER,
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
    ];
    let mut fields: Vec<(&str, &[u8])> = headers
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    fields.sort();
    let mut h = Sha256::new();
    for part in [method.as_bytes(), b"\n", target.as_bytes(), b"\n"] {
        h.update(part);
    }
    for (k, v) in fields {
        h.update(k.as_bytes());
        h.update(b":");
        h.update(v);
        h.update(b"\n");
    }
    h.update(body_sha256.unwrap_or("-").as_bytes());
    hex::encode(h.finalize())
}

/// The holds of this process: where they are stored, their bounds, their audit events.
#[derive(Debug)]
pub struct Holds {
    store: Arc<dyn HoldStore>,
    settings: ApprovalSettings,
    audit: AuditSink,
    /// This replica, as the owner of the holds its agents wait on (random, per process).
    owner: String,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// One of this replica's holds, counted in its metrics while it lives.
struct Kept {
    tenant: String,
}

impl Kept {
    fn new(tenant: String) -> Self {
        METRICS
            .approval_holds_pending
            .with_label_values(&[&tenant])
            .inc();
        Self { tenant }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        METRICS
            .approval_holds_pending
            .with_label_values(&[&self.tenant])
            .dec();
    }
}

impl Holds {
    /// Holds kept in `store`, bounded by `settings`, audited through `audit`.
    pub fn new(store: Arc<dyn HoldStore>, settings: ApprovalSettings, audit: AuditSink) -> Self {
        Self {
            store,
            settings,
            audit,
            owner: crate::trace::random_hex(8),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ApprovalSettings {
        &self.settings
    }

    /// The store (the approvals API decides through it).
    pub fn store(&self) -> &Arc<dyn HoldStore> {
        &self.store
    }

    /// The audit sink (the approvals API records decisions through it).
    pub fn audit(&self) -> &AuditSink {
        &self.audit
    }

    /// Ends every waiting hold: each is cancelled and its agent refused. Called once shutdown
    /// starts.
    pub fn shut_down(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Holds `ask` until a person decides, its timeout passes, the agent goes away
    /// (`client_gone` resolves) or the proxy shuts down; or, in poll mode, opens the hold and
    /// answers at once. A polled repeat (`ask.presented`) learns its hold's outcome.
    pub async fn hold(
        &self,
        ask: HoldAsk<'_>,
        client_gone: impl Future<Output = ()> + Send,
    ) -> Result<Granted, HoldEnd> {
        if let Some(id) = ask.presented.clone() {
            return self.repeat(&ask, &id).await;
        }
        let tenant = ask.tenant.tenant.as_str().to_string();
        // SECURITY: a hold nobody could audit is never opened.
        let slot = self
            .audit
            .reserve_for(&ask.tenant.tenant)
            .map_err(|_| HoldEnd::Unavailable("the audit log cannot record the hold".into()))?;
        let timeout = ask.need.timeout.unwrap_or(self.settings.default_timeout);
        let created_ms = now_ms();
        let record = HoldRecord {
            id: crate::trace::random_hex(16),
            tenant: tenant.clone(),
            workload: ask.tenant.workload.to_string(),
            run_id: ask.tenant.run.id.clone(),
            request_id: ask.tenant.request_id.to_string(),
            method: ask.request.method.clone(),
            scheme: ask.request.scheme.clone(),
            host: ask.request.host.clone(),
            port: ask.request.port,
            path: ask.request.path.clone(),
            model: ask.request.model.clone(),
            mcp_server: ask.request.mcp_server.clone(),
            mcp_tools: ask.request.mcp_tools.clone(),
            body_sha256: ask.request.body_sha256.clone(),
            credentials: ask.request.credentials.clone(),
            estimated_cost_micros: ask.request.estimated_cost_micros,
            policy_ids: ask.need.policy_ids.clone(),
            approvers: ask.need.approvers.clone(),
            mode: ask.need.mode.as_str().into(),
            // A waiting hold is forwarded by this replica only; a polled one by any.
            owner: (ask.need.mode == HoldMode::Wait).then(|| self.owner.clone()),
            created_ms,
            deadline_ms: created_ms.saturating_add(millis(timeout)),
            request_digest: ask.request.digest.clone(),
        };
        let caps = Caps {
            per_tenant: self.settings.max_pending_per_tenant,
            global: self.settings.max_pending,
        };
        let lease = record.owner.is_some().then(|| created_ms + LEASE_MS);
        match self.store.open(&record, lease, caps).await {
            Ok(()) => {}
            Err(OpenError::TenantFull) => {
                return Err(HoldEnd::Capacity("this tenant", caps.per_tenant))
            }
            Err(OpenError::GlobalFull) => return Err(HoldEnd::Capacity("the proxy", caps.global)),
            Err(OpenError::Unavailable(why)) => {
                tracing::warn!(tenant = %tenant, error = %why, "cannot open an approval hold");
                return Err(HoldEnd::Unavailable(
                    "the hold store cannot be reached".into(),
                ));
            }
        }
        // Counted once the store keeps it: a hold refused for capacity is none of this
        // replica's holds.
        let kept = Kept::new(tenant.clone());
        slot.emit(event(
            EventKind::ApprovalRequested,
            &record,
            None,
            None,
            Some(view(&record)),
        ));
        tracing::info!(tenant = %tenant, hold_id = %record.id, request_id = %record.request_id, "request held for approval");
        if ask.need.mode == HoldMode::Poll {
            self.expire_later(record.clone(), kept);
            return Err(HoldEnd::Pending(record.id));
        }
        let end = self.wait(&record, client_gone).await;
        drop(kept);
        end
    }

    /// A polled repeat of a held request: its hold's outcome, and once approved the request goes
    /// on, once.
    async fn repeat(&self, ask: &HoldAsk<'_>, id: &str) -> Result<Granted, HoldEnd> {
        if !valid_hold_id(id) {
            return Err(HoldEnd::Unknown);
        }
        let tenant = ask.tenant.tenant.as_str();
        let status = self
            .store
            .get(tenant, id)
            .await
            .map_err(|_| HoldEnd::Unavailable("the hold store cannot be reached".into()))?;
        // SECURITY: only a polled hold (a waiting one is forwarded by its waiter), of the
        // workload that was held, with exactly the request that was held, and only while it
        // is kept: the in-memory store drops old holds only when a new one opens, so an
        // approval could otherwise be spent days after it was given.
        let now = now_ms();
        let workload = ask.tenant.workload.as_str();
        let Some(status) =
            status.filter(|h| answers_repeat(&h.record, workload, &ask.request.digest, now))
        else {
            return Err(HoldEnd::Unknown);
        };
        let secs = timeout_secs(&status.record);
        match status.state {
            HoldState::Pending if now > status.record.deadline_ms => {
                match self.expire(&status.record).await {
                    Some(other) => Err(self.end_of(other, &status.record)),
                    None => Err(HoldEnd::Expired(id.into(), secs)),
                }
            }
            HoldState::Pending => Err(HoldEnd::Pending(id.into())),
            HoldState::Approved => {
                let change = Change {
                    from: HoldState::Approved,
                    to: HoldState::Forwarded,
                    decided: status.decided.clone().unwrap_or_default(),
                    before_deadline: false,
                };
                match self.store.transition(tenant, id, change).await {
                    Ok(Transition::Done(h)) => Ok(Granted {
                        hold_id: id.into(),
                        approver: h.decided.and_then(|d| d.approver),
                    }),
                    // Forwarded by a racing repeat: once is all an approval buys.
                    Ok(_) => Err(HoldEnd::Unknown),
                    Err(_) => Err(HoldEnd::Unavailable(
                        "the hold store cannot be reached".into(),
                    )),
                }
            }
            other => Err(self.end_of(
                store::HoldStatus {
                    state: other,
                    ..status.clone()
                },
                &status.record,
            )),
        }
    }

    /// What a hold in a final state means for its agent.
    fn end_of(&self, status: store::HoldStatus, record: &HoldRecord) -> HoldEnd {
        let id = record.id.clone();
        match status.state {
            HoldState::Denied => {
                let d = status.decided.unwrap_or_default();
                HoldEnd::Denied(
                    id,
                    d.approver,
                    d.reason.unwrap_or_else(|| "no reason given".into()),
                )
            }
            HoldState::Expired => HoldEnd::Expired(id, timeout_secs(record)),
            HoldState::Pending => HoldEnd::Pending(id),
            HoldState::Orphaned => HoldEnd::Unavailable(ORPHANED.into()),
            HoldState::Cancelled | HoldState::Forwarded | HoldState::Approved => HoldEnd::Unknown,
        }
    }

    /// Waits on a hold until it is decided, expires, its agent goes away or the proxy stops.
    async fn wait(
        &self,
        record: &HoldRecord,
        client_gone: impl Future<Output = ()> + Send,
    ) -> Result<Granted, HoldEnd> {
        let mut shutdown = self.shutdown.subscribe();
        let stopping = *shutdown.borrow_and_update();
        if stopping {
            return Err(self
                .cancel(record, HoldEnd::ShuttingDown(record.id.clone()))
                .await);
        }
        tokio::pin!(client_gone);
        // The deadline is a wall-clock time replicas share; this waiter also keeps it by the
        // monotonic clock, so a wall clock stepped back (NTP, a VM resumed) does not keep the
        // hold (its slot among the pending, its body in memory) waiting that much longer.
        let deadline_here = std::time::Instant::now()
            + Duration::from_millis(record.deadline_ms.saturating_sub(now_ms()));
        let mut unreachable_since: Option<u64> = None;
        let mut looks: u32 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = &mut client_gone => {
                    return Err(self.cancel(record, HoldEnd::ClientGone(record.id.clone())).await);
                }
                changed = shutdown.changed() => {
                    let stopping = changed.is_err() || *shutdown.borrow_and_update();
                    if stopping {
                        return Err(self.cancel(record, HoldEnd::ShuttingDown(record.id.clone())).await);
                    }
                    continue;
                }
            }
            let now = now_ms();
            looks = looks.wrapping_add(1);
            let renew_global = looks.is_multiple_of(GLOBAL_RENEWAL_LOOKS);
            let look = self
                .store
                .keep(
                    &record.tenant,
                    &record.id,
                    now,
                    now + LEASE_MS,
                    renew_global,
                )
                .await;
            match look {
                Ok(Renewal::OrphanedNow(_)) => {
                    // SECURITY: the lease lapsed (the store was out of reach that long): an
                    // approver may have been told the hold is gone, so it is never forwarded.
                    audit_end(&self.audit, record, EventKind::ApprovalOrphaned, "orphaned");
                    return Err(HoldEnd::Unavailable(ORPHANED.into()));
                }
                Ok(Renewal::Held(h)) => {
                    let h = *h;
                    unreachable_since = None;
                    match h.state {
                        HoldState::Approved => return self.forward_once(record, h.decided).await,
                        HoldState::Pending
                            if now <= record.deadline_ms
                                && std::time::Instant::now() <= deadline_here =>
                        {
                            continue
                        }
                        HoldState::Pending => {
                            return Err(match self.expire(record).await {
                                Some(other) => match other.state {
                                    // Approved in the last instant: it stands.
                                    HoldState::Approved => {
                                        return self.forward_once(record, other.decided).await
                                    }
                                    _ => self.end_of(other, record),
                                },
                                None => HoldEnd::Expired(record.id.clone(), timeout_secs(record)),
                            });
                        }
                        _ => return Err(self.end_of(h, record)),
                    }
                }
                // SECURITY: a hold that vanished is not approved.
                Ok(Renewal::Unknown) => return Err(HoldEnd::Unknown),
                Err(e) => {
                    // A store that stays unreachable past the deadline ends the wait: nothing
                    // is forwarded without a decision that could be read.
                    let since = *unreachable_since.get_or_insert(now);
                    tracing::warn!(hold_id = %record.id, error = %e, "cannot read an approval hold");
                    if now > record.deadline_ms && now.saturating_sub(since) > 1000 {
                        return Err(HoldEnd::Unavailable(
                            "the hold store cannot be reached".into(),
                        ));
                    }
                }
            }
        }
    }

    /// Spends an approval: the hold moves from approved to forwarded, once (whoever else tries
    /// finds it forwarded).
    async fn forward_once(
        &self,
        record: &HoldRecord,
        decided: Option<Decided>,
    ) -> Result<Granted, HoldEnd> {
        let change = Change {
            from: HoldState::Approved,
            to: HoldState::Forwarded,
            decided: decided.clone().unwrap_or_default(),
            before_deadline: false,
        };
        match self
            .store
            .transition(&record.tenant, &record.id, change)
            .await
        {
            Ok(Transition::Done(_)) => Ok(Granted {
                hold_id: record.id.clone(),
                approver: decided.and_then(|d| d.approver),
            }),
            Ok(_) => Err(HoldEnd::Unknown),
            Err(_) => Err(HoldEnd::Unavailable(
                "the hold store cannot be reached".into(),
            )),
        }
    }

    /// Marks a pending hold expired and audits it; `Some(hold)` when it was no longer pending
    /// (someone decided first).
    async fn expire(&self, record: &HoldRecord) -> Option<store::HoldStatus> {
        finish(
            self.store.as_ref(),
            &self.audit,
            record,
            HoldState::Expired,
            EventKind::ApprovalExpired,
            "expired",
        )
        .await
    }

    /// Cancels a waiting hold (its agent went away, the proxy stops) and audits it; returns
    /// what the agent is told. A decision that came first stands for the record, but the agent
    /// is gone or the proxy stops either way, so nothing is forwarded.
    async fn cancel(&self, record: &HoldRecord, end: HoldEnd) -> HoldEnd {
        let _ = finish(
            self.store.as_ref(),
            &self.audit,
            record,
            HoldState::Cancelled,
            EventKind::ApprovalCancelled,
            "cancelled",
        )
        .await;
        end
    }

    /// Expires a polled hold at its deadline unless it was decided first (the task ends with
    /// the process; a restarted proxy's agents learn the outcome from the store, or that their
    /// hold is unknown).
    fn expire_later(&self, record: HoldRecord, kept: Kept) {
        let store = self.store.clone();
        let audit = self.audit.clone();
        tokio::spawn(async move {
            let wait = record.deadline_ms.saturating_sub(now_ms()) + 50;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let _ = finish(
                store.as_ref(),
                &audit,
                &record,
                HoldState::Expired,
                EventKind::ApprovalExpired,
                "expired",
            )
            .await;
            drop(kept);
        });
    }
}

/// Moves a pending hold to `to` (expired, cancelled), counts and audits it; `Some(hold)` when it
/// was no longer pending (someone decided first).
async fn finish(
    store: &dyn HoldStore,
    audit: &AuditSink,
    record: &HoldRecord,
    to: HoldState,
    kind: EventKind,
    outcome: &'static str,
) -> Option<store::HoldStatus> {
    let change = Change {
        from: HoldState::Pending,
        to,
        decided: Decided {
            approver: None,
            reason: None,
            at_ms: now_ms(),
        },
        before_deadline: false,
    };
    match store.transition(&record.tenant, &record.id, change).await {
        Ok(Transition::Done(_)) => {
            audit_end(audit, record, kind, outcome);
            None
        }
        Ok(Transition::Orphaned) => {
            audit_end(audit, record, EventKind::ApprovalOrphaned, "orphaned");
            store.get(&record.tenant, &record.id).await.ok().flatten()
        }
        Ok(Transition::NotFrom(state)) => store
            .get(&record.tenant, &record.id)
            .await
            .ok()
            .flatten()
            .or(Some(store::HoldStatus {
                record: record.clone(),
                state,
                decided: None,
                lease_ms: None,
            })),
        Ok(_) | Err(_) => None,
    }
}

/// What a waiting agent is told when its hold was orphaned.
const ORPHANED: &str = "the hold lost its owner (its lease lapsed); it can no longer be approved";

/// Counts and audits the end of a hold nobody decided (`outcome`).
fn audit_end(audit: &AuditSink, record: &HoldRecord, kind: EventKind, outcome: &'static str) {
    METRICS
        .approval_outcomes
        .with_label_values(&[&record.tenant, outcome])
        .inc();
    if let Ok(tenant) = crate::ids::TenantId::new(&record.tenant) {
        match audit.reserve_for(&tenant) {
            Ok(slot) => slot.emit(event(kind, record, None, None, None)),
            Err(_) => {
                tracing::warn!(hold_id = %record.id, "the audit log cannot record a hold's end")
            }
        }
    }
}

/// A hold id as the proxy makes them: 32 lowercase hex digits. Anything else names no hold (and
/// never reaches a store key).
pub fn valid_hold_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn timeout_secs(record: &HoldRecord) -> u64 {
    record
        .deadline_ms
        .saturating_sub(record.created_ms)
        .div_ceil(1000)
}

/// What approvers (and the `approval_requested` event) see of a hold: everything but the
/// request digest.
pub fn view(record: &HoldRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(record).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("request_digest");
    }
    v
}

/// A hold's audit event.
pub fn event(
    kind: EventKind,
    record: &HoldRecord,
    approver: Option<String>,
    reason: Option<String>,
    detail: Option<serde_json::Value>,
) -> ApprovalEvent {
    let decided = matches!(kind, EventKind::ApprovalGranted | EventKind::ApprovalDenied);
    ApprovalEvent {
        event: kind,
        time: crate::clock::rfc3339(std::time::SystemTime::now()),
        tenant: record.tenant.clone(),
        hold_id: Some(record.id.clone()),
        workload: Some(record.workload.clone()),
        run_id: Some(record.run_id.clone()),
        request_id: Some(record.request_id.clone()),
        approver,
        reason,
        detail,
        decision_s: decided.then(|| now_ms().saturating_sub(record.created_ms) as f64 / 1000.0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_polled_hold_answers_only_its_own_repeat_while_it_is_kept() {
        let hold: HoldRecord = serde_json::from_value(serde_json::json!({
            "id": "h1", "tenant": "acme", "workload": "bot", "run_id": "r", "request_id": "q",
            "method": "POST", "scheme": "https", "host": "api.example.com", "port": 443,
            "path": "/pay", "policy_ids": ["p"], "mode": "poll", "created_ms": 1_000,
            "deadline_ms": 6_000, "request_digest": "d1"
        }))
        .unwrap();
        let kept_until = 6_000 + store::RETAIN_MS;
        assert!(answers_repeat(&hold, "bot", "d1", 2_000));
        assert!(answers_repeat(&hold, "bot", "d1", kept_until - 1));
        assert!(
            !answers_repeat(&hold, "bot", "d1", kept_until),
            "past its keeping"
        );
        assert!(!answers_repeat(&hold, "bot", "d1", kept_until + 86_400_000));
        assert!(
            !answers_repeat(&hold, "agent", "d1", 2_000),
            "another workload"
        );
        assert!(
            !answers_repeat(&hold, "bot", "d2", 2_000),
            "another request"
        );
        let waiting = HoldRecord {
            mode: "wait".into(),
            ..hold
        };
        assert!(
            !answers_repeat(&waiting, "bot", "d1", 2_000),
            "a waiting hold"
        );
    }
}
