//! `[intercept]` in the static file: the local CA that signs per-host leaves for intercepted
//! tunnels.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Problems;

/// `[intercept]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptSpec {
    /// CA certificate (PEM), from `tenant-proxy ca init`.
    pub ca_cert: PathBuf,
    /// CA private key (PEM).
    pub ca_key: PathBuf,
    /// Lifetime of minted leaves (never written to disk).
    #[serde(default = "default_leaf_ttl")]
    pub leaf_ttl: String,
    /// Most leaves kept in memory.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache: usize,
    /// How long a TLS session ticket of an intercepted tunnel can be resumed; `0s` turns
    /// resumption off.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: String,
    /// Most resumption scopes (tenant workloads) kept in memory.
    #[serde(default = "default_session_scopes")]
    pub session_scopes: usize,
}

fn default_leaf_ttl() -> String {
    "12h".into()
}
fn default_leaf_cache() -> usize {
    10_000
}
fn default_session_lifetime() -> String {
    "1h".into()
}
fn default_session_scopes() -> usize {
    crate::tls::resume::DEFAULT_MAX_SCOPES
}

/// `[intercept]`, validated.
#[derive(Debug, Clone)]
pub struct InterceptSettings {
    /// CA certificate file.
    pub ca_cert: PathBuf,
    /// CA key file.
    pub ca_key: PathBuf,
    /// Leaf lifetime.
    pub leaf_ttl: Duration,
    /// Leaf cache bound.
    pub leaf_cache: usize,
    /// Session ticket lifetime; zero: no resumption.
    pub session_lifetime: Duration,
    /// Resumption scope bound.
    pub session_scopes: usize,
}

impl InterceptSettings {
    /// Validates `[intercept]`; the CA files resolve against the configuration file.
    pub fn from_spec(spec: InterceptSpec, p: &mut Problems<'_>) -> Self {
        let settings = InterceptSettings {
            ca_cert: p.path(&spec.ca_cert),
            ca_key: p.path(&spec.ca_key),
            leaf_ttl: p.duration("intercept.leaf_ttl", &spec.leaf_ttl),
            leaf_cache: spec.leaf_cache.max(1),
            session_lifetime: p.duration("intercept.session_lifetime", &spec.session_lifetime),
            session_scopes: spec.session_scopes.max(1),
        };
        if settings.session_lifetime > crate::tls::resume::MAX_SESSION_LIFETIME {
            p.push(
                "intercept.session_lifetime",
                "must be at most 6h (ticket keys are replaced every 6 hours); `0s` turns resumption off",
            );
        }
        if settings.leaf_ttl < Duration::from_secs(600) {
            p.push(
                "intercept.leaf_ttl",
                "must be at least 10m (clients check validity against their own clocks)",
            );
        }
        for (field, f) in [("ca_cert", &settings.ca_cert), ("ca_key", &settings.ca_key)] {
            if !f.is_file() {
                p.push(
                    format!("intercept.{field}"),
                    format!(
                        "`{}` is not a readable file; create the CA with `tenant-proxy ca init --out DIR`",
                        f.display()
                    ),
                );
            }
        }
        settings
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// `[intercept]` with real CA files and `session_lifetime`; the problems' locations and
    /// messages, and the settings.
    fn check(session_lifetime: &str) -> (Vec<String>, InterceptSettings) {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::tls::ca::init(&crate::tls::ca::CaInitOptions::new(dir.path())).unwrap();
        let spec: InterceptSpec = toml::from_str(&format!(
            "ca_cert = {:?}\nca_key = {:?}\nsession_lifetime = {session_lifetime:?}\n",
            files.cert, files.key
        ))
        .unwrap();
        let file = dir.path().join("tenant-proxy.toml");
        let mut p = Problems::new(&file);
        let settings = InterceptSettings::from_spec(spec, &mut p);
        let problems = p
            .checked(())
            .problems
            .into_iter()
            .map(|c| format!("{}: {}", c.location.unwrap_or_default(), c.message))
            .collect();
        (problems, settings)
    }

    #[test]
    fn session_lifetime_is_at_most_six_hours_and_zero_turns_it_off() {
        for (written, lifetime) in [("1h", 3600), ("6h", 6 * 3600), ("0s", 0), ("90s", 90)] {
            let (problems, settings) = check(written);
            assert!(problems.is_empty(), "{written}: {problems:?}");
            assert_eq!(settings.session_lifetime, Duration::from_secs(lifetime));
        }
        for written in ["7h", "1d", "soon"] {
            let (problems, _) = check(written);
            assert_eq!(problems.len(), 1, "{written}: {problems:?}");
            assert!(
                problems[0].starts_with("intercept.session_lifetime: "),
                "{problems:?}"
            );
        }
        let spec: InterceptSpec = toml::from_str("ca_cert = \"a\"\nca_key = \"b\"\n").unwrap();
        assert_eq!(
            (spec.session_lifetime.as_str(), spec.session_scopes),
            ("1h", 10_000)
        );
    }
}
