//! Printing a model's validation report: after each ingest and in `info --model`; and
//! the closing line of the bulk commands.
//! (The binary has no unit tests; `tests/cli.rs` checks this output.)

use std::process::ExitCode;

use filterdb_store::{SkippedTensor, ValidationReport};

/// The closing line of a bulk command (`ingest --manifest`, `gen --store`,
/// `import-cnnfilterdb`): what was committed, skipped (`skipped_what`) and failed, the
/// filters committed and their rate; failure as the exit code when anything failed.
pub fn print_totals(
    committed: usize,
    skipped: usize,
    skipped_what: &str,
    failed: usize,
    filters: u64,
    secs: f64,
) -> ExitCode {
    println!(
        "{committed} committed, {skipped} {skipped_what}, {failed} failed; {filters} filters in {secs:.2} s ({:.2}M filters/s)",
        filters as f64 / secs.max(1e-9) / 1e6
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

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
