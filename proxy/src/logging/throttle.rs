//! How many refusal lines reach the process log: one per tenant and reason per second on each
//! worker thread, the rest counted.
//!
//! A tenant flooding the proxy is refused cheaply (the limiter's "already over" check), but a
//! log line per refusal would still cost each refused request as much as its own audit record,
//! and would fill the log writer's queue, so that other tenants' lines were dropped: the log is
//! shared by every tenant, and a noisy one must not crowd the others out of it. The audit log
//! keeps every refusal; this one keeps a sample that says how many it stands for
//! (`suppressed`), and `tenant_proxy_log_lines_suppressed_total` counts what was left out.
//!
//! The state is per worker thread (no lock, no shared cache line on the hot path), so a tenant
//! gets at most one line per reason per second from each worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Tenants a worker remembers before it forgets the ones idle for a second or more.
const REMEMBERED_TENANTS: usize = 4096;

/// Refusal lines left out, all threads together.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Refusal lines left out so far (for the metric).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// One reason's second on one worker: which second it is, and the lines left out since the
/// last one written.
#[derive(Debug)]
struct Window {
    reason: &'static str,
    second: u64,
    suppressed: u64,
}

/// A worker's windows, by tenant, then reason (a tenant is refused for few reasons at once).
#[derive(Debug)]
struct Windows {
    epoch: Instant,
    by_tenant: HashMap<Box<str>, Vec<Window>>,
}

thread_local! {
    static WINDOWS: RefCell<Windows> = RefCell::new(Windows {
        epoch: Instant::now(),
        by_tenant: HashMap::new(),
    });
}

/// Whether the line of a request refused for `reason` of `tenant` is written now: `Some(n)`,
/// with `n` the lines of the same tenant and reason this worker left out since its previous
/// one, or `None` when this one is left out (and counted).
pub fn refusal_line(tenant: &str, reason: &'static str, now: Instant) -> Option<u64> {
    WINDOWS.with(|windows| windows.borrow_mut().admit(tenant, reason, now))
}

impl Windows {
    fn admit(&mut self, tenant: &str, reason: &'static str, now: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        if let Some(windows) = self.by_tenant.get_mut(tenant) {
            return match windows.iter_mut().find(|w| w.reason == reason) {
                Some(w) if w.second == second => {
                    w.suppressed += 1;
                    SUPPRESSED.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Some(w) => {
                    w.second = second;
                    Some(std::mem::take(&mut w.suppressed))
                }
                None => {
                    windows.push(Window {
                        reason,
                        second,
                        suppressed: 0,
                    });
                    Some(0)
                }
            };
        }
        if self.by_tenant.len() >= REMEMBERED_TENANTS {
            // Tenants with nothing refused this second: what they left out is in the metric.
            self.by_tenant
                .retain(|_, windows| windows.iter().any(|w| w.second == second));
        }
        self.by_tenant.insert(
            tenant.into(),
            vec![Window {
                reason,
                second,
                suppressed: 0,
            }],
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn windows() -> Windows {
        Windows {
            epoch: Instant::now(),
            by_tenant: HashMap::new(),
        }
    }

    #[test]
    fn one_line_per_tenant_and_reason_per_second_then_the_count_left_out() {
        let mut w = windows();
        let t0 = w.epoch;
        assert_eq!(w.admit("acme", "rate_limited", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(w.admit("acme", "rate_limited", t0), None);
        }
        // Another reason and another tenant have windows of their own.
        assert_eq!(w.admit("acme", "concurrency_limited", t0), Some(0));
        assert_eq!(w.admit("globex", "rate_limited", t0), Some(0));
        assert_eq!(w.admit("globex", "rate_limited", t0), None);
        // The next second's first line says how many the last one stood for.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(w.admit("acme", "rate_limited", t1), Some(5));
        assert_eq!(w.admit("acme", "rate_limited", t1), None);
        assert_eq!(w.admit("globex", "rate_limited", t1), Some(1));
        assert_eq!(w.admit("acme", "concurrency_limited", t1), Some(0));
    }

    #[test]
    fn a_tenants_count_is_never_reported_on_another_tenants_line() {
        let mut w = windows();
        let t0 = w.epoch;
        w.admit("acme", "rate_limited", t0);
        for _ in 0..100 {
            w.admit("acme", "rate_limited", t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.admit("globex", "rate_limited", t1), Some(0));
        assert_eq!(w.admit("acme", "rate_limited", t1), Some(100));
    }

    #[test]
    fn left_out_lines_are_counted_for_the_metric() {
        let before = suppressed_lines();
        let mut w = windows();
        let t0 = w.epoch;
        w.admit("acme", "rate_limited", t0);
        w.admit("acme", "rate_limited", t0);
        w.admit("acme", "rate_limited", t0);
        // Other tests on other threads may count too: at least these two.
        assert!(suppressed_lines() >= before + 2);
    }

    #[test]
    fn idle_tenants_are_forgotten_past_the_bound() {
        let mut w = windows();
        let t0 = w.epoch;
        for i in 0..REMEMBERED_TENANTS {
            w.admit(&format!("t{i}"), "rate_limited", t0);
        }
        assert_eq!(w.by_tenant.len(), REMEMBERED_TENANTS);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(w.admit("late", "rate_limited", t2), Some(0));
        assert_eq!(w.by_tenant.len(), 1, "only this second's tenant is kept");
        // A forgotten tenant starts a fresh window.
        assert_eq!(w.admit("t0", "rate_limited", t2), Some(0));
    }
}
