//! YAML in and out, in one place: multi-document parsing and the output style
//! users read (block scalars only for multi-line strings).

use serde::Serialize;
use serde_json::Value;

/// Parses multi-document YAML into JSON values; empty documents are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Serialises one document. Long single-line strings (image references,
/// proxy URLs) stay on one line; multi-line strings use `|`.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options).map_err(|e| e.to_string())
}
