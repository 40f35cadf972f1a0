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
/// Plain scalars resolve as Kubernetes' own reader (YAML 1.1) resolves
/// them: `0755` is the octal 493 and `yes`/`no`/`on`/`off` are booleans.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.strict_booleans = false;
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The text of each document of a multi-document stream, split at the
/// `---` lines that start documents (the markers and `...` end lines are
/// not part of any document); for passing documents through unchanged.
pub fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let marker = content == "---"
            || content.starts_with("--- ")
            || content.starts_with("---\t")
            || content == "..."
            || content.starts_with("... ");
        if marker {
            documents.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
}

/// Serialises one document. Long single-line strings (image references,
/// proxy URLs) stay on one line; multi-line strings use `|`.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_resolve_as_kubernetes_reads_them() {
        let parsed =
            parse_documents("mode: 0755\nzero: 0\nplain: 755\nflag: yes\noff: off\nversion: \"0755\"\n").unwrap();
        assert_eq!(
            parsed[0],
            serde_json::json!({"mode": 493, "zero": 0, "plain": 755, "flag": true, "off": false, "version": "0755"})
        );
    }

    #[test]
    fn documents_split_at_their_markers() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: |\n  ---x\n...\n";
        assert_eq!(split_documents(text), ["a: 1\n", "b: 2\n", "c: |\n  ---x\n", ""]);
        assert_eq!(split_documents("---\na: 1\n"), ["", "a: 1\n"]);
    }
}
