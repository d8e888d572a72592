//! The writer thread: drains the queue in batches, chains each record onto its tenant's log,
//! appends it to the tenant's current file and makes the batch durable per the fsync policy.
//! It is the only code ordering a tenant's records, so it alone assigns `seq` and `prev`.
//!
//! On a write error it keeps the batch, marks the sink unhealthy (so new requests are refused)
//! and retries until the disk recovers: records are never dropped. A tenant's chain head only
//! advances once the whole batch is written, and every append first cuts the file back to the
//! length the writer last knew durable, so a retried batch never leaves half a batch behind.
//!
//! At `checkpoint_interval`, and when the writer stops, each tenant with new durable records
//! gets a signed checkpoint. With a Redis Stream sink ([`super::stream`]), durable records are
//! then sent there too.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::chain::{self, ChainHead};
use super::checkpoint::Signer;
use super::layout::{self, FilePos, CHECKPOINTS_FILE};
use super::stream::StreamSink;
use super::{tail, AuditEntry};
use crate::config::{AuditSettings, FsyncPolicy};
use crate::metrics::METRICS;

const MAX_BATCH: usize = 1024;
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How often an idle writer looks at the stop flag and the checkpoint clock.
const TICK: Duration = Duration::from_millis(100);
/// Attempts at writing the last batches once stopping, before giving up on a failing disk.
const RETRIES_WHEN_STOPPING: u32 = 10;

pub(super) fn probe_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(".write-probe");
    fs::write(&probe, b"ok")?;
    fs::remove_file(probe)
}

/// The running writer thread; [`AuditWriter::shutdown`] drains the queue, writes the final
/// checkpoints and waits for it.
#[derive(Debug)]
pub struct AuditWriter {
    stop: Arc<AtomicBool>,
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
    healthy: Arc<AtomicBool>,
) -> io::Result<AuditWriter> {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        settings,
        signer,
        logs: HashMap::new(),
        stream,
        files_ok: true,
        retrying: false,
        healthy,
        stop: stop.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let handle = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(&runtime, rx))?;
    Ok(AuditWriter { stop, handle })
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
    /// `seq` of the last checkpoint written for this tenant since start.
    checkpointed: u64,
}

