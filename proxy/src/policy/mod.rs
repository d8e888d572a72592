//! Cedar authorization.
//!
//! The policy directory holds `schema.cedarschema`, `global/*.cedar` (every tenant) and
//! `tenants/<tenant>/*.cedar` (that tenant only). [`PolicyEngine::load`] parses and strictly
//! validates everything once and reports every problem with file, line and column. It then builds
//! one policy set per tenant (global + that tenant's own files) and one entity store per tenant
//! (the `Tenant` entity and its `Workload`s). A request builds only its `Request` value: nothing is
//! parsed on the hot path, and one tenant's policies are never evaluated for another tenant.
//!
//! [`PolicyEngine::reload`] builds the next engine from the previous one: a tenant whose inputs
//! (its own files by SHA-256 of their bytes, its configuration, the global files, the schema)
//! are all unchanged keeps its compiled set, shared through an `Arc`; an unchanged tenant
//! directory is not parsed or validated again. Problems, warnings and decisions are those of a
//! full load (`reload_tests.rs` compares them edit by edit).
//!
//! Cedar mapping of one HTTP request:
//!
//! | Cedar | value |
//! |---|---|
//! | principal | `TenantProxy::Workload::"<tenant>/<workload>"` (member of `TenantProxy::Tenant::"<tenant>"`) |
//! | action | `TenantProxy::Action::"http"` |
//! | resource | `TenantProxy::Destination::"<lowercase host>"` |
//! | context | [`HttpRequestFacts`] (`scheme`, `host`, `port`, `method`, `path`, `model?`, `provider?`, `run_signed`, `scopes`, `route?`, `destination_region?`, `hour`, `weekday`) |
//!
//! A request to an MCP server is then asked one question per tool it calls (`mcp_tool_call`,
//! resource `TenantProxy::McpTool`), resource it reads (`mcp_resource`,
//! `TenantProxy::McpResource`) and prompt it gets (`mcp_prompt`, `TenantProxy::McpPrompt`),
//! each with an [`McpFacts`] context; the same questions filter the server's lists.
//!
//! A `CONNECT` tunnel is decided first as action `connect` (may this workload open a tunnel to
//! this host and port?) and, when allowed, as `connect_opaque` (may the tunnel skip
//! interception?). Both take a [`ConnectFacts`] context. Requests inside an intercepted tunnel
//! are then decided one by one as `http`, like any other request.
//!
//! The engine served by the proxy keeps each tenant's answers in a bounded cache (`cache.rs`) inside that
//! tenant's compiled entry ([`PolicyEngine::with_decision_cache`]): keyed by the whole question,
//! dropped with the engine on reload, never holding a decision with an error.
//!
//! Tooling lives beside the engine: [`PolicyEngine::check`] returns warnings as well as problems
//! (`tenant-proxy policy check`), [`testing`] runs the JSON cases kept in `policies/tests/`,
//! [`explain`] answers for a described request through the proxy's own decision path, and
//! [`shadow`] compares a report-only policy set's answers with the enforced ones.

pub mod approval;
mod cache;
mod context_values;
mod load;
pub mod settings;
pub mod shadow;
pub mod testing;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Entities, EntityId,
    EntityTypeName, EntityUid, PolicySet, Request, RestrictedExpression, Schema,
};

use crate::ids::{TenantId, WorkloadId};
use cache::Question;

/// What an MCP request uses, each decided by its own Cedar action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// A tool (`mcp_tool_call`), by name.
    Tool,
    /// A resource (`mcp_resource`), by URI (or URI template, in a list of templates).
    Resource,
    /// A prompt (`mcp_prompt`), by name.
    Prompt,
}

/// The Cedar namespace every schema type and action lives in.
pub const NAMESPACE: &str = "TenantProxy";

/// A tenant as the policy engine sees it (from the tenant configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// Tenant id; also the `TenantProxy::Tenant` entity id.
    pub id: TenantId,
    /// Plan, visible to policies as `principal.tenant.plan`.
    pub plan: String,
    /// Region, visible to policies as `principal.tenant.region`.
    pub region: String,
    /// The tenant's workloads; each becomes `TenantProxy::Workload::"<tenant>/<workload>"`.
    pub workloads: Vec<WorkloadId>,
}

