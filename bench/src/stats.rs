//! Latency histograms and the report table.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Microsecond latencies, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

/// `p50 / p99 / max` in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> String {
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// One line of the final table.
pub struct Row {
    pub what: String,
    pub project: f64,
    pub limit: Option<(String, f64)>,
    pub unit: &'static str,
    pub note: String,
}

pub fn print_table(rows: &[Row]) {
    println!();
    println!("| measurement | project | limit (same run) | ratio | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let (limit, ratio) = match &r.limit {
            Some((name, v)) => (
                format!("{v:.0} {} ({name})", r.unit),
                format!("{:.0}%", 100.0 * r.project / v),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.0} {} | {limit} | {ratio} | {} |",
            r.what, r.project, r.unit, r.note
        );
    }
}
