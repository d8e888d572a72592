//! Appending a tenant's sealed records to its files: one segment per file, each written at the
//! length the writer last left the file, a failed append cut back, and a file changed underneath
//! the writer (removed, moved, written by another process) failing the partition.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

use super::disk::recover;
use super::Writer;
use crate::audit::chain;
use crate::audit::layout::{self, FilePos};
use crate::audit::{AuditEntry, FsyncPolicy};

impl Writer {
    /// Writes `records` of `tenant` (`retrying`: an earlier attempt may have left part of
    /// them); returns each record's line once all are durable. The tenant's chain head only
    /// advances when the whole write succeeded.
    pub(super) fn write_tenant(
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
            if !is_at(&tenant_dir, &path, &meta) {
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
                        layout::open_regular(
                            layout::file_options().write(true),
                            &done.pos.path(&tenant_dir),
                        )?
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
}

/// Whether `path` names the very file `open` is (its device and inode) without a symbolic link
/// on the way from `tenant_dir` (the partition, its year and month directories, the file): not
/// when the path is gone, names another file, or leads through a link (a partition moved out of
/// the trail and linked back still led to the open file, and its records went on outside).
fn is_at(tenant_dir: &Path, path: &Path, open: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    for dir in path.ancestors().skip(1) {
        if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return false;
        }
        if dir == tenant_dir {
            break;
        }
    }
    fs::symlink_metadata(path)
        .is_ok_and(|at| at.is_file() && at.dev() == open.dev() && at.ino() == open.ino())
}

/// Bytes for one file, to be written at offset `start`.
pub(super) struct Segment {
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
        if let Some(month) = path.parent() {
            layout::create_dirs(tenant_dir.parent().unwrap_or(tenant_dir), month)?;
        }
        let file = layout::open_regular(layout::file_options().create(true).append(true), &path)?;
        *slot = Some((pos, file));
    }
    match slot {
        Some((_, f)) => Ok(f),
        None => Err(io::Error::other("no audit file open")),
    }
}
