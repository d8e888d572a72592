//! Where a request carries credentials: every provider's key positions (each provider names
//! its own, see [`crate::usage::providers::registry::key_positions`]), the generic positions of
//! gateways and APIs that take a key in the usual places, and the configured extra headers.
//! Toward a destination whose keys the proxy manages, each of these positions holds exactly one
//! value, and that value is a `$CRED{}` handle or nothing (see [`super::apply`]); a handle in a
//! header that is not one of them is a position error.
//!
//! Names are compared normalized, the way upstream frameworks fold them, so a spelling variant
//! is the same position: header names in lower case with `_` read as `-` (CGI/WSGI servers turn
//! both into `_`); query and body field names in lower case (Unicode, plus `ſ` as `s`, as Go's
//! `encoding/json` folds) without `_` and `-` (`api_key`, `apiKey`, `API-KEY` are one name).

use http::HeaderName;

use crate::usage::providers::{registry, KeyPositions};

/// Where gateways and APIs without a provider of their own accept a key.
pub const GENERIC: KeyPositions = KeyPositions {
    headers: &["authorization", "x-api-key", "api-key", "x-auth-token"],
    query: &["api_key", "key", "access_token", "x-api-key"],
    body: &["api_key", "x-api-key", "access_token", "auth_token"],
};

/// The union of every provider's positions, the generic ones and the configured extra headers,
/// normalized once at load so a request's check is a few comparisons. Toward a managed
/// destination all of them apply: the proxy cannot know which reader an upstream uses, so a
/// literal in any of them is refused.
#[derive(Debug, Clone)]
pub struct CredentialPositions {
    headers: Vec<String>,
    query: Vec<String>,
    body: Vec<String>,
}

impl Default for CredentialPositions {
    fn default() -> Self {
        Self::with_extra(&[], &[])
    }
}

impl CredentialPositions {
    /// Every provider's positions, the generic ones, `extra` header names (`[credentials]
    /// credential_headers`) and `fields`, query parameter and body field names (`[credentials]
    /// credential_fields`).
    pub fn with_extra(extra: &[String], fields: &[String]) -> Self {
        let mut headers = Vec::new();
        let mut query = Vec::new();
        let mut body = Vec::new();
        let add = |list: &mut Vec<String>, name: String| {
            if !list.contains(&name) {
                list.push(name);
            }
        };
        for p in registry::key_positions().chain([&GENERIC]) {
            for h in p.headers {
                add(&mut headers, normalize_header(h));
            }
            for q in p.query {
                add(&mut query, normalize_field(q));
            }
            for b in p.body {
                add(&mut body, normalize_field(b));
            }
        }
        for h in extra {
            add(&mut headers, normalize_header(h));
        }
        for f in fields {
            add(&mut query, normalize_field(f));
            add(&mut body, normalize_field(f));
        }
        Self {
            headers,
            query,
            body,
        }
    }

    /// Whether request header `name` carries credentials.
    pub fn is_header(&self, name: &HeaderName) -> bool {
        self.header_key(name).is_some()
    }

    /// Which credential header `name` is (`x_api_key` and `x-api-key` are the same one), or
    /// `None` for any other header. Compares in place: this runs for every request header.
    pub fn header_key(&self, name: &HeaderName) -> Option<usize> {
        let name = name.as_str().as_bytes();
        self.headers.iter().position(|h| {
            h.len() == name.len()
                && h.bytes().zip(name).all(|(want, got)| {
                    let got = match got {
                        b'_' => b'-',
                        b => b.to_ascii_lowercase(),
                    };
                    want == got
                })
        })
    }

    /// Whether a query parameter (its decoded name) carries credentials.
    pub fn is_query_param(&self, name: &str) -> bool {
        may_be_one_of(&self.query, name) && self.query.iter().any(|q| same_field(q, name))
    }

    /// Whether a JSON or form body field (its decoded name) carries credentials.
    pub fn is_body_field(&self, name: &str) -> bool {
        may_be_one_of(&self.body, name) && self.body.iter().any(|b| same_field(b, name))
    }
}

