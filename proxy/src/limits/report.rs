//! Spend against ceilings, for `tenant-proxy usage` and the admin `/usage` endpoint. It reads
//! the same keys the proxy admits against, from the configured backend, for one tenant only.

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;
use crate::pricing::format_micros;

use super::calendar::Period;
use super::{
    keys_for, CallKind, LimitBackend, LimitConfig, LimitKey, LimitKind, Measure, Scope, Subject,
    Window,
};

/// Which calendar period a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReportPeriod {
    /// Today, in the tenant's time zone.
    Day,
    /// This month, in the tenant's time zone.
    Month,
}

impl ReportPeriod {
    /// Its name on the command line, in JSON and in the admin query (`day`, `month`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPeriod::Day => "day",
            ReportPeriod::Month => "month",
        }
    }

    /// The period named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [ReportPeriod::Day, ReportPeriod::Month]
            .into_iter()
            .find(|p| p.as_str() == name)
    }
}

/// One counter and its ceiling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// `tenant`, `workload:<id>` or `run:<id>`.
    pub scope: String,
    /// `cost_micros`, `tokens_per_minute`, `in_flight`, `tokens`, `tool_calls`, `wall_time_s`.
    pub measure: String,
    /// Counted now.
    pub used: u64,
    /// The ceiling, when configured (a run's ceilings live in its tokens, not here).
    pub ceiling: Option<u64>,
}

/// A tenant's spend against its ceilings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Tenant.
    pub tenant: String,
    /// Its time zone.
    pub time_zone: String,
    /// The price table's currency, if one is configured.
    pub currency: Option<String>,
    /// The period covered.
    pub period: ReportPeriod,
    /// `yyyymmdd` or `yyyymm`.
    pub period_id: u32,
    /// Unix second the period ends.
    pub period_ends_at: i64,
    /// Counters.
    pub rows: Vec<Row>,
}

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::Tenant(_) => "tenant".into(),
        Scope::Workload(_, w) => format!("workload:{w}"),
        Scope::Run(_, r) => format!("run:{r}"),
    }
}

