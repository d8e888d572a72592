//! The writer thread: drains the queue in batches, appends each record to its tenant's file and
//! makes the batch durable per the fsync policy. On a write error it keeps the batch, marks the
//! sink unhealthy (so new requests are refused) and retries until the disk recovers: records are
//! never dropped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::AuditRecord;
use crate::config::{AuditSettings, FsyncPolicy};
use crate::metrics::METRICS;

const MAX_BATCH: usize = 1024;
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// `DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl` for a record time `yyyy-mm-ddT…`.
pub fn partition_path(dir: &Path, tenant: &str, time: &str) -> PathBuf {
    let (y, m, d) = (
        time.get(0..4).unwrap_or("0000"),
        time.get(5..7).unwrap_or("00"),
        time.get(8..10).unwrap_or("00"),
    );
    dir.join(tenant).join(y).join(m).join(format!("{d}.jsonl"))
}

pub(super) fn probe_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(".write-probe");
    fs::write(&probe, b"ok")?;
    fs::remove_file(probe)
}

pub(super) fn spawn(
    settings: AuditSettings,
    rx: mpsc::Receiver<AuditRecord>,
    healthy: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            Writer {
                settings,
                files: HashMap::new(),
                healthy,
            }
            .run(rx)
        })
        .unwrap_or_else(|e| {
            // Without a writer nothing can be audited: keep the sink refusing.
            tracing::error!(error = %e, "cannot start the audit writer thread");
            std::thread::spawn(|| {})
        })
}

struct Writer {
    settings: AuditSettings,
    files: HashMap<PathBuf, File>,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<AuditRecord>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            // Wait up to the flush interval for more, so a busy proxy writes in large batches.
            std::thread::sleep(self.settings.flush_interval.min(Duration::from_millis(50)));
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write_until_durable(&batch);
            METRICS.audit_queue_depth.sub(batch.len() as i64);
            batch.clear();
        }
        // Channel closed: every sender is gone and everything queued was written.
        tracing::info!("audit writer stopped");
    }

    fn write_until_durable(&mut self, batch: &[AuditRecord]) {
        loop {
            match self.write_batch(batch) {
                Ok(()) => {
                    if !self.healthy.swap(true, Ordering::AcqRel) {
                        tracing::warn!("audit sink recovered");
                    }
                    METRICS.audit_records_written.inc_by(batch.len() as u64);
                    return;
                }
                Err(e) => {
                    METRICS.audit_write_errors.inc();
                    if self.healthy.swap(false, Ordering::AcqRel) {
                        tracing::error!(error = %e, "audit write failed; refusing new requests until it recovers");
                    }
                    // Drop cached handles: the file may have been removed or the disk remounted.
                    self.files.clear();
                    std::thread::sleep(RETRY_DELAY);
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        let mut buffers: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        for record in batch {
            let path = partition_path(&self.settings.dir, &record.tenant, &record.time);
            let buf = buffers.entry(path).or_default();
            serde_json::to_writer(&mut *buf, record)?;
            buf.push(b'\n');
        }
        for (path, bytes) in buffers {
            let file = match self.files.get_mut(&path) {
                Some(f) => f,
                None => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    let f = OpenOptions::new().create(true).append(true).open(&path)?;
                    // Keep few handles: old days' files are not written again.
                    if self.files.len() > 4096 {
                        self.files.clear();
                    }
                    self.files.entry(path.clone()).or_insert(f)
                }
            };
            file.write_all(&bytes)?;
            if self.settings.fsync == FsyncPolicy::Batch {
                file.sync_data()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_layout() {
        let p = partition_path(Path::new("/a"), "acme", "2026-11-22T10:00:00Z");
        assert_eq!(p, PathBuf::from("/a/acme/2026/11/22.jsonl"));
    }
}
