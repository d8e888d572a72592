//! The `LimitBackend` contract: what every place limit counters live must do, written once and
//! run against both backends, the in-memory one and the Redis one, the latter both on a real
//! `redis-server` and on a real six-node Redis Cluster (three masters, a replica each; one
//! server or cluster per test). Only the public API is used: `keys_for` builds the keys as the proxy does, and the
//! clock is the real one (Redis takes its time from `TIME`, so a test cannot move it).
//!
//! What both share: admission is all or nothing and a refusal consumes nothing; rate,
//! concurrency, tokens-per-minute, cost (day and month) and run ceilings, per tenant, workload
//! and run; reservations settled to what was used; a run's counters and life record keyed by its
//! tenant (tenant A's run `r1` is not tenant B's run `r1`, and closing one does not close the
//! other); a run's counters expiring `run_ttl` after its last reservation, and not coming back
//! when a late settlement arrives; stream extensions granted while the budget lasts and refused
//! by the ceiling that ran out; atomic admission under concurrent callers. What only Redis has
//! (its leases expire `lease_ttl` after a replica stopped giving them back; memory leases live
//! and die with their process) is tested for Redis alone, at the end.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenant_proxy::clock::unix_now_i64;
use tenant_proxy::identity::token::RunBudget;
use tenant_proxy::ids::{TenantId, WorkloadId};
use tenant_proxy::limits::calendar::TenantCalendar;
use tenant_proxy::limits::redis::{RedisSettings, Unavailable};
use tenant_proxy::limits::stream::{CutReason, StreamGuard, Verdict};
use tenant_proxy::limits::{
    keys_for, AdmitError, Backend, CallKind, Ceilings, Charge, LimitDeny, LimitKey, LimitKind,
    LimiterSettings, RunClaim, RunEnd, RunLedger, RunSighting, Scope, Window,
};

use crate::support::{RedisCluster, RedisServer};

/// Where a contract test's counters live.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// The in-memory backend.
    Memory,
    /// One `redis-server`.
    Redis,
    /// A six-node Redis Cluster (three masters, a replica each).
    Cluster,
}

/// Where a contract test gets its backends from.
pub struct Backends {
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

impl Backends {
    /// A fresh backend, made as the proxy makes it ([`tenant_proxy::limits::backend`]), whose
    /// run counters live `run_ttl` after their last reservation (whole seconds: Redis expires
    /// keys by the second) and whose leases outlive a crashed holder by `lease_ttl` (Redis only).
    fn make(&self, run_ttl: Duration, lease_ttl: Duration) -> Backend {
        self.make_with(
            run_ttl,
            lease_ttl,
            Duration::from_secs(2),
            Unavailable::FailClosed,
        )
    }

    /// [`Self::make`], whose Redis calls are given `timeout` and do what `on_unavailable` says
    /// without an answer.
    fn make_with(
        &self,
        run_ttl: Duration,
        lease_ttl: Duration,
        timeout: Duration,
        on_unavailable: Unavailable,
    ) -> Backend {
        let url = match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server.url()),
            (_, Some(cluster)) => Some(cluster.url()),
            (None, None) => None,
        };
        let settings = match url {
            None => LimiterSettings::Memory { run_ttl },
            Some(url) => LimiterSettings::Redis(RedisSettings {
                endpoint: tenant_proxy::redis_conn::RedisEndpoint::from_url(&url).unwrap(),
                timeout,
                lease_ttl,
                run_ttl,
                on_unavailable,
            }),
        };
        let backend = tenant_proxy::limits::backend(&settings).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backend.counters.is_ready() {
            assert!(Instant::now() < deadline, "the backend never reached redis");
            std::thread::sleep(Duration::from_millis(10));
        }
        backend
    }

    /// A fresh backend with long-lived run counters and leases.
    fn fresh(&self) -> Backend {
        self.make(Duration::from_secs(3600), Duration::from_secs(300))
    }
}

/// Runs `test` on a runtime of its own, against the memory backend, a new `redis-server` or a
/// new Redis Cluster.
fn run<F, Fut>(store: Store, test: F)
where
    F: FnOnce(Backends) -> Fut,
    Fut: Future<Output = ()>,
{
    let backends = Backends {
        redis: (store == Store::Redis).then(RedisServer::start),
        cluster: (store == Store::Cluster).then(RedisCluster::start),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(backends));
}

/// Instantiates every contract test once per backend.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[test]
            fn $test() {
                super::run(super::Store::Memory, super::$test)
            })*
        }
        mod redis {
            $(#[test]
            fn $test() {
                super::run(super::Store::Redis, super::$test)
            })*
        }
        mod cluster {
            $(#[test]
            fn $test() {
                super::run(super::Store::Cluster, super::$test)
            })*
        }
    };
}

