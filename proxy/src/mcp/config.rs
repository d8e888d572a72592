//! `[mcp]` in the tenant file: which destinations are MCP servers (Streamable HTTP, JSON-RPC 2.0
//! bodies). Only those get MCP handling: each `tools/call`, `resources/read` and `prompts/get`
//! decided as its own Cedar action and the `*/list` responses filtered (see [`crate::mcp`]).
//!
//! An MCP server is a destination: a host, a port and a path prefix. A server named by its
//! route is the route's upstream (host, port and base path), so every way of reaching that
//! upstream (the route, another route to it, forward mode, a tunnel) reaches the server and is
//! scoped the same way. The scheme is not compared: one host and port is one server.
//!
//! ```toml
//! [mcp]
//! max_message_bytes = 8388608   # largest response (JSON) or SSE event buffered for filtering
//!
//! [[mcp.servers]]
//! name = "docs"                 # policies see it as `context.server`
//! route = "docs-mcp"            # a route-mode route (its prefix maps to the server) ...
//!
//! [[mcp.servers]]
//! name = "tickets"
//! host = "mcp.example.com"      # ... or a host for forward and tunnel mode,
//! port = 443                    # optionally one port (default: any),
//! path_prefix = "/mcp"          # optionally one path prefix (default: every path)
//! ```
//!
//! `session_key_file` (optional) holds the key MCP session ids are sealed with
//! ([`super::session`]); replicas behind one load balancer need the same one.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::session::SessionKey;

use crate::target::Destination;
use crate::target::Route;

/// Default for [`McpSettings::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// `[mcp]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// Largest JSON response, or single SSE event, buffered to filter it.
    pub max_message_bytes: Option<usize>,
    /// The MCP servers.
    #[serde(default)]
    pub servers: Vec<McpServerSpec>,
    /// The key MCP session ids are sealed with ([`super::session`]); replicas that share it
    /// open each other's. Default: a key of this process alone.
    pub session_key_file: Option<PathBuf>,
}

/// `[[mcp.servers]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// Name, visible to policies as `context.server`.
    pub name: String,
    /// A route-mode route that leads to the server.
    pub route: Option<String>,
    /// The server's host, for forward and tunnel mode.
    pub host: Option<String>,
    /// Only this port of `host` (default: every port).
    pub port: Option<u16>,
    /// Only paths under this prefix (default: every path).
    pub path_prefix: Option<String>,
}

/// Validated MCP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSettings {
    /// See [`McpSpec::max_message_bytes`].
    pub max_message_bytes: usize,
    /// Servers in configuration order; the first match wins.
    pub servers: Vec<McpServer>,
    /// What session ids are sealed with.
    pub session_key: Arc<SessionKey>,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            servers: Vec::new(),
            session_key: SessionKey::process(),
        }
    }
}

/// One MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// Name (`context.server`).
    pub name: String,
    /// Where it is.
    pub at: McpLocation,
}

/// Where an MCP server is, however it was configured (by route or by host). Requests to this
/// host (and port) under this path are the server's, in any mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpLocation {
    /// Lowercase host without trailing dot (an IP literal without brackets).
    pub host: String,
    /// The port, or any.
    pub port: Option<u16>,
    /// The path prefix (starts with `/`, no trailing `/` unless it is `/`).
    pub path_prefix: String,
}

