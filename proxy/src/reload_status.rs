//! What the last reload of each reloadable part of the configuration gave: kept apart from the
//! snapshot so that the parts that reload on their own (an mTLS listener's files) can record
//! theirs without depending on the snapshot that depends on them.

use crate::metrics::METRICS;

/// The result of the last load of a reloadable part (the first load at start counts), or of
/// every part together (see [`ReloadStatus::combined`]), as `/readyz` reports it.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// Whether it was applied (a rejected reload keeps the last good configuration).
    pub ok: bool,
    /// When it ran (RFC 3339, UTC).
    pub at: String,
    /// What was wrong with it, one line each (empty when applied).
    pub problems: Vec<String>,
}

impl LastReload {
    /// What `/readyz` (which needs no token) shows of it: whether it was applied, when, and
    /// how many problems it had. SECURITY: never their text, which names tenants, policy ids
    /// and files; the log has it.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok,
            "at": self.at,
            "problems": self.problems.len(),
        })
    }

    pub(crate) fn now(problems: Vec<String>) -> Self {
        let at = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Self {
            ok: problems.is_empty(),
            at,
            problems,
        }
    }
}

/// The part of [`ReloadStatus`] the tenant configuration is (with the admin token file, read
/// with it).
pub const TENANT_CONFIGURATION: &str = "tenant configuration";

/// The last reload of each part of the configuration that reloads on its own: the tenant
/// configuration (with the admin token file), and each mTLS listener's TLS files. A failed
/// reload of any part keeps that part's last good state serving, and shows the same way for
/// every part: `tenant_proxy_config_reloads_total{result="error"}` counts it,
/// `tenant_proxy_config_last_reload_successful` is 0 and `/readyz`'s `last_reload` says it
/// failed, until a later reload of that part succeeds. SECURITY: a bad file is often a
/// revocation gone wrong (a CA pulled from the client bundle, a leaked admin token rotated);
/// the old state still being trusted must be alertable, not only in the log.
#[derive(Debug)]
pub struct ReloadStatus {
    parts: std::sync::Mutex<Vec<(String, LastReload)>>,
}

impl ReloadStatus {
    /// The status at start: the tenant configuration loaded (a failed start never gets here).
    pub fn new() -> Self {
        METRICS.config_last_reload_successful.set(1);
        Self {
            parts: std::sync::Mutex::new(vec![(
                TENANT_CONFIGURATION.to_string(),
                LastReload::now(Vec::new()),
            )]),
        }
    }

    /// Records a reload of `part`: applied whole when `problems` is empty, else failed (the
    /// part keeps its last good state) for the reasons given.
    pub fn record(&self, part: &str, problems: Vec<String>) {
        let result = if problems.is_empty() { "ok" } else { "error" };
        METRICS.config_reloads.with_label_values(&[result]).inc();
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = LastReload::now(problems);
        match parts.iter_mut().find(|(name, _)| name == part) {
            Some((_, entry)) => *entry = last,
            None => parts.push((part.to_string(), last)),
        }
        let all_ok = parts.iter().all(|(_, l)| l.ok);
        METRICS.config_last_reload_successful.set(i64::from(all_ok));
    }

    /// Every part together: applied when each part's last reload was; when the latest ran;
    /// the problems of every part whose last reload failed.
    pub fn combined(&self) -> LastReload {
        let parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = parts
            .iter()
            .map(|(_, l)| l.at.as_str())
            .max()
            .unwrap_or_default()
            .to_string();
        let problems: Vec<String> = parts
            .iter()
            .flat_map(|(_, l)| l.problems.iter().cloned())
            .collect();
        LastReload {
            ok: parts.iter().all(|(_, l)| l.ok),
            at,
            problems,
        }
    }
}

impl Default for ReloadStatus {
    fn default() -> Self {
        Self::new()
    }
}
