//! `audit verify`: walks each tenant's chain and checkpoints and reports the first problem.
//!
//! - `modified`: a line is not a chained record of this tenant, or a record's line no longer
//!   hashes to the `prev` of the next one (or to the hash a checkpoint signed);
//! - `reordered`: a `seq` goes back, or comes before a smaller one that is still present;
//! - `deleted`: a gap in `seq` (lines or a whole file removed between present ones), or the
//!   first record is not `seq` 1;
//! - `truncated`: a checkpoint names a `seq` the records no longer reach;
//! - `bad_signature`: a checkpoint is malformed, signed by an unknown key, or its signature
//!   does not match;
//! - `checkpoint_gap`: a checkpoint does not link to the line before it in the checkpoints
//!   file (one was removed, reordered or changed), or a legacy checkpoint follows chained ones;
//! - `unsigned`: records are covered by no checkpoint although they were logged longer than the
//!   checkpoint interval (plus a grace, [`GRACE`] by default) before the newest record: the
//!   writer signs every interval and at shutdown, so their checkpoints were removed;
//! - `unreadable`: a file could not be read.
//!
//! A last line without its newline in the newest file is a write cut short by a crash: the
//! chain ends cleanly before it (a note), unless a checkpoint vouched for more. Records after
//! the last checkpoint logged within one interval of the newest record (a crash, or a proxy
//! still running) are a note too.
//!
//! SECURITY: from the files alone, records cut off together with every checkpoint after them
//! (the whole tail after some point) cannot be told from a log that ended there; an anchor kept
//! elsewhere ([`Trust::anchors`], `audit verify --anchor`) can.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::chain::{self, GENESIS};
use super::checkpoint::{self, Checkpoint};
use super::layout::{self, CHECKPOINTS_FILE, KEYS_DIR};
use crate::ids::TenantId;

/// Why a tenant's trail does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A record was altered or is not a record.
    Modified,
    /// Records are out of order.
    Reordered,
    /// Records are missing.
    Deleted,
    /// Records a checkpoint vouched for are gone.
    Truncated,
    /// A checkpoint's signature is invalid or its key unknown.
    BadSignature,
    /// A checkpoint does not link to the one before it: checkpoints were removed or reordered.
    CheckpointGap,
    /// Records older than the checkpoint interval have no checkpoint: checkpoints were removed.
    Unsigned,
    /// A file could not be read.
    Unreadable,
}

impl Problem {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Reordered => "reordered",
            Self::Deleted => "deleted",
            Self::Truncated => "truncated",
            Self::BadSignature => "bad_signature",
            Self::CheckpointGap => "checkpoint_gap",
            Self::Unsigned => "unsigned",
            Self::Unreadable => "unreadable",
        }
    }
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The kind of problem.
    pub reason: Problem,
    /// The file (relative to the tenant's partition) and 1-based line, when it is one line.
    pub at: Option<String>,
    /// What exactly is wrong.
    pub detail: String,
}

/// One tenant's result.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    /// The tenant.
    pub tenant: String,
    /// Records whose links were checked and found intact (up to the first problem).
    pub records: u64,
    /// Checkpoints whose signatures were checked and found valid.
    pub checkpoints: u64,
    /// `seq` of the last intact record.
    pub last_seq: u64,
    /// The first problem, if any.
    pub problem: Option<Finding>,
    /// Observations that are not problems (a torn last line, records after the last checkpoint).
    pub notes: Vec<String>,
}

/// The public keys checkpoints may be signed with.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Only these keys (`--key`, given once per key: each start without `[audit] signing_key`
    /// signs with a key of its own, and a rotation brings a new one).
    Pinned(Vec<[u8; 32]>),
    /// Any key published in `DIR/_keys/` whose file name is its key id.
    Published(HashMap<String, [u8; 32]>),
}

impl Keys {
    /// The keys published in `audit_dir/_keys/`; files whose content does not match their
    /// name are ignored (a checkpoint naming them then has an unknown key).
    pub fn published(audit_dir: &Path) -> Self {
        let mut keys = HashMap::new();
        if let Ok(entries) = fs::read_dir(audit_dir.join(KEYS_DIR)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".pub") else {
                    continue;
                };
                // Never a link or a FIFO (which would block the read for ever).
                if !e.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                if let Ok(key) = checkpoint::read_public_key(&e.path()) {
                    if checkpoint::key_id(&key) == id {
                        keys.insert(id.to_string(), key);
                    }
                }
            }
        }
        Self::Published(keys)
    }

    fn get(&self, key_id: &str) -> Option<[u8; 32]> {
        match self {
            Self::Pinned(keys) => keys
                .iter()
                .find(|key| checkpoint::key_id(&key[..]) == key_id)
                .copied(),
            Self::Published(keys) => keys.get(key_id).copied(),
        }
    }
}

/// The checkpoint interval assumed when no checkpoint signed one (the `[audit]` default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// How much longer than the checkpoint interval records may wait for their checkpoint, by
/// default: the queue, batching and a slow disk delay writes and checkpoints, and clocks step.
pub const GRACE: Duration = Duration::from_secs(60);

/// What a verification trusts beyond the files: the signers' keys, the writer's checkpoint
/// interval when no checkpoint states it, and checkpoints kept elsewhere.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The keys checkpoints may be signed with.
    pub keys: Keys,
    /// The checkpoint interval to assume when no checkpoint signed one (legacy checkpoints, or
    /// none left); [`DEFAULT_INTERVAL`] when `None`.
    pub interval: Option<Duration>,
    /// How much longer than the interval records may go unsigned ([`GRACE`] by default).
    pub grace: Duration,
    /// Checkpoints kept outside the audit directory (`--anchor`): each tenant's records must
    /// still reach the ones of that tenant, and hold the very record each signed.
    pub anchors: Vec<Checkpoint>,
}

impl From<Keys> for Trust {
    fn from(keys: Keys) -> Self {
        Self {
            keys,
            interval: None,
            grace: GRACE,
            anchors: Vec::new(),
        }
    }
}

/// The tenants with a partition in `audit_dir` (a directory, not a symbolic link), sorted.
pub fn tenants(audit_dir: &Path) -> std::io::Result<Vec<TenantId>> {
    entries_named_as_tenants(audit_dir, |kind| kind.is_dir())
}

