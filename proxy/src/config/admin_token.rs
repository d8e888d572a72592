//! `[admin] token_file`: the bearer token every admin endpoint but the probes requires.
//!
//! The file is read at start and again with every reload of the tenant configuration (its
//! directory is watched, so a rotated Kubernetes Secret reloads too); a file that cannot be read
//! or holds no usable token fails the start, and at a reload keeps the last good token while the
//! rest of the reload applies. Only
//! a SHA-256 digest of the token is kept, and a presented token is compared with it in constant
//! time; neither is ever logged or printed (`Debug` shows the file, not the token).

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::ConfigProblem;

/// Shortest token accepted, in bytes: a guessable token is no boundary.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The admin token, as its digest.
#[derive(Clone)]
pub struct AdminToken {
    path: PathBuf,
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// Reads the token from `path` (see [`read_token_file`]).
    pub fn read(path: &Path) -> Result<Self, ConfigProblem> {
        let token = read_token_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            digest: sha256(token.as_bytes()),
        })
    }

    /// The file the token was read from (watched for changes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `presented` is the token. SECURITY: both sides are hashed to 32 bytes and
    /// compared without an early exit, so the time taken says nothing about the token (not even
    /// its length).
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.digest.ct_eq(&sha256(presented.as_bytes())).into()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Reads an admin token file: its content without surrounding whitespace (a trailing newline is
/// usual), [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII characters (it travels in an
/// `Authorization` header). Problems name the file, never its content.
pub fn read_token_file(path: &Path) -> Result<Zeroizing<String>, ConfigProblem> {
    let text = Zeroizing::new(
        crate::whole_file::read_to_string(path)
            .map_err(|e| ConfigProblem::file(path, format!("cannot read the admin token: {e}")))?,
    );
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
        return Err(ConfigProblem::file(
            path,
            format!(
                "the admin token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters long (e.g. `openssl rand -hex 32`)"
            ),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigProblem::file(
            path,
            "the admin token must be visible ASCII characters only, without spaces",
        ));
    }
    Ok(Zeroizing::new(token.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_compares_and_never_shows_the_token() {
        let secret = "0123456789abcdef0123";
        let (_dir, path) = file(&format!("{secret}\n"));
        let token = AdminToken::read(&path).unwrap();
        assert!(token.matches(secret));
        for wrong in [
            "",
            "0123456789abcdef012",
            "0123456789abcdef01234",
            " 0123456789abcdef0123",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{token:?}").contains(secret));
    }

    #[test]
    fn refuses_unusable_files() {
        for (name, content) in [
            ("empty", ""),
            ("blank", " \n"),
            ("short", "short-token"),
            ("space inside", "0123456789 abcdef0123"),
            ("control character", "0123456789abcdef\u{1}0123"),
            ("too long", &"x".repeat(MAX_TOKEN_LEN + 1)),
        ] {
            let (_dir, path) = file(content);
            let problem = AdminToken::read(&path).expect_err(name);
            assert!(
                !problem.message.contains(content.trim()) || content.trim().is_empty(),
                "{name}"
            );
        }
        let missing = AdminToken::read(Path::new("/nonexistent/admin-token")).unwrap_err();
        assert!(
            missing.message.contains("cannot read"),
            "{}",
            missing.message
        );
    }
}
