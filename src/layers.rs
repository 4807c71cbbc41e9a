//! The layering of the top-level modules, checked on the source: which
//! module names which (`crate::<module>` paths, comments aside), so that a
//! cycle or a pure module reaching into the runtimes fails a test rather
//! than a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that decide and must not reach the effectful runtimes.
const PURE: &[&str] = &["engine", "model", "placement", "diff", "manifest", "time"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<name>` paths in Rust source, outside `//` comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| top(p))
        .filter(|m| !matches!(m.as_str(), "lib" | "main" | "layers"))
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for f in &files {
        let from = top(f);
        let Some(deps) = g.get_mut(&from) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        for m in named_modules(&text) {
            if m != from && modules.contains(&m) {
                deps.insert(m);
            }
        }
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn the_parser_finds_paths_and_skips_comments() {
    let got = named_modules(
        "use crate::engine::{Action, Phase};\nlet x = crate::time::Time::ZERO; // crate::runtime\n/// see [`crate::hub`]\n",
    );
    assert_eq!(
        got,
        ["engine", "time"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let g = graph();
    assert!(
        g.contains_key("engine") && g.contains_key("runtime"),
        "{g:?}"
    );
    let cycles: Vec<String> = g
        .iter()
        .flat_map(|(m, deps)| deps.iter().map(move |d| (m, d)))
        .filter(|(m, d)| reaches(&g, d, m))
        .map(|(m, d)| format!("{m} -> {d}"))
        .collect();
    assert!(cycles.is_empty(), "edges on a cycle: {cycles:?}");
}

#[test]
fn pure_modules_do_not_reach_the_runtimes() {
    let g = graph();
    for m in PURE {
        let reached: Vec<&str> = ["runtime", "controller", "server", "store", "source", "hub"]
            .into_iter()
            .filter(|effect| reaches(&g, m, effect))
            .collect();
        assert!(reached.is_empty(), "{m} reaches {reached:?}");
    }
}