struct Writer {
    settings: AuditSettings,
    signer: Signer,
    logs: HashMap<String, TenantLog>,
    stream: Option<StreamSink>,
    /// Whether the last file write succeeded.
    files_ok: bool,
    /// Whether the batch being written is a retry (its earlier attempt may have left bytes).
    retrying: bool,
    /// What requests see: files writable and, when required, the stream too.
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, runtime: &tokio::runtime::Runtime, mut rx: mpsc::Receiver<AuditEntry>) {
        // SECURITY: however this thread ends (a panic included), the sink stops taking
        // requests: nothing would write their records.
        let _refuse_when_gone = RefuseOnExit(self.healthy.clone());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut last_checkpoint = Instant::now();
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
                    if !stopping {
                        // Wait up to the flush interval for more, so a busy proxy writes in
                        // large batches.
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
                    self.write_until_durable(&batch, stopping);
                    METRICS.audit_queue_depth.sub(batch.len() as i64);
                    batch.clear();
                }
                None if stopping => break,
                None => {}
            }
            if last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
                self.checkpoint_all();
                last_checkpoint = Instant::now();
            }
            if self.stream.as_ref().is_some_and(|s| !s.healthy()) {
                self.flush_stream();
            }
        }
        self.checkpoint_all();
        self.flush_stream();
        tracing::info!("audit writer stopped");
    }

    fn write_until_durable(&mut self, batch: &[AuditEntry], stopping: bool) {
        let mut attempts = 0;
        loop {
            self.retrying = attempts > 0;
            match self.write_batch(batch, SystemTime::now()) {
                Ok(written) => {
                    self.files_ok = true;
                    METRICS.audit_records_written.inc_by(batch.len() as u64);
                    if let Some(stream) = &mut self.stream {
                        stream.enqueue(written);
                    }
                    self.flush_stream();
                    return;
                }
                Err(e) => {
                    METRICS.audit_write_errors.inc();
                    if self.files_ok {
                        tracing::error!(error = %e, "audit write failed; refusing new requests until it recovers");
                    }
                    self.files_ok = false;
                    self.publish_health();
                    // Drop cached handles: the file may have been removed or the disk remounted.
                    for log in self.logs.values_mut() {
                        log.file = None;
                    }
                    attempts += 1;
                    if (stopping || self.stop.load(Ordering::Acquire))
                        && attempts >= RETRIES_WHEN_STOPPING
                    {
                        tracing::error!(error = %e, records = batch.len(), "audit records could not be written before shutdown");
                        return;
                    }
                    std::thread::sleep(RETRY_DELAY);
                }
            }
        }
    }

    /// Sends durable records to the stream sink, if any, and updates health.
    fn flush_stream(&mut self) {
        if let Some(stream) = &mut self.stream {
            let was_healthy = stream.healthy();
            if let Err(e) = stream.flush() {
                METRICS.audit_write_errors.inc();
                if was_healthy {
                    tracing::error!(error = %e, "cannot write the audit stream");
                }
            }
        }
        self.publish_health();
    }

    /// SECURITY: requests are served only while every required sink can write.
    fn publish_health(&self) {
        let ok = self.files_ok && self.stream.as_ref().is_none_or(StreamSink::healthy);
        METRICS.audit_healthy.set(i64::from(ok));
        if self.healthy.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::warn!("audit sink recovered");
            } else {
                tracing::error!("audit sink failing; refusing new requests until it recovers");
            }
        }
    }

    /// Writes a batch; returns each record's tenant and line, in order, once all are durable.
    fn write_batch(
        &mut self,
        batch: &[AuditEntry],
        now: SystemTime,
    ) -> io::Result<Vec<(String, Vec<u8>)>> {
        let today = FilePos::day_of(now);
        let mut written = Vec::with_capacity(batch.len());
        // Per tenant, in order of first appearance: the new cursor and the bytes per file.
        let mut plans: Vec<(&str, Cursor, Vec<Segment>)> = Vec::new();
        for record in batch {
            let tenant = record.tenant();
            let i = match plans.iter().position(|(t, _, _)| *t == tenant) {
                Some(i) => i,
                None => {
                    let cursor = self.log(tenant, today)?.cursor.clone();
                    plans.push((tenant, cursor, Vec::new()));
                    plans.len() - 1
                }
            };
            let Some((_, cursor, segments)) = plans.get_mut(i) else {
                continue;
            };
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
        for (tenant, _, segments) in &plans {
            if let Err(e) = self.write_segments(tenant, segments) {
                if e.kind() == io::ErrorKind::InvalidData {
                    // The file changed underneath the writer: start again from the disk.
                    self.logs.remove(*tenant);
                }
                return Err(e);
            }
        }
        // Everything is written: the chain heads advance.
        for (tenant, cursor, _) in plans {
            if let Some(log) = self.logs.get_mut(tenant) {
                log.cursor = cursor;
            }
        }
        Ok(written)
    }

    /// Appends one tenant's segments, each at the length the writer last left its file.
    fn write_segments(&mut self, tenant: &str, segments: &[Segment]) -> io::Result<()> {
        let tenant_dir = self.settings.dir.join(tenant);
        let fsync = self.settings.fsync;
        let retrying = self.retrying;
        let Some(log) = self.logs.get_mut(tenant) else {
            return Err(io::Error::other("no log for the tenant"));
        };
        for segment in segments {
            let file = open_at(&mut log.file, &tenant_dir, segment.pos)?;
            let len = file.metadata()?.len();
            if len != segment.start {
                if retrying && len > segment.start {
                    // A failed attempt left part of this batch: cut it, so a retried batch is
                    // not written twice.
                    file.set_len(segment.start)?;
                } else {
                    // SECURITY: someone else wrote or truncated the file; never cut or pad
                    // what is not ours.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "`{}` is {len} bytes but the audit writer left it at {}: another process changed it",
                            segment.pos.path(&tenant_dir).display(),
                            segment.start
                        ),
                    ));
                }
            }
            file.write_all(&segment.bytes)?;
            if fsync == FsyncPolicy::Batch {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// The tenant's log, recovered from its newest file on first use.
    fn log(&mut self, tenant: &str, today: FilePos) -> io::Result<&mut TenantLog> {
        if !self.logs.contains_key(tenant) {
            let cursor = recover(&self.settings.dir.join(tenant), today)?;
            self.logs.insert(
                tenant.to_string(),
                TenantLog {
                    cursor,
                    file: None,
                    checkpointed: 0,
                },
            );
        }
        self.logs
            .get_mut(tenant)
            .ok_or_else(|| io::Error::other("tenant log vanished"))
    }

    /// Signs and appends a checkpoint for every tenant whose chain moved since its last one.
    /// A failure is logged and retried at the next interval; records keep being written.
    fn checkpoint_all(&mut self) {
        let time = crate::proxy::rfc3339(SystemTime::now());
        for (tenant, log) in &mut self.logs {
            let head = log.cursor.head;
            if head.seq == 0 || head.seq == log.checkpointed {
                continue;
            }
            let checkpoint = self.signer.checkpoint(
                tenant,
                head.seq,
                &head.hash,
                log.cursor.head_pos.rel(),
                time.clone(),
            );
            let path = self.settings.dir.join(tenant).join(CHECKPOINTS_FILE);
            match append_line(&path, &checkpoint, self.settings.fsync) {
                Ok(()) => log.checkpointed = head.seq,
                Err(e) => {
                    METRICS.audit_write_errors.inc();
                    tracing::error!(error = %e, tenant = %tenant, "cannot write the audit checkpoint");
                }
            }
        }
    }
}