impl McpSettings {
    /// Validates `spec` against the tenant file's `routes`; problems are `(field, message)`.
    /// `path` resolves a file named in the tenant file.
    pub fn from_spec(
        spec: McpSpec,
        routes: &[Route],
        path: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let session_key = match &spec.session_key_file {
            None => SessionKey::process(),
            Some(file) => match SessionKey::read(&path(file)) {
                Ok(key) => Arc::new(key),
                Err(message) => {
                    problems.push(("mcp.session_key_file".into(), message));
                    SessionKey::process()
                }
            },
        };
        let max_message_bytes = spec.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 1024 {
            problems.push((
                "mcp.max_message_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut servers = Vec::new();
        for (i, s) in spec.servers.into_iter().enumerate() {
            let at = |field: &str| format!("mcp.servers[{i}].{field}");
            if s.name.is_empty() {
                problems.push((at("name"), "must not be empty".into()));
            } else if !names.insert(s.name.clone()) {
                problems.push((
                    at("name"),
                    format!("duplicate MCP server name `{}`", s.name),
                ));
            }
            let at = match (s.route, s.host) {
                (Some(route), None) => {
                    if s.port.is_some() || s.path_prefix.is_some() {
                        problems.push((
                            at("route"),
                            "`port` and `path_prefix` belong with `host`; a route names its upstream already".into(),
                        ));
                    }
                    match routes.iter().find(|r| r.name == route) {
                        // The route's upstream is the server: every route to it, forward mode
                        // and tunnels reach the same server.
                        Some(r) => McpLocation {
                            host: r
                                .host
                                .strip_suffix('.')
                                .unwrap_or(&r.host)
                                .to_ascii_lowercase(),
                            port: Some(r.port),
                            path_prefix: trimmed_prefix(&r.base_path),
                        },
                        None => {
                            problems.push((at("route"), format!("no route is named `{route}`")));
                            continue;
                        }
                    }
                }
                (None, Some(host)) => {
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    let host = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
                    if host.is_empty() || host.contains(['/', ' ']) {
                        problems.push((at("host"), format!("`{host}` is not a host name")));
                    }
                    let prefix = s.path_prefix.unwrap_or_else(|| "/".into());
                    if !prefix.starts_with('/') || prefix.contains(['?', '#', '%']) {
                        problems.push((
                            at("path_prefix"),
                            format!("`{prefix}` must start with `/` and hold no `?`, `#` or `%`"),
                        ));
                    }
                    McpLocation {
                        host,
                        port: s.port,
                        path_prefix: trimmed_prefix(&prefix),
                    }
                }
                _ => {
                    problems.push((at("route"), "set exactly one of `route` and `host`".into()));
                    continue;
                }
            };
            servers.push(McpServer { name: s.name, at });
        }
        if problems.is_empty() {
            Ok(Self {
                max_message_bytes,
                servers,
                session_key,
            })
        } else {
            Err(problems)
        }
    }

    /// The MCP server a request goes to, if any: by its destination's host, port and path,
    /// or by the address the egress guard resolved it to (`addr`, once known), so that another
    /// spelling of a server's IP address (`localhost`, `2130706433`, `127.1`) or a name that
    /// `[egress] hosts` answers with it (`static_hosts`) reaches the same server.
    pub fn server_for(
        &self,
        destination: &Destination,
        addr: Option<SocketAddr>,
        static_hosts: &HashMap<String, Vec<IpAddr>>,
    ) -> Option<&McpServer> {
        self.servers.iter().find(|s| {
            under_prefix(&destination.upstream_path, &s.at.path_prefix)
                && (s.at.at_host(&destination.host, destination.port)
                    || addr.is_some_and(|a| s.at.at_addr(a, static_hosts)))
        })
    }

    /// The path prefix of the server named `name` (`/` for one marked by its host alone, its
    /// upstream's base path for one marked by its route).
    pub fn path_prefix_of(&self, name: &str) -> Option<&str> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.at.path_prefix.as_str())
    }

    /// Whether some MCP server is at `host:port` or at `addr` (on any path): a tunnel there
    /// must be intercepted, or its calls would pass unseen.
    pub fn serves(
        &self,
        host: &str,
        port: u16,
        addr: Option<SocketAddr>,
        static_hosts: &HashMap<String, Vec<IpAddr>>,
    ) -> bool {
        self.servers.iter().any(|s| {
            s.at.at_host(host, port) || addr.is_some_and(|a| s.at.at_addr(a, static_hosts))
        })
    }
}

impl McpLocation {
    fn at_host(&self, host: &str, port: u16) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        host.eq_ignore_ascii_case(&self.host) && self.port.is_none_or(|p| p == port)
    }

    /// Whether `addr` is this server's address: its IP literal, or a static answer for its
    /// name. (A name only DNS answers is compared by name.)
    fn at_addr(&self, addr: SocketAddr, static_hosts: &HashMap<String, Vec<IpAddr>>) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        // Compared as dialed: a server on 127.0.0.1 is also reached as 0.0.0.0.
        let ip = crate::egress::dialed(addr.ip());
        match self.host.parse::<IpAddr>() {
            Ok(own) => crate::egress::dialed(own) == ip,
            Err(_) => static_hosts
                .get(&self.host)
                .is_some_and(|answers| answers.iter().any(|a| crate::egress::dialed(*a) == ip)),
        }
    }
}

