//! Configuration: a static part read once at start and a tenant part reloaded at runtime.
//!
//! Both are parsed into raw serde structs ([`spec`]) with `deny_unknown_fields`, then turned into
//! validated runtime types ([`model`]) through `TryFrom`-style conversions that report every
//! problem at once. An invalid configuration never exists at runtime.

pub mod model;
pub mod regions;
pub mod spec;

pub use model::{
    AuditSettings, AuditStreamSettings, FsyncPolicy, ListenerSettings, LogFormat, Route,
    StaticConfig, TenantConfig, UpstreamSettings,
};

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// A line and column (`12:5`) or a field path (`route[1].prefix`).
    pub location: Option<String>,
    /// Why it is rejected.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at a field of `file`.
    pub fn at(file: &Path, location: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Some(location.into()),
            message: message.into(),
        }
    }

    /// A problem with `file` as a whole.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            location: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            // `file:line:col: message` (the form editors jump to), `file: field: message` otherwise.
            Some(loc) if loc.starts_with(|c: char| c.is_ascii_digit()) => {
                write!(f, "{}:{}: {}", self.file.display(), loc, self.message)
            }
            Some(loc) => write!(f, "{}: {}: {}", self.file.display(), loc, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Reads and parses a TOML file into `T`, reporting a syntax or type error with line and column.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigProblem> {
    let text = std::fs::read_to_string(path)
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

/// Resolves `path` relative to the directory of the file that named it.
pub(crate) fn relative_to(base_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path)
    }
}
