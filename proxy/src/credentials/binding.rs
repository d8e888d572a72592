//! Where a credential may go (destinations) and where in a request it may appear (positions).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where in a request a handle appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// A request header value.
    Header,
    /// A URL query value.
    Query,
    /// A JSON or form request body.
    Body,
}

impl Position {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Position::Header => "header",
            Position::Query => "query",
            Position::Body => "body",
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// The lowercase name, as [`Position::as_str`] writes it (and the tenant file's `in`).
    fn from_str(s: &str) -> Result<Self, String> {
        [Position::Header, Position::Query, Position::Body]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not `header`, `query` or `body`"))
    }
}

/// One destination a credential is bound to. A host pattern is an exact host or `*.suffix`
/// (which matches subdomains only, not the bare suffix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// `api.openai.com` or `*.openai.azure.com`.
    pub host: String,
    /// `https` or `http`; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Port; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Allowed path prefixes; any path when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Allowed methods (uppercase); any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// The destination of a request, as bindings see it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Scheme.
    pub scheme: &'a str,
    /// Lowercase host.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Path (no query).
    pub path: &'a str,
    /// Method.
    pub method: &'a str,
}

impl Binding {
    /// A binding to `host` on any scheme, port, path and method.
    pub fn host(host: &str) -> Self {
        Self {
            host: host.to_ascii_lowercase(),
            scheme: None,
            port: None,
            path_prefixes: vec![],
            methods: vec![],
        }
    }

    /// Whether the binding's host pattern covers `host` (ignoring path and method).
    pub fn matches_host(&self, host: &str) -> bool {
        match self.host.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => self.host == host,
        }
    }

    /// Whether a request to `t` may carry the credential.
    pub fn allows(&self, t: &Target<'_>) -> bool {
        self.matches_host(t.host)
            && self
                .scheme
                .as_deref()
                .is_none_or(|s| s.eq_ignore_ascii_case(t.scheme))
            && self.port.is_none_or(|p| p == t.port)
            && (self.path_prefixes.is_empty()
                || self.path_prefixes.iter().any(|p| path_under(t.path, p)))
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(t.method)))
    }

    /// Every field, for listings: `scheme=https host=api.openai.com port=443 paths=/v1/
    /// methods=POST` (`any` where the binding does not restrict).
    pub fn describe(&self) -> String {
        let list = |items: &[String]| {
            if items.is_empty() {
                "any".to_string()
            } else {
                items.join(",")
            }
        };
        format!(
            "scheme={} host={} port={} paths={} methods={}",
            self.scheme.as_deref().unwrap_or("any"),
            self.host,
            self.port.map_or("any".to_string(), |p| p.to_string()),
            list(&self.path_prefixes),
            list(&self.methods),
        )
    }

    /// Checks the pattern is well formed.
    pub fn validate(&self) -> Result<(), String> {
        let host = self.host.strip_prefix("*.").unwrap_or(&self.host);
        let ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':')
            })
            && !host.contains('*');
        if !ok {
            return Err(format!(
                "`{}` is not a host or `*.domain` pattern (lowercase)",
                self.host
            ));
        }
        if let Some(s) = &self.scheme {
            if s != "http" && s != "https" {
                return Err(format!("scheme `{s}` is not `http` or `https`"));
            }
        }
        if self.path_prefixes.iter().any(|p| !p.starts_with('/')) {
            return Err("path prefixes start with `/`".into());
        }
        Ok(())
    }
}

