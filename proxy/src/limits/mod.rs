//! Ceilings per tenant, per workload and per run: request rate, concurrency, LLM tokens, cost
//! and a run's tool calls and wall time.
//!
//! Each ceiling is a [`LimitKey`] (always carrying the tenant, so one tenant's traffic can never
//! move another's counters) checked by a [`LimitBackend`]. A request is admitted only if every
//! ceiling that applies to it admits it; the check and the update are one atomic step per
//! request, so concurrent requests cannot overshoot. Metered amounts (tokens, cost) are reserved
//! at their worst case before the call and settled to what the call really used after it. The
//! in-memory backend ([`memory`]) serves a single proxy; [`redis`] is shared by replicas.

pub mod calendar;
pub mod known_refusals;
pub mod memory;
pub mod plan;
pub mod redis;
pub mod redis_revocations;
pub mod report;
pub mod settings;
pub mod stream;

use std::fmt;
use std::time::Duration;

use crate::identity::token::RunBudget;
use crate::ids::{TenantId, WorkloadId};
use calendar::{Period, TenantCalendar};
pub use settings::{LimiterSettings, LimiterSpec};

/// What a streaming LLM response does when its tenant or run runs out of budget mid-way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MidStream {
    /// End the stream with a final SSE `error` event (default): no spend past the ceiling.
    #[default]
    Cut,
    /// Let the response finish; the overage is settled against the ceiling afterwards.
    Finish,
}

/// What a request does that starts LLM work whose tokens and cost no response shows the proxy
/// (a batch or fine-tuning job, an Assistants run, a Realtime or WebSocket session, an opaque
/// tunnel to an LLM host), when a token or cost ceiling applies to its caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmetered {
    /// Refuse it (`unmetered_call`, default): a ceiling the proxy cannot enforce is not silently
    /// skipped.
    #[default]
    Refuse,
    /// Let it through, counted as a call; its spend is outside the proxy's ceilings.
    Allow,
}

/// Ceilings for one scope (a tenant's aggregate, or one workload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceilings {
    /// Sustained requests per second.
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once above the per-second rate (default: the per-second rate).
    pub burst: Option<u32>,
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
    /// LLM tokens (input + output) per minute, reserved before a call and settled after it.
    pub tokens_per_minute: Option<u64>,
    /// LLM cost per calendar day in the tenant's time zone, in micro-units of the price
    /// table's currency.
    pub cost_per_day_micros: Option<u64>,
    /// LLM cost per calendar month in the tenant's time zone, in micro-units.
    pub cost_per_month_micros: Option<u64>,
    /// Output tokens to reserve for an LLM call that sets no `max_tokens` (default 1024).
    pub assumed_max_tokens: Option<u64>,
    /// What a stream that crosses a tokens or cost ceiling does (default `cut`).
    pub mid_stream: Option<MidStream>,
    /// What LLM work the proxy cannot meter gets while a token or cost ceiling applies
    /// (default `refuse`; a workload's setting wins over its tenant's).
    pub unmetered_calls: Option<Unmetered>,
}

impl Ceilings {
    /// Whether no ceiling is set.
    pub fn is_empty(&self) -> bool {
        self.requests_per_second.is_none()
            && self.requests_per_minute.is_none()
            && self.concurrency.is_none()
            && self.tokens_per_minute.is_none()
            && !self.has_cost()
    }

    /// Whether a cost ceiling is set (a price table is then required).
    pub fn has_cost(&self) -> bool {
        self.cost_per_day_micros.is_some() || self.cost_per_month_micros.is_some()
    }

    /// Whether a ceiling on LLM tokens or cost is set.
    pub fn meters_spend(&self) -> bool {
        self.tokens_per_minute.is_some() || self.has_cost()
    }