/// What a policy may ask about an HTTP request (the `http` action's context). `Hash` and `Eq`
/// cover every field: the decision cache keys on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpRequestFacts<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Destination host, lowercase, without port (normalized again here: see
    /// [`PolicyEngine::authorize_http`]).
    pub host: &'a str,
    /// Destination port.
    pub port: u16,
    /// Request method, e.g. `POST`.
    pub method: &'a str,
    /// Upstream path without the query.
    pub path: &'a str,
    /// The `model` the JSON request body names, if any.
    pub model: Option<&'a str>,
    /// The LLM provider of the call (`openai`, `bedrock`, `google`, a declared one), if any.
    pub provider: Option<&'a str>,
    /// Whether the run id came from a signed token.
    pub run_signed: bool,
    /// Scopes granted by the workload token (empty for other identities).
    pub scopes: &'a [String],
    /// Route name when the request came through route mode.
    pub route: Option<&'a str>,
    /// The destination's region, when configuration tags it (`[destination_regions]` or the
    /// route's `region`).
    pub destination_region: Option<&'a str>,
    /// The hour (0–23) in the tenant's time zone when the request arrived.
    pub hour: u8,
    /// The weekday (`mon` … `sun`) in the tenant's time zone when the request arrived.
    pub weekday: &'a str,
}

/// What a policy may ask about substituting a credential (the `use_credential` action's context).
#[derive(Debug, Clone, Copy)]
pub struct CredentialFacts<'a> {
    /// Credential name, as in `$CRED{name}`; also the `TenantProxy::Credential` entity id.
    pub name: &'a str,
    /// Where the handle appears: `header`, `query` or `body`.
    pub position: &'a str,
    /// The request the credential would be sent with.
    pub http: &'a HttpRequestFacts<'a>,
}

/// What a policy may ask about a `CONNECT` tunnel (the `connect` and `connect_opaque` actions).
/// `Hash` and `Eq` cover every field: the decision cache keys on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectFacts<'a> {
    /// Host named by the `CONNECT` authority, lowercase.
    pub host: &'a str,
    /// Port named by the `CONNECT` authority.
    pub port: u16,
    /// Whether the run id came from a signed token.
    pub run_signed: bool,
    /// Scopes granted by the workload token (empty for other identities).
    pub scopes: &'a [String],
    /// The destination's region, when configuration tags the host.
    pub destination_region: Option<&'a str>,
    /// The hour (0–23) in the tenant's time zone when the tunnel was asked for.
    pub hour: u8,
    /// The weekday (`mon` … `sun`) in the tenant's time zone.
    pub weekday: &'a str,
}

/// What a policy may ask about one tool, resource or prompt of an MCP server (the context of
/// `mcp_tool_call`, `mcp_resource` and `mcp_prompt`).
#[derive(Debug, Clone, Copy)]
pub struct McpFacts<'a> {
    /// The configured MCP server's name.
    pub server: &'a str,
    /// Which of the three it is; picks the action and the entity type.
    pub item: ItemKind,
    /// The tool's or prompt's name, or the resource's URI, as the request names it; also the
    /// entity id (`context.tool`, `context.prompt` or `context.uri`).
    pub name: &'a str,
    /// The HTTP request that carries it (or the list request whose result is filtered).
    pub http: &'a HttpRequestFacts<'a>,
}

/// The two questions a tunnel asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectQuestion {
    /// May the tunnel be opened at all?
    Open,
    /// May it pass through without interception?
    Opaque,
}

/// An authorization decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True only when Cedar allowed and no policy failed to evaluate.
    pub allowed: bool,
    /// Ids of the policies that decided (the permits for an allow, the forbids for a deny),
    /// sorted.
    pub policy_ids: Vec<String>,
    /// Evaluation errors and lookup failures; any of them denies.
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with(error: String) -> Self {
        Self {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![error],
        }
    }
}

