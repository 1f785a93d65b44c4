//! Reading `.onnx` models: Conv weights, the graph's levels and the paper's depth rule.
//!
//! The ONNX protobuf is decoded with [`prost`] into the hand-written message structs of
//! [`proto`] (the subset of the ONNX IR filterdb needs, with the spec's field numbers; no
//! `protoc`, no generated code). [`read_onnx`] hashes the file, finds every `Conv` node
//! whose weight (input 1) is rank 4, reads that weight from a graph initializer, a
//! `Constant` node's `value` or an external data file next to the model, and computes the
//! graph levels as MISSION.md section 2 defines them:
//!
//! - a node's **graph level** is the longest path to it from the nodes that consume a
//!   graph input (level 0); nodes reached only from constants get no level;
//! - `conv_depth` is the index of a Conv's level among the sorted levels holding a Conv
//!   (any kernel size), `conv_depth_norm = conv_depth / (conv levels - 1)` (0 for a single
//!   conv level);
//! - the model's depth is the number of distinct graph levels.
//!
//! [`crate::normalise::normalise_onnx`] turns the [`OnnxModel`] into the store's input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::card::io_error;
use crate::error::{IngestError, Result};
use crate::normalise::SKIP_CONV_NOT_2D;
use crate::{SourceDtype, ValidationReport, Warning};

/// The subset of the ONNX IR (`onnx.proto`) filterdb reads; field numbers as in the spec.
pub mod proto {
    /// `ModelProto`: the top-level message of an `.onnx` file.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        /// IR version.
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        /// Operator sets the model imports.
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        /// Tool that wrote the model.
        #[prost(string, tag = "2")]
        pub producer_name: String,
        /// Version of that tool.
        #[prost(string, tag = "3")]
        pub producer_version: String,
        /// The graph.
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
    }

    /// `OperatorSetIdProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        /// Domain (`""` = `ai.onnx`).
        #[prost(string, tag = "1")]
        pub domain: String,
        /// Opset version.
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    /// `GraphProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        /// Nodes, in topological order (as the spec requires).
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        /// Graph name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// Constant tensors (weights).
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        /// Graph inputs (may include initializers in older IR versions).
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        /// Graph outputs.
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    /// `NodeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        /// Input value names (`""` = optional input left out).
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        /// Output value names.
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        /// Node name.
        #[prost(string, tag = "3")]
        pub name: String,
        /// Operator.
        #[prost(string, tag = "4")]
        pub op_type: String,
        /// Attributes.
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        /// Operator domain.
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    /// `AttributeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        /// Attribute name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `AttributeType` (FLOAT = 1, INT = 2, STRING = 3, TENSOR = 4, FLOATS = 6, INTS = 7).
        #[prost(int32, tag = "20")]
        pub r#type: i32,
        /// Float value.
        #[prost(float, tag = "2")]
        pub f: f32,
        /// Int value.
        #[prost(int64, tag = "3")]
        pub i: i64,
        /// String value.
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        /// Tensor value.
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        /// Float list.
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        /// Int list.
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
    }

    /// `TensorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// Shape.
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        /// `DataType` (FLOAT = 1, FLOAT16 = 10, DOUBLE = 11, BFLOAT16 = 16, ...).
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        /// FLOAT (and COMPLEX64) values.
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        /// INT32 and smaller types; FLOAT16 / BFLOAT16 as bit patterns.
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        /// INT64 values.
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        /// Tensor name.
        #[prost(string, tag = "8")]
        pub name: String,
        /// Little-endian raw bytes.
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
        /// DOUBLE (and COMPLEX128) values.
        #[prost(double, repeated, tag = "10")]
        pub double_data: Vec<f64>,
        /// External data: `location`, `offset`, `length`, `checksum`.
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<StringStringEntryProto>,
        /// `DataLocation` (DEFAULT = 0, EXTERNAL = 1).
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    /// `StringStringEntryProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        /// Key.
        #[prost(string, tag = "1")]
        pub key: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `ValueInfoProto` (only the name).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        /// Value name.
        #[prost(string, tag = "1")]
        pub name: String,
    }
}

use proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX `TensorProto.DataType` values filterdb can store.
const DT_FLOAT: i32 = 1;
const DT_FLOAT16: i32 = 10;
const DT_DOUBLE: i32 = 11;
const DT_BFLOAT16: i32 = 16;
/// `TensorProto.DataLocation.EXTERNAL`.
const LOCATION_EXTERNAL: i32 = 1;

fn data_type_name(dt: i32) -> String {
    let n = match dt {
        0 => "UNDEFINED",
        1 => "FLOAT",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "STRING",
        9 => "BOOL",
        10 => "FLOAT16",
        11 => "DOUBLE",
        12 => "UINT32",
        13 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        16 => "BFLOAT16",
        _ => return format!("data_type {dt}"),
    };
    n.to_owned()
}

/// One rank-4 `Conv` of an ONNX graph.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxConv {
    /// Index of the node in the graph.
    pub node_index: usize,
    /// Node name (may be empty in the file; then `Conv#<index>`).
    pub node_name: String,
    /// The weight tensor's name (the node's input 1); the layer name in the store.
    pub weight_name: String,
    /// Weight shape `[out, in/group, kh, kw]`.
    pub shape: Vec<usize>,
    /// Element type of the weight.
    pub dtype: SourceDtype,
    /// The weight's bytes, little-endian `dtype`, C order; read for 3x3 kernels only
    /// (empty otherwise).
    pub bytes: Vec<u8>,
    /// The `group` attribute (1 if absent).
    pub group: i64,
    /// The `strides` attribute (empty if absent).
    pub strides: Vec<i64>,
    /// The `dilations` attribute (empty if absent).
    pub dilations: Vec<i64>,
    /// The `pads` attribute (empty if absent).
    pub pads: Vec<i64>,
    /// The `auto_pad` attribute, if given.
    pub auto_pad: Option<String>,
    /// Where the weight came from: `initializer`, `constant` or `external`.
    pub weight_source: &'static str,
    /// Graph level of the node (`None`: reached only from constants).
    pub graph_level: Option<i64>,
    /// Index of the node's level among the conv levels.
    pub conv_depth: Option<i64>,
    /// `conv_depth / (conv levels - 1)`, 0 for a single conv level.
    pub conv_depth_norm: Option<f64>,
}

