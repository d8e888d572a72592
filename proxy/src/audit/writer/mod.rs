//! The writer thread: drains the queue in batches, chains each record onto its tenant's log,
//! appends it to the tenant's current file and makes the batch durable per the fsync policy.
//! It is the only code ordering a tenant's records, so it alone assigns `seq` and `prev`.
//!
//! Each tenant's records are written on their own: when a tenant's partition cannot be written
//! the writer keeps that tenant's records (in order, at most [`MAX_HELD_PER_TENANT`]; older ones
//! past that go to the process log as the lines they would have been), refuses that tenant's
//! new requests and retries until the partition recovers, while every other tenant is written
//! and served as usual. Records are never dropped. When the audit directory itself cannot take
//! a write (a full disk), or is no longer the directory this writer locked, every request is
//! refused and nothing is written. A tenant's chain head only advances once the records written
//! are durable, and a failed append is cut back at once to the length the writer last knew
//! durable, so a failed write never leaves part of a record behind.
//!
//! At `checkpoint_interval`, and when the writer stops, each tenant with new durable records
//! gets a signed checkpoint, linked to the tenant's previous checkpoint line: the one this
//! writer wrote last, or after a restart the last one on disk. A tenant whose recovered chain
//! head the last checkpoint on disk does not cover (a crash) gets one when the writer starts,
//! before any request is served (every partition in the directory, idle tenants' included), so
//! records a crash left unsigned do not stay unsigned for longer than an interval. With a Redis
//! Stream sink ([`super::stream`]), durable records are then sent there too.

mod append;
mod clock_watch;
mod disk;
mod health;
mod held;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::chain::{self, ChainHead};
use super::checkpoint::{CheckpointLink, Signer};
use super::layout::{self, FilePos, CHECKPOINTS_FILE};
use super::lock::{DirLock, LockError};
use super::stream::StreamSink;
use super::{AuditEntry, AuditSettings};
use crate::metrics::METRICS;

use clock_watch::{ClockWatch, STEP_SETTLES};
use disk::{append_line, last_checkpoint, recover};
pub(super) use disk::{check_writable, probe_writable};
use health::mono_ms;
pub(super) use health::Health;
use held::{Held, MAX_HELD_PER_TENANT};

const MAX_BATCH: usize = 1024;
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How often an idle writer looks at the stop flag and the checkpoint clock.
const TICK: Duration = Duration::from_millis(100);
/// Attempts at writing the last batches once stopping, before giving up on a failing disk.
const RETRIES_WHEN_STOPPING: u32 = 10;
/// How long the writer goes on trying to send the stream's last lines once stopping.
const STREAM_EXIT_TIME: Duration = Duration::from_secs(3);
/// The running writer thread; [`AuditWriter::shutdown`] drains the queue, writes the final
/// checkpoints and waits for it.
#[derive(Debug)]
pub struct AuditWriter {
    stop: Arc<AtomicBool>,
    /// The thread owns the directory's lock: released once it has finished, never before.
    handle: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Writes every queued record and a checkpoint for each tenant with new records, then
    /// returns. Call it once no request can enqueue any more.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        if self.handle.join().is_err() {
            tracing::error!("the audit writer panicked");
        }
    }
}

pub(super) fn spawn(
    settings: AuditSettings,
    signer: Signer,
    stream: Option<StreamSink>,
    rx: mpsc::Receiver<AuditEntry>,
    health: Arc<Health>,
    lock: DirLock,
) -> io::Result<AuditWriter> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = Writer::new(settings, signer, stream, health, stop.clone(), lock);
    // SECURITY: before any request is served, every partition's chain head a crash left
    // unsigned is signed, idle tenants' included.
    writer.recover_all(SystemTime::now());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let handle = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(&runtime, rx))?;
    Ok(AuditWriter { stop, handle })
}

/// Whether the writer, holding one record, waits up to the flush interval for more before it
/// writes: so that a busy proxy writes in large batches. Not while stopping, and not when a
/// full batch is queued already: a writer that slept on a full queue would cap how many
/// records a second it takes (1,024 a flush interval), and the queue is every tenant's, so one
/// tenant's flood of refused requests, each audited, would fill it and get every tenant's
/// requests refused `audit_unavailable`.
fn waits_for_more(stopping: bool, queued: usize) -> bool {
    !stopping && queued + 1 < MAX_BATCH
}

/// One tenant's chain and where its next record goes.
#[derive(Debug, Clone)]
struct Cursor {
    /// The file appended to.
    pos: FilePos,
    /// Its length as last written (durable per the policy).
    len: u64,
    /// The chain head.
    head: ChainHead,
    /// The file holding the head record.
    head_pos: FilePos,
}

