//! Secret values: zeroized on drop, never printed.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A credential's value. `Debug` and `Display` print a placeholder; the bytes are wiped when the
/// last owner drops it.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps `bytes` (taken by value so no unwiped copy stays behind).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers write them only toward an authorized upstream.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A short, non-reversible fingerprint for listings: `sha256:` + 12 hex digits.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&*self.0);
        format!("sha256:{}", &hex::encode(digest)[..12])
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = SecretValue::new(b"sk-canary-123".to_vec());
        assert!(!format!("{s:?} {s}").contains("canary"));
        assert_eq!(s.expose(), b"sk-canary-123");
        assert!(s.fingerprint().starts_with("sha256:"));
    }

    #[test]
    fn panic_messages_do_not_carry_the_value() {
        let s = SecretValue::new(b"sk-canary-456".to_vec());
        let payload = std::panic::catch_unwind(|| panic!("while handling {s:?} / {s}"))
            .expect_err("panicked");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            message.contains("redacted") && !message.contains("canary"),
            "{message}"
        );
    }
}
