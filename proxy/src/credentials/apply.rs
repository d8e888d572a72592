//! Applying credentials to one request: find every handle (headers, query values, JSON and form
//! bodies), check it (known to this tenant, not expired, allowed in this position, bound to this
//! destination, permitted by policy), and only then substitute. Any failed check refuses the
//! whole request; nothing unresolved and nothing half-substituted is forwarded.
//!
//! A request without any handle costs one byte scan per value and allocates nothing.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::binding::{Position, Target};
use super::handle::{self, SubstituteError};
use super::{Credential, CredentialSet};
use crate::ids::TenantId;

/// Request-side credential settings.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    /// Largest JSON/form body scanned for handles.
    pub scan_body_max_bytes: usize,
    /// What to do with a literal key where the proxy manages the credential.
    pub raw_credential: RawCredentialMode,
    /// Headers that carry credentials (lowercase).
    pub credential_headers: Vec<HeaderName>,
    /// Top-level JSON body fields that carry credentials.
    pub credential_body_fields: Vec<String>,
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            scan_body_max_bytes: 1024 * 1024,
            raw_credential: RawCredentialMode::Refuse,
            credential_headers: ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
                .into_iter()
                .map(HeaderName::from_static)
                .collect(),
            credential_body_fields: [
                "api_key",
                "apiKey",
                "api-key",
                "x-api-key",
                "openai_api_key",
                "anthropic_api_key",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

/// Handling of agent-supplied literal keys toward managed destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCredentialMode {
    /// Refuse the request (`raw_credential`).
    Refuse,
    /// Remove the header and forward.
    Strip,
}

/// Why credentials could not be applied. Messages name the handle, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialDeny {
    /// No such credential for this tenant.
    Unknown(String),
    /// The credential is not bound to this destination (scheme, host, port, path, method).
    NotBound(String),
    /// The handle appears where this credential may not.
    Position(String, &'static str),
    /// The credential has expired.
    Expired(String),
    /// Policy forbids this workload to use it here.
    PolicyDenied(String),
    /// A malformed handle.
    Malformed(&'static str),
    /// A literal key where the proxy manages the credential.
    Raw(String),
}

impl CredentialDeny {
    /// The credential name involved, if any (for the audit record).
    pub fn credential(&self) -> Option<&str> {
        match self {
            CredentialDeny::Unknown(n)
            | CredentialDeny::NotBound(n)
            | CredentialDeny::Position(n, _)
            | CredentialDeny::Expired(n)
            | CredentialDeny::PolicyDenied(n) => Some(n),
            CredentialDeny::Malformed(_) | CredentialDeny::Raw(_) => None,
        }
    }
}

/// The request as credentials see it.
#[derive(Debug)]
pub struct RequestParts<'a> {
    /// Destination.
    pub target: Target<'a>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Upstream path and query.
    pub path_and_query: &'a str,
    /// Buffered body.
    pub body: Option<&'a Bytes>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
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
    /// A new upstream path and query, when a query value was substituted.
    pub path_and_query: Option<String>,
    /// A new body, when the body was substituted (moved into the request context).
    pub body: Option<Bytes>,
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
            .finish()
    }
}

impl Applied {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty() && self.remove_headers.is_empty()
    }
}

