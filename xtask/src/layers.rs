//! The layer check of `cargo xtask clippy`: the agent and the eBPF crate each declare their
//! modules' layers in a table in their crate root's doc comment, between `<!-- layers -->`
//! and `<!-- /layers -->`, one `` - `module::path`: layer `` per line. This reads every
//! source file of the crate, finds what it imports from the crate (`crate::…` paths and
//! `super::…` paths that leave the file's top-level module) and fails on:
//! - a module the table does not place (a new module must say where it lives);
//! - an import of a module of a higher layer;
//! - an import between two different top-level modules of an *isolated* layer (the
//!   agent's tasks never import each other; the eBPF stages neither);
//! - an import circle between top-level modules.
//!
//! It is a text scan, not a compiler pass: comments and string literals are skipped, and
//! what it cannot see (a macro building a path) it does not judge.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// One crate's rule: its layers lowest first, and those whose modules stay apart.
pub(crate) struct Rule {
    pub name: &'static str,
    /// The crate root (holds the table) relative to the workspace.
    pub root: &'static str,
    pub layers: &'static [&'static str],
    pub isolated: &'static [&'static str],
}

pub(crate) const RULES: &[Rule] = &[
    Rule {
        name: "dragonflow-agent",
        root: "dragonflow-agent/src/lib.rs",
        layers: &["ground", "pure", "adapter", "task", "wiring"],
        isolated: &["task"],
    },
    Rule {
        name: "dragonflow-ebpf",
        root: "dragonflow-ebpf/src/main.rs",
        layers: &["ground", "stage", "forwarding", "entry"],
        isolated: &["stage"],
    },
];

/// Checks every rule under the workspace `root`; the error lists every finding.
pub(crate) fn check(root: &Path) -> Result<()> {
    let mut findings = Vec::new();
    for rule in RULES {
        let crate_root = root.join(rule.root);
        let src = crate_root.parent().expect("src dir").to_path_buf();
        let text = fs::read_to_string(&crate_root)
            .with_context(|| format!("reading {}", crate_root.display()))?;
        let table = parse_table(&text)
            .with_context(|| format!("{}: the layer table", crate_root.display()))?;
        let mut files = Vec::new();
        collect(&src, &src, &mut files)?;
        let mut sources = Vec::new();
        for (module, path) in files {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            sources.push((module, text));
        }
        for f in judge(rule, &table, &sources) {
            findings.push(format!("{}: {f}", rule.name));
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        bail!(
            "layer check: {} finding(s)\n  {}\n(the tables are in the crate roots' docs; \
             docs/ARCHITECTURE.md says why)",
            findings.len(),
            findings.join("\n  ")
        )
    }
}

/// `module path → layer` from the table between the markers.
pub(crate) fn parse_table(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line
            .trim_start_matches("//!")
            .trim_start_matches("///")
            .trim();
        if l == "<!-- layers -->" {
            inside = true;
        } else if l == "<!-- /layers -->" {
            inside = false;
        } else if inside && let Some(rest) = l.strip_prefix("- `") {
            let Some((module, layer)) = rest.split_once("`:") else {
                bail!("bad table line: {l}");
            };
            out.insert(module.to_string(), layer.trim().to_string());
        }
    }
    if out.is_empty() {
        bail!("no `<!-- layers -->` table");
    }
    Ok(out)
}

/// Source files under `dir` as (module path, file): `a/b.rs` and `a/b/mod.rs` are `a::b`;
/// `main.rs`/`lib.rs` at the root are `main`/`lib`; `bin/…` files are `bin`.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            collect(src, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            let file = parts.pop().expect("a file name");
            let stem = file.trim_end_matches(".rs").to_string();
            if parts.first().is_some_and(|p| p == "bin") {
                out.push(("bin".to_string(), p));
                continue;
            }
            if stem != "mod" {
                parts.push(stem);
            }
            out.push((parts.join("::"), p));
        }
    }
    Ok(())
}

/// The findings for one crate's sources (module path, text).
pub(crate) fn judge(
    rule: &Rule,
    table: &BTreeMap<String, String>,
    sources: &[(String, String)],
) -> Vec<String> {
    let rank = |layer: &str| rule.layers.iter().position(|l| *l == layer);
    let mut findings = Vec::new();
    for (module, layer) in table {
        if rank(layer).is_none() {
            findings.push(format!(
                "`{module}` is in layer `{layer}`, which is not one of {:?}",
                rule.layers
            ));
        }
    }
    // The table entry a module path falls under: the longest listed prefix.
    let place = |path: &str| -> Option<(&str, &str)> {
        let mut p = path;
        loop {
            if let Some((k, v)) = table.get_key_value(p) {
                return Some((k.as_str(), v.as_str()));
            }
            p = p.rsplit_once("::")?.0;
        }
    };
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources {
        let Some((from, from_layer)) = place(module) else {
            findings.push(format!(
                "module `{module}` has no layer: add it to the table"
            ));
            continue;
        };
        for target in imports(module, text) {
            let Some((to, to_layer)) = place(&target) else {
                continue; // a crate-root item or an external path
            };
            if top(to) == top(from) {
                continue;
            }
            let (Some(a), Some(b)) = (rank(from_layer), rank(to_layer)) else {
                continue;
            };
            if b > a {
                findings.push(format!(
                    "`{module}` ({from_layer}) imports `{target}` ({to_layer}): a layer above"
                ));
            } else if a == b && rule.isolated.contains(&from_layer) {
                findings.push(format!(
                    "`{module}` imports `{target}`: two {from_layer} modules never import \
                     each other (they talk through channels and handles)"
                ));
            }
            edges.entry(top(from)).or_default().insert(top(to));
        }
    }
    findings.extend(circles(&edges));
    findings
}

