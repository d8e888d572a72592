//! Human approval, written in Cedar as annotations on `permit` policies:
//!
//! ```cedar
//! @id("payments-need-a-person")
//! @approval("required")          // or "shadow": counted and audited as "would hold", never held
//! @approval_timeout("10m")       // optional; default `[approvals] default_timeout`
//! @approvers("finance")          // optional; approver tokens must carry this scope
//! @approval_mode("poll")         // optional; "wait" (default) or "poll" (answered 202 at once)
//! permit (principal, action == TenantProxy::Action::"http", resource)
//! when { context.host == "api.stripe.com" && context.method == "POST" };
//! ```
//!
//! A marked permit that is among the policies allowing a question (`http`, `mcp_tool_call`,
//! `mcp_resource`, `mcp_prompt`, `use_credential`) makes the request wait for a person of its
//! tenant. Only a permit can be marked: an approval can turn an allow into a hold, never a deny
//! into an allow, and a `forbid` that applies still refuses at once. And only a permit whose
//! scope names those actions alone ([`HELD_ACTIONS`]): a tunnel (`connect`, `connect_opaque`) is
//! never held, so a mark that would also apply to one is a load error, not a hold that silently
//! never happens.

use std::time::Duration;

use cedar_policy::{ActionConstraint, Effect, Policy};

/// The actions a request is held on when a marked permit allows them: the questions the
/// admission chain asks of every HTTP request (its `http` question, its MCP items, its credential
/// uses) before it goes out. A marked permit's scope must name its actions among these.
pub const HELD_ACTIONS: [&str; 5] = [
    "http",
    "mcp_tool_call",
    "mcp_resource",
    "mcp_prompt",
    "use_credential",
];

/// How the agent learns the outcome of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// The request waits on its connection until a person decides or the hold times out.
    Wait,
    /// The request is answered at once with 202 and a hold id; the agent sends the same request
    /// again with the hold id to learn the outcome (and have it forwarded once approved).
    Poll,
}

impl HoldMode {
    /// `wait` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldMode::Wait => "wait",
            HoldMode::Poll => "poll",
        }
    }
}

/// What one permit's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// `@approval("shadow")`: only counted and audited.
    pub shadow: bool,
    /// `@approval_timeout`.
    pub timeout: Option<Duration>,
    /// `@approvers`: scopes an approver's token must carry (comma-separated in the annotation).
    pub approvers: Vec<String>,
    /// `@approval_mode`.
    pub mode: HoldMode,
}

/// Longest `@approval_timeout` a policy may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl ApprovalRule {
    /// The rule `policy`'s annotations describe: `Ok(None)` when it has none, `Err` (the text
    /// of a load problem) when they are invalid or sit on a `forbid`.
    pub fn from_policy(policy: &Policy) -> Result<Option<Self>, String> {
        check_annotation_names(policy)?;
        let approval = policy.annotation("approval");
        let others = ["approval_timeout", "approvers", "approval_mode"];
        let Some(approval) = approval else {
            return match others.iter().find(|k| policy.annotation(k).is_some()) {
                Some(k) => Err(format!(
                    "`@{k}` needs `@approval(\"required\")` (or `\"shadow\"`) on the same policy"
                )),
                None => Ok(None),
            };
        };
        // SECURITY: an approval only ever narrows an allow; on a forbid it would read as a way
        // to lift the forbid.
        if policy.effect() != Effect::Permit {
            return Err("`@approval` is only allowed on a `permit` policy".into());
        }
        held_actions_only(policy)?;
        let shadow = match approval {
            "required" => false,
            "shadow" => true,
            other => {
                return Err(format!(
                    "`@approval(\"{other}\")`: the value is `required` or `shadow`"
                ))
            }
        };
        let timeout = match policy.annotation("approval_timeout") {
            None => None,
            Some(t) => {
                let d = humantime::parse_duration(t).map_err(|e| {
                    format!(
                        "`@approval_timeout(\"{t}\")` is not a duration ({e}); write e.g. `10m`"
                    )
                })?;
                if d < Duration::from_secs(1) || d > MAX_TIMEOUT {
                    return Err(format!(
                        "`@approval_timeout(\"{t}\")` must be between 1s and 24h"
                    ));
                }
                Some(d)
            }
        };
        let approvers = match policy.annotation("approvers") {
            None => Vec::new(),
            Some(list) => {
                let groups: Vec<String> =
                    list.split(',').map(str::trim).map(String::from).collect();
                if groups.iter().any(|g| !valid_group(g)) {
                    return Err(format!(
                        "`@approvers(\"{list}\")`: name groups with letters, digits, `_`, `-`, `.` and `:`, separated by commas"
                    ));
                }
                groups
            }
        };
        let mode = match policy.annotation("approval_mode") {
            None | Some("wait") => HoldMode::Wait,
            Some("poll") => HoldMode::Poll,
            Some(other) => {
                return Err(format!(
                    "`@approval_mode(\"{other}\")`: the value is `wait` or `poll`"
                ))
            }
        };
        Ok(Some(Self {
            shadow,
            timeout,
            approvers,
            mode,
        }))
    }
}

