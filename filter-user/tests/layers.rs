//! The library's layers import only downwards: policy ← kernel ← daemon ← features ← cli.
//! Reads the source tree and fails naming the file and the upward import.

use std::path::{Path, PathBuf};

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

/// Top-level modules named by `crate::X` paths and by the first segment of every item of
/// `use crate::{...}` groups.
fn referenced_layers(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && ch == ',') {
                    found.push(first_segment(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(ch);
                }
            }
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_layer_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(layer) = relative.iter().next().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some(own) = rank(layer) else {
            // lib.rs and main.rs sit above every layer.
            assert!(
                matches!(layer, "lib.rs" | "main.rs"),
                "{} is outside the layer folders {LAYERS:?}",
                relative.display()
            );
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).expect("read source file");
        for used in referenced_layers(&code(&text)) {
            if rank(&used).is_some_and(|r| r > own) {
                upward.push(format!("{} uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} modules found under {}",
        src.display()
    );
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let code = "use crate::{\n    kernel::maps::FilterMaps,\n    policy::{Mode, verdict::X},\n};\nfn f() { crate::cli::run(); }";
    assert_eq!(referenced_layers(code), ["kernel", "policy", "cli"]);
}
