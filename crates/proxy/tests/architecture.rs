//! The house rules, checked: which module may import what. Reads the sources as text (comments
//! removed), so a rule broken anywhere in `src/` fails here with the file and the rule named.
//!
//! - Only the HTTP edge speaks axum: `http/`, `server.rs` (binding and serving) and the demo
//!   backend's own server (`demo/`).
//! - The core does not know its edges: nothing under `pipeline/` imports `http`.
//! - Observation is below the core: nothing under `observe/` imports `pipeline` (or `http`).
//! - No import cycle between the crate's top-level modules.
//! - The engine crate depends on nothing async or HTTP.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `//` comments (doc comments included) and without string literals, so a
/// sentence that mentions a module is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                    for c in chars.by_ref() {
                        if c == '\'' && !out.ends_with('\\') {
                            break;
                        }
                    }
                    out.push_str("' '");
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules a file's code names through `crate::…`, including inside
/// `use crate::{a, b::c}` groups.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` and after each `,` at depth 0.
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            found.insert(name);
                        }
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Whether the code uses the named external crate.
fn uses_crate(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + name.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            && after.starts_with("::")
    })
}

struct File {
    /// Path below `src/`, with `/` separators.
    rel: String,
    /// The top-level module it belongs to (`lib` and `main` for the roots).
    module: String,
    code: String,
}

fn crate_files() -> Vec<File> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("below src")
                .to_string_lossy()
                .replace('\\', "/");
            let module = rel
                .split('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_owned();
            let code = code_of(&fs::read_to_string(&p).expect("read source"));
            File { rel, module, code }
        })
        .collect()
}

#[test]
fn only_the_http_edge_speaks_axum() {
    let allowed =
        |rel: &str| rel.starts_with("http/") || rel == "server.rs" || rel.starts_with("demo/");
    let broken: Vec<String> = crate_files()
        .into_iter()
        .filter(|f| !allowed(&f.rel) && uses_crate(&f.code, "axum"))
        .map(|f| format!("src/{} imports axum: only http/, server.rs and demo/ may (thin edges, pure middle)", f.rel))
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn layers_point_down() {
    // (files under this prefix, may not import this module, why)
    let rules = [
        (
            "pipeline/",
            "http",
            "the core must not know its front doors",
        ),
        ("observe/", "pipeline", "observation sits below the core"),
        ("observe/", "http", "observation sits below the edge"),
        (
            "backend/",
            "pipeline",
            "backend adapters sit below the core",
        ),
        ("backend/", "http", "backend adapters sit below the edge"),
        ("config/", "pipeline", "settings sit below the core"),
        ("config/", "http", "settings sit below the edge"),
    ];
    let mut broken = Vec::new();
    for f in crate_files() {
        let imports = crate_imports(&f.code);
        for (prefix, forbidden, why) in rules {
            if f.rel.starts_with(prefix) && imports.contains(forbidden) {
                broken.push(format!("src/{} imports crate::{forbidden}: {why}", f.rel));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let files = crate_files();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in &files {
        if f.module == "lib" || f.module == "main" {
            continue;
        }
        for m in crate_imports(&f.code) {
            if m != f.module && m != "self" && m != "super" {
                graph
                    .entry(f.module.clone())
                    .or_default()
                    .entry(m)
                    .or_insert_with(|| f.rel.clone());
            }
        }
    }
    // Depth-first search for a back edge; report the cycle with the file behind each step.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} → {} (src/{})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!(
                "import cycle between top-level modules (each module may only import those below it):\n{}",
                steps.join("\n")
            );
        }
    }
}

#[test]
fn the_engine_depends_on_nothing_async_or_http() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../toolcalls/Cargo.toml");
    let text = fs::read_to_string(&manifest).expect("read the engine's manifest");
    let deps = text
        .split("[dependencies]")
        .nth(1)
        .unwrap_or_default()
        .split("\n[")
        .next()
        .unwrap_or_default();
    let forbidden = [
        "tokio",
        "async-std",
        "futures",
        "axum",
        "hyper",
        "reqwest",
        "http",
        "tower",
        "mio",
    ];
    let broken: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split(['=', ' ', '.']).next())
        .filter(|name| {
            forbidden
                .iter()
                .any(|f| name.trim() == *f || name.trim().starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "crates/toolcalls/Cargo.toml depends on {broken:?}: the engine is sans-IO (text in, events out)"
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // A rule that cannot fail is no rule: the readers find what they look for.
    let code = code_of(
        "use crate::{a, b::{c, d}, e::f};\n// crate::hidden\nlet s = \"crate::no\";\nuse crate::g::h;",
    );
    assert_eq!(
        crate_imports(&code).into_iter().collect::<Vec<_>>(),
        ["a", "b", "e", "g"]
    );
    assert!(uses_crate("use axum::Router;", "axum"));
    assert!(!uses_crate("// axum::Router", "axum") || code_of("// axum::Router").trim().is_empty());
    assert!(!uses_crate("my_axum::x", "axum"));
    let files = crate_files();
    assert!(files.iter().any(|f| f.rel == "pipeline/mod.rs"));
    assert!(
        files
            .iter()
            .any(|f| f.rel.starts_with("http/") && uses_crate(&f.code, "axum"))
    );
}
