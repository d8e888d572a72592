//! How many refusal and failure lines reach the process log: one per tenant (or, before a
//! tenant is known, per listener) and reason per second on each worker thread, the rest counted.
//!
//! A tenant flooding the proxy is refused cheaply (the limiter's "already over" check), but a
//! log line per refusal would still cost each refused request as much as its own audit record,
//! and would fill the log writer's queue, so that other tenants' lines were dropped: the log is
//! shared by every tenant, and a noisy one must not crowd the others out of it. The audit log
//! keeps every refusal; this one keeps a sample that says how many it stands for
//! (`suppressed`), and `tenant_proxy_log_lines_suppressed_total` counts what was left out.
//!
//! The same holds for every other line a client can cause at will on a failure path: a refused
//! mTLS handshake (before any identity, so keyed by the listener), the egress guard's refusal, a
//! client's failed TLS handshake inside an intercepted tunnel. Each such line is written through
//! [`sample_line`] under a reason of its own, so it never takes the window of the request or
//! tunnel line of the same refusal.
//!
//! The state is per worker thread (no lock, no shared cache line on the hot path), so a tenant
//! gets at most one line per reason per second from each worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Tenants (and listeners) a worker remembers before it forgets the ones idle for a second or
/// more.
const REMEMBERED_TENANTS: usize = 4096;

