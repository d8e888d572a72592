//! Strict `Transfer-Encoding: chunked` framing (RFC 9112 §7.1), checked as the bytes pass.
//!
//! The bytes themselves are passed on unchanged (pingora decodes them); this only decides where
//! the body ends and refuses any encoding with more than one reading: a chunk line ends in CRLF
//! and nothing else, its size is hex that fits, its extensions are `;name[=token|"quoted"]`, chunk
//! data is followed by exactly CRLF, and the trailer section is well-formed fields ending in an
//! empty line. A lenient decoder that accepts a bare LF, or skips junk after a size, ends the body
//! somewhere else than the upstream's decoder would, and the bytes in between become a second,
//! unchecked request.

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// Longest chunk line (size and extensions) or trailer field accepted.
const MAX_LINE: usize = 4096;
/// Most hex digits in a chunk size, leading zeros included (`u64` holds 16).
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a chunk size.
    SizeStart,
    /// More hex digits, or what follows them.
    Size,
    /// Whitespace after the size or an extension, before `;` or CR.
    ExtSeparator,
    /// Whitespace after `;`, then the first byte of an extension name.
    ExtNameStart,
    /// An extension name.
    ExtName,
    /// Whitespace after an extension name, before `=`, `;` or CR.
    ExtNameEnd,
    /// Whitespace after `=`, then a token or quoted string.
    ExtValueStart,
    /// A token value.
    ExtValueToken,
    /// Inside a quoted value.
    ExtValueQuoted,
    /// After a backslash in a quoted value.
    ExtValueEscape,
    /// Saw the CR ending a chunk line.
    SizeLf,
    /// Chunk data, this many bytes left.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    /// A trailer field name.
    TrailerName,
    /// A trailer field value.
    TrailerValue,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    FinalLf,
    /// The body ended.
    Done,
}

/// Checks a chunked body as it arrives, byte for byte.
#[derive(Debug, Clone)]
pub struct ChunkedValidator {
    state: State,
    size: u64,
    digits: usize,
    line: usize,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
    /// Decoded data bytes seen so far.
    data: u64,
}

/// What [`ChunkedValidator::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Every byte given belongs to the body, which goes on.
    More,
    /// The body ended after this many of the bytes given; the rest belongs to what follows.
    Done(usize),
}

impl ChunkedValidator {
    /// A validator for one body whose trailer section may hold `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            line: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
            data: 0,
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded data bytes so far (what the body will hold).
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Data bytes the body holds at least, counting what the chunk being read declares: more
    /// than the body limit is known from a chunk's size line, before its data is sent.
    pub fn declared_len(&self) -> u64 {
        use State::*;
        let pending = match self.state {
            Data(left) => left,
            Size | ExtSeparator | ExtNameStart | ExtName | ExtNameEnd | ExtValueStart
            | ExtValueToken | ExtValueQuoted | ExtValueEscape | SizeLf => self.size,
            _ => 0,
        };
        self.data.saturating_add(pending)
    }

