//! Bytes as lowercase hex digits, for the hashes and ids every request writes.
//!
//! `hex::encode` collects an iterator of chars into a string, a few times slower than writing
//! the digits into a buffer; a request writes several (its id, trace and span ids, its body's
//! hash, its audit record's previous hash).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hex.
pub fn of(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex to `out`: two ASCII digits a byte, pushed as chars (no
/// buffer to check as UTF-8 afterwards; a lossy conversion cost as much as the encoding).
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_hex_encode_at_every_length() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        for n in 0..=bytes.len() {
            assert_eq!(of(&bytes[..n]), hex::encode(&bytes[..n]), "{n}");
        }
        assert_eq!(of(&[0x00, 0x0f, 0xf0, 0xff, 0xa5]), "000ff0ffa5");
        let mut out = String::from("00-");
        push(&mut out, &[0x0a]);
        assert_eq!(out, "00-0a");
    }
}