/// Refusal lines left out, all threads together.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Refusal lines left out so far (for the metric).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Whose lines a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKey<'a> {
    /// A tenant's (`none` before one is known, as the request lines say).
    Tenant(&'a str),
    /// A listener's, for a failure before any identity (a refused mTLS handshake): anyone who
    /// reaches the listener can cause it, so its lines are sampled by where they arrive. A
    /// listener's windows are apart from the tenants', whatever the names.
    Listener(&'a str),
}

/// One reason's second on one worker: which second it is, and the lines left out since the
/// last one written.
#[derive(Debug)]
struct Window {
    reason: &'static str,
    second: u64,
    suppressed: u64,
}

/// A worker's windows, by tenant (or listener), then reason (a tenant is refused for few
/// reasons at once).
#[derive(Debug)]
struct Windows {
    epoch: Instant,
    by_tenant: HashMap<Box<str>, Vec<Window>>,
    by_listener: HashMap<Box<str>, Vec<Window>>,
}

thread_local! {
    static WINDOWS: RefCell<Windows> = RefCell::new(Windows::new(Instant::now()));
}

/// Whether the line of a request refused for `reason` of `tenant` is written now: `Some(n)`,
/// with `n` the lines of the same tenant and reason this worker left out since its previous
/// one, or `None` when this one is left out (and counted).
pub fn refusal_line(tenant: &str, reason: &'static str, now: Instant) -> Option<u64> {
    WINDOWS.with(|windows| {
        windows
            .borrow_mut()
            .admit(LineKey::Tenant(tenant), reason, now)
    })
}

/// Whether a failure line of `key` for `reason` is written now (see [`refusal_line`]): `None`
/// when it is left out (and counted); else `Some` of its `suppressed` field, the lines of the
/// same key and reason this worker left out since its previous one (`None` when there were
/// none). `reason` names the line, not only the refusal: a line written besides a request's or
/// tunnel's own must not share its window.
pub fn sample_line(key: LineKey<'_>, reason: &'static str) -> Option<Option<u64>> {
    let left_out =
        WINDOWS.with(|windows| windows.borrow_mut().admit(key, reason, Instant::now()))?;
    Some((left_out > 0).then_some(left_out))
}

impl Windows {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            by_tenant: HashMap::new(),
            by_listener: HashMap::new(),
        }
    }

    fn admit(&mut self, key: LineKey<'_>, reason: &'static str, now: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let (windows_of, name) = match key {
            LineKey::Tenant(t) => (&mut self.by_tenant, t),
            LineKey::Listener(l) => (&mut self.by_listener, l),
        };
        if let Some(windows) = windows_of.get_mut(name) {
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
        if windows_of.len() >= REMEMBERED_TENANTS {
            // Tenants with nothing refused this second: what they left out is in the metric.
            windows_of.retain(|_, windows| windows.iter().any(|w| w.second == second));
        }
        windows_of.insert(
            name.into(),
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
        Windows::new(Instant::now())
    }

    fn tenant(t: &str) -> LineKey<'_> {
        LineKey::Tenant(t)
    }

    #[test]
    fn one_line_per_tenant_and_reason_per_second_then_the_count_left_out() {
        let mut w = windows();
        let t0 = w.epoch;
        assert_eq!(w.admit(tenant("acme"), "rate_limited", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(w.admit(tenant("acme"), "rate_limited", t0), None);
        }
        // Another reason and another tenant have windows of their own.
        assert_eq!(w.admit(tenant("acme"), "concurrency_limited", t0), Some(0));
        assert_eq!(w.admit(tenant("globex"), "rate_limited", t0), Some(0));
        assert_eq!(w.admit(tenant("globex"), "rate_limited", t0), None);
        // The next second's first line says how many the last one stood for.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(w.admit(tenant("acme"), "rate_limited", t1), Some(5));
        assert_eq!(w.admit(tenant("acme"), "rate_limited", t1), None);
        assert_eq!(w.admit(tenant("globex"), "rate_limited", t1), Some(1));
        assert_eq!(w.admit(tenant("acme"), "concurrency_limited", t1), Some(0));
    }

    #[test]
    fn a_tenants_count_is_never_reported_on_another_tenants_line() {
        let mut w = windows();
        let t0 = w.epoch;
        w.admit(tenant("acme"), "rate_limited", t0);
        for _ in 0..100 {
            w.admit(tenant("acme"), "rate_limited", t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.admit(tenant("globex"), "rate_limited", t1), Some(0));
        assert_eq!(w.admit(tenant("acme"), "rate_limited", t1), Some(100));
    }

    #[test]
    fn left_out_lines_are_counted_for_the_metric() {
        let before = suppressed_lines();
        let mut w = windows();
        let t0 = w.epoch;
        w.admit(tenant("acme"), "rate_limited", t0);
        w.admit(tenant("acme"), "rate_limited", t0);
        w.admit(tenant("acme"), "rate_limited", t0);
        // Other tests on other threads may count too: at least these two.
        assert!(suppressed_lines() >= before + 2);
    }

    #[test]
    fn idle_tenants_are_forgotten_past_the_bound() {
        let mut w = windows();
        let t0 = w.epoch;
        for i in 0..REMEMBERED_TENANTS {
            w.admit(tenant(&format!("t{i}")), "rate_limited", t0);
        }
        assert_eq!(w.by_tenant.len(), REMEMBERED_TENANTS);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(w.admit(tenant("late"), "rate_limited", t2), Some(0));
        assert_eq!(w.by_tenant.len(), 1, "only this second's tenant is kept");
        // A forgotten tenant starts a fresh window.
        assert_eq!(w.admit(tenant("t0"), "rate_limited", t2), Some(0));
    }

    #[test]
    fn a_listeners_lines_have_windows_apart_from_any_tenants() {
        let mut w = windows();
        let t0 = w.epoch;
        let mesh = LineKey::Listener("acme");
        // A pre-authentication flood on listener `acme`: one line, the rest counted.
        assert_eq!(w.admit(mesh, "mtls_handshake_refused", t0), Some(0));
        for _ in 0..50 {
            assert_eq!(w.admit(mesh, "mtls_handshake_refused", t0), None);
        }
        // Tenant `acme` (same name) and another listener keep their own lines.
        assert_eq!(
            w.admit(tenant("acme"), "mtls_handshake_refused", t0),
            Some(0)
        );
        assert_eq!(
            w.admit(LineKey::Listener("other"), "mtls_handshake_refused", t0),
            Some(0)
        );
        // The next second's line carries the listener's count, and only its own.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            w.admit(tenant("acme"), "mtls_handshake_refused", t1),
            Some(0)
        );
        assert_eq!(w.admit(mesh, "mtls_handshake_refused", t1), Some(50));
    }

    #[test]
    fn the_new_line_reasons_sample_per_tenant_apart_from_the_request_line() {
        let mut w = windows();
        let t0 = w.epoch;
        // The request line of an egress refusal and the egress guard's own line each get one
        // line a second: neither takes the other's window.
        assert_eq!(
            w.admit(tenant("globex"), "destination_forbidden", t0),
            Some(0)
        );
        assert_eq!(w.admit(tenant("globex"), "egress_forbidden", t0), Some(0));
        assert_eq!(w.admit(tenant("globex"), "client_tls_failed", t0), Some(0));
        for _ in 0..10 {
            assert_eq!(w.admit(tenant("globex"), "egress_forbidden", t0), None);
            assert_eq!(w.admit(tenant("globex"), "client_tls_failed", t0), None);
        }
        // Another tenant's lines of the same reasons are still written.
        assert_eq!(w.admit(tenant("acme"), "egress_forbidden", t0), Some(0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.admit(tenant("globex"), "egress_forbidden", t1), Some(10));
        assert_eq!(w.admit(tenant("globex"), "client_tls_failed", t1), Some(10));
    }

    #[test]
    fn idle_listeners_are_forgotten_past_the_bound() {
        let mut w = windows();
        let t0 = w.epoch;
        for i in 0..REMEMBERED_TENANTS {
            w.admit(
                LineKey::Listener(&format!("l{i}")),
                "mtls_handshake_refused",
                t0,
            );
        }
        w.admit(tenant("acme"), "rate_limited", t0);
        let t2 = t0 + Duration::from_secs(2);
        w.admit(LineKey::Listener("late"), "mtls_handshake_refused", t2);
        assert_eq!(
            w.by_listener.len(),
            1,
            "only this second's listener is kept"
        );
        assert_eq!(
            w.by_tenant.len(),
            1,
            "the tenants' windows are not the listeners'"
        );
    }

    #[test]
    fn sample_line_writes_the_first_and_counts_the_rest() {
        // A thread of its own: a fresh worker's windows.
        std::thread::spawn(|| {
            let before = suppressed_lines();
            let key = LineKey::Listener("mesh");
            assert_eq!(sample_line(key, "mtls_handshake_refused"), Some(None));
            let written = (0..1000)
                .filter(|_| sample_line(key, "mtls_handshake_refused").is_some())
                .count();
            // At most one more, should the burst straddle a second.
            assert!(written <= 1, "{written}");
            assert!(suppressed_lines() >= before + 999);
        })
        .join()
        .unwrap();
    }
}
