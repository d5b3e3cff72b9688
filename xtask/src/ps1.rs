//! The syntax of the Windows VM scripts (`scripts/*.ps1`), checked on any host.
//!
//! No PowerShell runs here, so the scripts are parsed with the tree-sitter PowerShell grammar
//! (airbus-cert/tree-sitter-powershell, the `tree-sitter-powershell` crate): a script with an
//! unbalanced brace, an unterminated string or a statement the grammar cannot place fails with
//! its line and column. It is a grammar of PowerShell, not PowerShell's own parser: what it
//! accepts PowerShell can still refuse (an unknown parameter, a type that does not exist), so
//! the scripts still need a run on Windows; what it refuses is a syntax error for both.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The scripts under `dir` (`*.ps1`), sorted.
///
/// # Errors
/// When `dir` cannot be listed.
pub fn scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("ps1")) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The syntax errors in `source`, one message each (`line L, column C: ...`); empty when the
/// grammar parses it whole.
///
/// # Errors
/// When the grammar cannot be loaded (a tree-sitter version mismatch).
pub fn syntax_errors(source: &str) -> Result<Vec<String>> {
    let mut parser = tree_sitter::Parser::new();
    parser
        .set_language(&tree_sitter_powershell::LANGUAGE.into())
        .context("loading the tree-sitter PowerShell grammar")?;
    let tree = parser.parse(source, None).context("tree-sitter returned no tree")?;
    let mut errors = Vec::new();
    let mut cursor = tree.walk();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.is_error() || node.is_missing() {
            let at = node.start_position();
            let line = source.lines().nth(at.row).unwrap_or_default().trim();
            let what = if node.is_missing() {
                format!("missing {}", node.kind())
            } else {
                "cannot parse".to_owned()
            };
            errors.push((
                at,
                format!("line {}, column {}: {what}: {line}", at.row + 1, at.column + 1),
            ));
            // The children of an error node only repeat it.
            continue;
        }
        if node.has_error() {
            stack.extend(node.children(&mut cursor));
        }
    }
    errors.sort_by_key(|(at, _)| (at.row, at.column));
    Ok(errors.into_iter().map(|(_, message)| message).collect())
}

/// Checks every script under `dir` and returns one message per syntax error, prefixed by the
/// script's path; prints how many each script has.
///
/// # Errors
/// When `dir` has no script or a script cannot be read.
pub fn check(dir: &Path) -> Result<Vec<String>> {
    let scripts = scripts(dir)?;
    anyhow::ensure!(!scripts.is_empty(), "no *.ps1 script in {}", dir.display());
    let mut problems = Vec::new();
    for path in scripts {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let errors = syntax_errors(&text)?;
        eprintln!("    {}: {} syntax error(s)", path.display(), errors.len());
        problems.extend(errors.into_iter().map(|e| format!("{}: {e}", path.display())));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::{check, syntax_errors};

    const VM_SETUP: &str = include_str!("../../scripts/vm-setup.ps1");
    const COMMON: &str = include_str!("../../scripts/common.ps1");

    /// `script` with the one `old` text replaced.
    #[track_caller]
    fn replaced(script: &str, old: &str, new: &str) -> String {
        assert_eq!(script.matches(old).count(), 1, "{old:?} should occur once");
        script.replacen(old, new, 1)
    }

    #[track_caller]
    fn assert_error_at(source: &str, line: usize) {
        let errors = syntax_errors(source).expect("the grammar loads");
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("line {line},"))),
            "expected an error on line {line}, got {errors:#?}"
        );
    }

    fn line_of(script: &str, text: &str) -> usize {
        script.lines().position(|line| line.contains(text)).expect("the text is there") + 1
    }

    #[test]
    fn the_scripts_parse() {
        let problems = check(&crate::cross::root().join("scripts")).expect("the check runs");
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn an_unbalanced_parenthesis_is_reported() {
        let text = "function Format-RuleClasses([int[]]$Classes) {";
        let broken = replaced(COMMON, text, "function Format-RuleClasses(([int[]]$Classes) {");
        assert_error_at(&broken, line_of(COMMON, text));
    }

    #[test]
    fn an_unterminated_string_is_reported() {
        let text = "Write-Step 'BitLocker'";
        let broken = replaced(VM_SETUP, text, "Write-Step 'BitLocker");
        assert!(!syntax_errors(&broken).expect("the grammar loads").is_empty());
    }

    #[test]
    fn a_missing_brace_is_reported() {
        let text = "if ($LowResources -and $Extended) {";
        let broken = replaced(VM_SETUP, text, "if ($LowResources -and $Extended)");
        assert!(!syntax_errors(&broken).expect("the grammar loads").is_empty());
    }

    #[test]
    fn a_directory_without_scripts_is_an_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let error = check(dir.path()).expect_err("no script");
        assert!(format!("{error:#}").contains("no *.ps1 script"), "{error:#}");
    }
}
