//! Model cards: a TOML file of meta-parameters next to a weights file.
//!
//! ```toml
//! name = "resnet18-imagenet"
//! architecture = "ResNet-18"
//! task = "Classification"
//! training_dataset = "ImageNet-1k"
//! visual_category = "Natural"
//! layout = "oihw"
//! paper = "He et al., Deep Residual Learning, 2016"
//!
//! [layers."layer1.0.conv1.weight"]
//! conv_depth = 1
//! groups = 1
//! ```
//!
//! A card is parsed as TOML, converted to JSON and validated against
//! `schemas/model-card.schema.json` (draft 2020-12, compiled in), so every mistake is
//! reported with the card's path, the failing field and what the schema expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::KernelLayout;
use crate::error::{IngestError, Result};

/// The model-card JSON Schema, as shipped in `schemas/`.
pub const MODEL_CARD_SCHEMA: &str = include_str!("../../schemas/model-card.schema.json");

const SCHEMA_URL: &str = "https://filterdb.invalid/schemas/model-card.schema.json";

/// The names of the model-level fields a card, a manifest column or a CLI flag can set.
pub const FIELD_NAMES: [&str; 10] = [
    "name",
    "architecture",
    "task",
    "training_dataset",
    "pretraining_dataset",
    "visual_category",
    "layout",
    "paper",
    "url",
    "notes",
];

/// Model-level fields, each optional; used for cards, manifest rows and CLI flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOverrides {
    /// Unique model name (default: the file stem).
    pub name: Option<String>,
    /// Architecture family.
    pub architecture: Option<String>,
    /// Task (checked against the vocabulary when normalised).
    pub task: Option<String>,
    /// Training dataset(s).
    pub training_dataset: Option<String>,
    /// Pretraining dataset(s).
    pub pretraining_dataset: Option<String>,
    /// Visual category (checked against the vocabulary when normalised).
    pub visual_category: Option<String>,
    /// Layout of the rank-4 weights (default OIHW).
    pub layout: Option<KernelLayout>,
    /// Paper.
    pub paper: Option<String>,
    /// Source URL.
    pub url: Option<String>,
    /// Free text.
    pub notes: Option<String>,
}

impl ModelOverrides {
    /// Field-wise: the value of `self` where set, else the value of `base`.
    pub fn or(&self, base: &ModelOverrides) -> ModelOverrides {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        ModelOverrides {
            name: pick(&self.name, &base.name),
            architecture: pick(&self.architecture, &base.architecture),
            task: pick(&self.task, &base.task),
            training_dataset: pick(&self.training_dataset, &base.training_dataset),
            pretraining_dataset: pick(&self.pretraining_dataset, &base.pretraining_dataset),
            visual_category: pick(&self.visual_category, &base.visual_category),
            layout: self.layout.or(base.layout),
            paper: pick(&self.paper, &base.paper),
            url: pick(&self.url, &base.url),
            notes: pick(&self.notes, &base.notes),
        }
    }

    /// Sets one field by name (one of [`FIELD_NAMES`]) from text; an empty or all-blank
    /// value leaves the field unset.
    ///
    /// # Errors
    /// [`IngestError::InvalidField`] naming `source_name` for an unknown field or a bad
    /// layout.
    pub fn set(&mut self, field: &str, value: &str, source_name: &str) -> Result<()> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(());
        }
        let v = Some(value.to_owned());
        match field {
            "name" => self.name = v,
            "architecture" => self.architecture = v,
            "task" => self.task = v,
            "training_dataset" => self.training_dataset = v,
            "pretraining_dataset" => self.pretraining_dataset = v,
            "visual_category" => self.visual_category = v,
            "layout" => self.layout = Some(parse_layout(value, source_name)?),
            "paper" => self.paper = v,
            "url" => self.url = v,
            "notes" => self.notes = v,
            _ => {
                return Err(IngestError::InvalidField {
                    source_name: source_name.to_owned(),
                    field: field.to_owned(),
                    detail: format!("unknown field; expected one of {}", FIELD_NAMES.join(", ")),
                });
            }
        }
        Ok(())
    }
}

/// Parses `oihw` or `hwio` (any case).
///
/// # Errors
/// [`IngestError::InvalidField`] naming `source_name` otherwise.
pub fn parse_layout(value: &str, source_name: &str) -> Result<KernelLayout> {
    match value.trim().to_ascii_lowercase().as_str() {
        "oihw" => Ok(KernelLayout::Oihw),
        "hwio" => Ok(KernelLayout::Hwio),
        _ => Err(IngestError::InvalidField {
            source_name: source_name.to_owned(),
            field: "layout".to_owned(),
            detail: format!("got {value:?}, expected \"oihw\" or \"hwio\""),
        }),
    }
}