impl OnnxConv {
    /// Whether the kernel is 3x3.
    pub fn is_3x3(&self) -> bool {
        self.shape.len() == 4 && self.shape[2] == 3 && self.shape[3] == 3
    }
}

/// A parsed ONNX model: hash, producer, opsets, operator counts and its rank-4 Convs.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// The path it was read from, as given.
    pub path: PathBuf,
    /// Lower-case hex sha256 of the `.onnx` file's bytes (external data not included).
    pub sha256: String,
    /// Size of the `.onnx` file in bytes.
    pub file_bytes: u64,
    /// IR version.
    pub ir_version: i64,
    /// Producer name.
    pub producer_name: String,
    /// Producer version.
    pub producer_version: String,
    /// Opset version per domain (`ai.onnx` for the default domain).
    pub opsets: BTreeMap<String, i64>,
    /// Number of nodes per operator type.
    pub op_counts: BTreeMap<String, u64>,
    /// Number of distinct graph levels (the model's depth).
    pub depth: i64,
    /// Number of nodes that have a graph level.
    pub nodes_with_level: usize,
    /// Number of distinct levels holding a rank-4 Conv.
    pub conv_levels: usize,
    /// The rank-4 Convs, in graph order.
    pub convs: Vec<OnnxConv>,
    /// What reading found: Conv nodes skipped, nodes without a graph level.
    pub report: ValidationReport,
}

fn bad(path: &Path, what: impl Into<String>, detail: impl Into<String>) -> IngestError {
    IngestError::Onnx {
        path: path.to_owned(),
        what: what.into(),
        detail: detail.into(),
    }
}

/// Reads and hashes an `.onnx` file and decodes its Conv weights and graph levels.
///
/// # Errors
/// [`IngestError::FileNotFound`] / [`IngestError::Io`] / [`IngestError::EmptyFile`] for
/// the file itself; [`IngestError::Onnx`] naming the file for a protobuf that
/// does not decode (truncated or not ONNX), a model without a graph, a cycle, a Conv
/// whose weight is neither an initializer nor a `Constant` (naming the node), weight data
/// that does not fit its shape, or external data that is missing or outside the model's
/// folder; [`IngestError::UnsupportedDtype`] for a Conv weight that is not FLOAT,
/// FLOAT16, BFLOAT16 or DOUBLE.
pub fn read_onnx(path: &Path) -> Result<OnnxModel> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, "reading", e))?;
    from_bytes(path, &bytes)
}

