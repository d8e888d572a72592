//! TLS session resumption for intercepted tunnels: a new tunnel of a workload that already
//! handshook with the proxy resumes its session (a TLS 1.3 PSK ticket or a TLS 1.2 session
//! ticket) instead of a full handshake.
//!
//! Each tunnel still gets its own rustls server config (its certificate resolver knows the
//! tunnel's `CONNECT` host); what tunnels share is a [`SessionScope`]: the ticket keys of one
//! tenant's workload under one tenant snapshot.
//!
//! - **Scope: tenant and workload.** A ticket is sealed with its scope's keys, so a ticket
//!   issued in tenant A's tunnel and presented in tenant B's (or in another workload's of A)
//!   does not decrypt there: a full handshake, never a resumption. Nothing is shared across
//!   tenants, and a workload's sessions are not another workload's to reuse.
//! - **Stateless.** Only tickets are issued (TLS 1.3, and RFC 5077 tickets in TLS 1.2); no
//!   session is stored on the proxy, so a scope costs two ticket keys whatever its traffic.
//!   TLS 1.2 clients that only know session ids do full handshakes.
//! - **Expiring and rotated.** A ticket carries its issue time inside the encryption and is
//!   refused past `[intercept] session_lifetime`; the keys themselves are rustls's (ring)
//!   `Ticketer`, which makes a new key every 6 hours and forgets it 6 hours later, so no key
//!   outlives 12 hours.
//! - **Bounded and dropped on change.** At most `[intercept] session_scopes` scopes are kept;
//!   every scope is dropped when a new tenant snapshot is loaded (a reload may remove a
//!   workload or change what it may do), and all of them with the process. The interception
//!   CA is read at start only, so a new CA means a new process and new keys.
//! - **No early data.** 0-RTT stays off (rustls's `max_early_data_size` is 0): early data can
//!   be replayed, and would be read before the tunnel's checks.
//!
//! The ClientHello's SNI must name the tunnel's `CONNECT` host, resumed or not. rustls 0.23
//! asks the certificate resolver (which checks it) in every handshake, resumed ones included:
//! it picks the certificate before it looks at tickets (`server/hs.rs`). On resumption it
//! also requires the SNI to equal the one the session was made with (`hs::can_resume`,
//! RFC 6066), but not the tunnel's host: a session made for `a.example` would resume in a
//! tunnel to `b.example` with SNI `a.example` if the resolver were not asked. Since that
//! ordering is rustls's choice, not a promise, the tunnel checks the negotiated SNI again once
//! any handshake is done (`tunnel::intercept`, [`crate::tls::TunnelCertResolver::accepts`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;

use crate::ids::{TenantId, WorkloadId};

/// How long a ticket is accepted by default: an agent reconnecting through the day resumes,
/// and a ticket that leaked with a client's memory is useless within the hour.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// rustls's ring `Ticketer` encrypts with a key for 6 hours and decrypts with it for 6 more: a
/// longer lifetime could not be honoured for every ticket.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// Scopes kept at most by default (one per tenant workload that opens intercepted tunnels).
pub const DEFAULT_MAX_SCOPES: usize = 10_000;
/// Tickets issued after each handshake. TLS 1.3 tickets are single-use on the client side, so
/// two let a client open the next two tunnels at once and still resume both.
const TICKETS_PER_HANDSHAKE: usize = 2;
/// A ticket stamped this far in the future (a clock stepped back) is still accepted.
const CLOCK_STEP: u64 = 60;

/// The resumption state of every tenant workload, for one tenant snapshot at a time.
pub struct SessionScopes {
    lifetime: Duration,
    max_scopes: usize,
    current: ArcSwap<Generation>,
    /// Orders scopes by creation, for eviction.
    created: AtomicU64,
}

/// The scopes made under one tenant snapshot.
#[derive(Default)]
struct Generation {
    snapshot: u64,
    scopes: HashMap<(TenantId, WorkloadId), Arc<SessionScope>>,
}

impl fmt::Debug for SessionScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("SessionScopes")
            .field("lifetime", &self.lifetime)
            .field("max_scopes", &self.max_scopes)
            .field("snapshot", &current.snapshot)
            .field("scopes", &current.scopes.len())
            .finish()
    }
}

impl SessionScopes {
    /// Scopes whose tickets are accepted for `lifetime` (at most [`MAX_SESSION_LIFETIME`]), at
    /// most `max_scopes` of them (at least 1). `None` when `lifetime` is zero: resumption off.
    pub fn new(lifetime: Duration, max_scopes: usize) -> Option<Self> {
        if lifetime.is_zero() {
            return None;
        }
        Some(Self {
            lifetime: lifetime.min(MAX_SESSION_LIFETIME),
            max_scopes: max_scopes.max(1),
            current: ArcSwap::from_pointee(Generation::default()),
            created: AtomicU64::new(0),
        })
    }