/// Marks the sink unhealthy when dropped.
struct RefuseOnExit(Arc<AtomicBool>);

impl Drop for RefuseOnExit {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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
            fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
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
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(newest.path(tenant_dir))?;
    let len = tail::cut_torn_tail(&file)?;
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

fn append_line(
    path: &PathBuf,
    value: &impl serde::Serialize,
    fsync: FsyncPolicy,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    tail::cut_torn_tail(&file)?;
    file.write_all(&line)?;
    if fsync == FsyncPolicy::Batch {
        file.sync_data()?;
    }
    Ok(())
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

    fn writer(dir: &Path, max_file_bytes: u64) -> Writer {
        let (signer, _) = Signer::generate().unwrap();
        signer.publish(dir).unwrap();
        Writer {
            settings: settings(dir, max_file_bytes),
            signer,
            logs: HashMap::new(),
            stream: None,
            files_ok: true,
            retrying: false,
            healthy: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
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
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()));
        assert_eq!(report.problem, None);
        assert_eq!((report.records, report.checkpoints), (13, 2));
        let report = verify_tenant(dir.path(), "globex", &Keys::published(dir.path()));
        assert_eq!((report.records, report.problem), (1, None));
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
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()));
        assert_eq!((report.records, report.problem), (4, None));
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
        w.retrying = true;
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        w.checkpoint_all();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()));
        assert_eq!((report.records, report.problem), (3, None));
    }

    #[test]
    fn a_file_changed_by_another_process_is_not_cut_but_recovered() {
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
        // The next attempt starts again from the disk and continues the chain there.
        w.write_batch(&batch("acme", 1), at("2026-11-28")).unwrap();
        let report = verify_tenant(dir.path(), "acme", &Keys::published(dir.path()));
        assert_eq!((report.records, report.problem), (3, None));
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
}
