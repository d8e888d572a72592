//! Reading, validating and compiling the policy directory.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest as _, Sha256};

use super::approval::ApprovalRule;
use super::context_values;
use super::{
    CompiledTenant, PolicyCheck, PolicyEngine, PolicyProblem, TenantInfo, TenantPolicies, NAMESPACE,
};
use crate::ids::{TenantId, WorkloadId};

const SCHEMA_FILE: &str = "schema.cedarschema";

/// Why a missing `global/`, `tenants/` or policy directory is refused.
const MISSING_DIRECTORY: &str = "the directory does not exist: a policy directory needs \
     `schema.cedarschema`, `global/` and `tenants/` (either may be empty), and one moved away is \
     refused rather than loaded as no policies";

/// Why a tenant directory that held policies and is now missing is refused.
const MISSING_TENANT_DIRECTORY: &str = "the directory does not exist, and the policies in force \
     were loaded from it: one moved away is refused rather than loaded as the global policies \
     only; to remove a tenant's own policies, leave its directory empty";

/// One policy with its final id and where it came from.
struct Loaded {
    policy: Policy,
    id: String,
    file: PathBuf,
    /// What its `@approval` annotations ask for.
    approval: Option<ApprovalRule>,
}

/// Problems and warnings collected so far, and the text of every file read, to locate later
/// diagnostics.
#[derive(Default)]
struct Report {
    problems: Vec<PolicyProblem>,
    warnings: Vec<PolicyProblem>,
    texts: HashMap<PathBuf, String>,
}

impl Report {
    fn at(&mut self, file: &Path, line_col: Option<(usize, usize)>, message: impl Into<String>) {
        let problem = PolicyProblem {
            file: file.to_path_buf(),
            line: line_col.map(|(l, _)| l),
            column: line_col.map(|(_, c)| c),
            message: message.into(),
        };
        // A global policy is checked once per tenant set; report each problem once.
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn file(&mut self, file: &Path, message: impl Into<String>) {
        self.at(file, None, message);
    }

    /// A warning about a file or directory as a whole (the load goes on).
    fn note(&mut self, file: &Path, message: impl Into<String>) {
        self.warnings.push(PolicyProblem {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        });
    }

    /// A cedar diagnostic that makes the load fail.
    fn diagnostic(&mut self, file: &Path, d: &dyn Diagnostic) {
        let problem = self.locate(file, d);
        fold_per_action(&mut self.problems, problem);
    }

    /// A cedar diagnostic that does not stop the load (a policy that can never apply, say).
    fn warning(&mut self, file: &Path, d: &dyn Diagnostic) {
        let warning = self.locate(file, d);
        fold_per_action(&mut self.warnings, warning);
    }

    /// A warning already located (one replayed from a previous load), reported once.
    fn push_warning(&mut self, warning: PolicyProblem) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// A cedar diagnostic as a problem located by its first label in the text of `file`.
    fn locate(&self, file: &Path, d: &dyn Diagnostic) -> PolicyProblem {
        let label = d.labels().and_then(|mut labels| labels.next());
        let line_col = match (&label, self.texts.get(file)) {
            (Some(l), Some(text)) => Some(line_col(text, l.offset())),
            _ => None,
        };
        let mut message = d.to_string();
        if let Some(text) = label.as_ref().and_then(|l| l.label()) {
            if !message.contains(text) {
                message.push_str(&format!(" ({text})"));
            }
        }
        if let Some(help) = d.help() {
            message.push_str(&format!("; help: {help}"));
        }
        PolicyProblem {
            file: file.to_path_buf(),
            line: line_col.map(|(l, _)| l),
            column: line_col.map(|(_, c)| c),
            message,
        }
    }
}

/// Adds `new` to `list`, once. Strict validation checks a policy once per action it may apply
/// to, so one mistake (a misspelt context attribute in a policy for every action) came as one
/// problem per action, in no fixed order; the same problem at the same place for several
/// actions is one entry naming them all, sorted.
fn fold_per_action(list: &mut Vec<PolicyProblem>, new: PolicyProblem) {
    const ACTION: &str = "TenantProxy::Action::";
    let split = |message: &str| -> Option<(String, Vec<String>, String)> {
        let start = message.find(ACTION)? + ACTION.len();
        let rest = message.get(start..)?;
        // One `"name"`, or a list folded before: `"a", "b"`.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            let quoted = rest.get(at..)?.strip_prefix('"')?;
            let end = quoted.find('"')?;
            names.push(quoted[..end].to_string());
            at += end + 2;
            match rest.get(at..) {
                Some(more) if more.starts_with(", \"") => at += 2,
                _ => break,
            }
        }
        Some((message[..start].to_string(), names, rest[at..].to_string()))
    };
    if list.contains(&new) {
        return;
    }
    if let Some((head, names, tail)) = split(&new.message) {
        let same_place =
            |p: &PolicyProblem| p.file == new.file && p.line == new.line && p.column == new.column;
        for existing in list.iter_mut().filter(|p| same_place(p)) {
            let Some((h, mut all, t)) = split(&existing.message) else {
                continue;
            };
            if h == head && t == tail {
                all.extend(names);
                all.sort();
                all.dedup();
                let quoted: Vec<String> = all.iter().map(|n| format!("\"{n}\"")).collect();
                existing.message = format!("{head}{}{tail}", quoted.join(", "));
                return;
            }
        }
    }
    list.push(new);
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count()
        + 1;
    (line, column)
}

/// SHA-256 of a file's bytes: what decides whether a reload may reuse what the file compiled to.
type ContentHash = [u8; 32];

fn content_hash(bytes: &[u8]) -> ContentHash {
    Sha256::digest(bytes).into()
}

