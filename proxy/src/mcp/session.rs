//! MCP sessions belong to the workload they were opened for.
//!
//! An MCP server names a session with an id it hands out: the `Mcp-Session-Id` header of the
//! Streamable HTTP transport, or a query parameter of the `endpoint` URL in the older HTTP+SSE
//! transport (`sessionId` in the TypeScript SDK, `session_id` in the Python one). The server
//! trusts whoever presents the id: it runs that session's calls, streams its notifications and
//! its sampling requests to them. A server that several tenants reach through the proxy would
//! then give one tenant's session to any other that learns (or guesses, from a server with
//! weak ids) its id.
//!
//! So the proxy seals every session id an MCP server hands out, `tp1.<MAC>.<id>`, the MAC
//! (HMAC-SHA-256, 128 bits) over the tenant, the workload, the server's name and the id, and
//! opens it again on the way back: a request to an MCP server must present a session id sealed
//! for its own workload and server, or none. Anything else (another workload's sealed id, the
//! server's raw id, an edited one) is refused `mcp_session_unknown` (404, which MCP clients
//! answer by opening a new session) and never forwarded. Nothing is stored: any replica that
//! has the key opens what another sealed.
//!
//! The key is `[mcp] session_key_file` (shared by replicas), or one drawn at start for this
//! process alone (sessions then end with the process: clients open new ones).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use base64::Engine;
use ring::hmac;
use zeroize::Zeroizing;

/// What every sealed id starts with (the format's version).
const PREFIX: &str = "tp1.";
/// Bytes of the MAC kept (128 bits).
const MAC_BYTES: usize = 16;
/// The MAC's length once base64url-encoded without padding.
const MAC_CHARS: usize = 22;
/// Fewest bytes of a session key file.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest session id sealed or opened: ids are short tokens (UUIDs, random hex); a longer one
/// is refused rather than carried into every request.
const MAX_ID_BYTES: usize = 1024;

/// The key sessions are sealed with. `Debug` shows its fingerprint only.
pub struct SessionKey {
    key: hmac::Key,
    /// A digest of the key, to compare keys (a reload that keeps the key keeps sessions) and
    /// to name it in logs without showing it.
    fingerprint: [u8; 8],
    /// Where it was read from (`None`: drawn for this process).
    pub file: Option<std::path::PathBuf>,
}

impl SessionKey {
    /// A key read from `path`: its bytes, at least [`MIN_KEY_BYTES`] (a trailing line break is
    /// not part of it).
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = Zeroizing::new(
            crate::whole_file::read(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
        );
        let key = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let key = key.strip_suffix(b"\r").unwrap_or(key);
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "`{}` holds {} bytes; a session key needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -base64 48 > FILE`)",
                path.display(),
                key.len()
            ));
        }
        Ok(Self::new(key, Some(path.to_path_buf())))
    }

    /// This process's own key, drawn once at start and kept across reloads.
    pub fn process() -> Arc<Self> {
        static KEY: LazyLock<Arc<SessionKey>> = LazyLock::new(|| {
            let mut bytes = Zeroizing::new([0u8; 32]);
            // No key, no sealing: a proxy that cannot draw one must not start opening ids.
            #[allow(clippy::expect_used)]
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes[..])
                .expect("the system's random source failed");
            Arc::new(SessionKey::new(&bytes[..], None))
        });
        KEY.clone()
    }

    fn new(bytes: &[u8], file: Option<std::path::PathBuf>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&digest.as_ref()[..8]);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            fingerprint,
            file,
        }
    }

    /// The key for one workload's sessions with one server.
    pub fn binding<'a>(
        &'a self,
        tenant: &'a str,
        workload: &'a str,
        server: &'a str,
    ) -> Binding<'a> {
        Binding {
            key: self,
            tenant,
            workload,
            server,
        }
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey(")?;
        for b in self.fingerprint {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for SessionKey {}

/// Seals and opens the session ids of one workload with one MCP server.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    key: &'a SessionKey,
    tenant: &'a str,
    workload: &'a str,
    server: &'a str,
}

impl Binding<'_> {
    fn mac(&self, id: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key.key);
        ctx.update(b"tenant-proxy mcp session v1");
        // Each part with its length, so no two bindings write the same bytes.
        for part in [self.tenant, self.workload, self.server, id] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        ctx.sign()
    }

    /// The id the agent sees for the server's `id`.
    pub fn seal(&self, id: &str) -> String {
        let tag = self.mac(id);
        let mac =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..MAC_BYTES]);
        let mut sealed = String::with_capacity(PREFIX.len() + MAC_CHARS + 1 + id.len());
        sealed.push_str(PREFIX);
        sealed.push_str(&mac);
        sealed.push('.');
        sealed.push_str(id);
        sealed
    }

    /// The server's id inside `presented`, when it was sealed for this workload and server.
    pub fn open<'p>(&self, presented: &'p str) -> Option<&'p str> {
        let rest = presented.strip_prefix(PREFIX)?;
        let (mac, id) = rest.split_at_checked(MAC_CHARS)?;
        let id = id.strip_prefix('.')?;
        if id.len() > MAX_ID_BYTES {
            return None;
        }
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(mac)
            .ok()?;
        let expected = self.mac(id);
        // Constant time: a timing difference would let a caller forge a MAC byte by byte.
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(&expected.as_ref()[..MAC_BYTES], &mac[..]).into();
        same.then_some(id)
    }
}

