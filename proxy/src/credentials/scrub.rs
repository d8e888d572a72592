//! Response scrubbing: if an upstream echoes a substituted secret back (in a header or the body,
//! streamed or not), the agent sees the handle text instead. Secrets may straddle two body
//! chunks, so the last `longest secret - 1` bytes of each chunk are held back until the next
//! chunk (or the end) shows whether they start a secret.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Credential;

/// Scrubs one response.
#[derive(Debug)]
pub struct Scrubber {
    secrets: Vec<Arc<Credential>>,
    longest: usize,
    carry: BytesMut,
    /// How many occurrences were replaced.
    pub replaced: u64,
}

impl Scrubber {
    /// A scrubber for the credentials a request used.
    pub fn new(secrets: Vec<Arc<Credential>>) -> Self {
        let longest = secrets
            .iter()
            .map(|c| c.value.expose().len())
            .max()
            .unwrap_or(0);
        Self {
            secrets,
            longest,
            carry: BytesMut::new(),
            replaced: 0,
        }
    }

    /// Replaces secrets in a complete value (a header).
    pub fn scrub_value(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        let (out, n) = replace_all(value, &self.secrets);
        self.replaced += n;
        (n > 0).then_some(out)
    }

    /// Scrubs one body chunk; at `end` everything held back is released.
    pub fn scrub_chunk(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        if self.longest == 0 {
            return chunk;
        }
        if let Some(c) = &chunk {
            self.carry.extend_from_slice(c);
        }
        let (scrubbed, n) = replace_all(&self.carry, &self.secrets);
        self.replaced += n;
        let keep = if end {
            0
        } else {
            (self.longest - 1).min(scrubbed.len())
        };
        // Only hold back a tail that could still be the start of a secret.
        let keep = (0..=keep)
            .rev()
            .find(|k| {
                *k == 0
                    || self.secrets.iter().any(|s| {
                        s.value
                            .expose()
                            .starts_with(&scrubbed[scrubbed.len() - k..])
                    })
            })
            .unwrap_or(0);
        let emit_len = scrubbed.len() - keep;
        self.carry = BytesMut::from(&scrubbed[emit_len..]);
        if emit_len == 0 && !end {
            return Some(Bytes::new());
        }
        Some(Bytes::copy_from_slice(&scrubbed[..emit_len]))
    }
}

fn replace_all(input: &[u8], secrets: &[Arc<Credential>]) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(input.len());
    let mut count = 0;
    let mut i = 0;
    'outer: while i < input.len() {
        for s in secrets {
            let v = s.value.expose();
            if !v.is_empty() && input[i..].starts_with(v) {
                out.extend_from_slice(format!("$CRED{{{}}}", s.name).as_bytes());
                i += v.len();
                count += 1;
                continue 'outer;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::secret::SecretValue;
    use crate::ids::TenantId;

    fn cred(name: &str, value: &str) -> Arc<Credential> {
        Arc::new(Credential {
            tenant: TenantId::new("acme").expect("id"),
            name: name.into(),
            value: SecretValue::new(value.as_bytes().to_vec()),
            bindings: vec![],
            positions: vec![],
            expires_at: None,
        })
    }

    #[test]
    fn scrubs_across_chunk_boundaries() {
        let body = "echo: sk-secret-123 and again sk-secret-123!";
        for split in 0..body.len() {
            let mut s = Scrubber::new(vec![cred("openai", "sk-secret-123")]);
            let mut out = Vec::new();
            let (a, b) = body.split_at(split);
            out.extend_from_slice(
                &s.scrub_chunk(Some(Bytes::from(a.to_string())), false)
                    .unwrap_or_default(),
            );
            out.extend_from_slice(
                &s.scrub_chunk(Some(Bytes::from(b.to_string())), false)
                    .unwrap_or_default(),
            );
            out.extend_from_slice(&s.scrub_chunk(None, true).unwrap_or_default());
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                "echo: $CRED{openai} and again $CRED{openai}!",
                "split {split}"
            );
            assert_eq!(s.replaced, 2);
        }
    }

    #[test]
    fn headers_and_no_secrets() {
        let mut s = Scrubber::new(vec![cred("k", "abc")]);
        assert_eq!(
            s.scrub_value(b"Bearer abc").as_deref(),
            Some(&b"Bearer $CRED{k}"[..])
        );
        assert_eq!(s.scrub_value(b"nothing"), None);
        let mut none = Scrubber::new(vec![]);
        assert_eq!(
            none.scrub_chunk(Some(Bytes::from_static(b"x")), false),
            Some(Bytes::from_static(b"x"))
        );
    }
}
