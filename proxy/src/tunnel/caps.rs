//! Per-tenant caps on open tunnels. Tunnels are connections to this replica, so the count is
//! local; it is touched once when a tunnel opens and once when it closes, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ids::TenantId;
use crate::metrics::METRICS;

/// Open tunnels by tenant.
#[derive(Debug, Default, Clone)]
pub struct TunnelCounts {
    open: Arc<Mutex<HashMap<TenantId, u32>>>,
}

/// Holds one tunnel slot of a tenant until dropped.
#[derive(Debug)]
pub struct TunnelSlot {
    counts: TunnelCounts,
    tenant: TenantId,
}

impl TunnelCounts {
    /// Takes a slot unless `tenant` already has `max` tunnels open.
    pub fn try_open(&self, tenant: &TenantId, max: u32) -> Option<TunnelSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        METRICS
            .tunnels_open
            .with_label_values(&[tenant.as_str()])
            .set(i64::from(*n));
        Some(TunnelSlot {
            counts: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Tunnels `tenant` has open.
    pub fn open(&self, tenant: &TenantId) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            METRICS
                .tunnels_open
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
        let counts = TunnelCounts::default();
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
