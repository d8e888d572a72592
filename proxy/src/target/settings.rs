//! `[[route]]` in the tenant file: route-mode path prefixes and the upstreams they map to.

use std::collections::HashSet;

use serde::Deserialize;

use super::{Route, Scheme};
use crate::problems::Problems;

/// `[[route]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Route name (available to policies as `context.route`).
    pub name: String,
    /// Path prefix, starting and ending with `/`, e.g. `/openai/`.
    pub prefix: String,
    /// Base URL the prefix maps to, e.g. `https://api.openai.com/v1/`.
    pub upstream: String,
    /// An internal service: W3C `baggage` is forwarded to it (it is removed toward external hosts).
    #[serde(default)]
    pub internal: bool,
    /// The LLM provider behind the route, for the price table (`openai`, `anthropic`, …);
    /// well-known API hosts need none.
    pub provider: Option<String>,
    /// Region of this route's upstream (policy `context.destination_region`); overrides
    /// `[destination_regions]` for requests through the route.
    pub region: Option<String>,
}

impl Route {
    /// Validates every `[[route]]` (unique names and prefixes, usable upstream URLs) and returns
    /// the valid ones longest prefix first, the order they are matched in.
    pub fn list_from_spec(specs: Vec<RouteSpec>, p: &mut Problems<'_>) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut seen_names = HashSet::new();
        let mut seen_prefixes = HashSet::new();
        for (i, r) in specs.into_iter().enumerate() {
            if !seen_names.insert(r.name.clone()) {
                p.push(
                    format!("route[{i}].name"),
                    format!("duplicate route name `{}`", r.name),
                );
            }
            if !(r.prefix.starts_with('/') && r.prefix.ends_with('/') && r.prefix.len() > 1) {
                p.push(
                    format!("route[{i}].prefix"),
                    format!(
                        "`{}` must start and end with `/`, e.g. `/openai/`",
                        r.prefix
                    ),
                );
            } else if !seen_prefixes.insert(r.prefix.clone()) {
                p.push(
                    format!("route[{i}].prefix"),
                    format!("duplicate prefix `{}`", r.prefix),
                );
            }
            match parse_base_url(&r.upstream) {
                Ok((scheme, host, port, base_path)) => routes.push(Route {
                    name: r.name,
                    prefix: r.prefix,
                    scheme,
                    host,
                    port,
                    base_path,
                    internal: r.internal,
                    provider: r.provider,
                    region: r.region,
                }),
                Err(msg) => p.push(format!("route[{i}].upstream"), msg),
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        routes
    }
}

/// Splits `https://host:port/base/` into its parts; the base path always ends with `/`.
///
/// SECURITY: the messages never quote the URL: a refused one may hold a password or a key (in
/// its user info or query), and they go to the log on a reload and to `check`'s output. The
/// problem's location names the route.
fn parse_base_url(url: &str) -> Result<(Scheme, String, u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_string())?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err("must start with `http://` or `https://`".into()),
    };
    let authority = uri.authority().ok_or_else(|| "has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err(
            "must not contain user info (a credential goes in the vault, bound to the host)".into(),
        );
    }
    if uri.query().is_some() {
        return Err("must not contain a query".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(scheme.default_port());
    let mut base_path = uri.path().to_string();
    if !base_path.ends_with('/') {
        base_path.push('/');
    }
    Ok((scheme, host, port, base_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let cases = [
            (
                "https://api.openai.com/",
                Some((Scheme::Https, "api.openai.com", 443, "/")),
            ),
            (
                "http://127.0.0.1:18000",
                Some((Scheme::Http, "127.0.0.1", 18000, "/")),
            ),
            (
                "https://x.example/v1",
                Some((Scheme::Https, "x.example", 443, "/v1/")),
            ),
            ("ftp://x/", None),
            ("https://u:p@x/", None),
            ("https://x/v1/?api-key=sk-secret-1", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            let parsed = parse_base_url(url);
            if let Err(why) = &parsed {
                assert!(!why.contains(url), "the URL is never quoted: {why}");
            }
            let got = parsed.ok();
            let got = got
                .as_ref()
                .map(|(s, h, p, b)| (*s, h.as_str(), *p, b.as_str()));
            assert_eq!(got, want, "{url}");
        }
    }
}
