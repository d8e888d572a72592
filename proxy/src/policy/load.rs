//! Reading, validating and compiling the policy directory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Entities, Entity, EntityId, EntityUid, Policy, PolicyId, PolicySet,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use super::{type_name, PolicyEngine, PolicyProblem, TenantInfo, TenantPolicies};
use crate::ids::TenantId;

/// One parsed policy with where it came from.
struct Loaded {
    policy: Policy,
    file: PathBuf,
    text_index: usize,
}

struct Problems {
    list: Vec<PolicyProblem>,
}

impl Problems {
    fn file(&mut self, file: &Path, message: impl Into<String>) {
        self.list.push(PolicyProblem {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        });
    }

    /// A problem from a cedar diagnostic, located in `text` by its first label.
    fn diagnostic(&mut self, file: &Path, text: &str, d: &dyn Diagnostic, fallback: String) {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        let (line, column) = match offset {
            Some(o) => {
                let (l, c) = crate::config::line_col(text, o);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let mut message = fallback;
        if let Some(help) = d.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        self.list.push(PolicyProblem {
            file: file.to_path_buf(),
            line,
            column,
            message,
        });
    }
}

pub(super) fn load(dir: &Path, tenants: &[TenantInfo]) -> Result<PolicyEngine, Vec<PolicyProblem>> {
    let mut problems = Problems { list: Vec::new() };
    let schema_path = dir.join("schema.cedarschema");
    let schema = match std::fs::read_to_string(&schema_path) {
        Err(e) => {
            problems.file(&schema_path, format!("cannot read the schema: {e}"));
            None
        }
        Ok(text) => match Schema::from_cedarschema_str(&text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                problems.diagnostic(&schema_path, &text, &e, e.to_string());
                None
            }
        },
    };

    let mut texts: Vec<(PathBuf, String)> = Vec::new();
    let global = read_dir_policies(&dir.join("global"), dir, &mut texts, &mut problems);
    let known: HashSet<&TenantId> = tenants.iter().map(|t| &t.id).collect();
    let mut per_tenant: HashMap<TenantId, Vec<Loaded>> = HashMap::new();
    let tenants_dir = dir.join("tenants");
    if let Ok(entries) = std::fs::read_dir(&tenants_dir) {
        let mut entries: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            match TenantId::new(&name) {
                Ok(id) if known.contains(&id) => {
                    let loaded = read_dir_policies(&e.path(), dir, &mut texts, &mut problems);
                    per_tenant.insert(id, loaded);
                }
                Ok(_) => problems.file(
                    &e.path(),
                    format!(
                        "policies for tenant `{name}`, which the configuration does not define"
                    ),
                ),
                Err(err) => problems.file(&e.path(), err.to_string()),
            }
        }
    }

    let Some(schema) = schema else {
        return Err(problems.list);
    };
    let validator = Validator::new(schema.clone());
    let mut compiled = HashMap::new();
    for tenant in tenants {
        let own = per_tenant.remove(&tenant.id).unwrap_or_default();
        let mut set = PolicySet::new();
        let mut origin: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for l in global.iter().chain(own.iter()) {
            let id = l.policy.id().to_string();
            if origin.contains_key(&id) {
                problems.file(
                    &l.file,
                    format!(
                        "policy id `{id}` is used twice in tenant `{}`'s policy set",
                        tenant.id
                    ),
                );
                continue;
            }
            if let Err(e) = set.add(l.policy.clone()) {
                problems.file(&l.file, e.to_string());
                continue;
            }
            origin.insert(id, (l.file.clone(), l.text_index));
        }
        // Global files are validated once per tenant set; report each problem only once.
        for err in validator
            .validate(&set, ValidationMode::Strict)
            .validation_errors()
        {
            let Some((file, idx)) = origin.get(&err.policy_id().to_string()) else {
                continue;
            };
            let already = problems
                .list
                .iter()
                .any(|p| p.file == *file && p.message.starts_with(&err.to_string()));
            if !already {
                problems.diagnostic(file, &texts[*idx].1, err, err.to_string());
            }
        }
        match build_entities(tenant, &schema) {
            Ok((entities, principals)) => {
                compiled.insert(
                    tenant.id.clone(),
                    TenantPolicies {
                        policies: set,
                        entities,
                        principals,
                    },
                );
            }
            Err(e) => problems.file(&schema_path, format!("tenant `{}`: {e}", tenant.id)),
        }
    }

    if !problems.list.is_empty() {
        return Err(problems.list);
    }
    let action = |name: &str| {
        EntityUid::from_str(&format!("{}::Action::\"{name}\"", super::NAMESPACE))
            .map_err(|e| e.to_string())
    };
    let engine = (|| -> Result<PolicyEngine, String> {
        Ok(PolicyEngine {
            tenants: compiled,
            action_http: action("http")?,
            action_use_credential: action("use_credential")?,
            destination_type: type_name("Destination")?,
            credential_type: type_name("Credential")?,
            authorizer: Authorizer::new(),
        })
    })();
    engine.map_err(|e| {
        vec![PolicyProblem {
            file: schema_path,
            line: None,
            column: None,
            message: e,
        }]
    })
}

/// Parses every `*.cedar` file in `dir` (sorted), giving each policy its `@id` or
/// `<relative path>#<n>` as id.
fn read_dir_policies(
    dir: &Path,
    root: &Path,
    texts: &mut Vec<(PathBuf, String)>,
    problems: &mut Problems,
) -> Vec<Loaded> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.file(&file, format!("cannot read: {e}"));
                continue;
            }
        };
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        let set = match PolicySet::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                problems.diagnostic(&file, &text, &e, e.to_string());
                continue;
            }
        };
        texts.push((file.clone(), text));
        let text_index = texts.len() - 1;
        // `from_str` names policies `policy0`, `policy1`, … in source order.
        let mut policies: Vec<&Policy> = set.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (n, p) in policies.into_iter().enumerate() {
            let id = p
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{rel}#{n}"));
            out.push(Loaded {
                policy: p.new_id(PolicyId::new(id)),
                file: file.clone(),
                text_index,
            });
        }
    }
    out
}

type Principals = HashMap<crate::ids::WorkloadId, EntityUid>;

fn build_entities(tenant: &TenantInfo, schema: &Schema) -> Result<(Entities, Principals), String> {
    let tenant_uid =
        EntityUid::from_type_name_and_id(type_name("Tenant")?, EntityId::new(tenant.id.as_str()));
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
    let workload_type = type_name("Workload")?;
    let mut entities = vec![tenant_entity];
    let mut principals = HashMap::new();
    for w in &tenant.workloads {
        let uid = EntityUid::from_type_name_and_id(
            workload_type.clone(),
            EntityId::new(format!("{}/{}", tenant.id, w)),
        );
        entities.push(
            Entity::new(
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
            .map_err(|e| e.to_string())?,
        );
        principals.insert(w.clone(), uid);
    }
    let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())?;
    Ok((entities, principals))
}