contract!(
    a_refusal_consumes_no_allowance_of_any_other_ceiling,
    rate_ceilings_refuse_with_a_retry_time_per_tenant,
    concurrency_slots_are_held_until_finished,
    workload_ceilings_apply_inside_the_tenants,
    tokens_per_minute_are_reserved_then_settled_to_what_was_used,
    cost_ceilings_refuse_by_the_day_then_by_the_month_per_tenant,
    run_budgets_are_counted_per_tenant_and_run,
    a_runs_wall_time_runs_from_its_first_request,
    run_counters_expire_run_ttl_after_their_last_reservation,
    run_life_records_are_per_tenant_and_closing_one_leaves_the_other,
    a_run_is_summarized_once_after_its_latest_expiry,
    streams_are_extended_while_the_budget_lasts_then_cut_by_the_ceiling_that_ran_out,
    a_days_counter_outlives_its_writes_and_a_stream_is_not_extended_past_it,
    concurrent_admissions_never_overshoot,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn workload(id: &str) -> WorkloadId {
    WorkloadId::new(id).unwrap()
}

/// The keys of a call of `tenant`'s `workload` (and run, when given) under these ceilings now.
fn keys(
    tenant_id: &str,
    workload_id: &str,
    tenant_ceilings: &Ceilings,
    workload_ceilings: Option<&Ceilings>,
    run: Option<(&str, &RunBudget)>,
    call: CallKind,
) -> Vec<LimitKey> {
    let (t, w) = (tenant(tenant_id), workload(workload_id));
    keys_for(
        tenant_proxy::limits::Subject {
            tenant: &t,
            workload: &w,
            run,
        },
        tenant_ceilings,
        workload_ceilings,
        &TenantCalendar::utc(),
        unix_now_i64(),
        call,
    )
}

fn tokens(n: u64) -> Charge {
    Charge {
        tokens: n,
        ..Charge::default()
    }
}

fn cost(n: u64) -> Charge {
    Charge {
        cost_micros: n,
        ..Charge::default()
    }
}

fn tool_call() -> Charge {
    Charge {
        tool_calls: 1,
        ..Charge::default()
    }
}

/// The refusal of an admission that had to be refused.
fn refused(result: Result<tenant_proxy::limits::Admission, AdmitError>) -> LimitDeny {
    match result {
        Err(AdmitError::Limited(deny)) => deny,
        Err(AdmitError::Unavailable) => panic!("the backend was unavailable"),
        Ok(a) => panic!("admitted, reserving {:?}", a.reserved),
    }
}

fn unix_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The contract

/// Admission checks every key before it updates any: a request refused by its last ceiling
/// leaves the rate, concurrency, token and cost counters of the ones before it as they were.
async fn a_refusal_consumes_no_allowance_of_any_other_ceiling(b: Backends) {
    let backend = b.fresh().counters;
    let tenant_ceilings = Ceilings {
        requests_per_minute: Some(3),
        concurrency: Some(5),
        tokens_per_minute: Some(1_000),
        cost_per_day_micros: Some(1_000),
        ..Default::default()
    };
    // The workload's own ceiling comes after the tenant's keys and refuses big calls.
    let workload_ceilings = Ceilings {
        tokens_per_minute: Some(100),
        ..Default::default()
    };
    let k = keys(
        "acme",
        "bot",
        &tenant_ceilings,
        Some(&workload_ceilings),
        None,
        CallKind::Llm,
    );
    let charge = Charge {
        tokens: 500,
        cost_micros: 500,
        tool_calls: 0,
    };
    for _ in 0..5 {
        let deny = refused(backend.admit(&k, charge).await);
        assert_eq!(
            deny.key.scope,
            Scope::Workload(tenant("acme"), workload("bot"))
        );
    }
    // Nothing was reserved, and no slot is held.
    assert_eq!(backend.read(&k).await.unwrap(), vec![0, 0, 0, 0, 0]);
    // The whole rate allowance is still there: three calls pass, the fourth is the rate's.
    for _ in 0..3 {
        let a = backend.admit(&k, tokens(10)).await.unwrap();
        backend.finish(a, tokens(10)).await;
    }
    let deny = refused(backend.admit(&k, tokens(10)).await);
    assert!(matches!(deny.key.kind, LimitKind::Rate { .. }), "{deny:?}");
    // The rate's refusal itself reserved nothing either.
    let read = backend.read(&k).await.unwrap();
    assert_eq!(read[2], 30, "tokens: three calls of 10: {read:?}");
    assert_eq!(read[1], 0, "no slot held: {read:?}");
}

/// A rate ceiling refuses past its allowance with a time to retry; another tenant with the
/// same ceiling has its own allowance.
async fn rate_ceilings_refuse_with_a_retry_time_per_tenant(b: Backends) {
    let backend = b.fresh().counters;
    let per_second = Ceilings {
        requests_per_second: Some(2),
        burst: Some(3),
        ..Default::default()
    };
    let acme = keys("acme", "bot", &per_second, None, None, CallKind::Tool);
    let globex = keys("globex", "agent", &per_second, None, None, CallKind::Tool);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let a = backend.admit(&acme, Charge::default()).await.unwrap();
        let headline = a.headline.unwrap();
        assert_eq!(headline.limit, 2);
        remaining.push(headline.remaining);
    }
    assert_eq!(remaining, [2, 1, 0], "the burst counts down");
    let deny = refused(backend.admit(&acme, Charge::default()).await);
    assert_eq!(deny.key, acme[0]);
    let retry = deny.retry_after.unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{deny:?}"
    );
    // globex's burst is whole.
    for _ in 0..3 {
        backend.admit(&globex, Charge::default()).await.unwrap();
    }
    // Per minute too, and the retry is within the minute.
    let per_minute = Ceilings {
        requests_per_minute: Some(2),
        ..Default::default()
    };
    let acme = keys("acme", "bot", &per_minute, None, None, CallKind::Tool);
    for _ in 0..2 {
        backend.admit(&acme, Charge::default()).await.unwrap();
    }
    let deny = refused(backend.admit(&acme, Charge::default()).await);
    assert!(deny
        .retry_after
        .is_some_and(|r| r > Duration::ZERO && r <= Duration::from_secs(60)));
    let globex = keys("globex", "agent", &per_minute, None, None, CallKind::Tool);
    backend.admit(&globex, Charge::default()).await.unwrap();
}

