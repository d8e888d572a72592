//! One proxy writes an audit directory at a time.
//!
//! Each tenant's chain is continued from what the writer last wrote; a second writer in the
//! same directory (two proxies given one `[audit] dir`, a shared hostPath) interleaves records
//! and checkpoints, so both refuse requests on and off and the trail no longer verifies. The
//! writer therefore holds an exclusive advisory lock (`flock`) on [`LOCK_FILE`] in the
//! directory for the life of the process: a second proxy fails at start instead, told which
//! process holds it. Readers (`audit verify`, `audit export`) take no lock and are never
//! kept out. The kernel releases the lock when the process ends, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// The lock file in the audit directory; it names the process holding it.
pub const LOCK_FILE: &str = ".tenant-proxy.lock";

/// Longest holder description read back from the lock file.
const MAX_HOLDER_LEN: usize = 200;

/// The audit directory's lock, held while this value lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; what it wrote about itself, if anything.
    Held(Option<String>),
    /// The lock file cannot be opened or locked.
    Io(io::Error),
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting, and writes this process's
    /// id and host into the lock file for whoever is refused next.
    pub fn take(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LockError::Held(holder(&mut file))),
            Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        let me = format!("pid {} on host `{}`\n", std::process::id(), hostname());
        file.set_len(0)
            .and_then(|()| file.write_all(me.as_bytes()))
            .map_err(LockError::Io)?;
        Ok(Self { _file: file })
    }
}

/// What the holder wrote about itself: one printable line, or nothing.
fn holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.take(MAX_HOLDER_LEN as u64)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty() && line.chars().all(|c| !c.is_control())).then(|| line.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_directory_is_locked_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::take(dir.path()).unwrap();
        // Another open file description is another holder, as another process's would be.
        match DirLock::take(dir.path()) {
            Err(LockError::Held(Some(holder))) => assert_eq!(
                holder,
                format!("pid {} on host `{}`", std::process::id(), hostname())
            ),
            other => panic!("the second lock was not refused: {other:?}"),
        }
        drop(first);
        let _again = DirLock::take(dir.path()).unwrap();
    }
}
