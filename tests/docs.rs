//! The documentation, checked against the tree it describes: every relative
//! link of the project's Markdown points at a file that exists (an anchor at
//! a heading there, by GitHub's slug rules), CHANGELOG.md's newest release is
//! the version the workspace and the chart carry, and every message
//! `docs/troubleshooting.md` quotes after `Message:` is one that a string of
//! the product's source can produce, `{…}` standing for what varies.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()))
}

/// The Markdown whose links are checked: the top-level documents, `docs/`,
/// and the chart's README when there is one.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut documents: Vec<PathBuf> = ["README.md", "SECURITY.md", "CHANGELOG.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is listable")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    documents.extend(docs);
    let chart_readme = root.join("charts/connectors/README.md");
    if chart_readme.exists() {
        documents.push(chart_readme);
    }
    documents
}

// ---------------------------------------------------------------------------
// Markdown: prose lines, code spans, links, headings.

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<(char, usize)> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |m| trimmed.chars().take_while(|c| *c == m).count());
        match (fence, marker) {
            (None, Some(m)) if run >= 3 => fence = Some((m, run)),
            (Some((m, open)), Some(c)) if c == m && run >= open && trimmed[run..].trim().is_empty() => fence = None,
            (None, _) => lines.push((index + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The code spans of a line (CommonMark: a run of backticks closed by a run
/// of the same length), as (byte start, byte end, content).
fn code_spans(line: &str) -> Vec<(usize, usize, String)> {
    let bytes = line.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'`' {
            at += 1;
            continue;
        }
        let open = bytes[at..].iter().take_while(|b| **b == b'`').count();
        let content_start = at + open;
        let mut search = content_start;
        let mut closed = None;
        while search < bytes.len() {
            if bytes[search] == b'`' {
                let run = bytes[search..].iter().take_while(|b| **b == b'`').count();
                if run == open {
                    closed = Some(search);
                    break;
                }
                search += run;
            } else {
                search += 1;
            }
        }
        match closed {
            Some(close) => {
                let mut content = &line[content_start..close];
                if content.len() >= 2 && content.starts_with(' ') && content.ends_with(' ') {
                    content = &content[1..content.len() - 1];
                }
                spans.push((at, close + open, content.to_owned()));
                at = close + open;
            }
            None => at = content_start,
        }
    }
    spans
}

/// A line with its code spans blanked out (their text is no link).
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for (start, end, _) in code_spans(line) {
        out.push_str(&line[at..start]);
        at = end;
    }
    out.push_str(&line[at..]);
    out
}

/// The link targets of a prose line: inline links and images
/// (`[text](target "title")`, `[text](<target>)`) and reference definitions
/// (`[label]: target`).
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(close) = trimmed.find("]:")
        && !trimmed[..close].contains("](")
    {
        if let Some(target) = trimmed[close + 2..].split_whitespace().next() {
            targets.push(target.trim_matches(['<', '>']).to_owned());
        }
        return targets;
    }
    let mut rest = line.as_str();
    while let Some(open) = rest.find("](") {
        let after = &rest[open + 2..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let inside = after[..end].trim();
        let target = if let Some(bracketed) = inside.strip_prefix('<') {
            bracketed.split('>').next().unwrap_or_default()
        } else {
            inside.split_whitespace().next().unwrap_or_default()
        };
        if !target.is_empty() {
            targets.push(target.to_owned());
        }
        rest = &after[end.min(after.len())..];
    }
    targets
}

/// Heading text as GitHub renders it: link targets, emphasis, code marks
/// and HTML tags dropped.
fn heading_text(raw: &str) -> String {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ']' if chars.peek() == Some(&'(') => {
                for skipped in chars.by_ref() {
                    if skipped == ')' {
                        break;
                    }
                }
            }
            '<' => {
                for skipped in chars.by_ref() {
                    if skipped == '>' {
                        break;
                    }
                }
            }
            '[' | '`' | '*' => {}
            other => text.push(other),
        }
    }
    text
}

