//! The line logged for every request, formatted here rather than by `tracing`'s layer.
//!
//! It is the one line a request always gets, so its cost is paid per request: through
//! `tracing` (dispatch, the layer's field visitor, `Debug` formatting field by field, the
//! timestamp) it took about 18,000 instructions, as much as parsing the request. Here it is
//! written in one pass, in exactly the layout the layer gives every other line (text or JSON,
//! `Debug`-escaped strings in text, JSON-escaped in JSON), into the same queue, after the same
//! level filter (`RUST_LOG` or `[log] level` on its target, [`TARGET`]).
//!
//! The layer still writes it when the log goes to a terminal (it colours its lines there) and
//! when no writer thread runs (a logger that could not start one, tests).

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::Serialize;

use super::lines::LineQueue;
use super::LogFormat;

/// The line's target, as the layer names it (what a filter directive selects).
pub const TARGET: &str = "tenant_proxy::pipeline::record";

/// The line's message.
const MESSAGE: &str = "request";

/// What one request's line says.
#[derive(Debug, Serialize)]
pub struct RequestLine<'a> {
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub workload: &'a str,
    pub listener: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    /// Lines of the same tenant and reason left out before this one (refusals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// Where lines are formatted here, once the logger started its writer thread without colours.
static DIRECT: OnceLock<(LineQueue, LogFormat)> = OnceLock::new();

/// Formats request lines here from now on, into `queue`.
pub(super) fn write_directly(queue: LineQueue, format: LogFormat) {
    let _ = DIRECT.set((queue, format));
}

/// Logs `line` at `info` when the filter lets [`TARGET`]'s `info` lines through.
pub fn log_request(line: &RequestLine<'_>) {
    log_request_to(DIRECT.get(), line);
}

fn log_request_to(direct: Option<&(LineQueue, LogFormat)>, line: &RequestLine<'_>) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let Some((queue, format)) = direct else {
        return through_layer(line);
    };
    let formatted = format_line(*format, &Timestamp::now(), line);
    match format {
        // Every value is `Debug`-quoted (control characters and separators escaped) or a word
        // of the proxy's own: already one line of plain text.
        LogFormat::Text => queue.push_one_line(formatted),
        // JSON leaves the Unicode separators raw inside strings.
        LogFormat::Json => queue.push(formatted),
    }
}

/// The same line, through `tracing`.
fn through_layer(l: &RequestLine<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = %l.request_id,
        tenant = l.tenant,
        workload = l.workload,
        listener = %l.listener,
        method = %l.method,
        host = l.host,
        path = l.path,
        decision = l.decision,
        reason = l.reason,
        status = l.status,
        latency_ms = l.latency_ms,
        suppressed = l.suppressed,
        "request"
    );
}