/// The annotations tenant-proxy reads: `@id` and the approval ones.
const READ_ANNOTATIONS: [&str; 5] = [
    "id",
    "approval",
    "approval_timeout",
    "approvers",
    "approval_mode",
];

/// Names a team may give its own metadata on a permit (besides any name starting `x_`): what
/// policies commonly carry, none of which reads as asking for a person.
const METADATA_ANNOTATIONS: [&str; 40] = [
    "description",
    "doc",
    "docs",
    "owner",
    "owners",
    "team",
    "contact",
    "ticket",
    "jira",
    "issue",
    "reference",
    "link",
    "url",
    "severity",
    "priority",
    "rationale",
    "reason",
    "note",
    "notes",
    "comment",
    "comments",
    "tags",
    "category",
    "runbook",
    "version",
    "created",
    "created_by",
    "created_at",
    "updated",
    "updated_by",
    "updated_at",
    "reviewed_by",
    "reviewed_at",
    "approved_by",
    "approved_at",
    "source",
    "control",
    "compliance",
    "environment",
    "expires_at",
];

/// Refuses, on a permit, every annotation but those tenant-proxy reads, the metadata names of
/// [`METADATA_ANNOTATIONS`] and names starting `x_`; and, on any policy, a near miss of one it
/// reads (`@Approval`, `@approver`, `@aproval_timeout`, `@approvalMode`, `@ID`) or, beside
/// `@approval`, a name about a hold's timeout, mode or approvers (`@timeout("1m")`,
/// `@reviewers("x")`), with what it looks meant for.
///
/// SECURITY: Cedar accepts any annotation and the proxy ignores those it does not read, so a
/// permit's annotation meant as a hold under any other wording (`@requires_approval`,
/// `@four_eyes`, `@block_until_approved`, `@approval_by("security")`) would leave it allowing
/// at once: no list of wordings foresees them all, so a permit carries only names known not to
/// be one. A forbid may carry any (it never allows).
fn check_annotation_names(policy: &Policy) -> Result<(), String> {
    let marked = policy.annotation("approval").is_some();
    let permit = policy.effect() == Effect::Permit;
    for (name, _) in policy.annotations() {
        if READ_ANNOTATIONS.contains(&name) {
            continue;
        }
        if let Some(meant) = meant_annotation(name, marked) {
            return Err(format!(
                "`@{name}` is not an annotation tenant-proxy reads: did you mean `@{meant}`? (annotation names are exact; a misspelt approval annotation would leave the permit without the hold it asks for)"
            ));
        }
        let own = name.starts_with("x_") || METADATA_ANNOTATIONS.contains(&name);
        if permit && !own {
            return Err(format!(
                "`@{name}` is not an annotation tenant-proxy reads, and a permit carries only those (`@id`, `@approval`, `@approval_timeout`, `@approvers`, `@approval_mode`), metadata names (`@description`, `@owner`, `@ticket`, `@reviewed_by`, … see the README) and names starting `x_`: to hold requests for a person write `@approval(\"required\")`; to keep it as your own, name it `@x_{name}`"
            ));
        }
    }
    Ok(())
}