/// Whether a query parameter names a session: `sessionId`, `session_id`, `session-id` or
/// `session`, in any letter case, and as servers fold names: PHP reads `.`, a space (`+`) and an
/// unclosed `[` in a name as `_`; PHP, Rails and Node's `qs` read `sessionId[]`, `sessionId[0]`
/// or `sessionId[a]` as (an array or object under) `sessionId`, which a lookup keyed by it
/// turns back into the id. So a name is read up to its first `[`, separators left out.
pub fn is_session_parameter(name: &str) -> bool {
    let base = match name.split_once('[') {
        // `session[id` (PHP's `session_id`) has no `]` after its `[`.
        Some((base, rest)) if rest.contains(']') => base,
        _ => name,
    };
    let spelled: Vec<u8> = base
        .bytes()
        .filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' ' | b'+' | b'[' | b']'))
        .collect();
    spelled.eq_ignore_ascii_case(b"sessionid") || spelled.eq_ignore_ascii_case(b"session")
}

/// Why a request's session id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// `Mcp-Session-Id` was not sealed for this workload and server (or was sent twice, or is
    /// not text).
    Header,
    /// A session parameter of the query was not.
    Query,
}

/// A request's session ids, opened: what goes upstream instead of what the agent sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The server's `Mcp-Session-Id`, when the request carried one.
    pub header: Option<String>,
    /// The query's session parameters, each as presented (sealed) and as the server handed it
    /// out; empty when the query had none.
    pub query: Vec<(String, String)>,
}

impl Opened {
    /// `path_and_query` (the upstream's, as it leaves: after credentials were substituted into
    /// its query) with each session parameter's sealed value replaced by the server's own;
    /// `None` when there is none to replace. The request's other parameters are kept as they
    /// are in `path_and_query`, never as the agent sent them (that would put back a
    /// `$CRED{}` handle in place of its substituted value).
    /// SECURITY: a session parameter whose value was not opened is refused, never sent sealed.
    pub fn upstream_path(&self, path_and_query: &str) -> Result<Option<String>, Unknown> {
        if self.query.is_empty() {
            return Ok(None);
        }
        map_session_parameters(path_and_query, Ok(()), |value| {
            self.query
                .iter()
                .find(|(sealed, _)| sealed == value)
                .map(|(_, id)| id.clone())
                .ok_or(Unknown::Query)
        })
    }
}