struct TenantLog {
    cursor: Cursor,
    /// Handle on `cursor.pos`, when open.
    file: Option<(FilePos, File)>,
    /// `seq` of the tenant's last checkpoint (on disk at recovery, then written by this writer).
    checkpointed: u64,
    /// SHA-256 of the tenant's last checkpoint line, which the next one links to; `None` when
    /// unknown (a failed append): read again from disk before the next checkpoint.
    last_checkpoint: Option<[u8; 32]>,
    /// The file changed underneath the writer (removed, renamed, written by another process):
    /// where to append is read from the disk again before the next write. The chain head is
    /// kept.
    reread: bool,
}

struct Writer {
    settings: AuditSettings,
    signer: Signer,
    logs: HashMap<String, TenantLog>,
    stream: Option<StreamSink>,
    /// Tenants whose partition failed, with the records they wait to write.
    held: BTreeMap<String, Held>,
    /// Most records held for one tenant ([`MAX_HELD_PER_TENANT`]).
    max_held: usize,
    /// Whether the audit directory itself took a write at the last probe (and is the one
    /// locked). While it does not, nothing is written and every request is refused.
    root_ok: bool,
    /// No new probe of the directory before this instant.
    next_probe: Instant,
    /// The audit directory's lock, held until the writer ends.
    lock: DirLock,
    /// Whether the key is published in the directory locked (again once it is taken anew).
    key_published: bool,
    /// No new look at whether the lock still holds the directory before this instant.
    next_lock_check: Instant,
    /// What requests see.
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn new(
        settings: AuditSettings,
        signer: Signer,
        stream: Option<StreamSink>,
        health: Arc<Health>,
        stop: Arc<AtomicBool>,
        lock: DirLock,
    ) -> Self {
        Self {
            settings,
            signer,
            logs: HashMap::new(),
            stream,
            held: BTreeMap::new(),
            max_held: MAX_HELD_PER_TENANT,
            root_ok: true,
            next_probe: Instant::now(),
            lock,
            key_published: true,
            next_lock_check: Instant::now() + RETRY_DELAY,
            health,
            stop,
        }
    }