/// The version of a tenant's set (see `PolicyEngine::version`): the schema's hash, then each
/// global file and each of the tenant's own, by its path under `dir` and its hash.
fn set_version(
    dir: &Path,
    schema: Option<ContentHash>,
    global: Option<&FileKey>,
    own: &FileKey,
) -> std::sync::Arc<str> {
    let mut h = Sha256::new();
    h.update(schema.unwrap_or_default());
    for (part, files) in [(b'g', global.map_or(&[][..], Vec::as_slice)), (b'o', own)] {
        for (path, hash) in files {
            let name = path.strip_prefix(dir).unwrap_or(path);
            h.update([part]);
            h.update(name.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(hash);
        }
    }
    let digest: [u8; 32] = h.finalize().into();
    std::sync::Arc::from(crate::lower_hex::of(&digest[..8]))
}

/// Every `.cedar` file of one directory, in name order, with the hash of its bytes.
type FileKey = Vec<(PathBuf, ContentHash)>;

/// What one tenant's own directory compiled to, kept by the engine for the next reload.
#[derive(Debug)]
struct OwnGroup {
    /// The files it was compiled from (empty for a tenant without a directory).
    files: FileKey,
    /// Its policies' ids in load order, each with the index of its file in `files`.
    ids: Vec<(String, usize)>,
    /// The validation warnings its policies gave, in order.
    warnings: Vec<PolicyProblem>,
}

/// What a tenant was compiled from.
#[derive(Debug)]
struct TenantSources {
    info: TenantInfo,
    own: OwnGroup,
}

/// What a successful load read: the key of everything it compiled. The next reload compares its
/// inputs with these and reuses a tenant's [`CompiledTenant`] only when all of them are equal.
#[derive(Debug)]
pub(super) struct Sources {
    dir: PathBuf,
    schema: ContentHash,
    global: FileKey,
    tenants: HashMap<TenantId, TenantSources>,
    /// Tenants a reload took out of the configuration: their directories may be left behind
    /// (a warning, not a problem; see `read_tenant_dirs`) until they are defined again.
    retired: HashSet<TenantId>,
}

pub(super) fn load(
    dir: &Path,
    tenants: &[TenantInfo],
    previous: Option<&PolicyEngine>,
) -> PolicyCheck {
    let mut report = Report::default();
    let result = compile(dir, tenants, previous, &mut report);
    PolicyCheck {
        result: result.ok_or(report.problems),
        warnings: report.warnings,
    }
}

/// A tenant's own policies: parsed now, or those of the previous engine's compiled set (same
/// files, same schema).
enum Own<'a> {
    Fresh {
        loaded: Vec<Loaded>,
        files: FileKey,
    },
    Reused {
        sources: &'a TenantSources,
        compiled: &'a Arc<CompiledTenant>,
    },
}

impl Own<'_> {
    /// `(id, file)` of each policy, in load order.
    fn ids(&self) -> Vec<(&str, &Path)> {
        match self {
            Own::Fresh { loaded, .. } => loaded
                .iter()
                .map(|l| (l.id.as_str(), l.file.as_path()))
                .collect(),
            Own::Reused { sources, .. } => sources
                .own
                .ids
                .iter()
                .filter_map(|(id, f)| Some((id.as_str(), sources.own.files.get(*f)?.0.as_path())))
                .collect(),
        }
    }
}

