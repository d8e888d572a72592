//! The values the proxy puts in a policy's context where they are narrower than their schema
//! type (a `String` host is lower case, a `Long` hour is 0 to 23). One place for both tools
//! that must know them: `policy check` warns at a policy comparing an attribute with a literal
//! no request has (a `forbid` that forbids nothing), and `policy test` fails a case no request
//! is (a case that passes on `"hour": 24` proves nothing).

use std::net::IpAddr;

/// `context.weekday`, in the tenant's time zone.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Why no request has `value` as its `attr` (a context attribute; `host` also stands for a
/// Destination id), if that is so, e.g. "hours are 0 to 23".
pub fn impossible(attr: &str, value: &serde_json::Value) -> Option<String> {
    match attr {
        "hour" => (!value.as_i64().is_some_and(|h| (0..=23).contains(&h)))
            .then(|| "the proxy gives 0 to 23".to_string()),
        "port" => (!value.as_i64().is_some_and(|p| (1..=65535).contains(&p)))
            .then(|| "the proxy gives 1 to 65535".to_string()),
        "weekday" => (!value.as_str().is_some_and(|d| WEEKDAYS.contains(&d)))
            .then(|| format!("the proxy gives one of {}", WEEKDAYS.join(", "))),
        "scheme" => (!matches!(value.as_str(), Some("http" | "https")))
            .then(|| "the proxy gives `http` or `https`".to_string()),
        "position" => (!matches!(value.as_str(), Some("header" | "query" | "body")))
            .then(|| "the proxy gives `header`, `query` or `body`".to_string()),
        "method" => value
            .as_str()
            .and_then(|m| impossible_in_pattern("method", m)),
        "host" => value.as_str().and_then(impossible_host),
        _ => None,
    }
}

/// Why no request has an `attr` that `like` pattern `text` (written with `*` for its
/// wildcards) could match, if that is so: only what a wildcard cannot change is judged (the
/// case of the literal parts, how a host ends).
pub fn impossible_in_pattern(attr: &str, text: &str) -> Option<String> {
    match attr {
        "host" | "scheme" if text.bytes().any(|b| b.is_ascii_uppercase()) => {
            Some(format!("{attr}s are lower case"))
        }
        "method" if text.bytes().any(|b| b.is_ascii_lowercase()) => {
            Some("methods are upper case".to_string())
        }
        "weekday" if text.bytes().any(|b| b.is_ascii_uppercase()) => {
            Some("weekdays are lower case".to_string())
        }
        // A few values, each known: the pattern must match one.
        "weekday" | "scheme" | "position" => {
            let values: &[&str] = match attr {
                "weekday" => &WEEKDAYS,
                "scheme" => &["http", "https"],
                _ => &["header", "query", "body"],
            };
            (!values.iter().any(|v| glob(text.as_bytes(), v.as_bytes())))
                .then(|| format!("it matches none of {}", values.join(", ")))
        }
        "host" if text.ends_with('.') => Some("hosts have no trailing dot".to_string()),
        "host" if has_port(text) || text.contains(['/', '[', ']', '@', ' ']) => {
            Some(NO_PORT.to_string())
        }
        _ => None,
    }
}

/// Why `attr OP n` (`<`, `<=`, `>`, `>=`, the attribute on the left) never holds, if it never
/// does: no hour is 24 or more, no port above 65535.
pub fn impossible_comparison(attr: &str, op: &str, n: i64) -> Option<String> {
    let (lo, hi, what) = match attr {
        "hour" => (0, 23, "the proxy gives 0 to 23"),
        "port" => (1, 65_535, "the proxy gives 1 to 65535"),
        _ => return None,
    };
    let never = match op {
        "<" => n <= lo,
        "<=" => n < lo,
        ">" => n >= hi,
        ">=" => n > hi,
        _ => false,
    };
    never.then(|| what.to_string())
}

/// Whether `pattern` (`*` for any run of bytes) matches all of `text`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((p, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| p == t && glob(rest, tail)),
    }
}

const NO_PORT: &str = "hosts have no port, brackets, scheme or path (the port is `context.port`)";

fn impossible_host(host: &str) -> Option<String> {
    if let Some(why) = impossible_in_pattern("host", host) {
        return Some(why);
    }
    if host.is_empty() {
        return Some("hosts are never empty".to_string());
    }
    if host.contains(['[', ']', '/', '@', ' ']) {
        return Some(NO_PORT.to_string());
    }
    if !host.is_ascii() {
        return Some("hosts are ASCII (an IDN in its `xn--` form)".to_string());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let canonical = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            IpAddr::V4(v4) => v4.to_string(),
        };
        return (canonical != host)
            .then(|| format!("IP addresses are in their canonical text (`{canonical}`)"));
    }
    // As the proxy reads a request's host: `127.1`, `0x7f.0.0.1` and `2130706433` are
    // `127.0.0.1`; an empty label or a numeric last label is no host it accepts.
    match crate::target::normalize_host(host) {
        Err(_) => Some("the proxy refuses such a host".to_string()),
        Ok(given) if given != host => Some(format!("the proxy gives it as `{given}`")),
        Ok(_) => None,
    }
}

