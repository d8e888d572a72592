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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::chain::{self, ChainHead};
use super::checkpoint::{Checkpoint, CheckpointLink, Signer};
use super::layout::{self, FilePos, CHECKPOINTS_FILE};
use super::lock::{DirLock, LockError};
use super::stream::StreamSink;
use super::{tail, AuditEntry};
use super::{AuditSettings, FsyncPolicy};
use crate::metrics::METRICS;

const MAX_BATCH: usize = 1024;
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How often an idle writer looks at the stop flag and the checkpoint clock.
const TICK: Duration = Duration::from_millis(100);
/// Attempts at writing the last batches once stopping, before giving up on a failing disk.
const RETRIES_WHEN_STOPPING: u32 = 10;
/// How long the writer goes on trying to send the stream's last lines once stopping.
const STREAM_EXIT_TIME: Duration = Duration::from_secs(3);
/// Most records the writer keeps in memory for one tenant whose partition cannot be written.
/// Its requests are refused meanwhile, so only requests already admitted add to them (their
/// refusals reserve no record); past the bound the oldest go to the process log as `unwritten
/// audit record` lines, chained on, so a partition that stays failing costs bounded memory and
/// loses nothing. About 2.5 KiB each: 25 MiB per failing tenant at most.
const MAX_HELD_PER_TENANT: usize = 10_000;
/// Records a retry writes first, before the rest of what a tenant holds: a partition still
/// failing costs each retry this many records sealed, not the whole backlog.
const RETRY_FIRST: usize = 16;

pub(super) fn probe_writable(dir: &Path) -> io::Result<()> {
    layout::create_dirs(dir)?;
    probe_file(&dir.join(".write-probe"))
}

/// [`probe_writable`] without creating anything that stays: the probe goes into `dir`, or into
/// the nearest existing directory above it (where `probe_writable` would create `dir`), under a
/// name of this process's own, so that it never meets a running proxy's probe.
pub(super) fn check_writable(dir: &Path) -> io::Result<()> {
    let existing = dir
        .ancestors()
        .find(|d| d.as_os_str().is_empty() || d.exists())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(dir);
    if !existing.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("`{}` is not a directory", existing.display()),
        ));
    }
    probe_file(&existing.join(format!(".check-probe-{}", std::process::id())))
}

fn probe_file(probe: &Path) -> io::Result<()> {
    let written = File::create(probe).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_data()
    });
    let removed = fs::remove_file(probe);
    written.and(removed)
}

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

/// What requests see of the writer, published by it and read on every request without a lock.
#[derive(Debug)]
pub(super) struct Health {
    /// The sink as a whole can write: the audit directory takes writes (and, when required,
    /// the Redis Stream does). False refuses every request before its tenant is known.
    pub(super) sink: AtomicBool,
    /// Tenants whose partition cannot be written now: only their requests are refused.
    pub(super) failing: ArcSwap<HashSet<String>>,
    /// When the send to a required Redis Stream in progress began ([`mono_ms`]; 0: none). A
    /// hung Redis blocks the writer inside that send until its timeout, unable to say so; a
    /// send older than [`STREAM_STALL`] refuses requests meanwhile, as a failed one would.
    pub(super) stream_send_since: std::sync::atomic::AtomicU64,
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

/// How long after a step of the wall clock every batch is signed as soon as it is written.
const STEP_SETTLES: Duration = Duration::from_secs(1);

/// Tells when the wall clock stepped: the time it moved since the last look is not the time
/// the monotonic clock moved, by more than [`ClockWatch::STEP`].
struct ClockWatch {
    wall: SystemTime,
    mono: Instant,
}

impl ClockWatch {
    /// A difference below this is drift, or the time between the two reads.
    const STEP: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// How far the wall clock stepped (`+1h`, `-10m`) since the last call, if it did.
    fn stepped(&mut self) -> Option<String> {
        self.step_to(SystemTime::now(), Instant::now())
    }

    /// [`Self::stepped`], the clocks reading `wall` and `mono` now.
    fn step_to(&mut self, wall: SystemTime, mono: Instant) -> Option<String> {
        let nanos = |d: Duration| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
        let moved = match wall.duration_since(self.wall) {
            Ok(ahead) => nanos(ahead),
            Err(back) => -nanos(back.duration()),
        };
        let step = moved - nanos(mono.duration_since(self.mono));
        (self.wall, self.mono) = (wall, mono);
        let size = Duration::from_secs(u64::try_from(step.unsigned_abs() / 1_000_000_000).ok()?);
        (size > Self::STEP).then(|| {
            let sign = if step > 0 { '+' } else { '-' };
            format!("{sign}{}", humantime::format_duration(size))
        })
    }
}

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
    pub(super) fn serving(&self) -> bool {
        if !self.sink.load(Ordering::Acquire) {
            return false;
        }
        let since = self.stream_send_since.load(Ordering::Acquire);
        since == 0 || mono_ms().saturating_sub(since) <= STREAM_STALL.as_millis() as u64
    }
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

/// What a tenant whose partition failed waits to write, kept until it is durable.
struct Held {
    /// Its records, oldest first (at most the writer's `max_held`).
    records: VecDeque<AuditEntry>,
    /// Its checkpoint could not be written: written again before the tenant is served.
    checkpoint: bool,
    /// The head of the records logged as unwritten past the bound, when the writer has no log
    /// for the tenant (its partition never recovered) to move the head of.
    after: Option<ChainHead>,
    /// No new attempt before this instant.
    next_try: Instant,
}

impl Held {
    fn new(next_try: Instant) -> Self {
        Self {
            records: VecDeque::new(),
            checkpoint: false,
            after: None,
            next_try,
        }
    }
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

    /// Keeps `records` of `tenant`, whose write failed, and refuses its new requests.
    fn hold(&mut self, tenant: String, records: Vec<AuditEntry>, error: &io::Error) {
        METRICS.audit_write_errors.inc();
        tracing::error!(%tenant, %error, "audit write failed for this tenant's partition; refusing its new requests until it recovers");
        // Drop the cached handle: the file may have been removed or the disk remounted.
        if let Some(log) = self.logs.get_mut(&tenant) {
            log.file = None;
        }
        self.keep(&tenant, records);
        self.publish_health();
    }

