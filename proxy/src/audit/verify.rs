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
//! - `unreadable`: a file could not be read.
//!
//! A last line without its newline in the newest file is a write cut short by a crash: the
//! chain ends cleanly before it (a note), unless a checkpoint vouched for more.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use serde::Serialize;

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
    /// Only this key (`--key`).
    Pinned([u8; 32]),
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
            Self::Pinned(key) => (checkpoint::key_id(key) == key_id).then_some(*key),
            Self::Published(keys) => keys.get(key_id).copied(),
        }
    }
}

/// The tenants with a partition in `audit_dir`, sorted.
pub fn tenants(audit_dir: &Path) -> std::io::Result<Vec<TenantId>> {
    let mut out = Vec::new();
    for e in fs::read_dir(audit_dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
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
}

/// Verifies one tenant's partition.
pub fn verify_tenant(audit_dir: &Path, tenant: &str, keys: &Keys) -> TenantReport {
    let mut report = TenantReport {
        tenant: tenant.to_string(),
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        problem: None,
        notes: Vec::new(),
    };
    if let Err(finding) = check(&audit_dir.join(tenant), tenant, keys, &mut report) {
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
fn check(
    tenant_dir: &Path,
    tenant: &str,
    keys: &Keys,
    report: &mut TenantReport,
) -> Result<(), Finding> {
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
    partition.check_checkpoints(&entries, keys, report)
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
            let bytes = fs::read(&path).map_err(|e| unreadable(&path, e))?;
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
        })
    }

    /// Checkpoints: each signed by a known key for this tenant, and reached by the records.
    fn check_checkpoints(
        &self,
        entries: &[Entry],
        keys: &Keys,
        report: &mut TenantReport,
    ) -> Result<(), Finding> {
        let path = self.dir.join(CHECKPOINTS_FILE);
        let text = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(unreadable(&path, e)),
        };
        let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        if !lines.pop().unwrap_or_default().is_empty() {
            report.notes.push(format!(
                "the last line of {CHECKPOINTS_FILE} is incomplete, a write cut short; ignored"
            ));
        }
        let mut last_checkpoint = 0;
        for (li, line) in lines.iter().enumerate() {
            let seq = self.check_checkpoint(line, li + 1, entries, keys, report)?;
            last_checkpoint = last_checkpoint.max(seq);
        }
        if report.last_seq > last_checkpoint {
            report.notes.push(format!(
                "seq {} to {} follow the last checkpoint: the chain vouches for them, no signature yet",
                last_checkpoint + 1,
                report.last_seq
            ));
        }
        Ok(())
    }

    /// One checkpoint line (`number`, from 1): its signature, its tenant, and that the record
    /// it signed is still the one at its `seq`. Returns that `seq`.
    fn check_checkpoint(
        &self,
        line: &[u8],
        number: usize,
        entries: &[Entry],
        keys: &Keys,
        report: &mut TenantReport,
    ) -> Result<u64, Finding> {
        let at = Some(format!("{CHECKPOINTS_FILE}:{number}"));
        let bad_signature = |detail: String| finding(Problem::BadSignature, at.clone(), detail);
        let c: Checkpoint = serde_json::from_slice(line)
            .map_err(|_| bad_signature("the line is not a checkpoint".into()))?;
        let Some(key) = keys.get(&c.key_id) else {
            return Err(bad_signature(format!(
                "signed with unknown key `{}`",
                c.key_id
            )));
        };
        if !c.signed_by(&key) {
            return Err(bad_signature(format!(
                "the signature of key `{}` does not match",
                c.key_id
            )));
        }
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
                format!(
                    "record seq {} is not the one checkpoint {number} signed",
                    c.seq
                ),
            ));
        }
        Ok(c.seq)
    }
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
        let expected = report.last_seq + 1;
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
    let later: HashSet<u64> = after.iter().map(|x| x.seq).collect();
    if (expected..e.seq).any(|s| later.contains(&s)) {
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
/// the very record at their `seq`. `name` is how findings name the file. What the file cannot
/// prove is a note: the link of its first record to the one before the range, and records after
/// the last checkpoint inside the range.
pub fn verify_export(bytes: &[u8], name: &str, keys: &Keys) -> TenantReport {
    let mut report = TenantReport {
        tenant: String::new(),
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        problem: None,
        notes: Vec::new(),
    };
    if let Err(finding) = check_export(bytes, name, keys, &mut report) {
        report.problem = Some(finding);
    }
    report
}

fn check_export(
    bytes: &[u8],
    name: &str,
    keys: &Keys,
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
    let mut vouched = first.seq.saturating_sub(1);
    for (i, line) in checkpoints.iter().enumerate() {
        let number = split + i + 1;
        let bad = |detail: String| finding(Problem::BadSignature, at(number), detail);
        let c: Checkpoint = serde_json::from_slice(line).map_err(|_| {
            bad("the line is neither a record (records come first) nor a checkpoint".into())
        })?;
        let Some(key) = keys.get(&c.key_id) else {
            return Err(bad(format!("signed with unknown key `{}`", c.key_id)));
        };
        if !c.signed_by(&key) {
            return Err(bad(format!(
                "the signature of key `{}` does not match",
                c.key_id
            )));
        }
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
        // The checkpoint just after the range signs a record the file does not hold.
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
        vouched = vouched.max(c.seq);
    }
    if report.last_seq > vouched {
        report.notes.push(format!(
            "seq {} to {} follow the last checkpoint inside the file: linked, not signed",
            vouched + 1,
            report.last_seq
        ));
    }
    Ok(())
}

/// Verifies every tenant in `audit_dir` (or one).
pub fn verify_dir(
    audit_dir: &Path,
    tenant: Option<&TenantId>,
    keys: &Keys,
) -> std::io::Result<Vec<TenantReport>> {
    let tenants = match tenant {
        Some(t) => vec![t.clone()],
        None => tenants(audit_dir)?,
    };
    Ok(tenants
        .iter()
        .map(|t| verify_tenant(audit_dir, t.as_str(), keys))
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
    use crate::audit::checkpoint::Signer;

    /// A partition of `n` acme records in two files, a checkpoint at `checkpoint_at`.
    struct Fixture {
        dir: tempfile::TempDir,
        signer: Signer,
        lines: Vec<Vec<u8>>,
    }

    impl Fixture {
        fn new(n: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (signer, _) = Signer::generate().unwrap();
            signer.publish(dir.path()).unwrap();
            let mut head = ChainHead::EMPTY;
            let mut lines = Vec::new();
            for _ in 0..n {
                let (line, h) = seal(&record("acme", "2026-11-28T10:00:00Z"), head).unwrap();
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

        fn checkpoint(&self, seq: u64) -> Checkpoint {
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
            )
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
            verify_tenant(self.dir.path(), "acme", &Keys::published(self.dir.path()))
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
            f.write_checkpoints(&[f.checkpoint(3), f.checkpoint(8)]);
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
        );
        f.write_checkpoints(&[forged]);
        // Published keys accept it: whoever writes the directory can publish a key.
        assert_eq!(reason(&f.verify()), None);
        let pinned = Keys::Pinned(
            hex::decode(f.signer.public_hex())
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let report = verify_tenant(f.dir.path(), "acme", &pinned);
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
}
