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
    ("backoff", 0),
    ("files", 0),
    ("envelope", 0),
    ("sys", 0),
    ("logs", 0),
    // Drivers of a core: sockets and threads around a pure part.
    ("ring/driver", 2),
    ("srp/server", 2),
    ("srp/resolver", 2),
    ("srp/cli", 2),
    ("dns/udp", 2),
    ("dns/tcp", 2),
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
    ("dispatch/control", 5),
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

/// The module a path of segments from `src/` lands in, as a file.
fn target(src: &Path, segments: &[&str]) -> Option<String> {
    for n in (1..=segments.len().min(4)).rev() {
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

/// The folder a module's own children live in, as segments from `src/`:
/// `a/mod` → `a`; `a/b` → `a/b`.
fn own_dir(module: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = module.split('/').collect();
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    parts
}

/// The module a path in `module` names, resolved from where it starts:
/// `crate::`, `super::` (any number), `self::`, or a child module of
/// `module` named bare (`use handler::X;` in `dns/mod.rs`).
fn resolve(src: &Path, module: &str, path: &[String]) -> Option<String> {
    let mut base = own_dir(module);
    let mut rest: &[String] = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A bare first segment is a child module, or something else
            // (std, an external crate, a local item): only children count.
            let mut child = base.clone();
            child.push(first);
            let dir = src.join(child.join("/"));
            if !dir.with_extension("rs").exists() && !dir.join("mod.rs").exists() {
                return None;
            }
        }
        None => return None,
    }
    let segments: Vec<&str> = base.iter().copied().chain(rest.iter().map(String::as_str)).collect();
    if segments.is_empty() {
        return None;
    }
    target(src, &segments)
}

/// Items of a `{...}` group that starts `group`; a nested group counts as its prefix.
fn group_items(group: &str) -> Vec<String> {
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
    items
}

fn segments_of(item: &str) -> Vec<String> {
    item.trim().split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

/// Every path a file names outside its tests, as written: `crate::`,
/// `super::` and `self::` paths anywhere, and `use` paths of any start
/// (groups expanded: `use crate::{a, b::c}`, `use super::{x, y}`).
fn references(text: &str) -> Vec<Vec<String>> {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (at, _) in text.match_indices(['c', 's', 'u']) {
        let rest = &text[at..];
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let (prefix, rest) = if let Some(r) = rest.strip_prefix("use ") {
            let r = r.trim_start();
            let r = r.strip_prefix("::").unwrap_or(r);
            (Vec::new(), r)
        } else if ["crate::", "super::", "self::"].iter().any(|p| rest.starts_with(*p)) {
            // Paths after `use` are taken there; this is a path in an expression or a type.
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            if text[line_start..at].trim_start().starts_with("use ") || text[line_start..at].trim_start().starts_with("pub use ") {
                continue;
            }
            (Vec::new(), rest)
        } else {
            continue;
        };
        let head: String = rest.chars().take_while(|c| ident(*c)).collect();
        let mut path = prefix;
        path.extend(segments_of(&head));
        let after = &rest[head.len()..];
        if let Some(group) = after.strip_prefix('{') {
            for item in group_items(group) {
                let mut p = path.clone();
                p.extend(segments_of(&item));
                if !p.is_empty() {
                    out.push(p);
                }
            }
        } else if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

#[test]
fn dependencies_point_down_and_modules_import_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut problems = Vec::new();
    // Top-level module → the top-level modules it names; and file → the
    // files it names inside its own top-level module, leaving out its
    // ancestors (a child is part of its parent: `impl Parent` in a child
    // file, `super::Parent` in its imports).
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &all {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer(&module);
        let top = module.split('/').next().unwrap().to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        for path in references(&text) {
            let Some(to) = resolve(&src, &module, &path) else { continue };
            if to == module {
                continue;
            }
            let theirs = layer(&to);
            if theirs > own {
                problems.push(format!("src/{module}.rs (layer {own}) uses {} (src/{to}.rs, layer {theirs})", path.join("::")));
            }
            let to_top = to.split('/').next().unwrap().to_owned();
            if to_top != top {
                graph.entry(top.clone()).or_default().insert(to_top);
            } else if !ancestor(&to, &module) {
                inner.entry(module.clone()).or_default().insert(to);
            }
        }
    }
    for (what, g) in [("modules", &graph), ("files", &inner)] {
        let mut done = BTreeSet::new();
        for n in g.keys() {
            if let Some(circle) = visit(n, g, &mut Vec::new(), &mut done) {
                problems.push(format!("{what} import each other in a circle: {}", circle.join(" → ")));
                break;
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
}

/// Whether `a` (a `mod.rs`) is the module `b` sits inside.
fn ancestor(a: &str, b: &str) -> bool {
    a.strip_suffix("/mod").is_some_and(|dir| b.starts_with(&format!("{dir}/")))
}

/// A circle through `n`, found by depth-first search.
fn visit(n: &str, graph: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
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

#[test]
fn the_check_sees_references_in_every_form() {
    let text = "use crate::{config::Config, pool::{Table}};\nuse super::fast::{edns_malformed, question_malformed};\nuse handler::DnsHandler;\n\
                fn f() { crate::clock::unix_ms(); super::wire::UDP_PAYLOAD; }\n#[cfg(test)]\nmod tests { use crate::demo; }";
    let found: Vec<String> = references(text).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::config::Config",
            "crate::pool",
            "super::fast::edns_malformed",
            "super::fast::question_malformed",
            "handler::DnsHandler",
            "crate::clock::unix_ms",
            "super::wire::UDP_PAYLOAD"
        ]
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let path = |p: &str| p.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(resolve(&src, "dns/handler", &path("super::wire::UDP_PAYLOAD")).as_deref(), Some("dns/wire"));
    assert_eq!(resolve(&src, "dns/mod", &path("handler::DnsHandler")).as_deref(), Some("dns/handler"));
    assert_eq!(resolve(&src, "dns/mod", &path("self::udp::bind")).as_deref(), Some("dns/udp"));
    assert_eq!(resolve(&src, "dns/handler", &path("super::Listeners")).as_deref(), Some("dns/mod"));
    assert_eq!(resolve(&src, "dns/handler", &path("std::sync::Arc")), None);
    assert_eq!(resolve(&src, "catalog/publish", &path("crate::dns::fast::Entry")).as_deref(), Some("dns/fast"));
}

#[test]
fn a_circle_between_sibling_files_is_found() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("dns/fast".into()).or_default().insert("dns/handler".into());
    g.entry("dns/handler".into()).or_default().insert("dns/fast".into());
    assert!(visit("dns/fast", &g, &mut Vec::new(), &mut BTreeSet::new()).is_some());
    assert!(ancestor("dns/mod", "dns/fast") && !ancestor("dns/fast", "dns/handler") && !ancestor("dns/mod", "dnsx/a"));
}