/// Whether `path` is `prefix` or lies under it, whole segments only: `/echo` covers `/echo`
/// and `/echo/x`, not `/echoXYZ` (a prefix ending in `/` is already a segment boundary).
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Parses the CLI form `[METHOD|METHOD ]HOST[:PORT][/PATH]` (`https://` prefix optional, sets
/// the scheme; the methods, when given, restrict the binding to them).
pub fn parse_binding(text: &str) -> Result<Binding, String> {
    let (methods, text) = match text.trim().split_once(' ') {
        Some((m, rest)) => {
            let methods: Vec<String> = m.split('|').map(str::to_string).collect();
            if methods
                .iter()
                .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(format!(
                    "`{m}` is not a list of methods (`POST` or `GET|POST`, upper case)"
                ));
            }
            (methods, rest.trim())
        }
        None => (Vec::new(), text.trim()),
    };
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, text),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port"))?,
            ),
        ),
        None => (authority, None),
    };
    // A fully qualified name's final dot names the same host, and requests' hosts are read
    // without it: a binding kept with it would never match.
    let b = Binding {
        host: host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
        scheme,
        port,
        path_prefixes: path.map(|p| vec![p.to_string()]).unwrap_or_default(),
        methods,
    };
    b.validate()?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_one_set_of_names() {
        for p in [Position::Header, Position::Query, Position::Body] {
            let json = serde_json::to_string(&p).expect("json");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(p.as_str().parse::<Position>(), Ok(p));
        }
        assert_eq!(
            "cookie".parse::<Position>(),
            Err("`cookie` is not `header`, `query` or `body`".to_string())
        );
    }

    fn t<'a>(host: &'a str, path: &'a str, method: &'a str) -> Target<'a> {
        Target {
            scheme: "https",
            host,
            port: 443,
            path,
            method,
        }
    }

    #[test]
    fn matching() {
        let exact = Binding::host("api.openai.com");
        assert!(exact.allows(&t("api.openai.com", "/v1/x", "POST")));
        assert!(!exact.allows(&t("attacker.example", "/", "GET")));
        assert!(!exact.allows(&t("api.openai.com.attacker.example", "/", "GET")));
        let wild = Binding::host("*.openai.azure.com");
        assert!(wild.allows(&t("eu.openai.azure.com", "/", "GET")));
        assert!(!wild.allows(&t("openai.azure.com", "/", "GET")));
        assert!(!wild.allows(&t("evilopenai.azure.com", "/", "GET")));
        let narrow = parse_binding("https://api.openai.com:443/v1/").expect("ok");
        assert!(narrow.allows(&t("api.openai.com", "/v1/chat", "POST")));
        assert!(!narrow.allows(&t("api.openai.com", "/v2/chat", "POST")));
        assert!(!narrow.allows(&Target {
            scheme: "http",
            ..t("api.openai.com", "/v1/chat", "POST")
        }));
        let post_only = Binding {
            methods: vec!["POST".into()],
            ..Binding::host("a.example")
        };
        assert!(!post_only.allows(&t("a.example", "/", "GET")));
        let segment = parse_binding("api.openai.com/echo").expect("ok");
        for (path, ok) in [
            ("/echo", true),
            ("/echo/", true),
            ("/echo/x", true),
            ("/echoXYZ", false),
            ("/echo.json", false),
            ("/ech", false),
            ("/", false),
        ] {
            assert_eq!(
                segment.allows(&t("api.openai.com", path, "GET")),
                ok,
                "{path}"
            );
        }
        assert!(!narrow.allows(&t("api.openai.com", "/v1", "POST")));
        assert_eq!(
            parse_binding("https://api.openai.com:443/v1/")
                .expect("ok")
                .describe(),
            "scheme=https host=api.openai.com port=443 paths=/v1/ methods=any"
        );
        assert_eq!(
            post_only.describe(),
            "scheme=any host=a.example port=any paths=any methods=POST"
        );
        let dotted = parse_binding("API.OpenAI.com.:443/v1/").expect("ok");
        assert_eq!(
            dotted,
            parse_binding("api.openai.com:443/v1/").expect("ok"),
            "the final dot and the case name the same host"
        );
        let post = parse_binding("POST|GET https://api.openai.com/v1/").expect("ok");
        assert_eq!(post.methods, vec!["POST".to_string(), "GET".to_string()]);
        assert!(post.allows(&t("api.openai.com", "/v1/x", "POST")));
        assert!(!post.allows(&t("api.openai.com", "/v1/x", "DELETE")));
        for bad in [
            "",
            "*.",
            "a*b.com",
            "ftp://x",
            "Upper.com:x",
            "post api.openai.com",
            "POST| a.example",
        ] {
            assert!(parse_binding(bad).is_err(), "{bad}");
        }
    }
}
