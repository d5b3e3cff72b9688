//! `cargo xtask check-layout`: the import graph of a crate's modules, and its cycles.
//!
//! An import is any path beginning with `crate::`, `super::` or `self::`, or with the name of a
//! child module (in a `use`, a type, an expression or a macro's arguments), outside test code
//! (`#[cfg(test)]` items). Paths through a name brought in by `use` are not followed. A module is a file:
//! `src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`; a path names the deepest
//! module of the crate it reaches. The files are parsed with syn, so nothing in a string or a
//! comment counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use syn::visit::Visit;

/// Module name to the modules it imports.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).ok()?.with_extension("");
    let mut parts: Vec<String> =
        relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    // The crate roots are not modules of their own: they declare the others.
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    Some(parts.join("::"))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Collects the module paths a file's non-test code names.
struct Imports<'a> {
    here: &'a str,
    modules: &'a BTreeSet<String>,
    found: BTreeSet<String>,
}

impl Imports<'_> {
    /// The deepest module of the crate that `segments` (after `crate` or `super`) reaches.
    fn add(&mut self, base: &[String], segments: &[String]) {
        let mut path: Vec<String> = base.to_vec();
        let mut best = Some(path.join("::")).filter(|name| self.modules.contains(name));
        for segment in segments {
            path.push(segment.clone());
            let name = path.join("::");
            if self.modules.contains(&name) {
                best = Some(name);
            }
        }
        if let Some(module) = best
            && module != self.here
        {
            self.found.insert(module);
        }
    }

    fn add_path(&mut self, segments: &[String]) {
        let here: Vec<String> = self.here.split("::").map(str::to_owned).collect();
        match segments.first().map(String::as_str) {
            Some("crate") => self.add(&[], &segments[1..]),
            Some("self") => self.add(&here, &segments[1..]),
            // A path through a child module of this one (`nt::f()` in `kernel`).
            Some(first) if self.modules.contains(&format!("{}::{first}", self.here)) => {
                self.add(&here, segments);
            }
            Some("super") => {
                let mut base = here;
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                self.add(&base, rest);
            }
            _ => {}
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(syn::UseName { ident, .. })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                prefix.push(ident.to_string());
                self.add_path(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add_path(prefix),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Imports<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add_path(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        // A macro's arguments are tokens; the paths in them count as well.
        if let Ok(block) = mac.parse_body_with(syn::Block::parse_within) {
            for statement in &block {
                self.visit_stmt(statement);
            }
        } else if let Ok(args) = mac.parse_body_with(
            syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        ) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }
}

/// The import graph of the crate whose sources are under `root` (its `src`).
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn graph(root: &Path) -> Result<Graph> {
    let mut all = Vec::new();
    files(root, &mut all)?;
    all.sort();
    let modules: BTreeSet<String> = all.iter().filter_map(|f| module_of(root, f)).collect();
    let mut graph = Graph::new();
    for file in &all {
        let Some(here) = module_of(root, file) else { continue };
        let text = std::fs::read_to_string(file)?;
        let parsed =
            syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        let mut imports = Imports { here: &here, modules: &modules, found: BTreeSet::new() };
        imports.visit_file(&parsed);
        graph.insert(here.clone(), imports.found);
    }
    Ok(graph)
}

/// The strongly connected components of more than one module: each is a set of modules that
/// import each other in a circle (a module's imports of itself are not edges). Tarjan's
/// algorithm.
#[must_use]
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

/// Checks `root`; returns a report and whether it has no cycle.
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn check(root: &Path) -> Result<(String, bool)> {
    let graph = graph(root)?;
    let found = cycles(&graph);
    let mut report = format!("{}: {} modules", root.display(), graph.len());
    if found.is_empty() {
        report.push_str(", no import cycle\n");
    } else {
        let _ = writeln!(report, ", {} import cycle(s):", found.len());
        for component in &found {
            let _ = writeln!(report, "  {}", component.join(" <-> "));
            for module in component {
                let inside: Vec<&str> = graph[module]
                    .iter()
                    .filter(|m| component.contains(m))
                    .map(String::as_str)
                    .collect();
                let _ = writeln!(report, "    {module} imports {}", inside.join(", "));
            }
        }
    }
    Ok((report, found.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("directories");
            std::fs::write(path, text).expect("a file");
        }
        dir
    }

    #[test]
    fn a_circle_of_imports_is_a_cycle() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("a.rs", "use crate::b::Thing; pub fn f() {}"),
            ("b.rs", "pub struct Thing; pub fn g() { crate::c::h(); }"),
            ("c.rs", "pub fn h() { super::a::f(); }"),
        ]);
        let (report, clean) = check(dir.path()).expect("parses");
        assert!(!clean, "{report}");
        assert_eq!(cycles(&graph(dir.path()).unwrap()), [["a", "b", "c"]]);
        assert!(report.contains("a <-> b <-> c"), "{report}");
    }

    #[test]
    fn imports_one_way_and_test_code_are_no_cycle() {
        let dir = tree(&[
            ("lib.rs", "pub mod low; pub mod high;"),
            ("high/mod.rs", "use crate::low; pub mod part; pub fn f() { low::g(); }"),
            ("high/part.rs", "use super::f; pub fn p() { f() }"),
            (
                "low.rs",
                "pub fn g() {} // crate::high in a comment\n\
                 pub const S: &str = \"crate::high\";\n\
                 #[cfg(test)] mod tests { use crate::high::f; }",
            ),
        ]);
        let (report, clean) = check(dir.path()).expect("parses");
        assert!(clean, "{report}");
        let graph = graph(dir.path()).unwrap();
        assert_eq!(graph["high"], BTreeSet::from(["low".to_owned()]));
        assert_eq!(graph["high::part"], BTreeSet::from(["high".to_owned()]));
        assert!(graph["low"].is_empty(), "{graph:?}");
    }

    #[test]
    fn a_parent_and_its_child_importing_each_other_are_a_cycle() {
        let dir = tree(&[
            ("lib.rs", "pub mod kernel;"),
            ("kernel/mod.rs", "mod nt; pub fn g() { nt::f(); }"),
            ("kernel/nt.rs", "pub fn f() { super::g(); }"),
        ]);
        assert_eq!(cycles(&graph(dir.path()).unwrap()), [["kernel", "kernel::nt"]]);
    }

    #[test]
    fn a_path_inside_a_macro_counts() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "pub fn f() { println!(\"{}\", crate::b::N); }"),
            ("b.rs", "pub const N: u8 = 1; pub fn g() { crate::a::f(); }"),
        ]);
        assert!(!check(dir.path()).expect("parses").1);
    }
}
