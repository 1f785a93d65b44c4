//! Shared helpers of the benchmarks: one synthetic model in memory, its `ModelInput`,
//! its safetensors file, and sizes taken from the environment.
#![allow(dead_code)] // each bench target uses a different subset

use std::borrow::Cow;
use std::path::Path;

use filterdb_ingest::{GenModel, GenOptions, generate_model};
use filterdb_store::{KernelData, KernelLayout, LayerInput, ModelInput, ModelMeta, SourceDtype};

/// Reads a `usize` from the environment, with a default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The generator options of the benchmark model: one model of `FILTERDB_BENCH_LAYERS`
/// (default 24) layers of at most `FILTERDB_BENCH_CHANNELS` (default 256) channels:
/// about 1M 3x3 filters (36 MB of f32), like a mid-sized ResNet/VGG.
pub fn bench_gen_options() -> GenOptions {
    let layers = env_usize("FILTERDB_BENCH_LAYERS", 24);
    GenOptions {
        models: 1,
        min_layers: layers,
        max_layers: layers,
        max_channels: env_usize("FILTERDB_BENCH_CHANNELS", 256),
        extra_tensors: false,
        ..GenOptions::default()
    }
}

/// Generates the benchmark model (model 0 of [`bench_gen_options`]).
pub fn bench_model() -> GenModel {
    let opts = bench_gen_options();
    let t = std::time::Instant::now();
    let m = generate_model(&opts, 0);
    eprintln!(
        "bench model: {} layers, {} filters ({:.1} MB f32), generated in {:.2} s",
        m.n_layers,
        m.n_filters,
        m.n_filters as f64 * 36.0 / 1e6,
        t.elapsed().as_secs_f64()
    );
    m
}

/// The `ModelInput` the normaliser would build for `m` (OIHW f32 weights borrowed from
/// the generated tensors; card fields as meta).
pub fn model_input(m: &GenModel) -> ModelInput<'_> {
    let conv: Vec<_> = m.tensors.iter().filter(|t| t.shape.len() == 4).collect();
    let levels = conv.len();
    let layers = conv
        .iter()
        .enumerate()
        .map(|(i, t)| LayerInput {
            layer_name: t.name.clone(),
            conv_depth: i as i64,
            conv_depth_norm: if levels > 1 {
                i as f64 / (levels - 1) as f64
            } else {
                0.0
            },
            depth_rule: "name_order".to_owned(),
            out_channels: t.shape[0],
            in_channels: t.shape[1],
            groups: 1,
            weights: KernelData {
                dtype: SourceDtype::F32,
                layout: KernelLayout::Oihw,
                bytes: Cow::Borrowed(&t.data),
            },
        })
        .collect();
    let c = &m.card;
    let mut kernel_shape_counts = std::collections::BTreeMap::new();
    kernel_shape_counts.insert("(3, 3)".to_owned(), m.n_filters);
    ModelInput {
        meta: ModelMeta {
            name: c.name.clone().unwrap_or_else(|| "bench".to_owned()),
            architecture: c.architecture.clone(),
            task: c.task.clone(),
            training_dataset: c.training_dataset.clone(),
            visual_category: c.visual_category.clone(),
            source_format: "safetensors".to_owned(),
            source_path: "memory".to_owned(),
            source_sha256: "0".repeat(64),
            source_bytes: m.n_filters * 36,
            conv_tensors: levels as u64,
            kernel_shape_counts,
            ..ModelMeta::default()
        },
        layers,
    }
}

/// Writes `m` as an f32 safetensors file (as `filterdb gen` does) plus its TOML card.
pub fn write_safetensors(m: &GenModel, path: &Path) {
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    safetensors::serialize_to_file(
        m.tensors.iter().map(|t| (t.name.as_str(), t)),
        Some(meta),
        path,
    )
    .expect("writing safetensors");
    std::fs::write(
        path.with_extension("toml"),
        filterdb_ingest::synth::card_toml(&m.card),
    )
    .expect("writing card");
}