/// The entries of `audit_dir` named as tenants whose kind `keep` accepts, sorted.
fn entries_named_as_tenants(
    audit_dir: &Path,
    keep: impl Fn(&fs::FileType) -> bool,
) -> std::io::Result<Vec<TenantId>> {
    let mut out = Vec::new();
    for e in fs::read_dir(audit_dir)? {
        let e = e?;
        if keep(&e.file_type()?) {
            if let Some(t) = e.file_name().to_str().and_then(|n| TenantId::new(n).ok()) {
                out.push(t);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One record's place in the chain.
struct Entry {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    file: usize,
    line: usize,
    /// When the record was handed to the writer: its `time` plus its `latency_ms`, if any.
    logged: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
struct LoggedFields {
    time: Option<String>,
    latency_ms: Option<f64>,
}

/// When a record line was handed to the writer: a request's record is made when it ends, its
/// `time` being when it arrived; an event's `time` is when it happened.
fn logged_at(line: &[u8]) -> Option<OffsetDateTime> {
    let fields: LoggedFields = serde_json::from_slice(line).ok()?;
    let arrived = OffsetDateTime::parse(&fields.time?, &Rfc3339).ok()?;
    let took = fields
        .latency_ms
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
        .and_then(|d| time::Duration::try_from(d).ok())
        .unwrap_or_default();
    arrived.checked_add(took).or(Some(arrived))
}

/// Verifies one tenant's partition.
pub fn verify_tenant(audit_dir: &Path, tenant: &str, trust: &Trust) -> TenantReport {
    let mut report = TenantReport {
        tenant: tenant.to_string(),
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        problem: None,
        notes: Vec::new(),
    };
    let partition = audit_dir.join(tenant);
    // SECURITY: partitions are read without following symbolic links (as `audit export` reads
    // them); one in place of a partition is reported, never passed over.
    if fs::symlink_metadata(&partition).is_ok_and(|m| m.file_type().is_symlink()) {
        report.problem = Some(finding(
            Problem::Unreadable,
            None,
            format!(
                "`{}` is a symbolic link, not a partition directory: not verified",
                partition.display()
            ),
        ));
        return report;
    }
    if let Err(finding) = check(&partition, tenant, trust, &mut report) {
        report.problem = Some(finding);
    }
    report
}

fn finding(reason: Problem, at: Option<String>, detail: String) -> Finding {
    Finding { reason, at, detail }
}

fn unreadable(what: &Path, e: std::io::Error) -> Finding {
    finding(
        Problem::Unreadable,
        None,
        format!("cannot read `{}`: {e}", what.display()),
    )
}

/// The checks, in order: read the records into the chain, walk its links, then the checkpoints
/// against it. The first problem ends the check; `report` holds what verified until then.
///
/// The checkpoints are read first: a running writer appends a record before the checkpoint
/// that covers it, so every checkpoint read is covered by the records read after it (read the
/// other way round, one signed in between named records not read yet: `truncated`, on an
/// honest trail).
fn check(
    tenant_dir: &Path,
    tenant: &str,
    trust: &Trust,
    report: &mut TenantReport,
) -> Result<(), Finding> {
    let checkpoints = read_checkpoints(tenant_dir)?;
    let files = layout::record_files(tenant_dir).map_err(|e| unreadable(tenant_dir, e))?;
    let partition = Partition {
        dir: tenant_dir,
        tenant,
        names: files.iter().map(|p| p.rel()).collect(),
    };
    let (entries, torn) = partition.read_chain(&files)?;
    walk_links(&entries, &partition, report)?;
    if let Some(torn) = &torn {
        report.notes.push(format!(
            "the last line ({torn}) is incomplete, a write cut short; the chain ends cleanly at seq {}",
            report.last_seq
        ));
    }
    partition.check_checkpoints(&entries, &checkpoints, trust, report)
}

/// The bytes of a partition's `checkpoints.jsonl` (none when it has none).
fn read_checkpoints(tenant_dir: &Path) -> Result<Vec<u8>, Finding> {
    let path = tenant_dir.join(CHECKPOINTS_FILE);
    match layout::read_regular(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(unreadable(&path, e)),
    }
}

/// One tenant's partition: its directory, and its record files' names in chain order.
struct Partition<'a> {
    dir: &'a Path,
    tenant: &'a str,
    names: Vec<String>,
}

impl Partition<'_> {
    /// `file:line` of a line of the `file`th record file.
    fn at(&self, file: usize, line: usize) -> Option<String> {
        Some(format!(
            "{}:{}",
            self.names.get(file).map_or("?", String::as_str),
            line
        ))
    }

    /// Every complete line of every record file, as chain entries of this tenant. A last line
    /// without its newline is allowed in the newest file only (returned as where it is).
    fn read_chain(
        &self,
        files: &[layout::FilePos],
    ) -> Result<(Vec<Entry>, Option<String>), Finding> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut torn: Option<String> = None;
        for (fi, pos) in files.iter().enumerate() {
            let path = pos.path(self.dir);
            let bytes = layout::read_regular(&path).map_err(|e| unreadable(&path, e))?;
            let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
            // After the last newline: empty for a complete file, else a torn line.
            let rest = lines.pop().unwrap_or_default();
            if !rest.is_empty() {
                if fi + 1 == files.len() {
                    torn = Some(format!("{}:{}", pos.rel(), lines.len() + 1));
                } else {
                    return Err(finding(
                        Problem::Modified,
                        self.at(fi, lines.len() + 1),
                        "a file before the newest ends in an incomplete line".into(),
                    ));
                }
            }
            for (li, line) in lines.iter().enumerate() {
                entries.push(self.entry(line, fi, li + 1)?);
            }
        }
        Ok((entries, torn))
    }

    /// One line as a chain entry: a chained record of this tenant.
    fn entry(&self, line: &[u8], file: usize, line_no: usize) -> Result<Entry, Finding> {
        let link = chain::parse_link(line).ok_or_else(|| {
            finding(
                Problem::Modified,
                self.at(file, line_no),
                "the line is not a chained audit record".into(),
            )
        })?;
        if link.tenant != self.tenant {
            return Err(finding(
                Problem::Modified,
                self.at(file, line_no),
                format!("the record names tenant `{}`", link.tenant),
            ));
        }
        Ok(Entry {
            seq: link.seq,
            prev: link.prev,
            hash: chain::line_hash(line),
            file,
            line: line_no,
            logged: logged_at(line),
        })
    }

    /// Checkpoints: each signed by a known key for this tenant, reached by the records and
    /// linked to the one before it; then the anchors kept elsewhere, and how long the records
    /// after the last checkpoint have gone unsigned.
    fn check_checkpoints(
        &self,
        entries: &[Entry],
        text: &[u8],
        trust: &Trust,
        report: &mut TenantReport,
    ) -> Result<(), Finding> {
        let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        if !lines.pop().unwrap_or_default().is_empty() {
            report.notes.push(format!(
                "the last line of {CHECKPOINTS_FILE} is incomplete, a write cut short; ignored"
            ));
        }
        let mut links = CheckpointLinks::new(Some(GENESIS));
        for (li, line) in lines.iter().enumerate() {
            let number = li + 1;
            let at = Some(format!("{CHECKPOINTS_FILE}:{number}"));
            let c = self.check_checkpoint(line, number, entries, &trust.keys, report)?;
            links.follow(&c, line, number, at)?;
        }
        links.note_legacy(report);
        for anchor in trust.anchors.iter().filter(|a| a.tenant == self.tenant) {
            self.check_anchor(anchor, entries, &trust.keys, report)?;
        }
        let interval = links.interval(trust);
        check_unsigned(entries, links.covered, interval, trust.grace, self, report)
    }

    /// A checkpoint kept outside the directory: signed by a known key, and the records still
    /// reach it and hold the very record it signed.
    fn check_anchor(
        &self,
        anchor: &Checkpoint,
        entries: &[Entry],
        keys: &Keys,
        report: &TenantReport,
    ) -> Result<(), Finding> {
        let at = Some(format!("anchor seq {}", anchor.seq));
        verify_signature(anchor, keys)
            .map_err(|detail| finding(Problem::BadSignature, at.clone(), detail))?;
        if anchor.seq > report.last_seq {
            return Err(finding(
                Problem::Truncated,
                at,
                format!(
                    "the anchor (a checkpoint of {}) covers seq {} but the records end at seq {}: records and their checkpoints after seq {} were removed",
                    anchor.time,
                    anchor.seq,
                    report.last_seq,
                    report.last_seq
                ),
            ));
        }
        self.check_head(anchor, entries, "the anchor")
    }

    /// One checkpoint line (`number`, from 1): its signature, its tenant, and that the record
    /// it signed is still the one at its `seq`. Returns the checkpoint.
    fn check_checkpoint(
        &self,
        line: &[u8],
        number: usize,
        entries: &[Entry],
        keys: &Keys,
        report: &mut TenantReport,
    ) -> Result<Checkpoint, Finding> {
        let at = Some(format!("{CHECKPOINTS_FILE}:{number}"));
        let bad_signature = |detail: String| finding(Problem::BadSignature, at.clone(), detail);
        let c: Checkpoint = serde_json::from_slice(line)
            .map_err(|_| bad_signature("the line is not a checkpoint".into()))?;
        verify_signature(&c, keys).map_err(bad_signature)?;
        if c.tenant != self.tenant {
            return Err(bad_signature(format!(
                "the checkpoint is for tenant `{}`",
                c.tenant
            )));
        }
        report.checkpoints += 1;
        if c.seq > report.last_seq {
            return Err(finding(
                Problem::Truncated,
                at,
                format!(
                    "the checkpoint covers seq {} but the records end at seq {}",
                    c.seq, report.last_seq
                ),
            ));
        }
        self.check_head(&c, entries, &format!("checkpoint {number}"))?;
        Ok(c)
    }

    /// That the record at `c.seq` is the one `c` signed (`what` names `c` in the finding).
    fn check_head(&self, c: &Checkpoint, entries: &[Entry], what: &str) -> Result<(), Finding> {
        let head = c
            .seq
            .checked_sub(1)
            .and_then(|i| entries.get(usize::try_from(i).ok()?));
        let matches = head.is_some_and(|e| {
            Some(&e.hash) == chain::parse_hash(&c.hash).as_ref()
                && self.names.get(e.file) == Some(&c.file)
        });
        if !matches {
            return Err(finding(
                Problem::Modified,
                head.and_then(|e| Some(format!("{}:{}", self.names.get(e.file)?, e.line))),
                format!("record seq {} is not the one {what} signed", c.seq),
            ));
        }
        Ok(())
    }
}

/// That `c` is signed by a key of `keys`; else what is wrong.
fn verify_signature(c: &Checkpoint, keys: &Keys) -> Result<(), String> {
    let Some(key) = keys.get(&c.key_id) else {
        return Err(format!("signed with unknown key `{}`", c.key_id));
    };
    if !c.signed_by(&key) {
        return Err(format!(
            "the signature of key `{}` does not match",
            c.key_id
        ));
    }
    Ok(())
}

/// The chain of checkpoint lines, followed one valid checkpoint at a time: each chained
/// checkpoint names the line before it (`prev_checkpoint`), legacy ones (no link) only come first.
struct CheckpointLinks {
    /// What the next line must link to; `None` for the first line of an export (its link is
    /// outside the file).
    expected: Option<[u8; 32]>,
    /// Whether a chained checkpoint was seen.
    chained: bool,
    /// Legacy checkpoints seen.
    legacy: u64,
    /// The largest `seq` a checkpoint covers.
    covered: u64,
    /// The interval the last chained checkpoint signed.
    interval: Option<Duration>,
}

impl CheckpointLinks {
    fn new(start: Option<[u8; 32]>) -> Self {
        Self {
            expected: start,
            chained: false,
            legacy: 0,
            covered: 0,
            interval: None,
        }
    }

    /// Follows checkpoint line `number` (`c`, valid and signed; `line` its bytes).
    fn follow(
        &mut self,
        c: &Checkpoint,
        line: &[u8],
        number: usize,
        at: Option<String>,
    ) -> Result<(), Finding> {
        let gap = |detail: String| finding(Problem::CheckpointGap, at.clone(), detail);
        if c.is_chained() {
            let (Some(prev), Some(interval)) = (c.prev_checkpoint.as_deref(), c.interval()) else {
                return Err(finding(
                    Problem::BadSignature,
                    at.clone(),
                    "the checkpoint has only one of `prev_checkpoint` and `interval_ms`".into(),
                ));
            };
            let Some(prev) = chain::parse_hash(prev) else {
                return Err(finding(
                    Problem::BadSignature,
                    at.clone(),
                    "the checkpoint's `prev_checkpoint` is not a SHA-256".into(),
                ));
            };
            match self.expected {
                Some(expected) if expected != prev => {
                    return Err(gap(if number == 1 {
                        format!(
                            "the first checkpoint (seq {}, {}) links to an earlier one that is gone: checkpoints were removed",
                            c.seq, c.time
                        )
                    } else {
                        format!(
                            "checkpoint {number} (seq {}, {}) does not link to checkpoint {}: a checkpoint between them was removed, or they were reordered or changed",
                            c.seq,
                            c.time,
                            number - 1
                        )
                    }));
                }
                _ => {}
            }
            self.chained = true;
            self.interval = Some(interval);
        } else if self.chained {
            return Err(gap(format!(
                "checkpoint {number} (seq {}) has no link to the one before it, yet follows chained checkpoints",
                c.seq
            )));
        } else {
            self.legacy += 1;
        }
        self.expected = Some(chain::line_hash(line));
        self.covered = self.covered.max(c.seq);
        Ok(())
    }

    /// Notes legacy checkpoints: removing one of them cannot be told.
    fn note_legacy(&self, report: &mut TenantReport) {
        if self.legacy > 0 {
            report.notes.push(format!(
                "the first {} checkpoint(s) predate chained checkpoints: one of them removed could not be told",
                self.legacy
            ));
        }
    }

    /// The writer's checkpoint interval: as the last chained checkpoint signed it, else as
    /// given, else the default.
    fn interval(&self, trust: &Trust) -> (Duration, &'static str) {
        match (self.interval, trust.interval) {
            (Some(i), _) => (i, "as the last checkpoint states"),
            (None, Some(i)) => (i, "as given"),
            (None, None) => (
                DEFAULT_INTERVAL,
                "the default; no checkpoint states it, `--checkpoint-interval` sets it",
            ),
        }
    }
}

/// Records after the last checkpoint (`covered`) may go unsigned only for the writer's
/// checkpoint interval (plus `grace`): it signs every interval and when it stops, and signs a
/// chain a crash left unsigned when it starts again. So a record logged longer than that before
/// the newest record, yet covered by no checkpoint, means checkpoints were removed. Within it,
/// unsigned records (a crash, or a writer still running) are a note.
fn check_unsigned(
    entries: &[Entry],
    covered: u64,
    (interval, source): (Duration, &str),
    grace: Duration,
    partition: &Partition<'_>,
    report: &mut TenantReport,
) -> Result<(), Finding> {
    if report.last_seq <= covered {
        return Ok(());
    }
    let first = covered + 1;
    let uncovered: Vec<&Entry> = entries.iter().filter(|e| e.seq > covered).collect();
    let allowed = interval.saturating_add(grace);
    // Whole seconds, or milliseconds below a second.
    let show = |d: Duration| {
        let shown = if d >= Duration::from_secs(1) {
            Duration::from_secs(d.as_secs())
        } else {
            Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(0))
        };
        humantime::format_duration(shown)
    };
    let stamp = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    // Each record is compared with the newest of those logged after it, not with the newest
    // of all: after the wall clock stepped back (NTP, a VM resumed) an honest later record
    // carries an earlier time than those before it (the writer signs what came before a step
    // when it sees one, so an honest tail never spans it).
    let mut newest: Option<(OffsetDateTime, u64)> = None;
    let mut too_old = None;
    for e in uncovered.iter().rev() {
        let Some(logged) = e.logged else { continue };
        if let Some((latest, latest_seq)) = newest {
            if let Ok(age) = Duration::try_from(latest - logged) {
                if age > allowed {
                    too_old = Some((e, logged, age, latest, latest_seq));
                }
            }
        }
        if newest.is_none_or(|(latest, _)| logged > latest) {
            newest = Some((logged, e.seq));
        }
    }
    if let Some((e, logged, age, newest, newest_seq)) = too_old {
        return Err(finding(
            Problem::Unsigned,
            partition.at(e.file, e.line),
            format!(
                "seq {first} to {} are covered by no checkpoint, yet seq {} was logged at {}, {} before the newest record (seq {newest_seq}, {}); the writer signs every {} ({source}) and when it stops, so at most {} (with {} grace) may be unsigned: checkpoints were removed",
                report.last_seq,
                e.seq,
                stamp(logged),
                show(age),
                stamp(newest),
                show(interval),
                show(allowed),
                show(grace),
            ),
        ));
    }
    let span = uncovered.iter().filter_map(|e| e.logged).fold(
        None,
        |acc: Option<(OffsetDateTime, OffsetDateTime)>, t| {
            Some(acc.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))))
        },
    );
    report.notes.push(format!(
        "seq {first} to {} follow the last checkpoint{}: within the checkpoint interval ({}, {source}) of the newest record, the chain vouches for them, no signature yet",
        report.last_seq,
        span.map(|(lo, hi)| format!(" (logged {} to {})", stamp(lo), stamp(hi)))
            .unwrap_or_default(),
        show(interval),
    ));
    Ok(())
}

