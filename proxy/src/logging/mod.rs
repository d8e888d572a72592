//! The process log, kept free of secrets whatever level is asked for.
//!
//! Two rules, each closing a way a secret reached the log:
//! - Only tenant-proxy's own targets may log below `info`. Other crates' debug and trace lines
//!   print what passes through them (pingora prints whole upstream request headers, with the
//!   substituted credential, and raw response buffers), and `RUST_LOG` directives cannot reopen
//!   them: this is a second filter ANDed with the one `RUST_LOG` (or `[log] level`) builds, so a
//!   more specific directive (`pingora_proxy::proxy_h1=trace`) wins over nothing.
//! - A failed proxy attempt is logged by [`proxy_failure`], which names the error's kind and
//!   source but never its context: pingora puts the upstream's raw response bytes there (which
//!   may echo the request's `Authorization`). pingora's own line for it is suppressed.
//!
//! Lines are written by a thread of their own ([`lines`]), never by the worker that logs them: a
//! write to standard error takes a process-wide lock and blocks while the reader (a container
//! runtime's log pipe) is behind, which would stall every request on that worker. When the queue
//! is full a line is dropped and counted (`tenant_proxy_log_lines_dropped_total`) rather than
//! waited for; the audit log, not this one, is the record of every decision. Refusal lines, and
//! every other line a client can cause at will on a failure path (a refused mTLS handshake, an
//! egress refusal, a failed client handshake in a tunnel, a failed upstream), are sampled per
//! tenant (or listener, before any identity) and reason ([`throttle`]), so a flooding client
//! neither pays a line per refused request nor crowds other tenants' lines out of the queue. The line every request gets
//! is formatted without `tracing`'s layer ([`request_line`]), in the layer's layout.

mod lines;
mod request_line;
mod throttle;

use std::sync::OnceLock;

use pingora::{Error, ErrorSource, ErrorType};
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// `[log]` in the static file, as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tenant_proxy=debug`; `RUST_LOG` overrides it.
    #[serde(default, deserialize_with = "checked_filter")]
    pub level: Option<String>,
}

/// `RUST_LOG`, when set to something (an empty one is unset).
pub fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| !filter.trim().is_empty())
}

/// Reads `[log] level`, refusing what [`check_filter`] refuses.
fn checked_filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let filter = <String as serde::Deserialize>::deserialize(d)?;
    check_filter(&filter).map_err(serde::de::Error::custom)?;
    Ok(Some(filter))
}

/// Checks a log filter (`[log] level`, `RUST_LOG`): comma-separated directives, each a level
/// (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `target=level`.
///
/// `tracing` reads any other word as a target to log at every level, so a misspelt level
/// (`warning`, `infoo`) or an empty one would turn every line off, errors included, and say
/// nothing: refused instead.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let is_level =
        |s: &str| !s.is_empty() && s.parse::<tracing_subscriber::filter::LevelFilter>().is_ok();
    if filter.trim().is_empty() {
        return Err("the log filter is empty: give a level (`info`)".into());
    }
    // Spaces are no part of a directive to `tracing` (` info ` turns every line off).
    if filter.chars().any(char::is_whitespace) {
        return Err(format!(
            "the log filter `{filter}` has spaces in it: write directives without them \
             (`tenant_proxy=debug,info`)"
        ));
    }
    for directive in filter.split(',') {
        // A span filter (`target[span{field=value}]=level`) is left to `tracing`'s parser.
        if directive.contains('[') {
            continue;
        }
        let ok = match directive.split_once('=') {
            Some((target, level)) => !target.is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "`{directive}` in the log filter `{filter}` is no level (trace, debug, info, \
                 warn, error, off) or `target=level` directive"
            ));
        }
    }
    // And what `tracing` itself would not read.
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("the log filter `{filter}` cannot be read: {e}"))?;
    Ok(())
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether an event or span may be logged at all, whatever the level filter says: `info` and
/// above from anyone, anything from tenant-proxy's own crate.
pub fn permitted(meta: &Metadata<'_>) -> bool {
    // SECURITY: third-party debug output includes request headers and bodies.
    (*meta.level() <= Level::INFO || is_own(meta.target())) && !logs_raw_requests(meta.target())
}

/// Targets whose lines, at any level, carry a request's raw bytes: pingora's HTTP app (the
/// admin port and the approvals API) logs the whole buffer of a request it cannot parse,
/// `Authorization` token included. Those services answer such a request themselves.
fn logs_raw_requests(target: &str) -> bool {
    target == "pingora_core::apps::http_app"
}

