//! Bytes as lowercase hex digits, for the hashes and ids every request writes.
//!
//! `hex::encode` collects an iterator of chars into a string, a few times slower than writing
//! the digits into a buffer; a request writes several (its id, trace and span ids, its body's
//! hash, its audit record's previous hash).

/// `bytes` as lowercase hex: the digits written by `hex` into a buffer on the stack for up to
/// 32 bytes (a SHA-256 hash, an id), by `hex::encode` beyond.
pub fn of(bytes: &[u8]) -> String {
    let mut digits = [0u8; 64];
    let Some(out) = digits.get_mut(..2 * bytes.len()) else {
        return hex::encode(bytes);
    };
    // Cannot fail: n bytes take 2n digits, and hex digits are ASCII (so the lossy conversion
    // copies them as they are).
    let _ = hex::encode_to_slice(bytes, out);
    String::from_utf8_lossy(out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_hex_encode_at_every_length() {
        let bytes: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=bytes.len() {
            assert_eq!(of(&bytes[..n]), hex::encode(&bytes[..n]), "{n}");
        }
    }
}
