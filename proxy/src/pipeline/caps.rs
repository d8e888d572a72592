//! Caps on things held open on this replica: a tenant's tunnels and client connections, and a
//! listener's client connections. They are connections to this replica, so the count is local;
//! it is touched once when one opens and once when it closes, and per request only for an
//! HTTP/2 stream (which holds an upstream connection of its own, as a connection does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// What one listener has open: client connections, and the HTTP/2 streams in flight inside its
/// intercepted tunnels (each holds an upstream connection, as a connection does), against
/// `[limits] max_connections_per_listener`; mirrored in `tenant_proxy_connections_open`.
#[derive(Debug, Clone)]
pub struct ListenerCounts {
    open: Arc<AtomicU32>,
    listener: Arc<str>,
}

/// Holds one of a listener's slots until dropped.
#[derive(Debug)]
pub struct ListenerSlot {
    counts: ListenerCounts,
}

impl ListenerCounts {
    /// The counts of the listener named `listener`.
    pub fn new(listener: &str) -> Self {
        Self {
            open: Arc::default(),
            listener: Arc::from(listener),
        }
    }

    /// Takes a slot unless `max` are open.
    pub fn try_open(&self, max: u32) -> Option<ListenerSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        self.report(taken.ok()? + 1);
        Some(ListenerSlot {
            counts: self.clone(),
        })
    }

    fn report(&self, open: u32) {
        crate::metrics::METRICS
            .connections_open
            .with_label_values(&[&self.listener])
            .set(i64::from(open));
    }
}

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        let n = self
            .counts
            .open
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        self.counts.report(n);
    }
}

/// A tunnel's HTTP/2 streams in flight and the slots they hold: one slot of the tunnel's
/// listener and one of its tenant's connections for each stream beyond the first (the tunnel's
/// own connection slots cover one request in flight, as an HTTP/1.1 tunnel's do). Kept at
/// exactly that whichever streams end first: the slots are the tunnel's, not a stream's.
#[derive(Debug, Default)]
pub struct TunnelStreams(Mutex<StreamCount>);

#[derive(Debug, Default)]
struct StreamCount {
    in_flight: u32,
    slots: Vec<(ListenerSlot, TenantSlot)>,
}

/// One of a tunnel's HTTP/2 streams in flight, until dropped.
#[derive(Debug)]
pub struct StreamSlots(Arc<TunnelStreams>);

impl TunnelStreams {
    /// Counts a stream in flight; `take` gives the slots it needs when it is not the only one
    /// (`Err`: refused, and nothing is counted).
    pub fn enter<E>(
        self: &Arc<Self>,
        take: impl FnOnce() -> Result<(ListenerSlot, TenantSlot), E>,
    ) -> Result<StreamSlots, E> {
        let mut count = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if count.in_flight > 0 {
            let slots = take()?;
            count.slots.push(slots);
        }
        count.in_flight += 1;
        Ok(StreamSlots(self.clone()))
    }

    /// Slots held, for tests.
    #[cfg(test)]
    fn held(&self) -> (u32, usize) {
        let count = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (count.in_flight, count.slots.len())
    }
}

impl Drop for StreamSlots {
    fn drop(&mut self) {
        let mut count = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        count.in_flight = count.in_flight.saturating_sub(1);
        // One slot fewer is needed, whichever stream ended (the first included).
        let needed = count.in_flight.saturating_sub(1) as usize;
        count.slots.truncate(needed);
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

    /// A tunnel's streams hold one slot each beyond the first, whichever ends first.
    #[test]
    fn a_tunnels_streams_hold_slots_for_all_but_one() {
        let listener = ListenerCounts::new("streams-test");
        let tenants = TenantCounts::new(&crate::metrics::METRICS.tunnels_open);
        let acme = TenantId::new("acme").unwrap();
        let take = || {
            let l = listener.try_open(10).ok_or("listener")?;
            let t = tenants.try_open(&acme, 10).ok_or("tenant")?;
            Ok::<_, &str>((l, t))
        };
        let streams = Arc::new(TunnelStreams::default());
        let a = streams.enter(take).unwrap();
        assert_eq!(streams.held(), (1, 0), "the first is the tunnel's");
        let b = streams.enter(take).unwrap();
        let c = streams.enter(take).unwrap();
        assert_eq!(streams.held(), (3, 2));
        assert_eq!(tenants.open(&acme), 2);
        // The first ends first: the two left hold one slot.
        drop(a);
        assert_eq!(streams.held(), (2, 1));
        assert_eq!(tenants.open(&acme), 1);
        let d = streams.enter(take).unwrap();
        assert_eq!(streams.held(), (3, 2));
        drop((b, c, d));
        assert_eq!(streams.held(), (0, 0));
        assert_eq!(tenants.open(&acme), 0);
        // A refused stream counts nothing.
        let only = streams.enter(take).unwrap();
        assert!(streams
            .enter(|| Err::<(ListenerSlot, TenantSlot), _>("full"))
            .is_err());
        assert_eq!(streams.held(), (1, 0));
        drop(only);
    }

    #[test]
    fn a_listener_has_its_cap_and_slots_come_back_when_dropped() {
        let counts = ListenerCounts::new("caps-test");
        let first = counts.try_open(2).unwrap();
        let _second = counts.clone().try_open(2).unwrap();
        assert!(
            counts.try_open(2).is_none(),
            "a clone counts the same listener"
        );
        drop(first);
        assert!(counts.try_open(2).is_some());
    }
}
