//! The modules depend on each other one way only: within each crate's sources (this one's and the
//! probes'), no module uses a sibling that uses it back, directly or round a longer circle:
//! neither two top-level modules (`collect` and `probe`) nor two files of one directory
//! (`symbolize/v8/heap.rs` and `resolve.rs`). A circle means a type or function sits in the
//! wrong room; the failure names the circle.
//!
//! Read from the sources' `crate::`, `super::` and `self::` paths (`use` trees included), outside
//! comments and `#[cfg(test)]` code: the test is a reader of the code, not of the compiler's
//! output, and needs nothing built.
#![allow(
    unused_crate_dependencies,
    reason = "a test of the sources, not of the library"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Edges between the children of one module, by module path (`[]`: the crate's top level).
type Graphs = BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>;

/// A module's source without comments and without what follows its first `#[cfg(test)]`.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("reading a source file");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn skip_spaces(s: &[u8], i: &mut usize) {
    while *i < s.len() && s[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn ident(s: &[u8], i: &mut usize) -> String {
    let start = *i;
    while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
        *i += 1;
    }
    String::from_utf8_lossy(&s[start..*i]).into_owned()
}

/// The paths of the `use` tree (or plain path) at `i`: `a::{b, c::d}` is `a::b` and `a::c::d`.
fn tree(s: &[u8], i: &mut usize) -> Vec<Vec<String>> {
    skip_spaces(s, i);
    if s.get(*i) == Some(&b'{') {
        *i += 1;
        let mut out = Vec::new();
        loop {
            skip_spaces(s, i);
            match s.get(*i) {
                None => return out,
                Some(b'}') => {
                    *i += 1;
                    return out;
                }
                Some(b',') => *i += 1,
                _ => {
                    let before = *i;
                    out.extend(tree(s, i));
                    // Past `as name` and anything else up to the next item.
                    while *i < s.len() && !matches!(s[*i], b',' | b'}') {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
            }
        }
    }
    let name = ident(s, i);
    if name.is_empty() {
        return vec![Vec::new()];
    }
    skip_spaces(s, i);
    if s[*i..].starts_with(b"::") {
        *i += 2;
        return tree(s, i)
            .into_iter()
            .map(|rest| std::iter::once(name.clone()).chain(rest).collect())
            .collect();
    }
    vec![vec![name]]
}

/// Every absolute module path the code of the module at `module` names.
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let starts_word = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        let mut j = i;
        let word = if starts_word {
            ident(s, &mut j)
        } else {
            String::new()
        };
        if !matches!(word.as_str(), "crate" | "super" | "self") || !s[j..].starts_with(b"::") {
            i += 1;
            continue;
        }
        // `self` is the module itself; each `super` one level up, from the module's directory.
        let mut base: Vec<String> = if word == "crate" {
            Vec::new()
        } else {
            module.to_vec()
        };
        let mut k = j + 2;
        if word == "super" {
            // A file's module path ends with its own name, a `mod.rs`'s with its directory's:
            // either way `super` drops the last name.
            base.pop();
            while s[k..].starts_with(b"super::") {
                base.pop();
                k += "super::".len();
            }
        }
        for rest in tree(s, &mut k) {
            out.push(base.iter().cloned().chain(rest).collect());
        }
        i = k.max(i + 1);
    }
    out
}

/// The modules directly in directory `dir`: its `.rs` files and its subdirectories.
fn children(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if e.path().is_dir() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (!matches!(stem, "mod" | "lib" | "main")).then(|| stem.to_owned())
            }
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir)
        .expect("reading a source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The dependency graphs between the children of every module of the crate at `src`.
fn graphs(src: &Path) -> Graphs {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut graphs = Graphs::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let mut module: Vec<String> = relative
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let is_mod = matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        );
        if is_mod {
            module.pop();
        }
        for path in paths(&code(&file), &module) {
            for depth in 0..module.len().min(path.len()) {
                if path[..depth] != module[..depth] || path[depth] == module[depth] {
                    continue;
                }
                let dir: PathBuf = std::iter::once(src.to_path_buf())
                    .chain(module[..depth].iter().map(PathBuf::from))
                    .collect();
                if children(&dir).contains(&path[depth]) {
                    graphs
                        .entry(module[..depth].to_vec())
                        .or_default()
                        .entry(module[depth].clone())
                        .or_default()
                        .insert(path[depth].clone());
                }
                break;
            }
        }
    }
    graphs
}

/// A circle of `graph`, as the names round it, if it has one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
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
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn circles(src: &Path) -> Vec<String> {
    graphs(src)
        .iter()
        .filter_map(|(module, graph)| {
            circle(graph).map(|c| {
                format!(
                    "in {}/{}: {}",
                    src.display(),
                    module.join("/"),
                    c.join(" -> ")
                )
            })
        })
        .collect()
}

#[test]
fn no_module_uses_a_sibling_that_uses_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate");
    let found: Vec<String> = ["leaktrace/src", "leaktrace-ebpf/src"]
        .iter()
        .flat_map(|src| circles(&root.join(src)))
        .collect();
    assert!(
        found.is_empty(),
        "circles between modules:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reader_finds_a_circle_and_the_paths_of_use_trees() {
    let code = "use crate::{a::{b::C, d}, e as f};\nuse super::{g, h::I};\nfn x() { crate::j::k(); self::l::m(); }";
    let module = ["top".to_owned(), "file".to_owned()];
    let found: BTreeSet<String> = paths(code, &module).iter().map(|p| p.join("::")).collect();
    let expected: BTreeSet<String> = [
        "a::b::C",
        "a::d",
        "e",
        "top::g",
        "top::h::I",
        "j::k",
        "top::file::l::m",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(n, to)| (n.to_owned(), to.iter().map(|t| (*t).to_owned()).collect()))
    .collect();
    assert_eq!(
        circle(&graph),
        Some(["a", "b", "c", "a"].map(str::to_owned).to_vec())
    );
    let mut line = graph.clone();
    line.remove("c");
    assert_eq!(circle(&line), None);
}