/// Everything [`load`] does; `None` when `report` holds problems.
///
/// With a `previous` engine loaded from the same directory and schema (same bytes), a tenant
/// directory whose files all have the bytes they had is not parsed or validated again: its
/// warnings are replayed and its policies taken from the previous compiled set; a tenant whose
/// configuration, own files and the global files are all unchanged keeps its compiled set (an
/// `Arc` shared with the previous engine). Everything else (listing, duplicate ids, the global
/// files, entities of a changed tenant) runs as in a full load, in the same order, so the
/// problems and warnings are the same.
fn compile(
    dir: &Path,
    tenants: &[TenantInfo],
    previous: Option<&PolicyEngine>,
    report: &mut Report,
) -> Option<PolicyEngine> {
    // A policy directory that is not there is one problem, not one for each part it lacks.
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            report.file(dir, "not a directory");
            return None;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.file(dir, MISSING_DIRECTORY);
            return None;
        }
        Err(e) => {
            report.file(dir, format!("cannot read: {e}"));
            return None;
        }
    }
    let (schema, schema_hash) = read_schema(dir, report);
    // SECURITY: reuse only what was compiled from this directory against these schema bytes;
    // anything else starts from nothing.
    // What the serving set compiled from this directory, whatever its schema: which tenants had
    // files of their own.
    let serving = previous.filter(|p| p.sources.dir == dir);
    let previous = serving.filter(|p| schema_hash.is_some_and(|h| h == p.sources.schema));

    let mut configured: HashSet<&TenantId> = HashSet::new();
    for t in tenants {
        if !configured.insert(&t.id) {
            report.file(dir, format!("tenant `{}` is listed twice", t.id));
        }
        let mut workloads = HashSet::new();
        for w in &t.workloads {
            if !workloads.insert(w) {
                report.file(
                    dir,
                    format!("workload `{w}` of tenant `{}` is listed twice", t.id),
                );
            }
        }
    }
    let global_listed = list_policy_dir(&dir.join("global"), report);
    let global_files = file_key(&global_listed);
    let global = parse_listed(dir, &global_listed, report);
    let retired: HashSet<TenantId> = previous
        .map(|p| {
            p.tenants
                .keys()
                .chain(&p.sources.retired)
                .filter(|id| !configured.contains(id))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut own = read_tenant_dirs(dir, &configured, &retired, previous, report);
    // SECURITY: a tenant's directory moved away for a moment (swapped for a new version, a
    // checkout in progress) would load that tenant as global-only, its own forbids dropped.
    // Once a tenant has files, removing them takes an empty directory, not a missing one.
    if let Some(serving) = serving {
        for tenant in tenants {
            let had_files = serving
                .sources
                .tenants
                .get(&tenant.id)
                .is_some_and(|s| !s.own.files.is_empty());
            if had_files && !own.contains_key(&tenant.id) {
                report.file(
                    &dir.join("tenants").join(tenant.id.as_str()),
                    MISSING_TENANT_DIRECTORY,
                );
            }
        }
    }
    let global_unchanged =
        previous.is_some_and(|p| global_files.as_ref() == Some(&p.sources.global));

    let names = match Names::new() {
        Ok(n) => n,
        Err(e) => {
            report.file(dir, e);
            return None;
        }
    };
    let validator = schema.as_ref().map(|s| {
        check_actions(s, &names, &dir.join(SCHEMA_FILE), report);
        Validator::new(s.clone())
    });

    // Strict validation checks each policy on its own, so validating the global files once and
    // each tenant's files once is the same as validating every tenant's combined set, without
    // repeating the global work per tenant. For the same reason a tenant's unchanged files
    // (same bytes, same schema) give the warnings they gave before.
    let global_ids: Vec<(&str, &Path)> = global
        .iter()
        .map(|l| (l.id.as_str(), l.file.as_path()))
        .collect();
    check_unique_ids(&global_ids, &[], report);
    if let Some(v) = &validator {
        validate(v, &global, report);
        warn_unmatchable_literals(&global, report);
        warn_unknown_global_principals(tenants, &global, report);
    }
    let mut compiled = HashMap::new();
    let mut sources = HashMap::new();
    for tenant in tenants {
        // A tenant without a directory has no own files, as it had before if its previous
        // sources list none.
        let mine = own
            .remove(&tenant.id)
            .or_else(|| {
                let p = previous?;
                let sources = p.sources.tenants.get(&tenant.id)?;
                let compiled = &p.tenants.get(&tenant.id)?.compiled;
                sources
                    .own
                    .files
                    .is_empty()
                    .then_some(Own::Reused { sources, compiled })
            })
            .unwrap_or(Own::Fresh {
                loaded: Vec::new(),
                files: Vec::new(),
            });
        check_unique_ids(&mine.ids(), &global_ids, report);
        let Some(v) = &validator else { continue };
        let own_group = match &mine {
            Own::Fresh { loaded, files } => {
                let before = report.warnings.len();
                validate(v, loaded, report);
                warn_foreign_principals(&tenant.id, loaded, report);
                warn_unmatchable_literals(loaded, report);
                let group = OwnGroup {
                    files: files.clone(),
                    ids: ids_by_file(loaded, files),
                    warnings: report.warnings.get(before..).unwrap_or_default().to_vec(),
                };
                // Not kept with the files' warnings: it depends on the tenant file too.
                warn_unknown_workloads(tenant, loaded, report);
                group
            }
            Own::Reused { sources, .. } => {
                for w in &sources.own.warnings {
                    report.push_warning(w.clone());
                }
                OwnGroup {
                    files: sources.own.files.clone(),
                    ids: sources.own.ids.clone(),
                    warnings: sources.own.warnings.clone(),
                }
            }
        };
        let Some(schema) = &schema else { continue };
        let unchanged = match &mine {
            Own::Reused { sources, compiled } if global_unchanged && sources.info == *tenant => {
                Some(Arc::clone(compiled))
            }
            _ => None,
        };
        let built = match unchanged {
            Some(same) => Some(same),
            None => build_tenant(dir, tenant, schema, &names, &global, mine, report),
        };
        if let Some(built) = built {
            let version = set_version(dir, schema_hash, global_files.as_ref(), &own_group.files);
            compiled.insert(
                tenant.id.clone(),
                TenantPolicies {
                    compiled: built,
                    version,
                    cache: None,
                },
            );
            sources.insert(
                tenant.id.clone(),
                TenantSources {
                    info: tenant.clone(),
                    own: own_group,
                },
            );
        }
    }

    if !report.problems.is_empty() {
        return None;
    }
    let schema = schema?;
    let sample_principal =
        EntityUid::from_type_name_and_id(names.workload.clone(), EntityId::new("schema/check"));
    let engine = PolicyEngine {
        tenants: compiled,
        action_http: names.action_http,
        action_use_credential: names.action_use_credential,
        action_connect: names.action_connect,
        action_connect_opaque: names.action_connect_opaque,
        action_mcp_tool_call: names.action_mcp_tool_call,
        action_mcp_resource: names.action_mcp_resource,
        action_mcp_prompt: names.action_mcp_prompt,
        destination_type: names.destination,
        credential_type: names.credential,
        mcp_tool_type: names.mcp_tool,
        mcp_resource_type: names.mcp_resource,
        mcp_prompt_type: names.mcp_prompt,
        authorizer: Authorizer::new(),
        schema,
        warnings: Vec::new(),
        sources: Sources {
            dir: dir.to_path_buf(),
            schema: schema_hash?,
            global: global_files?,
            tenants: sources,
            retired,
        },
    };
    let schema_path = dir.join(SCHEMA_FILE);
    let mut mismatches = engine.schema_mismatches(&sample_principal);
    if let Some(text) = report.texts.get(&schema_path) {
        mismatches.extend(declared_never_given(text));
    }
    for mismatch in mismatches {
        report.file(&schema_path, mismatch);
    }
    report.problems.is_empty().then_some(engine)
}

/// `(id, index of its file in files)` of each of `loaded`.
fn ids_by_file(loaded: &[Loaded], files: &FileKey) -> Vec<(String, usize)> {
    loaded
        .iter()
        .map(|l| {
            let file = files
                .iter()
                .position(|(f, _)| *f == l.file)
                .unwrap_or(usize::MAX);
            (l.id.clone(), file)
        })
        .collect()
}

/// One tenant's policy set (global + its own) and entities.
fn build_tenant(
    dir: &Path,
    tenant: &TenantInfo,
    schema: &Schema,
    names: &Names,
    global: &[Loaded],
    mine: Own<'_>,
    report: &mut Report,
) -> Option<Arc<CompiledTenant>> {
    let mut set = PolicySet::new();
    let mut approvals = HashMap::new();
    for l in global {
        // Duplicates were reported above; `add` refuses them again, which is fine.
        let _ = set.add(l.policy.clone());
        if let Some(rule) = &l.approval {
            approvals.insert(l.id.clone(), rule.clone());
        }
    }
    match mine {
        Own::Fresh { loaded, .. } => {
            for l in loaded {
                if let Some(rule) = l.approval {
                    approvals.insert(l.id.clone(), rule);
                }
                let _ = set.add(l.policy);
            }
        }
        Own::Reused { sources, compiled } => {
            // The same bytes against the same schema parse to the same policies, which the
            // previous set holds under the same ids (ids are unique in a set that loaded).
            for (id, _) in &sources.own.ids {
                let Some(p) = compiled.policies.policy(&PolicyId::new(id)) else {
                    // SECURITY: never build a set that silently lacks one of its policies (a
                    // forbid, say); refuse the load and keep the last good engine.
                    report.file(
                        dir,
                        format!(
                            "policy `{id}` of tenant `{}` could not be reused: reload again",
                            tenant.id
                        ),
                    );
                    return None;
                };
                let _ = set.add(p.clone());
                if let Some(rule) = compiled.approvals.get(id) {
                    approvals.insert(id.clone(), rule.clone());
                }
            }
        }
    }
    match build_entities(tenant, schema, names) {
        Ok((entities, principals)) => Some(Arc::new(CompiledTenant {
            policies: set,
            entities,
            principals,
            approvals,
        })),
        Err(e) => {
            report.file(
                &dir.join(SCHEMA_FILE),
                format!("tenant `{}` does not fit the schema: {e}", tenant.id),
            );
            None
        }
    }
}

/// The schema names the engine relies on, parsed once.
struct Names {
    tenant: EntityTypeName,
    workload: EntityTypeName,
    destination: EntityTypeName,
    credential: EntityTypeName,
    mcp_tool: EntityTypeName,
    mcp_resource: EntityTypeName,
    mcp_prompt: EntityTypeName,
    action_http: EntityUid,
    action_use_credential: EntityUid,
    action_connect: EntityUid,
    action_connect_opaque: EntityUid,
    action_mcp_tool_call: EntityUid,
    action_mcp_resource: EntityUid,
    action_mcp_prompt: EntityUid,
}

impl Names {
    fn new() -> Result<Self, String> {
        let ty = |name: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{name}")).map_err(|e| e.to_string())
        };
        let action_type = ty("Action")?;
        let action =
            |name: &str| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(name));
        Ok(Self {
            tenant: ty("Tenant")?,
            workload: ty("Workload")?,
            destination: ty("Destination")?,
            credential: ty("Credential")?,
            mcp_tool: ty("McpTool")?,
            mcp_resource: ty("McpResource")?,
            mcp_prompt: ty("McpPrompt")?,
            action_http: action("http"),
            action_use_credential: action("use_credential"),
            action_connect: action("connect"),
            action_connect_opaque: action("connect_opaque"),
            action_mcp_tool_call: action("mcp_tool_call"),
            action_mcp_resource: action("mcp_resource"),
            action_mcp_prompt: action("mcp_prompt"),
        })
    }
}