/// Walks the links in file order: each `seq` one more than the last (else reordered or
/// deleted), each `prev` the hash of the line before. Counts what verifies into `report`.
fn walk_links(
    entries: &[Entry],
    partition: &Partition<'_>,
    report: &mut TenantReport,
) -> Result<(), Finding> {
    walk_links_from(entries, partition, GENESIS, report)
}

/// [`walk_links`] from `start`, the hash the first entry's `prev` must be (`report.last_seq`
/// already the `seq` before it).
fn walk_links_from(
    entries: &[Entry],
    partition: &Partition<'_>,
    start: [u8; 32],
    report: &mut TenantReport,
) -> Result<(), Finding> {
    let mut last_hash = start;
    for (i, e) in entries.iter().enumerate() {
        let Some(expected) = report.last_seq.checked_add(1) else {
            return Err(finding(
                Problem::Modified,
                partition.at(e.file, e.line),
                "a record follows seq 18446744073709551615, the largest".into(),
            ));
        };
        if e.seq < expected {
            return Err(finding(
                Problem::Reordered,
                partition.at(e.file, e.line),
                format!("seq {} comes after seq {}", e.seq, expected - 1),
            ));
        }
        if e.seq > expected {
            let before = i.checked_sub(1).and_then(|p| entries.get(p));
            let after = entries.get(i + 1..).unwrap_or_default();
            return Err(gap(e, before, after, expected, partition));
        }
        if e.prev != last_hash {
            // The previous line changed (or this record's own `prev` did).
            let (file, line) = match i.checked_sub(1).and_then(|p| entries.get(p)) {
                Some(p) => (p.file, p.line),
                None => (e.file, e.line),
            };
            return Err(finding(
                Problem::Modified,
                partition.at(file, line),
                format!(
                    "the line of seq {} does not hash to the `prev` of seq {}",
                    e.seq.saturating_sub(1),
                    e.seq
                ),
            ));
        }
        last_hash = e.hash;
        report.records += 1;
        report.last_seq = e.seq;
    }
    Ok(())
}