/// A path prefix without its trailing `/` (`/` stays `/`).
fn trimmed_prefix(prefix: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

/// Whether the path of `path_and_query` is `prefix` or below it. The path is compared
/// percent-decoded and with repeated slashes folded, the way servers route it.
// SECURITY: a spelling the server routes to the MCP endpoint but the proxy did not recognize
// would skip tool authorization; the decoded form closes `/%6Dcp` and `//mcp`, and the
// comparison ignores ASCII case, since Express (the TypeScript SDK's examples) and ASP.NET
// Core (the C# SDK's `MapMcp`) route `/MCP` to `/mcp`. A case-sensitive server's `/MCP` is
// then checked as MCP too: more checking, never less.
pub(super) fn under_prefix(path_and_query: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path);
    let mut folded = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && folded.ends_with('/')) {
            folded.push(c);
        }
    }
    let (path, prefix) = (folded.as_bytes(), prefix.as_bytes());
    path.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        && matches!(path.get(prefix.len()), None | Some(b'/'))
}

pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::target::Scheme;

    fn dest(host: &str, port: u16, path: &str, route: Option<&str>) -> Destination {
        Destination {
            scheme: Scheme::Http,
            host: host.into(),
            port,
            upstream_path: path.into(),
            audit_path: path.into(),
            route: route.map(String::from),
            internal: false,
            provider: None,
        }
    }

    fn route(name: &str) -> Route {
        Route {
            name: name.into(),
            prefix: format!("/{name}/"),
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: 9,
            base_path: "/".into(),
            internal: false,
            provider: None,
            region: None,
        }
    }

    fn settings(toml_text: &str) -> Result<McpSettings, Vec<(String, String)>> {
        let spec: McpSpec = toml::from_str(toml_text).unwrap();
        let mut docs = route("docs");
        docs.host = "docs.internal".into();
        docs.port = 8080;
        docs.base_path = "/mcp/".into();
        McpSettings::from_spec(spec, &[route("llm"), docs], &|p| p.to_path_buf())
    }

    fn no_hosts() -> HashMap<String, Vec<IpAddr>> {
        HashMap::new()
    }

    #[test]
    fn matching() {
        let s = settings(
            r#"
[[servers]]
name = "docs"
route = "docs"
[[servers]]
name = "tickets"
host = "MCP.example.com."
port = 8443
path_prefix = "/mcp/"
[[servers]]
name = "anyport"
host = "tools.example.com"
"#,
        )
        .unwrap();
        let name = |d: Destination| s.server_for(&d, None, &no_hosts()).map(|m| m.name.clone());
        let cases = [
            (
                "through its route",
                dest("docs.internal", 8080, "/mcp/x", Some("docs")),
                Some("docs"),
            ),
            (
                "through another route to the same upstream",
                dest("docs.internal", 8080, "/mcp", Some("side-door")),
                Some("docs"),
            ),
            (
                "the route's upstream in forward mode",
                dest("docs.internal", 8080, "/mcp/", None),
                Some("docs"),
            ),
            (
                "the route's upstream host, another path",
                dest("docs.internal", 8080, "/health", None),
                None,
            ),
            (
                "the route's upstream host, another port",
                dest("docs.internal", 8081, "/mcp", None),
                None,
            ),
            (
                "another route",
                dest("127.0.0.1", 9, "/x", Some("llm")),
                None,
            ),
            (
                "host, port and prefix",
                dest("mcp.example.com", 8443, "/mcp", None),
                Some("tickets"),
            ),
            (
                "below the prefix",
                dest("mcp.example.com", 8443, "/mcp/v1?x=1", None),
                Some("tickets"),
            ),
            (
                "encoded prefix",
                dest("mcp.example.com", 8443, "/%6Dcp", None),
                Some("tickets"),
            ),
            (
                "doubled slash",
                dest("mcp.example.com", 8443, "//mcp/", None),
                Some("tickets"),
            ),
            (
                "another letter case (Express, ASP.NET Core route it alike)",
                dest("mcp.example.com", 8443, "/MCP", None),
                Some("tickets"),
            ),
            (
                "another letter case, encoded and below",
                dest("mcp.example.com", 8443, "/%4Dcp/v1", None),
                Some("tickets"),
            ),
            (
                "trailing dot host",
                dest("mcp.example.com.", 8443, "/mcp", None),
                Some("tickets"),
            ),
            (
                "not a segment",
                dest("mcp.example.com", 8443, "/mcpx", None),
                None,
            ),
            (
                "other port",
                dest("mcp.example.com", 443, "/mcp", None),
                None,
            ),
            (
                "other path",
                dest("mcp.example.com", 8443, "/health", None),
                None,
            ),
            (
                "any port, any path",
                dest("tools.example.com", 1234, "/", None),
                Some("anyport"),
            ),
            ("other host", dest("example.com", 8443, "/mcp", None), None),
        ];
        for (case, d, want) in cases {
            assert_eq!(name(d).as_deref(), want, "{case}");
        }
        // Tunnels: any path of a server's host and port, however the server was named.
        let serves = |h: &str, p: u16| s.serves(h, p, None, &no_hosts());
        assert!(serves("MCP.example.com.", 8443));
        assert!(!serves("mcp.example.com", 443));
        assert!(serves("tools.example.com", 1));
        assert!(
            serves("docs.internal", 8080),
            "a route's upstream is a tunnel target too"
        );
        assert!(!serves("docs.internal", 443));
    }

    #[test]
    fn other_spellings_of_a_servers_address_reach_it() {
        let s = McpSettings::from_spec(
            toml::from_str(
                r#"
[[servers]]
name = "loop"
route = "llm"
[[servers]]
name = "named"
host = "mcp.test"
port = 7000
path_prefix = "/mcp"
"#,
            )
            .unwrap(),
            &[route("llm")],
            &|p| p.to_path_buf(),
        )
        .unwrap();
        let hosts = HashMap::from([(
            "mcp.test".to_string(),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()],
        )]);
        let at = |host: &str, port: u16, path: &str, addr: &str| {
            s.server_for(&dest(host, port, path, None), addr.parse().ok(), &hosts)
                .map(|m| m.name.clone())
        };
        // `localhost`, `2130706433`, `127.1`: resolved to the route upstream's 127.0.0.1.
        for host in ["localhost", "2130706433", "127.1"] {
            assert_eq!(
                at(host, 9, "/x", "127.0.0.1:9").as_deref(),
                Some("loop"),
                "{host}"
            );
        }
        assert_eq!(
            at("localhost", 9, "/x", "[::ffff:127.0.0.1]:9").as_deref(),
            Some("loop")
        );
        // A dial of 0.0.0.0 reaches 127.0.0.1.
        assert_eq!(at("0.0.0.0", 9, "/x", "0.0.0.0:9").as_deref(), Some("loop"));
        assert_eq!(
            at("localhost", 10, "/x", "127.0.0.1:10"),
            None,
            "another port"
        );
        assert_eq!(
            at("10.1.2.3", 7000, "/mcp/x", "10.1.2.3:7000").as_deref(),
            Some("named")
        );
        assert_eq!(
            at("alias.test", 7000, "/mcp", "10.1.2.3:7000").as_deref(),
            Some("named")
        );
        assert_eq!(
            at("alias.test", 7000, "/other", "10.1.2.3:7000"),
            None,
            "another path"
        );
        assert!(s.serves("alias.test", 7000, "10.1.2.3:7000".parse().ok(), &hosts));
        assert!(!s.serves("alias.test", 7000, "10.1.2.4:7000".parse().ok(), &hosts));
    }

    #[test]
    fn rejections() {
        let cases = [
            (
                "both route and host",
                "[[servers]]\nname = \"a\"\nroute = \"docs\"\nhost = \"h\"",
                "exactly one",
            ),
            ("neither", "[[servers]]\nname = \"a\"", "exactly one"),
            (
                "unknown route",
                "[[servers]]\nname = \"a\"\nroute = \"nope\"",
                "no route is named `nope`",
            ),
            (
                "port with route",
                "[[servers]]\nname = \"a\"\nroute = \"docs\"\nport = 1",
                "belong with `host`",
            ),
            (
                "duplicate name",
                "[[servers]]\nname = \"a\"\nhost = \"h\"\n[[servers]]\nname = \"a\"\nhost = \"g\"",
                "duplicate",
            ),
            (
                "empty name",
                "[[servers]]\nname = \"\"\nhost = \"h\"",
                "must not be empty",
            ),
            (
                "relative prefix",
                "[[servers]]\nname = \"a\"\nhost = \"h\"\npath_prefix = \"mcp\"",
                "must start with",
            ),
            (
                "encoded prefix",
                "[[servers]]\nname = \"a\"\nhost = \"h\"\npath_prefix = \"/m%63p\"",
                "must start with",
            ),
            ("tiny buffer", "max_message_bytes = 10", "at least 1024"),
        ];
        for (case, text, needle) in cases {
            let problems = settings(text).expect_err(case);
            assert!(
                problems.iter().any(|(_, m)| m.contains(needle)),
                "{case}: {problems:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<McpSpec>("[[servers]]\nname = \"a\"\nhots = \"h\"").is_err());
    }
}