    /// Checks values are usable.
    pub fn validate(&self) -> Result<(), String> {
        let wide = |v: Option<u64>| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
        for (name, v) in [
            ("requests_per_second", self.requests_per_second),
            ("burst", self.burst),
            ("requests_per_minute", self.requests_per_minute),
            ("concurrency", self.concurrency),
            ("tokens_per_minute", wide(self.tokens_per_minute)),
            ("cost_per_day_micros", wide(self.cost_per_day_micros)),
            ("cost_per_month_micros", wide(self.cost_per_month_micros)),
            ("assumed_max_tokens", wide(self.assumed_max_tokens)),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "`{name}` must be at least 1 (omit it for no ceiling)"
                ));
            }
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            return Err("`burst` needs `requests_per_second`".into());
        }
        Ok(())
    }
}

/// What a counter is scoped to. Every scope names its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// All of a tenant's workloads together.
    Tenant(TenantId),
    /// One workload of a tenant.
    Workload(TenantId, WorkloadId),
    /// One run of a tenant (a signed run id: an agent cannot pick a fresh one).
    Run(TenantId, String),
}

impl Scope {
    /// The tenant the counter belongs to.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Scope::Tenant(t) | Scope::Workload(t, _) | Scope::Run(t, _) => t,
        }
    }
}

/// One ceiling to check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitKey {
    /// Whose counter.
    pub scope: Scope,
    /// Which kind.
    pub kind: LimitKind,
}

impl LimitKey {
    /// Which of its scope's counters the key names: its identity without the ceiling's value,
    /// so changing a ceiling keeps what was spent. The Redis name and the in-memory counter are
    /// both this.
    pub fn slot(&self) -> Slot {
        match self.kind {
            LimitKind::Rate { period_secs: 1, .. } => Slot::RatePerSecond,
            LimitKind::Rate { .. } => Slot::RatePerMinute,
            LimitKind::Concurrency { .. } => Slot::Concurrency,
            LimitKind::TokensPerMinute { .. } => Slot::TokensPerMinute,
            LimitKind::Quota {
                measure, window, ..
            } => match window {
                Window::Run => Slot::RunQuota(measure),
                Window::Day(p) => Slot::DayQuota(measure, p.id),
                Window::Month(p) => Slot::MonthQuota(measure, p.id),
            },
            LimitKind::WallTime { .. } => Slot::Start,
        }
    }
}

/// Which of a scope's counters a key names (see [`LimitKey::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    RatePerSecond,
    RatePerMinute,
    Concurrency,
    TokensPerMinute,
    RunQuota(Measure),
    /// The day's `Period::id`.
    DayQuota(Measure, u32),
    /// The month's `Period::id`.
    MonthQuota(Measure, u32),
    Start,
}

impl LimitKey {
    /// The Redis key: the tenant as a hash tag, so one tenant's keys share a Cluster slot.
    /// Written with `push_str` into a string sized once (every Redis call names each of its
    /// keys; `write!` cost several times more).
    pub fn redis_name(&self) -> String {
        let mut name = String::with_capacity(48);
        name.push_str("tp:{");
        name.push_str(self.scope.tenant().as_str());
        name.push_str("}:");
        match &self.scope {
            Scope::Tenant(_) => {}
            Scope::Workload(_, w) => {
                name.push_str("w:");
                name.push_str(w.as_str());
                name.push(':');
            }
            Scope::Run(_, r) => {
                name.push_str("run:");
                name.push_str(r);
                name.push(':');
            }
        }
        let (slot, window) = match self.slot() {
            Slot::RatePerSecond => ("rate_s", None),
            Slot::RatePerMinute => ("rate_m", None),
            Slot::Concurrency => ("conc", None),
            Slot::TokensPerMinute => ("tpm", None),
            Slot::RunQuota(measure) => (measure.as_str(), None),
            Slot::DayQuota(measure, id) => (measure.as_str(), Some((":d", id))),
            Slot::MonthQuota(measure, id) => (measure.as_str(), Some((":m", id))),
            Slot::Start => ("start", None),
        };
        name.push_str(slot);
        if let Some((prefix, id)) = window {
            name.push_str(prefix);
            name.push_str(itoa::Buffer::new().format(id));
        }
        name
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redis_name())
    }
}

