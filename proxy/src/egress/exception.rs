//! Explicit exceptions to the global-unicast rule, as written in configuration.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An explicit exception to the global-unicast rule.
///
/// Written as `10.0.0.0/8`, `127.0.0.1/32`, `::1/128` (a CIDR; a bare IP means /32 or /128), or
/// `vault.internal:8200`, `127.0.0.1:9000`, `[::1]:9000` (an exact host and port). A host-port
/// exception is compared with the host the request named, before resolution, so it allows
/// whatever that name resolves to on that port, and nothing else on that address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressException {
    /// Every address in the network, on any port, whatever name led to it.
    Cidr(IpNet),
    /// This host (lowercase; an IPv6 address without brackets) on this port.
    HostPort {
        /// The host as the request must name it.
        host: String,
        /// The destination port.
        port: u16,
    },
}

impl EgressException {
    /// Whether this exception allows dialing `address` for a request that named `host:port`.
    pub(super) fn allows(&self, host: &str, port: u16, address: IpAddr) -> bool {
        match self {
            EgressException::Cidr(net) => net.contains(&address),
            EgressException::HostPort { host: h, port: p } => *p == port && same_host(h, host),
        }
    }
}

impl EgressException {
    /// Whether this is a `host:port` exception naming exactly `host` on `port` (what lets a
    /// plain-HTTP tunnel reach a port other than 80).
    pub fn names(&self, host: &str, port: u16) -> bool {
        matches!(self, EgressException::HostPort { host: h, port: p } if *p == port && same_host(h, host))
    }
}

/// Host names compare case-insensitively; IP literals compare as addresses, so `::1` and
/// `0:0::1` are the same host. A legacy spelling like `2130706433` is only equal to itself.
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

impl FromStr for EgressException {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("an egress exception cannot be empty".into());
        }
        if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| {
                format!("`{s}` is not a valid CIDR (expected an address and a prefix length, like `10.0.0.0/8`)")
            })?;
            // `10.1.2.3/8` is almost always a typo for /32 or for 10.0.0.0/8; guessing which
            // would silently widen or narrow the exception.
            if net.trunc() != net {
                return Err(format!(
                    "`{s}` has bits set past its prefix length; write `{}` for the network or `{}` for the address",
                    net.trunc(),
                    IpNet::from(net.addr()),
                ));
            }
            return Ok(EgressException::Cidr(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(EgressException::Cidr(IpNet::from(ip)));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, port) = rest.split_once("]:").ok_or_else(|| {
                format!("`{s}` needs a port after the brackets, like `[::1]:9000`")
            })?;
            let v6: Ipv6Addr = inside
                .parse()
                .map_err(|_| format!("`{inside}` in `{s}` is not an IPv6 address"))?;
            (v6.to_string(), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| {
                format!("`{s}` is neither an address, a CIDR, nor `host:port`; a host name needs a port")
            })?;
            if host.contains(':') {
                return Err(format!(
                    "`{s}`: an IPv6 address with a port is written in brackets, like `[::1]:9000`"
                ));
            }
            check_host_name(host, s)?;
            (host.to_ascii_lowercase(), port)
        };
        Ok(EgressException::HostPort {
            host,
            port: parse_port(port, s)?,
        })
    }
}

/// A host name of letters, digits, `-`, `.` and `_` (no wildcards: an exception names one host).
fn check_host_name(host: &str, whole: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("`{whole}` has no host before the port"));
    }
    if host.len() > 253 {
        return Err(format!(
            "the host in `{whole}` is longer than 253 characters"
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("the host in `{whole}` contains `{c}`; only letters, digits, `-`, `.` and `_` are allowed"));
    }
    Ok(())
}

/// A decimal port from 1 to 65535 (digits only: `u16::from_str` would also take `+80`).
fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    let bad = || format!("the port in `{whole}` must be a number from 1 to 65535");
    if port.is_empty() {
        return Err(format!("`{whole}` is missing a port after `:`"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad()),
    }
}

impl fmt::Display for EgressException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressException::Cidr(net) => write!(f, "{net}"),
            EgressException::HostPort { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            EgressException::HostPort { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for EgressException {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for EgressException {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_parse() {
        let cidr = |s: &str| EgressException::Cidr(s.parse().expect("net"));
        let hp = |h: &str, port| EgressException::HostPort {
            host: h.into(),
            port,
        };
        let good = [
            ("10.0.0.0/8", cidr("10.0.0.0/8")),
            ("127.0.0.1/32", cidr("127.0.0.1/32")),
            ("::1/128", cidr("::1/128")),
            ("10.1.2.3", cidr("10.1.2.3/32")),
            ("::1", cidr("::1/128")),
            ("vault.internal:8200", hp("vault.internal", 8200)),
            ("Vault.Internal:8200", hp("vault.internal", 8200)),
            ("127.0.0.1:9000", hp("127.0.0.1", 9000)),
            ("[::1]:80", hp("::1", 80)),
            ("[0:0::1]:80", hp("::1", 80)),
            ("my_svc-1.local:65535", hp("my_svc-1.local", 65535)),
        ];
        for (input, want) in good {
            assert_eq!(input.parse::<EgressException>(), Ok(want), "{input}");
        }
        let bad = [
            ("", "empty"),
            ("10.0.0.0/33", "not a valid CIDR"),
            ("10.0.0.0/", "not a valid CIDR"),
            ("vault/8", "not a valid CIDR"),
            (
                "10.1.2.3/8",
                "`10.0.0.0/8` for the network or `10.1.2.3/32`",
            ),
            ("host:", "missing a port"),
            ("host:99999", "from 1 to 65535"),
            ("host:0", "from 1 to 65535"),
            ("host:+80", "from 1 to 65535"),
            ("host:http", "from 1 to 65535"),
            (":80", "no host"),
            ("vault.internal", "needs a port"),
            ("[::1]", "needs a port"),
            ("[::1]:", "missing a port"),
            ("[vault]:80", "not an IPv6 address"),
            ("fe80::1%eth0:80", "in brackets"),
            ("*.example.com:443", "contains `*`"),
            ("a b:80", "contains ` `"),
        ];
        for (input, fragment) in bad {
            let err = input.parse::<EgressException>().err().unwrap_or_default();
            assert!(err.contains(fragment), "{input}: {err}");
        }
    }

    #[test]
    fn exceptions_deserialize_from_strings_and_display_back() {
        let list: Vec<EgressException> =
            serde_json::from_str(r#"["10.0.0.0/8", "vault.internal:8200", "[::1]:9000", "::1"]"#)
                .expect("json");
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "vault.internal:8200", "[::1]:9000", "::1/128"]
        );
        assert_eq!(
            serde_json::to_string(&list[2]).ok().as_deref(),
            Some(r#""[::1]:9000""#)
        );
        let err = serde_json::from_str::<EgressException>(r#""host:99999""#)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("from 1 to 65535"));
    }
}