/// The schema and the hash of its bytes.
fn read_schema(dir: &Path, report: &mut Report) -> (Option<Schema>, Option<ContentHash>) {
    let path = dir.join(SCHEMA_FILE);
    let text = match crate::whole_file::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            report.file(&path, format!("cannot read the schema: {e}"));
            return (None, None);
        }
    };
    let hash = content_hash(text.as_bytes());
    let parsed = Schema::from_cedarschema_str(&text);
    report.texts.insert(path.clone(), text);
    match parsed {
        Ok((schema, warnings)) => {
            for w in warnings {
                report.warning(&path, &w);
            }
            (Some(schema), Some(hash))
        }
        Err(e) => {
            report.diagnostic(&path, &e);
            (None, Some(hash))
        }
    }
}

/// Every action the engine asks about must be declared, or all its requests would deny with no
/// policy able to help.
fn check_actions(schema: &Schema, names: &Names, path: &Path, report: &mut Report) {
    let declared: HashSet<&EntityUid> = schema.actions().collect();
    for action in [
        &names.action_http,
        &names.action_use_credential,
        &names.action_connect,
        &names.action_connect_opaque,
        &names.action_mcp_tool_call,
        &names.action_mcp_resource,
        &names.action_mcp_prompt,
    ] {
        if !declared.contains(action) {
            report.file(
                path,
                format!("the schema does not declare action `{action}`"),
            );
        }
    }
}

/// The entries of `dir`, sorted; a directory that is missing or cannot be read is a problem.
fn entries(dir: &Path, report: &mut Report) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(iter) => {
            let mut paths = Vec::new();
            for entry in iter {
                match entry {
                    Ok(e) => paths.push(e.path()),
                    Err(e) => report.file(dir, format!("cannot list: {e}")),
                }
            }
            paths.sort();
            paths
        }
        // SECURITY: `global/` or `tenants/` moved away for a moment (a directory swapped, a
        // checkout in progress) would load as no policies, its forbids dropped; refuse, so that
        // a reload keeps the last good set and a start stops. An empty directory is fine.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.file(dir, MISSING_DIRECTORY);
            Vec::new()
        }
        // SECURITY: an unreadable directory may hold forbids; refuse rather than load without it.
        Err(e) => {
            report.file(dir, format!("cannot list: {e}"));
            Vec::new()
        }
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_cedar(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "cedar")
}

/// `tenants/<tenant>/`: each directory must name a configured tenant, or one a reload took out
/// of the configuration (`retired`). A directory whose files all have the bytes `previous`
/// compiled the tenant from is not parsed again.
fn read_tenant_dirs<'a>(
    root: &Path,
    configured: &HashSet<&TenantId>,
    retired: &HashSet<TenantId>,
    previous: Option<&'a PolicyEngine>,
    report: &mut Report,
) -> HashMap<TenantId, Own<'a>> {
    let mut out = HashMap::new();
    for path in entries(&root.join("tenants"), report) {
        if is_hidden(&path) {
            continue;
        }
        if !path.is_dir() {
            if is_cedar(&path) {
                report.file(
                    &path,
                    "a policy file directly under `tenants/` applies to no tenant: move it into \
                     `tenants/<tenant>/` or `global/`",
                );
            }
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match TenantId::new(&name) {
            Ok(id) if configured.contains(&id) => {
                let listed = list_policy_dir(&path, report);
                let files = file_key(&listed);
                // SECURITY: only this tenant's own previous files are candidates, under its id.
                let reused = previous.and_then(|p| {
                    let sources = p.sources.tenants.get(&id)?;
                    let compiled = &p.tenants.get(&id)?.compiled;
                    (files.as_ref() == Some(&sources.own.files))
                        .then_some(Own::Reused { sources, compiled })
                });
                let own = match reused {
                    Some(own) => own,
                    None => Own::Fresh {
                        loaded: parse_listed(root, &listed, report),
                        files: files.unwrap_or_default(),
                    },
                };
                out.insert(id, own);
            }
            // A tenant just taken out of the tenant file (an operator cutting it off) leaves its
            // directory behind: its policies apply to no one any more, and the removal must not
            // wait for the directory to go too (a rejected reload would keep serving the tenant).
            Ok(id) if retired.contains(&id) => report.note(
                &path,
                format!(
                    "policies for tenant `{name}`, which the configuration no longer defines: \
                     not loaded (remove the directory)"
                ),
            ),
            // SECURITY: policies for a tenant the configuration does not define are most likely
            // a typo in the directory name, whose forbids would silently apply to no one.
            Ok(_) => report.file(
                &path,
                format!("policies for tenant `{name}`, which the configuration does not define"),
            ),
            Err(e) => report.file(&path, e.to_string()),
        }
    }
    out
}

/// One entry of a policy directory, read but not parsed yet.
enum Listed {
    /// A subdirectory (not read; a problem).
    Subdirectory(PathBuf),
    /// A `*.cedar` file that could not be read.
    Unreadable(PathBuf, String),
    /// A `*.cedar` file, its text kept in the report, with the hash of its bytes.
    Cedar(PathBuf, ContentHash),
}