    fn run(mut self, runtime: &tokio::runtime::Runtime, mut rx: mpsc::Receiver<AuditEntry>) {
        // SECURITY: however this thread ends (a panic included), the sink stops taking
        // requests: nothing would write their records.
        let _refuse_when_gone = RefuseOnExit(self.health.clone());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_checkpoint = Instant::now();
        let mut clock = ClockWatch::new();
        let mut signing_after_step: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let first = if stopping {
                // Drain what is queued without waiting for more.
                rx.try_recv().ok()
            } else {
                match runtime.block_on(async { tokio::time::timeout(TICK, rx.recv()).await }) {
                    Ok(Some(r)) => Some(r),
                    // Every sender is gone: nothing more can come.
                    Ok(None) => break,
                    Err(_elapsed) => None,
                }
            };
            match first {
                Some(r) => {
                    batch.push(r);
                    if waits_for_more(stopping, rx.len()) {
                        std::thread::sleep(
                            self.settings.flush_interval.min(Duration::from_millis(50)),
                        );
                    }
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Some(step) = clock.stepped() {
                        tracing::warn!(
                            step = %step,
                            "the wall clock stepped; every chain is signed up to here"
                        );
                        signing_after_step = Some(Instant::now() + STEP_SETTLES);
                    }
                    let n = batch.len();
                    self.write(std::mem::take(&mut batch), SystemTime::now());
                    // Records on either side of a step of the wall clock (NTP, a VM resumed)
                    // would be one unsigned tail spanning the step, which `audit verify` reads
                    // as checkpoints removed: every batch written for a moment after a step is
                    // signed at once, those stamped before it included (they are still in the
                    // queue when the step is seen, or on their way into it).
                    if signing_after_step.is_some_and(|until| Instant::now() < until) {
                        self.checkpoint_all();
                        last_checkpoint = Instant::now();
                    } else {
                        signing_after_step = None;
                    }
                    METRICS.audit_queue_depth.sub(n as i64);
                }
                None if stopping => break,
                None => {}
            }
            self.retry_held(Instant::now());
            if last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                self.checkpoint_all();
                last_checkpoint = Instant::now();
            }
            if self.stream.as_ref().is_some_and(|s| !s.healthy()) {
                self.flush_stream();
            }
        }
        self.write_held_before_exit();
        if !self.root_ok {
            tracing::warn!("the final checkpoints are not written: the audit directory cannot be written (the next start signs the chain heads it recovers)");
        }
        self.checkpoint_all();
        self.flush_stream_before_exit();
        tracing::info!("audit writer stopped");
    }

    /// Writes a batch, tenant by tenant: a tenant whose partition fails keeps its records (in
    /// order, with any it held already) and is retried later, and the others are written as
    /// usual, so one tenant's trouble stays its own.
    fn write(&mut self, batch: Vec<AuditEntry>, now: SystemTime) {
        // Per tenant, in order of first appearance; each tenant's records in queue order.
        let mut groups: Vec<(String, Vec<AuditEntry>)> = Vec::new();
        for record in batch {
            match groups.iter_mut().find(|(t, _)| t == record.tenant()) {
                Some((_, records)) => records.push(record),
                None => groups.push((record.tenant().to_string(), vec![record])),
            }
        }
        let mut failed = false;
        for (tenant, records) in groups {
            // Behind the records it holds already: a chain is written in order. And nothing is
            // written while the audit directory fails (SECURITY: or is no longer the directory
            // this writer locked, which another proxy may write now).
            if self.held.contains_key(&tenant) || !self.root_ok {
                self.keep(&tenant, records);
                continue;
            }
            match self.write_tenant(&tenant, &records, now, false) {
                Ok(lines) => self.written(lines, records.len()),
                Err(e) => {
                    failed = true;
                    self.hold(tenant, records, &e);
                }
            }
        }
        if failed {
            // One partition failing is that tenant's trouble; the directory itself failing
            // (a full disk) is everyone's.
            self.probe_root();
        }
        self.flush_stream();
    }

    /// Counts written records and hands their lines to the stream sink.
    fn written(&mut self, lines: Vec<(String, Vec<u8>)>, records: usize) {
        METRICS.audit_records_written.inc_by(records as u64);
        if let Some(stream) = &mut self.stream {
            stream.enqueue(lines);
        }
    }

    /// The stream's last sends, as [`Self::write_held_before_exit`] makes the partitions': tried
    /// again a few times past any backoff (Redis may just be back), then each line still unsent
    /// goes to the process log as an `unsent audit stream record`. The files hold them, but
    /// where the stream is the durable copy (a pod's files on an `emptyDir`) the files go with
    /// the pod: one `flush` inside a backoff dropped them without a word.
    ///
    /// The attempts start within [`STREAM_EXIT_TIME`] (one may take the stream's connect and
    /// send timeouts past it): the process must end within the orchestrator's termination
    /// budget, or the lines it would log are lost with it.
    fn flush_stream_before_exit(&mut self) {
        let deadline = Instant::now() + STREAM_EXIT_TIME;
        let mut first = true;
        while self.stream.as_ref().is_some_and(StreamSink::has_pending) {
            if !first {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(RETRY_DELAY.min(left));
            }
            first = false;
            if let Some(stream) = &mut self.stream {
                stream.retry_now();
            }
            self.flush_stream();
        }
        let Some(stream) = &mut self.stream else {
            return;
        };
        let unsent = stream.take_pending();
        if unsent.is_empty() {
            return;
        }
        tracing::error!(records = unsent.len(), "audit records could not be sent to the audit stream before shutdown (the partitions' files hold them); each follows as an `unsent audit stream record`, in order");
        for (tenant, line) in unsent {
            let line = String::from_utf8_lossy(&line);
            tracing::error!(%tenant, %line, "unsent audit stream record");
        }
    }

    /// Whether the audit directory itself takes a write (a probe file, written and removed),
    /// and is still the directory this writer locked.
    fn probe_root(&mut self) {
        let ok = self.keep_lock() && probe_writable(&self.settings.dir).is_ok();
        if ok != self.root_ok {
            if ok {
                tracing::warn!("audit directory writable again");
            } else {
                tracing::error!(
                    "audit directory not writable; refusing every request until it recovers"
                );
            }
        }
        self.root_ok = ok;
        self.next_probe = Instant::now() + RETRY_DELAY;
        self.publish_health();
    }

    /// Whether this writer holds the audit directory's lock. The lock is on the directory
    /// taken at start: once that directory is removed or replaced (a cleanup of the volume) the
    /// lock holds nothing anyone sees, and a second proxy could start on the new one.
    ///
    /// SECURITY: the writer then takes the new directory's lock (creating it, as at start) and
    /// publishes its key there again, so `audit verify` finds it; when another process holds
    /// it, false: the sink fails (every request refused, nothing written) rather than two
    /// writers sharing the directory. Tried again at each probe.
    fn keep_lock(&mut self) -> bool {
        let dir = &self.settings.dir;
        if !self.lock.holds(dir) {
            let taken = layout::create_dirs(dir, dir)
                .map_err(LockError::Io)
                .and_then(|()| DirLock::take(dir));
            match taken {
                Ok(lock) => {
                    tracing::warn!(dir = %dir.display(), "the audit directory was removed or replaced; its lock is taken again and the checkpoint key published again");
                    self.lock = lock;
                    self.key_published = false;
                }
                Err(e) => {
                    if self.root_ok {
                        let why = match e {
                            LockError::Held(holder) => format!(
                                "in use by another tenant-proxy ({})",
                                holder.as_deref().unwrap_or("which did not say who it is")
                            ),
                            LockError::Io(e) => format!("cannot be locked: {e}"),
                        };
                        tracing::error!(dir = %dir.display(), "the audit directory was removed or replaced and the new one is {why}; refusing every request");
                    }
                    return false;
                }
            }
        }
        if !self.key_published {
            self.key_published = self.signer.publish(dir).is_ok();
        }
        self.key_published
    }

    /// Sends durable records to the stream sink, if any, and updates health.
    fn flush_stream(&mut self) {
        if let Some(stream) = &mut self.stream {
            let was_healthy = stream.healthy();
            // Requests see how long a required send has been blocking (see `Health`).
            let watched = stream.is_required() && stream.has_pending();
            if watched {
                self.health
                    .stream_send_since
                    .store(mono_ms(), Ordering::Release);
            }
            let sent = stream.flush();
            if watched {
                self.health.stream_send_since.store(0, Ordering::Release);
            }
            if let Err(e) = sent {
                METRICS.audit_write_errors.inc();
                if was_healthy {
                    tracing::error!(error = %e, "cannot write the audit stream");
                }
            }
        }
        self.publish_health();
    }

    /// SECURITY: requests are served only while every required sink can write, and a tenant's
    /// requests only while its partition can.
    fn publish_health(&self) {
        let ok = self.root_ok && self.stream.as_ref().is_none_or(StreamSink::healthy);
        METRICS.audit_healthy.set(i64::from(ok));
        if self.health.sink.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::warn!("audit sink recovered");
            } else {
                tracing::error!("audit sink failing; refusing new requests until it recovers");
            }
        }
        let failing = self.health.failing.load();
        if failing.len() != self.held.len() || self.held.keys().any(|t| !failing.contains(t)) {
            self.health
                .failing
                .store(Arc::new(self.held.keys().cloned().collect()));
        }
    }

    /// The tenant's log, recovered from its newest file at start ([`Self::recover_all`]) or on
    /// first use. The recovered head is signed at once when the last checkpoint on disk does not
    /// cover it (the previous process crashed) or states another interval than this writer's (so
    /// `audit verify` judges the records this writer leaves unsigned by its interval).
    fn log(&mut self, tenant: &str, today: FilePos) -> io::Result<&mut TenantLog> {
        if !self.logs.contains_key(tenant) {
            let tenant_dir = self.settings.dir.join(tenant);
            let cursor = recover(&tenant_dir, today)?;
            let interval_ms = interval_ms(self.settings.checkpoint_interval);
            let (checkpointed, last_checkpoint, announce) = match last_checkpoint(
                &tenant_dir.join(CHECKPOINTS_FILE),
            ) {
                Ok(Some(last)) => (
                    last.seq,
                    Some(last.hash),
                    last.interval_ms != Some(interval_ms),
                ),
                Ok(None) => (0, Some(chain::GENESIS), false),
                Err(e) => {
                    // Retried before the next checkpoint; records are written meanwhile.
                    tracing::error!(error = %e, %tenant, "cannot read the last audit checkpoint");
                    (0, None, false)
                }
            };
            if checkpointed > cursor.head.seq {
                // Records a checkpoint signed are gone (a file removed, a record cut short by
                // another process, a disk restored from an older copy): the chain goes on from
                // what is left, and `audit verify` reports the gap; it must not go unnoticed.
                tracing::error!(
                    %tenant,
                    records_end_at = cursor.head.seq,
                    checkpoint_signed = checkpointed,
                    "the audit partition's records end before its last checkpoint: records it signed were removed or cut since (`tenant-proxy audit verify` reports which); new records go on from the last one left"
                );
            }
            // Signed up to the head at most: a checkpoint past it (records removed, or a line
            // planted with a larger seq: the writer reads it unverified) held every later
            // checkpoint back until the chain reached it, for ever at a seq near 2^64.
            let checkpointed = checkpointed.min(cursor.head.seq);
            let mut log = TenantLog {
                cursor,
                file: None,
                checkpointed,
                last_checkpoint,
                reread: false,
            };
            if announce && log.cursor.head.seq == checkpointed {
                // Signs the same head again, with this writer's interval.
                log.checkpointed = checkpointed.saturating_sub(1);
            }
            // (A failure is logged; the next checkpoint tries again.)
            let _ = checkpoint_log(
                &self.signer,
                &self.settings,
                tenant,
                &mut log,
                SystemTime::now(),
            );
            self.logs.insert(tenant.to_string(), log);
        }
        self.logs
            .get_mut(tenant)
            .ok_or_else(|| io::Error::other("tenant log vanished"))
    }

    /// Recovers every tenant's partition in the audit directory, signing each recovered chain
    /// head the last checkpoint on disk does not cover (the previous process crashed), so the
    /// records a crash left unsigned are signed at start, not when their tenant next sends a
    /// request. A partition that cannot be recovered is logged and tried again on its tenant's
    /// first record (which it then holds, refusing the tenant's requests).
    fn recover_all(&mut self, now: SystemTime) {
        let tenants = match super::verify::tenants(&self.settings.dir) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the audit partitions to recover them");
                return;
            }
        };
        let today = FilePos::day_of(now);
        for tenant in tenants {
            if let Err(e) = self.log(tenant.as_str(), today) {
                tracing::error!(error = %e, %tenant, "cannot recover the audit partition; retried on the tenant's next record");
            }
        }
    }

    /// Signs and appends a checkpoint for every tenant whose chain moved since its last one.
    ///
    /// SECURITY: a partition that cannot take its checkpoint fails as one that cannot take a
    /// record does: its tenant's requests are refused, and the retry writes the checkpoint
    /// before they are served again. Nothing is written while the audit directory fails.
    fn checkpoint_all(&mut self) {
        if !self.root_ok {
            return;
        }
        let now = SystemTime::now();
        let mut failed = Vec::new();
        for (tenant, log) in &mut self.logs {
            // A partition that took nothing for a whole interval lets go of its file: one open
            // descriptor per tenant ever served (a removed tenant's, a tenant that stopped) is
            // not kept for the life of the process; the next record opens it again.
            if log.cursor.head.seq <= log.checkpointed {
                log.file = None;
            }
            if checkpoint_log(&self.signer, &self.settings, tenant, log, now).is_err() {
                failed.push(tenant.clone());
            }
        }
        for tenant in failed {
            self.keep(&tenant, Vec::new());
            if let Some(held) = self.held.get_mut(&tenant) {
                held.checkpoint = true;
            }
        }
        self.publish_health();
    }
}

