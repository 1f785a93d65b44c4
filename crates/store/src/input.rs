//! What the normaliser hands the store: one model's meta-parameters and its 3x3 layers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Element type of a source weight tensor (always little-endian bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl SourceDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F16 | SourceDtype::BF16 => 2,
            SourceDtype::F32 => 4,
            SourceDtype::F64 => 8,
        }
    }

    /// Lower-case name as used in messages and stored reports.
    pub fn name(self) -> &'static str {
        match self {
            SourceDtype::F16 => "f16",
            SourceDtype::BF16 => "bf16",
            SourceDtype::F32 => "f32",
            SourceDtype::F64 => "f64",
        }
    }
}

/// Memory layout of a rank-4 convolution weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KernelLayout {
    /// `[out, in, kh, kw]` (PyTorch, ONNX).
    #[default]
    Oihw,
    /// `[kh, kw, in, out]` (Keras / TensorFlow).
    Hwio,
}

/// The raw bytes of one 3x3 convolution weight tensor, not yet converted.
///
/// `out_channels * in_channels * 9` elements of `dtype`, little-endian, in `layout`.
#[derive(Debug, Clone)]
pub struct KernelData<'a> {
    /// Element type.
    pub dtype: SourceDtype,
    /// Memory layout.
    pub layout: KernelLayout,
    /// The tensor's bytes (borrowed from a memory map, or owned).
    pub bytes: Cow<'a, [u8]>,
}

/// One 3x3 convolution layer of a model, as the normaliser resolved it.
#[derive(Debug, Clone)]
pub struct LayerInput<'a> {
    /// The weight tensor's name in the source file.
    pub layer_name: String,
    /// Index among the model's conv levels (0 = first), see MISSION.md section 2.
    pub conv_depth: i64,
    /// `conv_depth / (levels - 1)`, 0 for a single level.
    pub conv_depth_norm: f64,
    /// How `conv_depth` was decided: `name_order`, `card` or `graph`.
    pub depth_rule: String,
    /// Output channels (filters per input channel).
    pub out_channels: usize,
    /// Input channels per group (the tensor's second dimension in OIHW).
    pub in_channels: usize,
    /// Convolution groups (1 unless the source says otherwise).
    pub groups: i64,
    /// The weights.
    pub weights: KernelData<'a>,
}

impl LayerInput<'_> {
    /// Number of 3x3 filters in this layer (`out_channels * in_channels`).
    pub fn n_filters(&self) -> usize {
        self.out_channels * self.in_channels
    }
}

/// A model's meta-parameters, normalised.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMeta {
    /// Unique display name (defaults to the file stem).
    pub name: String,
    /// Architecture family, e.g. `ResNet-50`.
    pub architecture: Option<String>,
    /// Task, canonical spelling from the vocabulary.
    pub task: Option<String>,
    /// Training dataset(s).
    pub training_dataset: Option<String>,
    /// Pretraining dataset(s).
    pub pretraining_dataset: Option<String>,
    /// Visual category of the training data, canonical spelling from the vocabulary.
    pub visual_category: Option<String>,
    /// `safetensors`, `onnx`, `npz`, `hdf5`, ...
    pub source_format: String,
    /// The path the model was read from, as given.
    pub source_path: String,
    /// Hex sha256 of the source file's bytes.
    pub source_sha256: String,
    /// Size of the source file in bytes.
    pub source_bytes: u64,
    /// Number of graph levels (ONNX), `None` for graph-less formats.
    pub depth: Option<i64>,
    /// Number of 2-D kernels per spatial shape, keyed `"(kh, kw)"`, over all conv tensors.
    pub kernel_shape_counts: BTreeMap<String, u64>,
    /// Number of rank-4 convolution tensors found (any kernel size).
    pub conv_tensors: u64,
    /// Other card fields (paper, url, producer, ...), stored as a JSON object.
    pub extra: BTreeMap<String, String>,
    /// The validation report (skipped tensors, warnings, notes), stored with the model
    /// as a JSON object in `models.report`; the store fills in its counts.
    pub report: ValidationReport,
}