/// A cheap first look (every key of a JSON body passes here): an ASCII name whose first
/// significant letter starts none of `names` is none of them.
fn may_be_one_of(names: &[String], name: &str) -> bool {
    match name
        .bytes()
        .find(|b| !matches!(b, b'_' | b'-') && !b.is_ascii_whitespace())
    {
        Some(first) if first.is_ascii() => {
            let first = first.to_ascii_lowercase();
            names.iter().any(|n| n.as_bytes().first() == Some(&first))
        }
        // Non-ASCII (a folding letter) or empty: the full comparison decides.
        _ => true,
    }
}

/// Whether `name` normalizes to `normalized` (see [`normalize_field`]), without allocating: it
/// runs for every key of a JSON body.
fn same_field(normalized: &str, name: &str) -> bool {
    let name = name.trim();
    if name.is_ascii() {
        let mut want = normalized.bytes();
        for b in name.bytes() {
            if b == b'_' || b == b'-' {
                continue;
            }
            if want.next() != Some(b.to_ascii_lowercase()) {
                return false;
            }
        }
        return want.next().is_none();
    }
    let mut want = normalized.chars();
    for c in name.chars() {
        let folded: &mut dyn Iterator<Item = char> = match c {
            '_' | '-' => continue,
            '\u{17f}' => &mut std::iter::once('s'),
            c => &mut c.to_lowercase(),
        };
        for f in folded {
            if want.next() != Some(f) {
                return false;
            }
        }
    }
    want.next().is_none()
}

