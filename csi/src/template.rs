//! ConnectorClass configurations: files rendered from Go `text/template`
//! templates (the connector docs' language, by the `gtmpl` engine) over the
//! values README documents, with a subset of sprig's functions.
//!
//! Templates are data an admin writes; rendering never panics on them and
//! its errors name the template, never a value (values hold the token).

use base64::Engine;
use gtmpl::{Context, FuncError, Template, Value};
use serde_json::Value as Json;

/// Why a template could not be rendered. Holds no value of the context.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {file}: {why}")]
    Parse { file: String, why: String },
    #[error("template {file}: {why}")]
    Render { file: String, why: String },
    #[error("template {file} rendered invalid JSON: {why}")]
    Json { file: String, why: String },
}

/// The functions templates may call besides Go's built-ins (`printf`,
/// `index`, `len`, `eq`, `and`, `urlquery`, …): sprig's names and meanings.
const FUNCTIONS: &[(&str, gtmpl::Func)] = &[
    ("b64enc", b64enc),
    ("b64dec", b64dec),
    ("quote", quote),
    ("squote", squote),
    ("toJson", to_json),
    ("trimSuffix", trim_suffix),
    ("trimPrefix", trim_prefix),
    ("trim", trim),
    ("replace", replace),
    ("lower", lower),
    ("upper", upper),
    ("default", default),
    ("hasPrefix", has_prefix),
    ("hasSuffix", has_suffix),
    ("join", join),
];

/// The function names, for README and messages.
pub fn function_names() -> Vec<&'static str> {
    FUNCTIONS.iter().map(|(name, _)| *name).collect()
}

/// Renders `template` (file `file`, for messages) over `values`. A file
/// whose name ends in `.json` must render valid JSON and is written
/// pretty-printed.
pub fn render(file: &str, template: &str, values: &Json) -> Result<String, TemplateError> {
    // NB: gtmpl's lexer never returns on an action left open at the end of
    // the text (`{{ .x`): such a template is refused before it is parsed.
    if let Some(offset) = unclosed_action(template) {
        return Err(TemplateError::Parse {
            file: file.to_owned(),
            why: format!("the action opened at byte {offset} is never closed with }}}}"),
        });
    }
    let mut parsed = Template::default();
    parsed.add_funcs(FUNCTIONS);
    parsed.parse(template).map_err(|e| TemplateError::Parse {
        file: file.to_owned(),
        why: e.to_string(),
    })?;
    let rendered = parsed
        .render(&Context::from(to_value(values)))
        .map_err(|e| TemplateError::Render {
            file: file.to_owned(),
            why: scrub(&e.to_string()),
        })?;
    if file.ends_with(".json") {
        let document: Json = serde_json::from_str(&rendered).map_err(|e| TemplateError::Json {
            file: file.to_owned(),
            // NB: serde's message names a line and column, not the text.
            why: e.to_string(),
        })?;
        let mut pretty = serde_json::to_string_pretty(&document).unwrap_or_default();
        pretty.push('\n');
        return Ok(pretty);
    }
    Ok(rendered)
}

/// Where the first action (`{{`) that is never closed (`}}`) opens,
/// skipping quoted, raw and character literals and comments inside actions.
fn unclosed_action(template: &str) -> Option<usize> {
    let bytes = template.as_bytes();
    let at = |i: usize, pair: &[u8; 2]| bytes.get(i..i + 2) == Some(pair.as_slice());
    let mut i = 0;
    while i < bytes.len() {
        if !at(i, b"{{") {
            i += 1;
            continue;
        }
        let start = i;
        i += 2;
        loop {
            match bytes.get(i) {
                None => return Some(start),
                Some(b'}') if at(i, b"}}") => {
                    i += 2;
                    break;
                }
                Some(&quote @ (b'"' | b'\'')) => {
                    i += 1;
                    while let Some(&c) = bytes.get(i) {
                        if c == quote || c == b'\n' {
                            break;
                        }
                        i += if c == b'\\' { 2 } else { 1 };
                    }
                    if bytes.get(i) != Some(&quote) {
                        return Some(start);
                    }
                    i += 1;
                }
                Some(b'`') => match bytes[i + 1..].iter().position(|&c| c == b'`') {
                    Some(n) => i += n + 2,
                    None => return Some(start),
                },
                Some(b'/') if at(i, b"/*") => match bytes[i + 2..].windows(2).position(|w| w == b"*/") {
                    Some(n) => i += n + 4,
                    None => return Some(start),
                },
                Some(_) => i += 1,
            }
        }
    }
    None
}