/// Kinds of ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// GCRA with this many requests per `period`, `burst` at once.
    Rate {
        /// Requests per period.
        per_period: u32,
        /// Period in seconds (1 or 60).
        period_secs: u32,
        /// Burst.
        burst: u32,
    },
    /// In-flight requests.
    Concurrency {
        /// Most at once.
        max: u32,
    },
    /// LLM tokens per minute of the backend's clock (reserved, then settled).
    TokensPerMinute {
        /// Most per minute.
        ceiling: u64,
    },
    /// An amount reserved, then settled, within a fixed window named in the key.
    Quota {
        /// What is counted.
        measure: Measure,
        /// Over which window.
        window: Window,
        /// Most in the window.
        ceiling: u64,
    },
    /// A run's wall time, counted from its first request.
    WallTime {
        /// Most seconds.
        max_secs: u64,
    },
}

impl LimitKind {
    /// What the kind meters, if it reserves and settles an amount.
    pub fn measure(&self) -> Option<Measure> {
        match self {
            LimitKind::TokensPerMinute { .. } => Some(Measure::Tokens),
            LimitKind::Quota { measure, .. } => Some(*measure),
            _ => None,
        }
    }
}

/// What a [`LimitKind::Quota`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// LLM tokens, input plus output.
    Tokens,
    /// LLM cost in micro-units of currency.
    Cost,
    /// Calls that are not LLM calls (tools).
    ToolCalls,
}

impl Measure {
    /// Name in keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Tokens => "tokens",
            Measure::Cost => "cost",
            Measure::ToolCalls => "tool_calls",
        }
    }
}

/// The window of a [`LimitKind::Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// The life of a run.
    Run,
    /// A calendar day in the tenant's time zone.
    Day(Period),
    /// A calendar month in the tenant's time zone.
    Month(Period),
}

impl Window {
    /// `run`, `day` or `month`: which ceiling a `budget_exhausted` refusal names.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Run => "run",
            Window::Day(_) => "day",
            Window::Month(_) => "month",
        }
    }

    /// Unix second at which the window's counter may be dropped (`None`: the run key lifetime).
    /// A backend keeps a counter at least [`QUOTA_KEPT_SECS`] past its last write as well, so a
    /// clock behind the counters' never has one dropped as it is written.
    pub fn expires_at(self) -> Option<i64> {
        match self {
            Window::Run => None,
            // A margin past the end so `tenant-proxy usage` still reads a window just closed.
            Window::Day(p) => Some(p.ends_at + 3_600),
            Window::Month(p) => Some(p.ends_at + 86_400),
        }
    }
}

/// How long a day or month counter is kept past its last write, at least (past its window's
/// end it is kept for [`Window::expires_at`]'s margin).
pub const QUOTA_KEPT_SECS: i64 = 3_600;

/// Amounts of each measure one request reserves or used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Charge {
    /// LLM tokens.
    pub tokens: u64,
    /// Cost in micro-units.
    pub cost_micros: u64,
    /// Tool calls.
    pub tool_calls: u64,
}

impl Charge {
    /// The amount of `measure`.
    pub fn of(&self, measure: Measure) -> u64 {
        match measure {
            Measure::Tokens => self.tokens,
            Measure::Cost => self.cost_micros,
            Measure::ToolCalls => self.tool_calls,
        }
    }

    /// `n` times this charge.
    pub fn times(self, n: u64) -> Charge {
        Charge {
            tokens: self.tokens.saturating_mul(n),
            cost_micros: self.cost_micros.saturating_mul(n),
            tool_calls: self.tool_calls.saturating_mul(n),
        }
    }

    /// The sum of two charges.
    pub fn plus(self, other: Charge) -> Charge {
        Charge {
            tokens: self.tokens.saturating_add(other.tokens),
            cost_micros: self.cost_micros.saturating_add(other.cost_micros),
            tool_calls: self.tool_calls.saturating_add(other.tool_calls),
        }
    }
}

/// Who a request is counted against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Tenant.
    pub tenant: &'a TenantId,
    /// Workload.
    pub workload: &'a WorkloadId,
    /// The run id and its budget, only when both came from a signed token.
    pub run: Option<(&'a str, &'a RunBudget)>,
}

/// What kind of call is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// An LLM call: counts tokens and cost.
    Llm,
    /// Any other call: counts as a tool call.
    Tool,
}

