//! Where the proxy may connect: SSRF-safe resolution of upstream names.
//!
//! An agent names any host it likes, so a name can point at the proxy's own network: the cloud
//! metadata service, a database on 10.0.0.0/8, the admin listener on loopback. The [`Dialer`]
//! resolves the name itself, refuses it unless every address is global unicast (or covered by
//! an explicit [`EgressException`]), and returns the one address it checked. The caller dials
//! that address and never looks the name up again, so DNS rebinding (a public answer for the
//! check, a private one for the connect) has no second lookup to switch.
//!
//! The decision is always made on the resolved address, never on how the host was spelled:
//! `2130706433`, `0x7f000001` and `127.1` are all 127.0.0.1 by the time they are checked.

mod answers;
mod exception;
mod ranges;
mod resolve;
pub mod services;
pub mod settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::ids::TenantId;
use crate::shares::TenantShares;
use answers::Answers;

pub use exception::EgressException;
pub use ranges::non_global_reason;
pub use resolve::{Resolver, StaticResolver, SystemResolver};
pub use settings::{EgressSettings, UpstreamSettings};

/// What the [`Dialer`] allows beyond global unicast, and what it never allows.
#[derive(Debug, Clone, Default)]
pub struct EgressRules {
    /// Exceptions for every tenant.
    pub exceptions: Vec<EgressException>,
    /// The proxy's own listen addresses (proxy and admin): dialing one is a loop, refused even
    /// when an exception covers it.
    pub own_listeners: Vec<SocketAddr>,
    /// The services the proxy itself uses (the Redis servers it keeps its state in, the trace
    /// collector), refused like its own listeners; kept current while it runs (see
    /// [`services`]).
    pub services: services::Guarded,
}

/// Why a destination was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EgressRefusal {
    /// The name did not resolve, or not in time. The message names the host, never the
    /// resolver's error.
    #[error("the upstream host `{host}` could not be resolved")]
    Unresolvable {
        /// The host as the request named it.
        host: String,
    },
    /// An answer is not global unicast and no exception covers it.
    #[error("the upstream address {address} is not allowed: {reason}")]
    Forbidden {
        /// The first refused answer.
        address: IpAddr,
        /// From [`non_global_reason`].
        reason: &'static str,
    },
    /// A captured connection's name (its `Host` or SNI) does not resolve to the address its
    /// client dialed: the name would put a different destination before policy than the one
    /// the connection goes to.
    #[error("`{host}` does not resolve to the captured connection's original destination")]
    NotOriginal {
        /// The name as the connection gave it.
        host: String,
    },
    /// The destination is one of the proxy's own listeners (a loop), or a service it uses: the
    /// Redis it keeps its state in, its trace collector.
    #[error("the upstream {address} is this proxy's own listener or a service it uses")]
    OwnListener {
        /// The refused destination.
        address: SocketAddr,
    },
    /// The tenant already has this many name lookups running (see [`Dialer`]).
    #[error("the tenant already has {max} name lookups running")]
    LookupsBusy {
        /// The tenant's share.
        max: u64,
    },
}

/// A host's addresses: an IP literal's own (held inline), or a name's answer.
enum Addresses {
    Literal([IpAddr; 1]),
    Named(Arc<[IpAddr]>),
}

impl std::ops::Deref for Addresses {
    type Target = [IpAddr];

    fn deref(&self) -> &[IpAddr] {
        match self {
            Addresses::Literal(one) => one,
            Addresses::Named(answer) => answer,
        }
    }
}

/// Why [`Dialer::lookup`] has no answers.
enum LookupFailed {
    /// The tenant has no lookup place free.
    Busy,
    /// The resolver failed (its error is logged, never shown).
    Resolver(std::io::Error),
}

/// Resolves upstream names and decides whether their addresses may be dialed.
#[derive(Debug, Clone)]
pub struct Dialer {
    resolver: Arc<dyn Resolver>,
    rules: EgressRules,
    /// How many name lookups each tenant may have running at once.
    ///
    /// SECURITY: a system lookup (`getaddrinfo`) runs on a thread of the runtime's blocking
    /// pool and cannot be cancelled: a request that gives up at `dns_timeout` leaves its thread
    /// busy until the system resolver does (up to tens of seconds for a name whose servers do
    /// not answer). A tenant whose policy lets it name hosts it controls could keep every
    /// thread of the pool busy that way, and every tenant's lookups would wait behind them.
    /// Each lookup therefore holds one of its tenant's places until the system call returns,
    /// not until the request stops waiting, and a tenant with none free is refused at once.
    lookups: Arc<TenantShares>,
    /// Each tenant's answers, kept for `[egress] dns_cache_ttl` (none when it is zero).
    answers: Option<Arc<Answers>>,
}