    /// Adds `records` behind those `tenant` holds (its partition failing from now on, when it
    /// held none), keeping at most `max_held`.
    ///
    /// SECURITY: past the bound the oldest records go to the process log as `unwritten audit
    /// record` lines, chained on from the partition's head, and the head moves past them, so
    /// the records written once the partition recovers go on after them: memory stays bounded,
    /// nothing is dropped, and `audit verify` shows the logged ones missing (`deleted`) until
    /// they are put back. The tenant's requests are refused all along.
    fn keep(&mut self, tenant: &str, records: Vec<AuditEntry>) {
        let held = self
            .held
            .entry(tenant.to_string())
            .or_insert_with(|| Held::new(Instant::now() + RETRY_DELAY));
        held.records.extend(records);
        if held.records.len() > self.max_held {
            let over = held.records.len() - self.max_held;
            let oldest: Vec<AuditEntry> = held.records.drain(..over).collect();
            let log = self.logs.get_mut(tenant);
            // (Without a log the partition's head was never read: the lines go on from the
            // last ones logged, or from genesis, as at shutdown.)
            let head = log
                .as_ref()
                .map(|l| l.cursor.head)
                .or(held.after)
                .unwrap_or(ChainHead::EMPTY);
            tracing::error!(%tenant, records = oldest.len(), held = self.max_held, first_seq = head.seq + 1, "audit partition failing past the records it may hold; the oldest follow as `unwritten audit record` lines, in order, to put back in the partition before the record after them");
            let head = log_unwritten(tenant, head, &oldest);
            match log {
                Some(log) => {
                    log.cursor.head = head;
                    // Not on disk: no checkpoint signs them (the next one signs the record
                    // written after them).
                    log.checkpointed = log.checkpointed.max(head.seq);
                }
                None => held.after = Some(head),
            }
        }
        METRICS
            .audit_partition_failing
            .with_label_values(&[tenant])
            .set(1);
        METRICS
            .audit_held_records
            .with_label_values(&[tenant])
            .set(held.records.len() as i64);
    }

    /// Tries again what every tenant whose retry is due holds; a tenant whose records (and
    /// checkpoint) are all written takes requests again.
    fn retry_held(&mut self, now: Instant) {
        if self.root_ok && now >= self.next_lock_check {
            self.next_lock_check = now + RETRY_DELAY;
            if !self.lock.holds(&self.settings.dir) {
                self.probe_root();
            }
        }
        if !self.root_ok && now >= self.next_probe {
            self.probe_root();
        }
        if !self.root_ok {
            // SECURITY: nothing is written into a directory that fails or is not this
            // writer's; the records wait.
            return;
        }
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.next_try <= now)
            .map(|(t, _)| t.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for tenant in due {
            let Some(mut held) = self.held.remove(&tenant) else {
                continue;
            };
            let before = held.records.len();
            match self.write_held(&tenant, &mut held) {
                Ok(()) => {
                    tracing::warn!(%tenant, records = before, "audit partition recovered; its held records are written");
                    METRICS
                        .audit_partition_failing
                        .with_label_values(&[&tenant])
                        .set(0);
                    METRICS
                        .audit_held_records
                        .with_label_values(&[&tenant])
                        .set(0);
                }
                Err(_) => {
                    METRICS.audit_write_errors.inc();
                    if let Some(log) = self.logs.get_mut(&tenant) {
                        log.file = None;
                    }
                    METRICS
                        .audit_held_records
                        .with_label_values(&[&tenant])
                        .set(held.records.len() as i64);
                    held.next_try = now + RETRY_DELAY;
                    self.held.insert(tenant, held);
                }
            }
        }
        self.flush_stream();
    }

    /// Writes what `tenant` holds, oldest first: a few records, then the rest in batches, each
    /// one durable before the next (and dropped from `held` once it is), then its checkpoint
    /// when that failed. A partition still failing costs the first few records, not the whole
    /// backlog.
    fn write_held(&mut self, tenant: &str, held: &mut Held) -> io::Result<()> {
        if let Some(after) = held.after {
            // Records were logged as unwritten before the partition's head was known: the
            // chain goes on after them.
            let log = self.log(tenant, FilePos::day_of(SystemTime::now()))?;
            log.cursor.head = after;
            log.checkpointed = log.checkpointed.max(after.seq);
            held.after = None;
        }
        let mut chunk = RETRY_FIRST;
        while !held.records.is_empty() {
            let n = held.records.len().min(chunk);
            let records = &held.records.make_contiguous()[..n];
            let lines = self.write_tenant(tenant, records, SystemTime::now(), true)?;
            self.written(lines, n);
            held.records.drain(..n);
            chunk = MAX_BATCH;
        }
        if held.checkpoint {
            if let Some(log) = self.logs.get_mut(tenant) {
                checkpoint_log(&self.signer, &self.settings, tenant, log, SystemTime::now())?;
            }
            held.checkpoint = false;
        }
        Ok(())
    }

