//! Applying credentials to one request: find every handle (headers, query values, JSON and form
//! bodies), check it (in a position handles may take, known to this tenant, not expired, allowed
//! in this position, bound to this destination, permitted by policy), and only then substitute.
//! Toward a destination whose keys the proxy manages, every credential position (see
//! [`super::positions`]) must also hold exactly one handle or nothing: the agent's own key there
//! is refused or stripped. Any failed check refuses the whole request; nothing unresolved,
//! nothing half-substituted and nothing half-scanned is forwarded.
//!
//! A request without any handle toward an unmanaged destination costs one byte scan per value
//! and allocates nothing.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::binding::{Position, Target};
use super::handle::{self, SubstituteError};
use super::kind::Kind;
use super::positions::{holding, CredentialPositions, Holding};
use super::raw::{self, OnLiteral};
use super::scrub::Patterns;
use super::secret::SecretValue;
use super::{Credential, CredentialSet};
use crate::ids::TenantId;
use zeroize::Zeroizing;

/// Request-side credential settings.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    /// Largest body scanned for handles and keys; a larger body toward a managed destination is
    /// refused.
    pub scan_body_max_bytes: usize,
    /// What to do with a literal key where the proxy manages the credential.
    pub raw_credential: RawCredentialMode,
    /// The credential-bearing positions (every provider's, plus configured extra headers).
    pub positions: CredentialPositions,
    /// How long a token credential's grant (or a wait for one) may take.
    pub token_timeout: std::time::Duration,
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            scan_body_max_bytes: 1024 * 1024,
            raw_credential: RawCredentialMode::default(),
            positions: CredentialPositions::default(),
            token_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Handling of agent-supplied literal keys toward managed destinations (`[credentials]
/// raw_credential`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawCredentialMode {
    /// Refuse the request (`raw_credential`).
    #[default]
    Refuse,
    /// Remove the literal (a header or pair is dropped, a JSON value becomes `null`) and forward.
    Strip,
}

/// Why a body toward a managed destination could not be scanned whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanGap {
    /// Larger than `scan_body_max_bytes` (the limit).
    TooLarge(usize),
    /// Sent with a `Content-Encoding`: its bytes are not what the upstream reads.
    Encoded,
    /// JSON nested deeper than the scan follows (this many levels).
    TooDeep(usize),
}

/// Why credentials could not be applied. Messages name the handle, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialDeny {
    /// No such credential for this tenant.
    Unknown(String),
    /// The credential is not bound to this destination (scheme, host, port, path, method).
    NotBound(String),
    /// The handle appears where this credential (or any handle) may not: the handle's name and
    /// the position.
    Position(String, String),
    /// The credential has expired.
    Expired(String),
    /// Policy forbids this workload to use it here.
    PolicyDenied(String),
    /// A malformed handle.
    Malformed(&'static str),
    /// A literal key where the proxy manages the credential (the position).
    Raw(String),
    /// A credential position given more than one value (the position).
    Repeated(String),
    /// A body toward a managed destination that cannot be scanned whole.
    ScanIncomplete(ScanGap),
    /// A token credential whose access token is not at hand yet: the caller obtains it (see
    /// [`super::oauth`]) and applies again with it in [`AccessTokens`].
    TokenNeeded(String),
    /// No access token could be obtained for a token credential: the name and why (never a
    /// secret).
    Unavailable(String, String),
}

impl CredentialDeny {
    /// The credential name involved, if any (for the audit record).
    pub fn credential(&self) -> Option<&str> {
        match self {
            CredentialDeny::Unknown(n)
            | CredentialDeny::NotBound(n)
            | CredentialDeny::Position(n, _)
            | CredentialDeny::Expired(n)
            | CredentialDeny::PolicyDenied(n)
            | CredentialDeny::TokenNeeded(n)
            | CredentialDeny::Unavailable(n, _) => Some(n),
            CredentialDeny::Malformed(_)
            | CredentialDeny::Raw(_)
            | CredentialDeny::Repeated(_)
            | CredentialDeny::ScanIncomplete(_) => None,
        }
    }
}