/// GitHub's anchor for a heading: lower case; letters, digits, `-` and `_`
/// kept; spaces become `-`; everything else dropped.
fn slug(heading: &str) -> String {
    heading_text(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a Markdown text offers: one per heading (ATX and setext; a
/// repeated slug gets `-1`, `-2`, … as on GitHub) and explicit HTML ids.
fn anchors(text: &str) -> BTreeSet<String> {
    let lines = prose_lines(text);
    let mut headings = Vec::new();
    for (i, (number, line)) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if indent <= 3 && (1..=6).contains(&hashes) && trimmed[hashes..].starts_with([' ', '\t']) {
            let heading = trimmed[hashes..].trim().trim_end_matches('#').trim_end();
            headings.push(heading.to_owned());
            continue;
        }
        let next = lines
            .get(i + 1)
            .filter(|(n, _)| *n == number + 1)
            .map(|(_, l)| l.trim());
        let underline = next.is_some_and(|n| {
            !n.is_empty() && (n.chars().all(|c| c == '=') || (n.len() >= 2 && n.chars().all(|c| c == '-')))
        });
        let paragraph = !trimmed.is_empty()
            && indent <= 3
            && !trimmed.starts_with(['#', '|', '-', '*', '>', '+'])
            && !trimmed.starts_with(|c: char| c.is_ascii_digit());
        if underline && paragraph {
            headings.push(trimmed.trim().to_owned());
        }
    }
    let mut found = BTreeSet::new();
    for heading in headings {
        let base = slug(&heading);
        let mut candidate = base.clone();
        let mut n = 0;
        while found.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        found.insert(candidate);
    }
    for (_, line) in lines {
        for key in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(key) {
                rest = &rest[at + key.len()..];
                if let Some(end) = rest.find('"') {
                    found.insert(rest[..end].to_owned());
                }
            }
        }
    }
    found
}

/// `%XX` escapes decoded (links to files with spaces, anchors with
/// non-ASCII letters).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a link target of `document` is broken, if it is.
fn broken(document: &Path, target: &str) -> Option<String> {
    let has_scheme = target.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if has_scheme || target.starts_with("//") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(percent_decoded(anchor))),
        None => (target, None),
    };
    let path = percent_decoded(path);
    let file = if path.is_empty() {
        document.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        root().join(from_root)
    } else {
        document.parent().unwrap_or(Path::new(".")).join(&path)
    };
    if !file.exists() {
        return Some(format!("{target}: {} does not exist", file.display()));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if file.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let offered = anchors(&read(&file));
    (!offered.contains(&anchor)).then(|| format!("{target}: no heading in {} has the anchor #{anchor}", file.display()))
}

#[test]
fn relative_links_point_at_files_and_headings_that_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = read(&document);
        let name = document.strip_prefix(root()).unwrap_or(&document).display().to_string();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                checked += 1;
                if let Some(problem) = broken(&document, &target) {
                    problems.push(format!("{name}:{number}: {problem}"));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the link syntax still read?"
    );
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn anchors_follow_githubs_slug_rules() {
    let cases: &[(&str, &str)] = &[
        (
            "Connectors, annotations and labels",
            "connectors-annotations-and-labels",
        ),
        ("The proxy (reverse mode)", "the-proxy-reverse-mode"),
        ("A real node (`tests/node.rs`)", "a-real-node-testsnoders"),
        ("Coming from imagePullSecrets", "coming-from-imagepullsecrets"),
        (
            "ImagePullBackOff: 401 / 403 from the proxy",
            "imagepullbackoff-401--403-from-the-proxy",
        ),
        ("`connectors_proxy` and **bold**", "connectors_proxy-and-bold"),
        ("See [the chart](charts/connectors)", "see-the-chart"),
        ("Über *Änderungen*", "über-änderungen"),
    ];
    for (heading, want) in cases {
        assert_eq!(slug(heading), *want, "{heading}");
    }
    let text =
        "# Top\n\n## Same\n\n```sh\n# not a heading\n```\n\n## Same\n\nSetext\n------\n\n<a name=\"here\"></a>\n";
    let found = anchors(text);
    for want in ["top", "same", "same-1", "setext", "here"] {
        assert!(found.contains(want), "{want} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"), "{found:?}");
}

#[test]
fn links_are_read_from_prose_only() {
    let cases: &[(&str, &[&str])] = &[
        (
            "see [the docs](docs/a.md) and [b](b.md#x \"title\")",
            &["docs/a.md", "b.md#x"],
        ),
        (
            "an image ![x](img/a.png), a link [`code`](c.md)",
            &["img/a.png", "c.md"],
        ),
        ("`[not](a-link.md)` but [this](<with space.md>)", &["with space.md"]),
        ("[ref]: ../other.md#part", &["../other.md#part"]),
        ("[nested (parens)](a_(b).md)", &["a_(b).md"]),
    ];
    for (line, want) in cases {
        assert_eq!(link_targets(line), *want, "{line}");
    }
    let fenced = "before [a](a.md)\n```md\n[b](b.md)\n```\nafter [c](c.md)\n";
    let targets: Vec<String> = prose_lines(fenced)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .collect();
    assert_eq!(targets, ["a.md", "c.md"]);
}

// ---------------------------------------------------------------------------
// Versions.

/// The version of the first release below `## [Unreleased]`.
fn changelog_release(text: &str) -> (bool, Option<String>) {
    let mut unreleased_first = false;
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix("## ") else {
            continue;
        };
        let title = heading.trim().trim_start_matches('[');
        let version = title
            .split(|c: char| c == ']' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if version.eq_ignore_ascii_case("unreleased") {
            unreleased_first = true;
            continue;
        }
        return (unreleased_first, Some(version.trim_start_matches('v').to_owned()));
    }
    (unreleased_first, None)
}

