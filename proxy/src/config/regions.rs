//! Regions of upstream destinations (`[destination_regions]` in the tenant file), exposed to
//! policies as `context.destination_region` so data-residency rules are one `forbid`.
//!
//! ```toml
//! [destination_regions]
//! eu = ["eu.api.openai.com", "*.eu.example.com"]
//! us = ["api.openai.com", "api.anthropic.com"]
//! ```
//!
//! A host name matches exactly; `*.example.com` matches every subdomain of `example.com` (not
//! `example.com` itself). An exact name wins over a wildcard, and a longer wildcard over a
//! shorter one. A `[[route]]` may set its own `region`, which applies to requests through it.
//! A destination that matches nothing has no region (the context field is absent).

use std::collections::{BTreeMap, HashMap};

/// Host patterns by region, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationRegions {
    exact: HashMap<String, String>,
    /// `(".example.com", region)`, longest suffix first.
    suffixes: Vec<(String, String)>,
}

impl DestinationRegions {
    /// Validates `spec` (region name -> host patterns). Returns every problem as
    /// (location, message).
    pub fn from_spec(spec: &BTreeMap<String, Vec<String>>) -> Result<Self, Vec<(String, String)>> {
        let mut out = Self::default();
        let mut problems = Vec::new();
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (region, hosts) in spec {
            if region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problems.push((
                    format!("destination_regions.{region}"),
                    "a region name is letters, digits, `-` and `_`".into(),
                ));
                continue;
            }
            for (i, pattern) in hosts.iter().enumerate() {
                let at = format!("destination_regions.{region}[{i}]");
                let normal = pattern.trim_end_matches('.').to_ascii_lowercase();
                let (wildcard, name) = match normal.strip_prefix("*.") {
                    Some(rest) => (true, rest),
                    None => (false, normal.as_str()),
                };
                if name.is_empty()
                    || name.contains('*')
                    || name.contains('/')
                    || (name.contains(':') && name.parse::<std::net::Ipv6Addr>().is_err())
                {
                    problems.push((
                        at,
                        format!("`{pattern}` is not a host name, IP address or `*.domain`"),
                    ));
                    continue;
                }
                if let Some(other) = seen.insert(normal.clone(), region) {
                    problems.push((at, format!("`{pattern}` is already in region `{other}`")));
                    continue;
                }
                if wildcard {
                    out.suffixes.push((format!(".{name}"), region.clone()));
                } else {
                    out.exact.insert(name.to_string(), region.clone());
                }
            }
        }
        out.suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The region of `host` (any case, one trailing dot allowed), if it is tagged.
    pub fn region_of(&self, host: &str) -> Option<&str> {
        let host = host.strip_suffix('.').unwrap_or(host);
        // Hosts reach here lowercase already; a mixed-case one must not miss its region.
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(region) = self.exact.get(host) {
            return Some(region);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, region)| region.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn regions(spec: &[(&str, &[&str])]) -> Result<DestinationRegions, Vec<(String, String)>> {
        let map = spec
            .iter()
            .map(|(r, hosts)| (r.to_string(), hosts.iter().map(|h| h.to_string()).collect()))
            .collect();
        DestinationRegions::from_spec(&map)
    }

    #[test]
    fn hosts_and_wildcards_find_their_region() {
        let r = regions(&[
            (
                "eu",
                &["eu.api.openai.com", "*.eu.example.com", "127.0.0.1"],
            ),
            (
                "us",
                &["api.openai.com", "*.example.com", "US.Example.NET."],
            ),
        ])
        .unwrap();
        #[rustfmt::skip]
        let cases = [
            ("exact", "eu.api.openai.com", Some("eu")),
            ("exact other region", "api.openai.com", Some("us")),
            ("ip", "127.0.0.1", Some("eu")),
            ("longer wildcard wins", "a.eu.example.com", Some("eu")),
            ("shorter wildcard", "a.example.com", Some("us")),
            ("wildcard does not match the bare domain", "example.com", None),
            ("pattern normalized", "us.example.net", Some("us")),
            ("trailing dot", "api.openai.com.", Some("us")),
            ("upper case", "API.OpenAI.com", Some("us")),
            ("suffix without a dot boundary", "evileu.example.com", Some("us")),
            ("untagged", "attacker.example", None),
        ];
        for (name, host, want) in cases {
            assert_eq!(r.region_of(host), want, "{name}");
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn bad_patterns_are_problems() {
        #[rustfmt::skip]
        let cases: [(&str, &[(&str, &[&str])], &str); 4] = [
            ("inner wildcard", &[("eu", &["a.*.example.com"])], "destination_regions.eu[0]"),
            ("url", &[("eu", &["https://x.example/"])], "not a host name"),
            ("twice", &[("eu", &["x.example"]), ("us", &["X.example"])], "already in region `eu`"),
            ("bad region name", &[("e u", &["x.example"])], "region name"),
        ];
        for (name, spec, want) in cases {
            let problems = regions(spec).expect_err(name);
            let text = format!("{problems:?}");
            assert!(text.contains(want), "{name}: {text}");
        }
    }
}