/// A problem found while loading the policy directory, located as precisely as cedar allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location(*line, *column))]
pub struct PolicyProblem {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column in characters, when known.
    pub column: Option<usize>,
    /// What is wrong (cedar's own text for parse and validation errors).
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// The outcome of loading a policy directory: the engine or every problem, and in both cases the
/// warnings (policies that can never apply, confusable identifiers, …), which do not stop a load.
#[derive(Debug)]
pub struct PolicyCheck {
    /// The compiled engine, or every problem found.
    pub result: Result<PolicyEngine, Vec<PolicyProblem>>,
    /// Cedar's validation and schema warnings, located like problems.
    pub warnings: Vec<PolicyProblem>,
}

/// Everything one tenant's requests are evaluated against, built once at load. Immutable: a
/// reload that finds the same inputs (schema, global and own files byte for byte, the tenant's
/// configuration) shares it with the previous engine instead of compiling it again.
struct CompiledTenant {
    policies: PolicySet,
    entities: Entities,
    principals: HashMap<WorkloadId, EntityUid>,
    /// The permits marked `@approval`, by policy id.
    approvals: HashMap<String, approval::ApprovalRule>,
}

/// One tenant's compiled policies and this engine's own cache of its decisions.
struct TenantPolicies {
    compiled: std::sync::Arc<CompiledTenant>,
    /// The version of the set it was compiled from (see [`PolicyEngine::version`]).
    version: std::sync::Arc<str>,
    /// Decisions already made for this tenant, when caching is on (see [`cache`]). Never
    /// shared between engines: a reload starts every cache empty.
    cache: Option<cache::DecisionCache>,
}

/// Compiled policies and entities for every tenant. Immutable once loaded: share it behind an
/// `Arc` and swap the whole engine on reload.
pub struct PolicyEngine {
    tenants: HashMap<TenantId, TenantPolicies>,
    action_http: EntityUid,
    action_use_credential: EntityUid,
    action_connect: EntityUid,
    action_connect_opaque: EntityUid,
    action_mcp_tool_call: EntityUid,
    action_mcp_resource: EntityUid,
    action_mcp_prompt: EntityUid,
    destination_type: EntityTypeName,
    credential_type: EntityTypeName,
    mcp_tool_type: EntityTypeName,
    mcp_resource_type: EntityTypeName,
    mcp_prompt_type: EntityTypeName,
    authorizer: Authorizer,
    schema: Schema,
    /// What the load read, for the next reload to reuse what did not change.
    sources: load::Sources,
    /// The load's warnings (a policy that can never apply, say), as logged.
    warnings: Vec<String>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policies: usize = self
            .tenants
            .values()
            .map(|t| t.compiled.policies.num_of_policies())
            .sum();
        f.debug_struct("PolicyEngine")
            .field("tenants", &self.tenants.len())
            .field("policies_in_all_sets", &policies)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Loads `schema.cedarschema`, `global/*.cedar` and `tenants/<tenant>/*.cedar` from `dir`,
    /// strictly validates every policy against the schema, and builds one policy set (global +
    /// the tenant's own) and one entity store (the tenant and its workloads) per tenant.
    ///
    /// Policy ids are the `@id("…")` annotation when present, else `<path relative to dir>#<n>`
    /// (`n` counts policies in the file from 0). Returns every problem found, not just the first.
    ///
    /// Warnings (a policy that can never apply, say) do not stop the load; they are logged.
    pub fn load(dir: &Path, tenants: &[TenantInfo]) -> Result<PolicyEngine, Vec<PolicyProblem>> {
        Self::reload(dir, tenants, None)
    }

    /// What [`Self::load`] does, returning the warnings instead of logging them
    /// (`tenant-proxy policy check`).
    pub fn check(dir: &Path, tenants: &[TenantInfo]) -> PolicyCheck {
        load::load(dir, tenants, None)
    }

    /// What [`Self::load`] does, reusing what `previous` compiled wherever the inputs are the
    /// same: a tenant whose own files (compared by content), configuration, the global files
    /// and the schema are all unchanged keeps its compiled set, a changed file is parsed and
    /// validated again, and a changed schema recompiles everything. The result (engine,
    /// problems and warnings) is the one a full load of `dir` gives, but for one more problem: a
    /// tenant directory from which `previous` loaded files and which is now missing (one moved
    /// away must not leave that tenant with the global policies only). Decision caches start
    /// empty. Warnings are logged, as by [`Self::load`].
    pub fn reload(
        dir: &Path,
        tenants: &[TenantInfo],
        previous: Option<&PolicyEngine>,
    ) -> Result<PolicyEngine, Vec<PolicyProblem>> {
        let checked = Self::check_after(dir, tenants, previous);
        for w in &checked.warnings {
            tracing::warn!(warning = %w, "policy warning");
        }
        checked.result.map(|mut engine| {
            engine.warnings = checked.warnings.iter().map(ToString::to_string).collect();
            engine
        })
    }