    /// The scope of `tenant`'s `workload` for a tunnel decided under tenant snapshot
    /// `snapshot`. The first tunnel under a newer snapshot drops every older scope. A tunnel
    /// decided under an older snapshot than the newest seen (a reload landed meanwhile) gets
    /// none: a full handshake and no ticket. `None` also when the ticket keys cannot be made
    /// (no randomness): resumption is an optimisation, the tunnel goes on without it.
    pub fn scope(
        &self,
        snapshot: u64,
        tenant: &TenantId,
        workload: &WorkloadId,
    ) -> Option<Arc<SessionScope>> {
        {
            let current = self.current.load();
            if current.snapshot > snapshot {
                return None;
            }
            if current.snapshot == snapshot {
                // The hot path: one lock-free load and a lookup.
                if let Some(scope) = current.scopes.get(&(tenant.clone(), workload.clone())) {
                    return Some(Arc::clone(scope));
                }
            }
        }
        let made = Arc::new(SessionScope::new(
            self.lifetime,
            self.created.fetch_add(1, Ordering::Relaxed),
        )?);
        let key = (tenant.clone(), workload.clone());
        self.current.rcu(|old| {
            if old.snapshot > snapshot {
                return Arc::clone(old);
            }
            let mut scopes = if old.snapshot == snapshot {
                // Two tunnels may make the scope at once; the first one stored wins, so both
                // end up issuing and accepting the same tickets.
                if old.scopes.contains_key(&key) {
                    return Arc::clone(old);
                }
                old.scopes.clone()
            } else {
                HashMap::new()
            };
            make_room(&mut scopes, self.max_scopes);
            scopes.insert(key.clone(), Arc::clone(&made));
            Arc::new(Generation { snapshot, scopes })
        });
        let current = self.current.load();
        if current.snapshot != snapshot {
            return None;
        }
        current.scopes.get(&key).cloned()
    }

    /// Scopes currently kept.
    pub fn len(&self) -> usize {
        self.current.load().scopes.len()
    }

    /// Whether no scope is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the oldest scopes until one more fits under `max`. A dropped scope's clients do full
/// handshakes and get tickets of a new scope.
fn make_room(scopes: &mut HashMap<(TenantId, WorkloadId), Arc<SessionScope>>, max: usize) {
    while scopes.len() >= max {
        let Some(oldest) = scopes
            .iter()
            .min_by_key(|(_, s)| s.created)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        scopes.remove(&oldest);
    }
}

/// The ticket keys of one tenant workload.
pub struct SessionScope {
    ticketer: Arc<dyn ProducesTickets>,
    created: u64,
}

impl fmt::Debug for SessionScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("SessionScope")
            .field("lifetime", &self.ticketer.lifetime())
            .finish_non_exhaustive()
    }
}

impl SessionScope {
    fn new(lifetime: Duration, created: u64) -> Option<Self> {
        let inner = rustls::crypto::ring::Ticketer::new().ok()?;
        Some(Self {
            ticketer: Arc::new(ExpiringTickets {
                inner,
                lifetime: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
            }),
            created,
        })
    }

    /// The scope's tickets for one tunnel's handshake.
    pub fn for_tunnel(&self) -> Arc<TunnelTickets> {
        Arc::new(TunnelTickets {
            scope: Arc::clone(&self.ticketer),
            accepted: AtomicBool::new(false),
        })
    }
}

/// A scope's tickets as one tunnel's handshake uses them, noting whether it accepted one.
#[derive(Debug)]
pub struct TunnelTickets {
    scope: Arc<dyn ProducesTickets>,
    accepted: AtomicBool,
}

impl TunnelTickets {
    /// Makes `config` issue and accept the scope's tickets. Everything else in `config` (the
    /// certificate resolver, ALPN, client authentication) stays the tunnel's own.
    pub fn apply(self: &Arc<Self>, config: &mut rustls::ServerConfig) {
        config.ticketer = Arc::clone(self) as Arc<dyn ProducesTickets>;
        config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
    }

    /// Whether the handshake accepted one of the scope's tickets: once it completed, that it
    /// resumed (rustls then resumes unless the ticket's cipher suite or SNI differ from the
    /// new handshake's, which a client's own ticket never does).
    pub fn resumed(&self) -> bool {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl ProducesTickets for TunnelTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.scope.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.scope.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.scope.decrypt(cipher);
        if plain.is_some() {
            self.accepted.store(true, Ordering::Relaxed);
        }
        plain
    }
}

/// A ticketer that puts the issue time inside each ticket and refuses tickets older than
/// `lifetime`: rustls's own `Ticketer` bounds a ticket's life only by its key rotation.
struct ExpiringTickets {
    inner: Arc<dyn ProducesTickets>,
    lifetime: u32,
}

impl fmt::Debug for ExpiringTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiringTickets")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ExpiringTickets {
    fn seal(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut stamped = Vec::with_capacity(8 + plain.len());
        stamped.extend_from_slice(&now.to_be_bytes());
        stamped.extend_from_slice(plain);
        let sealed = self.inner.encrypt(&stamped);
        // The session's secret was in `stamped`: wipe the copy.
        zeroize::Zeroize::zeroize(&mut stamped);
        sealed
    }

    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut stamped = self.inner.decrypt(ticket)?;
        let fresh = stamped.get(..8).is_some_and(|stamp| {
            let mut issued = [0u8; 8];
            issued.copy_from_slice(stamp);
            let issued = u64::from_be_bytes(issued);
            issued <= now.saturating_add(CLOCK_STEP)
                && now.saturating_sub(issued) <= u64::from(self.lifetime)
        });
        let plain = fresh.then(|| stamped[8..].to_vec());
        zeroize::Zeroize::zeroize(&mut stamped);
        plain
    }
}

