//! The audit trail: one canonical record per request, allowed or refused, in a per-tenant
//! partition (`DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl`, rotated by size, see [`layout`]).
//!
//! Each tenant's records form a hash chain ([`chain`]) and the chain head is signed
//! periodically ([`checkpoint`]), so that altering, reordering, deleting or truncating records
//! is detectable by `tenant-proxy audit verify` ([`verify`]); [`export`] hands one tenant its
//! own records with the checkpoints that prove them. Optionally ([`stream`]) durable records
//! also go to a Redis Stream per tenant.
//!
//! Records leave the hot path through a bounded queue. A request reserves its queue slot before
//! anything else happens ([`AuditSink::reserve`]), so a record can always be enqueued when the
//! request ends; when no slot is free, or the writer cannot write, new requests are refused with
//! `audit_unavailable` rather than served unaudited.

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod layout;
mod record;
pub mod stream;
mod tail;
pub mod verify;
mod writer;

pub use record::{
    AuditEntry, AuditRecord, Decision as AuditDecision, EventKind, McpFields, RunEnd, RunEvent,
    RunTotals, TunnelFields,
};
pub use writer::AuditWriter;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::AuditSettings;
use crate::error::Deny;
use crate::metrics::METRICS;

/// Handle to the audit queue, cloned into every proxy service.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEntry>,
    healthy: Arc<AtomicBool>,
}

/// A reserved place in the audit queue; [`AuditSlot::emit`] fills it without waiting.
#[derive(Debug)]
pub struct AuditSlot {
    permit: mpsc::OwnedPermit<AuditEntry>,
}

impl AuditSlot {
    /// Enqueues the record in the reserved slot.
    pub fn emit(self, record: impl Into<AuditEntry>) {
        self.permit.send(record.into());
        METRICS.audit_queue_depth.inc();
    }
}

/// Why the audit sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    /// The directory cannot be written.
    #[error("audit directory `{dir}` is not writable: {source}")]
    NotWritable {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint signing key could not be loaded or made.
    #[error(transparent)]
    Key(#[from] checkpoint::KeyError),
    /// The Redis Stream sink's URL is not usable.
    #[error("audit.redis_url: {0}")]
    Stream(#[source] redis::RedisError),
    /// The writer thread could not start.
    #[error("cannot start the audit writer: {0}")]
    Writer(#[source] std::io::Error),
}

impl AuditSink {
    /// Checks the directory is writable, loads (or, without `signing_key`, generates) the
    /// checkpoint key, publishes its public key in `DIR/_keys/` and starts the writer thread.
    pub fn start(settings: &AuditSettings) -> Result<(Self, AuditWriter), AuditStartError> {
        let not_writable = |source| AuditStartError::NotWritable {
            dir: settings.dir.display().to_string(),
            source,
        };
        writer::probe_writable(&settings.dir).map_err(not_writable)?;
        let signer = match &settings.signing_key {
            Some(path) => checkpoint::Signer::load(path)?,
            // A key that lives as long as this process: its checkpoints verify against the
            // published public key, or against a key pinned from this start's log.
            None => checkpoint::Signer::generate()?.0,
        };
        signer.publish(&settings.dir).map_err(not_writable)?;
        tracing::info!(key_id = %signer.key_id(), "audit checkpoints signed with this key");
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let healthy = Arc::new(AtomicBool::new(true));
        METRICS.audit_healthy.set(1);
        let stream = settings
            .stream
            .as_ref()
            .map(stream::StreamSink::new)
            .transpose()
            .map_err(AuditStartError::Stream)?;
        let writer = writer::spawn(settings.clone(), signer, stream, rx, healthy.clone())
            .map_err(AuditStartError::Writer)?;
        Ok((Self { tx, healthy }, writer))
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