    /// The warnings of the load that built this engine (`tenant-proxy check` prints them).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What [`Self::reload`] does, returning the warnings instead of logging them.
    pub fn check_after(
        dir: &Path,
        tenants: &[TenantInfo],
        previous: Option<&PolicyEngine>,
    ) -> PolicyCheck {
        load::load(dir, tenants, previous)
    }

    /// Turns on each tenant's decision cache, holding at most `entries` decisions per tenant
    /// (0: off). `set` names the policy set in the cache metric (`enforced`, `shadow`). An
    /// engine starts without caches: `policy test` and `policy explain` never use one, and a
    /// reload builds a new engine, so every cache starts empty with the policies it caches.
    pub fn with_decision_cache(mut self, entries: usize, set: &'static str) -> Self {
        for (tenant, policies) in &mut self.tenants {
            policies.cache = (entries > 0)
                .then(|| cache::DecisionCache::new(entries, tenant.clone(), set))
                .flatten();
        }
        self
    }

    /// Decides action `http` for `workload` of `tenant`.
    ///
    /// Default deny. An unknown tenant or workload denies with an error, and so does any policy
    /// evaluation error. The host is lowercased and a trailing dot removed before it becomes the
    /// resource id and `context.host`, so a `forbid` on a host cannot be dodged by spelling it
    /// differently.
    pub fn authorize_http(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        facts: &HttpRequestFacts<'_>,
    ) -> Decision {
        let host = normalize_host(facts.host);
        let http = HttpRequestFacts {
            host: &host,
            ..*facts
        };
        self.answer(tenant, workload, Question::Http(http))
    }

    /// Decides action `use_credential`: may `workload` have credential `facts.name` of `tenant`
    /// substituted into this request? Same fail-closed rules as [`Self::authorize_http`].
    pub fn authorize_credential(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        facts: &CredentialFacts<'_>,
    ) -> Decision {
        let host = normalize_host(facts.http.host);
        let http = HttpRequestFacts {
            host: &host,
            ..*facts.http
        };
        self.answer(tenant, workload, Question::credential(facts, http))
    }

    /// Decides action `connect` or `connect_opaque` for a tunnel. Same fail-closed rules as
    /// [`Self::authorize_http`]; for `connect_opaque` a deny means the tunnel is intercepted.
    pub fn authorize_connect(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        question: ConnectQuestion,
        facts: &ConnectFacts<'_>,
    ) -> Decision {
        let host = normalize_host(facts.host);
        let connect = ConnectFacts {
            host: &host,
            ..*facts
        };
        self.answer(tenant, workload, Question::Connect(question, connect))
    }

    /// Decides `mcp_tool_call`, `mcp_resource` or `mcp_prompt` (by `facts.item`): may
    /// `workload` use this tool, resource or prompt of server `facts.server`? Asked for every
    /// one a request uses (after `http` allowed the request) and for every one a list result
    /// shows. Same fail-closed rules as [`Self::authorize_http`].
    pub fn authorize_mcp(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
        facts: &McpFacts<'_>,
    ) -> Decision {
        let host = normalize_host(facts.http.host);
        let http = HttpRequestFacts {
            host: &host,
            ..*facts.http
        };
        self.answer(tenant, workload, Question::mcp(facts, http))
    }

    /// Answers `question` of `workload`: from the tenant's cache when it holds the answer,
    /// else from Cedar (and kept, when Cedar decided cleanly). The Cedar request is built from
    /// the question itself, the cache key, so nothing outside the key can change the answer.
    fn answer(&self, tenant: &TenantId, workload: &WorkloadId, question: Question<'_>) -> Decision {
        let (set, principal) = match self.lookup(tenant, workload) {
            Ok(found) => found,
            Err(deny) => return deny,
        };
        let asked = cache::Asked {
            workload: workload.as_str(),
            question,
        };
        if let Some(found) = set.cache.as_ref().and_then(|c| c.get(&asked)) {
            return found;
        }
        let decision = match self.request(principal, &question, None) {
            Ok(request) => self.decide(set, &request),
            Err(e) => Decision::deny_with(e),
        };
        if let Some(cache) = &set.cache {
            cache.keep(&asked, &decision);
        }
        decision
    }

