//! An incremental Server-Sent Events parser: bytes in, complete events' `data` out. It accepts
//! any chunking (an event may straddle reads), `\n`, `\r\n` and `\r` line ends, multi-line
//! `data:` fields and comment lines, and bounds what it holds so a hostile stream cannot grow it.

/// Longest event data kept; longer events are skipped (usage events are small).
pub(crate) const MAX_EVENT: usize = 256 * 1024;

/// Parser state across chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    overflow: bool,
    last_was_cr: bool,
    /// Events skipped for their size.
    skipped: u64,
}

impl SseParser {
    /// Feeds a chunk; calls `on_event` with each complete event's data.
    /// Bytes held for the line and the event in progress (their buffers' room).
    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.data.capacity()
    }

    /// Events skipped for their size so far, the one in progress included.
    pub fn oversized(&self) -> u64 {
        self.skipped + u64::from(self.overflow)
    }

    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(&[u8])) {
        for &b in chunk {
            if self.last_was_cr {
                self.last_was_cr = false;
                if b == b'\n' {
                    continue; // the `\n` of a `\r\n`
                }
            }
            match b {
                b'\n' => self.end_line(on_event),
                b'\r' => {
                    self.last_was_cr = true;
                    self.end_line(on_event);
                }
                _ => {
                    if self.line.len() < MAX_EVENT {
                        self.line.push(b);
                    } else {
                        self.overflow = true;
                    }
                }
            }
        }
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(&[u8])) {
        if self.line.is_empty() {
            // A blank line dispatches the event.
            if self.has_data && !self.overflow {
                on_event(&self.data);
            }
            self.skipped += u64::from(self.overflow);
            self.data.clear();
            self.has_data = false;
            self.overflow = false;
            return;
        }
        if let Some(rest) = self.line.strip_prefix(b"data") {
            let value = match rest.first() {
                None => Some(rest),
                Some(b':') => Some(rest[1..].strip_prefix(b" ").unwrap_or(&rest[1..])),
                Some(_) => None, // a field named e.g. `dataX`
            };
            if let Some(v) = value {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + v.len() <= MAX_EVENT {
                    self.data.extend_from_slice(v);
                } else {
                    self.overflow = true;
                }
                self.has_data = true;
            }
        }
        // Comments (`:`), `event:`, `id:`, `retry:` carry no usage.
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |d| {
                out.push(String::from_utf8_lossy(d).into_owned())
            });
        }
        out
    }

    #[test]
    fn framing() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"data: a\n\ndata: b\n\n"], &["a", "b"]),
            (&[b"data: a\r\n\r\ndata:b\r\n\r\n"], &["a", "b"]),
            (&[b"data: a\r\rdata: b\r\r"], &["a", "b"]),
            (
                &[b": keep-alive\n\nevent: x\ndata: 1\ndata: 2\n\n"],
                &["1\n2"],
            ),
            (&[b"da", b"ta: sp", b"lit\r", b"\n\r\n"], &["split"]),
            (&[b"data: no end"], &[]),
            (&[b"dataX: nope\n\n"], &[]),
        ];
        for (chunks, want) in cases {
            assert_eq!(events(chunks), *want, "{chunks:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        #[test]
        fn fuzz_any_chunking_gives_the_same_events(splits in proptest::collection::vec(0usize..200, 0..8)) {
            let stream = b"data: {\"x\":1}\r\n\r\n: comment\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
            let whole = events(&[stream]);
            let mut cuts: Vec<usize> = splits.into_iter().map(|s| s % stream.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&stream[last..c]); last = c; }
            chunks.push(&stream[last..]);
            prop_assert_eq!(events(&chunks), whole);
        }

        #[test]
        fn fuzz_never_panics(input in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut p = SseParser::default();
            p.feed(&input, &mut |_| {});
        }
    }
}