impl Dialer {
    /// A dialer that looks names up with `resolver` and applies `rules`; each tenant may have
    /// `lookups_per_tenant` lookups running at once, and its answers are kept for `answers_ttl`.
    pub fn new(
        resolver: Arc<dyn Resolver>,
        rules: EgressRules,
        lookups_per_tenant: u32,
        answers_ttl: Duration,
    ) -> Self {
        Self {
            resolver,
            rules,
            lookups: Arc::new(TenantShares::new(u64::from(lookups_per_tenant))),
            answers: Answers::new(answers_ttl).map(Arc::new),
        }
    }

    fn busy(&self) -> EgressRefusal {
        EgressRefusal::LookupsBusy {
            max: self.lookups.max(),
        }
    }

    /// `host`'s addresses for `tenant`: an IP literal is its own (no lookup, no place), a name
    /// is looked up.
    async fn addresses(&self, tenant: &TenantId, host: &str) -> Result<Addresses, LookupFailed> {
        match host.parse::<IpAddr>() {
            Ok(ip) => Ok(Addresses::Literal([ip])),
            Err(_) => self.lookup(tenant, host).await.map(Addresses::Named),
        }
    }

    /// `tenant`'s answer for `host`: the one kept, or a lookup in one of its lookup places.
    async fn lookup(&self, tenant: &TenantId, host: &str) -> Result<Arc<[IpAddr]>, LookupFailed> {
        let now = std::time::Instant::now();
        if let Some(kept) = self.answers.as_ref().and_then(|a| a.get(tenant, host, now)) {
            return Ok(kept);
        }
        let hold = self.lookups.try_hold(tenant, 1).ok_or(LookupFailed::Busy)?;
        let addrs: Arc<[IpAddr]> = self
            .resolver
            .lookup(host, hold)
            .await
            .map_err(LookupFailed::Resolver)?
            .into();
        if let Some(answers) = &self.answers {
            answers.keep(tenant, host, &addrs, now);
        }
        Ok(addrs)
    }

    /// Resolves `host` (lowercase, IPv6 without brackets; an IP literal is parsed, not looked
    /// up) once, checks every answer, and returns the first as the address to dial with `port`.
    ///
    /// Every answer must pass, not just the first: a resolver that answers a public and a
    /// private address lets the connector pick, so the first refused answer refuses the name.
    /// `tenant_exceptions` are the calling tenant's own, added to the global ones.
    pub async fn resolve_checked(
        &self,
        host: &str,
        port: u16,
        tenant_exceptions: &[EgressException],
        tenant: &TenantId,
    ) -> Result<SocketAddr, EgressRefusal> {
        let unresolvable = || EgressRefusal::Unresolvable {
            host: host.to_string(),
        };
        let answers = self.addresses(tenant, host).await.map_err(|e| match e {
            LookupFailed::Busy => self.busy(),
            LookupFailed::Resolver(e) => {
                tracing::debug!(host, error = %e, "upstream name lookup failed");
                unresolvable()
            }
        })?;
        let first = *answers.first().ok_or_else(unresolvable)?;
        for &ip in answers.iter() {
            self.check_address(host, SocketAddr::new(ip, port), tenant_exceptions)?;
        }
        Ok(SocketAddr::new(first, port))
    }

