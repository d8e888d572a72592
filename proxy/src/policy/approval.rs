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

/// Refuses an annotation that looks meant for one tenant-proxy reads: its name a near miss of
/// one (`@Approval`, `@approver`, `@aproval_timeout`, `@approvalMode`, `@ID`); a name about a
/// person deciding that neither records nor waives one, unless its value declines
/// (`@requires_approval`, `@approval_by("x")`: see [`meant_annotation`]); a requirement, gate
/// or hold naming one; beside `@approval`, a name about a hold's timeout, mode or approvers
/// (`@timeout("1m")`, `@reviewers("x")`). Names starting `x_` are the team's own.
///
/// SECURITY: Cedar accepts any annotation and the proxy ignores those it does not read, so a
/// misspelt `@approval` would leave its permit allowing at once, and a misspelt `@approvers`
/// would let any approver of the tenant decide: a hold that silently never happens. Other
/// annotations (`@owner`, `@ticket`, `@approved_by`) stay free.
fn check_annotation_names(policy: &Policy) -> Result<(), String> {
    let marked = policy.annotation("approval").is_some();
    for (name, value) in policy.annotations() {
        if READ_ANNOTATIONS.contains(&name) {
            continue;
        }
        if let Some(meant) = meant_annotation(name, value, marked) {
            return Err(format!(
                "`@{name}` is not an annotation tenant-proxy reads: did you mean `@{meant}`? (annotation names are exact; a misspelt approval annotation would leave the permit without the hold it asks for; name an annotation of your own `@x_{name}` to keep it)"
            ));
        }
    }
    Ok(())
}

/// The annotation `@name(value)` looks meant for, if any (see [`check_annotation_names`]).
fn meant_annotation(name: &str, value: &str, marked: bool) -> Option<&'static str> {
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
    // A name about a person deciding (approval, review, sign-off, confirmation, consent, four
    // eyes, a human in the loop) is the hold's, whatever its value, unless it records one or
    // waives it: past tense (`@approved_by`, `@reviewed`), a record's suffix
    // (`@approval_ticket`, `@review_date`, `@change_approval_id`), a waiver
    // (`@approval_exempt`, `@preapproved`, `@no_review`). By name, not value: a value can say
    // anything.
    let about_deciding = [
        "approv",
        "aprov",
        "review",
        "signoff",
        "hitl",
        "humanintheloop",
        "confirm",
        "consent",
        "foureyes",
        "dualcontrol",
        "makerchecker",
        "twoperson",
        "oversight",
    ]
    .iter()
    .any(|a| bare.contains(a));
    let value = value.trim().to_ascii_lowercase();
    // What says no: the only values a name asking for a person may carry and still load.
    let declines = matches!(
        value.as_str(),
        "false" | "no" | "n" | "0" | "off" | "never" | "none" | "disabled" | "optional"
    );
    if about_deciding && !records_or_waives(&snake_case(name), &bare) && !declines {
        return Some("approval");
    }
    // A requirement, gate or hold that names a person deciding (`@requires("approval")`,
    // `@gate("human review")`, `@wait_for("sign-off")`), and a gate or hold that is set at all
    // (`@hold("finance")`, `@gate("true")`).
    let requirement = [
        "requires",
        "require",
        "required",
        "requirement",
        "needs",
        "need",
        "must",
        "waitfor",
        "gate",
        "hold",
    ]
    .contains(&bare.as_str());
    let names_deciding = [
        "approv", "aprov", "review", "sign-off", "signoff", "human", "person", "consent",
        "confirm", "authoriz",
    ]
    .iter()
    .any(|a| value.contains(a));
    let set = ["gate", "hold"].contains(&bare.as_str()) && !declines;
    if requirement && (names_deciding || set) {
        return Some("approval");
    }
    // A name that requires a person by another word (`@requires_authorization`,
    // `@needs_human`).
    let requires = ["requir", "need", "must"].iter().any(|r| bare.contains(r));
    let person = ["authoriz", "human", "person", "manual"]
        .iter()
        .any(|a| bare.contains(a));
    if requires && person && !declines {
        return Some("approval");
    }

    None
}

