//! The audit trail: one canonical record per request, allowed or refused, in a per-tenant
//! partition (`DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl`).
//!
//! Records leave the hot path through a bounded queue. A request reserves its queue slot before
//! anything else happens ([`AuditSink::reserve`]), so a record can always be enqueued when the
//! request ends; when no slot is free, or the writer cannot write, new requests are refused with
//! `audit_unavailable` rather than served unaudited.

mod record;
mod writer;

pub use record::{AuditRecord, Decision as AuditDecision, McpFields, TunnelFields};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::AuditSettings;
use crate::error::Deny;
use crate::metrics::METRICS;

/// Handle to the audit queue, cloned into every proxy service.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    healthy: Arc<AtomicBool>,
}

/// A reserved place in the audit queue; [`AuditSlot::emit`] fills it without waiting.
#[derive(Debug)]
pub struct AuditSlot {
    permit: mpsc::OwnedPermit<AuditRecord>,
}

impl AuditSlot {
    /// Enqueues the record in the reserved slot.
    pub fn emit(self, record: AuditRecord) {
        self.permit.send(record);
        METRICS.audit_queue_depth.inc();
    }
}

/// Why the audit sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("audit directory `{dir}` is not writable: {source}")]
pub struct AuditStartError {
    dir: String,
    #[source]
    source: std::io::Error,
}

impl AuditSink {
    /// Checks the directory is writable and starts the writer thread.
    pub fn start(
        settings: &AuditSettings,
    ) -> Result<(Self, std::thread::JoinHandle<()>), AuditStartError> {
        writer::probe_writable(&settings.dir).map_err(|source| AuditStartError {
            dir: settings.dir.display().to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let healthy = Arc::new(AtomicBool::new(true));
        let handle = writer::spawn(settings.clone(), rx, healthy.clone());
        Ok((Self { tx, healthy }, handle))
    }

    /// Reserves a slot for this request's record.
    ///
    /// SECURITY: refuses when the writer is failing or the queue is full; a request that cannot
    /// be audited is not served.
    pub fn reserve(&self) -> Result<AuditSlot, Deny> {
        if !self.healthy.load(Ordering::Acquire) {
            METRICS.audit_refusals.inc();
            return Err(Deny::AuditUnavailable);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(AuditSlot { permit }),
            Err(_) => {
                METRICS.audit_refusals.inc();
                Err(Deny::AuditUnavailable)
            }
        }
    }

    /// Whether the writer is currently able to write (readiness).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}
