//! From a parsed file plus card and overrides to the store's [`ModelInput`].
//!
//! - Model fields: command line / manifest row ([`ModelOverrides`]) win over the card;
//!   the name defaults to the file stem; `task` and `visual_category` are checked against
//!   the vocabulary and get their canonical spelling.
//! - Every rank-4 tensor is a convolution: its kernels are counted per spatial shape into
//!   `kernel_shape_counts` (`"(kh, kw)"`); those with a 3x3 kernel become layers.
//! - Layers are ordered by natural sort of their tensor names. `conv_depth` is a layer's
//!   position among *all* convolution tensors (any kernel size) in that order, as the
//!   paper's graph rule counts every conv level (`depth_rule = "name_order"`), unless the
//!   card gives `conv_depth` for the layers (`"card"`, then for all 3x3 layers);
//!   `conv_depth_norm` divides the level index by the number of levels - 1 (0 for a
//!   single level).
//! - Everything not stored goes into the model's [`ValidationReport`]: each skipped
//!   tensor with its reason (the `SKIP_*` constants), and warnings with stable codes
//!   ([`Warning`]). A file without 3x3 kernels is an error
//!   ([`IngestError::NoConvKernels`]) unless [`NormaliseOptions::allow_empty`] is set;
//!   then the model is stored without layers and warns `no_convolutions` or
//!   `no_3x3_kernels`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::card::{ModelCard, ModelOverrides};
use crate::error::{IngestError, Result};
use crate::onnx::OnnxModel;
use crate::safetensors::{RawModel, RawTensor};
use crate::vocab::{KIND_TASK, KIND_VISUAL_CATEGORY, canonicalise};
use crate::{
    KernelData, KernelLayout, LayerInput, ModelInput, ModelMeta, ValidationReport, Warning,
};

/// `depth_rule` of layers ordered by tensor name.
pub const DEPTH_RULE_NAME_ORDER: &str = "name_order";
/// `depth_rule` of layers whose depth the card gives.
pub const DEPTH_RULE_CARD: &str = "card";
/// `depth_rule` of layers whose depth comes from the ONNX graph levels.
pub const DEPTH_RULE_GRAPH: &str = "graph";

/// Skip reason: a tensor that is not rank 4 (biases, norms, counters).
pub const SKIP_NOT_RANK4: &str = "not rank 4: not a convolution weight";
/// Skip reason: a rank-4 tensor with a zero dimension (no filters).
pub const SKIP_ZERO_DIM: &str = "rank 4 with a zero dimension: no filters";
/// Skip reason: a convolution whose kernel is not 3x3.
pub const SKIP_NOT_3X3: &str = "kernel not 3x3: counted in kernel_shape_counts, not stored";
/// Skip reason: a 3x3 ONNX Conv weight whose node has no graph level.
pub const SKIP_NO_GRAPH_LEVEL: &str =
    "3x3, but its Conv node has no graph level (reached only from constants)";
/// Skip reason: an ONNX Conv whose weight is not rank 4 (1-D or 3-D convolutions).
pub const SKIP_CONV_NOT_2D: &str = "Conv weight not rank 4: not a 2-D convolution";

/// Options of [`normalise_with`] and the other `*_with` normalisers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormaliseOptions {
    /// Accept a model without 3x3 kernels (or without convolutions): it gets no layers
    /// and the warning `no_3x3_kernels` / `no_convolutions` instead of
    /// [`IngestError::NoConvKernels`] (`filterdb ingest --allow-empty`).
    pub allow_empty: bool,
}

/// Graph facts of one convolution tensor (ONNX).
#[derive(Debug, Clone, Copy)]
struct GraphLayer {
    conv_depth: Option<i64>,
    conv_depth_norm: Option<f64>,
    groups: i64,
}

/// What the normaliser needs of a parsed file, whatever its format.
struct Source<'a> {
    path: &'a std::path::Path,
    sha256: &'a str,
    file_bytes: u64,
    format: &'static str,
    report: ValidationReport,
    /// Tensors in layer order, with graph facts for graph formats.
    tensors: Vec<(RawTensor<'a>, Option<GraphLayer>)>,
    /// Number of graph levels (graph formats).
    depth: Option<i64>,
    /// Number of graph levels holding a convolution (graph formats).
    conv_levels: Option<usize>,
    /// Extra model fields from the file (producer, opset, ...).
    extra: BTreeMap<String, String>,
}