    /// Whether `address`, an answer for `host`, may be dialed: not one of the proxy's own
    /// listeners, and a global address or one an exception (the deployment's, or the tenant's
    /// `tenant_exceptions`) covers. Also asked again of the address a relay still open dialed
    /// (an opaque tunnel, a WebSocket) after a reload, with the exceptions then.
    pub fn check_address(
        &self,
        host: &str,
        address: SocketAddr,
        tenant_exceptions: &[EgressException],
    ) -> Result<(), EgressRefusal> {
        if self.is_own_listener(address) {
            return Err(EgressRefusal::OwnListener { address });
        }
        let ip = address.ip();
        if let Some(reason) = non_global_reason(ip) {
            let covered = self
                .rules
                .exceptions
                .iter()
                .chain(tenant_exceptions)
                .any(|e| e.allows(host, address.port(), ip));
            if !covered {
                return Err(EgressRefusal::Forbidden {
                    address: ip,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// For a captured connection: `host` (its `Host` or SNI) must resolve to `original`, the
    /// address the client dialed, which is then checked like any answer and is the one
    /// address that may be dialed. Other answers are not dialed, so they are not checked.
    pub async fn resolve_original(
        &self,
        host: &str,
        original: SocketAddr,
        tenant_exceptions: &[EgressException],
        tenant: &TenantId,
    ) -> Result<SocketAddr, EgressRefusal> {
        let answers = self.addresses(tenant, host).await.map_err(|e| match e {
            LookupFailed::Busy => self.busy(),
            LookupFailed::Resolver(e) => {
                tracing::debug!(host, error = %e, "captured name lookup failed");
                EgressRefusal::NotOriginal {
                    host: host.to_string(),
                }
            }
        })?;
        let ip = original.ip().to_canonical();
        // SECURITY: the name is what policy decided on; it must be where the bytes go.
        if !answers.iter().any(|a| a.to_canonical() == ip) {
            return Err(EgressRefusal::NotOriginal {
                host: host.to_string(),
            });
        }
        let original = SocketAddr::new(ip, original.port());
        self.check_address(host, original, tenant_exceptions)?;
        Ok(original)
    }

    /// Whether dialing `dest` would reach one of the proxy's own listeners: the same address,
    /// or a listener on every interface (0.0.0.0, ::) and, on its port, a loopback or
    /// unspecified destination or any other address of this host. IPv4-mapped forms compare
    /// as the IPv4 address they carry.
    ///
    /// SECURITY: a listener on every interface answers on the host's own addresses too (a
    /// pod's IP, a VM's public address). Reached through them, the admin port would serve a
    /// tenant another tenant's usage and runs, and another tenant's binding listener would lend
    /// its identity. Which addresses are the host's is asked of the kernel when the port
    /// matches (they change: DHCP, a pod's IP), not remembered from the start.
    ///
    /// A service's address is where it is reached, not what it is bound to: a Redis on this
    /// host named by 127.0.0.1 may listen on every interface, so one on this host is refused on
    /// its port at any address of this host.
    fn is_own_listener(&self, dest: SocketAddr) -> bool {
        let ip = dialed(dest.ip());
        let mut on_every_interface = false;
        for listener in self
            .rules
            .own_listeners
            .iter()
            .filter(|l| l.port() == dest.port())
        {
            let lip = listener.ip().to_canonical();
            if lip == ip || (lip.is_unspecified() && ip.is_loopback()) {
                return true;
            }
            on_every_interface |= lip.is_unspecified();
        }
        let services = self.rules.services.load();
        for service in services.iter().filter(|s| s.port() == dest.port()) {
            let sip = dialed(service.ip());
            if sip == ip {
                return true;
            }
            on_every_interface |= is_this_hosts_address(sip);
        }
        on_every_interface && is_this_hosts_address(ip)
    }
}

/// The address a connection to `ip` reaches: IPv4-mapped forms are the IPv4 address they carry,
/// and an unspecified address (`0.0.0.0`, `::`) is this host's loopback, where the kernel sends
/// a connection to it. (A listener on 127.0.0.1 answers a dial of 0.0.0.0.)
pub fn dialed(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind to it. (With
/// `ip_nonlocal_bind` set it lets any address be bound; every destination on a listener's port
/// is then refused, which fails closed.)
fn is_this_hosts_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shares::ShareHold;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn exc(s: &str) -> EgressException {
        s.parse().expect("exception")
    }

    /// A resolver whose every lookup keeps its hold until `release` is notified.
    #[derive(Debug, Default)]
    struct Stuck {
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl Resolver for Stuck {
        async fn lookup(&self, _host: &str, _hold: ShareHold) -> std::io::Result<Vec<IpAddr>> {
            self.release.notified().await;
            Ok(vec![ip("93.184.216.34")])
        }
    }

    #[tokio::test]
    async fn a_tenant_with_every_lookup_place_taken_is_refused_and_others_are_not() {
        let stuck = Arc::new(Stuck::default());
        let d = Arc::new(Dialer::new(
            stuck.clone(),
            EgressRules::default(),
            2,
            Duration::ZERO,
        ));
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let pending: Vec<_> = (0..2)
            .map(|i| {
                let (d, acme) = (d.clone(), acme.clone());
                tokio::spawn(async move {
                    d.resolve_checked(&format!("h{i}.example"), 443, &[], &acme)
                        .await
                })
            })
            .collect();
        while d.lookups.held(&acme) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            d.resolve_checked("h2.example", 443, &[], &acme).await,
            Err(EgressRefusal::LookupsBusy { max: 2 })
        );
        // An IP literal needs no lookup.
        assert!(d
            .resolve_checked("93.184.216.34", 443, &[], &acme)
            .await
            .is_ok());
        // globex's places are its own.
        let g = {
            let (d, globex) = (d.clone(), globex.clone());
            tokio::spawn(async move { d.resolve_checked("g.example", 443, &[], &globex).await })
        };
        while d.lookups.held(&globex) < 1 {
            tokio::task::yield_now().await;
        }
        stuck.release.notify_waiters();
        assert!(g.await.unwrap().is_ok());
        for p in pending {
            assert!(p.await.unwrap().is_ok());
        }
        assert_eq!(d.lookups.held(&acme), 0);
        assert!(d
            .resolve_checked("93.184.216.34", 443, &[], &acme)
            .await
            .is_ok());
    }

    /// Answers the n-th call with the n-th list (the last list from then on) and counts calls.
    #[derive(Debug)]
    struct Canned {
        answers: Vec<Vec<IpAddr>>,
        calls: AtomicUsize,
    }

    impl Canned {
        fn new(answers: &[&[&str]]) -> Arc<Self> {
            Arc::new(Self {
                answers: answers
                    .iter()
                    .map(|a| a.iter().map(|s| ip(s)).collect())
                    .collect(),
                calls: AtomicUsize::new(0),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Resolver for Canned {
        async fn lookup(&self, _host: &str, _hold: ShareHold) -> std::io::Result<Vec<IpAddr>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.answers[n.min(self.answers.len() - 1)].clone())
        }
    }

    /// A dialer that keeps no answers: each call looks its name up.
    fn dialer(resolver: Arc<dyn Resolver>, exceptions: &[&str], own_listeners: &[&str]) -> Dialer {
        Dialer::new(
            resolver,
            EgressRules {
                exceptions: exceptions.iter().map(|s| exc(s)).collect(),
                own_listeners: own_listeners.iter().map(|s| sa(s)).collect(),
                services: Default::default(),
            },
            8,
            Duration::ZERO,
        )
    }

    /// The tenant the lookups are made for.
    fn t() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[tokio::test]
    async fn a_captured_name_must_resolve_to_the_original_destination_which_is_checked() {
        let d = dialer(
            Canned::new(&[&["93.184.216.34", "8.8.4.4"]]),
            &[],
            &["0.0.0.0:15001"],
        );
        let got = d
            .resolve_original("api.example.com", sa("8.8.4.4:443"), &[], &t())
            .await;
        assert_eq!(
            got,
            Ok(sa("8.8.4.4:443")),
            "any answer may be the one dialed"
        );
        let spoofed = d
            .resolve_original("api.example.com", sa("192.0.2.9:443"), &[], &t())
            .await;
        assert!(
            matches!(spoofed, Err(EgressRefusal::NotOriginal { .. })),
            "{spoofed:?}"
        );
        // An IP literal is its own answer; IPv4-mapped forms compare as IPv4.
        let literal = d
            .resolve_original("93.184.216.34", sa("[::ffff:93.184.216.34]:80"), &[], &t())
            .await;
        assert_eq!(literal, Ok(sa("93.184.216.34:80")));
        // The original address is checked by the guard like any answer.
        let private = dialer(Canned::new(&[&["10.0.0.5"]]), &[], &[]);
        let refused = private
            .resolve_original("db.internal", sa("10.0.0.5:5432"), &[], &t())
            .await;
        assert!(
            matches!(refused, Err(EgressRefusal::Forbidden { .. })),
            "{refused:?}"
        );
        let excepted = private
            .resolve_original(
                "db.internal",
                sa("10.0.0.5:5432"),
                &[exc("10.0.0.0/8")],
                &t(),
            )
            .await;
        assert_eq!(excepted, Ok(sa("10.0.0.5:5432")));
        let looped = d
            .resolve_original(
                "127.0.0.1",
                sa("127.0.0.1:15001"),
                &[exc("127.0.0.0/8")],
                &t(),
            )
            .await;
        assert!(
            matches!(looped, Err(EgressRefusal::OwnListener { .. })),
            "{looped:?}"
        );
    }

    #[tokio::test]
    async fn every_refused_range_is_refused_with_its_reason() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.255", "shared address space (CGNAT)"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:8.8.8.8", "IPv4-mapped IPv6"),
            ("::ffff:127.0.0.1", "IPv4-mapped IPv6"),
            ("::8.8.8.8", "IPv4-compatible IPv6"),
            ("64:ff9b::808:808", "NAT64"),
            ("64:ff9b:1::1", "NAT64"),
            ("100::1", "discard"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:20::1", "ORCHID"),
            ("2001:db8::1", "documentation"),
            ("2002:7f00:1::1", "6to4"),
            ("3fff::1", "documentation"),
            ("4000::1", "outside global unicast (2000::/3)"),
            ("::ffff:0:7f00:1", "outside global unicast (2000::/3)"),
        ];
        for (addr, reason) in cases {
            let want = Err(EgressRefusal::Forbidden {
                address: ip(addr),
                reason,
            });
            assert_eq!(non_global_reason(ip(addr)), Some(reason), "{addr}");
            // As an answer for a name, and as a literal host.
            let d = dialer(Canned::new(&[&[addr]]), &[], &[]);
            assert_eq!(
                d.resolve_checked("upstream.example", 443, &[], &t()).await,
                want,
                "{addr} by name"
            );
            assert_eq!(
                d.resolve_checked(addr, 443, &[], &t()).await,
                want,
                "{addr} literal"
            );
        }
    }

    #[tokio::test]
    async fn global_addresses_pass_and_are_returned_with_the_port() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "172.32.0.1",
        ] {
            assert_eq!(non_global_reason(ip(addr)), None, "{addr}");
            let d = dialer(Canned::new(&[&[addr]]), &[], &[]);
            let got = d.resolve_checked("upstream.example", 8443, &[], &t()).await;
            assert_eq!(got, Ok(SocketAddr::new(ip(addr), 8443)), "{addr}");
        }
    }

    #[tokio::test]
    async fn ip_literals_are_parsed_not_looked_up() {
        let r = Canned::new(&[&["8.8.8.8"]]);
        let d = dialer(r.clone(), &[], &[]);
        assert_eq!(
            d.resolve_checked("1.1.1.1", 80, &[], &t()).await,
            Ok(sa("1.1.1.1:80"))
        );
        assert_eq!(
            d.resolve_checked("2606:4700:4700::1111", 80, &[], &t())
                .await,
            Ok(sa("[2606:4700:4700::1111]:80"))
        );
        assert!(d.resolve_checked("10.0.0.1", 80, &[], &t()).await.is_err());
        assert_eq!(r.calls(), 0);
    }

    #[tokio::test]
    async fn legacy_spellings_resolve_to_loopback_and_are_refused() {
        let d = dialer(
            Arc::new(SystemResolver::new(Duration::from_secs(5))),
            &[],
            &[],
        );
        let loopback = |a: &str| {
            Err(EgressRefusal::Forbidden {
                address: ip(a),
                reason: "loopback",
            })
        };
        for host in [
            "2130706433",
            "0x7f000001",
            "127.1",
            "0177.0.0.1",
            "127.0.0.1",
        ] {
            assert_eq!(
                d.resolve_checked(host, 80, &[], &t()).await,
                loopback("127.0.0.1"),
                "{host}"
            );
        }
        let mapped = Err(EgressRefusal::Forbidden {
            address: ip("::ffff:127.0.0.1"),
            reason: "IPv4-mapped IPv6",
        });
        assert_eq!(
            d.resolve_checked("::ffff:127.0.0.1", 80, &[], &t()).await,
            mapped
        );
        // `localhost` may answer 127.0.0.1, ::1 or both; whichever comes first is loopback.
        match d.resolve_checked("localhost", 80, &[], &t()).await {
            Err(EgressRefusal::Forbidden {
                reason: "loopback", ..
            }) => {}
            other => panic!("localhost: {other:?}"),
        }
    }

    #[tokio::test]
    async fn one_refused_answer_refuses_the_name() {
        let d = dialer(
            Canned::new(&[&["8.8.8.8", "10.0.0.1", "192.168.0.1"]]),
            &[],
            &[],
        );
        let got = d.resolve_checked("mixed.example", 443, &[], &t()).await;
        assert_eq!(
            got,
            Err(EgressRefusal::Forbidden {
                address: ip("10.0.0.1"),
                reason: "private (RFC 1918)"
            })
        );
    }

    #[tokio::test]
    async fn each_call_resolves_once_and_is_checked_afresh() {
        let r = Canned::new(&[&["8.8.8.8"], &["127.0.0.1"]]);
        let d = dialer(r.clone(), &[], &[]);
        assert_eq!(
            d.resolve_checked("rebind.example", 80, &[], &t()).await,
            Ok(sa("8.8.8.8:80"))
        );
        assert_eq!(r.calls(), 1);
        let second = d.resolve_checked("rebind.example", 80, &[], &t()).await;
        assert_eq!(
            second,
            Err(EgressRefusal::Forbidden {
                address: ip("127.0.0.1"),
                reason: "loopback"
            })
        );
        assert_eq!(r.calls(), 2);
    }

    /// With `dns_cache_ttl`, a tenant's answer is kept, and checked on every call as if it had
    /// just been looked up; another tenant looks the name up itself; a failure is not kept.
    #[tokio::test]
    async fn kept_answers_are_the_tenants_own_and_checked_every_time() {
        let r = Canned::new(&[&["8.8.8.8"], &["127.0.0.1"]]);
        let d = Dialer::new(
            r.clone(),
            EgressRules::default(),
            8,
            Duration::from_secs(3600),
        );
        let globex = TenantId::new("globex").unwrap();
        assert_eq!(
            d.resolve_checked("api.example", 443, &[], &t()).await,
            Ok(sa("8.8.8.8:443"))
        );
        assert_eq!(
            d.resolve_checked("api.example", 80, &[], &t()).await,
            Ok(sa("8.8.8.8:80"))
        );
        assert_eq!(
            r.calls(),
            1,
            "the second call is answered from the kept answer"
        );
        let loopback = Err(EgressRefusal::Forbidden {
            address: ip("127.0.0.1"),
            reason: "loopback",
        });
        assert_eq!(
            d.resolve_checked("api.example", 443, &[], &globex).await,
            loopback,
            "globex looks the name up itself"
        );
        assert_eq!(r.calls(), 2);
        // The kept answer is checked each time: an exception lets it through, none refuses it.
        assert_eq!(
            d.resolve_checked("api.example", 443, &[exc("127.0.0.0/8")], &globex)
                .await,
            Ok(sa("127.0.0.1:443"))
        );
        assert_eq!(
            d.resolve_checked("api.example", 443, &[], &globex).await,
            loopback
        );
        assert_eq!(r.calls(), 2);

        let late = Canned::new(&[&[], &["8.8.4.4"]]);
        let d = Dialer::new(
            late.clone(),
            EgressRules::default(),
            8,
            Duration::from_secs(3600),
        );
        assert!(matches!(
            d.resolve_checked("late.example", 443, &[], &t()).await,
            Err(EgressRefusal::Unresolvable { .. })
        ));
        assert_eq!(
            d.resolve_checked("late.example", 443, &[], &t()).await,
            Ok(sa("8.8.4.4:443"))
        );
        assert_eq!(late.calls(), 2);
    }

    #[tokio::test]
    async fn unresolvable_names_say_so_without_internals() {
        let unresolvable = Err(EgressRefusal::Unresolvable {
            host: "gone.example".into(),
        });
        let empty = dialer(Canned::new(&[&[]]), &[], &[]);
        assert_eq!(
            empty.resolve_checked("gone.example", 80, &[], &t()).await,
            unresolvable
        );
        let nx = dialer(
            Arc::new(StaticResolver::new(Default::default(), None)),
            &[],
            &[],
        );
        let got = nx.resolve_checked("gone.example", 80, &[], &t()).await;
        assert_eq!(got, unresolvable);
        let msg = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            msg,
            "the upstream host `gone.example` could not be resolved"
        );
    }

    #[tokio::test]
    async fn cidr_exceptions_cover_their_addresses_on_any_port() {
        let d = dialer(Canned::new(&[&["10.1.2.3"]]), &["10.0.0.0/8", "::1"], &[]);
        assert_eq!(
            d.resolve_checked("db.internal", 5432, &[], &t()).await,
            Ok(sa("10.1.2.3:5432"))
        );
        assert_eq!(
            d.resolve_checked("db.internal", 6379, &[], &t()).await,
            Ok(sa("10.1.2.3:6379"))
        );
        assert_eq!(
            d.resolve_checked("::1", 9000, &[], &t()).await,
            Ok(sa("[::1]:9000"))
        );
        assert!(d
            .resolve_checked("192.168.0.1", 80, &[], &t())
            .await
            .is_err());
        // 127.0.0.1/32 does not cover its IPv4-mapped form.
        let v4_only = dialer(Canned::new(&[&[]]), &["127.0.0.1"], &[]);
        assert!(v4_only
            .resolve_checked("::ffff:127.0.0.1", 80, &[], &t())
            .await
            .is_err());
        // A mixed answer passes only if the exception covers every refused answer.
        let mixed = dialer(
            Canned::new(&[&["10.0.0.1", "192.168.0.1"]]),
            &["10.0.0.0/8"],
            &[],
        );
        let got = mixed.resolve_checked("mixed.example", 80, &[], &t()).await;
        assert_eq!(
            got,
            Err(EgressRefusal::Forbidden {
                address: ip("192.168.0.1"),
                reason: "private (RFC 1918)"
            })
        );
    }

    #[tokio::test]
    async fn host_port_exceptions_cover_only_that_name_and_port() {
        let r = Canned::new(&[&["10.0.0.5"]]);
        let d = dialer(
            r,
            &["vault.internal:8200", "127.0.0.1:9000", "[::1]:9001"],
            &[],
        );
        assert_eq!(
            d.resolve_checked("vault.internal", 8200, &[], &t()).await,
            Ok(sa("10.0.0.5:8200"))
        );
        assert!(d
            .resolve_checked("vault.internal", 8201, &[], &t())
            .await
            .is_err());
        // Another name resolving to the same address is not covered.
        assert!(d
            .resolve_checked("other.internal", 8200, &[], &t())
            .await
            .is_err());
        assert!(d
            .resolve_checked("10.0.0.5", 8200, &[], &t())
            .await
            .is_err());
        assert_eq!(
            d.resolve_checked("127.0.0.1", 9000, &[], &t()).await,
            Ok(sa("127.0.0.1:9000"))
        );
        assert!(d
            .resolve_checked("127.0.0.1", 9001, &[], &t())
            .await
            .is_err());
        assert_eq!(
            d.resolve_checked("0:0::1", 9001, &[], &t()).await,
            Ok(sa("[::1]:9001"))
        );
        // A legacy spelling of an excepted IP is a different host name.
        let sys = dialer(
            Arc::new(SystemResolver::new(Duration::from_secs(5))),
            &["127.0.0.1:9000"],
            &[],
        );
        assert!(sys
            .resolve_checked("2130706433", 9000, &[], &t())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn tenant_exceptions_add_to_the_global_ones() {
        let d = dialer(
            Canned::new(&[&["10.0.0.1"], &["192.168.0.1"]]),
            &["10.0.0.0/8"],
            &[],
        );
        let tenant = [exc("192.168.0.0/16")];
        assert_eq!(
            d.resolve_checked("a.internal", 80, &tenant, &t()).await,
            Ok(sa("10.0.0.1:80"))
        );
        assert_eq!(
            d.resolve_checked("b.internal", 80, &tenant, &t()).await,
            Ok(sa("192.168.0.1:80"))
        );
        assert!(d
            .resolve_checked("b.internal", 80, &[], &t())
            .await
            .is_err());
        assert!(d
            .resolve_checked("172.16.0.1", 80, &tenant, &t())
            .await
            .is_err());
    }

    /// An address of this host other than loopback: the source the kernel would pick toward a
    /// public address (a connected UDP socket sends nothing), if it has a route.
    fn non_loopback_address_of_this_host() -> Option<IpAddr> {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        probe.connect("93.184.216.34:9").ok()?;
        let ip = probe.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    }

    /// A Redis node learnt after the dialer was made (a cluster's node, a moved server) is
    /// refused from then on, on its address only.
    #[tokio::test]
    async fn redis_addresses_learnt_while_running_are_refused_even_when_excepted() {
        let everything = ["0.0.0.0/0", "::/0"];
        let d = dialer(Canned::new(&[&["10.0.0.7"]]), &everything, &[]);
        let acme = t();
        let node = || d.resolve_checked("redis-4.internal", 6379, &[], &acme);
        assert_eq!(node().await, Ok(sa("10.0.0.7:6379")));
        d.rules
            .services
            .store(Arc::new(vec![sa("10.0.0.7:6379"), sa("10.0.0.7:16379")]));
        let loop_ = |a: &str| Err(EgressRefusal::OwnListener { address: sa(a) });
        assert_eq!(node().await, loop_("10.0.0.7:6379"));
        assert_eq!(
            d.resolve_checked("10.0.0.7", 16379, &[], &t()).await,
            loop_("10.0.0.7:16379")
        );
        assert_eq!(
            d.resolve_checked("10.0.0.7", 6380, &[], &t()).await,
            Ok(sa("10.0.0.7:6380"))
        );
    }

    /// A Redis on this host, named by its loopback address, may listen on every interface: its
    /// port is refused at every address of this host, and only there.
    #[tokio::test]
    async fn a_service_on_this_host_is_refused_at_every_address_of_this_host() {
        let everything = ["0.0.0.0/0", "::/0"];
        let d = dialer(Canned::new(&[&["10.0.0.7"]]), &everything, &[]);
        d.rules.services.store(Arc::new(vec![sa("127.0.0.1:6379")]));
        let loop_ = |a: &str| Err(EgressRefusal::OwnListener { address: sa(a) });
        for other in ["127.0.0.1", "127.0.0.2", "0.0.0.0"] {
            assert_eq!(
                d.resolve_checked(other, 6379, &[], &t()).await,
                loop_(&format!("{other}:6379"))
            );
        }
        if let Some(here) = non_loopback_address_of_this_host() {
            let at = SocketAddr::new(here, 6379);
            assert_eq!(
                d.resolve_checked(&here.to_string(), 6379, &[], &t()).await,
                Err(EgressRefusal::OwnListener { address: at })
            );
        }
        // Another host, and another port of this one, are not the service.
        assert_eq!(
            d.resolve_checked("10.0.0.7", 6379, &[], &t()).await,
            Ok(sa("10.0.0.7:6379"))
        );
        assert_eq!(
            d.resolve_checked("127.0.0.1", 6380, &[], &t()).await,
            Ok(sa("127.0.0.1:6380"))
        );
        // A remote service is refused on its own address only.
        d.rules.services.store(Arc::new(vec![sa("10.0.0.7:6379")]));
        assert_eq!(
            d.resolve_checked("127.0.0.1", 6379, &[], &t()).await,
            Ok(sa("127.0.0.1:6379"))
        );
    }

    #[tokio::test]
    async fn own_listeners_are_refused_even_when_excepted() {
        let everything = ["0.0.0.0/0", "::/0"];
        let exact = dialer(
            Canned::new(&[&["10.0.0.9"]]),
            &everything,
            &["10.0.0.9:8080", "127.0.0.1:9090"],
        );
        let loop_ = |a: &str| Err(EgressRefusal::OwnListener { address: sa(a) });
        assert_eq!(
            exact.resolve_checked("me.internal", 8080, &[], &t()).await,
            loop_("10.0.0.9:8080")
        );
        assert_eq!(
            exact.resolve_checked("127.0.0.1", 9090, &[], &t()).await,
            loop_("127.0.0.1:9090")
        );
        assert_eq!(
            exact
                .resolve_checked("::ffff:127.0.0.1", 9090, &[], &t())
                .await,
            loop_("[::ffff:127.0.0.1]:9090")
        );
        assert_eq!(
            exact.resolve_checked("me.internal", 8081, &[], &t()).await,
            Ok(sa("10.0.0.9:8081"))
        );
        // A dial of 0.0.0.0 (or ::) reaches this host's loopback, so a listener on 127.0.0.1.
        assert_eq!(
            exact.resolve_checked("0.0.0.0", 9090, &[], &t()).await,
            loop_("0.0.0.0:9090")
        );
        assert_eq!(
            exact
                .resolve_checked("::ffff:0.0.0.0", 9090, &[], &t())
                .await,
            loop_("[::ffff:0.0.0.0]:9090")
        );
        assert_eq!(
            exact.resolve_checked("127.0.0.2", 9090, &[], &t()).await,
            Ok(sa("127.0.0.2:9090"))
        );

        let any = dialer(
            Canned::new(&[&["127.0.0.1"]]),
            &everything,
            &["0.0.0.0:8080", "[::]:9090"],
        );
        assert_eq!(
            any.resolve_checked("localhost", 8080, &[], &t()).await,
            loop_("127.0.0.1:8080")
        );
        assert_eq!(
            any.resolve_checked("127.3.2.1", 8080, &[], &t()).await,
            loop_("127.3.2.1:8080")
        );
        assert_eq!(
            any.resolve_checked("0.0.0.0", 8080, &[], &t()).await,
            loop_("0.0.0.0:8080")
        );
        assert_eq!(
            any.resolve_checked("::1", 9090, &[], &t()).await,
            loop_("[::1]:9090")
        );
        assert_eq!(
            any.resolve_checked("localhost", 8081, &[], &t()).await,
            Ok(sa("127.0.0.1:8081"))
        );
        // The host's other addresses reach a listener on every interface too.
        match non_loopback_address_of_this_host() {
            Some(own) => {
                let host = own.to_string();
                let address = SocketAddr::new(own, 8080);
                assert_eq!(
                    any.resolve_checked(&host, 8080, &[], &t()).await,
                    Err(EgressRefusal::OwnListener { address }),
                    "{own}"
                );
                assert_eq!(
                    any.resolve_checked(&host, 8081, &[], &t()).await,
                    Ok(SocketAddr::new(own, 8081))
                );
            }
            None => eprintln!("no non-loopback address here: the host-address case is not run"),
        }
        // An address that is not this host's is not a loop on that port.
        assert_eq!(
            any.resolve_checked("93.184.216.34", 8080, &[], &t()).await,
            Ok(sa("93.184.216.34:8080"))
        );
        // A host-port exception for the listener itself does not help either.
        let named = dialer(
            Canned::new(&[&["127.0.0.1"]]),
            &["localhost:8080"],
            &["0.0.0.0:8080"],
        );
        assert_eq!(
            named.resolve_checked("localhost", 8080, &[], &t()).await,
            loop_("127.0.0.1:8080")
        );
        // Any answer that loops refuses the name, not just the first.
        let second = dialer(
            Canned::new(&[&["10.0.0.1", "127.0.0.1"]]),
            &everything,
            &["0.0.0.0:8080"],
        );
        assert_eq!(
            second
                .resolve_checked("two.internal", 8080, &[], &t())
                .await,
            loop_("127.0.0.1:8080")
        );
    }
}
