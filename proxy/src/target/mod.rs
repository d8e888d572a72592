//! Where a request goes: the absolute URI of a forward-proxy request, or a configured route for
//! an origin-form request. Parsing is strict: a request whose `Host` disagrees with its target,
//! or whose path has dot segments, is refused rather than guessed at. Routes are configured in
//! the tenant file's `[[route]]` ([`settings`]).

pub mod settings;

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A route-mode mapping from a path prefix to an upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Name (policy `context.route`).
    pub name: String,
    /// Prefix, starts and ends with `/`.
    pub prefix: String,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Upstream host (lowercase, no brackets for IPv6).
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Base path of the upstream, ends with `/`.
    pub base_path: String,
    /// Forward `baggage` to this upstream.
    pub internal: bool,
    /// The LLM provider behind the route, for the price table.
    pub provider: Option<String>,
    /// Region of the upstream, when the route sets one.
    pub region: Option<String>,
}

/// Upstream URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target is malformed or of an unsupported form (the detail says how).
    #[error("{0}")]
    Malformed(String),
    /// The `Host` header (or a tunnel's authority) and the target name different authorities.
    #[error("the `Host` header does not match the request target's authority")]
    HostMismatch,
    /// No route matches an origin-form path.
    #[error("no route matches this path")]
    RouteNotFound,
}

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Upstream scheme.
    pub scheme: Scheme,
    /// Lowercase host (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Origin-form path and query to send upstream.
    pub upstream_path: String,
    /// The path as the policy and audit see it: upstream path without query values.
    pub audit_path: String,
    /// The route name, in route mode.
    pub route: Option<String>,
    /// Whether `baggage` may be forwarded (internal routes only).
    pub internal: bool,
    /// The LLM provider the route names, for the price table.
    pub provider: Option<String>,
}

impl Destination {
    /// `host[:port]` for the upstream `Host` header (port omitted when it is the default).
    pub fn host_header(&self) -> String {
        // Pushed into a string sized once (every forwarded request writes one): an IPv6
        // literal in brackets, and the port unless it is the scheme's.
        let bracket = self.host.contains(':');
        let mut out = String::with_capacity(self.host.len() + 8);
        if bracket {
            out.push('[');
        }
        out.push_str(&self.host);
        if bracket {
            out.push(']');
        }
        if self.port != self.scheme.default_port() {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(self.port));
        }
        out
    }

    /// A forward-mode HTTPS destination on port 443 to `host` and `path` (upstream and audit
    /// path alike), priced by `provider` when given: the shape most unit tests ask about.
    #[cfg(test)]
    pub(crate) fn https_for_test(host: &str, path: &str, provider: Option<&str>) -> Self {
        Destination {
            scheme: Scheme::Https,
            host: host.into(),
            port: 443,
            upstream_path: path.into(),
            audit_path: path.into(),
            route: None,
            internal: false,
            provider: provider.map(String::from),
        }
    }
}