/// The ceilings that apply to one request at `now` (unix seconds).
pub fn keys_for(
    who: Subject<'_>,
    tenant_ceilings: &Ceilings,
    workload_ceilings: Option<&Ceilings>,
    calendar: &TenantCalendar,
    now: i64,
    call: CallKind,
) -> Vec<LimitKey> {
    let llm = call == CallKind::Llm;
    let mut keys = Vec::new();
    let mut push = |scope: Scope, c: &Ceilings| {
        let mut add = |kind| {
            keys.push(LimitKey {
                scope: scope.clone(),
                kind,
            })
        };
        if let Some(rps) = c.requests_per_second {
            add(LimitKind::Rate {
                per_period: rps,
                period_secs: 1,
                burst: c.burst.unwrap_or(rps),
            });
        }
        if let Some(rpm) = c.requests_per_minute {
            add(LimitKind::Rate {
                per_period: rpm,
                period_secs: 60,
                burst: rpm,
            });
        }
        if let Some(max) = c.concurrency {
            add(LimitKind::Concurrency { max });
        }
        if !llm {
            return;
        }
        if let Some(ceiling) = c.tokens_per_minute {
            add(LimitKind::TokensPerMinute { ceiling });
        }
        if let Some(ceiling) = c.cost_per_day_micros {
            add(LimitKind::Quota {
                measure: Measure::Cost,
                window: Window::Day(calendar.day(now)),
                ceiling,
            });
        }
        if let Some(ceiling) = c.cost_per_month_micros {
            add(LimitKind::Quota {
                measure: Measure::Cost,
                window: Window::Month(calendar.month(now)),
                ceiling,
            });
        }
    };
    push(Scope::Tenant(who.tenant.clone()), tenant_ceilings);
    if let Some(w) = workload_ceilings {
        push(Scope::Workload(who.tenant.clone(), who.workload.clone()), w);
    }
    if let Some((run, budget)) = who.run {
        let scope = Scope::Run(who.tenant.clone(), run.to_string());
        let mut add = |kind| {
            keys.push(LimitKey {
                scope: scope.clone(),
                kind,
            })
        };
        let quota = |measure, ceiling| LimitKind::Quota {
            measure,
            window: Window::Run,
            ceiling,
        };
        match call {
            CallKind::Llm => {
                if let Some(t) = budget.tokens {
                    add(quota(Measure::Tokens, t));
                }
                if let Some(c) = budget.cost_micros {
                    add(quota(Measure::Cost, c));
                }
            }
            CallKind::Tool => {
                if let Some(n) = budget.tool_calls {
                    add(quota(Measure::ToolCalls, n));
                }
            }
        }
        if let Some(max_secs) = budget.wall_time_s {
            add(LimitKind::WallTime { max_secs });
        }
    }
    keys
}

/// A refusal: which ceiling, and when to retry (`None`: not before the run ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDeny {
    /// The ceiling that refused.
    pub key: LimitKey,
    /// When a retry may succeed.
    pub retry_after: Option<Duration>,
}

