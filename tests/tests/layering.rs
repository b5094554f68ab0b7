//! The crates' modules import one another in one direction (docs/ARCHITECTURE.md): no module
//! of a crate reaches, through its imports, back to itself. A circle makes two modules one
//! concept in two files, and a newcomer cannot read either first.
//!
//! A module is a file under a crate's `src/` (a directory's files count as its module, so
//! `net/link.rs` is part of `net`). Its imports are the `crate::name` paths in its code;
//! comments, doc links and its `#[cfg(test)]` module are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules must not import in a circle, from the workspace's root.
const CRATES: [&str; 6] = ["protocol", "crdt", "netsim", "node/daemon", "node/client", "node/meshwork"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a file under `src` belongs to: `queue.rs` is `queue`, `net/link.rs`
/// and `net/mod.rs` are `net`; `lib.rs` and `main.rs` are the crate root (`None`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The code of a file without its comments and its test module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The first segments of the `crate::` paths in `code`, `crate::{a::X, b}` included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (index, _) in code.match_indices("crate::") {
        let rest = &code[index + "crate::".len()..];
        let heads: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
            None => vec![rest],
        };
        for head in heads {
            let name: String =
                head.trim().chars().take_while(|char| char.is_ascii_alphanumeric() || *char == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Each module of the crate at `src` and the other modules of that crate it imports.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|file| module_of(src, file)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> =
        modules.iter().map(|name| (name.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(module) = module_of(src, file) else { continue };
        if file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
        let imports = crate_paths(&code_of(&text));
        let edges = graph.get_mut(&module).expect("every module is in the graph");
        edges.extend(imports.into_iter().filter(|name| *name != module && modules.contains(name)));
    }
    graph
}

/// A path of imports from `from` back to itself, if there is one.
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty");
        for next in &graph[last] {
            if next == from {
                let mut circle = path.clone();
                circle.push(next.clone());
                return Some(circle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_itself_through_others() {
    let mut circles = Vec::new();
    for krate in CRATES {
        let src = workspace_root().join(krate).join("src");
        let graph = import_graph(&src);
        assert!(!graph.is_empty(), "{krate} has modules to check");
        for module in graph.keys() {
            if let Some(circle) = circle_through(&graph, module) {
                circles.push(format!("{krate}: {}", circle.join(" -> ")));
            }
        }
    }
    assert!(circles.is_empty(), "modules that import themselves through others:\n{}", circles.join("\n"));
}

/// The check sees what it must: imports in groups, and not comments or test modules.
#[test]
fn imports_are_read_from_code_only() {
    let code = code_of(
        "use crate::queue::Actor;\nuse crate::{net::Link, clock};\n/// [`x`]: crate::docs_only\n\
         let a = 1; // crate::trailing\n#[cfg(test)]\nmod tests {\n    use crate::tested;\n}\n",
    );
    let names: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(names, ["clock", "net", "queue"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
        ("d".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(circle_through(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(circle_through(&graph, "d"), None);
}