/// Signs `log`'s chain head, linked to the tenant's last checkpoint, and appends it, unless the
/// last checkpoint already covers it. A failure is logged (and returned); the next attempt
/// reads the link again from disk.
fn checkpoint_log(
    signer: &Signer,
    settings: &AuditSettings,
    tenant: &str,
    log: &mut TenantLog,
    now: SystemTime,
) -> io::Result<()> {
    let head = log.cursor.head;
    if head.seq == 0 || head.seq <= log.checkpointed {
        return Ok(());
    }
    let path = settings.dir.join(tenant).join(CHECKPOINTS_FILE);
    let prev = match log.last_checkpoint {
        Some(prev) => Ok(prev),
        None => last_checkpoint(&path).map(|last| last.map_or(chain::GENESIS, |l| l.hash)),
    };
    let written = prev.and_then(|prev| {
        let checkpoint = signer.checkpoint(
            tenant,
            head.seq,
            &head.hash,
            log.cursor.head_pos.rel(),
            crate::clock::rfc3339(now),
            CheckpointLink {
                prev,
                interval: settings.checkpoint_interval,
            },
        );
        let line = serde_json::to_vec(&checkpoint)?;
        append_line(&path, &line, settings.fsync)?;
        Ok(chain::line_hash(&line))
    });
    match written {
        Ok(hash) => {
            log.checkpointed = head.seq;
            log.last_checkpoint = Some(hash);
            Ok(())
        }
        Err(e) => {
            // The line may or may not be on disk: the next one links to what the file says.
            log.last_checkpoint = None;
            METRICS.audit_write_errors.inc();
            tracing::error!(error = %e, tenant = %tenant, "cannot write the audit checkpoint");
            Err(e)
        }
    }
}

fn interval_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
}

/// Marks the sink unhealthy when dropped.
struct RefuseOnExit(Arc<Health>);

impl Drop for RefuseOnExit {
    fn drop(&mut self) {
        self.0.sink.store(false, Ordering::Release);
        METRICS.audit_healthy.set(0);
    }
}