    /// Checks the next bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Fed, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                // Skip data in bulk: only its length matters here.
                let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += take;
                let left = left - take as u64;
                self.data += take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(Fed::Done(i));
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(if self.state == State::Done {
            Fed::Done(i)
        } else {
            Fed::More
        })
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        if matches!(
            self.state,
            SizeStart
                | Size
                | ExtSeparator
                | ExtNameStart
                | ExtName
                | ExtNameEnd
                | ExtValueStart
                | ExtValueToken
                | ExtValueQuoted
                | ExtValueEscape
                | SizeLf
        ) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkError("a chunk line is too long"));
            }
        }
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > self.max_trailer_bytes {
                return Err(ChunkError("the chunked trailer section is too large"));
            }
        }
        self.state = match (self.state, b) {
            (SizeStart, b) if b.is_ascii_hexdigit() => {
                self.size = u64::from(hex(b));
                self.digits = 1;
                Size
            }
            (SizeStart, _) => return Err(ChunkError("a chunk size is not hexadecimal")),
            (Size, b) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                // Leading zeros count too: the parser the body is read with (httparse) stops
                // at 16 digits whatever their value, and the two must agree on every size line.
                if self.digits > MAX_SIZE_DIGITS {
                    return Err(ChunkError("a chunk size is too large"));
                }
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(hex(b))))
                    .ok_or(ChunkError("a chunk size is too large"))?;
                Size
            }
            (Size | ExtSeparator | ExtName | ExtNameEnd | ExtValueToken, b'\r') => SizeLf,
            (Size | ExtSeparator | ExtName | ExtNameEnd | ExtValueToken, b';') => ExtNameStart,
            (ExtName | ExtNameEnd, b' ' | b'\t') => ExtNameEnd,
            (Size | ExtSeparator | ExtValueToken, b' ' | b'\t') => ExtSeparator,
            (ExtName | ExtNameEnd, b'=') => ExtValueStart,
            (ExtName, b) if crate::header_names::is_tchar(b) => ExtName,
            (ExtNameStart, b' ' | b'\t') => ExtNameStart,
            (ExtNameStart, b) if crate::header_names::is_tchar(b) => ExtName,
            (ExtValueStart, b' ' | b'\t') => ExtValueStart,
            (ExtValueStart, b'"') => ExtValueQuoted,
            (ExtValueStart, b) if crate::header_names::is_tchar(b) => ExtValueToken,
            (ExtValueToken, b) if crate::header_names::is_tchar(b) => ExtValueToken,
            (ExtValueQuoted, b'"') => ExtSeparator,
            (ExtValueQuoted, b'\\') => ExtValueEscape,
            (ExtValueQuoted, b) if is_qdtext(b) => ExtValueQuoted,
            (ExtValueEscape, b) if b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80 => {
                ExtValueQuoted
            }
            (
                Size | ExtSeparator | ExtNameStart | ExtName | ExtNameEnd | ExtValueStart
                | ExtValueToken | ExtValueQuoted | ExtValueEscape,
                _,
            ) => return Err(ChunkError("a malformed chunk line")),
            (SizeLf, b'\n') => {
                self.line = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    Data(self.size)
                }
            }
            (SizeLf, _) => return Err(ChunkError("a chunk line does not end in CRLF")),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(ChunkError("chunk data is longer than its size")),
            (DataLf, b'\n') => SizeStart,
            (DataLf, _) => return Err(ChunkError("chunk data does not end in CRLF")),
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, b) if crate::header_names::is_tchar(b) => TrailerName,
            (TrailerStart, _) => return Err(ChunkError("a malformed trailer field")),
            (TrailerName, b':') => TrailerValue,
            (TrailerName, b) if crate::header_names::is_tchar(b) => TrailerName,
            (TrailerName, _) => return Err(ChunkError("a malformed trailer field")),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b) if b == b'\t' || b >= 0x20 && b != 0x7f => TrailerValue,
            (TrailerValue, _) => return Err(ChunkError("a control character in a trailer field")),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return Err(ChunkError("a trailer field does not end in CRLF")),
            (FinalLf, b'\n') => Done,
            (FinalLf, _) => return Err(ChunkError("the chunked body does not end in CRLF")),
            (Data(_) | Done, _) => unreachable_state()?,
        };
        Ok(())
    }
}