/// The store's user-added vocabulary values, passed to [`normalise`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VocabExtra {
    /// Extra `task` values.
    pub tasks: Vec<String>,
    /// Extra `visual_category` values.
    pub visual_categories: Vec<String>,
}

/// Spatial and channel dimensions of a rank-4 tensor under a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvDims {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input channels per group.
    pub in_channels: usize,
}

/// Reads the dimensions of a rank-4 shape in `layout`; `None` if it is not rank 4.
pub fn conv_dims(shape: &[usize], layout: KernelLayout) -> Option<ConvDims> {
    let &[a, b, c, d] = shape else {
        return None;
    };
    Some(match layout {
        KernelLayout::Oihw => ConvDims {
            kh: c,
            kw: d,
            out_channels: a,
            in_channels: b,
        },
        KernelLayout::Hwio => ConvDims {
            kh: a,
            kw: b,
            out_channels: d,
            in_channels: c,
        },
    })
}

fn layout_name(layout: KernelLayout) -> &'static str {
    match layout {
        KernelLayout::Oihw => "oihw",
        KernelLayout::Hwio => "hwio",
    }
}

fn list_examples<'s>(items: impl Iterator<Item = String> + 's, max: usize) -> String {
    let all: Vec<String> = items.collect();
    let mut s = all.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > max {
        s.push_str(&format!(", ... ({} in all)", all.len()));
    }
    if s.is_empty() {
        s.push_str("no tensors at all");
    }
    s
}

/// Builds the store's [`ModelInput`] for one parsed file.
///
/// `overrides` (command line or manifest row) win over `card`; `vocab` holds the store's
/// user-added vocabulary values. The layers borrow their bytes from `raw`.
///
/// # Errors
/// [`IngestError::NoConvKernels`] if no rank-4 tensor has a 3x3 kernel (see
/// [`normalise_with`] to accept such models);
/// [`IngestError::UnknownVocabulary`] for a task or visual category not in the
/// vocabulary; [`IngestError::CardLayers`] if the card names tensors the file lacks,
/// gives `conv_depth` for only some 3x3 layers, or gives `groups` that do not divide the
/// output channels.
pub fn normalise<'a>(
    raw: &'a RawModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
) -> Result<ModelInput<'a>> {
    normalise_with(raw, card, overrides, vocab, &NormaliseOptions::default())
}

/// [`normalise`] with options (e.g. [`NormaliseOptions::allow_empty`]).
///
/// # Errors
/// As [`normalise`]; with `allow_empty`, no [`IngestError::NoConvKernels`].
pub fn normalise_with<'a>(
    raw: &'a RawModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
    opts: &NormaliseOptions,
) -> Result<ModelInput<'a>> {
    let src = Source {
        path: raw.path(),
        sha256: raw.sha256(),
        file_bytes: raw.file_bytes(),
        format: "safetensors",
        report: raw.report().clone(),
        tensors: raw.tensors().map(|t| (t, None)).collect(),
        depth: None,
        conv_levels: None,
        extra: BTreeMap::new(),
    };
    normalise_source(src, card, overrides, vocab, opts)
}

fn st_dtype(d: crate::SourceDtype) -> safetensors::Dtype {
    match d {
        crate::SourceDtype::F16 => safetensors::Dtype::F16,
        crate::SourceDtype::BF16 => safetensors::Dtype::BF16,
        crate::SourceDtype::F32 => safetensors::Dtype::F32,
        crate::SourceDtype::F64 => safetensors::Dtype::F64,
    }
}

/// Builds the store's [`ModelInput`] for one parsed ONNX model
/// (`source_format = "onnx"`).
///
/// Layers are the 3x3 Convs in graph order, named by their weight tensor; `conv_depth`
/// and `conv_depth_norm` come from the graph levels (`depth_rule = "graph"`) unless the
/// card gives `conv_depth` for the layers (keyed by weight tensor name); `groups` is the
/// node's `group` attribute unless the card gives it; `depth` is the number of graph
/// levels. `extra` gets the producer, IR version, opsets, operator counts and, per conv
/// node, its name, weight, shape, group, strides, dilations, pads and levels
/// (`onnx_convs`, a JSON array). Convs that share a weight tensor are stored once.
///
/// # Errors
/// As [`normalise`].
pub fn normalise_onnx<'a>(
    model: &'a OnnxModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
) -> Result<ModelInput<'a>> {
    normalise_onnx_with(model, card, overrides, vocab, &NormaliseOptions::default())
}

