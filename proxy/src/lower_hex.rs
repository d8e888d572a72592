//! Bytes as lowercase hex digits, for the hashes and ids every request writes.
//!
//! `hex::encode` collects an iterator of chars into a string, a few times slower than writing
//! the digits into a buffer; a request writes several (its id, trace and span ids, its body's
//! hash, its audit record's previous hash). Each byte is one lookup of its two digits.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two digits of every byte value.
const PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// `bytes` as lowercase hex.
pub fn of(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    // Hex digits are ASCII: the check always passes (one pass over the digits, word by word;
    // pushing them as chars one by one cost several times more).
    for_each_digits(bytes, |digits| {
        out.push_str(std::str::from_utf8(digits).unwrap_or_default());
    });
}

/// Appends `bytes` as lowercase hex to `out`, a byte buffer (an audit line).
pub fn extend(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for_each_digits(bytes, |digits| out.extend_from_slice(digits));
}

/// Hands `f` the digits of `bytes` in order, a stack buffer of them at a time.
fn for_each_digits(bytes: &[u8], mut f: impl FnMut(&[u8])) {
    let mut digits = [0u8; 64];
    for chunk in bytes.chunks(digits.len() / 2) {
        for (pair, &b) in digits.chunks_exact_mut(2).zip(chunk) {
            pair.copy_from_slice(&PAIRS[usize::from(b)]);
        }
        f(&digits[..2 * chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_hex_encode_at_every_length() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for n in 0..=bytes.len() {
            let want = hex::encode(&bytes[..n]);
            assert_eq!(of(&bytes[..n]), want, "{n}");
            let mut line = b"x".to_vec();
            extend(&mut line, &bytes[..n]);
            assert_eq!(line, format!("x{want}").into_bytes(), "{n}");
        }
        assert_eq!(of(&[0x00, 0x0f, 0xf0, 0xff, 0xa5]), "000ff0ffa5");
        let mut out = String::from("00-");
        push(&mut out, &[0x0a]);
        assert_eq!(out, "00-0a");
    }
}