/// Resolves the destination of a request from its raw request-target and `Host` header.
pub fn resolve(
    raw_target: &[u8],
    host_header: Option<&[u8]>,
    routes: &[Route],
) -> Result<Destination, TargetError> {
    let target = std::str::from_utf8(raw_target)
        .map_err(|_| TargetError::Malformed("the request target is not valid UTF-8".into()))?;
    let starts_with = |prefix: &str| {
        target
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    if starts_with("http://") || starts_with("https://") {
        forward(target, host_header)
    } else if target.starts_with('/') {
        route(target, routes)
    } else {
        Err(TargetError::Malformed(
            "unsupported request target form".into(),
        ))
    }
}

/// Resolves the destination of a request inside an intercepted tunnel to `host:port`: always
/// HTTPS to the tunnel's own authority. The `Host` header is required and must name that
/// authority (a tunnel opened to one host never carries requests for another), and an
/// absolute-form target must name it too.
pub fn tunneled(
    raw_target: &[u8],
    host_header: Option<&[u8]>,
    host: &str,
    port: u16,
) -> Result<Destination, TargetError> {
    tunneled_as(Scheme::Https, raw_target, host_header, host, port)
}

/// Like [`tunneled`], for a tunnel that carries `scheme`: HTTPS inside an intercepted TLS
/// tunnel, plain HTTP inside a tunnel whose client spoke HTTP straight away (what undici's
/// `ProxyAgent` does for `http://` URLs).
pub fn tunneled_as(
    scheme: Scheme,
    raw_target: &[u8],
    host_header: Option<&[u8]>,
    host: &str,
    port: u16,
) -> Result<Destination, TargetError> {
    let target = std::str::from_utf8(raw_target)
        .map_err(|_| TargetError::Malformed("the request target is not valid UTF-8".into()))?;
    if !target.starts_with('/') {
        let dest = forward(target, host_header)?;
        if dest.scheme != scheme || dest.host != host || dest.port != port {
            return Err(TargetError::HostMismatch);
        }
        return Ok(dest);
    }
    let header = host_header.ok_or(TargetError::HostMismatch)?;
    if !host_header_matches(header, host, port, scheme) {
        return Err(TargetError::HostMismatch);
    }
    check_path(target)?;
    Ok(Destination {
        scheme,
        host: host.to_string(),
        port,
        upstream_path: target.to_string(),
        audit_path: audit_path(target),
        route: None,
        internal: false,
        provider: None,
    })
}

/// Resolves the destination of a request on a connection captured by a transparent listener:
/// plain HTTP to the port its client dialed (`original`). The target must be origin-form (a
/// client that knows nothing of a proxy sends nothing else). The destination's host is the
/// `Host` header's (the name policy decides on), whose port must be the original one; without
/// a `Host`, the original address. That the name resolves to the original address is checked
/// where it is resolved (the egress guard).
pub fn captured(
    raw_target: &[u8],
    host_header: Option<&[u8]>,
    original: std::net::SocketAddr,
) -> Result<Destination, TargetError> {
    let target = std::str::from_utf8(raw_target)
        .map_err(|_| TargetError::Malformed("the request target is not valid UTF-8".into()))?;
    if !target.starts_with('/') {
        return Err(TargetError::Malformed(
            "a captured request's target must be a path (origin-form)".into(),
        ));
    }
    check_path(target)?;
    let host = match host_header {
        None => original.ip().to_canonical().to_string(),
        Some(header) => {
            let authority = std::str::from_utf8(header)
                .ok()
                .and_then(|v| v.trim().parse::<http::uri::Authority>().ok())
                .filter(|a| !a.as_str().contains('@'))
                .ok_or_else(|| TargetError::Malformed("the `Host` header is malformed".into()))?;
            if port_of(&authority, Scheme::Http)? != original.port() {
                return Err(TargetError::HostMismatch);
            }
            normalize_host(authority.host())?
        }
    };
    Ok(Destination {
        scheme: Scheme::Http,
        host,
        port: original.port(),
        upstream_path: target.to_string(),
        audit_path: audit_path(target),
        route: None,
        internal: false,
        provider: None,
    })
}

fn forward(target: &str, host_header: Option<&[u8]>) -> Result<Destination, TargetError> {
    let uri: http::Uri = target.parse().map_err(|_| {
        TargetError::Malformed("the request target is not a valid absolute URL".into())
    })?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        _ => {
            return Err(TargetError::Malformed(
                "only `http` and `https` URLs can be proxied".into(),
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| TargetError::Malformed("the request target has no host".into()))?;
    // SECURITY: userinfo in the target could smuggle credentials or confuse host parsing.
    if authority.as_str().contains('@') {
        return Err(TargetError::Malformed(
            "user info in the request target is not allowed".into(),
        ));
    }
    let host = normalize_host(authority.host())?;
    let port = port_of(authority, scheme)?;
    if let Some(h) = host_header {
        // A `Host` that spells the target's authority as it is written (what clients send)
        // reads as the same host and port without a second parse.
        let same_text = h.trim_ascii() == authority.as_str().as_bytes();
        if !same_text && !host_header_matches(h, &host, port, scheme) {
            return Err(TargetError::HostMismatch);
        }
    }
    // `http://h` and `http://h?q` have an empty path, which is `/` (RFC 9112 3.2.2).
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let path_and_query = if path_and_query.starts_with('/') {
        std::borrow::Cow::Borrowed(path_and_query)
    } else {
        std::borrow::Cow::Owned(format!("/{path_and_query}"))
    };
    check_path(&path_and_query)?;
    Ok(Destination {
        scheme,
        host,
        port,
        audit_path: audit_path(&path_and_query),
        upstream_path: path_and_query.into_owned(),
        route: None,
        internal: false,
        provider: None,
    })
}

fn route(target: &str, routes: &[Route]) -> Result<Destination, TargetError> {
    check_path(target)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Routes are sorted longest prefix first; `/openai` also matches the `/openai/` route.
    let route = routes
        .iter()
        .find(|r| path.starts_with(&r.prefix) || path == &r.prefix[..r.prefix.len() - 1])
        .ok_or(TargetError::RouteNotFound)?;
    let rest = path.get(route.prefix.len()..).unwrap_or("");
    let mut upstream_path =
        String::with_capacity(route.base_path.len() + rest.len() + 1 + query.map_or(0, str::len));
    upstream_path.push_str(&route.base_path);
    upstream_path.push_str(rest);
    if let Some(q) = query {
        upstream_path.push('?');
        upstream_path.push_str(q);
    }
    Ok(Destination {
        scheme: route.scheme,
        host: route.host.clone(),
        port: route.port,
        audit_path: audit_path(&upstream_path),
        upstream_path,
        route: Some(route.name.clone()),
        internal: route.internal,
        provider: route.provider.clone(),
    })
}

/// Lowercase host without brackets or trailing dot, as destinations and policies name it; an IP
/// address in its canonical text, however it was spelt.
///
/// A name with an empty label (`a..b`, `.a`, or `a..` with two trailing dots) is refused: it
/// names no host in DNS, and stripping one dot more or less is how two readers (this one and a
/// policy, a credential binding or a resolver) would come to disagree on which host it means.
///
/// SECURITY: resolvers read legacy spellings of an IPv4 address (`2130706433`, `0x7f000001`,
/// `0177.0.0.1`, `127.1`) and long forms of an IPv6 one (`0:0:0:0:0:0:0:1`,
/// `::ffff:127.0.0.1`) as the address itself, so a policy on `127.0.0.1` must see that text
/// for every one of them: the destination is the canonical text (`127.0.0.1`, `::1`; an
/// IPv4-mapped IPv6 address as its IPv4 address), and the connection goes to that text, never
/// to the spelling. A host whose last label is a number (as WHATWG URL parsing reads it) but
/// which is no IPv4 address (`1.2.3.256`, `example.0x1g`) is refused rather than looked up.
pub fn normalize_host(host: &str) -> Result<String, TargetError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(TargetError::Malformed(
            "the request target has an empty host".into(),
        ));
    }
    // Pairs of bytes rather than `contains("..")`, which builds a substring searcher per call.
    let empty_label = host.as_bytes().windows(2).any(|pair| pair == b"..");
    if host.starts_with('.') || host.ends_with('.') || empty_label {
        return Err(TargetError::Malformed(
            "the request target's host has an empty label (`..`, or a leading dot)".into(),
        ));
    }
    // The common spelling first: four decimal octets without leading zeros are the
    // canonical text already (std's parser takes nothing else), as WHATWG URL parsing reads
    // them, so the text is kept as it is.
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(host.to_owned());
    }
    if let Some(ip) = ip_literal(host)? {
        return Ok(ip.to_string());
    }
    // Checked on the borrowed text, so the host is copied once, lower-cased.
    Ok(host.to_ascii_lowercase())
}

