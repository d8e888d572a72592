//! The per-tenant hash chain. Every record line starts with `{"seq":N,"prev":"<hex>",…}`:
//! `seq` counts the tenant's records from 1 without gaps and `prev` is the SHA-256 of the
//! previous record's exact line bytes (without its trailing newline), 64 zeros for the first.
//! Editing, removing or reordering a line therefore breaks the link of the line after it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of a tenant's first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Where a tenant's chain stands: the last written record's `seq` and line hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// `seq` of the last record (0 before the first).
    pub seq: u64,
    /// SHA-256 of the last record's line ([`GENESIS`] before the first).
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The head of an empty chain.
    pub const EMPTY: Self = Self {
        seq: 0,
        hash: GENESIS,
    };
}

/// The line as written: `seq` and `prev` first, then the record's own fields.
#[derive(Serialize)]
struct Sealed<'a, R> {
    seq: u64,
    prev: String,
    #[serde(flatten)]
    record: &'a R,
}

/// Serializes `record` as the next link after `head`; returns the line (no newline) and the
/// new head.
pub fn seal<R: Serialize>(record: &R, head: ChainHead) -> serde_json::Result<(Vec<u8>, ChainHead)> {
    let seq = head.seq + 1;
    // Sized for a typical record, so the line is not grown (copied) several times.
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(
        &mut line,
        &Sealed {
            seq,
            prev: crate::lower_hex::of(&head.hash),
            record,
        },
    )?;
    let hash = line_hash(&line);
    Ok((line, ChainHead { seq, hash }))
}

/// SHA-256 of a line's bytes (without the newline).
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// The chain fields of a written line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The record's sequence number.
    pub seq: u64,
    /// The hash it names as its predecessor's.
    pub prev: [u8; 32],
    /// The tenant it says it belongs to.
    pub tenant: String,
}

#[derive(Deserialize)]
struct RawLink {
    seq: u64,
    prev: String,
    tenant: String,
}

/// Reads the chain fields of a line; `None` when the line is not a chained record.
pub fn parse_link(line: &[u8]) -> Option<Link> {
    let raw: RawLink = serde_json::from_slice(line).ok()?;
    Some(Link {
        seq: raw.seq,
        prev: parse_hash(&raw.prev)?,
        tenant: raw.tenant,
    })
}

/// A 64-hex-digit SHA-256.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::{AuditDecision, AuditRecord};
    use crate::reason::ReasonCode;

    /// A minimal record of `tenant`, for chain and verify tests.
    pub(crate) fn record(tenant: &str, time: &str) -> AuditRecord {
        let ctx = crate::context::TenantContext {
            tenant: crate::ids::TenantId::new(tenant).unwrap(),
            workload: crate::ids::WorkloadId::new("bot").unwrap(),
            principal_kind: crate::context::PrincipalKind::Workload,
            identity_source: crate::identity::IdentitySourceKind::Binding,
            run: crate::context::Run {
                id: "run-1".into(),
                signed: false,
                expires_at: None,
            },
            budget: None,
            scopes: Vec::new(),
            initiator: None,
            correlation_id: None,
            request_id: "req-1".into(),
            trace: crate::trace::TraceContext::continue_or_start(None),
        };
        let mut r = AuditRecord::of(
            &ctx,
            "l",
            "GET".into(),
            std::time::Duration::ZERO,
            AuditDecision::Allow,
            ReasonCode::Allowed,
            200,
        );
        r.time = time.into();
        r
    }

    #[test]
    fn links_name_the_previous_line() {
        let r = record("acme", "2026-11-22T10:00:00Z");
        let (first, h1) = seal(&r, ChainHead::EMPTY).unwrap();
        let (second, h2) = seal(&r, h1).unwrap();
        let l1 = parse_link(&first).unwrap();
        let l2 = parse_link(&second).unwrap();
        assert_eq!((l1.seq, l1.prev, l1.tenant.as_str()), (1, GENESIS, "acme"));
        assert_eq!((l2.seq, l2.prev), (2, line_hash(&first)));
        assert_eq!(
            h2,
            ChainHead {
                seq: 2,
                hash: line_hash(&second)
            }
        );
        assert!(first.starts_with(b"{\"seq\":1,\"prev\":\"0000"));
    }

    #[test]
    fn non_records_have_no_link() {
        for (name, line) in [
            ("not json", &b"{\"seq\":1,"[..]),
            ("no seq", b"{\"prev\":\"00\",\"tenant\":\"a\"}"),
            (
                "short prev",
                b"{\"seq\":1,\"prev\":\"00\",\"tenant\":\"a\"}",
            ),
        ] {
            assert!(parse_link(line).is_none(), "{name}");
        }
    }
}