/// A concurrency slot is taken at admission and given back by `finish`, and `read` shows the
/// requests in flight; a slot not given back stays taken (a lease lives until it is finished,
/// well past any request's length).
async fn concurrency_slots_are_held_until_finished(b: Backends) {
    let backend = b.fresh().counters;
    let c = Ceilings {
        concurrency: Some(2),
        ..Default::default()
    };
    let acme = keys("acme", "bot", &c, None, None, CallKind::Tool);
    let first = backend.admit(&acme, Charge::default()).await.unwrap();
    let second = backend.admit(&acme, Charge::default()).await.unwrap();
    assert_eq!(first.leases, acme);
    assert_eq!(backend.read(&acme).await.unwrap(), vec![2]);
    let deny = refused(backend.admit(&acme, Charge::default()).await);
    assert_eq!(deny.key, acme[0]);
    assert!(deny.retry_after.is_some());
    // Another tenant's slots are its own.
    let globex = keys("globex", "agent", &c, None, None, CallKind::Tool);
    let g = backend.admit(&globex, Charge::default()).await.unwrap();
    backend.finish(g, Charge::default()).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![2]);
    // Still held a while later: nothing but `finish` gives a slot back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    refused(backend.admit(&acme, Charge::default()).await);
    backend.finish(first, Charge::default()).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![1]);
    let third = backend.admit(&acme, Charge::default()).await.unwrap();
    backend.finish(second, Charge::default()).await;
    backend.finish(third, Charge::default()).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![0]);
}

/// A workload's ceiling refuses that workload alone; the tenant's ceiling counts every
/// workload together.
async fn workload_ceilings_apply_inside_the_tenants(b: Backends) {
    let backend = b.fresh().counters;
    let tenant_ceilings = Ceilings {
        concurrency: Some(2),
        ..Default::default()
    };
    let one_at_a_time = Ceilings {
        concurrency: Some(1),
        ..Default::default()
    };
    let bot = keys(
        "acme",
        "bot",
        &tenant_ceilings,
        Some(&one_at_a_time),
        None,
        CallKind::Tool,
    );
    let other = keys(
        "acme",
        "other",
        &tenant_ceilings,
        None,
        None,
        CallKind::Tool,
    );
    let a = backend.admit(&bot, Charge::default()).await.unwrap();
    let deny = refused(backend.admit(&bot, Charge::default()).await);
    assert_eq!(
        deny.key.scope,
        Scope::Workload(tenant("acme"), workload("bot"))
    );
    // The workload's refusal did not take the tenant slot it would have used.
    let b2 = backend.admit(&other, Charge::default()).await.unwrap();
    let deny = refused(backend.admit(&other, Charge::default()).await);
    assert_eq!(deny.key.scope, Scope::Tenant(tenant("acme")));
    backend.finish(a, Charge::default()).await;
    let c = backend.admit(&other, Charge::default()).await.unwrap();
    backend.finish(b2, Charge::default()).await;
    backend.finish(c, Charge::default()).await;
}

/// Tokens are reserved at admission and settled to the real usage at the end; the ceiling
/// counts reservations not yet settled. Another tenant's minute is its own.
async fn tokens_per_minute_are_reserved_then_settled_to_what_was_used(b: Backends) {
    let backend = b.fresh().counters;
    let c = Ceilings {
        tokens_per_minute: Some(200),
        ..Default::default()
    };
    let acme = keys("acme", "bot", &c, None, None, CallKind::Llm);
    let a = backend.admit(&acme, tokens(150)).await.unwrap();
    assert_eq!(a.reserved, tokens(150));
    assert_eq!(backend.read(&acme).await.unwrap(), vec![150]);
    let deny = refused(backend.admit(&acme, tokens(150)).await);
    assert!(deny
        .retry_after
        .is_some_and(|r| r <= Duration::from_secs(60)));
    backend.finish(a, tokens(26)).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![26]);
    let b2 = backend.admit(&acme, tokens(150)).await.unwrap();
    // A call may use more than it reserved: the counter says what was used.
    backend.finish(b2, tokens(170)).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![196]);
    refused(backend.admit(&acme, tokens(5)).await);
    let globex = keys("globex", "agent", &c, None, None, CallKind::Llm);
    assert_eq!(backend.read(&globex).await.unwrap(), vec![0]);
    backend.admit(&globex, tokens(200)).await.unwrap();
    // A call that is not an LLM call has no token key at all.
    assert!(keys("acme", "bot", &c, None, None, CallKind::Tool).is_empty());
}

/// Cost is reserved and settled against the day's and the month's ceilings of the tenant's
/// calendar; the day refuses first with a retry at its end, then the month.
async fn cost_ceilings_refuse_by_the_day_then_by_the_month_per_tenant(b: Backends) {
    let backend = b.fresh().counters;
    let c = Ceilings {
        cost_per_day_micros: Some(1_000),
        cost_per_month_micros: Some(1_500),
        ..Default::default()
    };
    let acme = keys("acme", "bot", &c, None, None, CallKind::Llm);
    let a = backend.admit(&acme, cost(900)).await.unwrap();
    backend.finish(a, cost(1_000)).await;
    assert_eq!(backend.read(&acme).await.unwrap(), vec![1_000, 1_000]);
    let deny = refused(backend.admit(&acme, cost(1)).await);
    assert!(
        matches!(
            deny.key.kind,
            LimitKind::Quota {
                window: Window::Day(_),
                ..
            }
        ),
        "{deny:?}"
    );
    let until_midnight = deny.retry_after.unwrap();
    assert!(
        until_midnight > Duration::ZERO && until_midnight <= Duration::from_secs(86_400),
        "{deny:?}"
    );
    // globex's day and month are untouched.
    let globex = keys("globex", "agent", &c, None, None, CallKind::Llm);
    assert_eq!(backend.read(&globex).await.unwrap(), vec![0, 0]);
    let g = backend.admit(&globex, cost(1_000)).await.unwrap();
    backend.finish(g, cost(400)).await;
    assert_eq!(backend.read(&globex).await.unwrap(), vec![400, 400]);
    // The month alone (no daily ceiling) refuses at its own ceiling.
    let month_only = Ceilings {
        cost_per_month_micros: Some(1_500),
        ..Default::default()
    };
    let acme_month = keys("acme", "bot", &month_only, None, None, CallKind::Llm);
    backend.admit(&acme_month, cost(500)).await.unwrap();
    let deny = refused(backend.admit(&acme_month, cost(1)).await);
    assert!(matches!(
        deny.key.kind,
        LimitKind::Quota {
            window: Window::Month(_),
            ..
        }
    ));
}