/// The request as credentials see it.
#[derive(Debug)]
pub struct RequestParts<'a> {
    /// Destination.
    pub target: Target<'a>,
    /// The request target as received (absolute form names an authority).
    pub raw_target: &'a [u8],
    /// The request's `:authority` (HTTP/2), if any.
    pub authority: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Upstream path and query.
    pub path_and_query: &'a str,
    /// Buffered body.
    pub body: Option<&'a Bytes>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The body is still in a content coding other than `identity` (any coding on any line of
    /// `Content-Encoding`, see [`crate::header_names::content_coded`]).
    pub encoded: bool,
}

/// The access tokens obtained for a request's token credentials, by credential name. `Debug`
/// shows the names only.
#[derive(Default)]
pub struct AccessTokens(Vec<(String, SecretValue)>);

impl AccessTokens {
    /// Adds the token of credential `name`.
    pub fn insert(&mut self, name: String, token: SecretValue) {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, token));
    }

    /// The token of credential `name`, if obtained.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Every (credential name, token).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretValue)> {
        self.0.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Whether none was obtained.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// What to change in the upstream request. Holds secret material: `Debug` shows counts only.
#[derive(Default)]
pub struct Applied {
    /// Credentials substituted (for the audit record and response scrubbing).
    pub used: Vec<Arc<Credential>>,
    /// Headers to set (substituted values).
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove (stripped raw keys).
    pub remove_headers: Vec<HeaderName>,
    /// A new upstream path and query, when a query value was substituted or stripped.
    pub path_and_query: Option<String>,
    /// A new body, when the body was substituted or stripped (moved into the request context).
    pub body: Option<Bytes>,
    /// The signing credential the request leaves signed with (see [`super::sigv4`]): named by
    /// the agent (`Authorization: $CRED{aws}`) or, for an unsigned request, the tenant's one
    /// signing credential bound to the destination.
    pub sign: Option<Arc<Credential>>,
    /// The access tokens substituted (scrubbed from the response like any secret).
    pub tokens: AccessTokens,
    /// Some credential of the tenant is bound to the destination's host (used or not).
    pub managed: bool,
    /// Every secret a response from the destination's host may echo to this tenant (see
    /// [`super::echoes`]): its credentials' values and access tokens there, used or not, now
    /// and lately. An upstream that keeps what it was sent (a request log, a cache, a debug
    /// page) can echo any of them to a later request, so every response from there is
    /// scrubbed of them all. Set by the caller after [`apply`] (`None`: nothing is or was
    /// bound there, or the caller keeps no such sets).
    pub echoes: Option<Arc<Patterns>>,
}

impl Applied {
    /// Whether the response must be scrubbed (and so asked for in a readable form): a secret
    /// was sent with this request, or the destination holds (or lately held) some of the
    /// tenant's.
    pub fn scrubs(&self) -> bool {
        !self.used.is_empty() || !self.tokens.is_empty() || self.managed || self.echoes.is_some()
    }

    /// What the response is scrubbed of: the destination's echo set, which holds every
    /// credential a request there can use (it was built from the same snapshot) and, unless a
    /// refresh raced it, the tokens used; else the secrets and tokens this request used.
    pub fn scrub_patterns(&self) -> Arc<Patterns> {
        let own = || Patterns::of(&self.used, &self.tokens);
        match &self.echoes {
            Some(echoes) if self.tokens.iter().all(|(_, t)| echoes.covers(t.expose())) => {
                echoes.clone()
            }
            Some(echoes) => Arc::new(echoes.merged(own())),
            None => Arc::new(own()),
        }
    }
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field(
                "used",
                &self
                    .used
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("set_headers", &self.set_headers.len())
            .field("remove_headers", &self.remove_headers)
            .field("path_rewritten", &self.path_and_query.is_some())
            .field("body_rewritten", &self.body.is_some())
            .field("signed_with", &self.sign.as_ref().map(|c| c.name.as_str()))
            .field("tokens", &self.tokens)
            .field("managed", &self.managed)
            .field("echoes", &self.echoes)
            .finish()
    }
}

impl Applied {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
            && self.remove_headers.is_empty()
            && self.set_headers.is_empty()
            && self.path_and_query.is_none()
            && self.body.is_none()
            && self.sign.is_none()
    }
}

