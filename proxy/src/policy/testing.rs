//! Policy test cases kept beside the policies: `tenant-proxy policy test DIR`.
//!
//! Every `DIR/tests/*.json` file holds a JSON array of cases in the shape of the cedar CLI's
//! `run-tests`, plus a `name`:
//!
//! ```json
//! [{
//!   "name": "acme may call OpenAI",
//!   "request": {
//!     "principal": "TenantProxy::Workload::\"acme/support-bot\"",
//!     "action": "TenantProxy::Action::\"http\"",
//!     "resource": "TenantProxy::Destination::\"api.openai.com\"",
//!     "context": {"scheme": "https", "host": "api.openai.com", "port": 443, ...}
//!   },
//!   "entities": [],
//!   "decision": "allow",
//!   "reason": ["acme-openai"],
//!   "num_errors": 0
//! }]
//! ```
//!
//! A case runs exactly as the proxy decides: the principal's id (`<tenant>/<workload>`) picks the
//! tenant, and the request is evaluated against that tenant's set only (global + its own files),
//! with the Tenant and Workload entities the proxy builds from the configuration when one is
//! given (the case's `entities` are added to them; redefining one of them is an error). Without a
//! configuration the case's `entities` are all there is, as with the cedar CLI. The request and
//! context are checked against the schema, any evaluation error denies (as in the proxy), and
//! `reason` must list exactly the deciding policy ids (cedar's CLI accepts a subset).

use std::path::{Path, PathBuf};

use cedar_policy::{Context, Entities, EntityUid, Request};
use serde::Deserialize;

use super::{context_values, PolicyEngine, PolicyProblem};
use crate::ids::TenantId;

/// Where the test files live, relative to the policy directory.
pub const TESTS_DIR: &str = "tests";

/// How the Tenant and Workload entities of a case are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntitySource {
    /// Built from the tenant configuration, as the proxy does; the case may add more.
    Configuration,
    /// Only what the case lists (no configuration was given).
    CaseOnly,
}

/// One case as written in a test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    request: RequestSpec,
    #[serde(default)]
    entities: Option<serde_json::Value>,
    decision: Expected,
    #[serde(default)]
    reason: Vec<String>,
    #[serde(default)]
    num_errors: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Deny,
}

