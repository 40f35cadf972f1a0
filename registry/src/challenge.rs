//! `WWW-Authenticate` challenges (RFC 7235) and token scopes: the one place that
//! reads what an upstream registry asks for and writes what the proxy asks for.
//!
//! The parser is lenient and total: upstream headers are hostile input, so any
//! byte sequence yields a (possibly empty) list of challenges and never a panic.
//! Quoted values may hold commas and spaces (`scope="repository:a:pull,push
//! repository:b:pull"`), so values are never split naively on `,`.

use std::collections::BTreeMap;
use std::fmt;

/// An authentication scheme; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `Basic`: username and password on every request.
    Basic,
    /// `Bearer`: a token fetched from the challenge's realm.
    Bearer,
    /// Any other scheme, lowercased (e.g. `digest`, `negotiate`).
    Other(String),
}

impl Scheme {
    /// Reads a scheme name case-insensitively.
    pub fn parse(name: &str) -> Scheme {
        if name.eq_ignore_ascii_case("basic") {
            Scheme::Basic
        } else if name.eq_ignore_ascii_case("bearer") {
            Scheme::Bearer
        } else {
            Scheme::Other(name.to_ascii_lowercase())
        }
    }

    /// The canonical spelling: `Basic`, `Bearer` or the lowercased other name.
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Bearer => "Bearer",
            Scheme::Other(name) => name,
        }
    }

    /// Preference when a response offers several challenges (higher wins).
    fn rank(&self) -> u8 {
        match self {
            Scheme::Bearer => 2,
            Scheme::Basic => 1,
            Scheme::Other(_) => 0,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One challenge: a scheme and its auth-params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme.
    pub scheme: Scheme,
    /// The parameters: keys lowercased, values unquoted and unescaped. When a
    /// key repeats, the first value is kept.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// The `realm` parameter: the token endpoint for Bearer, a label for Basic.
    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    /// The `service` parameter, passed back to the token endpoint.
    pub fn service(&self) -> Option<&str> {
        self.param("service")
    }

    /// The `scope` parameter split on spaces (one challenge may ask for several
    /// scopes); empty items are dropped.
    pub fn scopes(&self) -> Vec<String> {
        self.param("scope")
            .map(|scope| {
                scope
                    .split([' ', '\t'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `error` parameter, e.g. `invalid_token` or `insufficient_scope`.
    pub fn error(&self) -> Option<&str> {
        self.param("error")
    }

    /// Any parameter by its lowercase name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in the given header values (one header may hold
/// several challenges separated by commas; quoted values may contain commas,
/// spaces and `\`-escapes).
///
/// Malformed pieces are skipped: a bare `Bearer` is a challenge without
/// parameters, an unterminated quoted value runs to the end of the header, and
/// stray `=` or quotes are ignored. A token68 credential after the scheme
/// (`Negotiate abc==`) is skipped.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    for value in values {
        parse_header(value, &mut challenges);
    }
    challenges
}

/// Bearer over Basic over others; the first of the best scheme wins.
pub fn preferred(challenges: &[Challenge]) -> Option<&Challenge> {
    let mut best: Option<&Challenge> = None;
    for challenge in challenges {
        if best.is_none_or(|b| challenge.scheme.rank() > b.scheme.rank()) {
            best = Some(challenge);
        }
    }
    best
}

/// A resource scope such as `repository:lab/app:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// `repository`, `registry`, or a typed class like `repository(plugin)`.
    pub resource_type: String,
    /// The resource name; may contain `host:port`.
    pub name: String,
    /// The actions, e.g. `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses `type:name:actions`: the type is before the first `:`, the
    /// actions after the last `:` (split on `,`, empty items dropped) and the
    /// name in between, so a name may hold `host:port`. None when a part is
    /// missing or the string holds whitespace or control characters.
    pub fn parse(s: &str) -> Option<Scope> {
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (resource_type, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if resource_type.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// A `repository` scope with the given actions.
    pub fn repository(name: &str, actions: &[&str]) -> Scope {
        Scope {
            resource_type: "repository".to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.resource_type, self.name, self.actions.join(","))
    }
}

/// Renders a challenge header value (for the proxy's own `/v2/` answer), e.g.
/// `Basic realm="connectors"`: every value is quoted with `"` and `\` escaped.
/// Control characters are dropped from values and non-token characters from
/// names and the scheme, so the result is always a valid header value.
pub fn render(scheme: &str, params: &[(&str, &str)]) -> String {
    let mut out: String = scheme.chars().filter(|c| is_tchar(*c)).collect();
    for (i, (name, value)) in params.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { "," });
        out.extend(name.chars().filter(|c| is_tchar(*c)));
        out.push_str("=\"");
        for c in value.chars().filter(|c| !c.is_control() || *c == '\t') {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out
}

/// RFC 7230 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// RFC 7235 `token68`, without the trailing `=` padding.
fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

/// A position in one header value.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    /// After an opening `"`: the unescaped content up to the closing quote
    /// (or the end of the text when the quote is never closed).
    fn quoted(&mut self) -> String {
        let mut value = String::new();
        while let Some(c) = self.bump() {
            match c {
                '"' => break,
                '\\' => {
                    if let Some(escaped) = self.bump() {
                        value.push(escaped);
                    }
                }
                other => value.push(other),
            }
        }
        value
    }

    /// Whether a token68 (`abc+/=`) starts here and runs to a `,` or the end.
    fn at_token68(&self) -> bool {
        let rest = &self.text[self.pos..];
        let body = rest.trim_start_matches(is_token68_char);
        if body.len() == rest.len() {
            return false;
        }
        let after = body.trim_start_matches('=').trim_start_matches([' ', '\t']);
        after.is_empty() || after.starts_with(',')
    }
}

/// Appends the challenges of one header value.
fn parse_header(text: &str, out: &mut Vec<Challenge>) {
    let mut cursor = Cursor { text, pos: 0 };
    let mut current: Option<Challenge> = None;
    // NB: a new challenge starts only at the beginning or after a comma;
    // elsewhere a bare token is a token68 (right after the scheme) or junk.
    let mut after_comma = true;
    let mut after_scheme = false;
    loop {
        cursor.skip_ows();
        let Some(c) = cursor.peek() else { break };
        if c == ',' {
            cursor.bump();
            after_comma = true;
            after_scheme = false;
            continue;
        }
        if after_scheme && cursor.at_token68() {
            cursor.take_while(|c| is_token68_char(c) || c == '=');
            after_scheme = false;
            after_comma = false;
            continue;
        }
        if !is_tchar(c) {
            cursor.bump();
            if c == '"' {
                cursor.quoted();
            }
            after_comma = false;
            after_scheme = false;
            continue;
        }
        let token = cursor.take_while(is_tchar);
        let before_equals = cursor.pos;
        cursor.skip_ows();
        match (cursor.peek(), current.as_mut()) {
            (Some('='), Some(challenge)) => {
                cursor.bump();
                cursor.skip_ows();
                let value = if cursor.peek() == Some('"') {
                    cursor.bump();
                    cursor.quoted()
                } else {
                    // NB: lenient: an unquoted value runs to the next comma or
                    // space, so an unquoted URL realm survives intact.
                    cursor.take_while(|c| !matches!(c, ',' | ' ' | '\t')).to_owned()
                };
                challenge.params.entry(token.to_ascii_lowercase()).or_insert(value);
            }
            (Some('='), None) => {
                // A parameter before any scheme: skip `name=value`.
                cursor.bump();
                cursor.skip_ows();
                if cursor.peek() == Some('"') {
                    cursor.bump();
                    cursor.quoted();
                } else {
                    cursor.take_while(|c| !matches!(c, ',' | ' ' | '\t'));
                }
            }
            _ if after_comma => {
                cursor.pos = before_equals;
                out.extend(current.take());
                current = Some(Challenge {
                    scheme: Scheme::parse(token),
                    params: BTreeMap::new(),
                });
                after_scheme = true;
                after_comma = false;
                continue;
            }
            _ => cursor.pos = before_equals,
        }
        after_comma = false;
        after_scheme = false;
    }
    out.extend(current);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(scheme: Scheme, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme,
            params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn upstream_challenges_parse_into_schemes_and_params() {
        use Scheme::*;
        let cases: Vec<(&str, &str, Vec<Challenge>)> = vec![
            (
                "harbor bearer with a push scope",
                r#"Bearer realm="https://h/service/token",service="harbor-registry",scope="repository:p/r:pull,push""#,
                vec![challenge(
                    Bearer,
                    &[
                        ("realm", "https://h/service/token"),
                        ("service", "harbor-registry"),
                        ("scope", "repository:p/r:pull,push"),
                    ],
                )],
            ),
            (
                "two scopes in one quoted value",
                r#"Bearer realm="https://auth/token",scope="repository:a:pull repository:b:pull,push""#,
                vec![challenge(
                    Bearer,
                    &[
                        ("realm", "https://auth/token"),
                        ("scope", "repository:a:pull repository:b:pull,push"),
                    ],
                )],
            ),
            (
                "lowercase scheme and uppercase keys",
                r#"bearer REALM="https://auth.docker.io/token",Service="registry.docker.io""#,
                vec![challenge(
                    Bearer,
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ],
                )],
            ),
            (
                "harbor basic",
                r#"Basic realm="harbor""#,
                vec![challenge(Basic, &[("realm", "harbor")])],
            ),
            (
                "ecr basic",
                r#"Basic realm="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#,
                vec![challenge(
                    Basic,
                    &[
                        ("realm", "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/"),
                        ("service", "ecr.amazonaws.com"),
                    ],
                )],
            ),
            (
                "invalid token error",
                concat!(
                    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io","#,
                    r#"scope="repository:o/r:pull",error="invalid_token""#
                ),
                vec![challenge(
                    Bearer,
                    &[
                        ("realm", "https://ghcr.io/token"),
                        ("service", "ghcr.io"),
                        ("scope", "repository:o/r:pull"),
                        ("error", "invalid_token"),
                    ],
                )],
            ),
            (
                "two challenges in one header",
                r#"Basic realm="x", Bearer realm="y",service="z""#,
                vec![
                    challenge(Basic, &[("realm", "x")]),
                    challenge(Bearer, &[("realm", "y"), ("service", "z")]),
                ],
            ),
            (
                "escaped quotes and backslashes",
                r#"Bearer realm="a \"quoted\" \\ realm",service="s""#,
                vec![challenge(
                    Bearer,
                    &[("realm", r#"a "quoted" \ realm"#), ("service", "s")],
                )],
            ),
            (
                "spaces around equals and commas",
                r#"Bearer  realm = "r" ,  service = s "#,
                vec![challenge(Bearer, &[("realm", "r"), ("service", "s")])],
            ),
            (
                "unquoted url realm",
                "Bearer realm=https://h/token,service=h",
                vec![challenge(Bearer, &[("realm", "https://h/token"), ("service", "h")])],
            ),
            (
                "params separated by spaces only",
                r#"Bearer realm="r" service="s""#,
                vec![challenge(Bearer, &[("realm", "r"), ("service", "s")])],
            ),
            (
                "other scheme lowercased",
                r#"Digest realm="d", nonce="n""#,
                vec![challenge(Other("digest".into()), &[("realm", "d"), ("nonce", "n")])],
            ),
            (
                "token68 after the scheme is skipped",
                "Negotiate abc+/def==, Basic realm=\"b\"",
                vec![
                    challenge(Other("negotiate".into()), &[]),
                    challenge(Basic, &[("realm", "b")]),
                ],
            ),
            (
                "repeated key keeps the first",
                r#"Bearer realm="first",realm="second""#,
                vec![challenge(Bearer, &[("realm", "first")])],
            ),
            (
                "empty quoted value",
                r#"Bearer realm="",service="s""#,
                vec![challenge(Bearer, &[("realm", ""), ("service", "s")])],
            ),
            ("bare scheme", "Bearer", vec![challenge(Bearer, &[])]),
            ("only equals", "=", vec![]),
            ("only a quote", "\"", vec![]),
            ("empty", "", vec![]),
            ("commas only", " , ,, ", vec![]),
            (
                "unterminated quote runs to the end",
                r#"Bearer realm="https://h/token,service="s"#,
                vec![challenge(Bearer, &[("realm", "https://h/token,service=")])],
            ),
            (
                "parameter before any scheme is skipped",
                r#"realm="x", Basic realm="y""#,
                vec![challenge(Basic, &[("realm", "y")])],
            ),
            (
                "unterminated quote without a closing quote",
                r#"Bearer service="s",realm="https://h/tok"#,
                vec![challenge(Bearer, &[("service", "s"), ("realm", "https://h/tok")])],
            ),
            (
                // NB: `realm=` right after the scheme reads as a token68; both are junk.
                "dangling equals and trailing backslash",
                "Bearer realm=, service=\"a\\",
                vec![challenge(Bearer, &[("service", "a")])],
            ),
            (
                "empty unquoted value after a parameter",
                r#"Bearer service="s", realm=, error=x"#,
                vec![challenge(Bearer, &[("service", "s"), ("realm", ""), ("error", "x")])],
            ),
            (
                "non-ascii in a quoted value",
                "Bearer realm=\"h\u{e9}\\\u{e9}\"",
                vec![challenge(Bearer, &[("realm", "h\u{e9}\u{e9}")])],
            ),
        ];
        for (scenario, header, expected) in cases {
            assert_eq!(parse_challenges([header]), expected, "{scenario}: {header}");
        }
    }

    #[test]
    fn challenges_from_several_header_lines_are_concatenated() {
        let parsed = parse_challenges([r#"Basic realm="harbor""#, r#"Bearer realm="https://h/service/token""#]);
        assert_eq!(parsed.len(), 2);
        assert_eq!(preferred(&parsed).map(|c| &c.scheme), Some(&Scheme::Bearer));
    }

    #[test]
    fn bearer_is_preferred_over_basic_over_others() {
        let cases: &[(&str, Option<(Scheme, &str)>)] = &[
            (
                r#"Digest realm="d", Basic realm="b", Bearer realm="t""#,
                Some((Scheme::Bearer, "t")),
            ),
            (r#"Digest realm="d", Basic realm="b""#, Some((Scheme::Basic, "b"))),
            (
                r#"Digest realm="d", Negotiate"#,
                Some((Scheme::Other("digest".into()), "d")),
            ),
            (
                r#"Bearer realm="one", Bearer realm="two""#,
                Some((Scheme::Bearer, "one")),
            ),
            ("", None),
        ];
        for (header, expected) in cases {
            let parsed = parse_challenges([*header]);
            let got = preferred(&parsed).map(|c| (c.scheme.clone(), c.realm().unwrap_or_default()));
            let expected = expected.as_ref().map(|(s, r)| (s.clone(), *r));
            assert_eq!(got, expected, "{header}");
        }
    }

    #[test]
    fn challenge_accessors_split_scopes_and_read_errors() {
        let parsed = parse_challenges([concat!(
            r#"Bearer realm="r",service="s","#,
            r#"scope="  repository:a:pull   repository:b:pull,push ",error="insufficient_scope""#
        )]);
        let c = &parsed[0];
        assert_eq!(c.realm(), Some("r"));
        assert_eq!(c.service(), Some("s"));
        assert_eq!(c.error(), Some("insufficient_scope"));
        assert_eq!(c.scopes(), vec!["repository:a:pull", "repository:b:pull,push"]);

        let bare = &parse_challenges(["Bearer"])[0];
        assert_eq!((bare.realm(), bare.service(), bare.error()), (None, None, None));
        assert!(bare.scopes().is_empty());
    }

    #[test]
    fn scopes_split_type_name_and_actions() {
        let scope = |resource_type: &str, name: &str, actions: &[&str]| Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        };
        let cases = [
            (
                "repository:lab/x:pull,push",
                Some(scope("repository", "lab/x", &["pull", "push"])),
            ),
            ("repository:a:pull", Some(scope("repository", "a", &["pull"]))),
            (
                "repository:localhost:5000/lab/x:pull",
                Some(scope("repository", "localhost:5000/lab/x", &["pull"])),
            ),
            ("registry:catalog:*", Some(scope("registry", "catalog", &["*"]))),
            (
                "repository(plugin):p/x:pull",
                Some(scope("repository(plugin)", "p/x", &["pull"])),
            ),
            (
                "repository:a:pull,,push,",
                Some(scope("repository", "a", &["pull", "push"])),
            ),
            ("repository:a:", Some(scope("repository", "a", &[]))),
            ("repository:a", None),
            ("repository", None),
            (":a:pull", None),
            ("repository::pull", None),
            ("", None),
            ("repository:a b:pull", None),
            ("repository:a:pull\n", None),
        ];
        for (input, expected) in cases {
            assert_eq!(Scope::parse(input), expected, "{input:?}");
        }
    }

    #[test]
    fn scopes_round_trip_through_display() {
        for input in [
            "repository:lab/x:pull,push",
            "repository:localhost:5000/x:pull",
            "registry:catalog:*",
        ] {
            assert_eq!(Scope::parse(input).map(|s| s.to_string()).as_deref(), Some(input));
        }
        assert_eq!(
            Scope::repository("lab/x", &["pull", "push"]).to_string(),
            "repository:lab/x:pull,push"
        );
    }

    #[test]
    fn rendered_challenges_quote_and_escape_and_parse_back() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("Basic", &[("realm", "connectors")], r#"Basic realm="connectors""#),
            (
                "Bearer",
                &[("realm", "https://p:8443/token"), ("service", "connectors")],
                r#"Bearer realm="https://p:8443/token",service="connectors""#,
            ),
            ("Basic", &[("realm", r#"a "b" \c"#)], r#"Basic realm="a \"b\" \\c""#),
            (
                "Basic",
                &[("realm", "line\r\nInjected: yes")],
                r#"Basic realm="lineInjected: yes""#,
            ),
            ("Bearer", &[], "Bearer"),
        ];
        for (scheme, params, expected) in cases {
            let rendered = render(scheme, params);
            assert_eq!(rendered, *expected);
            let parsed = parse_challenges([rendered.as_str()]);
            assert_eq!(parsed.len(), 1, "{rendered}");
            if let Some((name, value)) = params.first() {
                let kept: String = value.chars().filter(|c| !c.is_control()).collect();
                assert_eq!(parsed[0].param(name), Some(kept.as_str()), "{rendered}");
            }
        }
    }

    #[test]
    fn hostile_headers_never_panic() {
        let alphabet = [
            'B', 'e', 'a', 'r', '=', '"', '\\', ',', ' ', '\t', 'é', '+', '/', '\u{0}',
        ];
        // Every string of up to four symbols from the alphabet, plus some long ones.
        let mut inputs = vec![String::new()];
        let mut level = vec![String::new()];
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
            inputs.extend(level.iter().cloned());
        }
        inputs.push("\"".repeat(10_000));
        inputs.push("Bearer realm=".repeat(1_000));
        inputs.push(",".repeat(10_000));
        for input in &inputs {
            for c in parse_challenges([input.as_str()]) {
                let _ = (c.realm(), c.scopes(), c.error());
            }
            let _ = Scope::parse(input);
        }
    }
}
