//! The AWS event-stream framing (`application/vnd.amazon.eventstream`, Bedrock's
//! `ConverseStream` and `InvokeModelWithResponseStream`), parsed incrementally as the response
//! streams through. The parser only observes: every byte reaches the client unchanged.
//!
//! A message is `total_len:u32 headers_len:u32 prelude_crc:u32 headers payload message_crc:u32`
//! (big endian, CRC-32 over the prelude and over everything before the message CRC). A frame
//! larger than [`MAX_MESSAGE`] or whose CRC does not match stops the parser for good: the stream
//! is then not metered (its usage is unknown, never zero), and nothing more is buffered.

/// Largest message accepted (the service's own limit is 16 MiB; usage events are tiny, and a
/// larger frame is not buffered whole here).
pub const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// Prelude (12) and message CRC (4).
const OVERHEAD: usize = 16;

/// One message: its `:message-type` and `:event-type` headers and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `event`, `exception` or `error`.
    pub message_type: Option<&'a str>,
    /// `chunk`, `metadata`, `contentBlockDelta`, …
    pub event_type: Option<&'a str>,
    /// The payload (JSON for Bedrock's events).
    pub payload: &'a [u8],
}

/// Why a stream stopped being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A length outside the bounds (smaller than a frame, larger than [`MAX_MESSAGE`], headers
    /// longer than the message).
    Length,
    /// The prelude's CRC does not match.
    PreludeCrc,
    /// The message's CRC does not match.
    MessageCrc,
    /// A header that does not parse.
    Header,
}

/// The incremental parser.
#[derive(Debug, Default)]
pub struct EventStreamParser {
    /// Bytes of the message in progress.
    buf: Vec<u8>,
    /// Set once a frame is malformed: nothing more is parsed or kept.
    broken: Option<FrameError>,
    /// Whole messages seen.
    messages: u64,
}

impl EventStreamParser {
    /// Bytes held for the message in progress.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds a chunk; calls `on_message` for every whole, CRC-checked message it completes.
    pub fn feed(&mut self, chunk: &[u8], on_message: &mut dyn FnMut(Message<'_>)) {
        if self.broken.is_some() {
            return;
        }
        let mut input = chunk;
        while !input.is_empty() {
            // The message in progress needs its length before anything else.
            let need = if self.buf.len() < 12 {
                12 - self.buf.len()
            } else {
                match self.total_len() {
                    Ok(total) => total - self.buf.len(),
                    Err(e) => return self.break_with(e),
                }
            };
            let take = need.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() == 12 {
                if let Err(e) = self.total_len() {
                    return self.break_with(e);
                }
                continue;
            }
            if self.buf.len() >= 12 && self.total_len().ok() == Some(self.buf.len()) {
                let done = std::mem::take(&mut self.buf);
                match parse_message(&done) {
                    Ok(m) => {
                        self.messages += 1;
                        on_message(m);
                    }
                    Err(e) => return self.break_with(e),
                }
                // Reuse the allocation for the next message.
                self.buf = done;
                self.buf.clear();
            }
        }
    }

    /// Why parsing stopped, if it did.
    pub fn error(&self) -> Option<FrameError> {
        self.broken
    }

    /// Whether the stream ended between messages (nothing half-received).
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty() && self.broken.is_none()
    }