fn is_own(target: &str) -> bool {
    target == "tenant_proxy" || target.starts_with("tenant_proxy::")
}

/// Lines that may wait for the writer thread before new ones are dropped.
const QUEUED_LINES: usize = 64 * 1024;
/// Bytes of lines that may wait for it: a line is a few hundred bytes, but one whose request
/// carried a long path may be a megabyte or more.
const QUEUED_BYTES: usize = 32 << 20;

/// The queue the logger writes to, once started (for its count of dropped lines).
static QUEUE: OnceLock<lines::LineQueue> = OnceLock::new();

pub use lines::WriterGuard;
pub use request_line::{log_request, RequestLine};
pub use throttle::{refusal_line, sample_line, suppressed_lines, LineKey};

/// Starts the logger on standard error: `RUST_LOG` when set, else `level`, capped by
/// [`permitted`]. Lines are written by a thread of their own; keep the guard until the process
/// is done: dropping it writes what is still queued. `None` when a logger was already started
/// (tests) or its thread could not start (then lines go to standard error from the worker).
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat, level: &str) -> Option<WriterGuard> {
    let filter = rust_log()
        .and_then(|filter| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (queue, guard) = match lines::start(std::io::stderr(), QUEUED_LINES, QUEUED_BYTES) {
        Ok((queue, guard)) => (queue.with_terminal_colours(ansi), guard),
        Err(e) => {
            let _ = subscriber(format, filter, std::io::stderr, ansi).try_init();
            tracing::error!(error = %e, "cannot start the log writer thread; writing from workers");
            return None;
        }
    };
    if subscriber(format, filter, queue.clone(), ansi)
        .try_init()
        .is_err()
    {
        return None;
    }
    if !ansi {
        request_line::write_directly(queue.clone(), format);
    }
    let _ = QUEUE.set(queue);
    tracing::debug!(
        "debug logging on for tenant-proxy's own targets; other crates log `info` and above only"
    );
    Some(guard)
}

/// Lines dropped because the writer thread was behind (0 before the logger starts).
pub fn dropped_lines() -> u64 {
    QUEUE.get().map_or(0, lines::LineQueue::dropped)
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(permitted))
        .with(fmt)
}

