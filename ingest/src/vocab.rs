//! Controlled vocabularies for `task` and `visual_category`.
//!
//! The built-in lists live in `schemas/vocab/*.txt` (one canonical value per line, `#`
//! starts a comment) and are compiled in. Users extend them per store
//! (`filterdb vocab add --kind task VALUE`); those extra values are passed in as `extra`.
//! Matching ignores case, white space, `-` and `_`, and always returns the canonical
//! spelling, so `object-detection`, `Object_Detection` and `objectdetection` all become
//! `Object Detection`.

use crate::error::{IngestError, Result};

const TASKS: &str = include_str!("../../schemas/vocab/tasks.txt");
const VISUAL_CATEGORIES: &str = include_str!("../../schemas/vocab/visual_categories.txt");

/// The vocabulary kind of task values.
pub const KIND_TASK: &str = "task";
/// The vocabulary kind of visual-category values.
pub const KIND_VISUAL_CATEGORY: &str = "visual_category";

fn lines(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The built-in canonical values of a vocabulary kind (`task` or `visual_category`).
pub fn builtin(kind: &str) -> Result<Vec<&'static str>> {
    match kind {
        KIND_TASK => Ok(lines(TASKS).collect()),
        KIND_VISUAL_CATEGORY => Ok(lines(VISUAL_CATEGORIES).collect()),
        _ => Err(IngestError::UnknownVocabularyKind {
            kind: kind.to_owned(),
        }),
    }
}

/// The comparison key of a value: lower case without white space, `-` and `_`.
pub fn match_key(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Returns the canonical spelling of `value` in vocabulary `kind`, extended by `extra`
/// (the store's user-added values).
///
/// # Errors
/// [`IngestError::UnknownVocabulary`] with up to three close matches when the value is not
/// in the vocabulary; [`IngestError::UnknownVocabularyKind`] for a bad `kind`.
///
/// ```
/// use filterdb_ingest::vocab::canonicalise;
/// assert_eq!(canonicalise("task", "object-detection", &[]).unwrap(), "Object Detection");
/// assert!(canonicalise("task", "detektion", &[]).unwrap_err().to_string().contains("Object Detection"));
/// ```
pub fn canonicalise(kind: &str, value: &str, extra: &[String]) -> Result<String> {
    let builtin = builtin(kind)?;
    let key = match_key(value);
    let candidates = builtin
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    let mut scored: Vec<(f64, &str)> = Vec::new();
    for cand in candidates {
        let ck = match_key(cand);
        if ck == key && !key.is_empty() {
            return Ok(cand.to_owned());
        }
        let mut score = strsim::jaro_winkler(&key, &ck);
        if key.len() >= 3 && (ck.contains(&key) || key.contains(&ck)) {
            score = score.max(0.9);
        }
        scored.push((score, cand));
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut suggestions: Vec<String> = Vec::new();
    for (score, cand) in scored {
        if score < 0.75 || suggestions.len() == 3 {
            break;
        }
        if !suggestions.iter().any(|s| s == cand) {
            suggestions.push(cand.to_owned());
        }
    }
    Err(IngestError::UnknownVocabulary {
        field: kind.to_owned(),
        value: value.to_owned(),
        suggestions,
    })
}

/// Checks a value a user wants to add to vocabulary `kind` and returns it trimmed.
///
/// # Errors
/// [`IngestError::InvalidField`] if it is empty or already present (under the matching
/// rules of [`canonicalise`]), naming the existing spelling.
pub fn check_new_value(kind: &str, value: &str, extra: &[String]) -> Result<String> {
    let trimmed = value.trim();
    if match_key(trimmed).is_empty() {
        return Err(IngestError::InvalidField {
            source_name: "vocab add".to_owned(),
            field: kind.to_owned(),
            detail: "expected a non-empty value".to_owned(),
        });
    }
    match canonicalise(kind, trimmed, extra) {
        Ok(existing) => Err(IngestError::InvalidField {
            source_name: "vocab add".to_owned(),
            field: kind.to_owned(),
            detail: format!("{trimmed:?} is already in the vocabulary as {existing:?}"),
        }),
        Err(IngestError::UnknownVocabulary { .. }) => Ok(trimmed.to_owned()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists_are_clean() {
        for kind in [KIND_TASK, KIND_VISUAL_CATEGORY] {
            let values = builtin(kind).unwrap();
            assert!(values.len() > 15);
            let mut keys: Vec<String> = values.iter().map(|v| match_key(v)).collect();
            keys.sort();
            let n = keys.len();
            keys.dedup();
            assert_eq!(n, keys.len(), "duplicate keys in {kind}");
        }
    }

    #[test]
    fn insensitive_match_returns_canonical() {
        assert_eq!(
            canonicalise("task", "gan_generator", &[]).unwrap(),
            "GAN Generator"
        );
        assert_eq!(
            canonicalise("task", "  AUTOENCODER ", &[]).unwrap(),
            "Auto-Encoder"
        );
        assert_eq!(
            canonicalise("visual_category", "medical x-ray", &[]).unwrap(),
            "Medical X-Ray"
        );
        assert_eq!(
            canonicalise("visual_category", "medical-ct", &[]).unwrap(),
            "Medical CT"
        );
    }

    #[test]
    fn extra_values_are_accepted() {
        let extra = vec!["Galaxy Zoo Morphology".to_owned()];
        assert_eq!(
            canonicalise("task", "galaxy zoo morphology", &extra).unwrap(),
            "Galaxy Zoo Morphology"
        );
        assert!(canonicalise("task", "galaxy zoo morphology", &[]).is_err());
    }

    #[test]
    fn unknown_value_suggests_close_matches() {
        let err = canonicalise("task", "clasification", &[]).unwrap_err();
        match &err {
            IngestError::UnknownVocabulary {
                field,
                value,
                suggestions,
            } => {
                assert_eq!(field, "task");
                assert_eq!(value, "clasification");
                assert_eq!(
                    suggestions.first().map(String::as_str),
                    Some("Classification")
                );
                assert!(suggestions.len() <= 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("did you mean Classification"), "{msg}");
        assert!(
            msg.contains("filterdb vocab add --kind task \"clasification\""),
            "{msg}"
        );

        let err = canonicalise("task", "detection", &[]).unwrap_err();
        let IngestError::UnknownVocabulary { suggestions, .. } = err else {
            panic!("expected UnknownVocabulary");
        };
        assert_eq!(suggestions.len(), 3);
        assert!(
            suggestions.iter().all(|s| s.contains("Detection")),
            "{suggestions:?}"
        );
    }

    #[test]
    fn nothing_close_gives_no_suggestions() {
        let err = canonicalise("visual_category", "qqqqzzzz", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("did you mean"), "{msg}");
        assert!(
            msg.contains("unknown visual_category \"qqqqzzzz\""),
            "{msg}"
        );
    }

    #[test]
    fn bad_kind_and_new_values() {
        assert!(matches!(
            canonicalise("colour", "red", &[]),
            Err(IngestError::UnknownVocabularyKind { .. })
        ));
        assert_eq!(
            check_new_value("task", " Galaxy Morphology ", &[]).unwrap(),
            "Galaxy Morphology"
        );
        assert!(check_new_value("task", "segmentation", &[]).is_err());
        assert!(check_new_value("task", " - ", &[]).is_err());
    }
}
