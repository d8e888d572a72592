//! Signed workload tokens (JWT, EdDSA or ES256), verified against a JWKS.
//!
//! Verification takes the current time as an argument so tests are deterministic, and checks
//! the time claims itself: expired, not yet valid, and minted for longer than the configured
//! maximum lifetime (a long-lived token is refused even while fresh). Only Ed25519 and P-256 keys
//! exist in a [`KeySet`], and the key a token names decides the algorithm: `alg: none`, HMAC and
//! RSA tokens never reach a signature check. Errors name the reason and never echo the token;
//! `Debug` output never shows a token or a key.
//!
//! The hot path (`verify.rs`: [`TokenVerifier`], with the [`KeySet`] of `keys.rs`) is apart from
//! the tooling (`mint.rs`: [`generate_key`] and [`mint()`], behind `tenant-proxy token keygen`
//! and `token mint`, and the tests); `settings.rs` is the tenant file's `[token]`. Both sides
//! read the claim types and rules defined here.

mod keys;
mod mint;
pub mod settings;
mod verify;

pub use keys::{KeyFingerprint, KeySet, KeySetError};
pub use mint::{generate_key, mint, GeneratedKey, KeyAlgorithm, MintError, MintRequest};
pub use settings::{TokenConfig, TokenSpec};
pub use verify::{
    accepted_until, Accepted, TokenError, TokenSettings, TokenVerifier, VerifiedToken,
};

use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes (the `Proxy-Authorization` header is bounded the same way).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest `run_id` and `correlation_id`, in characters.
const MAX_ID_CLAIM_LEN: usize = crate::ids::MAX_RUN_ID_LEN;

/// A run's budget as carried by its token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBudget {
    /// LLM tokens (input + output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    /// Wall time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_s: Option<u64>,
    /// Cost in micro-units of currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micros: Option<u64>,
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// A person.
    User,
    /// A schedule.
    Cron,
    /// An inbound webhook.
    Webhook,
    /// Another agent.
    Agent,
    /// A service.
    Service,
}

/// Whether `jti` is a token id this proxy accepts (in a token it verifies or mints, and in
/// `token revoke`): one a line of `[token] revoked_jtis_file` names exactly. That file cuts each
/// line at its first `#` (the rest is a comment) and trims it, so an id holding a `#`, or
/// whitespace at either end, could not be revoked there, and its line would revoke another id
/// (`batch#7` revokes `batch`). So an id is refused when it is empty or holds a `#`, or anything
/// but printable ASCII: whitespace, control characters, and the invisible ones an editor may
/// leave in a line (a byte-order mark, a zero-width space) that would make it name another id
/// than it shows (UUIDs, hex, base64url and the ids identity providers issue hold none).
pub fn valid_jti(jti: &str) -> bool {
    !jti.is_empty() && jti.bytes().all(|b| b != b'#' && b.is_ascii_graphic())
}

/// The token ids a `revoked_jtis_file` holding `text` revokes: one per line, each line cut at its
/// first `#` (the rest is a comment) and trimmed; blank lines name none. A byte-order mark at the
/// start (PowerShell's and old Notepad's UTF-8) is not part of the first id.
///
/// SECURITY: a line whose id holds characters no token id has (an invisible zero-width space, a
/// no-break space) revokes also the id it shows, those characters left out: revoking the id a
/// person meant errs on the safe side; `check` warns at such a line.
pub fn revocation_ids(text: &str) -> std::collections::HashSet<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut ids = std::collections::HashSet::new();
    for line in lines(text) {
        let id = revocation_line(line).0;
        if id.is_empty() {
            continue;
        }
        if !valid_jti(id) {
            let shown: String = id.chars().filter(|c| !invisible(*c)).collect();
            if valid_jti(&shown) {
                ids.insert(shown);
            }
        }
        ids.insert(id.to_string());
    }
    ids
}

/// The token id a line of `revoked_jtis_file` names (empty for none), and whether the line has
/// a comment: the line is cut at its first `#` and trimmed. Token ids never hold a `#` or
/// whitespace ([`valid_jti`]), so every id the proxy accepts is named
/// by a line holding exactly it.
pub fn revocation_line(line: &str) -> (&str, bool) {
    match line.split_once('#') {
        Some((id, _)) => (id.trim(), true),
        None => (line.trim(), false),
    }
}

/// A character a revocation line's id cannot mean: anything but printable ASCII and the
/// space (which shows as a gap). Token ids are printable ASCII ([`valid_jti`]), so whatever
/// else a line holds (a zero-width space, a variation selector, a tag character, a filler) is
/// invisible or foreign to the id it shows.
fn invisible(c: char) -> bool {
    !(c.is_ascii_graphic() || c == ' ')
}

/// The lines of a revocation file: ended by LF, CRLF or a lone CR (old Mac editors).
fn lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                out.push(&text[start..i]);
                i += 1;
            }
            b'\r' => {
                out.push(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
            }
            _ => {
                i += 1;
                continue;
            }
        }
        start = i;
    }
    if start < bytes.len() {
        out.push(&text[start..]);
    }
    out
}

/// The lines of a `revoked_jtis_file` holding `text` that do not revoke the id they seem to
/// name, as `line N: `…``: a `#` right after an id (`batch#7` revokes `batch`: a comment starts
/// a line or follows whitespace), or an id no token can have (whitespace inside).
pub fn misleading_revocation_lines(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    lines(text)
        .into_iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let (id, _) = revocation_line(line);
            let before_hash = line.split_once('#').map(|(before, _)| before);
            let glued = !id.is_empty()
                && before_hash.is_some_and(|before| !before.ends_with(char::is_whitespace));
            let unnamable = !id.is_empty() && !valid_jti(id);
            (glued || unnamable).then(|| format!("line {}: `{}`", i + 1, line.trim()))
        })
        .collect()
}

/// What a token id may not hold, for messages that refuse one.
pub const JTI_RULE: &str =
    "a token id (`jti`) may not be empty or hold `#` or anything but printable ASCII (a `revoked_jtis_file` line could not name it)";

/// An OAuth scope token (RFC 6749 section 3.3): printable ASCII except space, `"` and `\`.
fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

#[cfg(test)]
mod tests;
