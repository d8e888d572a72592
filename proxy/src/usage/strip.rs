//! Some providers' streams report usage only when asked (OpenAI chat completions'
//! `stream_options.include_usage`, see [`super::providers::Provider::request_stream_usage`]).
//! The proxy asks on the agent's behalf so every streamed call can be metered, and removes the
//! extra usage event from the stream when the agent had not asked for it, so the agent sees
//! exactly the stream it requested.

use bytes::{Bytes, BytesMut};

use super::providers::Provider;
use super::sse::{SseParser, MAX_EVENT};

/// Removes the usage event the proxy asked `provider` for from an SSE stream, passing every
/// other event through byte for byte. Lines may end with `\n`, `\r\n` or a bare `\r`, as the
/// event-stream format allows and as [`SseParser`] (the meter) reads them: an event the meter
/// reads as the usage event is the one removed, however its lines end. Only the event in
/// progress is held back, and at most [`MAX_EVENT`] of it: a longer event is not the (small)
/// usage event, so it passes on as it comes, and an upstream that never ends an event cannot
/// grow the proxy's memory.
#[derive(Debug)]
pub struct UsageEventStripper {
    provider: &'static dyn Provider,
    /// The event in progress, held until its blank line says whether it is the usage event.
    event: BytesMut,
    /// The event in progress outgrew [`MAX_EVENT`]: its bytes pass until it ends.
    passing: bool,
    /// Nothing but a line end has come since the last line end (or the start): a line end
    /// now is a blank line, which ends the event.
    at_line_start: bool,
    /// The last byte was a `\r` that ended a line: a `\n` right after it belongs to the same
    /// line end and goes where that `\r` went.
    after_cr: Option<Sink>,
}

/// Where the `\n` of a `\r\n` goes: with its `\r`.
#[derive(Debug, Clone, Copy)]
enum Sink {
    /// Into the event in progress (or out, while it passes).
    Current,
    /// Out: the `\r` ended an event that was passed on.
    Out,
    /// Nowhere: the `\r` ended the usage event, which was removed.
    Dropped,
}

impl UsageEventStripper {
    /// A stripper of the usage event `provider` was asked for.
    pub fn new(provider: &'static dyn Provider) -> Self {
        Self {
            provider,
            event: BytesMut::new(),
            passing: false,
            at_line_start: true,
            after_cr: None,
        }
    }

    /// Feeds a chunk; returns the bytes of the complete events to pass on.
    /// Bytes held for the event in progress (its buffer's room).
    pub fn buffered(&self) -> usize {
        self.event.capacity()
    }

    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut out = BytesMut::new();
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if let Some(sink) = self.after_cr.take() {
                if first == b'\n' {
                    self.put(sink, &mut out, b"\n");
                    rest = &rest[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', rest) {
                Some(0) => {
                    self.line_end(first, &mut out);
                    rest = &rest[1..];
                }
                Some(at) => {
                    self.content(&rest[..at], &mut out);
                    rest = &rest[at..];
                }
                None => {
                    self.content(rest, &mut out);
                    rest = &[];
                }
            }
        }
        if end {
            out.extend_from_slice(&self.event.split());
            self.after_cr = None;
        }
        out.freeze()
    }

    /// Bytes of a line that are not its end.
    fn content(&mut self, bytes: &[u8], out: &mut BytesMut) {
        self.at_line_start = false;
        self.put(Sink::Current, out, bytes);
        if !self.passing && self.event.len() > MAX_EVENT {
            // SECURITY: held no further (see the type's doc).
            out.extend_from_slice(&self.event.split());
            self.passing = true;
        }
    }

    /// A `\r` or `\n` ending a line; a blank line ends the event.
    fn line_end(&mut self, byte: u8, out: &mut BytesMut) {
        let blank = std::mem::replace(&mut self.at_line_start, true);
        self.put(Sink::Current, out, &[byte]);
        let sink = if !blank {
            Sink::Current
        } else if self.passing {
            self.passing = false;
            Sink::Out
        } else {
            let event = self.event.split();
            if self.is_usage_event(&event) {
                Sink::Dropped
            } else {
                out.extend_from_slice(&event);
                Sink::Out
            }
        };
        if byte == b'\r' {
            self.after_cr = Some(sink);
        }
    }

    fn put(&mut self, sink: Sink, out: &mut BytesMut, bytes: &[u8]) {
        match sink {
            Sink::Current if !self.passing => self.event.extend_from_slice(bytes),
            Sink::Current | Sink::Out => out.extend_from_slice(bytes),
            Sink::Dropped => {}
        }
    }

