//! What is wrong with a configuration file, and the collector every section's validator reports
//! into.
//!
//! Each concern validates its own section of the configuration next to the settings it owns
//! (`audit::settings`, `limits::settings`, `identity::listener`, ...); `config` reads the
//! files and assembles the sections. The validators report here, a leaf that imports nothing of
//! the crate, so no concern has to import `config` (which imports every concern).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        // One problem, one line (`check`'s list, a log line): a parser's message that spans
        // lines (TOML's `expected …` under its first line) is joined with `; `.
        let message = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        match &self.location {
            // `file:line:col: message` (the form editors jump to), `file: field: message` otherwise.
            Some(loc) if loc.starts_with(|c: char| c.is_ascii_digit()) => {
                write!(f, "{}:{}: {}", self.file.display(), loc, message)
            }
            Some(loc) => write!(f, "{}: {}: {}", self.file.display(), loc, message),
            None => write!(f, "{}: {}", self.file.display(), message),
        }
    }
}

/// A value built from what of a file was valid, and the problems of what was not. Invalid parts
/// hold a harmless placeholder, so later stages (the tenant file after the static one, keys and
/// policies after the tenant file) can still be checked; such a value is never served.
#[derive(Debug)]
pub struct Checked<T> {
    /// The value, with placeholders where a field was rejected.
    pub value: T,
    /// Every problem found; empty when `value` is fully valid.
    pub problems: Vec<ConfigProblem>,
}

impl<T> Checked<T> {
    /// The value when nothing was wrong, else every problem.
    pub fn into_result(self) -> Result<T, Vec<ConfigProblem>> {
        if self.problems.is_empty() {
            Ok(self.value)
        } else {
            Err(self.problems)
        }
    }
}

/// Collects problems while one file's spec is converted, so all of them are reported at once.
/// Locations are field paths (`audit.fsync`, `listener[0].binding`); paths written in the file
/// resolve against the file's directory.
#[derive(Debug)]
pub struct Problems<'a> {
    file: &'a Path,
    list: Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    /// A collector for `file`.
    pub fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    /// Records a problem at `location`.
    pub fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.list
            .push(ConfigProblem::at(self.file, location, message));
    }

    /// Records problems given as `(location, message)` pairs.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = (String, String)>) {
        for (location, message) in problems {
            self.push(location, message);
        }
    }

    /// Parses a duration (`5s`, `250ms`, `1h`); a bad one is recorded and read as zero.
    pub fn duration(&mut self, location: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    location,
                    format!("`{value}` is not a duration ({e}); write e.g. `5s`, `250ms`, `1h`"),
                );
                Duration::ZERO
            }
        }
    }

    /// A duration of at least a millisecond: a timeout of zero (or `1ns`) fires at once (a
    /// request head sent in two packets would get 408), and a lease of zero ends as it starts.
    pub fn positive_duration(&mut self, location: &str, value: &str) -> Duration {
        let problems = self.list.len();
        let d = self.duration(location, value);
        // (A value that is no duration was reported by `duration` already.)
        if d < Duration::from_millis(1) && self.list.len() == problems {
            self.push(location, "must be more than zero (at least `1ms`)");
        }
        d
    }

    /// `path` as written in the file, resolved against the file's directory.
    pub fn path(&self, path: &Path) -> PathBuf {
        relative_to(self.file, path)
    }

    /// Records a problem at `location` unless `path` (already resolved) is a readable file.
    pub fn require_file(&mut self, location: impl Into<String>, path: &Path) {
        if !path.is_file() {
            self.push(
                location,
                format!("`{}` is not a readable file", path.display()),
            );
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The value with every problem recorded.
    pub fn checked<T>(self, value: T) -> Checked<T> {
        Checked {
            value,
            problems: self.list,
        }
    }
}

/// Resolves `path` relative to the directory of the file that named it.
pub fn relative_to(base_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message over several lines (a TOML parser's) shows on one line.
    #[test]
    fn a_problem_is_one_line() {
        let p = ConfigProblem::at(
            Path::new("t.toml"),
            "34:15",
            "invalid table header\nexpected `.`, `]`\n",
        );
        assert_eq!(
            p.to_string(),
            "t.toml:34:15: invalid table header; expected `.`, `]`"
        );
        let zero = {
            let mut p = Problems::new(Path::new("t.toml"));
            p.positive_duration("egress.dns_timeout", "0s");
            p.positive_duration("egress.client_header_timeout", "1s");
            p.positive_duration("limiter.timeout", "never");
            p.checked(())
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(zero.len(), 2, "{zero:?}");
        assert_eq!(
            zero[0],
            "t.toml: egress.dns_timeout: must be more than zero (at least `1ms`)"
        );
        assert!(zero[1].contains("`never` is not a duration"), "{zero:?}");
    }

    #[test]
    fn problems_keep_their_file_and_location_and_resolve_paths_next_to_the_file() {
        let file = Path::new("/etc/tp/tenant-proxy.toml");
        let mut p = Problems::new(file);
        assert!(p.is_empty());
        assert_eq!(
            p.duration("upstream.read_timeout", "2s"),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.duration("upstream.connect_timeout", "soon"),
            Duration::ZERO
        );
        p.extend([("mcp.servers[0].route".to_string(), "no route".to_string())]);
        assert_eq!(
            p.path(Path::new("keys/a.pem")),
            Path::new("/etc/tp/keys/a.pem")
        );
        assert_eq!(p.path(Path::new("/abs")), Path::new("/abs"));
        let checked = p.checked(7);
        assert_eq!(checked.value, 7);
        let shown: Vec<String> = checked.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 2);
        assert!(
            shown[0].starts_with(
                "/etc/tp/tenant-proxy.toml: upstream.connect_timeout: `soon` is not a duration"
            ),
            "{shown:?}"
        );
        assert_eq!(
            shown[1],
            "/etc/tp/tenant-proxy.toml: mcp.servers[0].route: no route"
        );
        assert!(checked.into_result().is_err());
        assert_eq!(Problems::new(file).checked(()).into_result(), Ok(()));
    }

    #[test]
    fn line_and_column_locations_print_as_editors_expect() {
        let p = ConfigProblem::at(Path::new("t.toml"), "3:7", "unknown variant `x`");
        assert_eq!(p.to_string(), "t.toml:3:7: unknown variant `x`");
        let p = ConfigProblem::file(Path::new("t.toml"), "cannot read file");
        assert_eq!(p.to_string(), "t.toml: cannot read file");
    }
}