/// One normalised model ready to be written.
#[derive(Debug, Clone)]
pub struct ModelInput<'a> {
    /// Meta-parameters.
    pub meta: ModelMeta,
    /// The 3x3 layers in `layer_idx` order.
    pub layers: Vec<LayerInput<'a>>,
}

impl ModelInput<'_> {
    /// Total number of 3x3 filters in the model.
    pub fn n_filters(&self) -> usize {
        self.layers.iter().map(LayerInput::n_filters).sum()
    }
}

/// A model's validation report: what ingest found, skipped and warns about.
///
/// Stored as a JSON object in the `report` column of `models`
/// (`docs/store-format.md`). The normaliser fills `skipped`, `warnings` and `notes`;
/// the store adds its own checks (all-zero layers, non-finite weights) and sets the
/// counts when it writes the model. Warning codes are stable (see [`Warning`]), so
/// SQL can select on them:
/// `SELECT name FROM models WHERE report LIKE '%"code":"all_zero_layer"%'`.
///
/// ```
/// use filterdb_store::{ValidationReport, Warning};
/// let mut r = ValidationReport::default();
/// r.warn(Warning::SINGLE_CONV_LEVEL, "single conv level: conv_depth_norm is 0");
/// r.skip("fc.weight", &[10, 4], "F32", "not rank 4: not a convolution weight");
/// let json = r.to_json();
/// assert!(json.contains(r#""code":"single_conv_level""#));
/// assert_eq!(ValidationReport::from_json(&json)?, r);
/// // reports written before the structured form (a JSON array of lines) still read
/// let old = ValidationReport::from_json(r#"["warning: layer a is all zero"]"#)?;
/// assert_eq!(old.notes, ["warning: layer a is all zero"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationReport {
    /// Rank-4 (convolution) tensors found, any kernel size (= `models.conv_tensors`).
    pub conv_tensors: u64,
    /// 3x3 layers stored (= `models.n_layers`).
    pub layers_3x3: u64,
    /// 3x3 filters stored (= `models.n_filters`).
    pub filters: u64,
    /// Tensors of the source that were not stored, each with the reason.
    pub skipped: Vec<SkippedTensor>,
    /// Things the user should know about, each with a stable code.
    pub warnings: Vec<Warning>,
    /// Information on how the model was read (no action needed).
    pub notes: Vec<String>,
}

/// A source tensor that was not stored as a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedTensor {
    /// The tensor's (or Conv node's) name in the source file.
    pub tensor: String,
    /// Its shape as the file gives it.
    pub shape: Vec<usize>,
    /// Its element type as the file spells it (may be empty).
    pub dtype: String,
    /// Why it was not stored; tensors skipped for the same reason share the text.
    pub reason: String,
}

/// One warning of a [`ValidationReport`]: a stable `code` and a message for people.
///
/// The codes this version writes are the associated constants (documented in
/// `docs/store-format.md`); readers must accept codes they do not know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Warning {
    /// Stable, snake_case code.
    pub code: String,
    /// What happened, naming tensors or layers.
    pub message: String,
}