/// The address `host` (without brackets) spells, if it spells one.
fn ip_literal(host: &str) -> Result<Option<IpAddr>, TargetError> {
    let not_an_address = || {
        TargetError::Malformed(
            "the request target's host is neither a name nor an IP address".into(),
        )
    };
    if host.contains(':') {
        let v6: Ipv6Addr = host.parse().map_err(|_| not_an_address())?;
        return Ok(Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }));
    }
    if !ends_in_a_number(host) {
        return Ok(None);
    }
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(v4)) => Ok(Some(IpAddr::V4(v4))),
        _ => Err(not_an_address()),
    }
}

/// Whether the last label of `host` is a number (decimal, or `0x` hex), which makes the whole
/// host an IPv4 address to WHATWG URL parsing, and to `inet_aton`, or nothing.
fn ends_in_a_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"))
        && last[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn host_header_matches(header: &[u8], host: &str, port: u16, scheme: Scheme) -> bool {
    let Ok(value) = std::str::from_utf8(header) else {
        return false;
    };
    let Ok(authority) = value.trim().parse::<http::uri::Authority>() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let Ok(h) = normalize_host(authority.host()) else {
        return false;
    };
    h == host && port_of(&authority, scheme) == Ok(port)
}

/// The port an authority names, or the scheme's default when it names none.
fn port_of(authority: &http::uri::Authority, scheme: Scheme) -> Result<u16, TargetError> {
    Ok(explicit_port(authority)?.unwrap_or(scheme.default_port()))
}

/// The port an authority names, if it names one. A port that is empty, zero, above 65535 or
/// anything but digits (`+443`) is refused: `http`'s own reading turns the first three into
/// "no port", and so into a default port, which is not what the client wrote.
pub fn explicit_port(authority: &http::uri::Authority) -> Result<Option<u16>, TargetError> {
    let text = authority.as_str();
    // An IPv6 literal's colons are inside its brackets.
    let host_end = if text.starts_with('[') {
        text.find(']').map_or(text.len(), |i| i + 1)
    } else {
        0
    };
    let Some(colon) = text[host_end..].rfind(':').map(|i| host_end + i) else {
        return Ok(None);
    };
    match text[colon + 1..].parse::<u16>() {
        Ok(port) if port != 0 && text[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(port))
        }
        _ => Err(TargetError::Malformed(
            "the port must be a number from 1 to 65535".into(),
        )),
    }
}