impl LimitDeny {
    /// A refusal by `key` at unix second `now`, for kinds whose retry time follows from the key
    /// alone (quotas and wall time); rates and concurrency carry the backend's own estimate.
    pub fn for_key(key: &LimitKey, now: i64, backend_estimate: Duration) -> Self {
        let retry_after = match key.kind {
            LimitKind::Quota { window, .. } => match window {
                Window::Run => None,
                Window::Day(p) | Window::Month(p) => Some(Duration::from_secs(
                    u64::try_from(p.ends_at.saturating_sub(now))
                        .unwrap_or(0)
                        .max(1),
                )),
            },
            LimitKind::WallTime { .. } => None,
            _ => Some(backend_estimate),
        };
        Self {
            key: key.clone(),
            retry_after,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    /// A ceiling refused it.
    Limited(LimitDeny),
    /// The counters could not be reached in time (fail closed).
    Unavailable,
}

/// A metered key an admitted request reserved against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// The key.
    pub key: LimitKey,
    /// The backend's window of the reservation: the minute, for tokens per minute; 0 for
    /// quotas, whose window is in the key.
    pub window: u64,
    /// The amount of the key's measure reserved on it (grows when a stream extends it).
    pub reserved: u64,
}

/// What an admitted request holds until it ends.
#[derive(Debug, Default)]
pub struct Admission {
    /// Concurrency slots to give back.
    pub leases: Vec<LimitKey>,
    /// The id the backend knows these leases by.
    pub lease_id: String,
    /// The tightest rate ceiling: (limit, remaining, reset) for `X-RateLimit-*`.
    pub headline: Option<RateHeadline>,
    /// Metered keys reserved against.
    pub metered: Vec<Metered>,
    /// What was reserved, per measure, in all (including stream extensions).
    pub reserved: Charge,
    /// Admitted by a replica's local fallback counters (settled there, not in the shared ones).
    pub local: bool,
    /// Keeps the leases of a shared backend alive while the request runs; stops when the
    /// admission is dropped (the request ended and was settled).
    pub renewal: Option<LeaseRenewal>,
}

/// A task that renews an admission's leases; aborted when dropped.
#[derive(Debug)]
pub struct LeaseRenewal {
    task: tokio::task::AbortHandle,
    /// Held by the task while a renewal is on its way: [`LeaseRenewal::stop`] takes it, so no
    /// renewal is still in flight once the leases are released.
    in_flight: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl LeaseRenewal {
    /// The renewal run by `task`, which holds `in_flight` while a renewal is on its way.
    pub fn new(
        task: tokio::task::AbortHandle,
        in_flight: std::sync::Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        Self { task, in_flight }
    }

    /// Stops renewing, once the renewal on its way (if any) is done: a renewal brings back a
    /// lease that is gone (Redis lost it while the request ran), so one that reached Redis
    /// after the release would bring back the released lease.
    pub async fn stop(self) {
        let _none_in_flight = self.in_flight.lock().await;
        self.task.abort();
    }
}

impl Drop for LeaseRenewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Admission {
    /// Records a metered key reserved against with `charge`.
    pub fn meter(&mut self, key: &LimitKey, window: u64, charge: Charge) {
        if let Some(measure) = key.kind.measure() {
            self.metered.push(Metered {
                key: key.clone(),
                window,
                reserved: charge.of(measure),
            });
        }
    }

    /// The keys a mid-stream extension must fit: the hard ceilings (quotas), not the rolling
    /// per-minute rate.
    pub fn quota_keys(&self) -> Vec<LimitKey> {
        self.metered
            .iter()
            .filter(|m| matches!(m.key.kind, LimitKind::Quota { .. }))
            .map(|m| m.key.clone())
            .collect()
    }

