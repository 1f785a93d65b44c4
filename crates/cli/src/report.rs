//! Printing a model's validation report: after each ingest and in `info --model`.
//! (The binary has no unit tests; `tests/cli.rs` checks this output.)

use filterdb_store::{SkippedTensor, ValidationReport};

/// `warning[code]: message`, one line per warning.
pub fn warning_lines(r: &ValidationReport) -> Vec<String> {
    r.warnings
        .iter()
        .map(|w| format!("warning[{}]: {}", w.code, w.message))
        .collect()
}

/// Skipped tensors grouped by reason, at most `max` named per reason.
fn skipped_lines(r: &ValidationReport, max: usize) -> Vec<String> {
    if r.skipped.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!("skipped {} tensor(s):", r.skipped.len())];
    for (reason, tensors) in r.skipped_by_reason() {
        let shown: Vec<String> = tensors
            .iter()
            .take(max)
            .map(|t| SkippedTensor::describe(t))
            .collect();
        let more = if tensors.len() > max {
            format!(", ... ({} more)", tensors.len() - max)
        } else {
            String::new()
        };
        out.push(format!(
            "  {reason} ({}): {}{more}",
            tensors.len(),
            shown.join(", ")
        ));
    }
    out
}

/// The whole report: skipped tensors (at most `max` named per reason), warnings and
/// notes; with `counts`, a first line with the counts.
pub fn report_lines(r: &ValidationReport, max: usize, counts: bool) -> Vec<String> {
    let mut out = Vec::new();
    if counts {
        out.push(format!(
            "{} convolution tensor(s), {} 3x3 layer(s), {} filter(s)",
            r.conv_tensors, r.layers_3x3, r.filters
        ));
    }
    out.extend(skipped_lines(r, max));
    out.extend(warning_lines(r));
    out.extend(r.notes.iter().map(|n| format!("note: {n}")));
    out
}