impl ProducesTickets for ExpiringTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// What clients are told: they drop the ticket after this many seconds.
    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_secs())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, unix_secs())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ids(tenant: &str, workload: &str) -> (TenantId, WorkloadId) {
        (
            TenantId::new(tenant).unwrap(),
            WorkloadId::new(workload).unwrap(),
        )
    }

    fn scopes(max: usize) -> SessionScopes {
        SessionScopes::new(DEFAULT_SESSION_LIFETIME, max).unwrap()
    }

    #[test]
    fn zero_lifetime_turns_resumption_off_and_the_lifetime_is_capped() {
        assert!(SessionScopes::new(Duration::ZERO, 10).is_none());
        let s = SessionScopes::new(Duration::from_secs(24 * 3600), 10).unwrap();
        let (t, w) = ids("acme", "bot");
        let scope = s.scope(1, &t, &w).unwrap();
        assert_eq!(scope.ticketer.lifetime(), 6 * 3600);
    }

    #[test]
    fn one_scope_per_tenant_workload_and_snapshot() {
        let s = scopes(16);
        let (acme, bot) = ids("acme", "bot");
        let (globex, agent) = ids("globex", "agent");
        let (_, researcher) = ids("acme", "researcher");
        let a = s.scope(1, &acme, &bot).unwrap();
        assert!(Arc::ptr_eq(&a, &s.scope(1, &acme, &bot).unwrap()));
        let b = s.scope(1, &globex, &agent).unwrap();
        let r = s.scope(1, &acme, &researcher).unwrap();
        assert!(!Arc::ptr_eq(&a, &b) && !Arc::ptr_eq(&a, &r));
        assert_eq!(s.len(), 3);

        // A new snapshot drops every scope; a tunnel decided under the old one gets none.
        let a2 = s.scope(2, &acme, &bot).unwrap();
        assert!(!Arc::ptr_eq(&a, &a2));
        assert_eq!(s.len(), 1);
        assert!(s.scope(1, &acme, &bot).is_none());
        assert!(s.scope(1, &globex, &agent).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn tickets_of_one_scope_do_not_open_in_another() {
        let s = scopes(16);
        let (acme, bot) = ids("acme", "bot");
        let (globex, agent) = ids("globex", "agent");
        let (_, researcher) = ids("acme", "researcher");
        let a = s.scope(1, &acme, &bot).unwrap();
        let ticket = a.ticketer.encrypt(b"session").unwrap();
        assert_eq!(a.ticketer.decrypt(&ticket).unwrap(), b"session");
        for other in [
            s.scope(1, &globex, &agent).unwrap(),
            s.scope(1, &acme, &researcher).unwrap(),
            s.scope(2, &acme, &bot).unwrap(),
        ] {
            assert!(other.ticketer.decrypt(&ticket).is_none());
        }
        // The plaintext is not in the ticket.
        assert!(!ticket.windows(7).any(|w| w == b"session"));
    }

    #[test]
    fn tickets_expire_after_their_lifetime() {
        let t = ExpiringTickets {
            inner: rustls::crypto::ring::Ticketer::new().unwrap(),
            lifetime: 600,
        };
        let now = 1_800_000_000;
        let ticket = t.seal(b"s", now).unwrap();
        assert_eq!(t.open(&ticket, now).unwrap(), b"s");
        assert_eq!(t.open(&ticket, now + 600).unwrap(), b"s");
        assert!(t.open(&ticket, now + 601).is_none(), "expired");
        assert!(
            t.open(&ticket, now - CLOCK_STEP).is_some(),
            "a small step back"
        );
        assert!(
            t.open(&ticket, now - CLOCK_STEP - 1).is_none(),
            "from the future"
        );
        assert!(t.open(b"garbage", now).is_none());
        assert!(t.open(&[], now).is_none());
    }

    #[test]
    fn scopes_are_bounded_oldest_first() {
        let s = scopes(3);
        let (tenant, _) = ids("acme", "bot");
        let workloads: Vec<WorkloadId> = (0..5)
            .map(|i| WorkloadId::new(&format!("w{i}")).unwrap())
            .collect();
        let first = s.scope(1, &tenant, &workloads[0]).unwrap();
        for w in &workloads[1..] {
            s.scope(1, &tenant, w).unwrap();
            assert!(s.len() <= 3);
        }
        assert_eq!(s.len(), 3);
        // The first was dropped: asking again makes a new scope (new keys).
        let again = s.scope(1, &tenant, &workloads[0]).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        let debug = format!("{s:?} {again:?}");
        assert!(debug.contains("scopes: 3"), "{debug}");
    }
}
