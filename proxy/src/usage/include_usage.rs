//! OpenAI streams report usage only when asked (`stream_options.include_usage`). The proxy asks
//! on the agent's behalf so every streamed call can be metered, and removes the extra usage
//! event from the stream when the agent had not asked for it, so the agent sees exactly the
//! stream it requested.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Adds `stream_options.include_usage = true` to a streaming chat-completions body that lacks
/// it. Returns the new body, or `None` when nothing needs to change.
pub fn request_usage(path: &str, body: &[u8]) -> Option<Vec<u8>> {
    if !path.ends_with("/chat/completions") {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let asked = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool);
    if asked == Some(true) {
        return None;
    }
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    options
        .as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok()
}

/// Removes the usage-only event (`"choices": []` with `usage`) from an SSE stream, passing every
/// other event through byte for byte. Only the event in progress is held back.
#[derive(Debug, Default)]
pub struct UsageEventStripper {
    event: BytesMut,
    line_start: usize,
}

impl UsageEventStripper {
    /// Feeds a chunk; returns the bytes of the complete events to pass on.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Bytes {
        let mut out = BytesMut::new();
        for &b in chunk {
            self.event.extend_from_slice(&[b]);
            if b == b'\n' {
                let line = &self.event[self.line_start..];
                let blank = line == b"\n" || line == b"\r\n";
                self.line_start = self.event.len();
                if blank {
                    let event = self.event.split();
                    self.line_start = 0;
                    if !is_usage_event(&event) {
                        out.extend_from_slice(&event);
                    }
                }
            }
        }
        if end && !self.event.is_empty() {
            out.extend_from_slice(&self.event.split());
            self.line_start = 0;
        }
        out.freeze()
    }
}

fn is_usage_event(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(v) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    v.get("usage").is_some_and(|u| u.is_object())
        && v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_only_when_missing() {
        let with = request_usage("/v1/chat/completions", br#"{"model":"m","stream":true}"#)
            .expect("changed");
        let v: Value = serde_json::from_slice(&with).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(request_usage(
            "/v1/chat/completions",
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#
        )
        .is_none());
        assert!(request_usage("/v1/chat/completions", br#"{"stream":false}"#).is_none());
        assert!(request_usage("/v1/responses", br#"{"stream":true}"#).is_none());
        let kept = request_usage(
            "/v1/chat/completions",
            br#"{"stream":true,"stream_options":{"other":1}}"#,
        )
        .expect("changed");
        let v: Value = serde_json::from_slice(&kept).expect("json");
        assert_eq!(
            (
                v["stream_options"]["other"].clone(),
                v["stream_options"]["include_usage"].clone()
            ),
            (1.into(), true.into())
        );
    }

    #[test]
    fn strips_the_usage_event_across_any_chunking() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let want =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n".to_vec();
        for split in 0..stream.len() {
            let mut s = UsageEventStripper::default();
            let mut out = s.feed(&stream[..split], false).to_vec();
            out.extend_from_slice(&s.feed(&stream[split..], true));
            assert_eq!(out, want, "split at {split}");
        }
    }
}