/// `[workspace.package] version` of the root Cargo.toml.
fn workspace_version() -> String {
    let manifest = read(&root().join("Cargo.toml"));
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(value) = line.strip_prefix("version") {
            return value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_owned();
        }
    }
    panic!("Cargo.toml has no [workspace.package] version");
}

/// A top-level key of Chart.yaml, unquoted, without a leading `v`.
fn chart_field(key: &str) -> String {
    let chart = read(&root().join("charts/connectors/Chart.yaml"));
    chart
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| {
            value
                .split(" #")
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches(['"', '\''])
        })
        .map(|value| value.trim_start_matches('v').to_owned())
        .unwrap_or_else(|| panic!("Chart.yaml has no {key}"))
}

#[test]
fn the_changelogs_newest_release_is_the_version_the_workspace_and_the_chart_carry() {
    let changelog = read(&root().join("CHANGELOG.md"));
    let (unreleased_first, release) = changelog_release(&changelog);
    assert!(unreleased_first, "CHANGELOG.md opens with an `## [Unreleased]` section");
    let release = release.expect("CHANGELOG.md names a release");
    let workspace = workspace_version();
    assert_eq!(release, workspace, "CHANGELOG.md's newest release against Cargo.toml");
    assert_eq!(
        chart_field("appVersion"),
        workspace,
        "Chart.yaml appVersion against Cargo.toml"
    );
    assert_eq!(
        chart_field("version"),
        workspace,
        "Chart.yaml version (it follows the product's)"
    );
}

#[test]
fn changelog_releases_are_read_below_unreleased() {
    let text = "# Changelog\n\n## [Unreleased]\n\n### Added\n\n## [v1.4.0] - 2026-01-02\n\n## [1.3.0] - 2025-01-01\n";
    assert_eq!(changelog_release(text), (true, Some("1.4.0".to_owned())));
    assert_eq!(
        changelog_release("## 0.9.1 - 2025-01-01\n"),
        (false, Some("0.9.1".to_owned()))
    );
}

// ---------------------------------------------------------------------------
// Troubleshooting messages against the product's strings.

/// The messages quoted after `Message:` in a text: the first code span
/// after each marker (a marker inside a code span is none), with its line
/// number.
fn quoted_messages(text: &str) -> Vec<(usize, String)> {
    const MARKER: &str = "Message:";
    let mut messages = Vec::new();
    for (number, line) in prose_lines(text) {
        let spans = code_spans(line);
        let mut from = 0;
        while let Some(found) = line[from..].find(MARKER) {
            let at = from + found;
            from = at + MARKER.len();
            if spans.iter().any(|(start, end, _)| (*start..*end).contains(&at)) {
                continue;
            }
            if let Some((_, end, content)) = spans.iter().find(|(start, _, _)| *start >= from) {
                messages.push((number, content.clone()));
                from = *end;
            }
        }
    }
    messages
}

/// A quoted message split into its literal parts and the `{…}` holes
/// between them (`None`).
fn message_parts(message: &str) -> Vec<Option<String>> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c == '{' {
            parts.push(Some(std::mem::take(&mut literal)));
            for inner in chars.by_ref() {
                if inner == '}' {
                    break;
                }
            }
            parts.push(None);
        } else {
            literal.push(c);
        }
    }
    parts.push(Some(literal));
    parts.retain(|p| p.as_ref().is_none_or(|l| !l.is_empty()));
    parts
}

/// Whether `source` (one string of the product) contains `message`, each
/// hole standing for at least one character.
fn produces(source: &str, parts: &[Option<String>]) -> bool {
    let mut at = 0;
    let mut hole = false;
    for part in parts {
        let Some(literal) = part else {
            hole = true;
            continue;
        };
        let mut start = at;
        if hole {
            match source[at..].chars().next() {
                Some(c) => start += c.len_utf8(),
                None => return false,
            }
        }
        match source[start..].find(literal.as_str()) {
            Some(found) => at = start + found + literal.len(),
            None => return false,
        }
        hole = false;
    }
    !hole || at < source.len()
}

