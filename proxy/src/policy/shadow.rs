//! Shadow (report-only) policies: a second policy directory, loaded, validated and reloaded with
//! the enforced one, that is asked every `http`, `connect` and `mcp_tool_call` question too (for
//! an MCP request, its answers about the request and its tool calls are folded into one). Its
//! answer goes into the audit record and `tenant_proxy_shadow_decisions_total`, and never changes
//! the response, so a new policy set can be rolled out by watching what it would have done.

use serde::Serialize;

use super::Decision;
use crate::metrics::METRICS;

/// How the shadow answer compares with the enforced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowOutcome {
    /// Same decision.
    Agree,
    /// Enforced allowed; the shadow set would have denied.
    WouldDeny,
    /// Enforced denied; the shadow set would have allowed.
    WouldAllow,
}

impl ShadowOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowOutcome::Agree => "agree",
            ShadowOutcome::WouldDeny => "would_deny",
            ShadowOutcome::WouldAllow => "would_allow",
        }
    }
}

/// The shadow set's answer to one question, as recorded in the audit record's `shadow` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowDecision {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Ids of the shadow policies that decided.
    pub policy_ids: Vec<String>,
    /// Shadow evaluation errors (they count as a deny, as in the enforced set).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Comparison with the enforced decision.
    pub outcome: ShadowOutcome,
}

impl ShadowDecision {
    /// The shadow answer `shadow`, compared with the `enforced` one.
    pub fn compare(enforced: &Decision, shadow: Decision) -> Self {
        let outcome = match (enforced.allowed, shadow.allowed) {
            (true, false) => ShadowOutcome::WouldDeny,
            (false, true) => ShadowOutcome::WouldAllow,
            _ => ShadowOutcome::Agree,
        };
        Self {
            decision: if shadow.allowed { "allow" } else { "deny" },
            policy_ids: shadow.policy_ids,
            errors: shadow.errors,
            outcome,
        }
    }

    /// Counts this answer for `tenant`.
    pub fn observe(&self, tenant: &str) {
        METRICS
            .shadow_decisions
            .with_label_values(&[tenant, self.outcome.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, ids: &[&str]) -> Decision {
        Decision {
            allowed,
            policy_ids: ids.iter().map(|s| s.to_string()).collect(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn outcomes_compare_the_two_decisions() {
        #[rustfmt::skip]
        let cases = [
            ("both allow", true, true, ShadowOutcome::Agree),
            ("both deny", false, false, ShadowOutcome::Agree),
            ("shadow stricter", true, false, ShadowOutcome::WouldDeny),
            ("shadow looser", false, true, ShadowOutcome::WouldAllow),
        ];
        for (name, enforced, shadow, want) in cases {
            let s = ShadowDecision::compare(&decision(enforced, &["e"]), decision(shadow, &["s"]));
            assert_eq!(s.outcome, want, "{name}");
            assert_eq!(s.policy_ids, ["s"], "{name}: the shadow's own ids");
            assert_eq!(s.decision, if shadow { "allow" } else { "deny" }, "{name}");
        }
    }

    #[test]
    fn serializes_as_the_audit_field() {
        let s = ShadowDecision::compare(&decision(true, &[]), decision(false, &["deny-all"]));
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"decision": "deny", "policy_ids": ["deny-all"], "outcome": "would_deny"})
        );
    }
}