/// An engine message without quoted values (they may hold the token).
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            quoted = !quoted;
            out.push_str(if quoted { "\"…" } else { "\"" });
        } else if !quoted {
            out.push(c);
        }
    }
    out.chars().take(300).collect()
}

fn to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Json::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
    }
}

fn json_of(value: &Value) -> Json {
    match value {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => serde_json::from_str(&n.to_string()).unwrap_or(Json::Null),
        Value::Array(items) => Json::Array(items.iter().map(json_of).collect()),
        Value::Object(map) | Value::Map(map) => {
            let sorted: std::collections::BTreeMap<_, _> = map.iter().map(|(k, v)| (k.clone(), json_of(v))).collect();
            Json::Object(sorted.into_iter().collect())
        }
    }
}

/// The string form of an argument (a string as it is, anything else as
/// Go prints it).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        other => other.to_string(),
    }
}

fn args<'a, const N: usize>(name: &str, values: &'a [Value]) -> Result<[&'a Value; N], FuncError> {
    if values.len() != N {
        return Err(FuncError::ExactlyXArgs(name.to_owned(), N));
    }
    Ok(std::array::from_fn(|i| &values[i]))
}

fn b64enc(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("b64enc", values)?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(text(value)),
    ))
}

fn b64dec(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("b64dec", values)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text(value))
        .map_err(|_| FuncError::Generic("b64dec: not base64".into()))?;
    Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A double-quoted string with JSON escapes (valid in JSON, TOML and YAML).
fn quote(values: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = values.iter().map(|v| Json::String(text(v)).to_string()).collect();
    Ok(Value::String(quoted.join(" ")))
}

fn squote(values: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = values
        .iter()
        .map(|v| format!("'{}'", text(v).replace('\'', "''")))
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

fn to_json(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("toJson", values)?;
    Ok(Value::String(json_of(value).to_string()))
}

// NB: sprig's argument order: the operand comes last, so that pipelines
// (`.x | trimSuffix "/"`) read naturally.
fn trim_suffix(values: &[Value]) -> Result<Value, FuncError> {
    let [suffix, value] = args("trimSuffix", values)?;
    let (suffix, value) = (text(suffix), text(value));
    Ok(Value::String(value.strip_suffix(&suffix).unwrap_or(&value).to_owned()))
}

fn trim_prefix(values: &[Value]) -> Result<Value, FuncError> {
    let [prefix, value] = args("trimPrefix", values)?;
    let (prefix, value) = (text(prefix), text(value));
    Ok(Value::String(value.strip_prefix(&prefix).unwrap_or(&value).to_owned()))
}

fn trim(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("trim", values)?;
    Ok(Value::String(text(value).trim().to_owned()))
}

fn replace(values: &[Value]) -> Result<Value, FuncError> {
    let [old, new, value] = args("replace", values)?;
    Ok(Value::String(text(value).replace(&text(old), &text(new))))
}

fn lower(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("lower", values)?;
    Ok(Value::String(text(value).to_lowercase()))
}

fn upper(values: &[Value]) -> Result<Value, FuncError> {
    let [value] = args("upper", values)?;
    Ok(Value::String(text(value).to_uppercase()))
}

/// `default D V`: V unless it is empty (no value, nil, false, 0, "", an
/// empty list or map), else D.
fn default(values: &[Value]) -> Result<Value, FuncError> {
    let (fallback, value) = match values {
        [fallback] => (fallback, &Value::NoValue),
        [fallback, value] => (fallback, value),
        _ => return Err(FuncError::AtLeastXArgs("default".into(), 1)),
    };
    let empty = match value {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) | Value::Map(m) => m.is_empty(),
        Value::Number(n) => n.to_string() == "0",
        Value::Function(_) => false,
    };
    Ok(if empty { fallback.clone() } else { value.clone() })
}

