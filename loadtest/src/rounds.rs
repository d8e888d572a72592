//! `run --rounds N`: the whole row list measured N times, one round after the other, and a
//! table of medians at the end. On a shared machine a single row's CPU a request moves by a
//! fifth or more between rows a minute apart; each round's ratios are taken against the
//! `bare-pingora` row of that same round, and the medians of those ratios are what compare.

use std::sync::Mutex;

/// What one row measured in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// 1-based.
    pub round: usize,
    pub row: String,
    pub rps: f64,
    pub p99_ms: f64,
    /// The proxy's CPU a request (rows without a proxy process have none).
    pub cpu_us: Option<f64>,
}

/// The figures of every round so far, in the order the rows were measured.
#[derive(Debug, Default)]
pub struct Collected(Mutex<Vec<Figures>>);

impl Collected {
    pub fn push(&self, figures: Figures) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(figures);
    }

    pub fn all(&self) -> Vec<Figures> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The medians table: per row, its medians over the rounds it was measured in, and the median
/// of its per-round ratios to the `baseline` row of the same round, with those ratios listed.
pub fn median_table(figures: &[Figures], baseline: &str) -> String {
    let mut rows: Vec<&str> = Vec::new();
    for f in figures {
        if !rows.contains(&f.row.as_str()) {
            rows.push(&f.row);
        }
    }
    let baseline_of = |round: usize| {
        figures
            .iter()
            .find(|f| f.round == round && f.row == baseline)
    };
    let mut out = String::from(
        "| path | rounds | req/s | p99 ms | proxy CPU µs/req | req/s ÷ bare | p99 ÷ bare | CPU ÷ bare | CPU ÷ bare, each round |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let of_row: Vec<&Figures> = figures.iter().filter(|f| f.row == row).collect();
        let rps = median(of_row.iter().map(|f| f.rps).collect());
        let p99 = median(of_row.iter().map(|f| f.p99_ms).collect());
        let cpu = median(of_row.iter().filter_map(|f| f.cpu_us).collect());
        let mut rps_ratios = Vec::new();
        let mut p99_ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        for f in &of_row {
            let Some(base) = baseline_of(f.round) else {
                continue;
            };
            if base.rps > 0.0 {
                rps_ratios.push(f.rps / base.rps);
            }
            if base.p99_ms > 0.0 {
                p99_ratios.push(f.p99_ms / base.p99_ms);
            }
            if let (Some(c), Some(b)) = (f.cpu_us, base.cpu_us) {
                if b > 0.0 {
                    cpu_ratios.push(c / b);
                }
            }
        }
        let each = cpu_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| {row} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            of_row.len(),
            shown(rps, 0),
            shown(p99, 3),
            shown(cpu, 1),
            shown(median(rps_ratios), 2),
            shown(median(p99_ratios), 2),
            shown(median(cpu_ratios), 2),
            if each.is_empty() { "-" } else { &each },
        ));
    }
    out
}

/// The median (the mean of the middle two for an even count); `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn shown(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: &str = "bare-pingora";

    fn f(round: usize, row: &str, rps: f64, cpu: Option<f64>) -> Figures {
        Figures {
            round,
            row: row.into(),
            rps,
            p99_ms: rps / 10_000.0,
            cpu_us: cpu,
        }
    }

    #[test]
    fn medians_and_ratios_are_taken_round_by_round() {
        let figures = [
            f(1, "direct", 90_000.0, None),
            f(1, BASELINE, 40_000.0, Some(20.0)),
            f(1, "route", 20_000.0, Some(40.0)),
            f(2, "direct", 80_000.0, None),
            f(2, BASELINE, 20_000.0, Some(40.0)),
            f(2, "route", 16_000.0, Some(48.0)),
            f(3, "direct", 70_000.0, None),
            f(3, BASELINE, 30_000.0, Some(30.0)),
            f(3, "route", 18_000.0, Some(36.0)),
        ];
        let table = median_table(&figures, BASELINE);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        // Rows in the order first measured; no proxy, no CPU ratio.
        assert_eq!(
            lines[2],
            "| direct | 3 | 80000 | 8.000 | - | 2.33 | 2.33 | - | - |"
        );
        assert_eq!(
            lines[3],
            "| bare-pingora | 3 | 30000 | 3.000 | 30.0 | 1.00 | 1.00 | 1.00 | 1.00, 1.00, 1.00 |"
        );
        // Each round's ratio against that round's baseline: 2.0, 1.2, 1.2 (median 1.2), not
        // the ratio of the medians (40 / 30 = 1.33).
        assert_eq!(
            lines[4],
            "| route | 3 | 18000 | 1.800 | 40.0 | 0.60 | 0.60 | 1.20 | 2.00, 1.20, 1.20 |"
        );
    }

    #[test]
    fn a_round_without_its_baseline_gives_no_ratio() {
        let figures = [
            f(1, "route", 20_000.0, Some(40.0)),
            f(2, "route", 22_000.0, Some(44.0)),
        ];
        let table = median_table(&figures, BASELINE);
        assert!(
            table.ends_with("| route | 2 | 21000 | 2.100 | 42.0 | - | - | - | - |\n"),
            "{table}"
        );
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        assert_eq!(median(vec![]), None);
    }
}
