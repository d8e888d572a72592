//! Some providers' streams report usage only when asked (OpenAI chat completions'
//! `stream_options.include_usage`, see [`super::providers::Provider::request_stream_usage`]).
//! The proxy asks on the agent's behalf so every streamed call can be metered, and removes the
//! extra usage event from the stream when the agent had not asked for it, so the agent sees
//! exactly the stream it requested.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::providers::Provider;
use super::sse::MAX_EVENT;

/// Removes the usage event the proxy asked `provider` for from an SSE stream, passing every
/// other event through byte for byte. Only the event in progress is held back, and at most
/// [`MAX_EVENT`] of it: a longer event is not the (small) usage event, so it passes on as it
/// comes, and an upstream that never ends an event cannot grow the proxy's memory.
#[derive(Debug)]
pub struct UsageEventStripper {
    provider: &'static dyn Provider,
    event: BytesMut,
    line_start: usize,
    /// The event in progress outgrew [`MAX_EVENT`]: its bytes pass until it ends.
    passing: bool,
    /// While passing: the current line so far is empty (`None`), a lone `\r` (`Some(true)`), or
    /// anything else (`Some(false)`).
    passing_line: Option<bool>,
}

impl UsageEventStripper {
    /// A stripper of the usage event `provider` was asked for.
    pub fn new(provider: &'static dyn Provider) -> Self {
        Self {
            provider,
            event: BytesMut::new(),
            line_start: 0,
            passing: false,
            passing_line: None,
        }
    }

    /// Feeds a chunk; returns the bytes of the complete events to pass on.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut out = BytesMut::new();
        for &b in chunk {
            if self.passing {
                out.extend_from_slice(&[b]);
                self.passing_line = match (b, self.passing_line) {
                    // A blank line ends the event.
                    (b'\n', None | Some(true)) => {
                        self.passing = false;
                        None
                    }
                    (b'\n', Some(false)) => None,
                    (b'\r', None) => Some(true),
                    _ => Some(false),
                };
                continue;
            }
            self.event.extend_from_slice(&[b]);
            if b == b'\n' {
                let line = &self.event[self.line_start..];
                let blank = line == b"\n" || line == b"\r\n";
                self.line_start = self.event.len();
                if blank {
                    let event = self.event.split();
                    self.line_start = 0;
                    if !self.is_usage_event(&event) {
                        out.extend_from_slice(&event);
                    }
                }
            } else if self.event.len() > MAX_EVENT {
                // SECURITY: held no further (see the type's doc).
                let line = &self.event[self.line_start..];
                self.passing_line = Some(line == b"\r");
                out.extend_from_slice(&self.event.split());
                self.line_start = 0;
                self.passing = true;
            }
        }
        if end && !self.event.is_empty() {
            out.extend_from_slice(&self.event.split());
            self.line_start = 0;
        }
        out.freeze()
    }

    /// Whether `event` (its raw bytes) is the usage event the provider was asked for.
    fn is_usage_event(&self, event: &[u8]) -> bool {
        let text = String::from_utf8_lossy(event);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        serde_json::from_str::<Value>(&data)
            .is_ok_and(|v| self.provider.is_requested_usage_event(&v))
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
