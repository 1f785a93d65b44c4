//! A terminal progress bar for bulk ingest: models, filters, bytes, rate and ETA.
//! indicatif draws only when stderr is a terminal, so piped output stays quiet.

use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// [`filterdb_ingest::Progress`] on an indicatif bar sized in source bytes.
pub struct BarProgress {
    bar: ProgressBar,
    models: AtomicU64,
    total_models: AtomicU64,
    filters: AtomicU64,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        BarProgress {
            bar,
            models: AtomicU64::new(0),
            total_models: AtomicU64::new(0),
            filters: AtomicU64::new(0),
        }
    }
}

impl filterdb_ingest::Progress for BarProgress {
    fn start(&self, total_models: u64, total_bytes: u64) {
        self.total_models.store(total_models, Ordering::Relaxed);
        self.bar.set_length(total_bytes);
        self.bar
            .set_message(format!("0/{total_models} models, 0 filters"));
    }

    fn model_done(&self, filters: u64, bytes: u64) {
        let m = self.models.fetch_add(1, Ordering::Relaxed) + 1;
        let f = self.filters.fetch_add(filters, Ordering::Relaxed) + filters;
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.inc(bytes);
        self.bar.set_message(format!(
            "{m}/{} models, {f} filters ({:.1}M filters/s)",
            self.total_models.load(Ordering::Relaxed),
            f as f64 / secs / 1e6
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