    /// The Cedar request for `question`.
    fn request(
        &self,
        principal: &EntityUid,
        question: &Question<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        match *question {
            Question::Http(http) => self.http_request(principal, &http, schema),
            Question::Credential {
                name,
                position,
                http,
            } => {
                let facts = CredentialFacts {
                    name,
                    position,
                    http: &http,
                };
                self.credential_request(principal, &facts, schema)
            }
            Question::Connect(q, facts) => self.connect_request(principal, q, &facts, schema),
            Question::Mcp {
                server,
                item,
                name,
                http,
            } => {
                let facts = McpFacts {
                    server,
                    item,
                    name,
                    http: &http,
                };
                self.mcp_request(principal, &facts, schema)
            }
        }
    }

    /// What the marked permits among `policy_ids` (the permits that allowed a request of
    /// `tenant`: its `http` question, its MCP items, its credential uses) ask for together;
    /// `None` when none of them is marked. See [`approval`].
    pub fn approval_need<'a>(
        &self,
        tenant: &TenantId,
        policy_ids: impl IntoIterator<Item = &'a String>,
    ) -> Option<approval::ApprovalNeed> {
        let set = &self.tenants.get(tenant)?.compiled;
        if set.approvals.is_empty() {
            return None;
        }
        approval::combine(
            policy_ids
                .into_iter()
                .filter_map(|id| set.approvals.get(id).map(|r| (id.as_str(), r))),
        )
    }

    /// The version of `tenant`'s policy set: 16 hex digits of a SHA-256 over the schema and
    /// every file the set was compiled from (global and the tenant's own, by path under the
    /// policy directory and content). The same files give the same version wherever and
    /// whenever they are loaded, and any edit (a comment too) gives another, so an audit
    /// record names the set that decided it, and a reviewer can tell which commit that was.
    pub fn version(&self, tenant: &TenantId) -> Option<std::sync::Arc<str>> {
        self.tenants.get(tenant).map(|t| t.version.clone())
    }