/// A handle in the request's authority: the target's (absolute form), `:authority` or `Host`.
/// Handles never go there, whatever the credential allows; checked before the destination is
/// resolved, so such a request is refused as a position error rather than anything else.
pub fn handle_in_authority(
    raw_target: &[u8],
    authority: Option<&str>,
    host: Option<&[u8]>,
) -> Option<CredentialDeny> {
    let target_authority = raw_target
        .windows(3)
        .position(|w| w == b"://")
        .filter(|at| raw_target[..*at].iter().all(u8::is_ascii_alphabetic))
        .map(|at| {
            let rest = &raw_target[at + 3..];
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len());
            (&rest[..end], "request target's authority")
        });
    [
        target_authority,
        authority.map(|a| (a.as_bytes(), "`:authority`")),
        host.map(|h| (h, "header `host`")),
    ]
    .into_iter()
    .flatten()
    .find(|(bytes, _)| has_marker_maybe_encoded(bytes))
    .map(|(bytes, place)| {
        first_handle_name(bytes).map_or(CredentialDeny::Malformed("header"), |n| {
            CredentialDeny::Position(n, place.to_string())
        })
    })
}

/// Checks and substitutes every handle in `req` for `tenant`. `authorize` asks policy whether the
/// workload may use a credential in a position. A token credential's handle becomes its token
/// in `tokens`; one not there yet refuses with [`CredentialDeny::TokenNeeded`], after every
/// check of its use passed (so a token is obtained only for a use that is allowed).
pub fn apply(
    set: &CredentialSet,
    settings: &CredentialSettings,
    tenant: &TenantId,
    req: &RequestParts<'_>,
    now_unix: u64,
    tokens: &AccessTokens,
    authorize: &mut dyn FnMut(&Credential, Position) -> bool,
) -> Result<Applied, CredentialDeny> {
    // SECURITY: where this tenant's keys are managed, the agent's own key never goes along.
    let managed = set.any_bound_to_host(tenant, req.target.host);
    let mut out = Applied {
        managed,
        ..Applied::default()
    };
    let on_literal = match settings.raw_credential {
        RawCredentialMode::Refuse => OnLiteral::Refuse,
        RawCredentialMode::Strip => OnLiteral::Strip,
    };
    if let Some(deny) = handle_in_authority(req.raw_target, req.authority, None) {
        return Err(deny);
    }
    if let (true, Some(body)) = (managed, req.body) {
        // SECURITY: a body that is not scanned whole could carry a key (or a handle) past the
        // scan; toward a managed destination it is refused, never forwarded half-scanned.
        if req.encoded {
            return Err(CredentialDeny::ScanIncomplete(ScanGap::Encoded));
        }
        if body.len() > settings.scan_body_max_bytes {
            return Err(CredentialDeny::ScanIncomplete(ScanGap::TooLarge(
                settings.scan_body_max_bytes,
            )));
        }
    }
    let mut resolver = Resolver {
        set,
        tenant,
        target: req.target,
        now_unix,
        tokens,
        authorize,
        used: &mut out.used,
    };

    apply_headers(
        req.headers,
        &settings.positions,
        managed,
        on_literal,
        &mut resolver,
        &mut out.set_headers,
        &mut out.remove_headers,
        &mut out.sign,
    )?;
    if out.sign.is_none() && !req.headers.contains_key(http::header::AUTHORIZATION) {
        out.sign = resolver.unsigned_signer()?;
    }

    let (path, query) = match req.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path_and_query, None),
    };
    if has_marker_maybe_encoded(path.as_bytes()) {
        return Err(first_handle_name(path.as_bytes())
            .map_or(CredentialDeny::Malformed("path"), |n| {
                CredentialDeny::Position(n, "path".into())
            }));
    }
    if let Some(q) = query {
        let mut query = Cow::Borrowed(q);
        if managed {
            let is_param = |name: &str| settings.positions.is_query_param(name);
            if let Some(kept) =
                raw::check_pairs(q.as_bytes(), &is_param, "query parameter", on_literal)?
            {
                query = Cow::Owned(String::from_utf8_lossy(&kept).into_owned());
            }
        }
        if has_marker_maybe_encoded(query.as_bytes()) {
            let is_param = |name: &str| settings.positions.is_query_param(name);
            query = Cow::Owned(resolver.substitute_pairs(
                &query,
                Position::Query,
                &is_param,
                "query parameter",
            )?);
        }
        if let Cow::Owned(q) = query {
            // The substituted query is wiped once copied, at its exact size, into the target.
            let q = Zeroizing::new(q);
            out.path_and_query = Some(if q.is_empty() {
                path.to_string()
            } else {
                let mut target = String::with_capacity(path.len() + 1 + q.len());
                target.push_str(path);
                target.push('?');
                target.push_str(&q);
                target
            });
        }
    }

    if let Some(body) = req.body {
        let mut current: Cow<'_, [u8]> = Cow::Borrowed(body);
        if managed {
            if let Some(kept) =
                raw::check_body(body, req.content_type, &settings.positions, on_literal)?
            {
                current = Cow::Owned(kept);
            }
        }
        let kind = BodyKind::of(req.content_type);
        if current.len() > settings.scan_body_max_bytes || kind == BodyKind::Other {
            // Not substituted: no handle may be in it at all.
            if has_marker_maybe_encoded(&current) {
                return Err(first_handle_name(&current)
                    .map_or(CredentialDeny::Malformed("body"), |n| {
                        CredentialDeny::Position(n, "body".into())
                    }));
            }
        } else if handle::has_marker(&current)
            || (kind == BodyKind::Form && has_marker_maybe_encoded(&current))
        {
            // SECURITY: a body substituted as one type is read as it: a form body that a
            // lenient upstream would read as JSON puts a form field's secret into a chat
            // message, and a second type lets the upstream pick the other reading.
            let ambiguous = if req
                .headers
                .get_all(http::header::CONTENT_TYPE)
                .iter()
                .count()
                > 1
                || req.content_type.is_some_and(|ct| ct.contains(','))
            {
                Some("body with more than one `Content-Type`")
            } else if kind == BodyKind::Form && raw::reads_as_json(&current) {
                Some("form body that reads as JSON")
            } else {
                None
            };
            if let Some(place) = ambiguous {
                return Err(first_handle_name(&current)
                    .map_or(CredentialDeny::Malformed("body"), |n| {
                        CredentialDeny::Position(n, place.into())
                    }));
            }
            current = Cow::Owned(match kind {
                BodyKind::Json => {
                    let is_field = |name: &str| settings.positions.is_body_field(name);
                    raw::check_json_handles(&current, &is_field)?;
                    resolver
                        .substitute(&current, Position::Body, Encoding::JsonString)?
                        .into_owned()
                }
                BodyKind::Form => {
                    let text = std::str::from_utf8(&current)
                        .map_err(|_| CredentialDeny::Malformed("body"))?;
                    let is_field = |name: &str| settings.positions.is_body_field(name);
                    resolver
                        .substitute_pairs(text, Position::Body, &is_field, "body field")?
                        .into_bytes()
                }
                BodyKind::Other => Vec::new(),
            });
        }
        if let Cow::Owned(new) = current {
            out.body = Some(handle::wiped_bytes(new));
        }
    }
    Ok(out)
}

