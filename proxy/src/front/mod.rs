//! The HTTP/1 front: every byte a client sends is framed and checked here before pingora
//! parses it.
//!
//! An egress proxy that frames a request differently from its upstream decides one request
//! while the upstream executes another. pingora 0.9's parser is lenient in exactly the places
//! that allow that (see [`head`]), so tenant-proxy reads each request head itself, strictly,
//! and hands pingora one checked request at a time ([`conn::FrontConn`]). The same front serves
//! every HTTP/1 path: plain listeners, mTLS listeners and requests inside intercepted tunnels.
//!
//! - [`head`]: request heads (RFC 9112), incremental and bounded;
//! - [`chunked`]: chunked body framing, checked byte by byte;
//! - [`conn`]: the connection wrapper pingora reads through, with the head and body deadlines;
//! - [`listen`]: the listening sockets, bound before anything starts, with connection caps.

pub mod chunked;
pub mod conn;
pub mod head;
pub mod listen;
pub mod settings;

pub use conn::{FrontConn, FrontLimits, Violation};
pub use head::{Framing, Head, HeadError, HeadLimits};
pub use settings::RequestLimits;

/// The `Connection` options a client may not nominate: hop-by-hop removal of these would change
/// what the proxy decided on (the destination, the body's framing, the identity, the trace) or
/// what it substituted (credentials) between the decision and the upstream. Every provider's
/// key headers are protected too (see [`nominated_protected`]).
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "authorization",
    "proxy-authorization",
    "cookie",
    "traceparent",
    "tracestate",
    "baggage",
    "content-type",
    "content-encoding",
    "x-request-id",
];

/// Headers that tell an upstream to act on another method, path or host than the request's
/// (frameworks and gateways honour them: Google APIs, Rails, Symfony, IIS; reverse proxies and
/// multi-tenant gateways route by the forwarded host). The policy and the
/// credential bindings decide on the request line, so a request that carries one is refused
/// rather than decided as one call and run as another.
const OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    // Host overrides: a gateway behind the bound host that routes by them would carry the
    // credential substituted for that host to another backend.
    "x-forwarded-host",
    "x-host",
    "x-original-host",
    "x-forwarded-server",
];

/// Why a request's header names are refused: one asks the upstream to use another method or
/// path ([`OVERRIDES`]), or one spelt with `_` is, to servers that read `_` as `-` (CGI and WSGI
/// put both in one `HTTP_…` variable), a header the proxy acts on (`Proxy_Authorization` would
/// carry the agent's proxy token upstream, `Content_Length` another framing). `names` are
/// lower case, as `http` keeps them.
pub fn misleading_header<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    for name in names {
        // RFC 7239's `Forwarded` may name a host (`host=`) and a scheme; an agent has no
        // proxies of its own to report, so it is refused whatever its value.
        if name == "forwarded" {
            return Some(
                "`forwarded` may ask the upstream for another host or scheme than the \
                 request's, which is what the proxy decides on; the agent has no proxies to \
                 report: send the request without it"
                    .into(),
            );
        }
        if !name.starts_with("x-") && !name.contains('_') {
            continue;
        }
        if OVERRIDES.contains(&name) {
            return Some(format!(
                "`{name}` asks the upstream for another method, path or host than the request's, \
                 which is what the proxy decides on; send the request as it is meant"
            ));
        }
        if name.contains('_') {
            let dashed = name.replace('_', "-");
            // Providers' key headers spelt with `_` are credential positions already (a literal
            // or a second spelling there is refused by the credential checks).
            let acted_on = PROTECTED.contains(&dashed.as_str())
                || OVERRIDES.contains(&dashed.as_str())
                || dashed == "proxy-connection";
            if acted_on {
                return Some(format!(
                    "`{name}` is `{dashed}` to servers that read `_` as `-`; spell it `{dashed}`"
                ));
            }
        }
    }
    None
}

/// The header a browser marks a web page's request with, when it has one: `Origin` (sent with
/// every cross-origin request and every POST) or a `Sec-Fetch-Site` other than `none` (`none`
/// is a person typing the address; every current browser sends it with every request).
///
/// SECURITY: a port that acts for whoever reaches it (a listener bound to one workload, an
/// admin port without a token) is reachable from any page its host's browser opens: a form or
/// `fetch` posts to `127.0.0.1` without a preflight (CSRF), and a name that resolves to
/// `127.0.0.1` after the page loaded makes the page same-origin with the port (DNS
/// rebinding), so it reads the answers too. No agent library sends these headers.
pub fn browser_marker(headers: &http::HeaderMap) -> Option<&'static str> {
    if headers.contains_key(http::header::ORIGIN) {
        return Some("origin");
    }
    let user_typed = |v: &http::HeaderValue| v.as_bytes().eq_ignore_ascii_case(b"none");
    let site = headers.get_all("sec-fetch-site");
    (site.iter().next().is_some() && !site.iter().all(user_typed)).then_some("sec-fetch-site")
}