/// Per-tensor entries of a card (`[layers."<tensor name>"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LayerCard {
    /// The layer's conv level index.
    pub conv_depth: Option<i64>,
    /// Convolution groups.
    pub groups: Option<i64>,
}

/// A parsed and validated model card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelCard {
    /// The card file it was read from (used in messages).
    pub path: PathBuf,
    /// Model-level fields.
    pub fields: ModelOverrides,
    /// Per-tensor entries keyed by tensor name.
    pub layers: BTreeMap<String, LayerCard>,
    /// Number of conv levels of the model (any kernel size), for `conv_depth_norm`.
    pub conv_levels: Option<u64>,
}

#[derive(Deserialize)]
struct CardDoc {
    name: Option<String>,
    architecture: Option<String>,
    task: Option<String>,
    training_dataset: Option<String>,
    pretraining_dataset: Option<String>,
    visual_category: Option<String>,
    layout: Option<String>,
    paper: Option<String>,
    url: Option<String>,
    notes: Option<String>,
    conv_levels: Option<u64>,
    #[serde(default)]
    layers: BTreeMap<String, LayerCard>,
}

fn compiled_schema() -> std::result::Result<&'static (boon::Schemas, boon::SchemaIndex), String> {
    static SCHEMA: OnceLock<std::result::Result<(boon::Schemas, boon::SchemaIndex), String>> =
        OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let json: serde_json::Value =
                serde_json::from_str(MODEL_CARD_SCHEMA).map_err(|e| e.to_string())?;
            let mut schemas = boon::Schemas::new();
            let mut compiler = boon::Compiler::new();
            compiler
                .add_resource(SCHEMA_URL, json)
                .map_err(|e| format!("{e:#}"))?;
            let idx = compiler
                .compile(SCHEMA_URL, &mut schemas)
                .map_err(|e| format!("{e:#}"))?;
            Ok((schemas, idx))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn leaf_errors(e: &boon::ValidationError<'_, '_>, out: &mut Vec<String>) {
    if e.causes.is_empty() {
        let loc = e.instance_location.to_string();
        let loc = if loc.is_empty() { "/".to_owned() } else { loc };
        out.push(format!("at '{loc}': {}", e.kind));
    } else {
        for c in &e.causes {
            leaf_errors(c, out);
        }
    }
}

/// Validates a card given as a JSON value against the model-card schema.
///
/// # Errors
/// [`IngestError::CardInvalid`] listing every failing field (JSON-pointer path) and the
/// expectation.
pub fn validate_card_value(value: &serde_json::Value, path: &Path) -> Result<()> {
    let (schemas, idx) = compiled_schema().map_err(|msg| IngestError::CardInvalid {
        path: path.to_owned(),
        errors: vec![format!(
            "internal error: the embedded model-card schema does not compile: {msg}"
        )],
    })?;
    if let Err(e) = schemas.validate(value, *idx) {
        let mut errors = Vec::new();
        leaf_errors(&e, &mut errors);
        if errors.is_empty() {
            errors.push(e.to_string());
        }
        return Err(IngestError::CardInvalid {
            path: path.to_owned(),
            errors,
        });
    }
    Ok(())
}