/// Checks and substitutes every handle in `req` for `tenant`. `authorize` asks policy whether the
/// workload may use a credential in a position.
pub fn apply(
    set: &CredentialSet,
    settings: &CredentialSettings,
    tenant: &TenantId,
    req: &RequestParts<'_>,
    now_unix: u64,
    authorize: &mut dyn FnMut(&Credential, Position) -> bool,
) -> Result<Applied, CredentialDeny> {
    let mut out = Applied::default();
    let mut resolver = Resolver {
        set,
        tenant,
        target: req.target,
        now_unix,
        authorize,
        used: &mut out.used,
    };

    for name in req.headers.keys() {
        let values = req.headers.get_all(name);
        if values.iter().any(|v| handle::has_marker(v.as_bytes())) {
            // Emit every value of this header (substituted or not), so multi-valued headers
            // keep all their values when they are replaced upstream.
            for value in values {
                let replaced =
                    resolver.substitute(value.as_bytes(), Position::Header, Encoding::Raw)?;
                let v = HeaderValue::from_bytes(&replaced)
                    .map_err(|_| CredentialDeny::Malformed("header"))?;
                out.set_headers.push((name.clone(), v));
            }
        } else if settings.credential_headers.contains(name)
            && values.iter().any(|v| !v.is_empty())
            && set.manages_host(tenant, req.target.host)
        {
            // SECURITY: the agent must not override the managed secret with its own key.
            match settings.raw_credential {
                RawCredentialMode::Refuse => {
                    return Err(CredentialDeny::Raw(format!("header `{name}`")))
                }
                RawCredentialMode::Strip => out.remove_headers.push(name.clone()),
            }
        }
    }

    let (path, query) = match req.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path_and_query, None),
    };
    if has_marker_maybe_encoded(path.as_bytes()) {
        return Err(first_handle_name(path.as_bytes())
            .map_or(CredentialDeny::Malformed("path"), |n| {
                CredentialDeny::Position(n, "path")
            }));
    }
    if let Some(q) = query {
        if has_marker_maybe_encoded(q.as_bytes()) {
            let replaced = resolver.substitute_pairs(q, Position::Query)?;
            out.path_and_query = Some(format!("{path}?{replaced}"));
        }
    }

    if let Some(body) = req.body {
        let kind = BodyKind::of(req.content_type);
        if body.len() > settings.scan_body_max_bytes || kind == BodyKind::Other {
            // Not scanned: but a handle right at the start must not go out raw.
            let head = &body[..body.len().min(64 * 1024)];
            if has_marker_maybe_encoded(head) {
                return Err(first_handle_name(head)
                    .map_or(CredentialDeny::Malformed("body"), |n| {
                        CredentialDeny::Position(n, "body")
                    }));
            }
        } else if handle::has_marker(body)
            || (kind == BodyKind::Form && has_marker_maybe_encoded(body))
        {
            let replaced = match kind {
                BodyKind::Json => resolver
                    .substitute(body, Position::Body, Encoding::JsonString)?
                    .into_owned(),
                BodyKind::Form => {
                    let text =
                        std::str::from_utf8(body).map_err(|_| CredentialDeny::Malformed("body"))?;
                    resolver
                        .substitute_pairs(text, Position::Body)?
                        .into_bytes()
                }
                BodyKind::Other => Vec::new(),
            };
            out.body = Some(Bytes::from(replaced));
        } else if kind == BodyKind::Json && set.manages_host(tenant, req.target.host) {
            if let Some(field) = raw_key_field(body, &settings.credential_body_fields) {
                // SECURITY: some gateways prefer a key in the body over their configured one.
                return Err(CredentialDeny::Raw(format!("body field `{field}`")));
            }
        }
    }
    Ok(out)
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
    authorize: &'b mut dyn FnMut(&Credential, Position) -> bool,
    used: &'b mut Vec<Arc<Credential>>,
}

impl Resolver<'_, '_> {
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
                position.as_str(),
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

    fn substitute<'i>(
        &mut self,
        input: &'i [u8],
        position: Position,
        enc: Encoding,
    ) -> Result<Cow<'i, [u8]>, CredentialDeny> {
        handle::substitute(input, |name| {
            let cred = self.resolve(name, position)?;
            Ok(Cow::Owned(encode(cred.value.expose(), enc)))
        })
        .map_err(|e| match e {
            SubstituteError::Handle(_) => CredentialDeny::Malformed(position.as_str()),
            SubstituteError::Resolve(d) => d,
        })
    }

    /// Substitutes in `k=v&…` pairs, percent-decoding each value first (clients encode `$`, `{`
    /// and `}`) and percent-encoding what is inserted.
    fn substitute_pairs(
        &mut self,
        text: &str,
        position: Position,
    ) -> Result<String, CredentialDeny> {
        let mut out = String::with_capacity(text.len() + 64);
        for (i, pair) in text.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (key, value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            if has_marker_maybe_encoded(key.as_bytes()) {
                return Err(CredentialDeny::Malformed(position.as_str()));
            }
            out.push_str(key);
            let Some(value) = value else { continue };
            out.push('=');
            let decoded = percent_decode(value.replace('+', " ").as_bytes());
            if handle::has_marker(&decoded) {
                let mut pieces = Vec::new();
                for piece in handle::scan(&decoded)
                    .map_err(|_| CredentialDeny::Malformed(position.as_str()))?
                {
                    match piece {
                        handle::Piece::Literal(l) => pieces.extend_from_slice(l),
                        handle::Piece::Handle(n) => {
                            pieces.extend_from_slice(self.resolve(n, position)?.value.expose())
                        }
                    }
                }
                out.push_str(&String::from_utf8_lossy(&encode(
                    &pieces,
                    Encoding::Percent,
                )));
            } else {
                out.push_str(value);
            }
        }
        Ok(out)
    }
}

fn encode(value: &[u8], enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Raw => value.to_vec(),
        Encoding::JsonString => {
            let mut out = Vec::with_capacity(value.len() + 8);
            for &b in value {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => out.push(b),
                }
            }
            out
        }
        Encoding::Percent => {
            let mut out = Vec::with_capacity(value.len() * 3);
            for &b in value {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            out
        }
    }
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&input[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
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

fn raw_key_field(body: &[u8], fields: &[String]) -> Option<String> {
    // Cheap pre-check: parse only when a credential field name occurs in the bytes.
    if !fields
        .iter()
        .any(|f| body.windows(f.len()).any(|w| w == f.as_bytes()))
    {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    fields
        .iter()
        .find(|f| {
            obj.get(f.as_str())
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        })
        .cloned()
}

#[cfg(test)]
mod tests;
