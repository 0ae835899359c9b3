//! The results table: one row per (scenario, target), named metrics, ratios to the baselines
//! of the same run, and a free-text note (status counts, caveats).

use std::fmt::Write;

/// One line of results.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub target: String,
    pub metrics: Vec<(String, f64)>,
    pub ratios: Vec<(String, f64)>,
    pub note: String,
}

impl Row {
    pub fn new(scenario: &str, target: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            metrics: Vec::new(),
            ratios: Vec::new(),
            note: String::new(),
        }
    }

    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.push((name.to_owned(), value));
        self
    }

    pub fn ratio(mut self, name: &str, value: f64) -> Self {
        self.ratios.push((name.to_owned(), value));
        self
    }

    pub fn note(mut self, note: String) -> Self {
        self.note = note;
        self
    }
}

/// All rows of a run.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// A Markdown table (pastes straight into BENCHMARKS.md).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "| scenario | target | metrics | ratios | notes |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let metrics = r
                .metrics
                .iter()
                .map(|(n, v)| format!("{n} {}", fmt_num(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            let ratios = r
                .ratios
                .iter()
                .map(|(n, v)| format!("**{v:.2}×** {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "| {} | {} | {metrics} | {ratios} | {} |",
                r.scenario, r.target, r.note
            );
        }
        out
    }
}

/// Three significant digits, no scientific notation.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_renders_metrics_ratios_and_notes_as_markdown() {
        let mut t = Table::default();
        t.push(
            Row::new("P1", "jitbridge")
                .metric("req/s", 12345.6)
                .metric("p99 ms", 3.25)
                .ratio("vs HMAC", 0.5)
                .note("ok".into()),
        );
        let s = t.render();
        assert!(
            s.contains("| P1 | jitbridge | req/s 12346, p99 ms 3.25 | **0.50×** vs HMAC | ok |"),
            "{s}"
        );
        assert_eq!(fmt_num(f64::NAN), "n/a");
        assert_eq!(fmt_num(42.25), "42.2");
    }
}
