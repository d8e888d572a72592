//! Per-tenant shares of a resource every tenant draws on (request body memory, name lookups):
//! each tenant may hold at most its share, so one tenant cannot take what the others need.
//! Holding and giving back take no lock for writing once a tenant has an entry (made at its
//! first hold and kept: one per tenant ever configured), since bodies are held on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::TenantId;

/// What each tenant holds of one resource, each at most `max`.
#[derive(Debug)]
pub struct TenantShares {
    max: u64,
    tenants: DashMap<TenantId, Arc<AtomicU64>>,
}

/// An amount of one tenant's share, given back when dropped.
#[derive(Debug)]
pub struct ShareHold {
    count: Option<Arc<AtomicU64>>,
    amount: u64,
}

impl TenantShares {
    /// Shares of `max` each.
    pub fn new(max: u64) -> Self {
        Self {
            max,
            tenants: DashMap::new(),
        }
    }

    /// What one tenant may hold.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Holds `amount` of `tenant`'s share, unless that would take it over `max` (nothing is
    /// held then).
    pub fn try_hold(&self, tenant: &TenantId, amount: u64) -> Option<ShareHold> {
        let count = match self.tenants.get(tenant) {
            Some(count) => Arc::clone(&count),
            None => Arc::clone(&self.tenants.entry(tenant.clone()).or_default()),
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(amount).filter(|total| *total <= self.max)
            })
            .ok()?;
        Some(ShareHold {
            count: Some(count),
            amount,
        })
    }

    /// What `tenant` holds now.
    #[cfg(test)]
    pub fn held(&self, tenant: &TenantId) -> u64 {
        self.tenants
            .get(tenant)
            .map_or(0, |count| count.load(Ordering::Acquire))
    }
}

impl ShareHold {
    /// A hold counted in no share.
    #[cfg(test)]
    pub fn uncounted() -> Self {
        Self {
            count: None,
            amount: 0,
        }
    }
}

impl Drop for ShareHold {
    fn drop(&mut self) {
        if let Some(count) = &self.count {
            count.fetch_sub(self.amount, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_holds_at_most_its_share_and_gets_it_back_on_drop() {
        let shares = TenantShares::new(10);
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let a = shares.try_hold(&acme, 7).unwrap();
        assert!(shares.try_hold(&acme, 4).is_none());
        assert_eq!(shares.held(&acme), 7, "a refusal holds nothing");
        let _g = shares.try_hold(&globex, 10).unwrap();
        drop(a);
        assert_eq!(shares.held(&acme), 0);
        assert!(shares.try_hold(&acme, 10).is_some());
        assert!(shares.try_hold(&acme, u64::MAX).is_none(), "no overflow");
    }
}