/// Reads every `*.cedar` file directly in `dir`, in name order, keeping each text in `report`;
/// reports only a listing failure (the rest is reported by [`parse_listed`], in order).
fn list_policy_dir(dir: &Path, report: &mut Report) -> Vec<Listed> {
    let mut out = Vec::new();
    for path in entries(dir, report) {
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            out.push(Listed::Subdirectory(path));
            continue;
        }
        if is_cedar(&path) {
            match crate::whole_file::read_to_string(&path) {
                // SECURITY: an empty file is valid Cedar, and it is also what a file rewritten
                // in place (`cat new > file`: truncated, then written) holds for a moment, or
                // its header comment alone when the write stopped after it (every shipped file
                // opens with one). Taken as it is, a reload in that moment would drop the
                // file's forbids; refused, the last good policies stay until the file is whole.
                Ok(text) if holds_no_policy(&text) => out.push(Listed::Unreadable(
                    path,
                    "the file holds no policy, only blanks or comments (one being rewritten in place?): delete a policy file to remove its policies, and replace files whole (write another, then rename it over)".into(),
                )),
                Ok(text) => {
                    let hash = content_hash(text.as_bytes());
                    report.texts.insert(path.clone(), text);
                    out.push(Listed::Cedar(path, hash));
                }
                Err(e) => out.push(Listed::Unreadable(path, e.to_string())),
            }
        }
    }
    out
}

/// Whether `text` is blank lines and `//` comments only (Cedar has no other comments).
fn holds_no_policy(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with("//")
    })
}

/// The files of a listing and their hashes, when every entry was read and none is a
/// subdirectory (a listing with problems is never reused).
fn file_key(listed: &[Listed]) -> Option<FileKey> {
    listed
        .iter()
        .map(|l| match l {
            Listed::Cedar(path, hash) => Some((path.clone(), *hash)),
            Listed::Subdirectory(_) | Listed::Unreadable(..) => None,
        })
        .collect()
}

/// Parses the files of a listing, in name order, reporting its problems in that order.
fn parse_listed(root: &Path, listed: &[Listed], report: &mut Report) -> Vec<Loaded> {
    let mut out = Vec::new();
    for entry in listed {
        match entry {
            // SECURITY: files in a subdirectory are not loaded; say so rather than let an
            // author believe they apply.
            Listed::Subdirectory(path) => report.file(
                path,
                "subdirectories are not read: put policy files directly in the directory",
            ),
            Listed::Unreadable(path, e) => report.file(path, format!("cannot read: {e}")),
            Listed::Cedar(path, _) => parse_policy_file(root, path, report, &mut out),
        }
    }
    out
}