    /// Number of policies in `tenant`'s set (global + its own); 0 for an unknown tenant.
    pub fn policy_count(&self, tenant: &TenantId) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |t| t.compiled.policies.num_of_policies())
    }

    fn lookup(
        &self,
        tenant: &TenantId,
        workload: &WorkloadId,
    ) -> Result<(&TenantPolicies, &EntityUid), Decision> {
        // SECURITY: a tenant or workload that is not in the compiled set has no entity, so
        // `principal.tenant` would not resolve; deny instead of evaluating against nothing.
        let set = self
            .tenants
            .get(tenant)
            .ok_or_else(|| Decision::deny_with(format!("unknown tenant `{tenant}`")))?;
        let principal = set.compiled.principals.get(workload).ok_or_else(|| {
            Decision::deny_with(format!(
                "unknown workload `{workload}` of tenant `{tenant}`"
            ))
        })?;
        Ok((set, principal))
    }

    /// The `http` request. `schema` is `None` on the hot path: the context is built by this
    /// module from typed facts, and a unit test checks it against the schema.
    fn http_request(
        &self,
        principal: &EntityUid,
        facts: &HttpRequestFacts<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let host = normalize_host(facts.host);
        let resource =
            EntityUid::from_type_name_and_id(self.destination_type.clone(), EntityId::new(&host));
        let context = Context::from_pairs(http_pairs(facts, &host)).map_err(|e| e.to_string())?;
        Request::new(
            principal.clone(),
            self.action_http.clone(),
            resource,
            context,
            schema,
        )
        .map_err(|e| e.to_string())
    }

    fn credential_request(
        &self,
        principal: &EntityUid,
        facts: &CredentialFacts<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let resource = EntityUid::from_type_name_and_id(
            self.credential_type.clone(),
            EntityId::new(facts.name),
        );
        let host = normalize_host(facts.http.host);
        let context =
            Context::from_pairs(credential_pairs(facts, &host)).map_err(|e| e.to_string())?;
        Request::new(
            principal.clone(),
            self.action_use_credential.clone(),
            resource,
            context,
            schema,
        )
        .map_err(|e| e.to_string())
    }

    fn connect_request(
        &self,
        principal: &EntityUid,
        question: ConnectQuestion,
        facts: &ConnectFacts<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let host = normalize_host(facts.host);
        let resource =
            EntityUid::from_type_name_and_id(self.destination_type.clone(), EntityId::new(&host));
        let context =
            Context::from_pairs(connect_pairs(facts, &host)).map_err(|e| e.to_string())?;
        let action = match question {
            ConnectQuestion::Open => &self.action_connect,
            ConnectQuestion::Opaque => &self.action_connect_opaque,
        };
        Request::new(principal.clone(), action.clone(), resource, context, schema)
            .map_err(|e| e.to_string())
    }

    fn mcp_request(
        &self,
        principal: &EntityUid,
        facts: &McpFacts<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let (action, entity_type) = match facts.item {
            ItemKind::Tool => (&self.action_mcp_tool_call, &self.mcp_tool_type),
            ItemKind::Resource => (&self.action_mcp_resource, &self.mcp_resource_type),
            ItemKind::Prompt => (&self.action_mcp_prompt, &self.mcp_prompt_type),
        };
        let resource =
            EntityUid::from_type_name_and_id(entity_type.clone(), EntityId::new(facts.name));
        let host = normalize_host(facts.http.host);
        let context = Context::from_pairs(mcp_pairs(facts, &host)).map_err(|e| e.to_string())?;
        Request::new(principal.clone(), action.clone(), resource, context, schema)
            .map_err(|e| e.to_string())
    }

    /// Where the requests this engine builds disagree with its schema, one message each.
    ///
    /// SECURITY: the hot path builds requests without the schema (see [`Self::http_request`]),
    /// and policies are validated against the schema, not against what the proxy sends. A schema
    /// edited to say otherwise (`run_signed: String`, `port: String`) lets a policy pass
    /// validation and `policy test` while comparing values no request has: a `forbid` on
    /// `context.run_signed == "false"` would never hold. So every kind of request, with its
    /// optional fields present and absent, is built once against the schema at load.
    fn schema_mismatches(&self, principal: &EntityUid) -> Vec<String> {
        let scopes = ["llm".to_string()];
        let full = full_http_facts(&scopes);
        let bare = HttpRequestFacts {
            model: None,
            provider: None,
            run_signed: false,
            scopes: &[],
            route: None,
            destination_region: None,
            ..full
        };
        let mut mismatches = Vec::new();
        let mut check = |action: &EntityUid, built: Result<Request, String>| {
            if let Err(e) = built {
                let message = format!(
                    "the schema does not describe what the proxy sends for action `{action}`: {e}"
                );
                if !mismatches.contains(&message) {
                    mismatches.push(message);
                }
            }
        };
        let schema = Some(&self.schema);
        for http in [&full, &bare] {
            check(
                &self.action_http,
                self.http_request(principal, http, schema),
            );
            let credential = CredentialFacts {
                name: "openai",
                position: "header",
                http,
            };
            check(
                &self.action_use_credential,
                self.credential_request(principal, &credential, schema),
            );
            for (item, action) in [
                (ItemKind::Tool, &self.action_mcp_tool_call),
                (ItemKind::Resource, &self.action_mcp_resource),
                (ItemKind::Prompt, &self.action_mcp_prompt),
            ] {
                let mcp = McpFacts {
                    server: "docs",
                    item,
                    name: "search",
                    http,
                };
                check(action, self.mcp_request(principal, &mcp, schema));
            }
            let connect = ConnectFacts {
                host: http.host,
                port: http.port,
                run_signed: http.run_signed,
                scopes: http.scopes,
                destination_region: http.destination_region,
                hour: http.hour,
                weekday: http.weekday,
            };
            for (question, action) in [
                (ConnectQuestion::Open, &self.action_connect),
                (ConnectQuestion::Opaque, &self.action_connect_opaque),
            ] {
                check(
                    action,
                    self.connect_request(principal, question, &connect, schema),
                );
            }
        }
        mismatches
    }

    fn decide(&self, set: &TenantPolicies, request: &Request) -> Decision {
        let response =
            self.authorizer
                .is_authorized(request, &set.compiled.policies, &set.compiled.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        // SECURITY: Cedar skips a policy whose evaluation errors, so an erroring `forbid` would
        // not deny. Any error denies.
        let cedar_allowed = response.decision() == CedarDecision::Allow;
        let allowed = cedar_allowed && errors.is_empty();
        // The policies that decided: Cedar's reason (the permits of an allow, the forbids of a
        // deny), or, for an allow the errors turned into a deny, the policies that failed: the
        // permits did not decide it, and a record of a denial must not name them.
        let mut policy_ids: Vec<String> = if cedar_allowed && !allowed {
            diagnostics
                .errors()
                .map(|e| match e {
                    AuthorizationError::PolicyEvaluationError(e) => e.policy_id().to_string(),
                })
                .collect()
        } else {
            diagnostics.reason().map(|id| id.to_string()).collect()
        };
        policy_ids.sort_unstable();
        policy_ids.dedup();
        Decision {
            allowed,
            policy_ids,
            errors,
        }
    }
}