/// Parses and validates a card from TOML text; `path` is used in messages only.
///
/// # Errors
/// [`IngestError::CardSyntax`] for bad TOML, [`IngestError::CardInvalid`] for schema
/// failures.
pub fn parse_card(text: &str, path: &Path) -> Result<ModelCard> {
    let value: serde_json::Value =
        toml::from_str(text).map_err(|e: toml::de::Error| IngestError::CardSyntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    validate_card_value(&value, path)?;
    let doc: CardDoc = serde_json::from_value(value).map_err(|e| IngestError::CardInvalid {
        path: path.to_owned(),
        errors: vec![e.to_string()],
    })?;
    let source_name = format!("model card {}", path.display());
    let layout = doc
        .layout
        .as_deref()
        .map(|l| parse_layout(l, &source_name))
        .transpose()?;
    Ok(ModelCard {
        path: path.to_owned(),
        conv_levels: doc.conv_levels,
        fields: ModelOverrides {
            name: doc.name,
            architecture: doc.architecture,
            task: doc.task,
            training_dataset: doc.training_dataset,
            pretraining_dataset: doc.pretraining_dataset,
            visual_category: doc.visual_category,
            layout,
            paper: doc.paper,
            url: doc.url,
            notes: doc.notes,
        },
        layers: doc.layers,
    })
}

/// Reads, parses and validates a card file.
///
/// # Errors
/// [`IngestError::FileNotFound`] / [`IngestError::Io`], then as [`parse_card`].
pub fn read_card(path: &Path) -> Result<ModelCard> {
    let text =
        std::fs::read_to_string(path).map_err(|e| io_error(path, "reading model card", e))?;
    parse_card(&text, path)
}

pub(crate) fn io_error(path: &Path, action: &'static str, e: std::io::Error) -> IngestError {
    if e.kind() == std::io::ErrorKind::NotFound {
        IngestError::FileNotFound {
            path: path.to_owned(),
        }
    } else {
        IngestError::Io {
            path: path.to_owned(),
            action,
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("cards/m.toml")
    }

    #[test]
    fn good_card() {
        let card = parse_card(
            r#"
name = "resnet18"
architecture = "ResNet-18"
task = "classification"
training_dataset = "ImageNet-1k"
visual_category = "Natural"
layout = "hwio"
paper = "He et al."
url = "https://example.invalid/r18"
notes = "test"

[layers."layer1.0.conv1.weight"]
conv_depth = 1
groups = 1

[layers."conv1.weight"]
conv_depth = 0
"#,
            &p(),
        )
        .unwrap();
        assert_eq!(card.fields.name.as_deref(), Some("resnet18"));
        assert_eq!(card.fields.layout, Some(KernelLayout::Hwio));
        assert_eq!(card.layers.len(), 2);
        assert_eq!(card.layers["conv1.weight"].conv_depth, Some(0));
        assert_eq!(card.layers["conv1.weight"].groups, None);
        assert_eq!(card.layers["layer1.0.conv1.weight"].groups, Some(1));
    }

    #[test]
    fn empty_card_is_fine() {
        let card = parse_card("", &p()).unwrap();
        assert_eq!(card.fields, ModelOverrides::default());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse_card("name = \"x\"\ntaks = \"Classification\"\n", &p()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, IngestError::CardInvalid { .. }));
        assert!(msg.contains("cards/m.toml"), "{msg}");
        assert!(msg.contains("taks"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse_card("name = 3\n", &p()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cards/m.toml"), "{msg}");
        assert!(msg.contains("'/name'"), "{msg}");
        assert!(msg.contains("string"), "{msg}");

        let err = parse_card("[layers.\"a.weight\"]\nconv_depth = \"3\"\n", &p()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/layers/a.weight/conv_depth"), "{msg}");
        assert!(msg.contains("integer"), "{msg}");

        let err = parse_card("[layers.\"a.weight\"]\ngroups = 0\n", &p()).unwrap_err();
        assert!(err.to_string().contains("/layers/a.weight/groups"), "{err}");

        let err = parse_card("[layers.\"a.weight\"]\nstride = 2\n", &p()).unwrap_err();
        assert!(err.to_string().contains("stride"), "{err}");
    }

    #[test]
    fn bad_layout() {
        let err = parse_card("layout = \"nchw\"\n", &p()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'/layout'"), "{msg}");
        assert!(msg.contains("oihw"), "{msg}");
    }

    #[test]
    fn toml_syntax_error() {
        let err = parse_card("name = \n", &p()).unwrap_err();
        assert!(matches!(err, IngestError::CardSyntax { .. }));
        assert!(err.to_string().contains("cards/m.toml"));
    }

    #[test]
    fn missing_card_file() {
        let err = read_card(Path::new("/nonexistent/card.toml")).unwrap_err();
        assert!(matches!(err, IngestError::FileNotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/card.toml"));
    }

    #[test]
    fn overrides_merge_and_set() {
        let mut cli = ModelOverrides::default();
        cli.set("task", "Segmentation", "cli").unwrap();
        cli.set("notes", "  ", "cli").unwrap();
        let card = ModelOverrides {
            task: Some("Classification".into()),
            notes: Some("card".into()),
            ..Default::default()
        };
        let m = cli.or(&card);
        assert_eq!(m.task.as_deref(), Some("Segmentation"));
        assert_eq!(m.notes.as_deref(), Some("card"));
        assert!(
            cli.set("colour", "red", "row 3")
                .unwrap_err()
                .to_string()
                .contains("row 3")
        );
        assert!(cli.set("layout", "nchw", "row 3").is_err());
    }
}