    /// Whole messages parsed.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    fn break_with(&mut self, e: FrameError) {
        self.broken = Some(e);
        self.buf = Vec::new();
    }

    /// The message's total length from its prelude (whose CRC is checked here).
    fn total_len(&self) -> Result<usize, FrameError> {
        let prelude = &self.buf[..12];
        let total = be32(&prelude[0..4]) as usize;
        let headers = be32(&prelude[4..8]) as usize;
        if crc32fast::hash(&prelude[..8]) != be32(&prelude[8..12]) {
            return Err(FrameError::PreludeCrc);
        }
        if !(OVERHEAD..=MAX_MESSAGE).contains(&total) || headers > total - OVERHEAD {
            return Err(FrameError::Length);
        }
        Ok(total)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses one whole message (its prelude already checked).
fn parse_message(m: &[u8]) -> Result<Message<'_>, FrameError> {
    let total = m.len();
    let headers_len = be32(&m[4..8]) as usize;
    if crc32fast::hash(&m[..total - 4]) != be32(&m[total - 4..]) {
        return Err(FrameError::MessageCrc);
    }
    let headers = &m[12..12 + headers_len];
    let payload = &m[12 + headers_len..total - 4];
    let mut message = Message {
        message_type: None,
        event_type: None,
        payload,
    };
    let mut at = 0;
    while at < headers.len() {
        let name_len = usize::from(headers[at]);
        let name = headers
            .get(at + 1..at + 1 + name_len)
            .ok_or(FrameError::Header)?;
        at += 1 + name_len;
        let kind = *headers.get(at).ok_or(FrameError::Header)?;
        at += 1;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(FrameError::Header),
        };
        let value = match fixed {
            Some(n) => headers.get(at..at + n).ok_or(FrameError::Header)?,
            None => {
                let len = headers.get(at..at + 2).ok_or(FrameError::Header)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                at += 2;
                headers.get(at..at + len).ok_or(FrameError::Header)?
            }
        };
        at += value.len();
        if kind == 7 {
            let text = std::str::from_utf8(value).map_err(|_| FrameError::Header)?;
            match name {
                b":message-type" => message.message_type = Some(text),
                b":event-type" => message.event_type = Some(text),
                _ => {}
            }
        }
    }
    Ok(message)
}