/// A header name as servers match it: lower case, `_` read as `-`.
pub fn normalize_header(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A field name as lenient readers match it: lower case (the Kelvin sign and the long s fold
/// to `k` and `s`, as in Go's `encoding/json`), without `_`, `-` and surrounding spaces.
pub fn normalize_field(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        match c {
            '_' | '-' => {}
            '\u{17f}' => out.push('s'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// What a credential position holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Nothing (absent, empty or blank).
    Nothing,
    /// Exactly one handle, optionally after an auth scheme word (`Bearer $CRED{openai}`).
    Handle,
    /// Anything else: a literal, a literal next to a handle, two handles, an escaped handle.
    Literal,
}

/// Classifies the value of a credential position.
pub fn holding(value: &[u8]) -> Holding {
    let v = value.trim_ascii();
    if v.is_empty() {
        return Holding::Nothing;
    }
    if !super::handle::has_marker(v) {
        return Holding::Literal;
    }
    let Ok(pieces) = super::handle::scan(v) else {
        // A malformed handle is refused as such by the substitution.
        return Holding::Handle;
    };
    match pieces.as_slice() {
        [super::handle::Piece::Handle(_)] => Holding::Handle,
        [super::handle::Piece::Literal(scheme), super::handle::Piece::Handle(_)]
            if is_auth_scheme(scheme) =>
        {
            Holding::Handle
        }
        _ => Holding::Literal,
    }
}

/// The auth schemes a handle may follow (`Bearer $CRED{x}`); compared ignoring case. A closed
/// list: any other word before a handle could be the agent's own key (`sk-… $CRED{x}`).
const AUTH_SCHEMES: &[&str] = &[
    "bearer", "basic", "token", "key", "apikey", "api-key", "oauth",
];

/// One auth scheme word, then blanks.
fn is_auth_scheme(text: &[u8]) -> bool {
    let word = text.trim_ascii_end();
    word.len() < text.len()
        && AUTH_SCHEMES
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_position_is_known_in_every_spelling() {
        let p = CredentialPositions::default();
        for name in [
            "authorization",
            "Authorization",
            "x-api-key",
            "X_API_KEY",
            "api-key",
            "api_key",
            "x-goog-api-key",
            "x_goog_api_key",
        ] {
            assert!(
                p.is_header(&HeaderName::from_bytes(name.as_bytes()).expect("name")),
                "{name}"
            );
        }
        assert!(!p.is_header(&HeaderName::from_static("x-debug")));
        assert!(!p.is_header(&HeaderName::from_static("host")));
        for q in [
            "api_key",
            "apiKey",
            "API-KEY",
            "key",
            "access_token",
            "accessToken",
        ] {
            assert!(p.is_query_param(q), "{q}");
        }
        assert!(!p.is_query_param("q") && !p.is_query_param("page_token"));
        for b in [
            "api_key",
            "apiKey",
            "Api-Key",
            "openai_api_key",
            "anthropic_api_key",
            "access_token",
            "api_\u{212a}ey",
            "API_KEY",
        ] {
            assert!(p.is_body_field(b), "{b}");
        }
        // `key` is a query position (Gemini) but far too common a JSON field to be one.
        assert!(!p.is_body_field("key") && !p.is_body_field("model"));
        let extra =
            CredentialPositions::with_extra(&["Private-Token".into()], &["Client_Secret".into()]);
        assert!(extra.is_header(&HeaderName::from_static("private-token")));
        assert!(!p.is_header(&HeaderName::from_static("private-token")));
        // A configured field is a query parameter and a body field, in any spelling.
        for f in ["client_secret", "clientSecret", "CLIENT-SECRET"] {
            assert!(extra.is_query_param(f) && extra.is_body_field(f), "{f}");
            assert!(!p.is_query_param(f) && !p.is_body_field(f), "{f}");
        }
    }

    /// The positions the per-provider table here held before each provider named its own:
    /// the union is the same, name for name.
    #[test]
    fn the_union_is_what_the_provider_table_held() {
        #[rustfmt::skip]
        let before: [(&[&str], &[&str], &[&str]); 6] = [
            // openai
            (&["authorization"], &[], &["api_key", "openai_api_key"]),
            // anthropic
            (&["x-api-key", "authorization"], &[], &["api_key", "anthropic_api_key"]),
            // azure_openai
            (&["api-key", "authorization"], &["api-key"], &["api_key", "azure_api_key"]),
            // gemini
            (&["x-goog-api-key", "authorization"], &["key"], &["api_key", "x-goog-api-key"]),
            // bedrock (added with its provider file: signatures and session tokens)
            (
                &["authorization", "x-amz-security-token"],
                &["x-amz-signature", "x-amz-credential", "x-amz-security-token"],
                &[],
            ),
            // generic
            (
                &["authorization", "x-api-key", "api-key", "x-auth-token"],
                &["api_key", "key", "access_token", "x-api-key"],
                &["api_key", "x-api-key", "access_token", "auth_token"],
            ),
        ];
        let set = |names: Vec<String>| names.into_iter().collect::<std::collections::BTreeSet<_>>();
        let now = CredentialPositions::default();
        let headers = before
            .iter()
            .flat_map(|p| p.0)
            .map(|h| normalize_header(h))
            .collect();
        let query = before
            .iter()
            .flat_map(|p| p.1)
            .map(|q| normalize_field(q))
            .collect();
        let body = before
            .iter()
            .flat_map(|p| p.2)
            .map(|b| normalize_field(b))
            .collect();
        assert_eq!(set(now.headers.clone()), set(headers));
        assert_eq!(set(now.query.clone()), set(query));
        assert_eq!(set(now.body.clone()), set(body));
    }

    #[test]
    fn holdings() {
        let cases: &[(&str, Holding)] = &[
            ("", Holding::Nothing),
            ("   ", Holding::Nothing),
            ("$CRED{openai}", Holding::Handle),
            ("Bearer $CRED{openai}", Holding::Handle),
            (" Bearer  $CRED{openai} ", Holding::Handle),
            ("Token $CRED{a.b-c}", Holding::Handle),
            ("sk-literal", Holding::Literal),
            ("Bearer sk-literal", Holding::Literal),
            ("Bearer sk-LITERAL $CRED{openai}", Holding::Literal),
            ("$CRED{openai} sk-LITERAL", Holding::Literal),
            ("$CRED{a}$CRED{b}", Holding::Literal),
            ("Bearer$CRED{openai}", Holding::Literal),
            ("$$CRED{openai}", Holding::Literal),
            ("sk-x,$CRED{openai}", Holding::Literal),
            ("$CRED{open ai}", Holding::Handle),
            ("sk-x $CRED{openai}", Holding::Literal),
            ("basic $CRED{openai}", Holding::Handle),
        ];
        for (value, want) in cases {
            assert_eq!(holding(value.as_bytes()), *want, "{value:?}");
        }
    }
}
