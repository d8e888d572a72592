//! One proxy writes an audit directory at a time.
//!
//! Each tenant's chain is continued from what the writer last wrote; a second writer in the
//! same directory (two proxies given one `[audit] dir`, a shared hostPath) interleaves records
//! and checkpoints, so both refuse requests on and off and the trail no longer verifies. The
//! writer therefore holds an exclusive advisory lock (`flock`) on the directory itself for the
//! life of the process: a second proxy fails at start instead, told which process holds it
//! (read from [`LOCK_FILE`], which the holder writes). The lock is on the directory, not on
//! that file: a file can be deleted and created again while its lock lives on the deleted
//! one, which would let a second writer in. Readers (`audit verify`, `audit export`) take no
//! lock and are never kept out. The kernel releases the lock when the process ends, however it
//! ends.

use std::fs::{File, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// The lock file in the audit directory; it names the process holding it.
pub const LOCK_FILE: &str = ".tenant-proxy.lock";

/// Longest holder description read back from the lock file.
const MAX_HOLDER_LEN: usize = 200;

/// The audit directory's lock, held while this value lives.
#[derive(Debug)]
pub struct DirLock {
    /// The directory locked, open.
    dir: File,
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
        let handle = File::open(dir).map_err(LockError::Io)?;
        let path = dir.join(LOCK_FILE);
        match handle.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = super::layout::open_regular(&super::layout::reading(), &path)
                    .ok()
                    .and_then(|mut f| holder(&mut f));
                return Err(LockError::Held(holder));
            }
            Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        let me = format!("pid {} on host `{}`\n", std::process::id(), hostname());
        super::layout::open_regular(
            super::layout::file_options()
                .write(true)
                .create(true)
                .truncate(true),
            &path,
        )
        .and_then(|mut file| file.write_all(me.as_bytes()))
        .map_err(LockError::Io)?;
        Ok(Self { dir: handle })
    }

    /// Whether `dir` is still the directory locked. Once it was removed or replaced (a new
    /// directory made at its path), the lock holds a directory nobody sees, and anyone may
    /// lock the new one.
    pub fn holds(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (self.dir.metadata(), std::fs::metadata(dir)) {
            (Ok(locked), Ok(now)) => locked.dev() == now.dev() && locked.ino() == now.ino(),
            _ => false,
        }
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
        let again = DirLock::take(dir.path()).unwrap();
        // Deleting the lock file (or writing another) does not free the directory.
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            DirLock::take(dir.path()),
            Err(LockError::Held(None))
        ));
        std::fs::write(dir.path().join(LOCK_FILE), "").unwrap();
        assert!(matches!(
            DirLock::take(dir.path()),
            Err(LockError::Held(None))
        ));
        drop(again);
        DirLock::take(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_knows_when_its_directory_was_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("audit");
        std::fs::create_dir(&dir).unwrap();
        let lock = DirLock::take(&dir).unwrap();
        assert!(lock.holds(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!lock.holds(&dir), "removed");
        std::fs::create_dir(&dir).unwrap();
        assert!(!lock.holds(&dir), "made anew");
        // Which is why it matters: the new directory is anyone's.
        DirLock::take(&dir).unwrap();
    }
}