/// Writes one message (string headers only), as a service would.
pub(crate) fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (OVERHEAD + h.len() + payload.len()) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The exception message that ends a stream the proxy cut: the AWS SDKs raise it as the
/// operation's error (boto3: `EventStreamError: An error occurred (throttlingException) …`),
/// where text of another framing would be a checksum failure.
pub fn exception(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let payload = serde_json::json!({
        "message": format!("tenant-proxy: {message} ({code}, request {request_id})"),
        "code": code,
        "request_id": request_id,
    });
    frame(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An event message of `event_type` carrying `payload`.
#[cfg(test)]
pub(crate) fn event(event_type: &str, payload: &str) -> Vec<u8> {
    frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(p: &mut EventStreamParser, chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |m| {
                out.push((
                    m.event_type.unwrap_or("").to_string(),
                    String::from_utf8_lossy(m.payload).into_owned(),
                ))
            });
        }
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = event("messageStart", r#"{"role":"assistant"}"#);
        s.extend(event(
            "contentBlockDelta",
            r#"{"delta":{"text":"Hi"},"contentBlockIndex":0}"#,
        ));
        // A header of every fixed type before the strings, and an empty payload.
        let mut odd = Vec::new();
        let mut h = Vec::new();
        for (t, len) in [
            (0u8, 0usize),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 4),
            (5, 8),
            (8, 8),
            (9, 16),
        ] {
            h.push(1);
            h.push(b'x');
            h.push(t);
            h.extend(std::iter::repeat_n(0xab, len));
        }
        h.extend([1, b'b', 6, 0, 2, 0xff, 0xfe]);
        h.extend([
            11, b':', b'e', b'v', b'e', b'n', b't', b'-', b't', b'y', b'p', b'e', 7, 0, 4,
        ]);
        h.extend(b"ping");
        let total = (OVERHEAD + h.len()) as u32;
        odd.extend(total.to_be_bytes());
        odd.extend((h.len() as u32).to_be_bytes());
        odd.extend(crc32fast::hash(&odd).to_be_bytes());
        odd.extend(&h);
        odd.extend(crc32fast::hash(&odd).to_be_bytes());
        s.extend(odd);
        s.extend(event(
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":2}}"#,
        ));
        s
    }

    #[test]
    fn messages_are_read_however_the_stream_is_split() {
        let s = stream();
        let want = collect(&mut EventStreamParser::default(), &[&s]);
        assert_eq!(
            want.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
            ["messageStart", "contentBlockDelta", "ping", "metadata"]
        );
        assert_eq!(want[3].1, r#"{"usage":{"inputTokens":3,"outputTokens":2}}"#);
        for at in 0..=s.len() {
            let mut p = EventStreamParser::default();
            assert_eq!(
                collect(&mut p, &[&s[..at], &s[at..]]),
                want,
                "split at {at}"
            );
            assert!(p.at_boundary());
        }
        let mut p = EventStreamParser::default();
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(collect(&mut p, &bytes), want);
        assert_eq!(p.messages(), 4);
    }

    #[test]
    fn malformed_frames_stop_the_parser() {
        let good = event("metadata", r#"{"usage":{}}"#);
        let mut prelude = good.clone();
        prelude[9] ^= 1;
        let mut body = good.clone();
        body[20] ^= 1;
        let mut crc = good.clone();
        let n = crc.len();
        crc[n - 1] ^= 1;
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
        let c = crc32fast::hash(&huge[..8]);
        huge[8..12].copy_from_slice(&c.to_be_bytes());
        let mut tiny = good.clone();
        tiny[0..4].copy_from_slice(&8u32.to_be_bytes());
        let c = crc32fast::hash(&tiny[..8]);
        tiny[8..12].copy_from_slice(&c.to_be_bytes());
        let mut headers_long = good.clone();
        headers_long[4..8].copy_from_slice(&(good.len() as u32).to_be_bytes());
        let c = crc32fast::hash(&headers_long[..8]);
        headers_long[8..12].copy_from_slice(&c.to_be_bytes());
        let bad_header = frame(&[], &[]);
        let mut bad_header = {
            // A header of an unknown type 12, with CRCs right.
            let mut h = vec![1, b'x', 12];
            h.extend([0; 2]);
            let total = (OVERHEAD + h.len()) as u32;
            let mut f = total.to_be_bytes().to_vec();
            f.extend((h.len() as u32).to_be_bytes());
            f.extend(crc32fast::hash(&f).to_be_bytes());
            f.extend(&h);
            f.extend(crc32fast::hash(&f).to_be_bytes());
            let _ = bad_header;
            f
        };
        let cases: [(&str, &mut Vec<u8>, FrameError); 7] = [
            ("prelude crc", &mut prelude, FrameError::PreludeCrc),
            ("payload flipped", &mut body, FrameError::MessageCrc),
            ("message crc", &mut crc, FrameError::MessageCrc),
            ("too large", &mut huge, FrameError::Length),
            ("too small", &mut tiny, FrameError::Length),
            (
                "headers past the end",
                &mut headers_long,
                FrameError::Length,
            ),
            ("unknown header type", &mut bad_header, FrameError::Header),
        ];
        for (name, frame, err) in cases {
            let mut s = good.clone();
            s.extend_from_slice(frame);
            s.extend_from_slice(&good);
            let mut p = EventStreamParser::default();
            let seen = collect(&mut p, &[&s]);
            assert_eq!(seen.len(), 1, "{name}: only the message before it");
            assert_eq!(p.error(), Some(err), "{name}");
            assert!(p.buf.capacity() == 0, "{name}: nothing kept");
        }
    }

    /// A cut stream ends with an exception message the SDKs read: whole, checksummed, typed.
    #[test]
    fn a_cut_ends_with_an_exception_message() {
        let bytes = exception("stream_cut", "the budget is spent", "req-1");
        let mut seen = Vec::new();
        let mut p = EventStreamParser::default();
        p.feed(&bytes, &mut |m| {
            seen.push((
                m.message_type.map(str::to_string),
                serde_json::from_slice::<serde_json::Value>(m.payload).unwrap(),
            ))
        });
        assert_eq!(seen.len(), 1, "one whole message");
        let (kind, payload) = &seen[0];
        assert_eq!(kind.as_deref(), Some("exception"));
        assert_eq!(payload["code"], "stream_cut");
        assert_eq!(payload["request_id"], "req-1");
        assert!(payload["message"]
            .as_str()
            .unwrap()
            .contains("the budget is spent"));
        let headers = String::from_utf8_lossy(&bytes);
        assert!(headers.contains(":exception-type") && headers.contains("throttlingException"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Arbitrary bytes never panic, and never make the parser hold more than one message.
        #[test]
        fn fuzz_eventstream_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let mut p = EventStreamParser::default();
            let cut = cut.min(bytes.len());
            p.feed(&bytes[..cut], &mut |_| {});
            p.feed(&bytes[cut..], &mut |_| {});
            prop_assert!(p.buf.len() <= MAX_MESSAGE);
        }

        /// Any split of a valid stream into many chunks yields the same messages.
        #[test]
        fn eventstream_splits_agree(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let s = stream();
            let want = collect(&mut EventStreamParser::default(), &[&s]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(s.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts {
                chunks.push(&s[from..c]);
                from = c;
            }
            chunks.push(&s[from..]);
            prop_assert_eq!(collect(&mut EventStreamParser::default(), &chunks), want);
        }
    }
}