fn parse_policy_file(root: &Path, file: &Path, report: &mut Report, out: &mut Vec<Loaded>) {
    let Some(text) = report.texts.get(file) else {
        return;
    };
    let parsed = PolicySet::from_str(text);
    let set = match parsed {
        Ok(set) => set,
        Err(errors) => {
            for e in errors.iter() {
                report.diagnostic(file, e);
            }
            return;
        }
    };
    for t in set.templates() {
        let name = t
            .annotation("id")
            .map_or_else(|| t.id().to_string(), str::to_string);
        report.file(
            file,
            format!("`{name}` is a template (it has `?principal` or `?resource`); only static policies are supported"),
        );
    }
    let rel = relative(root, file);
    // `from_str` names policies `policy0`, `policy1`, … in source order; the map it keeps them
    // in does not preserve that order.
    let mut policies: Vec<(usize, &Policy)> = set
        .policies()
        .map(|p| {
            let n = p
                .id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    policies.sort_by_key(|(n, _)| *n);
    for (n, p) in policies {
        let id = match p.annotation("id") {
            Some("") => {
                report.at(
                    file,
                    find_annotation(report.texts.get(file), "", 0),
                    "`@id` needs a value, e.g. `@id(\"allow-openai\")`",
                );
                continue;
            }
            Some(id) => id.to_string(),
            None => format!("{rel}#{n}"),
        };
        let approval = ApprovalRule::from_policy(p).unwrap_or_else(|e| {
            report.file(file, format!("policy `{id}`: {e}"));
            None
        });
        out.push(Loaded {
            policy: p.new_id(PolicyId::new(&id)),
            id,
            file: file.to_path_buf(),
            approval,
        });
    }
}

/// `file` relative to `root` with `/` separators, for default policy ids.
fn relative(root: &Path, file: &Path) -> String {
    match file.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => file.display().to_string(),
    }
}

/// Where the `nth` `@id("<id>")` of a file is, when it is written in that plain form.
fn find_annotation(text: Option<&String>, id: &str, nth: usize) -> Option<(usize, usize)> {
    let text = text?;
    let needle = format!("@id(\"{id}\")");
    let (offset, _) = text.match_indices(&needle).nth(nth)?;
    Some(line_col(text, offset))
}

/// Policy ids must be unique in every set a policy joins: among `policies` (`(id, file)` in
/// load order) themselves and against `others` (the global policies, for a tenant's own).
fn check_unique_ids(policies: &[(&str, &Path)], others: &[(&str, &Path)], report: &mut Report) {
    let mut seen: HashMap<&str, &Path> = others.iter().copied().collect();
    // How many times each (file, id) was met, to point at the right `@id` in the file.
    let mut met: HashMap<(&Path, &str), usize> = HashMap::new();
    for &(id, file) in policies {
        let nth = met.entry((file, id)).or_insert(0);
        if let Some(first) = seen.get(id) {
            let at = find_annotation(report.texts.get(file), id, *nth);
            report.at(
                file,
                at,
                format!(
                    "policy id `{id}` is already used in `{}`: ids must be unique in a tenant's policy set",
                    first.display()
                ),
            );
        } else {
            seen.insert(id, file);
        }
        *nth += 1;
    }
}

/// The entity a policy's principal is (`==`, `in`, `is … in`), when it names one.
fn principal(l: &Loaded) -> Option<cedar_policy::EntityUid> {
    match l.policy.principal_constraint() {
        cedar_policy::PrincipalConstraint::Eq(uid)
        | cedar_policy::PrincipalConstraint::In(uid)
        | cedar_policy::PrincipalConstraint::IsIn(_, uid) => Some(uid),
        _ => None,
    }
}

/// Warns about each of `tenant`'s own policies whose principal is another tenant or one of its
/// workloads. A tenant's policies are asked only about its own requests, so such a policy never
/// applies: a forbid written in the wrong directory would protect nothing, silently. (Not a
/// load problem: it refuses nothing that loads would otherwise allow.)
fn warn_foreign_principals(tenant: &TenantId, policies: &[Loaded], report: &mut Report) {
    for l in policies {
        let Some(uid) = principal(l) else {
            continue;
        };
        let id = uid.id().unescaped();
        let owner = match uid.type_name().to_string().as_str() {
            "TenantProxy::Tenant" => id,
            "TenantProxy::Workload" => id.split_once('/').map_or(id, |(t, _)| t),
            _ => continue,
        };
        if owner == tenant.as_str() {
            continue;
        }
        let message = format!(
            "policy `{}` is in tenant `{tenant}`'s directory but its principal is {uid}: a tenant's policies are asked only about its own requests, so it never applies; move it to `tenants/{owner}/`",
            l.id
        );
        // Located at the principal's id, after the policy's own `@id` when it has one.
        warn_at(report, l, &format!("\"{}\"", uid.id().escaped()), message);
    }
}

/// Warns about each of `tenant`'s own policies whose principal is a workload of that tenant it
/// does not have (a typo such as `acme/reseacher`): the policy never applies, and a forbid
/// meant to hold would not.
fn warn_unknown_workloads(tenant: &TenantInfo, policies: &[Loaded], report: &mut Report) {
    // Checked without a tenant file (`policy check DIR`), a tenant's workloads are not known.
    if tenant.workloads.is_empty() {
        return;
    }
    for l in policies {
        let Some(uid) = principal(l) else {
            continue;
        };
        if uid.type_name().to_string() != "TenantProxy::Workload" {
            continue;
        }
        let Some((owner, workload)) = uid.id().unescaped().split_once('/') else {
            continue;
        };
        if owner != tenant.id.as_str() || tenant.workloads.iter().any(|w| w.as_str() == workload) {
            continue;
        }
        let message = format!(
            "policy `{}` names workload `{workload}`, which tenant `{owner}` does not have: it never applies",
            l.id
        );
        warn_at(report, l, &format!("\"{}\"", uid.id().escaped()), message);
    }
}

/// Warns about each global policy whose principal no request can be: a workload id that is not
/// `tenant/workload` (`Workload::"support-bot"`), and, when the configuration names the tenants'
/// workloads (`--config`, start, reload), a tenant it does not have (`Tenant::"Acme"`) or a
/// workload its tenant does not have (`acme/reseacher`). A global forbid meant to hold for
/// them would protect nothing, silently.
fn warn_unknown_global_principals(
    tenants: &[TenantInfo],
    policies: &[Loaded],
    report: &mut Report,
) {
    let configured = tenants.iter().any(|t| !t.workloads.is_empty());
    for l in policies {
        let Some(uid) = principal(l) else {
            continue;
        };
        let id = uid.id().unescaped();
        let never = match uid.type_name().to_string().as_str() {
            "TenantProxy::Workload" => match id.split_once('/') {
                None => Some(format!(
                    "names workload `{id}`, which is no workload's id (they are `tenant/workload`)"
                )),
                Some((owner, workload)) if configured => {
                    match tenants.iter().find(|t| t.id.as_str() == owner) {
                        None => Some(format!(
                            "names workload `{id}` of tenant `{owner}`, which the configuration does not have"
                        )),
                        Some(t) if !t.workloads.iter().any(|w| w.as_str() == workload) => {
                            Some(format!(
                                "names workload `{workload}`, which tenant `{owner}` does not have"
                            ))
                        }
                        Some(_) => None,
                    }
                }
                Some(_) => None,
            },
            "TenantProxy::Tenant" if configured => (!tenants.iter().any(|t| t.id.as_str() == id))
                .then(|| format!("names tenant `{id}`, which the configuration does not have")),
            _ => None,
        };
        if let Some(why) = never {
            let message = format!("policy `{}` {why}: it never applies", l.id);
            warn_at(report, l, &format!("\"{}\"", uid.id().escaped()), message);
        }
    }
}

/// Warns about each policy that compares a context attribute (or its resource) with a literal
/// no request has, so that the comparison never holds (a forbid that forbids nothing) or, with
/// `!=`, always holds: a host (`Destination` id, `context.host`) not as the proxy gives it (in
/// upper case, with a trailing dot or a port, an IP address in another spelling), a scheme not
/// `http`/`https`, a method not in upper case, an hour, weekday, port or position out of range
/// (see [`context_values`]). In the scope and in conditions alike.
fn warn_unmatchable_literals(policies: &[Loaded], report: &mut Report) {
    for l in policies {
        let mut found: Vec<Compared> = Vec::new();
        if let cedar_policy::ResourceConstraint::Eq(uid)
        | cedar_policy::ResourceConstraint::In(uid)
        | cedar_policy::ResourceConstraint::IsIn(_, uid) = l.policy.resource_constraint()
        {
            if uid.type_name().to_string() == DESTINATION {
                found.push(Compared {
                    attr: "host",
                    literal: uid.id().unescaped().into(),
                    op: "==",
                });
            }
        }
        if let Ok(json) = l.policy.to_json() {
            compared_literals(&json, &mut found);
        }
        for c in found {
            let why = match (&c.literal, c.op) {
                (serde_json::Value::String(text), "like") => {
                    context_values::impossible_in_pattern(c.attr, text)
                }
                (literal, op @ ("<" | "<=" | ">" | ">=")) => literal
                    .as_i64()
                    .and_then(|n| context_values::impossible_comparison(c.attr, op, n)),
                (literal, _) => context_values::impossible(c.attr, literal),
            };
            let Some(why) = why else { continue };
            let shown = match &c.literal {
                serde_json::Value::String(text) => format!("\"{text}\""),
                other => other.to_string(),
            };
            let outcome = if c.op == "!=" {
                "always holds"
            } else {
                "never holds"
            };
            let message = format!(
                "policy `{}` compares the {} with {shown}, which no request has ({why}): that comparison {outcome}",
                l.id, c.attr
            );
            warn_at(report, l, &shown, message);
        }
    }
}

const DESTINATION: &str = "TenantProxy::Destination";

/// A comparison in a policy's conditions of a context attribute (or the resource, as `host`)
/// with a literal.
struct Compared {
    attr: &'static str,
    literal: serde_json::Value,
    /// `==`, `!=`, `contains`, `in`, `like` (its literal then the pattern, `*` for wildcards),
    /// or `<`, `<=`, `>`, `>=` (as if the attribute were on the left).
    op: &'static str,
}

/// The literals a policy's conditions compare a context attribute the proxy narrows (see
/// [`context_values`]) or the resource with (`==`, `!=`, `in`, `like`, a set's `contains`),
/// from its JSON form.
fn compared_literals(v: &serde_json::Value, out: &mut Vec<Compared>) {
    use serde_json::Value;
    const ATTRS: [&str; 7] = [
        "host", "method", "scheme", "hour", "weekday", "port", "position",
    ];
    /// The attribute `v` reads; `resource` reads as `host`, its literals being Destinations.
    fn attr(v: &Value) -> Option<(&'static str, bool)> {
        if v.get("Var").and_then(Value::as_str) == Some("resource") {
            return Some(("host", true));
        }
        let dot = v.get(".")?;
        if dot.get("left")?.get("Var")?.as_str()? != "context" {
            return None;
        }
        let name = dot.get("attr").and_then(Value::as_str)?;
        ATTRS.into_iter().find(|a| *a == name).map(|a| (a, false))
    }
    fn literals(v: &Value, resource: bool) -> Vec<Value> {
        match (v.get("Value"), v.get("Set")) {
            (Some(Value::Object(e)), _) if resource => e
                .get("__entity")
                .filter(|e| e.get("type").and_then(Value::as_str) == Some(DESTINATION))
                .and_then(|e| e.get("id").cloned())
                .into_iter()
                .collect(),
            (Some(scalar @ (Value::String(_) | Value::Number(_))), _) if !resource => {
                vec![scalar.clone()]
            }
            (_, Some(Value::Array(items))) => {
                items.iter().flat_map(|i| literals(i, resource)).collect()
            }
            _ => Vec::new(),
        }
    }
    match v {
        Value::Object(map) => {
            for (op, args) in map {
                let (left, right) = (args.get("left"), args.get("right"));
                let op: &'static str = match op.as_str() {
                    "==" => "==",
                    "!=" => "!=",
                    "contains" => "contains",
                    "in" => "in",
                    "like" => "like",
                    "<" => "<",
                    "<=" => "<=",
                    ">" => ">",
                    ">=" => ">=",
                    _ => "",
                };
                match op {
                    "==" | "!=" | "contains" | "in" => {
                        for (a, b) in [(left, right), (right, left)] {
                            if let (Some((attr, resource)), Some(other)) = (a.and_then(attr), b) {
                                out.extend(
                                    literals(other, resource)
                                        .into_iter()
                                        .map(|literal| Compared { attr, literal, op }),
                                );
                            }
                        }
                    }
                    "<" | "<=" | ">" | ">=" => {
                        // Read with the attribute on the left: `24 <= context.hour` is
                        // `context.hour >= 24`.
                        let flipped = match op {
                            "<" => ">",
                            "<=" => ">=",
                            ">" => "<",
                            _ => "<=",
                        };
                        for (a, b, op) in [(left, right, op), (right, left, flipped)] {
                            if let (Some((attr, false)), Some(number)) =
                                (a.and_then(attr), b.and_then(|b| b.get("Value")))
                            {
                                if number.is_i64() {
                                    out.push(Compared {
                                        attr,
                                        literal: number.clone(),
                                        op,
                                    });
                                }
                            }
                        }
                    }
                    "like" => {
                        if let (Some((attr, false)), Some(Value::Array(pattern))) =
                            (left.and_then(attr), args.get("pattern"))
                        {
                            let text: String = pattern
                                .iter()
                                .map(|e| e.get("Literal").and_then(Value::as_str).unwrap_or("*"))
                                .collect();
                            out.push(Compared {
                                attr,
                                literal: Value::String(text),
                                op,
                            });
                        }
                    }
                    _ => {}
                }
                compared_literals(args, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| compared_literals(i, out)),
        _ => {}
    }
}

/// Pushes a warning about policy `l`, located at `needle`'s first place after its `@id` (when
/// it has one).
fn warn_at(report: &mut Report, l: &Loaded, needle: &str, message: String) {
    let line = report.texts.get(&l.file).and_then(|text| {
        let from = text.find(&format!("@id(\"{}\")", l.id)).unwrap_or(0);
        let at = text.get(from..)?.find(needle)?;
        Some(line_col(text, from + at))
    });
    report.push_warning(PolicyProblem {
        file: l.file.clone(),
        line: line.map(|(l, _)| l),
        column: line.map(|(_, c)| c),
        message,
    });
}

/// Strictly validates `policies` and reports each error at its source location.
fn validate(validator: &Validator, policies: &[Loaded], report: &mut Report) {
    let mut set = PolicySet::new();
    let mut origin: HashMap<&str, &Path> = HashMap::new();
    for l in policies {
        if origin.contains_key(l.id.as_str()) {
            continue;
        }
        if set.add(l.policy.clone()).is_ok() {
            origin.insert(&l.id, &l.file);
        }
    }
    let result = validator.validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let id = e.policy_id().to_string();
        match origin.get(id.as_str()) {
            Some(file) => report.diagnostic(file, e),
            None => report.file(Path::new(&id), e.to_string()),
        }
    }
    for w in result.validation_warnings() {
        match origin.get(w.policy_id().to_string().as_str()) {
            Some(file) => report.warning(file, w),
            None => report.warning(&PathBuf::from(w.policy_id().to_string()), w),
        }
    }
}

type Principals = HashMap<WorkloadId, EntityUid>;

/// The attributes [`build_entities`] gives each entity type the proxy builds or names (the
/// others: none).
const ENTITY_ATTRIBUTES: [(&str, &[&str]); 7] = [
    ("Tenant", &["plan", "region"]),
    ("Workload", &["tenant", "name"]),
    ("Destination", &[]),
    ("Credential", &[]),
    ("McpTool", &[]),
    ("McpResource", &[]),
    ("McpPrompt", &[]),
];

/// What the schema (`text`) declares that the proxy never gives: an optional context attribute
/// no request carries (`user_agent?: String`), an attribute of an entity it never sets
/// (`entity Destination = { risk?: String }`). One message each.
///
/// SECURITY: validation accepts a policy that reads such an attribute (with `has`, or on an
/// optional one), `policy test` accepts cases that give it, and no request ever does: a
/// `forbid` on it forbids nothing.
fn declared_never_given(text: &str) -> Vec<String> {
    use serde_json::Value;
    let Ok(json) = cedar_policy::SchemaFragment::from_cedarschema_str(text)
        .map_err(|_| ())
        .and_then(|(fragment, _)| fragment.to_json_value().map_err(|_| ()))
    else {
        return Vec::new();
    };
    let Some(ns) = json.get(NAMESPACE) else {
        return Vec::new();
    };
    // A record's attribute names, inline or through a common type (of this namespace, another
    // one named in full, or the empty one).
    let attributes = |ty: &Value| -> Vec<String> {
        let name = match ty.get("type").and_then(Value::as_str) {
            Some("Record") => None,
            Some("EntityOrCommon") => ty.get("name").and_then(Value::as_str),
            other => other,
        };
        let record = match name {
            None => Some(ty),
            Some(name) => {
                let (space, local) = name.rsplit_once("::").unwrap_or((NAMESPACE, name));
                let common = |space: &str| json.get(space)?.get("commonTypes")?.get(local);
                common(space).or_else(|| common(""))
            }
        };
        record
            .and_then(|r| r.get("attributes"))
            .and_then(Value::as_object)
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default()
    };
    let sent_by_action = super::sent_context_attributes();
    let mut out = Vec::new();
    // Actions the proxy never asks, in any namespace: a policy on one never applies.
    for (space, declared) in json.as_object().into_iter().flatten() {
        for action in declared
            .get("actions")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|a| a.keys())
        {
            if space != NAMESPACE || !sent_by_action.iter().any(|(a, _)| a == action) {
                let place = if space.is_empty() {
                    String::new()
                } else {
                    format!(" in `{space}`")
                };
                out.push(format!(
                    "the schema declares action `{action}`{place}, which the proxy never asks: a policy on it never applies"
                ));
            }
        }
    }
    for (action, sent) in sent_by_action {
        let Some(context) = ns.pointer(&format!("/actions/{action}/appliesTo/context")) else {
            continue;
        };
        for attr in attributes(context) {
            if !sent.contains(&attr) {
                out.push(format!(
                    "the schema declares `{attr}` in the context of action `{action}`, which the proxy never sends: a policy that reads it never holds"
                ));
            }
        }
    }
    for (entity, given) in ENTITY_ATTRIBUTES {
        let Some(declared) = ns.pointer(&format!("/entityTypes/{entity}")) else {
            continue;
        };
        // The proxy makes a workload a member of its tenant, and nothing else a member of
        // anything; it sets no tags.
        let parents: &[&str] = if entity == "Workload" {
            &["Tenant"]
        } else {
            &[]
        };
        for parent in declared
            .get("memberOfTypes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let local = parent.rsplit_once("::").map_or(parent, |(_, l)| l);
            if !parents.contains(&local) {
                out.push(format!(
                    "the schema makes `{entity}` a member of `{parent}`, which the proxy never does: a policy that asks `in` it never holds"
                ));
            }
        }
        if declared.get("tags").is_some() {
            out.push(format!(
                "the schema declares tags on `{entity}`, which the proxy never sets: a policy that reads them never holds"
            ));
        }
        let Some(shape) = declared.get("shape") else {
            continue;
        };
        for attr in attributes(shape) {
            if !given.contains(&attr.as_str()) {
                out.push(format!(
                    "the schema declares `{attr}` on `{entity}`, which the proxy never gives it: a policy that reads it never holds"
                ));
            }
        }
    }
    out
}