/// Whether `host` (a `Host` value, with or without its port) names the proxy in a way no web
/// page can rebind: an IP address other than an unspecified one (`0.0.0.0`: browsers send it
/// to loopback from any site), `localhost` or a name under it (browsers resolve those to
/// loopback themselves), or a single-label name (a container's or a pod's: no public zone
/// answers for it). A page served from a name an attacker's DNS answers for, rebound to this
/// address after it loaded, sends that name.
pub fn unrebindable_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            // An IPv4 address written as IPv6 (`::ffff:127.0.0.1`, or the old `::a.b.c.d`)
            // is no way an agent names the proxy, and browsers send it without a mark (it
            // reaches loopback, or as `::ffff:0:0` every address).
            Some((addr, _)) => {
                return addr.parse::<std::net::Ipv6Addr>().is_ok_and(|a| {
                    !a.is_unspecified()
                        && a.to_ipv4_mapped().is_none()
                        && (a.is_loopback() || a.segments()[..6] != [0; 6])
                });
            }
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return !ip.is_unspecified();
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    !name.is_empty() && (name == "localhost" || name.ends_with(".localhost") || !name.contains('.'))
}

/// The parameter web frameworks read as the request's real method (Rails, Laravel, Symfony,
/// Express's method-override: `POST /items/1?_method=DELETE`, or in a form body).
pub const METHOD_PARAMETER: &str = "_method";