/// Opens the session ids a request to an MCP server carries: its `Mcp-Session-Id` headers and
/// its query's session parameters (see [`is_session_parameter`]).
pub fn open_request(
    binding: &Binding<'_>,
    headers: &http::HeaderMap,
    path_and_query: &str,
) -> Result<Opened, Unknown> {
    let mut opened = Opened::default();
    // A server that reads headers CGI-style takes `Mcp_Session_Id` for `Mcp-Session-Id`: such a
    // spelling is refused rather than passed unopened.
    if headers.keys().any(|name| {
        name != MCP_SESSION_ID && crate::header_names::same_but_underscores(name, &MCP_SESSION_ID)
    }) {
        return Err(Unknown::Header);
    }
    let mut values = headers.get_all(MCP_SESSION_ID).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(Unknown::Header);
        }
        let presented = value.to_str().map_err(|_| Unknown::Header)?;
        let id = binding.open(presented).ok_or(Unknown::Header)?;
        opened.header = Some(id.to_string());
    }
    // A session parameter without a value names no session, but a server might still read
    // it: refused like an unsealed one.
    let query = &mut opened.query;
    map_session_parameters(path_and_query, Err(Unknown::Query), |value| {
        let id = binding.open(value).ok_or(Unknown::Query)?;
        query.push((value.to_string(), id.to_string()));
        Ok(id.to_string())
    })?;
    Ok(opened)
}

/// Seals the session parameters in the query of an `endpoint` URL (the older HTTP+SSE
/// transport's); `None` when it has none.
pub fn seal_endpoint(binding: &Binding<'_>, path_and_query: &str) -> Option<String> {
    map_session_parameters(path_and_query, Ok(()), |value| Ok(binding.seal(value)))
        .ok()
        .flatten()
}

/// `path_and_query` with the value of each session parameter of its query replaced by
/// `map(value)`, the rest as it was; `None` when no value was replaced. A session parameter
/// without a value gives `bare` (kept as it is when that is `Ok`).
fn map_session_parameters(
    path_and_query: &str,
    bare: Result<(), Unknown>,
    mut map: impl FnMut(&str) -> Result<String, Unknown>,
) -> Result<Option<String>, Unknown> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Ok(None);
    };
    let mut changed = false;
    let mut mapped = String::with_capacity(path_and_query.len() + 32);
    mapped.push_str(path);
    mapped.push('?');
    // SECURITY: pairs end at `;` as well as `&`, as lenient servers read them (Rack before 3,
    // CGI.pm, Python's `parse_qs(separator=';')`; see `form_pairs`): split on `&` only,
    // `x=1;session_id=<another tenant's id>` went to such a server unchecked. Each separator is
    // kept as it was.
    let mut rest = query;
    loop {
        let (pair, separator) = match rest.find(['&', ';']) {
            Some(at) => (&rest[..at], Some(&rest[at..=at])),
            None => (rest, None),
        };
        match pair.split_once('=') {
            Some((name, value)) if is_session_parameter(&decoded(name)) => {
                mapped.push_str(name);
                mapped.push('=');
                mapped.push_str(&map(value)?);
                changed = true;
            }
            None if is_session_parameter(&decoded(pair)) => {
                bare?;
                mapped.push_str(pair);
            }
            _ => mapped.push_str(pair),
        }
        let Some(separator) = separator else { break };
        mapped.push_str(separator);
        rest = &rest[pair.len() + 1..];
    }
    Ok(changed.then_some(mapped))
}

/// The name `Mcp-Session-Id`.
pub const MCP_SESSION_ID: http::HeaderName = http::HeaderName::from_static("mcp-session-id");

/// A query parameter's name as a server reads it (percent-decoded, `+` kept).
fn decoded(name: &str) -> String {
    crate::mcp::config::percent_decode(name)
}

/// One workload's sealing with one server, owned: what a response's filter keeps to seal the
/// ids the server hands out as it streams.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: Arc<SessionKey>,
    tenant: String,
    workload: String,
    server: String,
}

impl Sealer {
    /// Seals with `key` for `tenant`'s `workload` and `server`.
    pub fn new(key: Arc<SessionKey>, tenant: &str, workload: &str, server: &str) -> Self {
        Self {
            key,
            tenant: tenant.to_string(),
            workload: workload.to_string(),
            server: server.to_string(),
        }
    }

    /// The binding to seal with.
    pub fn binding(&self) -> Binding<'_> {
        self.key.binding(&self.tenant, &self.workload, &self.server)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key() -> Arc<SessionKey> {
        SessionKey::process()
    }

