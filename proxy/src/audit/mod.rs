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
//! request ends; when no slot is free, or the audit directory cannot be written, new requests
//! are refused with `audit_unavailable` rather than served unaudited. Health is also kept per
//! tenant: once the caller's tenant is known, a request whose tenant's partition cannot be
//! written is refused ([`AuditSink::admit_tenant`]) while other tenants are served; the writer
//! keeps that tenant's records and writes them once its partition recovers.
//!
//! A reserved slot is a record owed: the sink counts them, so shutdown can wait until every
//! request has recorded before the writer drains its queue ([`AuditSink::all_recorded`]).

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod layout;
pub mod line;
mod lock;
mod record;
pub mod settings;
pub mod stream;
mod tail;
pub mod verify;
mod writer;

pub use record::{
    ApprovalEvent, ApprovalFields, AuditEntry, AuditRecord, Decision as AuditDecision, EventKind,
    McpFields, RunEnd, RunEvent, RunTotals, TunnelFields,
};
pub use settings::{AuditSettings, AuditSpec, AuditStreamSettings, FsyncPolicy};
pub use writer::AuditWriter;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::ids::TenantId;
use crate::metrics::{Metrics, METRICS};
use writer::Health;

/// Handle to the audit queue, cloned into every proxy service.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEntry>,
    health: Arc<Health>,
    owed: Arc<Owed>,
}

/// A reserved place in the audit queue; [`AuditSlot::emit`] fills it without waiting.
#[derive(Debug)]
pub struct AuditSlot {
    permit: mpsc::OwnedPermit<AuditEntry>,
    // Dropped after the record is enqueued (or with an unused slot): one record less owed.
    _owed: OwedRecord,
}

/// Slots reserved and not yet filled or given back: the records still to come.
#[derive(Debug, Default)]
struct Owed {
    count: AtomicUsize,
    /// Woken when the count reaches zero.
    none: Notify,
}

/// One record owed, counted while it lives.
#[derive(Debug)]
struct OwedRecord(Arc<Owed>);

impl OwedRecord {
    fn new(owed: &Arc<Owed>) -> Self {
        owed.count.fetch_add(1, Ordering::AcqRel);
        Self(owed.clone())
    }
}