/// `e` skips ahead of `expected`: reordered when a skipped `seq` comes later (in `after`), else
/// deleted (across files, when `before` is in another file: a file may have been removed).
fn gap(
    e: &Entry,
    before: Option<&Entry>,
    after: &[Entry],
    expected: u64,
    partition: &Partition<'_>,
) -> Finding {
    // Over the later records, not the missing range: a seq planted near 2^64 made a range no
    // loop ends.
    if after.iter().any(|x| (expected..e.seq).contains(&x.seq)) {
        return finding(
            Problem::Reordered,
            partition.at(e.file, e.line),
            format!("seq {} comes before seq {expected}", e.seq),
        );
    }
    let across_files = before.is_some_and(|p| p.file != e.file);
    finding(
        Problem::Deleted,
        partition.at(e.file, e.line),
        format!(
            "seq {expected} to {} are missing{}",
            e.seq - 1,
            if across_files {
                " (a file may have been removed)"
            } else {
                ""
            }
        ),
    )
}

/// Verifies a file `audit export` wrote, on its own: its records (one tenant's, a range that
/// may start after `seq` 1) must link one to the next, and its checkpoints (after the records)
/// must be signed by a key of `keys` for that tenant and, where they fall inside the range, sign
/// the very record at their `seq`, and each link to the checkpoint before it in the file; past
/// the records there is at most one (the first after the range), a second means the file was
/// cut short (`truncated`). `name` is how findings name the file. What the file cannot prove is
/// a note: the link of its first record to the one before the range, of its first checkpoint to
/// the one before it, and records after the last checkpoint inside the range logged within one
/// checkpoint interval of the file's newest record (older ones are `unsigned`, as in a
/// directory).
pub fn verify_export(bytes: &[u8], name: &str, trust: &Trust) -> TenantReport {
    let mut report = TenantReport {
        tenant: String::new(),
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        problem: None,
        notes: Vec::new(),
    };
    if let Err(finding) = check_export(bytes, name, trust, &mut report) {
        report.problem = Some(finding);
    }
    report
}

