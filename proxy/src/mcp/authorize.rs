//! The policy side of MCP scoping, called by the request pipeline: which server a request goes
//! to, the Cedar question for every tool, resource and prompt its body uses (enforced and, when
//! configured, shadow), and the question for every item a list result shows.

use pingora::http::RequestHeader;

use super::jsonrpc::ItemKind;
use super::{McpExchange, McpRefusal};
use crate::context::TenantContext;
use crate::ctx::RequestCtx;
use crate::error::Deny;
use crate::metrics::METRICS;
use crate::policy::shadow::ShadowDecision;
use crate::policy::{Decision, HttpRequestFacts, McpFacts, PolicyEngine};
use crate::snapshot::Snapshot;

/// For a request to an MCP server (`server`, found by [`crate::mcp::config::McpSettings::server_for`]):
/// reads its JSON-RPC body and decides every tool, resource and prompt it uses. A malformed body
/// or one denial refuses the whole request. The allow decisions' policy ids join the `http`
/// decision's in the audit record; a denial's replace them.
pub(crate) fn authorize(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    server: &str,
    facts: &HttpRequestFacts<'_>,
    method: &http::Method,
    ctx: &mut RequestCtx,
) -> Result<(), Deny> {
    let body = ctx.body.as_ref().map(|b| b.0.as_ref());
    let mut decide =
        |item: ItemKind, name: &str| ask(&snapshot.policy, tenant, server, item, name, facts);
    let enforced = super::admit(server, method, body, &mut decide);
    if let Some(shadow_items) = shadow(snapshot, tenant, server, facts, method, body) {
        fold_shadow(&mut ctx.shadow, enforced.is_ok(), shadow_items);
    }
    let tenant_label = tenant.tenant.as_str();
    match enforced {
        Ok((exchange, decisions)) => {
            if let Some(d) = ctx.decision.as_mut() {
                d.policy_ids
                    .extend(decisions.into_iter().flat_map(|t| t.policy_ids));
                d.policy_ids.sort_unstable();
                d.policy_ids.dedup();
            }
            METRICS
                .mcp_tool_calls
                .with_label_values(&[tenant_label, "allow"])
                .inc_by(exchange.tools_called.len() as u64);
            for (kind, n) in [
                ("resource", exchange.resources_read.len()),
                ("prompt", exchange.prompts_got.len()),
            ] {
                if n > 0 {
                    METRICS
                        .mcp_decisions
                        .with_label_values(&[tenant_label, kind, "allow"])
                        .inc_by(n as u64);
                }
            }
            ctx.mcp = Some(exchange);
            Ok(())
        }
        Err(refusal) => {
            let deny = Deny::from(&refusal);
            let mut exchange = McpExchange::refused(server);
            if let McpRefusal::Denied {
                item,
                name,
                decision,
            } = refusal
            {
                if !decision.errors.is_empty() {
                    tracing::warn!(request_id = %tenant.request_id, tenant = %tenant.tenant, errors = ?decision.errors, "policy evaluation errors on an MCP request; denying");
                }
                match item {
                    ItemKind::Tool => {
                        METRICS
                            .mcp_tool_calls
                            .with_label_values(&[tenant_label, "deny"])
                            .inc();
                        exchange.tools_called.push(name);
                    }
                    ItemKind::Resource => {
                        METRICS
                            .mcp_decisions
                            .with_label_values(&[tenant_label, "resource", "deny"])
                            .inc();
                        exchange.resources_read.push(name);
                    }
                    ItemKind::Prompt => {
                        METRICS
                            .mcp_decisions
                            .with_label_values(&[tenant_label, "prompt", "deny"])
                            .inc();
                        exchange.prompts_got.push(name);
                    }
                }
                ctx.decision = Some(decision);
            }
            ctx.mcp = Some(exchange);
            Err(deny)
        }
    }
}

/// One question to `policy`: may this workload use this tool, resource or prompt of `server`?
pub(crate) fn ask(
    policy: &PolicyEngine,
    tenant: &TenantContext,
    server: &str,
    item: ItemKind,
    name: &str,
    http: &HttpRequestFacts<'_>,
) -> Decision {
    let facts = McpFacts {
        server,
        item,
        name,
        http,
    };
    policy.authorize_mcp(&tenant.tenant, &tenant.workload, &facts)
}

/// Whether a list result may show this item to the request's workload: the same decision a
/// use of it would get. Anything missing denies.
pub(crate) fn item_allowed(
    ctx: &RequestCtx,
    req: &RequestHeader,
    item: ItemKind,
    name: &str,
) -> bool {
    let (Some(snapshot), Some(tenant), Some(destination), Some(exchange)) = (
        ctx.snapshot.as_ref(),
        ctx.tenant.as_ref(),
        ctx.destination.as_ref(),
        ctx.mcp.as_ref(),
    ) else {
        return false;
    };
    let now = crate::clock::unix_now_i64();
    let http = crate::proxy::http_facts(snapshot, tenant, destination, req, None, now);
    ask(
        &snapshot.policy,
        tenant,
        &exchange.server,
        item,
        name,
        &http,
    )
    .allowed
}

/// What the shadow set, when configured, would decide about what an MCP request uses: allowed
/// (with the permits' ids) or its first denial. `None` without a shadow set or for a malformed
/// body (refused whatever the policies say).
fn shadow(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    server: &str,
    facts: &HttpRequestFacts<'_>,
    method: &http::Method,
    body: Option<&[u8]>,
) -> Option<Decision> {
    let shadow = snapshot.shadow_policy.as_ref()?;
    let mut decide = |item: ItemKind, name: &str| ask(shadow, tenant, server, item, name, facts);
    match super::admit(server, method, body, &mut decide) {
        Ok((_, decisions)) => Some(Decision {
            allowed: true,
            policy_ids: decisions.into_iter().flat_map(|d| d.policy_ids).collect(),
            errors: Vec::new(),
        }),
        Err(McpRefusal::Denied { decision, .. }) => Some(decision),
        Err(McpRefusal::Malformed(_)) => None,
    }
}

/// Folds the shadow set's answer about an MCP request's tools, resources and prompts into its
/// answer about the request (`shadow`, from the `http` question), so the audit record and the
/// metric say what the shadow set would have done with the whole request: it allows only when
/// it allows both. `items_allowed` is the enforced answer about them (`http` was allowed, or
/// the request would not have got this far).
fn fold_shadow(shadow: &mut Option<ShadowDecision>, items_allowed: bool, shadow_items: Decision) {
    let Some(http) = shadow.as_ref() else {
        return;
    };
    let enforced = Decision {
        allowed: items_allowed,
        policy_ids: Vec::new(),
        errors: Vec::new(),
    };
    let whole = if http.decision != "allow" {
        // The shadow set already refused at `http`: that stays its answer.
        Decision {
            allowed: false,
            policy_ids: http.policy_ids.clone(),
            errors: http.errors.clone(),
        }
    } else if shadow_items.allowed {
        let mut policy_ids = http.policy_ids.clone();
        policy_ids.extend(shadow_items.policy_ids);
        policy_ids.sort_unstable();
        policy_ids.dedup();
        Decision {
            allowed: true,
            policy_ids,
            errors: http.errors.clone(),
        }
    } else {
        shadow_items
    };
    *shadow = Some(ShadowDecision::compare(&enforced, whole));
}