/// Headers: a credential header holds one value, a handle (substituted) or, toward an unmanaged
/// destination, the agent's own; any other header may carry no handle at all. `Authorization`
/// naming a signing credential (its whole value) is removed and the request signed with it.
#[allow(clippy::too_many_arguments)]
fn apply_headers(
    headers: &HeaderMap,
    positions: &CredentialPositions,
    managed: bool,
    on_literal: OnLiteral,
    resolver: &mut Resolver<'_, '_>,
    set_headers: &mut Vec<(HeaderName, HeaderValue)>,
    remove_headers: &mut Vec<HeaderName>,
    sign: &mut Option<Arc<Credential>>,
) -> Result<(), CredentialDeny> {
    let mut credential_headers: Vec<usize> = Vec::new();
    for name in headers.keys() {
        let values = headers.get_all(name);
        let marked = values.iter().any(|v| handle::has_marker(v.as_bytes()));
        let Some(key) = positions.header_key(name) else {
            if marked {
                // SECURITY: a handle goes only where credentials go (never `Host`, never a
                // header an upstream may log or echo as data).
                for value in values.iter() {
                    let pieces = handle::scan(value.as_bytes())
                        .map_err(|_| CredentialDeny::Malformed("header"))?;
                    if let Some(n) = pieces.iter().find_map(|p| match p {
                        handle::Piece::Handle(n) => Some(*n),
                        handle::Piece::Literal(_) => None,
                    }) {
                        return Err(CredentialDeny::Position(
                            n.to_string(),
                            format!("header `{name}`"),
                        ));
                    }
                }
                // Only escapes (`$$CRED{`): unescape every value.
                for value in values {
                    let replaced = resolver
                        .substitute(value.as_bytes(), Position::Header, Encoding::Raw)?
                        .into_owned();
                    set_headers.push((name.clone(), sensitive_value(replaced)?));
                }
            }
            if managed && !marked && name == http::header::SEC_WEBSOCKET_PROTOCOL {
                subprotocol_keys(
                    &headers.get_all(name),
                    on_literal,
                    set_headers,
                    remove_headers,
                )?;
            }
            continue;
        };
        if managed || marked {
            // SECURITY: two values (or two spellings of one header) would let the upstream
            // pick the agent's key over the substituted one.
            if values.iter().count() > 1 || credential_headers.contains(&key) {
                return Err(CredentialDeny::Repeated(format!("header `{name}`")));
            }
            credential_headers.push(key);
        }
        for value in values.iter() {
            if name == http::header::AUTHORIZATION {
                if let Some(cred) = resolver.signing_handle(value.as_bytes())? {
                    remove_headers.push(name.clone());
                    *sign = Some(cred);
                    continue;
                }
            }
            match holding(value.as_bytes()) {
                Holding::Nothing => {}
                Holding::Literal if managed => match on_literal {
                    OnLiteral::Refuse => {
                        return Err(CredentialDeny::Raw(format!("header `{name}`")))
                    }
                    OnLiteral::Strip => remove_headers.push(name.clone()),
                },
                // The agent's own key toward a destination the proxy does not manage.
                Holding::Literal if !marked => {}
                // A handle (or, toward an unmanaged destination, a handle with a literal, which
                // the handle's binding refuses).
                Holding::Literal | Holding::Handle => {
                    let replaced = resolver
                        .substitute(value.as_bytes(), Position::Header, Encoding::Raw)?
                        .into_owned();
                    set_headers.push((name.clone(), sensitive_value(replaced)?));
                }
            }
        }
    }
    Ok(())
}