/// Parses ONNX bytes already in memory; `path` names the file in messages and its folder
/// is where external data is looked up.
///
/// # Errors
/// As [`read_onnx`].
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<OnnxModel> {
    if bytes.is_empty() {
        return Err(IngestError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let sha256 = hex(&Sha256::digest(bytes));
    let model = ModelProto::decode(bytes).map_err(|e| {
        bad(
            path,
            "protobuf",
            format!(
                "not a valid ONNX model ({} bytes; truncated or not ONNX?): {e}",
                bytes.len()
            ),
        )
    })?;
    let Some(graph) = model.graph.as_ref() else {
        return Err(bad(path, "graph", "the ONNX model has no graph"));
    };
    let mut report = ValidationReport::default();
    let mut op_counts: BTreeMap<String, u64> = BTreeMap::new();
    for n in &graph.node {
        *op_counts.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    let levels = graph_levels(path, graph)?;
    let depth = levels.iter().flatten().collect::<BTreeSet<_>>().len() as i64;
    let nodes_with_level = levels.iter().flatten().count();

    let mut tensors: HashMap<&str, (&TensorProto, &'static str)> = HashMap::new();
    for t in &graph.initializer {
        tensors.insert(t.name.as_str(), (t, "initializer"));
    }
    for n in &graph.node {
        if n.op_type == "Constant"
            && let (Some(out), Some(t)) = (
                n.output.first(),
                n.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref()),
            )
        {
            tensors.insert(out.as_str(), (t, "constant"));
        }
    }
    let producer = producers(graph);
    let dir = path.parent().unwrap_or(Path::new(""));

    let mut convs = Vec::new();
    let mut not_2d = Vec::new();
    for (k, n) in graph.node.iter().enumerate() {
        if n.op_type != "Conv" {
            continue;
        }
        let node_name = if n.name.is_empty() {
            format!("Conv#{k}")
        } else {
            n.name.clone()
        };
        let Some(wname) = n.input.get(1).filter(|w| !w.is_empty()) else {
            return Err(bad(
                path,
                format!("Conv node {node_name}"),
                "has no weight input (input 1)",
            ));
        };
        let Some(&(t, source)) = tensors.get(wname.as_str()) else {
            let by = producer
                .get(wname.as_str())
                .map(|&p| {
                    format!(
                        "; it is the output of node {} ({})",
                        graph.node[p].name, graph.node[p].op_type
                    )
                })
                .unwrap_or_default();
            return Err(bad(
                path,
                format!("Conv node {node_name}"),
                format!(
                    "its weight {wname} is neither a graph initializer nor a Constant \
                     node's value{by}"
                ),
            ));
        };
        if t.dims.len() != 4 {
            let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            not_2d.push((format!("{wname} (Conv {node_name})"), dims));
            continue;
        }
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(
                    path,
                    format!("tensor {wname}"),
                    format!("negative dimension in {:?}", t.dims),
                )
            })?;
        let dtype = match t.data_type {
            DT_FLOAT => SourceDtype::F32,
            DT_FLOAT16 => SourceDtype::F16,
            DT_BFLOAT16 => SourceDtype::BF16,
            DT_DOUBLE => SourceDtype::F64,
            other => {
                return Err(IngestError::UnsupportedDtype {
                    path: path.to_owned(),
                    tensor: wname.clone(),
                    dtype: data_type_name(other),
                    shape,
                });
            }
        };
        let is3 = shape[2] == 3 && shape[3] == 3;
        let external = t.data_location == LOCATION_EXTERNAL;
        let data = if is3 {
            tensor_bytes(path, dir, t, wname, dtype, &shape)?
        } else {
            Vec::new()
        };
        let attr_ints = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.ints.clone())
                .unwrap_or_default()
        };
        let group = n
            .attribute
            .iter()
            .find(|a| a.name == "group")
            .map_or(1, |a| a.i);
        if group < 1 || shape[0] % (group as usize) != 0 {
            return Err(bad(
                path,
                format!("Conv node {node_name}"),
                format!(
                    "group = {group} must be >= 1 and divide the {} output channels",
                    shape[0]
                ),
            ));
        }
        convs.push(OnnxConv {
            node_index: k,
            node_name,
            weight_name: wname.clone(),
            shape,
            dtype,
            bytes: data,
            group,
            strides: attr_ints("strides"),
            dilations: attr_ints("dilations"),
            pads: attr_ints("pads"),
            auto_pad: n
                .attribute
                .iter()
                .find(|a| a.name == "auto_pad")
                .map(|a| String::from_utf8_lossy(&a.s).into_owned()),
            weight_source: if external { "external" } else { source },
            graph_level: levels[k],
            conv_depth: None,
            conv_depth_norm: None,
        });
    }
    for (name, dims) in &not_2d {
        report.skip(name, dims, "", SKIP_CONV_NOT_2D);
    }
    let conv_levels: Vec<i64> = convs
        .iter()
        .filter_map(|c| c.graph_level)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let nlev = conv_levels.len();
    let mut no_level = Vec::new();
    for c in &mut convs {
        match c.graph_level {
            Some(l) => {
                let idx = conv_levels.binary_search(&l).unwrap_or(0);
                c.conv_depth = Some(idx as i64);
                c.conv_depth_norm = Some(if nlev <= 1 {
                    0.0
                } else {
                    idx as f64 / (nlev - 1) as f64
                });
            }
            None => no_level.push(c.node_name.clone()),
        }
    }
    if !no_level.is_empty() {
        report.warn(
            Warning::NO_GRAPH_LEVEL,
            format!(
                "{} Conv node(s) are reached only from constants and have no graph level: {}",
                no_level.len(),
                no_level.join(", ")
            ),
        );
    }
    let mut opsets = BTreeMap::new();
    for o in &model.opset_import {
        let d = if o.domain.is_empty() {
            "ai.onnx".to_owned()
        } else {
            o.domain.clone()
        };
        opsets.insert(d, o.version);
    }
    Ok(OnnxModel {
        path: path.to_owned(),
        sha256,
        file_bytes: bytes.len() as u64,
        ir_version: model.ir_version,
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        opsets,
        op_counts,
        depth,
        nodes_with_level,
        conv_levels: nlev,
        convs,
        report,
    })
}

/// Output name -> index of the node producing it (empty names skipped; the last wins).
fn producers(graph: &GraphProto) -> HashMap<&str, usize> {
    let mut producer = HashMap::new();
    for (k, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            if !o.is_empty() {
                producer.insert(o.as_str(), k);
            }
        }
    }
    producer
}

/// Graph level of each node (by index), `None` for nodes reached only from constants.
fn graph_levels(path: &Path, graph: &GraphProto) -> Result<Vec<Option<i64>>> {
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: BTreeSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !n.is_empty() && !inits.contains(n))
        .collect();
    let producer = producers(graph);
    let nodes: &[NodeProto] = &graph.node;
    let n = nodes.len();
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (k, node) in nodes.iter().enumerate() {
        for i in &node.input {
            if let Some(&p) = producer.get(i.as_str())
                && p != k
            {
                deps[k].insert(p);
            }
        }
    }
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, d) in deps.iter().enumerate() {
        for &p in d {
            users[p].push(k);
        }
    }
    let mut indeg: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&k| indeg[k] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(k)) = ready.pop() {
        order.push(k);
        for &u in &users[k] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<String> = (0..n)
            .filter(|&k| indeg[k] > 0)
            .take(5)
            .map(|k| format!("{} ({})", nodes[k].name, nodes[k].op_type))
            .collect();
        return Err(bad(
            path,
            "graph",
            format!(
                "the graph has a cycle; {} node(s) are on or behind it, e.g. {}",
                n - order.len(),
                stuck.join(", ")
            ),
        ));
    }
    let mut level: Vec<Option<i64>> = vec![None; n];
    for k in order {
        let node = &nodes[k];
        let mut best = node
            .input
            .iter()
            .any(|i| inputs.contains(i.as_str()))
            .then_some(0i64);
        for i in &node.input {
            if let Some(&p) = producer.get(i.as_str())
                && let Some(l) = level[p]
            {
                best = Some(best.map_or(l + 1, |b| b.max(l + 1)));
            }
        }
        level[k] = best;
    }
    Ok(level)
}

