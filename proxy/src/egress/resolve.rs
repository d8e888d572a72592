//! Name resolution behind one trait, so the [`Dialer`](super::Dialer) decides on exactly the
//! addresses it was given, and tests can inject canned (or hostile) answers.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::shares::ShareHold;

/// Where a [`Dialer`](super::Dialer) gets the addresses of a name.
///
/// Implementations return every address they know; the dialer refuses the whole name if any one
/// of them is not allowed, so a resolver never needs to filter.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// All addresses for `host` (never called for IP literals the caller already parsed).
    /// `hold`, the caller's place in its tenant's lookups, is kept until the lookup itself
    /// ends, which for a system lookup can be after the caller stopped waiting (see
    /// [`Dialer`](super::Dialer)).
    async fn lookup(&self, host: &str, hold: ShareHold) -> io::Result<Vec<IpAddr>>;
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
    async fn lookup(&self, host: &str, hold: ShareHold) -> io::Result<Vec<IpAddr>> {
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
    async fn lookup(&self, host: &str, hold: ShareHold) -> io::Result<Vec<IpAddr>> {
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
            r.lookup("vault.internal", ShareHold::uncounted())
                .await
                .ok(),
            Some(vec![ip("10.0.0.5"), ip("::1")])
        );
        assert_eq!(
            r.lookup("other.example", ShareHold::uncounted()).await.ok(),
            Some(vec![ip("1.1.1.1")])
        );
        let missing = r
            .lookup("nowhere.example", ShareHold::uncounted())
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
        let shares = crate::shares::TenantShares::new(2);
        let resolver = SystemResolver {
            timeout: Duration::from_millis(50),
            blocking: slow,
        };
        let acme = crate::ids::TenantId::new("acme").unwrap();
        let globex = crate::ids::TenantId::new("globex").unwrap();
        for _ in 0..2 {
            let hold = shares.try_hold(&acme, 1).unwrap();
            let err = resolver.lookup("slow.example", hold).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        }
        // The requests gave up; their lookups still run, and still count.
        assert_eq!(shares.held(&acme), 2);
        assert!(shares.try_hold(&acme, 1).is_none());
        // globex's places are its own.
        let hold = shares.try_hold(&globex, 1).unwrap();
        assert_eq!(shares.held(&globex), 1);
        drop(hold);
        // Once the system calls return, acme's places come back.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(shares.held(&acme), 0);
        assert!(shares.try_hold(&acme, 1).is_some());
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
                r.lookup(name, ShareHold::uncounted()).await.ok(),
                Some(vec![ip("127.0.0.1")]),
                "{name}"
            );
        }
    }
}