    /// Whether `event` (its raw bytes, up to and including the blank line that ends it) is the
    /// usage event the provider was asked for, read as the meter reads it.
    fn is_usage_event(&self, event: &[u8]) -> bool {
        let mut usage = false;
        SseParser::default().feed(event, &mut |data| {
            usage = super::members::bounded_event(data)
                .is_some_and(|v| self.provider.is_requested_usage_event(&v));
        });
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::providers::openai_chat::OpenAiChat;

    #[test]
    fn strips_the_usage_event_across_any_chunking() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let want =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n".to_vec();
        for split in 0..stream.len() {
            let mut s = UsageEventStripper::new(&OpenAiChat);
            let mut out = s.feed(&stream[..split], false).to_vec();
            out.extend_from_slice(&s.feed(&stream[split..], true));
            assert_eq!(out, want, "split at {split}");
        }
    }

    /// The event-stream format ends a line with `\n`, `\r\n` or a bare `\r`, and the meter
    /// reads all three: the usage event is removed whichever an upstream uses (or mixes), and
    /// every other byte passes as it came, across any chunking.
    #[test]
    fn strips_the_usage_event_whatever_ends_its_lines() {
        let events = [
            "event: chunk|data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}||",
            ": keep-alive||",
            "data: {\"choices\":[],|data: \"usage\":{\"prompt_tokens\":1}}||",
            "data: [DONE]||",
        ];
        for ending in ["\n", "\r\n", "\r", "mixed"] {
            let mut n = 0;
            let mut end = || {
                n += 1;
                match ending {
                    "mixed" => ["\r", "\n", "\r\n"][n % 3],
                    e => e,
                }
            };
            let framed: Vec<String> = events
                .iter()
                .map(|e| e.split('|').collect::<Vec<_>>())
                .map(|lines| {
                    let (last, rest) = lines.split_last().unwrap();
                    assert!(last.is_empty());
                    rest.iter().map(|l| format!("{l}{}", end())).collect()
                })
                .collect();
            let stream = framed.concat();
            let want = [&framed[0], &framed[1], &framed[3]]
                .map(String::as_str)
                .concat();
            let stream = stream.as_bytes();
            for split in 0..=stream.len() {
                let mut s = UsageEventStripper::new(&OpenAiChat);
                let mut out = s.feed(&stream[..split], false).to_vec();
                out.extend_from_slice(&s.feed(&stream[split..], true));
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    want,
                    "line ends {ending:?}, split at {split}"
                );
            }
            let mut s = UsageEventStripper::new(&OpenAiChat);
            let mut out = Vec::new();
            for b in stream {
                out.extend_from_slice(&s.feed(std::slice::from_ref(b), false));
            }
            out.extend_from_slice(&s.feed(&[], true));
            assert_eq!(
                String::from_utf8_lossy(&out),
                want,
                "line ends {ending:?}, byte by byte"
            );
        }
    }

    /// A complete event passes as soon as its blank line is read, without waiting for the next
    /// bytes (a bare `\r` may or may not be followed by the `\n` of a `\r\n`).
    #[test]
    fn an_event_passes_as_soon_as_it_ends() {
        for (chunk, next) in [
            (&b"data: {\"a\":1}\r\r"[..], &b"\ndata: x"[..]),
            (b"data: {\"a\":1}\n\n", b"data: x"),
            (b"data: {\"a\":1}\r\n\r", b"\n"),
        ] {
            let mut s = UsageEventStripper::new(&OpenAiChat);
            let first = s.feed(chunk, false);
            assert_eq!(&first[..], chunk);
            let rest = s.feed(next, true);
            assert_eq!(&rest[..], next);
        }
        // The usage event's own `\r\n`, split after its `\r`, goes with it.
        let mut s = UsageEventStripper::new(&OpenAiChat);
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r";
        assert!(s.feed(usage, false).is_empty());
        assert_eq!(
            &s.feed(b"\ndata: [DONE]\r\n\r\n", true)[..],
            b"data: [DONE]\r\n\r\n"
        );
    }

    /// An upstream that never ends an event is not held past the cap: its bytes pass on as they
    /// come, and the events after it are stripped as before.
    #[test]
    fn an_endless_event_passes_without_being_held() {
        let mut s = UsageEventStripper::new(&OpenAiChat);
        let mut passed = 0;
        let line = vec![b'x'; 64 * 1024];
        let mut head = b"data: ".to_vec();
        head.extend_from_slice(&line);
        passed += s.feed(&head, false).len();
        for _ in 0..64 {
            passed += s.feed(&line, false).len();
            assert!(s.event.len() <= MAX_EVENT + 1, "held {}", s.event.len());
        }
        let sent = head.len() + 64 * line.len();
        assert!(passed + s.event.len() == sent && passed >= sent - MAX_EVENT);
        // The long event ends (`\r\n\r\n`), and the usage event after it is stripped.
        let rest = s.feed(
            b"\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n",
            true,
        );
        assert_eq!(&rest[..], &b"\r\n\r\ndata: [DONE]\n\n"[..]);
    }
}
