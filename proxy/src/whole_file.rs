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

/// The bytes of the regular file at `path` (through its symbolic links: a Kubernetes Secret or
/// ConfigMap is one). Anything else is an error at once.
///
/// SECURITY: a FIFO where a watched file was (the revocation list, the admin token, a JWKS)
/// blocked the reading thread for ever: the proxy's reloads stopped there, revocations were
/// never applied, and `/readyz` still said the last reload was fine. The open does not block
/// (`O_NONBLOCK`, which a regular file ignores) and a file that is not regular is refused.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    read_with(&reading(), path)
}

/// [`read`], opening with `options` (the audit trail's add `O_NOFOLLOW`).
pub fn read_with(options: &std::fs::OpenOptions, path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = open_regular_with(options, path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Options that read a file without blocking on one that is not regular (see [`read`]).
fn reading() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).custom_flags(nix::libc::O_NONBLOCK);
    options
}

/// The regular file at `path`, opened for reading without blocking on anything else (see
/// [`read`]).
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    open_regular_with(&reading(), path)
}

/// The file at `path` opened with `options` (which should carry `O_NONBLOCK`), refused unless
/// it is a regular file.
pub fn open_regular_with(
    options: &std::fs::OpenOptions,
    path: &Path,
) -> std::io::Result<std::fs::File> {
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not a regular file (a FIFO, a device or a directory)",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("`{}` is not UTF-8 text: {}", path.display(), e.utf8_error()),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A FIFO, a directory: refused at once, never waited on.
    #[test]
    fn only_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("revoked.txt");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let err = read(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(read_to_string(dir.path()).is_err());
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let file = dir.path().join("f");
        std::fs::write(&file, "text").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        assert_eq!(read_to_string(&dir.path().join("link")).unwrap(), "text");
    }

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