impl Drop for OwedRecord {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
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
    /// Another process (another proxy) writes the directory.
    #[error(
        "audit directory `{dir}` is in use by another tenant-proxy ({holder}): two proxies writing one directory corrupt each other's chains; give each its own `[audit] dir`"
    )]
    InUse {
        /// The directory.
        dir: String,
        /// Who holds it, as it wrote in the lock file.
        holder: String,
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
        // SECURITY: taken before anything is written (the public key, a torn line cut at
        // start), and held until the writer has written its last checkpoint.
        let lock = lock::DirLock::take(&settings.dir).map_err(|e| match e {
            lock::LockError::Held(holder) => AuditStartError::InUse {
                dir: settings.dir.display().to_string(),
                holder: holder.unwrap_or_else(|| "which did not say who it is".into()),
            },
            lock::LockError::Io(source) => not_writable(source),
        })?;
        let signer = match &settings.signing_key {
            Some(path) => checkpoint::Signer::load(path)?,
            // A key that lives as long as this process: its checkpoints verify against the
            // published public key, or against a key pinned from this start's log.
            None => checkpoint::Signer::generate()?.0,
        };
        signer.publish(&settings.dir).map_err(not_writable)?;
        tracing::info!(key_id = %signer.key_id(), "audit checkpoints signed with this key");
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let health = Arc::new(Health::default());
        METRICS.audit_healthy.set(1);
        let stream = settings
            .stream
            .as_ref()
            .map(stream::StreamSink::new)
            .transpose()
            .map_err(AuditStartError::Stream)?;
        let writer = writer::spawn(settings.clone(), signer, stream, rx, health.clone(), lock)
            .map_err(AuditStartError::Writer)?;
        let owed = Arc::default();
        Ok((Self { tx, health, owed }, writer))
    }

    /// Whether [`Self::start`] could write the audit directory, for `tenant-proxy check`: the
    /// same probe, in the directory or (when it does not exist yet) in the nearest directory
    /// above it, where `start` would create it; the probe file is removed and no directory is
    /// created.
    pub fn check_writable(settings: &AuditSettings) -> Result<(), AuditStartError> {
        writer::check_writable(&settings.dir).map_err(|source| AuditStartError::NotWritable {
            dir: settings.dir.display().to_string(),
            source,
        })
    }

    /// Reserves a slot for this request's record, before its identity is verified (`tenant`
    /// none) or once the caller is known: from the connection alone (a bound listener's, a
    /// tunnel's), or for a refusal before the pipeline (a malformed head with a valid token).
    ///
    /// SECURITY: refuses when the audit directory cannot be written or the queue is full; a
    /// request that cannot be audited is not served. A known tenant whose partition cannot be
    /// written gets no slot either, as [`Self::admit_tenant`] would give it back: a refusal
    /// reserved for a failing tenant would be held by the writer until the partition recovers,
    /// one per refused request, so every slot for a known tenant goes through this check.
    pub fn reserve(&self, tenant: Option<&TenantId>) -> Result<AuditSlot, AuditUnavailable> {
        if !self.health.serving() || tenant.is_some_and(|t| !self.tenant_writable(t)) {
            refused(tenant);
            return Err(AuditUnavailable);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(AuditSlot {
                permit,
                _owed: OwedRecord::new(&self.owed),
            }),
            Err(_) => {
                refused(tenant);
                Err(AuditUnavailable)
            }
        }
    }

    /// Once the request's tenant is known: refuses it when that tenant's partition cannot be
    /// written now, and then gives its slot back (the refusal gets no record: the partition
    /// could not take it, and holding one per refused request would let a tenant fill memory).
    pub fn admit_tenant(
        &self,
        slot: &mut Option<AuditSlot>,
        tenant: &TenantId,
    ) -> Result<(), AuditUnavailable> {
        if self.tenant_writable(tenant) {
            return Ok(());
        }
        *slot = None;
        refused(Some(tenant));
        Err(AuditUnavailable)
    }

    /// [`Self::reserve`] for a record whose tenant is known from the start (run and approval
    /// events, refusals before the pipeline): none when that tenant's partition cannot be
    /// written, as [`Self::admit_tenant`] decides.
    pub fn reserve_for(&self, tenant: &TenantId) -> Result<AuditSlot, AuditUnavailable> {
        self.reserve(Some(tenant))
    }

    /// Whether the sink as a whole can write (readiness): the audit directory takes writes and
    /// a required stream sink is up. One tenant's failing partition does not make it unhealthy.
    pub fn is_healthy(&self) -> bool {
        self.health.serving()
    }

    /// Whether `tenant`'s partition can be written now.
    pub fn tenant_writable(&self, tenant: &TenantId) -> bool {
        !self.health.failing.load().contains(tenant.as_str())
    }

    /// Records owed: slots reserved (requests, tunnels and events in progress) and not yet
    /// filled or given back.
    pub fn owed(&self) -> usize {
        self.owed.count.load(Ordering::Acquire)
    }

    /// Returns once no record is owed: every request that reserved a slot has enqueued its
    /// record (or given the slot back). Shutdown waits on it before the writer drains.
    pub async fn all_recorded(&self) {
        loop {
            let none = self.owed.none.notified();
            tokio::pin!(none);
            // Registered before the count is read, so a drop to zero in between still wakes it.
            none.as_mut().enable();
            if self.owed() == 0 {
                return;
            }
            none.await;
        }
    }

    /// How many tenants' partitions cannot be written now (readiness shows the count, never
    /// which tenants; the metrics name them).
    pub fn failing_partitions(&self) -> usize {
        self.health.failing.load().len()
    }
}

fn refused(tenant: Option<&TenantId>) {
    METRICS
        .audit_refusals
        .with_label_values(&[Metrics::tenant_label(tenant.map(TenantId::as_str))])
        .inc();
}

/// The audit sink (or the tenant's partition) cannot take another record: the request is
/// refused rather than served unaudited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot record this request right now")]
pub struct AuditUnavailable;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every slot reserved for a known tenant goes through the tenant's check: a refusal
    /// recorded before the pipeline (a malformed head on a bound listener, a refused captured
    /// connection) gets no slot while its tenant's partition fails, so the writer holds nothing
    /// for it; other tenants, and callers not yet known, still get theirs.
    #[test]
    fn a_failing_partitions_tenant_gets_no_slot_however_it_is_reserved() {
        let (tx, _rx) = mpsc::channel(8);
        let sink = AuditSink {
            tx,
            health: Arc::new(Health::default()),
            owed: Arc::default(),
        };
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        sink.health
            .failing
            .store(Arc::new(HashSet::from(["acme".to_string()])));
        assert_eq!(sink.reserve(Some(&acme)).err(), Some(AuditUnavailable));
        assert_eq!(sink.reserve_for(&acme).err(), Some(AuditUnavailable));
        assert_eq!(sink.owed(), 0, "no record is owed for the refusal");
        assert!(sink.reserve(Some(&globex)).is_ok());
        let mut unknown = Some(sink.reserve(None).unwrap());
        // Once known to be acme's, the slot is given back.
        assert_eq!(
            sink.admit_tenant(&mut unknown, &acme),
            Err(AuditUnavailable)
        );
        assert!(unknown.is_none());
        assert_eq!(sink.owed(), 0);
        sink.health.failing.store(Arc::new(HashSet::new()));
        assert!(sink.reserve_for(&acme).is_ok());
    }
}
