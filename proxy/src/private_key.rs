//! Private keys the proxy generates (`token keygen`, `audit keygen`), written as PEM that other
//! tools read too.
//!
//! An Ed25519 key is written as PKCS#8 v1 (RFC 8410 section 7: version 0 and the 32-byte seed).
//! ring generates v2 (RFC 5958 `OneAsymmetricKey`, with the public key attached), which OpenSSL
//! 3.0 and Python's `cryptography` refuse, so a platform could not sign its agents' tokens with
//! its own issuer from a key made here. ring reads v1 with `from_pkcs8_maybe_unchecked`, which
//! is how every loader in the proxy reads keys.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use zeroize::Zeroizing;

/// What precedes the 32-byte seed in a PKCS#8 v1 Ed25519 key: SEQUENCE { INTEGER 0,
/// SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } } (RFC 8410, section 10.3).
const V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Where the seed sits in the v2 document ring generates: the same prefix but version 1 and
/// the outer length of a key with its public key attached.
const RING_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new random Ed25519 key: the key pair, and its PKCS#8 v1 DER. `None` when the system's
/// random source fails, or ring's document is not the shape this module knows.
pub fn generate_ed25519() -> Option<(Ed25519KeyPair, Zeroizing<Vec<u8>>)> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).ok()?;
    let v2 = doc.as_ref();
    let seed = v2
        .strip_prefix(&RING_V2_PREFIX[..])
        .and_then(|rest| rest.get(..32))?;
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&V1_PREFIX);
    der.extend_from_slice(seed);
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).ok()?;
    Some((pair, der))
}

/// `der` as a `-----BEGIN PRIVATE KEY-----` PEM block, lines of 64 characters.
pub fn pem(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut pem = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair as _, UnparsedPublicKey, ED25519};

    #[test]
    fn a_generated_key_is_pkcs8_v1_and_signs_as_its_pair() {
        let (pair, der) = generate_ed25519().expect("generated");
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], V1_PREFIX);
        let again = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
        assert_eq!(again.public_key().as_ref(), pair.public_key().as_ref());
        let signature = again.sign(b"checkpoint");
        UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref())
            .verify(b"checkpoint", signature.as_ref())
            .unwrap();
        // Two keys are two keys.
        let (other, _) = generate_ed25519().unwrap();
        assert_ne!(other.public_key().as_ref(), pair.public_key().as_ref());
    }

    /// The point of the format: OpenSSL reads the key and derives the same public key.
    #[test]
    fn openssl_reads_a_generated_key() {
        let (pair, der) = generate_ed25519().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem(&der).as_bytes()).unwrap();
        let out = match std::process::Command::new("openssl")
            .args(["pkey", "-in"])
            .arg(&path)
            .args(["-pubout", "-outform", "DER"])
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("openssl is not installed ({e}): not checked");
                return;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SubjectPublicKeyInfo: 12 bytes of header, then the 32-byte key.
        assert_eq!(out.stdout.get(12..), Some(pair.public_key().as_ref()));
    }
}
