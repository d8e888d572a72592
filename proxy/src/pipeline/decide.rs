//! The policy questions one request or tunnel is asked, built and put the same way for the
//! running proxy and for `tenant-proxy policy explain`: the `http` or `connect` question (and
//! the shadow set's answer), every MCP tool, resource and prompt the body uses, and every
//! `$CRED{}` handle it carries (`use_credential`).

use std::time::Instant;

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::context::TenantContext;
use crate::credentials::apply::{AccessTokens, Applied, CredentialDeny, RequestParts};
use crate::credentials::binding::{Position, Target};
use crate::credentials::Credential;
use crate::error::Deny;
use crate::mcp::{McpExchange, McpRefusal};
use crate::metrics::METRICS;
use crate::policy::shadow::ShadowDecision;
use crate::policy::{
    ConnectFacts, ConnectQuestion, CredentialFacts, Decision, HttpRequestFacts, ItemKind, McpFacts,
    PolicyEngine,
};
use crate::snapshot::Snapshot;
use crate::target::Destination;

/// What a "decide only" caller wants to see of the questions asked along the way (`policy
/// explain`). The proxy itself watches nothing: `()`.
pub trait Observer: Send {
    /// The `http` action's context a request was decided with.
    fn facts(&mut self, _facts: &HttpRequestFacts<'_>) {}
    /// A `use_credential` question and its answer.
    fn credential_use(&mut self, _name: &str, _position: Position, _decision: &Decision) {}
    /// A question about one MCP tool, resource or prompt, and its answer.
    fn mcp_item(&mut self, _server: &str, _item: ItemKind, _name: &str, _decision: &Decision) {}
}

impl Observer for () {}

/// Where the MCP check records what it decided: the request's decision (joined or replaced),
/// the shadow set's answer (folded), and the exchange (what the body uses).
#[derive(Debug)]
pub struct McpTrail<'a> {
    /// The request's enforced decision.
    pub decision: &'a mut Option<Decision>,
    /// The shadow set's answer.
    pub shadow: &'a mut Option<ShadowDecision>,
    /// What the body uses.
    pub exchange: &'a mut Option<McpExchange>,
}

/// Everything the questions about one HTTP request are asked with.
#[derive(Debug)]
pub struct Asking<'a> {
    /// The configuration the request is admitted under.
    pub snapshot: &'a Snapshot,
    /// Who is asking.
    pub tenant: &'a TenantContext,
    /// Where the request goes.
    pub destination: &'a Destination,
    /// The method (the MCP check reads it too).
    pub method: &'a http::Method,
    /// The `http` action's context.
    pub facts: HttpRequestFacts<'a>,
}

impl<'a> Asking<'a> {
    /// The questions about a request of `tenant` to `destination`, at unix second `now`.
    pub fn new(
        snapshot: &'a Snapshot,
        tenant: &'a TenantContext,
        destination: &'a Destination,
        method: &'a http::Method,
        model: Option<&'a str>,
        now: i64,
    ) -> Self {
        let (hour, weekday) = snapshot.tenants.local_clock(&tenant.tenant, now);
        let facts = HttpRequestFacts {
            scheme: destination.scheme.as_str(),
            host: &destination.host,
            port: destination.port,
            method: method.as_str(),
            path: destination.audit_path.split('?').next().unwrap_or("/"),
            model,
            provider: crate::usage::providers::registry::provider_of(destination),
            run_signed: tenant.run.signed,
            scopes: &tenant.scopes,
            route: destination.route.as_deref(),
            destination_region: snapshot.tenants.destination_region(destination),
            hour,
            weekday,
        };
        Self {
            snapshot,
            tenant,
            destination,
            method,
            facts,
        }
    }

    /// The `http` question (timed; evaluation errors logged, and they deny), with the shadow
    /// set's answer when one is configured (asked after, never changing it).
    pub fn http(&self) -> (Decision, Option<ShadowDecision>) {
        let started = Instant::now();
        let (tenant, workload) = (&self.tenant.tenant, &self.tenant.workload);
        let decision = self
            .snapshot
            .policy
            .authorize_http(tenant, workload, &self.facts);
        METRICS
            .policy_eval_duration
            .observe(started.elapsed().as_secs_f64());
        if !decision.errors.is_empty() {
            // A request can be shaped to make a policy error as often as the caller likes:
            // sampled per tenant.
            if let Some(suppressed) = crate::logging::sample_line(
                crate::logging::LineKey::Tenant(tenant.as_str()),
                "policy_eval_errors",
            ) {
                tracing::warn!(request_id = %self.tenant.request_id, tenant = %tenant, errors = ?decision.errors, suppressed, "policy evaluation errors; denying");
            }
        }
        let shadow = self.snapshot.shadow_policy.as_ref().map(|shadow| {
            ShadowDecision::compare(
                &decision,
                shadow.authorize_http(tenant, workload, &self.facts),
            )
        });
        (decision, shadow)
    }