/// The counters worth reporting: concurrency, tokens per minute and cost of `period`.
fn reported(key: &LimitKey, period: ReportPeriod) -> Option<(&'static str, Option<u64>)> {
    match key.kind {
        LimitKind::Concurrency { max } => Some(("in_flight", Some(u64::from(max)))),
        LimitKind::TokensPerMinute { ceiling } => Some(("tokens_per_minute", Some(ceiling))),
        LimitKind::Quota {
            measure: Measure::Cost,
            window,
            ceiling,
        } => match (window, period) {
            (Window::Day(_), ReportPeriod::Day) | (Window::Month(_), ReportPeriod::Month) => {
                Some(("cost_micros", Some(ceiling)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Why a usage report could not be made: the caller's question, or the counters' backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The tenant is not in the configuration.
    #[error("tenant `{0}` is not configured")]
    UnknownTenant(TenantId),
    /// The counters could not be read (an infrastructure failure, not the caller's).
    #[error(transparent)]
    Unavailable(#[from] super::LimiterUnavailable),
}

/// Reads `tenant`'s spend at unix second `now`; with `run` (a valid run id: the caller checks
/// it), also that run's counters.
pub async fn usage_report(
    config: &(dyn LimitConfig + Sync),
    backend: &dyn LimitBackend,
    tenant: &TenantId,
    period: ReportPeriod,
    run: Option<&str>,
    now: i64,
) -> Result<UsageReport, ReportError> {
    let entry = config
        .tenant_limits(tenant)
        .ok_or_else(|| ReportError::UnknownTenant(tenant.clone()))?;
    let mut wanted: Vec<(LimitKey, &'static str, Option<u64>)> = Vec::new();
    let mut add = |keys: Vec<LimitKey>| {
        for key in keys {
            if let Some((measure, ceiling)) = reported(&key, period) {
                if !wanted.iter().any(|(k, ..)| *k == key) {
                    wanted.push((key, measure, ceiling));
                }
            }
        }
    };
    for workload in entry.workloads {
        let who = Subject {
            tenant,
            workload,
            run: None,
        };
        add(keys_for(
            who,
            entry.ceilings,
            entry.workload_ceilings.get(workload),
            entry.calendar,
            now,
            CallKind::Llm,
        ));
    }
    if let Some(run) = run {
        let scope = Scope::Run(tenant.clone(), run.to_string());
        // A run's ceilings are in its tokens; the keys' names do not depend on them.
        for (kind, measure) in [
            (run_quota(Measure::Tokens), "tokens"),
            (run_quota(Measure::Cost), "cost_micros"),
            (run_quota(Measure::ToolCalls), "tool_calls"),
            (LimitKind::WallTime { max_secs: 0 }, "wall_time_s"),
        ] {
            wanted.push((
                LimitKey {
                    scope: scope.clone(),
                    kind,
                },
                measure,
                None,
            ));
        }
    }
    let keys: Vec<LimitKey> = wanted.iter().map(|(k, ..)| k.clone()).collect();
    let used = if keys.is_empty() {
        Vec::new()
    } else {
        backend.read(&keys).await?
    };
    let window: Period = match period {
        ReportPeriod::Day => entry.calendar.day(now),
        ReportPeriod::Month => entry.calendar.month(now),
    };
    Ok(UsageReport {
        tenant: tenant.to_string(),
        time_zone: entry.calendar.name().to_string(),
        currency: config.prices().map(|p| p.currency().to_string()),
        period,
        period_id: window.id,
        period_ends_at: window.ends_at,
        rows: wanted
            .iter()
            .zip(used)
            .map(|((key, measure, ceiling), used)| Row {
                scope: scope_name(&key.scope),
                measure: (*measure).to_string(),
                used,
                ceiling: *ceiling,
            })
            .collect(),
    })
}

fn run_quota(measure: Measure) -> LimitKind {
    LimitKind::Quota {
        measure,
        window: Window::Run,
        ceiling: 0,
    }
}

/// The report as a table for people.
pub fn render_text(report: &UsageReport, now: i64) -> String {
    let mut out = format!(
        "tenant {}  {} {}  (time zone {}, ends in {})\n",
        report.tenant,
        report.period.as_str(),
        report.period_id,
        report.time_zone,
        humantime::format_duration(std::time::Duration::from_secs(
            u64::try_from(report.period_ends_at.saturating_sub(now)).unwrap_or(0)
        )),
    );
    if report.rows.is_empty() {
        out.push_str("no ceilings configured\n");
        return out;
    }
    let currency = report.currency.as_deref().unwrap_or("");
    let amount = |measure: &str, v: u64| {
        if measure == "cost_micros" {
            format!("{} {currency}", format_micros(v))
                .trim_end()
                .to_string()
        } else {
            v.to_string()
        }
    };
    out.push_str(&format!(
        "{:<24} {:<18} {:>16} {:>16} {:>16}\n",
        "scope", "counter", "used", "ceiling", "left"
    ));
    let mut runs = false;
    for row in &report.rows {
        let measure = if row.measure == "cost_micros" {
            "cost"
        } else {
            row.measure.as_str()
        };
        // A run's ceilings are in its signed token, which the counters do not keep: "-" would
        // read as "no ceiling".
        let unknown = if row.scope.starts_with("run:") {
            runs = true;
            "in token"
        } else {
            "-"
        };
        out.push_str(&format!(
            "{:<24} {:<18} {:>16} {:>16} {:>16}\n",
            row.scope,
            measure,
            amount(&row.measure, row.used),
            row.ceiling
                .map_or(unknown.into(), |c| amount(&row.measure, c)),
            row.ceiling.map_or(unknown.into(), |c| amount(
                &row.measure,
                c.saturating_sub(row.used)
            )),
        ));
    }
    if runs {
        out.push_str(
            "a run's ceilings are its token's `run_budget`, checked at each request; only its use is counted here\n",
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_ceilings_read_as_its_tokens_never_as_none() {
        let row = |scope: &str, ceiling| Row {
            scope: scope.into(),
            measure: "tokens".into(),
            used: 40,
            ceiling,
        };
        let report = UsageReport {
            tenant: "acme".into(),
            time_zone: "UTC".into(),
            currency: Some("USD".into()),
            period: ReportPeriod::Day,
            period_id: 20261205,
            period_ends_at: 0,
            rows: vec![row("tenant", Some(100)), row("run:r1", None)],
        };
        let text = render_text(&report, 0);
        let run_line = text.lines().find(|l| l.starts_with("run:r1")).unwrap();
        assert!(run_line.contains("in token"), "{text}");
        assert!(!run_line.contains(" - "), "{text}");
        let tenant_line = text
            .lines()
            .find(|l| l.starts_with("tenant ") && l.contains("tokens"))
            .unwrap();
        assert!(tenant_line.trim_end().ends_with("60"), "{text}");
        assert!(text.contains("`run_budget`"), "{text}");
        // Without a run row, no word about runs.
        let report = UsageReport {
            rows: vec![row("tenant", None)],
            ..report
        };
        let text = render_text(&report, 0);
        assert!(
            !text.contains("run_budget") && text.contains(" - "),
            "{text}"
        );
    }
}