    /// Once stopping: a last few attempts at the held records before giving up on them.
    fn write_held_before_exit(&mut self) {
        for attempt in 0..RETRIES_WHEN_STOPPING {
            if self.held.is_empty() {
                return;
            }
            if attempt > 0 {
                std::thread::sleep(RETRY_DELAY);
            }
            let now = Instant::now();
            for held in self.held.values_mut() {
                held.next_try = now;
            }
            self.retry_held(now);
        }
        // Nothing is lost: each record goes to the process log as the line it would have been,
        // chained on from the partition's head, ready to append once the partition is mended.
        // (Every failed append was cut back, so the partition's newest file ends with a whole
        // record.)
        let tenants: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| !h.records.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        for tenant in tenants {
            let Some(held) = self.held.get(&tenant) else {
                continue;
            };
            tracing::error!(%tenant, records = held.records.len(), "audit records could not be written before shutdown; each follows as an `unwritten audit record`, in order, to append to the partition's newest file");
            log_unwritten(&tenant, self.held_head(&tenant), held.records.iter());
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

    /// The chain head `tenant`'s held records go on from: the partition's (moved past any
    /// records logged as unwritten), from genesis when the writer never read it.
    fn held_head(&self, tenant: &str) -> ChainHead {
        self.logs
            .get(tenant)
            .map(|l| l.cursor.head)
            .or_else(|| self.held.get(tenant).and_then(|h| h.after))
            .unwrap_or(ChainHead::EMPTY)
    }

    /// The held records of every tenant as the lines they would have been written as: chained
    /// from the partition's head when it is known (from genesis otherwise).
    #[cfg(test)]
    fn unwritten_lines(&self) -> Vec<(String, Vec<serde_json::Result<String>>)> {
        self.held
            .iter()
            .map(|(tenant, held)| {
                let mut head = self.held_head(tenant);
                let lines = held
                    .records
                    .iter()
                    .map(|record| {
                        let (line, next) = chain::seal(record, head)?;
                        head = next;
                        Ok(String::from_utf8_lossy(&line).into_owned())
                    })
                    .collect();
                (tenant.clone(), lines)
            })
            .collect()
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
            let taken = layout::create_dirs(dir)
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

    /// Writes `records` of `tenant` (`retrying`: an earlier attempt may have left part of
    /// them); returns each record's line once all are durable. The tenant's chain head only
    /// advances when the whole write succeeded.
    fn write_tenant(
        &mut self,
        tenant: &str,
        records: &[AuditEntry],
        now: SystemTime,
        retrying: bool,
    ) -> io::Result<Vec<(String, Vec<u8>)>> {
        let today = FilePos::day_of(now);
        let tenant_dir = self.settings.dir.join(tenant);
        let log = self.log(tenant, today)?;
        if log.reread {
            // The file changed underneath the writer: where to append is read from the disk
            // again, and the chain goes on from the head this writer knows, so `audit verify`
            // shows what went with the file (a chain started afresh from what is left would
            // hide it).
            let disk = recover(&tenant_dir, today)?;
            log.cursor.pos = disk.pos;
            log.cursor.len = disk.len;
            log.file = None;
            log.reread = false;
        }
        let mut cursor = log.cursor.clone();
        let mut written = Vec::with_capacity(records.len());
        let mut segments: Vec<Segment> = Vec::new();
        for record in records {
            let (mut line, head) = chain::seal(record, cursor.head)?;
            if self.stream.is_some() {
                written.push((tenant.to_string(), line.clone()));
            }
            line.push(b'\n');
            let line_len = line.len() as u64;
            // Files follow the writer's clock, never going back to an earlier file, so the
            // order of the paths stays the order of the chain.
            if today > cursor.pos {
                cursor.pos = today;
                cursor.len = 0;
            }
            if cursor.len > 0 && cursor.len + line_len > self.settings.max_file_bytes {
                cursor.pos = cursor.pos.next_part();
                cursor.len = 0;
            }
            match segments.last_mut() {
                Some(s) if s.pos == cursor.pos => s.bytes.extend_from_slice(&line),
                _ => segments.push(Segment {
                    pos: cursor.pos,
                    start: cursor.len,
                    bytes: line,
                }),
            }
            cursor.len += line_len;
            cursor.head = head;
            cursor.head_pos = cursor.pos;
        }
        self.write_segments(tenant, &segments, retrying)?;
        // Everything is written: the chain head advances.
        if let Some(log) = self.logs.get_mut(tenant) {
            log.cursor = cursor;
        }
        Ok(written)
    }

    /// Appends one tenant's segments, each at the length the writer last left its file.
    fn write_segments(
        &mut self,
        tenant: &str,
        segments: &[Segment],
        retrying: bool,
    ) -> io::Result<()> {
        let tenant_dir = self.settings.dir.join(tenant);
        let fsync = self.settings.fsync;
        let Some(log) = self.logs.get_mut(tenant) else {
            return Err(io::Error::other("no log for the tenant"));
        };
        for (i, segment) in segments.iter().enumerate() {
            let path = segment.pos.path(&tenant_dir);
            let file = open_at(&mut log.file, &tenant_dir, segment.pos)?;
            let meta = file.metadata()?;
            // SECURITY: the file open must still be the partition's file at its path. One
            // removed (a cleanup job, a deleted partition or audit directory), renamed or moved
            // aside (`mv`, the partition's directory with it), or whose name is gone while
            // another link keeps it (`cp -al` then `rm`) would take every later record with it,
            // unseen. The partition fails instead (its requests are refused while it does), and
            // the retry writes into the file now at the path, going on from the chain's head,
            // so `audit verify` shows what is missing.
            if !is_at(&path, &meta) {
                log.file = None;
                log.reread = true;
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "`{}` was removed, moved or replaced while the audit writer had it open",
                        path.display()
                    ),
                ));
            }
            let len = meta.len();
            if len != segment.start {
                if retrying && len > segment.start {
                    // A failed attempt left part of these records: cut it, so a retried
                    // write is not written twice.
                    file.set_len(segment.start)?;
                } else {
                    // SECURITY: someone else wrote or truncated the file; never cut or pad
                    // what is not ours. Where to append is read again before the next attempt.
                    log.file = None;
                    log.reread = true;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "`{}` is {len} bytes but the audit writer left it at {}: another process changed it",
                            path.display(),
                            segment.start
                        ),
                    ));
                }
            }
            let appended = file.write_all(&segment.bytes).and_then(|()| {
                if fsync == FsyncPolicy::Batch {
                    file.sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = appended {
                // A failed append (a full disk) may have left part of a record: every file
                // this write appended to is cut back to the length it had (shrinking takes no
                // space), so the partition ends with a whole record even if no retry follows
                // (the `unwritten audit record` lines logged at shutdown append to it).
                let cut = file.set_len(segment.start).and_then(|()| {
                    segments[..i].iter().try_for_each(|done| {
                        OpenOptions::new()
                            .write(true)
                            .open(done.pos.path(&tenant_dir))?
                            .set_len(done.start)
                    })
                });
                if let Err(cut) = cut {
                    tracing::error!(%tenant, error = %cut, "cannot cut a failed audit write back; the next attempt cuts it");
                }
                log.file = None;
                return Err(e);
            }
        }
        Ok(())
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

/// Logs `records` of `tenant` at `ERROR` as the lines they would have been (`unwritten audit
/// record`), chained on from `head`, in order; returns the head after them.
fn log_unwritten<'a>(
    tenant: &str,
    mut head: ChainHead,
    records: impl IntoIterator<Item = &'a AuditEntry>,
) -> ChainHead {
    for record in records {
        match chain::seal(record, head) {
            Ok((line, next)) => {
                head = next;
                let line = String::from_utf8_lossy(&line);
                tracing::error!(%tenant, %line, "unwritten audit record");
            }
            Err(e) => {
                tracing::error!(%tenant, error = %e, "unwritten audit record cannot be serialized")
            }
        }
    }
    head
}

/// Whether `path` names the very file `open` is (its device and inode): not when the path is
/// gone or names another file.
fn is_at(path: &Path, open: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).is_ok_and(|at| at.dev() == open.dev() && at.ino() == open.ino())
}

fn interval_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
}

/// The last complete line of a tenant's checkpoints file.
struct LastCheckpoint {
    /// Its `seq` (0 when the line is not a checkpoint).
    seq: u64,
    /// Its line's hash, which the next checkpoint links to.
    hash: [u8; 32],
    /// The interval it states (none for a legacy checkpoint).
    interval_ms: Option<u64>,
}

/// The last complete line of a tenant's checkpoints file; `None` when there is none. A line
/// that is not a checkpoint still gives its hash (the next checkpoint links to what is there;
/// `audit verify` reports the line).
fn last_checkpoint(path: &Path) -> io::Result<Option<LastCheckpoint>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let complete = tail::complete_len(&file)?;
    Ok(tail::last_line(&file, complete)?.map(|line| {
        let parsed = serde_json::from_slice::<Checkpoint>(&line).ok();
        LastCheckpoint {
            seq: parsed.as_ref().map_or(0, |c| c.seq),
            hash: chain::line_hash(&line),
            interval_ms: parsed.and_then(|c| c.interval_ms),
        }
    }))
}

/// Marks the sink unhealthy when dropped.
struct RefuseOnExit(Arc<Health>);

impl Drop for RefuseOnExit {
    fn drop(&mut self) {
        self.0.sink.store(false, Ordering::Release);
        METRICS.audit_healthy.set(0);
    }
}

/// Bytes for one file, to be written at offset `start`.
struct Segment {
    pos: FilePos,
    start: u64,
    bytes: Vec<u8>,
}

fn open_at<'a>(
    slot: &'a mut Option<(FilePos, File)>,
    tenant_dir: &Path,
    pos: FilePos,
) -> io::Result<&'a mut File> {
    if slot.as_ref().map(|(p, _)| *p) != Some(pos) {
        let path = pos.path(tenant_dir);
        if let Some(parent) = path.parent() {
            layout::create_dirs(parent)?;
        }
        let file = layout::file_options()
            .create(true)
            .append(true)
            .open(&path)?;
        *slot = Some((pos, file));
    }
    match slot {
        Some((_, f)) => Ok(f),
        None => Err(io::Error::other("no audit file open")),
    }
}

