//! The folders are the architecture: every `crate::` reference in `src/`
//! must point at the same layer or one below, and the modules must not
//! import each other in a circle. Read from the source, so a change that
//! breaks the direction fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a file belongs to the first prefix it matches.
const LAYERS: &[(&str, u8)] = &[
    // Depend on nothing above them.
    ("config", 0),
    ("metrics", 0),
    ("clock", 0),
    ("envelope", 0),
    ("sys", 0),
    ("logs", 0),
    // Drivers of a core: sockets and threads around a pure part.
    ("ring/driver", 2),
    ("srp/server", 2),
    ("srp/resolver", 2),
    ("srp/cli", 2),
    ("dns/udp", 2),
    ("dns/handler", 2),
    ("dns/notify", 2),
    ("dns/mod", 2),
    ("zone/io", 2),
    ("state", 2),
    ("cluster", 2),
    // Pure cores.
    ("pool", 1),
    ("zone", 1),
    ("ring", 1),
    ("srp", 1),
    ("dns", 1),
    ("dispatch/driver", 5),
    ("dispatch", 1),
    // What is served: the member table, answers, snapshot, zone files.
    ("catalog", 2),
    // The loop, then the services around it.
    ("updater", 3),
    ("grpc", 4),
    ("page", 4),
    // Roles.
    ("authority", 5),
    ("monitor", 5),
    ("farm", 5),
    ("init", 5),
    ("demo", 6),
    ("admin", 5),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}/")))
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("src/{module}.rs is in no layer: add it to LAYERS in tests/layers.rs"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a/b`; `src/a/mod.rs` → `a/mod`.
fn module_of(src: &Path, file: &Path) -> String {
    file.strip_prefix(src).unwrap().with_extension("").to_string_lossy().replace('\\', "/")
}

/// The module a `crate::a::b::...` path lands in, as a file.
fn target(src: &Path, segments: &[&str]) -> Option<String> {
    for n in (1..=segments.len().min(3)).rev() {
        let base = segments[..n].join("/");
        if src.join(format!("{base}.rs")).exists() {
            return Some(base);
        }
        if src.join(&base).join("mod.rs").exists() {
            return Some(format!("{base}/mod"));
        }
    }
    None
}

/// Every `crate::` path a file names outside its tests, expanded from `use crate::{a, b::c}`.
fn references(text: &str) -> Vec<Vec<String>> {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group; a nested group counts as its prefix.
            let (mut depth, mut item) = (0, String::new());
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    c if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let path: Vec<String> = item.trim().split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
                if !path.is_empty() {
                    out.push(path);
                }
            }
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
    }
    out
}

#[test]
fn dependencies_point_down_and_modules_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut problems = Vec::new();
    // Top-level module → the top-level modules it names.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &all {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer(&module);
        let top = module.split('/').next().unwrap().to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        for path in references(&text) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(to) = target(&src, &segments) else { continue };
            let theirs = layer(&to);
            if theirs > own {
                problems.push(format!("src/{module}.rs (layer {own}) uses crate::{} (src/{to}.rs, layer {theirs})", path.join("::")));
            }
            let to_top = to.split('/').next().unwrap().to_owned();
            if to_top != top {
                graph.entry(top.clone()).or_default().insert(to_top);
            }
        }
    }
    // A circle among top-level modules, found by depth-first search.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut circle = stack[at..].to_vec();
            circle.push(n.to_owned());
            return Some(circle);
        }
        if !done.insert(n.to_owned()) {
            return None;
        }
        stack.push(n.to_owned());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(circle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            problems.push(format!("modules import each other in a circle: {}", circle.join(" → ")));
            break;
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
}

#[test]
fn the_check_sees_references_in_every_form() {
    let text =
        "use crate::{config::Config, pool::{Table}};\nfn f() { crate::clock::unix_ms(); }\n#[cfg(test)]\nmod tests { use crate::demo; }";
    let found: Vec<String> = references(text).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["config::Config", "pool", "clock::unix_ms"]);
}