impl Warning {
    /// The file has no rank-4 tensor at all (stored with `--allow-empty`).
    pub const NO_CONVOLUTIONS: &str = "no_convolutions";
    /// Convolutions, but no 3x3 layer to store (stored with `--allow-empty`).
    pub const NO_3X3_KERNELS: &str = "no_3x3_kernels";
    /// A stored layer whose weights are all zero.
    pub const ALL_ZERO_LAYER: &str = "all_zero_layer";
    /// NaN / infinite weights (or float16 overflows) stored with `--allow-nonfinite`.
    pub const NON_FINITE: &str = "non_finite";
    /// The model replaced one of the same name, or shares its name in an import.
    pub const DUPLICATE_NAME: &str = "duplicate_name";
    /// All 3x3 layers are on one conv level: `conv_depth_norm` is 0 for every layer.
    pub const SINGLE_CONV_LEVEL: &str = "single_conv_level";
    /// `conv_depth` comes from the natural order of tensor names, not from a graph.
    pub const DEPTH_FROM_NAME_ORDER: &str = "depth_from_name_order";
    /// ONNX Conv nodes share a weight tensor: it is stored once, for the first node.
    pub const SHARED_WEIGHT: &str = "shared_weight";
    /// ONNX Conv nodes without a graph level (reached only from constants).
    pub const NO_GRAPH_LEVEL: &str = "no_graph_level";
    /// A `layout` setting that does not apply to the format was ignored.
    pub const LAYOUT_IGNORED: &str = "layout_ignored";
    /// An import changed a label (`import-cnnfilterdb --fix-labels`).
    pub const LABEL_FIX: &str = "label_fix";
    /// A CNN Filter DB release disagrees with itself about this model.
    pub const RELEASE_MISMATCH: &str = "release_mismatch";

    /// A warning with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Warning {
        Warning {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl ValidationReport {
    /// Add a warning.
    pub fn warn(&mut self, code: &str, message: impl Into<String>) {
        self.warnings.push(Warning::new(code, message));
    }

    /// Add a skipped tensor.
    pub fn skip(&mut self, tensor: &str, shape: &[usize], dtype: &str, reason: &str) {
        self.skipped.push(SkippedTensor {
            tensor: tensor.to_owned(),
            shape: shape.to_vec(),
            dtype: dtype.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// Add a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether a warning with `code` is present.
    pub fn has_warning(&self, code: &str) -> bool {
        self.warnings.iter().any(|w| w.code == code)
    }

    /// Append `other`'s skipped tensors, warnings and notes (the counts stay).
    pub fn extend(&mut self, other: ValidationReport) {
        self.skipped.extend(other.skipped);
        self.warnings.extend(other.warnings);
        self.notes.extend(other.notes);
    }

    /// Insert `other`'s skipped tensors, warnings and notes before this report's own
    /// (the counts stay): for what was found before this report was started.
    pub fn prepend(&mut self, other: ValidationReport) {
        let (c, l, f) = (self.conv_tensors, self.layers_3x3, self.filters);
        let mut first = other;
        first.extend(std::mem::take(self));
        *self = first;
        (self.conv_tensors, self.layers_3x3, self.filters) = (c, l, f);
    }

    /// Skipped tensors grouped by reason, in first-seen order.
    pub fn skipped_by_reason(&self) -> Vec<(&str, Vec<&SkippedTensor>)> {
        let mut out: Vec<(&str, Vec<&SkippedTensor>)> = Vec::new();
        for t in &self.skipped {
            match out.iter_mut().find(|(r, _)| *r == t.reason) {
                Some((_, v)) => v.push(t),
                None => out.push((&t.reason, vec![t])),
            }
        }
        out
    }

    /// The JSON object stored in `models.report` (keys in declaration order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Read a stored `models.report` value: the JSON object, or the JSON array of
    /// lines that stores written before the structured report hold (the lines become
    /// notes; the counts are then 0).
    ///
    /// # Errors
    /// The value is neither form.
    pub fn from_json(text: &str) -> Result<ValidationReport, serde_json::Error> {
        if text.trim_start().starts_with('[') {
            let notes: Vec<String> = serde_json::from_str(text)?;
            return Ok(ValidationReport {
                notes,
                ..ValidationReport::default()
            });
        }
        serde_json::from_str(text)
    }
}

impl SkippedTensor {
    /// `name [shape] dtype`, as messages show a tensor.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {:?}", self.tensor, self.shape);
        if !self.dtype.is_empty() {
            s.push(' ');
            s.push_str(&self.dtype);
        }
        s
    }
}