/// [`normalise_onnx`] with options (e.g. [`NormaliseOptions::allow_empty`]).
///
/// # Errors
/// As [`normalise_onnx`]; with `allow_empty`, no [`IngestError::NoConvKernels`].
pub fn normalise_onnx_with<'a>(
    model: &'a OnnxModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
    opts: &NormaliseOptions,
) -> Result<ModelInput<'a>> {
    let mut report = model.report.clone();
    let mut seen = BTreeSet::new();
    let mut shared = Vec::new();
    let mut tensors = Vec::new();
    for c in &model.convs {
        if !seen.insert(c.weight_name.as_str()) {
            shared.push(format!("{} ({})", c.node_name, c.weight_name));
            continue;
        }
        tensors.push((
            RawTensor {
                name: &c.weight_name,
                dtype: st_dtype(c.dtype),
                source_dtype: Some(c.dtype),
                shape: &c.shape,
                bytes: &c.bytes,
            },
            Some(GraphLayer {
                conv_depth: c.conv_depth,
                conv_depth_norm: c.conv_depth_norm,
                groups: c.group,
            }),
        ));
    }
    if !shared.is_empty() {
        report.warn(
            Warning::SHARED_WEIGHT,
            format!(
                "{} Conv node(s) reuse a weight tensor already stored for an earlier node \
                 (stored once, with the first node's depth): {}",
                shared.len(),
                list_examples(shared.into_iter(), 5)
            ),
        );
    }
    let json = |v: serde_json::Value| v.to_string();
    let mut extra = BTreeMap::new();
    extra.insert("producer".to_owned(), model.producer_name.clone());
    extra.insert(
        "producer_version".to_owned(),
        model.producer_version.clone(),
    );
    extra.insert("onnx_ir_version".to_owned(), model.ir_version.to_string());
    extra.insert("opset".to_owned(), json(serde_json::json!(model.opsets)));
    extra.insert(
        "operator_counts".to_owned(),
        json(serde_json::json!(model.op_counts)),
    );
    extra.insert("conv_levels".to_owned(), model.conv_levels.to_string());
    let convs: Vec<serde_json::Value> = model
        .convs
        .iter()
        .map(|c| {
            serde_json::json!({
                "node": c.node_name,
                "weight": c.weight_name,
                "weight_source": c.weight_source,
                "shape": c.shape,
                "group": c.group,
                "strides": c.strides,
                "dilations": c.dilations,
                "pads": c.pads,
                "auto_pad": c.auto_pad,
                "graph_level": c.graph_level,
                "conv_depth": c.conv_depth,
            })
        })
        .collect();
    extra.insert(
        "onnx_convs".to_owned(),
        json(serde_json::Value::from(convs)),
    );
    let src = Source {
        path: &model.path,
        sha256: &model.sha256,
        file_bytes: model.file_bytes,
        format: "onnx",
        report,
        tensors,
        depth: Some(model.depth),
        conv_levels: Some(model.conv_levels),
        extra,
    };
    normalise_source(src, card, overrides, vocab, opts)
}