/// A header value that holds a secret, marked sensitive: HTTP/2 then never adds it to the HPACK
/// table (where it would outlive the request and shape later headers' compression), and its
/// `Debug` form is redacted. It holds the substituted bytes themselves (no copy), wiped once its
/// last reference is dropped (see [`handle::wiped_bytes`]).
fn sensitive_value(bytes: Vec<u8>) -> Result<HeaderValue, CredentialDeny> {
    let mut v = HeaderValue::from_maybe_shared(handle::wiped_bytes(bytes))
        .map_err(|_| CredentialDeny::Malformed("header"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// WebSocket subprotocols that carry an API key, for browsers, which cannot set headers on a
/// WebSocket: OpenAI Realtime's `openai-insecure-api-key.<key>` (the key is the rest of the
/// token). Compared ignoring ASCII case.
const KEY_SUBPROTOCOL_PREFIXES: &[&str] = &["openai-insecure-api-key."];

/// Subprotocols after which the next one is a key (Deepgram's `token, <key>`).
const KEY_SUBPROTOCOL_MARKERS: &[&str] = &["token", "bearer"];

/// Toward a destination whose keys the proxy manages, an agent's own key in a WebSocket
/// subprotocol (see [`KEY_SUBPROTOCOL_PREFIXES`]) is refused as a raw credential, or in strip
/// mode removed with the rest of the list kept. SECURITY: the header is no credential position
/// (a handle there is refused), yet upstreams read a key from it.
fn subprotocol_keys(
    values: &http::header::GetAll<'_, HeaderValue>,
    on_literal: OnLiteral,
    set_headers: &mut Vec<(HeaderName, HeaderValue)>,
    remove_headers: &mut Vec<HeaderName>,
) -> Result<(), CredentialDeny> {
    let name = http::header::SEC_WEBSOCKET_PROTOCOL;
    let mut kept: Vec<Vec<&[u8]>> = Vec::new();
    let mut found = false;
    // SECURITY: a server reads the header's lines as one list (joined with `, `), and list
    // parsing skips empty elements: a marker at the end of one line names the first token of
    // the next, and `token,,KEY` is `token, KEY`.
    let mut after_marker = false;
    for value in values.iter() {
        let mut tokens: Vec<&[u8]> = Vec::new();
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            let prefixed = KEY_SUBPROTOCOL_PREFIXES.iter().any(|p| {
                token.len() > p.len() && token[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            });
            if prefixed || after_marker {
                found = true;
                after_marker = false;
                continue;
            }
            after_marker = KEY_SUBPROTOCOL_MARKERS
                .iter()
                .any(|m| token.eq_ignore_ascii_case(m.as_bytes()));
            if !after_marker {
                tokens.push(token);
            }
        }
        kept.push(tokens);
    }
    if !found {
        return Ok(());
    }
    match on_literal {
        OnLiteral::Refuse => Err(CredentialDeny::Raw(format!("header `{name}`"))),
        OnLiteral::Strip => {
            remove_headers.push(name.clone());
            for tokens in kept.into_iter().filter(|t| !t.is_empty()) {
                let v = HeaderValue::from_bytes(&tokens.join(&b", "[..]))
                    .map_err(|_| CredentialDeny::Malformed("header"))?;
                set_headers.push((name.clone(), v));
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Other,
}

impl BodyKind {
    fn of(content_type: Option<&str>) -> Self {
        let ct = content_type.unwrap_or("");
        let starts = |prefix: &str| {
            ct.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        };
        let essence = ct.split(';').next().unwrap_or("").trim_end();
        if starts("application/json") || (starts("application/") && essence.ends_with("+json")) {
            BodyKind::Json
        } else if starts("application/x-www-form-urlencoded") {
            BodyKind::Form
        } else {
            BodyKind::Other
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Raw,
    JsonString,
    Percent,
}

struct Resolver<'a, 'b> {
    set: &'a CredentialSet,
    tenant: &'a TenantId,
    target: Target<'a>,
    now_unix: u64,
    tokens: &'a AccessTokens,
    authorize: &'b mut dyn FnMut(&Credential, Position) -> bool,
    used: &'b mut Vec<Arc<Credential>>,
}

impl<'a> Resolver<'a, '_> {
    fn resolve(
        &mut self,
        name: &str,
        position: Position,
    ) -> Result<Arc<Credential>, CredentialDeny> {
        let cred = self
            .set
            .get(self.tenant, name)
            .ok_or_else(|| CredentialDeny::Unknown(name.to_string()))?;
        if cred.expires_at.is_some_and(|e| e <= self.now_unix) {
            return Err(CredentialDeny::Expired(name.to_string()));
        }
        if !cred.positions.contains(&position) {
            return Err(CredentialDeny::Position(
                name.to_string(),
                position.as_str().to_string(),
            ));
        }
        if !cred.bindings.iter().any(|b| b.allows(&self.target)) {
            return Err(CredentialDeny::NotBound(name.to_string()));
        }
        if !(self.authorize)(cred, position) {
            return Err(CredentialDeny::PolicyDenied(name.to_string()));
        }
        if !self.used.iter().any(|u| Arc::ptr_eq(u, cred)) {
            self.used.push(cred.clone());
        }
        Ok(cred.clone())
    }

    /// The signing credential `value` names when it is exactly one handle of a signing
    /// credential (checked like any use: position, binding, expiry, policy).
    fn signing_handle(&mut self, value: &[u8]) -> Result<Option<Arc<Credential>>, CredentialDeny> {
        // Most values hold no handle: decided without scanning (and allocating).
        if !handle::has_marker(value) {
            return Ok(None);
        }
        let Ok(pieces) = handle::scan(value) else {
            return Ok(None);
        };
        let [handle::Piece::Handle(name)] = pieces.as_slice() else {
            return Ok(None);
        };
        match self.set.get(self.tenant, name) {
            Some(c) if matches!(c.kind, Kind::AwsSigv4(_)) => {
                self.resolve(name, Position::Header).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// For a request without `Authorization`: the tenant's one signing credential whose
    /// binding allows this destination (and policy its use), if exactly one does. Several are
    /// ambiguous: the request must name one.
    fn unsigned_signer(&mut self) -> Result<Option<Arc<Credential>>, CredentialDeny> {
        let candidates: Vec<String> = self
            .set
            .signing(self.tenant)
            .into_iter()
            .filter(|c| c.bindings.iter().any(|b| b.allows(&self.target)))
            .map(|c| c.name.clone())
            .collect();
        match candidates.as_slice() {
            [] => Ok(None),
            [one] => self.resolve(one, Position::Header).map(Some),
            [first, ..] => Err(CredentialDeny::Position(
                first.clone(),
                "without naming it (several signing credentials are bound here: send `Authorization: $CRED{name}`)".into(),
            )),
        }
    }

    /// A credential used as text: a static value, or a token credential's access token. A
    /// signing credential's value (and a token credential's own secret) is never written into a
    /// request.
    fn resolve_text(&mut self, name: &str, position: Position) -> Result<Text<'a>, CredentialDeny> {
        let cred = self.resolve(name, position)?;
        match &cred.kind {
            Kind::Static => Ok(Text::Static(cred)),
            Kind::Token(_) => self
                .tokens
                .get(name)
                .map(Text::Token)
                .ok_or_else(|| CredentialDeny::TokenNeeded(name.to_string())),
            // SECURITY: a signing key must not reach the upstream (or the agent) as text.
            Kind::AwsSigv4(_) => Err(CredentialDeny::Position(
                name.to_string(),
                format!(
                    "{position} as text (a signing credential goes only in `Authorization`, alone)"
                ),
            )),
        }
    }

    fn substitute<'i>(
        &mut self,
        input: &'i [u8],
        position: Position,
        enc: Encoding,
    ) -> Result<Cow<'i, [u8]>, CredentialDeny> {
        handle::substitute(input, |name| {
            let text = self.resolve_text(name, position)?;
            Ok(encode(text.bytes(), enc))
        })
        .map_err(|e| match e {
            SubstituteError::Handle(_) => CredentialDeny::Malformed(position.as_str()),
            SubstituteError::Resolve(d) => d,
        })
    }

    /// Substitutes in `k=v&…` pairs, percent-decoding each value first (clients encode `$`, `{`
    /// and `}`) and percent-encoding what is inserted. A handle must be the whole value of a
    /// credential parameter or field (`is_field`, named `what` in a refusal): anywhere else an
    /// upstream could hand the secret back (a search query, a prompt), past the scrubber in
    /// any form it likes.
    fn substitute_pairs(
        &mut self,
        text: &str,
        position: Position,
        is_field: &dyn Fn(&str) -> bool,
        what: &str,
    ) -> Result<String, CredentialDeny> {
        // SECURITY: the pairs are first cut into segments (the encoded secrets wiped when
        // dropped), so the output is allocated once at its exact size: growing it would leave
        // copies of the secrets in freed memory.
        let mut segments: Vec<Segment<'_>> = Vec::new();
        for (i, pair) in text.split('&').enumerate() {
            if i > 0 {
                segments.push(Segment::Text("&"));
            }
            let (key, value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            if has_marker_maybe_encoded(key.as_bytes()) {
                return Err(CredentialDeny::Malformed(position.as_str()));
            }
            segments.push(Segment::Text(key));
            let Some(value) = value else { continue };
            segments.push(Segment::Text("="));
            let decoded = Zeroizing::new(percent_decode(value.replace('+', " ").as_bytes()));
            if handle::has_marker(&decoded) {
                let name = percent_decode(key.replace('+', " ").as_bytes());
                let name = String::from_utf8_lossy(&name);
                if handle::has_handle(&decoded)
                    && (!is_field(&name) || holding(&decoded) != Holding::Handle)
                {
                    return Err(first_handle_name(&decoded).map_or(
                        CredentialDeny::Malformed(position.as_str()),
                        |n| {
                            CredentialDeny::Position(
                                n,
                                format!("{what} `{}`", raw::printable(&name)),
                            )
                        },
                    ));
                }
                let scanned = handle::scan(&decoded)
                    .map_err(|_| CredentialDeny::Malformed(position.as_str()))?;
                let mut texts = Vec::with_capacity(scanned.len());
                for piece in &scanned {
                    if let handle::Piece::Handle(n) = piece {
                        texts.push(self.resolve_text(n, position)?);
                    }
                }
                let len = scanned
                    .iter()
                    .map(|p| match p {
                        handle::Piece::Literal(l) => l.len(),
                        handle::Piece::Handle(_) => 0,
                    })
                    .chain(texts.iter().map(|t| t.bytes().len()))
                    .sum();
                let mut pieces = Zeroizing::new(Vec::with_capacity(len));
                let mut texts = texts.iter();
                for piece in &scanned {
                    match piece {
                        handle::Piece::Literal(l) => pieces.extend_from_slice(l),
                        handle::Piece::Handle(_) => {
                            if let Some(t) = texts.next() {
                                pieces.extend_from_slice(t.bytes());
                            }
                        }
                    }
                }
                // Percent-encoded: ASCII only.
                segments.push(Segment::Secret(encode(&pieces, Encoding::Percent)));
            } else {
                segments.push(Segment::Text(value));
            }
        }
        let len = segments.iter().map(Segment::len).sum();
        let mut out = String::with_capacity(len);
        for segment in &segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Secret(bytes) => out.extend(bytes.iter().map(|b| char::from(*b))),
            }
        }
        Ok(out)
    }
}

/// A piece of a rewritten `k=v&…` text: as written, or an encoded secret (ASCII).
enum Segment<'t> {
    Text(&'t str),
    Secret(Zeroizing<Vec<u8>>),
}

impl Segment<'_> {
    fn len(&self) -> usize {
        match self {
            Segment::Text(t) => t.len(),
            Segment::Secret(s) => s.len(),
        }
    }
}

/// What a handle used as text becomes.
enum Text<'a> {
    /// A static credential's value.
    Static(Arc<Credential>),
    /// A token credential's access token.
    Token(&'a SecretValue),
}

impl Text<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Text::Static(c) => c.value.expose(),
            Text::Token(t) => t.expose(),
        }
    }
}

/// `value` (a secret) encoded for `enc`, in a buffer of its exact size that is wiped when
/// dropped (a growing buffer would leave copies of the secret in freed memory).
fn encode(value: &[u8], enc: Encoding) -> Zeroizing<Vec<u8>> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
    match enc {
        Encoding::Raw => Zeroizing::new(value.to_vec()),
        Encoding::JsonString => {
            let len = value
                .iter()
                .map(|b| match b {
                    b'"' | b'\\' => 2,
                    0..=0x1f => 6,
                    _ => 1,
                })
                .sum();
            let mut out = Zeroizing::new(Vec::with_capacity(len));
            for &b in value {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0..=0x1f => out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX_LOWER[usize::from(b >> 4)],
                        HEX_LOWER[usize::from(b & 0xf)],
                    ]),
                    _ => out.push(b),
                }
            }
            out
        }
        Encoding::Percent => {
            let unreserved =
                |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
            let len = value
                .iter()
                .map(|b| if unreserved(*b) { 1 } else { 3 })
                .sum();
            let mut out = Zeroizing::new(Vec::with_capacity(len));
            for &b in value {
                if unreserved(b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ]);
                }
            }
            out
        }
    }
}

/// `input` with each `%` and two hex digits decoded, as servers decode; anything else (a `%`
/// not followed by two hex digits, such as `%+4`) is kept as it is.
pub(crate) fn percent_decode(input: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(input).collect()
}

/// Whether `input` has a handle marker, literally or percent-encoded (`%24CRED%7B`). Decodes
/// (and allocates) only when the bytes `CRED` occur at all.
fn has_marker_maybe_encoded(input: &[u8]) -> bool {
    if handle::has_marker(input) {
        return true;
    }
    let mentions_cred = input.windows(4).any(|w| w == b"CRED");
    mentions_cred && input.contains(&b'%') && handle::has_marker(&percent_decode(input))
}

fn first_handle_name(input: &[u8]) -> Option<String> {
    let decoded = percent_decode(input);
    let start = decoded.windows(6).position(|w| w == b"$CRED{")? + 6;
    let len = decoded[start..]
        .iter()
        .take(super::handle::MAX_NAME_LEN)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(**b, b'_' | b'-' | b'.'))
        .count();
    (len > 0).then(|| String::from_utf8_lossy(&decoded[start..start + len]).into_owned())
}

#[cfg(test)]
mod tests;