/// Every import circle between top-level modules, each once.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = BTreeSet::new();
    for start in edges.keys() {
        // Depth-first from `start`, looking for a way back to it through larger names only
        // (so each circle is reported from its smallest member).
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    found.insert(format!("import circle: {} -> {start}", path.join(" -> ")));
                } else if next > start && !path.contains(next) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found.into_iter().collect()
}

/// The crate module paths `text` (the source of `module`) refers to.
pub(crate) fn imports(module: &str, text: &str) -> BTreeSet<String> {
    let code = strip(text);
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let (prefix, base): (&str, Option<String>) = if rest.starts_with("crate::") {
            ("crate::", Some(String::new()))
        } else if rest.starts_with("super::") {
            // `super` of a file's module is its parent (a `mod.rs` file's module is the
            // folder, whose parent is one up).
            let parent = module.rsplit_once("::").map(|(p, _)| p.to_string());
            ("super::", Some(parent.unwrap_or_default()))
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // Only whole words: `foo_crate::` is not `crate::`.
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let after = i + prefix.len();
        if word_start && let Some(base) = base {
            for p in expand(&code[after..]) {
                let full = if base.is_empty() {
                    p
                } else {
                    format!("{base}::{p}")
                };
                out.insert(full);
            }
        }
        i = after;
    }
    out
}

/// The module paths named right after a `crate::`/`super::`: `a::b::C` gives `a::b::C`;
/// `{a::x, b}` gives `a::x` and `b`.
fn expand(s: &str) -> Vec<String> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &inner[..end];
        let mut out = Vec::new();
        let mut depth = 0;
        let mut from = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(element(&body[from..i]));
                    from = i + 1;
                }
                _ => {}
            }
        }
        out.extend(element(&body[from..]));
        return out;
    }
    path_head(s).into_iter().collect()
}

/// One element of a use tree: `a::b`, or `a::{b, c}` (each with its prefix).
fn element(s: &str) -> Vec<String> {
    match s.find("::{") {
        Some(at) => {
            let Some(prefix) = path_head(&s[..at]) else {
                return Vec::new();
            };
            expand(&s[at + 2..])
                .into_iter()
                .map(|p| format!("{prefix}::{p}"))
                .collect()
        }
        None => path_head(s).into_iter().collect(),
    }
}

/// The leading `a::b::c` of `s` (stops at anything that is not a path segment).
fn path_head(s: &str) -> Option<String> {
    let s = s.trim_start();
    let mut segs: Vec<&str> = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        let seg = &rest[..end];
        if seg == "self" {
            break;
        }
        segs.push(seg);
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) if !r.trim_start().starts_with('{') => rest = r,
            _ => break,
        }
    }
    (!segs.is_empty()).then(|| segs.join("::"))
}

/// `text` with comments and string/char literals blanked (their paths are not imports).
fn strip(text: &str) -> String {
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
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
                out.push(' ');
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
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        name: "t",
        root: "",
        layers: &["ground", "pure", "task"],
        isolated: &["task"],
    };

    fn table(rows: &[(&str, &str)]) -> BTreeMap<String, String> {
        rows.iter()
            .map(|(m, l)| (m.to_string(), l.to_string()))
            .collect()
    }

    #[test]
    fn reads_use_trees_and_inline_paths() {
        let text = "use crate::{nb::{A, B}, desired::x::Y};\n\
                    // use crate::obs::Z;\n\
                    fn f() { let s = \"crate::etcd\"; crate::datapath::maps::put(); }\n\
                    use super::sibling::Q;";
        let got = imports("detect::task", text);
        let want: BTreeSet<String> = [
            "nb::A",
            "nb::B",
            "desired::x::Y",
            "datapath::maps::put",
            "detect::sibling::Q",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn upward_imports_tasks_and_circles_are_found() {
        let t = table(&[
            ("nb", "ground"),
            ("desired", "pure"),
            ("controller", "task"),
            ("detect", "task"),
        ]);
        let ok = vec![
            ("desired".to_string(), "use crate::nb::X;".to_string()),
            (
                "controller".to_string(),
                "use crate::desired::D;".to_string(),
            ),
        ];
        assert!(judge(&RULE, &t, &ok).is_empty());

        let up = vec![("nb".to_string(), "use crate::desired::D;".to_string())];
        let f = judge(&RULE, &t, &up);
        assert!(f.iter().any(|f| f.contains("a layer above")), "{f:?}");

        let tasks = vec![(
            "detect".to_string(),
            "use crate::controller::C;".to_string(),
        )];
        let f = judge(&RULE, &t, &tasks);
        assert!(f.iter().any(|f| f.contains("never import")), "{f:?}");

        let t2 = table(&[("a", "ground"), ("b", "ground")]);
        let circle = vec![
            ("a".to_string(), "use crate::b::X;".to_string()),
            ("b".to_string(), "use crate::a::Y;".to_string()),
        ];
        let f = judge(&RULE, &t2, &circle);
        assert_eq!(f, vec!["import circle: a -> b -> a".to_string()]);

        let unplaced = vec![("newthing".to_string(), String::new())];
        let f = judge(&RULE, &t, &unplaced);
        assert!(f.iter().any(|f| f.contains("has no layer")), "{f:?}");
    }

    #[test]
    fn reads_the_table() {
        let t = parse_table(
            "//! x\n//! <!-- layers -->\n//! - `nb`: ground\n//! - `a::b`: pure\n//! <!-- /layers -->",
        )
        .expect("table");
        assert_eq!(t, table(&[("nb", "ground"), ("a::b", "pure")]));
    }
}
