//! The request body memory all requests in flight may hold, and each tenant's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::BodyError;
use crate::ids::TenantId;
use crate::metrics::METRICS;
use crate::shares::{ShareHold, TenantShares};

/// The request body bytes requests in flight may hold: all of them together, and each tenant's
/// together. Each body is held whole (the decision needs it), so without the first bound a few
/// hundred slow uploads could take the process's memory, and without the second one tenant's
/// slow uploads could take all of it, every other tenant's bodies being refused meanwhile. Over
/// either, a request is refused before its body is read: `overloaded` for the process's bound,
/// `body_memory_limit` for the tenant's.
#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicU64,
    max: u64,
    /// What each tenant's requests hold.
    tenants: TenantShares,
}

/// Bytes of the [`BodyBudget`] one request holds, given back when dropped (when the request ends).
#[derive(Debug)]
pub struct BodyHold {
    budget: Arc<BodyBudget>,
    /// Given back to the tenant's share when dropped.
    _tenant: ShareHold,
    bytes: u64,
    /// What the body took beyond `bytes` once read (see [`BodyHold::grow_to`]).
    grown: Vec<BodyHold>,
}

impl BodyBudget {
    /// A budget of `max` bytes in all, of which one tenant may hold `per_tenant`.
    pub fn new(max: u64, per_tenant: u64) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicU64::new(0),
            max,
            tenants: TenantShares::new(per_tenant),
        })
    }

    /// Holds `bytes` for a request of `tenant`, unless that would take the tenant's total or
    /// the process's over its bound (nothing is held then).
    pub fn try_hold(
        self: &Arc<Self>,
        tenant: &TenantId,
        bytes: u64,
    ) -> Result<BodyHold, BodyError> {
        // The process's bound first: when it is full, the proxy is what is overloaded, whoever
        // holds the memory.
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .map_err(|_| BodyError::Overloaded)?;
        let Some(share) = self.tenants.try_hold(tenant, bytes) else {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BodyError::TenantOverloaded(self.tenants.max()));
        };
        METRICS
            .buffered_body_bytes
            .set(i64::try_from(before + bytes).unwrap_or(i64::MAX));
        Ok(BodyHold {
            budget: self.clone(),
            _tenant: share,
            bytes,
            grown: Vec::new(),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Bytes `tenant`'s requests hold now.
    #[cfg(test)]
    pub fn held_by(&self, tenant: &TenantId) -> u64 {
        self.tenants.held(tenant)
    }
}

impl BodyHold {
    /// Holds `bytes` in all from now on for a body that became larger than what was held for it
    /// while it was read: a `Content-Encoding` decoded (the decoded body is what the request
    /// keeps and forwards). Refused as [`BodyBudget::try_hold`] refuses (the hold stays as it
    /// was).
    ///
    /// SECURITY: without it a compressed body counted its bytes on the wire: `gzip, gzip` makes
    /// a 228-byte body of 8 MiB, so one tenant's requests held tens of thousands of times its
    /// share, and the process's memory with it.
    pub fn grow_to(&mut self, tenant: &TenantId, bytes: u64) -> Result<(), BodyError> {
        self.try_grow_to(tenant, bytes).inspect_err(count_overload)
    }

    /// As [`BodyHold::grow_to`], for a caller that has another way than a refusal when it
    /// does not fit (and counts the refusal itself if it refuses).
    pub fn try_grow_to(&mut self, tenant: &TenantId, bytes: u64) -> Result<(), BodyError> {
        let held = self.bytes + self.grown.iter().map(|g| g.bytes).sum::<u64>();
        if bytes <= held {
            return Ok(());
        }
        let more = self.budget.try_hold(tenant, bytes - held)?;
        self.grown.push(more);
        Ok(())
    }
}

/// Counts a body refused for memory (`tenant_proxy_overload_refusals_total`).
pub fn count_overload(refusal: &BodyError) {
    let reason = match refusal {
        BodyError::TenantOverloaded(_) => "tenant_body_memory",
        _ => "body_memory",
    };
    METRICS.overload_refusals.with_label_values(&[reason]).inc();
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let after = self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        METRICS
            .buffered_body_bytes
            .set(i64::try_from(after).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_grows_to_its_decoded_body_within_the_same_bounds() {
        let budget = BodyBudget::new(100, 40);
        let acme = TenantId::new("acme").unwrap();
        let mut hold = budget.try_hold(&acme, 5).unwrap();
        hold.grow_to(&acme, 30).unwrap();
        assert_eq!((budget.held(), budget.held_by(&acme)), (30, 30));
        // Smaller than held: nothing changes.
        hold.grow_to(&acme, 20).unwrap();
        assert_eq!(budget.held(), 30);
        // Past the tenant's share: refused, and the hold stays as it was.
        assert_eq!(
            hold.grow_to(&acme, 41).unwrap_err(),
            BodyError::TenantOverloaded(40)
        );
        assert_eq!((budget.held(), budget.held_by(&acme)), (30, 30));
        hold.grow_to(&acme, 40).unwrap();
        assert_eq!((budget.held(), budget.held_by(&acme)), (40, 40));
        // Past the process's bound.
        let globex = TenantId::new("globex").unwrap();
        let mut other = budget.try_hold(&globex, 20).unwrap();
        let _third = budget
            .try_hold(&TenantId::new("initech").unwrap(), 40)
            .unwrap();
        assert_eq!(
            other.grow_to(&globex, 21).unwrap_err(),
            BodyError::Overloaded
        );
        drop(hold);
        assert_eq!((budget.held(), budget.held_by(&acme)), (60, 0));
        drop(other);
        assert_eq!(budget.held(), 40);
    }

    #[test]
    fn one_tenant_cannot_hold_the_body_memory_of_all() {
        let budget = BodyBudget::new(100, 40);
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let held: Vec<_> = (0..4)
            .map(|_| budget.try_hold(&acme, 10).unwrap())
            .collect();
        assert_eq!(
            budget.try_hold(&acme, 1).unwrap_err(),
            BodyError::TenantOverloaded(40)
        );
        assert_eq!(
            (budget.held(), budget.held_by(&acme)),
            (40, 40),
            "a refusal holds nothing"
        );
        // globex has its own share, and the process's bound stays.
        let g: Vec<_> = (0..4)
            .map(|_| budget.try_hold(&globex, 10).unwrap())
            .collect();
        let third = TenantId::new("initech").unwrap();
        let _t = budget.try_hold(&third, 20).unwrap();
        assert_eq!(budget.held(), 100);
        assert_eq!(
            budget.try_hold(&third, 1).unwrap_err(),
            BodyError::Overloaded
        );
        assert_eq!(
            budget.held_by(&third),
            20,
            "the process's refusal gave the share back"
        );
        drop(held);
        drop(g);
        assert_eq!((budget.held(), budget.held_by(&acme)), (20, 0));
        assert!(budget.try_hold(&acme, 40).is_ok());
    }
}
