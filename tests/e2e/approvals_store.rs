//! The contract every approval hold store keeps, run against the in-memory store, one real
//! `redis-server` and a real six-node Redis Cluster (three masters, a replica each), as the
//! limiter's contract is: the per-tenant and global caps, tenant-first lookups, one winner per
//! decision, late decisions refused, and owner leases (a hold whose owner stopped renewing is
//! orphaned: no longer counted, listed or approvable).

use std::time::{Duration, Instant};

use tenant_proxy::approvals::redis::RedisHolds;
use tenant_proxy::approvals::store::{
    Caps, Change, Decided, HoldRecord, HoldState, HoldStore, MemoryHolds, OpenError, Renewal,
    Transition, DECIDED_PER_PENDING, LEASE_MS,
};
use tenant_proxy::redis_conn::RedisEndpoint;

use crate::support::{RedisCluster, RedisServer};

fn record(tenant: &str, id: &str, created_ms: u64, owner: Option<&str>) -> HoldRecord {
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
        mode: if owner.is_some() { "wait" } else { "poll" }.into(),
        owner: owner.map(String::from),
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

const ROOMY: Caps = Caps {
    per_tenant: 2,
    global: 1000,
};

async fn open(store: &dyn HoldStore, tenant: &str, id: &str, now: u64) -> Result<(), OpenError> {
    store
        .open(&record(tenant, id, now, None), None, ROOMY)
        .await
}

async fn contract(store: &dyn HoldStore) {
    // Caps per tenant; another tenant's cap is its own.
    let now = 1_000_000;
    open(store, "acme", "h1", now).await.expect("opens");
    open(store, "acme", "h2", now).await.expect("opens");
    assert_eq!(
        open(store, "acme", "h3", now).await,
        Err(OpenError::TenantFull)
    );
    open(store, "globex", "g1", now)
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
    assert_eq!(
        store.keep("globex", "h1", now, now + LEASE_MS, true).await,
        Ok(Renewal::Unknown)
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
    let got = store.get("acme", "h1").await.unwrap().expect("kept");
    assert_eq!(got.state, HoldState::Approved);
    assert_eq!(got.decided.and_then(|d| d.approver), Some("alice".into()));
    // A decided hold no longer counts against the cap.
    open(store, "acme", "h4", now).await.expect("room again");

    // The global cap counts every tenant together (later, when the holds above are past
    // their deadlines and count no more).
    let later = now + 100_000;
    let tight = Caps {
        per_tenant: 10,
        global: 3,
    };
    for (tenant, id) in [("acme", "x1"), ("globex", "x2"), ("initech", "x3")] {
        store
            .open(&record(tenant, id, later, None), None, tight)
            .await
            .expect("under the global cap");
    }
    assert_eq!(
        store
            .open(&record("umbrella", "x4", later, None), None, tight)
            .await,
        Err(OpenError::GlobalFull)
    );
    assert_eq!(
        store.get("umbrella", "x4").await,
        Ok(None),
        "a refused hold is not kept"
    );
    // A decision frees room under the global cap too.
    store
        .transition(
            "globex",
            "x2",
            decide(HoldState::Pending, HoldState::Denied, later + 1),
        )
        .await
        .expect("reachable");
    store
        .open(&record("umbrella", "x4", later, None), None, tight)
        .await
        .expect("room again under the global cap");

    // Leases: a waiting hold's owner renews its lease at every look; one that stops is gone.
    let t = now + 200_000;
    let owned = |id: &str| record("acme", id, t, Some("replica-a"));
    for id in ["l1", "l2", "l3"] {
        store
            .open(&owned(id), Some(t + LEASE_MS), tight)
            .await
            .expect("opens");
    }
    // The owner renews l1 and l2; l3 is left to lapse.
    for id in ["l1", "l2"] {
        let renewed = store
            .keep("acme", id, t + 2000, t + 2000 + LEASE_MS, true)
            .await
            .expect("reachable");
        let Renewal::Held(h) = renewed else {
            panic!("{renewed:?}")
        };
        assert_eq!(
            (h.state, h.lease_ms),
            (HoldState::Pending, Some(t + 2000 + LEASE_MS))
        );
    }
    let after = t + LEASE_MS + 500;
    let mut listed: Vec<String> = store
        .pending("acme", after)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.record.id)
        .collect();
    listed.sort();
    assert_eq!(listed, ["l1", "l2"], "a lapsed hold is not listed");
    // A lapsed hold no longer counts: the global cap (3) has room for one more.
    store
        .open(&record("globex", "l4", after, None), None, tight)
        .await
        .expect("the lapsed hold does not count");
    // Approving the lapsed hold is refused: it is orphaned now, for good.
    assert_eq!(
        store
            .transition(
                "acme",
                "l3",
                decide(HoldState::Pending, HoldState::Approved, after)
            )
            .await,
        Ok(Transition::Orphaned)
    );
    let l3 = store.get("acme", "l3").await.unwrap().unwrap();
    assert_eq!(l3.state, HoldState::Orphaned);
    assert_eq!(
        store
            .transition(
                "acme",
                "l3",
                decide(HoldState::Pending, HoldState::Approved, after)
            )
            .await,
        Ok(Transition::NotFrom(HoldState::Orphaned))
    );
    // An owner that looks after its lease lapsed finds its hold orphaned (it must refuse its
    // agent); a renewed one is still approvable.
    let too_late = t + 2000 + LEASE_MS + 1;
    match store
        .keep("acme", "l2", too_late, too_late + LEASE_MS, true)
        .await
        .unwrap()
    {
        Renewal::OrphanedNow(h) => assert_eq!(h.state, HoldState::Orphaned),
        other => panic!("{other:?}"),
    }
    let won = store
        .transition(
            "acme",
            "l1",
            decide(HoldState::Pending, HoldState::Approved, t + 2000 + LEASE_MS),
        )
        .await
        .unwrap();
    assert!(matches!(won, Transition::Done(ref h) if h.state == HoldState::Approved));
    // A polled hold has no owner and no lease: it lives until its deadline.
    let p = store.get("globex", "l4").await.unwrap().unwrap();
    assert_eq!((p.lease_ms, p.record.owner), (None, None));

    // Decided holds are bounded per tenant (an agent can open and hang up as fast as it
    // sends): past `DECIDED_PER_PENDING` times its cap, its oldest go as it opens more, and
    // another tenant's are untouched.
    let t = now + 300_000;
    let one = Caps {
        per_tenant: 1,
        global: 1000,
    };
    for n in 0..10u64 {
        let id = format!("d{n}");
        store
            .open(&record("hooli", &id, t + n, None), None, one)
            .await
            .expect("one pending at a time");
        let cancelled = store
            .transition(
                "hooli",
                &id,
                decide(HoldState::Pending, HoldState::Cancelled, t + n),
            )
            .await
            .expect("reachable");
        assert!(matches!(cancelled, Transition::Done(_)), "{cancelled:?}");
    }
    let mut kept = Vec::new();
    for n in 0..10u64 {
        if store
            .get("hooli", &format!("d{n}"))
            .await
            .unwrap()
            .is_some()
        {
            kept.push(n);
        }
    }
    assert_eq!(
        kept,
        [6, 7, 8, 9],
        "the newest {DECIDED_PER_PENDING} are kept"
    );
    let l1 = store
        .get("acme", "l1")
        .await
        .unwrap()
        .expect("another tenant's stays");
    assert_eq!(l1.state, HoldState::Approved);
    // One left pending (the global count has a member again), which lets the oldest go.
    store
        .open(&record("hooli", "d10", t + 10, None), None, one)
        .await
        .expect("room for a pending one");
    assert_eq!(store.get("hooli", "d6").await, Ok(None));
    assert!(store.get("hooli", "d7").await.unwrap().is_some());
}

fn on_runtime(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// The Redis store at `url`, once connected.
async fn redis_store(url: &str) -> RedisHolds {
    let store = RedisHolds::start(
        RedisEndpoint::from_url(url).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.get("acme", "none").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the hold store never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

#[test]
fn the_memory_store_keeps_the_contract() {
    on_runtime(contract(&MemoryHolds::default()));
}

#[test]
fn the_redis_store_keeps_the_contract() {
    let redis = RedisServer::start();
    on_runtime(async { contract(&redis_store(&redis.url()).await).await });
    let keys = redis.command("KEYS *").join(" ");
    assert!(keys.contains("tp:approval:{acme}:hold:h1"), "{keys}");
    assert!(keys.contains("tp:approval:{globex}:pending"), "{keys}");
    assert!(keys.contains("tp:approvals:{approvals}:pending"), "{keys}");
}

#[test]
fn the_redis_store_keeps_the_contract_on_a_cluster() {
    let cluster = RedisCluster::start();
    on_runtime(async { contract(&redis_store(&cluster.url()).await).await });
    // Each tenant's hold keys live on the master of its slot; the global set on its own.
    let keys = cluster.all_keys();
    for tenant in ["acme", "globex"] {
        let master = cluster.master_of(&format!("{{{tenant}}}"));
        let theirs: Vec<&String> = keys
            .iter()
            .filter(|k| k.starts_with(&format!("tp:approval:{{{tenant}}}:")))
            .collect();
        assert!(!theirs.is_empty(), "{keys:?}");
        for key in theirs {
            assert_eq!(cluster.master_of(key), master, "{key}");
        }
    }
    assert!(
        keys.iter().any(|k| k == "tp:approvals:{approvals}:pending"),
        "{keys:?}"
    );
}
