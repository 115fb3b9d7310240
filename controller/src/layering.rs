//! The layering ARCHITECTURE.md states, checked: no two top-level modules
//! of the controller import each other, directly or through others. Reads
//! the sources (outside `#[cfg(test)]` parts and comments) for
//! `crate::<module>` paths. And one rule of the store: nothing calls sled's
//! `flush_async`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every source file's top-level module and its non-test code lines
/// (outside `#[cfg(test)]` parts and without comment lines).
fn code() -> Vec<(String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel
                .components()
                .next()
                .expect("a component")
                .as_os_str()
                .to_string_lossy();
            let top = top.trim_end_matches(".rs").to_string();
            if top == "layering" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let lines = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(str::to_string)
                .collect();
            out.push((top, lines));
        }
    }
    out
}

/// Top-level module → the top-level modules its non-test code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, lines) in code() {
        if matches!(top.as_str(), "main" | "lib") {
            continue;
        }
        let deps = out.entry(top.clone()).or_default();
        for line in &lines {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    out
}

/// A path `from` → ... → `to` through `graph`, if there is one.
fn path(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(p) = stack.pop() {
        let last = p.last().expect("non-empty");
        if last == to && p.len() > 1 {
            return Some(p);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in graph.get(last).into_iter().flatten() {
            let mut q = p.clone();
            q.push(next.clone());
            stack.push(q);
        }
    }
    None
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = imports();
    assert!(
        graph.contains_key("fleet") && graph.contains_key("rollouts"),
        "{graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| path(&graph, m, m))
        .map(|p| p.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(path(&graph, "a", "a").map(|p| p.join(" ")), Some("a b c a".to_string()));
    assert_eq!(path(&graph, "d", "d"), None);
}

#[test]
fn nothing_calls_sleds_flush_async() {
    // sled 0.34's flush_async deadlocks when called concurrently
    // (spacejam/sled#1308): durability goes through the flusher's one
    // synchronous flush (store::flusher).
    let callers: Vec<String> = code()
        .into_iter()
        .filter(|(_, lines)| lines.iter().any(|l| l.contains("flush_async")))
        .map(|(top, _)| top)
        .collect();
    assert!(callers.is_empty(), "flush_async is called in {callers:?}");
}
