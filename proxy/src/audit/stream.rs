//! The optional second sink: each tenant's records, as written to its files, appended to the
//! Redis Stream `tp:{<tenant>}:audit` (trimmed to about `maxlen` entries) for central
//! collectors. Each entry has one field, `record`, holding the record's exact line, so a
//! collector can check the chain itself.
//!
//! Records reach the stream after they are durable in the files, in chain order. When Redis
//! fails, the lines wait in order and are sent again with the next batch; a retried pipeline
//! may repeat a few entries (their `seq` tells). A required stream that cannot be written makes
//! the sink unhealthy, like a failing disk; an optional one drops what it could not send.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::AuditStreamSettings;
use crate::redis_conn::{BlockingConn, RedisEndpoint};

/// Longest wait to connect and for each reply.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Lines sent per pipeline.
const CHUNK: usize = 512;
/// After a failure, no new attempt before this long, so an unreachable Redis does not slow
/// the writer down batch after batch.
const BACKOFF: Duration = Duration::from_secs(1);

/// The stream key of a tenant. The `{tenant}` hash tag keeps a tenant's keys on one slot.
pub fn stream_key(tenant: &str) -> String {
    format!("tp:{{{tenant}}}:audit")
}

/// The Redis side of the writer; owned by the writer thread.
pub(super) struct StreamSink {
    endpoint: RedisEndpoint,
    conn: Option<BlockingConn>,
    maxlen: u64,
    required: bool,
    /// Lines written to the files but not yet to Redis, oldest first: (tenant, line).
    pending: VecDeque<(String, Vec<u8>)>,
    /// Whether the last attempt succeeded.
    ok: bool,
    /// No attempt before this instant (after a failure).
    retry_at: Option<Instant>,
}

impl StreamSink {
    /// A sink for `settings`; connects on first use.
    pub(super) fn new(settings: &AuditStreamSettings) -> redis::RedisResult<Self> {
        Ok(Self {
            endpoint: settings.endpoint.clone(),
            conn: None,
            maxlen: settings.maxlen,
            required: settings.required,
            pending: VecDeque::new(),
            ok: true,
            retry_at: None,
        })
    }

    /// Whether the sink allows serving: always when optional, else when the last attempt
    /// succeeded.
    pub(super) fn healthy(&self) -> bool {
        self.ok || !self.required
    }

    /// Whether a failed send refuses requests (`redis_required`).
    pub(super) fn is_required(&self) -> bool {
        self.required
    }

    /// Whether lines wait to be sent.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends any backoff: the next [`Self::flush`] tries at once (the writer's last sends).
    pub(super) fn retry_now(&mut self) {
        self.retry_at = None;
    }

    /// The lines still unsent, oldest first, leaving none.
    pub(super) fn take_pending(&mut self) -> VecDeque<(String, Vec<u8>)> {
        std::mem::take(&mut self.pending)
    }

    /// Queues lines that are now durable in the files.
    pub(super) fn enqueue(&mut self, written: impl IntoIterator<Item = (String, Vec<u8>)>) {
        self.pending.extend(written);
    }

    /// Sends what is pending, in order. On failure a required sink keeps the lines for the next
    /// attempt; an optional one drops them. While backing off after a failure nothing is tried
    /// (and `Ok` is returned: the failure was reported once).
    pub(super) fn flush(&mut self) -> redis::RedisResult<()> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            if !self.required {
                self.pending.clear();
            }
            return Ok(());
        }
        let result = self.send_pending();
        self.ok = result.is_ok();
        self.retry_at = None;
        if result.is_err() {
            self.conn = None;
            self.retry_at = Some(Instant::now() + BACKOFF);
            if !self.required {
                self.pending.clear();
            }
        }
        result
    }

    fn send_pending(&mut self) -> redis::RedisResult<()> {
        while !self.pending.is_empty() {
            let kept = self.conn.is_some();
            let conn = match &mut self.conn {
                Some(c) => c,
                None => self.conn.insert(self.endpoint.connect_blocking(TIMEOUT)?),
            };
            let n = self.pending.len().min(CHUNK);
            let maxlen = self.maxlen;
            // On a cluster the pipeline is split by the node owning each tenant's stream; the
            // lines of one tenant stay in order.
            let sent = conn.pipeline(self.pending.iter().take(n), |cmd, (tenant, line)| {
                cmd.arg("XADD")
                    .arg(stream_key(tenant))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(maxlen)
                    .arg("*")
                    .arg("record")
                    .arg(line.as_slice());
            });
            match sent {
                Ok(()) => drop(self.pending.drain(..n)),
                // A connection kept from an earlier send may have died with the server it was
                // made to (Redis restarted while the stream was idle), which only its next use
                // tells. The lines go out at once on a new connection, so that a required
                // stream does not refuse requests for a backoff after Redis is back. A new
                // connection that fails is a real failure (the next pass starts fresh). A
                // pipeline cut mid-flight may have been applied in part: its lines can then
                // arrive twice, each with its own seq and chain hash, so a reader sees the
                // repeat and never a gap.
                Err(e) if kept && e.is_connection_dropped() => self.conn = None,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        assert_eq!(stream_key("acme"), "tp:{acme}:audit");
    }
}
