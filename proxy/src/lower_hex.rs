//! Bytes as lowercase hex digits, for the hashes and ids every request writes.
//!
//! `hex::encode` collects an iterator of chars into a string, a few times slower than writing
//! the digits into a buffer; a request writes several (its id, trace and span ids, its body's
//! hash, its audit record's previous hash).

/// `bytes` as lowercase hex, written in place into a buffer of exactly the right size.
pub fn of(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    // Neither can fail: n bytes take 2n digits, and every digit is ASCII. Checked rather than
    // assumed (no `unsafe`); for ASCII the UTF-8 check is a word-at-a-time scan. (A lossy
    // conversion cost as much as the encoding itself.)
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
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
    }
}