impl Expected {
    fn as_str(self) -> &'static str {
        match self {
            Expected::Allow => "allow",
            Expected::Deny => "deny",
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The test file, relative to the policy directory.
    pub file: String,
    /// The case's name.
    pub name: String,
    /// Whether the decision, the deciding policies and the error count all matched.
    pub passed: bool,
    /// What the case expected, e.g. `allow [acme-openai]`.
    pub expected: String,
    /// What the engine decided, e.g. `deny [free-plan-models]`, or why the case could not run.
    pub got: String,
}

/// Runs every case in `dir/tests/*.json` against `engine`. A file that cannot be read or parsed
/// is a problem (nothing runs); a case that cannot be evaluated (unknown tenant, a context that
/// does not fit the schema) is a failed case.
pub fn run(
    dir: &Path,
    engine: &PolicyEngine,
    source: EntitySource,
) -> Result<Vec<CaseResult>, Vec<PolicyProblem>> {
    let files = test_files(&dir.join(TESTS_DIR))?;
    let mut problems = Vec::new();
    let mut results = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        let cases = match read_cases(&file) {
            Ok(cases) => cases,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        for case in cases {
            results.push(run_case(engine, source, &rel, case));
        }
    }
    if problems.is_empty() {
        Ok(results)
    } else {
        Err(problems)
    }
}

fn test_files(tests: &Path) -> Result<Vec<PathBuf>, Vec<PolicyProblem>> {
    let problem = |message: String| {
        vec![PolicyProblem {
            file: tests.to_path_buf(),
            line: None,
            column: None,
            message,
        }]
    };
    let entries = std::fs::read_dir(tests).map_err(|e| problem(format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| problem(format!("cannot list: {e}")))?
            .path();
        if path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(problem("no `*.json` test files".into()));
    }
    Ok(files)
}

fn read_cases(file: &Path) -> Result<Vec<CaseSpec>, PolicyProblem> {
    let problem = |line: Option<usize>, column: Option<usize>, message: String| PolicyProblem {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| problem(None, None, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        problem(
            Some(e.line()),
            Some(e.column()),
            format!("not a JSON array of test cases: {e}"),
        )
    })
}

fn run_case(engine: &PolicyEngine, source: EntitySource, file: &str, case: CaseSpec) -> CaseResult {
    let mut expected = format!("{} [{}]", case.decision.as_str(), case.reason.join(", "));
    if case.num_errors > 0 {
        expected.push_str(&format!(" with {} error(s)", case.num_errors));
    }
    let (passed, got) = match evaluate(engine, source, &case) {
        Ok(decision) => {
            let mut want_ids = case.reason.clone();
            want_ids.sort_unstable();
            let decided = if decision.allowed { "allow" } else { "deny" };
            let mut got = format!("{decided} [{}]", decision.policy_ids.join(", "));
            if !decision.errors.is_empty() {
                got.push_str(&format!(
                    " with {} error(s): {}",
                    decision.errors.len(),
                    decision.errors.join("; ")
                ));
            }
            let passed = decided == case.decision.as_str()
                && decision.policy_ids == want_ids
                && decision.errors.len() == case.num_errors;
            (passed, got)
        }
        Err(why) => (false, format!("cannot run: {why}")),
    };
    CaseResult {
        file: file.to_string(),
        name: case.name,
        passed,
        expected,
        got,
    }
}

/// Why `context` (with `resource`) is one the proxy never builds, if it is: the schema allows
/// any Long and String, but a case that passes on `"hour": 99`, `"weekday": "Tuesday"`, an
/// upper-case host or a `context.host` other than its Destination proves nothing about a real
/// request (see [`context_values`]).
fn impossible_context(context: &serde_json::Value, resource: &EntityUid) -> Result<(), String> {
    for (attr, value) in context.as_object().into_iter().flatten() {
        if let Some(why) = context_values::impossible(attr, value) {
            return Err(format!("`{attr}` is {value}; {why}"));
        }
    }
    // The resource of `http`, `connect` and `connect_opaque` is the destination host the
    // context names.
    if resource.type_name().to_string() == "TenantProxy::Destination" {
        let id = resource.id().unescaped();
        if let Some(why) = context_values::impossible("host", &id.into()) {
            return Err(format!(
                "the Destination `{id}` is not a host the proxy gives: {why}"
            ));
        }
        if let Some(host) = context.get("host").filter(|h| h.as_str() != Some(id)) {
            return Err(format!(
                "`host` is {host} but the resource is the Destination `{id}`; the proxy gives both the same host"
            ));
        }
    }
    Ok(())
}

fn evaluate(
    engine: &PolicyEngine,
    source: EntitySource,
    case: &CaseSpec,
) -> Result<super::Decision, String> {
    let schema = &engine.schema;
    let parse_uid = |what: &str, text: &str| {
        text.parse::<EntityUid>()
            .map_err(|e| format!("{what} `{text}` is not an entity: {e}"))
    };
    let principal = parse_uid("principal", &case.request.principal)?;
    let action = parse_uid("action", &case.request.action)?;
    let resource = parse_uid("resource", &case.request.resource)?;
    // The principal's id names the tenant, so a case runs against that tenant's set only, as
    // the proxy does.
    let workload_id = principal.id().unescaped().to_string();
    let tenant = workload_id
        .split_once('/')
        .map(|(t, _)| t)
        .ok_or_else(|| format!("the principal's id `{workload_id}` is not `<tenant>/<workload>`"))
        .and_then(|t| TenantId::new(t).map_err(|e| e.to_string()))?;
    let set = &engine
        .tenants
        .get(&tenant)
        .ok_or_else(|| format!("unknown tenant `{tenant}`"))?
        .compiled;
    let written = case
        .request
        .context
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    impossible_context(&written, &resource).map_err(|e| format!("context: {e}"))?;
    let context = Context::from_json_value(written, Some((schema, &action)))
        .map_err(|e| format!("context: {e}"))?;
    let request = Request::new(principal, action, resource, context, Some(schema))
        .map_err(|e| format!("request: {e}"))?;
    let base = match source {
        EntitySource::Configuration => set.entities.clone(),
        EntitySource::CaseOnly => Entities::empty(),
    };
    let extra = case
        .entities
        .clone()
        .unwrap_or_else(|| serde_json::json!([]));
    let extra =
        Entities::from_json_value(extra, Some(schema)).map_err(|e| format!("entities: {e}"))?;
    // Parsing with the schema adds the schema's action entities, which the base has too;
    // only an entity that differs from the configuration's is a conflict.
    if let Some(e) = extra
        .iter()
        .find(|e| base.get(&e.uid()).is_some_and(|built| built != *e))
    {
        return Err(format!(
            "entity `{}` differs from the one built from the configuration; remove it from the case",
            e.uid()
        ));
    }
    let entities = base
        .add_entities(extra.iter().cloned(), Some(schema))
        .map_err(|e| format!("entities: {e}"))?;
    let with_case = super::TenantPolicies {
        compiled: std::sync::Arc::new(super::CompiledTenant {
            policies: set.policies.clone(),
            entities,
            principals: Default::default(),
            approvals: Default::default(),
        }),
        // Never asked: a case's decision is not recorded.
        version: std::sync::Arc::from(""),
        // A case decides once, with its own entities: nothing to cache.
        cache: None,
    };
    Ok(engine.decide(&with_case, &request))
}

/// The pass/fail table: one line per case, what was expected and what came out for failures,
/// and a summary line.
pub fn render_table(results: &[CaseResult]) -> String {
    let file_width = results
        .iter()
        .map(|r| r.file.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:<6} {:<file_width$}  CASE\n", "RESULT", "FILE");
    for r in results {
        let verdict = if r.passed { "pass" } else { "FAIL" };
        out.push_str(&format!(
            "{verdict:<6} {:<file_width$}  {}\n",
            r.file, r.name
        ));
        if !r.passed {
            out.push_str(&format!("         expected: {}\n", r.expected));
            out.push_str(&format!("         got:      {}\n", r.got));
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        results.len() - failed
    ));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::impossible_context;
    use serde_json::json;

    #[test]
    fn contexts_the_proxy_never_builds_fail_the_case() {
        let api: cedar_policy::EntityUid =
            r#"TenantProxy::Destination::"api.openai.com""#.parse().unwrap();
        let tool: cedar_policy::EntityUid = r#"TenantProxy::McpTool::"add""#.parse().unwrap();
        let real = json!({"host": "api.openai.com", "port": 443, "scheme": "https", "hour": 23, "weekday": "sun"});
        assert_eq!(impossible_context(&real, &api), Ok(()));
        for (name, context, resource, needle) in [
            (
                "another host",
                json!({"host": "evil.com"}),
                &api,
                "Destination",
            ),
            ("hour 99", json!({"hour": 99}), &api, "0 to 23"),
            ("a negative hour", json!({"hour": -1}), &api, "0 to 23"),
            (
                "a weekday spelt out",
                json!({"weekday": "Tuesday"}),
                &api,
                "mon, tue",
            ),
            ("port 0", json!({"port": 0}), &api, "1 to 65535"),
            (
                "scheme ftp",
                json!({"scheme": "ftp"}),
                &api,
                "`http` or `https`",
            ),
            (
                "a lower-case method",
                json!({"method": "post"}),
                &api,
                "upper case",
            ),
            (
                "a host with its port",
                json!({"host": "api.openai.com:443"}),
                &api,
                "no port",
            ),
            (
                "a position of another name",
                json!({"position": "headers"}),
                &api,
                "`header`, `query` or `body`",
            ),
        ] {
            let got = impossible_context(&context, resource);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(needle)),
                "{name}: {got:?}"
            );
        }
        // An MCP item's context names the server's host, not the item: no host rule there.
        assert_eq!(
            impossible_context(&json!({"host": "mcp.example.com"}), &tool),
            Ok(())
        );
        let upper: cedar_policy::EntityUid =
            r#"TenantProxy::Destination::"API.openai.com""#.parse().unwrap();
        assert!(impossible_context(&json!({"host": "API.openai.com"}), &upper).is_err());
    }
}