/// Refuses a path that an upstream could read as another than the one the policy decided on:
/// dot segments, empty segments (`/v1//x`, which many servers merge into `/v1/x`), path
/// parameters (`;`, which servers such as Tomcat or Jetty strip from each segment before they
/// resolve dot segments, so `/v1/..;/x` is `/x` there), encoded or backslash separators, and
/// percent-encodings that decoding changes
/// the meaning of (a malformed one, an encoded control character, or an encoded letter, digit or
/// `-._~`, which RFC 3986 says to send as itself: `/v1/%66iles` is `/v1/files` to the upstream
/// but not to a policy on `"/v1/files*"`, or an escape in lower case). Escapes of other
/// characters in upper case (`%20`, `%3A`, UTF-8) pass, and the policy sees them as sent,
/// unless a second reading could make separators or dots of them: an escaped `%` before two
/// hex digits (`%252E`, which a second decoding reads as `.`), escapes that decode to no valid
/// UTF-8 (the overlong `%C0%AE` is `.` to lenient decoders), and characters that Unicode
/// normalization (NFKC) turns into `.`, `/` or `\` (the fullwidth `．`).
fn check_path(path_and_query: &str) -> Result<(), TargetError> {
    let whole = path_and_query.as_bytes();
    let bytes = &whole[..memchr::memchr(b'?', whole).unwrap_or(whole.len())];
    // A dot segment needs a `.`: most call paths have none, and are not split to look.
    if memchr::memchr(b'.', bytes).is_some()
        && bytes.split(|b| *b == b'/').any(|s| s == b"." || s == b"..")
    {
        return Err(TargetError::Malformed(
            "dot segments (`.` or `..`) are not allowed in the path".into(),
        ));
    }
    if memchr::memmem::find(bytes, b"//").is_some() {
        return Err(TargetError::Malformed(
            "empty path segments (`//`) are not allowed in the path".into(),
        ));
    }
    if memchr::memchr(b';', bytes).is_some() {
        return Err(TargetError::Malformed(
            "path parameters (`;`) are not allowed in the path: send `%3B` for a literal `;`"
                .into(),
        ));
    }
    let mut i = 0;
    // An escape of a byte outside ASCII: the decoded path is checked as a whole after.
    let mut wide = false;
    // Jump between the bytes that matter (SIMD memchr): most paths have neither.
    while let Some(at) = memchr::memchr2(b'%', b'\\', &bytes[i..]) {
        i += at;
        if bytes[i] == b'\\' {
            return Err(separator());
        }
        let decoded = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            None => {
                return Err(TargetError::Malformed(
                    "a `%` in the path that is not followed by two hex digits".into(),
                ))
            }
            Some(b'/' | b'\\') => return Err(separator()),
            Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                return Err(TargetError::Malformed(
                    "a percent-encoded letter, digit, `-`, `.`, `_` or `~` in the path: send it \
                     as itself"
                        .into(),
                ))
            }
            Some(b) if b.is_ascii_control() => {
                return Err(TargetError::Malformed(
                    "a percent-encoded control character in the path".into(),
                ))
            }
            Some(b'%')
                if bytes
                    .get(i + 3)
                    .copied()
                    .is_some_and(|d| hex_value(d).is_some())
                    && bytes
                        .get(i + 4)
                        .copied()
                        .is_some_and(|d| hex_value(d).is_some()) =>
            {
                return Err(TargetError::Malformed(
                    "a percent-encoded `%` before two hex digits in the path (`%252E`): a \
                     second decoding reads another character there"
                        .into(),
                ))
            }
            // One spelling per escape (RFC 3986's upper case), so `%3a` cannot pass a policy
            // written against `%3A` that the upstream reads the same.
            Some(_) if bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) => {
                return Err(TargetError::Malformed(
                    "a percent-encoding in lower case in the path: write `%3A`, not `%3a`".into(),
                ))
            }
            Some(b) => {
                wide |= !b.is_ascii();
                i += 3;
            }
        }
    }
    // Escapes outside ASCII, or such bytes sent raw (servers take raw UTF-8 in a path too).
    if wide || !bytes.is_ascii() {
        check_decoded_path(bytes)?;
    }
    Ok(())
}

/// ASCII characters a path must not gain by Unicode compatibility normalization (NFKC): an
/// upstream that normalizes its paths would read a separator, a dot segment, an escape, a
/// query, a fragment or a path parameter where the policy saw a letter (`．`, `／`, `℀` = `a/c`).
const NORMALIZED_MEANINGFUL: &[char] = &['.', '/', '\\', '%', '?', '#', ';'];

/// Whether NFKC turns `c` (outside ASCII) into text holding one of [`NORMALIZED_MEANINGFUL`].
fn normalizes_to_meaningful(c: char) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    !c.is_ascii()
        && std::iter::once(c)
            .nfkc()
            .any(|n| NORMALIZED_MEANINGFUL.contains(&n))
}

/// The path's escapes outside ASCII, decoded: valid UTF-8 (an overlong or otherwise invalid
/// sequence is whatever a lenient decoder makes of it, `%C0%AE` a `.`), and none of the
/// characters normalization makes separators or dots of.
fn check_decoded_path(path: &[u8]) -> Result<(), TargetError> {
    // Every `%` was checked to start an escape.
    let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode(path).into();
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Err(TargetError::Malformed(
            "percent-encodings in the path that are no valid UTF-8 (such as the overlong \
             `%C0%AE`)"
                .into(),
        ));
    };
    if text.chars().any(normalizes_to_meaningful) {
        return Err(TargetError::Malformed(
            "a character in the path that Unicode normalization makes a `.`, `/` or `\\` of \
             (such as the fullwidth `．`)"
                .into(),
        ));
    }
    Ok(())
}

fn separator() -> TargetError {
    TargetError::Malformed("encoded or backslash path separators are not allowed".into())
}

/// The value of one hex digit.
fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|v| v as u8)
}

/// The longest query key recorded with nothing after its `=` (`?flag=`); a longer one is taken
/// for a bare value with one `=` of base64 padding.
const LONGEST_BARE_KEY: usize = 16;