/// Logs a failed proxy attempt in place of pingora's line: what failed (the error's kind and
/// side), for which request, never the error's context or cause (upstream bytes). A tenant can
/// make its upstream fail as often as it likes (a host that resets, a stream past its
/// ceiling), so the lines above `debug` are sampled per tenant and error kind ([`throttle`]):
/// one kind of failure does not hide another's first line.
pub fn proxy_failure(e: &Error, request_id: &str, tenant: &str, retried: bool) {
    let kind = e.etype().as_str();
    let source = e.esource().as_str();
    // The kinds are pingora's CamelCase names and the proxy's own endings, never a refusal's
    // snake_case reason: no window is shared with a request line.
    let sampled = |kind| sample_line(LineKey::Tenant(tenant), kind);
    match (e.etype(), e.esource()) {
        // Our own endings (a stream cut, a withheld response): the request line says why.
        (ErrorType::Custom(_), _) => {
            if let Some(suppressed) = sampled(kind) {
                tracing::info!(
                    request_id,
                    tenant,
                    error = kind,
                    suppressed,
                    "response ended by the proxy"
                )
            }
        }
        (_, ErrorSource::Downstream) => {
            tracing::debug!(
                request_id,
                tenant,
                error = kind,
                source,
                "client side failed"
            )
        }
        (_, ErrorSource::Upstream) => {
            if let Some(suppressed) = sampled(kind) {
                tracing::warn!(
                    request_id,
                    tenant,
                    error = kind,
                    source,
                    retried,
                    suppressed,
                    "upstream request failed"
                )
            }
        }
        _ => {
            if let Some(suppressed) = sampled(kind) {
                tracing::error!(
                    request_id,
                    tenant,
                    error = kind,
                    source,
                    retried,
                    suppressed,
                    "request failed"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Levels and `target=level` directives pass; a word that is no level (which `tracing`
    /// would read as a target, turning every other line off) or nothing is refused.
    #[test]
    fn log_filters_name_levels() {
        for good in [
            "info",
            "WARN",
            "debug,pingora=warn",
            "tenant_proxy=debug,info",
            "off",
            "tenant_proxy::pipeline=trace",
            "h[span{field=value}]",
            "3",
        ] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        for bad in [
            "warning",
            "infoo",
            "info ,",
            "",
            " ",
            " info ",
            "info\t",
            "=info",
            "tenant_proxy=info=debug",
            "tenant_proxy=",
            "errors",
            "verbose",
            "tenant_proxy=loud",
            "info,,warn",
        ] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    /// Bytes written, kept.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    fn logged(directives: &str, emit: impl FnOnce()) -> String {
        logged_as(LogFormat::Text, directives, emit)
    }

    /// What the layer writes while `emit` runs, in `format` under the filter `directives`.
    pub(crate) fn logged_as(format: LogFormat, directives: &str, emit: impl FnOnce()) -> String {
        let capture = Capture::default();
        let sub = subscriber(format, EnvFilter::new(directives), capture.clone(), false);
        tracing::subscriber::with_default(sub, emit);
        let bytes = capture.0.lock().expect("lock").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn no_directive_opens_third_party_debug_lines() {
        for directives in [
            "trace",
            "trace,pingora_proxy::proxy_h1=trace",
            "pingora_proxy::proxy_h1=trace,pingora_core=trace,pingora=trace",
            "info,pingora_core::protocols::http::v1::client=trace",
            "debug,h2=trace,rustls=trace",
        ] {
            let out = logged(directives, || {
                tracing::trace!(target: "pingora_proxy::proxy_h1", "header sk-CANARY-trace");
                tracing::debug!(target: "pingora_core::protocols::http::v1::client", "buf sk-CANARY-debug");
                tracing::debug!(target: "h2::codec", "frame sk-CANARY-h2");
                tracing::info!(target: "pingora_proxy", "info line stays");
                tracing::debug!(target: "tenant_proxy::proxy", "own debug line stays");
            });
            assert!(!out.contains("CANARY"), "{directives}: {out}");
            assert!(out.contains("info line stays"), "{directives}: {out}");
            // An unparsable request on the admin port or the approvals API: pingora logs its
            // raw bytes, bearer token and all, as an error.
            let raw = logged(directives, || {
                tracing::error!(
                    target: "pingora_core::apps::http_app",
                    "HTTP server fails to read from downstream: buf: Authorization: Bearer tok-CANARY"
                );
            });
            assert!(!raw.contains("CANARY"), "{directives}: {raw}");
            if directives.starts_with("trace") || directives.starts_with("debug") {
                assert!(out.contains("own debug line stays"), "{directives}: {out}");
            }
        }
        // The level filter still applies on top: `warn` hides info lines.
        let out = logged("warn", || tracing::info!(target: "pingora_proxy", "hidden"));
        assert!(!out.contains("hidden"));
    }

    #[test]
    fn failures_are_logged_without_their_context() {
        let mut e = Error::explain(
            ErrorType::InvalidHTTPHeader,
            "buf: HTTP/1.1 200 OK\\r\\nx-echo: Bearer sk-CANARY-ctx\\x00",
        );
        e.esource = ErrorSource::Upstream;
        let out = logged("trace", || proxy_failure(&e, "req-1", "acme", false));
        assert!(!out.contains("CANARY"), "{out}");
        assert!(
            out.contains("upstream request failed")
                && out.contains("InvalidHTTPHeader")
                && out.contains("req-1"),
            "{out}"
        );
    }

    #[test]
    fn failed_upstreams_are_sampled_per_tenant() {
        // A thread of its own: a fresh worker's windows.
        std::thread::spawn(|| {
            let mut e = Error::new(ErrorType::ConnectRefused);
            e.esource = ErrorSource::Upstream;
            let out = logged("info", || {
                for i in 0..100 {
                    proxy_failure(&e, &format!("req-{i}"), "acme", false);
                }
                proxy_failure(&e, "req-globex", "globex", false);
                // Another kind of failure of the same tenant has its own first line.
                let mut other = Error::new(ErrorType::InvalidHTTPHeader);
                other.esource = ErrorSource::Upstream;
                proxy_failure(&other, "req-header", "acme", false);
            });
            assert_eq!(out.matches("upstream request failed").count(), 3, "{out}");
            assert!(
                out.contains("req-0") && out.contains("req-globex") && out.contains("req-header"),
                "{out}"
            );
        })
        .join()
        .unwrap();
    }
}