/// The string literals of Rust source, unescaped, with format strings'
/// `{{`/`}}` read as braces. Comments and character literals are skipped.
fn string_literals(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    let identifier = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            if next == Some('\\') {
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && (i == 0 || !identifier(chars[i - 1])) && {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
            chars.get(start + hashes) == Some(&'"')
        } {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
            let mut j = start + hashes + 1;
            let mut literal = String::new();
            while j < chars.len() {
                if chars[j] == '"' && chars[j + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes {
                    break;
                }
                literal.push(chars[j]);
                j += 1;
            }
            literals.push(literal);
            i = j + 1 + hashes;
        } else if c == '"' {
            let mut j = i + 1;
            let mut literal = String::new();
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                    match chars.get(j) {
                        Some('n') => literal.push('\n'),
                        Some('t') => literal.push('\t'),
                        Some('r') => literal.push('\r'),
                        Some('0') => literal.push('\0'),
                        Some('\n') => {
                            while chars.get(j + 1).is_some_and(|c| c.is_whitespace()) {
                                j += 1;
                            }
                        }
                        Some('u') => {
                            let end = chars[j..].iter().position(|c| *c == '}').map_or(j, |p| j + p);
                            let hex: String = chars[j + 2..end].iter().collect();
                            if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                literal.push(c);
                            }
                            j = end;
                        }
                        Some('x') => {
                            let hex: String = chars[j + 1..(j + 3).min(chars.len())].iter().collect();
                            if let Ok(byte) = u8::from_str_radix(&hex, 16) {
                                literal.push(byte as char);
                            }
                            j += 2;
                        }
                        Some(other) => literal.push(*other),
                        None => {}
                    }
                } else {
                    literal.push(chars[j]);
                }
                j += 1;
            }
            literals.push(literal);
            i = j + 1;
        } else {
            i += 1;
        }
    }
    literals
        .into_iter()
        .map(|l| l.replace("{{", "{").replace("}}", "}"))
        .collect()
}

/// The `src/` folders of the workspace's product crates (every member but
/// the test-support crate) and the binary.
fn product_source_dirs() -> Vec<PathBuf> {
    let metadata = support::workspace_metadata();
    let mut dirs: Vec<PathBuf> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|package| package["name"] != "testing")
        .filter_map(|package| {
            Path::new(package["manifest_path"].as_str()?)
                .parent()
                .map(|d| d.join("src"))
        })
        .filter(|dir| dir.is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

#[test]
fn troubleshooting_messages_are_ones_the_product_can_say() {
    let text = read(&root().join("docs/troubleshooting.md"));
    let messages = quoted_messages(&text);
    assert!(
        messages.len() >= 20,
        "only {} `Message:` quotes found in docs/troubleshooting.md",
        messages.len()
    );
    let literals: Vec<String> = product_source_dirs()
        .iter()
        .flat_map(|dir| support::rust_files(dir))
        .flat_map(|file| string_literals(&support::production_text(&file)))
        .collect();
    let mut unknown = Vec::new();
    for (number, message) in &messages {
        let parts = message_parts(message);
        let fixed: usize = parts.iter().flatten().map(|l| l.trim().len()).sum();
        if fixed < 8 {
            unknown.push(format!("line {number}: `{message}` says too little to be checked"));
        } else if !literals.iter().any(|source| produces(source, &parts)) {
            unknown.push(format!("line {number}: `{message}`"));
        }
    }
    assert!(
        unknown.is_empty(),
        "docs/troubleshooting.md quotes messages no string of the product's source produces:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn messages_match_sources_with_holes_as_wildcards() {
    let source = "connector {key} does not exist (named by {source_of})";
    let cases: &[(&str, bool)] = &[
        ("connector {connector} does not exist (named by {where})", true),
        ("connector {c} does not exist", true),
        ("{anything} does not exist (named by {x})", true),
        ("connector team-a/harbor does not exist", false),
        ("connector {c} does not exists", false),
        ("connector {c} does not exist (named by {x}) today", false),
    ];
    for (message, want) in cases {
        assert_eq!(produces(source, &message_parts(message)), *want, "{message}");
    }
    let trailing = message_parts("connectors: pod {namespace}/{pod}: {reason}");
    assert!(produces("connectors: pod {namespace}/{pod}: {error}", &trailing));
    assert!(
        !produces("connectors: pod {namespace}/{pod}: ", &trailing),
        "a hole needs text"
    );
    let quoted = quoted_messages(
        "- Message: `a {x} b` and then `not this`\n- Message: `` with `ticks` ``\nthe `Message:` marker, then `not this`\n",
    );
    assert_eq!(quoted, [(1, "a {x} b".to_owned()), (2, "with `ticks`".to_owned())]);
}

#[test]
fn string_literals_are_read_as_the_compiler_reads_them() {
    let source = r####"
        // "a comment"
        /* "a block /* nested */ comment" */
        let c = '"';
        let q = '\'';
        fn f<'a>(x: &'a str) {}
        #[error("secret {0}: key {1:?} is not UTF-8")]
        let raw = r#"raw "quoted" {x}"#;
        let escaped = "line \"one\"\n\
                       two {{literal}} {hole}";
    "####;
    assert_eq!(
        string_literals(source),
        [
            "secret {0}: key {1:?} is not UTF-8",
            "raw \"quoted\" {x}",
            "line \"one\"\ntwo {literal} {hole}",
        ]
    );
}