/// A signed run's budget counts its calls under its tenant: tenant A spending its run `r1`
/// leaves tenant B's run `r1` whole, for every measure.
async fn run_budgets_are_counted_per_tenant_and_run(b: Backends) {
    let backend = b.fresh().counters;
    let budget = RunBudget {
        tokens: Some(100),
        tool_calls: Some(2),
        cost_micros: Some(50),
        ..RunBudget::default()
    };
    let none = Ceilings::default();
    let tools =
        |t: &str, w: &str, run: &str| keys(t, w, &none, None, Some((run, &budget)), CallKind::Tool);
    let llm =
        |t: &str, w: &str, run: &str| keys(t, w, &none, None, Some((run, &budget)), CallKind::Llm);
    // acme spends every measure of its r1.
    for _ in 0..2 {
        backend
            .admit(&tools("acme", "bot", "r1"), tool_call())
            .await
            .unwrap();
    }
    let deny = refused(
        backend
            .admit(&tools("acme", "bot", "r1"), tool_call())
            .await,
    );
    assert_eq!(deny.key.scope, Scope::Run(tenant("acme"), "r1".into()));
    assert_eq!(deny.retry_after, None, "a run's budget does not come back");
    let a = backend
        .admit(
            &llm("acme", "bot", "r1"),
            Charge {
                tokens: 100,
                cost_micros: 50,
                tool_calls: 0,
            },
        )
        .await
        .unwrap();
    backend
        .finish(
            a,
            Charge {
                tokens: 100,
                cost_micros: 50,
                tool_calls: 0,
            },
        )
        .await;
    refused(backend.admit(&llm("acme", "bot", "r1"), tokens(1)).await);
    refused(backend.admit(&llm("acme", "bot", "r1"), cost(1)).await);
    assert_eq!(
        backend.read(&llm("acme", "bot", "r1")).await.unwrap(),
        vec![100, 50]
    );
    // globex's r1 has read nothing of it, and its whole budget to spend.
    assert_eq!(
        backend.read(&llm("globex", "agent", "r1")).await.unwrap(),
        vec![0, 0]
    );
    assert_eq!(
        backend.read(&tools("globex", "agent", "r1")).await.unwrap(),
        vec![0]
    );
    for _ in 0..2 {
        backend
            .admit(&tools("globex", "agent", "r1"), tool_call())
            .await
            .unwrap();
    }
    let g = backend
        .admit(&llm("globex", "agent", "r1"), tokens(100))
        .await
        .unwrap();
    backend.finish(g, tokens(100)).await;
    // Another run of acme has its own budget.
    backend
        .admit(&tools("acme", "bot", "r2"), tool_call())
        .await
        .unwrap();
}

