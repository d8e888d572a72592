//! What the writer reads and writes on disk outside the record append: probing that the audit
//! directory takes writes, recovering a partition's chain head (a torn tail cut off and kept
//! beside the file), and the checkpoints file's last line and appends.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::Cursor;
use crate::audit::chain::{self, ChainHead};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::layout::{self, FilePos};
use crate::audit::{tail, FsyncPolicy};

pub(in crate::audit) fn probe_writable(dir: &Path) -> io::Result<()> {
    layout::create_dirs(dir, dir)?;
    probe_file(&dir.join(".write-probe"))
}

/// [`probe_writable`] without creating anything that stays: the probe goes into `dir`, or into
/// the nearest existing directory above it (where `probe_writable` would create `dir`), under a
/// name of this process's own, so that it never meets a running proxy's probe.
pub(in crate::audit) fn check_writable(dir: &Path) -> io::Result<()> {
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
    let created = layout::open_regular(
        layout::file_options()
            .write(true)
            .create(true)
            .truncate(true),
        probe,
    );
    let written = created.and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_data()
    });
    let removed = fs::remove_file(probe);
    written.and(removed)
}

/// The last complete line of a tenant's checkpoints file.
pub(super) struct LastCheckpoint {
    /// Its `seq` (0 when the line is not a checkpoint).
    pub(super) seq: u64,
    /// Its line's hash, which the next checkpoint links to.
    pub(super) hash: [u8; 32],
    /// The interval it states (none for a legacy checkpoint).
    pub(super) interval_ms: Option<u64>,
}

/// The last complete line of a tenant's checkpoints file; `None` when there is none. A line
/// that is not a checkpoint still gives its hash (the next checkpoint links to what is there;
/// `audit verify` reports the line).
pub(super) fn last_checkpoint(path: &Path) -> io::Result<Option<LastCheckpoint>> {
    let file = match layout::open_regular(&layout::reading(), path) {
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

/// Where a tenant's chain stands on disk: the newest file (a torn last line cut off) and the
/// last complete record, which may be in an earlier file when the newest holds none.
///
/// SECURITY: a last record that is not a chained record makes recovery fail, and the writer
/// keeps refusing, rather than start a chain that cannot be verified.
pub(super) fn recover(tenant_dir: &Path, today: FilePos) -> io::Result<Cursor> {
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
    let file = layout::open_regular(layout::reading().write(true), &newest_path)?;
    let len = keep_torn_tail(&file, &newest_path)?;
    let mut head = ChainHead::EMPTY;
    let mut head_pos = newest;
    for &pos in files.iter().rev() {
        let f = layout::open_regular(&layout::reading(), &pos.path(tenant_dir))?;
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
            // Another tenant's record (its file linked or copied here) is no head to chain on.
            let tenant = tenant_dir.file_name().and_then(|n| n.to_str());
            if tenant != Some(link.tenant.as_str()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the last audit record of `{}` names another tenant",
                        pos.path(tenant_dir).display()
                    ),
                ));
            }
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
    let mut kept = layout::open_regular(
        layout::file_options().create(true).append(true),
        Path::new(&kept_path),
    )?;
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
pub(super) fn append_line(path: &Path, line: &[u8], fsync: FsyncPolicy) -> io::Result<()> {
    let line = [line, b"\n"].concat();
    // The checkpoints file is in its partition, directly below the audit directory.
    if let Some(partition) = path.parent() {
        layout::create_dirs(partition.parent().unwrap_or(partition), partition)?;
    }
    let mut file = layout::open_regular(
        layout::file_options().create(true).read(true).append(true),
        path,
    )?;
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
