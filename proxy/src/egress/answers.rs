//! Name lookups' answers, kept per tenant for `[egress] dns_cache_ttl`.
//!
//! Without them every request looked its host up again: `getaddrinfo` on the blocking pool (a
//! hop to another thread and back, `/etc/hosts` read again, and where the host runs no caching
//! resolver a DNS query per request, several in Kubernetes, whose `ndots:5` tries the search
//! domains first). Through `/etc/hosts` alone that was about a third of a proxied request's CPU.
//!
//! SECURITY:
//! - The key is the tenant and the name. One tenant's lookups are never answered from
//!   another's, so how fast a name resolves tells a tenant nothing about the names other
//!   tenants use (a shared cache would answer that by timing).
//! - The answers are kept as the resolver gave them, and the guard checks them on every request
//!   as if they had just been looked up: what is dialed is still exactly the address checked.
//!   A name that rebinds switches at most once a TTL.
//! - Failures are not kept: a name that did not resolve is looked up again next time (within
//!   the tenant's lookup places).
//! - The cache is bounded (`MOST_ENTRIES`); a tenant that names many hosts once each evicts
//!   those first (quick_cache keeps entries that are asked again), and an evicted name is only
//!   looked up again.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, Equivalent, OptionsBuilder, UnitWeighter};

use crate::ids::TenantId;

/// Most answers kept, all tenants together.
const MOST_ENTRIES: usize = 16_384;

/// A tenant's name, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    tenant: TenantId,
    host: Box<str>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant.as_str().hash(state);
        self.host.hash(state);
    }
}

/// The same key, borrowed from a request: a lookup allocates nothing.
struct Asked<'a> {
    tenant: &'a str,
    host: &'a str,
}

impl Hash for Asked<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant.hash(state);
        self.host.hash(state);
    }
}

impl Equivalent<Key> for Asked<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        key.tenant.as_str() == self.tenant && &*key.host == self.host
    }
}

/// What the resolver answered, and until when it stands.
#[derive(Clone)]
struct Kept {
    addrs: Arc<[IpAddr]>,
    until: Instant,
}

/// Answers kept per tenant and name for a fixed time (`getaddrinfo` gives no record TTL).
pub(super) struct Answers {
    entries: Cache<Key, Kept, UnitWeighter, DefaultHashBuilder, DefaultLifecycle<Key, Kept>>,
    ttl: Duration,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("ttl", &self.ttl)
            .field("len", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Answers {
    /// Answers kept for `ttl`; `None` when `ttl` is zero (every request looks its host up).
    pub(super) fn new(ttl: Duration) -> Option<Self> {
        if ttl.is_zero() {
            return None;
        }
        let options = OptionsBuilder::new()
            .estimated_items_capacity(1024)
            .weight_capacity(MOST_ENTRIES as u64)
            .build()
            .ok()?;
        let entries = Cache::with_options(
            options,
            UnitWeighter,
            DefaultHashBuilder::default(),
            DefaultLifecycle::default(),
        );
        Some(Self { entries, ttl })
    }

    /// `tenant`'s answer for `host`, if it still stands at `now`.
    pub(super) fn get(&self, tenant: &TenantId, host: &str, now: Instant) -> Option<Arc<[IpAddr]>> {
        let asked = Asked {
            tenant: tenant.as_str(),
            host,
        };
        let kept = self.entries.get(&asked)?;
        (now < kept.until).then_some(kept.addrs)
    }

    /// Keeps `tenant`'s answer for `host`, given at `now` (an empty answer is a failure, not
    /// kept).
    pub(super) fn keep(&self, tenant: &TenantId, host: &str, addrs: &Arc<[IpAddr]>, now: Instant) {
        if addrs.is_empty() {
            return;
        }
        let key = Key {
            tenant: tenant.clone(),
            host: host.into(),
        };
        let kept = Kept {
            addrs: addrs.clone(),
            until: now + self.ttl,
        };
        self.entries.insert(key, kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Arc<[IpAddr]> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_answer_stands_for_its_tenant_and_name_until_the_ttl_has_passed() {
        let answers = Answers::new(Duration::from_secs(30)).unwrap();
        let (acme, globex) = (
            TenantId::new("acme").unwrap(),
            TenantId::new("globex").unwrap(),
        );
        let t0 = Instant::now();
        answers.keep(
            &acme,
            "api.example",
            &addrs(&["8.8.8.8", "2001:db8::1"]),
            t0,
        );
        assert_eq!(
            answers.get(&acme, "api.example", t0 + Duration::from_secs(29)),
            Some(addrs(&["8.8.8.8", "2001:db8::1"]))
        );
        assert_eq!(
            answers.get(&acme, "api.example", t0 + Duration::from_secs(30)),
            None
        );
        // Another tenant's answers and another name's are not this one's.
        assert_eq!(answers.get(&globex, "api.example", t0), None);
        assert_eq!(answers.get(&acme, "api.example.", t0), None);
        assert_eq!(answers.get(&acme, "other.example", t0), None);
        // A later answer replaces the kept one.
        let t1 = t0 + Duration::from_secs(40);
        answers.keep(&acme, "api.example", &addrs(&["9.9.9.9"]), t1);
        assert_eq!(
            answers.get(&acme, "api.example", t1),
            Some(addrs(&["9.9.9.9"]))
        );
    }

    #[test]
    fn failures_are_not_kept_and_a_zero_ttl_keeps_nothing() {
        let answers = Answers::new(Duration::from_secs(30)).unwrap();
        let acme = TenantId::new("acme").unwrap();
        let now = Instant::now();
        answers.keep(&acme, "gone.example", &addrs(&[]), now);
        assert_eq!(answers.get(&acme, "gone.example", now), None);
        assert!(Answers::new(Duration::ZERO).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let answers = Answers::new(Duration::from_secs(30)).unwrap();
        let acme = TenantId::new("acme").unwrap();
        let now = Instant::now();
        for i in 0..(MOST_ENTRIES * 2) {
            answers.keep(&acme, &format!("h{i}.example"), &addrs(&["8.8.8.8"]), now);
        }
        assert!(
            answers.entries.len() <= MOST_ENTRIES,
            "{}",
            answers.entries.len()
        );
    }
}
