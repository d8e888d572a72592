//! `[credentials]` in the tenant file: where tenants' secrets come from (the embedded vault or
//! mounted files) and how requests toward managed destinations are scanned.

use std::path::PathBuf;

use serde::Deserialize;

use super::apply::{CredentialSettings, RawCredentialMode};
use super::binding::{parse_binding, Position};
use super::files::{FileCredential, FilesStore};
use super::kind::KindName;
use super::positions::CredentialPositions;
use super::vault::{MasterKeySource, VaultStore};
use super::{valid_name, CredentialStore};
use crate::ids::TenantId;
use crate::problems::Problems;

/// `[credentials]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSpec {
    /// The embedded encrypted vault (edit it with `tenant-proxy cred`).
    pub vault_file: Option<PathBuf>,
    /// File holding the base64 master key that unwraps the vault's data keys.
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the base64 master key (instead of a file).
    pub master_key_env: Option<String>,
    /// Mounted secret files, `DIR/<tenant>/<name>` (instead of a vault).
    pub files_dir: Option<PathBuf>,
    /// Credentials read from `files_dir`, with their bindings.
    #[serde(rename = "file", default)]
    pub files: Vec<FileCredentialSpec>,
    /// Largest JSON or form body scanned for handles (bytes).
    #[serde(default = "default_scan_body_max")]
    pub scan_body_max_bytes: usize,
    /// `refuse` (default) or `strip` a literal key sent where the proxy manages the credential.
    #[serde(default)]
    pub raw_credential: RawCredentialMode,
    /// Headers that carry credentials besides every provider's own (`authorization`,
    /// `x-api-key`, …): handles may appear in them, literals may not.
    #[serde(default)]
    pub credential_headers: Vec<String>,
    /// Query parameters and body fields that carry credentials besides every provider's own
    /// (`api_key`, `access_token`, …): handles may appear in them (and nowhere else in a query
    /// or body), literals may not.
    #[serde(default)]
    pub credential_fields: Vec<String>,
    /// How long a token credential's grant (and a wait for one) may take before the request
    /// is refused with `credential_unavailable` (humantime, default `5s`).
    #[serde(default = "default_token_timeout")]
    pub token_timeout: String,
}

fn default_token_timeout() -> String {
    "5s".into()
}

fn default_scan_body_max() -> usize {
    1024 * 1024
}

/// `[[credentials.file]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentialSpec {
    /// Tenant.
    pub tenant: String,
    /// Name (and file name).
    pub name: String,
    /// Destinations: `HOST`, `*.DOMAIN`, optionally `https://HOST:PORT/PATH`.
    pub bind: Vec<String>,
    /// Positions: `header`, `query`, `body` (default `header`).
    #[serde(rename = "in", default)]
    pub positions: Vec<Position>,
    /// `static` (default), `aws_sigv4` (the file holds the key as JSON; the proxy signs),
    /// `oauth2_client_credentials` or `google_service_account` (the file mints access tokens).
    #[serde(default)]
    pub kind: KindName,
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// The embedded vault (editable with `tenant-proxy cred`).
    Vault(VaultStore),
    /// Mounted files.
    Files(FilesStore),
}

impl CredentialSource {
    /// The store behind the source.
    pub fn store(&self) -> &dyn CredentialStore {
        match self {
            CredentialSource::Vault(v) => v,
            CredentialSource::Files(f) => f,
        }
    }
}