    /// Adds a granted extension of the quota keys to what this admission reserved.
    pub fn add_extension(&mut self, extra: Charge) {
        for m in &mut self.metered {
            if let LimitKind::Quota { measure, .. } = m.key.kind {
                m.reserved = m.reserved.saturating_add(extra.of(measure));
            }
        }
        self.reserved = self.reserved.plus(extra);
    }
}

/// Whole seconds to wait, at least one, rounded up: a client that waits the seconds it is told
/// must find the wait over (rounded down, `1.9s` said `1`, and a client obeying it was refused
/// again every other time).
pub fn whole_secs_up(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Values for the `X-RateLimit-*` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeadline {
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Reset` (seconds until the bucket is full again).
    pub reset_secs: u64,
}

/// The key of a signed run's life record (first request, expiry, request and refusal counts,
/// closed, summarized), under the tenant's hash tag like its counters.
pub fn run_life_key(tenant: &TenantId, run: &str) -> String {
    format!("tp:{{{tenant}}}:run:{run}:life")
}

/// What the backend knew of a run when one of its requests arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSighting {
    /// This request is the run's first, across every replica sharing the backend.
    pub first: bool,
    /// The run was closed: its requests are refused.
    pub closed: bool,
}

/// What a run's life record holds when its summary is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLedger {
    /// Unix ms of the run's first request (`None`: closed before any request was seen).
    pub start_ms: Option<i64>,
    /// Unix ms the run ended: its close, or its expiry.
    pub end_ms: i64,
    /// Requests seen.
    pub requests: u64,
    /// Requests refused.
    pub refusals: u64,
}

/// The answer to a claim on a run's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunClaim {
    /// The run is still live: a token seen elsewhere expires at this unix ms.
    NotYet {
        /// The latest expiry any replica recorded.
        expires_ms: i64,
    },
    /// Another replica (or an earlier close) already summarized it.
    Taken,
    /// This caller writes the summary.
    Claimed(RunLedger),
}

/// The shared counters could not be reached (the detail says how; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the limit counters cannot be reached: {0}")]
pub struct LimiterUnavailable(pub String);

/// A place counters live.
#[async_trait::async_trait]
pub trait LimitBackend: Send + Sync + fmt::Debug {
    /// Checks every key and, only if all admit, updates all of them, in one atomic step;
    /// each metered key reserves its measure's amount of `charge`.
    async fn admit(&self, keys: &[LimitKey], charge: Charge) -> Result<Admission, AdmitError>;
    /// Ends a request: settles its reservations to what it really used (`used` may be below or
    /// above) and gives back its concurrency slots. It takes the admission: settling twice
    /// would count a reservation back twice, and giving back slots twice would let the tenant
    /// past its concurrency ceiling (the backends disagreed on it), so a second finish must not
    /// compile.
    async fn finish(&self, admission: Admission, used: Charge);
    /// What is counted on each key now (tokens, micro-units, calls, or in-flight requests; a
    /// rate key reads 0), for `tenant-proxy usage`.
    async fn read(&self, keys: &[LimitKey]) -> Result<Vec<u64>, LimiterUnavailable>;
    /// Whether this replica can serve metered requests as configured (readiness): for a
    /// shared backend, whether it answers now, unless the replica falls back to local counters
    /// while it does not.
    fn is_ready(&self) -> bool {
        self.is_connected()
    }
    /// Whether the backend answers now (`/readyz`'s `limiter_connected`): the in-memory one
    /// always; a shared one when its last call or periodic probe got an answer.
    fn is_connected(&self) -> bool {
        true
    }
    /// Read-only and cheap: the refusal one of the rate keys `rate_keys` builds would give now,
    /// known without a round trip, or `None` (not over, or not known here). Consumes nothing: a
    /// caller refused here has used none of its allowance, and one let through is checked in
    /// full by [`Self::admit`]. The keys are built only by a backend that can answer, so the
    /// others pay nothing per request.
    fn already_over(&self, _rate_keys: &dyn Fn() -> Vec<LimitKey>) -> Option<LimitDeny> {
        None
    }
    /// The longest [`Self::admit`] takes to answer (its time box): how long a stream's chunk
    /// that waits for an extension waits. Zero for a backend whose answer is ready when first
    /// asked (the in-memory one).
    fn answer_within(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Where signed runs' life records live (first request, latest expiry, counts, closed), so that
/// replicas sharing a backend write one `run_started` and one `run_summary` per run.
#[async_trait::async_trait]
pub trait RunRegistry: Send + Sync + fmt::Debug {
    /// Records a request of a signed run whose token expires at `expires_ms` (unix ms), in one
    /// atomic step: counts it, keeps the latest expiry, and says whether it is the run's first
    /// and whether the run was closed.
    async fn sight_run(
        &self,
        tenant: &TenantId,
        run: &str,
        expires_ms: i64,
    ) -> Result<RunSighting, LimiterUnavailable>;
    /// Counts a refused request of a signed run (best effort: the summary's refusal count).
    async fn count_refusal(&self, tenant: &TenantId, run: &str);
    /// Claims the run's summary, once across replicas. `Closed` marks the run closed first
    /// (its later requests are refused) and always ends it; `Expired` ends it only once the
    /// latest expiry any replica recorded has passed.
    async fn end_run(
        &self,
        tenant: &TenantId,
        run: &str,
        end: RunEnd,
    ) -> Result<RunClaim, LimiterUnavailable>;
    /// Whether the run was closed (read only: nothing is recorded), for the relays and streams
    /// of the run already open (see `pipeline::lapse`).
    async fn run_closed(&self, tenant: &TenantId, run: &str) -> Result<bool, LimiterUnavailable>;
}

/// One tenant's ceilings as the configuration sets them.
#[derive(Debug, Clone, Copy)]
pub struct TenantLimits<'a> {
    /// Ceilings on the tenant as a whole.
    pub ceilings: &'a Ceilings,
    /// Ceilings on single workloads.
    pub workload_ceilings: &'a std::collections::HashMap<WorkloadId, Ceilings>,
    /// The tenant's workloads.
    pub workloads: &'a [WorkloadId],
    /// Where the tenant's days and months begin.
    pub calendar: &'a calendar::TenantCalendar,
}

/// What the limits read from the tenant configuration (implemented by it, so the limits never
/// depend on how the configuration is laid out).
pub trait LimitConfig {
    /// `tenant`'s ceilings; `None` for a tenant the configuration does not know.
    fn tenant_limits(&self, tenant: &TenantId) -> Option<TenantLimits<'_>>;
    /// The price table, when one is configured.
    fn prices(&self) -> Option<&crate::pricing::PriceTable>;
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// Its token expired.
    Expired,
    /// It was closed through the admin port.
    Closed,
}

/// The backend the configuration names.
pub fn backend(settings: &LimiterSettings) -> Result<Backend, String> {
    use std::sync::Arc;
    Ok(match settings {
        LimiterSettings::Memory { run_ttl } => {
            let m = Arc::new(memory::MemoryBackend::new(*run_ttl));
            Backend {
                counters: m.clone(),
                runs: m,
                revocations: None,
            }
        }
        LimiterSettings::Redis(r) => {
            let b = Arc::new(redis::RedisBackend::start(r.clone())?);
            Backend {
                counters: b.clone(),
                revocations: Some(b.revocations()),
                runs: b,
            }
        }
    })
}

/// One backend seen through both of its interfaces.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Ceilings and their counters.
    pub counters: std::sync::Arc<dyn LimitBackend>,
    /// Signed runs' life records.
    pub runs: std::sync::Arc<dyn RunRegistry>,
    /// The revocation list shared by the replicas (Redis only).
    pub revocations: Option<std::sync::Arc<redis_revocations::SharedRevocations>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_told_in_whole_seconds_rounded_up() {
        for (wait, told) in [
            (Duration::from_millis(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1_001), 2),
            (Duration::from_millis(1_900), 2),
            (Duration::from_secs(60), 60),
            (Duration::ZERO, 1),
        ] {
            assert_eq!(whole_secs_up(wait), told, "{wait:?}");
        }
    }

    fn tid(s: &str) -> TenantId {
        TenantId::new(s).expect("id")
    }

    /// The names as `write!` spelled them before `redis_name` wrote them by hand: the same
    /// string for every scope, kind and window id (Redis keys must not move on an upgrade).
    #[test]
    fn redis_names_are_spelled_as_before() {
        fn before(key: &LimitKey) -> String {
            let mut s = match &key.scope {
                Scope::Tenant(t) => format!("tp:{{{t}}}:"),
                Scope::Workload(t, w) => format!("tp:{{{t}}}:w:{w}:"),
                Scope::Run(t, r) => format!("tp:{{{t}}}:run:{r}:"),
            };
            s.push_str(&match key.slot() {
                Slot::RatePerSecond => "rate_s".to_string(),
                Slot::RatePerMinute => "rate_m".to_string(),
                Slot::Concurrency => "conc".to_string(),
                Slot::TokensPerMinute => "tpm".to_string(),
                Slot::RunQuota(m) => m.as_str().to_string(),
                Slot::DayQuota(m, id) => format!("{}:d{id}", m.as_str()),
                Slot::MonthQuota(m, id) => format!("{}:m{id}", m.as_str()),
                Slot::Start => "start".to_string(),
            });
            s
        }
        let scopes = [
            Scope::Tenant(tid("acme")),
            Scope::Workload(tid("acme-2"), WorkloadId::new("bot-x").expect("id")),
            Scope::Run(tid("a"), "run-1:{b}".to_string()),
        ];
        let period = |id| Period {
            id,
            starts_at: 0,
            ends_at: 1,
        };
        let mut kinds = vec![
            LimitKind::Rate {
                per_period: 5,
                period_secs: 1,
                burst: 1,
            },
            LimitKind::Rate {
                per_period: 5,
                period_secs: 60,
                burst: 1,
            },
            LimitKind::Concurrency { max: 2 },
            LimitKind::TokensPerMinute { ceiling: 9 },
            LimitKind::WallTime { max_secs: 9 },
        ];
        for measure in [Measure::Tokens, Measure::Cost, Measure::ToolCalls] {
            kinds.push(LimitKind::Quota {
                measure,
                window: Window::Run,
                ceiling: 1,
            });
            for id in [0, 7, 10, 99, 202_611, 20_261_123, u32::MAX] {
                for window in [Window::Day(period(id)), Window::Month(period(id))] {
                    kinds.push(LimitKind::Quota {
                        measure,
                        window,
                        ceiling: 1,
                    });
                }
            }
        }
        for scope in &scopes {
            for kind in &kinds {
                let key = LimitKey {
                    scope: scope.clone(),
                    kind: *kind,
                };
                assert_eq!(key.redis_name(), before(&key));
                assert_eq!(key.to_string(), before(&key));
            }
        }
    }

    #[test]
    fn keys_name_their_tenant_and_window_but_not_their_ceiling() {
        let cal = TenantCalendar::new("Europe/Berlin").expect("tz");
        // 2026-11-22T23:30:00Z is already the 23rd in Berlin.
        let now = 1_795_390_200;
        let budget = RunBudget {
            tokens: Some(10),
            tool_calls: Some(3),
            wall_time_s: Some(60),
            cost_micros: Some(5),
        };
        let (acme, bot) = (tid("acme"), WorkloadId::new("bot").expect("id"));
        let who = Subject {
            tenant: &acme,
            workload: &bot,
            run: Some(("run-1", &budget)),
        };
        let c = Ceilings {
            cost_per_day_micros: Some(1_000),
            cost_per_month_micros: Some(9_000),
            tokens_per_minute: Some(100),
            ..Default::default()
        };
        let llm: Vec<String> = keys_for(who, &c, Some(&c), &cal, now, CallKind::Llm)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            llm,
            [
                "tp:{acme}:tpm",
                "tp:{acme}:cost:d20261123",
                "tp:{acme}:cost:m202611",
                "tp:{acme}:w:bot:tpm",
                "tp:{acme}:w:bot:cost:d20261123",
                "tp:{acme}:w:bot:cost:m202611",
                "tp:{acme}:run:run-1:tokens",
                "tp:{acme}:run:run-1:cost",
                "tp:{acme}:run:run-1:start",
            ]
        );
        let tool: Vec<String> = keys_for(who, &c, None, &cal, now, CallKind::Tool)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            tool,
            [
                "tp:{acme}:run:run-1:tool_calls",
                "tp:{acme}:run:run-1:start"
            ]
        );
        let unsigned = Subject { run: None, ..who };
        assert!(keys_for(
            unsigned,
            &Ceilings::default(),
            None,
            &cal,
            now,
            CallKind::Tool
        )
        .is_empty());
    }

    #[test]
    fn quota_refusals_retry_at_the_local_period_end() {
        let cal = TenantCalendar::new("Europe/Berlin").expect("tz");
        let now = 1_795_390_200;
        let day = cal.day(now);
        let key = LimitKey {
            scope: Scope::Tenant(tid("acme")),
            kind: LimitKind::Quota {
                measure: Measure::Cost,
                window: Window::Day(day),
                ceiling: 1,
            },
        };
        let deny = LimitDeny::for_key(&key, now, Duration::ZERO);
        assert_eq!(
            deny.retry_after,
            Some(Duration::from_secs((day.ends_at - now) as u64))
        );
        let run_key = LimitKey {
            scope: Scope::Run(tid("acme"), "r".into()),
            kind: LimitKind::WallTime { max_secs: 1 },
        };
        assert_eq!(
            LimitDeny::for_key(&run_key, now, Duration::ZERO).retry_after,
            None
        );
    }
}