/// The annotation a name looks meant for, if any: a near miss of one tenant-proxy reads, or
/// beside `@approval` another name for a hold's timeout, mode or approvers (see
/// [`check_annotation_names`]).
fn meant_annotation(name: &str, marked: bool) -> Option<&'static str> {
    let folded = name.to_ascii_lowercase().replace('-', "_");
    // The prefix of a team's own annotations: never one the proxy reads.
    if folded.starts_with("x_") {
        return None;
    }
    let bare = folded.replace('_', "");
    // A near miss: the same but for case and separators, or a letter or two off (one for
    // the short names, so that `@approved` stays free).
    let distance = |known: &str| {
        if bare == known.replace('_', "") {
            return Some(0);
        }
        let most = match known.len() {
            0..=2 => return None,
            3..=11 => 1,
            _ => 2,
        };
        Some(strsim::damerau_levenshtein(&folded, known)).filter(|d| *d <= most)
    };
    if let Some((_, known)) = READ_ANNOTATIONS
        .iter()
        .filter_map(|known| Some((distance(known)?, *known)))
        .min()
    {
        return Some(known);
    }
    if marked {
        // Beside `@approval`: a hold's timeout, mode or approvers under another name.
        let family = [
            ("timeout", "approval_timeout"),
            ("holdtimeout", "approval_timeout"),
            ("approvalttl", "approval_timeout"),
            ("ttl", "approval_timeout"),
            ("holdmode", "approval_mode"),
            ("mode", "approval_mode"),
            ("approver", "approvers"),
            ("reviewer", "approvers"),
            ("reviewers", "approvers"),
            ("approvalby", "approvers"),
            ("approvalgroup", "approvers"),
            ("approvalgroups", "approvers"),
            ("approvergroup", "approvers"),
            ("approvergroups", "approvers"),
            ("deciders", "approvers"),
        ];
        if let Some((_, known)) = family.iter().find(|(name, _)| bare == *name) {
            return Some(known);
        }
    }
    None
}

/// Whether every action `policy`'s scope can match is one a request is held on.
///
/// SECURITY: a tunnel is decided before any request inside it exists, and an opaque tunnel's
/// requests are never seen, so nothing holds a `connect` or `connect_opaque`: a mark on a
/// permit that allows one (named, or through a scope with no action constraint) would be
/// ignored there, the tunnel opened with no person asked. Such a policy is refused at load
/// instead (as a marked `forbid` is), naming what to mark instead.
fn held_actions_only(policy: &Policy) -> Result<(), String> {
    let named = match policy.action_constraint() {
        ActionConstraint::Any => {
            return Err(format!(
                "`@approval` needs the policy's scope to name its actions (`action == TenantProxy::Action::\"http\"`, or `action in [...]`) among {}: with any action it would also permit tunnels (`connect`, `connect_opaque`), which are never held",
                held_list()
            ))
        }
        ActionConstraint::Eq(action) => vec![action],
        ActionConstraint::In(actions) => actions,
    };
    for action in named {
        let name = action.id().unescaped();
        let ours = action.type_name().to_string() == "TenantProxy::Action";
        if ours && HELD_ACTIONS.contains(&name) {
            continue;
        }
        return Err(if ours && matches!(name, "connect" | "connect_opaque") {
            format!(
                "`@approval` on a `{name}` permit: a tunnel is never held for approval (it opens before any request inside it is seen, and an opaque tunnel's never are); mark the `http` permits of the requests an intercepted tunnel carries instead"
            )
        } else {
            format!(
                "`@approval` on a permit for `{action}`: only {} are held for approval",
                held_list()
            )
        });
    }
    Ok(())
}

/// The held actions, for messages.
fn held_list() -> String {
    HELD_ACTIONS
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 64
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// What the permits that allowed a request ask for, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    /// Only shadow rules applied: count and audit "would hold", never hold.
    pub shadow: bool,
    /// The shortest timeout any applying rule asks for.
    pub timeout: Option<Duration>,
    /// Every group any applying rule names: an approver must carry all of them.
    pub approvers: Vec<String>,
    /// `poll` when any applying rule asks for it (a client that cannot wait cannot wait for
    /// any of them).
    pub mode: HoldMode,
    /// The ids of the applying marked permits.
    pub policy_ids: Vec<String>,
}