    #[test]
    fn a_sealed_id_opens_only_for_its_own_tenant_workload_and_server() {
        let key = key();
        let acme = key.binding("acme", "bot", "docs");
        let sealed = acme.seal("4f1c-uuid");
        assert!(sealed.starts_with("tp1.") && sealed.ends_with(".4f1c-uuid"));
        assert_eq!(acme.open(&sealed), Some("4f1c-uuid"));
        for (name, other) in [
            ("another tenant", key.binding("globex", "bot", "docs")),
            ("another workload", key.binding("acme", "crawler", "docs")),
            ("another server", key.binding("acme", "bot", "tickets")),
            // Lengths are bound too: moving a byte between parts gives other bytes to MAC.
            ("parts shifted", key.binding("acmeb", "ot", "docs")),
        ] {
            assert_eq!(other.open(&sealed), None, "{name}");
        }
        // A key read from a file is another key: replicas must share it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, [7u8; 40]).unwrap();
        let from_file = SessionKey::read(&file).unwrap();
        assert_ne!(&from_file, &*key);
        assert_eq!(from_file.binding("acme", "bot", "docs").open(&sealed), None);
        // The same bytes make the same key (another replica opens what this one sealed).
        let again = SessionKey::read(&file).unwrap();
        let by_one = from_file.binding("acme", "bot", "docs").seal("x");
        assert_eq!(
            again.binding("acme", "bot", "docs").open(&by_one),
            Some("x")
        );
    }

    #[test]
    fn anything_but_an_intact_sealed_id_is_refused() {
        let key = key();
        let acme = key.binding("acme", "bot", "docs");
        let sealed = acme.seal("abc");
        let mac = &sealed[4..4 + MAC_CHARS];
        let mut flipped = sealed.clone().into_bytes();
        flipped[6] = if flipped[6] == b'A' { b'B' } else { b'A' };
        for presented in [
            "abc".to_string(),
            String::new(),
            "tp1.".to_string(),
            format!("tp1.{mac}"),
            format!("tp1.{mac}.abd"),
            format!("tp1.{mac}abc"),
            format!("tp2.{mac}.abc"),
            format!("TP1.{mac}.abc"),
            String::from_utf8(flipped).unwrap(),
            // A MAC cut short, or with a character more.
            format!("tp1.{}.abc", &mac[..MAC_CHARS - 1]),
            format!("tp1.{mac}A.abc"),
            format!("{sealed} "),
            format!("tp1.{mac}.{}", "a".repeat(MAX_ID_BYTES + 1)),
        ] {
            assert_eq!(acme.open(&presented), None, "{presented:?}");
        }
    }

