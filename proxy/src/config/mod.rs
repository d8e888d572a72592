//! Configuration: a static part read once at start and a tenant part reloaded at runtime.
//!
//! Both files are parsed into raw serde structs ([`spec`]) with `deny_unknown_fields`; each
//! section's raw form and its validator live with the concern that owns the section
//! (`[audit]` in `audit::settings`, `[[listener]]` in `identity::listener`, `[limiter]` and the
//! tenants' ceilings in `limits::settings`, `[egress]` and `[upstream]` in `egress::settings`,
//! `[intercept]` in `tls::settings`, `[limits]` in `front::settings`, `[log]` in `logging`,
//! `[token]` in `identity::token::settings`, `[[route]]` in `target::settings`,
//! `[credentials]` in `credentials::settings`, `[mcp]` in `mcp::config`). Validators report into
//! one [`crate::problems::Problems`] per file, so every problem is reported at once; [`model`]
//! assembles the sections into the runtime types. An invalid configuration never exists at
//! runtime.

pub mod admin_token;
pub mod model;
pub mod regions;
pub mod spec;

pub use crate::identity::ListenerSettings;
pub use crate::problems::{relative_to, Checked, ConfigProblem};
pub use model::{readable_secret_warning, StaticConfig, TenantConfig, TenantEntry};

use std::path::{Path, PathBuf};

/// Reads and parses a TOML file into `T`, reporting a syntax or type error with line and column.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigProblem> {
    let text = crate::whole_file::read_to_string(path)
        .map_err(|e| ConfigProblem::file(path, format!("cannot read file: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        let location = e.span().map(|span| {
            let (line, col) = line_col(&text, span.start);
            format!("{line}:{col}")
        });
        ConfigProblem {
            file: path.to_path_buf(),
            location,
            message: e.message().to_string(),
        }
    })
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

/// The tenant file a static file names (resolved against it), read without validating anything
/// else of the static file: so the tenant file can still be checked when the static file has a
/// type error, and tools that need only the tenants (`policy check --config`) run where the
/// listeners' files do not exist.
pub fn tenants_file_named_by(config: &Path) -> Result<PathBuf, ConfigProblem> {
    let text = crate::whole_file::read_to_string(config)
        .map_err(|e| ConfigProblem::file(config, format!("cannot read file: {e}")))?;
    let table: toml::Table = toml::from_str(&text).map_err(|_| {
        ConfigProblem::file(
            config,
            "the file is not TOML, so the `tenants_file` it names cannot be read from it",
        )
    })?;
    let name = table
        .get("tenants_file")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            ConfigProblem::file(
                config,
                "the file names no `tenants_file` (a path, as a string)",
            )
        })?;
    Ok(relative_to(config, Path::new(name)))
}