/// The bytes of a tensor as little-endian `dtype`, from raw_data, the typed fields or
/// external data.
fn tensor_bytes(
    path: &Path,
    dir: &Path,
    t: &TensorProto,
    name: &str,
    dtype: SourceDtype,
    shape: &[usize],
) -> Result<Vec<u8>> {
    let field = || format!("tensor {name}");
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, field(), format!("shape {shape:?} overflows")))?;
    let expected = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(path, field(), format!("shape {shape:?} overflows")))?;
    let check = |got: usize, what: &str| {
        if got == expected {
            Ok(())
        } else {
            Err(bad(
                path,
                field(),
                format!(
                    "{what} holds {got} bytes, but shape {shape:?} of {} needs {expected}",
                    dtype.name()
                ),
            ))
        }
    };
    if t.data_location == LOCATION_EXTERNAL {
        let bytes = read_external(path, dir, t, name, expected)?;
        check(bytes.len(), "external data")?;
        return Ok(bytes);
    }
    if !t.raw_data.is_empty() || numel == 0 {
        check(t.raw_data.len(), "raw_data")?;
        return Ok(t.raw_data.clone());
    }
    let count_err = |got: usize, field_name: &str| {
        bad(
            path,
            field(),
            format!("{field_name} holds {got} values, but shape {shape:?} needs {numel}"),
        )
    };
    match dtype {
        SourceDtype::F32 => {
            if t.float_data.len() != numel {
                return Err(count_err(t.float_data.len(), "float_data"));
            }
            Ok(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        SourceDtype::F64 => {
            if t.double_data.len() != numel {
                return Err(count_err(t.double_data.len(), "double_data"));
            }
            Ok(t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        SourceDtype::F16 | SourceDtype::BF16 => {
            if t.int32_data.len() != numel {
                return Err(count_err(t.int32_data.len(), "int32_data"));
            }
            // 16-bit patterns stored in the low half of each int32
            Ok(t.int32_data
                .iter()
                .flat_map(|&v| ((v as u32) as u16).to_le_bytes())
                .collect())
        }
    }
}

fn read_external(
    path: &Path,
    dir: &Path,
    t: &TensorProto,
    name: &str,
    expected: usize,
) -> Result<Vec<u8>> {
    let field = || format!("tensor {name}");
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let Some(location) = get("location") else {
        return Err(bad(
            path,
            field(),
            "data_location is EXTERNAL but external_data has no `location`",
        ));
    };
    let num = |k: &str| -> Result<Option<u64>> {
        get(k)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    bad(
                        path,
                        field(),
                        format!("external_data {k} = {v:?} is not a number"),
                    )
                })
            })
            .transpose()
    };
    let offset = num("offset")?.unwrap_or(0);
    let length = num("length")?;
    let rel = Path::new(location);
    let escapes = rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(bad(
            path,
            field(),
            format!(
                "external data location {location:?} must be a relative path inside the \
                 model's folder"
            ),
        ));
    }
    let file = dir.join(rel);
    // Symlinks may still lead out of the folder: compare canonical paths.
    let canon_dir = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .map_err(|e| io_error(dir, "resolving the model's folder", e))?;
    let canon =
        std::fs::canonicalize(&file).map_err(|e| io_error(&file, "opening external data of", e))?;
    if !canon.starts_with(&canon_dir) {
        return Err(bad(
            path,
            field(),
            format!(
                "external data location {location:?} resolves to {}, outside the model's folder",
                canon.display()
            ),
        ));
    }
    let len = match length {
        Some(l) => l,
        None => expected as u64,
    };
    let mut f = std::fs::File::open(&canon).map_err(|e| io_error(&file, "opening", e))?;
    let size = f
        .metadata()
        .map_err(|e| io_error(&file, "reading metadata of", e))?
        .len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(bad(
            path,
            field(),
            format!(
                "external data {} has {size} bytes; offset {offset} + length {len} is past its end",
                file.display()
            ),
        ));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(&file, "seeking in", e))?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    f.read_exact(&mut buf)
        .map_err(|e| io_error(&file, "reading", e))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `path` names an ONNX model (extension `.onnx`, any case).