/// The tenant entity and its workloads, checked against the schema.
fn build_entities(
    tenant: &TenantInfo,
    schema: &Schema,
    names: &Names,
) -> Result<(Entities, Principals), String> {
    let tenant_uid =
        EntityUid::from_type_name_and_id(names.tenant.clone(), EntityId::new(tenant.id.as_str()));
    let tenant_entity = Entity::new(
        tenant_uid.clone(),
        HashMap::from([
            (
                "plan".to_string(),
                RestrictedExpression::new_string(tenant.plan.clone()),
            ),
            (
                "region".to_string(),
                RestrictedExpression::new_string(tenant.region.clone()),
            ),
        ]),
        HashSet::new(),
    )
    .map_err(|e| e.to_string())?;
    let mut entities = Vec::with_capacity(tenant.workloads.len() + 1);
    entities.push(tenant_entity);
    let mut principals = HashMap::with_capacity(tenant.workloads.len());
    for w in &tenant.workloads {
        // The tenant is part of the id, so two tenants' workloads never share an entity.
        let uid = EntityUid::from_type_name_and_id(
            names.workload.clone(),
            EntityId::new(format!("{}/{}", tenant.id, w)),
        );
        let entity = Entity::new(
            uid.clone(),
            HashMap::from([
                (
                    "tenant".to_string(),
                    RestrictedExpression::new_entity_uid(tenant_uid.clone()),
                ),
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(w.to_string()),
                ),
            ]),
            HashSet::from([tenant_uid.clone()]),
        )
        .map_err(|e| e.to_string())?;
        entities.push(entity);
        principals.insert(w.clone(), uid);
    }
    let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())?;
    Ok((entities, principals))
}