/// A run's wall time counts from its first request, under its tenant.
async fn a_runs_wall_time_runs_from_its_first_request(b: Backends) {
    let backend = b.fresh().counters;
    let budget = RunBudget {
        wall_time_s: Some(1),
        ..RunBudget::default()
    };
    let none = Ceilings::default();
    let k =
        |t: &str, w: &str, run: &str| keys(t, w, &none, None, Some((run, &budget)), CallKind::Tool);
    backend
        .admit(&k("acme", "bot", "r1"), Charge::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let deny = refused(
        backend
            .admit(&k("acme", "bot", "r1"), Charge::default())
            .await,
    );
    assert!(
        matches!(deny.key.kind, LimitKind::WallTime { .. }),
        "{deny:?}"
    );
    assert_eq!(deny.retry_after, None);
    assert!(backend.read(&k("acme", "bot", "r1")).await.unwrap()[0] >= 2);
    // globex's r1 starts now: it is not acme's.
    backend
        .admit(&k("globex", "agent", "r1"), Charge::default())
        .await
        .unwrap();
    backend
        .admit(&k("acme", "bot", "r2"), Charge::default())
        .await
        .unwrap();
}

/// A run's counters live `run_ttl` after their last reservation, then the run starts afresh;
/// a settlement arriving after that does not bring them back.
async fn run_counters_expire_run_ttl_after_their_last_reservation(b: Backends) {
    let backend = b
        .make(Duration::from_secs(1), Duration::from_secs(300))
        .counters;
    let budget = RunBudget {
        tool_calls: Some(1),
        tokens: Some(100),
        ..RunBudget::default()
    };
    let none = Ceilings::default();
    let tools = keys(
        "acme",
        "bot",
        &none,
        None,
        Some(("r1", &budget)),
        CallKind::Tool,
    );
    let llm = keys(
        "acme",
        "bot",
        &none,
        None,
        Some(("r1", &budget)),
        CallKind::Llm,
    );
    backend.admit(&tools, tool_call()).await.unwrap();
    refused(backend.admit(&tools, tool_call()).await);
    let late = backend.admit(&llm, tokens(100)).await.unwrap();
    refused(backend.admit(&llm, tokens(1)).await);
    // Past the ttl (Redis expires by the second): both counters are gone.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(backend.read(&tools).await.unwrap(), vec![0]);
    // The late call ends now: its settlement does not resurrect the expired counter.
    backend.finish(late, tokens(100)).await;
    assert_eq!(backend.read(&llm).await.unwrap(), vec![0]);
    backend.admit(&tools, tool_call()).await.unwrap();
    backend.admit(&llm, tokens(100)).await.unwrap();
}

/// A signed run's life record: the first sighting says so, a close is per tenant, and a
/// closed run's later sightings say it is closed. Closing acme's `r1` leaves globex's `r1`
/// live, and the other way round.
async fn run_life_records_are_per_tenant_and_closing_one_leaves_the_other(b: Backends) {
    let runs = b.fresh().runs;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let later = unix_ms() + 600_000;
    let started = unix_ms();
    assert_eq!(
        runs.sight_run(&acme, "r1", later).await.unwrap(),
        RunSighting {
            first: true,
            closed: false
        }
    );
    assert!(!runs.sight_run(&acme, "r1", later).await.unwrap().first);
    // The same run id under globex is another run.
    assert!(runs.sight_run(&globex, "r1", later).await.unwrap().first);
    runs.count_refusal(&acme, "r1").await;
    // globex closes its r1: its ledger, none of acme's counts.
    match runs.end_run(&globex, "r1", RunEnd::Closed).await.unwrap() {
        RunClaim::Claimed(RunLedger {
            requests, refusals, ..
        }) => assert_eq!((requests, refusals), (1, 0)),
        other => panic!("{other:?}"),
    }
    assert!(runs.sight_run(&globex, "r1", later).await.unwrap().closed);
    // Read without a sighting (what open relays and streams ask once a second).
    assert!(runs.run_closed(&globex, "r1").await.unwrap());
    assert!(
        !runs.run_closed(&acme, "r1").await.unwrap(),
        "closing globex's r1 closed acme's"
    );
    assert!(!runs.run_closed(&acme, "not-seen").await.unwrap());
    let live = runs.sight_run(&acme, "r1", later).await.unwrap();
    assert_eq!(
        live,
        RunSighting {
            first: false,
            closed: false
        },
        "closing globex's r1 closed acme's"
    );
    // A run closed before any request was seen has no start.
    match runs
        .end_run(&acme, "never-seen", RunEnd::Closed)
        .await
        .unwrap()
    {
        RunClaim::Claimed(RunLedger {
            start_ms, requests, ..
        }) => assert_eq!((start_ms, requests), (None, 0)),
        other => panic!("{other:?}"),
    }
    // acme closes its r1: summarized at once, with its own counts, then closed.
    let claim = runs.end_run(&acme, "r1", RunEnd::Closed).await.unwrap();
    let RunClaim::Claimed(ledger) = claim else {
        panic!("{claim:?}");
    };
    assert_eq!((ledger.requests, ledger.refusals), (3, 1), "{ledger:?}");
    let start = ledger.start_ms.unwrap();
    assert!(
        (started - 5_000..=unix_ms() + 5_000).contains(&start),
        "{ledger:?}"
    );
    assert!(
        ledger.end_ms >= start && ledger.end_ms < later,
        "{ledger:?}"
    );
    assert!(runs.sight_run(&acme, "r1", later).await.unwrap().closed);
    // Summarized once: a second close and the expiry find it taken.
    assert_eq!(
        runs.end_run(&acme, "r1", RunEnd::Closed).await.unwrap(),
        RunClaim::Taken
    );
    assert_eq!(
        runs.end_run(&acme, "r1", RunEnd::Expired).await.unwrap(),
        RunClaim::Taken
    );
}

/// An expiring run is summarized once, after the latest expiry any of its tokens carried.
async fn a_run_is_summarized_once_after_its_latest_expiry(b: Backends) {
    let runs = b.fresh().runs;
    let acme = tenant("acme");
    let now = unix_ms();
    let (first_expiry, second_expiry) = (now + 300, now + 900);
    runs.sight_run(&acme, "r1", first_expiry).await.unwrap();
    runs.sight_run(&acme, "r1", second_expiry).await.unwrap();
    runs.count_refusal(&acme, "r1").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        runs.end_run(&acme, "r1", RunEnd::Expired).await.unwrap(),
        RunClaim::NotYet {
            expires_ms: second_expiry
        },
        "a later token moved the run's end"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    match runs.end_run(&acme, "r1", RunEnd::Expired).await.unwrap() {
        RunClaim::Claimed(ledger) => {
            assert_eq!(ledger.end_ms, second_expiry);
            assert_eq!((ledger.requests, ledger.refusals), (2, 1));
            assert!(ledger.start_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        runs.end_run(&acme, "r1", RunEnd::Expired).await.unwrap(),
        RunClaim::Taken
    );
}

/// Observes `estimate` until the guard has no extension in flight: the verdict then.
async fn observe_settled(guard: &mut StreamGuard, estimate: u64) -> Verdict {
    let mut verdict = guard.observe(estimate);
    for _ in 0..500 {
        if !guard.is_asking() {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        verdict = guard.observe(estimate);
    }
    verdict
}

/// A chunk past the cover: it asks for what it needs and, when the backend does not answer at
/// once, waits (as pingora holds it) before it is decided again.
async fn observe_past_cover(guard: &mut StreamGuard, estimate: u64) -> Verdict {
    match guard.observe(estimate) {
        Verdict::Wait(wait) => {
            tokio::time::sleep(wait).await;
            guard.after_wait(estimate)
        }
        other => other,
    }
}

/// A stream that outgrows its reservation is extended while the budget lasts; past the cover
/// of what was granted it is cut, naming the window that ran out. What was granted is settled
/// with the call.
async fn streams_are_extended_while_the_budget_lasts_then_cut_by_the_ceiling_that_ran_out(
    b: Backends,
) {
    let backend = b.fresh().counters;
    let budget = RunBudget {
        tokens: Some(300),
        ..RunBudget::default()
    };
    let k = keys(
        "acme",
        "bot",
        &Ceilings::default(),
        None,
        Some(("r1", &budget)),
        CallKind::Llm,
    );
    let mut admission = backend.admit(&k, tokens(100)).await.unwrap();
    let mut guard = StreamGuard::new(
        backend.clone(),
        admission.quota_keys(),
        100,
        100,
        tokens(100),
    );
    assert_eq!(guard.observe(10), Verdict::Pass);
    assert_eq!(observe_settled(&mut guard, 60).await, Verdict::Pass);
    assert_eq!(guard.granted(), tokens(100), "the first extension");
    assert_eq!(observe_settled(&mut guard, 160).await, Verdict::Pass);
    assert_eq!(guard.granted(), tokens(200), "the second");
    assert_eq!(observe_settled(&mut guard, 260).await, Verdict::Pass);
    // The third, asked ahead, does not fit: that cuts nothing by itself.
    assert_eq!(guard.refused(), None);
    assert_eq!(guard.observe(300), Verdict::Pass, "exactly at the cover");
    assert_eq!(
        observe_past_cover(&mut guard, 301).await,
        Verdict::Cut(CutReason::Budget("run"))
    );
    // Settled at what the stream used, extensions included.
    admission.add_extension(guard.granted());
    assert_eq!(admission.reserved, tokens(300));
    backend.finish(admission, tokens(290)).await;
    assert_eq!(backend.read(&k).await.unwrap(), vec![290]);
    // globex's run of the same id streams within its own budget.
    let g = keys(
        "globex",
        "agent",
        &Ceilings::default(),
        None,
        Some(("r1", &budget)),
        CallKind::Llm,
    );
    let ga = backend.admit(&g, tokens(100)).await.unwrap();
    let mut guard = StreamGuard::new(backend.clone(), ga.quota_keys(), 100, 100, tokens(100));
    assert_eq!(observe_settled(&mut guard, 60).await, Verdict::Pass);
    assert_eq!(guard.granted(), tokens(100));

    // A tenant's day that runs out cuts with `day`.
    let day = Ceilings {
        cost_per_day_micros: Some(150),
        ..Default::default()
    };
    let k = keys("acme", "bot", &day, None, None, CallKind::Llm);
    let a = backend.admit(&k, cost(100)).await.unwrap();
    let mut guard = StreamGuard::new(backend.clone(), a.quota_keys(), 100, 100, cost(100));
    assert_eq!(observe_settled(&mut guard, 60).await, Verdict::Pass);
    assert_eq!(
        observe_past_cover(&mut guard, 101).await,
        Verdict::Cut(CutReason::Budget("day"))
    );
    assert_eq!(guard.granted(), Charge::default());
}

/// A day's counter is kept at least an hour past its last write, whatever the window's end
/// says: a proxy whose clock is behind the counters' (Redis's) names a day that ended for them,
/// and an expiry set in their past would drop the counter as it is written, every call counted
/// from zero. A stream admitted in a day is held to it; asked for past the time its counter is
/// kept (a stream an hour past midnight, a clock stepped forward), an extension is refused as
/// the day's ceiling rather than counted from zero.
async fn a_days_counter_outlives_its_writes_and_a_stream_is_not_extended_past_it(b: Backends) {
    let backend = b.fresh().counters;
    let day = Ceilings {
        cost_per_day_micros: Some(1_000),
        ..Default::default()
    };
    let (t, w) = (tenant("acme"), workload("bot"));
    let two_days_ago = keys_for(
        tenant_proxy::limits::Subject {
            tenant: &t,
            workload: &w,
            run: None,
        },
        &day,
        None,
        &TenantCalendar::utc(),
        unix_now_i64() - 2 * 86_400,
        CallKind::Llm,
    );
    let a = backend.admit(&two_days_ago, cost(600)).await.unwrap();
    assert_eq!(backend.read(&two_days_ago).await.unwrap(), vec![600]);
    refused(backend.admit(&two_days_ago, cost(600)).await);
    let mut guard = StreamGuard::new(backend.clone(), a.quota_keys(), 100, 100, cost(100));
    assert_eq!(
        observe_past_cover(&mut guard, 101).await,
        Verdict::Cut(CutReason::Budget("day"))
    );
    assert_eq!(guard.granted(), Charge::default(), "nothing was asked for");
    assert_eq!(backend.read(&two_days_ago).await.unwrap(), vec![600]);
    // Today's day, admitted now, is extended as usual.
    let today = keys("acme", "bot", &day, None, None, CallKind::Llm);
    let a = backend.admit(&today, cost(100)).await.unwrap();
    let mut guard = StreamGuard::new(backend.clone(), a.quota_keys(), 100, 100, cost(100));
    assert_eq!(observe_settled(&mut guard, 60).await, Verdict::Pass);
    assert_eq!(guard.granted(), cost(100));
}

/// Admission is atomic: many callers at once never get more than the ceiling allows.
async fn concurrent_admissions_never_overshoot(b: Backends) {
    let backend = b.fresh().counters;
    let c = Ceilings {
        requests_per_minute: Some(50),
        cost_per_month_micros: Some(1_000),
        ..Default::default()
    };
    let k = Arc::new(keys("acme", "bot", &c, None, None, CallKind::Llm));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (backend, k) = (backend.clone(), k.clone());
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..40 {
                    if backend.admit(&k, cost(7)).await.is_ok() {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(admitted, 50, "the request rate binds first (50 × 7 < 1000)");
    assert_eq!(backend.read(&k).await.unwrap(), vec![0, 350]);
}

// ---------------------------------------------------------------------------------------------
// Redis only

/// A replica that stops (and never gives its slots back) holds them only `lease_ttl`: in Redis,
/// leases are sorted-set members that expire unless their replica renews them. (In memory,
/// leases die with their process.)
#[test]
fn redis_leases_of_a_vanished_replica_expire_after_lease_ttl() {
    run(Store::Redis, |b: Backends| async move {
        let backend = b
            .make(Duration::from_secs(3600), Duration::from_millis(800))
            .counters;
        let c = Ceilings {
            concurrency: Some(1),
            ..Default::default()
        };
        let k = keys("acme", "bot", &c, None, None, CallKind::Tool);
        // While its replica runs, a request keeps its slot past `lease_ttl` (renewed)...
        let mut never_finished = backend.admit(&k, Charge::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        refused(backend.admit(&k, Charge::default()).await);
        // ...and once the replica is gone, nothing renews it: it expires.
        drop(never_finished.renewal.take());
        std::mem::forget(never_finished);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(backend.read(&k).await.unwrap(), vec![0]);
        let again = backend.admit(&k, Charge::default()).await.unwrap();
        backend.finish(again, Charge::default()).await;
    });
}

/// A Redis that loses its data (flushed, restarted without persistence, failed over to a replica
/// that missed writes) loses the leases of the requests still running: each running request
/// puts its lease back at its next renewal (a third of `lease_ttl`), so they count against the
/// ceiling again, however long they run. A lease released is never brought back.
#[test]
fn redis_leases_redis_lost_come_back_while_their_requests_run() {
    run(Store::Redis, |b: Backends| async move {
        let backend = b
            .make(Duration::from_secs(3600), Duration::from_millis(600))
            .counters;
        let server = b.redis.as_ref().expect("a Redis server");
        let c = Ceilings {
            concurrency: Some(1),
            ..Default::default()
        };
        let k = keys("acme", "bot", &c, None, None, CallKind::Tool);
        let running = backend.admit(&k, Charge::default()).await.unwrap();
        refused(backend.admit(&k, Charge::default()).await);
        server.command("FLUSHALL");
        assert_eq!(backend.read(&k).await.unwrap(), vec![0], "lost");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(backend.read(&k).await.unwrap(), vec![1], "put back");
        refused(backend.admit(&k, Charge::default()).await);
        // Released: the slot is free, and no renewal brings it back.
        backend.finish(running, Charge::default()).await;
        let again = backend.admit(&k, Charge::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        backend.finish(again, Charge::default()).await;
        assert_eq!(backend.read(&k).await.unwrap(), vec![0]);
    });
}

/// A Redis that lost the limiter's scripts (restarted, `SCRIPT FLUSH`ed, a failover to a replica
/// that never loaded them) answers `NOSCRIPT`: each call sends its script once and asks again,
/// so nothing is refused, admitted or lost for it, on the admission, refusal, read, settlement
/// and run paths alike.
#[test]
fn redis_scripts_the_server_lost_are_sent_again_by_the_next_call() {
    run(Store::Redis, |b: Backends| async move {
        let Backend { counters, runs, .. } = b.fresh();
        let server = b.redis.as_ref().expect("a Redis server");
        let flush = || {
            server.command("SCRIPT FLUSH");
        };
        let c = Ceilings {
            concurrency: Some(1),
            ..Default::default()
        };
        let k = keys("acme", "bot", &c, None, None, CallKind::Tool);
        flush();
        let held = counters.admit(&k, Charge::default()).await.unwrap();
        flush();
        assert_eq!(counters.read(&k).await.unwrap(), vec![1]);
        flush();
        refused(counters.admit(&k, Charge::default()).await);
        flush();
        counters.finish(held, Charge::default()).await;
        flush();
        assert_eq!(
            counters.read(&k).await.unwrap(),
            vec![0],
            "the slot came back"
        );
        let again = counters.admit(&k, Charge::default()).await.unwrap();
        counters.finish(again, Charge::default()).await;
        flush();
        runs.sight_run(&tenant("acme"), "r1", unix_ms() + 60_000)
            .await
            .unwrap();
    });
}

/// Under `local_fallback`, a run this replica knows to be closed stays closed while Redis does
/// not answer: its own close, a sighting that said closed and a read that said closed are kept
/// in the local record it falls back on (which used to know no closure, so the run was served
/// again). A close only another replica saw is not known here during the outage.
#[test]
fn redis_a_closed_run_stays_closed_under_local_fallback_while_redis_is_out() {
    run(Store::Redis, |mut b: Backends| async move {
        let replica = || {
            b.make_with(
                Duration::from_secs(3600),
                Duration::from_secs(300),
                Duration::from_millis(500),
                Unavailable::LocalFallback,
            )
            .runs
        };
        let (here, other) = (replica(), replica());
        let acme = tenant("acme");
        let later = unix_ms() + 600_000;
        for run in ["own", "sighted", "read", "elsewhere", "live"] {
            assert!(here.sight_run(&acme, run, later).await.unwrap().first);
        }
        // This replica closes `own`; the other closes the rest, and this one learns of
        // `sighted` from a request, of `read` from what an open relay asks.
        assert!(matches!(
            here.end_run(&acme, "own", RunEnd::Closed).await.unwrap(),
            RunClaim::Claimed(_)
        ));
        for run in ["sighted", "read", "elsewhere"] {
            assert!(matches!(
                other.end_run(&acme, run, RunEnd::Closed).await.unwrap(),
                RunClaim::Claimed(_)
            ));
        }
        assert!(
            here.sight_run(&acme, "sighted", later)
                .await
                .unwrap()
                .closed
        );
        assert!(here.run_closed(&acme, "read").await.unwrap());

        b.redis.as_mut().expect("a Redis server").stop();
        for run in ["own", "sighted", "read"] {
            assert!(
                here.sight_run(&acme, run, later).await.unwrap().closed,
                "closed run `{run}` served while redis is out"
            );
            assert!(here.run_closed(&acme, run).await.unwrap(), "{run}");
        }
        assert!(!here.sight_run(&acme, "live", later).await.unwrap().closed);
        // The documented limit: a close this replica never saw is not known during the outage.
        assert!(
            !here
                .sight_run(&acme, "elsewhere", later)
                .await
                .unwrap()
                .closed
        );
        // Another tenant's run of the same id is not closed by acme's close.
        assert!(
            !here
                .sight_run(&tenant("globex"), "own", later)
                .await
                .unwrap()
                .closed
        );
    });
}

/// A claim on a run's summary that reaches Redis only after its caller gave up (Redis stalled
/// meanwhile) claims nothing, for a close and an expiry alike: the caller was told it failed,
/// and its next try claims the run and writes the summary. (Such a claim used to apply: the run
/// was closed and marked summarized, and every later claim found it taken, so no `run_summary`
/// was ever written.) A shorter stall only delays the claim: its caller waits for it.
#[test]
fn redis_a_run_claim_that_runs_after_its_caller_gave_up_claims_nothing() {
    run(Store::Redis, |b: Backends| async move {
        let runs = b
            .make_with(
                Duration::from_secs(3600),
                Duration::from_secs(300),
                Duration::from_millis(200),
                Unavailable::FailClosed,
            )
            .runs;
        let server = b.redis.as_ref().expect("a Redis server");
        let acme = tenant("acme");
        runs.sight_run(&acme, "closing", unix_ms() + 600_000)
            .await
            .unwrap();
        let expiry = unix_ms() + 300;
        runs.sight_run(&acme, "expiring", expiry).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (run, end) in [("closing", RunEnd::Closed), ("expiring", RunEnd::Expired)] {
            // Redis stalls for 1.8 s, longer than a claim may apply (the calls' 200 ms timeout
            // plus a second).
            server.command("CLIENT PAUSE 1800 ALL");
            let stalled = runs.end_run(&acme, run, end).await;
            assert!(stalled.is_err(), "{run}: {stalled:?}");
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert_eq!(
                server.command(&format!("HEXISTS tp:{{acme}}:run:{run}:life summarized")),
                ["0"],
                "{run}: the claim its caller gave up on took the run"
            );
            // A stall of half a second: the claim applies, and its caller is still waiting.
            server.command("CLIENT PAUSE 500 ALL");
            match runs.end_run(&acme, run, end).await.unwrap() {
                RunClaim::Claimed(ledger) => {
                    assert_eq!(ledger.requests, 1, "{run}: {ledger:?}");
                    assert!(ledger.start_ms.is_some(), "{run}: {ledger:?}");
                }
                other => panic!("{run}: the summary is lost: {other:?}"),
            }
        }
    });
}

/// A refusal counted for a run never seen (its first request refused) creates the run's life
/// record in Redis: it expires `run_ttl` later, as a seen run's does, and counting a refusal
/// never shortens the life of a run that has one.
#[test]
fn redis_a_refusal_of_a_run_never_seen_expires() {
    run(Store::Redis, |b: Backends| async move {
        let runs = b
            .make(Duration::from_secs(120), Duration::from_secs(300))
            .runs;
        let server = b.redis.as_ref().expect("a Redis server");
        let acme = tenant("acme");
        let pttl = |run: &str| -> i64 {
            server.command(&format!("PTTL tp:{{acme}}:run:{run}:life"))[0]
                .parse()
                .unwrap()
        };
        runs.count_refusal(&acme, "never-seen").await;
        assert_eq!(
            server.command("HGET tp:{acme}:run:never-seen:life refusals"),
            ["1"]
        );
        let ttl = pttl("never-seen");
        assert!((100_000..=120_000).contains(&ttl), "{ttl}");
        // Seen with a token valid for an hour: kept for an hour plus `run_ttl`.
        runs.sight_run(&acme, "seen", unix_ms() + 3_600_000)
            .await
            .unwrap();
        runs.count_refusal(&acme, "seen").await;
        let ttl = pttl("seen");
        assert!(ttl > 3_600_000, "{ttl}");
        // The refused run's first request later starts it, and it lives as a seen run does.
        assert!(
            runs.sight_run(&acme, "never-seen", unix_ms() + 3_600_000)
                .await
                .unwrap()
                .first
        );
        assert!(pttl("never-seen") > 3_600_000);
    });
}

/// Every Redis key carries its tenant as a hash tag, runs included: the behaviour above rests
/// on it, and a Redis Cluster keeps one tenant's keys in one slot.
#[test]
fn redis_keys_are_tagged_with_their_tenant() {
    run(Store::Redis, keys_are_tagged_with_their_tenant);
}

/// On a cluster too, and each tenant's keys are on the one master that serves its tag's slot.
#[test]
fn cluster_keys_are_tagged_with_their_tenant_and_live_in_its_slot() {
    run(Store::Cluster, keys_are_tagged_with_their_tenant);
}

async fn keys_are_tagged_with_their_tenant(b: Backends) {
    {
        let Backend { counters, runs, .. } = b.fresh();
        let budget = RunBudget {
            tool_calls: Some(5),
            ..RunBudget::default()
        };
        let c = Ceilings {
            requests_per_minute: Some(5),
            concurrency: Some(5),
            ..Default::default()
        };
        for (t, w) in [("acme", "bot"), ("globex", "agent")] {
            let k = keys(t, w, &c, Some(&c), Some(("r1", &budget)), CallKind::Tool);
            let a = counters.admit(&k, tool_call()).await.unwrap();
            counters.finish(a, tool_call()).await;
            runs.sight_run(&tenant(t), "r1", unix_ms() + 60_000)
                .await
                .unwrap();
        }
        let mut all = match (&b.redis, &b.cluster) {
            (Some(server), _) => server.command("KEYS *"),
            (_, Some(cluster)) => cluster.all_keys(),
            (None, None) => unreachable!("a Redis store"),
        };
        all.sort();
        assert!(!all.is_empty());
        if let Some(cluster) = &b.cluster {
            // Each tenant's keys sit on one master: the one serving its tag's slot.
            for t in ["acme", "globex"] {
                let master = cluster.master_of(&format!("{{{t}}}"));
                let on_master = cluster.cli(master, &["KEYS", &format!("tp:{{{t}}}:*")]);
                let here = on_master.lines().filter(|l| !l.is_empty()).count();
                let everywhere = all
                    .iter()
                    .filter(|k| k.starts_with(&format!("tp:{{{t}}}:")))
                    .count();
                assert_eq!(here, everywhere, "{t}: {all:?}");
            }
        }
        for k in &all {
            assert!(
                k.starts_with("tp:{acme}:") || k.starts_with("tp:{globex}:"),
                "{all:?}"
            );
        }
        for t in ["acme", "globex"] {
            assert!(
                all.contains(&format!("tp:{{{t}}}:run:r1:tool_calls")),
                "{all:?}"
            );
            assert!(all.contains(&format!("tp:{{{t}}}:run:r1:life")), "{all:?}");
        }
    }
}
