//! `[policy]` in the static file: how the policy engine is run (the policies themselves are in
//! the tenant file's `policy_dir`).

use serde::Deserialize;

use crate::problems::Problems;

/// The most decisions a tenant's cache may hold: past a million, memory (a few hundred bytes an
/// entry, per tenant) matters more than the Cedar time saved.
const MAX_DECISION_CACHE_ENTRIES: usize = 1 << 20;

/// `[policy]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Decisions kept per tenant, so a question asked again is not evaluated again (0: off;
    /// default 4096).
    pub decision_cache_entries: Option<usize>,
}

/// `[policy]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    /// Decisions kept per tenant (0: no cache).
    pub decision_cache_entries: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            decision_cache_entries: super::cache::DEFAULT_ENTRIES,
        }
    }
}

impl PolicySettings {
    /// Validates `[policy]`, recording each problem at its field.
    pub fn from_spec(spec: &PolicySpec, p: &mut Problems<'_>) -> Self {
        let entries = spec
            .decision_cache_entries
            .unwrap_or(super::cache::DEFAULT_ENTRIES);
        if entries > MAX_DECISION_CACHE_ENTRIES {
            p.push(
                "policy.decision_cache_entries",
                format!("must be at most {MAX_DECISION_CACHE_ENTRIES} (0 turns the cache off)"),
            );
        }
        Self {
            decision_cache_entries: entries.min(MAX_DECISION_CACHE_ENTRIES),
        }
    }
}