/// The path with query values removed (`/v1/x?key=secret&b=1` → `/v1/x?key&b`): query strings
/// may carry secrets, audit records must not. SECURITY: an item without `=` is a value with no
/// key (some APIs take a bare token as the whole query, `?<token>`), so it is recorded as `=`
/// (`/v1/x?sk-…&b=1` → `/v1/x?=&b`), never as written; so is one whose `=`s are all at its end
/// (a base64 token's padding, `?c2st…==`, or a single `=` after more than
/// [`LONGEST_BARE_KEY`] bytes). Items are separated by `&` and by `;` (which some servers take
/// for `&`).
pub fn audit_path(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => path_and_query.to_string(),
        Some((path, query)) => {
            let keys: Vec<&str> = query
                .split(['&', ';'])
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    // Base64 padding (`?c2st…==`, `?c2st…=`) makes no `key=value` either: a
                    // long item with nothing but `=` after its first one is taken for a value.
                    Some((key, rest))
                        if rest.bytes().all(|b| b == b'=')
                            && (!rest.is_empty() || key.len() > LONGEST_BARE_KEY) =>
                    {
                        "="
                    }
                    Some((key, _)) => key,
                    None => "=",
                })
                .collect();
            format!("{path}?{}", keys.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling a resolver reads as an address is that address's canonical text; a name
    /// stays a name; a host that ends in a number but is no address is refused.
    #[test]
    fn an_ip_address_is_named_by_its_canonical_text_however_it_is_spelt() {
        for (spelt, canonical) in [
            ("127.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("127.000.000.001", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("169.254.169.254", "169.254.169.254"),
            ("0xa9fea9fe", "169.254.169.254"),
            ("[::1]", "::1"),
            ("[0::1]", "::1"),
            ("[0:0:0:0:0:0:0:1]", "::1"),
            ("[0000:0000:0000:0000:0000:0000:0000:0001]", "::1"),
            ("[::ffff:127.0.0.1]", "127.0.0.1"),
            ("[::FFFF:7f00:1]", "127.0.0.1"),
            ("[2606:4700:4700:0:0:0:0:1111]", "2606:4700:4700::1111"),
            ("[FD00::1]", "fd00::1"),
            ("api.openai.com", "api.openai.com"),
            ("API.OpenAI.com.", "api.openai.com"),
            ("1password.com", "1password.com"),
            ("0x.example", "0x.example"),
            ("example.0xg", "example.0xg"),
        ] {
            assert_eq!(normalize_host(spelt).as_deref(), Ok(canonical), "{spelt}");
        }
        for refused in [
            "1.2.3.256",
            "256.1",
            "4294967296",
            "0x100000000",
            "08.0.0.1",
            "1.2.3.4.5",
            "example.123",
            "example.0x1f",
            "[::1%25eth0]",
            "[fe80::1%eth0]",
            "[1:2:3]",
        ] {
            assert!(
                matches!(normalize_host(refused), Err(TargetError::Malformed(_))),
                "{refused}: {:?}",
                normalize_host(refused)
            );
        }
    }

    /// What `check_path` decides, written as decoding the path into a new string first: the
    /// reference the in-place reading must agree with.
    fn check_path_by_decoding(path_and_query: &str) -> bool {
        let path = path_and_query.split('?').next().unwrap_or("");
        if path.contains('\\')
            || path.contains(';')
            || path.split('/').any(|s| s == "." || s == "..")
        {
            return false;
        }
        // Every segment but the last (`/v1/` ends in an empty one) has something in it.
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        if segments.len() > 1 && segments[..segments.len() - 1].iter().any(|s| s.is_empty()) {
            return false;
        }
        let mut decoded = Vec::new();
        // The whole path decoded, and which of its bytes were escapes.
        let mut full: Vec<(u8, bool)> = Vec::new();
        let mut rest = path.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b != b'%' {
                full.push((b, false));
                rest = tail;
                continue;
            }
            let Some(hex) = tail
                .get(..2)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            else {
                return false;
            };
            if hex.iter().any(u8::is_ascii_lowercase) {
                return false;
            }
            let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            decoded.push(byte);
            full.push((byte, true));
            rest = &tail[2..];
        }
        let unreserved = |b: &u8| b.is_ascii_alphanumeric() || b"-._~".contains(b);
        if decoded
            .iter()
            .any(|b| b"/\\".contains(b) || unreserved(b) || b.is_ascii_control())
        {
            return false;
        }
        // An escaped `%` before two hex digits decodes again.
        if full
            .windows(3)
            .any(|w| w[0] == (b'%', true) && w[1..].iter().all(|(b, _)| b.is_ascii_hexdigit()))
        {
            return false;
        }
        if decoded.iter().any(|b| !b.is_ascii()) {
            let bytes: Vec<u8> = full.iter().map(|(b, _)| *b).collect();
            let Ok(text) = String::from_utf8(bytes) else {
                return false;
            };
            if text.chars().any(normalizes_to_meaningful) {
                return false;
            }
        }
        true
    }

    #[test]
    fn paths_are_checked_as_decoding_each_segment_would() {
        // Every path of up to four pieces from these, between and around slashes.
        let pieces = [
            "",
            ".",
            "..",
            "...",
            "%2e",
            "%2E",
            "%2e%2E",
            ".%2e",
            "%2e.",
            "%2",
            "%2f",
            "%2F",
            "%",
            "a",
            "a.",
            "\\",
            "%%2e2e",
            "e",
            "2",
            "?x=..",
            "%41",
            "%7e",
            "%5c",
            "%5C",
            "%00",
            "%7F",
            "%20",
            "%3A",
            "%C3%A9",
            "%zz",
            "%+1",
            "%-1",
            "%3a",
            "%c3%A9",
            ";",
            "..;",
            ".;x",
            "a;b",
            "%3B",
            "%25",
            "2E",
            "%252E",
            "%C0%AE",
            "%C3",
            "%A9",
            "%EF%BC%8E",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for sep in ["/", ""] {
                        let path = format!("/{a}{sep}{b}/{c}");
                        assert_eq!(
                            check_path(&path).is_ok(),
                            check_path_by_decoding(&path),
                            "{path}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, pieces.len().pow(3) * 2);
        assert!(check_path("/v1/chat/completions?x=..&y=%zz").is_ok());
        assert!(check_path("/v1/%2E%2e/admin").is_err());
        assert!(check_path("/v1/a%2Fb").is_err());
        // What an upstream that decodes would read differently from the policy.
        for path in [
            "/v1/%66iles",
            "/v1/files%5c..%5cadmin",
            "/v1/models%00",
            "/v1/mod%zzels",
            "/v1/x%",
            "/model/a%3a0",
            // Read again by lenient, double or normalizing decoders as `..`, `/` or `\`.
            "/v1/%C0%AE%C0%AE/admin",
            "/v1/%E0%80%AE%E0%80%AE/admin",
            "/v1/%C1%9C",
            "/v1/%C0%80",
            "/v1/%252E%252E/admin",
            "/v1/%252f",
            "/v1/%EF%BC%8E%EF%BC%8E/admin",
            "/v1/a%EF%BC%8Fb",
            "/v1/%E2%80%A5/admin",
            "/v1/%FF",
            // Sent raw rather than escaped, and other characters NFKC makes `%`, `?`, `;` or a
            // `/` of (`℀` is `a/c`).
            "/v1/x／..／..／admin",
            "/v1/‥/admin",
            "/v1/%E2%84%80",
            "/v1/%EF%BC%85",
            "/v1/%EF%BC%9F",
            "/v1/%EF%BC%9B",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
        for path in [
            "/v1/a%20b",
            "/model/anthropic.claude-v1%3A0/invoke",
            "/caf%C3%A9",
            "/v1/%E4%B8%AD%E6%96%87",
            "/v1/100%25",
            "/v1/%25zz",
            "/v1/中文",
            "/v1/café",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn captured_requests_go_to_the_original_port_under_their_host() {
        let original: std::net::SocketAddr = "203.0.113.7:8080".parse().unwrap();
        let d = captured(b"/v1/x?key=secret", Some(b"API.example.com:8080"), original).unwrap();
        assert_eq!(
            (d.scheme, d.host.as_str(), d.port),
            (Scheme::Http, "api.example.com", 8080)
        );
        assert_eq!(
            (d.upstream_path.as_str(), d.audit_path.as_str()),
            ("/v1/x?key=secret", "/v1/x?key")
        );
        let bare = captured(b"/", None, original).unwrap();
        assert_eq!(bare.host, "203.0.113.7");
        for (target, host, want) in [
            // Another port than the one dialed.
            (
                &b"/"[..],
                Some(&b"api.example.com"[..]),
                TargetError::HostMismatch,
            ),
            (
                b"/",
                Some(b"api.example.com:9090"),
                TargetError::HostMismatch,
            ),
        ] {
            assert_eq!(captured(target, host, original), Err(want));
        }
        for (target, host) in [
            (
                &b"http://api.example.com:8080/"[..],
                Some(&b"api.example.com:8080"[..]),
            ),
            (b"/a/../b", Some(b"api.example.com:8080")),
            (b"/", Some(b"user@api.example.com:8080")),
            (b"/", Some(b"")),
        ] {
            assert!(matches!(
                captured(target, host, original),
                Err(TargetError::Malformed(_))
            ));
        }
    }

    fn routes() -> Vec<Route> {
        vec![
            Route {
                name: "openai-v2".into(),
                prefix: "/openai/v2/".into(),
                scheme: Scheme::Https,
                host: "api.openai.com".into(),
                port: 443,
                base_path: "/v2/".into(),
                internal: false,
                provider: None,
                region: None,
            },
            Route {
                name: "openai".into(),
                prefix: "/openai/".into(),
                scheme: Scheme::Https,
                host: "api.openai.com".into(),
                port: 443,
                base_path: "/".into(),
                internal: false,
                provider: None,
                region: None,
            },
        ]
    }

    #[test]
    fn forward_mode() {
        let d = resolve(
            b"http://Example.com:8080/a?k=v",
            Some(b"example.com:8080"),
            &[],
        )
        .expect("ok");
        assert_eq!(
            (d.host.as_str(), d.port, d.upstream_path.as_str()),
            ("example.com", 8080, "/a?k=v")
        );
        assert_eq!(d.audit_path, "/a?k");
        // A value with no key (a bare token as the query) is never recorded as written.
        for (query, recorded) in [
            ("/a?sk-bare-token", "/a?="),
            ("/a?sk-bare&k=v&&flag=", "/a?=&k&flag"),
            ("/a?=v", "/a?"),
            ("/a?c2stbGl2ZQ==&k=v", "/a?=&k"),
            ("/a?flag=&k=v==", "/a?flag&k"),
            ("/a?c2stbGl2ZS1QQURPTkUtMDEyMzQ1Njc4OTA=&k=v", "/a?=&k"),
            ("/a?sk-live-semi-0001;a=1", "/a?=&a"),
        ] {
            assert_eq!(audit_path(query), recorded, "{query}");
        }
        let d = resolve(b"http://example.com", None, &[]).expect("ok");
        assert_eq!((d.port, d.upstream_path.as_str()), (80, "/"));
        let d = resolve(b"http://[::1]:9/x", Some(b"[::1]:9"), &[]).expect("ok");
        assert_eq!(d.host, "::1");
        assert_eq!(d.host_header(), "[::1]:9");
    }

    #[test]
    fn host_headers_bracket_ipv6_and_name_only_ports_that_are_not_the_schemes() {
        for (target, host, want) in [
            (
                &b"http://example.com/"[..],
                &b"example.com"[..],
                "example.com",
            ),
            (
                b"http://example.com:443/",
                b"example.com:443",
                "example.com:443",
            ),
            (
                b"http://example.com:65535/",
                b"example.com:65535",
                "example.com:65535",
            ),
            (b"http://[::1]/", b"[::1]", "[::1]"),
            (
                b"http://[2001:db8::1]:8080/",
                b"[2001:db8::1]:8080",
                "[2001:db8::1]:8080",
            ),
            (b"http://10.0.0.1:1/", b"10.0.0.1:1", "10.0.0.1:1"),
        ] {
            let d = resolve(target, Some(host), &[]).expect("ok");
            assert_eq!(d.host_header(), want);
        }
        let mut d = Destination::https_for_test("api.example", "/", None);
        assert_eq!(d.host_header(), "api.example");
        d.port = 80;
        assert_eq!(d.host_header(), "api.example:80");
    }

    #[test]
    fn forward_mode_refusals() {
        let mismatches: [(&[u8], &[u8]); 2] = [
            (b"http://a.example/", b"b.example"),
            (b"http://a.example/", b"a.example:81"),
        ];
        for (target, host) in mismatches {
            assert_eq!(
                resolve(target, Some(host), &[]).err(),
                Some(TargetError::HostMismatch)
            );
        }
        // Port 80 is http's default, so these agree.
        assert!(resolve(b"http://a.example:80/", Some(b"a.example"), &[]).is_ok());
        // The same text (around spaces), and another spelling of the same address and port.
        for (target, host) in [
            (&b"http://127.0.0.1:8080/"[..], &b" 127.0.0.1:8080 "[..]),
            (b"http://0177.0.0.1:8080/", b"127.0.0.1:8080"),
            (b"http://127.0.0.1:8080/", b"2130706433:8080"),
        ] {
            let d = resolve(target, Some(host), &[]).expect("the same host");
            assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 8080));
        }
        assert_eq!(
            resolve(b"http://127.0.0.1:8080/", Some(b"127.0.0.2:8080"), &[]).err(),
            Some(TargetError::HostMismatch)
        );
        // One trailing dot (a fully qualified name) and upper case name the same host.
        let d = resolve(b"http://A.Example./", Some(b"a.example"), &[]).expect("fqdn");
        assert_eq!(d.host, "a.example");
        // A Host header with an empty label matches no target.
        assert_eq!(
            resolve(b"http://a.example/", Some(b"a.example.."), &[]).err(),
            Some(TargetError::HostMismatch)
        );
        for bad in [
            &b"http://u:p@a.example/"[..],
            b"ftp://a/",
            b"http:///x",
            b"http://a/../b",
            b"http://a/%2E%2e/b",
            b"*",
            b"http://a.example../",
            b"http://a..example/",
            b"http://.a.example/",
            // A port `http` reads as none at all, which would be the default port.
            b"http://a.example:65536/",
            b"http://a.example:94537/",
            b"http://a.example:0/",
            b"http://a.example:/",
            b"http://[::1]:65536/",
            // Paths an upstream could read as another.
            b"http://a/v1//organization",
            b"http://a/v1/..;/x",
            b"http://a/v1;x/organization",
        ] {
            assert!(
                matches!(resolve(bad, None, &[]), Err(TargetError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A Host header whose port is out of range names no port, not the default one.
        assert_eq!(
            resolve(b"http://a.example/", Some(b"a.example:65616"), &[]).err(),
            Some(TargetError::HostMismatch)
        );
        let v6 = resolve(b"http://[::1]:8080/", Some(b"[::1]:8080"), &[]).expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        let v6 = resolve(b"http://[::1]/", None, &[]).expect("v6 default port");
        assert_eq!(v6.port, 80);
    }

    #[test]
    fn an_empty_path_is_the_root_with_or_without_a_query() {
        for (target, path, audit) in [
            (&b"http://a.example"[..], "/", "/"),
            (b"http://a.example?x=1", "/?x=1", "/?x"),
            (b"https://a.example:8443?x=1&y", "/?x=1&y", "/?x&="),
        ] {
            let d = resolve(target, None, &[]).expect("root");
            assert_eq!(
                (d.upstream_path.as_str(), d.audit_path.as_str()),
                (path, audit)
            );
        }
    }

    #[test]
    fn route_mode() {
        let r = routes();
        let d = resolve(b"/openai/v1/chat/completions?x=1", None, &r).expect("ok");
        assert_eq!(d.upstream_path, "/v1/chat/completions?x=1");
        assert_eq!(d.route.as_deref(), Some("openai"));
        let d = resolve(b"/openai/v2/models", None, &r).expect("ok");
        assert_eq!(
            (d.upstream_path.as_str(), d.route.as_deref()),
            ("/v2/models", Some("openai-v2"))
        );
        assert_eq!(
            resolve(b"/anthropic/v1/messages", None, &r).err(),
            Some(TargetError::RouteNotFound)
        );
        assert_eq!(
            resolve(b"/openaiX/v1", None, &r).err(),
            Some(TargetError::RouteNotFound)
        );
        assert!(matches!(
            resolve(b"/openai/../admin", None, &r),
            Err(TargetError::Malformed(_))
        ));
    }

    #[test]
    fn tunnel_requests_must_name_the_tunnels_own_authority() {
        let ok = tunneled(
            b"/v1/chat?x=1",
            Some(b"api.openai.com"),
            "api.openai.com",
            443,
        );
        let dest = ok.expect("same host");
        assert_eq!(dest.scheme, Scheme::Https);
        assert_eq!(dest.upstream_path, "/v1/chat?x=1");
        assert_eq!(dest.audit_path, "/v1/chat?x");
        assert!(tunneled(b"/", Some(b"API.openai.com:443"), "api.openai.com", 443).is_ok());
        assert!(tunneled(b"/", Some(b"h.test:8443"), "h.test", 8443).is_ok());
        for (target, host) in [
            (&b"/"[..], Some(&b"api.anthropic.com"[..])),
            (b"/", Some(b"api.openai.com:8443")),
            (b"/", None),
            (b"https://api.anthropic.com/v1", Some(b"api.anthropic.com")),
            (b"http://api.openai.com/v1", Some(b"api.openai.com")),
        ] {
            assert_eq!(
                tunneled(target, host, "api.openai.com", 443),
                Err(TargetError::HostMismatch),
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
        assert!(tunneled(
            b"https://api.openai.com/v1",
            Some(b"api.openai.com"),
            "api.openai.com",
            443
        )
        .is_ok());
        assert!(matches!(
            tunneled(b"/a/../b", Some(b"api.openai.com"), "api.openai.com", 443),
            Err(TargetError::Malformed(_))
        ));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(512)))]

            /// Any target and `Host` never panic; whatever is accepted is normalized (lowercase
            /// host, no brackets, no userinfo, no dot segments) and an absolute-form target
            /// agrees with its `Host`.
            #[test]
            fn fuzz_any_target_and_host(
                target in prop::collection::vec(any::<u8>(), 0..120),
                host in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            ) {
                let host_ref = host.as_deref();
                if let Ok(d) = resolve(&target, host_ref, &routes()) {
                    prop_assert_eq!(&d.host, &d.host.to_ascii_lowercase());
                    prop_assert!(!d.host.contains('[') && !d.host.contains('@'));
                    prop_assert!(d.upstream_path.starts_with('/'));
                    prop_assert!(check_path(&d.upstream_path).is_ok());
                    if d.route.is_none() {
                        let h = host_ref.ok_or_else(|| TestCaseError::fail("forward without Host"))?;
                        prop_assert!(host_header_matches(h, &d.host, d.port, d.scheme));
                    }
                }
                let _ = tunneled(&target, host_ref, "api.example", 443);
            }

            /// Absolute URLs built from parts come back as those parts, or are refused.
            #[test]
            fn fuzz_absolute_urls_round_trip(
                host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
                port in prop::option::of(1u16..),
                path in "(/[A-Za-z0-9_~-]{1,8}){0,4}/?",
                https in any::<bool>(),
            ) {
                let scheme = if https { "https" } else { "http" };
                let authority = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
                let url = format!("{scheme}://{authority}{path}");
                let d = resolve(url.as_bytes(), Some(authority.as_bytes()), &[])
                    .map_err(|e| TestCaseError::fail(format!("{e:?}: {url}")))?;
                prop_assert_eq!(&d.host, &host);
                let default = if https { 443 } else { 80 };
                prop_assert_eq!(d.port, port.unwrap_or(default));
                let want_path = if path.is_empty() { "/".to_string() } else { path.clone() };
                prop_assert_eq!(&d.upstream_path, &want_path);
                // Any other Host is a mismatch.
                let other = format!("x{authority}");
                prop_assert!(resolve(url.as_bytes(), Some(other.as_bytes()), &[]).is_err());
            }
        }
    }
}