/// Where a tenant's chain stands on disk: the newest file (a torn last line cut off) and the
/// last complete record, which may be in an earlier file when the newest holds none.
///
/// SECURITY: a last record that is not a chained record makes recovery fail, and the writer
/// keeps refusing, rather than start a chain that cannot be verified.
fn recover(tenant_dir: &Path, today: FilePos) -> io::Result<Cursor> {
    let files = layout::record_files(tenant_dir)?;
    let Some(&newest) = files.last() else {
        return Ok(Cursor {
            pos: today,
            len: 0,
            head: ChainHead::EMPTY,
            head_pos: today,
        });
    };
    let newest_path = newest.path(tenant_dir);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&newest_path)?;
    let len = keep_torn_tail(&file, &newest_path)?;
    let mut head = ChainHead::EMPTY;
    let mut head_pos = newest;
    for &pos in files.iter().rev() {
        let f = File::open(pos.path(tenant_dir))?;
        let complete = tail::complete_len(&f)?;
        if let Some(line) = tail::last_line(&f, complete)? {
            let link = chain::parse_link(&line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the last audit record of `{}` is not a chained record",
                        pos.path(tenant_dir).display()
                    ),
                )
            })?;
            head = ChainHead {
                seq: link.seq,
                hash: chain::line_hash(&line),
            };
            head_pos = pos;
            break;
        }
    }
    Ok(Cursor {
        pos: newest,
        len,
        head,
        head_pos,
    })
}

/// Cuts a torn last line off a record file at recovery (a write the previous process did not
/// finish, or bytes another process left), keeping its bytes in `<file>.torn` beside it: what
/// the proxy removes from an audit partition is moved, never destroyed, and the cut is logged.
/// (`audit verify` and the writer read only `.jsonl` files.) Returns the file's length after.
fn keep_torn_tail(file: &File, path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let complete = tail::complete_len(file)?;
    let len = file.metadata()?.len();
    if complete == len {
        return Ok(len);
    }
    let mut kept_path = path.as_os_str().to_owned();
    kept_path.push(".torn");
    let mut kept = layout::file_options()
        .create(true)
        .append(true)
        .open(&kept_path)?;
    let mut at = complete;
    let mut buf = vec![0u8; 64 * 1024];
    while at < len {
        let want = usize::try_from(len - at).map_or(buf.len(), |n| n.min(buf.len()));
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        kept.write_all(&buf[..n])?;
        at += n as u64;
    }
    kept.write_all(b"\n")?;
    kept.sync_data()?;
    tracing::warn!(
        file = %path.display(),
        bytes = len - complete,
        kept = %std::path::Path::new(&kept_path).display(),
        "cut an unfinished last line off an audit file (the previous process stopped mid-write, or another process wrote to it); its bytes are kept beside it"
    );
    file.set_len(complete)?;
    file.sync_data()?;
    Ok(complete)
}

