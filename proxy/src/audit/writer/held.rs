//! Records of a tenant whose partition cannot be written: kept in order (bounded, the oldest
//! logged past the bound), retried, and written before the tenant is served again.

use std::collections::VecDeque;
use std::io;
use std::time::{Instant, SystemTime};

use super::{checkpoint_log, Writer, MAX_BATCH, RETRIES_WHEN_STOPPING, RETRY_DELAY};
use crate::audit::chain::{self, ChainHead};
use crate::audit::layout::FilePos;
use crate::audit::AuditEntry;
use crate::metrics::METRICS;

/// Most records the writer keeps in memory for one tenant whose partition cannot be written.
/// Its requests are refused meanwhile, so only requests already admitted add to them (their
/// refusals reserve no record); past the bound the oldest go to the process log as `unwritten
/// audit record` lines, chained on, so a partition that stays failing costs bounded memory and
/// loses nothing. About 2.5 KiB each: 25 MiB per failing tenant at most.
pub(super) const MAX_HELD_PER_TENANT: usize = 10_000;
/// Records a retry writes first, before the rest of what a tenant holds: a partition still
/// failing costs each retry this many records sealed, not the whole backlog.
pub(super) const RETRY_FIRST: usize = 16;

/// What a tenant whose partition failed waits to write, kept until it is durable.
pub(super) struct Held {
    /// Its records, oldest first (at most the writer's `max_held`).
    pub(super) records: VecDeque<AuditEntry>,
    /// Its checkpoint could not be written: written again before the tenant is served.
    pub(super) checkpoint: bool,
    /// The head of the records logged as unwritten past the bound, when the writer has no log
    /// for the tenant (its partition never recovered) to move the head of.
    after: Option<ChainHead>,
    /// No new attempt before this instant.
    pub(super) next_try: Instant,
}

impl Held {
    pub(super) fn new(next_try: Instant) -> Self {
        Self {
            records: VecDeque::new(),
            checkpoint: false,
            after: None,
            next_try,
        }
    }
}

impl Writer {
    /// Keeps `records` of `tenant`, whose write failed, and refuses its new requests.
    pub(super) fn hold(&mut self, tenant: String, records: Vec<AuditEntry>, error: &io::Error) {
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
    pub(super) fn keep(&mut self, tenant: &str, records: Vec<AuditEntry>) {
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
    pub(super) fn retry_held(&mut self, now: Instant) {
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
    pub(super) fn write_held_before_exit(&mut self) {
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

    /// The chain head `tenant`'s held records go on from: the partition's (moved past any
    /// records logged as unwritten), from genesis when the writer never read it.
    pub(super) fn held_head(&self, tenant: &str) -> ChainHead {
        self.logs
            .get(tenant)
            .map(|l| l.cursor.head)
            .or_else(|| self.held.get(tenant).and_then(|h| h.after))
            .unwrap_or(ChainHead::EMPTY)
    }

    /// The held records of every tenant as the lines they would have been written as: chained
    /// from the partition's head when it is known (from genesis otherwise).
    #[cfg(test)]
    pub(super) fn unwritten_lines(&self) -> Vec<(String, Vec<serde_json::Result<String>>)> {
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
            // The chain's head is past sealing (a record planted at the largest seq): the
            // record is logged without its place in the chain rather than lost.
            Err(e) => match chain::unchained(record) {
                Ok(line) => {
                    let line = String::from_utf8_lossy(&line);
                    tracing::error!(%tenant, %line, chained = false, error = %e, "unwritten audit record");
                }
                Err(e) => {
                    tracing::error!(%tenant, error = %e, "unwritten audit record cannot be serialized")
                }
            },
        }
    }
    head
}