fn normalise_source<'a>(
    src: Source<'a>,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
    opts: &NormaliseOptions,
) -> Result<ModelInput<'a>> {
    let no_card = ModelOverrides::default();
    let fields = overrides.or(card.map_or(&no_card, |c| &c.fields));
    let graph = src.depth.is_some();
    let mut report = src.report.clone();
    let layout = if graph {
        if fields.layout == Some(KernelLayout::Hwio) {
            report.warn(
                Warning::LAYOUT_IGNORED,
                "layout hwio ignored: ONNX Conv weights are oihw",
            );
        }
        KernelLayout::Oihw
    } else {
        fields.layout.unwrap_or_default()
    };

    let mut kernel_shape_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut conv_tensors = 0u64;
    let mut layers3: Vec<(RawTensor<'a>, ConvDims)> = Vec::new();
    let mut graph3: Vec<Option<GraphLayer>> = Vec::new();
    let mut positions: Vec<i64> = Vec::new();
    let mut other_kernels = 0usize;
    for &(t, g) in &src.tensors {
        let Some(d) = conv_dims(t.shape, layout) else {
            continue;
        };
        if t.shape.contains(&0) {
            report.skip(t.name, t.shape, &t.dtype.to_string(), SKIP_ZERO_DIM);
            continue;
        }
        let position = conv_tensors;
        conv_tensors += 1;
        *kernel_shape_counts
            .entry(format!("({}, {})", d.kh, d.kw))
            .or_insert(0) += (d.out_channels as u64) * (d.in_channels as u64);
        if d.kh == 3 && d.kw == 3 {
            layers3.push((t, d));
            graph3.push(g);
            positions.push(position as i64);
        } else {
            other_kernels += 1;
            report.skip(t.name, t.shape, &t.dtype.to_string(), SKIP_NOT_3X3);
        }
    }
    if other_kernels > 0 && layout == KernelLayout::Hwio {
        report.note("kernel sizes read in the hwio layout ([kh, kw, in, out])");
    }
    if layers3.is_empty() {
        if !opts.allow_empty {
            return Err(IngestError::NoConvKernels {
                path: src.path.to_owned(),
                layout: layout_name(layout),
                found: list_examples(
                    src.tensors
                        .iter()
                        .map(|(t, _)| format!("{} {:?} {}", t.name, t.shape, t.dtype)),
                    8,
                ),
            });
        }
        if conv_tensors == 0 {
            report.warn(
                Warning::NO_CONVOLUTIONS,
                "no convolution (rank-4) tensors: stored with its meta-parameters only \
                 (--allow-empty)",
            );
        } else {
            report.warn(
                Warning::NO_3X3_KERNELS,
                format!(
                    "{conv_tensors} convolution tensor(s), none with a 3x3 kernel \
                     ({}): stored with its meta-parameters and kernel_shape_counts only \
                     (--allow-empty)",
                    layout_name(layout)
                ),
            );
        }
    }

    // Card per-layer entries.
    let graph_groups: Vec<i64> = graph3.iter().map(|g| g.map_or(1, |g| g.groups)).collect();
    let (depths, groups) = match card {
        Some(card) => card_layers(card, &src, &layers3, &graph_groups)?,
        None => (None, graph_groups),
    };
    let mut skip = vec![false; layers3.len()];
    let (conv_depth, conv_depth_norm, rule): (Vec<i64>, Vec<f64>, &str) = match depths {
        Some(depths) => {
            let levels: Vec<i64> = depths
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let conv_levels = card.and_then(|c| c.conv_levels);
            let norm = match conv_levels {
                // The card knows how many conv levels the model has (any kernel size).
                Some(total) => {
                    if let Some(d) = depths.iter().find(|&&d| d < 0 || d as u64 >= total) {
                        return Err(IngestError::CardLayers {
                            path: card.map(|c| c.path.clone()).unwrap_or_default(),
                            detail: format!(
                                "conv_depth {d} is outside 0..{total} (conv_levels = {total})"
                            ),
                        });
                    }
                    depths
                        .iter()
                        .map(|&d| level_norm(d as usize, total as usize))
                        .collect()
                }
                None => depths
                    .iter()
                    .map(|d| {
                        let idx = levels.binary_search(d).unwrap_or(0);
                        level_norm(idx, levels.len())
                    })
                    .collect(),
            };
            if conv_levels.map_or(levels.len() == 1, |t| t == 1) {
                report.warn(
                    Warning::SINGLE_CONV_LEVEL,
                    "single conv level (card): conv_depth_norm is 0 for every layer",
                );
            }
            (depths, norm, DEPTH_RULE_CARD)
        }
        None if graph => {
            let mut d = Vec::with_capacity(layers3.len());
            let mut norm = Vec::with_capacity(layers3.len());
            for (i, g) in graph3.iter().enumerate() {
                match g.and_then(|g| g.conv_depth.zip(g.conv_depth_norm)) {
                    Some((cd, n)) => {
                        d.push(cd);
                        norm.push(n);
                    }
                    None => {
                        skip[i] = true;
                        let t = &layers3[i].0;
                        report.skip(t.name, t.shape, &t.dtype.to_string(), SKIP_NO_GRAPH_LEVEL);
                        d.push(0);
                        norm.push(0.0);
                    }
                }
            }
            if src.conv_levels == Some(1) && skip.iter().any(|s| !s) {
                report.warn(
                    Warning::SINGLE_CONV_LEVEL,
                    "single conv level in the graph: conv_depth_norm is 0 for every layer",
                );
            }
            (d, norm, DEPTH_RULE_GRAPH)
        }
        None => {
            // Every convolution (any kernel size) is a level, as in the paper's graph
            // rule; the 3x3 layers take their position among them.
            let n = conv_tensors as usize;
            if !layers3.is_empty() {
                report.warn(
                    Warning::DEPTH_FROM_NAME_ORDER,
                    format!(
                        "conv_depth from the natural order of tensor names, not from a \
                         graph ({n} conv levels)"
                    ),
                );
            }
            if n == 1 && !layers3.is_empty() {
                report.warn(
                    Warning::SINGLE_CONV_LEVEL,
                    "single conv level: conv_depth_norm is 0",
                );
            }
            let norm = positions
                .iter()
                .map(|&p| level_norm(p as usize, n))
                .collect();
            (positions.clone(), norm, DEPTH_RULE_NAME_ORDER)
        }
    };

    let mut layers = Vec::with_capacity(layers3.len());
    for (i, (t, d)) in layers3.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let Some(dtype) = t.source_dtype else {
            // read_safetensors rejects rank-4 tensors of other dtypes
            return Err(IngestError::UnsupportedDtype {
                path: src.path.to_owned(),
                tensor: t.name.to_owned(),
                dtype: t.dtype.to_string(),
                shape: t.shape.to_vec(),
            });
        };
        layers.push(LayerInput {
            layer_name: t.name.to_owned(),
            conv_depth: conv_depth[i],
            conv_depth_norm: conv_depth_norm[i],
            depth_rule: rule.to_owned(),
            out_channels: d.out_channels,
            in_channels: d.in_channels,
            groups: groups[i],
            weights: KernelData {
                dtype,
                layout,
                bytes: Cow::Borrowed(t.bytes),
            },
        });
    }

    if layers.is_empty() && !layers3.is_empty() {
        // Every 3x3 Conv lacked a graph level.
        let found = format!(
            "{} 3x3 Conv weight(s), none on a graph level (reached only from constants)",
            layers3.len()
        );
        if !opts.allow_empty {
            return Err(IngestError::NoConvKernels {
                path: src.path.to_owned(),
                layout: layout_name(layout),
                found,
            });
        }
        report.warn(
            Warning::NO_3X3_KERNELS,
            format!("{found}: stored with its meta-parameters only (--allow-empty)"),
        );
    }

    let task = fields
        .task
        .as_deref()
        .map(|v| canonicalise(KIND_TASK, v, &vocab.tasks))
        .transpose()?;
    let visual_category = fields
        .visual_category
        .as_deref()
        .map(|v| canonicalise(KIND_VISUAL_CATEGORY, v, &vocab.visual_categories))
        .transpose()?;
    let name = match fields.name.clone() {
        Some(n) => n,
        None => src
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "model".to_owned()),
    };
    let mut extra = src.extra;
    for (k, v) in [
        ("paper", &fields.paper),
        ("url", &fields.url),
        ("notes", &fields.notes),
    ] {
        if let Some(v) = v {
            extra.insert(k.to_owned(), v.clone());
        }
    }
    extra.insert("layout".to_owned(), layout_name(layout).to_owned());
    if let Some(card) = card {
        extra.insert("card".to_owned(), card.path.display().to_string());
    }

    Ok(ModelInput {
        meta: ModelMeta {
            name,
            architecture: fields.architecture,
            task,
            training_dataset: fields.training_dataset,
            pretraining_dataset: fields.pretraining_dataset,
            visual_category,
            source_format: src.format.to_owned(),
            source_path: src.path.display().to_string(),
            source_sha256: src.sha256.to_owned(),
            source_bytes: src.file_bytes,
            depth: src.depth,
            kernel_shape_counts,
            conv_tensors,
            extra,
            report,
        },
        layers,
    })
}