/// A UTC instant written as the layer writes its timestamps: RFC 3339, microseconds, `Z`.
struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    fn now() -> Self {
        Self(time::OffsetDateTime::now_utc())
    }

    /// Appends `2026-12-03T16:05:41.115557Z` to `s`, digit by digit (the formatting machinery
    /// took a tenth of the line's cost for seven padded numbers).
    fn push_to(&self, s: &mut String) {
        fn digits(s: &mut String, n: u32, width: u32) {
            for place in (0..width).rev() {
                let d = (n / 10u32.pow(place)) % 10;
                s.push(char::from(b'0' + d as u8));
            }
        }
        let t = &self.0;
        // Years before 0 or after 9999 are not this log's (the layer pads them the same way).
        digits(s, u32::try_from(t.year()).unwrap_or(0).min(9999), 4);
        s.push('-');
        digits(s, u32::from(u8::from(t.month())), 2);
        s.push('-');
        digits(s, u32::from(t.day()), 2);
        s.push('T');
        digits(s, u32::from(t.hour()), 2);
        s.push(':');
        digits(s, u32::from(t.minute()), 2);
        s.push(':');
        digits(s, u32::from(t.second()), 2);
        s.push('.');
        digits(s, t.microsecond(), 6);
        s.push('Z');
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(27);
        self.push_to(&mut s);
        f.write_str(&s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Appends `value` as `{:?}` writes it: quoted, with quotes, backslashes and whatever is not
/// printable escaped (so a path cannot forge a line). Printable ASCII other than those two is
/// written as it is by `Debug`, so such a string (nearly every one) is copied directly.
fn push_quoted(s: &mut String, value: &str) {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        s.push('"');
        s.push_str(value);
        s.push('"');
    } else {
        let _ = write!(s, "{value:?}");
    }
}

/// Bytes a line usually takes, reserved once.
const LINE: usize = 384;

/// The line, with its newline.
fn format_line(format: LogFormat, at: &Timestamp, l: &RequestLine<'_>) -> Vec<u8> {
    match format {
        LogFormat::Json => {
            /// The layer's JSON line with flattened fields: time, level, message, the fields
            /// in the order they are recorded, then the target.
            #[derive(Serialize)]
            struct Json<'a> {
                timestamp: &'a Timestamp,
                level: &'static str,
                message: &'static str,
                #[serde(flatten)]
                fields: &'a RequestLine<'a>,
                target: &'static str,
            }
            let json = Json {
                timestamp: at,
                level: "INFO",
                message: MESSAGE,
                fields: l,
                target: TARGET,
            };
            let mut out = Vec::with_capacity(LINE);
            // Writing to a `Vec` cannot fail, nor can serializing strings and numbers.
            let _ = serde_json::to_writer(&mut out, &json);
            out.push(b'\n');
            out
        }
        LogFormat::Text => {
            // `Display` fields bare, string fields `Debug`-quoted, as the layer writes them.
            let mut s = String::with_capacity(LINE);
            at.push_to(&mut s);
            s.push_str("  INFO ");
            s.push_str(TARGET);
            s.push_str(": ");
            s.push_str(MESSAGE);
            for (name, value, quoted) in [
                (" request_id=", l.request_id, false),
                (" tenant=", l.tenant, true),
                (" workload=", l.workload, true),
                (" listener=", l.listener, false),
                (" method=", l.method, false),
                (" host=", l.host, true),
                (" path=", l.path, true),
                (" decision=", l.decision, true),
                (" reason=", l.reason, true),
            ] {
                s.push_str(name);
                if quoted {
                    push_quoted(&mut s, value);
                } else {
                    s.push_str(value);
                }
            }
            let _ = write!(s, " status={} latency_ms={:?}", l.status, l.latency_ms);
            if let Some(n) = l.suppressed {
                let _ = write!(s, " suppressed={n}");
            }
            s.push('\n');
            s.into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::tests::logged_as;

    fn line(path: &str, suppressed: Option<u64>) -> RequestLine<'_> {
        RequestLine {
            request_id: "0123abcd",
            tenant: "acme",
            workload: "support-bot",
            listener: "sidecar",
            method: "POST",
            host: "api.openai.com",
            path,
            decision: "deny",
            reason: "rate_limited",
            status: 429,
            latency_ms: 0.125_5,
            suppressed,
        }
    }

    /// The text after the timestamp (text), or the line without its `timestamp` member (JSON).
    fn untimed(format: LogFormat, line: &str) -> String {
        match format {
            LogFormat::Text => line.split_once(' ').expect("timestamp").1.to_string(),
            LogFormat::Json => {
                let mut v: serde_json::Value = serde_json::from_str(line).expect(line);
                let ts = v["timestamp"].as_str().expect("timestamp").to_string();
                assert_eq!(ts.len(), "2026-12-03T16:05:41.115557Z".len(), "{ts}");
                v.as_object_mut().expect("object").remove("timestamp");
                // Member order matters to readers of the raw line: compare the text.
                let text = serde_json::to_string(&v).expect("json");
                assert!(line.starts_with(r#"{"timestamp":""#), "{line}");
                text
            }
        }
    }

    #[test]
    fn the_line_is_the_one_the_layer_writes() {
        let paths = [
            "/v1/chat/completions",
            "/a \"quoted\" path\nINFO forged=line\t\u{7f}",
            "/ünïcode/\u{202e}/%00",
            "",
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for path in paths {
                for suppressed in [None, Some(7)] {
                    let l = line(path, suppressed);
                    let by_layer = logged_as(format, "info", || through_layer(&l));
                    let here = format_line(format, &Timestamp::now(), &l);
                    let here = String::from_utf8(here).expect("utf-8");
                    assert_eq!(here.matches('\n').count(), 1, "{here}");
                    assert!(here.ends_with('\n'));
                    assert_eq!(
                        untimed(format, here.trim_end()),
                        untimed(format, by_layer.trim_end()),
                        "{format:?} {path:?} {suppressed:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn quoted_strings_are_debug_formatted() {
        let mut cases: Vec<String> = (0u8..=127)
            .map(|b| format!("a{}b", char::from(b)))
            .collect();
        cases.extend(
            [
                "",
                "it's",
                "ü",
                "\u{202e}",
                "\u{7f}",
                "\u{300}x",
                "tab\there",
                "a\\b\"c",
            ]
            .map(String::from),
        );
        for value in cases {
            let mut s = String::new();
            push_quoted(&mut s, &value);
            assert_eq!(s, format!("{value:?}"), "{value:?}");
        }
        // What makes a text line one line (it goes to the log unchecked): no control character
        // and no line or paragraph separator comes out raw.
        for c in (0u32..0x20).chain(0x7f..0xa0).chain([0x2028, 0x2029]) {
            let c = char::from_u32(c).unwrap();
            let mut s = String::new();
            push_quoted(&mut s, &format!("a{c}b"));
            assert!(!s.contains(c) || c == '\t', "{c:?} raw in {s}");
        }
    }

    #[test]
    fn the_timestamp_is_written_as_rfc3339_with_microseconds() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000_006 UTC);
        assert_eq!(Timestamp(t).to_string(), "2026-01-02T03:04:05.000006Z");
        let t = time::macros::datetime!(1999-12-31 23:59:59.999_999 UTC);
        assert_eq!(Timestamp(t).to_string(), "1999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn the_timestamp_is_the_layers() {
        let l = line("/", None);
        let by_layer = logged_as(LogFormat::Text, "info", || through_layer(&l));
        let theirs = by_layer.split_once(' ').expect("timestamp").0;
        let ours = Timestamp::now().to_string();
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        // Both are UTC and a moment apart: the same up to the seconds' tens.
        assert_eq!(ours[..18], theirs[..18], "{ours} {theirs}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
    }

    #[test]
    fn the_level_filter_applies_to_lines_formatted_here() {
        let l = line("/", None);
        for (directives, shown) in [
            ("info", true),
            ("warn", false),
            ("warn,tenant_proxy::pipeline::record=info", true),
            ("info,tenant_proxy::pipeline::record=off", false),
        ] {
            let written = crate::logging::tests::Capture::default();
            let (queue, guard) =
                crate::logging::lines::start(written.clone(), 16, 1 << 20).expect("writer");
            let by_layer = logged_as(LogFormat::Text, directives, || {
                log_request_to(Some(&(queue, LogFormat::Text)), &l);
            });
            drop(guard);
            assert_eq!(by_layer, "", "formatted here, not by the layer");
            let out = String::from_utf8(written.0.lock().expect("lock").clone()).expect("utf-8");
            assert_eq!(
                out.contains("INFO tenant_proxy::pipeline::record: request request_id=0123abcd"),
                shown,
                "{directives}: {out}"
            );
        }
    }
}