pub fn is_onnx_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use crate::card::ModelOverrides;
    use crate::normalise::{VocabExtra, normalise_onnx};

    fn f32_raw(n: usize, scale: f32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * scale).to_le_bytes())
            .collect()
    }

    fn tensor(name: &str, dims: &[i64], scale: f32) -> TensorProto {
        let n = dims.iter().product::<i64>() as usize;
        TensorProto {
            name: name.to_owned(),
            dims: dims.to_vec(),
            data_type: DT_FLOAT,
            raw_data: f32_raw(n, scale),
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: 7,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: 2,
            i: v,
            ..Default::default()
        }
    }

    fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.to_owned(),
            name: name.to_owned(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
        // old-IR style: the initializers are listed as graph inputs too
        let mut input = vec![ValueInfoProto {
            name: "x".to_owned(),
        }];
        input.extend(inits.iter().map(|t| ValueInfoProto {
            name: t.name.clone(),
        }));
        ModelProto {
            ir_version: 8,
            producer_name: "filterdb-test".to_owned(),
            producer_version: "0.1".to_owned(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                name: "g".to_owned(),
                node: nodes,
                initializer: inits,
                input,
                output: vec![ValueInfoProto {
                    name: "y".to_owned(),
                }],
            }),
        }
    }

    fn write(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        p
    }

    fn depths(m: &OnnxModel) -> Vec<(String, Option<i64>, Option<i64>)> {
        m.convs
            .iter()
            .map(|c| (c.node_name.clone(), c.graph_level, c.conv_depth))
            .collect()
    }

    fn d(name: &str, level: i64, cd: i64) -> (String, Option<i64>, Option<i64>) {
        (name.to_owned(), Some(level), Some(cd))
    }

    #[test]
    fn conv_chain_and_normalise() {
        let dir = tempfile::tempdir().unwrap();
        let mut c3 = node("Conv", "c3", &["r2", "w3"], &["y"]);
        c3.attribute = vec![
            int("group", 2),
            ints("strides", &[2, 2]),
            ints("dilations", &[1, 1]),
            ints("pads", &[1, 1, 1, 1]),
        ];
        let m = model(
            vec![
                node("Conv", "c1", &["x", "w1", "b1"], &["a1"]),
                node("Relu", "r1", &["a1"], &["r1"]),
                node("Conv", "c2", &["r1", "w2"], &["a2"]),
                node("Relu", "r2", &["a2"], &["r2"]),
                c3,
            ],
            vec![
                tensor("w1", &[2, 1, 3, 3], 0.01),
                tensor("b1", &[2], 1.0),
                tensor("w2", &[4, 2, 1, 1], 0.5),
                tensor("w3", &[4, 2, 3, 3], -0.25),
            ],
        );
        let p = write(dir.path(), "chain.onnx", &m);
        let om = read_onnx(&p).unwrap();
        assert_eq!(om.depth, 5);
        assert_eq!(om.conv_levels, 3);
        assert_eq!(
            depths(&om),
            vec![d("c1", 0, 0), d("c2", 2, 1), d("c3", 4, 2)]
        );
        let norms: Vec<Option<f64>> = om.convs.iter().map(|c| c.conv_depth_norm).collect();
        assert_eq!(norms, vec![Some(0.0), Some(0.5), Some(1.0)]);
        assert_eq!(om.convs[2].group, 2);
        assert_eq!(om.convs[2].strides, vec![2, 2]);
        assert_eq!(om.convs[2].pads, vec![1, 1, 1, 1]);
        assert_eq!(om.convs[0].bytes, f32_raw(18, 0.01));
        assert!(om.convs[1].bytes.is_empty(), "1x1 weights are not read");
        assert_eq!(om.op_counts["Conv"], 3);
        assert_eq!(om.opsets["ai.onnx"], 13);
        assert_eq!(om.producer_name, "filterdb-test");
        assert_eq!(om.sha256, hex(&Sha256::digest(m.encode_to_vec())));

        let input = normalise_onnx(
            &om,
            None,
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap();
        let meta = &input.meta;
        assert_eq!(meta.source_format, "onnx");
        assert_eq!(meta.depth, Some(5));
        assert_eq!(meta.name, "chain");
        assert_eq!(meta.conv_tensors, 3);
        assert_eq!(meta.kernel_shape_counts["(3, 3)"], 2 + 8);
        assert_eq!(meta.kernel_shape_counts["(1, 1)"], 8);
        assert_eq!(meta.extra["producer"], "filterdb-test");
        assert_eq!(meta.extra["opset"], r#"{"ai.onnx":13}"#);
        let ops: serde_json::Value = serde_json::from_str(&meta.extra["operator_counts"]).unwrap();
        assert_eq!(ops["Conv"], 3);
        assert_eq!(ops["Relu"], 2);
        let convs: serde_json::Value = serde_json::from_str(&meta.extra["onnx_convs"]).unwrap();
        assert_eq!(convs[2]["node"], "c3");
        assert_eq!(convs[2]["strides"], serde_json::json!([2, 2]));
        let layers: Vec<(&str, i64, f64, i64, &str)> = input
            .layers
            .iter()
            .map(|l| {
                (
                    l.layer_name.as_str(),
                    l.conv_depth,
                    l.conv_depth_norm,
                    l.groups,
                    l.depth_rule.as_str(),
                )
            })
            .collect();
        assert_eq!(
            layers,
            vec![("w1", 0, 0.0, 1, "graph"), ("w3", 2, 1.0, 2, "graph")]
        );
        assert_eq!(input.layers[1].out_channels, 4);
        assert_eq!(input.layers[1].in_channels, 2);
        assert_eq!(input.layers[0].weights.dtype, SourceDtype::F32);
        assert_eq!(&input.layers[0].weights.bytes[..], &f32_raw(18, 0.01)[..]);
    }

    #[test]
    fn card_overrides_for_onnx() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Conv", "c1", &["x", "w1"], &["a1"]),
                node("Conv", "c2", &["a1", "w2"], &["y"]),
            ],
            vec![
                tensor("w1", &[2, 1, 3, 3], 0.01),
                tensor("w2", &[2, 2, 3, 3], 0.01),
            ],
        );
        let p = write(dir.path(), "m.onnx", &m);
        let om = read_onnx(&p).unwrap();
        let card = crate::card::parse_card(
            "task = \"Classification\"\n[layers.w1]\nconv_depth = 3\n[layers.w2]\nconv_depth = 7\n",
            &dir.path().join("m.toml"),
        )
        .unwrap();
        let input = normalise_onnx(
            &om,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap();
        assert_eq!(input.meta.task.as_deref(), Some("Classification"));
        assert_eq!(input.layers[1].conv_depth, 7);
        assert_eq!(input.layers[1].depth_rule, "card");
        assert_eq!(input.meta.depth, Some(2));
    }

    #[test]
    fn parallel_convs_share_a_level() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Conv", "a", &["x", "wa"], &["ya"]),
                node("Conv", "b", &["x", "wb"], &["yb"]),
                node("MaxPool", "p", &["x"], &["yp"]),
                node("Conv", "pc", &["yp", "wp"], &["ypc"]),
                node("Concat", "cat", &["ya", "yb", "ypc"], &["c"]),
                node("Conv", "after", &["c", "wc"], &["y"]),
            ],
            vec![
                tensor("wa", &[2, 1, 1, 1], 0.1),
                tensor("wb", &[2, 1, 3, 3], 0.1),
                tensor("wp", &[2, 1, 1, 1], 0.1),
                tensor("wc", &[2, 6, 3, 3], 0.1),
            ],
        );
        let om = read_onnx(&write(dir.path(), "incep.onnx", &m)).unwrap();
        assert_eq!(
            depths(&om),
            vec![d("a", 0, 0), d("b", 0, 0), d("pc", 1, 1), d("after", 3, 2)]
        );
        assert_eq!(om.depth, 4);
        let norms: Vec<f64> = om
            .convs
            .iter()
            .map(|c| c.conv_depth_norm.unwrap())
            .collect();
        assert_eq!(norms, vec![0.0, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn residual_join_takes_the_longest_path() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Conv", "c1", &["x", "w"], &["a"]),
                node("Conv", "c2", &["a", "w"], &["b"]),
                node("Conv", "c3", &["b", "w"], &["c"]),
                node("Add", "add", &["a", "c"], &["s"]),
                node("Conv", "c4", &["s", "w4"], &["y"]),
            ],
            vec![
                tensor("w", &[1, 1, 3, 3], 0.1),
                tensor("w4", &[1, 1, 3, 3], 0.2),
            ],
        );
        let om = read_onnx(&write(dir.path(), "res.onnx", &m)).unwrap();
        assert_eq!(
            depths(&om),
            vec![d("c1", 0, 0), d("c2", 1, 1), d("c3", 2, 2), d("c4", 4, 3)]
        );
        assert_eq!(om.depth, 5);
        // w is shared by three nodes: stored once
        let input = normalise_onnx(
            &om,
            None,
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .unwrap();
        let names: Vec<&str> = input.layers.iter().map(|l| l.layer_name.as_str()).collect();
        assert_eq!(names, vec!["w", "w4"]);
        assert!(
            input.meta.report.has_warning(Warning::SHARED_WEIGHT),
            "{:?}",
            input.meta.report
        );
    }

    #[test]
    fn single_conv_level_and_constant_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = node("Constant", "k", &[], &["wk"]);
        k.attribute = vec![AttributeProto {
            name: "value".to_owned(),
            r#type: 4,
            t: Some(tensor("", &[3, 1, 3, 3], 0.5)),
            ..Default::default()
        }];
        let m = model(vec![k, node("Conv", "only", &["x", "wk"], &["y"])], vec![]);
        let om = read_onnx(&write(dir.path(), "one.onnx", &m)).unwrap();
        assert_eq!(depths(&om), vec![d("only", 0, 0)]);
        assert_eq!(om.convs[0].conv_depth_norm, Some(0.0));
        assert_eq!(om.convs[0].weight_source, "constant");
        assert_eq!(om.convs[0].bytes, f32_raw(27, 0.5));
        // the Constant has no level
        assert_eq!(om.depth, 1);
        assert_eq!(om.nodes_with_level, 1);
    }

    #[test]
    fn report_codes_of_onnx() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = node("Constant", "k", &[], &["cin"]);
        k.attribute = vec![AttributeProto {
            name: "value".to_owned(),
            r#type: 4,
            t: Some(tensor("", &[1, 3, 4, 4], 0.5)),
            ..Default::default()
        }];
        let m = model(
            vec![
                k,
                node("Conv", "only", &["x", "w"], &["y"]),
                node("Conv", "dead", &["cin", "wd"], &["z"]),
                node("Conv", "c1d", &["x", "w1d"], &["q"]),
            ],
            vec![
                tensor("w", &[2, 1, 3, 3], 0.1),
                tensor("wd", &[2, 3, 3, 3], 0.1),
                tensor("w1d", &[2, 1, 3], 0.1),
            ],
        );
        let om = read_onnx(&write(dir.path(), "r.onnx", &m)).unwrap();
        assert!(
            om.report.has_warning(Warning::NO_GRAPH_LEVEL),
            "{:?}",
            om.report
        );
        let hwio = ModelOverrides {
            layout: Some(crate::KernelLayout::Hwio),
            ..Default::default()
        };
        let input = normalise_onnx(&om, None, &hwio, &VocabExtra::default()).unwrap();
        let names: Vec<&str> = input.layers.iter().map(|l| l.layer_name.as_str()).collect();
        assert_eq!(names, ["w"]);
        let r = &input.meta.report;
        let codes: Vec<&str> = r.warnings.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                Warning::NO_GRAPH_LEVEL,
                Warning::LAYOUT_IGNORED,
                Warning::SINGLE_CONV_LEVEL
            ],
            "{r:?}"
        );
        let skipped: Vec<(&str, &str)> = r
            .skipped
            .iter()
            .map(|t| (t.tensor.as_str(), t.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("w1d (Conv c1d)", crate::normalise::SKIP_CONV_NOT_2D),
                ("wd", crate::normalise::SKIP_NO_GRAPH_LEVEL)
            ]
        );
    }

    #[test]
    fn typed_fields_and_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        let vals: Vec<f32> = (0..9).map(|i| i as f32 * 0.5 - 1.0).collect();
        let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
        let h_raw: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = vec![1, 1, 3, 3];
        let t_f16_raw = TensorProto {
            name: "h_raw".to_owned(),
            dims: dims.clone(),
            data_type: DT_FLOAT16,
            raw_data: h_raw.clone(),
            ..Default::default()
        };
        let t_f16_int = TensorProto {
            name: "h_int".to_owned(),
            dims: dims.clone(),
            data_type: DT_FLOAT16,
            int32_data: h.iter().map(|v| i32::from(v.to_bits())).collect(),
            ..Default::default()
        };
        let b: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let t_bf16 = TensorProto {
            name: "bf".to_owned(),
            dims: dims.clone(),
            data_type: DT_BFLOAT16,
            int32_data: b.iter().map(|v| i32::from(v.to_bits())).collect(),
            ..Default::default()
        };
        let t_f32 = TensorProto {
            name: "f".to_owned(),
            dims: dims.clone(),
            data_type: DT_FLOAT,
            float_data: vals.clone(),
            ..Default::default()
        };
        let t_f64 = TensorProto {
            name: "dd".to_owned(),
            dims: dims.clone(),
            data_type: DT_DOUBLE,
            double_data: vals.iter().map(|&v| f64::from(v)).collect(),
            ..Default::default()
        };
        let m = model(
            vec![
                node("Conv", "c1", &["x", "h_raw"], &["a"]),
                node("Conv", "c2", &["a", "h_int"], &["b"]),
                node("Conv", "c3", &["b", "bf"], &["c"]),
                node("Conv", "c4", &["c", "f"], &["e"]),
                node("Conv", "c5", &["e", "dd"], &["y"]),
            ],
            vec![t_f16_raw, t_f16_int, t_bf16, t_f32, t_f64],
        );
        let om = read_onnx(&write(dir.path(), "half.onnx", &m)).unwrap();
        let c = &om.convs;
        assert_eq!(c[0].dtype, SourceDtype::F16);
        assert_eq!(c[0].bytes, h_raw);
        assert_eq!(c[1].dtype, SourceDtype::F16);
        assert_eq!(c[1].bytes, h_raw);
        assert_eq!(c[2].dtype, SourceDtype::BF16);
        let bf_raw: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(c[2].bytes, bf_raw);
        assert_eq!(c[3].dtype, SourceDtype::F32);
        let f_raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(c[3].bytes, f_raw);
        assert_eq!(c[4].dtype, SourceDtype::F64);
        let d_raw: Vec<u8> = vals
            .iter()
            .flat_map(|&v| f64::from(v).to_le_bytes())
            .collect();
        assert_eq!(c[4].bytes, d_raw);
    }

    fn external_model(location: &str, offset: u64) -> ModelProto {
        let t = TensorProto {
            name: "w".to_owned(),
            dims: vec![2, 1, 3, 3],
            data_type: DT_FLOAT,
            data_location: LOCATION_EXTERNAL,
            external_data: vec![
                StringStringEntryProto {
                    key: "location".to_owned(),
                    value: location.to_owned(),
                },
                StringStringEntryProto {
                    key: "offset".to_owned(),
                    value: offset.to_string(),
                },
                StringStringEntryProto {
                    key: "length".to_owned(),
                    value: "72".to_owned(),
                },
            ],
            ..Default::default()
        };
        model(vec![node("Conv", "c", &["x", "w"], &["y"])], vec![t])
    }

    #[test]
    fn external_data() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("m");
        std::fs::create_dir(&sub).unwrap();
        let mut data = vec![7u8; 16];
        data.extend(f32_raw(18, 0.3));
        std::fs::write(sub.join("weights.bin"), &data).unwrap();
        std::fs::write(dir.path().join("outside.bin"), &data).unwrap();

        let p = write(&sub, "ext.onnx", &external_model("weights.bin", 16));
        let om = read_onnx(&p).unwrap();
        assert_eq!(om.convs[0].bytes, f32_raw(18, 0.3));
        assert_eq!(om.convs[0].weight_source, "external");

        for loc in ["../outside.bin", "/etc/passwd", ""] {
            let p = write(&sub, "bad.onnx", &external_model(loc, 16));
            let msg = read_onnx(&p).unwrap_err().to_string();
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains("inside the model's folder"), "{msg}");
        }
        // a symlink inside the folder that points outside
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside.bin"), sub.join("link.bin"))
                .unwrap();
            let p = write(&sub, "link.onnx", &external_model("link.bin", 16));
            let msg = read_onnx(&p).unwrap_err().to_string();
            assert!(msg.contains("outside the model's folder"), "{msg}");
        }
        // past the end of the data file
        let p = write(&sub, "past.onnx", &external_model("weights.bin", 40));
        let msg = read_onnx(&p).unwrap_err().to_string();
        assert!(msg.contains("past its end"), "{msg}");
        // missing data file
        let p = write(&sub, "gone.onnx", &external_model("gone.bin", 0));
        let msg = crate::error_chain(&read_onnx(&p).unwrap_err());
        assert!(msg.contains("gone.bin"), "{msg}");
    }

    #[test]
    fn truncated_protobuf() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![node("Conv", "c", &["x", "w"], &["y"])],
            vec![tensor("w", &[4, 4, 3, 3], 0.1)],
        );
        let bytes = m.encode_to_vec();
        let p = dir.path().join("trunc.onnx");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let msg = read_onnx(&p).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("not a valid ONNX model"), "{msg}");
        let p = dir.path().join("empty.onnx");
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            read_onnx(&p).unwrap_err(),
            IngestError::EmptyFile { .. }
        ));
    }

    #[test]
    fn missing_weight_names_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Identity", "id", &["x"], &["made"]),
                node("Conv", "conv_without_w", &["x", "nowhere"], &["a"]),
            ],
            vec![],
        );
        let p = write(dir.path(), "nw.onnx", &m);
        let msg = read_onnx(&p).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("conv_without_w"), "{msg}");
        assert!(msg.contains("nowhere"), "{msg}");
        // weight computed by another node
        let m = model(
            vec![
                node("Identity", "id", &["x"], &["made"]),
                node("Conv", "c", &["x", "made"], &["a"]),
            ],
            vec![],
        );
        let p = write(dir.path(), "computed.onnx", &m);
        let msg = read_onnx(&p).unwrap_err().to_string();
        assert!(msg.contains("output of node id (Identity)"), "{msg}");
    }

    #[test]
    fn cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Conv", "c1", &["x", "w"], &["a"]),
                node("Add", "loop1", &["a", "c"], &["b"]),
                node("Relu", "loop2", &["b"], &["c"]),
            ],
            vec![tensor("w", &[1, 1, 3, 3], 0.1)],
        );
        let p = write(dir.path(), "cyc.onnx", &m);
        let msg = read_onnx(&p).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("cycle"), "{msg}");
        assert!(msg.contains("loop1"), "{msg}");
    }

    #[test]
    fn unsupported_weight_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let t = TensorProto {
            name: "q".to_owned(),
            dims: vec![1, 1, 3, 3],
            data_type: 3,
            raw_data: vec![0; 9],
            ..Default::default()
        };
        let m = model(vec![node("Conv", "c", &["x", "q"], &["y"])], vec![t]);
        let p = write(dir.path(), "i8.onnx", &m);
        let e = read_onnx(&p).unwrap_err();
        assert!(matches!(e, IngestError::UnsupportedDtype { .. }), "{e:?}");
        assert!(e.to_string().contains("INT8"), "{e}");
    }

    #[test]
    fn ingest_one_reads_onnx_by_extension() {
        use crate::{IngestOptions, IngestOutcome, ingest_one};
        let dir = tempfile::tempdir().unwrap();
        let m = model(
            vec![
                node("Conv", "c1", &["x", "w1"], &["a"]),
                node("Conv", "c2", &["a", "w2"], &["y"]),
            ],
            vec![
                tensor("w1", &[2, 1, 3, 3], 0.01),
                tensor("w2", &[3, 2, 3, 3], 0.02),
            ],
        );
        let p = write(dir.path(), "tiny.onnx", &m);
        let store =
            filterdb_store::Store::init(dir.path().join("s"), filterdb_store::Precision::F16)
                .unwrap();
        let mut w = store.writer(true).unwrap();
        let opts = IngestOptions::default();
        let out = ingest_one(&mut w, &p, None, &ModelOverrides::default(), &opts).unwrap();
        let IngestOutcome::Committed {
            n_layers,
            n_filters,
            ..
        } = out
        else {
            panic!("{out:?}");
        };
        assert_eq!((n_layers, n_filters), (2, 2 + 6));
        let again = ingest_one(&mut w, &p, None, &ModelOverrides::default(), &opts).unwrap();
        assert!(
            matches!(again, IngestOutcome::AlreadyPresent { .. }),
            "{again:?}"
        );
    }

    /// Real models: the rapidocr fixture written by tests/reference/fetch_models.py, whose
    /// fixture.json holds the Python walker's graph levels. Skipped when absent.
    #[test]
    fn real_models_match_the_python_walker() {
        let dir = std::env::var_os("FILTERDB_FIXTURES")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/filterdb-fixtures"))
            })
            .map(|d| d.join("rapidocr-onnxruntime-1.4.4"));
        let Some(dir) = dir.filter(|d| d.join("fixture.json").is_file()) else {
            eprintln!("skipping: no rapidocr fixture (run tests/reference/fetch_models.py)");
            return;
        };
        let fixture: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("fixture.json")).unwrap()).unwrap();
        let models = fixture["models"].as_array().unwrap();
        assert_eq!(models.len(), 3);
        for fm in models {
            let p = dir.join(fm["onnx"].as_str().unwrap());
            let om = read_onnx(&p).unwrap();
            assert_eq!(om.sha256, fm["onnx_sha256"].as_str().unwrap(), "{p:?}");
            assert_eq!(om.depth, fm["depth"].as_i64().unwrap(), "{p:?}");
            assert_eq!(
                om.nodes_with_level as u64,
                fm["nodes_with_level"].as_u64().unwrap()
            );
            assert_eq!(om.conv_levels as u64, fm["conv_levels"].as_u64().unwrap());
            assert_eq!(om.producer_name, fm["producer"].as_str().unwrap());
            assert_eq!(
                om.opsets.get("ai.onnx").copied(),
                fm["opset"].as_i64(),
                "{p:?}"
            );
            let layers = fm["layers"].as_array().unwrap();
            assert_eq!(om.convs.len(), layers.len(), "{p:?}");
            for (c, l) in om.convs.iter().zip(layers) {
                assert_eq!(c.weight_name, l["onnx_name"].as_str().unwrap());
                let shape: Vec<usize> = serde_json::from_value(l["shape"].clone()).unwrap();
                assert_eq!(c.shape, shape, "{}", c.weight_name);
                assert_eq!(c.group, l["groups"].as_i64().unwrap(), "{}", c.weight_name);
                assert_eq!(
                    c.graph_level,
                    l["graph_level"].as_i64(),
                    "{}",
                    c.weight_name
                );
                assert_eq!(c.conv_depth, l["conv_depth"].as_i64(), "{}", c.weight_name);
                // serde_json parses floats without exact round-trip: compare within 1e-12
                match (c.conv_depth_norm, l["conv_depth_norm"].as_f64()) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{a} {b}"),
                    (a, b) => assert_eq!(a, b, "{}", c.weight_name),
                }
            }
            // The store's input: one layer per distinct 3x3 weight, graph rule.
            let input = normalise_onnx(
                &om,
                None,
                &ModelOverrides::default(),
                &VocabExtra::default(),
            )
            .unwrap();
            let mut want: Vec<(&str, i64)> = Vec::new();
            for l in layers {
                let name = l["onnx_name"].as_str().unwrap();
                if l["shape"][2] == 3
                    && l["shape"][3] == 3
                    && !want.iter().any(|(n, _)| *n == name)
                    && let Some(cd) = l["conv_depth"].as_i64()
                {
                    want.push((name, cd));
                }
            }
            let got: Vec<(&str, i64)> = input
                .layers
                .iter()
                .map(|l| (l.layer_name.as_str(), l.conv_depth))
                .collect();
            assert_eq!(got, want, "{p:?}");
            assert!(input.layers.iter().all(|l| l.depth_rule == "graph"));
            assert_eq!(input.meta.depth, fm["depth"].as_i64());
            // Weights of every 3x3 layer equal the converted safetensors tensors.
            let st =
                crate::read_safetensors(&dir.join(fm["safetensors"].as_str().unwrap())).unwrap();
            let tensors: HashMap<&str, crate::RawTensor<'_>> =
                st.tensors().map(|t| (t.name, t)).collect();
            let mut compared = 0;
            for (c, l) in om.convs.iter().zip(layers) {
                if !c.is_3x3() {
                    continue;
                }
                let t = tensors[l["tensor"].as_str().unwrap()];
                assert_eq!(t.shape, &c.shape[..]);
                assert_eq!(c.dtype, SourceDtype::F32, "fixture models are f32");
                assert_eq!(t.bytes, &c.bytes[..], "{}", c.weight_name);
                compared += 1;
            }
            assert!(compared > 0);
        }
    }
}
