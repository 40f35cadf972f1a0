//! YAML in and out, in one place: multi-document parsing and the output style
//! users read (block scalars only for multi-line strings).

use serde::Serialize;
use serde_json::Value;

/// Why YAML could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{0}")]
    Parse(#[from] serde_saphyr::Error),
    #[error("{0}")]
    Write(#[from] serde_saphyr::SerializeError),
}

/// Parses multi-document YAML into JSON values; empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Serialises one document. Long single-line strings (image references,
/// proxy URLs) stay on one line; multi-line strings use `|`.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}
