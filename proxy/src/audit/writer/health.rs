//! What requests see of the writer: whether the sink takes writes, which tenants' partitions
//! fail, and whether a required stream send has been hanging; read on every request without a
//! lock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// What requests see of the writer, published by it and read on every request without a lock.
#[derive(Debug)]
pub(in crate::audit) struct Health {
    /// The sink as a whole can write: the audit directory takes writes (and, when required,
    /// the Redis Stream does). False refuses every request before its tenant is known.
    pub(in crate::audit) sink: AtomicBool,
    /// Tenants whose partition cannot be written now: only their requests are refused.
    pub(in crate::audit) failing: ArcSwap<HashSet<String>>,
    /// When the send to a required Redis Stream in progress began ([`mono_ms`]; 0: none). A
    /// hung Redis blocks the writer inside that send until its timeout, unable to say so; a
    /// send older than [`STREAM_STALL`] refuses requests meanwhile, as a failed one would.
    pub(in crate::audit) stream_send_since: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            sink: AtomicBool::new(true),
            failing: ArcSwap::from_pointee(HashSet::new()),
            stream_send_since: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// How long a send to a required Redis Stream may take before requests are refused while it
/// lasts (sends take milliseconds; the send's own timeout is longer).
pub(super) const STREAM_STALL: Duration = Duration::from_secs(1);

/// Milliseconds since the first call, on the monotonic clock; never 0.
pub(super) fn mono_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

impl Health {
    /// Whether requests may be served: the sink can write, and no required stream send has
    /// been hanging for longer than [`STREAM_STALL`]. An atomic load or two.
    pub(in crate::audit) fn serving(&self) -> bool {
        if !self.sink.load(Ordering::Acquire) {
            return false;
        }
        let since = self.stream_send_since.load(Ordering::Acquire);
        since == 0 || mono_ms().saturating_sub(since) <= STREAM_STALL.as_millis() as u64
    }
}