/// `name` in snake case: camel case split (`approvalStatus` is `approval_status`), `-` as `_`,
/// lower case.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_lowercase()
        });
    }
    out
}

/// Whether an annotation named about a person deciding only records one or waives it (see
/// [`meant_annotation`]): `folded` is the name lower-cased with `_` separators, `bare` without
/// them.
fn records_or_waives(folded: &str, bare: &str) -> bool {
    const PAST: [&str; 5] = [
        "approved",
        "reviewed",
        "confirmed",
        "signedoff",
        "consented",
    ];
    const RECORDS: [&str; 22] = [
        "_at",
        "_on",
        "_date",
        "_time",
        "_id",
        "_ticket",
        "_status",
        "_state",
        "_notes",
        "_note",
        "_comment",
        "_comments",
        "_reference",
        "_ref",
        "_number",
        "_rate",
        "_year",
        "_doc",
        "_link",
        "_url",
        "_owner",
        "_team",
    ];
    const WAIVERS: [&str; 5] = ["exempt", "skip", "waive", "disapprov", "optional"];
    PAST.iter().any(|p| bare.contains(p))
        || RECORDS.iter().any(|r| folded.ends_with(r))
        || WAIVERS.iter().any(|w| bare.contains(w))
        // A change-management record (`@change_approval("CAB-1234")`).
        || ["no", "pre", "auto", "non", "change"]
            .iter()
            .any(|p| bare.starts_with(p))
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
        // Annotations of the authors' own stay free.
        for free in [
            r#"@owner("payments-team")"#,
            r#"@ticket("SEC-123")"#,
            r#"@reviewed_by("alice")"#,
            r#"@description("stripe writes")"#,
            r#"@idea("x")"#,
            r#"@approved_by("alice")"#,
            r#"@approved("2026-12-01")"#,
            r#"@approval_ticket("SEC-9")"#,
            r#"@approvalStatus("reviewed")"#,
            r#"@timeout("1m")"#,
            r#"@approval("required") @model("gpt-4o")"#,
            r#"@approval("required") @rollout_mode("canary")"#,
            r#"@approval("required") @owner_group("payments")"#,
            r#"@preapproved("true")"#,
            r#"@no_approval("true")"#,
            r#"@auto_approve("true")"#,
            r#"@approval_exempt("yes")"#,
            r#"@approved("yes")"#,
            r#"@security_approved("true")"#,
            r#"@approved"#,
            r#"@requires_approval("false")"#,
            r#"@human_review("optional")"#,
            r#"@disapproval_rate("1")"#,
            r#"@reviewed_by("bob")"#,
            r#"@review_date("2026-12-01")"#,
            r#"@hold_reason("incident 42")"#,
            r#"@x_gate("canary")"#,
            r#"@x_requires_approval("true")"#,
            r#"@change_approval("48213")"#,
            r#"@approval_ticket("4521")"#,
            r#"@approval_id("77")"#,
            r#"@review_id("42")"#,
            r#"@review_date("20250115")"#,
            r#"@review_year("2025")"#,
            r#"@confirmation_number("98765")"#,
            r#"@approval_rate("5")"#,
            r#"@review_status("ongoing")"#,
            r#"@review_owner("oncall-security")"#,
            r#"@reviewer_team("onboarding")"#,
            r#"@review_notes("need to revisit in Q3")"#,
            r#"@review_comment("human resources data")"#,
            r#"@review_doc("requirements.md")"#,
            r#"@approval_reference("true-up contract")"#,
            r#"@reviewedAt("2025-01-01")"#,
            r#"@confirmed_by("alice")"#,
            r#"@requires("python-3.12")"#,
            r#"@description("payments need a person's approval upstream")"#,
        ] {
            let got = rule(&format!("{free} {permit}"));
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