fn has_prefix(values: &[Value]) -> Result<Value, FuncError> {
    let [prefix, value] = args("hasPrefix", values)?;
    Ok(Value::Bool(text(value).starts_with(&text(prefix))))
}

fn has_suffix(values: &[Value]) -> Result<Value, FuncError> {
    let [suffix, value] = args("hasSuffix", values)?;
    Ok(Value::Bool(text(value).ends_with(&text(suffix))))
}

fn join(values: &[Value]) -> Result<Value, FuncError> {
    let [separator, list] = args("join", values)?;
    let Value::Array(items) = list else {
        return Err(FuncError::Generic("join: the second argument must be a list".into()));
    };
    Ok(Value::String(
        items.iter().map(text).collect::<Vec<_>>().join(&text(separator)),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn templates_range_pipe_and_call_the_sprig_functions() {
        let values = json!({
            "connectors": [{"name": "a", "host": "c-a.x.svc"}, {"name": "b", "host": ""}],
            "context": {"token": "t0k", "serviceAccount": "sa"},
            "configurations": {"mirrorRepository": "lib/", "unset": ""},
        });
        let template = r#"{{- range $i, $c := .connectors }}{{ if $c.host }}{{ quote $c.host }}={{ printf "%s:%s" $.context.serviceAccount $.context.token | b64enc }}{{ end }}{{ end }}
{{ .configurations.mirrorRepository | trimSuffix "/" | upper }} {{ default "none" .configurations.unset }} {{ squote "it's" }} {{ toJson .context }}"#;
        let out = render("x.conf", template, &values).unwrap();
        assert_eq!(
            out,
            "\"c-a.x.svc\"=c2E6dDBr\nLIB none 'it''s' {\"serviceAccount\":\"sa\",\"token\":\"t0k\"}"
        );
    }

    /// Every prefix of the shipped templates (an admin's half-written
    /// edit) renders or fails; none hangs the engine.
    #[test]
    fn every_prefix_of_the_shipped_templates_renders_or_fails_in_time() {
        let values = json!({"context": {"proxy": {}}, "connectors": []});
        for class in connector::class::built_in() {
            for configuration in &class.spec.configurations {
                for template in configuration.data.values() {
                    for (cut, _) in template.char_indices() {
                        let _ = render("t", &template[..cut], &values);
                    }
                }
            }
        }
    }

    #[test]
    fn json_files_are_checked_and_pretty_printed() {
        let out = render("config.json", r#"{"auths": {"{{ .h }}": {}}}"#, &json!({"h": "x"})).unwrap();
        assert_eq!(out, "{\n  \"auths\": {\n    \"x\": {}\n  }\n}\n");
        let error = render("config.json", r#"{"auths": {{ .h }}"#, &json!({"h": "secret-token"})).unwrap_err();
        assert!(error.to_string().contains("invalid JSON"), "{error}");
        assert!(!error.to_string().contains("secret-token"), "{error}");
    }

    #[test]
    fn broken_templates_name_the_file_and_never_a_value() {
        for open in ["{{ .x ", "{{ \"a\" ", "a {{ printf `x", "{{/* c", "{{ 'x", "{{ }} {{"] {
            let error = render("a.toml", open, &json!({})).unwrap_err();
            assert!(error.to_string().starts_with("template a.toml:"), "{open}: {error}");
        }
        for closed in ["{{/* it's */}}x", "{{ \"}}\" }}", "{{ `}}` }}", "a }} b"] {
            assert!(render("a.toml", closed, &json!({})).is_ok(), "{closed}");
        }
        let error = render(
            "b.toml",
            r#"{{ b64dec .token }}"#,
            &json!({"token": "not base64 secret"}),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("template b.toml:"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