/// Appends `line` and its newline to `path`, after cutting a torn last line; a failed append is
/// cut back. The partition's directory is created when it is gone (moved aside, removed), as a
/// record's write creates it.
fn append_line(path: &PathBuf, line: &[u8], fsync: FsyncPolicy) -> io::Result<()> {
    let line = [line, b"\n"].concat();
    if let Some(parent) = path.parent() {
        layout::create_dirs(parent)?;
    }
    let mut file = layout::file_options()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = tail::cut_torn_tail(&file)?;
    let appended = file.write_all(&line).and_then(|()| {
        if fsync == FsyncPolicy::Batch {
            file.sync_data()
        } else {
            Ok(())
        }
    });
    if appended.is_err() {
        // Shrinking takes no space: the file ends with a whole line even if nothing follows.
        let _ = file.set_len(len);
    }
    appended
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::chain::tests::record;
    use crate::audit::verify::{verify_tenant, Keys};

    fn settings(dir: &Path, max_file_bytes: u64) -> AuditSettings {
        AuditSettings {
            dir: dir.to_path_buf(),
            queue_capacity: 16,
            fsync: FsyncPolicy::Batch,
            flush_interval: Duration::from_millis(1),
            max_file_bytes,
            checkpoint_interval: Duration::from_secs(60),
            signing_key: None,
            stream: None,
        }
    }

    #[test]
    fn the_writer_waits_for_more_records_only_while_a_batch_is_not_full() {
        assert!(waits_for_more(false, 0));
        assert!(waits_for_more(false, MAX_BATCH - 2));
        // With the record in hand, a full batch.
        assert!(!waits_for_more(false, MAX_BATCH - 1));
        assert!(!waits_for_more(false, 10 * MAX_BATCH));
        assert!(!waits_for_more(true, 0));
    }

    fn writer(dir: &Path, max_file_bytes: u64) -> Writer {
        let (signer, _) = Signer::generate().unwrap();
        signer.publish(dir).unwrap();
        Writer::new(
            settings(dir, max_file_bytes),
            signer,
            None,
            Arc::new(Health::default()),
            Arc::new(AtomicBool::new(false)),
            DirLock::take(dir).unwrap(),
        )
    }

    impl Writer {
        /// Writes a one-tenant batch as a first attempt.
        fn write_batch(&mut self, batch: &[AuditEntry], now: SystemTime) -> io::Result<()> {
            let tenant = batch[0].tenant().to_string();
            self.write_tenant(&tenant, batch, now, false).map(|_| ())
        }
    }

    fn at(date: &str) -> SystemTime {
        let t = time::OffsetDateTime::parse(
            &format!("{date}T12:00:00Z"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        t.into()
    }

    fn batch(tenant: &str, n: usize) -> Vec<AuditEntry> {
        (0..n)
            .map(|_| record(tenant, "2026-11-28T12:00:00Z").into())
            .collect()
    }

    #[test]
    fn chains_continue_across_restarts_days_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2_000);
        w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
        w.write_batch(&batch("globex", 1), at("2026-11-28"))
            .unwrap();
        w.checkpoint_all();
        drop(w);
        // A restart on the next day: the chain goes on in a new file.
        let mut w = writer(dir.path(), 2_000);
        w.write_batch(&batch("acme", 10), at("2026-11-29")).unwrap();
        w.checkpoint_all();
        let files: Vec<_> = layout::record_files(&dir.path().join("acme"))
            .unwrap()
            .into_iter()
            .map(FilePos::rel)
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        assert_eq!(files[0], "2026/11/28.jsonl");
        assert_eq!(files[1], "2026/11/29.jsonl");
        assert_eq!(files[2], "2026/11/29_000001.jsonl");
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!(report.problem, None);
        assert_eq!((report.records, report.checkpoints), (13, 2));
        let report = verify_tenant(dir.path(), "globex", &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (1, None));
    }

    /// The trail (records, checkpoints, the lock, the published key, their directories) is
    /// created for the proxy's user and group only, whatever the umask lets other users read.
    #[test]
    fn other_users_of_the_host_cannot_read_the_trail() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("audit");
        let mut w = writer(&root, 2_000);
        w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        let mut seen = 0;
        let mut walk = vec![root.clone()];
        while let Some(at) = walk.pop() {
            for entry in fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o007, 0, "{} is {:o}", path.display(), mode & 0o777);
                seen += 1;
                if path.is_dir() {
                    walk.push(path);
                }
            }
        }
        assert!(
            seen >= 7,
            "records, checkpoints, lock, key and their directories: {seen}"
        );
    }

    #[test]
    fn a_step_of_the_wall_clock_is_told_from_time_passing() {
        let mut watch = ClockWatch::new();
        let (wall, mono) = (watch.wall, watch.mono);
        let at = |secs: u64| mono + Duration::from_secs(secs);
        // A minute passed on both clocks: no step.
        assert_eq!(watch.step_to(wall + Duration::from_secs(60), at(60)), None);
        // An hour forward in one second.
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(3_661), at(61))
                .as_deref(),
            Some("+1h")
        );
        // Back by an hour, and back by less than a second passed.
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(62), at(62))
                .as_deref(),
            Some("-1h")
        );
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(52), at(92))
                .as_deref(),
            Some("-40s")
        );
        // A few seconds either way is drift.
        assert_eq!(watch.step_to(wall + Duration::from_secs(84), at(120)), None);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        drop(w);
        let path = dir.path().join("acme/2026/11/28.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"prev\":\"ab").unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (4, None));
        // The bytes cut off are moved beside the file, never destroyed.
        let kept = fs::read(dir.path().join("acme/2026/11/28.jsonl.torn")).unwrap();
        assert_eq!(kept, b"{\"seq\":3,\"prev\":\"ab\n");
        // A second torn tail is kept after the first.
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":5,").unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        let kept = fs::read(dir.path().join("acme/2026/11/28.jsonl.torn")).unwrap();
        assert_eq!(kept, b"{\"seq\":3,\"prev\":\"ab\n{\"seq\":5,\n");
    }

    #[test]
    fn a_retried_batch_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        // A failed attempt left part of a batch behind.
        let path = dir.path().join("acme/2026/11/28.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"prev\":\"half a line\"}\n{\"se")
            .unwrap();
        w.write_tenant("acme", &batch("acme", 1), at("2026-11-28"), true)
            .unwrap();
        w.checkpoint_all();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (3, None));
    }

    #[test]
    fn a_file_changed_by_another_process_is_not_cut_and_the_chain_goes_on_visibly() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
        // Someone else removes the last record.
        let path = dir.path().join("acme/2026/11/28.jsonl");
        let text = fs::read_to_string(&path).unwrap();
        let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        fs::write(&path, &kept).unwrap();
        let err = w
            .write_batch(&batch("acme", 1), at("2026-11-28"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            kept,
            "nothing padded or cut"
        );
        // The next attempt appends where the file now ends, and goes on from the chain's head
        // the writer knows: the record removed shows (a chain going on from what is left would
        // hide it).
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
        assert_eq!(last_seq(dir.path(), "acme"), 4);
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        let problem = report.problem.unwrap();
        assert_eq!(problem.reason, crate::audit::verify::Problem::Deleted);
        assert_eq!(problem.detail, "seq 3 to 3 are missing");
    }

    #[test]
    fn an_unchained_last_record_fails_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme/2026/11/28.jsonl");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"{\"tenant\":\"acme\"}\n").unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        let err = w
            .write_batch(&batch("acme", 1), at("2026-11-28"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    fn request_ids(dir: &Path, tenant: &str) -> Vec<String> {
        layout::record_files(&dir.join(tenant))
            .unwrap()
            .into_iter()
            .flat_map(|pos| {
                let text = fs::read_to_string(pos.path(&dir.join(tenant))).unwrap();
                text.lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["request_id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn named(tenant: &str, id: &str) -> AuditEntry {
        let mut r = record(tenant, "2026-11-28T12:00:00Z");
        r.request_id = id.into();
        r.into()
    }

    #[test]
    fn one_tenants_unwritable_partition_holds_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        // acme's partition cannot be created: a file is where its directory goes.
        fs::write(dir.path().join("acme"), b"not a directory").unwrap();
        w.write(
            vec![
                named("acme", "a1"),
                named("globex", "g1"),
                named("acme", "a2"),
            ],
            at("2026-11-28"),
        );
        assert!(
            w.health.sink.load(Ordering::Acquire),
            "the sink as a whole still writes"
        );
        assert_eq!(
            **w.health.failing.load(),
            HashSet::from(["acme".to_string()])
        );
        assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
        // More for both: globex goes on, acme's wait behind the ones it holds.
        w.write(
            vec![named("globex", "g2"), named("acme", "a3")],
            at("2026-11-28"),
        );
        assert_eq!(request_ids(dir.path(), "globex"), ["g1", "g2"]);
        // Not due yet: nothing is tried.
        w.retry_held(Instant::now());
        assert_eq!(w.held["acme"].records.len(), 3);
        // The partition recovers: everything held is written, in order, and acme is served.
        fs::remove_file(dir.path().join("acme")).unwrap();
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.held.is_empty());
        assert!(w.health.failing.load().is_empty());
        assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2", "a3"]);
        w.checkpoint_all();
        for tenant in ["acme", "globex"] {
            let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
            assert_eq!(report.problem, None, "{tenant}");
        }
    }

    /// A partition removed while its file is open (a cleanup job): the next write notices, the
    /// tenant's requests are refused until the retry writes into a new file, and that file goes
    /// on from the chain's head, so verification shows the records that were removed.
    #[test]
    fn a_partition_removed_underneath_the_writer_fails_then_goes_on_visibly() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write(
            vec![named("acme", "a1"), named("acme", "a2")],
            at("2026-11-28"),
        );
        fs::remove_dir_all(dir.path().join("acme")).unwrap();
        w.write(vec![named("acme", "a3")], at("2026-11-28"));
        assert_eq!(
            **w.health.failing.load(),
            HashSet::from(["acme".to_string()]),
            "nothing is written into the removed file"
        );
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.held.is_empty());
        assert!(w.health.failing.load().is_empty());
        assert_eq!(request_ids(dir.path(), "acme"), ["a3"]);
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert!(report.problem.is_some(), "the removal shows: {report:?}");
        // A file removed alone (not its directory) is noticed the same way.
        let files = layout::record_files(&dir.path().join("acme")).unwrap();
        fs::remove_file(files[0].path(&dir.path().join("acme"))).unwrap();
        w.write(vec![named("acme", "a4")], at("2026-11-28"));
        assert!(!w.health.failing.load().is_empty());
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert_eq!(request_ids(dir.path(), "acme"), ["a4"]);
    }

    /// Records a partition could not take before shutdown are not lost: they are logged as the
    /// lines they would have been, and appended to the mended partition they verify.
    #[test]
    fn records_unwritten_at_shutdown_are_logged_as_their_chained_lines() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        let mut w = writer(dir.path(), 1 << 20);
        w.write(vec![named("acme", "a1")], at("2026-11-28"));
        let file = layout::record_files(&acme).unwrap()[0].path(&acme);
        let kept = fs::read(&file).unwrap();
        // The partition goes, and a file stands where it was: nothing can be written there.
        fs::remove_dir_all(&acme).unwrap();
        fs::write(&acme, b"in the way").unwrap();
        w.write(
            vec![named("acme", "a2"), named("acme", "a3")],
            at("2026-11-28"),
        );
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert_eq!(w.held["acme"].records.len(), 2);
        let unwritten = w.unwritten_lines();
        assert_eq!(unwritten.len(), 1);
        let lines: Vec<String> = unwritten[0]
            .1
            .iter()
            .map(|l| l.as_ref().unwrap().clone())
            .collect();
        assert_eq!(lines.len(), 2);
        // Mended by hand: the partition back, the logged lines appended.
        fs::remove_file(&acme).unwrap();
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        let mut mended = kept;
        for line in &lines {
            mended.extend_from_slice(line.as_bytes());
            mended.push(b'\n');
        }
        fs::write(&file, mended).unwrap();
        assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2", "a3"]);
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!(
            (report.records, report.problem.as_ref()),
            (3, None),
            "{report:?}"
        );
    }

    /// The `unwritten audit record` lines `f` logs, in order (the `line` field of each).
    fn logged_unwritten(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer({
                let out = out.clone();
                move || out.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["fields"]["message"] == "unwritten audit record")
            .map(|v| v["fields"]["line"].as_str().unwrap().to_string())
            .collect()
    }

    fn seq_of(line: &str) -> u64 {
        chain::parse_link(line.as_bytes())
            .unwrap_or_else(|| panic!("not a record: {line}"))
            .seq
    }

    /// The `seq` of `tenant`'s last record on disk.
    fn last_seq(dir: &Path, tenant: &str) -> u64 {
        let files = layout::record_files(&dir.join(tenant)).unwrap();
        let text = fs::read_to_string(files.last().unwrap().path(&dir.join(tenant))).unwrap();
        seq_of(text.lines().last().unwrap())
    }

    /// A tenant whose partition stays failing costs bounded memory: past `max_held` the oldest
    /// records go to the log as the lines they would have been, chained on; once the partition
    /// is back the chain goes on after them, so `audit verify` shows them missing until they
    /// are put back, and with them back the partition verifies.
    #[test]
    fn a_failing_partition_holds_a_bounded_number_of_records_and_logs_the_rest() {
        // A partition with a record already (the writer knows its head), and one never written
        // (it does not).
        for known in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let acme = dir.path().join("acme");
            let mut w = writer(dir.path(), 1 << 20);
            w.max_held = 4;
            let first = if known {
                w.write(vec![named("acme", "a0")], at("2026-11-28"));
                1
            } else {
                0
            };
            let kept = fs::read(acme.join("2026/11/28.jsonl")).ok();
            // The partition goes, and a file stands where it was: nothing can be written there.
            let _ = fs::remove_dir_all(&acme);
            fs::write(&acme, b"in the way").unwrap();
            let mut retry_at = Instant::now();
            let logged = logged_unwritten(|| {
                for i in 0..5 {
                    w.write(
                        vec![
                            named("acme", &format!("a{}", 2 * i + 1)),
                            named("acme", &format!("a{}", 2 * i + 2)),
                        ],
                        at("2026-11-28"),
                    );
                    assert!(w.held["acme"].records.len() <= 4, "the bound holds");
                    retry_at += 2 * RETRY_DELAY;
                    w.retry_held(retry_at);
                    assert!(w.held["acme"].records.len() <= 4);
                }
            });
            assert_eq!(w.held["acme"].records.len(), 4);
            assert!(w.health.failing.load().contains("acme"), "still refused");
            // The six oldest went to the log, chained on from the partition's head.
            let seqs: Vec<u64> = logged.iter().map(|l| seq_of(l)).collect();
            assert_eq!(seqs, (first + 1..=first + 6).collect::<Vec<_>>(), "{known}");
            // The partition back: the four held are written after them, the chain going on.
            fs::remove_file(&acme).unwrap();
            if let Some(kept) = &kept {
                fs::create_dir_all(acme.join("2026/11")).unwrap();
                fs::write(acme.join("2026/11/28.jsonl"), kept).unwrap();
            }
            w.retry_held(retry_at + 2 * RETRY_DELAY);
            assert!(w.held.is_empty());
            assert!(w.health.failing.load().is_empty());
            let ids = request_ids(dir.path(), "acme");
            assert_eq!(&ids[ids.len() - 4..], ["a7", "a8", "a9", "a10"]);
            assert_eq!(last_seq(dir.path(), "acme"), first + 10);
            w.checkpoint_all();
            let keys = Keys::published(dir.path()).into();
            let problem = verify_tenant(dir.path(), "acme", &keys).problem.unwrap();
            assert_eq!(problem.reason, crate::audit::verify::Problem::Deleted);
            assert!(
                problem.detail.starts_with(&format!(
                    "seq {} to {} are missing",
                    first + 1,
                    first + 6
                )),
                "{problem:?}"
            );
            // The logged lines put back where they belong (here: before the records written
            // on the retry's day), the partition verifies.
            let at = acme.join("2026/11/28.jsonl");
            let mut mended = kept.unwrap_or_default();
            for line in &logged {
                mended.extend_from_slice(line.as_bytes());
                mended.push(b'\n');
            }
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(&at, mended).unwrap();
            let report = verify_tenant(dir.path(), "acme", &keys);
            assert_eq!(
                (report.records, report.problem),
                (first + 10, None),
                "{known}"
            );
        }
    }

    /// A retry writes what a tenant holds a few records first, then the rest in batches, each
    /// durable before the next: a partition that fails again partway keeps what was written
    /// (and a partition still failing costs a retry those few records, not the backlog).
    #[test]
    fn a_retry_writes_the_held_records_a_batch_at_a_time_keeping_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        let mut w = writer(dir.path(), 1 << 20);
        // Every record's line is as long (ids of one length, seq below 100) give or take a
        // digit: the first RETRY_FIRST fit in today's file, the next one rotates into a part
        // that cannot be made (a directory is in the way).
        let line = chain::seal(&named("acme", "r00"), ChainHead::EMPTY)
            .unwrap()
            .0;
        let len = line.len() as u64 + 1;
        w.settings.max_file_bytes = RETRY_FIRST as u64 * (len + 1) + len / 2;
        fs::write(&acme, b"in the way").unwrap();
        let records: Vec<AuditEntry> = (0..40)
            .map(|i| named("acme", &format!("r{i:02}")))
            .collect();
        w.write(records, SystemTime::now());
        assert_eq!(w.held["acme"].records.len(), 40);
        fs::remove_file(&acme).unwrap();
        let today = FilePos::day_of(SystemTime::now());
        fs::create_dir_all(today.next_part().path(&acme)).unwrap();
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert_eq!(
            w.held["acme"].records.len(),
            40 - RETRY_FIRST,
            "progress is kept"
        );
        assert_eq!(request_ids(dir.path(), "acme").len(), RETRY_FIRST);
        assert!(w.health.failing.load().contains("acme"));
        fs::remove_dir(today.next_part().path(&acme)).unwrap();
        w.retry_held(Instant::now() + 3 * RETRY_DELAY);
        assert!(w.held.is_empty());
        let ids = request_ids(dir.path(), "acme");
        assert_eq!(ids, (0..40).map(|i| format!("r{i:02}")).collect::<Vec<_>>());
        w.checkpoint_all();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (40, None));
    }

    /// A partition file that leaves its path while open (renamed, moved aside with its
    /// directory, or unlinked while a snapshot's hard link keeps it) is not written on: the
    /// partition fails, then goes on in a new file from the chain's head, visibly.
    #[test]
    fn a_partition_file_moved_or_unlinked_while_open_is_not_written_on() {
        for how in ["rename", "hard link then rm", "directory moved aside"] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = writer(dir.path(), 1 << 20);
            w.write(
                vec![named("acme", "a1"), named("acme", "a2")],
                at("2026-11-28"),
            );
            let path = dir.path().join("acme/2026/11/28.jsonl");
            let elsewhere = match how {
                "rename" => {
                    let to = dir.path().join("acme/2026/11/28.jsonl.old");
                    fs::rename(&path, &to).unwrap();
                    to
                }
                "hard link then rm" => {
                    let to = dir.path().join("snapshot.jsonl");
                    fs::hard_link(&path, &to).unwrap();
                    fs::remove_file(&path).unwrap();
                    to
                }
                _ => {
                    fs::rename(dir.path().join("acme"), dir.path().join("acme-archived")).unwrap();
                    dir.path().join("acme-archived/2026/11/28.jsonl")
                }
            };
            w.write(vec![named("acme", "a3")], at("2026-11-28"));
            assert_eq!(
                **w.health.failing.load(),
                HashSet::from(["acme".to_string()]),
                "{how}: the partition fails"
            );
            assert_eq!(
                fs::read_to_string(&elsewhere).unwrap().lines().count(),
                2,
                "{how}: nothing written into the file that left"
            );
            w.retry_held(Instant::now() + RETRY_DELAY);
            assert!(w.held.is_empty(), "{how}");
            assert_eq!(request_ids(dir.path(), "acme"), ["a3"], "{how}");
            assert_eq!(last_seq(dir.path(), "acme"), 3, "{how}: the chain goes on");
            w.checkpoint_all();
            let problem = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into())
                .problem
                .unwrap();
            assert_eq!(
                (problem.reason, problem.detail.as_str()),
                (
                    crate::audit::verify::Problem::Deleted,
                    "seq 1 to 2 are missing"
                ),
                "{how}"
            );
        }
    }

    /// A checkpoint that cannot be written fails the partition as a record that cannot does:
    /// the tenant is refused until the retry writes it. One whose partition's directory was
    /// moved aside is written into the directory made anew, as a record would be.
    #[test]
    fn a_checkpoint_that_cannot_be_written_fails_the_partition_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write(vec![named("acme", "a1")], at("2026-11-28"));
        let checkpoints = dir.path().join("acme").join(CHECKPOINTS_FILE);
        fs::create_dir(&checkpoints).unwrap();
        w.checkpoint_all();
        assert_eq!(
            **w.health.failing.load(),
            HashSet::from(["acme".to_string()])
        );
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.health.failing.load().contains("acme"), "still failing");
        fs::remove_dir(&checkpoints).unwrap();
        w.retry_held(Instant::now() + 3 * RETRY_DELAY);
        assert!(w.health.failing.load().is_empty());
        assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 1);

        // The whole partition moved aside: the checkpoint goes into the directory made anew.
        w.write(vec![named("acme", "a2")], at("2026-11-28"));
        fs::rename(dir.path().join("acme"), dir.path().join("acme-archived")).unwrap();
        w.checkpoint_all();
        assert!(w.health.failing.load().is_empty());
        assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 1);
    }

    /// A partition deleted before the writer opened its file (the tenant sent nothing since
    /// the start) goes on from the chain's head the writer recovered, as one deleted while its
    /// file was open does: `audit verify` shows the records deleted, not a fresh chain.
    #[test]
    fn a_partition_deleted_before_its_file_was_opened_goes_on_from_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 5), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        drop(w);
        let mut w = writer(dir.path(), 1 << 20);
        w.recover_all(at("2026-11-28"));
        fs::remove_dir_all(dir.path().join("acme")).unwrap();
        w.write(vec![named("acme", "a6")], at("2026-11-28"));
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.held.is_empty());
        assert_eq!(request_ids(dir.path(), "acme"), ["a6"]);
        assert_eq!(last_seq(dir.path(), "acme"), 6);
        w.checkpoint_all();
        let problem = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into())
            .problem
            .unwrap();
        assert_eq!(
            (problem.reason, problem.detail.as_str()),
            (
                crate::audit::verify::Problem::Deleted,
                "seq 1 to 5 are missing"
            )
        );
    }

    /// The audit directory removed while the writer runs: the writer locks the directory made
    /// anew (so no second proxy can start on it) and publishes its key there again; when
    /// another process locked the new one first, the writer refuses everything and writes
    /// nothing there until it is free.
    #[test]
    fn a_removed_audit_directory_is_locked_again_or_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("audit");
        fs::create_dir(&dir).unwrap();
        let mut w = writer(&dir, 1 << 20);
        let key = dir
            .join(layout::KEYS_DIR)
            .join(format!("{}.pub", w.signer.key_id()));
        w.write(vec![named("acme", "a1")], at("2026-11-28"));
        // Removed while idle: the writer notices within a retry.
        fs::remove_dir_all(&dir).unwrap();
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(
            matches!(DirLock::take(&dir), Err(LockError::Held(_))),
            "the directory made anew is this writer's"
        );
        assert!(key.exists(), "the key is published again");
        assert!(w.health.serving());
        w.write(vec![named("acme", "a2")], at("2026-11-28"));
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert_eq!(request_ids(&dir, "acme"), ["a2"]);

        // Removed again, and another proxy locks the new directory first.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        let other = DirLock::take(&dir).unwrap();
        w.write(vec![named("acme", "a3")], at("2026-11-28"));
        assert!(!w.health.serving(), "every request is refused");
        w.write(vec![named("acme", "a4")], at("2026-11-28"));
        w.retry_held(Instant::now() + RETRY_DELAY);
        w.checkpoint_all();
        assert!(!w.health.serving());
        assert!(
            !dir.join("acme").exists(),
            "nothing written into the other's directory"
        );
        drop(other);
        w.retry_held(Instant::now() + 2 * RETRY_DELAY);
        assert!(w.health.serving());
        assert!(w.held.is_empty());
        assert_eq!(request_ids(&dir, "acme"), ["a3", "a4"]);
        assert!(key.exists());
    }

    /// A required stream send that hangs (a frozen Redis) refuses requests once it has lasted
    /// longer than `STREAM_STALL`, before its own timeout ends it; a quick one refuses nothing.
    #[test]
    fn a_hanging_stream_send_refuses_before_it_times_out() {
        let health = Health::default();
        assert!(health.serving());
        health.stream_send_since.store(mono_ms(), Ordering::Release);
        assert!(health.serving(), "a send just begun");
        // (The clock starts at its first reading: wait until it has run past the stall.)
        let stall = STREAM_STALL.as_millis() as u64;
        while mono_ms() <= stall + 100 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let long_ago = mono_ms() - stall - 50;
        health.stream_send_since.store(long_ago, Ordering::Release);
        assert!(!health.serving(), "a send hanging past the stall");
        health.stream_send_since.store(0, Ordering::Release);
        assert!(health.serving(), "the send ended");
        health.sink.store(false, Ordering::Release);
        assert!(!health.serving());
    }

    #[test]
    fn a_partition_that_failed_midway_is_cut_back_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write(vec![named("acme", "a1")], at("2026-11-28"));
        // Today's file becomes /dev/full: every write fails, as on a full disk.
        let path = dir.path().join("acme/2026/11/28.jsonl");
        let kept = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        // (The writer's open handle is on the file just removed; as after a restart, it opens
        // the path anew.)
        w.logs.get_mut("acme").unwrap().file = None;
        w.write(
            vec![named("acme", "a2"), named("globex", "g1")],
            at("2026-11-28"),
        );
        assert!(w.held.contains_key("acme"));
        assert_eq!(request_ids(dir.path(), "globex"), ["g1"]);
        // Space again, with a torn line left by the failed attempt.
        fs::remove_file(&path).unwrap();
        let mut torn = kept.clone();
        torn.extend_from_slice(b"{\"seq\":2,\"prev\":\"ab");
        fs::write(&path, &torn).unwrap();
        w.held.get_mut("acme").unwrap().next_try = Instant::now();
        w.retry_held(Instant::now());
        assert!(w.held.is_empty());
        assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2"]);
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!((report.records, report.problem), (2, None));
    }

    /// A partition idle for a whole checkpoint interval closes its file (a removed tenant's
    /// descriptor is not kept for ever), and its next record opens it again, chained on.
    #[test]
    fn an_idle_partition_lets_go_of_its_file_and_takes_records_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write(
            vec![named("acme", "a1"), named("globex", "g1")],
            at("2026-11-28"),
        );
        w.checkpoint_all();
        let open = |w: &Writer, t: &str| w.logs.get(t).unwrap().file.is_some();
        assert!(
            open(&w, "acme") && open(&w, "globex"),
            "written this interval"
        );
        w.write(vec![named("globex", "g2")], at("2026-11-28"));
        w.checkpoint_all();
        assert!(!open(&w, "acme"), "acme took nothing for an interval");
        assert!(open(&w, "globex"));
        w.write(vec![named("acme", "a2")], at("2026-11-28"));
        assert!(open(&w, "acme"));
        w.checkpoint_all();
        assert_eq!(request_ids(dir.path(), "acme"), ["a1", "a2"]);
        for tenant in ["acme", "globex"] {
            let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
            assert_eq!((report.records, report.problem), (2, None), "{tenant}");
        }
    }

    #[test]
    fn an_unwritable_directory_refuses_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("audit");
        fs::create_dir_all(&root).unwrap();
        let mut w = writer(&root, 1 << 20);
        // The whole directory goes (a stand-in for a full disk): the probe fails too.
        fs::remove_dir_all(&root).unwrap();
        fs::write(&root, b"not a directory").unwrap();
        w.write(vec![named("acme", "a1")], at("2026-11-28"));
        assert!(!w.health.sink.load(Ordering::Acquire));
        fs::remove_file(&root).unwrap();
        w.retry_held(Instant::now() + RETRY_DELAY);
        assert!(w.health.sink.load(Ordering::Acquire));
        assert!(w.held.is_empty());
        assert_eq!(request_ids(&root, "acme"), ["a1"]);
    }

    fn checkpoint_lines(dir: &Path, tenant: &str) -> Vec<String> {
        fs::read_to_string(dir.join(tenant).join(CHECKPOINTS_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn parsed(line: &str) -> Checkpoint {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn checkpoints_chain_across_restarts_and_a_crashed_head_is_signed_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        // A crash: seq 4 and 5 are not signed.
        drop(w);
        let lines = checkpoint_lines(dir.path(), "acme");
        assert_eq!(lines.len(), 1);
        let first = parsed(&lines[0]);
        assert_eq!(first.prev_checkpoint, Some(hex::encode(chain::GENESIS)));
        assert_eq!(first.interval_ms, Some(60_000));
        // The next process (another generated key) signs the recovered head before anything
        // else, linked to the last checkpoint on disk.
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        let lines = checkpoint_lines(dir.path(), "acme");
        assert_eq!(lines.len(), 2);
        let recovered = parsed(&lines[1]);
        assert_eq!(recovered.seq, 5);
        assert_ne!(recovered.key_id, first.key_id);
        assert_eq!(
            recovered.prev_checkpoint,
            Some(hex::encode(chain::line_hash(lines[0].as_bytes())))
        );
        w.checkpoint_all();
        drop(w);
        // A clean restart: the head is covered, nothing is signed until the chain moves.
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        assert_eq!(checkpoint_lines(dir.path(), "acme").len(), 3);
        w.checkpoint_all();
        let lines = checkpoint_lines(dir.path(), "acme");
        assert_eq!(parsed(&lines[3]).seq, 7);
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!(
            (report.checkpoints, report.problem.clone()),
            (4, None),
            "{report:?}"
        );

        // A checkpoint removed while the writer runs: the next one still links to it.
        let mut kept = checkpoint_lines(dir.path(), "acme");
        kept.pop();
        fs::write(
            dir.path().join("acme").join(CHECKPOINTS_FILE),
            kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!(
            report.problem.map(|p| p.reason),
            Some(crate::audit::verify::Problem::CheckpointGap)
        );
    }

    #[test]
    fn a_restart_after_a_crash_signs_every_tenants_head_before_any_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 3), at("2026-11-28")).unwrap();
        w.write_batch(&batch("globex", 2), at("2026-11-28"))
            .unwrap();
        w.checkpoint_all();
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        w.write_batch(&batch("initech", 4), at("2026-11-28"))
            .unwrap();
        // A crash: acme's 4 and 5 and all of initech are unsigned; globex is covered.
        drop(w);
        let mut w = writer(dir.path(), 1 << 20);
        w.recover_all(at("2026-11-29"));
        // No tenant sent anything, yet each crashed head is signed, and only those.
        let seqs = |tenant: &str| -> Vec<u64> {
            checkpoint_lines(dir.path(), tenant)
                .iter()
                .map(|l| parsed(l).seq)
                .collect()
        };
        assert_eq!(seqs("acme"), [3, 5]);
        assert_eq!(seqs("globex"), [2]);
        assert_eq!(seqs("initech"), [4]);
        for tenant in ["acme", "globex", "initech"] {
            let report = verify_tenant(dir.path(), tenant, &Keys::published(dir.path()).into());
            assert_eq!(report.problem, None, "{tenant}: {report:?}");
            assert!(report.notes.is_empty(), "{tenant}: {report:?}");
        }
        // Signed once: the clean stop signs nothing more.
        w.checkpoint_all();
        assert_eq!(seqs("acme"), [3, 5]);
        // The recovered chains go on.
        w.write_batch(&batch("initech", 1), at("2026-11-29"))
            .unwrap();
        w.checkpoint_all();
        assert_eq!(seqs("initech"), [4, 5]);
    }

    #[test]
    fn a_writer_with_another_interval_states_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1 << 20);
        w.write_batch(&batch("acme", 2), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        drop(w);
        let mut w = writer(dir.path(), 1 << 20);
        w.settings.checkpoint_interval = Duration::from_secs(600);
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        let lines = checkpoint_lines(dir.path(), "acme");
        assert_eq!(lines.len(), 2);
        let restated = parsed(&lines[1]);
        assert_eq!((restated.seq, restated.interval_ms), (2, Some(600_000)));
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()).into());
        assert_eq!(report.problem, None, "{report:?}");
    }
}
