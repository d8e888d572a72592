//! Name resolution behind one trait, so the [`Dialer`](super::Dialer) decides on exactly the
//! addresses it was given, and tests can inject canned (or hostile) answers.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::ids::TenantId;

/// How many name lookups each tenant may have running at once.
///
/// SECURITY: a system lookup (`getaddrinfo`) runs on a thread of the runtime's blocking pool
/// and cannot be cancelled: a request that gives up at `dns_timeout` leaves its thread busy
/// until the system resolver does (up to tens of seconds for a name whose servers do not
/// answer). A tenant whose policy lets it name hosts it controls could keep every thread of
/// the pool busy that way, and every tenant's lookups would wait behind them. Each lookup
/// therefore holds one of its tenant's places until the system call returns, not until the
/// request stops waiting, and a tenant with none free is refused at once.
#[derive(Debug)]
pub struct LookupShares {
    max: u32,
    tenants: DashMap<TenantId, Arc<AtomicU32>>,
}

/// One place of a tenant's [`LookupShares`], given back when dropped.
#[derive(Debug)]
pub struct LookupHold {
    count: Option<Arc<AtomicU32>>,
}

impl LookupShares {
    /// Shares of `max` lookups per tenant.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            tenants: DashMap::new(),
        }
    }

    /// The most lookups one tenant may have running.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A place for one lookup of `tenant`, unless all of its places are taken.
    pub fn try_hold(&self, tenant: &TenantId) -> Option<LookupHold> {
        let count = match self.tenants.get(tenant) {
            Some(c) => Arc::clone(&c),
            None => Arc::clone(&self.tenants.entry(tenant.clone()).or_default()),
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(LookupHold { count: Some(count) })
    }

    /// Lookups `tenant` has running now.
    #[cfg(test)]
    pub fn running(&self, tenant: &TenantId) -> u32 {
        self.tenants
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

impl LookupHold {
    /// A hold counted nowhere (lookups made for the proxy itself, not for a tenant's request).
    pub fn uncounted() -> Self {
        Self { count: None }
    }
}

impl Drop for LookupHold {
    fn drop(&mut self) {
        if let Some(count) = &self.count {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Where a [`Dialer`](super::Dialer) gets the addresses of a name.
///
/// Implementations return every address they know; the dialer refuses the whole name if any one
/// of them is not allowed, so a resolver never needs to filter.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// All addresses for `host` (never called for IP literals the caller already parsed).
    /// `hold` is kept until the lookup itself ends, which for a system lookup can be after the
    /// caller stopped waiting (see [`LookupShares`]).
    async fn lookup(&self, host: &str, hold: LookupHold) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver: `getaddrinfo` on tokio's blocking pool, time-boxed by the
/// timeout given at construction.
///
/// `getaddrinfo` also accepts legacy numeric spellings (`2130706433`, `0x7f000001`, `127.1`,
/// `0177.0.0.1` all become 127.0.0.1). That is fine: the decision is made on the resolved
/// address, never on the spelling.
///
/// The timeout bounds how long a request waits, not the `getaddrinfo` call itself, which cannot
/// be cancelled and keeps its blocking thread until the system resolver gives up.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    timeout: Duration,
    /// The blocking call (`getaddrinfo`; a stand-in in tests).
    blocking: fn(&str) -> io::Result<Vec<std::net::SocketAddr>>,
}

impl SystemResolver {
    /// A resolver whose lookups fail with [`io::ErrorKind::TimedOut`] after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            blocking: getaddrinfo,
        }
    }
}

fn getaddrinfo(host: &str) -> io::Result<Vec<std::net::SocketAddr>> {
    std::net::ToSocketAddrs::to_socket_addrs(&(host, 0u16)).map(Iterator::collect)
}

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str, hold: LookupHold) -> io::Result<Vec<IpAddr>> {
        let (blocking, name) = (self.blocking, host.to_string());
        // The hold moves into the blocking call: it is given back when the call returns, even
        // when this request stopped waiting for it at the timeout.
        let call = tokio::task::spawn_blocking(move || {
            let _hold = hold;
            blocking(&name)
        });
        let addrs = within(self.timeout, async {
            call.await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
        })
        .await?;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in addrs {
            // getaddrinfo may repeat an address (one per socket type); keep its order.
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        Ok(out)
    }
}

/// `fut`, or [`io::ErrorKind::TimedOut`] once `timeout` has passed.
async fn within<T>(timeout: Duration, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "name lookup timed out",
        )),
    }
}