    #[test]
    fn short_or_missing_key_files_are_refused_and_keys_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "only-some-bytes\n").unwrap();
        let err = SessionKey::read(&short).unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert!(!err.contains("only-some-bytes"), "{err}");
        assert!(SessionKey::read(&dir.path().join("missing")).is_err());
        // A trailing line break is not part of the key.
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let secret = "k".repeat(40);
        std::fs::write(&a, format!("{secret}\n")).unwrap();
        std::fs::write(&b, &secret).unwrap();
        let key = SessionKey::read(&a).unwrap();
        assert_eq!(key, SessionKey::read(&b).unwrap());
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&secret) && shown.starts_with("SessionKey("),
            "{shown}"
        );
    }

    #[test]
    fn session_parameters_are_found_in_every_spelling() {
        for name in [
            "sessionId",
            "session_id",
            "SESSION-ID",
            "session",
            "Session",
            "session.id",
            "session id",
            "session+id",
            "session[id",
            "sessionId[]",
            "sessionId[0]",
            "session_id[a]",
            "sessionId[][0]",
            "session[id]",
        ] {
            assert!(is_session_parameter(name), "{name}");
        }
        for name in ["sessions", "id", "sid", "session_key", "api_key"] {
            assert!(!is_session_parameter(name), "{name}");
        }
    }

    #[test]
    fn a_request_presents_only_its_own_sessions_and_sends_the_servers() {
        let key = key();
        let acme = key.binding("acme", "bot", "docs");
        let globex = key.binding("globex", "bot", "docs");
        let header = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(MCP_SESSION_ID, v.parse().unwrap());
            h
        };
        // Without a session: nothing to open.
        assert_eq!(
            open_request(&acme, &http::HeaderMap::new(), "/mcp").unwrap(),
            Opened::default()
        );
        // Its own header: the server's id goes upstream.
        let opened = open_request(&acme, &header(&acme.seal("s-1")), "/mcp").unwrap();
        assert_eq!(opened.header.as_deref(), Some("s-1"));
        // Another tenant's sealed id, or the server's raw id: refused.
        for presented in [globex.seal("s-1"), "s-1".to_string()] {
            assert_eq!(
                open_request(&acme, &header(&presented), "/mcp"),
                Err(Unknown::Header)
            );
        }
        // Spelt with underscores (read as the header by CGI-style servers): refused.
        for name in ["mcp_session_id", "mcp-session_id"] {
            let mut h = http::HeaderMap::new();
            h.insert(http::HeaderName::from_static(name), "raw".parse().unwrap());
            assert_eq!(
                open_request(&acme, &h, "/mcp"),
                Err(Unknown::Header),
                "{name}"
            );
        }
        // Sent twice, even both its own: refused (which one would the server read?).
        let mut twice = header(&acme.seal("s-1"));
        twice.append(MCP_SESSION_ID, acme.seal("s-2").parse().unwrap());
        assert_eq!(open_request(&acme, &twice, "/mcp"), Err(Unknown::Header));
        // The older transport's URL: its session parameters open in place, the rest is kept.
        let url = seal_endpoint(&acme, "/mcp/messages?v=1&sessionId=ab&x").unwrap();
        let opened = open_request(&acme, &http::HeaderMap::new(), &url).unwrap();
        assert_eq!(
            opened.upstream_path(&url).unwrap().as_deref(),
            Some("/mcp/messages?v=1&sessionId=ab&x")
        );
        // It opens in the path as it leaves, whatever else was substituted into it, and a
        // sealed value it did not open is never sent.
        let substituted = url.replace("v=1", "v=secret");
        assert_eq!(
            opened.upstream_path(&substituted).unwrap().as_deref(),
            Some("/mcp/messages?v=secret&sessionId=ab&x")
        );
        let other = seal_endpoint(&acme, "/mcp/messages?sessionId=cd").unwrap();
        assert_eq!(opened.upstream_path(&other), Err(Unknown::Query));
        assert_eq!(seal_endpoint(&acme, "/mcp/messages?v=1"), None);
        assert_eq!(seal_endpoint(&acme, "/mcp/messages"), None);
        // Another's URL, a raw one, a percent-encoded name, a bare name: refused.
        let theirs = seal_endpoint(&globex, "/mcp/messages?sessionId=ab").unwrap();
        for url in [
            theirs.as_str(),
            "/mcp/messages?sessionId=ab",
            "/mcp/messages?%73essionId=ab",
            "/mcp/messages?session_id",
            "/mcp/messages?a=1&session=ab",
            // After a `;`, as lenient servers split pairs.
            "/mcp/messages?x=1;session_id=ab",
            "/mcp/messages?x=1;sessionId",
            "/mcp/messages?a=1&b=2;session=ab&c",
        ] {
            assert_eq!(
                open_request(&acme, &http::HeaderMap::new(), url),
                Err(Unknown::Query),
                "{url}"
            );
        }
        // Sealed after a `;`: opened in place, each separator kept.
        let url = seal_endpoint(&acme, "/mcp/messages?v=1;sessionId=ab&x;y").unwrap();
        assert!(url.starts_with("/mcp/messages?v=1;sessionId=tp1."), "{url}");
        let opened = open_request(&acme, &http::HeaderMap::new(), &url).unwrap();
        assert_eq!(
            opened.upstream_path(&url).unwrap().as_deref(),
            Some("/mcp/messages?v=1;sessionId=ab&x;y")
        );
        // A query without session parameters goes as it is.
        assert_eq!(
            open_request(&acme, &http::HeaderMap::new(), "/mcp?profile=x").unwrap(),
            Opened::default()
        );
    }
}