fn level_norm(idx: usize, levels: usize) -> f64 {
    if levels <= 1 {
        0.0
    } else {
        idx as f64 / (levels - 1) as f64
    }
}

type CardLayerResult = (Option<Vec<i64>>, Vec<i64>);

fn card_layers(
    card: &ModelCard,
    raw: &Source<'_>,
    layers3: &[(RawTensor<'_>, ConvDims)],
    default_groups: &[i64],
) -> Result<CardLayerResult> {
    let err = |detail: String| IngestError::CardLayers {
        path: card.path.clone(),
        detail,
    };
    let known: BTreeSet<&str> = raw.tensors.iter().map(|(t, _)| t.name).collect();
    let unknown: Vec<&str> = card
        .layers
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(err(format!(
            "[layers] names tensor(s) not in {}: {}",
            raw.path.display(),
            unknown.join(", ")
        )));
    }
    let mut depths = Vec::with_capacity(layers3.len());
    let mut missing = Vec::new();
    let mut groups = Vec::with_capacity(layers3.len());
    for (i, (t, d)) in layers3.iter().enumerate() {
        let entry = card.layers.get(t.name);
        match entry.and_then(|e| e.conv_depth) {
            Some(cd) => depths.push(cd),
            None => missing.push(t.name),
        }
        let g = entry
            .and_then(|e| e.groups)
            .unwrap_or(default_groups.get(i).copied().unwrap_or(1));
        if g < 1 || d.out_channels % (g as usize) != 0 {
            return Err(err(format!(
                "layer {}: groups = {g} must be >= 1 and divide its {} output channels",
                t.name, d.out_channels
            )));
        }
        groups.push(g);
    }
    let depths = if depths.is_empty() {
        None
    } else if !missing.is_empty() {
        return Err(err(format!(
            "gives conv_depth for {} of the {} 3x3 layers; give it for all or none. Missing: {}",
            depths.len(),
            layers3.len(),
            list_examples(missing.iter().map(|s| (*s).to_owned()), 8)
        )));
    } else {
        Some(depths)
    };
    Ok((depths, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::parse_card;
    use crate::safetensors::tests::{build, f32_bytes};
    use std::path::Path;

    fn raw(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> RawModel {
        RawModel::from_bytes(Path::new("zoo/net.safetensors"), build(tensors)).unwrap()
    }

    fn sample() -> RawModel {
        raw(&[
            ("layer10.weight", "F32", vec![4, 2, 3, 3], f32_bytes(72)),
            ("layer2.weight", "F32", vec![2, 3, 3, 3], f32_bytes(54)),
            ("layer3.weight", "F32", vec![2, 2, 3, 3], f32_bytes(36)),
            ("down.weight", "F32", vec![4, 2, 1, 1], f32_bytes(8)),
            ("fc.weight", "F32", vec![10, 4], f32_bytes(40)),
        ])
    }

    #[test]
    fn name_order_defaults() {
        let r = sample();
        let m = normalise(&r, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap();
        assert_eq!(m.meta.name, "net");
        assert_eq!(m.meta.source_format, "safetensors");
        assert_eq!(m.meta.conv_tensors, 4);
        assert_eq!(m.meta.kernel_shape_counts["(3, 3)"], 8 + 6 + 4);
        assert_eq!(m.meta.kernel_shape_counts["(1, 1)"], 8);
        let names: Vec<&str> = m.layers.iter().map(|l| l.layer_name.as_str()).collect();
        assert_eq!(
            names,
            vec!["layer2.weight", "layer3.weight", "layer10.weight"]
        );
        let d: Vec<i64> = m.layers.iter().map(|l| l.conv_depth).collect();
        // down.weight (1x1) is conv level 0 in name order.
        assert_eq!(d, vec![1, 2, 3]);
        let n: Vec<f64> = m.layers.iter().map(|l| l.conv_depth_norm).collect();
        assert_eq!(n, vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
        assert!(
            m.layers
                .iter()
                .all(|l| l.depth_rule == "name_order" && l.groups == 1)
        );
        assert_eq!(m.layers[2].out_channels, 4);
        assert_eq!(m.layers[2].in_channels, 2);
        assert_eq!(m.n_filters(), 18);
        assert_eq!(&*m.layers[0].weights.bytes, &f32_bytes(54)[..]);
        let report = &m.meta.report;
        let skipped: Vec<(String, &str)> = report
            .skipped
            .iter()
            .map(|t| (t.describe(), t.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("fc.weight [10, 4] F32".to_owned(), SKIP_NOT_RANK4),
                ("down.weight [4, 2, 1, 1] F32".to_owned(), SKIP_NOT_3X3)
            ],
            "{report:?}"
        );
        let codes: Vec<&str> = report.warnings.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(codes, [Warning::DEPTH_FROM_NAME_ORDER], "{report:?}");
        assert!(report.warnings[0].message.contains("not from a graph"));
    }

    #[test]
    fn hwio_layout() {
        let r = raw(&[
            ("conv_a", "F32", vec![3, 3, 2, 5], f32_bytes(90)),
            ("conv_b", "F32", vec![2, 5, 3, 3], f32_bytes(90)),
        ]);
        let o = ModelOverrides {
            layout: Some(KernelLayout::Hwio),
            ..Default::default()
        };
        let m = normalise(&r, None, &o, &VocabExtra::default()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].layer_name, "conv_a");
        assert_eq!((m.layers[0].out_channels, m.layers[0].in_channels), (5, 2));
        assert_eq!(m.layers[0].weights.layout, KernelLayout::Hwio);
        assert_eq!(m.meta.kernel_shape_counts["(2, 5)"], 9);
        // conv_a and conv_b are two conv levels; conv_a is the first.
        assert_eq!(
            (m.layers[0].conv_depth, m.layers[0].conv_depth_norm),
            (0, 0.0)
        );
        assert!(!m.meta.report.has_warning(Warning::SINGLE_CONV_LEVEL));
        // the same file read as OIHW sees conv_b as the 3x3 layer
        let m = normalise(&r, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap();
        assert_eq!(m.layers[0].layer_name, "conv_b");
        assert_eq!((m.layers[0].out_channels, m.layers[0].in_channels), (2, 5));
    }

    #[test]
    fn no_3x3_kernels() {
        let r = raw(&[
            ("a.weight", "F32", vec![4, 2, 1, 1], f32_bytes(8)),
            ("b", "F32", vec![3], f32_bytes(3)),
        ]);
        let e =
            normalise(&r, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, IngestError::NoConvKernels { .. }));
        assert!(msg.contains("zoo/net.safetensors"), "{msg}");
        assert!(msg.contains("a.weight [4, 2, 1, 1] F32"), "{msg}");
        assert!(msg.contains("--allow-empty"), "{msg}");

        // allowed: no layers, the kernel counts, and the warning
        let allow = NormaliseOptions { allow_empty: true };
        let m = normalise_with(
            &r,
            None,
            &ModelOverrides::default(),
            &VocabExtra::default(),
            &allow,
        )
        .unwrap();
        assert!(m.layers.is_empty());
        assert_eq!(m.meta.conv_tensors, 1);
        assert_eq!(m.meta.kernel_shape_counts["(1, 1)"], 8);
        let codes: Vec<&str> = m
            .meta
            .report
            .warnings
            .iter()
            .map(|w| w.code.as_str())
            .collect();
        assert_eq!(codes, [Warning::NO_3X3_KERNELS], "{:?}", m.meta.report);
        assert_eq!(m.meta.report.skipped.len(), 2);
    }

    #[test]
    fn no_convolutions_at_all() {
        let r = raw(&[("fc.weight", "F32", vec![10, 4], f32_bytes(40))]);
        let e =
            normalise(&r, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap_err();
        assert!(matches!(e, IngestError::NoConvKernels { .. }), "{e}");
        let allow = NormaliseOptions { allow_empty: true };
        let m = normalise_with(
            &r,
            None,
            &ModelOverrides::default(),
            &VocabExtra::default(),
            &allow,
        )
        .unwrap();
        assert!(m.layers.is_empty());
        assert_eq!(m.meta.conv_tensors, 0);
        assert!(m.meta.kernel_shape_counts.is_empty());
        let codes: Vec<&str> = m
            .meta
            .report
            .warnings
            .iter()
            .map(|w| w.code.as_str())
            .collect();
        // no depth warning either: there are no layers to have a depth
        assert_eq!(codes, [Warning::NO_CONVOLUTIONS], "{:?}", m.meta.report);
    }

    #[test]
    fn single_conv_level_and_zero_dimension() {
        let r = raw(&[
            ("only.weight", "F32", vec![2, 1, 3, 3], f32_bytes(18)),
            ("void.weight", "F32", vec![0, 1, 3, 3], Vec::new()),
        ]);
        let m = normalise(&r, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.meta.conv_tensors, 1);
        let report = &m.meta.report;
        assert!(report.has_warning(Warning::SINGLE_CONV_LEVEL), "{report:?}");
        assert!(
            report.has_warning(Warning::DEPTH_FROM_NAME_ORDER),
            "{report:?}"
        );
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].tensor, "void.weight");
        assert_eq!(report.skipped[0].reason, SKIP_ZERO_DIM);
    }

    #[test]
    fn card_and_overrides() {
        let r = sample();
        let card = parse_card(
            r#"
name = "card-name"
task = "object detection"
visual_category = "medical x-ray"
paper = "P"
[layers."layer2.weight"]
conv_depth = 0
[layers."layer3.weight"]
conv_depth = 4
groups = 2
[layers."layer10.weight"]
conv_depth = 4
"#,
            Path::new("net.toml"),
        )
        .unwrap();
        let cli = ModelOverrides {
            name: Some("cli-name".into()),
            ..Default::default()
        };
        let m = normalise(&r, Some(&card), &cli, &VocabExtra::default()).unwrap();
        assert_eq!(m.meta.name, "cli-name");
        assert_eq!(m.meta.task.as_deref(), Some("Object Detection"));
        assert_eq!(m.meta.visual_category.as_deref(), Some("Medical X-Ray"));
        assert_eq!(m.meta.extra["paper"], "P");
        let d: Vec<(i64, f64, i64)> = m
            .layers
            .iter()
            .map(|l| (l.conv_depth, l.conv_depth_norm, l.groups))
            .collect();
        assert_eq!(d, vec![(0, 0.0, 1), (4, 1.0, 2), (4, 1.0, 1)]);
        assert!(m.layers.iter().all(|l| l.depth_rule == "card"));
        // depths from the card: no name-order warning
        assert!(!m.meta.report.has_warning(Warning::DEPTH_FROM_NAME_ORDER));
        assert!(!m.meta.report.has_warning(Warning::SINGLE_CONV_LEVEL));
    }

    #[test]
    fn card_conv_levels_normalise_by_all_conv_levels() {
        let r = sample();
        let text = "conv_levels = 9\n[layers.\"layer2.weight\"]\nconv_depth = 1\n\
                    [layers.\"layer3.weight\"]\nconv_depth = 4\n[layers.\"layer10.weight\"]\nconv_depth = 8\n";
        let card = parse_card(text, Path::new("net.toml")).unwrap();
        let m = normalise(
            &r,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap();
        let n: Vec<f64> = m.layers.iter().map(|l| l.conv_depth_norm).collect();
        assert_eq!(n, vec![0.125, 0.5, 1.0]);
        let bad = parse_card(
            &text.replace("conv_depth = 8", "conv_depth = 9"),
            Path::new("net.toml"),
        )
        .unwrap();
        let e = normalise(
            &r,
            Some(&bad),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("conv_levels = 9"), "{e}");
    }

    #[test]
    fn card_must_give_all_depths() {
        let r = sample();
        let card = parse_card(
            "[layers.\"layer2.weight\"]\nconv_depth = 0\n",
            Path::new("net.toml"),
        )
        .unwrap();
        let e = normalise(
            &r,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("net.toml"), "{msg}");
        assert!(msg.contains("layer3.weight"), "{msg}");
        assert!(msg.contains("1 of the 3"), "{msg}");

        let card = parse_card("[layers.\"nope\"]\ngroups = 1\n", Path::new("net.toml")).unwrap();
        let e = normalise(
            &r,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");

        let card = parse_card(
            "[layers.\"layer2.weight\"]\ngroups = 3\n",
            Path::new("net.toml"),
        )
        .unwrap();
        let e = normalise(
            &r,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups = 3"), "{e}");
    }

    #[test]
    fn vocabulary_is_checked() {
        let r = sample();
        let o = ModelOverrides {
            task: Some("galaxy morphology".into()),
            ..Default::default()
        };
        let e = normalise(&r, None, &o, &VocabExtra::default()).unwrap_err();
        assert!(matches!(e, IngestError::UnknownVocabulary { .. }));
        let v = VocabExtra {
            tasks: vec!["Galaxy Morphology".into()],
            ..Default::default()
        };
        let m = normalise(&r, None, &o, &v).unwrap();
        assert_eq!(m.meta.task.as_deref(), Some("Galaxy Morphology"));
    }
}