    /// One question to `policy`: may this workload use this tool, resource or prompt of
    /// `server`?
    pub fn mcp_item(
        &self,
        policy: &PolicyEngine,
        server: &str,
        item: ItemKind,
        name: &str,
    ) -> Decision {
        let facts = McpFacts {
            server,
            item,
            name,
            http: &self.facts,
        };
        policy.authorize_mcp(&self.tenant.tenant, &self.tenant.workload, &facts)
    }

    /// For a request to MCP server `server`: reads its JSON-RPC body and decides every tool,
    /// resource and prompt it uses. A malformed body or one denial refuses the whole request.
    /// The allow decisions' policy ids join the `http` decision's; a denial replaces it. The
    /// shadow set's answer about the items is folded into its answer about the request.
    pub fn mcp(
        &self,
        server: &str,
        upgrade: bool,
        body: Option<&[u8]>,
        trail: McpTrail<'_>,
        observer: &mut dyn Observer,
    ) -> Result<(), Deny> {
        let McpTrail {
            decision,
            shadow,
            exchange: out,
        } = trail;
        let method = self.method;
        let mut decide = |item: ItemKind, name: &str| {
            let d = self.mcp_item(&self.snapshot.policy, server, item, name);
            observer.mcp_item(server, item, name, &d);
            d
        };
        let enforced = crate::mcp::admit(server, method, upgrade, body, &mut decide);
        if let Some(shadow_items) = self.mcp_shadow(server, upgrade, body) {
            fold_shadow(shadow, enforced.is_ok(), shadow_items);
        }
        let tenant_label = self.tenant.tenant.as_str();
        match enforced {
            Ok((exchange, decisions)) => {
                if let Some(d) = decision.as_mut() {
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
                *out = Some(exchange);
                Ok(())
            }
            Err(refusal) => {
                let deny = Deny::from(&refusal);
                let mut exchange = McpExchange::refused(server);
                if let McpRefusal::Denied {
                    item,
                    name,
                    decision: denied,
                } = refusal
                {
                    if !denied.errors.is_empty() {
                        if let Some(suppressed) = crate::logging::sample_line(
                            crate::logging::LineKey::Tenant(self.tenant.tenant.as_str()),
                            "mcp_policy_eval_errors",
                        ) {
                            tracing::warn!(request_id = %self.tenant.request_id, tenant = %self.tenant.tenant, errors = ?denied.errors, suppressed, "policy evaluation errors on an MCP request; denying");
                        }
                    }
                    let (metric_kind, list) = match item {
                        ItemKind::Tool => (None, &mut exchange.tools_called),
                        ItemKind::Resource => (Some("resource"), &mut exchange.resources_read),
                        ItemKind::Prompt => (Some("prompt"), &mut exchange.prompts_got),
                    };
                    match metric_kind {
                        None => METRICS
                            .mcp_tool_calls
                            .with_label_values(&[tenant_label, "deny"])
                            .inc(),
                        Some(kind) => METRICS
                            .mcp_decisions
                            .with_label_values(&[tenant_label, kind, "deny"])
                            .inc(),
                    }
                    list.push(name);
                    *decision = Some(denied);
                }
                *out = Some(exchange);
                Err(deny)
            }
        }
    }

    /// What the shadow set, when configured, would decide about what an MCP request uses:
    /// allowed (with the permits' ids) or its first denial. `None` without a shadow set or for
    /// a malformed body (refused whatever the policies say).
    fn mcp_shadow(&self, server: &str, upgrade: bool, body: Option<&[u8]>) -> Option<Decision> {
        let shadow = self.snapshot.shadow_policy.as_ref()?;
        let mut decide = |item: ItemKind, name: &str| self.mcp_item(shadow, server, item, name);
        match crate::mcp::admit(server, self.method, upgrade, body, &mut decide) {
            Ok((_, decisions)) => Some(Decision {
                allowed: true,
                policy_ids: decisions.into_iter().flat_map(|d| d.policy_ids).collect(),
                errors: Vec::new(),
            }),
            Err(McpRefusal::Denied { decision, .. }) => Some(decision),
            Err(McpRefusal::Malformed(_)) => None,
        }
    }

    /// Resolves `$CRED{}` handles in the caller's tenant scope, after the request itself was
    /// allowed: every handle must be known, unexpired, in an allowed position, bound to this
    /// destination and permitted by policy (`use_credential`). `decoded`: the body was decoded
    /// from its `Content-Encoding` (and is scanned, and sent, decoded). Token credentials'
    /// handles become their tokens in `tokens` (one missing: [`CredentialDeny::TokenNeeded`]).
    pub fn credentials(
        &self,
        req: &RequestHeader,
        body: Option<&Bytes>,
        decoded: bool,
        tokens: &AccessTokens,
        observer: &mut dyn Observer,
    ) -> Result<Applied, CredentialDeny> {
        let facts = &self.facts;
        let parts = RequestParts {
            target: Target {
                scheme: facts.scheme,
                host: facts.host,
                port: facts.port,
                path: facts.path,
                method: facts.method,
            },
            raw_target: req.raw_path(),
            authority: req.uri.authority().map(|a| a.as_str()),
            headers: &req.headers,
            path_and_query: &self.destination.upstream_path,
            body,
            // One line at most (a second was refused with the request's other headers).
            content_type: crate::header_names::sole(&req.headers, http::header::CONTENT_TYPE)
                .ok()
                .flatten()
                .and_then(|v| v.to_str().ok()),
            // SECURITY: every line of it, as the upstream reads them all.
            encoded: !decoded && crate::header_names::content_coded(&req.headers),
        };
        let mut authorize_use = |cred: &Credential, position: Position| {
            let use_facts = CredentialFacts {
                name: &cred.name,
                position: position.as_str(),
                http: facts,
            };
            let decision = self.snapshot.policy.authorize_credential(
                &self.tenant.tenant,
                &self.tenant.workload,
                &use_facts,
            );
            observer.credential_use(&cred.name, position, &decision);
            decision.allowed
        };
        crate::credentials::apply::apply(
            &self.snapshot.credentials,
            &self.snapshot.tenants.credential_settings,
            &self.tenant.tenant,
            &parts,
            crate::clock::unix_now(),
            tokens,
            &mut authorize_use,
        )
    }
}

/// The call's `http` decision (`decision`, its model's, as `asking` put it) with every other
/// model the call uses decided as its model is: one the policy refuses refuses the call, and
/// the permits that allowed them join the decision's.
pub fn with_other_models(
    asking: &Asking<'_>,
    mut decision: Decision,
    other_models: &[String],
    now: i64,
) -> Decision {
    if !decision.allowed {
        return decision;
    }
    for other in other_models {
        let (d, _) = Asking::new(
            asking.snapshot,
            asking.tenant,
            asking.destination,
            asking.method,
            Some(other),
            now,
        )
        .http();
        if !d.allowed {
            return d;
        }
        decision.policy_ids.extend(d.policy_ids);
    }
    decision.policy_ids.sort_unstable();
    decision.policy_ids.dedup();
    decision
}

/// The `connect` (or `connect_opaque`) question for a tunnel of `tenant` to `host:port`, with
/// the shadow set's answer to it.
pub fn connect(
    snapshot: &Snapshot,
    tenant: &TenantContext,
    host: &str,
    port: u16,
    question: ConnectQuestion,
    now: i64,
) -> (Decision, Option<ShadowDecision>) {
    let (hour, weekday) = snapshot.tenants.local_clock(&tenant.tenant, now);
    let facts = ConnectFacts {
        host,
        port,
        run_signed: tenant.run.signed,
        scopes: &tenant.scopes,
        destination_region: snapshot.tenants.regions.region_of(host),
        hour,
        weekday,
    };
    let (t, w) = (&tenant.tenant, &tenant.workload);
    let decision = snapshot.policy.authorize_connect(t, w, question, &facts);
    let shadow = snapshot.shadow_policy.as_ref().map(|shadow| {
        ShadowDecision::compare(&decision, shadow.authorize_connect(t, w, question, &facts))
    });
    (decision, shadow)
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
