//! `audit export`: one tenant's records in a time range, byte for byte as written (so their
//! hashes still link), followed by the checkpoints that vouch for them: those within the
//! exported `seq` range and the first one after it. The records are one unbroken stretch of the
//! chain, from the first record whose `time` is in the range to the last, and on to the first
//! checkpoint at or after it, so that an untouched export always verifies and its last record
//! is signed.
//!
//! SECURITY: only `DIR/<tenant>/` is read, found by names alone and without following
//! symbolic links; another tenant's files are never opened.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::Deserialize;
use time::OffsetDateTime;

use super::chain;
use super::checkpoint::Checkpoint;
use super::layout::{self, CHECKPOINTS_FILE};
use crate::ids::TenantId;

/// A time range; either end may be open. `from` is inclusive, `until` exclusive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// First instant included.
    pub from: Option<OffsetDateTime>,
    /// First instant excluded.
    pub until: Option<OffsetDateTime>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `--from`/`--to` is neither a date nor an RFC 3339 time.
    #[error("`{0}` is neither a date (`2026-11-28`) nor an RFC 3339 time")]
    BadTime(String),
    /// `--to` is before `--from`.
    #[error("`--to {to}` is before `--from {from}`: the range holds nothing")]
    ReversedRange {
        /// `--from` as given.
        from: String,
        /// `--to` as given.
        to: String,
    },
    /// The tenant has no partition.
    #[error("no audit partition for tenant `{0}`")]
    NoPartition(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Range {
    /// Parses `--from` and `--to`: a date means the whole day (UTC), a time that instant.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, ExportError> {
        let bound = |text: &str, end: bool| -> Result<OffsetDateTime, ExportError> {
            let bad = || ExportError::BadTime(text.chars().take(64).collect());
            if let Ok(t) =
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            {
                return Ok(if end {
                    t + time::Duration::nanoseconds(1)
                } else {
                    t
                });
            }
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let day = time::Date::parse(text, &format).map_err(|_| bad())?;
            let day = if end {
                day.next_day().ok_or_else(bad)?
            } else {
                day
            };
            Ok(day.midnight().assume_utc())
        };
        let range = Self {
            from: from.map(|t| bound(t, false)).transpose()?,
            until: to.map(|t| bound(t, true)).transpose()?,
        };
        // A range that ends before it starts holds nothing: a mistake, not an empty export.
        if let (Some(f), Some(u)) = (range.from, range.until) {
            if u <= f {
                return Err(ExportError::ReversedRange {
                    from: from.unwrap_or_default().chars().take(64).collect(),
                    to: to.unwrap_or_default().chars().take(64).collect(),
                });
            }
        }
        Ok(range)
    }

    fn contains(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    /// Records written.
    pub records: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

#[derive(Deserialize)]
struct RecordTime {
    time: String,
}

/// Writes `tenant`'s records in `range` and their checkpoints to `out`, one JSON line each.
///
/// The records written are one unbroken stretch of the chain: from the first record whose
/// `time` is in the range to the last one, with every record chained between them. A record's
/// `time` is when its request arrived, but records are chained when their requests end, so
/// `time` goes back and forth along the chain; records picked by `time` alone would leave holes
/// in their own `seq` range, which `audit verify --file` must report as `deleted`.
pub fn export(
    audit_dir: &Path,
    tenant: &TenantId,
    range: Range,
    out: &mut impl Write,
) -> Result<ExportSummary, ExportError> {
    let tenant_dir = audit_dir.join(tenant.as_str());
    let is_dir = fs::symlink_metadata(&tenant_dir).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Err(ExportError::NoPartition(tenant.to_string()));
    }
    let files = layout::record_files(&tenant_dir)?;
    // First the `seq` range, then its records: the chain between the first and the last
    // record in the time range, whatever their own `time`.
    let mut seqs: Option<(u64, u64)> = None;
    for_each_record(&tenant_dir, &files, tenant, |line, seq| {
        let time = serde_json::from_slice::<RecordTime>(line)
            .ok()
            .and_then(|r| {
                OffsetDateTime::parse(&r.time, &time::format_description::well_known::Rfc3339).ok()
            });
        if time.is_some_and(|t| range.contains(t)) {
            seqs = Some(seqs.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
        }
        Ok(())
    })?;
    let mut summary = ExportSummary::default();
    let Some((first, last)) = seqs else {
        return Ok(summary);
    };
    let path = tenant_dir.join(CHECKPOINTS_FILE);
    let checkpoints = match layout::read_regular(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let checkpoint_lines = || {
        checkpoints
            .split_inclusive(|b| *b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\n"))
            .filter_map(|line| Some((line, serde_json::from_slice::<Checkpoint>(line).ok()?)))
            .filter(|(_, c)| c.tenant == tenant.as_str())
    };
    // The records run on to the first checkpoint at or after the range's last one, so that a
    // checkpoint in the file signs the last record (a file in which none signs a record
    // vouches for nothing: `audit verify --file` reports it `unsigned`); at most one checkpoint
    // interval more. Records not yet signed (the writer signs every interval) stay unsigned.
    let last = checkpoint_lines()
        .map(|(_, c)| c.seq)
        .filter(|seq| *seq >= last)
        .min()
        .unwrap_or(last);
    // The proxy may have written more since the first pass: the range is the one found there.
    for_each_record(&tenant_dir, &files, tenant, |line, seq| {
        if (first..=last).contains(&seq) {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            summary.records += 1;
        }
        Ok(())
    })?;
    let mut after_range = false;
    for (line, c) in checkpoint_lines() {
        let wanted = if c.seq > last {
            !std::mem::replace(&mut after_range, true)
        } else {
            c.seq >= first
        };
        if wanted {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            summary.checkpoints += 1;
        }
    }
    Ok(summary)
}

/// Calls `f` with each complete record line of `tenant` in `files` (in chain order) and its
/// `seq`; a torn last line was never a record, and lines of other tenants are skipped.
fn for_each_record(
    tenant_dir: &Path,
    files: &[layout::FilePos],
    tenant: &TenantId,
    mut f: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    for pos in files {
        let bytes = layout::read_regular(&pos.path(tenant_dir))?;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            let Some(link) = chain::parse_link(line) else {
                continue;
            };
            if link.tenant == tenant.as_str() {
                f(line, link.seq)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The `seq` of every line of an export, records and checkpoints alike.
    fn seqs(out: &[u8]) -> Vec<u64> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }
    use crate::audit::chain::{line_hash, seal, tests::record, ChainHead};
    use crate::audit::checkpoint::{CheckpointLink, Signer};

    #[test]
    fn a_range_comes_with_the_checkpoints_that_prove_it() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = Signer::generate().unwrap();
        let tenant_dir = dir.path().join("acme");
        let mut head = ChainHead::EMPTY;
        let mut checkpoints = String::new();
        let mut last_checkpoint = crate::audit::chain::GENESIS;
        for (day, times) in [("28", ["10", "11", "12"]), ("29", ["10", "11", "12"])] {
            let mut text = Vec::new();
            for hour in times {
                let time = format!("2026-11-{day}T{hour}:00:00Z");
                let (line, h) = seal(&record("acme", &time), head).unwrap();
                head = h;
                text.extend_from_slice(&line);
                text.push(b'\n');
                if head.seq.is_multiple_of(2) {
                    let c = signer.checkpoint(
                        "acme",
                        head.seq,
                        &line_hash(&line),
                        format!("2026/11/{day}.jsonl"),
                        time.clone(),
                        CheckpointLink {
                            prev: last_checkpoint,
                            interval: std::time::Duration::from_secs(3600),
                        },
                    );
                    let c = serde_json::to_string(&c).unwrap();
                    last_checkpoint = line_hash(c.as_bytes());
                    checkpoints.push_str(&c);
                    checkpoints.push('\n');
                }
            }
            let path = tenant_dir.join(format!("2026/11/{day}.jsonl"));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        fs::write(tenant_dir.join(CHECKPOINTS_FILE), checkpoints).unwrap();

        let tenant = TenantId::new("acme").unwrap();
        let range = Range::parse(Some("2026-11-28T11:00:00Z"), Some("2026-11-28")).unwrap();
        let mut out = Vec::new();
        let summary = export(dir.path(), &tenant, range, &mut out).unwrap();
        assert_eq!(
            summary,
            ExportSummary {
                records: 3,
                checkpoints: 3
            }
        );
        let seqs = seqs(&out);
        // Records 2 and 3, then 4, which the first checkpoint after them signs; the checkpoints
        // at 2 and 4, and the first one after the records (6).
        assert_eq!(seqs, [2, 3, 4, 2, 4, 6]);

        let missing = TenantId::new("globex").unwrap();
        assert!(matches!(
            export(dir.path(), &missing, Range::default(), &mut Vec::new()),
            Err(ExportError::NoPartition(_))
        ));
    }

    #[test]
    fn a_range_is_an_unbroken_stretch_of_the_chain() {
        // Records are chained when their requests end, `time` is when they arrived: it goes
        // back and forth along the chain.
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = Signer::generate().unwrap();
        signer.publish(dir.path()).unwrap();
        let tenant_dir = dir.path().join("acme");
        let mut head = ChainHead::EMPTY;
        let mut text = Vec::new();
        for time in ["00", "05", "58", "10", "03", "20"].map(|s| match s {
            "58" => "2026-11-28T09:59:58Z".to_string(),
            s => format!("2026-11-28T10:00:{s}Z"),
        }) {
            let (line, h) = seal(&record("acme", &time), head).unwrap();
            head = h;
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let path = tenant_dir.join("2026/11/28.jsonl");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        let c = signer.checkpoint(
            "acme",
            head.seq,
            &head.hash,
            "2026/11/28.jsonl".into(),
            "2026-11-28T10:00:30Z".into(),
            CheckpointLink {
                prev: crate::audit::chain::GENESIS,
                interval: std::time::Duration::from_secs(60),
            },
        );
        fs::write(
            tenant_dir.join(CHECKPOINTS_FILE),
            format!("{}\n", serde_json::to_string(&c).unwrap()),
        )
        .unwrap();

        let tenant = TenantId::new("acme").unwrap();
        let trust = crate::audit::verify::Keys::published(dir.path()).into();
        for (name, from, to, expected) in [
            // Arrived up to 10:00:04: seq 1, 3 and 5, and 2 and 4 chained between them.
            // Then on to seq 6, which the checkpoint signs.
            (
                "to",
                None,
                Some("2026-11-28T10:00:04Z"),
                vec![1, 2, 3, 4, 5, 6, 6],
            ),
            // Arrived from 10:00:04: seq 2, 4 and 6, and 3 and 5 between them.
            (
                "from",
                Some("2026-11-28T10:00:04Z"),
                None,
                vec![2, 3, 4, 5, 6, 6],
            ),
            (
                "the whole day",
                Some("2026-11-28"),
                Some("2026-11-28"),
                vec![1, 2, 3, 4, 5, 6, 6],
            ),
        ] {
            let range = Range::parse(from, to).unwrap();
            let mut out = Vec::new();
            export(dir.path(), &tenant, range, &mut out).unwrap();
            let seqs = seqs(&out);
            assert_eq!(seqs, expected, "{name}");
            let report = crate::audit::verify::verify_export(&out, "x.jsonl", &trust);
            assert_eq!(report.problem, None, "{name}: {report:?}");
        }
    }

    #[test]
    fn ranges_take_dates_as_whole_days() {
        let r = Range::parse(Some("2026-11-28"), Some("2026-11-28")).unwrap();
        let at = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        for (name, t, inside) in [
            ("start of day", "2026-11-28T00:00:00Z", true),
            ("end of day", "2026-11-28T23:59:59.999Z", true),
            ("day before", "2026-11-27T23:59:59Z", false),
            ("day after", "2026-11-29T00:00:00Z", false),
        ] {
            assert_eq!(r.contains(at(t)), inside, "{name}");
        }
        // One day is a range; a range that ends before it starts is refused.
        assert!(matches!(
            Range::parse(Some("2026-12-10"), Some("2026-12-01")),
            Err(ExportError::ReversedRange { .. })
        ));
        let r = Range::parse(None, Some("2026-11-28T10:00:00Z")).unwrap();
        assert!(r.contains(at("2026-11-28T10:00:00Z")));
        assert!(!r.contains(at("2026-11-28T10:00:01Z")));
        assert!(matches!(
            Range::parse(Some("yesterday"), None),
            Err(ExportError::BadTime(_))
        ));
    }
}
