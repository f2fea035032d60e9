//! The library's layers import only downwards: policy ← kernel ← daemon ← features ← cli, and no
//! modules depend on each other in a cycle. Reads the source tree and fails naming the file and
//! the upward import, or the modules of each cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The layers, bottom up: a module may use its own layer and those before it.
const LAYERS: [&str; 5] = ["policy", "kernel", "daemon", "features", "cli"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` before its unit tests, without `//` comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module a source file is, as a path inside the crate (`daemon/config/mod.rs` is
/// `daemon::config`); `None` for the crate roots.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [root] if root == "lib" || root == "main" => None,
        _ => Some(parts.join("::")),
    }
}

/// Reads one use tree (`a::b`, `a::{b, c::{d, e}}`, `a::B as C`) from `rest`, appending every
/// full path it names to `out`, each prefixed with `prefix`.
fn use_tree(rest: &str, prefix: &str, out: &mut Vec<String>) {
    let mut path = prefix.to_string();
    let mut rest = rest;
    loop {
        rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            for item in group_items(group) {
                use_tree(item, &path, out);
            }
            return;
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&ident);
        rest = rest[ident.len()..].trim_start();
        match rest.strip_prefix("::") {
            Some(more) => rest = more,
            None => break,
        }
    }
    if !path.is_empty() && path != prefix {
        out.push(path);
    }
}

/// The comma-separated items of a `{...}` group whose opening brace was just read.
fn group_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 1;
    let mut start = 0;
    for (at, ch) in group.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 1 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
        if depth == 0 {
            items.push(&group[start..at]);
            break;
        }
    }
    items
}

/// Every path `code` names through `keyword::` (`crate` or `super`), in full, each prefixed
/// with `base` (the crate root for `crate`, the parent module for `super`).
fn paths_after(code: &str, keyword: &str, base: &str, out: &mut Vec<String>) {
    let needle = format!("{keyword}::");
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        let glued = code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !glued {
            use_tree(&code[from..], base, out);
        }
    }
}

/// The full paths (inside the crate) that the code of module `module` names.
fn referenced_paths(code: &str, module: &str) -> Vec<String> {
    let mut found = Vec::new();
    paths_after(code, "crate", "", &mut found);
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    paths_after(code, "super", parent, &mut found);
    found
}

/// The module a path names: its longest prefix that is a module.
fn owning_module<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .find_map(|n| modules.get(&segments[..n].join("::")))
}

/// Each cycle of the graph, as the modules along it (the first repeated at the end).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(at) = stack.iter().position(|n| n == next) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(next.clone());
                found.push(cycle);
            } else if !done.contains(next) {
                visit(next, graph, done, stack, found);
            }
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !done.contains(node) {
            visit(node, graph, &mut done, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// Per module of `src`, the paths its code names.
fn source_modules(src: &Path) -> BTreeMap<String, (PathBuf, Vec<String>)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src").to_path_buf();
        let Some(module) = module_of(&relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source file");
        let paths = referenced_paths(&code(&text), &module);
        modules.insert(module, (relative, paths));
    }
    modules
}

/// Module → the other modules it uses, leaving out its own ancestors (a child naming its
/// parent's items is how Rust nests modules, not a dependency between peers).
fn module_graph(
    modules: &BTreeMap<String, (PathBuf, Vec<String>)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, (_, paths))| {
            let uses = paths
                .iter()
                .filter_map(|path| owning_module(path, &names))
                .filter(|used| *used != module && !module.starts_with(&format!("{used}::")))
                .cloned()
                .collect();
            (module.clone(), uses)
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_layer_imports_only_from_layers_below_it() {
    let modules = source_modules(&src());
    let mut checked = 0;
    let mut upward = Vec::new();
    for (module, (relative, paths)) in &modules {
        let layer = module.split("::").next().unwrap_or_default();
        let own = rank(layer).unwrap_or_else(|| {
            panic!(
                "{} is outside the layer folders {LAYERS:?}",
                relative.display()
            )
        });
        checked += 1;
        for path in paths {
            let used = path.split("::").next().unwrap_or_default();
            if rank(used).is_some_and(|r| r > own) {
                upward.push(format!("{} uses crate::{path}", relative.display()));
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} modules found under {}",
        src().display()
    );
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_modules_depend_on_each_other_in_a_cycle() {
    let graph = module_graph(&source_modules(&src()));
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges >= 100, "only {edges} module dependencies found");
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "modules that depend on each other in a cycle (move the shared item down or split \
         the module):\n{}",
        found
            .iter()
            .map(|cycle| cycle.join(" → "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_inline_and_parent_paths() {
    let code = "use crate::{\n    kernel::maps::FilterMaps,\n    policy::{Mode, verdict::{X, Y as Z}},\n};\nfn f() { crate::cli::run(); super::engine::go(); my_crate::no(); }";
    assert_eq!(
        referenced_paths(code, "daemon::hooks"),
        [
            "kernel::maps::FilterMaps",
            "policy::Mode",
            "policy::verdict::X",
            "policy::verdict::Y",
            "cli::run",
            "daemon::engine::go",
        ]
    );
}

#[test]
fn the_checker_finds_a_cycle_through_three_modules_and_not_a_child_using_its_parent() {
    let module = |name: &str, paths: &[&str]| {
        (
            name.to_string(),
            (
                PathBuf::from(name),
                paths.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ),
        )
    };
    let modules: BTreeMap<_, _> = [
        module("daemon::a", &["daemon::b::Item"]),
        module("daemon::b", &["daemon::c::f"]),
        module("daemon::c", &["daemon::a::CONST", "policy::Mode"]),
        module("daemon::config", &["daemon::config::etcd::Etcd"]),
        module("daemon::config::etcd", &["daemon::config::article"]),
        module("policy", &[]),
    ]
    .into_iter()
    .collect();
    let found = cycles(&module_graph(&modules));
    assert_eq!(
        found,
        [vec!["daemon::a", "daemon::b", "daemon::c", "daemon::a"]]
    );
}
