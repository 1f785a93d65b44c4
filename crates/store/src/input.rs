//! What the normaliser hands the store: one model's meta-parameters and its 3x3 layers.

use std::borrow::Cow;
use std::collections::BTreeMap;

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
    /// Validation report lines (warnings, skipped tensors), stored with the model.
    pub report: Vec<String>,
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
