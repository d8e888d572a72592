//! Per-tenant caps on things a tenant holds open on this replica: tunnels and client
//! connections. They are connections to this replica, so the count is local; it is touched once
//! when one opens and once when it closes, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntGaugeVec;

use crate::ids::TenantId;

/// Open things (tunnels, connections) by tenant, mirrored in a gauge labelled by tenant.
#[derive(Debug, Clone)]
pub struct TenantCounts {
    open: Arc<Mutex<HashMap<TenantId, u32>>>,
    gauge: &'static IntGaugeVec,
}

/// Holds one slot of a tenant until dropped.
#[derive(Debug)]
pub struct TenantSlot {
    counts: TenantCounts,
    tenant: TenantId,
}

impl TenantCounts {
    /// Counts reported in `gauge`.
    pub fn new(gauge: &'static IntGaugeVec) -> Self {
        Self {
            open: Arc::default(),
            gauge,
        }
    }

    /// Takes a slot unless `tenant` already has `max` open.
    pub fn try_open(&self, tenant: &TenantId, max: u32) -> Option<TenantSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        self.gauge
            .with_label_values(&[tenant.as_str()])
            .set(i64::from(*n));
        Some(TenantSlot {
            counts: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// What `tenant` has open.
    pub fn open(&self, tenant: &TenantId) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(tenant).copied().unwrap_or(0)
    }
}

impl TenantSlot {
    /// The tenant this slot is held for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            self.counts
                .gauge
                .with_label_values(&[self.tenant.as_str()])
                .set(i64::from(*n));
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_cap_and_slots_come_back_when_dropped() {
        let counts = TenantCounts::new(&crate::metrics::METRICS.tunnels_open);
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let a1 = counts.try_open(&acme, 2).unwrap();
        let _a2 = counts.try_open(&acme, 2).unwrap();
        assert!(counts.try_open(&acme, 2).is_none());
        assert!(
            counts.try_open(&globex, 2).is_some(),
            "acme's tunnels never count against globex"
        );
        drop(a1);
        assert_eq!(counts.open(&acme), 1);
        assert!(counts.try_open(&acme, 2).is_some());
    }
}