/// A `:port` after a name or an IPv4 address (an IPv6 address has colons of its own).
fn has_port(host: &str) -> bool {
    host.rsplit_once(':').is_some_and(|(name, port)| {
        !name.contains(':') && !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_no_request_has() {
        #[rustfmt::skip]
        let never = [
            ("hour", json!(24)), ("hour", json!(-1)), ("hour", json!("10")),
            ("port", json!(0)), ("port", json!(65536)),
            ("weekday", json!("Sat")), ("weekday", json!("saturday")),
            ("scheme", json!("HTTPS")), ("scheme", json!("https://")), ("scheme", json!("wss")),
            ("position", json!("Header")), ("position", json!("path")),
            ("method", json!("delete")), ("method", json!("Get")),
            ("host", json!("API.openai.com")), ("host", json!("api.openai.com.")),
            ("host", json!("api.openai.com:443")), ("host", json!("127.0.0.1:8080")),
            ("host", json!("[::1]")), ("host", json!("https://api.openai.com")),
            ("host", json!("api.openai.com/v1")), ("host", json!("")),
            ("host", json!("0::1")), ("host", json!("::ffff:127.0.0.1")),
            ("host", json!("2130706433")), ("host", json!("127.1")),
            ("host", json!("0x7f.0.0.1")), ("host", json!("127.0.0.01")),
            ("host", json!("api..x.com")), ("host", json!(".openai.com")),
            ("host", json!("bücher.example")),
        ];
        for (attr, value) in never {
            assert!(impossible(attr, &value).is_some(), "{attr} {value}");
        }
        #[rustfmt::skip]
        let possible = [
            ("hour", json!(0)), ("hour", json!(23)), ("port", json!(443)),
            ("weekday", json!("sat")), ("scheme", json!("http")), ("position", json!("body")),
            ("method", json!("DELETE")), ("method", json!("PROPFIND")),
            ("host", json!("api.openai.com")), ("host", json!("127.0.0.1")),
            ("host", json!("::1")), ("host", json!("2001:db8::1")), ("host", json!("localhost")),
            ("host", json!("xn--bcher-kva.example")), ("model", json!("GPT-4o")),
        ];
        for (attr, value) in possible {
            assert_eq!(impossible(attr, &value), None, "{attr} {value}");
        }
    }

    #[test]
    fn what_no_pattern_matches() {
        assert!(impossible_in_pattern("host", "*.Example.com").is_some());
        assert!(impossible_in_pattern("host", "*.example.com.").is_some());
        assert!(impossible_in_pattern("host", "*.example.com:443").is_some());
        assert!(impossible_in_pattern("method", "p*").is_some());
        assert_eq!(impossible_in_pattern("host", "*.example.com"), None);
        // Parts, not whole values: `like "http*"` on a scheme, `like "api.*"` on a host.
        assert_eq!(impossible_in_pattern("scheme", "http*"), None);
        assert_eq!(impossible_in_pattern("host", "api.*"), None);
        assert_eq!(impossible_in_pattern("host", "api.example.com:*"), None);
        assert!(impossible_in_pattern("host", "https://*").is_some());
        assert!(impossible_in_pattern("host", "*.openai.com/*").is_some());
        assert!(impossible_in_pattern("weekday", "S*").is_some());
        assert_eq!(impossible_in_pattern("weekday", "s*"), None);
        for never in ["*day", "tues", "weekend"] {
            assert!(impossible_in_pattern("weekday", never).is_some(), "{never}");
        }
        assert_eq!(impossible_in_pattern("weekday", "t*"), None);
        assert!(impossible_in_pattern("scheme", "ftp*").is_some());
        assert_eq!(impossible_in_pattern("position", "*e*"), None);
    }

    #[test]
    fn comparisons_that_never_hold() {
        for (attr, op, n) in [
            ("hour", ">=", 24),
            ("hour", ">", 23),
            ("hour", "<", 0),
            ("port", ">", 65_535),
            ("port", "<", 1),
        ] {
            assert!(
                impossible_comparison(attr, op, n).is_some(),
                "{attr} {op} {n}"
            );
        }
        for (attr, op, n) in [("hour", ">=", 23), ("hour", "<", 1), ("port", "<=", 443)] {
            assert_eq!(impossible_comparison(attr, op, n), None, "{attr} {op} {n}");
        }
    }
}