fn check_export(
    bytes: &[u8],
    name: &str,
    trust: &Trust,
    report: &mut TenantReport,
) -> Result<(), Finding> {
    let at = |line: usize| Some(format!("{name}:{line}"));
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if !lines.pop().unwrap_or_default().is_empty() {
        // `audit export` ends every line; a cut-off file has lost something.
        return Err(finding(
            Problem::Truncated,
            at(lines.len() + 1),
            "the last line is incomplete: the file was cut short".into(),
        ));
    }
    // Records first, then checkpoints, as `audit export` writes them.
    let split = lines
        .iter()
        .position(|l| chain::parse_link(l).is_none())
        .unwrap_or(lines.len());
    let (records, checkpoints) = lines.split_at(split);
    let Some(first) = records.first().and_then(|l| chain::parse_link(l)) else {
        return Err(finding(
            Problem::Modified,
            at(1),
            "the file holds no audit record".into(),
        ));
    };
    report.tenant = first.tenant.clone();
    let partition = Partition {
        dir: Path::new(""),
        tenant: &first.tenant,
        names: vec![name.to_string()],
    };
    let entries = records
        .iter()
        .enumerate()
        .map(|(i, l)| partition.entry(l, 0, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    report.last_seq = first.seq.saturating_sub(1);
    walk_links_from(&entries, &partition, first.prev, report)?;
    if first.seq > 1 {
        report.notes.push(format!(
            "the file starts at seq {}: its link to seq {} is outside the file",
            first.seq,
            first.seq - 1
        ));
    }
    // The first checkpoint's link is to one before the file.
    let mut links = CheckpointLinks::new(None);
    // The last checkpoint inside the range: what signs the file's own records.
    let mut signed = first.seq.saturating_sub(1);
    // The checkpoint after the range, `audit export` writes at most one.
    let mut after: Option<(usize, u64)> = None;
    for (i, line) in checkpoints.iter().enumerate() {
        let number = split + i + 1;
        let bad = |detail: String| finding(Problem::BadSignature, at(number), detail);
        let c: Checkpoint = serde_json::from_slice(line).map_err(|_| {
            bad("the line is neither a record (records come first) nor a checkpoint".into())
        })?;
        verify_signature(&c, &trust.keys).map_err(bad)?;
        if c.tenant != first.tenant {
            return Err(bad(format!("the checkpoint is for tenant `{}`", c.tenant)));
        }
        report.checkpoints += 1;
        if c.seq < first.seq {
            return Err(finding(
                Problem::Modified,
                at(number),
                format!(
                    "the checkpoint covers seq {}, before the file's first record",
                    c.seq
                ),
            ));
        }
        links.follow(&c, line, i + 1, at(number))?;
        if c.seq > report.last_seq {
            // SECURITY: the checkpoint after the range signs a record the file does not
            // hold; a second one means records it signed were cut off the file.
            if let Some((line_no, seq)) = after {
                return Err(finding(
                    Problem::Truncated,
                    at(number),
                    format!(
                        "the checkpoint covers seq {} but the records end at seq {}, and line {line_no} already is the one checkpoint an export holds after its range (seq {seq}): the file was cut short",
                        c.seq, report.last_seq
                    ),
                ));
            }
            after = Some((number, c.seq));
            continue;
        }
        signed = signed.max(c.seq);
        let Some(e) = entries.get(usize::try_from(c.seq - first.seq).unwrap_or(usize::MAX)) else {
            continue;
        };
        if Some(&e.hash) != chain::parse_hash(&c.hash).as_ref() {
            return Err(finding(
                Problem::Modified,
                at(e.line),
                format!(
                    "record seq {} is not the one checkpoint line {number} signed",
                    c.seq
                ),
            ));
        }
    }
    if links.chained && first_checkpoint_links_outside(checkpoints) {
        report.notes.push(
            "the file's first checkpoint links to one before the file: checkpoints before it are not checked".into(),
        );
    }
    links.note_legacy(report);
    // SECURITY: with no checkpoint inside the range, nothing in the file is signed: its records
    // and their times are whatever its writer chose, and a forger needs no key to chain them.
    // The time rule below (records this recent may still wait for their checkpoint) holds for
    // a directory, where the writer's own later records date them, not for a file on its own.
    if signed < first.seq {
        let (interval, _) = links.interval(trust);
        return Err(finding(
            Problem::Unsigned,
            at(1),
            format!(
                "no checkpoint in the file signs any of its records (seq {} to {}): nothing shows the proxy wrote them; export a range that holds a checkpoint (the writer signs every {}), or verify the directory",
                first.seq,
                report.last_seq,
                humantime::format_duration(interval),
            ),
        ));
    }
    // Records after the last checkpoint inside the range are linked but signed by none: the
    // checkpoint after the range signs a record outside the file.
    check_unsigned(
        &entries,
        signed,
        links.interval(trust),
        trust.grace,
        &partition,
        report,
    )?;
    if let Some((_, seq)) = after.filter(|_| report.last_seq > signed) {
        report.notes.push(format!(
            "the file's last checkpoint (seq {seq}) signs a record after the file: seq {} to {} are linked by the chain but signed by no checkpoint in the file",
            signed + 1,
            report.last_seq
        ));
    }
    Ok(())
}

/// Whether the first checkpoint line names a predecessor (its `prev` is not all zeros).
fn first_checkpoint_links_outside(checkpoints: &[&[u8]]) -> bool {
    checkpoints
        .first()
        .and_then(|l| serde_json::from_slice::<Checkpoint>(l).ok())
        .and_then(|c| c.prev_checkpoint)
        .is_some_and(|p| chain::parse_hash(&p) != Some(GENESIS))
}

/// Verifies every tenant in `audit_dir` (or one).
///
/// SECURITY: a tenant an anchor names is verified even when its partition is gone (its records
/// then end before the anchor).
pub fn verify_dir(
    audit_dir: &Path,
    tenant: Option<&TenantId>,
    trust: &Trust,
) -> std::io::Result<Vec<TenantReport>> {
    let tenants = match tenant {
        Some(t) => vec![t.clone()],
        None => {
            // Symbolic links named as tenants too: each is reported, not skipped.
            let mut all =
                entries_named_as_tenants(audit_dir, |kind| kind.is_dir() || kind.is_symlink())?;
            for a in &trust.anchors {
                if let Ok(t) = TenantId::new(&a.tenant) {
                    if !all.contains(&t) {
                        all.push(t);
                    }
                }
            }
            all.sort();
            all
        }
    };
    Ok(tenants
        .iter()
        .map(|t| verify_tenant(audit_dir, t.as_str(), trust))
        .collect())
}

/// The human-readable table.
pub fn render_text(reports: &[TenantReport]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>11}  {}\n",
        "TENANT", "RECORDS", "CHECKPOINTS", "RESULT"
    );
    for r in reports {
        let result = match &r.problem {
            None => "ok".to_string(),
            Some(f) => format!(
                "{}{}: {}",
                f.reason.as_str(),
                f.at.as_ref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default(),
                f.detail
            ),
        };
        out.push_str(&format!(
            "{:<24} {:>9} {:>11}  {result}\n",
            r.tenant, r.records, r.checkpoints
        ));
        for n in &r.notes {
            out.push_str(&format!("{:<24} note: {n}\n", ""));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::chain::{seal, tests::record, ChainHead};
    use crate::audit::checkpoint::{CheckpointLink, Signer};

    /// A partition of `n` acme records in two files, a checkpoint at `checkpoint_at`.
    struct Fixture {
        dir: tempfile::TempDir,
        signer: Signer,
        lines: Vec<Vec<u8>>,
    }

    impl Fixture {
        fn new(n: u64) -> Self {
            Self::timed(n, 0)
        }

        /// `n` records, one every `step` seconds from 2026-11-28T10:00:00Z.
        fn timed(n: u64, step: i64) -> Self {
            Self::at_offsets((0..n).map(|i| step * i as i64))
        }

        /// A record for each offset, in seconds from 2026-11-28T10:00:00Z.
        fn at_offsets(offsets: impl IntoIterator<Item = i64>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (signer, _) = Signer::generate().unwrap();
            signer.publish(dir.path()).unwrap();
            let mut head = ChainHead::EMPTY;
            let mut lines = Vec::new();
            let start = OffsetDateTime::parse("2026-11-28T10:00:00Z", &Rfc3339).unwrap();
            for offset in offsets {
                let time = (start + time::Duration::seconds(offset))
                    .format(&Rfc3339)
                    .unwrap();
                let (line, h) = seal(&record("acme", &time), head).unwrap();
                head = h;
                lines.push(line);
            }
            let f = Self { dir, signer, lines };
            f.write_files(&f.lines.clone());
            f
        }

        fn write_files(&self, lines: &[Vec<u8>]) {
            let half = lines.len() / 2;
            for (rel, part) in [
                ("2026/11/28.jsonl", &lines[..half]),
                ("2026/11/29.jsonl", &lines[half..]),
            ] {
                let path = self.dir.path().join("acme").join(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                let mut bytes = Vec::new();
                for l in part {
                    bytes.extend_from_slice(l);
                    bytes.push(b'\n');
                }
                fs::write(path, bytes).unwrap();
            }
        }

        /// A checkpoint at `seq`, the first of its chain.
        fn checkpoint(&self, seq: u64) -> Checkpoint {
            self.checkpoint_after(seq, None)
        }

        /// A checkpoint at `seq` linked to `prev` (the first of its chain when `None`).
        fn checkpoint_after(&self, seq: u64, prev: Option<&Checkpoint>) -> Checkpoint {
            let line = &self.lines[usize::try_from(seq - 1).unwrap()];
            let file = if seq as usize > self.lines.len() / 2 {
                "2026/11/29.jsonl"
            } else {
                "2026/11/28.jsonl"
            };
            self.signer.checkpoint(
                "acme",
                seq,
                &chain::line_hash(line),
                file.into(),
                "2026-11-29T00:00:00Z".into(),
                link_to(prev),
            )
        }

        /// Chained checkpoints at `seqs`, as the writer makes them.
        fn checkpoints(&self, seqs: &[u64]) -> Vec<Checkpoint> {
            let mut out: Vec<Checkpoint> = Vec::new();
            for &seq in seqs {
                let c = self.checkpoint_after(seq, out.last());
                out.push(c);
            }
            out
        }

        fn write_checkpoints(&self, list: &[Checkpoint]) {
            let mut text = String::new();
            for c in list {
                text.push_str(&serde_json::to_string(c).unwrap());
                text.push('\n');
            }
            fs::write(self.dir.path().join("acme").join(CHECKPOINTS_FILE), text).unwrap();
        }

        fn verify(&self) -> TenantReport {
            verify_tenant(
                self.dir.path(),
                "acme",
                &Keys::published(self.dir.path()).into(),
            )
        }
    }

    /// The link to `prev`'s line (the first checkpoint's when `None`), 60 s interval.
    fn link_to(prev: Option<&Checkpoint>) -> CheckpointLink {
        CheckpointLink {
            prev: prev.map_or(GENESIS, |p| {
                chain::line_hash(serde_json::to_string(p).unwrap().as_bytes())
            }),
            interval: Duration::from_secs(60),
        }
    }

    /// Renumbers `lines[from..]` to follow `lines[from - 1]` and links each to the line before
    /// it, keeping the rest of their bytes: the re-chaining a forger does after deleting a record.
    fn rechain(lines: &mut [Vec<u8>], from: usize) {
        for i in from..lines.len() {
            let prev = hex::encode(chain::line_hash(&lines[i - 1]));
            let text = String::from_utf8(lines[i].clone()).unwrap();
            // `{"seq":N,"prev":"<64 hex>"` then the rest, kept.
            let tail = &text[text.find("\"prev\":\"").unwrap() + 8 + 64 + 1..];
            lines[i] = format!("{{\"seq\":{},\"prev\":\"{prev}\"{tail}", i + 1).into_bytes();
        }
    }

    fn reason(r: &TenantReport) -> Option<Problem> {
        r.problem.as_ref().map(|f| f.reason)
    }

    #[test]
    fn tampering_is_detected_with_its_reason() {
        type Tamper = fn(&Fixture);
        let cases: [(&str, Tamper, Option<Problem>); 12] = [
            ("intact", |_| {}, None),
            (
                "edit a byte",
                |f| {
                    let mut l = f.lines.clone();
                    let i = l[2].iter().position(|b| *b == b'G').unwrap();
                    l[2][i] = b'P';
                    f.write_files(&l);
                },
                Some(Problem::Modified),
            ),
            (
                "unparsable line",
                |f| {
                    let mut l = f.lines.clone();
                    l[1] = b"garbage".to_vec();
                    f.write_files(&l);
                },
                Some(Problem::Modified),
            ),
            (
                "delete a line",
                |f| {
                    let mut l = f.lines.clone();
                    l.remove(2);
                    f.write_files(&l);
                },
                Some(Problem::Deleted),
            ),
            (
                "swap two lines",
                |f| {
                    let mut l = f.lines.clone();
                    l.swap(1, 2);
                    f.write_files(&l);
                },
                Some(Problem::Reordered),
            ),
            (
                "drop the oldest file",
                |f| {
                    fs::remove_file(f.dir.path().join("acme/2026/11/28.jsonl")).unwrap();
                },
                Some(Problem::Deleted),
            ),
            (
                "drop the newest file",
                |f| {
                    fs::remove_file(f.dir.path().join("acme/2026/11/29.jsonl")).unwrap();
                },
                Some(Problem::Truncated),
            ),
            (
                "truncate the newest file",
                |f| {
                    let l = f.lines.clone();
                    f.write_files(&l[..l.len() - 1]);
                },
                Some(Problem::Truncated),
            ),
            (
                "edit the last record",
                |f| {
                    let mut l = f.lines.clone();
                    let last = l.last_mut().unwrap();
                    let i = last.iter().position(|b| *b == b'G').unwrap();
                    last[i] = b'P';
                    f.write_files(&l);
                },
                Some(Problem::Modified),
            ),
            (
                "checkpoint with a changed hash",
                |f| {
                    let mut c = f.checkpoint(8);
                    c.hash = hex::encode([7u8; 32]);
                    f.write_checkpoints(&[c]);
                },
                Some(Problem::BadSignature),
            ),
            (
                "checkpoint signed by another key",
                |f| {
                    let (other, _) = Signer::generate().unwrap();
                    let mut c = f.checkpoint(8);
                    let forged = other.checkpoint(
                        "acme",
                        c.seq,
                        &chain::parse_hash(&c.hash).unwrap(),
                        c.file.clone(),
                        c.time.clone(),
                        link_to(None),
                    );
                    // Claims the real key's id.
                    c.signature = forged.signature;
                    f.write_checkpoints(&[c]);
                },
                Some(Problem::BadSignature),
            ),
            (
                "torn last line",
                |f| {
                    let path = f.dir.path().join("acme/2026/11/29.jsonl");
                    let mut bytes = fs::read(&path).unwrap();
                    bytes.extend_from_slice(b"{\"seq\":9,\"pr");
                    fs::write(path, bytes).unwrap();
                },
                None,
            ),
        ];
        for (name, tamper, expected) in cases {
            let f = Fixture::new(8);
            f.write_checkpoints(&f.checkpoints(&[3, 8]));
            tamper(&f);
            let report = f.verify();
            assert_eq!(reason(&report), expected, "{name}: {report:?}");
        }
    }

    #[test]
    fn a_pinned_key_refuses_a_published_impostor() {
        let f = Fixture::new(4);
        let (impostor, _) = Signer::generate().unwrap();
        impostor.publish(f.dir.path()).unwrap();
        let line = &f.lines[3];
        let forged = impostor.checkpoint(
            "acme",
            4,
            &chain::line_hash(line),
            "2026/11/29.jsonl".into(),
            "t".into(),
            link_to(None),
        );
        f.write_checkpoints(&[forged]);
        // Published keys accept it: whoever writes the directory can publish a key.
        assert_eq!(reason(&f.verify()), None);
        let signer: [u8; 32] = hex::decode(f.signer.public_hex())
            .unwrap()
            .try_into()
            .unwrap();
        let pinned = Keys::Pinned(vec![signer]);
        let report = verify_tenant(f.dir.path(), "acme", &pinned.into());
        assert_eq!(reason(&report), Some(Problem::BadSignature));
        // Several pinned keys: the forger's is still none of them.
        let pinned = Keys::Pinned(vec![[7; 32], signer]);
        let report = verify_tenant(f.dir.path(), "acme", &pinned.into());
        assert_eq!(reason(&report), Some(Problem::BadSignature));
        // A key that is not the signer's refuses the honest checkpoints too.
        let report = verify_tenant(f.dir.path(), "acme", &Keys::Pinned(vec![[7; 32]]).into());
        assert_eq!(reason(&report), Some(Problem::BadSignature));
    }

    #[test]
    fn notes_report_a_clean_end_and_unsigned_tail() {
        let f = Fixture::new(6);
        f.write_checkpoints(&[f.checkpoint(4)]);
        let path = f.dir.path().join("acme/2026/11/29.jsonl");
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":7");
        fs::write(path, bytes).unwrap();
        let r = f.verify();
        assert_eq!((r.records, r.checkpoints, r.problem.clone()), (6, 1, None));
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(render_text(&[r]).contains("acme"));
    }

    #[test]
    fn records_of_another_tenant_are_modifications() {
        let f = Fixture::new(2);
        let (line, _) = seal(&record("globex", "2026-11-28T10:00:00Z"), ChainHead::EMPTY).unwrap();
        let mut lines = f.lines.clone();
        lines.push(line);
        f.write_files(&lines);
        assert_eq!(reason(&f.verify()), Some(Problem::Modified));
    }

    /// The wall clock stepped back an hour after seq 60 (the writer signed up to there when it
    /// saw the step): the records after it carry earlier times than those before, and are no
    /// sign of checkpoints removed; removed, they still are.
    #[test]
    fn an_honest_trail_across_a_clock_stepped_back_verifies() {
        // 60 records a minute apart (signed every minute), then 20 an hour earlier, in less
        // than a minute.
        let f = Fixture::at_offsets((0..60).map(|i| i * 60).chain((0..20).map(|i| i * 2)));
        f.write_checkpoints(&f.checkpoints(&[10, 20, 30, 40, 50, 60]));
        let r = f.verify();
        assert_eq!(r.problem, None, "{:?}", r.notes);
        assert_eq!((r.records, r.checkpoints), (80, 6));
        f.write_checkpoints(&f.checkpoints(&[10, 20]));
        assert_eq!(reason(&f.verify()), Some(Problem::Unsigned));
    }

    #[test]
    fn removed_checkpoints_are_detected() {
        type Tamper = fn(&Fixture);
        // 126 records a minute apart, signed every 10 (as a 10-minute interval would).
        let cases: [(&str, Tamper, Option<Problem>, &str); 8] = [
            ("intact", |_| {}, None, ""),
            (
                "delete record 50, re-chain, keep checkpoints before it",
                |f| {
                    let mut l = f.lines.clone();
                    l.remove(49);
                    rechain(&mut l, 49);
                    f.write_files(&l);
                    f.write_checkpoints(&f.checkpoints(&[10, 20, 30, 40]));
                },
                Some(Problem::Unsigned),
                "seq 41 to 125 are covered by no checkpoint, yet seq 41 was logged at 2026-11-28T10:40:00Z, 1h 25m before the newest record (seq 125, 2026-11-28T12:05:00Z)",
            ),
            (
                "cut the records at seq 29, drop the last checkpoints",
                |f| {
                    fs::remove_file(f.dir.path().join("acme/2026/11/29.jsonl")).unwrap();
                    let kept: Vec<u8> = f.lines[..29].join(&b'\n');
                    fs::write(f.dir.path().join("acme/2026/11/28.jsonl"), [&kept[..], b"\n"].concat()).unwrap();
                    f.write_checkpoints(&f.checkpoints(&[10, 20]));
                },
                Some(Problem::Unsigned),
                "seq 21 to 29",
            ),
            (
                "empty checkpoints.jsonl",
                |f| f.write_checkpoints(&[]),
                Some(Problem::Unsigned),
                "seq 1 to 126",
            ),
            (
                "delete checkpoints.jsonl",
                |f| fs::remove_file(f.dir.path().join("acme").join(CHECKPOINTS_FILE)).unwrap(),
                Some(Problem::Unsigned),
                "the default; no checkpoint states it",
            ),
            (
                "delete a middle checkpoint",
                |f| {
                    let mut c = f.checkpoints(&[10, 20, 30, 40, 126]);
                    c.remove(2);
                    f.write_checkpoints(&c);
                },
                Some(Problem::CheckpointGap),
                "checkpoint 3 (seq 40, 2026-11-29T00:00:00Z) does not link to checkpoint 2",
            ),
            (
                "swap two checkpoints",
                |f| {
                    let mut c = f.checkpoints(&[10, 20, 30, 40, 126]);
                    c.swap(1, 2);
                    f.write_checkpoints(&c);
                },
                Some(Problem::CheckpointGap),
                "does not link to checkpoint 1",
            ),
            (
                "delete the first checkpoints",
                |f| {
                    let c = f.checkpoints(&[10, 20, 30, 40, 126]);
                    f.write_checkpoints(&c[2..]);
                },
                Some(Problem::CheckpointGap),
                "the first checkpoint (seq 30, 2026-11-29T00:00:00Z) links to an earlier one that is gone",
            ),
        ];
        for (name, tamper, expected, detail) in cases {
            let f = Fixture::timed(126, 60);
            f.write_checkpoints(&f.checkpoints(&[10, 20, 30, 40, 126]));
            tamper(&f);
            let report = f.verify();
            assert_eq!(reason(&report), expected, "{name}: {report:?}");
            let text = report.problem.map(|p| p.detail).unwrap_or_default();
            assert!(text.contains(detail), "{name}: {text}");
        }
    }

    #[test]
    fn an_unsigned_tail_within_the_interval_is_a_note() {
        // Signed up to 120; 121..126 (5 minutes) unsigned: a crash within a 10-minute interval.
        let f = Fixture::timed(126, 60);
        let mut c = f.checkpoints(&[10, 120]);
        let ten_minutes = |c: &mut Checkpoint| {
            c.interval_ms = Some(600_000);
            *c = f.signer.sign(c.clone());
        };
        ten_minutes(&mut c[0]);
        c[1].prev_checkpoint = Some(hex::encode(chain::line_hash(
            serde_json::to_string(&c[0]).unwrap().as_bytes(),
        )));
        ten_minutes(&mut c[1]);
        f.write_checkpoints(&c);
        let r = f.verify();
        assert_eq!(r.problem, None, "{r:?}");
        let notes = r.notes.join("\n");
        assert!(
            notes.contains("seq 121 to 126 follow the last checkpoint (logged 2026-11-28T12:00:00Z to 2026-11-28T12:05:00Z): within the checkpoint interval (10m, as the last checkpoint states)"),
            "{notes}"
        );
        // With the 60 s interval the checkpoints state, the same tail is too old.
        f.write_checkpoints(&f.checkpoints(&[10, 120]));
        let r = f.verify();
        assert_eq!(reason(&r), Some(Problem::Unsigned), "{r:?}");
        assert!(r.problem.unwrap().detail.contains("seq 121 to 126"));
    }

    #[test]
    fn legacy_checkpoints_are_accepted_only_before_chained_ones() {
        let f = Fixture::timed(30, 60);
        let legacy = |seq: u64| {
            let mut c = f.checkpoint(seq);
            c.prev_checkpoint = None;
            c.interval_ms = None;
            f.signer.sign(c)
        };
        let line = |c: &Checkpoint| serde_json::to_string(c).unwrap();
        // Legacy at 10 and 20, then chained at 30 linked to the last legacy line.
        let (l10, l20) = (legacy(10), legacy(20));
        let mut c30 = f.checkpoint(30);
        c30.prev_checkpoint = Some(hex::encode(chain::line_hash(line(&l20).as_bytes())));
        let c30 = f.signer.sign(c30);
        f.write_checkpoints(&[l10.clone(), l20.clone(), c30.clone()]);
        let r = f.verify();
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("2 checkpoint(s) predate")));
        // A legacy one after the chained one is refused.
        f.write_checkpoints(&[l10.clone(), c30.clone(), legacy(30)]);
        assert_eq!(reason(&f.verify()), Some(Problem::CheckpointGap));
        // Legacy only: the default interval applies (given, when stated).
        f.write_checkpoints(&[l10, legacy(20)]);
        let r = f.verify();
        assert_eq!(reason(&r), Some(Problem::Unsigned), "{r:?}");
        let trust = Trust {
            interval: Some(Duration::from_secs(3600)),
            ..Keys::published(f.dir.path()).into()
        };
        let r = verify_tenant(f.dir.path(), "acme", &trust);
        assert_eq!(r.problem, None, "{r:?}");
    }

    #[test]
    fn an_anchor_kept_elsewhere_detects_a_cut_tail() {
        let f = Fixture::timed(30, 60);
        let all = f.checkpoints(&[10, 20, 30]);
        // Records after 20 cut off with their checkpoints: the files alone cannot tell.
        f.write_files(&f.lines[..20]);
        f.write_checkpoints(&all[..2]);
        assert_eq!(f.verify().problem, None);
        let trust = Trust {
            anchors: vec![all[2].clone()],
            ..Keys::published(f.dir.path()).into()
        };
        let r = verify_tenant(f.dir.path(), "acme", &trust);
        assert_eq!(reason(&r), Some(Problem::Truncated), "{r:?}");
        assert!(r
            .problem
            .unwrap()
            .detail
            .contains("covers seq 30 but the records end at seq 20"));
        // An intact directory satisfies its anchor; a forged anchor is refused.
        f.write_files(&f.lines);
        f.write_checkpoints(&all);
        assert_eq!(verify_tenant(f.dir.path(), "acme", &trust).problem, None);
        let mut forged = all[2].clone();
        forged.seq = 29;
        let trust = Trust {
            anchors: vec![forged],
            ..trust
        };
        let r = verify_tenant(f.dir.path(), "acme", &trust);
        assert_eq!(reason(&r), Some(Problem::BadSignature), "{r:?}");
        // An anchored tenant whose partition is gone entirely.
        fs::remove_dir_all(f.dir.path().join("acme")).unwrap();
        let trust = Trust {
            anchors: vec![all[2].clone()],
            ..Keys::published(f.dir.path()).into()
        };
        let reports = verify_dir(f.dir.path(), None, &trust).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reason(&reports[0]), Some(Problem::Truncated));
    }

    #[test]
    fn a_symlinked_partition_is_reported_not_skipped() {
        let f = Fixture::timed(20, 5);
        f.write_checkpoints(&f.checkpoints(&[10, 20]));
        let trust: Trust = Keys::published(f.dir.path()).into();
        assert_eq!(reason(&f.verify()), None);
        // acme's partition moved aside and linked back in its place.
        fs::rename(f.dir.path().join("acme"), f.dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("moved", f.dir.path().join("acme")).unwrap();
        let reports = verify_dir(f.dir.path(), None, &trust).unwrap();
        let acme = reports.iter().find(|r| r.tenant == "acme");
        let acme = acme.unwrap_or_else(|| panic!("acme skipped: {reports:?}"));
        assert_eq!(reason(acme), Some(Problem::Unreadable), "{acme:?}");
        assert!(acme
            .problem
            .as_ref()
            .unwrap()
            .detail
            .contains("is a symbolic link"));
        let tenant = TenantId::new("acme").unwrap();
        let reports = verify_dir(f.dir.path(), Some(&tenant), &trust).unwrap();
        assert_eq!(reason(&reports[0]), Some(Problem::Unreadable));
    }

    /// A year, month or record file linked in its place is named as a link, not read past (the
    /// records behind it read as missing).
    #[test]
    fn a_link_inside_a_partition_is_reported_as_one() {
        let f = Fixture::timed(20, 5);
        f.write_checkpoints(&f.checkpoints(&[10, 20]));
        let trust: Trust = Keys::published(f.dir.path()).into();
        let month = f.dir.path().join("acme/2026/11");
        fs::rename(&month, f.dir.path().join("m11")).unwrap();
        std::os::unix::fs::symlink("../../m11", &month).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let reports = verify_dir(f.dir.path(), Some(&tenant), &trust).unwrap();
        assert_eq!(reason(&reports[0]), Some(Problem::Unreadable));
        let detail = &reports[0].problem.as_ref().unwrap().detail;
        assert!(detail.contains("2026/11 is a symbolic link"), "{detail}");
    }

    #[test]
    fn an_export_needs_its_checkpoints_too() {
        let f = Fixture::timed(40, 60);
        let checkpoints = f.checkpoints(&[10, 20, 30, 40]);
        let export = |records: &[Vec<u8>], checkpoints: &[Checkpoint]| {
            verify_export_of(&f, records, checkpoints)
        };
        // A range from seq 11: its first checkpoint links outside the file.
        let r = export(&f.lines[10..], &checkpoints[1..]);
        assert_eq!(r.problem, None, "{r:?}");
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("links to one before the file")));
        // Cut short with its checkpoints removed.
        let r = export(&f.lines[..35], &checkpoints[..1]);
        assert_eq!(reason(&r), Some(Problem::Unsigned), "{r:?}");
        assert!(r.problem.unwrap().detail.contains("seq 11 to 35"));
        // A middle checkpoint removed.
        let r = export(&f.lines, &[&checkpoints[..1], &checkpoints[2..]].concat());
        assert_eq!(reason(&r), Some(Problem::CheckpointGap), "{r:?}");
        // No checkpoint at all.
        let r = export(&f.lines, &[]);
        assert_eq!(reason(&r), Some(Problem::Unsigned), "{r:?}");
    }

    /// Writes an export of `records` then `checkpoints` and verifies it.
    fn verify_export_of(
        f: &Fixture,
        records: &[Vec<u8>],
        checkpoints: &[Checkpoint],
    ) -> TenantReport {
        let mut out = Vec::new();
        for l in records {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        for c in checkpoints {
            out.extend_from_slice(serde_json::to_string(c).unwrap().as_bytes());
            out.push(b'\n');
        }
        verify_export(&out, "x.jsonl", &Keys::published(f.dir.path()).into())
    }

    #[test]
    fn an_export_cut_short_with_its_checkpoints_kept_is_truncated() {
        // A record every 5 s, signed every 10 records (50 s, within the 60 s interval).
        let f = Fixture::timed(40, 5);
        let checkpoints = f.checkpoints(&[10, 20, 30, 40]);
        // An honest export up to seq 25: the checkpoints in range and the first one after.
        let r = verify_export_of(&f, &f.lines[..25], &checkpoints[..3]);
        assert_eq!(r.problem, None, "{r:?}");
        assert_eq!(r.checkpoints, 3);
        let notes = r.notes.join("\n");
        assert!(
            notes.contains("the file's last checkpoint (seq 30) signs a record after the file: seq 21 to 25 are linked by the chain but signed by no checkpoint in the file"),
            "{notes}"
        );
        // The whole export cut after seq 25, every checkpoint kept: two past the records.
        let r = verify_export_of(&f, &f.lines[..25], &checkpoints);
        assert_eq!(reason(&r), Some(Problem::Truncated), "{r:?}");
        let finding = r.problem.unwrap();
        assert_eq!(finding.at.as_deref(), Some("x.jsonl:29"));
        assert!(
            finding
                .detail
                .contains("covers seq 40 but the records end at seq 25"),
            "{}",
            finding.detail
        );
        // Cut, a record after the last checkpoint in range rewritten and re-chained.
        let mut lines = f.lines[..25].to_vec();
        let text = String::from_utf8(lines[22].clone()).unwrap();
        lines[22] = text.replacen("\"allow\"", "\"deny\"", 1).into_bytes();
        assert_ne!(lines[22], f.lines[22]);
        rechain(&mut lines, 23);
        let r = verify_export_of(&f, &lines, &checkpoints);
        assert_eq!(reason(&r), Some(Problem::Truncated), "{r:?}");
        // Records long unsigned are judged by the last checkpoint inside the range, never by
        // the one after it.
        let sparse = f.checkpoints(&[10, 40]);
        let r = verify_export_of(&f, &f.lines[..38], &sparse);
        assert_eq!(reason(&r), Some(Problem::Unsigned), "{r:?}");
        assert!(r.problem.unwrap().detail.contains("seq 11 to 38"));
    }

    /// A file in which no checkpoint signs a record vouches for nothing, however recent its
    /// records say they are: a forger chains records and picks their times without a key.
    #[test]
    fn an_export_with_nothing_signed_is_unsigned() {
        let recent = Fixture::timed(12, 1);
        let after = recent.checkpoints(&[10]);
        for (name, checkpoints) in [
            ("no checkpoint", &[][..]),
            ("only the one after", &after[..]),
        ] {
            let r = verify_export_of(&recent, &recent.lines[..5], checkpoints);
            assert_eq!(reason(&r), Some(Problem::Unsigned), "{name}: {r:?}");
            let detail = r.problem.unwrap().detail;
            assert!(
                detail.contains("no checkpoint in the file signs any of its records (seq 1 to 5)"),
                "{name}: {detail}"
            );
        }
        // The same records with the checkpoint that signs them verify.
        let r = verify_export_of(&recent, &recent.lines[..10], &after);
        assert_eq!(r.problem, None, "{r:?}");
    }
}