/// Whether a form or query field named `name` (percent-decoded) is [`METHOD_PARAMETER`] to some
/// framework: PHP turns `.`, ` ` and an unmatched `[` in a name into `_` (`.method`, `[method`),
/// drops leading spaces and ends a name at a NUL; ASP.NET Core's form and query collections
/// ignore case (`_METHOD`); and a name with brackets after it (`_method[]`, `_method[0]`) is
/// that field as an array or map to qs (Express), Rack and PHP, whose method overrides take
/// its first value.
pub fn is_method_parameter(name: &str) -> bool {
    let name = name.trim_start();
    let name = name.split('\0').next().unwrap_or_default();
    // The name before its first `[`, unless that `[` starts it (PHP's `[method`).
    let name = match name.char_indices().skip(1).find(|(_, c)| *c == '[') {
        Some((at, _)) => &name[..at],
        None => name,
    };
    name.len() == METHOD_PARAMETER.len()
        && name
            .bytes()
            .map(|b| {
                if matches!(b, b'.' | b' ' | b'[') {
                    b'_'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .eq(METHOD_PARAMETER.bytes())
}

/// Whether `bytes` holds `lower` (ASCII lower case) in any ASCII case, without a copy.
pub fn contains_ignoring_case(bytes: &[u8], lower: &[u8]) -> bool {
    let Some((&first, rest)) = lower.split_first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), bytes).any(|at| {
        bytes
            .get(at + 1..at + lower.len())
            .is_some_and(|tail| tail.eq_ignore_ascii_case(rest))
    })
}

/// Whether `target`'s query carries [`METHOD_PARAMETER`] (percent-decoded, `&` or `;` between
/// pairs, spelt as any framework reads it, see [`is_method_parameter`]).
pub fn method_override_in_query(target: &str) -> bool {
    let Some(query) = crate::form_pairs::query_of(target) else {
        return false;
    };
    // Most queries have no such name, spelt or escaped: nothing to parse.
    let bytes = query.as_bytes();
    if !contains_ignoring_case(bytes, b"method") && memchr::memchr(b'%', bytes).is_none() {
        return false;
    }
    crate::form_pairs::lenient(bytes).any(|(name, _)| is_method_parameter(&name))
}

/// The first protected header a `Connection` field nominates, if any (see [`PROTECTED`], and
/// every provider's key headers); other options (`close`, `keep-alive`, `upgrade`, custom
/// hop-by-hop fields) are fine.
pub fn nominated_protected<'a>(
    connection_values: impl Iterator<Item = &'a [u8]>,
) -> Option<&'static str> {
    connection_values
        .flat_map(head::connection_options)
        .find_map(|option| {
            PROTECTED
                .iter()
                .find(|p| p.as_bytes().eq_ignore_ascii_case(option))
                .copied()
                .or_else(|| crate::usage::providers::registry::key_header(option))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_no_page_can_rebind_are_unrebindable() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:9090",
            "[::1]:8080",
            "[::1]",
            "localhost",
            "LOCALHOST:8080",
            "app.localhost:3000",
            "localhost.",
            "tenant-proxy:9090",
            "proxy",
        ] {
            assert!(unrebindable_host(host.as_bytes()), "{host}");
        }
        for host in [
            "rebind.evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "0.0.0.0:8080",
            "[::]:8080",
            "[::1",
            "[::ffff:127.0.0.1]:8080",
            "[::ffff:7f00:1]:8080",
            "[::ffff:0:0]:8080",
            "[::127.0.0.1]:8080",
            "",
            ":8080",
            "127.0.0.1.nip.io",
            "tenant-proxy.default.svc.cluster.local:8080",
        ] {
            assert!(!unrebindable_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn a_browsers_marks_of_a_pages_request_are_found() {
        let headers = |lines: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (name, value) in lines {
                h.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            h
        };
        for (lines, marker) in [
            (&[("origin", "null")][..], Some("origin")),
            (&[("origin", "https://evil.example")], Some("origin")),
            (&[("sec-fetch-site", "cross-site")], Some("sec-fetch-site")),
            (&[("sec-fetch-site", "same-origin")], Some("sec-fetch-site")),
            (&[("sec-fetch-site", "None")], None),
            (
                &[("sec-fetch-site", "none"), ("sec-fetch-site", "cross-site")],
                Some("sec-fetch-site"),
            ),
            (&[("sec-fetch-site", "")], Some("sec-fetch-site")),
            (
                &[("sec-fetch-mode", "navigate"), ("sec-fetch-site", "none")],
                None,
            ),
            (&[("referer", "https://evil.example/")], None),
            (&[], None),
        ] {
            assert_eq!(browser_marker(&headers(lines)), marker, "{lines:?}");
        }
    }

    #[test]
    fn a_method_override_in_the_query_is_found_however_it_is_spelt() {
        for target in [
            "/items/1?_method=DELETE",
            "/items/1?a=1&_method=put",
            "/items/1?a=1;_method=put",
            "/items/1?%5Fmethod=DELETE",
            "/items/1?_metho%64=DELETE",
            "/items/1?_%6Dethod=DELETE",
            "/items/1?.method=DELETE",
            "/items/1?[method=DELETE",
            "/items/1?%20_method=DELETE",
            "http://h/items?x&_method",
            // ASP.NET Core's query collection ignores case.
            "/items/1?_METHOD=DELETE",
            "/items/1?a=1&_Method=put",
            // qs, Rack and PHP read a bracketed name as that field's array or map.
            "/items/1?_method[]=DELETE",
            "/items/1?_method%5B0%5D=DELETE",
            "/items/1?_method[x]=DELETE",
            // PHP ends a name at a NUL.
            "/items/1?_method%00x=DELETE",
        ] {
            assert!(method_override_in_query(target), "{target}");
        }
        for target in [
            "/items/1",
            "/items/1?payment_method=card",
            "/items/1?method=x",
            "/items/1?a.method=x",
            "/items/1?_method_=x",
            "/items/_method?x=1",
            "/items/1?x=%25",
            "/items/1?PAYMENT_METHOD=card",
            "/items/1?payment_method[]=card",
            "/items/1?x[_method]=DELETE",
        ] {
            assert!(!method_override_in_query(target), "{target}");
        }
    }

    #[test]
    fn a_name_is_found_in_any_ascii_case_without_a_copy() {
        for (bytes, found) in [
            (&b"x_MeThOd"[..], true),
            (b"method", true),
            (b"METHOD", true),
            (b"metho", false),
            (b"", false),
            (b"mEthoD=1", true),
            (b"m\xc3\xa9thod", false),
        ] {
            assert_eq!(contains_ignoring_case(bytes, b"method"), found, "{bytes:?}");
        }
    }

    #[test]
    fn headers_that_would_make_the_upstream_run_another_request_are_named() {
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "x-original-method",
            "x-forwarded-host",
            "x_forwarded_host",
            "x-host",
            "x-original-host",
            "x-forwarded-server",
            "forwarded",
            "x_http_method_override",
            "proxy_authorization",
            "content_length",
            "transfer_encoding",
            "proxy_connection",
        ] {
            let names = ["accept", "user-agent", name, "x-custom"];
            assert!(misleading_header(names.into_iter()).is_some(), "{name}");
        }
        for name in [
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x_custom_thing",
            "accept",
            "x-api-key",
            "x_api_key",
            "my_header",
        ] {
            assert_eq!(misleading_header([name].into_iter()), None, "{name}");
        }
    }

    #[test]
    fn protected_headers_cannot_be_nominated_hop_by_hop() {
        for (values, want) in [
            (vec![&b"close"[..]], None),
            (vec![b"keep-alive, Upgrade"], None),
            (vec![b"Host"], Some("host")),
            (vec![b"close", b" , TraceParent "], Some("traceparent")),
            (
                vec![b"x-custom, proxy-authorization"],
                Some("proxy-authorization"),
            ),
            (vec![b"Content-Length"], Some("content-length")),
            // Every provider's key headers.
            (vec![b"X-Api-Key"], Some("x-api-key")),
            (vec![b"api-key"], Some("api-key")),
            (vec![b"x-goog-api-key"], Some("x-goog-api-key")),
        ] {
            assert_eq!(nominated_protected(values.into_iter()), want);
        }
    }
}