/// The tenants a policy directory has files for (`tenants/<tenant>/`), for checking a directory
/// without a configuration: no workloads, empty plan and region. Names that are not tenant ids
/// are left for the loader to report.
pub fn tenants_from_dirs(dir: &Path) -> std::io::Result<Vec<TenantInfo>> {
    let mut out = Vec::new();
    let tenants = dir.join("tenants");
    let entries = match std::fs::read_dir(&tenants) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let (true, Some(Ok(id))) = (path.is_dir(), name.as_deref().map(TenantId::new)) {
            out.push(TenantInfo {
                id,
                plan: String::new(),
                region: String::new(),
                workloads: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(out)
}

/// Lowercases `host` and drops one trailing dot (`Example.COM.` names the same host as
/// `example.com`), borrowing when it is already normal.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The context fields both actions share: where the request goes and how.
fn destination_pairs(f: &HttpRequestFacts<'_>, host: &str) -> Vec<(String, RestrictedExpression)> {
    let string = |k: &str, v: &str| {
        (
            k.to_string(),
            RestrictedExpression::new_string(v.to_string()),
        )
    };
    let mut pairs = Vec::with_capacity(9);
    pairs.push(string("scheme", f.scheme));
    pairs.push(string("host", host));
    pairs.push((
        "port".to_string(),
        RestrictedExpression::new_long(i64::from(f.port)),
    ));
    pairs.push(string("method", f.method));
    pairs.push(string("path", f.path));
    pairs
}

/// A request with every optional fact present.
fn full_http_facts(scopes: &[String]) -> HttpRequestFacts<'_> {
    HttpRequestFacts {
        scheme: "https",
        host: "api.example.com",
        port: 443,
        method: "POST",
        path: "/v1/chat/completions",
        model: Some("gpt-4o"),
        provider: Some("openai"),
        run_signed: true,
        scopes,
        route: Some("openai"),
        destination_region: Some("eu"),
        hour: 23,
        weekday: "sun",
    }
}

/// Every context attribute the proxy can send with each action (its optional ones included),
/// by action name: what a schema may declare.
fn sent_context_attributes() -> Vec<(&'static str, Vec<String>)> {
    let scopes = ["llm".to_string()];
    let http = full_http_facts(&scopes);
    let host = http.host;
    let names = |pairs: Vec<(String, RestrictedExpression)>| -> Vec<String> {
        pairs.into_iter().map(|(name, _)| name).collect()
    };
    let connect = ConnectFacts {
        host,
        port: http.port,
        run_signed: true,
        scopes: &scopes,
        destination_region: Some("eu"),
        hour: 23,
        weekday: "sun",
    };
    let credential = CredentialFacts {
        name: "openai",
        position: "header",
        http: &http,
    };
    let mcp = |item| McpFacts {
        server: "docs",
        item,
        name: "search",
        http: &http,
    };
    vec![
        ("http", names(http_pairs(&http, host))),
        ("use_credential", names(credential_pairs(&credential, host))),
        ("connect", names(connect_pairs(&connect, host))),
        ("connect_opaque", names(connect_pairs(&connect, host))),
        (
            "mcp_tool_call",
            names(mcp_pairs(&mcp(ItemKind::Tool), host)),
        ),
        (
            "mcp_resource",
            names(mcp_pairs(&mcp(ItemKind::Resource), host)),
        ),
        ("mcp_prompt", names(mcp_pairs(&mcp(ItemKind::Prompt), host))),
    ]
}

/// The `ConnectContext` record of the schema.
fn connect_pairs(facts: &ConnectFacts<'_>, host: &str) -> Vec<(String, RestrictedExpression)> {
    let mut pairs = vec![
        (
            "host".to_string(),
            RestrictedExpression::new_string(host.to_string()),
        ),
        (
            "port".to_string(),
            RestrictedExpression::new_long(i64::from(facts.port)),
        ),
        (
            "run_signed".to_string(),
            RestrictedExpression::new_bool(facts.run_signed),
        ),
        (
            "scopes".to_string(),
            RestrictedExpression::new_set(
                facts
                    .scopes
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
    ];
    pairs.extend(clock_pairs(facts.hour, facts.weekday));
    if let Some(r) = facts.destination_region {
        pairs.push((
            "destination_region".to_string(),
            RestrictedExpression::new_string(r.to_string()),
        ));
    }
    pairs
}

/// The `CredentialContext` record of the schema.
fn credential_pairs(
    facts: &CredentialFacts<'_>,
    host: &str,
) -> Vec<(String, RestrictedExpression)> {
    let mut pairs = destination_pairs(facts.http, host);
    pairs.push((
        "position".to_string(),
        RestrictedExpression::new_string(facts.position.to_string()),
    ));
    pairs
}

/// The MCP contexts of the schema (`McpToolContext`, `McpResourceContext`,
/// `McpPromptContext`).
fn mcp_pairs(facts: &McpFacts<'_>, host: &str) -> Vec<(String, RestrictedExpression)> {
    let field = match facts.item {
        ItemKind::Tool => "tool",
        ItemKind::Resource => "uri",
        ItemKind::Prompt => "prompt",
    };
    let mut pairs = http_pairs(facts.http, host);
    // `model` and `provider` are about LLM calls; a JSON-RPC body never names a model, and
    // the MCP contexts declare neither.
    pairs.retain(|(k, _)| k != "model" && k != "provider");
    for (k, v) in [("server", facts.server), (field, facts.name)] {
        pairs.push((
            k.to_string(),
            RestrictedExpression::new_string(v.to_string()),
        ));
    }
    pairs
}

/// The `HttpContext` record of the schema.
fn http_pairs(f: &HttpRequestFacts<'_>, host: &str) -> Vec<(String, RestrictedExpression)> {
    let mut pairs = destination_pairs(f, host);
    pairs.push((
        "run_signed".to_string(),
        RestrictedExpression::new_bool(f.run_signed),
    ));
    pairs.push((
        "scopes".to_string(),
        RestrictedExpression::new_set(
            f.scopes
                .iter()
                .map(|s| RestrictedExpression::new_string(s.clone())),
        ),
    ));
    // Optional attributes are absent, not empty, so policies test them with `context has`.
    if let Some(m) = f.model {
        pairs.push((
            "model".to_string(),
            RestrictedExpression::new_string(m.to_string()),
        ));
    }
    if let Some(p) = f.provider {
        pairs.push((
            "provider".to_string(),
            RestrictedExpression::new_string(p.to_string()),
        ));
    }
    if let Some(r) = f.route {
        pairs.push((
            "route".to_string(),
            RestrictedExpression::new_string(r.to_string()),
        ));
    }
    pairs.extend(clock_pairs(f.hour, f.weekday));
    if let Some(r) = f.destination_region {
        pairs.push((
            "destination_region".to_string(),
            RestrictedExpression::new_string(r.to_string()),
        ));
    }
    pairs
}

/// `hour` and `weekday`, in the tenant's time zone.
fn clock_pairs(hour: u8, weekday: &str) -> [(String, RestrictedExpression); 2] {
    [
        (
            "hour".to_string(),
            RestrictedExpression::new_long(i64::from(hour)),
        ),
        (
            "weekday".to_string(),
            RestrictedExpression::new_string(weekday.to_string()),
        ),
    ]
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;