/// Combines the rules of the marked permits among those that allowed a request. Required
/// rules win over shadow ones (a shadow rule never weakens a required one).
pub fn combine<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a ApprovalRule)>,
) -> Option<ApprovalNeed> {
    let rules: Vec<(&str, &ApprovalRule)> = rules.into_iter().collect();
    let required = rules.iter().any(|(_, r)| !r.shadow);
    let applying: Vec<&(&str, &ApprovalRule)> =
        rules.iter().filter(|(_, r)| r.shadow != required).collect();
    if applying.is_empty() {
        return None;
    }
    let mut approvers: Vec<String> = applying
        .iter()
        .flat_map(|(_, r)| r.approvers.iter().cloned())
        .collect();
    approvers.sort_unstable();
    approvers.dedup();
    let mut policy_ids: Vec<String> = applying.iter().map(|(id, _)| id.to_string()).collect();
    policy_ids.sort_unstable();
    policy_ids.dedup();
    Some(ApprovalNeed {
        shadow: !required,
        timeout: applying.iter().filter_map(|(_, r)| r.timeout).min(),
        approvers,
        mode: if applying.iter().any(|(_, r)| r.mode == HoldMode::Poll) {
            HoldMode::Poll
        } else {
            HoldMode::Wait
        },
        policy_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn rule(text: &str) -> Result<Option<ApprovalRule>, String> {
        let p = Policy::from_str(text).expect("parses");
        ApprovalRule::from_policy(&p)
    }

    #[test]
    fn annotations_read_and_refused() {
        let ok = rule(
            r#"@approval("required") @approval_timeout("10m") @approvers("finance, ops") @approval_mode("poll")
               permit (principal, action == TenantProxy::Action::"http", resource);"#,
        )
        .expect("valid")
        .expect("marked");
        assert_eq!(
            ok,
            ApprovalRule {
                shadow: false,
                timeout: Some(Duration::from_secs(600)),
                approvers: vec!["finance".into(), "ops".into()],
                mode: HoldMode::Poll,
            }
        );
        assert_eq!(rule("permit (principal, action, resource);"), Ok(None));
        let cases = [
            (
                "on a forbid",
                r#"@approval("required") forbid (principal, action, resource);"#,
                "only allowed on a `permit`",
            ),
            (
                "unknown value",
                r#"@approval("maybe") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "`required` or `shadow`",
            ),
            (
                "orphan timeout",
                r#"@approval_timeout("1m") permit (principal, action, resource);"#,
                "needs `@approval",
            ),
            (
                "bad duration",
                r#"@approval("required") @approval_timeout("soon") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "not a duration",
            ),
            (
                "too long",
                r#"@approval("required") @approval_timeout("2d") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "between 1s and 24h",
            ),
            (
                "bad group",
                r#"@approval("required") @approvers("a b") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "name groups",
            ),
            (
                "empty group",
                r#"@approval("required") @approvers("a,") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "name groups",
            ),
            (
                "on a connect permit",
                r#"@approval("required") permit (principal, action == TenantProxy::Action::"connect", resource);"#,
                "a tunnel is never held",
            ),
            (
                "on a connect_opaque permit",
                r#"@approval("required") permit (principal, action == TenantProxy::Action::"connect_opaque", resource);"#,
                "a tunnel is never held",
            ),
            (
                "a shadow mark on a connect permit",
                r#"@approval("shadow") permit (principal, action == TenantProxy::Action::"connect", resource);"#,
                "a tunnel is never held",
            ),
            (
                "connect among the actions",
                r#"@approval("required") permit (principal, action in [TenantProxy::Action::"http", TenantProxy::Action::"connect"], resource);"#,
                "`connect` permit",
            ),
            (
                "any action",
                r#"@approval("required") permit (principal, action, resource);"#,
                "needs the policy's scope to name its actions",
            ),
            (
                "an action of another namespace",
                r#"@approval("required") permit (principal, action == Other::Action::"http", resource);"#,
                "only `http`, `mcp_tool_call`",
            ),
            (
                "bad mode",
                r#"@approval("required") @approval_mode("later") permit (principal, action == TenantProxy::Action::"http", resource);"#,
                "`wait` or `poll`",
            ),
        ];
        for (name, text, want) in cases {
            let err = rule(text).expect_err(name);
            assert!(err.contains(want), "{name}: {err}");
        }
        for held in HELD_ACTIONS {
            let text = format!(
                r#"@approval("required") permit (principal, action == TenantProxy::Action::"{held}", resource);"#
            );
            assert!(matches!(rule(&text), Ok(Some(_))), "{held}");
        }
        let several = r#"@approval("required") permit (principal, action in [TenantProxy::Action::"http", TenantProxy::Action::"use_credential"], resource);"#;
        assert!(matches!(rule(several), Ok(Some(_))));
    }

    #[test]
    fn near_misses_of_the_annotations_read_are_refused() {
        let permit = r#"permit (principal, action == TenantProxy::Action::"http", resource);"#;
        #[rustfmt::skip]
        let misspelt = [
            (r#"@Approval("required")"#, "`@approval`"),
            (r#"@APPROVAL("required")"#, "`@approval`"),
            (r#"@aproval("required")"#, "`@approval`"),
            (r#"@approvals("required")"#, "`@approval`"),
            (r#"@approval("required") @approver("legal")"#, "`@approvers`"),
            (r#"@approval("required") @Approvers("legal")"#, "`@approvers`"),
            (r#"@approval("required") @approval_timout("1m")"#, "`@approval_timeout`"),
            (r#"@approval("required") @approvalTimeout("1m")"#, "`@approval_timeout`"),
            (r#"@approval("required") @approval_mod("poll")"#, "`@approval_mode`"),
            (r#"@approval_required("yes")"#, "`@approval`"),
            (r#"@requires_approval("true")"#, "`@approval`"),
            (r#"@human_approval("required")"#, "`@approval`"),
            (r#"@approval("required") @timeout("1m")"#, "`@approval_timeout`"),
            (r#"@approval("required") @mode("poll")"#, "`@approval_mode`"),
            (r#"@approval("required") @reviewers("legal")"#, "`@approvers`"),
            (r#"@approval("required") @approval_ttl("5m")"#, "`@approval_timeout`"),
            (r#"@approval("required") @approval_by("legal")"#, "`@approvers`"),
            (r#"@approval("required") @deciders("legal")"#, "`@approvers`"),
            (r#"@requires_approval("always")"#, "`@approval`"),
            (r#"@requires_approval(" true")"#, "`@approval`"),
            // Bare flags, other forms of the word, a requirement naming it.
            (r#"@requires_approval"#, "`@approval`"),
            (r#"@require_approval"#, "`@approval`"),
            (r#"@needs_approval"#, "`@approval`"),
            (r#"@approve("required")"#, "`@approval`"),
            (r#"@approve("yes")"#, "`@approval`"),
            (r#"@approve"#, "`@approval`"),
            (r#"@requires("approval")"#, "`@approval`"),
            (r#"@needs("human approval")"#, "`@approval`"),
            // A name that says a person must decide asks whatever its value; a yes in any form;
            // the verb; synonyms; a requirement, gate or hold naming one.
            (r#"@requires_approval_from("security")"#, "`@approval`"),
            (r#"@requires_approval("security-team")"#, "`@approval`"),
            (r#"@approval_required_by("security")"#, "`@approval`"),
            (r#"@approve_by("security")"#, "`@approval`"),
            (r#"@requires_approval("needed")"#, "`@approval`"),
            (r#"@requires_approval("y")"#, "`@approval`"),
            (r#"@requires_approval("2")"#, "`@approval`"),
            (r#"@requires_approval("required: security")"#, "`@approval`"),
            (r#"@human_review("required")"#, "`@approval`"),
            (r#"@requires_review"#, "`@approval`"),
            (r#"@hitl("true")"#, "`@approval`"),
            (r#"@human_in_the_loop"#, "`@approval`"),
            (r#"@requires_confirmation"#, "`@approval`"),
            (r#"@sign_off("required")"#, "`@approval`"),
            (r#"@hold("true")"#, "`@approval`"),
            (r#"@gate("approval")"#, "`@approval`"),
            (r#"@required("approval")"#, "`@approval`"),
            (r#"@requirement("human review")"#, "`@approval`"),
            // By name, whatever the value: nouns, groups, levels, other words for a person
            // deciding.
            (r#"@approval_by("security")"#, "`@approval`"),
            (r#"@approval_group("finance")"#, "`@approval`"),
            (r#"@approvals_from("finance")"#, "`@approval`"),
            (r#"@reviewer("security")"#, "`@approval`"),
            (r#"@reviewers("security")"#, "`@approval`"),
            (r#"@review_by("security")"#, "`@approval`"),
            (r#"@sign_off_by("cfo")"#, "`@approval`"),
            (r#"@signoff("cfo")"#, "`@approval`"),
            (r#"@gate("security")"#, "`@approval`"),
            (r#"@hold("finance")"#, "`@approval`"),
            (r#"@approval_level("2")"#, "`@approval`"),
            (r#"@approval_workflow("payments")"#, "`@approval`"),
            (r#"@four_eyes("true")"#, "`@approval`"),
            (r#"@two_person_rule"#, "`@approval`"),
            (r#"@dual_control"#, "`@approval`"),
            (r#"@maker_checker"#, "`@approval`"),
            (r#"@requires_consent"#, "`@approval`"),
            (r#"@human_oversight("required")"#, "`@approval`"),
            (r#"@wait_for("approval")"#, "`@approval`"),
            (r#"@requires_authorization"#, "`@approval`"),
            (r#"@confirm_by("security")"#, "`@approval`"),
            (r#"@security_review("on file")"#, "`@approval`"),
            (r#"@ID("x")"#, "`@id`"),
        ];
        for (annotations, meant) in misspelt {
            let err = rule(&format!("{annotations} {permit}")).expect_err(annotations);
            assert!(
                err.contains("is not an annotation tenant-proxy reads") && err.contains(meant),
                "{annotations}: {err}"
            );
        }
        // On a permit, the metadata names and `x_` names are free, and nothing else: any other
        // name might be a hold under a wording no list foresees.
        for free in [
            r#"@owner("payments-team")"#,
            r#"@ticket("SEC-123")"#,
            r#"@reviewed_by("alice")"#,
            r#"@description("payments need a person's approval upstream")"#,
            r#"@approved_by("alice")"#,
            r#"@approval("required") @rationale("wire transfers")"#,
            r#"@x_gate("canary")"#,
            r#"@x_requires_approval("true")"#,
            r#"@x_review_cycle("quarterly")"#,
        ] {
            let got = rule(&format!("{free} {permit}"));
            assert!(got.is_ok(), "{free}: {got:?}");
        }
        for held_or_not in [
            r#"@requires_approval"#,
            r#"@block_until_approved"#,
            r#"@four_eyes("true")"#,
            r#"@change_requires_approval("true")"#,
            r#"@approval_status("required")"#,
            r#"@human_gate("true")"#,
            r#"@ask_human"#,
            r#"@requires_authorisation("manager")"#,
            r#"@idea("x")"#,
            r#"@approval("required") @approver_team("security")"#,
        ] {
            let err = rule(&format!("{held_or_not} {permit}")).expect_err(held_or_not);
            assert!(
                err.contains("is not an annotation tenant-proxy reads")
                    && err.contains("@approval(\"required\")")
                    && err.contains("`@x_"),
                "{held_or_not}: {err}"
            );
        }
        // A forbid never allows: any annotation of its own is free there.
        let forbid = r#"forbid (principal, action == TenantProxy::Action::"http", resource);"#;
        for free in [
            r#"@idea("x")"#,
            r#"@legal_hold("yes")"#,
            r#"@review_cycle("q")"#,
        ] {
            let got = rule(&format!("{free} {forbid}"));
            assert!(got.is_ok(), "{free}: {got:?}");
        }
    }

    #[test]
    fn required_rules_win_and_combine_strictly() {
        let required = |t: u64, g: &str, mode| ApprovalRule {
            shadow: false,
            timeout: Some(Duration::from_secs(t)),
            approvers: vec![g.into()],
            mode,
        };
        let shadow = ApprovalRule {
            shadow: true,
            timeout: Some(Duration::from_secs(1)),
            approvers: vec!["x".into()],
            mode: HoldMode::Poll,
        };
        let a = required(600, "finance", HoldMode::Wait);
        let b = required(60, "ops", HoldMode::Wait);
        let need = combine([("a", &a), ("s", &shadow), ("b", &b)]).expect("held");
        assert!(!need.shadow);
        assert_eq!(need.timeout, Some(Duration::from_secs(60)));
        assert_eq!(need.approvers, vec!["finance".to_string(), "ops".into()]);
        assert_eq!(
            need.mode,
            HoldMode::Wait,
            "the shadow rule's mode does not apply"
        );
        assert_eq!(need.policy_ids, vec!["a".to_string(), "b".into()]);
        let only_shadow = combine([("s", &shadow)]).expect("counted");
        assert!(only_shadow.shadow);
        assert_eq!(combine(std::iter::empty()), None);
    }
}
