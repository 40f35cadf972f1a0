//! The workspace's shape, checked: which crate may depend on which (normal
//! dependencies, from `cargo metadata`), no import circles between the
//! modules of a crate, and no production source file that has outgrown
//! being read in one sitting.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate and the workspace crates it must never depend on.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "serving",
        &[
            "connector",
            "certs",
            "registry",
            "access",
            "proxy",
            "webhook",
            "csi",
            "controller",
            "testing",
        ],
    ),
    (
        "connector",
        &[
            "certs",
            "registry",
            "access",
            "proxy",
            "webhook",
            "csi",
            "controller",
            "testing",
        ],
    ),
    (
        "certs",
        &["registry", "access", "proxy", "webhook", "csi", "controller", "testing"],
    ),
    ("registry", &["proxy", "webhook", "csi", "controller", "testing"]),
    (
        "access",
        &["registry", "proxy", "webhook", "csi", "controller", "testing"],
    ),
    (
        "webhook",
        &["registry", "access", "proxy", "csi", "controller", "testing"],
    ),
    ("csi", &["registry", "proxy", "webhook", "controller", "testing"]),
    ("controller", &["proxy", "webhook", "csi", "testing"]),
    ("proxy", &["webhook", "csi", "controller", "testing"]),
];

/// The root package: the binary, which nothing may depend on.
const ROOT: &str = "connectors";

/// The longest a production source file may be, in lines before its
/// in-file test module.
const MAX_LINES: usize = 800;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Workspace package name → its normal dependencies on workspace packages.
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let metadata = support::workspace_metadata();
    let packages = metadata["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|name| names.contains(*name))
                .map(str::to_owned)
                .collect();
            (package["name"].as_str().unwrap_or_default().to_owned(), dependencies)
        })
        .collect()
}

#[test]
fn crates_depend_only_in_the_allowed_directions() {
    let dependencies = workspace_dependencies();
    let mut broken = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        let Some(actual) = dependencies.get(*krate) else {
            broken.push(format!("{krate} is not in the workspace"));
            continue;
        };
        for dependency in actual.iter().filter(|d| forbidden.contains(&d.as_str())) {
            broken.push(format!("{krate} depends on {dependency}"));
        }
    }
    for (krate, actual) in &dependencies {
        if actual.contains(ROOT) {
            broken.push(format!("{krate} depends on the root package"));
        }
    }
    assert!(broken.is_empty(), "dependency rules broken:\n{}", broken.join("\n"));
}

/// The source folders of the workspace's library crates and the binary.
fn source_dirs() -> Vec<(String, PathBuf)> {
    let root = workspace_root();
    let mut dirs: Vec<(String, PathBuf)> = FORBIDDEN
        .iter()
        .map(|(krate, _)| (krate.to_string(), root.join(krate).join("src")))
        .collect();
    dirs.push((ROOT.to_owned(), root.join("src")));
    dirs
}

/// The top-level module a file of `src` belongs to (`lib`/`main` for the
/// crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    first.unwrap_or_default().trim_end_matches(".rs").to_owned()
}

/// The top-level modules a text names through `crate::<module>`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let preceded_by_ident = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if preceded_by_ident {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(name);
        }
        // `crate::{a, b::c}`
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// A circle in `edges`, if there is one, as the modules along it.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(circle);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    for (krate, src) in source_dirs() {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let files = support::rust_files(&src);
        assert!(!files.is_empty(), "{krate}: no sources in {}", src.display());
        let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
        for file in &files {
            let module = module_of(&src, file);
            if module == "lib" || module == "main" {
                continue;
            }
            let code: String = support::production_text(file)
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let targets: Vec<String> = crate_references(&code)
                .into_iter()
                .filter(|target| *target != module && modules.contains(target))
                .collect();
            edges.entry(module).or_default().extend(targets);
        }
        if let Some(circle) = find_circle(&edges) {
            circles.push(format!("{krate}: {}", circle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn circles_are_found_where_they_are() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(find_circle(&edges).unwrap(), ["a", "b", "c", "a"]);
    let acyclic: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned(), "c".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
    ]
    .into();
    assert_eq!(find_circle(&acyclic), None);
    assert_eq!(
        crate_references("use crate::route::{self, Route};\nuse crate::{error, body::X};\nfoo::crate::no"),
        ["body", "error", "route"].map(str::to_owned).into()
    );
}

#[test]
fn no_production_source_file_is_too_long_to_read() {
    let mut long = Vec::new();
    for (krate, src) in source_dirs() {
        for file in support::rust_files(&src) {
            let lines = support::production_text(&file).lines().count();
            if lines > MAX_LINES {
                long.push(format!("{krate}: {} has {lines} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these along their seams (at most {MAX_LINES} lines before the test module):\n{}",
        long.join("\n")
    );
}
