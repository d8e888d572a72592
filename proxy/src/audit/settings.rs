//! `[audit]` in the static file: where the trail is written, how durably, and the optional
//! Redis Stream copy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Problems;
use crate::redis_conn::settings::{RedisEndpointSpec, RedisUrlSpec};
use crate::redis_conn::RedisEndpoint;

/// `[audit]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// Root of the per-tenant partitions (`DIR/<tenant>/<yyyy>/<mm>/<dd>.jsonl`).
    pub dir: PathBuf,
    /// Records that may wait to be written; when full, new requests are refused.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// `batch` (fsync after each written batch, the default) or `none`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Longest a record waits before its batch is written, e.g. `5ms`.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Size at which a day's file is continued in a new part (`<dd>_000001.jsonl`, …).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// How often each tenant's chain head is signed (and at shutdown), e.g. `60s`.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// PKCS#8 Ed25519 private key (PEM or DER) that signs checkpoints; without it a key is
    /// generated at each start and kept in memory only.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Also append each record to the Redis Stream `tp:{<tenant>}:audit` there:
    /// `redis://host:port/db`, `rediss://…`, a cluster as `redis+cluster://h1:p1,h2:p2` or a
    /// list of seed nodes (see [`crate::redis_conn::settings`]).
    #[serde(default)]
    pub redis_url: Option<RedisUrlSpec>,
    /// The environment variable that holds the stream's URL instead of `redis_url`.
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// Redis ACL user.
    #[serde(default)]
    pub redis_username: Option<String>,
    /// File holding the Redis password.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// Environment variable holding the Redis password.
    #[serde(default)]
    pub redis_password_env: Option<String>,
    /// PEM of the CA that signs the Redis servers' certificates (`rediss://`).
    #[serde(default)]
    pub redis_ca_file: Option<PathBuf>,
    /// Refuse requests (`audit_unavailable`) while the stream cannot be written, as for the
    /// files; otherwise records the stream missed are only in the files.
    #[serde(default)]
    pub redis_required: bool,
    /// Approximate length each tenant's stream is trimmed to.
    #[serde(default = "default_redis_maxlen")]
    pub redis_maxlen: u64,
}

fn default_redis_maxlen() -> u64 {
    100_000
}
fn default_max_file_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_checkpoint_interval() -> String {
    "60s".into()
}
fn default_queue_capacity() -> usize {
    65_536
}
/// 5 ms rather than longer: the writer seals a whole batch in one turn, and where it shares a
/// core with the request threads they wait behind it that long. Measured on one core
/// (loadtest `route`, `perf sched`, alternating runs), 20 ms batches kept the request thread
/// waiting up to 1.4–1.7 ms behind the writer; 5 ms batches cut that to 0.4–0.8 ms, the p99
/// from 2.2 to 1.3 ms at c16 and from 5.4 to 4.3 ms at c64, and the CPU a request took did not
/// grow (a smaller batch stays in cache). At 2 ms the writer used about a third more CPU (more
/// fsyncs) and the p99 was no better.
fn default_flush_interval() -> String {
    "5ms".into()
}

/// When audit batches are made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync after every written batch.
    #[default]
    Batch,
    /// Leave flushing to the OS.
    None,
}

/// Audit sink settings.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Root directory of the per-tenant partitions.
    pub dir: PathBuf,
    /// Queue capacity (records in flight or waiting).
    pub queue_capacity: usize,
    /// Durability policy.
    pub fsync: FsyncPolicy,
    /// Longest delay before a batch is written.
    pub flush_interval: Duration,
    /// Size at which a day's file continues in a new part.
    pub max_file_bytes: u64,
    /// How often each tenant's chain head is signed.
    pub checkpoint_interval: Duration,
    /// The checkpoint signing key; `None` generates one per start.
    pub signing_key: Option<PathBuf>,
    /// The optional Redis Stream sink.
    pub stream: Option<AuditStreamSettings>,
}

/// The Redis Stream audit sink.
#[derive(Debug, Clone)]
pub struct AuditStreamSettings {
    /// Where the streams are (one server or a cluster) and how to log in.
    pub endpoint: RedisEndpoint,
    /// Whether a failing stream refuses requests.
    pub required: bool,
    /// Approximate length each tenant's stream is trimmed to.
    pub maxlen: u64,
}

impl AuditSettings {
    /// Validates `[audit]`, recording each problem at its field.
    pub fn from_spec(spec: AuditSpec, p: &mut Problems<'_>) -> Self {
        if spec.queue_capacity == 0 {
            p.push("audit.queue_capacity", "must be at least 1");
        }
        let flush_interval = p.duration("audit.flush_interval", &spec.flush_interval);
        let checkpoint_interval =
            p.duration("audit.checkpoint_interval", &spec.checkpoint_interval);
        if humantime::parse_duration(&spec.checkpoint_interval).is_ok_and(|d| d.is_zero()) {
            p.push("audit.checkpoint_interval", "must be more than zero");
        }
        if spec.max_file_bytes < 4096 {
            p.push("audit.max_file_bytes", "must be at least 4096");
        }
        let redis = RedisEndpointSpec {
            url: spec.redis_url.clone(),
            url_env: spec.redis_url_env.clone(),
            username: spec.redis_username.clone(),
            password_file: spec.redis_password_file.clone(),
            password_env: spec.redis_password_env.clone(),
            ca_file: spec.redis_ca_file.clone(),
        };
        let endpoint = if redis.is_set() {
            // A placeholder when invalid (the problem is recorded; never served).
            Some(
                redis
                    .validate("audit", p)
                    .unwrap_or_else(RedisEndpoint::unusable),
            )
        } else {
            if spec.redis_required {
                p.push(
                    "audit.redis_required",
                    "needs `redis_url` or `redis_url_env`",
                );
            }
            None
        };
        let signing_key = spec.signing_key.as_deref().map(|k| p.path(k));
        if let Some(key) = &signing_key {
            p.require_file("audit.signing_key", key);
        }
        AuditSettings {
            dir: p.path(&spec.dir),
            queue_capacity: spec.queue_capacity.max(1),
            fsync: spec.fsync,
            flush_interval,
            max_file_bytes: spec.max_file_bytes,
            checkpoint_interval,
            signing_key,
            stream: endpoint.map(|endpoint| AuditStreamSettings {
                endpoint,
                required: spec.redis_required,
                maxlen: spec.redis_maxlen.max(1),
            }),
        }
    }
}
