//! Many generated tenants, for measuring what the number of tenants costs: `t0`, `t1`, … each
//! on plan `pro` in region `eu` with the workload `bot`, and each with its own policy file of
//! `per_tenant` permits (`tenants/tN/own.cedar`, to hosts `h0.example.com`, …). Shared by the
//! loadtest's `tenants` report and the policy-decision bench (`proxy/benches/hot_path.rs`).

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Tenant, TenantFile};

/// The id of generated tenant `n`.
pub fn tenant_id(n: usize) -> String {
    format!("t{n}")
}

/// The Cedar text of generated tenant `n`'s own policies: `per_tenant` permits of `http` to
/// `h0.example.com`, `h1.example.com`, …, with explicit ids.
pub fn tenant_policies(n: usize, per_tenant: usize) -> String {
    let t = tenant_id(n);
    let mut text = String::new();
    for p in 0..per_tenant {
        let _ = write!(
            text,
            "@id(\"{t}-p{p}\")\npermit (principal in TenantProxy::Tenant::\"{t}\", action == TenantProxy::Action::\"http\", resource)\nwhen {{ context.host == \"h{p}.example.com\" }};\n"
        );
    }
    text
}

/// Adds `count` generated tenants to `tenants` and writes their policy files under
/// `tenants.policy_dir` (which must already hold the schema and global policies).
pub fn add_tenants(
    tenants: &mut TenantFile,
    count: usize,
    per_tenant: usize,
) -> std::io::Result<()> {
    for n in 0..count {
        let own = tenants.policy_dir.join("tenants").join(tenant_id(n));
        std::fs::create_dir_all(&own)?;
        std::fs::write(own.join("own.cedar"), tenant_policies(n, per_tenant))?;
        tenants
            .tenants
            .insert(tenant_id(n), Tenant::new("pro", "eu", &["bot"]));
    }
    Ok(())
}

/// Copies the schema and the global policies of `repo_policies` into `policy_dir` (no tenant's
/// own policies, but the `tenants/` directory a policy directory must have).
pub fn copy_schema_and_global(repo_policies: &Path, policy_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(policy_dir.join("global"))?;
    std::fs::create_dir_all(policy_dir.join("tenants"))?;
    std::fs::copy(
        repo_policies.join("schema.cedarschema"),
        policy_dir.join("schema.cedarschema"),
    )?;
    for entry in std::fs::read_dir(repo_policies.join("global"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(
                entry.path(),
                policy_dir.join("global").join(entry.file_name()),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generated_tenants_have_their_own_policy_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut tenants = TenantFile::new(dir.path().join("policies"));
        add_tenants(&mut tenants, 3, 2).unwrap();
        assert_eq!(tenants.tenants.len(), 3);
        let text =
            std::fs::read_to_string(dir.path().join("policies/tenants/t2/own.cedar")).unwrap();
        assert_eq!(text.matches("permit (").count(), 2);
        assert!(text.contains("@id(\"t2-p1\")") && text.contains("Tenant::\"t2\""));
        let written: toml::Table = tenants.to_toml().unwrap().parse().unwrap();
        assert_eq!(
            written["tenants"]["t1"]["workloads"][0].as_str(),
            Some("bot")
        );
    }
}
