//! The per-tenant hash chain. Every record line starts with `{"seq":N,"prev":"<hex>",…}`:
//! `seq` counts the tenant's records from 1 without gaps and `prev` is the SHA-256 of the
//! previous record's exact line bytes (without its trailing newline), 64 zeros for the first.
//! Editing, removing or reordering a line therefore breaks the link of the line after it.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::line::{Fields, Members};

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

/// Serializes `record` as the next link after `head`; returns the line (no newline) and the
/// new head. The line is `seq` and `prev`, then the record's own fields ([`Fields`]).
pub fn seal<R: Fields + ?Sized>(
    record: &R,
    head: ChainHead,
) -> serde_json::Result<(Vec<u8>, ChainHead)> {
    // A head at the largest seq was written by someone else (a planted record): an error fails
    // its tenant's partition (an overflow panicked the writer thread, every tenant's records
    // with it).
    let seq = head.seq.checked_add(1).ok_or_else(|| {
        <serde_json::Error as serde::ser::Error>::custom(
            "the chain's head is at the largest seq: its last record was not written by tenant-proxy",
        )
    })?;
    // Sized for a typical record, so the line is not grown (copied) several times.
    let mut line = Vec::with_capacity(1024);
    line.extend_from_slice(b"{\"seq\":");
    line.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    line.extend_from_slice(b",\"prev\":\"");
    crate::lower_hex::extend(&mut line, &head.hash);
    line.push(b'"');
    record.write_fields(&mut Members::after(&mut line))?;
    line.push(b'}');
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

/// `record`'s own fields as a JSON line with no place in a chain (`"seq":null`): what is logged
/// of a record that cannot be sealed, so that it is not lost.
pub fn unchained<R: Fields + ?Sized>(record: &R) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    line.extend_from_slice(b"{\"seq\":null");
    record.write_fields(&mut Members::after(&mut line))?;
    line.push(b'}');
    Ok(line)
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
            token_id: None,
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

    /// The line as serde wrote it before [`seal`] wrote records member by member: `seq` and
    /// `prev`, then the record flattened.
    #[derive(serde::Serialize)]
    struct SerdeSealed<'a, R> {
        seq: u64,
        prev: String,
        #[serde(flatten)]
        record: &'a R,
    }

    fn serde_line<R: serde::Serialize>(record: &R, head: ChainHead) -> String {
        let sealed = SerdeSealed {
            seq: head.seq + 1,
            prev: hex::encode(head.hash),
            record,
        };
        String::from_utf8(serde_json::to_vec(&sealed).unwrap()).unwrap()
    }

    /// Every field of a request record set, with strings that need escaping.
    fn full_record() -> AuditRecord {
        use crate::audit::{ApprovalFields, McpFields, TunnelFields};
        let awkward = "a \"quoted\" \\ value\n\t\u{1} é 🦀 \u{7f}";
        AuditRecord {
            scheme: Some("https"),
            host: Some("api.example.com".into()),
            port: Some(443),
            path: Some(format!("/v1/{awkward}")),
            route: Some("openai".into()),
            model: Some(awkward.into()),
            other_models: vec!["whisper-1".into(), awkward.into()],
            credentials: vec!["openai".into(), awkward.into()],
            usage: Some(crate::usage::Usage {
                input_tokens: 70,
                cached_input_tokens: 3,
                cache_write_input_tokens: 60,
                cache_write_long_input_tokens: 6,
                output_tokens: u64::MAX,
                hosted_calls: crate::usage::HostedCalls {
                    web_searches: 2,
                    file_searches: 1,
                },
            }),
            reserved: Some(crate::limits::Charge {
                tokens: 1,
                cost_micros: 2,
                tool_calls: 3,
            }),
            settled: Some(crate::limits::Charge::default()),
            ceiling: Some("day"),
            stream_cut: true,
            ended: Some("token_revoked"),
            tunnel: Some(TunnelFields {
                id: "t-1".into(),
                mode: "intercept",
            }),
            mcp: Some(McpFields {
                server: "tools".into(),
                tools_called: vec![awkward.into()],
                tools_hidden: 2,
                resources_read: vec!["file:///x".into()],
                prompts_got: Vec::new(),
                resources_hidden: 0,
                prompts_hidden: 1,
            }),
            approval: Some(ApprovalFields {
                hold_id: Some("h-1".into()),
                outcome: "granted",
                approver: None,
                policy_ids: vec!["p".into()],
            }),
            policy_ids: vec!["tenant/acme/allow-openai".into(), awkward.into()],
            policy_errors: vec![awkward.into()],
            shadow: Some(crate::policy::shadow::ShadowDecision {
                decision: "deny",
                policy_ids: vec!["s".into()],
                errors: Vec::new(),
                outcome: crate::policy::shadow::ShadowOutcome::WouldDeny,
            }),
            latency_ms: 0.1 + 0.2,
            upstream_latency_ms: Some(1e-7),
            upstream_request_id: Some("req_abc-123".into()),
            token_id: Some("jti-7".into()),
            bytes_in: 90,
            bytes_out: u64::MAX,
            request_body_sha256: Some("ab".repeat(32)),
            ..record("acme", awkward)
        }
    }

    #[test]
    fn lines_are_byte_for_byte_what_serde_wrote() {
        use crate::audit::{ApprovalEvent, AuditEntry, EventKind, RunEvent, RunTotals};
        let head = ChainHead {
            seq: 41,
            hash: [0xa5; 32],
        };
        let minimal = record("acme", "2026-11-22T10:00:00Z");
        let mut refused = full_record();
        refused.decision = AuditDecision::Deny;
        refused.reason = ReasonCode::BudgetExhausted;
        refused.latency_ms = f64::NAN;
        refused.upstream_latency_ms = None;
        refused.stream_cut = false;
        refused.policy_errors.clear();
        let requests = [minimal, full_record(), refused];
        for r in &requests {
            let (line, _) = seal(r, head).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), serde_line(r, head));
            let entry = AuditEntry::from(r.clone());
            let (line, _) = seal(&entry, head).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), serde_line(&entry, head));
        }
        let started = RunEvent {
            event: EventKind::RunStarted,
            time: "2026-11-22T10:00:00Z".into(),
            tenant: "acme".into(),
            workload: Some("bot".into()),
            run_id: "r\"1".into(),
            expires_at: Some(1),
            budget: Some(crate::identity::token::RunBudget {
                tokens: Some(5),
                ..Default::default()
            }),
            request_id: Some("req-1".into()),
            totals: None,
        };
        let summary = RunEvent {
            event: EventKind::RunSummary,
            workload: None,
            expires_at: None,
            budget: None,
            request_id: None,
            totals: Some(RunTotals {
                ended: crate::limits::RunEnd::Closed,
                ended_at: 9,
                tokens: 1,
                cost_micros: 2,
                tool_calls: 3,
                requests: 4,
                refusals: 5,
                wall_time_s: 6,
            }),
            ..started.clone()
        };
        let approval = ApprovalEvent {
            event: EventKind::ApprovalRequested,
            time: "2026-11-22T10:00:00Z".into(),
            tenant: "acme".into(),
            hold_id: Some("h-1".into()),
            workload: None,
            run_id: None,
            request_id: None,
            approver: None,
            reason: Some("\u{0}".into()),
            detail: Some(serde_json::json!({"method": "POST", "tools": ["a", "b"]})),
            decision_s: Some(2.5),
        };
        for entry in [
            AuditEntry::from(started),
            AuditEntry::from(summary),
            AuditEntry::from(approval),
        ] {
            let (line, _) = seal(&entry, head).unwrap();
            assert_eq!(String::from_utf8(line).unwrap(), serde_line(&entry, head));
        }
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
