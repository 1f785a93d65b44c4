//! The Arrow schemas of the three stored tables, as written to Parquet.
//!
//! `schemas/*.schema.json` in the repository holds the same schemas as JSON; a test checks
//! that the two agree, so the JSON files can be read by people and tools without Rust.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Precision of stored weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE float16 (Parquet `FLOAT16` logical type): half the bytes, as the paper analysed.
    #[default]
    F16,
    /// IEEE float32: source values of f32 models kept bit-exact.
    F32,
}

impl Precision {
    /// The Arrow type of one weight.
    pub fn data_type(self) -> DataType {
        match self {
            Precision::F16 => DataType::Float16,
            Precision::F32 => DataType::Float32,
        }
    }

    /// `f16` or `f32`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "float16" | "half" => Ok(Precision::F16),
            "f32" | "float32" | "single" => Ok(Precision::F32),
            other => Err(format!("unknown precision {other:?}: expected f16 or f32")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of the nine physical weight columns, row-major (kh, kw).
pub const WEIGHT_COLUMNS: [&str; 9] = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8"];

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}
fn i64f(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

/// Schema of `models` files: one row per model.
pub fn models_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            i64f("model_id"),
            utf8("name", false),
            utf8("architecture", true),
            utf8("task", true),
            utf8("training_dataset", true),
            utf8("pretraining_dataset", true),
            utf8("visual_category", true),
            utf8("source_format", false),
            utf8("source_path", false),
            utf8("source_sha256", false),
            i64f("source_bytes"),
            Field::new("depth", DataType::Int64, true),
            i64f("n_layers"),
            i64f("n_filters"),
            i64f("total_filters"),
            i64f("filters_3x3"),
            Field::new("share_3x3", DataType::Float64, false),
            i64f("conv_tensors"),
            utf8("kernel_shapes", false),
            utf8("extra", false),
            utf8("report", false),
            i64f("first_filter_id"),
            Field::new(
                "ingested_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]))
    });
    Arc::clone(&S)
}

/// Schema of `layers` files: one row per 3x3 convolution layer.
pub fn layers_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            i64f("model_id"),
            Field::new("layer_idx", DataType::Int32, false),
            utf8("layer_name", false),
            i64f("conv_depth"),
            Field::new("conv_depth_norm", DataType::Float64, false),
            utf8("depth_rule", false),
            i64f("out_channels"),
            i64f("in_channels"),
            i64f("groups"),
            i64f("kernel_h"),
            i64f("kernel_w"),
            i64f("n_filters"),
            i64f("first_filter_id"),
            utf8("source_dtype", false),
            Field::new("max_abs", DataType::Float64, false),
        ]))
    });
    Arc::clone(&S)
}

/// Schema of `filters` files for a store of the given precision.
///
/// The nine weights are stored as nine flat columns `w0..w8` (row-major (kh, kw)); SQL
/// sees them as one `weights` FixedSizeList column through the `filters` view.
pub fn filters_schema(precision: Precision) -> SchemaRef {
    static F16: LazyLock<SchemaRef> = LazyLock::new(|| build_filters_schema(Precision::F16));
    static F32: LazyLock<SchemaRef> = LazyLock::new(|| build_filters_schema(Precision::F32));
    match precision {
        Precision::F16 => Arc::clone(&F16),
        Precision::F32 => Arc::clone(&F32),
    }
}

fn build_filters_schema(precision: Precision) -> SchemaRef {
    let mut fields = vec![
        i64f("filter_id"),
        i64f("model_id"),
        Field::new("layer_idx", DataType::Int32, false),
        Field::new("out_channel", DataType::Int32, false),
        Field::new("in_channel", DataType::Int32, false),
    ];
    for w in WEIGHT_COLUMNS {
        fields.push(Field::new(w, precision.data_type(), false));
    }
    Arc::new(Schema::new(fields))
}

/// The JSON description of a schema, as kept in `schemas/`: `[{"name", "type", "nullable"}]`.
pub fn schema_to_json(schema: &Schema) -> serde_json::Value {
    serde_json::Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": f.data_type().to_string(),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/<table>.schema.json` must describe the schemas this code writes.
    /// `FILTERDB_BLESS=1 cargo test -p filterdb-store` rewrites them.
    #[test]
    fn schema_files_match_the_code() {
        // The crate's folder as cargo gives it to the test process: the value compiled
        // in is the checkout the binary was built in, which is stale when one target
        // directory serves several checkouts.
        let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        );
        let dir = crate_dir.join("../../schemas");
        let tables = [
            ("models", models_schema()),
            ("layers", layers_schema()),
            ("filters_f16", filters_schema(Precision::F16)),
            ("filters_f32", filters_schema(Precision::F32)),
        ];
        for (name, schema) in tables {
            let path = dir.join(format!("{name}.schema.json"));
            let want = serde_json::to_string_pretty(&schema_to_json(&schema)).unwrap() + "\n";
            if std::env::var_os("FILTERDB_BLESS").is_some() {
                std::fs::write(&path, &want).unwrap();
            }
            let got = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                got,
                want,
                "{} is stale: run FILTERDB_BLESS=1 cargo test -p filterdb-store",
                path.display()
            );
        }
    }
}
