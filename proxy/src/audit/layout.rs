//! Where a tenant's records live: `DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl`, then
//! `<dd>_000001.jsonl`, `<dd>_000002.jsonl`, … when a day's file reaches its size limit
//! (`_` sorts after `.`, so the lexical order of the paths is the chain's order), and the
//! signed checkpoints in `DIR/<tenant>/checkpoints.jsonl`. Public keys of the checkpoint signers
//! are in `DIR/_keys/<key_id>.pub`: a tenant id starts with a letter or digit, so `_keys` can
//! never be a tenant's partition.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The mode the trail's files are created with: read and written by the proxy's user, read by
/// its group (an auditor, a log shipper), never by other users of the host, whatever the
/// process's umask allows: records name tenants' paths, models and token ids.
const FILE_MODE: u32 = 0o640;
/// The mode of its directories, to the same end.
const DIR_MODE: u32 = 0o750;

/// Creates `dir`, a directory at or below the audit directory `root`, and its missing parents
/// with [`DIR_MODE`]; fails when a directory below `root` on the way is a symbolic link or
/// not a directory (`root` itself, and what leads to it, are the operator's to place).
///
/// SECURITY: whoever can write the audit directory could link a partition (or a year or month
/// in it) anywhere the proxy's user can write, and have one tenant's records written there.
pub(super) fn create_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = fs::DirBuilder::new();
    builder.mode(DIR_MODE);
    builder.recursive(true).create(root)?;
    builder.recursive(false);
    let below = dir.strip_prefix(root).map_err(|_| {
        io::Error::other(format!("{} is not below {}", dir.display(), root.display()))
    })?;
    let mut at = root.to_path_buf();
    for part in below.components() {
        at.push(part);
        match builder.create(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let kind = fs::symlink_metadata(&at)?.file_type();
        if !kind.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory (a symbolic link or a file): the audit trail is never written through one",
                at.display()
            )));
        }
    }
    Ok(())
}

/// Flags every open of a file inside the audit directory carries.
///
/// SECURITY: a symbolic link is not followed (`O_NOFOLLOW`): planted as a day file, the lock
/// file or a public key, it had the proxy truncate and write any file its user can (its
/// signing key, its configuration), or one tenant's records land in another's files. A FIFO
/// does not block the open (`O_NONBLOCK`): planted as one tenant's day file, it stopped the
/// writer thread, and with it every tenant's records, while requests were still served. What
/// opens is then checked to be a regular file ([`open_regular`]).
const SAFE_OPEN: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK;

#[cfg(test)]
thread_local! {
    /// Set by a test that stands `/dev/full`, linked as a day file, in for a full disk: on its
    /// thread, trail files open through links and may be devices.
    pub(super) static FULL_DISK_BY_LINK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`SAFE_OPEN`], but for a test's stand-in for a full disk.
fn safe_open() -> i32 {
    #[cfg(test)]
    if FULL_DISK_BY_LINK.get() {
        return nix::libc::O_NONBLOCK;
    }
    SAFE_OPEN
}

/// Options that create a file of the trail with [`FILE_MODE`] (an existing file keeps its own),
/// opened safely ([`SAFE_OPEN`]; use [`open_regular`]).
pub(super) fn file_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.mode(FILE_MODE).custom_flags(safe_open());
    options
}

/// Opens a file inside the audit directory with `options` (from [`file_options`] or
/// [`reading`]): anything but a regular file (a FIFO, a device, a directory) is refused.
///
/// A file with other names (hard links) is not: a `cp -al` snapshot of the trail gives every
/// file one, and refusing them would refuse every tenant until the snapshot is gone. A link
/// made by whoever writes the directory reaches only files that one may write already (the
/// kernel's `protected_hardlinks`), and one to another tenant's file is refused by recovery
/// (its last record names another tenant).
pub(super) fn open_regular(options: &fs::OpenOptions, path: &Path) -> io::Result<fs::File> {
    #[cfg(test)]
    if FULL_DISK_BY_LINK.get() {
        return options.open(path);
    }
    crate::whole_file::open_regular_with(options, path)
}

/// Options that read a file inside the audit directory safely (see [`SAFE_OPEN`]).
pub(super) fn reading() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.read(true).custom_flags(safe_open());
    options
}

/// The bytes of a regular file inside the audit directory (see [`open_regular`]).
pub(super) fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    crate::whole_file::read_with(&reading(), path)
}

/// The file of a tenant's signed checkpoints, inside its partition.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

/// The directory of the signers' public keys, inside the audit root.
pub const KEYS_DIR: &str = "_keys";

/// A record file's place in the chain: its day and its part within the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FilePos {
    /// Year.
    pub year: u16,
    /// Month (1-12).
    pub month: u8,
    /// Day of the month.
    pub day: u8,
    /// Size-rotation part: 0 for `<dd>.jsonl`, n for `<dd>_<n>.jsonl`.
    pub part: u32,
}

impl FilePos {
    /// Part 0 of the UTC day of `t`.
    pub fn day_of(t: SystemTime) -> Self {
        let t = time::OffsetDateTime::from(t);
        Self {
            year: u16::try_from(t.year()).unwrap_or(0),
            month: u8::from(t.month()),
            day: t.day(),
            part: 0,
        }
    }

