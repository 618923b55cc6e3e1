//! What the report commands (`report`, `cluster-report`, `scale-report`) share: reading result
//! files, looking figures up in them, and formatting Markdown table cells.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// The number at the JSON pointer `pointer` (e.g. `/steady/latency/p99_ms`).
pub(crate) fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// The string under `key`; empty when missing (an optional note).
pub(crate) fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A run's label; `?` when missing.
pub(crate) fn label(run: &Value) -> &str {
    run.get("label").and_then(Value::as_str).unwrap_or("?")
}

/// `v` with `digits` decimals and `unit`; `n/a` when missing.
pub(crate) fn fmt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}{unit}"))
}

/// 1234567 → "1.23M", 12345 → "12.3k"; `n/a` when missing.
pub(crate) fn si(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.0}"),
    }
}

/// `a / b` when both are known and `b` is positive.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio as `1.23×`; `n/a` when missing.
pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    fmt(r, 2, "×")
}

/// A Markdown table's header row and rule.
pub(crate) fn header(out: &mut String, columns: &[&str]) {
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(columns.len()));
}

/// One result file (a scenario's `--json-out`).
pub(crate) fn read_result(path: &Path) -> anyhow::Result<Value> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&content).with_context(|| format!("parsing {}", path.display()))
}

/// Writes an output file (the Markdown or the combined JSON).
pub(crate) fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// Prints a report's Markdown and writes it to `md` and its JSON (made only when asked for)
/// to `out`, where given.
pub(crate) fn publish(
    text: &str,
    md: Option<&Path>,
    out: Option<&Path>,
    json: impl FnOnce() -> serde_json::Value,
) -> anyhow::Result<()> {
    print!("{text}");
    if let Some(path) = md {
        write_file(path, text)?;
    }
    if let Some(path) = out {
        write_file(path, &serde_json::to_string_pretty(&json())?)?;
    }
    Ok(())
}

/// CPU cores of this machine (0 when unknown).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_format_missing_values_as_n_a() {
        assert_eq!(si(Some(1_234_567.0)), "1.23M");
        assert_eq!(si(Some(12_345.0)), "12.3k");
        assert_eq!(si(Some(999.4)), "999");
        assert_eq!(si(None), "n/a");
        assert_eq!(fmt(Some(1.0), 2, " ms"), "1.00 ms");
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(2.0))), "1.50×");
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(0.0))), "n/a");
    }

    #[test]
    fn header_has_one_rule_cell_per_column() {
        let mut out = String::new();
        header(&mut out, &["run", "p50"]);
        assert_eq!(out, "| run | p50 |\n|---|---|\n");
    }
}
