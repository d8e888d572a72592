//! Cedar authorization.
//!
//! The policy directory holds `schema.cedarschema`, `global/*.cedar` (every tenant) and
//! `tenants/<tenant>/*.cedar` (that tenant only). [`PolicyEngine::load`] parses and strictly
//! validates everything once, then builds per tenant one policy set (global + its own) and one
//! entity store (the tenant and its workloads). A request only builds its `Request` value: no
//! parsing on the hot path, and one tenant's policies are never evaluated for another's calls.

mod load;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression,
};

use crate::ids::{TenantId, WorkloadId};

/// The Cedar namespace of the schema.
pub const NAMESPACE: &str = "TenantProxy";

/// A tenant as the policy engine sees it.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    /// Id.
    pub id: TenantId,
    /// Plan (`principal.tenant.plan`).
    pub plan: String,
    /// Region (`principal.tenant.region`).
    pub region: String,
    /// Workloads.
    pub workloads: Vec<WorkloadId>,
}

/// What a policy may ask about an HTTP request.
#[derive(Debug, Clone)]
pub struct HttpRequestFacts<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Lowercase host.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Method.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Model named by the JSON body.
    pub model: Option<&'a str>,
    /// Whether the run id was signed.
    pub run_signed: bool,
    /// Scopes from the token.
    pub scopes: &'a [String],
    /// Route name in route mode.
    pub route: Option<&'a str>,
}

/// What a policy may ask about a credential use.
#[derive(Debug, Clone)]
pub struct CredentialFacts<'a> {
    /// Credential name.
    pub name: &'a str,
    /// Where it appears: `header`, `query`, `body`.
    pub position: &'a str,
    /// The request's destination and method.
    pub http: &'a HttpRequestFacts<'a>,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True only for Allow without any evaluation error.
    pub allowed: bool,
    /// Ids of the deciding policies, sorted.
    pub policy_ids: Vec<String>,
    /// Evaluation errors (any of them denies).
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with(error: impl Into<String>) -> Self {
        Self {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![error.into()],
        }
    }
}

/// A problem found while loading policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location(*line, *column))]
pub struct PolicyProblem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// Cedar's diagnostic text.
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

struct TenantPolicies {
    policies: PolicySet,
    entities: Entities,
    principals: HashMap<WorkloadId, EntityUid>,
}

/// Compiled policies for every tenant.
pub struct PolicyEngine {
    tenants: HashMap<TenantId, TenantPolicies>,
    action_http: EntityUid,
    action_use_credential: EntityUid,
    destination_type: EntityTypeName,
    credential_type: EntityTypeName,
    authorizer: Authorizer,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: HashMap<&str, usize> = self
            .tenants
            .iter()
            .map(|(t, p)| (t.as_str(), p.policies.policies().count()))
            .collect();
        f.debug_struct("PolicyEngine")
            .field("policies_per_tenant", &counts)
            .finish()
    }
}

impl PolicyEngine {
    /// Loads, validates and compiles the policy directory for `tenants`; returns every problem.
    pub fn load(dir: &Path, tenants: &[TenantInfo]) -> Result<PolicyEngine, Vec<PolicyProblem>> {
        load::load(dir, tenants)
    }

    /// Decides action `http`. Default deny; any evaluation error denies.
    pub fn authorize_http(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        facts: &HttpRequestFacts<'_>,
    ) -> Decision {
        let resource = EntityUid::from_type_name_and_id(
            self.destination_type.clone(),
            EntityId::new(facts.host),
        );
        self.decide(
            tenant,
            workload,
            &self.action_http,
            resource,
            http_context(facts),
        )
    }

    /// Decides action `use_credential` for credential `facts.name` of `tenant`.
    pub fn authorize_credential(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        facts: &CredentialFacts<'_>,
    ) -> Decision {
        let resource = EntityUid::from_type_name_and_id(
            self.credential_type.clone(),
            EntityId::new(facts.name),
        );
        let mut context = request_pairs(facts.http);
        context.push((
            "position".to_string(),
            RestrictedExpression::new_string(facts.position.to_string()),
        ));
        self.decide(
            tenant,
            workload,
            &self.action_use_credential,
            resource,
            context,
        )
    }

    fn decide(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        action: &EntityUid,
        resource: EntityUid,
        context: Vec<(String, RestrictedExpression)>,
    ) -> Decision {
        // SECURITY: a tenant or workload missing from the compiled set has no policies: deny.
        let Some(t) = self.tenants.get(tenant) else {
            return Decision::deny_with("unknown tenant");
        };
        let Some(principal) = t.principals.get(workload) else {
            return Decision::deny_with("unknown workload");
        };
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => return Decision::deny_with(e.to_string()),
        };
        let request = match Request::new(principal.clone(), action.clone(), resource, context, None)
        {
            Ok(r) => r,
            Err(e) => return Decision::deny_with(e.to_string()),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &t.policies, &t.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        let mut policy_ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        policy_ids.sort();
        // SECURITY: Cedar skips policies whose evaluation errors, so an erroring `forbid` would
        // not deny. Treat any error as a denial.
        let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
        Decision {
            allowed,
            policy_ids,
            errors,
        }
    }

    /// Number of policies that apply to `tenant`.
    pub fn policy_count(&self, tenant: &TenantId) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |t| t.policies.policies().count())
    }
}

/// The context fields every action shares: destination and method.
fn request_pairs(f: &HttpRequestFacts<'_>) -> Vec<(String, RestrictedExpression)> {
    vec![
        (
            "scheme".to_string(),
            RestrictedExpression::new_string(f.scheme.to_string()),
        ),
        (
            "host".to_string(),
            RestrictedExpression::new_string(f.host.to_string()),
        ),
        (
            "port".to_string(),
            RestrictedExpression::new_long(i64::from(f.port)),
        ),
        (
            "method".to_string(),
            RestrictedExpression::new_string(f.method.to_string()),
        ),
        (
            "path".to_string(),
            RestrictedExpression::new_string(f.path.to_string()),
        ),
    ]
}

fn http_context(f: &HttpRequestFacts<'_>) -> Vec<(String, RestrictedExpression)> {
    let mut pairs = request_pairs(f);
    pairs.extend([
        (
            "run_signed".to_string(),
            RestrictedExpression::new_bool(f.run_signed),
        ),
        (
            "scopes".to_string(),
            RestrictedExpression::new_set(
                f.scopes
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
    ]);
    if let Some(m) = f.model {
        pairs.push((
            "model".to_string(),
            RestrictedExpression::new_string(m.to_string()),
        ));
    }
    if let Some(r) = f.route {
        pairs.push((
            "route".to_string(),
            RestrictedExpression::new_string(r.to_string()),
        ));
    }
    pairs
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