/// Fixed answers for some names (the configuration's `[egress.hosts]`, or a test's), with other
/// names passed to an inner resolver.
///
/// Static answers go through the same checks as any other: mapping a name to `10.0.0.5` does not
/// by itself allow it, an exception must.
#[derive(Debug, Clone)]
pub struct StaticResolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    fallback: Option<Arc<dyn Resolver>>,
}

impl StaticResolver {
    /// Answers `hosts` (names compared case-insensitively); other names go to `fallback`, or
    /// fail with [`io::ErrorKind::NotFound`] when there is none.
    pub fn new(hosts: HashMap<String, Vec<IpAddr>>, fallback: Option<Arc<dyn Resolver>>) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|(name, addrs)| (name.to_ascii_lowercase(), addrs))
            .collect();
        Self { hosts, fallback }
    }
}

#[async_trait::async_trait]
impl Resolver for StaticResolver {
    async fn lookup(&self, host: &str, hold: LookupHold) -> io::Result<Vec<IpAddr>> {
        if let Some(addrs) = self.hosts.get(&host.to_ascii_lowercase()) {
            return Ok(addrs.clone());
        }
        match &self.fallback {
            Some(inner) => inner.lookup(host, hold).await,
            None => Err(io::Error::new(io::ErrorKind::NotFound, "name not found")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn static_resolver_answers_its_names_and_falls_through() {
        let inner = StaticResolver::new(
            HashMap::from([("other.example".to_string(), vec![ip("1.1.1.1")])]),
            None,
        );
        let r = StaticResolver::new(
            HashMap::from([(
                "Vault.Internal".to_string(),
                vec![ip("10.0.0.5"), ip("::1")],
            )]),
            Some(Arc::new(inner)),
        );
        assert_eq!(
            r.lookup("vault.internal", LookupHold::uncounted())
                .await
                .ok(),
            Some(vec![ip("10.0.0.5"), ip("::1")])
        );
        assert_eq!(
            r.lookup("other.example", LookupHold::uncounted())
                .await
                .ok(),
            Some(vec![ip("1.1.1.1")])
        );
        let missing = r
            .lookup("nowhere.example", LookupHold::uncounted())
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(missing, Some(io::ErrorKind::NotFound));
    }

    /// A name whose servers do not answer: the system call blocks for 400 ms.
    fn slow(_: &str) -> io::Result<Vec<std::net::SocketAddr>> {
        std::thread::sleep(Duration::from_millis(400));
        Ok(vec!["192.0.2.1:0".parse().unwrap()])
    }

    #[tokio::test]
    async fn a_tenants_slow_lookups_hold_its_places_until_they_end_not_others() {
        let shares = LookupShares::new(2);
        let resolver = SystemResolver {
            timeout: Duration::from_millis(50),
            blocking: slow,
        };
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        for _ in 0..2 {
            let hold = shares.try_hold(&acme).unwrap();
            let err = resolver.lookup("slow.example", hold).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        }
        // The requests gave up; their lookups still run, and still count.
        assert_eq!(shares.running(&acme), 2);
        assert!(shares.try_hold(&acme).is_none());
        // globex's places are its own.
        let hold = shares.try_hold(&globex).unwrap();
        assert_eq!(shares.running(&globex), 1);
        drop(hold);
        // Once the system calls return, acme's places come back.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(shares.running(&acme), 0);
        assert!(shares.try_hold(&acme).is_some());
    }

    #[tokio::test]
    async fn lookups_past_the_timeout_fail_as_timed_out() {
        let never = std::future::pending::<io::Result<()>>();
        let kind = within(Duration::from_millis(10), never)
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(kind, Some(io::ErrorKind::TimedOut));
        let quick = within(Duration::from_secs(5), async { Ok(7) }).await.ok();
        assert_eq!(quick, Some(7));
    }

    #[tokio::test]
    async fn system_resolver_reads_numeric_spellings() {
        let r = SystemResolver::new(Duration::from_secs(5));
        for name in ["2130706433", "0x7f000001", "127.1"] {
            assert_eq!(
                r.lookup(name, LookupHold::uncounted()).await.ok(),
                Some(vec![ip("127.0.0.1")]),
                "{name}"
            );
        }
    }
}