/// `Data` is consumed in bulk and `Done` stops the loop; neither reaches `step`.
fn unreachable_state() -> Result<State, ChunkError> {
    Err(ChunkError("internal chunk state"))
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

fn is_qdtext(b: u8) -> bool {
    b == b'\t'
        || b == b' '
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || b >= 0x80
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(body: &[u8]) -> Result<Fed, ChunkError> {
        ChunkedValidator::new(1024).feed(body)
    }

    #[test]
    fn well_formed_bodies_end_where_they_end() {
        let cases: &[(&str, &[u8])] = &[
            ("one chunk", b"5\r\nhello\r\n0\r\n\r\n"),
            ("upper hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
            ("leading zeros", b"0005\r\nhello\r\n0000\r\n\r\n"),
            ("sixteen digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
            (
                "extensions",
                b"5;a=b;c=\"x y\";d \r\nhello\r\n0;last\r\n\r\n",
            ),
            ("quoted escape", b"5;a=\"q\\\"\"\r\nhello\r\n0\r\n\r\n"),
            ("bws", b"5 ; a = b\r\nhello\r\n0\r\n\r\n"),
            ("trailer", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nY: \r\n\r\n"),
            ("empty", b"0\r\n\r\n"),
        ];
        for (name, body) in cases {
            assert_eq!(whole(body), Ok(Fed::Done(body.len())), "{name}");
            // Whatever follows belongs to the next request.
            let more = [*body, b"GET / HTTP/1.1\r\n".as_slice()].concat();
            assert_eq!(whole(&more), Ok(Fed::Done(body.len())), "{name} + next");
        }
        let mut v = ChunkedValidator::new(1024);
        assert_eq!(v.feed(b"5\r\nhel"), Ok(Fed::More));
        assert_eq!(v.declared_len(), 5);
        assert_eq!(v.feed(b"lo\r\n0\r\n\r\nrest"), Ok(Fed::Done(9)));
        assert_eq!(v.data_len(), 5);
        assert_eq!(v.declared_len(), 5);
        // A size line declares its chunk before any of its data comes.
        let mut v = ChunkedValidator::new(1024);
        assert_eq!(v.feed(b"3\r\nabc\r\nFFFFFFFFFFF"), Ok(Fed::More));
        assert_eq!(v.declared_len(), 3 + 0xFFF_FFFF_FFFF);
    }

    #[test]
    fn every_other_reading_is_refused() {
        let cases: &[(&str, &[u8])] = &[
            ("bare lf after size", b"5\nhello\r\n0\r\n\r\n"),
            ("bare lf in ext", b"2;ext\nxx\r\n45\r\n0\r\n\r\n"),
            ("bare lf after data", b"5\r\nhello\n0\r\n\r\n"),
            ("bare lf at end", b"5\r\nhello\r\n0\r\n\n"),
            ("not hex", b"zz\r\nhello\r\n0\r\n\r\n"),
            ("negative", b"-5\r\nhello\r\n0\r\n\r\n"),
            ("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
            ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
            ("oversize hex", b"1ffffffffffffffff\r\n"),
            // httparse, which reads the body after this check, stops at 16 digits too.
            (
                "seventeen digits",
                b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            ),
            ("space before size", b" 5\r\nhello\r\n0\r\n\r\n"),
            ("trailing space no ext", b"5 x\r\nhello\r\n0\r\n\r\n"),
            ("data too long", b"3\r\nhello\r\n0\r\n\r\n"),
            ("empty ext name", b"5;\r\nhello\r\n0\r\n\r\n"),
            ("bad ext char", b"5;a@b\r\nhello\r\n0\r\n\r\n"),
            ("unterminated quote", b"5;a=\"b\r\nhello\r\n"),
            ("trailer without colon", b"0\r\nX-Sum 1\r\n\r\n"),
            ("trailer nul", b"0\r\nX: a\0\r\n\r\n"),
            ("trailer obs-fold", b"0\r\nX: a\r\n b\r\n\r\n"),
            ("cr not lf", b"5\r\rhello"),
        ];
        for (name, body) in cases {
            assert!(whole(body).is_err(), "{name}: {:?}", whole(body));
        }
        let long_ext = [b"5;".as_slice(), &[b'a'; 5000], b"\r\n"].concat();
        assert!(whole(&long_ext).is_err());
        let big_trailer = [b"0\r\nX: ".as_slice(), &[b'a'; 2000], b"\r\n\r\n"].concat();
        assert!(whole(&big_trailer).is_err());
    }

    /// A reference encoder for the property tests.
    fn encode(chunks: &[Vec<u8>], ext: bool, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend(format!("{:x}", c.len()).as_bytes());
            if ext {
                out.extend(b";n=v");
            }
            out.extend(b"\r\n");
            out.extend(c);
            out.extend(b"\r\n");
        }
        out.extend(b"0\r\n");
        if trailer {
            out.extend(b"T: x\r\n");
        }
        out.extend(b"\r\n");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Any valid encoding, split anywhere, ends exactly at its end with every data byte counted.
        #[test]
        fn fuzz_valid_encodings_split_anywhere(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
            ext in any::<bool>(), trailer in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let body = encode(&chunks, ext, trailer);
            let mut stream = body.clone();
            stream.extend(&tail);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut v = ChunkedValidator::new(1024);
            let mut at = 0;
            let mut end = None;
            for p in points {
                if p <= at || end.is_some() { continue; }
                match v.feed(&stream[at..p]).unwrap() {
                    Fed::More => {}
                    Fed::Done(n) => end = Some(at + n),
                }
                at = p;
            }
            prop_assert_eq!(end, Some(body.len()));
            prop_assert_eq!(v.data_len(), chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        }

        /// Arbitrary bytes never panic, and an accepted prefix is never longer than the input.
        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Fed::Done(n)) = whole(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert!(bytes[..n].ends_with(b"\r\n"));
            }
        }

        /// A bare LF put anywhere in the framing (not in data) is refused.
        #[test]
        fn fuzz_a_bare_lf_in_framing_is_refused(
            chunks in prop::collection::vec(prop::collection::vec(b'a'..=b'z', 1..10), 1..4),
            pick in any::<prop::sample::Index>(),
        ) {
            let body = encode(&chunks, true, true);
            // Every CR belongs to the framing here (data is letters only).
            let crs: Vec<usize> = body.iter().enumerate().filter(|(_, b)| **b == b'\r').map(|(i, _)| i).collect();
            let at = crs[pick.index(crs.len())];
            let mut broken = body.clone();
            broken.remove(at);
            prop_assert!(whole(&broken).is_err(), "{:?}", String::from_utf8_lossy(&broken));
        }
    }
}