/// Validates `[credentials]`: the request-side settings, and the source when exactly one is
/// configured validly (none when the section is absent).
pub fn from_spec(
    spec: Option<CredentialsSpec>,
    p: &mut Problems<'_>,
) -> (CredentialSettings, Option<CredentialSource>) {
    let Some(c) = spec else {
        return (CredentialSettings::default(), None);
    };
    for (i, h) in c.credential_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.push(
                format!("credentials.credential_headers[{i}]"),
                format!("`{h}` is not a header name"),
            );
        }
    }
    for (i, f) in c.credential_fields.iter().enumerate() {
        if f.trim().is_empty() || f.contains(['=', '&', '"']) {
            p.push(
                format!("credentials.credential_fields[{i}]"),
                format!("`{f}` is not a query parameter or body field name"),
            );
        }
    }
    let token_timeout = p.duration("credentials.token_timeout", &c.token_timeout);
    if token_timeout.is_zero() {
        p.push("credentials.token_timeout", "must be more than zero");
    }
    let settings = CredentialSettings {
        token_timeout,
        scan_body_max_bytes: c.scan_body_max_bytes,
        raw_credential: c.raw_credential,
        positions: CredentialPositions::with_extra(&c.credential_headers, &c.credential_fields),
    };
    let source = match (c.vault_file, c.files_dir) {
        (Some(file), None) => vault(file, c.master_key_file, c.master_key_env, &c.files, p),
        (None, Some(dir)) => Some(CredentialSource::Files(FilesStore {
            dir: p.path(&dir),
            declared: declared_files(c.files, p),
        })),
        _ => {
            p.push(
                "credentials",
                "set exactly one of `vault_file` or `files_dir`",
            );
            None
        }
    };
    (settings, source)
}

/// The vault source: its file and exactly one master key source.
fn vault(
    file: PathBuf,
    master_key_file: Option<PathBuf>,
    master_key_env: Option<String>,
    files: &[FileCredentialSpec],
    p: &mut Problems<'_>,
) -> Option<CredentialSource> {
    let master = match (master_key_file, master_key_env) {
        (Some(f), None) => MasterKeySource::File(p.path(&f)),
        (None, Some(v)) => MasterKeySource::Env(v),
        _ => {
            p.push(
                "credentials",
                "a vault needs exactly one of `master_key_file` or `master_key_env`",
            );
            return None;
        }
    };
    if !files.is_empty() {
        p.push(
            "credentials.file",
            "`[[credentials.file]]` entries need `files_dir`, not a vault",
        );
    }
    Some(CredentialSource::Vault(VaultStore {
        file: p.path(&file),
        master,
    }))
}

/// The `[[credentials.file]]` entries whose tenant is valid, each with its bindings. A tenant's
/// credential declared twice is refused: the second entry's bindings would replace the first's,
/// which a reviewer reading the first would take for the ones in force.
fn declared_files(files: Vec<FileCredentialSpec>, p: &mut Problems<'_>) -> Vec<FileCredential> {
    let mut declared: Vec<FileCredential> = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let at = |field: &str| format!("credentials.file[{i}].{field}");
        let Ok(tenant) = TenantId::new(&f.tenant).map_err(|e| p.push(at("tenant"), e.to_string()))
        else {
            continue;
        };
        if declared
            .iter()
            .any(|d| d.tenant == tenant && d.name == f.name)
        {
            p.push(
                at("name"),
                format!(
                    "tenant `{tenant}`'s credential `{}` is declared twice: give each one entry",
                    f.name
                ),
            );
        }
        if !valid_name(&f.name) {
            p.push(at("name"), format!("`{}` is not a credential name", f.name));
        }
        let mut bind = Vec::new();
        for b in &f.bind {
            match parse_binding(b) {
                Ok(b) => bind.push(b),
                Err(e) => p.push(at("bind"), e),
            }
        }
        if bind.is_empty() {
            p.push(
                at("bind"),
                "bind the credential to at least one destination",
            );
        }
        declared.push(FileCredential {
            tenant,
            name: f.name,
            bind,
            positions: default_positions(f.positions),
            expires: None,
            kind: f.kind,
        });
    }
    declared
}

/// Where a handle may appear: as listed, or in a header when none is listed.
fn default_positions(listed: Vec<Position>) -> Vec<Position> {
    if listed.is_empty() {
        vec![Position::Header]
    } else {
        listed
    }
}

/// Parses `header`, `query`, `body` as given on the command line (default: `header` alone).
pub fn parse_positions(names: &[String]) -> Result<Vec<Position>, String> {
    let listed = names
        .iter()
        .map(|n| n.parse::<Position>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(default_positions(listed))
}
