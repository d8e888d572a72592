//! Files written whole or not at all: a reader (the proxy reloading a JWKS, a test harness
//! reading the ready file, a CLI command reading the vault) sees the old content or the new,
//! never half of either.

use std::io::Write as _;
use std::path::Path;

/// The directory `path` is in (`.` for a bare file name).
pub fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// Replaces `path` with `bytes`: written to a temporary file beside it (same file system),
/// synced, renamed over it, and the directory synced, so a crash leaves one or the other. The
/// file is readable by its owner only (`0600`, the temporary file's mode).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with_mode(path, bytes, None)
}

/// [`replace`] for a file other users' processes read (a CA bundle): mode `0644`.
pub fn replace_readable_by_all(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with_mode(path, bytes, Some(0o644))
}

fn replace_with_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = directory_of(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&path), 0o600);
        replace_readable_by_all(&path, b"bundle").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bundle");
        assert_eq!(mode(&path), 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(directory_of(Path::new("vault.json")), Path::new("."));
        assert_eq!(directory_of(Path::new("a/vault.json")), Path::new("a"));
    }
}