#[cfg(test)]
mod tests {
    use super::{fold_per_action, line_col, PolicyProblem};

    #[test]
    fn line_col_counts_lines_and_characters() {
        let cases = [
            ("start", "abc", 0, (1, 1)),
            ("same line", "abc", 2, (1, 3)),
            ("second line", "ab\ncd", 4, (2, 2)),
            ("after newline", "ab\n", 3, (2, 1)),
            ("multibyte", "é\nxé_", 6, (2, 3)),
            ("past the end", "ab", 99, (1, 3)),
        ];
        for (name, text, offset, want) in cases {
            assert_eq!(line_col(text, offset), want, "{name}");
        }
    }

    #[test]
    fn one_mistake_checked_for_several_actions_is_one_problem_naming_them() {
        let at = |line, message: &str| PolicyProblem {
            file: "t.cedar".into(),
            line: Some(line),
            column: Some(45),
            message: message.into(),
        };
        let per_action = |action: &str| {
            format!("for policy `typo`, attribute `hots` in context for TenantProxy::Action::\"{action}\" not found; help: did you mean `host`?")
        };
        let mut list = Vec::new();
        for action in ["http", "connect", "mcp_tool_call", "connect"] {
            fold_per_action(&mut list, at(2, &per_action(action)));
        }
        // Another place, and another message at the same place, stay apart.
        fold_per_action(&mut list, at(3, &per_action("http")));
        fold_per_action(&mut list, at(2, "unexpected token"));
        let messages: Vec<&str> = list.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "for policy `typo`, attribute `hots` in context for TenantProxy::Action::\"connect\", \"http\", \"mcp_tool_call\" not found; help: did you mean `host`?",
                per_action("http").as_str(),
                "unexpected token",
            ]
        );
    }
}