    /// The next part of the same day.
    pub fn next_part(self) -> Self {
        Self {
            part: self.part + 1,
            ..self
        }
    }

    /// Whether both are parts of the same day.
    pub fn same_day(self, other: Self) -> bool {
        (self.year, self.month, self.day) == (other.year, other.month, other.day)
    }

    /// The path relative to the tenant's partition, `/`-separated (`2026/11/28_000001.jsonl`).
    pub fn rel(self) -> String {
        let Self {
            year,
            month,
            day,
            part,
        } = self;
        if part == 0 {
            format!("{year:04}/{month:02}/{day:02}.jsonl")
        } else {
            format!("{year:04}/{month:02}/{day:02}_{part:06}.jsonl")
        }
    }

    /// The file's path under `tenant_dir`.
    pub fn path(self, tenant_dir: &Path) -> PathBuf {
        tenant_dir.join(self.rel())
    }

    /// Parses a `yyyy/mm/<file name>` triple as this module names them.
    fn parse(year: &str, month: &str, file: &str) -> Option<Self> {
        let stem = file.strip_suffix(".jsonl")?;
        let (day, part) = match stem.split_once('_') {
            Some((d, p)) if p.len() == 6 => (d, digits(p)?),
            Some(_) => return None,
            None => (stem, 0),
        };
        if year.len() != 4 || month.len() != 2 || day.len() != 2 || part == 0 && stem.contains('_')
        {
            return None;
        }
        Some(Self {
            year: u16::try_from(digits(year)?).ok()?,
            month: u8::try_from(digits(month)?).ok()?,
            day: u8::try_from(digits(day)?).ok()?,
            part,
        })
    }
}

fn digits(s: &str) -> Option<u32> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The record files of one tenant's partition in chain order. Only names are read (no file is
/// opened); names that this module does not produce are ignored.
///
/// SECURITY: symbolic links are not followed, so a partition cannot lead a reader into
/// another tenant's files; a link in the place of a year, a month or a record file is an error
/// (skipped, the records behind it read as missing, and `audit verify` said so without naming
/// the link).
pub fn record_files(tenant_dir: &Path) -> io::Result<Vec<FilePos>> {
    let linked = |path: &Path| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is a symbolic link: the trail is never read through one",
                path.display()
            ),
        )
    };
    let mut out = Vec::new();
    for (year, kind) in entries(tenant_dir)? {
        let year_dir = tenant_dir.join(&year);
        if kind.is_symlink() && year.len() == 4 {
            return Err(linked(&year_dir));
        }
        if !kind.is_dir() {
            continue;
        }
        for (month, kind) in entries(&year_dir)? {
            let month_dir = year_dir.join(&month);
            if kind.is_symlink() && month.len() == 2 {
                return Err(linked(&month_dir));
            }
            if !kind.is_dir() {
                continue;
            }
            for (file, kind) in entries(&month_dir)? {
                if kind.is_dir() {
                    continue;
                }
                if let Some(pos) = FilePos::parse(&year, &month, &file) {
                    if kind.is_symlink() {
                        return Err(linked(&month_dir.join(&file)));
                    }
                    out.push(pos);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names and types (links not followed) in `dir`; none when it does not exist.
fn entries(dir: &Path) -> io::Result<Vec<(String, fs::FileType)>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(list) => {
            for e in list {
                let e = e?;
                if let Ok(name) = e.file_name().into_string() {
                    out.push((name, e.file_type()?));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order() {
        let day = FilePos {
            year: 2026,
            month: 11,
            day: 28,
            part: 0,
        };
        let names = [
            day.rel(),
            day.next_part().rel(),
            day.next_part().next_part().rel(),
            FilePos { day: 29, ..day }.rel(),
            FilePos {
                month: 12,
                day: 1,
                ..day
            }
            .rel(),
        ];
        assert_eq!(names[0], "2026/11/28.jsonl");
        assert_eq!(names[1], "2026/11/28_000001.jsonl");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
    }

    #[test]
    fn parse_accepts_only_our_names() {
        for (name, (y, m, f), ok) in [
            ("day", ("2026", "11", "28.jsonl"), Some(0)),
            ("part", ("2026", "11", "28_000002.jsonl"), Some(2)),
            ("checkpoints", ("2026", "11", "checkpoints.jsonl"), None),
            ("short part", ("2026", "11", "28_2.jsonl"), None),
            ("zero part", ("2026", "11", "28_000000.jsonl"), None),
            ("other ext", ("2026", "11", "28.json"), None),
            ("bad year", ("26", "11", "28.jsonl"), None),
        ] {
            assert_eq!(FilePos::parse(y, m, f).map(|p| p.part), ok, "{name}");
        }
    }

    #[test]
    fn lists_files_in_order_without_opening_them() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "2026/11/28_000001.jsonl",
            "2026/11/28.jsonl",
            "2025/12/31.jsonl",
            "2026/11/notes.txt",
        ] {
            let p = dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        fs::write(dir.path().join(CHECKPOINTS_FILE), b"").unwrap();
        let rels: Vec<_> = record_files(dir.path())
            .unwrap()
            .into_iter()
            .map(FilePos::rel)
            .collect();
        assert_eq!(
            rels,
            [
                "2025/12/31.jsonl",
                "2026/11/28.jsonl",
                "2026/11/28_000001.jsonl"
            ]
        );
    }
}
